//! Who talks to whom: the neighbour sets of a run.
//!
//! Every topology here is symmetric (`j` is a neighbour of `i` exactly when `i` is a
//! neighbour of `j`): mutual learning exchanges predictions both ways, and a one-way
//! neighbour would receive without ever being heard.

use serde::{Deserialize, Serialize};

use crate::error::{Result, ensure, ensure_finite};
use crate::link::{Channel, Link};

/// How neighbours are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Topology {
    /// Everyone is everyone's neighbour.
    #[default]
    FullMesh,
    /// A ring by node index: `i` neighbours `i − 1` and `i + 1` (mod n), the usual ring
    /// of decentralised-learning studies; independent of positions.
    Ring,
    /// The `k` nearest nodes by distance, made symmetric by *union*: `i` and `j` are
    /// neighbours if either is among the other's `k` nearest. The union guarantees every
    /// node at least `min(k, n − 1)` neighbours, where an intersection could isolate a
    /// node whose nearest nodes all have closer nodes of their own. Distance ties go to
    /// the lower node index.
    KNearest {
        /// How many nearest nodes each node picks, at least 1.
        k: usize,
    },
    /// Nodes whose link's mean SNR (path loss and shadowing, no fast fading) clears
    /// `min_snr_db`. Symmetric because path loss and shadowing are reciprocal.
    RadioRange {
        /// Minimum mean SNR, dB.
        min_snr_db: f64,
    },
}

impl Topology {
    /// Checks the topology's own parameters.
    pub fn validate(&self) -> Result<()> {
        match *self {
            Topology::FullMesh | Topology::Ring => Ok(()),
            Topology::KNearest { k } => ensure(k >= 1, "channel.topology.k_nearest.k", "must be >= 1", k),
            Topology::RadioRange { min_snr_db } => ensure_finite(min_snr_db, "channel.topology.radio_range.min_snr_db"),
        }
    }

    /// The neighbours of `node` on `channel`, in ascending order.
    pub fn neighbours(&self, node: usize, channel: &Channel) -> Result<Vec<usize>> {
        self.validate()?;
        channel.check_node(node)?;
        let nodes = channel.nodes();
        let others = (0..nodes).filter(|&other| other != node);
        match *self {
            Topology::FullMesh => Ok(others.collect()),
            // `others` yields each node once, so with two nodes the one neighbour that is
            // both successor and predecessor is listed once.
            Topology::Ring => Ok(others
                .filter(|&other| other == (node + 1) % nodes || other == (node + nodes - 1) % nodes)
                .collect()),
            Topology::KNearest { k } => {
                let own = nearest(node, k, channel);
                Ok(others
                    .filter(|&other| own.contains(&other) || nearest(other, k, channel).contains(&node))
                    .collect())
            }
            Topology::RadioRange { min_snr_db } => {
                let mut in_range = Vec::new();
                for other in others {
                    if channel.mean_snr_db(Link::new(node, other))? >= min_snr_db {
                        in_range.push(other);
                    }
                }
                Ok(in_range)
            }
        }
    }

    /// Every node's neighbours, indexed by node: the same lists as [`Self::neighbours`]
    /// node by node.
    pub fn adjacency(&self, channel: &Channel) -> Result<Vec<Vec<usize>>> {
        self.validate()?;
        let Topology::KNearest { k } = *self else {
            return (0..channel.nodes())
                .map(|node| self.neighbours(node, channel))
                .collect();
        };
        // Each node's own picks once, then their union: node by node, every node would
        // redo everyone's picks (O(n³ log n): minutes at 1,024 nodes, every round for
        // moving devices).
        let picks: Vec<Vec<usize>> = (0..channel.nodes()).map(|node| nearest(node, k, channel)).collect();
        Ok(symmetric_union(&picks))
    }
}

/// Each node's picks made symmetric by union: `i` and `j` are neighbours when either
/// picked the other. Ascending lists.
pub(crate) fn symmetric_union(picks: &[Vec<usize>]) -> Vec<Vec<usize>> {
    let mut union = vec![Vec::new(); picks.len()];
    for (node, picked) in picks.iter().enumerate() {
        for &other in picked {
            union[node].push(other);
            union[other].push(node);
        }
    }
    for neighbours in &mut union {
        neighbours.sort_unstable();
        neighbours.dedup();
    }
    union
}

/// The `k` nodes nearest to `node` (ties to the lower index).
fn nearest(node: usize, k: usize, channel: &Channel) -> Vec<usize> {
    let positions = channel.positions();
    let mut others: Vec<(f64, usize)> = (0..positions.len())
        .filter(|&other| other != node)
        .map(|other| (positions[node].distance_m(&positions[other]), other))
        .collect();
    // A total order (distance, then index), so the k smallest are one set whichever
    // way they are found; selecting them is linear where sorting all is not.
    let order = |a: &(f64, usize), b: &(f64, usize)| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1));
    if k < others.len() {
        others.select_nth_unstable_by(k, order);
        others.truncate(k);
    }
    others.into_iter().map(|(_, other)| other).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::Position;
    use crate::propagation::Fading;
    use crate::radio::RadioParams;

    fn channel_at(points: &[(f64, f64)]) -> Channel {
        let params = RadioParams {
            shadowing_sigma_db: 0.0,
            fading: Fading::None,
            ..RadioParams::default()
        };
        let positions = points.iter().map(|&(x, y)| Position::new(x, y)).collect();
        Channel::new(0, params, positions).unwrap()
    }

    fn assert_symmetric(adjacency: &[Vec<usize>]) {
        for (i, neighbours) in adjacency.iter().enumerate() {
            for &j in neighbours {
                assert!(adjacency[j].contains(&i), "{i} -> {j} but not back: {adjacency:?}");
            }
        }
    }

    #[test]
    fn full_mesh_and_ring() {
        let channel = channel_at(&[(0.0, 0.0), (1.0, 0.0), (2.0, 0.0), (3.0, 0.0), (4.0, 0.0)]);
        assert_eq!(Topology::FullMesh.neighbours(2, &channel).unwrap(), [0, 1, 3, 4]);
        assert_eq!(
            Topology::Ring.adjacency(&channel).unwrap(),
            [vec![1, 4], vec![0, 2], vec![1, 3], vec![2, 4], vec![0, 3]]
        );
        let pair = channel_at(&[(0.0, 0.0), (1.0, 0.0)]);
        assert_eq!(Topology::Ring.adjacency(&pair).unwrap(), [vec![1], vec![0]]);
        let alone = channel_at(&[(0.0, 0.0)]);
        assert_eq!(Topology::Ring.adjacency(&alone).unwrap(), [Vec::<usize>::new()]);
    }

    /// Points at x = 0, 1, 3, 10 on a line. One nearest each: 0→1, 1→0, 2→1, 3→2.
    /// The union adds 1–2 and 2–3, so nobody is isolated; the intersection would keep
    /// only 0–1.
    #[test]
    fn k_nearest_is_the_symmetric_union() {
        let channel = channel_at(&[(0.0, 0.0), (1.0, 0.0), (3.0, 0.0), (10.0, 0.0)]);
        let adjacency = Topology::KNearest { k: 1 }.adjacency(&channel).unwrap();
        assert_eq!(adjacency, [vec![1], vec![0, 2], vec![1, 3], vec![2]]);
        assert_symmetric(&adjacency);
        let two = Topology::KNearest { k: 2 }.adjacency(&channel).unwrap();
        assert_symmetric(&two);
        assert!(two.iter().all(|n| n.len() >= 2));
        let all = Topology::KNearest { k: 10 }.adjacency(&channel).unwrap();
        assert_eq!(all, Topology::FullMesh.adjacency(&channel).unwrap());
    }

    /// The adjacency computed at once is, list for list, the per-node definition, on a
    /// grid (many distance ties) and on seeded random points.
    #[test]
    fn k_nearest_adjacency_is_the_per_node_definition() {
        let grid: Vec<(f64, f64)> = (0..25).map(|i| (f64::from(i % 5), f64::from(i / 5))).collect();
        let mut state = 7u64;
        let scattered: Vec<(f64, f64)> = (0..40)
            .map(|_| {
                let mut next = || {
                    state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    (state >> 11) as f64 / (1u64 << 53) as f64 * 500.0
                };
                (next(), next())
            })
            .collect();
        for points in [grid, scattered] {
            let channel = channel_at(&points);
            for k in [1, 2, 3, 4, 8, 100] {
                let topology = Topology::KNearest { k };
                let per_node: Vec<Vec<usize>> = (0..points.len())
                    .map(|n| topology.neighbours(n, &channel).unwrap())
                    .collect();
                assert_eq!(topology.adjacency(&channel).unwrap(), per_node, "k = {k}");
            }
        }
    }

    /// Mean SNR at the defaults without shadowing is −23 − 40·log10(d_km) dB:
    /// 17 dB at 100 m, 5 dB at 200 m, −2.1 dB at 300 m.
    #[test]
    fn radio_range_keeps_links_above_the_threshold() {
        let channel = channel_at(&[(0.0, 0.0), (100.0, 0.0), (200.0, 0.0), (300.0, 0.0)]);
        let topology = Topology::RadioRange { min_snr_db: 10.0 };
        let adjacency = topology.adjacency(&channel).unwrap();
        assert_eq!(adjacency, [vec![1], vec![0, 2], vec![1, 3], vec![2]]);
        let wide = Topology::RadioRange { min_snr_db: 0.0 }.adjacency(&channel).unwrap();
        assert_eq!(wide, [vec![1, 2], vec![0, 2, 3], vec![0, 1, 3], vec![1, 2]]);
    }

    #[test]
    fn radio_range_is_symmetric_under_shadowing() {
        let positions = (0..12)
            .map(|i| Position::new(f64::from(i % 4) * 60.0, f64::from(i / 4) * 60.0))
            .collect();
        let channel = Channel::new(9, RadioParams::default(), positions).unwrap();
        let adjacency = Topology::RadioRange { min_snr_db: 12.0 }.adjacency(&channel).unwrap();
        assert_symmetric(&adjacency);
    }

    #[test]
    fn bad_topologies_are_errors() {
        let channel = channel_at(&[(0.0, 0.0), (1.0, 0.0)]);
        let err = Topology::KNearest { k: 0 }.neighbours(0, &channel).unwrap_err();
        assert!(
            err.to_string().starts_with("channel.topology.k_nearest.k must be >= 1"),
            "{err}"
        );
        assert!(Topology::FullMesh.neighbours(2, &channel).is_err());
    }
}
