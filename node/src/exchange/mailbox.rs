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
    /// For neighbours not heard this round, their newest message from an earlier round
    /// within `exchange.max_staleness` (by sender id).
    pub stale: Vec<Delivered>,
    /// Neighbours not heard whose message the coordinator said could not reach this
    /// node (their sends failed): a broken link, not a silent neighbour.
    pub unreachable: Vec<u32>,
}

/// Stop waiting once `needed` of the awaited neighbours were heard, `grace` later (the
/// `quorum` round policy, applied to the exchange).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Quorum {
    pub needed: usize,
    pub grace: std::time::Duration,
}

#[derive(Default)]
struct Inner {
    /// The round in progress and its token.
    current: Option<(u32, u64)>,
    neighbours: BTreeSet<u32>,
    /// The neighbours whose message the radio delivers this round: the round waits
    /// for these only.
    expected: BTreeSet<u32>,
    /// Neighbours the coordinator said are gone, or whose message for this round will
    /// not come: do not wait for them.
    gone: BTreeSet<u32>,
    /// Of those, the ones whose message for this round will not come: their link to
    /// this node is broken, which says nothing of whether they are silent.
    unreachable: BTreeSet<u32>,
    /// (round, sender) of messages for a round this node has not begun that the
    /// coordinator said will not come.
    not_coming: BTreeSet<(u32, u32)>,
    /// Messages by (round, sender): the current round's, and early ones for the next.
    inbox: BTreeMap<(u32, u32), Delivered>,
    /// The tokens of the rounds this node took part in lately, by round.
    tokens: BTreeMap<u32, u64>,
    /// Each neighbour's newest message from an earlier round, kept while it may still
    /// be used (`max_staleness`).
    stale: BTreeMap<u32, Delivered>,
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
    /// How many rounds old a message may be and still be used (0: refused).
    max_staleness: u32,
}

impl Mailbox {
    /// A mailbox for a run with `nodes` members, keeping messages up to
    /// `max_staleness` rounds old.
    pub fn new(nodes: u32, max_staleness: u32) -> Self {
        Mailbox {
            inner: Mutex::new(Inner::default()),
            changes: watch::channel(0).0,
            rejected: AtomicU32::new(0),
            early_capacity: 2 * nodes as usize,
            max_staleness,
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
        inner.tokens.insert(round, token);
        let oldest = round.saturating_sub(self.max_staleness);
        inner.tokens.retain(|&r, _| r >= oldest);
        inner.neighbours = neighbours.iter().copied().collect();
        inner.expected = expected.iter().copied().collect();
        let given_up: BTreeSet<u32> = inner
            .not_coming
            .range((round, 0)..=(round, u32::MAX))
            .map(|&(_, from)| from)
            .collect();
        inner.gone = given_up.clone();
        inner.unreachable = given_up;
        inner.not_coming.retain(|&(r, _)| r > round);
        let neighbours = inner.neighbours.clone();
        let mut dropped = 0;
        let mut older = Vec::new();
        inner.inbox.retain(|&(r, sender), m| {
            let keep = r > round || (r == round && m.round_token == token && neighbours.contains(&sender));
            if !keep && r == round {
                warn!(
                    sender,
                    round, "dropping an early message: wrong round token or not a neighbour"
                );
                dropped += 1;
            }
            if r < round {
                // Came after its round's exchange, or for a round this node skipped.
                older.push(m.clone());
            }
            keep
        });
        for message in older {
            Self::keep_stale(&mut inner, round, self.max_staleness, message);
        }
        inner
            .stale
            .retain(|_, m| round.saturating_sub(m.round) <= self.max_staleness);
        drop(inner);
        self.rejected.fetch_add(dropped, Ordering::Relaxed);
        self.changed();
    }

    /// Decides whether a message for `round` from `sender` may come in.
    fn admit(
        inner: &Inner,
        early_capacity: usize,
        max_staleness: u32,
        round: u32,
        token: u64,
        sender: u32,
    ) -> Result<(), Status> {
        if inner.inbox.contains_key(&(round, sender)) {
            return Err(Status::already_exists(format!(
                "node {sender} already delivered its message for round {round}"
            )));
        }
        match inner.current {
            // A neighbour's late message, still young enough to be used: its token must
            // be that round's if this node took part in it.
            Some((current, _))
                if round < current
                    && current - round <= max_staleness
                    && inner.tokens.get(&round).is_none_or(|t| *t == token) =>
            {
                match inner.stale.get(&sender) {
                    Some(kept) if kept.round >= round => Err(Status::already_exists(format!(
                        "node {sender} already delivered a message for round {} or later",
                        kept.round
                    ))),
                    _ => Ok(()),
                }
            }
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
            // Further ahead: this node fell behind (a straggler, or back from a lost
            // connection) and skips to the round the coordinator tells it next, which
            // may be this one: the coordinator may tell its neighbours first. Held, at
            // most one such message per sender (its newest: a node that catches up skips
            // to the newest round, and a newer message serves as stale where an older
            // one would) and a bounded number in all.
            Some((current, _)) => match Self::held_ahead(inner, current, sender) {
                Some(held) if held > round => Err(Status::failed_precondition(format!(
                    "node {sender} already sent a message for round {held}, after round {round}"
                ))),
                _ if inner.inbox.len() < early_capacity => Ok(()),
                _ => Err(Status::resource_exhausted(format!(
                    "too many messages ahead of this node's round {current}"
                ))),
            },
            // Before our first StartRound we cannot judge the round; hold a bounded number.
            None if inner.inbox.len() < early_capacity => Ok(()),
            None => Err(Status::resource_exhausted(
                "too many messages before this node's first round",
            )),
        }
    }

    /// The round of the message `sender` sent for a round after `current + 1`, if one
    /// is held.
    fn held_ahead(inner: &Inner, current: u32, sender: u32) -> Option<u32> {
        let after_next = current.saturating_add(2);
        inner
            .inbox
            .range((after_next, 0)..)
            .map(|(&(round, from), _)| (round, from))
            .find(|&(_, from)| from == sender)
            .map(|(round, _)| round)
    }

    /// Files a complete message if its round, token and sender are right.
    pub fn deliver(&self, mut message: Delivered) -> Result<(), Status> {
        message.arrived = Some(Instant::now());
        let mut inner = self.inner();
        // The very message already kept, again: a retry whose receipt was lost (the
        // sender tries again when its connection breaks). Accepted again and nothing
        // changes; it is not a rejection. Another message for the same round still is.
        let kept = inner
            .inbox
            .get(&(message.round, message.sender))
            .or_else(|| inner.stale.get(&message.sender).filter(|s| s.round == message.round));
        if kept.is_some_and(|kept| kept.round_token == message.round_token && kept.values == message.values) {
            return Ok(());
        }
        Self::admit(
            &inner,
            self.early_capacity,
            self.max_staleness,
            message.round,
            message.round_token,
            message.sender,
        )?;
        match inner.current {
            Some((current, _)) if message.round < current => {
                Self::keep_stale(&mut inner, current, self.max_staleness, message);
            }
            Some((current, _)) if message.round > current.saturating_add(1) => {
                // Replaces its sender's older message from beyond the next round.
                if let Some(older) = Self::held_ahead(&inner, current, message.sender) {
                    inner.inbox.remove(&(older, message.sender));
                }
                inner.inbox.insert((message.round, message.sender), message);
            }
            _ => {
                inner.inbox.insert((message.round, message.sender), message);
            }
        }
        drop(inner);
        self.changed();
        Ok(())
    }

    /// Keeps `message` (from a round before `current`) as its sender's newest stale one,
    /// if it is young enough and newer than the one kept.
    fn keep_stale(inner: &mut Inner, current: u32, max_staleness: u32, message: Delivered) {
        if message.round >= current
            || current - message.round > max_staleness
            || inner
                .tokens
                .get(&message.round)
                .is_some_and(|t| *t != message.round_token)
            || inner
                .stale
                .get(&message.sender)
                .is_some_and(|kept| kept.round >= message.round)
        {
            return;
        }
        inner.stale.insert(message.sender, message);
    }

    /// `from`'s message for `round` will not come (it could not reach this node): that
    /// round does not wait for it. Said of a round this node has not begun yet, it is
    /// kept for that round (a bounded number).
    pub fn not_coming(&self, round: u32, from: u32) {
        let mut inner = self.inner();
        match inner.current {
            Some((current, _)) if current == round => {
                inner.gone.insert(from);
                inner.unreachable.insert(from);
            }
            Some((current, _)) if current > round => return,
            _ if inner.not_coming.len() < self.early_capacity => {
                inner.not_coming.insert((round, from));
            }
            _ => return,
        }
        drop(inner);
        self.changed();
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
    /// most), or a `quorum` of them was heard and its grace passed; takes the round's
    /// messages out of the mailbox, with the stale ones of the neighbours not heard.
    pub async fn collect(
        &self,
        round: u32,
        mut deadline: Instant,
        deadlines: &BTreeMap<u32, Instant>,
        quorum: Option<Quorum>,
    ) -> Collected {
        let mut changes = self.changes.subscribe();
        let mut quorum_reached = false;
        loop {
            let now = Instant::now();
            // The soonest deadline of a neighbour still awaited.
            let next = {
                let inner = self.inner();
                if let Some(quorum) = quorum
                    && !quorum_reached
                {
                    let heard = inner
                        .expected
                        .iter()
                        .filter(|n| inner.inbox.contains_key(&(round, **n)))
                        .count();
                    let awaited = inner.expected.iter().filter(|n| !inner.gone.contains(n)).count();
                    if heard >= quorum.needed.min(awaited) {
                        quorum_reached = true;
                        deadline = deadline.min(now + quorum.grace);
                    }
                }
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
        if self.max_staleness > 0 {
            // What was heard now stands in for its sender in the next rounds, if need be.
            for message in &messages {
                inner.stale.insert(message.sender, message.clone());
            }
        }
        let stale = neighbours
            .iter()
            .filter(|n| !messages.iter().any(|m| m.sender == **n))
            .filter_map(|n| inner.stale.get(n))
            .filter(|m| m.round < round && round - m.round <= self.max_staleness)
            .cloned()
            .collect();
        let unreachable = neighbours
            .iter()
            .filter(|n| inner.unreachable.contains(n) && !messages.iter().any(|m| m.sender == **n))
            .copied()
            .collect();
        Collected {
            lost: (neighbours.len() - messages.len()) as u32,
            messages,
            stale,
            unreachable,
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
        let mailbox = Mailbox::new(4, 0);
        mailbox.begin_round(5, 77, &[1, 2], &[1, 2]);
        let code = |sender, round, token| mailbox.deliver(message(sender, round, token)).unwrap_err().code();
        assert_eq!(code(1, 4, 77), Code::FailedPrecondition);
        assert_eq!(code(1, 5, 78), Code::FailedPrecondition);
        assert_eq!(code(3, 5, 77), Code::PermissionDenied);
        assert!(mailbox.deliver(message(3, 6, 1)).is_ok(), "the next round is held");
        mailbox.deliver(message(1, 5, 77)).unwrap();
        // The same message again (a retry whose receipt was lost) is taken again;
        // another one for the same round is not.
        mailbox.deliver(message(1, 5, 77)).unwrap();
        let mut other = message(1, 5, 77);
        other.values = vec![1.0];
        assert_eq!(mailbox.deliver(other).unwrap_err().code(), Code::AlreadyExists);
    }

    /// A node back from a lost connection is still in the round it was cut off in when
    /// its neighbours, told first, send it the round the coordinator is about to tell it.
    #[test]
    fn a_node_that_fell_behind_holds_its_neighbours_newest_message_for_a_later_round() {
        let mailbox = Mailbox::new(4, 0);
        mailbox.begin_round(5, 55, &[1, 2], &[1, 2]);
        mailbox.deliver(message(1, 8, 88)).unwrap();
        mailbox.deliver(message(2, 8, 88)).unwrap();
        // Node 1 went on to round 9: its newest message replaces its round-8 one, and an
        // older one than that is refused.
        mailbox.deliver(message(1, 9, 99)).unwrap();
        assert_eq!(
            mailbox.deliver(message(1, 7, 77)).unwrap_err().code(),
            Code::FailedPrecondition
        );
        mailbox.begin_round(8, 88, &[1, 2], &[1, 2]);
        assert_eq!(mailbox.take_rejected(), 0, "both round-8 messages carry its token");
        let inner = mailbox.inner();
        let held: Vec<_> = inner.inbox.keys().copied().collect();
        assert_eq!(held, [(8, 2), (9, 1)]);
        drop(inner);
        // At most a bounded number is held in all (2 per member).
        let mailbox = Mailbox::new(2, 0);
        mailbox.begin_round(0, 1, &[1], &[1]);
        for round in 2..6 {
            mailbox.deliver(message(round, round, 1)).unwrap();
        }
        assert_eq!(
            mailbox.deliver(message(9, 7, 1)).unwrap_err().code(),
            Code::ResourceExhausted
        );
    }

    #[test]
    fn early_messages_are_kept_only_with_the_right_token() {
        let mailbox = Mailbox::new(4, 0);
        mailbox.deliver(message(1, 0, 10)).unwrap();
        mailbox.deliver(message(2, 0, 11)).unwrap();
        mailbox.begin_round(0, 10, &[1, 2], &[1, 2]);
        assert_eq!(mailbox.take_rejected(), 1);
        let inner = mailbox.inner();
        assert!(inner.inbox.contains_key(&(0, 1)) && !inner.inbox.contains_key(&(0, 2)));
    }

    #[tokio::test(start_paused = true)]
    async fn collect_stops_at_the_deadline_and_counts_the_missing() {
        let mailbox = Mailbox::new(4, 0);
        mailbox.begin_round(0, 1, &[1, 2, 3], &[1, 2, 3]);
        mailbox.deliver(message(3, 0, 1)).unwrap();
        mailbox.deliver(message(1, 0, 1)).unwrap();
        let collected = mailbox
            .collect(0, Instant::now() + Duration::from_secs(5), &BTreeMap::new(), None)
            .await;
        assert_eq!(collected.messages.iter().map(|m| m.sender).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(collected.lost, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn each_neighbour_is_awaited_until_its_own_deadline() {
        let mailbox = std::sync::Arc::new(Mailbox::new(4, 0));
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
        let collected = mailbox
            .collect(0, started + Duration::from_secs(60), &deadlines, None)
            .await;
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        assert_eq!(collected.messages.iter().map(|m| m.sender).collect::<Vec<_>>(), [2]);
        assert_eq!(collected.lost, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn collect_does_not_wait_for_a_message_that_will_not_come() {
        let mailbox = std::sync::Arc::new(Mailbox::new(4, 0));
        // Said before the round began (this node is slower than the sender's tries).
        mailbox.not_coming(3, 2);
        mailbox.not_coming(4, 1);
        mailbox.begin_round(3, 1, &[1, 2, 3], &[1, 2, 3]);
        mailbox.deliver(message(1, 3, 1)).unwrap();
        let started = Instant::now();
        let m = mailbox.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            m.not_coming(3, 3);
        });
        let collected = mailbox
            .collect(3, Instant::now() + Duration::from_secs(60), &BTreeMap::new(), None)
            .await;
        assert_eq!(started.elapsed(), Duration::from_millis(100));
        assert_eq!((collected.messages.len(), collected.lost), (1, 2));
        assert_eq!(collected.unreachable, [2, 3], "lost to a broken link, not silent");
        // Only for that round: node 1's next-round message is still awaited, and node
        // 2's is, again.
        mailbox.begin_round(4, 2, &[1, 2], &[1, 2]);
        assert_eq!(mailbox.inner().gone, BTreeSet::from([1]));
    }

    #[tokio::test(start_paused = true)]
    async fn collect_does_not_wait_for_a_gone_neighbour() {
        let mailbox = std::sync::Arc::new(Mailbox::new(4, 0));
        mailbox.begin_round(0, 1, &[1, 2], &[1, 2]);
        mailbox.deliver(message(1, 0, 1)).unwrap();
        let started = Instant::now();
        let m = mailbox.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            m.peer_gone(2);
        });
        let collected = mailbox
            .collect(0, Instant::now() + Duration::from_secs(60), &BTreeMap::new(), None)
            .await;
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!((collected.messages.len(), collected.lost), (1, 1));
        assert!(collected.unreachable.is_empty(), "gone is not a broken link");
    }
    #[tokio::test(start_paused = true)]
    async fn late_messages_are_used_as_stale_within_the_bound_and_refused_beyond() {
        let mailbox = Mailbox::new(4, 2);
        let at = |round| Instant::now() + Duration::from_secs(1) + Duration::from_secs(round);
        // Round 3: node 1 is heard, node 2 (a straggler) is not.
        mailbox.begin_round(3, 30, &[1, 2], &[1, 2]);
        mailbox.deliver(message(1, 3, 30)).unwrap();
        let collected = mailbox.collect(3, at(0), &BTreeMap::new(), None).await;
        assert!(collected.stale.is_empty());
        // Round 4: node 2's round-3 message arrives late, with round 3's token.
        mailbox.begin_round(4, 40, &[1, 2], &[1, 2]);
        mailbox.deliver(message(2, 3, 30)).unwrap();
        mailbox.deliver(message(2, 3, 30)).unwrap();
        let mut other = message(2, 3, 30);
        other.values = vec![1.0];
        assert_eq!(mailbox.deliver(other).unwrap_err().code(), Code::AlreadyExists);
        // Another token for a round this node took part in: not that round's message.
        assert_eq!(
            mailbox.deliver(message(1, 3, 31)).unwrap_err().code(),
            Code::FailedPrecondition
        );
        mailbox.deliver(message(1, 4, 40)).unwrap();
        let collected = mailbox.collect(4, at(1), &BTreeMap::new(), None).await;
        assert_eq!(collected.messages.iter().map(|m| m.sender).collect::<Vec<_>>(), [1]);
        assert_eq!(
            collected.stale.iter().map(|m| (m.sender, m.round)).collect::<Vec<_>>(),
            [(2, 3)]
        );
        // Nobody heard in round 5: each neighbour's newest message stands in for it;
        // node 2's is still usable two rounds on (age 2), not three.
        let stale = |c: Collected| c.stale.iter().map(|m| (m.sender, m.round)).collect::<Vec<_>>();
        mailbox.begin_round(5, 50, &[1, 2], &[1, 2]);
        assert_eq!(
            stale(mailbox.collect(5, at(2), &BTreeMap::new(), None).await),
            [(1, 4), (2, 3)]
        );
        mailbox.begin_round(6, 60, &[1, 2], &[1, 2]);
        assert_eq!(stale(mailbox.collect(6, at(3), &BTreeMap::new(), None).await), [(1, 4)]);
        // Beyond the bound, a late message is refused outright.
        assert_eq!(
            mailbox.deliver(message(2, 3, 30)).unwrap_err().code(),
            Code::FailedPrecondition
        );
        // A neighbour heard this round is not also used stale.
        mailbox.begin_round(7, 70, &[1, 2], &[1, 2]);
        mailbox.deliver(message(2, 7, 70)).unwrap();
        mailbox.deliver(message(1, 6, 60)).unwrap();
        let collected = mailbox.collect(7, at(4), &BTreeMap::new(), None).await;
        assert_eq!(collected.messages.len(), 1);
        assert_eq!(stale(collected), [(1, 6)], "node 2 was heard fresh");
    }

    #[tokio::test(start_paused = true)]
    async fn without_staleness_a_late_message_is_refused_as_before() {
        let mailbox = Mailbox::new(4, 0);
        mailbox.begin_round(3, 30, &[1, 2], &[1, 2]);
        mailbox.deliver(message(2, 3, 30)).unwrap();
        mailbox.begin_round(4, 40, &[1, 2], &[1, 2]);
        assert_eq!(
            mailbox.deliver(message(1, 3, 30)).unwrap_err().code(),
            Code::FailedPrecondition
        );
        let collected = mailbox
            .collect(4, Instant::now() + Duration::from_secs(1), &BTreeMap::new(), None)
            .await;
        assert!(collected.stale.is_empty() && collected.messages.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_quorum_of_neighbours_ends_the_wait_after_its_grace() {
        let mailbox = std::sync::Arc::new(Mailbox::new(4, 0));
        mailbox.begin_round(0, 1, &[1, 2, 3], &[1, 2, 3]);
        mailbox.deliver(message(1, 0, 1)).unwrap();
        let started = Instant::now();
        let m = mailbox.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            m.deliver(message(2, 0, 1)).unwrap();
        });
        let quorum = Quorum {
            needed: 2,
            grace: Duration::from_millis(500),
        };
        // Two of three by 1 s, then half a second of grace; node 3 is not waited for.
        let collected = mailbox
            .collect(0, started + Duration::from_secs(60), &BTreeMap::new(), Some(quorum))
            .await;
        assert_eq!(started.elapsed(), Duration::from_millis(1500));
        assert_eq!((collected.messages.len(), collected.lost), (2, 1));
    }
}
