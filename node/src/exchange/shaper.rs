//! The radio applied to the real streams. The channel model (`wdml-channel`, pure and
//! seeded) says, for a message of some bytes in some round, which frame transmissions
//! happen, how long each occupies the air, which are lost and retransmitted, and what
//! it all costs. The shaper turns that into a *schedule*: at which emulated instant
//! each receiver gets each frame. The exchange then writes each frame to that
//! receiver's gRPC stream when the schedule says (emulated time × `time_scale`), so
//! the real bytes arrive at the emulated rate; lost frames are never written.
//!
//! A node's one radio sends one thing at a time: unicast transmissions to several
//! neighbours follow each other; a broadcast is one transmission heard by all, at the
//! rate of the worst neighbour.
//!
//! On a shared band (`channel.access = "shared"`) a node's transmissions wait for its
//! turn (`wait_s`, from the coordinator's plan): the schedule starts that much later,
//! and a receiver expects each neighbour's message that much later.
//!
//! A receiver evaluates the same pure model for the links into it, so it knows which
//! neighbours' messages can arrive this round (it does not wait for a message the
//! radio lost, as a MAC timeout would not) and what listening cost it.

use wdml_channel::spectrum::{self, AirSlot};
use wdml_channel::{Channel, Link, Mode, Reception, ResolvedChannel, Shaping};

use crate::{Error, Result};

/// Which message of a round this is, for the channel's loss draws (one a round).
const MESSAGE: u64 = wdml_channel::spectrum::ROUND_MESSAGE;

/// One frame reaching one receiver.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Delivery {
    /// Emulated seconds after the start of the node's transmissions.
    pub at_s: f64,
    /// Index into the receivers the transmission was planned for.
    pub receiver: usize,
    /// Index of the frame in the message.
    pub frame: usize,
}

/// What sending cost the sender, for the round's metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SendCost {
    /// Transmissions of frames, retransmissions included.
    pub transmissions: u32,
    pub frames_lost: u32,
    pub retransmissions: u32,
    pub airtime_s: f64,
    pub tx_energy_j: f64,
}

/// A message's schedule to a set of receivers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Schedule {
    /// In time order.
    pub deliveries: Vec<Delivery>,
    /// Per receiver: whether every frame gets through.
    pub delivered: Vec<bool>,
    pub cost: SendCost,
}

/// A neighbour this node sends to over the air: its slot (which its own neighbours
/// share) starts `wait_s` emulated seconds after this node's message is ready.
#[derive(Clone, Debug, PartialEq)]
pub struct AirReceiver {
    pub id: u32,
    pub wait_s: f64,
    pub slot: AirSlot,
}

/// What listening to one neighbour's message costs and yields.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Listening {
    pub delivered: bool,
    pub rx_energy_j: f64,
    /// Emulated seconds from the start of the sender's transmissions until its message
    /// has reached this node (its transmissions to earlier receivers included).
    pub arrival_s: f64,
}

/// The channel as one node sees it.
pub struct Shaper {
    resolved: ResolvedChannel,
    channel: Channel,
    /// Every node's radio neighbours on `channel`, by the run's topology: the lists the
    /// coordinator computes too, so a round's start need not carry them.
    adjacency: Vec<Vec<u32>>,
    me: u32,
}

impl Shaper {
    /// The run's channel, from the settings every node shares.
    pub fn new(resolved: ResolvedChannel, run_seed: u64, nodes: u32, me: u32) -> Result<Self> {
        let channel = resolved.channel(run_seed, nodes as usize).map_err(channel_error)?;
        let adjacency = adjacency(&resolved, &channel)?;
        Ok(Shaper {
            resolved,
            channel,
            adjacency,
            me,
        })
    }

    /// `node`'s radio neighbours where the devices are now, in ascending order (empty
    /// for an id outside the run).
    pub fn radio_neighbours(&self, node: u32) -> &[u32] {
        self.adjacency.get(node as usize).map_or(&[], Vec::as_slice)
    }

    /// Whether `channel.selection` narrows a round's neighbours down from the live
    /// radio neighbours (then every node's choice depends on who is live anywhere).
    pub fn selects(&self) -> bool {
        !self.resolved.selection.is_all()
    }

    /// The round's neighbours of every node by `channel.selection`, among the radio
    /// neighbours of those `is_live` says take part (the coordinator computes the same:
    /// [`wdml_channel::Selection::choose`]).
    pub fn select(&self, round: u32, is_live: impl Fn(u32) -> bool) -> Result<Vec<Vec<u32>>> {
        self.resolved
            .selection
            .choose(&self.channel, u64::from(round), &self.adjacency, is_live)
            .map_err(channel_error)
    }

    /// Moves the devices to where they are at emulated time `t` (the round's start, from
    /// the coordinator): positions, path loss and shadowing follow. Nothing to do when
    /// they do not move.
    pub fn move_to(&mut self, t: f64) -> Result<()> {
        if self.resolved.mobility.is_static() {
            return Ok(());
        }
        if !(t.is_finite() && t >= 0.0) {
            return Err(crate::Error::config(
                "StartRound.emulated_start_s",
                format!("{t} is not an emulated time"),
            ));
        }
        let nodes = self.channel.nodes();
        self.channel = self
            .resolved
            .channel_at(self.channel.run_seed(), nodes, t)
            .map_err(channel_error)?;
        self.adjacency = adjacency(&self.resolved, &self.channel)?;
        Ok(())
    }

    pub fn shaping(&self) -> Shaping {
        self.resolved.shaping
    }

    /// Wall seconds per emulated second.
    pub fn time_scale(&self) -> f64 {
        self.resolved.time_scale
    }

    /// The wall time of `emulated_s` emulated seconds (`None`: no clock holds it).
    pub fn wall(&self, emulated_s: f64) -> Option<std::time::Duration> {
        self.resolved.wall(emulated_s)
    }

    /// Payload bytes per frame.
    pub fn frame_bytes(&self) -> usize {
        self.resolved.radio.frame_payload_bytes as usize
    }

    /// Plans sending `bytes` (cut into `frames` frames) to `receivers` in `round`, the
    /// first transmission `wait_s` emulated seconds from now (a shared band's turn).
    pub fn schedule(&self, round: u32, receivers: &[u32], bytes: u64, frames: usize, wait_s: f64) -> Result<Schedule> {
        if self.shaping() != Shaping::Emulate {
            // Unshaped: everything at once, nothing lost, no radio cost.
            let deliveries = (0..receivers.len())
                .flat_map(|receiver| {
                    (0..frames).map(move |frame| Delivery {
                        at_s: 0.0,
                        receiver,
                        frame,
                    })
                })
                .collect();
            return Ok(Schedule {
                deliveries,
                delivered: vec![true; receivers.len()],
                cost: SendCost::default(),
            });
        }
        let round = u64::from(round);
        let mut schedule = Schedule::default();
        let mut clock = wait_s;
        match self.resolved.mode {
            Mode::Unicast => {
                for (receiver, &to) in receivers.iter().enumerate() {
                    let link = Link::new(self.me as usize, to as usize);
                    let mut transmission = self
                        .channel
                        .unicast(link, round, MESSAGE, bytes)
                        .map_err(channel_error)?;
                    for attempt in &mut transmission {
                        clock += attempt.airtime_s;
                        if !attempt.lost {
                            schedule.deliveries.push(Delivery {
                                at_s: clock,
                                receiver,
                                frame: attempt.frame as usize,
                            });
                        }
                    }
                    let outcome = transmission.outcome();
                    // Frames reach the receiver a link latency after they leave the air
                    // (the radio itself is free again at once).
                    for delivery in schedule.deliveries.iter_mut().filter(|d| d.receiver == receiver) {
                        delivery.at_s += outcome.latency_s;
                    }
                    schedule.delivered.push(outcome.delivered);
                    let cost = &mut schedule.cost;
                    cost.transmissions += outcome.transmissions as u32;
                    cost.frames_lost += outcome.frames_lost as u32;
                    cost.retransmissions += outcome.retransmissions as u32;
                    cost.airtime_s += outcome.airtime_s;
                    cost.tx_energy_j += outcome.tx_energy_j;
                }
            }
            Mode::Broadcast => {
                let ids: Vec<usize> = receivers.iter().map(|&r| r as usize).collect();
                let mut transmission = self
                    .channel
                    .broadcast(self.me as usize, &ids, round, MESSAGE, bytes)
                    .map_err(channel_error)?;
                for attempt in &mut transmission {
                    clock += attempt.airtime_s;
                    for (receiver, reception) in attempt.receptions.iter().enumerate() {
                        if *reception == Reception::Received {
                            schedule.deliveries.push(Delivery {
                                at_s: clock,
                                receiver,
                                frame: attempt.frame as usize,
                            });
                        }
                    }
                }
                let outcome = transmission.outcome();
                for delivery in &mut schedule.deliveries {
                    delivery.at_s += outcome.receivers[delivery.receiver].latency_s;
                }
                schedule.delivered = outcome.receivers.iter().map(|r| r.delivered).collect();
                schedule.cost = SendCost {
                    transmissions: outcome.transmissions as u32,
                    frames_lost: outcome.receivers.iter().map(|r| r.frames_lost as u32).sum(),
                    retransmissions: outcome.retransmissions as u32,
                    airtime_s: outcome.airtime_s,
                    tx_energy_j: outcome.tx_energy_j,
                };
            }
            Mode::OverTheAir => return Err(over_the_air_elsewhere()),
        }
        // Latencies differ per receiver: keep the schedule in time order.
        schedule.deliveries.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
        Ok(schedule)
    }

    /// Whether `sender`'s message of `bytes` reaches this node in `round`, and what
    /// listening to it costs. `sender_receivers` are the sender's neighbours (they set
    /// a broadcast's rate); the sender transmits `sender_wait_s` after it is ready (its
    /// turn on a shared band).
    pub fn listen(
        &self,
        round: u32,
        sender: u32,
        sender_receivers: &[u32],
        bytes: u64,
        sender_wait_s: f64,
    ) -> Result<Listening> {
        if self.shaping() != Shaping::Emulate {
            return Ok(Listening {
                delivered: true,
                rx_energy_j: 0.0,
                arrival_s: 0.0,
            });
        }
        let round = u64::from(round);
        match self.resolved.mode {
            Mode::Unicast => {
                // The sender's one radio serves its receivers in order: our message
                // leaves after those to the receivers before us.
                let mut before = 0.0;
                for &other in sender_receivers.iter().take_while(|&&r| r != self.me) {
                    let link = Link::new(sender as usize, other as usize);
                    before += self
                        .channel
                        .unicast(link, round, MESSAGE, bytes)
                        .map_err(channel_error)?
                        .run()
                        .airtime_s;
                }
                let link = Link::new(sender as usize, self.me as usize);
                let outcome = self
                    .channel
                    .unicast(link, round, MESSAGE, bytes)
                    .map_err(channel_error)?
                    .run();
                Ok(Listening {
                    delivered: outcome.delivered,
                    rx_energy_j: outcome.rx_energy_j,
                    arrival_s: sender_wait_s + before + outcome.airtime_s + outcome.latency_s,
                })
            }
            Mode::Broadcast => {
                let ids: Vec<usize> = sender_receivers.iter().map(|&r| r as usize).collect();
                let outcome = self
                    .channel
                    .broadcast(sender as usize, &ids, round, MESSAGE, bytes)
                    .map_err(channel_error)?
                    .run();
                let me = outcome.receivers.iter().find(|r| r.node == self.me as usize);
                Ok(me.map_or(
                    Listening {
                        delivered: false,
                        rx_energy_j: 0.0,
                        arrival_s: 0.0,
                    },
                    |r| Listening {
                        delivered: r.delivered,
                        rx_energy_j: r.rx_energy_j,
                        arrival_s: sender_wait_s + outcome.airtime_s + r.latency_s,
                    },
                ))
            }
            Mode::OverTheAir => Err(over_the_air_elsewhere()),
        }
    }

    /// Receiver `receiver`'s over-the-air slot in `round` for messages of `values`
    /// values from `senders` (the same pure model everywhere).
    pub fn air_slot(&self, round: u32, receiver: u32, senders: &[u32], values: u64) -> Result<AirSlot> {
        let senders: Vec<usize> = senders.iter().map(|&s| s as usize).collect();
        spectrum::air_slot(
            &self.channel,
            u64::from(round),
            receiver as usize,
            &senders,
            values,
            self.resolved.air_min_snr_db,
        )
        .map_err(channel_error)
    }

    /// Over the air: plans sending the message (cut into `frames` frames on the
    /// stream) to each of `receivers` in its slot. Where this node is aligned, every
    /// frame reaches that receiver when its slot ends (the analog sum is known only
    /// then); where it is not, it stays silent and nothing is delivered.
    pub fn schedule_over_the_air(&self, receivers: &[AirReceiver], frames: usize) -> Schedule {
        let mut schedule = Schedule::default();
        for (index, receiver) in receivers.iter().enumerate() {
            let slot = &receiver.slot;
            let (Some((airtime_s, energy_j)), Some(aligned)) =
                (slot.sender_cost(self.me as usize), slot.aligned(self.me as usize))
            else {
                schedule.delivered.push(false);
                continue;
            };
            let at_s = receiver.wait_s + slot.span_s() + aligned.latency_s;
            schedule.deliveries.extend((0..frames).map(|frame| Delivery {
                at_s,
                receiver: index,
                frame,
            }));
            schedule.delivered.push(true);
            // One analog burst and one control message per slot it takes part in.
            schedule.cost.transmissions += 2;
            schedule.cost.airtime_s += airtime_s;
            schedule.cost.tx_energy_j += energy_j;
        }
        schedule.deliveries.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
        schedule
    }
}

fn adjacency(resolved: &ResolvedChannel, channel: &Channel) -> Result<Vec<Vec<u32>>> {
    let adjacency = resolved.topology.adjacency(channel).map_err(channel_error)?;
    Ok(adjacency
        .into_iter()
        .map(|n| n.into_iter().map(|j| j as u32).collect())
        .collect())
}

fn over_the_air_elsewhere() -> Error {
    Error::config(
        "channel.mode",
        "over the air has its own schedule (Shaper::schedule_over_the_air, Shaper::air_slot)",
    )
}

fn channel_error(e: wdml_channel::Error) -> Error {
    Error::config("channel", e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use wdml_channel::{ChannelConfig, LossModel, Preset};

    fn shaper(config: ChannelConfig, me: u32) -> Shaper {
        Shaper::new(config.resolve().unwrap(), 7, 4, me).unwrap()
    }

    #[test]
    fn unshaped_sends_every_frame_at_once() {
        let s = shaper(ChannelConfig::from_preset(Preset::Ideal), 0);
        let schedule = s.schedule(0, &[1, 2], 3000, 3, 0.0).unwrap();
        assert_eq!(schedule.deliveries.len(), 6);
        assert!(schedule.deliveries.iter().all(|d| d.at_s == 0.0));
        assert_eq!(schedule.cost, SendCost::default());
    }

    #[test]
    fn unicast_transmissions_follow_each_other_and_match_the_model() {
        let config = ChannelConfig {
            loss: Some(LossModel::None),
            ..ChannelConfig::from_preset(Preset::D2dUrban)
        };
        let s = shaper(config, 0);
        let bytes: u64 = 2560;
        let frames = bytes.div_ceil(s.frame_bytes() as u64) as usize;
        let schedule = s.schedule(3, &[1, 2, 3], bytes, frames, 0.0).unwrap();
        assert_eq!(
            schedule.deliveries.len(),
            3 * frames,
            "no loss: every frame to every receiver"
        );
        assert!(
            schedule.deliveries.windows(2).all(|w| w[0].at_s < w[1].at_s),
            "one radio, one frame at a time"
        );
        // The last frame lands one link latency (1 ms by default) after the air time.
        let last = schedule.deliveries.last().unwrap().at_s;
        assert!((last - schedule.cost.airtime_s - 1e-3).abs() < 1e-12, "{last}");
        // The receiver's view of the same link agrees with the sender's.
        let receiver = shaper(
            ChannelConfig {
                loss: Some(LossModel::None),
                ..ChannelConfig::from_preset(Preset::D2dUrban)
            },
            2,
        );
        assert!(receiver.listen(3, 0, &[1, 2, 3], bytes, 0.0).unwrap().delivered);
    }

    #[test]
    fn sender_and_receiver_agree_on_lost_messages() {
        let config = ChannelConfig::from_preset(Preset::D2dEdge);
        let (mut lost, mut checked) = (0, 0);
        for round in 0..40 {
            let sender = shaper(config.clone(), 0);
            let schedule = sender.schedule(round, &[1, 2, 3], 2560, 2, 0.0).unwrap();
            for (i, to) in [1, 2, 3].into_iter().enumerate() {
                let listening = shaper(config.clone(), to)
                    .listen(round, 0, &[1, 2, 3], 2560, 0.0)
                    .unwrap();
                assert_eq!(
                    listening.delivered, schedule.delivered[i],
                    "round {round}, receiver {to}"
                );
                lost += usize::from(!listening.delivered);
                checked += 1;
            }
        }
        assert!(
            lost > 0 && lost < checked,
            "d2d-edge loses some messages, not all ({lost}/{checked})"
        );
    }
}
