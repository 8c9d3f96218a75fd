//! What `fedmd` and `dsfl` share: the round of a prediction-sharing method that forms
//! one consensus of everyone's predictions and then trains in two phases, unlike dml's
//! single loss.
//!
//! 1. Predict on the round's public batch (drawn from the coordinator's seed, as dml
//!    does) and send the logits to the neighbours, in the run's encoding: the same
//!    message as dml's, so the radio, the accounting and the adversaries are dml's.
//! 2. Form the consensus of this node's own logits and those of every neighbour heard
//!    this round (the decentralised form of the papers' server average over all
//!    parties, the party itself included); the algorithm says how.
//! 3. `public_steps` optimiser steps on the public batch alone toward the consensus
//!    (`distill_batch` rows a step, cycling through the batch), with the algorithm's
//!    loss ([`PublicLoss`]); skipped when no neighbour was heard (the consensus would
//!    be the node's own predictions, as dml then trains on CE alone).
//! 4. `local_steps` steps of cross-entropy on private batches.
//!
//! The FLOPs: the public batch's forward pass before the exchange; `public_steps ×
//! distill_batch + local_steps × batch_size` training rows after it. With the defaults
//! (`public_steps` = `local_steps`, `distill_batch` = `public_batch`) that is exactly
//! dml's compute, so the comparison is at equal FLOPs.

use candle_core::{Device, Tensor};

use super::Losses;
use super::dml::predict_public;
use crate::Result;
use crate::learn::PublicLoss;
use crate::learn::invalid;
use crate::model::ModelSpec;
use crate::plan::RunPlan;
use crate::round::{Node, Round, cyclic_rows, train};

/// The public batch's forward pass: the predictions sent.
pub(super) fn flops_before_exchange(plan: &RunPlan, model: &ModelSpec) -> u64 {
    plan.public_batch as u64 * model.flops(&plan.spec).forward
}

/// The public steps' rows and the private steps' rows, each a training pass.
pub(super) fn flops_after_exchange(plan: &RunPlan, model: &ModelSpec) -> u64 {
    let rows =
        u64::from(plan.public_steps) * plan.distill_batch as u64 + u64::from(plan.local_steps) * plan.batch_size as u64;
    rows * model.flops(&plan.spec).train()
}

/// Checks that every one of `sets` (own first, then the neighbours') holds `len`
/// finite values.
pub(super) fn check_predictions(sets: &[&[f32]], len: usize) -> Result<()> {
    if sets.is_empty() {
        return Err(invalid("a consensus needs at least one set of predictions"));
    }
    for (j, set) in sets.iter().enumerate() {
        if set.len() != len {
            return Err(invalid(format!(
                "predictions {j}: {} values, expected {len}",
                set.len()
            )));
        }
        if let Some(i) = set.iter().position(|v| !v.is_finite()) {
            return Err(invalid(format!("predictions {j}: a non-finite value at index {i}")));
        }
    }
    Ok(())
}

/// One round of a consensus method: see the module's comment. `consensus` turns the
/// predictions (own first, then the neighbours' in the order they are listed) into the
/// public steps' targets, `public_batch × classes` values, row-major.
pub(super) async fn learn(
    node: &mut Node,
    round: &mut Round<'_>,
    loss: PublicLoss,
    consensus: impl FnOnce(&RunPlan, &[&[f32]]) -> Result<Vec<f32>>,
) -> Result<Losses> {
    let (public, logits) = predict_public(node, round)?;
    let collected = round.exchange(node, &logits).await?;
    let public_loss = if collected.messages.is_empty() {
        None
    } else {
        Some(round.compute(|| -> Result<f64> {
            let plan = &node.plan;
            let mut sets: Vec<&[f32]> = vec![&logits];
            sets.extend(collected.messages.iter().map(|m| m.values.as_slice()));
            let target = consensus(plan, &sets)?;
            let target = Tensor::from_vec(target, (plan.public_batch, plan.classes()), &Device::Cpu)?;
            public_steps(node, &public, &target, loss)
        })?)
    };
    let private = round.compute(|| train(node, None))?;
    let public_loss = public_loss.unwrap_or(0.0);
    Ok(Losses {
        ce: private.ce,
        kl: public_loss,
        total: private.total + public_loss,
    })
}

/// The plan's `public_steps` steps toward `target` on `public`, `distill_batch` rows
/// each, cycling through the batch; their mean loss.
fn public_steps(node: &mut Node, public: &Tensor, target: &Tensor, loss: PublicLoss) -> Result<f64> {
    let rows = public.dim(0)?;
    let take = node.plan.distill_batch.min(rows);
    let steps = node.plan.public_steps;
    let mut total = 0.0;
    for step in 0..steps {
        let from = (step as usize * take) % rows.max(1);
        let images = cyclic_rows(public, from, take)?;
        let targets = cyclic_rows(target, from, take)?;
        total += f64::from(node.learner.public_step(&images, &targets, loss)?);
    }
    Ok(total / f64::from(steps.max(1)))
}
