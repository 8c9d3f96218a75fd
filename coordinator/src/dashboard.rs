//! The dashboard: a read-only web page of the run, its JSON API and a Prometheus
//! `/metrics`, served by the coordinator while the run goes on (updates pushed with
//! server-sent events as rounds close) and by `wdml view RUN_DIR` after it.
//!
//! Both read one [`RunView`]: a snapshot of the run built either from the
//! coordinator's live state or from a run directory, so the page, the API and
//! `/metrics` say the same thing whichever serves them. Every asset is in the binary.
//!
//! | route | what |
//! | --- | --- |
//! | `/` | the page (`dashboard/index.html`, `dashboard/app.js`: plain SVG, no build step) |
//! | `/api/run` | the run: id, algorithm, rounds planned and closed, finished, live |
//! | `/api/nodes` | each node: id, model, parameters, status, position |
//! | `/api/rounds` | every `metrics.jsonl` row so far; `?since=R`: those of rounds after R |
//! | `/api/links` | `links.json`: each neighbour link's distance and long-term SNR, the positions |
//! | `/api/events` | server-sent events: `round` (a round closed), `finished` |
//! | `/metrics` | Prometheus text: the run's counters and gauges |

use std::convert::Infallible;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

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

use crate::members::Presence;
use crate::report::{LinksRecord, MetricsRow, Summary};
use crate::service::Shared;

const INDEX: &str = include_str!("dashboard/index.html");
const APP: &str = include_str!("dashboard/app.js");

/// Where the dashboard reads the run: the coordinator's live state, or a run
/// directory ([`Source::dir`]).
#[derive(Clone)]
pub struct Source(Origin);

#[derive(Clone)]
enum Origin {
    Live(Arc<Shared>),
    Dir(PathBuf),
}

impl Source {
    /// A run directory (a finished or stopped run).
    pub fn dir(path: impl Into<PathBuf>) -> Source {
        Source(Origin::Dir(path.into()))
    }

    /// The coordinator's live state.
    pub(crate) fn live(shared: Arc<Shared>) -> Source {
        Source(Origin::Live(shared))
    }
}

/// The run, as `/api/run` gives it.
#[derive(Clone, Debug, Serialize)]
pub struct RunInfo {
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
    /// `joined`, `live`, `gone`, `left`; after the run, the summary's `finished`, `gone`
    /// or `left`; `absent` for an id that never joined.
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
}

impl RunView {
    /// The snapshot of `source` now.
    pub fn of(source: &Source) -> crate::Result<RunView> {
        match &source.0 {
            Origin::Live(shared) => Ok(Self::live(shared)),
            Origin::Dir(dir) => Self::from_dir(dir),
        }
    }

    fn live(shared: &Shared) -> RunView {
        let settings = &shared.config.settings;
        let (presence, finished) = {
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
            (presence, state.finished)
        };
        let (rows, rounds_closed, links) = {
            let report = shared.report();
            (report.rows().to_vec(), report.rounds_closed(), read_links(report.dir()))
        };
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
        }
    }

    fn from_dir(dir: &std::path::Path) -> crate::Result<RunView> {
        let text = wdml_proto::files::read_bounded_text(&dir.join("summary.json"), 64 << 20)
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
        Ok(RunView {
            run: RunInfo {
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
        })
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
        let rows_of = |id: u32| self.rows.iter().filter(move |r| r.node == id);
        let sum = |id: u32, f: fn(&MetricsRow) -> f64| rows_of(id).map(f).sum::<f64>();
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
            &per_node(&|n| rows_of(n.id).count() as f64),
        );
        metric(
            "node_test_accuracy",
            "gauge",
            "Test accuracy after the node's newest reported round.",
            &per_node(&|n| {
                rows_of(n.id)
                    .max_by_key(|r| r.round)
                    .map_or(f64::NAN, |r| r.test_accuracy)
            }),
        );
        metric(
            "node_airtime_seconds_total",
            "counter",
            "Emulated radio air time of the node's transmissions.",
            &per_node(&|n| sum(n.id, |r| r.airtime_s)),
        );
        metric(
            "node_radio_energy_joules_total",
            "counter",
            "Emulated radio energy, transmit and receive.",
            &per_node(&|n| sum(n.id, |r| r.tx_energy_j + r.rx_energy_j)),
        );
        metric(
            "node_wire_sent_bytes_total",
            "counter",
            "Bytes the node sent on the wire (every frame as encoded).",
            &per_node(&|n| sum(n.id, |r| r.wire_bytes_sent as f64)),
        );
        metric(
            "node_messages_lost_total",
            "counter",
            "Neighbour messages the node expected and did not get in time.",
            &per_node(&|n| sum(n.id, |r| f64::from(r.messages_lost))),
        );
        out
    }
}

/// `links.json` of `dir`, or an empty record before it is written.
fn read_links(dir: &std::path::Path) -> LinksRecord {
    wdml_proto::files::read_bounded_text(&dir.join("links.json"), 64 << 20)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default()
}

/// The dashboard's routes over `source`.
pub fn router(source: Source) -> Router {
    Router::new()
        .route("/", get(|| async { page(INDEX, "text/html; charset=utf-8") }))
        .route("/app.js", get(|| async { page(APP, "text/javascript; charset=utf-8") }))
        .route(
            "/api/run",
            get(|s: State<Source>| async move { api(&s, |v| Json(v.run).into_response()) }),
        )
        .route(
            "/api/nodes",
            get(|s: State<Source>| async move { api(&s, |v| Json(v.nodes).into_response()) }),
        )
        .route("/api/rounds", get(rounds))
        .route(
            "/api/links",
            get(|s: State<Source>| async move { api(&s, |v| Json(v.links).into_response()) }),
        )
        .route("/metrics", get(|s: State<Source>| async move { api(&s, metrics) }))
        .route("/api/events", get(events))
        .with_state(source)
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

/// Answers from a fresh snapshot; a run directory that cannot be read is a 500 naming
/// the file.
fn api(source: &Source, answer: impl FnOnce(RunView) -> Response) -> Response {
    match RunView::of(source) {
        Ok(view) => {
            let mut response = answer(view);
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
    let since = match uri.query().map(|q| q.strip_prefix("since=").map(str::parse::<u32>)) {
        None => 0,
        Some(Some(Ok(round))) => round,
        Some(_) => {
            return (
                StatusCode::BAD_REQUEST,
                "the only parameter is since=ROUND (a round number)",
            )
                .into_response();
        }
    };
    api(&source, |mut view| {
        view.rows.retain(|r| r.round > since);
        Json(view.rows).into_response()
    })
}

fn metrics(view: RunView) -> Response {
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
    let Source(Origin::Live(shared)) = source else {
        return StatusCode::NO_CONTENT.into_response();
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
