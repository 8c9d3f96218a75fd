//! Devices that move: where each node is at an emulated time, and the shadowing that
//! changes as they go.
//!
//! - [`Mobility::Static`]: the placement's positions for the whole run.
//! - [`Mobility::RandomWaypoint`]: each node walks from its placed position to a waypoint
//!   drawn uniformly in the square `[0, area_m]²`, at a speed drawn uniformly in
//!   `[speed_min_mps, speed_max_mps]`, pauses `pause_s`, and draws again (Johnson &
//!   Maltz 1996); every draw comes from the node's own stream of the run seed.
//! - [`Mobility::Trace`]: measured positions (`time_s, node, x_m, y_m` rows), linearly
//!   interpolated; before its first sample a node is at its first sample, after its last
//!   at its last; a node without samples stays where the placement put it.
//!
//! Shadowing follows Gudmundson's model (Electronics Letters 27(23), 1991): the
//! shadowing of a link is a Gauss–Markov process in the distance its ends move, with
//! correlation `exp(−Δd / d_c)` over a displacement `Δd`. It is sampled every
//! [`SHADOWING_STEP_S`] emulated seconds along the trajectories, `Δd` being the sum of
//! both ends' displacements in the step; a link whose ends do not move keeps the
//! static model's value exactly. The default `d_c` = 8.3 m is Gudmundson's
//! microcellular measurement (correlation 0.3 at 10 m).

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, ensure, ensure_finite, ensure_non_negative, ensure_positive};
use crate::geometry::Position;
use crate::propagation::draw_shadowing_db;
use crate::rng::{SplitMix64, Stream};

/// How often the shadowing process is sampled along the trajectories, emulated s.
pub const SHADOWING_STEP_S: f64 = 1.0;

/// Gudmundson's microcellular decorrelation distance: `exp(−10 / d_c) = 0.3`.
pub const DEFAULT_DECORRELATION_M: f64 = 8.3;

/// The longest emulated time a position can be asked for (about 11.6 days): bounds the
/// work of replaying a trajectory.
pub const MAX_TIME_S: f64 = 1e6;

/// How the devices move.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Mobility {
    /// They do not.
    #[default]
    Static,
    /// Seeded random waypoint.
    RandomWaypoint(RandomWaypoint),
    /// Measured positions.
    Trace(Trace),
}

/// Random waypoint parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RandomWaypoint {
    /// Slowest walking speed, m/s (> 0: a speed near 0 would strand a node on one leg).
    pub speed_min_mps: f64,
    /// Fastest, m/s (≥ `speed_min_mps`).
    pub speed_max_mps: f64,
    /// Pause at each waypoint, s.
    #[serde(default)]
    pub pause_s: f64,
    /// Side of the square the waypoints are drawn in, m (default: the placement's area).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub area_m: Option<f64>,
}

/// A measured trace.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trace {
    /// The CSV file it was read from (`time_s,node,x_m,y_m`), for the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Its samples (filled from `file` when the scenario is loaded).
    #[serde(default)]
    pub samples: Vec<TraceSample>,
}

/// One position of one node at one time.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceSample {
    pub time_s: f64,
    pub node: usize,
    pub x_m: f64,
    pub y_m: f64,
}

impl Trace {
    /// Parses a CSV trace: a header line naming `time_s,node,x_m,y_m` (in that order),
    /// then one sample per line; `#` starts a comment. Errors name the line.
    pub fn parse_csv(text: &str) -> Result<Vec<TraceSample>> {
        let bad =
            |line: usize, why: String| Error::invalid("channel.mobility.trace", format!("line {line}: {why}"), "");
        let mut samples = Vec::new();
        let mut header = false;
        for (index, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            if !header {
                if fields != ["time_s", "node", "x_m", "y_m"] {
                    return Err(bad(
                        index + 1,
                        format!("expected the header time_s,node,x_m,y_m, got {line:?}"),
                    ));
                }
                header = true;
                continue;
            }
            if fields.len() != 4 {
                return Err(bad(index + 1, format!("expected 4 fields, got {}", fields.len())));
            }
            let number = |i: usize, name: &str| -> Result<f64> {
                fields[i]
                    .parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite())
                    .ok_or_else(|| bad(index + 1, format!("{name} {:?} is not a finite number", fields[i])))
            };
            let node = fields[1]
                .parse::<usize>()
                .map_err(|_| bad(index + 1, format!("node {:?} is not a node index", fields[1])))?;
            samples.push(TraceSample {
                time_s: number(0, "time_s")?,
                node,
                x_m: number(2, "x_m")?,
                y_m: number(3, "y_m")?,
            });
        }
        if !header {
            return Err(bad(0, "empty trace: expected the header time_s,node,x_m,y_m".into()));
        }
        Ok(samples)
    }

    /// Where `node` is at `t`, if the trace has samples of it.
    fn position(&self, node: usize, t: f64) -> Option<Position> {
        let mut before: Option<&TraceSample> = None;
        let mut after: Option<&TraceSample> = None;
        for s in self.samples.iter().filter(|s| s.node == node) {
            if s.time_s <= t && before.is_none_or(|b| s.time_s >= b.time_s) {
                before = Some(s);
            }
            if s.time_s >= t && after.is_none_or(|a| s.time_s < a.time_s) {
                after = Some(s);
            }
        }
        let at = |s: &TraceSample| Position::new(s.x_m, s.y_m);
        match (before, after) {
            (Some(b), Some(a)) if a.time_s > b.time_s => {
                let f = (t - b.time_s) / (a.time_s - b.time_s);
                Some(Position::new(b.x_m + f * (a.x_m - b.x_m), b.y_m + f * (a.y_m - b.y_m)))
            }
            (Some(s), _) | (None, Some(s)) => Some(at(s)),
            (None, None) => None,
        }
    }
}

impl Mobility {
    /// Checks the parameters (a random waypoint's area must be resolved first).
    pub fn validate(&self) -> Result<()> {
        match self {
            Mobility::Static => Ok(()),
            Mobility::RandomWaypoint(w) => {
                ensure_positive(w.speed_min_mps, "channel.mobility.random_waypoint.speed_min_mps")?;
                ensure_finite(w.speed_max_mps, "channel.mobility.random_waypoint.speed_max_mps")?;
                ensure(
                    w.speed_max_mps >= w.speed_min_mps,
                    "channel.mobility.random_waypoint.speed_max_mps",
                    "must be at least speed_min_mps",
                    w.speed_max_mps,
                )?;
                ensure_non_negative(w.pause_s, "channel.mobility.random_waypoint.pause_s")?;
                ensure_finite(w.pause_s, "channel.mobility.random_waypoint.pause_s")?;
                if let Some(area) = w.area_m {
                    ensure_positive(area, "channel.mobility.random_waypoint.area_m")?;
                }
                Ok(())
            }
            Mobility::Trace(trace) => {
                if trace.samples.is_empty() {
                    return Err(Error::invalid(
                        "channel.mobility.trace",
                        "has no samples",
                        trace.file.clone().unwrap_or_default(),
                    ));
                }
                for (i, s) in trace.samples.iter().enumerate() {
                    ensure_non_negative(s.time_s, &format!("channel.mobility.trace sample {i} time_s"))?;
                    ensure_finite(s.x_m, &format!("channel.mobility.trace sample {i} x_m"))?;
                    ensure_finite(s.y_m, &format!("channel.mobility.trace sample {i} y_m"))?;
                }
                Ok(())
            }
        }
    }

    /// Whether anything moves.
    pub fn is_static(&self) -> bool {
        matches!(self, Mobility::Static)
    }

    /// Every node's position at emulated time `t`, from their placed positions `start`.
    pub fn positions_at(&self, run_seed: u64, start: &[Position], t: f64) -> Result<Vec<Position>> {
        ensure_non_negative(t, "emulated time")?;
        ensure(
            t <= MAX_TIME_S,
            "emulated time",
            "is beyond what a trajectory is replayed for",
            t,
        )?;
        if let Mobility::Trace(trace) = self
            && let Some(bad) = trace.samples.iter().find(|s| s.node >= start.len())
        {
            return Err(Error::invalid(
                "channel.mobility.trace",
                format!("names node {}, but the run has {} nodes", bad.node, start.len()),
                trace.file.clone().unwrap_or_default(),
            ));
        }
        Ok(start
            .iter()
            .enumerate()
            .map(|(node, &from)| match self {
                Mobility::Static => from,
                Mobility::RandomWaypoint(w) => waypoint_position(w, run_seed, node, from, t),
                Mobility::Trace(trace) => trace.position(node, t).unwrap_or(from),
            })
            .collect())
    }
}

/// Node `node`'s position at `t` on its random-waypoint walk from `from`.
fn waypoint_position(w: &RandomWaypoint, run_seed: u64, node: usize, from: Position, t: f64) -> Position {
    let area = w.area_m.expect("resolved");
    let mut rng = SplitMix64::for_stream(run_seed, Stream::Mobility, &[node as u64]);
    let (mut at, mut now) = (from, 0.0);
    loop {
        let to = Position::new(area * rng.random::<f64>(), area * rng.random::<f64>());
        let speed = w.speed_min_mps + (w.speed_max_mps - w.speed_min_mps) * rng.random::<f64>();
        let leg = at.distance_m(&to) / speed;
        if now + leg >= t {
            let f = if leg > 0.0 { (t - now) / leg } else { 1.0 };
            return Position::new(at.x_m + f * (to.x_m - at.x_m), at.y_m + f * (to.y_m - at.y_m));
        }
        now += leg;
        at = to;
        if now + w.pause_s >= t {
            return at;
        }
        now += w.pause_s;
    }
}

/// The devices' trajectories sampled every [`SHADOWING_STEP_S`] up to an emulated time:
/// what the shadowing of a moving link needs.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Motion {
    /// Positions at 0, one step, two steps, … up to the time asked for.
    grid: Vec<Vec<Position>>,
    decorrelation_m: f64,
}

impl Motion {
    pub(crate) fn new(
        mobility: &Mobility,
        run_seed: u64,
        start: &[Position],
        t: f64,
        decorrelation_m: f64,
    ) -> Result<Self> {
        let steps = (t / SHADOWING_STEP_S).floor() as usize;
        let grid = (0..=steps)
            .map(|k| mobility.positions_at(run_seed, start, k as f64 * SHADOWING_STEP_S))
            .collect::<Result<_>>()?;
        Ok(Motion { grid, decorrelation_m })
    }

    /// The shadowing of the link between `low` and `high` (`low < high`) now: the static
    /// draw at time 0, then one Gauss–Markov step per sample of the trajectories.
    pub(crate) fn shadowing_db(&self, run_seed: u64, sigma_db: f64, low: usize, high: usize, start_db: f64) -> f64 {
        let mut shadowing = start_db;
        for k in 1..self.grid.len() {
            let moved = self.grid[k][low].distance_m(&self.grid[k - 1][low])
                + self.grid[k][high].distance_m(&self.grid[k - 1][high]);
            if moved == 0.0 {
                continue;
            }
            let rho = (-moved / self.decorrelation_m).exp();
            let mut rng = SplitMix64::for_stream(run_seed, Stream::Shadowing, &[low as u64, high as u64, k as u64]);
            shadowing = rho * shadowing + (1.0 - rho * rho).sqrt() * draw_shadowing_db(sigma_db, &mut rng);
        }
        shadowing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk(min: f64, max: f64, pause: f64) -> Mobility {
        Mobility::RandomWaypoint(RandomWaypoint {
            speed_min_mps: min,
            speed_max_mps: max,
            pause_s: pause,
            area_m: Some(100.0),
        })
    }

    fn start() -> Vec<Position> {
        vec![
            Position::new(10.0, 10.0),
            Position::new(50.0, 90.0),
            Position::new(99.0, 0.5),
        ]
    }

    #[test]
    fn random_waypoint_stays_in_its_area_keeps_its_speed_and_is_seeded() {
        let mobility = walk(1.0, 15.0, 2.0);
        let dt = 0.25;
        let mut last = start();
        for k in 1..=4000 {
            let now = mobility.positions_at(7, &start(), k as f64 * dt).unwrap();
            for (p, q) in now.iter().zip(&last) {
                assert!(
                    (0.0..=100.0).contains(&p.x_m) && (0.0..=100.0).contains(&p.y_m),
                    "{p:?}"
                );
                // Never faster than the fastest speed (a little slack for rounding).
                assert!(p.distance_m(q) <= 15.0 * dt + 1e-9, "{p:?} from {q:?}");
            }
            last = now;
        }
        let t = 123.4;
        assert_eq!(
            mobility.positions_at(7, &start(), t).unwrap(),
            mobility.positions_at(7, &start(), t).unwrap()
        );
        assert_ne!(
            mobility.positions_at(7, &start(), t).unwrap(),
            mobility.positions_at(8, &start(), t).unwrap()
        );
        // They do move, and they start where they were placed.
        assert_ne!(mobility.positions_at(7, &start(), t).unwrap(), start());
        assert_eq!(mobility.positions_at(7, &start(), 0.0).unwrap(), start());
    }

    #[test]
    fn a_trace_is_interpolated_and_held_at_its_ends() {
        let text = "# a walk\ntime_s,node,x_m,y_m\n0,1,0,0\n10,1,100,0 # ten metres a second\n";
        let samples = Trace::parse_csv(text).unwrap();
        let mobility = Mobility::Trace(Trace { file: None, samples });
        mobility.validate().unwrap();
        let at = |t| mobility.positions_at(1, &start(), t).unwrap();
        assert_eq!(at(5.0)[1], Position::new(50.0, 0.0));
        assert_eq!(at(20.0)[1], Position::new(100.0, 0.0));
        assert_eq!(at(0.0)[1], Position::new(0.0, 0.0));
        // A node the trace does not name stays put.
        assert_eq!(at(5.0)[0], start()[0]);
        let error = Trace::parse_csv("time_s,node,x_m,y_m\n1,x,0,0\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("line 2") && error.contains("node \"x\""), "{error}");
        assert!(
            Trace::parse_csv("t,n,x,y\n")
                .unwrap_err()
                .to_string()
                .contains("header")
        );
        let beyond = Mobility::Trace(Trace {
            file: None,
            samples: Trace::parse_csv("time_s,node,x_m,y_m\n0,5,0,0\n").unwrap(),
        });
        assert!(
            beyond
                .positions_at(1, &start(), 1.0)
                .unwrap_err()
                .to_string()
                .contains("node 5")
        );
    }

    #[test]
    fn bad_walks_name_the_field() {
        let field = |m: Mobility| m.validate().unwrap_err().to_string();
        assert!(field(walk(0.0, 1.0, 0.0)).contains("speed_min_mps"));
        assert!(field(walk(2.0, 1.0, 0.0)).contains("speed_max_mps"));
        assert!(field(walk(1.0, 2.0, -1.0)).contains("pause_s"));
    }

    #[test]
    fn shadowing_decorrelates_with_the_distance_moved_as_gudmundson_says() {
        // Two nodes walking apart along x, each 1 m per step: Δd = 2 m a step.
        let samples: Vec<TraceSample> = [(0.0, 0, 0.0), (1000.0, 0, -1000.0), (0.0, 1, 1.0), (1000.0, 1, 1001.0)]
            .iter()
            .map(|&(time_s, node, x_m)| TraceSample {
                time_s,
                node,
                x_m,
                y_m: 0.0,
            })
            .collect();
        let mobility = Mobility::Trace(Trace { file: None, samples });
        let start = vec![Position::new(0.0, 0.0), Position::new(1.0, 0.0)];
        let motion = Motion::new(&mobility, 3, &start, 1000.0, 8.3).unwrap();
        // Over many seeds, the correlation between the shadowing at 0 and after k steps
        // is exp(−2k / 8.3).
        for k in [1usize, 4] {
            let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
            for seed in 0..4000u64 {
                let mut rng = SplitMix64::for_stream(seed, Stream::Shadowing, &[0, 1]);
                let s0 = draw_shadowing_db(8.0, &mut rng);
                let partial = Motion {
                    grid: motion.grid[..=k].to_vec(),
                    decorrelation_m: 8.3,
                };
                let sk = partial.shadowing_db(seed, 8.0, 0, 1, s0);
                sxy += s0 * sk;
                sxx += s0 * s0;
                syy += sk * sk;
            }
            let correlation = sxy / (sxx * syy).sqrt();
            let expected = (-(2.0 * k as f64) / 8.3).exp();
            assert!(
                (correlation - expected).abs() < 0.05,
                "k {k}: {correlation} vs {expected}"
            );
            // The spread stays σ.
            assert!(((syy / 4000.0).sqrt() - 8.0).abs() < 0.4);
        }
        // Nobody moves: the static value, exactly.
        let still = Motion::new(&Mobility::Static, 3, &start, 50.0, 8.3).unwrap();
        assert_eq!(still.shadowing_db(3, 8.0, 0, 1, 1.234), 1.234);
    }
}
