//! The coordinator's gRPC service: Join, the Sync stream, Leave and Watch. Each
//! handler validates what it receives and updates the shared state; the round
//! driver in [`crate::rounds`] is woken whenever something it waits for changes.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, broadcast, mpsc};
use tokio_stream::{Stream, StreamExt, wrappers::ReceiverStream};
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};
use wdml_proto::{
    CoordinatorEvent, Done, JoinRequest, JoinResponse, LeaveRequest, LeaveResponse, NodeEvent, RunEvent, WatchRequest,
    coordinator_server::Coordinator, node_event::Event,
};

use crate::members::{Members, Presence};
use crate::report::Report;
use crate::{Config, Result};

/// The round the barrier is waiting on.
#[derive(Debug)]
pub(crate) struct OpenRound {
    pub round: u32,
    pub token: u64,
    pub started: Instant,
    /// Who was sent StartRound, with the connection it was sent on.
    pub participants: std::collections::BTreeMap<u32, u64>,
    /// Done reports received in time, with when they arrived.
    pub reported: std::collections::BTreeMap<u32, (wdml_proto::RoundMetrics, Instant)>,
}

/// Everything the handlers and the round driver share.
pub(crate) struct State {
    pub members: Members,
    /// The round currently open, if any.
    pub open: Option<OpenRound>,
    /// The round that is open or will open next (for event records).
    pub round: u32,
    pub finished: bool,
}

pub(crate) struct Shared {
    pub config: Config,
    state: Mutex<State>,
    /// Wakes the round driver when membership or reports change.
    pub changed: Notify,
    pub watchers: broadcast::Sender<RunEvent>,
    pub report: Mutex<Report>,
}

impl Shared {
    pub fn new(config: Config) -> Result<Self> {
        let report = Report::create(&config)?;
        let averaging = config.settings.algorithm() == wdml_proto::Algorithm::Fedavg;
        let members = Members::new(config.settings.nodes, config.settings.seed, averaging);
        Ok(Shared {
            state: Mutex::new(State {
                members,
                open: None,
                round: 0,
                finished: false,
            }),
            changed: Notify::new(),
            watchers: broadcast::channel(1024).0,
            report: Mutex::new(report),
            config,
        })
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock would be a bug; the state is still usable.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn remove(&self, id: u32, connection: Option<u64>, presence: Presence, reason: &str) {
        let mut state = self.state();
        // Once the run is over every node closes its stream: that is the end, not a
        // departure (the summary is already written).
        let changed = if state.finished {
            debug!(node = id, "{reason} after the run");
            state.members.end_stream(id, connection)
        } else {
            let round = state.round;
            state.members.remove(id, connection, presence, round, reason)
        };
        if changed {
            drop(state);
            self.changed.notify_one();
        }
    }
}

/// The tonic service.
pub(crate) struct CoordinatorService {
    shared: Arc<Shared>,
}

impl CoordinatorService {
    pub fn new(shared: Arc<Shared>) -> Self {
        CoordinatorService { shared }
    }
}

type EventStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Coordinator for CoordinatorService {
    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        let request = request.into_inner();
        let mut state = self.shared.state();
        if state.finished {
            return Err(Status::failed_precondition("the run is over"));
        }
        let round = state.round;
        let session = state.members.join(&request, round)?;
        drop(state);
        self.shared.changed.notify_one();
        Ok(Response::new(JoinResponse {
            session,
            settings: Some(self.shared.config.settings.clone()),
        }))
    }

    type SyncStream = EventStream<CoordinatorEvent>;

    async fn sync(&self, request: Request<Streaming<NodeEvent>>) -> Result<Response<Self::SyncStream>, Status> {
        let mut inbound = request.into_inner();
        let hello = match inbound.message().await? {
            Some(NodeEvent {
                event: Some(Event::Hello(hello)),
            }) => hello,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message on a Sync stream must be Hello",
                ));
            }
        };
        // Room for a few rounds of events: the node drains it continuously.
        let (outbox, rx) = mpsc::channel(64);
        let connection = self
            .shared
            .state()
            .members
            .attach(hello.node_id, hello.session, outbox)?;
        debug!(node = hello.node_id, connection, "sync stream open");
        self.shared.changed.notify_one();
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let id = hello.node_id;
            let reason = loop {
                match inbound.message().await {
                    Ok(Some(event)) => {
                        if let Err(status) = handle_event(&shared, id, connection, event) {
                            warn!(node = id, "closing sync stream: {}", status.message());
                            break format!("sent an invalid event: {}", status.message());
                        }
                    }
                    Ok(None) => break "closed its sync stream".to_string(),
                    Err(status) => break format!("sync stream broke: {}", status.message()),
                }
            };
            shared.remove(id, Some(connection), Presence::Gone, &reason);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn leave(&self, request: Request<LeaveRequest>) -> Result<Response<LeaveResponse>, Status> {
        let request = request.into_inner();
        self.shared
            .state()
            .members
            .authenticate(request.node_id, request.session)?;
        self.shared.remove(request.node_id, None, Presence::Left, "left");
        Ok(Response::new(LeaveResponse {}))
    }

    type WatchStream = EventStream<RunEvent>;

    async fn watch(&self, _request: Request<WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        // The stream ends after RunFinished, so a watcher never holds the server open.
        let mut finished = false;
        let events = tokio_stream::wrappers::BroadcastStream::new(self.shared.watchers.subscribe())
            .filter_map(|event| event.ok())
            .take_while(move |event| {
                let more = !finished;
                finished |= matches!(event.event, Some(wdml_proto::run_event::Event::RunFinished(_)));
                more
            })
            .map(Ok);
        Ok(Response::new(Box::pin(events)))
    }
}

/// Applies one event from a node's Sync stream. An error closes that stream.
fn handle_event(shared: &Shared, id: u32, connection: u64, event: NodeEvent) -> Result<(), Status> {
    let mut state = shared.state();
    if !state.members.is_current(id, connection) {
        return Err(Status::failed_precondition("this stream was replaced by a newer one"));
    }
    state.members.touch(id, connection);
    match event.event {
        Some(Event::Heartbeat(_)) => Ok(()),
        Some(Event::Hello(_)) => Err(Status::invalid_argument("Hello may only be the first message")),
        Some(Event::Done(done)) => {
            let accepted = record_done(&mut state, id, done)?;
            drop(state);
            if accepted {
                shared.changed.notify_one();
            }
            Ok(())
        }
        None => Err(Status::invalid_argument("empty NodeEvent")),
    }
}

/// Validates a Done report and files it if it belongs to the open round. A report
/// for another round is not an error: a straggler's report arrives after its round
/// closed, and is only logged.
fn record_done(state: &mut State, id: u32, done: Done) -> Result<bool, Status> {
    let metrics = done
        .metrics
        .ok_or_else(|| Status::invalid_argument("Done without metrics"))?;
    validate_metrics(&metrics)?;
    let Some(open) = state.open.as_mut() else {
        info!(node = id, round = done.round, "report arrived between rounds; ignored");
        return Ok(false);
    };
    if done.round != open.round || done.round_token != open.token {
        info!(
            node = id,
            round = done.round,
            open = open.round,
            "late report for a closed round; ignored"
        );
        return Ok(false);
    }
    if !open.participants.contains_key(&id) {
        return Err(Status::failed_precondition(format!(
            "node {id} is not a participant of round {}",
            open.round
        )));
    }
    if open.reported.insert(id, (metrics, Instant::now())).is_some() {
        return Err(Status::already_exists(format!(
            "node {id} reported round {} twice",
            done.round
        )));
    }
    if let Some(member) = state.members.get_mut(id) {
        member.rounds_reported += 1;
    }
    Ok(true)
}

/// Metrics go straight into the report: they must be finite and in range.
fn validate_metrics(m: &wdml_proto::RoundMetrics) -> Result<(), Status> {
    let values = [
        ("train_loss", m.train_loss),
        ("ce_loss", m.ce_loss),
        ("kl_loss", m.kl_loss),
        ("test_accuracy", m.test_accuracy),
        ("test_loss", m.test_loss),
        ("compute_ms", m.compute_ms),
        ("compute_cpu_ms", m.compute_cpu_ms),
        ("exchange_ms", m.exchange_ms),
        ("airtime_s", m.airtime_s),
        ("tx_energy_j", m.tx_energy_j),
        ("rx_energy_j", m.rx_energy_j),
    ];
    for (name, value) in values {
        if !value.is_finite() || value < 0.0 {
            return Err(Status::invalid_argument(format!(
                "metric {name} = {value} must be finite and ≥ 0"
            )));
        }
    }
    if m.test_accuracy > 1.0 {
        return Err(Status::invalid_argument(format!(
            "test_accuracy {} is above 1",
            m.test_accuracy
        )));
    }
    Ok(())
}

/// Marks gone every live node that has been silent longer than the heartbeat
/// timeout: a node behind a cut link never closes its stream, it just goes quiet.
pub(crate) async fn reap_silent_members(shared: Arc<Shared>) {
    let timeout = shared.config.heartbeat_timeout;
    let mut tick = tokio::time::interval(timeout / 4);
    loop {
        tick.tick().await;
        let silent: Vec<(u32, u64)> = shared
            .state()
            .members
            .all()
            .filter(|m| m.presence == Presence::Live && m.last_seen.elapsed() > timeout)
            .filter_map(|m| m.outbox.as_ref().map(|(c, _)| (m.id, *c)))
            .collect();
        for (id, connection) in silent {
            let reason = format!("silent for more than {} ms", timeout.as_millis());
            shared.remove(id, Some(connection), Presence::Gone, &reason);
        }
    }
}

/// Sends an event to a member's stream without waiting: a member whose outbox is
/// full is not reading and will be reaped by its heartbeat timeout.
pub(crate) fn send_to(member: &crate::members::Member, event: CoordinatorEvent) -> bool {
    member
        .outbox
        .as_ref()
        .is_some_and(|(_, tx)| tx.try_send(Ok(event)).is_ok())
}

/// How long the driver waits between re-checks when nothing wakes it.
pub(crate) const POLL: Duration = Duration::from_millis(250);
