//! Where neighbours' predictions land: it knows the current round and its token and
//! decides which messages belong to it, holds messages that arrive a little early
//! (a neighbour may start the round a few milliseconds before us), and lets the
//! round wait until every neighbour was heard from, left, or the deadline passed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::sync::watch;
use tokio::time::Instant;
use tonic::Status;
use tracing::warn;

/// A complete, validated message from a neighbour.
#[derive(Clone, Debug, PartialEq)]
pub struct Delivered {
    pub sender: u32,
    pub round: u32,
    pub round_token: u64,
    pub values: Vec<f32>,
    pub payload_bytes: u64,
    pub wire_bytes: u64,
    /// When its last frame arrived (set by the mailbox on delivery).
    pub arrived: Option<Instant>,
}

/// What the round got from its neighbours.
#[derive(Debug, Default)]
pub struct Collected {
    /// By sender id, so aggregation is deterministic.
    pub messages: Vec<Delivered>,
    /// Neighbours expected this round whose message did not arrive.
    pub lost: u32,
}

#[derive(Default)]
struct Inner {
    /// The round in progress and its token.
    current: Option<(u32, u64)>,
    neighbours: BTreeSet<u32>,
    /// The neighbours whose message the radio delivers this round: the round waits
    /// for these only.
    expected: BTreeSet<u32>,
    /// Neighbours the coordinator said are gone: do not wait for them.
    gone: BTreeSet<u32>,
    /// Messages by (round, sender): the current round's, and early ones for the next.
    inbox: BTreeMap<(u32, u32), Delivered>,
}

/// The node's mailbox, shared by the peer service (which fills it) and the round
/// (which empties it).
pub struct Mailbox {
    inner: Mutex<Inner>,
    /// Bumped on every change a waiting round may care about.
    changes: watch::Sender<u64>,
    rejected: AtomicU32,
    /// Early messages held before the node's first round, at most.
    early_capacity: usize,
}

impl Mailbox {
    /// A mailbox for a run with `nodes` members.
    pub fn new(nodes: u32) -> Self {
        Mailbox {
            inner: Mutex::new(Inner::default()),
            changes: watch::channel(0).0,
            rejected: AtomicU32::new(0),
            early_capacity: 2 * nodes as usize,
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn changed(&self) {
        self.changes.send_modify(|v| *v += 1);
    }

    /// Enters a round: from now on only this round's token is accepted, and early
    /// messages that turn out to carry another token, or come from a node that is not
    /// a neighbour this round, are dropped. The round waits for the `expected`
    /// neighbours only (those whose message the radio delivers).
    pub fn begin_round(&self, round: u32, token: u64, neighbours: &[u32], expected: &[u32]) {
        let mut inner = self.inner();
        inner.current = Some((round, token));
        inner.neighbours = neighbours.iter().copied().collect();
        inner.expected = expected.iter().copied().collect();
        inner.gone.clear();
        let neighbours = inner.neighbours.clone();
        let mut dropped = 0;
        inner.inbox.retain(|&(r, sender), m| {
            let keep = r > round || (r == round && m.round_token == token && neighbours.contains(&sender));
            if !keep && r == round {
                warn!(
                    sender,
                    round, "dropping an early message: wrong round token or not a neighbour"
                );
                dropped += 1;
            }
            keep
        });
        drop(inner);
        self.rejected.fetch_add(dropped, Ordering::Relaxed);
        self.changed();
    }

    /// Decides whether a message for `round` from `sender` may come in.
    fn admit(inner: &Inner, early_capacity: usize, round: u32, token: u64, sender: u32) -> Result<(), Status> {
        if inner.inbox.contains_key(&(round, sender)) {
            return Err(Status::already_exists(format!(
                "node {sender} already delivered its message for round {round}"
            )));
        }
        match inner.current {
            Some((current, _)) if round < current => Err(Status::failed_precondition(format!(
                "stale message: round {round} is over, this node is in round {current}"
            ))),
            Some((current, current_token)) if round == current => {
                if token != current_token {
                    Err(Status::failed_precondition(format!(
                        "round token does not match round {round}"
                    )))
                } else if !inner.neighbours.contains(&sender) {
                    Err(Status::permission_denied(format!(
                        "node {sender} is not a neighbour in round {round}"
                    )))
                } else {
                    Ok(())
                }
            }
            Some((current, _)) if round == current + 1 => Ok(()),
            Some((current, _)) => Err(Status::failed_precondition(format!(
                "round {round} is too far ahead: this node is in round {current}"
            ))),
            // Before our first StartRound we cannot judge the round; hold a bounded number.
            None if inner.inbox.len() < early_capacity => Ok(()),
            None => Err(Status::resource_exhausted(
                "too many messages before this node's first round",
            )),
        }
    }

    /// Files a complete message if its round, token and sender are right.
    pub fn deliver(&self, mut message: Delivered) -> Result<(), Status> {
        message.arrived = Some(Instant::now());
        let mut inner = self.inner();
        Self::admit(
            &inner,
            self.early_capacity,
            message.round,
            message.round_token,
            message.sender,
        )?;
        inner.inbox.insert((message.round, message.sender), message);
        drop(inner);
        self.changed();
        Ok(())
    }

    /// A neighbour left: the round stops waiting for it.
    pub fn peer_gone(&self, node: u32) {
        self.inner().gone.insert(node);
        self.changed();
    }

    /// Counts a message refused by validation (for the round's metrics).
    pub fn count_rejected(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }

    /// Rejections since the last call.
    pub fn take_rejected(&self) -> u32 {
        self.rejected.swap(0, Ordering::Relaxed)
    }

    /// Waits until every expected neighbour of `round` delivered, is gone, or passed
    /// its own deadline (`deadlines`; `deadline` for one not listed, and for all at
    /// most); takes the round's messages out of the mailbox.
    pub async fn collect(&self, round: u32, deadline: Instant, deadlines: &BTreeMap<u32, Instant>) -> Collected {
        let mut changes = self.changes.subscribe();
        loop {
            let now = Instant::now();
            // The soonest deadline of a neighbour still awaited.
            let next = {
                let inner = self.inner();
                inner
                    .expected
                    .iter()
                    .filter(|n| !inner.gone.contains(n) && !inner.inbox.contains_key(&(round, **n)))
                    .map(|n| deadlines.get(n).copied().unwrap_or(deadline).min(deadline))
                    .filter(|due| *due > now)
                    .min()
            };
            let Some(next) = next else { break };
            if inner_round_moved(&self.inner(), round) {
                break;
            }
            match tokio::time::timeout_at(next, changes.changed()).await {
                Ok(Ok(())) | Err(_) => continue,
                Ok(Err(_)) => break,
            }
        }
        let mut inner = self.inner();
        let neighbours = inner.neighbours.clone();
        let messages: Vec<Delivered> = neighbours
            .iter()
            .filter_map(|n| inner.inbox.remove(&(round, *n)))
            .collect();
        Collected {
            lost: (neighbours.len() - messages.len()) as u32,
            messages,
        }
    }
}

fn inner_round_moved(inner: &Inner, round: u32) -> bool {
    inner.current.is_some_and(|(current, _)| current != round)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tonic::Code;

    fn message(sender: u32, round: u32, token: u64) -> Delivered {
        Delivered {
            sender,
            round,
            round_token: token,
            values: vec![0.0],
            payload_bytes: 4,
            wire_bytes: 40,
            arrived: None,
        }
    }

    #[test]
    fn judges_rounds_tokens_and_senders() {
        let mailbox = Mailbox::new(4);
        mailbox.begin_round(5, 77, &[1, 2], &[1, 2]);
        let code = |sender, round, token| mailbox.deliver(message(sender, round, token)).unwrap_err().code();
        assert_eq!(code(1, 4, 77), Code::FailedPrecondition);
        assert_eq!(code(1, 5, 78), Code::FailedPrecondition);
        assert_eq!(code(3, 5, 77), Code::PermissionDenied);
        assert_eq!(code(1, 7, 1), Code::FailedPrecondition);
        assert!(mailbox.deliver(message(3, 6, 1)).is_ok(), "the next round is held");
        mailbox.deliver(message(1, 5, 77)).unwrap();
        assert_eq!(
            mailbox.deliver(message(1, 5, 77)).unwrap_err().code(),
            Code::AlreadyExists
        );
    }

    #[test]
    fn early_messages_are_kept_only_with_the_right_token() {
        let mailbox = Mailbox::new(4);
        mailbox.deliver(message(1, 0, 10)).unwrap();
        mailbox.deliver(message(2, 0, 11)).unwrap();
        mailbox.begin_round(0, 10, &[1, 2], &[1, 2]);
        assert_eq!(mailbox.take_rejected(), 1);
        let inner = mailbox.inner();
        assert!(inner.inbox.contains_key(&(0, 1)) && !inner.inbox.contains_key(&(0, 2)));
    }

    #[tokio::test(start_paused = true)]
    async fn collect_stops_at_the_deadline_and_counts_the_missing() {
        let mailbox = Mailbox::new(4);
        mailbox.begin_round(0, 1, &[1, 2, 3], &[1, 2, 3]);
        mailbox.deliver(message(3, 0, 1)).unwrap();
        mailbox.deliver(message(1, 0, 1)).unwrap();
        let collected = mailbox
            .collect(0, Instant::now() + Duration::from_secs(5), &BTreeMap::new())
            .await;
        assert_eq!(collected.messages.iter().map(|m| m.sender).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(collected.lost, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn each_neighbour_is_awaited_until_its_own_deadline() {
        let mailbox = std::sync::Arc::new(Mailbox::new(4));
        mailbox.begin_round(0, 1, &[1, 2], &[1, 2]);
        let started = Instant::now();
        let deadlines = BTreeMap::from([
            (1, started + Duration::from_secs(1)),
            (2, started + Duration::from_secs(3)),
        ]);
        let m = mailbox.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            m.deliver(message(2, 0, 1)).unwrap();
        });
        // Node 1 is given up after 1 s; node 2 arrives at 2 s, inside its 3 s.
        let collected = mailbox.collect(0, started + Duration::from_secs(60), &deadlines).await;
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        assert_eq!(collected.messages.iter().map(|m| m.sender).collect::<Vec<_>>(), [2]);
        assert_eq!(collected.lost, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn collect_does_not_wait_for_a_gone_neighbour() {
        let mailbox = std::sync::Arc::new(Mailbox::new(4));
        mailbox.begin_round(0, 1, &[1, 2], &[1, 2]);
        mailbox.deliver(message(1, 0, 1)).unwrap();
        let started = Instant::now();
        let m = mailbox.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            m.peer_gone(2);
        });
        let collected = mailbox
            .collect(0, Instant::now() + Duration::from_secs(60), &BTreeMap::new())
            .await;
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!((collected.messages.len(), collected.lost), (1, 1));
    }
}
