//! The membership table: who joined, who is live, who is gone, and the events that
//! changed it, for the run report.

use std::collections::BTreeMap;
use std::time::Instant;

use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::Serialize;
use tokio::sync::mpsc;
use tonic::Status;
use wdml_proto::{CoordinatorEvent, JoinRequest, MemberGone, coordinator_event::Event};

/// The sending half of a node's `Sync` stream.
pub(crate) type Outbox = mpsc::Sender<Result<CoordinatorEvent, Status>>;

/// Where a node stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Presence {
    /// Joined, but its `Sync` stream is not open yet.
    Joined,
    /// Streaming: takes part in the next round.
    Live,
    /// Its stream broke or it went silent; it may join again.
    Gone,
    /// It said it was leaving.
    Left,
}

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
    pub last_seen: Instant,
    pub rounds_reported: u32,
}

/// A change of membership, kept for the summary.
#[derive(Clone, Debug, Serialize)]
pub struct MembershipEvent {
    pub node: u32,
    pub event: &'static str,
    /// The round that was open (or about to open) when it happened.
    pub round: u32,
    pub reason: String,
}

/// All members, by id.
pub(crate) struct Members {
    nodes: u32,
    by_id: BTreeMap<u32, Member>,
    rng: StdRng,
    next_connection: u64,
    /// Every node must run the same model (parameter averaging).
    identical_models: bool,
    pub events: Vec<MembershipEvent>,
}

impl Members {
    pub fn new(nodes: u32, seed: u64, identical_models: bool) -> Self {
        Members {
            nodes,
            by_id: BTreeMap::new(),
            // Sessions only need to be unguessable by accident, not by an attacker.
            rng: StdRng::seed_from_u64(wdml_channel::derive_external_seed(
                seed,
                &[wdml_channel::purpose::SESSIONS],
            )),
            next_connection: 0,
            identical_models,
            events: Vec::new(),
        }
    }

    /// Admits a node (first join or rejoin after it was gone) and returns its session.
    pub fn join(&mut self, request: &JoinRequest, round: u32) -> Result<u64, Status> {
        let id = request.node_id;
        if id >= self.nodes {
            return Err(Status::invalid_argument(format!(
                "node_id {id} is out of range: this run has nodes 0..{}",
                self.nodes
            )));
        }
        validate_address(&request.advertise)?;
        if request.model.trim().is_empty() {
            return Err(Status::invalid_argument(
                "model must describe the node's model, e.g. \"mlp:256,128\"",
            ));
        }
        if self.identical_models
            && let Some(other) = self.by_id.values().find(|m| m.model != request.model)
        {
            return Err(Status::failed_precondition(format!(
                "this run averages parameters (fedavg), so every node needs the same model: node {} runs {}, \
                 node {id} asks to join with {}",
                other.id, other.model, request.model
            )));
        }
        let rejoin = match self.by_id.get(&id) {
            Some(m) if matches!(m.presence, Presence::Live | Presence::Joined) => {
                return Err(Status::already_exists(format!(
                    "node {id} is already a live member; a second process with the same id? \
                     (a node that lost its connection is admitted again once it is marked gone)"
                )));
            }
            Some(_) => true,
            None => false,
        };
        let session = self.rng.random::<u64>() | 1;
        self.by_id.insert(
            id,
            Member {
                id,
                advertise: request.advertise.clone(),
                model: request.model.clone(),
                parameters: request.parameters,
                session,
                presence: Presence::Joined,
                outbox: None,
                last_seen: Instant::now(),
                rounds_reported: self.by_id.get(&id).map_or(0, |m| m.rounds_reported),
            },
        );
        let event = if rejoin { "rejoined" } else { "joined" };
        self.record(id, event, round, request.advertise.clone());
        Ok(session)
    }

    /// Binds a `Sync` stream to a joined node; returns the connection number.
    pub fn attach(&mut self, id: u32, session: u64, outbox: Outbox) -> Result<u64, Status> {
        let member = self.authenticate(id, session)?;
        if member.presence != Presence::Joined {
            return Err(Status::failed_precondition(format!(
                "node {id} has no pending join (presence {:?}); call Join first",
                member.presence
            )));
        }
        self.next_connection += 1;
        let connection = self.next_connection;
        let member = self.by_id.get_mut(&id).expect("authenticated above");
        member.presence = Presence::Live;
        member.outbox = Some((connection, outbox));
        member.last_seen = Instant::now();
        Ok(connection)
    }

    /// The member with this id if `session` is its current one.
    pub fn authenticate(&self, id: u32, session: u64) -> Result<&Member, Status> {
        match self.by_id.get(&id) {
            Some(m) if m.session == session => Ok(m),
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
        member.presence = presence.clone();
        member.outbox = None;
        let event = if presence == Presence::Left { "left" } else { "gone" };
        self.record(id, event, round, reason.to_string());
        let gone = CoordinatorEvent {
            event: Some(Event::MemberGone(MemberGone { node_id: id })),
        };
        for other in self.live() {
            // A full outbox means that node is not reading; it will be reaped itself.
            let _ = other.outbox.as_ref().map(|(_, tx)| tx.try_send(Ok(gone.clone())));
        }
        true
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

    fn record(&mut self, node: u32, event: &'static str, round: u32, reason: String) {
        tracing::info!(node, event, round, %reason, "membership");
        self.events.push(MembershipEvent {
            node,
            event,
            round,
            reason,
        });
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

#[cfg(test)]
mod tests {
    use super::*;

    fn request(id: u32, advertise: &str) -> JoinRequest {
        JoinRequest {
            node_id: id,
            advertise: advertise.into(),
            model: "mlp:8".into(),
            parameters: 10,
        }
    }

    #[test]
    fn join_validates_id_and_address() {
        let mut members = Members::new(3, 1, false);
        assert_eq!(
            members.join(&request(3, "127.0.0.1:1"), 0).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        for bad in ["127.0.0.1", ":80", "host:0", "host:99999", "host:x"] {
            let status = members.join(&request(0, bad), 0).unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{bad}");
        }
        assert!(members.join(&request(0, "[::1]:7001"), 0).is_ok());
    }

    #[test]
    fn parameter_averaging_refuses_a_different_model() {
        let mut members = Members::new(2, 1, true);
        members.join(&request(0, "h:1"), 0).unwrap();
        let mut other = request(1, "h:2");
        other.model = "cnn:16,32,128".into();
        assert_eq!(
            members.join(&other, 0).unwrap_err().code(),
            tonic::Code::FailedPrecondition
        );
        assert!(members.join(&request(1, "h:2"), 0).is_ok());
    }

    #[test]
    fn a_live_id_cannot_join_twice_but_a_gone_one_can_rejoin() {
        let mut members = Members::new(2, 1, false);
        let session = members.join(&request(1, "h:1"), 0).unwrap();
        let (tx, _rx) = mpsc::channel(4);
        let connection = members.attach(1, session, tx).unwrap();
        assert_eq!(
            members.join(&request(1, "h:1"), 0).unwrap_err().code(),
            tonic::Code::AlreadyExists
        );
        // A stale connection number changes nothing.
        assert!(!members.remove(1, Some(connection + 1), Presence::Gone, 2, "x"));
        assert!(members.remove(1, Some(connection), Presence::Gone, 2, "stream closed"));
        let again = members.join(&request(1, "h:2"), 3).unwrap();
        assert_ne!(again, session);
        assert_eq!(
            members.authenticate(1, session).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        let events: Vec<_> = members.events.iter().map(|e| e.event).collect();
        assert_eq!(events, ["joined", "gone", "rejoined"]);
    }

    /// Two members with open streams; node 0's receiving end and node 1's connection.
    fn two_live() -> (Members, mpsc::Receiver<Result<CoordinatorEvent, Status>>, u64) {
        let mut members = Members::new(2, 1, false);
        let (tx0, rx0) = mpsc::channel(4);
        let (tx1, _rx1) = mpsc::channel(4);
        let s0 = members.join(&request(0, "h:1"), 0).unwrap();
        let s1 = members.join(&request(1, "h:2"), 0).unwrap();
        members.attach(0, s0, tx0).unwrap();
        let connection = members.attach(1, s1, tx1).unwrap();
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
        let events: Vec<_> = members.events.iter().map(|e| e.event).collect();
        assert_eq!(events, ["joined", "joined"]);
        assert_eq!(members.get(1).unwrap().presence, Presence::Live);
    }
}
