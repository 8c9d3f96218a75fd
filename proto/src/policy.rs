//! When a round closes and how old a neighbour's message may be: the rules the
//! coordinator (which closes rounds) and the nodes (which wait for their neighbours
//! and weigh their messages) must read the same way, from the run settings.

use crate::{RoundPolicy, RunSettings};

/// The most rounds a message may be late and still be used: each costs a remembered
/// round token and a message per neighbour on every node.
pub const MAX_STALENESS: u32 = 64;

/// How a round closes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Closing {
    /// When every live, awaited node reported (or the round timeout).
    Sync,
    /// When `ceil(fraction × awaited)` reported, plus `grace_s` emulated seconds (or
    /// everyone, if sooner).
    Quorum { fraction: f64, grace_s: f64 },
    /// `deadline_s` emulated seconds after the start (or everyone, if sooner).
    Deadline { deadline_s: f64 },
}

impl Closing {
    /// Reads and checks the policy; an error names the scenario field.
    pub fn from_settings(s: &RunSettings) -> Result<Self, (&'static str, String)> {
        match RoundPolicy::try_from(s.round_policy) {
            Ok(RoundPolicy::Sync) => Ok(Closing::Sync),
            Ok(RoundPolicy::Quorum) => {
                if !(s.quorum > 0.0 && s.quorum <= 1.0) {
                    return Err((
                        "coordinator.quorum",
                        format!("must be a fraction in (0, 1], got {}", s.quorum),
                    ));
                }
                if !(s.grace_s.is_finite() && s.grace_s >= 0.0) {
                    return Err((
                        "coordinator.grace_s",
                        format!("must be a finite number of seconds >= 0, got {}", s.grace_s),
                    ));
                }
                Ok(Closing::Quorum {
                    fraction: s.quorum,
                    grace_s: s.grace_s,
                })
            }
            Ok(RoundPolicy::Deadline) => {
                if !(s.deadline_s.is_finite() && s.deadline_s > 0.0) {
                    return Err((
                        "coordinator.deadline_s",
                        format!(
                            "the deadline policy needs a finite number of emulated seconds > 0, got {}",
                            s.deadline_s
                        ),
                    ));
                }
                Ok(Closing::Deadline {
                    deadline_s: s.deadline_s,
                })
            }
            _ => Err((
                "coordinator.round_policy",
                format!(
                    "unknown round policy {}; expected sync, quorum or deadline",
                    s.round_policy
                ),
            )),
        }
    }

    /// How many of `awaited` nodes' reports make the quorum (all of them under the
    /// other policies).
    pub fn needed(&self, awaited: usize) -> usize {
        match *self {
            Closing::Quorum { fraction, .. } => ((fraction * awaited as f64).ceil() as usize).clamp(1, awaited.max(1)),
            _ => awaited,
        }
    }

    /// The emulated time a round lasted, from the emulated finishing times of the nodes
    /// that reported (`reported`, any order) and whether every awaited node did.
    pub fn emulated_span(&self, reported: &[f64], awaited: usize) -> f64 {
        let last = reported.iter().copied().fold(0.0, f64::max);
        let everyone = reported.len() >= awaited;
        match *self {
            Closing::Sync => last,
            _ if everyone => last,
            Closing::Quorum { grace_s, .. } => {
                let mut sorted = reported.to_vec();
                sorted.sort_by(f64::total_cmp);
                match sorted.get(self.needed(awaited).saturating_sub(1)) {
                    // The quorum's last report, the grace, and anyone counted meanwhile.
                    Some(&quorum) if reported.len() >= self.needed(awaited) => (quorum + grace_s).max(last),
                    // The round timeout came first.
                    _ => last,
                }
            }
            Closing::Deadline { deadline_s } => deadline_s.max(last),
        }
    }
}

/// How a neighbour's message from an earlier round is used.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Staleness {
    /// The most rounds old a message may be (0: only the current round's).
    pub max: u32,
    /// `a` in the weight `(1 + age)^-a`: FedAsync's polynomial staleness function
    /// (Xie, Koyejo & Gupta 2019, "Asynchronous Federated Optimization", s(t − τ) =
    /// (t − τ + 1)^-a); 0 weighs every usable message alike.
    pub decay: f64,
}

impl Staleness {
    pub fn from_settings(s: &RunSettings) -> Result<Self, (&'static str, String)> {
        if s.max_staleness > MAX_STALENESS {
            return Err((
                "exchange.max_staleness",
                format!("must be at most {MAX_STALENESS} rounds, got {}", s.max_staleness),
            ));
        }
        if !(s.staleness_decay.is_finite() && (0.0..=16.0).contains(&s.staleness_decay)) {
            return Err((
                "exchange.staleness_decay",
                format!("must be between 0 and 16, got {}", s.staleness_decay),
            ));
        }
        Ok(Staleness {
            max: s.max_staleness,
            decay: s.staleness_decay,
        })
    }

    /// The weight of a message `age` rounds old (1 for the current round's); `None`
    /// beyond `max`.
    pub fn weight(&self, age: u32) -> Option<f64> {
        (age <= self.max).then(|| (1.0 + f64::from(age)).powf(-self.decay))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(policy: RoundPolicy) -> RunSettings {
        let mut s = RunSettings {
            quorum: 0.75,
            grace_s: 0.5,
            deadline_s: 3.0,
            staleness_decay: 0.5,
            max_staleness: 2,
            ..RunSettings::default()
        };
        s.set_round_policy(policy);
        s
    }

    #[test]
    fn a_quorum_is_the_fraction_rounded_up_and_closes_after_its_grace() {
        let quorum = Closing::from_settings(&settings(RoundPolicy::Quorum)).unwrap();
        assert_eq!((quorum.needed(8), quorum.needed(3), quorum.needed(1)), (6, 3, 1));
        // 8 awaited, 6 reported: the 6th-fastest (2.0) plus the grace.
        let reported = [1.0, 1.5, 1.2, 2.0, 1.1, 1.9];
        assert_eq!(quorum.emulated_span(&reported, 8), 2.5);
        // Everyone in: the last one.
        assert_eq!(quorum.emulated_span(&[1.0, 4.0], 2), 4.0);
        let sync = Closing::from_settings(&settings(RoundPolicy::Sync)).unwrap();
        assert_eq!(sync.needed(8), 8);
        assert_eq!(sync.emulated_span(&reported, 8), 2.0);
        let deadline = Closing::from_settings(&settings(RoundPolicy::Deadline)).unwrap();
        assert_eq!(deadline.emulated_span(&reported, 8), 3.0);
        assert_eq!(
            deadline.emulated_span(&[1.0, 1.5], 2),
            1.5,
            "all in before the deadline"
        );
    }

    #[test]
    fn bad_policies_name_their_field() {
        let field = |s: RunSettings| Closing::from_settings(&s).unwrap_err().0;
        assert_eq!(field(RunSettings::default()), "coordinator.round_policy");
        let mut s = settings(RoundPolicy::Quorum);
        s.quorum = 0.0;
        assert_eq!(field(s), "coordinator.quorum");
        let mut s = settings(RoundPolicy::Quorum);
        s.grace_s = f64::NAN;
        assert_eq!(field(s), "coordinator.grace_s");
        let mut s = settings(RoundPolicy::Deadline);
        s.deadline_s = 0.0;
        assert_eq!(field(s), "coordinator.deadline_s");
        let mut s = settings(RoundPolicy::Sync);
        s.max_staleness = MAX_STALENESS + 1;
        assert_eq!(Staleness::from_settings(&s).unwrap_err().0, "exchange.max_staleness");
    }

    #[test]
    fn staleness_weights_decay_polynomially_and_stop_at_the_bound() {
        let s = Staleness::from_settings(&settings(RoundPolicy::Sync)).unwrap();
        assert_eq!(s.weight(0), Some(1.0));
        assert_eq!(s.weight(1), Some(0.5f64.sqrt()));
        assert_eq!(s.weight(2), Some(3f64.powf(-0.5)));
        assert_eq!(s.weight(3), None);
    }
}
