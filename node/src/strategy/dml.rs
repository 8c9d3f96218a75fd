//! `dml`: decentralised deep mutual learning (Zhang et al. 2018). Each round a node
//! predicts on the shared public batch, swaps its predictions with its neighbours, and
//! trains on its private data with a distillation term toward their aggregate.

use candle_core::{Device, Tensor};
use wdml_channel::spectrum::{self, AirSlot};
use wdml_proto::{AdversaryKind, StartRound};

use super::{Losses, Strategy};
use std::collections::BTreeMap;

use wdml_channel::{derive_external_seed, purpose};

use crate::audit::Sent;
use crate::exchange::{Collected, Delivered};
use crate::learn::trust::Trust;
use crate::learn::{Aggregate, soft_targets, trust_weighted_targets};
use crate::model::ModelSpec;
use crate::plan::RunPlan;
use crate::round::{Distill, Node, Round, train};
use crate::{Error, Result};

pub(crate) struct Dml;

impl Strategy for Dml {
    /// Its predictions on the public batch.
    fn flops_before_exchange(&self, plan: &RunPlan, model: &ModelSpec) -> u64 {
        plan.public_batch as u64 * model.flops(&plan.spec).forward
    }

    /// Its local steps: private rows and the public rows of the distillation term.
    fn flops_after_exchange(&self, plan: &RunPlan, model: &ModelSpec) -> u64 {
        u64::from(plan.local_steps) * (plan.batch_size + plan.distill_batch) as u64 * model.flops(&plan.spec).train()
    }

    fn neighbours_view(&self, _node: &Node, _start: &StartRound, sent: &[f32]) -> Result<Option<(Sent, Vec<f32>)>> {
        Ok(predictions_view(sent))
    }

    async fn learn(&self, node: &mut Node, round: &mut Round<'_>) -> Result<Losses> {
        let start = round.start;
        // 1. The round's public batch and our predictions on it.
        let (public, logits) = predict_public(node, round)?;
        // 2. Swap predictions with the neighbours.
        let collected = round.exchange(node, &logits).await?;
        // 3. E local steps: CE on private batches plus λ·T²·KL toward the neighbours'
        //    aggregated soft predictions (CE alone if no neighbour was heard).
        let slot = round.air_slot().cloned();
        let distill = round.compute(|| match &slot {
            Some(slot) => over_the_air_targets(node, start, slot, public, &collected),
            None => targets(node, start.round, public, &logits, &collected),
        })?;
        round.compute(|| train(node, distill.as_ref()))
    }
}

/// The round's public batch, drawn from the coordinator's seed (no image is sent), and
/// the node's predictions on it, as it will send them (an adversary's made wrong): the
/// first step of every prediction-sharing strategy.
pub(super) fn predict_public(node: &mut Node, round: &mut Round<'_>) -> Result<(Tensor, Vec<f32>)> {
    let start = round.start;
    let (public, mut logits) = round.compute(|| -> Result<_> {
        let public = node.shard.public_batch(start.public_seed, node.plan.public_batch)?;
        let logits = node.learner.logits_vec(&public)?;
        Ok((public, logits))
    })?;
    if node.adversary == Some(AdversaryKind::ConfidentWrong) {
        confidently_wrong(&mut logits, node.plan.classes());
    }
    Ok((public, logits))
}

/// The view of an algorithm that sends its predictions: they are the message.
pub(super) fn predictions_view(sent: &[f32]) -> Option<(Sent, Vec<f32>)> {
    Some((Sent::Predictions, sent.to_vec()))
}

/// An adversary's predictions: every row a large logit on the class after the one its
/// own model picks, zero elsewhere — confident, and wrong whenever its model is right.
fn confidently_wrong(logits: &mut [f32], classes: usize) {
    for row in logits.chunks_mut(classes) {
        let own = row
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0, |(i, _)| i);
        row.fill(0.0);
        row[(own + 1) % classes] = 20.0;
    }
}

/// Over the air, the distillation target is what the receiver's slot yields: the mean
/// of the aligned neighbours' softened predictions (each sender's stream carries its
/// values; the superposition is formed here) plus the receiver noise of the slot, put
/// back on the probability simplex (a noisy value can fall below 0).
fn over_the_air_targets(
    node: &Node,
    start: &StartRound,
    slot: &AirSlot,
    public: Tensor,
    collected: &Collected,
) -> Result<Option<Distill>> {
    let plan = &node.plan;
    if collected.messages.is_empty() {
        return Ok(None);
    }
    let fresh: Vec<&Delivered> = collected.messages.iter().collect();
    let mut mean = aggregate(plan, None, &fresh)?;
    if plan.channel.air_noise {
        spectrum::add_air_noise(&mut mean, slot, fresh.len(), plan.seed, u64::from(start.round));
    }
    onto_simplex(&mut mean, plan.classes());
    Ok(Some(Distill {
        targets: Tensor::from_vec(mean, (plan.public_batch, plan.classes()), &Device::Cpu)?,
        public,
        weights: None,
    }))
}

/// The run's aggregate of `messages`' softened predictions, row-major. Under
/// `trust-weighted`, `trust` holds the node's scores, and `own` (its own predictions on
/// the same public batch, given for the round's fresh messages only) folds this round
/// into them first.
fn aggregate(plan: &RunPlan, trust: Option<(&mut Trust, Option<&[f32]>)>, messages: &[&Delivered]) -> Result<Vec<f32>> {
    if let (Aggregate::TrustWeighted, Some((trust, own))) = (plan.aggregate, trust) {
        let peers: Vec<(u32, &[f32])> = messages.iter().map(|m| (m.sender, m.values.as_slice())).collect();
        return trust_weighted_targets(
            trust,
            own,
            &peers,
            plan.public_batch,
            plan.classes(),
            plan.learner.temperature,
        );
    }
    let peers: Vec<&[f32]> = messages.iter().map(|m| m.values.as_slice()).collect();
    soft_targets(
        &peers,
        plan.public_batch,
        plan.classes(),
        plan.learner.temperature,
        plan.aggregate,
    )
}

/// Each row of `values` made a probability distribution again: values below a small
/// floor raised to it (a KL target needs no zero), then the row scaled to sum to 1. A
/// row that needs neither is left exactly as it is.
fn onto_simplex(values: &mut [f32], classes: usize) {
    const FLOOR: f32 = 1e-12;
    for row in values.chunks_mut(classes) {
        if row.iter().all(|&v| v >= FLOOR) && (row.iter().sum::<f32>() - 1.0).abs() <= 1e-5 {
            continue;
        }
        row.iter_mut().for_each(|v| *v = v.max(FLOOR));
        let sum: f32 = row.iter().sum();
        row.iter_mut().for_each(|v| *v /= sum);
    }
}

/// The distillation target: the public batch and the aggregate of the neighbours'
/// softened predictions; then, for each earlier round whose predictions stand in for
/// a neighbour not heard this round, that round's public batch (drawn again from its
/// seed) and their aggregate, weighted down with age. `None` when nothing was heard.
/// `own`: the node's predictions on this round's public batch (the trust scores'
/// reference includes them).
fn targets(node: &mut Node, round: u32, public: Tensor, own: &[f32], collected: &Collected) -> Result<Option<Distill>> {
    let (id, plan, shard, trust) = (node.id, &node.plan, &node.shard, &mut node.trust);
    let mut aggregate = |own: Option<&[f32]>, messages: &[&Delivered]| -> Result<Tensor> {
        let target = aggregate(plan, Some((&mut *trust, own)), messages)?;
        // The round's scores and weights, for whoever reads the node's log at debug.
        if own.is_some() && plan.aggregate == Aggregate::TrustWeighted && tracing::enabled!(tracing::Level::DEBUG) {
            let senders: Vec<u32> = messages.iter().map(|m| m.sender).collect();
            let weights = trust.weights(&senders);
            let scores: Vec<String> = senders
                .iter()
                .zip(&weights)
                .map(|(s, w)| format!("{s}:{:.4}/{w:.4}", trust.score(*s).unwrap_or(f64::NAN)))
                .collect();
            tracing::debug!(
                node = id,
                round,
                own = trust.own().unwrap_or(f64::NAN),
                "trust (neighbour:score/weight): {}",
                scores.join(" ")
            );
        }
        Tensor::from_vec(target, (plan.public_batch, plan.classes()), &Device::Cpu).map_err(Error::from)
    };
    let fresh: Vec<&Delivered> = collected.messages.iter().collect();
    if collected.stale.is_empty() {
        // The synchronous case, exactly as it always was.
        return if fresh.is_empty() {
            Ok(None)
        } else {
            Ok(Some(Distill {
                targets: aggregate(Some(own), &fresh)?,
                public,
                weights: None,
            }))
        };
    }
    let mut by_round: BTreeMap<u32, Vec<&Delivered>> = BTreeMap::new();
    for message in &collected.stale {
        by_round.entry(message.round).or_default().push(message);
    }
    let (mut images, mut targets, mut weights) = (Vec::new(), Vec::new(), Vec::new());
    if !fresh.is_empty() {
        images.push(public);
        targets.push(aggregate(Some(own), &fresh)?);
        weights.push(1.0f32);
    }
    // Newest first, so the cycle of local steps reaches the freshest rows first.
    for (&old, messages) in by_round.iter().rev() {
        let weight = plan
            .staleness
            .weight(round - old)
            .expect("the mailbox keeps only usable ages");
        let seed = derive_external_seed(plan.seed, &[purpose::PUBLIC_BATCH, u64::from(old)]);
        images.push(shard.public_batch(seed, plan.public_batch)?);
        targets.push(aggregate(None, messages)?);
        weights.push(weight as f32);
    }
    let rows = plan.public_batch;
    let weights: Vec<f32> = weights.iter().flat_map(|&w| std::iter::repeat_n(w, rows)).collect();
    Ok(Some(Distill {
        public: Tensor::cat(&images, 0)?,
        targets: Tensor::cat(&targets, 0)?,
        weights: Some(Tensor::from_vec(weights, images.len() * rows, &Device::Cpu)?),
    }))
}

#[cfg(test)]
mod tests {
    use super::onto_simplex;

    #[test]
    fn a_distribution_stays_exactly_itself_and_a_noisy_row_becomes_one() {
        let mut rows = vec![0.1f32, 0.2, 0.7, 0.25, -0.05, 0.9];
        onto_simplex(&mut rows, 3);
        assert_eq!(&rows[..3], &[0.1, 0.2, 0.7], "a distribution is left as it is");
        let noisy = &rows[3..];
        assert!(noisy.iter().all(|&v| v > 0.0), "{noisy:?}");
        assert!((noisy.iter().sum::<f32>() - 1.0).abs() < 1e-6, "{noisy:?}");
        assert!(
            noisy[2] > noisy[0] && noisy[0] > noisy[1],
            "the order is kept: {noisy:?}"
        );
    }
}
