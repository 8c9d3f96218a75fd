//! The run directory: `config.json` (the resolved scenario), `metrics.jsonl` (one row
//! per node per round, appended as rounds close) and `summary.json` (at the end).

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use wdml_proto::{Algorithm, RoundClosed, RoundMetrics};

use crate::members::{Members, MembershipEvent, Presence};
use crate::service::OpenRound;
use crate::{Config, Result};

/// One node's report for one round, as written to `metrics.jsonl`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricsRow {
    pub round: u32,
    pub node: u32,
    pub model: String,
    pub private_samples: u32,
    pub train_loss: f64,
    pub ce_loss: f64,
    pub kl_loss: f64,
    pub test_accuracy: f64,
    pub test_loss: f64,
    pub payload_bytes_sent: u64,
    pub payload_bytes_received: u64,
    pub wire_bytes_sent: u64,
    pub wire_bytes_received: u64,
    pub messages_sent: u32,
    pub messages_received: u32,
    pub messages_lost: u32,
    pub messages_rejected: u32,
    pub peers_heard: u32,
    pub frames_sent: u32,
    pub frames_lost: u32,
    pub retransmissions: u32,
    pub airtime_s: f64,
    pub tx_energy_j: f64,
    pub rx_energy_j: f64,
    /// Model work: inference on the public batch, local steps, evaluation.
    pub compute_ms: f64,
    /// CPU time of that work (the node's process): its cost, whatever shares the cores.
    /// (Absent from run directories written before it was measured.)
    #[serde(default)]
    pub compute_cpu_ms: f64,
    /// Sending predictions and waiting for the neighbours'.
    pub exchange_ms: f64,
    /// Idle at the barrier: from this node's report until the round closed.
    pub wait_ms: f64,
    /// The whole round, from StartRound until it closed.
    pub round_ms: f64,
}

impl MetricsRow {
    /// Reads every row of a run directory's `metrics.jsonl`; a malformed line is an
    /// error naming its line number.
    pub fn read_all(run_dir: &Path) -> Result<Vec<MetricsRow>> {
        let path = run_dir.join("metrics.jsonl");
        let text = fs::read_to_string(&path)?;
        text.lines()
            .enumerate()
            .map(|(i, line)| {
                serde_json::from_str(line).map_err(|e| {
                    let reason = format!("{}, line {}: {e}", path.display(), i + 1);
                    std::io::Error::new(std::io::ErrorKind::InvalidData, reason).into()
                })
            })
            .collect()
    }

    fn new(round: u32, node: u32, model: String, m: &RoundMetrics, wait_ms: f64, round_ms: f64) -> Self {
        MetricsRow {
            round,
            node,
            model,
            private_samples: m.private_samples,
            train_loss: m.train_loss,
            ce_loss: m.ce_loss,
            kl_loss: m.kl_loss,
            test_accuracy: m.test_accuracy,
            test_loss: m.test_loss,
            payload_bytes_sent: m.payload_bytes_sent,
            payload_bytes_received: m.payload_bytes_received,
            wire_bytes_sent: m.wire_bytes_sent,
            wire_bytes_received: m.wire_bytes_received,
            messages_sent: m.messages_sent,
            messages_received: m.messages_received,
            messages_lost: m.messages_lost,
            messages_rejected: m.messages_rejected,
            peers_heard: m.peers_heard,
            frames_sent: m.frames_sent,
            frames_lost: m.frames_lost,
            retransmissions: m.retransmissions,
            airtime_s: m.airtime_s,
            tx_energy_j: m.tx_energy_j,
            rx_energy_j: m.rx_energy_j,
            compute_ms: m.compute_ms,
            compute_cpu_ms: m.compute_cpu_ms,
            exchange_ms: m.exchange_ms,
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
    /// "finished", "gone" or "left".
    pub status: String,
    pub rounds_reported: u32,
    pub final_accuracy: Option<f64>,
    pub best_accuracy: Option<f64>,
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
    pub wall_s: f64,
    /// Mean over the nodes that reported the last closed round.
    pub mean_final_accuracy: Option<f64>,
    pub min_final_accuracy: Option<f64>,
    pub mean_round_ms: f64,
    pub nodes: Vec<NodeSummary>,
    pub events: Vec<MembershipEventRecord>,
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
            event: e.event.to_string(),
            round: e.round,
            reason: e.reason.clone(),
        }
    }
}

/// Writes the run directory as the run goes.
pub(crate) struct Report {
    dir: PathBuf,
    metrics: BufWriter<File>,
    rows: Vec<MetricsRow>,
    round_ms: Vec<f64>,
    rounds_closed: u32,
    started: Instant,
    run_id: String,
    algorithm: String,
    rounds_planned: u32,
}

impl Report {
    /// Creates the directory and writes `config.json`.
    pub fn create(config: &Config) -> Result<Self> {
        let dir = config.run_dir.clone();
        fs::create_dir_all(&dir)?;
        let resolved = serde_json::to_string_pretty(&config.resolved)?;
        fs::write(dir.join("config.json"), resolved + "\n")?;
        let metrics = BufWriter::new(File::create(dir.join("metrics.jsonl"))?);
        Ok(Report {
            metrics,
            rows: Vec::new(),
            round_ms: Vec::new(),
            rounds_closed: 0,
            started: Instant::now(),
            run_id: config.settings.run_id.clone(),
            algorithm: algorithm_name(config.settings.algorithm()).to_string(),
            rounds_planned: config.settings.rounds,
            dir,
        })
    }

    pub fn rounds_closed(&self) -> u32 {
        self.rounds_closed
    }

    /// Appends the round's rows to `metrics.jsonl` and returns the round's event.
    pub fn close_round(
        &mut self,
        open: &OpenRound,
        participants: &[u32],
        closed: Instant,
        members: &Members,
    ) -> RoundClosed {
        let round_ms = ms(closed - open.started);
        let mut accuracies = Vec::new();
        let mut wire_bytes = 0;
        let (mut airtime_s, mut energy_j) = (0.0, 0.0);
        for (&node, (metrics, at)) in &open.reported {
            let model = members.get(node).map(|m| m.model.clone()).unwrap_or_default();
            let row = MetricsRow::new(open.round, node, model, metrics, ms(closed - *at), round_ms);
            accuracies.push(row.test_accuracy);
            wire_bytes += row.wire_bytes_sent;
            airtime_s += row.airtime_s;
            energy_j += row.tx_energy_j + row.rx_energy_j;
            self.write_row(&row);
            self.rows.push(row);
        }
        if let Err(e) = self.metrics.flush() {
            tracing::error!("cannot write metrics.jsonl: {e}");
        }
        self.round_ms.push(round_ms);
        self.rounds_closed += 1;
        RoundClosed {
            round: open.round,
            rounds: self.rounds_planned,
            reported: open.reported.len() as u32,
            missing: (participants.len() - open.reported.len()) as u32,
            mean_accuracy: mean(&accuracies).unwrap_or(0.0),
            min_accuracy: accuracies.iter().copied().reduce(f64::min).unwrap_or(0.0),
            wire_bytes,
            wall_ms: round_ms,
            airtime_s,
            energy_j,
        }
    }

    fn write_row(&mut self, row: &MetricsRow) {
        let line = serde_json::to_string(row).expect("a metrics row always serialises");
        if let Err(e) = writeln!(self.metrics, "{line}") {
            tracing::error!("cannot write metrics.jsonl: {e}");
        }
    }

    /// Builds the summary from the rows and the membership, and writes `summary.json`.
    pub fn write_summary(&self, members: &Members, finished: bool, reason: &str) -> Result<Summary> {
        let last_round = self.rows.iter().map(|r| r.round).max();
        let final_accuracies: Vec<f64> = self
            .rows
            .iter()
            .filter(|r| Some(r.round) == last_round)
            .map(|r| r.test_accuracy)
            .collect();
        let nodes = members
            .all()
            .map(|m| {
                let rows: Vec<&MetricsRow> = self.rows.iter().filter(|r| r.node == m.id).collect();
                let status = match m.presence {
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
                    private_samples: rows.first().map_or(0, |r| r.private_samples),
                    status: status.to_string(),
                    rounds_reported: rows.len() as u32,
                    final_accuracy: rows.last().map(|r| r.test_accuracy),
                    best_accuracy: rows.iter().map(|r| r.test_accuracy).reduce(f64::max),
                    payload_bytes_sent: rows.iter().map(|r| r.payload_bytes_sent).sum(),
                    wire_bytes_sent: rows.iter().map(|r| r.wire_bytes_sent).sum(),
                    wire_bytes_received: rows.iter().map(|r| r.wire_bytes_received).sum(),
                    messages_lost: rows.iter().map(|r| r.messages_lost).sum(),
                    messages_rejected: rows.iter().map(|r| r.messages_rejected).sum(),
                    airtime_s: sum(|r| r.airtime_s),
                    tx_energy_j: sum(|r| r.tx_energy_j),
                    rx_energy_j: sum(|r| r.rx_energy_j),
                    mean_compute_ms: mean_of(|r| r.compute_ms),
                    mean_exchange_ms: mean_of(|r| r.exchange_ms),
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
            wall_s: self.started.elapsed().as_secs_f64(),
            mean_final_accuracy: mean(&final_accuracies),
            min_final_accuracy: final_accuracies.iter().copied().reduce(f64::min),
            mean_round_ms: mean(&self.round_ms).unwrap_or(0.0),
            nodes,
            events: members.events.iter().map(MembershipEventRecord::from).collect(),
        };
        fs::write(
            self.dir.join("summary.json"),
            serde_json::to_string_pretty(&summary)? + "\n",
        )?;
        fs::write(
            self.dir.join("report.md"),
            format!("# {}\n\n```text\n{}```\n", summary.run_id, summary.table()),
        )?;
        Ok(summary)
    }
}

/// The name an algorithm goes by in configs and reports.
pub fn algorithm_name(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::Dml => "dml",
        Algorithm::Local => "local",
        Algorithm::Fedavg => "fedavg",
        Algorithm::Unspecified => "unspecified",
    }
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}
