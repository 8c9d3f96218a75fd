//! `fedmd`: FedMD, decentralised. Li, D. and Wang, J. (2019), "FedMD: Heterogenous
//! Federated Learning via Model Distillation", NeurIPS 2019 Workshop on Federated
//! Learning, arXiv:1910.03581.
//!
//! Each round every party computes class scores on the public batch (Communicate);
//! the consensus is their average (Aggregate); each party trains its model to approach
//! the consensus on the public batch (Digest), then trains on its own private data for
//! a few steps (Revisit). Here there is no server: a node's consensus is the average of
//! its own scores and those of the neighbours it heard this round, and the Digest is
//! `train.public_steps` steps (`train.local_steps` by default), the Revisit
//! `train.local_steps` steps (the round's flow: [`super::consensus`]).
//!
//! **Scores and loss.** The class scores are the logits, the values a node already
//! sends (the wire carries logits in the run's encoding, never probabilities: a
//! receiver softens them itself where its algorithm needs to). The consensus is the
//! plain per-entry mean of the logits, and the Digest's loss is the mean absolute error
//! between a model's logits and the consensus logits ([`PublicLoss::L1Logits`]): the
//! paper's reference implementation removes the softmax layer and compiles the model
//! with Keras' `mean_absolute_error` for the Digest. `train.temperature`,
//! `train.kl_weight` and `train.aggregate` (which must be `mean`) play no part.
//!
//! Left out, because the setting has no place for them: the paper's first phase, in
//! which every party trains on the *labelled* public dataset before its private data
//! (here the public pool's labels are never used), and its per-round subsampling of the
//! public set beyond the round's public batch (the public batch already is a fresh draw
//! each round). FedDF (Lin et al. 2020) is not offered: it distils from ensembles of
//! averaged parameters, which needs parameter pools per model family, not predictions.

use super::consensus::{self, check_predictions};
use super::dml::predictions_view;
use super::{Losses, Strategy};
use crate::Result;
use crate::audit::Sent;
use crate::learn::PublicLoss;
use crate::model::ModelSpec;
use crate::plan::RunPlan;
use crate::round::{Node, Round};
use wdml_proto::StartRound;

pub(crate) struct Fedmd;

impl Strategy for Fedmd {
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
        consensus::learn(node, round, PublicLoss::L1Logits, |plan, sets| {
            mean_logits(sets, plan.public_batch * plan.classes())
        })
        .await
    }
}

/// FedMD's consensus: the per-entry mean of `sets` (each `len` logits, own first), in
/// `f64`, every set weighing the same.
pub(crate) fn mean_logits(sets: &[&[f32]], len: usize) -> Result<Vec<f32>> {
    check_predictions(sets, len)?;
    let n = sets.len() as f64;
    Ok((0..len)
        .map(|i| (sets.iter().map(|s| f64::from(s[i])).sum::<f64>() / n) as f32)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_consensus_is_the_mean_of_everyones_logits_own_included() {
        let own = [1.0f32, -2.0, 0.5, 3.0];
        let a = [3.0f32, 0.0, 0.5, -1.0];
        let b = [-1.0f32, 1.0, 2.0, 1.0];
        assert_eq!(mean_logits(&[&own, &a, &b], 4).unwrap(), [1.0, -1.0 / 3.0, 1.0, 1.0]);
        // Each set weighs the same, whatever its place; alone, a node's consensus is itself.
        assert_eq!(
            mean_logits(&[&b, &own, &a], 4).unwrap(),
            mean_logits(&[&own, &a, &b], 4).unwrap()
        );
        assert_eq!(mean_logits(&[&own], 4).unwrap(), own);
        // Logits, not probabilities: nothing is normalised.
        let sum: f32 = mean_logits(&[&own, &a], 4).unwrap().iter().sum();
        assert_eq!(sum, 2.5);
    }

    #[test]
    fn a_consensus_of_predictions_of_the_wrong_size_or_not_finite_is_refused() {
        let own = [0.0f32; 6];
        assert!(mean_logits(&[&own, &[0.0; 5]], 6).is_err());
        assert!(mean_logits(&[&own, &[0.0, f32::NAN, 0.0, 0.0, 0.0, 0.0]], 6).is_err());
        assert!(mean_logits(&[], 6).is_err());
    }
}
