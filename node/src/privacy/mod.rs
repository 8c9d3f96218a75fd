//! Differential privacy of a node's training: DP-SGD ([`dpsgd`]) and its accountant
//! ([`accountant`]), so that everything a node releases (its predictions, or its
//! parameters under fedavg) is post-processing of an (ε, δ)-differentially private
//! model with respect to any one of its private examples.
//!
//! What the guarantee does not cover: the node's report to the coordinator carries its
//! training losses, which are computed on private batches (the experimenter's
//! instrument, not something a neighbour receives).

pub mod accountant;
pub mod dpsgd;

use candle_core::Tensor;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

use crate::plan::Privacy;
use crate::shard::Shard;
use crate::{Error, Result};
use dpsgd::DpSgd;

/// The largest noise multiplier a target ε may be met with: beyond it the gradient is
/// noise (a step at σ = 50 with C = 1 and a batch of 32 adds noise of norm ~1.5 per
/// coordinate), so a target that needs more is refused rather than trained toward.
pub const MAX_NOISE: f64 = 50.0;

/// A node's private training: its DP-SGD settings, its budget, and the secret
/// randomness its steps draw from.
pub struct PrivateTraining {
    pub dp: DpSgd,
    pub delta: f64,
    /// The node leaves before a round that would take it past this ε.
    pub budget: Option<f64>,
    /// DP-SGD steps per round (the plan's local steps).
    steps_per_round: u64,
    /// From the operating system, never the run seed (see [`dpsgd`]).
    rng: ChaCha20Rng,
}

impl std::fmt::Debug for PrivateTraining {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrivateTraining")
            .field("dp", &self.dp)
            .field("delta", &self.delta)
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

impl PrivateTraining {
    /// The private training of a node with `examples` private examples, an expected
    /// batch of `batch`, `steps_per_round` steps a round and `rounds` rounds planned;
    /// `None` when `settings` ask for no DP. With a budget and no noise multiplier, σ is
    /// the smallest that makes the budget last the planned rounds; a budget that cannot
    /// be met that way, or that one round already exceeds, is refused.
    pub fn new(
        settings: &Privacy,
        batch: usize,
        examples: usize,
        steps_per_round: u32,
        rounds: u32,
    ) -> Result<Option<Self>> {
        // DP-SGD runs with a noise multiplier, or a budget to derive one from.
        if settings.noise_multiplier == 0.0 && settings.epsilon == 0.0 {
            return Ok(None);
        }
        let q = (batch.min(examples.max(1))) as f64 / examples.max(1) as f64;
        let steps_per_round = u64::from(steps_per_round);
        let planned = steps_per_round * u64::from(rounds);
        let noise = if settings.noise_multiplier > 0.0 {
            settings.noise_multiplier
        } else {
            accountant::noise_for_epsilon(settings.epsilon, settings.delta, q, planned)
                .filter(|&sigma| sigma <= MAX_NOISE)
                .ok_or_else(|| {
                    Error::config(
                        "privacy.epsilon",
                        format!(
                            "ε = {} cannot be met over the planned {rounds} rounds ({planned} steps at sampling \
                             rate {q:.4}) with a noise multiplier up to {MAX_NOISE}: raise privacy.epsilon, \
                             or plan fewer rounds or train.local_steps",
                            settings.epsilon
                        ),
                    )
                })?
        };
        let dp = DpSgd::new(noise, settings.max_grad_norm, batch, examples)?;
        let budget = (settings.epsilon > 0.0).then_some(settings.epsilon);
        let training = PrivateTraining {
            dp,
            delta: settings.delta,
            budget,
            steps_per_round,
            rng: ChaCha20Rng::from_os_rng(),
        };
        if let Some(budget) = budget {
            let first = training.epsilon_after(1);
            if first > budget {
                return Err(Error::config(
                    "privacy.epsilon",
                    format!(
                        "one round already spends ε = {first:.3}, more than the budget {budget}: raise \
                         privacy.epsilon or privacy.noise_multiplier, or lower train.local_steps"
                    ),
                ));
            }
        }
        Ok(Some(training))
    }

    /// The ε spent once `rounds` rounds have trained (every round up to it counted,
    /// also one the node missed: an upper bound).
    pub fn epsilon_after(&self, rounds: u32) -> f64 {
        let steps = self.steps_per_round * u64::from(rounds);
        if steps == 0 {
            // Nothing trained, nothing spent (the RDP-to-(ε, δ) conversion alone would
            // say 0.1).
            return 0.0;
        }
        accountant::epsilon(self.dp.sample_rate, self.dp.noise_multiplier, steps, self.delta).0
    }

    /// Why the node must not train round `round` (numbered from 1): it would spend
    /// more than its budget. `None` while the budget allows it.
    pub fn spent_before(&self, round: u32) -> Option<String> {
        let budget = self.budget?;
        let after = self.epsilon_after(round);
        (after > budget).then(|| {
            format!(
                "privacy budget spent: round {round} would take ε to {after:.3}, past privacy.epsilon = {budget} \
                 (δ = {}); ε after round {} is {:.3}",
                self.delta,
                round - 1,
                self.epsilon_after(round - 1)
            )
        })
    }

    /// A step's Poisson batch from the shard's private rows (`None`: it took no row).
    pub fn batch(&mut self, shard: &Shard) -> Result<Option<(Tensor, Tensor)>> {
        let rows = dpsgd::poisson_batch(shard.private_len(), self.dp.sample_rate, &mut self.rng);
        if rows.is_empty() {
            return Ok(None);
        }
        shard.private_rows(&rows).map(Some)
    }

    /// The randomness a step's noise draws from.
    pub fn rng(&mut self) -> &mut ChaCha20Rng {
        &mut self.rng
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(noise_multiplier: f64, epsilon: f64) -> Privacy {
        Privacy {
            noise_multiplier,
            epsilon,
            ..Privacy::default()
        }
    }

    #[test]
    fn no_noise_and_no_budget_is_no_dp() {
        assert!(
            PrivateTraining::new(&settings(0.0, 0.0), 32, 6000, 20, 30)
                .unwrap()
                .is_none()
        );
    }

    /// The ε a node reports is the accountant's for its own sampling rate and the steps
    /// of the rounds so far.
    #[test]
    fn the_epsilon_is_the_accountants_for_the_rounds_so_far() {
        let p = PrivateTraining::new(&settings(1.1, 0.0), 64, 6400, 20, 30)
            .unwrap()
            .unwrap();
        assert_eq!(p.dp.sample_rate, 0.01);
        assert_eq!(p.epsilon_after(0), 0.0);
        for round in [1, 7, 30] {
            let expected = accountant::epsilon(0.01, 1.1, 20 * u64::from(round), 1e-5).0;
            assert_eq!(p.epsilon_after(round), expected);
        }
        assert!(p.epsilon_after(7) < p.epsilon_after(30));
        assert_eq!(p.spent_before(30), None, "no budget: never spent");
    }

    /// A budget with no noise multiplier gets the smallest σ that lasts the planned
    /// rounds: the last round fits, and the node is never stopped early.
    #[test]
    fn a_budget_alone_derives_the_noise_that_lasts_the_run() {
        let p = PrivateTraining::new(&settings(0.0, 3.0), 64, 6400, 20, 30)
            .unwrap()
            .unwrap();
        assert!(p.epsilon_after(30) <= 3.0, "{}", p.epsilon_after(30));
        assert!(
            p.epsilon_after(30) > 2.5,
            "σ is not larger than it needs to be: {}",
            p.epsilon_after(30)
        );
        assert_eq!(p.spent_before(30), None);
        assert!(p.spent_before(60).is_some(), "twice the planned rounds exceed it");
    }

    /// With both a noise multiplier and a budget, the node stops before the round that
    /// would exceed the budget, and says so with the figures.
    #[test]
    fn the_budget_stops_the_node_before_the_round_that_would_exceed_it() {
        let p = PrivateTraining::new(&settings(0.8, 2.0), 64, 6400, 20, 30)
            .unwrap()
            .unwrap();
        let last = (1..=30).take_while(|&r| p.epsilon_after(r) <= 2.0).last().unwrap();
        assert!(last < 30, "the budget runs out within the run at σ = 0.8");
        assert_eq!(p.spent_before(last), None);
        let reason = p.spent_before(last + 1).unwrap();
        assert!(
            reason.contains("privacy budget spent") && reason.contains("privacy.epsilon = 2"),
            "{reason}"
        );
    }

    #[test]
    fn a_budget_that_cannot_be_met_is_refused_naming_the_field() {
        // One round at σ = 0.5 already spends far more than 0.1.
        let e = PrivateTraining::new(&settings(0.5, 0.1), 64, 640, 20, 30)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("privacy.epsilon") && e.contains("one round already spends"),
            "{e}"
        );
        // Derived, ε = 1e-4 over 30 rounds would need σ far above the bound.
        let e = PrivateTraining::new(&settings(0.0, 1e-4), 64, 640, 20, 30)
            .unwrap_err()
            .to_string();
        assert!(e.contains("privacy.epsilon") && e.contains("cannot be met"), "{e}");
    }
}
