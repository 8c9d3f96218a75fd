//! The dashboard: a read-only web page of the run, its JSON API and a Prometheus
//! `/metrics`, served by the coordinator while the run goes on (updates pushed with
//! server-sent events as rounds close) and by `wdml view RUN_DIR` after it.
//!
//! Both read one [`RunView`]: a snapshot of the run built either from the
//! coordinator's live state or from a run directory (or, for a comparison, from each
//! algorithm's run directory: [`Source::compare`]), so the page, the API and
//! `/metrics` say the same thing whichever serves them. A snapshot is built once per
//! change (a report, a closed round, a membership event) and shared by every route
//! and page until the next. Every asset is in the binary.
//!
//! | route | what |
//! | --- | --- |
//! | `/` | the page (`dashboard/index.html`, `dashboard/app.js`: plain SVG, no build step) |
//! | `/api/run` | the run: id, algorithm, rounds planned and closed, finished, live |
//! | `/api/nodes` | each node: id, model, parameters, status, position |
//! | `/api/rounds` | every `metrics.jsonl` row so far; `?since=R`: those of rounds after R |
//! | `/api/links` | `links.json`: each neighbour link's distance and long-term SNR, the positions |
//! | `/api/radio` | one round's radio (`?round=R`, default the newest closed): where the devices were, each neighbour link's SNR, rate and outage that round, and what the radio policies decided (`policy`, `policy.jsonl`'s line; absent without a policy) (`null` without an emulated radio) |
//! | `/api/membership` | membership events: joined, gone, rejoined, left, … with their round |
//! | `/api/compare` | a comparison's algorithms side by side: each one's curve (`wdml compare`'s) |
//! | `/api/events` | server-sent events: `round` (a round closed), `finished` |
//! | `/metrics` | Prometheus text: the run's counters and gauges |
//!
//! Every route asks for the run's observer certificate (mutual TLS) or its dashboard
//! token ([`Access`]): `Authorization: Bearer`,
//! the cookie the page's own URL sets (`?token=`, as printed), or that query parameter;
//! anything else gets 401 and nothing of the run. `--dashboard-public` opts out, loudly.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde::Serialize;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::BroadcastStream;
use wdml_proto::run_event;
use wdml_transport::Identity;

use crate::members::Presence;
use crate::metrics;
use crate::report::{
    CHANNEL_FILE, ChannelRecord, Decisions, LinksRecord, MembershipEventRecord, MetricsRow, POLICY_FILE,
    POSITIONS_FILE, Summary,
};
use crate::state::Shared;

const INDEX: &str = include_str!("dashboard/index.html");
const APP: &str = include_str!("dashboard/app.js");

/// Where the dashboard reads the run: the coordinator's live state, or a run
/// directory ([`Source::dir`]); and the newest snapshot of it.
#[derive(Clone)]
pub struct Source {
    origin: Origin,
    newest: Arc<Mutex<Option<Versioned>>>,
}

/// A snapshot and the version of the run it was built from.
type Versioned = (Vec<u64>, Arc<RunView>);

#[derive(Clone)]
enum Origin {
    Live(Arc<Shared>),
    Dir(PathBuf),
    Compare(PathBuf),
}

impl Source {
    /// A run directory (a finished or stopped run).
    pub fn dir(path: impl Into<PathBuf>) -> Source {
        Source::of(Origin::Dir(path.into()))
    }

    /// A comparison's directory (`wdml compare --out`): one run directory per
    /// algorithm, finished or under way.
    pub fn compare(path: impl Into<PathBuf>) -> Source {
        Source::of(Origin::Compare(path.into()))
    }

    /// The coordinator's live state.
    pub(crate) fn live(shared: Arc<Shared>) -> Source {
        Source::of(Origin::Live(shared))
    }

    fn of(origin: Origin) -> Source {
        Source {
            origin,
            newest: Arc::new(Mutex::new(None)),
        }
    }

    /// What a snapshot depends on, cheap to read: when it is unchanged, so is the run.
    fn version(&self) -> Vec<u64> {
        match &self.origin {
            Origin::Live(shared) => {
                let mut version = {
                    let state = shared.state();
                    let mut v = vec![u64::from(state.finished), state.members.recorded];
                    v.extend(state.members.all().map(|m| m.id as u64 * 8 + m.presence as u64));
                    v
                };
                let report = shared.report();
                version.extend([report.rows().len() as u64, u64::from(report.rounds_closed())]);
                version.extend(files_version(report.dir(), &["links.json"]));
                version
            }
            Origin::Dir(dir) => files_version(
                dir,
                &[
                    "summary.json",
                    "metrics.jsonl",
                    "links.json",
                    POSITIONS_FILE,
                    POLICY_FILE,
                    CHANNEL_FILE,
                ],
            ),
            Origin::Compare(dir) => {
                let mut version = files_version(dir, &["comparison.json"]);
                for (_, run) in algorithm_dirs(dir) {
                    version.extend(files_version(&run, &["metrics.jsonl", "late.jsonl", "summary.json"]));
                }
                version
            }
        }
    }

    /// The snapshot of the run now: the one already built if nothing changed since.
    pub fn view(&self) -> crate::Result<Arc<RunView>> {
        let version = self.version();
        if let Some((seen, view)) = &*self.newest.lock().unwrap_or_else(|p| p.into_inner())
            && *seen == version
        {
            return Ok(view.clone());
        }
        let view = Arc::new(match &self.origin {
            Origin::Live(shared) => RunView::live(shared),
            Origin::Dir(dir) => RunView::from_dir(dir)?,
            Origin::Compare(dir) => RunView::from_compare(dir)?,
        });
        *self.newest.lock().unwrap_or_else(|p| p.into_inner()) = Some((version, view.clone()));
        Ok(view)
    }
}

/// Each file's length and modification time (0 for a file not there).
fn files_version(dir: &Path, files: &[&str]) -> Vec<u64> {
    files
        .iter()
        .flat_map(|f| {
            let meta = std::fs::metadata(dir.join(f)).ok();
            let modified = meta
                .as_ref()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos() as u64);
            [meta.map_or(0, |m| m.len()), modified]
        })
        .collect()
}

/// The run, as `/api/run` gives it.
#[derive(Clone, Debug, Serialize)]
pub struct RunInfo {
    /// `run`, or `compare` for a comparison (rounds counted over its algorithms).
    pub kind: &'static str,
    pub run_id: String,
    pub algorithm: String,
    pub rounds_planned: u32,
    pub rounds_closed: u32,
    pub nodes: u32,
    pub finished: bool,
    /// Served by the coordinator of a run under way (updates follow on `/api/events`).
    pub live: bool,
}

/// One node, as `/api/nodes` gives it.
#[derive(Clone, Debug, Serialize)]
pub struct NodeInfo {
    pub id: u32,
    pub model: String,
    pub parameters: u64,
    /// `joined`, `live`, `gone`, `left`; after the run, the summary's `finished`,
    /// `never reported`, `gone` or `left`; `absent` for an id that never joined.
    pub status: String,
    /// Where it was placed, metres (none before `links.json` is written).
    pub position: Option<[f64; 2]>,
}

/// A snapshot of the run: what every route reads.
#[derive(Clone, Debug)]
pub struct RunView {
    pub run: RunInfo,
    pub nodes: Vec<NodeInfo>,
    pub rows: Vec<MetricsRow>,
    pub links: LinksRecord,
    pub membership: Vec<MembershipEventRecord>,
    /// What recomputes any round's link states (emulated radios only).
    radio: Option<Radio>,
    /// A comparison's algorithms (empty for a run).
    pub compare: Vec<AlgorithmCurve>,
}

/// One algorithm of a comparison, as `/api/compare` gives it.
#[derive(Clone, Debug, Serialize)]
pub struct AlgorithmCurve {
    pub algorithm: String,
    pub rounds_planned: u32,
    pub nodes: u32,
    /// Its run is over (`summary.json` written); `finished`: every round closed.
    pub ended: bool,
    pub finished: bool,
    pub curve: Vec<crate::CurvePoint>,
}

/// The run directories of a comparison's algorithms, in the order `wdml compare` runs
/// them (local, fedavg, dml; then any other by name).
fn algorithm_dirs(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut runs: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|run| run.join("config.json").exists() || run.join("metrics.jsonl").exists())
        .filter_map(|run| Some((run.file_name()?.to_str()?.to_string(), run)))
        .filter(|(name, _)| name.parse::<wdml_proto::Algorithm>().is_ok())
        .collect();
    let rank = |name: &str| ["local", "fedavg", "dml"].iter().position(|a| *a == name).unwrap_or(3);
    runs.sort_by(|a, b| (rank(&a.0), &a.0).cmp(&(rank(&b.0), &b.0)));
    runs
}

impl RunView {
    /// The snapshot of `source` now.
    pub fn of(source: &Source) -> crate::Result<Arc<RunView>> {
        source.view()
    }

    fn live(shared: &Shared) -> RunView {
        let settings = &shared.config.settings;
        let (presence, finished, membership) = {
            let state = shared.state();
            let presence: Vec<Option<(String, u64, &'static str)>> = (0..settings.nodes)
                .map(|id| {
                    state.members.get(id).map(|m| {
                        let status = match m.presence {
                            Presence::Joined => "joined",
                            Presence::Live => "live",
                            Presence::Gone => "gone",
                            Presence::Left => "left",
                        };
                        (m.model.clone(), m.parameters, status)
                    })
                })
                .collect();
            let membership = state.members.events.iter().map(MembershipEventRecord::from).collect();
            (presence, state.finished, membership)
        };
        let (rows, rounds_closed, links, dir) = {
            let report = shared.report();
            (
                report.rows().to_vec(),
                report.rounds_closed(),
                read_links(report.dir()),
                report.dir().to_path_buf(),
            )
        };
        let radio = (shared.config.channel.shaping == wdml_channel::Shaping::Emulate).then(|| Radio {
            record: ChannelRecord {
                seed: settings.seed,
                nodes: settings.nodes,
                channel: shared.config.channel.clone(),
            },
            neighbours: shared.config.neighbours.clone(),
            moves: read_moves(&dir),
            decisions: read_decisions(&dir),
        });
        let nodes = presence
            .into_iter()
            .enumerate()
            .map(|(id, known)| {
                let (model, parameters, status) = known.unwrap_or_else(|| {
                    let model = settings.models.get(id).cloned().unwrap_or_default();
                    (model, 0, "absent")
                });
                NodeInfo {
                    id: id as u32,
                    model,
                    parameters,
                    status: status.into(),
                    position: links.positions.get(id).copied(),
                }
            })
            .collect();
        RunView {
            run: RunInfo {
                kind: "run",
                run_id: settings.run_id.clone(),
                algorithm: wdml_proto::Algorithm::try_from(settings.algorithm)
                    .map_or("unknown".into(), |a| a.name().to_string()),
                rounds_planned: settings.rounds,
                rounds_closed,
                nodes: settings.nodes,
                finished,
                live: !finished,
            },
            nodes,
            rows,
            links,
            membership,
            radio,
            compare: Vec::new(),
        }
    }

    fn from_dir(dir: &std::path::Path) -> crate::Result<RunView> {
        let text = wdml_files::read_bounded_text(&dir.join("summary.json"), 64 << 20)
            .map_err(|e| crate::Error::io(&dir.join("summary.json"), e))?;
        let summary: Summary = serde_json::from_str(&text).map_err(|e| crate::Error::Config {
            field: "summary.json".into(),
            reason: e.to_string(),
        })?;
        let rows = MetricsRow::read_all(dir)?;
        let links = read_links(dir);
        let nodes = summary
            .nodes
            .iter()
            .map(|n| NodeInfo {
                id: n.id,
                model: n.model.clone(),
                parameters: n.parameters,
                status: n.status.clone(),
                position: links.positions.get(n.id as usize).copied(),
            })
            .collect();
        // The channel as the run resolved it, and the neighbour pairs of links.json.
        let radio = read_json::<ChannelRecord>(&dir.join(CHANNEL_FILE)).map(|record| {
            let mut neighbours = vec![Vec::new(); record.nodes as usize];
            for l in &links.links {
                if let Some(of) = neighbours.get_mut(l.from as usize) {
                    of.push(l.to);
                }
            }
            Radio {
                record,
                neighbours,
                moves: read_moves(dir),
                decisions: read_decisions(dir),
            }
        });
        Ok(RunView {
            run: RunInfo {
                kind: "run",
                run_id: summary.run_id,
                algorithm: summary.algorithm,
                rounds_planned: summary.rounds_planned,
                rounds_closed: summary.rounds_closed,
                nodes: summary.nodes.len() as u32,
                finished: summary.finished,
                live: false,
            },
            nodes,
            rows,
            links,
            membership: summary.events,
            radio,
            compare: Vec::new(),
        })
    }

    /// A comparison: each algorithm's curve, from its run directory as it stands (none
    /// before the first run starts).
    fn from_compare(dir: &Path) -> crate::Result<RunView> {
        let mut compare = Vec::new();
        for (algorithm, run) in algorithm_dirs(dir) {
            let mut rows = Vec::new();
            if run.join("metrics.jsonl").exists() {
                rows = MetricsRow::read_all(&run)?;
                rows.extend(MetricsRow::read_late(&run)?);
            }
            let config: Option<serde_json::Value> = read_json(&run.join("config.json"));
            let number = |section: &str, field: &str| {
                config.as_ref().and_then(|c| c[section][field].as_u64()).unwrap_or(0) as u32
            };
            let summary: Option<Summary> = read_json(&run.join("summary.json"));
            compare.push(AlgorithmCurve {
                algorithm,
                rounds_planned: number("run", "rounds"),
                nodes: number("nodes", "count"),
                ended: summary.is_some(),
                finished: summary.is_some_and(|s| s.finished),
                curve: crate::curve(&rows),
            });
        }
        let finished = dir.join("comparison.json").exists();
        let run = RunInfo {
            kind: "compare",
            run_id: dir
                .file_name()
                .map_or("comparison".into(), |n| n.to_string_lossy().into_owned()),
            algorithm: compare
                .iter()
                .map(|a| a.algorithm.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            rounds_planned: compare.iter().map(|a| a.rounds_planned).sum(),
            rounds_closed: compare.iter().map(|a| a.curve.len() as u32).sum(),
            nodes: compare.first().map_or(0, |a| a.nodes),
            finished,
            live: !finished,
        };
        Ok(RunView {
            run,
            nodes: Vec::new(),
            rows: Vec::new(),
            links: LinksRecord::default(),
            membership: Vec::new(),
            radio: None,
            compare,
        })
    }

    /// Round `round`'s radio (numbered from 1, as the rows are).
    pub fn radio(&self, round: u32) -> Option<std::result::Result<RadioRound, String>> {
        self.radio.as_ref().map(|radio| radio.round(round))
    }

    /// Prometheus' text format: the run's counters and gauges, per node where they are
    /// per node (the newest row's accuracy, the sums of the radio's cost).
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
            let _ = writeln!(out, "# HELP wdml_{name} {help}\n# TYPE wdml_{name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "wdml_{name}{labels} {value}");
            }
        };
        let run = format!("{{run=\"{}\"}}", self.run.run_id);
        metric(
            "rounds_planned",
            "gauge",
            "Rounds the run plans.",
            &[(run.clone(), f64::from(self.run.rounds_planned))],
        );
        metric(
            "rounds_closed_total",
            "counter",
            "Rounds closed so far.",
            &[(run.clone(), f64::from(self.run.rounds_closed))],
        );
        metric(
            "run_finished",
            "gauge",
            "1 once every round closed.",
            &[(run, f64::from(u8::from(self.run.finished)))],
        );
        let per_node = |f: &dyn Fn(&NodeInfo) -> f64| -> Vec<(String, f64)> {
            self.nodes
                .iter()
                .map(|n| (format!("{{node=\"{}\",model=\"{}\"}}", n.id, n.model), f(n)))
                .collect()
        };
        // One pass over the rows, then a lookup per node: a scrape costs O(rows), not
        // O(nodes × rows) (a 1,024-node run of 100 rounds has 100k rows).
        let totals = metrics::totals(self.rows.iter());
        metric(
            "node_up",
            "gauge",
            "1 while the node takes part (joined or live).",
            &per_node(&|n| f64::from(u8::from(n.status == "live" || n.status == "joined"))),
        );
        metric(
            "node_rounds_reported_total",
            "counter",
            "Rounds the node reported.",
            &per_node(&|n| totals.get(&n.id).map_or(0.0, |t| f64::from(t.rows))),
        );
        // Every metric of the table: an amount as the node's counter, a level as its
        // newest round's gauge (NaN before its first report).
        for (i, m) in metrics::METRICS.iter().enumerate() {
            let (name, scale) = m.prometheus();
            let (kind, help, empty) = match m.kind {
                metrics::Kind::Amount => ("counter", format!("{} Summed over the node's rounds.", m.help), 0.0),
                metrics::Kind::Level => ("gauge", format!("{} The node's newest round.", m.help), f64::NAN),
            };
            let samples = per_node(&|n| totals.get(&n.id).map_or(empty, |t| t.values[i] * scale));
            metric(&name, kind, &help, &samples);
        }
        out
    }
}

/// `links.json` of `dir`, or an empty record before it is written.
fn read_links(dir: &Path) -> LinksRecord {
    read_json(&dir.join("links.json")).unwrap_or_default()
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    let text = wdml_files::read_bounded_text(path, 64 << 20).ok()?;
    serde_json::from_str(&text).ok()
}

/// Where moving devices were each round, from `positions.jsonl` (none when they stay).
fn read_moves(dir: &Path) -> Vec<Moved> {
    let Ok(text) = wdml_files::read_bounded_text(&dir.join(POSITIONS_FILE), 1 << 30) else {
        return Vec::new();
    };
    // A line being written (or torn by a crash) is not a round yet.
    text.lines().map_while(|line| serde_json::from_str(line).ok()).collect()
}

/// What the radio policies decided each round, from `policy.jsonl` (none without one).
fn read_decisions(dir: &Path) -> Vec<Decisions> {
    let Ok(text) = wdml_files::read_bounded_text(&dir.join(POLICY_FILE), 1 << 30) else {
        return Vec::new();
    };
    // A line being written (or torn by a crash) is not a round yet.
    text.lines().map_while(|line| serde_json::from_str(line).ok()).collect()
}

/// One line of `positions.jsonl`.
#[derive(Clone, Debug, serde::Deserialize)]
struct Moved {
    round: u32,
    emulated_s: f64,
    positions: Vec<[f64; 2]>,
    neighbours: Vec<Vec<u32>>,
}

/// What recomputes a round's link states: the channel, as the run resolved it, is
/// deterministic in (seed, link, round), so these are the draws the nodes' shapers made.
#[derive(Clone, Debug)]
struct Radio {
    record: ChannelRecord,
    /// The placement's neighbours (moving devices: each round's are in `moves`).
    neighbours: Vec<Vec<u32>>,
    moves: Vec<Moved>,
    /// `policy.jsonl`, when the run sets a radio policy.
    decisions: Vec<Decisions>,
}

/// One round's radio, as `/api/radio` gives it.
#[derive(Clone, Debug, Serialize)]
pub struct RadioRound {
    pub round: u32,
    /// Emulated seconds at the round's start (where moving devices were).
    pub emulated_s: f64,
    pub positions: Vec<[f64; 2]>,
    pub links: Vec<LinkRound>,
    /// What the radio policies decided this round: who exchanged with whom, at what
    /// power, in which band turn.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<Decisions>,
}

/// One directed neighbour link in one round.
#[derive(Clone, Debug, Serialize)]
pub struct LinkRound {
    pub from: u32,
    pub to: u32,
    pub distance_m: f64,
    /// This round's SNR (fast fading included), dB.
    pub snr_db: f64,
    /// Without fast fading, dB.
    pub mean_snr_db: f64,
    /// This round's rate, bit/s (0 in outage).
    pub rate_bps: f64,
    pub outage: bool,
}

impl Radio {
    fn round(&self, round: u32) -> std::result::Result<RadioRound, String> {
        let ChannelRecord { seed, nodes, channel } = &self.record;
        let moved = self.moves.iter().find(|m| m.round == round);
        if !channel.mobility.is_static() && moved.is_none() {
            return Err(format!(
                "round {round} has not started (or the run's devices never got there)"
            ));
        }
        let emulated_s = moved.map_or(0.0, |m| m.emulated_s);
        let now = channel
            .channel_at(*seed, *nodes as usize, emulated_s)
            .map_err(|e| e.to_string())?;
        let neighbours = moved.map_or(&self.neighbours, |m| &m.neighbours);
        let mut links = Vec::new();
        for (from, tos) in neighbours.iter().enumerate() {
            for &to in tos {
                // The channel numbers rounds from 0.
                let link = wdml_channel::Link::new(from, to as usize);
                let state = now
                    .link_state(link, u64::from(round.saturating_sub(1)))
                    .map_err(|e| e.to_string())?;
                links.push(LinkRound {
                    from: from as u32,
                    to,
                    distance_m: state.distance_m,
                    snr_db: state.snr_db,
                    mean_snr_db: state.mean_snr_db,
                    rate_bps: state.rate_bps,
                    outage: state.outage,
                });
            }
        }
        Ok(RadioRound {
            round,
            emulated_s,
            positions: moved.map_or_else(
                || now.positions().iter().map(|p| [p.x_m, p.y_m]).collect(),
                |m| m.positions.clone(),
            ),
            links,
            policy: self.decisions.iter().find(|d| d.round == round).cloned(),
        })
    }
}

/// The file in a run directory that holds its dashboard token (0600).
pub const TOKEN_FILE: &str = "dashboard.token";

/// Who may read a dashboard.
#[derive(Clone, Debug)]
pub enum Access {
    /// Whoever shows this token: a random secret of the run.
    Token(Arc<str>),
    /// Anyone who reaches the port (`--dashboard-public`: a demo).
    Public,
}

impl Access {
    /// The token of the run directory `dir`: the one in [`TOKEN_FILE`] (a restarted
    /// coordinator, or `wdml view`, keeps the URL its users have), or a new one of 32
    /// bytes from the operating system's random source, written there 0600.
    pub fn token_in(dir: &Path) -> std::io::Result<Access> {
        let path = dir.join(TOKEN_FILE);
        match std::fs::read_to_string(&path) {
            Ok(token) if token.trim().len() >= 32 && token.trim().bytes().all(|b| b.is_ascii_hexdigit()) => {
                return Ok(Access::Token(token.trim().into()));
            }
            Ok(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "{}: not a dashboard token (64 hex digits); delete it to get a new one",
                        path.display()
                    ),
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
        }
        let mut token = String::with_capacity(64);
        for _ in 0..4 {
            write!(token, "{:016x}", wdml_transport::random_secret()?).expect("a String");
        }
        std::fs::create_dir_all(dir)?;
        wdml_files::write_atomic(&path, token.as_bytes(), wdml_files::Mode::Secret)?;
        Ok(Access::Token(token.into()))
    }

    /// The URL a person opens: `base` (`https://host:port/`) with the token, if any.
    pub fn url(&self, base: &str) -> String {
        match self {
            Access::Token(token) => format!("{base}?token={token}"),
            Access::Public => base.to_string(),
        }
    }

    /// Whether `request` may read: it came over a connection whose certificate proves
    /// the run's observer (or coordinator), or it shows the token; a token it brought in
    /// the query is also returned, for the response to set as a cookie.
    fn admits(&self, request: &axum::extract::Request) -> (bool, bool) {
        let Access::Token(token) = self else {
            return (true, false);
        };
        let certified = request
            .extensions()
            .get::<axum::extract::ConnectInfo<wdml_transport::Caller>>()
            .and_then(|info| info.0.identity)
            .is_some_and(|identity| matches!(identity, Identity::Observer | Identity::Coordinator));
        if certified {
            return (true, false);
        }
        let same = |shown: &str| constant_time_eq(shown.as_bytes(), token.as_bytes());
        let headers = request.headers();
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(same);
        let cookie = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().strip_prefix("wdml_token="))
            .any(same);
        let query = request
            .uri()
            .query()
            .into_iter()
            .flat_map(|q| q.split('&'))
            .filter_map(|p| p.strip_prefix("token="))
            .any(same);
        (bearer || cookie || query, query && !cookie)
    }
}

/// Compares two secrets in a time that does not depend on where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Lets through only requests that show the dashboard token ([`Access`]); the rest get
/// 401, and their connection is closed (an idle unauthenticated connection would hold
/// one of the listener's slots).
async fn authenticate(
    State(access): State<Access>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let (admitted, set_cookie) = access.admits(&request);
    if !admitted {
        return (
            StatusCode::UNAUTHORIZED,
            [
                (header::CONNECTION, "close"),
                (header::WWW_AUTHENTICATE, "Bearer realm=\"wdml\""),
            ],
            "authentication required: open the dashboard URL the coordinator printed, or send \
             Authorization: Bearer <the run directory's dashboard.token>\n",
        )
            .into_response();
    }
    let mut response = next.run(request).await;
    if let (true, Access::Token(token)) = (set_cookie, &access)
        && let Ok(cookie) = header::HeaderValue::from_str(&format!(
            "wdml_token={token}; Path=/; Secure; HttpOnly; SameSite=Strict"
        ))
    {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

/// The dashboard's routes over `source`, for whoever `access` admits.
pub fn router(source: Source, access: Access) -> Router {
    Router::new()
        .route("/", get(|| async { page(INDEX, "text/html; charset=utf-8") }))
        .route("/app.js", get(|| async { page(APP, "text/javascript; charset=utf-8") }))
        .route(
            "/api/run",
            get(|s: State<Source>| async move { api(&s, |v| Json(&v.run).into_response()) }),
        )
        .route(
            "/api/nodes",
            get(|s: State<Source>| async move { api(&s, |v| Json(&v.nodes).into_response()) }),
        )
        .route("/api/rounds", get(rounds))
        .route(
            "/api/links",
            get(|s: State<Source>| async move { api(&s, |v| Json(&v.links).into_response()) }),
        )
        .route("/api/radio", get(radio))
        .route(
            "/api/compare",
            get(|s: State<Source>| async move {
                api(&s, |v| match v.run.kind {
                    "compare" => Json(&v.compare).into_response(),
                    _ => (StatusCode::NOT_FOUND, "not a comparison").into_response(),
                })
            }),
        )
        .route(
            "/api/membership",
            get(|s: State<Source>| async move { api(&s, |v| Json(&v.membership).into_response()) }),
        )
        .route("/metrics", get(|s: State<Source>| async move { api(&s, metrics) }))
        .route("/api/events", get(events))
        .with_state(source)
        .layer(axum::middleware::from_fn_with_state(access, authenticate))
}

/// A static asset. The page's own code only: no other origin, no inline script.
fn page(body: &'static str, kind: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'",
            ),
        ],
        body,
    )
        .into_response()
}

/// Answers from the newest snapshot; a run directory that cannot be read is a 500
/// naming the file.
fn api(source: &Source, answer: impl FnOnce(&RunView) -> Response) -> Response {
    match source.view() {
        Ok(view) => {
            let mut response = answer(&view);
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
            response
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// The rows so far, or with `?since=R` those of the rounds after R: a page that has
/// the first R rounds asks only for what is new (a round's rows arrive together, when
/// it closes).
async fn rounds(State(source): State<Source>, uri: axum::http::Uri) -> Response {
    let since = match round_parameter(&uri, "since") {
        Ok(since) => since.unwrap_or(0),
        Err(refusal) => return refusal,
    };
    api(&source, |view| {
        /// A row as served: beside its own values, the node's amounts summed up to and
        /// including it (`totals.radio_energy_j`, …), so that the page draws cumulative
        /// series without deriving them again.
        #[derive(Serialize)]
        struct Served<'a> {
            #[serde(flatten)]
            row: &'a MetricsRow,
            totals: std::collections::BTreeMap<&'static str, f64>,
        }
        // Rows are kept in the order rounds closed: the new ones are a tail, summed over
        // every row before them.
        let mut totals: std::collections::HashMap<u32, metrics::Totals> = Default::default();
        let mut new = Vec::new();
        for row in view.rows.iter() {
            let node = totals.entry(row.node).or_default();
            node.add(row);
            if row.round > since {
                new.push(Served {
                    row,
                    totals: node.amounts(),
                });
            }
        }
        Json(new).into_response()
    })
}

/// `?NAME=ROUND`, the only parameter a route takes: none, a round, or a 400 saying so.
#[allow(clippy::result_large_err)]
fn round_parameter(uri: &axum::http::Uri, name: &str) -> std::result::Result<Option<u32>, Response> {
    match uri.query().map(|q| {
        q.strip_prefix(name)
            .and_then(|v| v.strip_prefix('='))
            .map(str::parse::<u32>)
    }) {
        None => Ok(None),
        Some(Some(Ok(round))) => Ok(Some(round)),
        Some(_) => Err((
            StatusCode::BAD_REQUEST,
            format!("the only parameter is {name}=ROUND (a round number)"),
        )
            .into_response()),
    }
}

/// One round's radio: `?round=R`, or the newest closed round (the placement's before
/// any closed).
async fn radio(State(source): State<Source>, uri: axum::http::Uri) -> Response {
    let asked = match round_parameter(&uri, "round") {
        Ok(round) => round,
        Err(refusal) => return refusal,
    };
    api(&source, |view| {
        let round = asked.unwrap_or(view.run.rounds_closed.max(1));
        match view.radio(round) {
            // A run without an emulated radio: nothing to draw, not an error.
            None => Json(serde_json::Value::Null).into_response(),
            Some(Err(reason)) => (StatusCode::NOT_FOUND, reason).into_response(),
            Some(Ok(radio)) => Json(radio).into_response(),
        }
    })
}

fn metrics(view: &RunView) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        view.prometheus(),
    )
        .into_response()
}

/// Server-sent events while the run goes on: `round` as each round closes, `finished`
/// at the end. A run directory has nothing more to say: 204 tells the browser not to
/// reconnect.
async fn events(State(source): State<Source>) -> Response {
    let shared = match &source.origin {
        Origin::Live(shared) => shared.clone(),
        Origin::Compare(_) => return compare_events(source),
        Origin::Dir(_) => return StatusCode::NO_CONTENT.into_response(),
    };
    let stream = BroadcastStream::new(shared.watchers.subscribe()).filter_map(|event| {
        let event = event.ok()?.event?;
        let sse = match event {
            run_event::Event::RoundClosed(r) => Event::default().event("round").data(r.round.to_string()),
            run_event::Event::RunFinished(_) => Event::default().event("finished").data("1"),
        };
        Some(Ok::<_, Infallible>(sse))
    });
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}

/// A comparison's events: its runs' files are looked at every second (here, not by the
/// page), and a change is pushed as `round`, the comparison written as `finished`.
fn compare_events(source: Source) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        let mut seen = source.version();
        // Until the page goes away or the comparison is written.
        while !tx.is_closed() {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            let now = source.version();
            if now == seen {
                continue;
            }
            seen = now;
            let Ok(view) = source.view() else { continue };
            let event = match view.run.finished {
                true => Event::default().event("finished").data("1"),
                false => Event::default().event("round").data(view.run.rounds_closed.to_string()),
            };
            if tx.send(Ok::<_, Infallible>(event)).await.is_err() || view.run.finished {
                return;
            }
        }
    });
    Sse::new(tokio_stream::wrappers::ReceiverStream::new(rx))
        .keep_alive(KeepAlive::default())
        .into_response()
}
