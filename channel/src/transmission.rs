//! Sending a message over the emulated radio, frame by frame, with retransmissions.
//!
//! A message of `B` payload bytes is cut into `ceil(B / frame_payload_bytes)` frames
//! (at least one); every transmission of a frame carries its payload plus
//! `frame_header_bytes` and occupies the air for `bits / rate`. A lost frame is sent
//! again, up to `max_retransmissions` times; a frame still lost after its last try makes
//! the message undeliverable and the sender stops there (the remaining frames would be
//! wasted airtime). A link in outage sends nothing: the rate follows the SNR, so the
//! transmitter knows there is no usable rate this round.
//!
//! The transmissions are iterators, so a shaper can pace the real stream:
//!
//! ```
//! # use wdml_channel::{Channel, Link, Position, RadioParams};
//! # let channel = Channel::new(1, RadioParams::default(),
//! #     vec![Position::new(0.0, 0.0), Position::new(30.0, 0.0)]).unwrap();
//! let time_scale = 0.01;
//! let mut transmission = channel.unicast(Link::new(0, 1), 0, 0, 2560).unwrap();
//! for attempt in &mut transmission {
//!     let wall_s = attempt.airtime_s * time_scale; // sleep this long, then …
//!     if !attempt.lost { /* … write this frame's bytes to the stream */ }
//!     if attempt.gave_up { /* … abort the message on the stream */ }
//! }
//! let outcome = transmission.outcome();
//! assert!(outcome.delivered);
//! ```

use serde::{Deserialize, Serialize};

use crate::link::LinkState;
use crate::loss::FrameLoss;
use crate::radio::RadioParams;

/// One transmission of one frame.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FrameAttempt {
    /// Index of the frame within the message, from 0.
    pub frame: u64,
    /// 0 for the first transmission of the frame, `k` for its `k`-th retransmission.
    pub attempt: u32,
    /// Payload bytes of the frame.
    pub payload_bytes: u64,
    /// Bits on air, header included.
    pub bits: u64,
    /// Time on air of this transmission, emulated seconds.
    pub airtime_s: f64,
    /// Whether this transmission was lost.
    pub lost: bool,
    /// Lost on its last allowed try: the message is lost and nothing more is sent.
    pub gave_up: bool,
}

/// What a unicast transmission cost and achieved (complete once its iterator is done).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct TransmissionOutcome {
    /// Every frame got through.
    pub delivered: bool,
    /// The link was in outage this round; nothing was sent.
    pub outage: bool,
    /// Rate used, bit/s (0 in outage).
    pub rate_bps: f64,
    /// Frames the message was cut into.
    pub frames: u64,
    /// Frames that got through.
    pub frames_delivered: u64,
    /// Transmissions on air, first tries and retransmissions.
    pub transmissions: u64,
    /// Transmissions lost.
    pub frames_lost: u64,
    /// Transmissions that were retries.
    pub retransmissions: u64,
    /// Bits on air over all transmissions.
    pub bits_on_air: u64,
    /// Time on air over all transmissions, emulated seconds.
    pub airtime_s: f64,
    /// Energy the transmitter spent, J.
    pub tx_energy_j: f64,
    /// Energy the receiver spent listening to every transmission, lost ones included, J.
    pub rx_energy_j: f64,
    /// Latency added once after the last frame of a delivered message, s (0 otherwise).
    pub latency_s: f64,
}

impl TransmissionOutcome {
    /// Emulated time from the first frame to the message's arrival: airtime plus latency.
    pub fn delivery_time_s(&self) -> f64 {
        self.airtime_s + self.latency_s
    }
}

/// A message on its way over one directed link; an iterator of [`FrameAttempt`]s.
#[derive(Debug, Clone)]
pub struct UnicastTransmission {
    params: RadioParams,
    tx_power_dbm: f64,
    payload_bytes: u64,
    link_latency_s: f64,
    loss: FrameLoss,
    next_frame: u64,
    next_attempt: u32,
    finished: bool,
    outcome: TransmissionOutcome,
}

impl UnicastTransmission {
    /// A transmission of `payload_bytes` on a link in the round `state`, losing frames by
    /// `loss`. [`crate::Channel::unicast`] builds one from the run's channel.
    pub fn new(params: &RadioParams, state: &LinkState, loss: FrameLoss, payload_bytes: u64) -> Self {
        let outage = state.outage || state.airtime_s(1).is_none();
        Self {
            params: params.clone(),
            tx_power_dbm: state.tx_power_dbm,
            payload_bytes,
            link_latency_s: state.latency_s,
            loss,
            next_frame: 0,
            next_attempt: 0,
            finished: outage,
            outcome: TransmissionOutcome {
                outage,
                rate_bps: if outage { 0.0 } else { state.rate_bps },
                frames: params.frame_count(payload_bytes),
                ..TransmissionOutcome::default()
            },
        }
    }

    /// The outcome so far; final once the iterator has returned `None`.
    pub fn outcome(&self) -> &TransmissionOutcome {
        &self.outcome
    }

    /// Whether every transmission has been made.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Makes every remaining transmission and returns the final outcome.
    pub fn run(mut self) -> TransmissionOutcome {
        self.by_ref().for_each(drop);
        self.outcome
    }
}

impl Iterator for UnicastTransmission {
    type Item = FrameAttempt;

    fn next(&mut self) -> Option<FrameAttempt> {
        if self.finished {
            return None;
        }
        let payload_bytes = self.params.frame_payload(self.payload_bytes, self.next_frame);
        let bits = self.params.frame_bits(payload_bytes);
        let airtime_s = bits as f64 / self.outcome.rate_bps;
        let lost = self.loss.lost(bits);
        let gave_up = lost && self.next_attempt >= self.params.max_retransmissions;
        let attempt = FrameAttempt {
            frame: self.next_frame,
            attempt: self.next_attempt,
            payload_bytes,
            bits,
            airtime_s,
            lost,
            gave_up,
        };

        let outcome = &mut self.outcome;
        outcome.transmissions += 1;
        outcome.retransmissions += u64::from(self.next_attempt > 0);
        outcome.frames_lost += u64::from(lost);
        outcome.bits_on_air = outcome.bits_on_air.saturating_add(bits);
        outcome.airtime_s += airtime_s;
        outcome.tx_energy_j += self.params.tx_energy_at_j(self.tx_power_dbm, airtime_s);
        outcome.rx_energy_j += self.params.rx_energy_j(airtime_s);

        if !lost {
            outcome.frames_delivered += 1;
            self.next_frame += 1;
            self.next_attempt = 0;
            if self.next_frame == outcome.frames {
                outcome.delivered = true;
                outcome.latency_s = self.link_latency_s;
                self.finished = true;
            }
        } else if gave_up {
            self.finished = true;
        } else {
            self.next_attempt += 1;
        }
        Some(attempt)
    }
}

/// What one receiver made of one broadcast transmission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reception {
    /// Got the frame with this transmission: write it to this receiver's stream.
    Received,
    /// Missed it; the frame will be sent again.
    Lost,
    /// Missed it on the last try: the message is lost for this receiver.
    GaveUp,
    /// Not involved: already has this frame, dropped out of the message, or in outage.
    Idle,
}

/// One broadcast transmission of one frame and what each receiver made of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BroadcastAttempt {
    /// Index of the frame within the message, from 0.
    pub frame: u64,
    /// 0 for the first transmission of the frame, `k` for its `k`-th retransmission.
    pub attempt: u32,
    /// Payload bytes of the frame.
    pub payload_bytes: u64,
    /// Bits on air, header included.
    pub bits: u64,
    /// Time on air of this transmission, emulated seconds.
    pub airtime_s: f64,
    /// One entry per receiver, in the order the receivers were given.
    pub receptions: Vec<Reception>,
}

/// One receiver's side of a broadcast.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReceiverOutcome {
    /// The receiving node.
    pub node: usize,
    /// The whole message arrived.
    pub delivered: bool,
    /// The receiver's link was in outage: it was left out of the broadcast.
    pub outage: bool,
    /// The receiver's SNR this round, dB.
    pub snr_db: f64,
    /// Transmissions this receiver lost.
    pub frames_lost: u64,
    /// Time this receiver spent listening, emulated seconds.
    pub listen_time_s: f64,
    /// Energy it spent listening, J.
    pub rx_energy_j: f64,
    /// Latency added after the last frame if delivered, s (0 otherwise).
    pub latency_s: f64,
}

/// What a broadcast cost and achieved (complete once its iterator is done).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BroadcastOutcome {
    /// The sender.
    pub from: usize,
    /// Rate used: the lowest rate among the receivers not in outage, bit/s.
    pub rate_bps: f64,
    /// Frames the message was cut into.
    pub frames: u64,
    /// Transmissions on air, first tries and retransmissions.
    pub transmissions: u64,
    /// Transmissions that were retries.
    pub retransmissions: u64,
    /// Bits on air over all transmissions.
    pub bits_on_air: u64,
    /// Time on air over all transmissions, emulated seconds.
    pub airtime_s: f64,
    /// Energy the sender spent, J.
    pub tx_energy_j: f64,
    /// Every receiver, in the order given.
    pub receivers: Vec<ReceiverOutcome>,
}

impl BroadcastOutcome {
    /// The receivers that got the whole message.
    pub fn delivered_to(&self) -> Vec<usize> {
        self.receivers.iter().filter(|r| r.delivered).map(|r| r.node).collect()
    }
}

/// A receiver's progress through a broadcast.
#[derive(Debug, Clone)]
struct ReceiverProgress {
    loss: FrameLoss,
    link_latency_s: f64,
    /// Still in the message: not in outage and has not missed a frame for good.
    listening: bool,
    /// Holds the frame currently being sent.
    has_current_frame: bool,
}

/// One message broadcast to several neighbours: an iterator of [`BroadcastAttempt`]s.
///
/// The model, as a radio does it: each transmission reaches every receiver at once, so
/// its airtime and the sender's energy are paid once. The rate is that of the worst
/// receiver (the lowest rate among receivers not in outage), so that every receiver can
/// decode it; receivers in outage are left out. Each receiver loses each transmission
/// independently with its own link's loss process (its own SNR and seed), because the
/// noise and fading at different receivers are independent. A frame is repeated until
/// every receiver still in the message has it (per-receiver acknowledgements, as in
/// reliable-multicast schemes such as 802.11aa's group-cast retries) or the retry limit
/// is reached; a receiver that misses a frame after the last try drops out and the
/// others carry on. Every receiver still in the message listens to every transmission,
/// since it cannot tell a retransmission it does not need from the next frame before
/// receiving it.
#[derive(Debug, Clone)]
pub struct BroadcastTransmission {
    params: RadioParams,
    tx_power_dbm: f64,
    payload_bytes: u64,
    progress: Vec<ReceiverProgress>,
    next_frame: u64,
    next_attempt: u32,
    finished: bool,
    outcome: BroadcastOutcome,
}

impl BroadcastTransmission {
    /// A broadcast of `payload_bytes` from `from` to the receivers of `links` (each the
    /// receiver's link state this round and its loss process).
    /// [`crate::Channel::broadcast`] builds one from the run's channel.
    pub fn new(params: &RadioParams, from: usize, links: Vec<(LinkState, FrameLoss)>, payload_bytes: u64) -> Self {
        // One transmission, one power: every link's state is at it.
        let tx_power_dbm = links
            .first()
            .map_or(params.tx_power_dbm, |(state, _)| state.tx_power_dbm);
        let usable = |state: &LinkState| !state.outage && state.airtime_s(1).is_some();
        let rate_bps = links
            .iter()
            .filter(|(state, _)| usable(state))
            .map(|(state, _)| state.rate_bps)
            .fold(f64::INFINITY, f64::min);
        let rate_bps = if rate_bps.is_finite() { rate_bps } else { 0.0 };
        let receivers = links
            .iter()
            .map(|(state, _)| ReceiverOutcome {
                node: state.link.to,
                delivered: false,
                outage: !usable(state),
                snr_db: state.snr_db,
                frames_lost: 0,
                listen_time_s: 0.0,
                rx_energy_j: 0.0,
                latency_s: 0.0,
            })
            .collect();
        let progress: Vec<ReceiverProgress> = links
            .into_iter()
            .map(|(state, loss)| ReceiverProgress {
                listening: usable(&state),
                link_latency_s: state.latency_s,
                loss,
                has_current_frame: false,
            })
            .collect();
        let finished = !progress.iter().any(|p| p.listening);
        Self {
            params: params.clone(),
            tx_power_dbm,
            payload_bytes,
            progress,
            next_frame: 0,
            next_attempt: 0,
            finished,
            outcome: BroadcastOutcome {
                from,
                rate_bps,
                frames: params.frame_count(payload_bytes),
                transmissions: 0,
                retransmissions: 0,
                bits_on_air: 0,
                airtime_s: 0.0,
                tx_energy_j: 0.0,
                receivers,
            },
        }
    }

    /// The outcome so far; final once the iterator has returned `None`.
    pub fn outcome(&self) -> &BroadcastOutcome {
        &self.outcome
    }

    /// Whether every transmission has been made.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Makes every remaining transmission and returns the final outcome.
    pub fn run(mut self) -> BroadcastOutcome {
        self.by_ref().for_each(drop);
        self.outcome
    }
}

impl Iterator for BroadcastTransmission {
    type Item = BroadcastAttempt;

    fn next(&mut self) -> Option<BroadcastAttempt> {
        if self.finished {
            return None;
        }
        let payload_bytes = self.params.frame_payload(self.payload_bytes, self.next_frame);
        let bits = self.params.frame_bits(payload_bytes);
        let airtime_s = bits as f64 / self.outcome.rate_bps;
        let last_try = self.next_attempt >= self.params.max_retransmissions;
        let rx_energy_j = self.params.rx_energy_j(airtime_s);

        let mut receptions = Vec::with_capacity(self.progress.len());
        for (progress, receiver) in self.progress.iter_mut().zip(&mut self.outcome.receivers) {
            if !progress.listening {
                receptions.push(Reception::Idle);
                continue;
            }
            receiver.listen_time_s += airtime_s;
            receiver.rx_energy_j += rx_energy_j;
            if progress.has_current_frame {
                receptions.push(Reception::Idle);
            } else if !progress.loss.lost(bits) {
                progress.has_current_frame = true;
                receptions.push(Reception::Received);
            } else {
                receiver.frames_lost += 1;
                if last_try {
                    progress.listening = false;
                    receptions.push(Reception::GaveUp);
                } else {
                    receptions.push(Reception::Lost);
                }
            }
        }

        let outcome = &mut self.outcome;
        outcome.transmissions += 1;
        outcome.retransmissions += u64::from(self.next_attempt > 0);
        outcome.bits_on_air = outcome.bits_on_air.saturating_add(bits);
        outcome.airtime_s += airtime_s;
        outcome.tx_energy_j += self.params.tx_energy_at_j(self.tx_power_dbm, airtime_s);
        let attempt = BroadcastAttempt {
            frame: self.next_frame,
            attempt: self.next_attempt,
            payload_bytes,
            bits,
            airtime_s,
            receptions,
        };

        let listening = || self.progress.iter().filter(|p| p.listening);
        if listening().count() == 0 {
            self.finished = true;
        } else if listening().all(|p| p.has_current_frame) {
            self.next_frame += 1;
            self.next_attempt = 0;
            for progress in self.progress.iter_mut() {
                progress.has_current_frame = false;
            }
            if self.next_frame == outcome.frames {
                self.finished = true;
                for (progress, receiver) in self.progress.iter().zip(&mut outcome.receivers) {
                    if progress.listening {
                        receiver.delivered = true;
                        receiver.latency_s = progress.link_latency_s;
                    }
                }
            }
        } else {
            self.next_attempt += 1;
        }
        Some(attempt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::Position;
    use crate::link::{Channel, Link};
    use crate::loss::LossModel;
    use crate::propagation::Fading;

    /// Nodes on a line 30 m apart, no shadowing or fading: every adjacent link is the
    /// hand-computed 30 m link.
    fn quiet_channel(loss: LossModel, max_retransmissions: u32) -> Channel {
        let params = RadioParams {
            shadowing_sigma_db: 0.0,
            fading: Fading::None,
            loss,
            max_retransmissions,
            ..RadioParams::default()
        };
        let positions = (0..4).map(|i| Position::new(30.0 * f64::from(i), 0.0)).collect();
        Channel::new(17, params, positions).unwrap()
    }

    /// 2,560 bytes on the 30 m link: 21,120 bits at 12,595,373 bit/s = 1.676806 ms,
    /// E_tx = 0.2 W × t = 0.335361 mJ, E_rx = 0.1 W × t = 0.167681 mJ, plus 1 ms latency.
    #[test]
    fn a_clean_unicast_costs_the_hand_computed_airtime_and_energy() {
        let channel = quiet_channel(LossModel::FromSnr, 3);
        let mut transmission = channel.unicast(Link::new(0, 1), 0, 0, 2560).unwrap();
        let attempts: Vec<FrameAttempt> = transmission.by_ref().collect();
        assert_eq!(attempts.len(), 2);
        assert_eq!((attempts[0].payload_bytes, attempts[0].bits), (1500, 12_320));
        assert_eq!((attempts[1].payload_bytes, attempts[1].bits), (1060, 8_800));
        assert!(attempts.iter().all(|a| !a.lost && a.attempt == 0));
        let outcome = transmission.outcome();
        assert!(outcome.delivered && !outcome.outage);
        assert_eq!(outcome.frames, 2);
        assert_eq!(outcome.transmissions, 2);
        assert_eq!(outcome.bits_on_air, 21_120);
        assert!((outcome.airtime_s - 1.676_806_2e-3).abs() < 1e-9);
        assert!((outcome.tx_energy_j - 3.353_612_4e-4).abs() < 1e-10);
        assert!((outcome.rx_energy_j - 1.676_806_2e-4).abs() < 1e-10);
        assert!((outcome.delivery_time_s() - 2.676_806_2e-3).abs() < 1e-9);
    }

    #[test]
    fn lost_frames_are_retried_then_the_message_is_given_up() {
        let channel = quiet_channel(LossModel::Bernoulli { p: 1.0 }, 3);
        let mut transmission = channel.unicast(Link::new(0, 1), 0, 0, 2560).unwrap();
        let attempts: Vec<FrameAttempt> = transmission.by_ref().collect();
        // frame 0 is sent 1 + 3 times, all lost; frame 1 is never sent
        assert_eq!(attempts.len(), 4);
        assert!(attempts.iter().all(|a| a.frame == 0 && a.lost));
        assert_eq!(
            attempts.iter().map(|a| a.gave_up).collect::<Vec<_>>(),
            [false, false, false, true]
        );
        let outcome = transmission.outcome();
        assert!(!outcome.delivered);
        assert_eq!(
            (outcome.transmissions, outcome.frames_lost, outcome.retransmissions),
            (4, 4, 3)
        );
        assert_eq!(outcome.frames_delivered, 0);
        assert!((outcome.airtime_s - 4.0 * 12_320.0 / 12_595_373.28).abs() < 1e-9);
        assert_eq!(outcome.latency_s, 0.0);
    }

    #[test]
    fn retransmissions_recover_occasional_losses() {
        let channel = quiet_channel(LossModel::Bernoulli { p: 0.3 }, 10);
        for message in 0..200 {
            let outcome = channel.unicast(Link::new(1, 2), 0, message, 15_000).unwrap().run();
            assert!(outcome.delivered, "message {message}: {outcome:?}");
            assert_eq!(outcome.frames, 10);
            assert_eq!(outcome.transmissions, 10 + outcome.retransmissions);
            assert_eq!(outcome.frames_lost, outcome.retransmissions);
        }
    }

    #[test]
    fn unicast_in_outage_sends_nothing() {
        let params = RadioParams {
            shadowing_sigma_db: 0.0,
            fading: Fading::None,
            ..RadioParams::default()
        };
        let channel = Channel::new(0, params, vec![Position::new(0.0, 0.0), Position::new(500.0, 0.0)]).unwrap();
        let mut transmission = channel.unicast(Link::new(0, 1), 0, 0, 2560).unwrap();
        assert!(transmission.is_finished());
        assert_eq!(transmission.next(), None);
        let outcome = transmission.outcome();
        assert!(outcome.outage && !outcome.delivered);
        assert_eq!(
            (outcome.transmissions, outcome.airtime_s, outcome.tx_energy_j),
            (0, 0.0, 0.0)
        );
    }

    #[test]
    fn unicast_is_reproducible_and_messages_draw_independently() {
        let channel = quiet_channel(LossModel::Bernoulli { p: 0.5 }, 3);
        let trace = |message| {
            channel
                .unicast(Link::new(0, 1), 4, message, 30_000)
                .unwrap()
                .map(|a| a.lost)
                .collect::<Vec<_>>()
        };
        assert_eq!(trace(0), trace(0));
        assert_ne!(trace(0), trace(1));
    }

    /// Receivers 1 and 2 are 30 m and 60 m from node 0; the broadcast goes at the 60 m
    /// link's rate: SNR = −23 − 40·log10(0.06) = 25.874 dB,
    /// R = 1e6·log2(1 + 386.72) = 8.5989 Mbit/s.
    #[test]
    fn broadcast_goes_at_the_worst_rate_and_pays_airtime_once() {
        let channel = quiet_channel(LossModel::None, 3);
        let outcome = channel.broadcast(0, &[1, 2], 0, 0, 2560).unwrap().run();
        let slow = channel.link_state(Link::new(0, 2), 0).unwrap();
        assert!((slow.snr_db - 25.873_950_0).abs() < 1e-6, "{}", slow.snr_db);
        assert!((outcome.rate_bps - 8_598_865.93).abs() < 0.1, "{}", outcome.rate_bps);
        assert_eq!(outcome.rate_bps, slow.rate_bps);
        assert_eq!(outcome.transmissions, 2);
        assert!((outcome.airtime_s - 21_120.0 / outcome.rate_bps).abs() < 1e-12);
        assert!((outcome.tx_energy_j - 0.2 * outcome.airtime_s).abs() < 1e-15);
        assert_eq!(outcome.delivered_to(), [1, 2]);
        for receiver in &outcome.receivers {
            assert!((receiver.rx_energy_j - 0.1 * outcome.airtime_s).abs() < 1e-15);
        }
    }

    #[test]
    fn broadcast_losses_are_per_receiver_and_laggards_drop_out() {
        let channel = quiet_channel(LossModel::Bernoulli { p: 0.4 }, 1);
        let (mut delivered, mut mixed) = ([0_u32; 3], 0_u32);
        for message in 0..300 {
            let mut transmission = channel.broadcast(0, &[1, 2, 3], 0, message, 4000).unwrap();
            for attempt in transmission.by_ref() {
                assert_eq!(attempt.receptions.len(), 3);
            }
            let outcome = transmission.outcome();
            for (slot, receiver) in outcome.receivers.iter().enumerate() {
                delivered[slot] += u32::from(receiver.delivered);
                assert!(receiver.listen_time_s <= outcome.airtime_s + 1e-15);
            }
            assert!(outcome.transmissions <= outcome.frames * 2);
            let first = outcome.receivers[0].delivered;
            mixed += u32::from(outcome.receivers.iter().any(|r| r.delivered != first));
        }
        // per frame success 1 − 0.4² = 0.84, three frames: 0.593 per receiver
        for count in delivered {
            let rate = f64::from(count) / 300.0;
            assert!((rate - 0.5927).abs() < 0.1, "{delivered:?}");
        }
        // Independent receivers disagree in 1 − 0.593³ − 0.407³ = 72 % of the messages.
        assert!(mixed > 180, "{mixed}");
    }

    #[test]
    fn broadcast_leaves_out_receivers_in_outage() {
        let params = RadioParams {
            shadowing_sigma_db: 0.0,
            fading: Fading::None,
            ..RadioParams::default()
        };
        let channel = Channel::new(
            0,
            params,
            vec![
                Position::new(0.0, 0.0),
                Position::new(30.0, 0.0),
                Position::new(500.0, 0.0),
            ],
        )
        .unwrap();
        let near = channel.link_state(Link::new(0, 1), 0).unwrap();
        let outcome = channel.broadcast(0, &[2, 1], 0, 0, 100).unwrap().run();
        assert_eq!(outcome.rate_bps, near.rate_bps);
        assert!(outcome.receivers[0].outage && !outcome.receivers[0].delivered);
        assert_eq!(outcome.receivers[0].rx_energy_j, 0.0);
        assert_eq!(outcome.delivered_to(), [1]);
        let nobody = channel.broadcast(0, &[2], 0, 0, 100).unwrap().run();
        assert_eq!((nobody.transmissions, nobody.rate_bps), (0, 0.0));
        let empty = channel.broadcast(0, &[], 0, 0, 100).unwrap().run();
        assert_eq!(empty.transmissions, 0);
    }
}
