//! Who transmits when on a shared band (`channel.access = "shared"`).
//!
//! With one band for the whole network, two transmissions at once would collide, so
//! the nodes take turns, TDMA-style, in a fixed order: ascending node id, each sender
//! transmitting its whole round's message (to each neighbour in turn under unicast,
//! once to all of them under broadcast, retransmissions included) in one turn. The
//! exchange phase therefore lasts the sum of every sender's air time, and broadcast's
//! saving (one transmission instead of one per neighbour) shortens the phase for
//! everyone, not just the sender.
//!
//! The plan is a pure function of the channel, the round and what each sender sends:
//! the coordinator computes it and gives each node its own turn and its neighbours'
//! ([`BandPlan`]), and every air time in it is the one the sender's shaper computes for
//! the same transmission.

use crate::config::Mode;
use crate::error::Result;
use crate::link::{Channel, Link};

/// Which message of a round a node's round message is, for the channel's loss draws
/// (one a round; the sender's shaper and this plan draw the same).
pub const ROUND_MESSAGE: u64 = 0;

/// One sender of a round: its receivers (its neighbours, in the order it serves them)
/// and its message's payload bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct Sender {
    pub node: usize,
    pub receivers: Vec<usize>,
    pub bytes: u64,
}

/// A round's turns on the shared band.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BandPlan {
    /// Per sender, in turn order: its node, when its turn starts and how long it
    /// transmits (emulated seconds from the start of the exchange phase).
    pub turns: Vec<Turn>,
    /// When the band is free again: the sum of every turn.
    pub span_s: f64,
}

/// One sender's turn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Turn {
    pub node: usize,
    pub start_s: f64,
    pub airtime_s: f64,
}

impl BandPlan {
    /// The turn of `node`, if it sends this round.
    pub fn turn(&self, node: usize) -> Option<&Turn> {
        self.turns.iter().find(|t| t.node == node)
    }
}

/// The air time of `sender`'s message in `round` (message index `message`), as its own
/// radio spends it under `mode`: every transmission and retransmission.
pub fn airtime_s(channel: &Channel, mode: Mode, round: u64, message: u64, sender: &Sender) -> Result<f64> {
    if sender.receivers.is_empty() {
        return Ok(0.0);
    }
    match mode {
        Mode::Unicast => sender.receivers.iter().try_fold(0.0, |total, &to| {
            let outcome = channel
                .unicast(Link::new(sender.node, to), round, message, sender.bytes)?
                .run();
            Ok(total + outcome.airtime_s)
        }),
        Mode::Broadcast => Ok(channel
            .broadcast(sender.node, &sender.receivers, round, message, sender.bytes)?
            .run()
            .airtime_s),
    }
}

/// The turns of `senders` on one shared band in `round`: ascending node id, each
/// starting when the one before it has finished.
pub fn tdma(channel: &Channel, mode: Mode, round: u64, message: u64, senders: &[Sender]) -> Result<BandPlan> {
    let mut order: Vec<&Sender> = senders.iter().collect();
    order.sort_by_key(|s| s.node);
    let mut plan = BandPlan::default();
    for sender in order {
        let airtime_s = airtime_s(channel, mode, round, message, sender)?;
        plan.turns.push(Turn {
            node: sender.node,
            start_s: plan.span_s,
            airtime_s,
        });
        plan.span_s += airtime_s;
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ChannelConfig, LossModel, Preset};

    fn channel(nodes: usize) -> Channel {
        let config = ChannelConfig {
            loss: Some(LossModel::None),
            ..ChannelConfig::from_preset(Preset::D2dUrban)
        };
        config.resolve().unwrap().channel(7, nodes).unwrap()
    }

    fn mesh(nodes: usize, bytes: u64) -> Vec<Sender> {
        // Given out of order: the plan orders them.
        (0..nodes)
            .rev()
            .map(|node| Sender {
                node,
                receivers: (0..nodes).filter(|&j| j != node).collect(),
                bytes,
            })
            .collect()
    }

    #[test]
    fn turns_follow_each_other_in_id_order_and_the_band_is_busy_for_their_sum() {
        let channel = channel(5);
        let plan = tdma(&channel, Mode::Unicast, 3, 0, &mesh(5, 2560)).unwrap();
        assert_eq!(plan.turns.iter().map(|t| t.node).collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
        let mut clock = 0.0;
        for turn in &plan.turns {
            assert_eq!(turn.start_s, clock, "node {}", turn.node);
            assert!(turn.airtime_s > 0.0);
            clock += turn.airtime_s;
        }
        assert_eq!(plan.span_s, clock);
        // Each turn is exactly the sender's own air time for its transmissions.
        let own: f64 = [0, 1, 3, 4]
            .into_iter()
            .map(|to| channel.unicast(Link::new(2, to), 3, 0, 2560).unwrap().run().airtime_s)
            .sum();
        assert_eq!(plan.turn(2).unwrap().airtime_s, own);
    }

    #[test]
    fn broadcast_needs_one_transmission_per_sender_instead_of_one_per_link() {
        let channel = channel(5);
        let unicast = tdma(&channel, Mode::Unicast, 0, 0, &mesh(5, 1280)).unwrap();
        let broadcast = tdma(&channel, Mode::Broadcast, 0, 0, &mesh(5, 1280)).unwrap();
        // Four neighbours each: at most four times shorter (the broadcast goes at its
        // worst neighbour's rate, so somewhat less).
        assert!(broadcast.span_s < unicast.span_s, "{broadcast:?} {unicast:?}");
        assert!(broadcast.span_s * 4.0 >= unicast.span_s * (1.0 - 1e-12));
    }

    #[test]
    fn a_sender_without_receivers_has_an_empty_turn() {
        let plan = tdma(
            &channel(3),
            Mode::Unicast,
            0,
            0,
            &[Sender {
                node: 1,
                receivers: vec![],
                bytes: 100,
            }],
        )
        .unwrap();
        assert_eq!(plan.span_s, 0.0);
    }
}
