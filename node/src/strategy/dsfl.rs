//! `dsfl`: DS-FL, decentralised. Itahara, S., Nishio, T., Koda, Y., Morikura, M. and
//! Yamamoto, K., "Distillation-Based Semi-Supervised Federated Learning for
//! Communication-Efficient Collaborative Training with Non-IID Private Data", IEEE
//! Transactions on Mobile Computing 22(1), 2023 (online 2021), arXiv:2008.06180.
//!
//! Each round every device predicts on the unlabelled open dataset (here the round's
//! public batch); the predictions are aggregated by Entropy Reduction Aggregation (ERA,
//! "entropy reduction averaging" in the preprint): the mean of the probability vectors,
//! sharpened by a softmax with a temperature below 1,
//!
//! ```text
//! ERA(p_1 … p_n) = softmax( (1/n · Σ_j p_j) / T_era )
//! ```
//!
//! and each device trains on the open set toward that target (distillation), then on
//! its private data. Here there is no server: a node's ERA is over its own predictions
//! and those of the neighbours it heard this round; the distillation is
//! `train.public_steps` steps (`train.local_steps` by default) of
//! `KL(ERA ‖ softmax(z))` ([`PublicLoss::Kl`], whose gradient is that of the paper's
//! cross-entropy with the soft ERA labels), the private training `train.local_steps`
//! steps (the round's flow: [`super::consensus`]).
//!
//! **Probabilities.** The wire carries logits (in the run's encoding); the receiver
//! turns each set into the model's output distribution, `softmax(z)` at temperature 1,
//! as the paper's devices send their softmax outputs. `train.temperature` and
//! `train.kl_weight` play no part; `train.aggregate` must be `mean`. The ERA
//! temperature is `train.era_temperature` (default 0.1, the paper's); at 1 the target is
//! `softmax(mean)` of the probabilities, which is *flatter* than the mean, so the plan
//! accepts only (0, 1].

use super::consensus::{self, check_predictions};
use super::dml::predictions_view;
use super::{Losses, Strategy};
use crate::Result;
use crate::audit::Sent;
use crate::learn::{Aggregate, PublicLoss, soft_targets};
use crate::model::ModelSpec;
use crate::plan::RunPlan;
use crate::round::{Node, Round};
use wdml_proto::StartRound;

pub(crate) struct Dsfl;

impl Strategy for Dsfl {
    fn flops_before_exchange(&self, plan: &RunPlan, model: &ModelSpec) -> u64 {
        consensus::flops_before_exchange(plan, model)
    }

    fn flops_after_exchange(&self, plan: &RunPlan, model: &ModelSpec) -> u64 {
        consensus::flops_after_exchange(plan, model)
    }

    fn public_alone(&self) -> bool {
        true
    }

    fn neighbours_view(&self, _node: &Node, _start: &StartRound, sent: &[f32]) -> Result<Option<(Sent, Vec<f32>)>> {
        Ok(predictions_view(sent))
    }

    async fn learn(&self, node: &mut Node, round: &mut Round<'_>) -> Result<Losses> {
        consensus::learn(node, round, PublicLoss::Kl, |plan, sets| {
            era(sets, plan.public_batch, plan.classes(), plan.era_temperature)
        })
        .await
    }
}

/// DS-FL's Entropy Reduction Aggregation of `sets` (each `rows × classes` logits,
/// row-major, own first): per row, `softmax(mean_j softmax(z_j) / temperature)`, in
/// `f64`; every row sums to 1.
pub(crate) fn era(sets: &[&[f32]], rows: usize, classes: usize, temperature: f64) -> Result<Vec<f32>> {
    check_predictions(sets, rows * classes)?;
    if !(temperature.is_finite() && temperature > 0.0) {
        return Err(crate::learn::invalid(format!(
            "the ERA temperature must be positive and finite, got {temperature}"
        )));
    }
    // The mean of the model outputs softmax(z) (temperature 1), each row a distribution.
    let mean = soft_targets(sets, rows, classes, 1.0, Aggregate::Mean)?;
    let mut out = Vec::with_capacity(mean.len());
    for row in mean.chunks_exact(classes) {
        let scaled: Vec<f64> = row.iter().map(|&p| f64::from(p) / temperature).collect();
        let max = scaled.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let exp: Vec<f64> = scaled.iter().map(|s| (s - max).exp()).collect();
        let sum: f64 = exp.iter().sum();
        out.extend(exp.iter().map(|e| (e / sum) as f32));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entropy(row: &[f32]) -> f64 {
        row.iter()
            .filter(|&&p| p > 0.0)
            .map(|&p| -f64::from(p) * f64::from(p).ln())
            .sum()
    }

    fn softmax(z: &[f64]) -> Vec<f64> {
        let e: Vec<f64> = z.iter().map(|x| x.exp()).collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|x| x / s).collect()
    }

    /// Three nodes' logits on two rows of four classes.
    const OWN: [f32; 8] = [2.0, 1.0, 0.0, -1.0, 0.0, 0.5, 0.2, 0.1];
    const A: [f32; 8] = [1.5, 1.8, 0.0, -0.5, -1.0, 0.3, 0.0, 0.4];
    const B: [f32; 8] = [0.5, 0.0, 1.0, 0.0, 0.2, 2.0, -0.5, 0.0];

    /// T = 1 is softmax of the mean of the softmax outputs, by hand.
    #[test]
    fn at_temperature_one_era_is_the_softmax_of_the_mean_probabilities() {
        let got = era(&[&OWN, &A, &B], 2, 4, 1.0).unwrap();
        for r in 0..2 {
            let probs: Vec<Vec<f64>> = [&OWN, &A, &B]
                .iter()
                .map(|s| softmax(&s[4 * r..4 * r + 4].iter().map(|&v| f64::from(v)).collect::<Vec<_>>()))
                .collect();
            let mean: Vec<f64> = (0..4).map(|c| probs.iter().map(|p| p[c]).sum::<f64>() / 3.0).collect();
            let expected = softmax(&mean);
            for c in 0..4 {
                assert!(
                    (f64::from(got[4 * r + c]) - expected[c]).abs() < 1e-6,
                    "{got:?} vs {expected:?}"
                );
            }
        }
    }

    /// Rows are distributions; a lower temperature lowers the entropy, keeps the
    /// mean's choice, and the paper's 0.1 is sharper than the plain mean.
    #[test]
    fn sharpening_lowers_the_entropy_and_keeps_the_choice() {
        let sets: [&[f32]; 3] = [&OWN, &A, &B];
        let mean = soft_targets(&sets, 2, 4, 1.0, Aggregate::Mean).unwrap();
        let at = |t: f64| era(&sets, 2, 4, t).unwrap();
        for r in 0..2 {
            let row = |v: &[f32]| v[4 * r..4 * r + 4].to_vec();
            let entropies: Vec<f64> = [1.0, 0.5, 0.1, 0.02].iter().map(|&t| entropy(&row(&at(t)))).collect();
            assert!(entropies.windows(2).all(|w| w[1] < w[0]), "row {r}: {entropies:?}");
            assert!(entropy(&row(&at(0.1))) < entropy(&row(&mean)), "row {r}");
            let argmax = |v: &[f32]| (0..4).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap();
            assert_eq!(argmax(&row(&at(0.1))), argmax(&row(&mean)), "row {r}");
            for t in [1.0, 0.1, 0.02] {
                let sum: f32 = row(&at(t)).iter().sum();
                assert!((sum - 1.0).abs() < 1e-6, "row {r} at {t}: {sum}");
            }
        }
        // A node's own predictions count as one of the sets; their order does not.
        let reordered = era(&[&B, &OWN, &A], 2, 4, 0.1).unwrap();
        assert!(at(0.1).iter().zip(&reordered).all(|(x, y)| (x - y).abs() < 1e-6));
        let without_own = era(&[&A, &B], 2, 4, 0.1).unwrap();
        assert!(at(0.1).iter().zip(&without_own).any(|(x, y)| (x - y).abs() > 1e-3));
    }

    #[test]
    fn a_bad_temperature_or_set_is_refused() {
        assert!(era(&[&OWN], 2, 4, 0.0).is_err());
        assert!(era(&[&OWN], 2, 4, f64::NAN).is_err());
        assert!(era(&[&OWN, &A[..7]], 2, 4, 0.1).is_err());
        // Huge logits do not overflow.
        let big = [1e30f32, -1e30, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        let out = era(&[&big, &A], 2, 4, 0.01).unwrap();
        assert!(out.iter().all(|p| p.is_finite()), "{out:?}");
    }
}
