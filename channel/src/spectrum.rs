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
//!
//! # Over the air (`mode = "over_the_air"`)
//!
//! Distillation needs only the *mean* of the neighbours' soft predictions, and a radio
//! channel adds signals that arrive at once (over-the-air computation: Zhu, Wang &
//! Huang 2019 for federated learning; Ahn, Simeone & Kang 2019 for federated
//! distillation). So each receiver gets one slot ([`AirSlot`]), the receivers taking
//! turns in id order (a node cannot transmit and receive at once), and in it every
//! neighbour transmits its softened prediction matrix at the same time, one analog
//! symbol per value (`values / bandwidth_hz` seconds).
//!
//! - Truncated channel inversion: sender k scales its signal by `√ρ / h_k` so that every
//!   sender arrives at the same power ρ; its transmit power `ρ / g_k` must stay within
//!   its maximum `P`, so a sender whose full-power SNR `P·g_k/σ²` is below the
//!   threshold (`air_min_snr_db`), or in outage, stays silent in that slot. The
//!   receiver picks the largest ρ every aligned sender can reach: that of the weakest,
//!   so the effective SNR of each sender's values is `γ = min_k P·g_k/σ²` over the
//!   aligned senders, and the weakest transmits at full power.
//! - The receiver gets `y = √ρ·Σ_k x_k + n`, `n ~ N(0, σ²)` per value, and divides by
//!   `K·√ρ` (K, the number of aligned senders, it learns from each one's short control
//!   message, sent digitally before the analog part): the estimate of the mean is the
//!   true mean plus Gaussian noise of standard deviation `1 / (K·√γ)`. (The full
//!   complex noise power lands on the real value: conservative by a factor 2.)
//! - Costs: a slot lasts the aligned senders' control messages plus the analog part; an
//!   aligned sender spends `(ρ/g_k + P_circuit)·analog + (P + P_circuit)·control`, the
//!   receiver `P_rx` for the whole slot.

use rand_distr::{Distribution, StandardNormal};

use crate::config::Mode;
use crate::error::Result;
use crate::link::{Channel, Link};
use crate::policy::BandOrder;
use crate::rng::{SplitMix64, Stream};

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

/// Payload bytes of an aligned sender's control message before an over-the-air slot
/// (it says "I take part"; the receiver counts them).
pub const AIR_CONTROL_BYTES: u64 = 2;

/// A sender aligned in an over-the-air slot.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Aligned {
    pub node: usize,
    /// Its SNR at full power this round, linear.
    pub snr_linear: f64,
    /// Its control message's air time, s.
    pub control_s: f64,
    /// The link's latency this round, s.
    pub latency_s: f64,
}

/// One receiver's over-the-air slot in a round.
#[derive(Clone, Debug, PartialEq)]
pub struct AirSlot {
    pub receiver: usize,
    /// The senders above the truncation threshold, in id order (the others stay silent).
    pub aligned: Vec<Aligned>,
    /// The analog part: one symbol per value at the band's symbol rate, s (0 when no
    /// sender is aligned: there is no slot).
    pub analog_s: f64,
    /// The effective SNR of each aligned sender's values at the receiver, linear: the
    /// weakest aligned sender's full-power SNR.
    pub snr_linear: f64,
    /// Transmit power at full power, W (to price the inversion).
    tx_power_w: f64,
    circuit_power_w: f64,
    rx_power_w: f64,
}

impl AirSlot {
    /// How long the slot occupies the band: the control messages, then the analog part.
    pub fn span_s(&self) -> f64 {
        self.aligned.iter().map(|a| a.control_s).sum::<f64>() + self.analog_s
    }

    /// The aligned sender `node`, if it is.
    pub fn aligned(&self, node: usize) -> Option<&Aligned> {
        self.aligned.iter().find(|a| a.node == node)
    }

    /// What taking part costs sender `node`: (air time, transmit energy); `None` if it
    /// stays silent.
    pub fn sender_cost(&self, node: usize) -> Option<(f64, f64)> {
        let a = self.aligned(node)?;
        // Inversion to the weakest aligned sender's received power.
        let power = self.tx_power_w * self.snr_linear / a.snr_linear;
        let energy =
            (power + self.circuit_power_w) * self.analog_s + (self.tx_power_w + self.circuit_power_w) * a.control_s;
        Some((self.analog_s + a.control_s, energy))
    }

    /// What listening to the whole slot costs the receiver, J.
    pub fn receiver_energy_j(&self) -> f64 {
        self.rx_power_w * self.span_s()
    }

    /// The standard deviation of the noise on the received mean when `heard` of the
    /// aligned senders' values are summed: `1 / (heard·√γ)`.
    pub fn noise_std(&self, heard: usize) -> f64 {
        if heard == 0 || !self.snr_linear.is_finite() {
            return 0.0;
        }
        1.0 / (heard as f64 * self.snr_linear.sqrt())
    }
}

/// Receiver `receiver`'s over-the-air slot in `round`, for a message of `values`
/// analog values from each of `senders` (its neighbours).
pub fn air_slot(
    channel: &Channel,
    round: u64,
    receiver: usize,
    senders: &[usize],
    values: u64,
    min_snr_db: f64,
) -> Result<AirSlot> {
    let params = channel.params();
    let control_bits = params.frame_bits(AIR_CONTROL_BYTES);
    let mut sorted = senders.to_vec();
    sorted.sort_unstable();
    let mut aligned = Vec::new();
    for sender in sorted {
        let state = channel.link_state(Link::new(sender, receiver), round)?;
        if state.outage || state.snr_db < min_snr_db {
            continue;
        }
        let Some(control_s) = state.airtime_s(control_bits) else {
            continue;
        };
        aligned.push(Aligned {
            node: sender,
            snr_linear: state.snr_linear(),
            control_s,
            latency_s: state.latency_s,
        });
    }
    let snr_linear = aligned.iter().map(|a| a.snr_linear).fold(f64::INFINITY, f64::min);
    let analog_s = if aligned.is_empty() {
        0.0
    } else {
        values as f64 / params.bandwidth_hz
    };
    Ok(AirSlot {
        receiver,
        aligned,
        analog_s,
        snr_linear,
        tx_power_w: params.tx_power_w(),
        circuit_power_w: params.circuit_power_w,
        rx_power_w: params.rx_power_w,
    })
}

/// The receivers' over-the-air slots of `round` on the one band: in ascending id order,
/// each starting when the one before it has finished. `receivers`: each receiver and
/// its neighbours (the senders of its slot); `values` per message.
pub fn over_the_air(
    channel: &Channel,
    round: u64,
    receivers: &[(usize, Vec<usize>)],
    values: u64,
    min_snr_db: f64,
) -> Result<BandPlan> {
    let mut order: Vec<&(usize, Vec<usize>)> = receivers.iter().collect();
    order.sort_by_key(|(node, _)| *node);
    let mut plan = BandPlan::default();
    for (receiver, senders) in order {
        let span = air_slot(channel, round, *receiver, senders, values, min_snr_db)?.span_s();
        plan.turns.push(Turn {
            node: *receiver,
            start_s: plan.span_s,
            airtime_s: span,
        });
        plan.span_s += span;
    }
    Ok(plan)
}

/// Adds the receiver noise of `slot` to `mean` (the mean of the `heard` aligned
/// senders' values, row-major), drawn from the run seed, the receiver and the round:
/// the same noise wherever it is computed.
pub fn add_air_noise(mean: &mut [f32], slot: &AirSlot, heard: usize, run_seed: u64, round: u64) {
    let std = slot.noise_std(heard);
    if std == 0.0 {
        return;
    }
    let mut rng = SplitMix64::for_stream(run_seed, Stream::AirNoise, &[slot.receiver as u64, round]);
    for value in mean.iter_mut() {
        let noise: f64 = StandardNormal.sample(&mut rng);
        *value += (std * noise) as f32;
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
        // Analog slots are planned per receiver (`over_the_air`), not per sender.
        Mode::OverTheAir => Ok(0.0),
    }
}

/// The turns of `senders` on one shared band in `round`, in `order` (ascending node id,
/// or shortest air time first), each starting when the one before it has finished.
pub fn tdma(
    channel: &Channel,
    mode: Mode,
    order: BandOrder,
    round: u64,
    message: u64,
    senders: &[Sender],
) -> Result<BandPlan> {
    let mut turns = Vec::with_capacity(senders.len());
    for sender in senders {
        turns.push((airtime_s(channel, mode, round, message, sender)?, sender.node));
    }
    match order {
        BandOrder::Id => turns.sort_by_key(|&(_, node)| node),
        BandOrder::ShortestFirst => turns.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1))),
    }
    let mut plan = BandPlan::default();
    for (airtime_s, node) in turns {
        plan.turns.push(Turn {
            node,
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
        let plan = tdma(&channel, Mode::Unicast, BandOrder::Id, 3, 0, &mesh(5, 2560)).unwrap();
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
        let unicast = tdma(&channel, Mode::Unicast, BandOrder::Id, 0, 0, &mesh(5, 1280)).unwrap();
        let broadcast = tdma(&channel, Mode::Broadcast, BandOrder::Id, 0, 0, &mesh(5, 1280)).unwrap();
        // Four neighbours each: at most four times shorter (the broadcast goes at its
        // worst neighbour's rate, so somewhat less).
        assert!(broadcast.span_s < unicast.span_s, "{broadcast:?} {unicast:?}");
        assert!(broadcast.span_s * 4.0 >= unicast.span_s * (1.0 - 1e-12));
    }

    #[test]
    fn over_the_air_slots_follow_each_other_and_truncate_weak_senders() {
        let channel = channel(6);
        let receivers: Vec<(usize, Vec<usize>)> = (0..6).map(|i| (i, (0..6).filter(|&j| j != i).collect())).collect();
        let strict = over_the_air(&channel, 2, &receivers, 640, 25.0).unwrap();
        let lax = over_the_air(&channel, 2, &receivers, 640, -50.0).unwrap();
        let mut clock = 0.0;
        for (turn, (receiver, senders)) in lax.turns.iter().zip(&receivers) {
            assert_eq!((turn.node, turn.start_s), (*receiver, clock));
            let slot = air_slot(&channel, 2, *receiver, senders, 640, -50.0).unwrap();
            // No threshold: every sender not in outage takes part, the weakest at full
            // power, and the analog part is 640 symbols at 1 MHz.
            let outage: Vec<usize> = senders
                .iter()
                .copied()
                .filter(|&k| channel.link_state(Link::new(k, *receiver), 2).unwrap().outage)
                .collect();
            assert_eq!(slot.aligned.len() + outage.len(), 5);
            assert!((slot.analog_s - 640e-6).abs() < 1e-15);
            let weakest = slot.aligned.iter().map(|a| a.snr_linear).fold(f64::INFINITY, f64::min);
            assert_eq!(slot.snr_linear, weakest);
            assert_eq!(turn.airtime_s, slot.span_s());
            clock += turn.airtime_s;
        }
        assert_eq!(lax.span_s, clock);
        // A threshold leaves the weak senders out, on every slot.
        for (receiver, senders) in &receivers {
            let slot = air_slot(&channel, 2, *receiver, senders, 640, 25.0).unwrap();
            for &k in senders {
                let snr = channel.link_state(Link::new(k, *receiver), 2).unwrap().snr_db;
                assert_eq!(slot.aligned(k).is_some(), snr >= 25.0, "{k} -> {receiver}: {snr} dB");
                // A silent sender spends nothing.
                assert_eq!(slot.sender_cost(k).is_some(), snr >= 25.0);
            }
        }
        assert!(strict.span_s < lax.span_s);
    }

    #[test]
    fn the_noise_on_the_received_mean_has_the_models_variance() {
        let channel = channel(4);
        let slot = air_slot(&channel, 0, 0, &[1, 2, 3], 100_000, -50.0).unwrap();
        let heard = slot.aligned.len();
        assert!(heard > 0);
        let std = slot.noise_std(heard);
        assert_eq!(std, 1.0 / (heard as f64 * slot.snr_linear.sqrt()));
        let mut mean = vec![0.25f32; 100_000];
        add_air_noise(&mut mean, &slot, heard, 7, 0);
        let errors: Vec<f64> = mean.iter().map(|&v| f64::from(v) - 0.25).collect();
        let n = errors.len() as f64;
        let bias = errors.iter().sum::<f64>() / n;
        let variance = errors.iter().map(|e| (e - bias) * (e - bias)).sum::<f64>() / (n - 1.0);
        // 100,000 draws: the sample variance is within 2 % of σ² (about 4.5 standard
        // errors), and the mean within 5 standard errors of 0.
        assert!(
            (variance / (std * std) - 1.0).abs() < 0.02,
            "{variance} vs {}",
            std * std
        );
        assert!(bias.abs() < 5.0 * std / n.sqrt(), "{bias}");
        // The same draw wherever it is made; none without noise.
        let mut again = vec![0.25f32; 100_000];
        add_air_noise(&mut again, &slot, heard, 7, 0);
        assert_eq!(mean, again);
        let mut quiet = vec![0.25f32; 10];
        add_air_noise(&mut quiet, &slot, 0, 7, 0);
        assert_eq!(quiet, vec![0.25f32; 10]);
    }

    #[test]
    fn a_sender_without_receivers_has_an_empty_turn() {
        let plan = tdma(
            &channel(3),
            Mode::Unicast,
            BandOrder::Id,
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

    #[test]
    fn shortest_first_keeps_the_band_busy_for_the_same_sum_and_finishes_senders_earlier_on_average() {
        let channel = channel(6);
        // Different message sizes, so the air times differ by more than the channel.
        let senders: Vec<Sender> = (0..6)
            .map(|node| Sender {
                node,
                receivers: (0..6).filter(|&j| j != node).collect(),
                bytes: 1000 * (6 - node as u64),
            })
            .collect();
        let by_id = tdma(&channel, Mode::Unicast, BandOrder::Id, 4, 0, &senders).unwrap();
        let shortest = tdma(&channel, Mode::Unicast, BandOrder::ShortestFirst, 4, 0, &senders).unwrap();
        assert!(shortest.turns.windows(2).all(|w| w[0].airtime_s <= w[1].airtime_s));
        let mut clock = 0.0;
        for turn in &shortest.turns {
            assert_eq!(turn.start_s, clock);
            assert_eq!(turn.airtime_s, by_id.turn(turn.node).unwrap().airtime_s);
            clock += turn.airtime_s;
        }
        // The same turns, so the same sum up to the order of the additions.
        assert!((shortest.span_s - by_id.span_s).abs() < 1e-12 * by_id.span_s);
        let mean_end = |plan: &BandPlan| plan.turns.iter().map(|t| t.start_s + t.airtime_s).sum::<f64>() / 6.0;
        assert!(mean_end(&shortest) < mean_end(&by_id));
    }
}
