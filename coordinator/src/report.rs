//! The run directory: `config.json` (the resolved scenario), `journal.jsonl` (the
//! durable record, see [`crate::journal`]), `metrics.jsonl` (one row per node per
//! closed round, appended as rounds close, never truncated; rebuilt from the journal
//! when a run resumes, synced at its end) and `summary.json` and `report.md` (at the
//! end, written atomically).

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use tokio::time::Instant;

use serde::{Deserialize, Serialize};
use wdml_files::{Mode, append_durable, sync_dir, write_atomic};
use wdml_proto::{RoundClosed, RoundMetrics};

use crate::barrier::OpenRound;
use crate::journal::{self, Entry, Journal, now_ms};
use crate::members::{Members, MembershipEvent, Presence};
use crate::{Config, Error, Result};

/// One node's report for one round, as written to `metrics.jsonl`: what the node
/// reported (the wire's [`RoundMetrics`], flattened under its field names) beside what
/// the coordinator knows of the round.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricsRow {
    pub round: u32,
    pub node: u32,
    pub model: String,
    #[serde(flatten)]
    pub metrics: RoundMetrics,
    /// Emulated seconds the round lasted, as its policy closed it (the same in every
    /// row of a round): the last report's under `sync`, the quorum's plus the grace, or
    /// the deadline. (Absent from run directories written before it was recorded.)
    #[serde(default)]
    pub round_emulated_s: f64,
    /// A report that came after its round closed (in `late.jsonl` only): its work
    /// counted in no round, its costs are real.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub late: bool,
    /// Idle at the barrier: from this node's report until the round closed.
    pub wait_ms: f64,
    /// The whole round, from StartRound until it closed.
    pub round_ms: f64,
}

impl MetricsRow {
    /// Reads every row of a run directory's `metrics.jsonl`; a malformed line is an
    /// error naming its line number. A last line without its newline is a row being
    /// appended (or cut by a crash) and is not read: a run under way can be read.
    pub fn read_all(run_dir: &Path) -> Result<Vec<MetricsRow>> {
        Self::read_file(run_dir.join("metrics.jsonl"))
    }

    /// The reports of a run directory that came after their round closed (none if
    /// there is no `late.jsonl`).
    pub fn read_late(run_dir: &Path) -> Result<Vec<MetricsRow>> {
        let path = run_dir.join(LATE_FILE);
        if path.exists() {
            Self::read_file(path)
        } else {
            Ok(Vec::new())
        }
    }

    fn read_file(path: PathBuf) -> Result<Vec<MetricsRow>> {
        // A row is under a kilobyte; a longer line is not a row (bounded reads).
        const MAX_LINE: u64 = 1 << 20;
        let corrupt = |reason: String| Error::Corrupt {
            path: path.clone(),
            reason,
        };
        let mut reader = BufReader::new(File::open(&path).map_err(|e| Error::io(&path, e))?);
        let (mut rows, mut line) = (Vec::new(), Vec::new());
        for number in 1.. {
            line.clear();
            let read = (&mut reader)
                .take(MAX_LINE + 1)
                .read_until(b'\n', &mut line)
                .map_err(|e| Error::io(&path, e))?;
            if read == 0 {
                break;
            }
            if read as u64 > MAX_LINE {
                return Err(corrupt(format!("line {number} is longer than {MAX_LINE} bytes")));
            }
            if line.last() != Some(&b'\n') {
                break;
            }
            rows.push(serde_json::from_slice(&line).map_err(|e| corrupt(format!("line {number}: {e}")))?);
        }
        Ok(rows)
    }

    fn new(
        round: u32,
        node: u32,
        model: String,
        m: &RoundMetrics,
        wait_ms: f64,
        round_ms: f64,
        round_emulated_s: f64,
    ) -> Self {
        MetricsRow {
            round,
            node,
            model,
            metrics: *m,
            round_emulated_s,
            late: false,
            wait_ms,
            round_ms,
        }
    }
}

/// One node over the whole run, in `summary.json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeSummary {
    pub id: u32,
    pub model: String,
    pub parameters: u64,
    pub private_samples: u32,
    /// "finished", "gone", "left", or "never reported" (joined and stayed, but no round
    /// of it counted).
    pub status: String,
    /// Misbehaving on purpose (`[adversary]` in the scenario); left out of the means.
    #[serde(default)]
    pub adversary: bool,
    pub rounds_reported: u32,
    /// Reports that came after their round closed (`late.jsonl`).
    #[serde(default)]
    pub late_reports: u32,
    pub final_accuracy: Option<f64>,
    pub best_accuracy: Option<f64>,
    /// The (ε, δ)-DP its training spent, as of its newest report (absent without
    /// DP-SGD).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epsilon: Option<f64>,
    pub payload_bytes_sent: u64,
    pub wire_bytes_sent: u64,
    pub wire_bytes_received: u64,
    pub messages_lost: u32,
    pub messages_rejected: u32,
    pub airtime_s: f64,
    pub tx_energy_j: f64,
    pub rx_energy_j: f64,
    pub mean_compute_ms: f64,
    pub mean_exchange_ms: f64,
    pub mean_wait_ms: f64,
}

/// The whole run, in `summary.json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub run_id: String,
    pub algorithm: String,
    /// Whether every round closed.
    pub finished: bool,
    pub reason: String,
    pub rounds_planned: u32,
    pub rounds_closed: u32,
    /// Rounds that closed with no report at all.
    #[serde(default)]
    pub failed_rounds: u32,
    /// From the start of the run to its end, across coordinator restarts.
    pub wall_s: f64,
    /// Mean over the honest nodes that reported the last closed round. Accuracy is as
    /// each node reported it (in range, but not checkable by the coordinator): the
    /// median says how much one node's claim moves it.
    pub mean_final_accuracy: Option<f64>,
    #[serde(default)]
    pub median_final_accuracy: Option<f64>,
    pub min_final_accuracy: Option<f64>,
    pub mean_round_ms: f64,
    pub nodes: Vec<NodeSummary>,
    pub events: Vec<MembershipEventRecord>,
    /// Times the coordinator was down (crashed and restarted with the same run directory).
    #[serde(default)]
    pub outages: Vec<Outage>,
}

/// A membership change as recorded in the summary.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MembershipEventRecord {
    pub node: u32,
    pub event: String,
    pub round: u32,
    pub reason: String,
}

impl From<&MembershipEvent> for MembershipEventRecord {
    fn from(e: &MembershipEvent) -> Self {
        MembershipEventRecord {
            node: e.node,
            event: e.event.clone(),
            round: e.round,
            reason: e.reason.clone(),
        }
    }
}

/// The radio links of the run, in `links.json`: every neighbour pair of the topology
/// where the devices were placed (time 0), with its long-term quality, so that a
/// figure can say what SNR its receivers had.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LinksRecord {
    /// Where each device was placed (x, y in metres), by node id; empty in files
    /// written before positions were recorded.
    #[serde(default)]
    pub positions: Vec<[f64; 2]>,
    pub links: Vec<LinkRecord>,
    /// The mean over the links of `mean_snr_db`, dB.
    pub mean_snr_db: f64,
}

/// One directed link in `links.json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LinkRecord {
    pub from: u32,
    pub to: u32,
    pub distance_m: f64,
    /// Path loss and shadowing, no fast fading: the link's long-term SNR, dB.
    pub mean_snr_db: f64,
}

/// The realised split, in `split.json`: what each node's private shard holds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SplitRecord {
    /// The scenario's `data.partition`, e.g. `dirichlet:0.5`.
    pub partition: String,
    pub nodes: Vec<NodeSplit>,
    /// The public rows that are also private (`data.public_overlap`); absent without.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_overlap: Option<PublicOverlap>,
}

/// Which public rows are which node's private rows too (`data.public_overlap`): the
/// ground truth of a membership attack.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PublicOverlap {
    /// `data.public_overlap`: the share of each shard also in the public pool.
    pub share: f64,
    /// Rows of the public pool, members included: the batch sampler draws from all.
    pub public_rows: u64,
    /// `members[k]`: positions in the public pool (0-based, the sampler's) of node k's
    /// rows; every other position is no node's.
    pub members: Vec<Vec<u64>>,
}

/// One node's shard in `split.json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeSplit {
    pub node: u32,
    pub samples: u64,
    /// Samples per class, as the node reported them.
    pub histogram: Vec<u32>,
}

/// A stretch of time the coordinator was down, in `summary.json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Outage {
    /// The last round closed before it (none: before the first round closed).
    pub after_round: Option<u32>,
    /// Seconds from the coordinator's last record before the crash to its restart.
    pub down_s: f64,
}

/// What a restarted coordinator learns from its journal.
pub(crate) struct Recovered {
    /// The index (from 0, as on the wire) of the round to run next.
    pub next_round: u32,
    pub events: Vec<MembershipEvent>,
    /// Every member known before the restart: id, model, parameters.
    pub members: Vec<(u32, String, u64)>,
}

/// Where moving devices were in each round, and their neighbours.
pub const POSITIONS_FILE: &str = "positions.jsonl";

/// What the radio policies decided, one line per round of a run that sets one.
pub const POLICY_FILE: &str = "policy.jsonl";

/// One round of `policy.jsonl`: what `channel.selection`, `channel.power_control` and
/// `channel.band_order` decided, as every node computed it too.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decisions {
    /// The round, from 1.
    pub round: u32,
    /// Every live sender, ascending by id.
    pub senders: Vec<SenderDecision>,
}

/// One sender's round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SenderDecision {
    pub node: u32,
    /// The neighbours it exchanges with this round (ascending).
    pub receivers: Vec<u32>,
    /// Its transmit power, dBm: one per receiver under unicast, one under broadcast.
    pub power_dbm: Vec<f64>,
    /// On a shared band: when its turn starts and how long it lasts, emulated s.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub turn_s: Option<[f64; 2]>,
}

/// The radio as the run resolved it, in `channel.json`.
pub const CHANNEL_FILE: &str = "channel.json";

/// `channel.json`: with the seed and the node count, the channel (path loss,
/// shadowing, fading, placement, mobility) recomputes any link's state in any round,
/// exactly as the nodes' shapers drew it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChannelRecord {
    pub seed: u64,
    pub nodes: u32,
    pub channel: wdml_channel::ResolvedChannel,
}

/// Reports that arrived after their round closed, one `MetricsRow` per line.
pub const LATE_FILE: &str = "late.jsonl";

/// Writes the run directory as the run goes: the journal first (durable), then the
/// files derived from it.
pub(crate) struct Report {
    dir: PathBuf,
    journal: Journal,
    metrics: File,
    rows: Vec<MetricsRow>,
    /// Reports that came after their round closed (`late.jsonl`).
    late: Vec<MetricsRow>,
    round_ms: Vec<f64>,
    rounds_closed: u32,
    /// Rounds that closed with no report at all.
    failed_rounds: u32,
    outages: Vec<Outage>,
    /// When the run began (wall clock, ms since the epoch), across restarts.
    started_ms: u64,
    run_id: String,
    algorithm: String,
    rounds_planned: u32,
    adversaries: Vec<u32>,
    /// Random, this run's alone: in every node's checkpoint.
    instance: String,
}

/// The files of a run directory this coordinator writes (and `--overwrite` removes).
const RUN_FILES: [&str; 17] = [
    journal::FILE,
    CHANNEL_FILE,
    POLICY_FILE,
    LATE_FILE,
    POSITIONS_FILE,
    "positions.svg",
    "positions.png",
    "split.json",
    "split.svg",
    "split.png",
    "scenario.toml",
    "metrics.jsonl",
    "summary.json",
    "report.md",
    "rounds.svg",
    "rounds.png",
    "config.json",
];

impl Report {
    /// Opens the run directory: a new run, or the one its journal records (resumed at
    /// the next round). A finished run, or a run of another scenario, is refused (a
    /// finished one is replaced with `overwrite`).
    pub fn open(config: &Config) -> Result<(Self, Option<Recovered>)> {
        let dir = config.run_dir.clone();
        let refuse = |reason: String| Error::RunDirectory {
            path: dir.clone(),
            reason,
        };
        let has = |name: &str| dir.join(name).exists();
        if has(journal::FILE) {
            let (journal, entries) = Journal::open(&dir)?;
            // An interrupted run (stopped early) resumes; a finished one is done.
            let finished = journal::finished(&entries);
            if finished && !config.overwrite {
                return Err(refuse(
                    "holds a finished run; give another --out, or --overwrite to replace it".into(),
                ));
            }
            if !finished {
                return Self::resume(config, journal, entries).map(|(r, rec)| (r, Some(rec)));
            }
        } else if (has("metrics.jsonl") || has("summary.json")) && !config.overwrite {
            return Err(refuse(
                "holds an earlier run's results; give another --out, or --overwrite to replace them".into(),
            ));
        }
        if config.overwrite {
            for name in RUN_FILES {
                match fs::remove_file(dir.join(name)) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io(&dir.join(name), e)),
                    _ => {}
                }
            }
            // The nodes' checkpoints of the replaced run, when they keep them here.
            match fs::remove_dir_all(dir.join("state")) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io(&dir.join("state"), e)),
                _ => {}
            }
        }
        Self::create(config).map(|r| (r, None))
    }

    fn create(config: &Config) -> Result<Self> {
        let dir = config.run_dir.clone();
        fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let resolved = serde_json::to_string_pretty(&config.resolved)? + "\n";
        let path = dir.join("config.json");
        write_atomic(&path, resolved.as_bytes(), Mode::Public).map_err(|e| Error::io(&path, e))?;
        if let Some(toml) = &config.scenario_toml {
            let path = dir.join("scenario.toml");
            write_atomic(&path, toml.as_bytes(), Mode::Public).map_err(|e| Error::io(&path, e))?;
        }
        let mut journal = Journal::create(&dir)?;
        let started_ms = now_ms();
        let instance = format!("{:016x}", wdml_transport::random_secret().map_err(Error::Net)?);
        journal.append(&Entry::Start {
            run_id: config.settings.run_id.clone(),
            instance: instance.clone(),
            config: config.resolved.clone(),
            at_ms: started_ms,
        })?;
        let path = dir.join("metrics.jsonl");
        let metrics = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        sync_dir(&dir).map_err(|e| Error::io(&dir, e))?;
        let mut report = Self::new(config, dir, journal, metrics, started_ms);
        report.instance = instance;
        Ok(report)
    }

    fn new(config: &Config, dir: PathBuf, journal: Journal, metrics: File, started_ms: u64) -> Self {
        Report {
            instance: String::new(),
            dir,
            journal,
            metrics,
            rows: Vec::new(),
            late: Vec::new(),
            round_ms: Vec::new(),
            rounds_closed: 0,
            failed_rounds: 0,
            outages: Vec::new(),
            started_ms,
            run_id: config.settings.run_id.clone(),
            algorithm: config.settings.algorithm().to_string(),
            rounds_planned: config.settings.rounds,
            adversaries: config
                .settings
                .adversary
                .as_ref()
                .map(|a| a.nodes.clone())
                .unwrap_or_default(),
        }
    }

    /// Rebuilds the run from its journal, rewrites `metrics.jsonl` from it, and records
    /// the outage.
    fn resume(config: &Config, journal: Journal, entries: Vec<Entry>) -> Result<(Self, Recovered)> {
        let dir = config.run_dir.clone();
        let Some(Entry::Start {
            run_id,
            instance,
            config: recorded,
            at_ms,
        }) = entries.first().cloned()
        else {
            return Err(Error::Corrupt {
                path: dir.join(journal::FILE),
                reason: "does not begin with the run's start".into(),
            });
        };
        if recorded != config.resolved {
            let fields = differences(&recorded, &config.resolved, "");
            return Err(Error::RunDirectory {
                path: dir,
                reason: format!(
                    "holds run {run_id} of another scenario ({} differ{}); resume it with the same \
                     scenario, or give another --out",
                    fields.join(", "),
                    if fields.len() == 1 { "s" } else { "" }
                ),
            });
        }
        let path = dir.join("metrics.jsonl");
        // Rebuilt first: metrics.jsonl is what the journal says, exactly, so a crash
        // between the two files neither loses nor repeats a row.
        let mut rows = Vec::new();
        for entry in &entries {
            if let Entry::Round { rows: r, .. } = entry {
                rows.extend(r.iter().cloned());
            }
        }
        let mut text = String::new();
        for row in &rows {
            text.push_str(&serde_json::to_string(row)?);
            text.push('\n');
        }
        write_atomic(&path, text.as_bytes(), Mode::Public).map_err(|e| Error::io(&path, e))?;
        let down_s = (now_ms().saturating_sub(entries.last().map_or(at_ms, Entry::at_ms))) as f64 / 1e3;
        let mut report = Self::new(config, dir.clone(), journal, open_append(&path)?, at_ms);
        report.rows = rows;
        report.late = MetricsRow::read_late(&dir)?;
        report.instance = instance;
        let mut recovered = Recovered {
            next_round: 0,
            events: Vec::new(),
            members: Vec::new(),
        };
        let mut last_round = None;
        for entry in &entries {
            match entry {
                Entry::Member {
                    event,
                    model,
                    parameters,
                    ..
                } => {
                    match recovered.members.iter_mut().find(|m| m.0 == event.node) {
                        Some(m) if !model.is_empty() => (m.1, m.2) = (model.clone(), *parameters),
                        Some(_) => {}
                        None => recovered.members.push((event.node, model.clone(), *parameters)),
                    }
                    recovered.events.push(event.clone());
                }
                Entry::Round {
                    round, round_ms, rows, ..
                } => {
                    report.round_ms.push(*round_ms);
                    report.rounds_closed += 1;
                    report.failed_rounds += u32::from(rows.is_empty());
                    last_round = Some(*round);
                }
                Entry::Resume {
                    after_round, down_s, ..
                } => report.outages.push(Outage {
                    after_round: *after_round,
                    down_s: *down_s,
                }),
                Entry::Start { .. } | Entry::End { .. } => {}
            }
        }
        // Rounds are numbered from 1 in every record; the next round's index is the
        // last closed round's number.
        recovered.next_round = last_round.unwrap_or(0);
        report.journal.append(&Entry::Resume {
            after_round: last_round,
            down_s,
            at_ms: now_ms(),
        })?;
        report.outages.push(Outage {
            after_round: last_round,
            down_s,
        });
        tracing::warn!(
            run = %run_id,
            rounds_closed = report.rounds_closed,
            next_round = recovered.next_round,
            down_s = format!("{down_s:.1}"),
            "resuming the run from its journal"
        );
        Ok((report, recovered))
    }

    pub fn rounds_closed(&self) -> u32 {
        self.rounds_closed
    }

    /// This run's random instance (the same across a coordinator's restarts).
    /// Every row reported so far, in the order they were written.
    pub fn rows(&self) -> &[MetricsRow] {
        &self.rows
    }

    /// The run directory.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// How many rows `node` has in the run so far.
    /// The run's emulated clock: the emulated spans of the closed rounds, summed.
    pub fn emulated_so_far(&self) -> f64 {
        let mut spans: std::collections::BTreeMap<u32, f64> = Default::default();
        for r in &self.rows {
            // Rows written before rounds recorded their span: the last node's time.
            let span = if r.round_emulated_s > 0.0 {
                r.round_emulated_s
            } else {
                r.metrics.emulated_round_s
            };
            let entry = spans.entry(r.round).or_default();
            *entry = entry.max(span);
        }
        // (A fold from +0.0: an empty f64 sum is −0.0.)
        spans.values().fold(0.0, |total, span| total + span)
    }

    /// Records where the devices are in round `round` (from 1), at emulated time
    /// `emulated_s`, and who hears whom: `positions.jsonl`, one line per round of a run
    /// whose devices move.
    pub fn file_positions(
        &mut self,
        round: u32,
        emulated_s: f64,
        positions: &[wdml_channel::Position],
        neighbours: &[Vec<u32>],
    ) -> Result<()> {
        #[derive(Serialize)]
        struct Line<'a> {
            round: u32,
            emulated_s: f64,
            positions: Vec<[f64; 2]>,
            neighbours: &'a [Vec<u32>],
        }
        let line = Line {
            round,
            emulated_s,
            positions: positions.iter().map(|p| [p.x_m, p.y_m]).collect(),
            neighbours,
        };
        self.append_line(POSITIONS_FILE, &line)
    }

    /// Records what the radio policies decided in a round: `policy.jsonl`.
    pub fn file_decisions(&mut self, decisions: &Decisions) -> Result<()> {
        self.append_line(POLICY_FILE, decisions)
    }

    /// Appends `value` as one JSON line to `file` of the run directory, flushed to disk.
    fn append_line(&self, file: &str, value: &impl Serialize) -> Result<()> {
        let path = self.dir.join(file);
        let mut line = serde_json::to_string(value)?;
        line.push('\n');
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        append_durable(&mut file, line.as_bytes()).map_err(|e| Error::io(&path, e))
    }

    pub fn rows_of(&self, node: u32) -> u32 {
        self.rows.iter().filter(|r| r.node == node).count() as u32
    }

    /// Whether any report of `node` counted, in time or late.
    pub fn reported_any(&self, node: u32) -> bool {
        self.rows.iter().chain(&self.late).any(|r| r.node == node)
    }

    /// Records a membership event in the journal.
    /// Journals membership events, each with its member's model and parameters, in one
    /// group commit.
    pub fn record_members(&mut self, events: impl IntoIterator<Item = (MembershipEvent, String, u64)>) -> Result<()> {
        let at_ms = now_ms();
        let entries: Vec<Entry> = events
            .into_iter()
            .map(|(event, model, parameters)| Entry::Member {
                event,
                model,
                parameters,
                at_ms,
            })
            .collect();
        self.journal.append_all(&entries)
    }

    /// Files the round: into the journal (durable), then `metrics.jsonl`; returns the
    /// round's event.
    pub fn close_round(
        &mut self,
        open: &OpenRound,
        participants: &[u32],
        closed: Instant,
        members: &Members,
        emulated_s: f64,
    ) -> Result<RoundClosed> {
        let round_ms = ms(closed - open.started);
        let mut rows = Vec::new();
        for (&node, (metrics, at)) in &open.reported {
            let model = members.get(node).map(|m| m.model.clone()).unwrap_or_default();
            rows.push(MetricsRow::new(
                open.round + 1,
                node,
                model,
                metrics,
                ms(closed - *at),
                round_ms,
                emulated_s,
            ));
        }
        self.journal.append(&Entry::Round {
            round: open.round + 1,
            round_ms,
            sent: participants.to_vec(),
            rows: rows.clone(),
            at_ms: now_ms(),
        })?;
        let mut lines = String::new();
        for row in &rows {
            lines.push_str(&serde_json::to_string(row)?);
            lines.push('\n');
        }
        // Into the kernel, not onto the disk: the journal above is the durable record,
        // metrics.jsonl is rebuilt from it whenever a run resumes, and synced once at
        // the end (write_summary). A second fsync here was half the coordinator's gap
        // between rounds.
        let path = self.dir.join("metrics.jsonl");
        self.metrics
            .write_all(lines.as_bytes())
            .map_err(|e| Error::io(&path, e))?;
        let honest: Vec<f64> = rows
            .iter()
            .filter(|r| !self.adversaries.contains(&r.node))
            .map(|r| r.metrics.test_accuracy)
            .collect();
        let event = RoundClosed {
            round: open.round + 1,
            rounds: self.rounds_planned,
            reported: rows.len() as u32,
            missing: (participants.len() - rows.len()) as u32,
            mean_accuracy: mean(&honest).unwrap_or(0.0),
            min_accuracy: honest.iter().copied().reduce(f64::min).unwrap_or(0.0),
            wire_bytes: total(rows.iter().map(|r| r.metrics.wire_bytes_sent)),
            wall_ms: round_ms,
            airtime_s: rows.iter().map(|r| r.metrics.airtime_s).sum(),
            energy_j: rows.iter().map(|r| r.metrics.tx_energy_j + r.metrics.rx_energy_j).sum(),
            emulated_s,
        };
        self.failed_rounds += u32::from(rows.is_empty());
        self.rows.extend(rows);
        self.round_ms.push(round_ms);
        self.rounds_closed += 1;
        Ok(event)
    }

    /// Files a report that came after its round closed (round policy `quorum` or
    /// `deadline`, or the round timeout) in `late.jsonl`: its work counted in no
    /// round, but its radio and compute were spent. Not in the journal: a line lost to
    /// a crash loses a record of cost, never a result.
    pub fn file_late(&mut self, round: u32, node: u32, model: String, metrics: &RoundMetrics) -> Result<()> {
        let row = MetricsRow {
            late: true,
            ..MetricsRow::new(round, node, model, metrics, 0.0, 0.0, 0.0)
        };
        self.append_line(LATE_FILE, &row)?;
        self.late.push(row);
        Ok(())
    }

    /// Node `id`'s newest model's accuracy: its last report, in time or late.
    fn newest_accuracy(&self, id: u32) -> Option<(u32, f64)> {
        self.rows
            .iter()
            .chain(&self.late)
            .filter(|r| r.node == id)
            .max_by_key(|r| r.round)
            .map(|r| (r.round, r.metrics.test_accuracy))
    }

    /// Whether every round that closed had no report at all (every node failed).
    /// The closed round that heard from the fewest nodes, and how many it heard from
    /// (the first such round; `None` before any round closed).
    pub fn thinnest_round(&self) -> Option<(u32, usize)> {
        let mut reported = vec![0usize; self.rounds_closed as usize];
        for row in &self.rows {
            if let Some(count) = reported.get_mut((row.round as usize).wrapping_sub(1)) {
                *count += 1;
            }
        }
        reported
            .iter()
            .enumerate()
            .min_by_key(|&(_, &count)| count)
            .map(|(i, &count)| (i as u32 + 1, count))
    }

    /// Whether the last closed round has a report.
    pub fn last_round_heard_from_anyone(&self) -> bool {
        self.rounds_closed > 0 && self.rows.iter().any(|r| r.round == self.rounds_closed)
    }

    pub fn every_round_failed(&self) -> bool {
        self.rounds_closed > 0 && self.failed_rounds == self.rounds_closed
    }

    /// Writes `split.json`: every known member's shard, as its Hello described it.
    pub fn write_split(&self, members: &Members, partition: &str, overlap: Option<&PublicOverlap>) -> Result<()> {
        let record = SplitRecord {
            public_overlap: overlap.cloned(),
            partition: partition.to_string(),
            nodes: members
                .all()
                .filter(|m| !m.histogram.is_empty())
                .map(|m| NodeSplit {
                    node: m.id,
                    samples: m.histogram.iter().map(|&c| u64::from(c)).sum(),
                    histogram: m.histogram.clone(),
                })
                .collect(),
        };
        let path = self.dir.join("split.json");
        let json = serde_json::to_string_pretty(&record)? + "\n";
        write_atomic(&path, json.as_bytes(), Mode::Public).map_err(|e| Error::io(&path, e))
    }

    /// Writes `channel.json`.
    pub fn write_channel(&self, record: &ChannelRecord) -> Result<()> {
        let path = self.dir.join(CHANNEL_FILE);
        let json = serde_json::to_string_pretty(record)? + "\n";
        write_atomic(&path, json.as_bytes(), Mode::Public).map_err(|e| Error::io(&path, e))
    }

    /// Writes `links.json`: every directed link between neighbours, with its distance
    /// and long-term SNR on `channel` (the devices where they were placed).
    pub fn write_links(&self, channel: &wdml_channel::Channel, neighbours: &[Vec<u32>]) -> Result<()> {
        let mut links = Vec::new();
        for (from, tos) in neighbours.iter().enumerate() {
            for &to in tos {
                let link = wdml_channel::Link::new(from, to as usize);
                let field = |e: wdml_channel::Error| Error::Config {
                    field: "channel".into(),
                    reason: e.to_string(),
                };
                links.push(LinkRecord {
                    from: from as u32,
                    to,
                    distance_m: channel.distance_m(link).map_err(field)?,
                    mean_snr_db: channel.mean_snr_db(link).map_err(field)?,
                });
            }
        }
        let mean_snr_db = links.iter().map(|l| l.mean_snr_db).sum::<f64>() / links.len().max(1) as f64;
        let path = self.dir.join("links.json");
        let positions = channel.positions().iter().map(|p| [p.x_m, p.y_m]).collect();
        let record = LinksRecord {
            positions,
            links,
            mean_snr_db,
        };
        let json = serde_json::to_string_pretty(&record)? + "\n";
        write_atomic(&path, json.as_bytes(), Mode::Public).map_err(|e| Error::io(&path, e))
    }

    /// Builds the summary from the rows and the membership, writes `summary.json` and
    /// `report.md`, and records the end in the journal.
    pub fn write_summary(&mut self, members: &Members, finished: bool, reason: &str) -> Result<Summary> {
        // Every row on the disk before the journal says the run ended.
        let path = self.dir.join("metrics.jsonl");
        self.metrics.sync_data().map_err(|e| Error::io(&path, e))?;
        let last_round = self.rows.iter().map(|r| r.round).max();
        let mut final_accuracies: Vec<f64> = self
            .rows
            .iter()
            .filter(|r| Some(r.round) == last_round && !self.adversaries.contains(&r.node))
            .map(|r| r.metrics.test_accuracy)
            .collect();
        // A straggler not in the last round counts with its newest model if it
        // reported it late (semi-synchronous rounds).
        let late_nodes: std::collections::BTreeSet<u32> = self.late.iter().map(|r| r.node).collect();
        for id in late_nodes {
            let in_last = self.rows.iter().any(|r| r.node == id && Some(r.round) == last_round);
            if in_last || self.adversaries.contains(&id) {
                continue;
            }
            if let Some((round, accuracy)) = self.newest_accuracy(id)
                && self.late.iter().any(|r| r.node == id && r.round == round)
            {
                final_accuracies.push(accuracy);
            }
        }
        let nodes = members
            .all()
            .map(|m| {
                let rows: Vec<&MetricsRow> = self.rows.iter().filter(|r| r.node == m.id).collect();
                let status = match m.presence {
                    // Joined and still there, but no report of it ever came, in time or late.
                    Presence::Live | Presence::Joined if !self.reported_any(m.id) => "never reported",
                    Presence::Live | Presence::Joined => "finished",
                    Presence::Gone => "gone",
                    Presence::Left => "left",
                };
                let sum = |f: fn(&MetricsRow) -> f64| rows.iter().map(|r| f(r)).sum::<f64>();
                let mean_of = |f: fn(&MetricsRow) -> f64| {
                    if rows.is_empty() {
                        0.0
                    } else {
                        sum(f) / rows.len() as f64
                    }
                };
                NodeSummary {
                    id: m.id,
                    model: m.model.clone(),
                    parameters: m.parameters,
                    private_samples: rows.first().map_or(0, |r| r.metrics.private_samples),
                    status: status.to_string(),
                    adversary: self.adversaries.contains(&m.id),
                    rounds_reported: rows.len() as u32,
                    late_reports: members
                        .events
                        .iter()
                        .filter(|e| e.node == m.id && e.event == "late")
                        .count() as u32,
                    final_accuracy: self.newest_accuracy(m.id).map(|(_, a)| a),
                    best_accuracy: rows.iter().map(|r| r.metrics.test_accuracy).reduce(f64::max),
                    epsilon: rows.iter().max_by_key(|r| r.round).and_then(|r| r.metrics.epsilon),
                    payload_bytes_sent: total(rows.iter().map(|r| r.metrics.payload_bytes_sent)),
                    wire_bytes_sent: total(rows.iter().map(|r| r.metrics.wire_bytes_sent)),
                    wire_bytes_received: total(rows.iter().map(|r| r.metrics.wire_bytes_received)),
                    messages_lost: total(rows.iter().map(|r| r.metrics.messages_lost)),
                    messages_rejected: total(rows.iter().map(|r| r.metrics.messages_rejected)),
                    airtime_s: sum(|r| r.metrics.airtime_s),
                    tx_energy_j: sum(|r| r.metrics.tx_energy_j),
                    rx_energy_j: sum(|r| r.metrics.rx_energy_j),
                    mean_compute_ms: mean_of(|r| r.metrics.compute_ms),
                    mean_exchange_ms: mean_of(|r| r.metrics.exchange_ms),
                    mean_wait_ms: mean_of(|r| r.wait_ms),
                }
            })
            .collect();
        let summary = Summary {
            run_id: self.run_id.clone(),
            algorithm: self.algorithm.clone(),
            finished,
            reason: reason.to_string(),
            rounds_planned: self.rounds_planned,
            rounds_closed: self.rounds_closed,
            failed_rounds: self.failed_rounds,
            wall_s: now_ms().saturating_sub(self.started_ms) as f64 / 1e3,
            mean_final_accuracy: mean(&final_accuracies),
            median_final_accuracy: median(&final_accuracies),
            min_final_accuracy: final_accuracies.iter().copied().reduce(f64::min),
            mean_round_ms: mean(&self.round_ms).unwrap_or(0.0),
            nodes,
            events: members.events.iter().map(MembershipEventRecord::from).collect(),
            outages: self.outages.clone(),
        };
        let path = self.dir.join("summary.json");
        let json = serde_json::to_string_pretty(&summary)? + "\n";
        write_atomic(&path, json.as_bytes(), Mode::Public).map_err(|e| Error::io(&path, e))?;
        let path = self.dir.join("report.md");
        let markdown = format!("# {}\n\n```text\n{}```\n", summary.run_id, summary.table());
        write_atomic(&path, markdown.as_bytes(), Mode::Public).map_err(|e| Error::io(&path, e))?;
        self.journal.append(&Entry::End {
            finished,
            reason: reason.to_string(),
            at_ms: now_ms(),
        })?;
        Ok(summary)
    }
}

fn open_append(path: &Path) -> Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map_err(|e| Error::io(path, e))
}

/// The paths at which two JSON values differ, e.g. `run.rounds`.
fn differences(a: &serde_json::Value, b: &serde_json::Value, at: &str) -> Vec<String> {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter()
                .flat_map(|k| {
                    let path = if at.is_empty() { k.clone() } else { format!("{at}.{k}") };
                    match (x.get(k), y.get(k)) {
                        (Some(v), Some(w)) => differences(v, w, &path),
                        _ => vec![path],
                    }
                })
                .collect()
        }
        _ if a == b => Vec::new(),
        _ => vec![if at.is_empty() {
            "the scenario".into()
        } else {
            at.into()
        }],
    }
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// The middle value (the mean of the two middle ones for an even count).
fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        n if n % 2 == 1 => Some(sorted[n / 2]),
        n => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

/// A counter's total over rows, saturating at `R`'s largest value instead of wrapping
/// (a u64 sum never fails to fit a u64; a u32 total that would not fit is u32::MAX):
/// the reports were checked against what they can be, this is the last defence.
fn total<T: Into<u64>, R: From<u32> + TryFrom<u64>>(values: impl Iterator<Item = T>) -> R {
    let sum = values.fold(0u64, |acc, v| acc.saturating_add(v.into()));
    R::try_from(sum).unwrap_or_else(|_| R::from(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_saturate_and_the_median_is_the_middle() {
        let bytes: u64 = total([u64::MAX, 5].into_iter());
        assert_eq!(bytes, u64::MAX);
        let lost: u32 = total([u32::MAX, 5].into_iter());
        assert_eq!(lost, u32::MAX);
        assert_eq!(median(&[0.7, 1.0, 0.6]), Some(0.7));
        assert_eq!(median(&[0.6, 0.8, 0.7, 1.0]), Some(0.75));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn a_row_being_appended_is_not_read_and_a_malformed_one_is_an_error() {
        let dir = std::env::temp_dir().join(format!("wdml-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let row = |round: u32| {
            serde_json::to_string(&MetricsRow {
                round,
                ..MetricsRow::default()
            })
            .unwrap()
        };
        let path = dir.join("metrics.jsonl");
        // Two rows, and the first half of a third (its writer not done yet).
        let third = row(3);
        std::fs::write(&path, format!("{}\n{}\n{}", row(1), row(2), &third[..third.len() / 2])).unwrap();
        let rows = MetricsRow::read_all(&dir).unwrap();
        assert_eq!(rows.iter().map(|r| r.round).collect::<Vec<_>>(), [1, 2]);
        // A complete line that is not a row is corrupt, naming it.
        std::fs::write(&path, format!("{}\n{{\"round\":\n{}\n", row(1), row(2))).unwrap();
        let error = MetricsRow::read_all(&dir).unwrap_err().to_string();
        assert!(error.contains("line 2"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
