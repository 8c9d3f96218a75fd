//! The coordinator's state, apart from the gRPC handlers (as a scheduler keeps its
//! state apart from its service): the membership table, the open round, the run
//! directory's report and journal, and the tasks that act on them by the clock (the
//! heartbeat reaper, the probe of unreachable members). Every change a node can cause
//! is a method here, called by [`crate::service`] (which only translates gRPC) and
//! read by the round driver ([`crate::rounds`]), which is woken whenever something it
//! waits for changes.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

// One clock for the whole coordinator, tokio's: the heartbeat reaper, the probe
// interval and the report bounds all follow `tokio::time::pause()` in tests.
use tokio::time::Instant;

use tokio::sync::{Notify, broadcast};
use tonic::Status;
use tracing::{debug, error, info, warn};
use wdml_proto::{
    CoordinatorEvent, Done, Hello, JoinRequest, NodeEvent, NotComing, RunEvent, Undelivered, coordinator_event,
    node_event::Event,
};

use crate::Config;
use crate::barrier::OpenRound;
use crate::members::{Members, Outbox, Paced, Presence, Proof};
use crate::metrics::{Bound, METRICS};
use crate::report::{MetricsRow, Recovered, Report};

/// Everything the handlers and the round driver share.
pub(crate) struct State {
    pub members: Members,
    /// The round currently open, if any.
    pub open: Option<OpenRound>,
    /// The number (from 1) of the round that is open or will open next, for records.
    pub round: u32,
    pub finished: bool,
    /// The tokens of the rounds closed lately, by round: a report that comes after its
    /// round closed is recognised as that round's.
    pub recent_tokens: std::collections::BTreeMap<u32, u64>,
    /// The run's emulated clock at the start of the next round.
    pub emulated_s: f64,
    /// When the last round's closing began (the barrier's decision): the next round's
    /// start logs the gap from there, the coordinator's own time between rounds.
    pub closing_began: Option<Instant>,
    /// Membership events already in the journal.
    journaled: usize,
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
    pub fn new(config: Config, report: Report, recovered: Option<&Recovered>) -> Self {
        let mut members = Members::new(
            config.settings.models.clone(),
            config.settings.data.clone().unwrap_or_default(),
        );
        let mut journaled = 0;
        if let Some(recovered) = recovered {
            for (id, model, parameters) in &recovered.members {
                members.restore(*id, model.clone(), *parameters, report.rows_of(*id), Presence::Gone);
            }
            members.events = recovered.events.clone();
            journaled = members.events.len();
        }
        Shared {
            state: Mutex::new(State {
                members,
                open: None,
                // Numbered from 1 in every record and log (the wire counts from 0).
                round: recovered.map_or(0, |r| r.next_round) + 1,
                finished: false,
                recent_tokens: Default::default(),
                emulated_s: report.emulated_so_far(),
                closing_began: None,
                journaled,
            }),
            changed: Notify::new(),
            watchers: broadcast::channel(1024).0,
            report: Mutex::new(report),
            config,
        }
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock would be a bug; the state is still usable.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn report(&self) -> MutexGuard<'_, Report> {
        self.report.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Writes the membership events not yet in the journal (under the state lock, so
    /// the journal keeps their order).
    pub fn commit(&self, state: &mut State) {
        let events = state.members.events[state.journaled..].iter().map(|event| {
            let (model, parameters) = state
                .members
                .get(event.node)
                .map_or((String::new(), 0), |m| (m.model.clone(), m.parameters));
            (event.clone(), model, parameters)
        });
        if let Err(e) = self.report().record_members(events) {
            error!("cannot journal membership events: {e}");
        }
        state.journaled = state.members.events.len();
    }

    pub fn remove(&self, id: u32, connection: Option<u64>, presence: Presence, reason: &str) {
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
            self.commit(&mut state);
            drop(state);
            self.changed.notify_one();
        }
    }
    /// Admits node `request.node_id` with `session` (a fresh secret) as `proof` allows:
    /// not once the run is over, nor faster than its pace. Returns the model it must run.
    pub fn join(&self, request: &JoinRequest, session: u64, proof: Proof) -> Result<String, Status> {
        let mut state = self.state();
        if state.finished {
            return Err(Status::failed_precondition("the run is over"));
        }
        if !state.members.allow(request.node_id, Paced::Join) {
            return Err(Status::resource_exhausted(
                "too many joins for this node id: at most 1 a second (5 at once); wait and join again",
            ));
        }
        let round = state.round;
        let model = state.members.join(request, session, proof, round)?;
        self.commit(&mut state);
        drop(state);
        self.changed.notify_one();
        Ok(model)
    }

    /// Binds a Sync stream that said `hello` to its joined node; returns the connection
    /// number.
    pub fn attach(&self, hello: &Hello, outbox: Outbox) -> Result<u64, Status> {
        let connection = self
            .state()
            .members
            .attach(hello.node_id, hello.session, hello, outbox)?;
        debug!(node = hello.node_id, connection, "sync stream open");
        self.changed.notify_one();
        Ok(connection)
    }

    /// Node `id` leaves the run (its `session` proves the join), saying why (`reason`,
    /// at most [`MAX_LEAVE_REASON`] printable characters; empty: asked to stop).
    pub fn leave(&self, id: u32, session: u64, reason: &str) -> Result<(), Status> {
        if reason.chars().count() > MAX_LEAVE_REASON || reason.chars().any(char::is_control) {
            return Err(Status::invalid_argument(format!(
                "leave refused: the reason must be at most {MAX_LEAVE_REASON} printable characters"
            )));
        }
        self.state().members.authenticate(id, session)?;
        let reason = if reason.is_empty() {
            "left".to_string()
        } else {
            format!("left: {reason}")
        };
        self.remove(id, None, Presence::Left, &reason);
        Ok(())
    }

    /// Ends node `id`'s stream `connection` with `status`, if it is still its current
    /// one: the member is told why.
    pub fn refuse_stream(&self, id: u32, connection: u64, status: Status) {
        if let Some((current, outbox)) = self.state().members.get(id).and_then(|m| m.outbox.as_ref())
            && *current == connection
        {
            let _ = outbox.try_send(Err(status));
        }
    }
}

/// The longest reason a node may give when it leaves (it goes into the journal and
/// the membership events).
pub const MAX_LEAVE_REASON: usize = 200;

/// What the Sync stream does after an event.
pub(crate) enum Flow {
    Continue,
    /// The node failed and leaves the run.
    Leave(String),
}

impl Shared {
    /// Applies one event from a node's Sync stream. An error closes that stream.
    pub fn handle_event(&self, id: u32, connection: u64, event: NodeEvent) -> Result<Flow, Status> {
        let shared = self;
        let mut state = shared.state();
        if !state.members.is_current(id, connection) {
            return Err(Status::failed_precondition("this stream was replaced by a newer one"));
        }
        state.members.touch(id, connection);
        match event.event {
            Some(Event::Heartbeat(_)) => Ok(Flow::Continue),
            Some(Event::Hello(_)) => Err(Status::invalid_argument("Hello may only be the first message")),
            Some(Event::Done(done)) => {
                let max_message_bytes = shared.config.settings.max_message_bytes;
                match record_done(&mut state, id, done, max_message_bytes)? {
                    Filed::InTime => {
                        drop(state);
                        shared.changed.notify_one();
                    }
                    Filed::Late(done) => {
                        let round = state.round;
                        let model = state.members.get(id).map(|m| m.model.clone()).unwrap_or_default();
                        let metrics = done.metrics.as_ref().expect("validated");
                        if let Err(e) = shared.report().file_late(done.round + 1, id, model, metrics) {
                            warn!(node = id, "cannot record a late report: {e}");
                        }
                        let reason = format!(
                            "reported round {} after it closed; it goes on with the newest round",
                            done.round + 1
                        );
                        state.members.record(id, "late", round, reason);
                        shared.commit(&mut state);
                    }
                    Filed::Ignored => {}
                }
                Ok(Flow::Continue)
            }
            Some(Event::Failed(failed)) => {
                let reason = truncate(&failed.reason, 500);
                let number = failed.round.saturating_add(1);
                warn!(node = id, round = number, "the node's round failed: {reason}");
                let round = state.round;
                if let Some(open) = state.open.as_mut()
                    && open.round == failed.round
                    && open.participants.contains_key(&id)
                {
                    open.failed.insert(id);
                }
                state
                    .members
                    .record(id, "failed", round, format!("round {number} failed: {reason}"));
                shared.commit(&mut state);
                Ok(Flow::Leave(format!("left after its round {number} failed")))
            }
            Some(Event::Silent(_) | Event::Undelivered(_)) if !state.members.allow(id, Paced::Report) => {
                // Past its pace: dropped (counted, logged), the stream kept; nobody is
                // harmed by a report not acted on but the sender's own neighbours.
                Ok(Flow::Continue)
            }
            Some(Event::Silent(silent)) => {
                if silent.node_id >= state.members.nodes() || silent.node_id == id || silent.missed == 0 {
                    return Err(Status::invalid_argument(format!(
                        "NeighbourSilent names node {} after {} misses",
                        silent.node_id, silent.missed
                    )));
                }
                let round = state.round;
                let reason = format!(
                    "missed {} exchanges in a row at node {id}, which stops waiting for it until it sends again",
                    silent.missed
                );
                state.members.record(silent.node_id, "silent", round, reason);
                shared.commit(&mut state);
                Ok(Flow::Continue)
            }
            Some(Event::Undelivered(undelivered)) => {
                let Undelivered {
                    round,
                    round_token,
                    to,
                    unreachable,
                } = undelivered;
                if to >= state.members.nodes() || to == id {
                    return Err(Status::invalid_argument(format!("Undelivered names node {to}")));
                }
                // Only for the open round, to one of its participants: a report that comes
                // after the round closed has nobody left waiting. It can only withdraw the
                // sender's own message, which the sender could as well not have sent.
                let open = state
                    .open
                    .as_ref()
                    .filter(|o| o.round == round && o.token == round_token);
                if open.is_some_and(|o| o.participants.contains_key(&to) && o.participants.contains_key(&id)) {
                    info!(
                        node = id,
                        neighbour = to,
                        round = round + 1,
                        "could not deliver its message; telling the neighbour"
                    );
                    let event = CoordinatorEvent {
                        event: Some(coordinator_event::Event::NotComing(NotComing { round, from: id })),
                    };
                    // A node with no stream (gone, or not back yet) has nothing to stop.
                    if let Some(member) = state.members.get(to) {
                        send_to(member, event);
                    }
                    if unreachable && state.members.report_unreachable(to, round) {
                        let reason = format!(
                            "neighbours could not connect to its address {} in {} rounds in a row; out of the exchange until a probe reaches it",
                            state.members.get(to).map_or("", |m| m.advertise.as_str()),
                            crate::members::UNREACHABLE_AFTER
                        );
                        let number = state.round;
                        state.members.record(to, "unreachable", number, reason);
                        shared.commit(&mut state);
                    }
                }
                Ok(Flow::Continue)
            }
            None => Err(Status::invalid_argument("empty NodeEvent")),
        }
    }
}

/// At most `max` characters of a reason a node sent (it goes into logs and the summary).
fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

/// Where a validated Done report goes.
enum Filed {
    /// Into the open round.
    InTime,
    /// After its round closed (round policy, or the round timeout): recorded as late.
    Late(Box<Done>),
    /// Of a round this coordinator does not know (closed before a restart, or never
    /// opened): only logged.
    Ignored,
}

/// Validates a Done report and files it in the open round, or as late if it carries
/// a recently closed round's token. A report for another round is not an error: a
/// straggler's report arrives after its round closed.
fn record_done(state: &mut State, id: u32, done: Done, max_message_bytes: u64) -> Result<Filed, Status> {
    let metrics = done
        .metrics
        .as_ref()
        .ok_or_else(|| Status::invalid_argument("Done without metrics"))?;
    validate_metrics(metrics)?;
    // The run is written up: nothing more goes into its record (a late report filed
    // after the summary made late.jsonl disagree with it).
    if state.finished {
        return Ok(Filed::Ignored);
    }
    let open_round = state.open.as_ref().map(|o| (o.round, o.token));
    if let Some(open) = state
        .open
        .as_ref()
        .filter(|o| (o.round, o.token) == (done.round, done.round_token))
    {
        let bounds = Bounds {
            neighbours: open.neighbours.get(&id).copied().unwrap_or(0),
            max_message_bytes,
            elapsed_ms: open.started.elapsed().as_secs_f64() * 1e3,
        };
        bounds.check(metrics)?;
    }
    if open_round != Some((done.round, done.round_token)) {
        if state.recent_tokens.get(&done.round) == Some(&done.round_token) {
            // Late, but alive: it is awaited again in the next rounds.
            if let Some(member) = state.members.get_mut(id) {
                member.missed_reports = 0;
            }
            return Ok(Filed::Late(Box::new(done)));
        }
        info!(
            node = id,
            round = done.round + 1,
            open = open_round.map(|(r, _)| r + 1),
            "report for a round that is not open and was not closed lately; ignored"
        );
        return Ok(Filed::Ignored);
    }
    let open = state.open.as_mut().expect("checked above");
    if !open.participants.contains_key(&id) {
        return Err(Status::failed_precondition(format!(
            "node {id} is not a participant of round {}",
            open.round + 1
        )));
    }
    let metrics = done.metrics.expect("checked above");
    if open.reported.insert(id, (metrics, Instant::now())).is_some() {
        return Err(Status::already_exists(format!(
            "node {id} reported round {} twice",
            done.round + 1
        )));
    }
    if let Some(member) = state.members.get_mut(id) {
        member.rounds_reported += 1;
        member.missed_reports = 0;
    }
    Ok(Filed::InTime)
}

/// The largest value any metric may take: far beyond what a device does in a round (a
/// loss, seconds, joules; a PFLOP of work), small enough that no sum over a run
/// overflows to infinity (one member's 1.7e308 made every total `inf` and summary.json
/// unreadable). Counts and bytes have tighter bounds of their own ([`Bounds`]).
const MAX_METRIC: f64 = 1e15;

/// What a participant's counters can be in the round it reports: it has `neighbours`
/// neighbours, a message is at most `max_message_bytes`, and the round has lasted
/// `elapsed_ms` so far.
struct Bounds {
    neighbours: u32,
    max_message_bytes: u64,
    elapsed_ms: f64,
}

impl Bounds {
    /// A send tries at most three streams, each replaying what was released, and
    /// frames carry headers: four messages' worth per neighbour, plus 1 MiB, is more
    /// than any honest report; wire bytes (the same with framing) twice that.
    fn check(&self, m: &wdml_proto::RoundMetrics) -> Result<(), Status> {
        let row = MetricsRow {
            metrics: *m,
            ..MetricsRow::default()
        };
        let n = self.neighbours;
        let payload = u64::from(n)
            .saturating_mul(self.max_message_bytes.saturating_mul(4))
            .saturating_add(1 << 20);
        // The slack covers a clock read on either side of the message.
        let elapsed = self.elapsed_ms * 1.1 + 1_000.0;
        for metric in METRICS {
            let value = (metric.value)(&row);
            let (most, why) = match metric.bound {
                Bound::None | Bound::Fraction => continue,
                Bound::Neighbours => (f64::from(n), format!("this node has {n} neighbours this round")),
                Bound::Payload => (
                    payload as f64,
                    format!(
                        "{n} neighbours at {} bytes a message allow {payload}",
                        self.max_message_bytes
                    ),
                ),
                Bound::Wire => (
                    2.0 * payload as f64,
                    format!(
                        "{n} neighbours at {} bytes a message allow {}",
                        self.max_message_bytes,
                        2 * payload
                    ),
                ),
                Bound::Elapsed => (elapsed, format!("the round began {:.0} ms ago", self.elapsed_ms)),
            };
            if value > most {
                return Err(Status::invalid_argument(format!(
                    "report refused: {} = {value}, but {why}",
                    metric.name
                )));
            }
        }
        Ok(())
    }
}

/// Metrics go straight into the report: every one of the table must be finite and in
/// range.
fn validate_metrics(m: &wdml_proto::RoundMetrics) -> Result<(), Status> {
    let row = MetricsRow {
        metrics: *m,
        ..MetricsRow::default()
    };
    for metric in METRICS {
        let (name, value) = (metric.name, (metric.value)(&row));
        // Absent: a NaN sent as the value is taken as absent too (it is written as null).
        if metric.optional && value.is_nan() {
            continue;
        }
        if !value.is_finite() || !(0.0..=MAX_METRIC).contains(&value) {
            return Err(Status::invalid_argument(format!(
                "report refused: metric {name} = {value} must be finite, ≥ 0 and ≤ {MAX_METRIC:e}"
            )));
        }
    }
    for metric in METRICS.iter().filter(|m| m.bound == Bound::Fraction) {
        let value = (metric.value)(&row);
        if value > 1.0 {
            return Err(Status::invalid_argument(format!(
                "report refused: metric {} = {value} is a fraction, above 1",
                metric.name
            )));
        }
    }
    Ok(())
}

/// Marks gone every live node that has been silent longer than the heartbeat
/// timeout (a node behind a cut link never closes its stream, it just goes quiet), and
/// releases every join whose Sync stream never opened.
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
        let mut state = shared.state();
        let round = state.round;
        if state.members.release_stale_joins(shared.config.sync_timeout, round) {
            shared.commit(&mut state);
            drop(state);
            shared.changed.notify_one();
        }
    }
}

/// How often the members out of the exchange are probed, and how long one probe may
/// take (a TCP connection and a TLS handshake, as a neighbour would make them).
const PROBE_EVERY: Duration = Duration::from_secs(2);

/// Probes every member taken out of the exchange as unreachable: a connection to its
/// address as its neighbours make one, within the run's connect timeout. One that comes
/// up puts it back (membership event `reachable`) from the next round on.
pub(crate) async fn probe_unreachable(shared: Arc<Shared>) {
    let connect = wdml_transport::peer_connect_timeout(shared.config.settings.connect_timeout_ms);
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let out: Vec<(u32, u64, String)> = shared
            .state()
            .members
            .live()
            .filter(|m| m.unreachable)
            .filter_map(|m| m.outbox.as_ref().map(|(c, _)| (m.id, *c, m.advertise.clone())))
            .collect();
        for (id, connection, address) in out {
            let Ok(endpoint) =
                shared
                    .config
                    .security
                    .endpoint_within(&address, wdml_transport::Identity::Node(id), connect)
            else {
                continue;
            };
            let reached = tokio::time::timeout(connect, endpoint.connect()).await;
            if !matches!(reached, Ok(Ok(_))) {
                continue;
            }
            let mut state = shared.state();
            if state.members.reachable(id, connection) {
                let round = state.round;
                state.members.record(
                    id,
                    "reachable",
                    round,
                    format!("a probe reached {address}; back in the exchange"),
                );
                shared.commit(&mut state);
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use wdml_proto::RoundMetrics;

    /// An honest report of a node with 3 neighbours, 100 ms into its round.
    fn honest() -> RoundMetrics {
        RoundMetrics {
            train_loss: 0.4,
            test_accuracy: 0.7,
            test_loss: 0.9,
            payload_bytes_sent: 3 * 1_300,
            wire_bytes_sent: 3 * 1_400,
            payload_bytes_received: 3 * 1_300,
            wire_bytes_received: 3 * 1_400,
            messages_sent: 3,
            messages_received: 3,
            peers_heard: 3,
            compute_ms: 60.0,
            exchange_ms: 30.0,
            ..RoundMetrics::default()
        }
    }

    fn bounds() -> Bounds {
        Bounds {
            neighbours: 3,
            max_message_bytes: 16 << 20,
            elapsed_ms: 100.0,
        }
    }

    #[test]
    fn a_report_is_refused_when_it_claims_what_its_round_cannot_hold() {
        assert!(validate_metrics(&honest()).is_ok() && bounds().check(&honest()).is_ok());
        // Each lie a member told for real, and what it is refused as.
        type Lie = fn(&mut RoundMetrics);
        let lies: [(&str, Lie); 8] = [
            ("test_accuracy", |m| m.test_accuracy = 1.5),
            ("train_loss", |m| m.train_loss = 1.7e308),
            ("airtime_s", |m| m.airtime_s = 1.7e308),
            ("tx_energy_j", |m| m.tx_energy_j = f64::INFINITY),
            ("wire_bytes_sent", |m| m.wire_bytes_sent = u64::MAX),
            ("payload_bytes_received", |m| m.payload_bytes_received = u64::MAX / 2),
            ("messages_received", |m| m.messages_received = 4),
            ("compute_ms", |m| m.compute_ms = 60_000.0),
        ];
        for (field, lie) in lies {
            let mut m = honest();
            lie(&mut m);
            let status = validate_metrics(&m).and_then(|()| bounds().check(&m)).unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{field}");
            assert!(status.message().contains(field), "{field}: {}", status.message());
        }
    }
}
