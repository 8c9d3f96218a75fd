//! The membership table: who joined, who is live, who is gone, and the events that
//! changed it, for the run report.

use std::collections::BTreeMap;
use std::time::Duration;

// tokio's clock, not std's: under `tokio::time::pause()` a test moves every
// deadline of the membership (heartbeat silence, stale joins, pacing) by itself.
use tokio::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tonic::Status;
use wdml_proto::{CoordinatorEvent, DataSpec, Hello, JoinRequest, MemberGone, coordinator_event::Event};

/// The sending half of a node's `Sync` stream.
pub(crate) type Outbox = mpsc::Sender<Result<CoordinatorEvent, Status>>;

/// Where a node stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Presence {
    /// Joined, but its `Sync` stream is not open yet.
    Joined,
    /// Streaming: takes part in the next round.
    Live,
    /// Its stream broke, it went silent, it never opened its stream, or it was known
    /// before the coordinator restarted; it may join again.
    Gone,
    /// It said it was leaving.
    Left,
}

/// Neighbours whose address a stream was given, each with its connection number then,
/// ascending by id.
pub(crate) type Told = Vec<(u32, u64)>;

/// One node as the coordinator knows it.
#[derive(Debug)]
pub(crate) struct Member {
    pub id: u32,
    pub advertise: String,
    pub model: String,
    pub parameters: u64,
    pub session: u64,
    pub presence: Presence,
    /// The open stream, and a number that tells this connection from earlier ones,
    /// so a stale stream closing never marks a reconnected node gone.
    pub outbox: Option<(u64, Outbox)>,
    /// The neighbours whose address its open stream has been given, each with that
    /// neighbour's connection number then (an address is a connection's: a node that
    /// joins again may come back elsewhere), ascending by id. A round start repeats
    /// only the addresses not here; a new stream starts with none.
    pub told: Told,
    /// When it joined (a join whose stream never opens is released).
    pub joined_at: Instant,
    pub last_seen: Instant,
    pub rounds_reported: u32,
    /// Private samples per class of its shard, as its Hello said.
    pub histogram: Vec<u32>,
    /// Rounds in a row it was sent and did not report: past [`SILENT_AFTER`] the
    /// barrier stops waiting for it, until it reports again.
    pub missed_reports: u32,
    /// Out of the exchange: neighbours could not connect to its address in
    /// [`UNREACHABLE_AFTER`] rounds in a row. No node sends to it or waits for it, and
    /// it trains alone, until a probe reaches it or it joins again (maybe elsewhere).
    pub unreachable: bool,
    /// The last round a neighbour reported it unreachable, and how many rounds in a row.
    unreachable_streak: (u32, u32),
}

/// After this many rounds in a row without a report, a member is not waited for.
pub(crate) const SILENT_AFTER: u32 = 2;

/// After this many rounds in a row in which a neighbour could not connect to it, a
/// member is taken out of the exchange (one failed round may be a neighbour's own
/// trouble, or a restart).
pub(crate) const UNREACHABLE_AFTER: u32 = 2;

impl Member {
    /// Whether the barrier waits for this member's report.
    pub fn awaited(&self) -> bool {
        self.missed_reports < SILENT_AFTER
    }
}

/// A change of membership, kept for the summary and the journal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MembershipEvent {
    pub node: u32,
    /// `joined`, `rejoined`, `gone`, `left`, `released`, `silent`, `failed`,
    /// `unreachable` (out of the exchange), `reachable` (back in it).
    pub event: String,
    /// The round that was open (or about to open) when it happened.
    pub round: u32,
    pub reason: String,
}

/// How a join is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Proof {
    /// The caller's certificate names the node: the same device, whatever connection
    /// the coordinator still holds for it; the new join replaces the old one.
    Certificate,
    /// Nothing proves who the caller is (plaintext): a live id is not taken over.
    None,
}

/// The most membership events kept (journaled, summarised, served); beyond it they are
/// only counted ([`Members::recorded`]): no member can grow the record without bound.
pub(crate) const MAX_EVENTS: usize = 10_000;

/// What a member may ask of the coordinator at what pace, per identity: a token
/// bucket of `burst` requests refilled at `per_s` a second. Honest nodes stay far
/// below (a Join per restart, an event per neighbour and round); a flood is cut to the
/// refill rate, counted, and logged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Paced {
    /// Join: a restart, a reconnection.
    Join,
    /// NeighbourSilent and Undelivered: at most one per neighbour and round (a full mesh
    /// of 256 has 255 neighbours; the burst covers a round of them all, and more).
    Report,
}

impl Paced {
    fn rate(self) -> (f64, f64) {
        match self {
            Paced::Join => (1.0, 5.0),
            Paced::Report => (200.0, 1000.0),
        }
    }
}

/// One identity's allowance for one kind of request.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// All members, by id.
pub(crate) struct Members {
    /// Each node's model, as the scenario gives it (canonical form).
    models: Vec<String>,
    /// The run's data: every member's must be this.
    data: DataSpec,
    by_id: BTreeMap<u32, Member>,
    next_connection: u64,
    pub events: Vec<MembershipEvent>,
    /// Events recorded in all, kept or not (changes whenever one is recorded).
    pub recorded: u64,
    buckets: std::collections::HashMap<(u32, Paced), Bucket>,
    /// Requests refused for their pace, in all.
    pub throttled: u64,
}

impl Members {
    pub fn new(models: Vec<String>, data: DataSpec) -> Self {
        Members {
            models,
            data,
            by_id: BTreeMap::new(),
            next_connection: 0,
            events: Vec::new(),
            recorded: 0,
            buckets: std::collections::HashMap::new(),
            throttled: 0,
        }
    }

    /// Whether node `id` may make a `kind` request now ([`Paced`]); one that may not is
    /// counted, and logged at the first and every 1,000th.
    pub fn allow(&mut self, id: u32, kind: Paced) -> bool {
        let (per_s, burst) = kind.rate();
        let now = Instant::now();
        let bucket = self
            .buckets
            .entry((id, kind))
            .or_insert(Bucket { tokens: burst, at: now });
        bucket.tokens = (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * per_s).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return true;
        }
        self.throttled += 1;
        if self.throttled % 1000 == 1 {
            tracing::warn!(
                node = id,
                ?kind,
                throttled = self.throttled,
                "a member asks faster than {per_s}/s (burst {burst}); refusing the excess"
            );
        }
        false
    }

    /// Nodes in the run.
    pub fn nodes(&self) -> u32 {
        self.models.len() as u32
    }

    /// Admits a node (first join, or again after it was gone) with `session`, a fresh
    /// secret. Returns the model it must run (the scenario's for its id).
    pub fn join(&mut self, request: &JoinRequest, session: u64, proof: Proof, round: u32) -> Result<String, Status> {
        let id = request.node_id;
        let Some(model) = self.models.get(id as usize).cloned() else {
            return Err(Status::invalid_argument(format!(
                "node_id {id} is out of range: this run has {}",
                node_range(self.nodes())
            )));
        };
        check_versions(request)?;
        if let Some(theirs) = &request.data {
            self.admit_data(id, theirs)?;
        }
        validate_address(&request.advertise)?;
        if request.parameters > MAX_PARAMETERS {
            return Err(Status::invalid_argument(format!(
                "parameters: node {id} declares {}; a model has at most {MAX_PARAMETERS}",
                request.parameters
            )));
        }
        // An external model (of the device's own program) only its device can count.
        if model.starts_with("ext:") {
            if request.model != model {
                return Err(Status::failed_precondition(format!(
                    "the scenario gives node {id} {model}, a model of the device's own program: \
                     that device joins naming it (it asked for {:?})",
                    request.model
                )));
            }
            if !(1..=MAX_PARAMETERS).contains(&request.parameters) {
                return Err(Status::invalid_argument(format!(
                    "parameters: node {id} declares {} for {model}; an external model declares 1 to {MAX_PARAMETERS}",
                    request.parameters
                )));
            }
        }
        // An empty model means "the scenario's"; any other must be it.
        if !request.model.is_empty() && request.model != model {
            return Err(Status::failed_precondition(format!(
                "node {id} asks to join with model {}, but the scenario gives node {id} {model}; \
                 start it with --model {model} (or without --model)",
                request.model
            )));
        }
        let rejoin = match self.by_id.get_mut(&id) {
            Some(m) if matches!(m.presence, Presence::Live | Presence::Joined) => match proof {
                Proof::None => {
                    return Err(Status::already_exists(format!(
                        "node {id} is already a live member; a second process with the same id? \
                         (a node that lost its connection is admitted again once it is marked gone)"
                    )));
                }
                Proof::Certificate => {
                    // Its certificate proves it is node `id`: the device restarted or
                    // reconnected before its old stream was noticed gone.
                    m.outbox = None;
                    true
                }
            },
            Some(_) => true,
            None => false,
        };
        let now = Instant::now();
        let previous = self.by_id.get(&id);
        let member = Member {
            id,
            advertise: request.advertise.clone(),
            model: model.clone(),
            parameters: request.parameters,
            session,
            presence: Presence::Joined,
            outbox: None,
            told: Vec::new(),
            joined_at: now,
            last_seen: now,
            rounds_reported: previous.map_or(0, |m| m.rounds_reported),
            histogram: previous.map_or_else(Vec::new, |m| m.histogram.clone()),
            // Counted per identity: a member that withholds its reports and joins again
            // is not awaited anew each time.
            missed_reports: previous.map_or(0, |m| m.missed_reports),
            // Back at the same address it is as unreachable as it was (a probe still
            // brings it back); at a new one it gets a new chance.
            unreachable: previous.is_some_and(|m| m.unreachable && m.advertise == request.advertise),
            unreachable_streak: previous
                .filter(|m| m.advertise == request.advertise)
                .map_or((0, 0), |m| m.unreachable_streak),
        };
        self.by_id.insert(id, member);
        let event = if rejoin { "rejoined" } else { "joined" };
        self.record(id, event, round, request.advertise.clone());
        Ok(model)
    }

    /// A member known from before a restart (the journal): not connected, and admitted
    /// again when it joins.
    pub fn restore(&mut self, id: u32, model: String, parameters: u64, rounds_reported: u32, present: Presence) {
        let now = Instant::now();
        self.by_id.insert(
            id,
            Member {
                id,
                advertise: String::new(),
                model,
                parameters,
                session: 0,
                presence: present,
                outbox: None,
                told: Vec::new(),
                joined_at: now,
                last_seen: now,
                rounds_reported,
                histogram: Vec::new(),
                missed_reports: 0,
                unreachable: false,
                unreachable_streak: (0, 0),
            },
        );
    }

    /// Binds a `Sync` stream to a joined node (whose Hello says how many parameters
    /// its model has, if its Join did not); returns the connection number.
    pub fn attach(&mut self, id: u32, session: u64, hello: &Hello, outbox: Outbox) -> Result<u64, Status> {
        let member = self.authenticate(id, session)?;
        if member.presence != Presence::Joined {
            return Err(Status::failed_precondition(format!(
                "node {id} has no pending join (presence {:?}); call Join first",
                member.presence
            )));
        }
        let Some(theirs) = &hello.data else {
            return Err(Status::invalid_argument(format!(
                "data: node {id}'s Hello must say the shape and classes of the data it loaded"
            )));
        };
        self.admit_data(id, theirs)?;
        if !hello.label_histogram.is_empty() && hello.label_histogram.len() != self.data.classes as usize {
            return Err(Status::invalid_argument(format!(
                "label_histogram: {} classes, but the run's data has {}",
                hello.label_histogram.len(),
                self.data.classes
            )));
        }
        self.next_connection += 1;
        let connection = self.next_connection;
        let member = self.by_id.get_mut(&id).expect("authenticated above");
        // What the Join declared stands (an external model's count was checked there);
        // a node that joined without naming its model tells it here.
        if member.parameters != 0 && hello.parameters != 0 && hello.parameters != member.parameters {
            return Err(Status::invalid_argument(format!(
                "parameters: node {id}'s Hello says {}, its Join declared {}",
                hello.parameters, member.parameters
            )));
        }
        if member.parameters == 0 {
            member.parameters = hello.parameters.min(MAX_PARAMETERS);
        }
        if !hello.label_histogram.is_empty() {
            member.histogram = hello.label_histogram.clone();
        }
        member.presence = Presence::Live;
        member.outbox = Some((connection, outbox));
        member.told.clear();
        member.last_seen = Instant::now();
        Ok(connection)
    }

    /// `Ok` if node `id`'s data is the run's; else FAILED_PRECONDITION naming both.
    fn admit_data(&self, id: u32, theirs: &DataSpec) -> Result<(), Status> {
        self.data
            .admits(theirs)
            .map_err(|e| Status::failed_precondition(format!("node {id} brings other data: {e}")))
    }

    /// The member with this id if `session` is its current one.
    pub fn authenticate(&self, id: u32, session: u64) -> Result<&Member, Status> {
        match self.by_id.get(&id) {
            Some(m) if m.session == session && session != 0 => Ok(m),
            Some(_) => Err(Status::unauthenticated(format!("wrong session for node {id}"))),
            None => Err(Status::not_found(format!("node {id} has not joined"))),
        }
    }

    /// Notes that a live connection is still there.
    pub fn touch(&mut self, id: u32, connection: u64) {
        if let Some(m) = self.by_id.get_mut(&id)
            && m.outbox.as_ref().is_some_and(|(c, _)| *c == connection)
        {
            m.last_seen = Instant::now();
        }
    }

    pub fn is_current(&self, id: u32, connection: u64) -> bool {
        self.by_id
            .get(&id)
            .and_then(|m| m.outbox.as_ref())
            .is_some_and(|(c, _)| *c == connection)
    }

    /// Marks a node gone (or left) and tells every other live node to stop waiting for
    /// it. `connection` (if given) must be the node's current one, so that an old stream
    /// closing late never marks a node that reconnected. Returns whether anything changed.
    pub fn remove(&mut self, id: u32, connection: Option<u64>, presence: Presence, round: u32, reason: &str) -> bool {
        let Some(member) = self.by_id.get_mut(&id) else {
            return false;
        };
        if let Some(c) = connection
            && member.outbox.as_ref().is_none_or(|(current, _)| *current != c)
        {
            return false;
        }
        if !matches!(member.presence, Presence::Live | Presence::Joined) {
            return false;
        }
        member.presence = presence;
        member.outbox = None;
        let event = if presence == Presence::Left { "left" } else { "gone" };
        self.record(id, event, round, reason.to_string());
        self.tell_gone(id);
        true
    }

    fn tell_gone(&self, id: u32) {
        let gone = CoordinatorEvent {
            event: Some(Event::MemberGone(MemberGone { node_id: id })),
        };
        for other in self.live() {
            // A full outbox means that node is not reading; it will be reaped itself.
            let _ = other.outbox.as_ref().map(|(_, tx)| tx.try_send(Ok(gone.clone())));
        }
    }

    /// Releases every member that joined more than `timeout` ago and never opened its
    /// stream, so the same id can join again. Returns whether any was released.
    pub fn release_stale_joins(&mut self, timeout: Duration, round: u32) -> bool {
        let stale: Vec<u32> = self
            .by_id
            .values()
            .filter(|m| m.presence == Presence::Joined && m.joined_at.elapsed() > timeout)
            .map(|m| m.id)
            .collect();
        for &id in &stale {
            if let Some(m) = self.by_id.get_mut(&id) {
                m.presence = Presence::Gone;
            }
            let reason = format!("joined but opened no Sync stream within {} ms", timeout.as_millis());
            self.record(id, "released", round, reason);
        }
        !stale.is_empty()
    }

    /// A round closed: `reported` members reset their silence, the other `sent` ones add
    /// to it; a member that reaches [`SILENT_AFTER`] is recorded as silent once.
    pub fn count_reports(&mut self, sent: &[u32], reported: &[u32], round: u32) {
        let mut newly_silent = Vec::new();
        for &id in sent {
            let Some(m) = self.by_id.get_mut(&id) else { continue };
            if reported.contains(&id) {
                m.missed_reports = 0;
            } else {
                m.missed_reports += 1;
                if m.missed_reports == SILENT_AFTER {
                    newly_silent.push(id);
                }
            }
        }
        for id in newly_silent {
            let reason = format!("no report for {SILENT_AFTER} rounds in a row; not waited for until it reports again");
            self.record(id, "silent", round, reason);
        }
    }

    /// Drops a member's outbox once the run is over, with no membership event: the node
    /// closing its stream then is the end, not a departure. `connection` as in
    /// [`Members::remove`]. Returns whether anything changed.
    pub fn end_stream(&mut self, id: u32, connection: Option<u64>) -> bool {
        let Some(member) = self.by_id.get_mut(&id) else {
            return false;
        };
        match (&member.outbox, connection) {
            (Some((current, _)), Some(c)) if *current != c => false,
            (None, _) => false,
            _ => {
                member.outbox = None;
                true
            }
        }
    }

    /// Drops every member's outbox, ending their Sync streams (the run is over).
    pub fn close_all_streams(&mut self) {
        for member in self.by_id.values_mut() {
            member.outbox = None;
        }
    }

    /// Members with an open stream.
    pub fn live(&self) -> impl Iterator<Item = &Member> {
        self.by_id
            .values()
            .filter(|m| m.presence == Presence::Live && m.outbox.is_some())
    }

    pub fn get(&self, id: u32) -> Option<&Member> {
        self.by_id.get(&id)
    }

    pub fn get_mut(&mut self, id: u32) -> Option<&mut Member> {
        self.by_id.get_mut(&id)
    }

    pub fn all(&self) -> impl Iterator<Item = &Member> {
        self.by_id.values()
    }

    /// A neighbour could not connect to member `id` in round `round`. Returns true when
    /// that makes it unreachable ([`UNREACHABLE_AFTER`] rounds in a row).
    pub fn report_unreachable(&mut self, id: u32, round: u32) -> bool {
        let Some(member) = self.by_id.get_mut(&id) else {
            return false;
        };
        let (last, streak) = member.unreachable_streak;
        member.unreachable_streak = match round {
            _ if streak == 0 => (round, 1),
            r if r == last => (last, streak),
            r if r == last + 1 => (r, streak + 1),
            r => (r, 1),
        };
        let newly = !member.unreachable && member.unreachable_streak.1 >= UNREACHABLE_AFTER;
        member.unreachable |= newly;
        newly
    }

    /// A probe reached member `id` (on connection `connection`): back in the exchange.
    /// Returns whether it was out.
    pub fn reachable(&mut self, id: u32, connection: u64) -> bool {
        match self.by_id.get_mut(&id) {
            Some(m) if m.unreachable && m.outbox.as_ref().is_some_and(|(c, _)| *c == connection) => {
                m.unreachable = false;
                m.unreachable_streak = (0, 0);
                true
            }
            _ => false,
        }
    }

    /// Records a membership event (also what nodes report about their neighbours).
    pub fn record(&mut self, node: u32, event: &str, round: u32, reason: String) {
        self.recorded += 1;
        // The same event, for the same node, round and reason, says nothing new (a
        // flood of NeighbourSilent repeats one): kept once.
        let repeat = self
            .events
            .iter()
            .rev()
            .take(64)
            .any(|e| e.node == node && e.round == round && e.event == event && e.reason == reason);
        if repeat {
            return;
        }
        if self.events.len() >= MAX_EVENTS {
            if self.recorded % 1000 == 1 {
                tracing::warn!(
                    recorded = self.recorded,
                    "{MAX_EVENTS} membership events kept: later ones are counted, not kept"
                );
            }
            return;
        }
        tracing::info!(node, event, round, %reason, "membership");
        self.events.push(MembershipEvent {
            node,
            event: event.to_string(),
            round,
            reason,
        });
    }
}

/// "nodes 0 to 3", as a person reads a range of ids.
pub(crate) fn node_range(nodes: u32) -> String {
    match nodes {
        0 => "no nodes".into(),
        1 => "node 0 only".into(),
        n => format!("nodes 0 to {}", n - 1),
    }
}

/// An advertised address must be `host:port` with a non-empty host and a valid port,
/// since every other node dials it.
fn validate_address(address: &str) -> Result<(), Status> {
    let bad = |why: &str| {
        Status::invalid_argument(format!(
            "advertise address {address:?} {why}; expected host:port, e.g. 192.168.1.20:7001"
        ))
    };
    let (host, port) = address.rsplit_once(':').ok_or_else(|| bad("has no port"))?;
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(bad("has no host"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(bad("has an invalid port")),
    }
}

/// Largest parameter count a node may declare (the node's own limit for the models
/// it builds).
pub const MAX_PARAMETERS: u64 = 50_000_000;

/// A node must speak this build's protocol and follow its data contract: two builds
/// that drew different public batches would otherwise learn from each other's noise.
fn check_versions(request: &JoinRequest) -> Result<(), Status> {
    let (protocol, data) = (request.protocol_version, request.data_contract);
    if protocol != wdml_proto::PROTOCOL_VERSION || data != wdml_proto::DATA_CONTRACT {
        return Err(Status::failed_precondition(format!(
            "node {} speaks protocol version {protocol} with data contract {data}; this coordinator \
             speaks protocol version {} with data contract {} (0: a build from before versions)",
            request.node_id,
            wdml_proto::PROTOCOL_VERSION,
            wdml_proto::DATA_CONTRACT
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(id: u32, advertise: &str) -> JoinRequest {
        JoinRequest {
            node_id: id,
            advertise: advertise.into(),
            model: "mlp:8".into(),
            parameters: 10,
            protocol_version: wdml_proto::PROTOCOL_VERSION,
            data_contract: wdml_proto::DATA_CONTRACT,
            data: Some(wdml_proto::data::fashion_mnist()),
        }
    }

    fn hello() -> Hello {
        Hello {
            data: Some(wdml_proto::data::fashion_mnist()),
            ..Hello::default()
        }
    }

    fn members(nodes: usize) -> Members {
        Members::new(vec!["mlp:8".into(); nodes], wdml_proto::data::fashion_mnist())
    }

    #[test]
    fn a_member_is_unreachable_after_rounds_in_a_row_and_a_rejoin_clears_it_but_not_its_misses() {
        let mut members = members(2);
        members.join(&request(1, "127.0.0.1:9"), 7, Proof::None, 0).unwrap();
        let (tx, _rx) = mpsc::channel(4);
        let connection = members.attach(1, 7, &hello(), tx).unwrap();
        // Reports from several neighbours in one round count once; a gap restarts.
        assert!(!members.report_unreachable(1, 3));
        assert!(!members.report_unreachable(1, 3));
        assert!(!members.report_unreachable(1, 5), "round 4 had no report");
        assert!(members.report_unreachable(1, 6), "rounds 5 and 6 in a row");
        assert!(members.get(1).unwrap().unreachable);
        assert!(!members.report_unreachable(1, 7), "already out: said once");
        // A probe on a connection that is not its current one changes nothing.
        assert!(!members.reachable(1, connection + 1));
        assert!(members.get(1).unwrap().unreachable);
        // Joining again at a new address brings it back; its missed reports
        // stay counted, so a withholding member is not awaited anew after each rejoin.
        members.get_mut(1).unwrap().missed_reports = SILENT_AFTER;
        assert!(members.remove(1, Some(connection), Presence::Gone, 7, "stream closed"));
        // Back at the same address, it is as unreachable as it was.
        members.join(&request(1, "127.0.0.1:9"), 8, Proof::None, 7).unwrap();
        assert!(members.get(1).unwrap().unreachable);
        members.by_id.get_mut(&1).unwrap().presence = Presence::Gone;
        members.join(&request(1, "127.0.0.1:10"), 8, Proof::None, 7).unwrap();
        let member = members.get(1).unwrap();
        assert!(!member.unreachable);
        assert!(!member.awaited(), "its misses are the identity's, not the connection's");
        // And a probe that reaches it on its current connection brings it back.
        let (tx, _rx) = mpsc::channel(4);
        let connection = members.attach(1, 8, &hello(), tx).unwrap();
        assert!(!members.report_unreachable(1, 8));
        assert!(members.report_unreachable(1, 9));
        assert!(members.reachable(1, connection));
        assert!(!members.get(1).unwrap().unreachable);
    }

    #[test]
    fn a_join_in_another_version_is_refused_naming_both() {
        let mut members = members(2);
        let mut old = request(0, "127.0.0.1:1");
        old.protocol_version = 0;
        let status = members.join(&old, 7, Proof::None, 0).unwrap_err();
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert!(
            status.message().contains(&format!(
                "protocol version 0 with data contract {}",
                wdml_proto::DATA_CONTRACT
            )) && status.message().contains(&format!(
                "this coordinator speaks protocol version {} with data contract {}",
                wdml_proto::PROTOCOL_VERSION,
                wdml_proto::DATA_CONTRACT
            )),
            "{}",
            status.message()
        );
        let mut other = request(1, "127.0.0.1:2");
        other.data_contract = wdml_proto::DATA_CONTRACT + 1;
        let status = members.join(&other, 7, Proof::None, 0).unwrap_err();
        let says = format!("data contract {}", wdml_proto::DATA_CONTRACT + 1);
        assert!(status.message().contains(&says), "{}", status.message());
        assert!(
            members.get(0).is_none() && members.get(1).is_none(),
            "neither was admitted"
        );
    }

    #[test]
    fn an_external_model_joins_naming_itself_and_its_parameters() {
        let mut members = Members::new(
            vec!["mlp:8".into(), "ext:numpy-mlp".into()],
            wdml_proto::data::fashion_mnist(),
        );
        let mut join = request(1, "127.0.0.1:1");
        join.model = String::new();
        let status = members.join(&join, 7, Proof::None, 0).unwrap_err();
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert!(
            status.message().contains("that device joins naming it"),
            "{}",
            status.message()
        );
        join.model = "ext:numpy-mlp".into();
        for bad in [0, MAX_PARAMETERS + 1] {
            join.parameters = bad;
            let status = members.join(&join, 7, Proof::None, 0).unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert!(status.message().starts_with("parameters:"), "{}", status.message());
        }
        join.parameters = 101_770;
        assert_eq!(members.join(&join, 7, Proof::None, 0).unwrap(), "ext:numpy-mlp");
        assert_eq!(members.get(1).unwrap().parameters, 101_770);
    }

    #[test]
    fn join_validates_id_and_address() {
        let mut members = members(3);
        let status = members.join(&request(3, "127.0.0.1:1"), 7, Proof::None, 0).unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("nodes 0 to 2"), "{}", status.message());
        for bad in ["127.0.0.1", ":80", "host:0", "host:99999", "host:x"] {
            let status = members.join(&request(0, bad), 7, Proof::None, 0).unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{bad}");
        }
        assert!(members.join(&request(0, "[::1]:7001"), 7, Proof::None, 0).is_ok());
    }

    #[test]
    fn a_model_other_than_the_scenarios_is_refused_naming_both() {
        let mut members = Members::new(
            vec!["mlp:8".into(), "cnn:16,32,128".into()],
            wdml_proto::data::fashion_mnist(),
        );
        let status = members.join(&request(1, "h:2"), 7, Proof::None, 0).unwrap_err();
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert!(
            status.message().contains("mlp:8") && status.message().contains("cnn:16,32,128"),
            "{}",
            status.message()
        );
        // No model: the scenario's.
        let mut any = request(1, "h:2");
        any.model.clear();
        assert_eq!(members.join(&any, 7, Proof::None, 0).unwrap(), "cnn:16,32,128");
    }

    #[test]
    fn other_data_is_refused_at_join_and_at_hello_naming_both_shapes() {
        let cifar = DataSpec {
            shape: vec![3, 32, 32],
            classes: 10,
        };
        let mut members = members(2);
        let mut join = request(0, "h:1");
        join.data = Some(cifar.clone());
        let status = members.join(&join, 7, Proof::None, 0).unwrap_err();
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert_eq!(
            status.message(),
            "node 0 brings other data: the run's data is [1, 28, 28] × 10 classes; \
             this node's is [3, 32, 32] × 10 classes"
        );
        // A node that did not know its data when it joined says it in its Hello.
        join.data = None;
        members.join(&join, 7, Proof::None, 0).unwrap();
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        let wrong = Hello {
            data: Some(cifar),
            ..Hello::default()
        };
        let status = members.attach(0, 7, &wrong, tx.clone()).unwrap_err();
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert!(status.message().contains("[3, 32, 32]"), "{}", status.message());
        let status = members.attach(0, 7, &Hello::default(), tx.clone()).unwrap_err();
        assert!(
            status.message().contains("data: node 0's Hello"),
            "{}",
            status.message()
        );
        let mut three = hello();
        three.label_histogram = vec![1, 2, 3];
        let status = members.attach(0, 7, &three, tx.clone()).unwrap_err();
        assert!(
            status.message().contains("3 classes, but the run's data has 10"),
            "{}",
            status.message()
        );
        members.attach(0, 7, &hello(), tx).unwrap();
    }

    #[test]
    fn a_live_id_cannot_join_twice_but_a_gone_one_can_rejoin() {
        let mut members = members(2);
        members.join(&request(1, "h:1"), 11, Proof::None, 0).unwrap();
        let (tx, _rx) = mpsc::channel(4);
        let connection = members.attach(1, 11, &hello(), tx).unwrap();
        assert_eq!(
            members.join(&request(1, "h:1"), 12, Proof::None, 0).unwrap_err().code(),
            tonic::Code::AlreadyExists
        );
        // A stale connection number changes nothing.
        assert!(!members.remove(1, Some(connection + 1), Presence::Gone, 2, "x"));
        assert!(members.remove(1, Some(connection), Presence::Gone, 2, "stream closed"));
        members.join(&request(1, "h:2"), 13, Proof::None, 3).unwrap();
        assert_eq!(
            members.authenticate(1, 11).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        let events: Vec<_> = members.events.iter().map(|e| e.event.as_str()).collect();
        assert_eq!(events, ["joined", "gone", "rejoined"]);
    }

    #[test]
    fn a_certificate_takes_its_id_back_from_a_stale_connection() {
        let mut members = members(2);
        members.join(&request(1, "h:1"), 11, Proof::Certificate, 0).unwrap();
        let (tx, _rx) = mpsc::channel(4);
        members.attach(1, 11, &hello(), tx).unwrap();
        members.join(&request(1, "h:9"), 12, Proof::Certificate, 0).unwrap();
        let member = members.get(1).unwrap();
        assert_eq!((member.presence, member.outbox.is_none()), (Presence::Joined, true));
        assert!(members.authenticate(1, 11).is_err() && members.authenticate(1, 12).is_ok());
    }

    /// On tokio's paused clock: the sync timeout passes when the test says so, not
    /// when a sleep happens to be long enough.
    #[tokio::test(start_paused = true)]
    async fn a_join_without_a_stream_is_released() {
        let mut members = members(2);
        members.join(&request(0, "h:1"), 11, Proof::None, 0).unwrap();
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(!members.release_stale_joins(Duration::from_secs(60), 0));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(members.release_stale_joins(Duration::from_secs(60), 0));
        assert_eq!(members.get(0).unwrap().presence, Presence::Gone);
        // The same id joins again at once.
        members.join(&request(0, "h:1"), 12, Proof::None, 0).unwrap();
        let events: Vec<_> = members.events.iter().map(|e| e.event.as_str()).collect();
        assert_eq!(events, ["joined", "released", "rejoined"]);
    }

    #[test]
    fn silence_is_counted_per_round_and_forgiven_by_a_report() {
        let mut members = members(2);
        members.join(&request(0, "h:1"), 11, Proof::None, 0).unwrap();
        for round in 0..3 {
            members.count_reports(&[0], &[], round);
        }
        assert!(!members.get(0).unwrap().awaited());
        assert_eq!(members.events.iter().filter(|e| e.event == "silent").count(), 1);
        members.count_reports(&[0], &[0], 3);
        assert!(members.get(0).unwrap().awaited());
    }

    /// Two members with open streams; node 0's receiving end and node 1's connection.
    fn two_live() -> (Members, mpsc::Receiver<Result<CoordinatorEvent, Status>>, u64) {
        let mut members = members(2);
        let (tx0, rx0) = mpsc::channel(4);
        let (tx1, _rx1) = mpsc::channel(4);
        members.join(&request(0, "h:1"), 11, Proof::None, 0).unwrap();
        members.join(&request(1, "h:2"), 13, Proof::None, 0).unwrap();
        members.attach(0, 11, &hello(), tx0).unwrap();
        let connection = members.attach(1, 13, &hello(), tx1).unwrap();
        (members, rx0, connection)
    }

    #[test]
    fn removal_tells_the_other_live_members() {
        let (mut members, mut rx0, _) = two_live();
        assert!(members.remove(1, None, Presence::Left, 0, "shutdown"));
        let event = rx0.try_recv().unwrap().unwrap();
        assert_eq!(event.event, Some(Event::MemberGone(MemberGone { node_id: 1 })));
        assert_eq!(members.live().count(), 1);
    }

    #[test]
    fn a_stream_ending_after_the_run_is_no_departure() {
        let (mut members, mut rx0, connection) = two_live();
        assert!(!members.end_stream(1, Some(connection + 1)), "a stale connection");
        assert!(members.end_stream(1, Some(connection)));
        assert!(!members.end_stream(1, Some(connection)), "already ended");
        assert_eq!(members.live().count(), 1);
        // Nobody is told, nothing is recorded, and the node still counts as finished.
        assert!(rx0.try_recv().is_err());
        let events: Vec<_> = members.events.iter().map(|e| e.event.as_str()).collect();
        assert_eq!(events, ["joined", "joined"]);
        assert_eq!(members.get(1).unwrap().presence, Presence::Live);
    }
}
