//! Radio resource policies: how a device spends its radio in a round.
//!
//! - [`PowerControl`] (`channel.power_control`): the transmit power of each link;
//! - [`Selection`] (`channel.selection`): with which of its live neighbours each node
//!   exchanges this round;
//! - [`BandOrder`] (`channel.band_order`): in which order the senders take a shared band.
//!
//! Every policy is a pure function of the run's channel (seed, positions, round) and of
//! who is live, as the topology is: the coordinator and every node compute the same
//! decisions independently, so none of them travels on the wire, and a receiver knows
//! which neighbours will send to it and at what rate. What a device could know decides:
//! its links' state this round (the transmitter's rate already follows the SNR, so it
//! has the channel state), never what the others learned.

use serde::{Deserialize, Serialize};

use crate::error::{Result, ensure, ensure_finite};
use crate::link::{Channel, Link, LinkState};
use crate::radio::RadioParams;
use crate::topology::symmetric_union;
use crate::units::dbm_to_watts;

/// The lowest transmit power a device can set, dBm, by default: a UE's minimum output
/// power in 3GPP TS 36.101 §6.3.2.
pub const DEFAULT_MIN_POWER_DBM: f64 = -40.0;

/// Steps per dB of the energy-optimal power search. The objective (energy per
/// delivered bit, retransmissions included) is not unimodal once the frame-error curve
/// enters it, so a search that assumes it (golden section) could stop at a local
/// minimum; a grid is exact to its step, and 0.1 dB is below what any radio sets
/// (LTE's step is 1 dB).
const POWER_STEPS_PER_DB: f64 = 10.0;

/// How much power each transmission gets.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum PowerControl {
    /// Every transmission at `tx_power_dbm`, the device's maximum.
    #[default]
    Full,
    /// The lowest power at which this round's SNR reaches `target_snr_db`, within
    /// `[min_power_dbm, tx_power_dbm]`; the maximum where even that falls short.
    TargetSnr {
        /// The SNR each link must reach, dB.
        target_snr_db: f64,
        /// The device's lowest power, dBm.
        #[serde(default = "default_min_power_dbm")]
        min_power_dbm: f64,
    },
    /// The power within `[min_power_dbm, tx_power_dbm]` that minimises the radio's
    /// expected energy per delivered bit at both ends,
    /// `(P + P_circuit + L·P_rx) / (R(P)·(1 − FER(P)))` with `L` listeners (1 for
    /// unicast, the reachable receivers of a broadcast): less power radiates less but
    /// stretches the air time, over which the sender's circuit and every listener draw
    /// too, and raises the frame-error rate (the energy-efficiency trade-off of the D2D
    /// resource-allocation literature). The transmitter's energy alone is the wrong
    /// objective: on the heterogeneous case study it saved 2.6 % of the radio's energy,
    /// the listeners giving back most of what the sender saved.
    MinEnergy {
        /// The device's lowest power, dBm.
        #[serde(default = "default_min_power_dbm")]
        min_power_dbm: f64,
    },
}

fn default_min_power_dbm() -> f64 {
    DEFAULT_MIN_POWER_DBM
}

impl PowerControl {
    pub fn is_full(&self) -> bool {
        *self == PowerControl::Full
    }

    /// Checks the policy against the device's maximum power.
    pub fn validate(&self, max_power_dbm: f64) -> Result<()> {
        let min_power_dbm = match *self {
            PowerControl::Full => return Ok(()),
            PowerControl::TargetSnr {
                target_snr_db,
                min_power_dbm,
            } => {
                ensure_finite(target_snr_db, "channel.power_control.target_snr.target_snr_db")?;
                min_power_dbm
            }
            PowerControl::MinEnergy { min_power_dbm } => min_power_dbm,
        };
        ensure_finite(min_power_dbm, "channel.power_control.min_power_dbm")?;
        ensure(
            min_power_dbm <= max_power_dbm,
            "channel.power_control.min_power_dbm",
            &format!("must be at most channel.tx_power_dbm ({max_power_dbm} dBm), the device's maximum"),
            min_power_dbm,
        )
    }

    /// The power, dBm, for a transmission whose receiver is in `state` at full power
    /// (for a broadcast, the weakest intended receiver's), heard by `listeners`.
    pub fn power_dbm(&self, params: &RadioParams, state: &LinkState, listeners: usize) -> f64 {
        let max = params.tx_power_dbm;
        if state.outage {
            // Nothing gets through even at full power: the sender does not try, and
            // the power does not matter.
            return max;
        }
        match *self {
            PowerControl::Full => max,
            PowerControl::TargetSnr {
                target_snr_db,
                min_power_dbm,
            } => {
                let needed = max - (state.snr_db - target_snr_db);
                needed.clamp(min_power_dbm, max)
            }
            PowerControl::MinEnergy { min_power_dbm } => {
                let listening_w = listeners as f64 * params.rx_power_w;
                let energy_per_bit = |dbm: f64| {
                    let at = at_power(params, state, dbm);
                    let delivered = at.rate_bps * (1.0 - at.frame_error_rate);
                    match at.outage || delivered <= 0.0 {
                        true => f64::INFINITY,
                        false => (dbm_to_watts(dbm) + params.circuit_power_w + listening_w) / delivered,
                    }
                };
                // From the maximum down, so a tie keeps the higher power (shorter air
                // time for the same energy).
                let steps = ((max - min_power_dbm) * POWER_STEPS_PER_DB).floor() as u64;
                let mut best = (energy_per_bit(max), max);
                for step in 1..=steps {
                    // Divided rather than multiplied by a step of 0.1, which is not exact.
                    let dbm = max - step as f64 / POWER_STEPS_PER_DB;
                    let energy = energy_per_bit(dbm);
                    if energy < best.0 {
                        best = (energy, dbm);
                    }
                }
                best.1
            }
        }
    }
}

/// `state` (a link's state at the device's full power) as it is at `dbm`: the SNR moves
/// with the power, and the rate, outage and frame-error rate follow it. The long-term
/// `mean_snr_db` stays the full-power one (topologies decide on it).
pub fn at_power(params: &RadioParams, state: &LinkState, dbm: f64) -> LinkState {
    if dbm == state.tx_power_dbm {
        return state.clone();
    }
    let snr_db = state.snr_db - (state.tx_power_dbm - dbm);
    let outage = params.is_outage(snr_db);
    let frame_bits = params.frame_bits(u64::from(params.frame_payload_bytes));
    LinkState {
        tx_power_dbm: dbm,
        snr_db,
        rate_bps: params.rate_bps(snr_db),
        frame_error_rate: match outage {
            true => 1.0,
            false => params.loss.frame_error_rate(snr_db, frame_bits),
        },
        outage,
        ..state.clone()
    }
}

/// The most live nodes [`Selection::Pairs`] matches exactly; above, it matches greedily.
/// The exact search visits every subset of the nodes (2ⁿ states, n choices each), and
/// every node repeats it each round: a full mesh of 16 took 8.6 ms, of 12 0.17 ms (one
/// thread of this project's 2-core VM while it ran 16 other processes; timed in a
/// throwaway loop of 20 pairings, release build).
pub const MAX_EXACT_PAIRING: usize = 16;

/// With whom each node exchanges in a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Selection {
    /// Every live radio neighbour, every round.
    #[default]
    All,
    /// Each node picks the `k` live neighbours with the best SNR this round (fast
    /// fading included, at full power: what a pilot measures), made symmetric by union
    /// as `k_nearest` is: `i` and `j` exchange when either picked the other.
    Strongest {
        /// How many each node picks, at least 1.
        k: usize,
    },
    /// One partner each (the one-to-one pairing of DML over D2D): a matching of the
    /// live neighbour graph with as many pairs as possible and, among those, the least
    /// total exchange air time per bit this round (`1/R_ij + 1/R_ji`, full power); a
    /// link in outage either way is no edge. Exact up to [`MAX_EXACT_PAIRING`] live
    /// nodes, greedy (cheapest edge first) above.
    Pairs,
}

impl Selection {
    pub fn is_all(&self) -> bool {
        *self == Selection::All
    }

    pub fn validate(&self) -> Result<()> {
        match *self {
            Selection::Strongest { k } => ensure(k >= 1, "channel.selection.strongest.k", "must be >= 1", k),
            Selection::All | Selection::Pairs => Ok(()),
        }
    }

    /// [`Self::round_neighbours`] for node ids as the wire numbers them: `radio[i]` are
    /// node `i`'s radio neighbours, `is_live` says who takes part this round (an absent
    /// node has no neighbours, and is nobody's). The coordinator and every node call
    /// this, so both derive the round's neighbours the same way.
    pub fn choose(
        &self,
        channel: &Channel,
        round: u64,
        radio: &[Vec<u32>],
        is_live: impl Fn(u32) -> bool,
    ) -> Result<Vec<Vec<u32>>> {
        let live: Vec<Vec<usize>> = (0..radio.len() as u32)
            .map(|id| match is_live(id) {
                true => radio[id as usize]
                    .iter()
                    .filter(|&&j| is_live(j))
                    .map(|&j| j as usize)
                    .collect(),
                false => Vec::new(),
            })
            .collect();
        Ok(self
            .round_neighbours(channel, round, &live)?
            .into_iter()
            .map(|l| l.into_iter().map(|j| j as u32).collect())
            .collect())
    }

    /// The round's neighbours of every node: `live[i]` are node `i`'s live radio
    /// neighbours (ascending; empty for an absent node), the result a symmetric subset
    /// of them, ascending.
    pub fn round_neighbours(&self, channel: &Channel, round: u64, live: &[Vec<usize>]) -> Result<Vec<Vec<usize>>> {
        match *self {
            Selection::All => Ok(live.to_vec()),
            Selection::Strongest { k } => {
                let mut picks = Vec::with_capacity(live.len());
                for (node, neighbours) in live.iter().enumerate() {
                    let mut ranked = Vec::with_capacity(neighbours.len());
                    for &other in neighbours {
                        ranked.push((channel.link_state(Link::new(node, other), round)?.snr_db, other));
                    }
                    // Best first; a tie (or NaN) goes to the lower id.
                    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                    picks.push(ranked.iter().take(k).map(|&(_, other)| other).collect());
                }
                Ok(symmetric_union(&picks))
            }
            Selection::Pairs => {
                let mut edges = Vec::new();
                for (i, neighbours) in live.iter().enumerate() {
                    for &j in neighbours.iter().filter(|&&j| j > i) {
                        let there = channel.link_state(Link::new(i, j), round)?.rate_bps;
                        let back = channel.link_state(Link::new(j, i), round)?.rate_bps;
                        if there > 0.0 && back > 0.0 {
                            edges.push((i, j, 1.0 / there + 1.0 / back));
                        }
                    }
                }
                let mut paired = vec![Vec::new(); live.len()];
                for (i, j) in pairing(live.len(), &edges) {
                    paired[i].push(j);
                    paired[j].push(i);
                }
                Ok(paired)
            }
        }
    }
}

/// A matching of `nodes` nodes over `edges` (`(i, j, cost)`, `i < j`, cost finite): the
/// most pairs, and among those the least total cost; exact when at most
/// [`MAX_EXACT_PAIRING`] nodes have an edge, greedy above. Deterministic: the same
/// edges give the same pairs.
pub fn pairing(nodes: usize, edges: &[(usize, usize, f64)]) -> Vec<(usize, usize)> {
    let mut involved: Vec<usize> = edges.iter().flat_map(|&(i, j, _)| [i, j]).collect();
    involved.sort_unstable();
    involved.dedup();
    debug_assert!(involved.last().is_none_or(|&last| last < nodes));
    if involved.len() <= MAX_EXACT_PAIRING {
        exact_pairing(&involved, edges)
    } else {
        greedy_pairing(nodes, edges)
    }
}

/// Cheapest edge first (ties to the lower ids), skipping nodes already paired: a
/// maximal matching, within twice the optimum for the min-cost objective on metric costs.
fn greedy_pairing(nodes: usize, edges: &[(usize, usize, f64)]) -> Vec<(usize, usize)> {
    let mut order: Vec<&(usize, usize, f64)> = edges.iter().collect();
    order.sort_by(|a, b| a.2.total_cmp(&b.2).then((a.0, a.1).cmp(&(b.0, b.1))));
    let mut taken = vec![false; nodes];
    let mut pairs = Vec::new();
    for &&(i, j, _) in &order {
        if !taken[i] && !taken[j] {
            taken[i] = true;
            taken[j] = true;
            pairs.push((i, j));
        }
    }
    pairs.sort_unstable();
    pairs
}

/// Dynamic programming over the subsets of `involved`: the best matching of a subset is
/// its lowest node left alone, or paired with one of its neighbours in the subset, plus
/// the best matching of the rest. Better = more pairs, then less cost.
fn exact_pairing(involved: &[usize], edges: &[(usize, usize, f64)]) -> Vec<(usize, usize)> {
    let n = involved.len();
    let index = |node: usize| {
        involved
            .binary_search(&node)
            .expect("involved lists every edge's nodes")
    };
    let mut cost = vec![vec![None; n]; n];
    for &(i, j, c) in edges {
        let (a, b) = (index(i), index(j));
        cost[a][b] = Some(c);
        cost[b][a] = Some(c);
    }
    // best[mask] = (pairs, cost, partner of the lowest node in mask, if any).
    let full = (1usize << n) - 1;
    let mut best: Vec<(u32, f64, Option<usize>)> = vec![(0, 0.0, None); full + 1];
    for mask in 1..=full {
        let low = mask.trailing_zeros() as usize;
        let rest = mask & !(1 << low);
        let mut choice = (best[rest].0, best[rest].1, None);
        for other in (low + 1..n).filter(|&o| rest & (1 << o) != 0) {
            let Some(c) = cost[low][other] else { continue };
            let (pairs, total, _) = best[rest & !(1 << other)];
            let candidate = (pairs + 1, total + c);
            if candidate.0 > choice.0 || (candidate.0 == choice.0 && candidate.1 < choice.1) {
                choice = (candidate.0, candidate.1, Some(other));
            }
        }
        best[mask] = choice;
    }
    let mut pairs = Vec::new();
    let mut mask = full;
    while mask != 0 {
        let low = mask.trailing_zeros() as usize;
        mask &= !(1 << low);
        if let Some(other) = best[mask | (1 << low)].2 {
            mask &= !(1 << other);
            pairs.push((involved[low], involved[other]));
        }
    }
    pairs.sort_unstable();
    pairs
}

/// In which order the senders take their turns on a shared band (`access = "shared"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BandOrder {
    /// Ascending node id.
    #[default]
    Id,
    /// Shortest air time first (ties to the lower id): the band is busy for the same
    /// sum, but the senders finish, and their receivers hear them, earliest on average
    /// (shortest processing time first minimises the mean completion time).
    ShortestFirst,
}

impl BandOrder {
    pub fn is_id(&self) -> bool {
        *self == BandOrder::Id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ChannelConfig, Preset};

    #[test]
    fn exact_pairing_beats_or_equals_every_matching_found_by_brute_force() {
        // Six nodes, a few missing edges, costs that make greedy go wrong.
        let edges = [
            (0, 1, 1.0),
            (0, 2, 5.0),
            (1, 2, 1.5),
            (1, 3, 9.0),
            (2, 3, 1.2),
            (3, 4, 2.0),
            (4, 5, 1.1),
            (2, 5, 3.0),
        ];
        let pairs = pairing(6, &edges);
        let cost_of = |pairs: &[(usize, usize)]| -> f64 {
            pairs
                .iter()
                .map(|&(i, j)| edges.iter().find(|e| (e.0, e.1) == (i, j)).unwrap().2)
                .sum()
        };
        // Brute force: every subset of edges that is a matching.
        let mut best = (0, f64::INFINITY);
        for subset in 0u32..(1 << edges.len()) {
            let chosen: Vec<(usize, usize)> = (0..edges.len())
                .filter(|b| subset & (1 << b) != 0)
                .map(|b| (edges[b].0, edges[b].1))
                .collect();
            let mut seen = [false; 6];
            if chosen
                .iter()
                .any(|&(i, j)| std::mem::replace(&mut seen[i], true) | std::mem::replace(&mut seen[j], true))
            {
                continue;
            }
            let candidate = (chosen.len(), cost_of(&chosen));
            if candidate.0 > best.0 || (candidate.0 == best.0 && candidate.1 < best.1) {
                best = candidate;
            }
        }
        assert_eq!((pairs.len(), cost_of(&pairs)), best);
        assert_eq!(pairs, [(0, 1), (2, 3), (4, 5)]);
    }

    fn channel(nodes: usize) -> Channel {
        ChannelConfig::from_preset(Preset::D2dUrban)
            .resolve()
            .unwrap()
            .channel(11, nodes)
            .unwrap()
    }

    fn mesh(nodes: usize) -> Vec<Vec<usize>> {
        (0..nodes).map(|i| (0..nodes).filter(|&j| j != i).collect()).collect()
    }

    fn is_matching(lists: &[Vec<usize>]) -> bool {
        lists
            .iter()
            .enumerate()
            .all(|(i, l)| l.len() <= 1 && l.iter().all(|&j| lists[j] == [i]))
    }

    #[test]
    fn pairs_are_a_matching_the_same_for_a_seed_and_change_with_the_fading() {
        for nodes in [2, 5, 10, 16, 17, 40] {
            let channel = channel(nodes);
            let live = mesh(nodes);
            let mut rounds = Vec::new();
            for round in 0..4 {
                let paired = Selection::Pairs.round_neighbours(&channel, round, &live).unwrap();
                assert!(is_matching(&paired), "{nodes} nodes, round {round}: {paired:?}");
                assert_eq!(
                    paired,
                    Selection::Pairs.round_neighbours(&channel, round, &live).unwrap()
                );
                rounds.push(paired);
            }
            if nodes >= 5 {
                assert!(
                    rounds.windows(2).any(|w| w[0] != w[1]),
                    "{nodes} nodes: the pairs never change"
                );
            }
        }
    }

    #[test]
    fn an_absent_node_is_never_paired_and_a_missing_edge_never_used() {
        let channel = channel(6);
        let mut live = mesh(6);
        // Node 3 absent; 0 and 1 are not radio neighbours.
        live[3].clear();
        for list in &mut live {
            list.retain(|&j| j != 3);
        }
        live[0].retain(|&j| j != 1);
        live[1].retain(|&j| j != 0);
        for round in 0..8 {
            let paired = Selection::Pairs.round_neighbours(&channel, round, &live).unwrap();
            assert!(is_matching(&paired));
            assert!(paired[3].is_empty());
            assert!(!paired[0].contains(&1));
            // Five live nodes: two pairs.
            assert_eq!(paired.iter().filter(|l| !l.is_empty()).count(), 4, "{paired:?}");
        }
    }

    #[test]
    fn strongest_k_keeps_each_nodes_best_links_and_is_symmetric() {
        let channel = channel(8);
        let live = mesh(8);
        let chosen = Selection::Strongest { k: 2 }
            .round_neighbours(&channel, 3, &live)
            .unwrap();
        for (i, list) in chosen.iter().enumerate() {
            assert!(list.len() >= 2);
            for &j in list {
                assert!(chosen[j].contains(&i), "{i} -> {j} is one-way");
            }
            // Its own two best are in.
            let mut snr: Vec<(f64, usize)> = live[i]
                .iter()
                .map(|&j| (channel.link_state(Link::new(i, j), 3).unwrap().snr_db, j))
                .collect();
            snr.sort_by(|a, b| b.0.total_cmp(&a.0));
            assert!(list.contains(&snr[0].1) && list.contains(&snr[1].1));
        }
        assert_eq!(Selection::All.round_neighbours(&channel, 3, &live).unwrap(), live);
    }

    #[test]
    fn target_snr_power_meets_the_target_when_it_can_and_never_exceeds_the_maximum() {
        let target = 10.0;
        let policy = PowerControl::TargetSnr {
            target_snr_db: target,
            min_power_dbm: DEFAULT_MIN_POWER_DBM,
        };
        let config = ChannelConfig {
            power_control: Some(policy),
            ..ChannelConfig::from_preset(Preset::D2dUrban)
        };
        let resolved = config.resolve().unwrap();
        let controlled = resolved.channel(5, 12).unwrap();
        let full = ChannelConfig::from_preset(Preset::D2dUrban)
            .resolve()
            .unwrap()
            .channel(5, 12)
            .unwrap();
        let (mut lowered, mut short) = (0, 0);
        for round in 0..20 {
            for i in 0..12 {
                for j in (0..12).filter(|&j| j != i) {
                    let link = Link::new(i, j);
                    let (at, max) = (
                        controlled.sending_state(link, round).unwrap(),
                        full.link_state(link, round).unwrap(),
                    );
                    assert!(at.tx_power_dbm <= 20.0 && at.tx_power_dbm >= DEFAULT_MIN_POWER_DBM);
                    if max.outage {
                        assert_eq!(at.tx_power_dbm, 20.0);
                    } else if max.snr_db >= target {
                        // Feasible: the target is met, not exceeded by more than the
                        // floor forces.
                        assert!(at.snr_db >= target - 1e-9, "{link} round {round}: {} dB", at.snr_db);
                        assert!(at.snr_db <= target + 1e-9 || at.tx_power_dbm == DEFAULT_MIN_POWER_DBM);
                        lowered += usize::from(at.tx_power_dbm < 20.0);
                    } else {
                        assert_eq!(at.tx_power_dbm, 20.0);
                        assert_eq!(at.snr_db, max.snr_db);
                        short += 1;
                    }
                }
            }
        }
        assert!(
            lowered > 100 && short > 10,
            "lowered {lowered}, short of the target {short}"
        );
    }

    #[test]
    fn min_energy_power_costs_no_more_energy_per_bit_than_full_power() {
        let params = RadioParams::default();
        let policy = PowerControl::MinEnergy {
            min_power_dbm: DEFAULT_MIN_POWER_DBM,
        };
        let full = channel(10);
        let per_bit = |s: &LinkState| {
            (dbm_to_watts(s.tx_power_dbm) + params.circuit_power_w + params.rx_power_w)
                / (s.rate_bps * (1.0 - s.frame_error_rate))
        };
        let mut saved = 0;
        for round in 0..10 {
            for i in 0..10 {
                for j in (0..10).filter(|&j| j != i) {
                    let max = full.link_state(Link::new(i, j), round).unwrap();
                    if max.outage {
                        continue;
                    }
                    let dbm = policy.power_dbm(&params, &max, 1);
                    let chosen = at_power(&params, &max, dbm);
                    assert!(dbm <= params.tx_power_dbm && dbm >= DEFAULT_MIN_POWER_DBM);
                    assert!(per_bit(&chosen) <= per_bit(&max));
                    saved += usize::from(per_bit(&chosen) < 0.9 * per_bit(&max));
                }
            }
        }
        assert!(saved > 50, "min-energy saved 10 % on only {saved} links");
    }

    #[test]
    fn bad_policies_are_refused_naming_the_field() {
        let err = PowerControl::TargetSnr {
            target_snr_db: f64::NAN,
            min_power_dbm: 0.0,
        }
        .validate(20.0)
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("channel.power_control.target_snr.target_snr_db"),
            "{err}"
        );
        let err = PowerControl::MinEnergy { min_power_dbm: 30.0 }
            .validate(20.0)
            .unwrap_err();
        assert!(err.to_string().contains("channel.power_control.min_power_dbm"), "{err}");
        assert!(err.to_string().contains("at most channel.tx_power_dbm"), "{err}");
        let err = Selection::Strongest { k: 0 }.validate().unwrap_err();
        assert!(err.to_string().contains("channel.selection.strongest.k"), "{err}");
    }
}
