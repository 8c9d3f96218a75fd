//! Where the devices are: positions and how a run places them.

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, ensure, ensure_finite, ensure_positive};
use crate::rng::{SplitMix64, Stream};

/// A device's position on the plane, in metres.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Position {
    /// East coordinate, m.
    pub x_m: f64,
    /// North coordinate, m.
    pub y_m: f64,
}

impl Position {
    /// The position `(x_m, y_m)`.
    pub fn new(x_m: f64, y_m: f64) -> Self {
        Self { x_m, y_m }
    }

    /// Euclidean distance to `other`, m.
    pub fn distance_m(&self, other: &Position) -> f64 {
        (self.x_m - other.x_m).hypot(self.y_m - other.y_m)
    }
}

/// How a run places its devices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Placement {
    /// Given positions, one per node in node order.
    Explicit {
        /// The positions.
        positions: Vec<Position>,
    },
    /// Independent uniform positions in the square `[0, area_m]²`, drawn from the run seed.
    UniformSquare {
        /// Side of the square, m.
        area_m: f64,
    },
}

impl Placement {
    /// Checks the placement on its own (the node count is checked by [`Placement::positions`]).
    pub fn validate(&self) -> Result<()> {
        match self {
            Placement::Explicit { positions } => {
                ensure(
                    !positions.is_empty(),
                    "channel.positions",
                    "must list at least one position",
                    "[]",
                )?;
                for (index, position) in positions.iter().enumerate() {
                    ensure_finite(position.x_m, &format!("channel.positions[{index}].x_m"))?;
                    ensure_finite(position.y_m, &format!("channel.positions[{index}].y_m"))?;
                }
                Ok(())
            }
            Placement::UniformSquare { area_m } => ensure_positive(*area_m, "channel.area_m"),
        }
    }

    /// The positions of `nodes` devices for the run seeded by `run_seed`.
    ///
    /// A uniform placement draws node `i`'s position from its own stream, so adding a
    /// node to a run does not move the others.
    pub fn positions(&self, run_seed: u64, nodes: usize) -> Result<Vec<Position>> {
        self.validate()?;
        match self {
            Placement::Explicit { positions } => {
                if positions.len() != nodes {
                    return Err(Error::PositionCount {
                        given: positions.len(),
                        nodes,
                    });
                }
                Ok(positions.clone())
            }
            Placement::UniformSquare { area_m } => Ok((0..nodes)
                .map(|node| {
                    let mut rng = SplitMix64::for_stream(run_seed, Stream::Placement, &[node as u64]);
                    let x_m = area_m * rng.random::<f64>();
                    let y_m = area_m * rng.random::<f64>();
                    Position { x_m, y_m }
                })
                .collect()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance_is_euclidean() {
        let a = Position::new(0.0, 0.0);
        let b = Position::new(3.0, 4.0);
        assert_eq!(a.distance_m(&b), 5.0);
        assert_eq!(b.distance_m(&a), 5.0);
    }

    #[test]
    fn uniform_placement_is_seeded_inside_the_area_and_stable_under_growth() {
        let placement = Placement::UniformSquare { area_m: 100.0 };
        let five = placement.positions(42, 5).unwrap();
        let eight = placement.positions(42, 8).unwrap();
        assert_eq!(five, eight[..5]);
        assert_eq!(five, placement.positions(42, 5).unwrap());
        assert_ne!(five, placement.positions(43, 5).unwrap());
        for p in &eight {
            assert!((0.0..100.0).contains(&p.x_m) && (0.0..100.0).contains(&p.y_m));
        }
    }

    #[test]
    fn explicit_placement_must_match_the_node_count() {
        let placement = Placement::Explicit {
            positions: vec![Position::new(0.0, 0.0), Position::new(1.0, 0.0)],
        };
        assert_eq!(placement.positions(0, 2).unwrap().len(), 2);
        assert_eq!(
            placement.positions(0, 3),
            Err(Error::PositionCount { given: 2, nodes: 3 })
        );
    }

    #[test]
    fn bad_placements_name_the_field() {
        let err = Placement::UniformSquare { area_m: 0.0 }.validate().unwrap_err();
        assert!(err.to_string().starts_with("channel.area_m must be > 0"), "{err}");
        let err = Placement::Explicit {
            positions: vec![Position::new(0.0, f64::NAN)],
        }
        .validate()
        .unwrap_err();
        assert!(err.to_string().starts_with("channel.positions[0].y_m"), "{err}");
    }
}
