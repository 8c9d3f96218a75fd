//! The channel of a run: every directed link's state in every round, derived from the
//! run seed alone.
//!
//! A [`Channel`] holds the run seed, the radio parameters and the positions. Every
//! random quantity is drawn from its own stream (see the `rng` module), so a link's
//! state depends only on `(run seed, link, round)`: the coordinator and every node
//! compute the same channel independently, in whatever order they query it.

use std::fmt;

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, ensure_finite};
use crate::geometry::Position;
use crate::loss::FrameLoss;
use crate::mobility::{Mobility, Motion};
use crate::policy::at_power;
use crate::propagation::draw_shadowing_db;
use crate::radio::{RadioParams, airtime_s};
use crate::rng::{SplitMix64, Stream, derive_seed};
use crate::transmission::{BroadcastTransmission, UnicastTransmission};
use crate::units::db_to_linear;

/// A directed link from one node to another (node indices in `0..nodes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    /// The transmitter.
    pub from: usize,
    /// The receiver.
    pub to: usize,
}

impl Link {
    /// The link `from → to`.
    pub fn new(from: usize, to: usize) -> Self {
        Self { from, to }
    }

    /// The link in the other direction.
    pub fn reversed(self) -> Self {
        Self {
            from: self.to,
            to: self.from,
        }
    }
}

impl fmt::Display for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}->{}", self.from, self.to)
    }
}

/// The state of a directed link in one round: constant for every frame of the round
/// (block fading).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkState {
    /// The link.
    pub link: Link,
    /// The round.
    pub round: u64,
    /// Distance between the two nodes, m.
    pub distance_m: f64,
    /// Distance path loss, dB.
    pub path_loss_db: f64,
    /// Shadowing, dB of extra loss (negative: a better-than-average path); fixed for the run.
    pub shadowing_db: f64,
    /// Fast-fading power gain `|h|²` this round (1 is the mean).
    pub fading_gain: f64,
    /// SNR without fast fading, dB: the link's long-term mean.
    pub mean_snr_db: f64,
    /// SNR this round, dB.
    pub snr_db: f64,
    /// Achieved rate this round, bit/s; 0 in outage.
    pub rate_bps: f64,
    /// Transmit power, dBm: the radio's maximum, or what `channel.power_control`
    /// chose for the transmission ([`Channel::sending_state`]).
    pub tx_power_dbm: f64,
    /// Mean loss probability of a full-size frame this round (1 in outage).
    pub frame_error_rate: f64,
    /// Whether the SNR is below the outage threshold: nothing gets through this round.
    pub outage: bool,
    /// One-way latency added to each message besides its airtime, s (base plus jitter).
    pub latency_s: f64,
}

impl LinkState {
    /// The round's SNR as a linear power ratio.
    pub fn snr_linear(&self) -> f64 {
        db_to_linear(self.snr_db)
    }

    /// Time on air of `bits` at this round's rate; `None` in outage.
    pub fn airtime_s(&self, bits: u64) -> Option<f64> {
        airtime_s(bits, self.rate_bps)
    }
}

/// The emulated radio channel of one run: seed, radio parameters and positions.
#[derive(Debug, Clone, PartialEq)]
pub struct Channel {
    run_seed: u64,
    params: RadioParams,
    positions: Vec<Position>,
    /// When the devices move: their trajectories up to now, for the shadowing.
    motion: Option<std::sync::Arc<Motion>>,
}

impl Channel {
    /// The channel of a run seeded by `run_seed`, with one position per node.
    pub fn new(run_seed: u64, params: RadioParams, positions: Vec<Position>) -> Result<Self> {
        params.validate()?;
        for (index, position) in positions.iter().enumerate() {
            ensure_finite(position.x_m, &format!("channel.positions[{index}].x_m"))?;
            ensure_finite(position.y_m, &format!("channel.positions[{index}].y_m"))?;
        }
        Ok(Self {
            run_seed,
            params,
            positions,
            motion: None,
        })
    }

    /// The channel at emulated time `t` of devices placed at `start` that move by
    /// `mobility`: positions at `t`, shadowing evolved along the way (Gudmundson, with
    /// decorrelation distance `decorrelation_m`).
    pub fn moving(
        run_seed: u64,
        params: RadioParams,
        start: Vec<Position>,
        mobility: &Mobility,
        decorrelation_m: f64,
        t: f64,
    ) -> Result<Self> {
        let positions = mobility.positions_at(run_seed, &start, t)?;
        let mut channel = Self::new(run_seed, params, positions)?;
        if !mobility.is_static() {
            let motion = Motion::new(mobility, run_seed, &start, t, decorrelation_m)?;
            channel.motion = Some(std::sync::Arc::new(motion));
        }
        Ok(channel)
    }

    /// The run seed every draw derives from.
    pub fn run_seed(&self) -> u64 {
        self.run_seed
    }

    /// The radio parameters.
    pub fn params(&self) -> &RadioParams {
        &self.params
    }

    /// The node positions, by node index.
    pub fn positions(&self) -> &[Position] {
        &self.positions
    }

    /// Number of nodes.
    pub fn nodes(&self) -> usize {
        self.positions.len()
    }

    /// Fails unless `node` is one of the channel's nodes.
    pub fn check_node(&self, node: usize) -> Result<()> {
        if node < self.nodes() {
            Ok(())
        } else {
            Err(Error::NodeOutOfRange {
                node,
                nodes: self.nodes(),
            })
        }
    }

    /// Fails unless both ends exist and differ.
    pub fn check_link(&self, link: Link) -> Result<()> {
        self.check_node(link.from)?;
        self.check_node(link.to)?;
        if link.from == link.to {
            return Err(Error::SelfLink { node: link.from });
        }
        Ok(())
    }

    /// Distance between the link's ends, m.
    pub fn distance_m(&self, link: Link) -> Result<f64> {
        self.check_link(link)?;
        Ok(self.positions[link.from].distance_m(&self.positions[link.to]))
    }

    /// Shadowing of the link, dB of extra loss, fixed for the run.
    ///
    /// Drawn once per node *pair*, so `i → j` and `j → i` share it: shadowing is the
    /// obstruction of the path between two places, which is the same in both directions
    /// (reciprocity), and a symmetric mean SNR keeps radio-range neighbourhoods symmetric.
    /// Fast fading, by contrast, is drawn per direction, since the two directions
    /// transmit at different instants of the round.
    pub fn shadowing_db(&self, link: Link) -> Result<f64> {
        self.check_link(link)?;
        let (low, high) = (link.from.min(link.to), link.from.max(link.to));
        let mut rng = SplitMix64::for_stream(self.run_seed, Stream::Shadowing, &[low as u64, high as u64]);
        let fixed = draw_shadowing_db(self.params.shadowing_sigma_db, &mut rng);
        Ok(match &self.motion {
            Some(motion) => motion.shadowing_db(self.run_seed, self.params.shadowing_sigma_db, low, high, fixed),
            None => fixed,
        })
    }

    /// The link's mean SNR without fast fading (path loss and shadowing only), dB: what
    /// topology decisions use.
    pub fn mean_snr_db(&self, link: Link) -> Result<f64> {
        let path_loss_db = self
            .params
            .path_loss
            .loss_db(self.distance_m(link)?, self.params.min_distance_m);
        Ok(self.params.snr_db(path_loss_db, self.shadowing_db(link)?, 1.0))
    }

    /// The state of `link` in `round` at the radio's full power: what a pilot measures,
    /// and what topologies and neighbour selection decide on.
    pub fn link_state(&self, link: Link, round: u64) -> Result<LinkState> {
        let distance_m = self.distance_m(link)?;
        let path_loss_db = self.params.path_loss.loss_db(distance_m, self.params.min_distance_m);
        let shadowing_db = self.shadowing_db(link)?;
        let coordinates = [link.from as u64, link.to as u64, round];

        let mut fading_rng = SplitMix64::for_stream(self.run_seed, Stream::Fading, &coordinates);
        let fading_gain = self.params.fading.draw_power_gain(&mut fading_rng);

        let mut jitter_rng = SplitMix64::for_stream(self.run_seed, Stream::Jitter, &coordinates);
        let jitter_ms = self.params.jitter_ms * jitter_rng.random::<f64>();

        let mean_snr_db = self.params.snr_db(path_loss_db, shadowing_db, 1.0);
        let snr_db = self.params.snr_db(path_loss_db, shadowing_db, fading_gain);
        let outage = self.params.is_outage(snr_db);
        let frame_bits = self.params.frame_bits(u64::from(self.params.frame_payload_bytes));
        let frame_error_rate = if outage {
            1.0
        } else {
            self.params.loss.frame_error_rate(snr_db, frame_bits)
        };
        Ok(LinkState {
            link,
            round,
            distance_m,
            path_loss_db,
            shadowing_db,
            fading_gain,
            mean_snr_db,
            snr_db,
            rate_bps: self.params.rate_bps(snr_db),
            tx_power_dbm: self.params.tx_power_dbm,
            frame_error_rate,
            outage,
            latency_s: (self.params.latency_ms + jitter_ms) / 1000.0,
        })
    }

    /// The state a unicast transmission on `link` in `round` meets: at the power
    /// `channel.power_control` chooses for it.
    pub fn sending_state(&self, link: Link, round: u64) -> Result<LinkState> {
        let full = self.link_state(link, round)?;
        let control = &self.params.power_control;
        if control.is_full() {
            return Ok(full);
        }
        Ok(at_power(&self.params, &full, control.power_dbm(&self.params, &full, 1)))
    }

    /// The frame-loss process of message number `message` (0 for the first) sent on
    /// `link` in `round`. Numbering messages keeps two messages of one round from
    /// sharing their loss draws.
    pub fn frame_loss(&self, link: Link, round: u64, message: u64) -> Result<FrameLoss> {
        let state = self.sending_state(link, round)?;
        Ok(self.frame_loss_for(&state, message))
    }

    /// A unicast transmission of `payload_bytes` on `link` in `round`, as message number
    /// `message`; iterate it to step frame by frame, or [`UnicastTransmission::run`] it.
    pub fn unicast(&self, link: Link, round: u64, message: u64, payload_bytes: u64) -> Result<UnicastTransmission> {
        let state = self.sending_state(link, round)?;
        let loss = self.frame_loss_for(&state, message);
        Ok(UnicastTransmission::new(&self.params, &state, loss, payload_bytes))
    }

    /// One broadcast of `payload_bytes` from `from` to `receivers` in `round`, as message
    /// number `message`: see [`BroadcastTransmission`] for the model.
    pub fn broadcast(
        &self,
        from: usize,
        receivers: &[usize],
        round: u64,
        message: u64,
        payload_bytes: u64,
    ) -> Result<BroadcastTransmission> {
        self.check_node(from)?;
        let mut states = Vec::with_capacity(receivers.len());
        for (position, &to) in receivers.iter().enumerate() {
            if receivers[..position].contains(&to) {
                return Err(Error::DuplicateReceiver { node: to });
            }
            states.push(self.link_state(Link::new(from, to), round)?);
        }
        if !self.params.power_control.is_full() {
            let dbm = self.broadcast_power_dbm(&states);
            states = states.iter().map(|s| at_power(&self.params, s, dbm)).collect();
        }
        let links = states
            .into_iter()
            .map(|state| {
                let loss = self.frame_loss_for(&state, message);
                (state, loss)
            })
            .collect();
        Ok(BroadcastTransmission::new(&self.params, from, links, payload_bytes))
    }

    /// A broadcast's one power, dBm, for receivers in full-power `states`: the
    /// policy's for the weakest receiver the radio can reach at all (it sets the
    /// broadcast's rate), heard by every reachable one.
    fn broadcast_power_dbm(&self, states: &[LinkState]) -> f64 {
        let reachable = states.iter().filter(|s| !s.outage);
        let weakest = reachable.clone().min_by(|a, b| a.snr_db.total_cmp(&b.snr_db));
        weakest.map_or(self.params.tx_power_dbm, |weakest| {
            self.params
                .power_control
                .power_dbm(&self.params, weakest, reachable.count())
        })
    }

    /// The power, dBm, `from` transmits its round message at to `receivers` under
    /// `mode`: one per receiver for unicast, one for all for a broadcast.
    pub fn sending_powers_dbm(
        &self,
        mode: crate::Mode,
        from: usize,
        receivers: &[usize],
        round: u64,
    ) -> Result<Vec<f64>> {
        let link = |to: usize| Link::new(from, to);
        match mode {
            crate::Mode::Broadcast if receivers.is_empty() => Ok(Vec::new()),
            crate::Mode::Broadcast => {
                let full: Vec<LinkState> = receivers
                    .iter()
                    .map(|&to| self.link_state(link(to), round))
                    .collect::<Result<_>>()?;
                Ok(vec![self.broadcast_power_dbm(&full)])
            }
            _ => receivers
                .iter()
                .map(|&to| Ok(self.sending_state(link(to), round)?.tx_power_dbm))
                .collect(),
        }
    }

    /// The loss process of a message on a link whose round state is already known.
    fn frame_loss_for(&self, state: &LinkState, message: u64) -> FrameLoss {
        let seed = derive_seed(
            self.run_seed,
            Stream::FrameLoss,
            &[state.link.from as u64, state.link.to as u64, state.round, message],
        );
        FrameLoss::new(self.params.loss, state.snr_db, seed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::propagation::Fading;

    fn line_channel(seed: u64, params: RadioParams) -> Channel {
        let positions = (0..4).map(|i| Position::new(30.0 * f64::from(i), 0.0)).collect();
        Channel::new(seed, params, positions).unwrap()
    }

    #[test]
    fn a_30_m_link_without_shadowing_or_fading_matches_the_hand_computation() {
        let params = RadioParams {
            shadowing_sigma_db: 0.0,
            fading: Fading::None,
            ..RadioParams::default()
        };
        let channel = line_channel(1, params);
        let state = channel.link_state(Link::new(0, 1), 0).unwrap();
        assert!((state.distance_m - 30.0).abs() < 1e-12);
        assert!((state.path_loss_db - 87.084_850_2).abs() < 1e-6);
        assert!((state.snr_db - 37.915_149_8).abs() < 1e-6);
        assert_eq!(state.snr_db, state.mean_snr_db);
        assert!((state.rate_bps - 12_595_373.28).abs() < 0.1);
        assert_eq!(state.frame_error_rate, 0.0);
        assert!(!state.outage);
        assert!((state.latency_s - 1e-3).abs() < 1e-15);
    }

    #[test]
    fn the_same_seed_gives_the_same_states_in_any_query_order() {
        let a = line_channel(7, RadioParams::default());
        let b = line_channel(7, RadioParams::default());
        let links: Vec<Link> = (0..4)
            .flat_map(|i| (0..4).filter(move |&j| j != i).map(move |j| Link::new(i, j)))
            .collect();
        let forward: Vec<LinkState> = links
            .iter()
            .flat_map(|&l| (0..3).map(move |r| (l, r)))
            .map(|(l, r)| a.link_state(l, r).unwrap())
            .collect();
        let mut backward: Vec<LinkState> = links
            .iter()
            .rev()
            .flat_map(|&l| (0..3).rev().map(move |r| (l, r)))
            .map(|(l, r)| b.link_state(l, r).unwrap())
            .collect();
        backward.reverse();
        assert_eq!(forward, backward);
        let other_seed = line_channel(8, RadioParams::default());
        assert_ne!(
            a.link_state(Link::new(0, 1), 0).unwrap(),
            other_seed.link_state(Link::new(0, 1), 0).unwrap()
        );
    }

    #[test]
    fn rounds_redraw_fading_but_not_shadowing() {
        let channel = line_channel(3, RadioParams::default());
        let link = Link::new(1, 2);
        let states: Vec<LinkState> = (0..5).map(|r| channel.link_state(link, r).unwrap()).collect();
        for state in &states {
            assert_eq!(state.shadowing_db, states[0].shadowing_db);
            assert_eq!(state.mean_snr_db, states[0].mean_snr_db);
        }
        let gains: Vec<f64> = states.iter().map(|s| s.fading_gain).collect();
        for (i, a) in gains.iter().enumerate() {
            for b in &gains[i + 1..] {
                assert_ne!(a, b, "fading was not redrawn: {gains:?}");
            }
        }
        assert_ne!(states[0].shadowing_db, 0.0);
    }

    #[test]
    fn shadowing_is_reciprocal_and_fading_is_per_direction() {
        let channel = line_channel(5, RadioParams::default());
        let there = channel.link_state(Link::new(0, 3), 9).unwrap();
        let back = channel.link_state(Link::new(3, 0), 9).unwrap();
        assert_eq!(there.shadowing_db, back.shadowing_db);
        assert_eq!(there.mean_snr_db, back.mean_snr_db);
        assert_ne!(there.fading_gain, back.fading_gain);
    }

    #[test]
    fn fading_has_unit_mean_across_rounds() {
        let channel = line_channel(11, RadioParams::default());
        let rounds = 50_000;
        let mean = (0..rounds)
            .map(|r| channel.link_state(Link::new(0, 1), r).unwrap().fading_gain)
            .sum::<f64>()
            / rounds as f64;
        assert!((mean - 1.0).abs() < 5.0 / (rounds as f64).sqrt(), "{mean}");
    }

    #[test]
    fn jitter_stays_within_its_bound() {
        let params = RadioParams {
            latency_ms: 2.0,
            jitter_ms: 3.0,
            ..RadioParams::default()
        };
        let channel = line_channel(2, params);
        let latencies: Vec<f64> = (0..1000)
            .map(|r| channel.link_state(Link::new(2, 1), r).unwrap().latency_s)
            .collect();
        assert!(latencies.iter().all(|&l| (2e-3..5e-3).contains(&l)));
        let spread =
            latencies.iter().cloned().fold(f64::MIN, f64::max) - latencies.iter().cloned().fold(f64::MAX, f64::min);
        assert!(spread > 2.5e-3, "{spread}");
    }

    #[test]
    fn far_links_go_into_outage() {
        let params = RadioParams {
            shadowing_sigma_db: 0.0,
            fading: Fading::None,
            ..RadioParams::default()
        };
        // mean SNR = −23 − 40·log10(d_km): −1.5 dB at d = 10^(−21.5/40) km = 290 m
        let channel = Channel::new(0, params, vec![Position::new(0.0, 0.0), Position::new(400.0, 0.0)]).unwrap();
        let state = channel.link_state(Link::new(0, 1), 0).unwrap();
        assert!(state.outage);
        assert_eq!(state.rate_bps, 0.0);
        assert_eq!(state.frame_error_rate, 1.0);
        assert_eq!(state.airtime_s(1000), None);
    }

    #[test]
    fn bad_links_are_errors_not_panics() {
        let channel = line_channel(0, RadioParams::default());
        assert_eq!(
            channel.link_state(Link::new(0, 4), 0),
            Err(Error::NodeOutOfRange { node: 4, nodes: 4 })
        );
        assert_eq!(channel.link_state(Link::new(2, 2), 0), Err(Error::SelfLink { node: 2 }));
        assert_eq!(
            channel.broadcast(0, &[1, 1], 0, 0, 10).unwrap_err(),
            Error::DuplicateReceiver { node: 1 }
        );
        assert_eq!(
            channel.broadcast(9, &[], 0, 0, 10).unwrap_err(),
            Error::NodeOutOfRange { node: 9, nodes: 4 }
        );
        let bad = RadioParams {
            bandwidth_hz: -1.0,
            ..RadioParams::default()
        };
        assert!(Channel::new(0, bad, vec![]).is_err());
    }
}
