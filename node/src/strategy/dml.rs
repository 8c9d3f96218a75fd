//! `dml`: decentralised deep mutual learning (Zhang et al. 2018). Each round a node
//! predicts on the shared public batch, swaps its predictions with its neighbours, and
//! trains on its private data with a distillation term toward their aggregate.

use candle_core::{Device, Tensor};
use wdml_proto::AdversaryKind;

use super::{Losses, Strategy};
use std::collections::BTreeMap;

use wdml_channel::{derive_external_seed, purpose};

use crate::exchange::{Collected, Delivered};
use crate::learn::soft_targets;
use crate::model::{CLASSES, ModelSpec};
use crate::plan::RunPlan;
use crate::round::{Distill, Node, Round, train};
use crate::{Error, Result};

pub(crate) struct Dml;

impl Strategy for Dml {
    /// Its predictions on the public batch.
    fn flops_before_exchange(&self, plan: &RunPlan, model: &ModelSpec) -> u64 {
        plan.public_batch as u64 * model.flops().forward
    }

    /// Its local steps: private rows and the public rows of the distillation term.
    fn flops_after_exchange(&self, plan: &RunPlan, model: &ModelSpec) -> u64 {
        u64::from(plan.local_steps) * (plan.batch_size + plan.distill_batch) as u64 * model.flops().train()
    }

    async fn learn(&self, node: &mut Node, round: &mut Round<'_>) -> Result<Losses> {
        let start = round.start;
        // 1. The round's public batch, drawn from the coordinator's seed (no image is
        //    sent), and our predictions on it.
        let (public, mut logits) = round.compute(|| -> Result<_> {
            let public = node.shard.public_batch(start.public_seed, node.plan.public_batch)?;
            let logits = node.learner.logits_vec(&public)?;
            Ok((public, logits))
        })?;
        if node.adversary == Some(AdversaryKind::ConfidentWrong) {
            confidently_wrong(&mut logits);
        }
        // 2. Swap predictions with the neighbours.
        let collected = round.exchange(node, &logits).await?;
        // 3. E local steps: CE on private batches plus λ·T²·KL toward the neighbours'
        //    aggregated soft predictions (CE alone if no neighbour was heard).
        let distill = round.compute(|| targets(&node.plan, node, start.round, public, &collected))?;
        round.compute(|| train(node, distill.as_ref()))
    }
}

/// An adversary's predictions: every row a large logit on the class after the one its
/// own model picks, zero elsewhere — confident, and wrong whenever its model is right.
fn confidently_wrong(logits: &mut [f32]) {
    for row in logits.chunks_mut(CLASSES) {
        let own = row
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0, |(i, _)| i);
        row.fill(0.0);
        row[(own + 1) % CLASSES] = 20.0;
    }
}

/// The distillation target: the public batch and the aggregate of the neighbours'
/// softened predictions; then, for each earlier round whose predictions stand in for
/// a neighbour not heard this round, that round's public batch (drawn again from its
/// seed) and their aggregate, weighted down with age. `None` when nothing was heard.
fn targets(plan: &RunPlan, node: &Node, round: u32, public: Tensor, collected: &Collected) -> Result<Option<Distill>> {
    let aggregate = |messages: &[&Delivered]| -> Result<Tensor> {
        let peers: Vec<&[f32]> = messages.iter().map(|m| m.values.as_slice()).collect();
        let target = soft_targets(
            &peers,
            plan.public_batch,
            CLASSES,
            plan.learner.temperature,
            plan.aggregate,
        )?;
        Tensor::from_vec(target, (plan.public_batch, CLASSES), &Device::Cpu).map_err(Error::from)
    };
    let fresh: Vec<&Delivered> = collected.messages.iter().collect();
    if collected.stale.is_empty() {
        // The synchronous case, exactly as it always was.
        return if fresh.is_empty() {
            Ok(None)
        } else {
            Ok(Some(Distill {
                targets: aggregate(&fresh)?,
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
        targets.push(aggregate(&fresh)?);
        weights.push(1.0f32);
    }
    // Newest first, so the cycle of local steps reaches the freshest rows first.
    for (&old, messages) in by_round.iter().rev() {
        let weight = plan
            .staleness
            .weight(round - old)
            .expect("the mailbox keeps only usable ages");
        let seed = derive_external_seed(plan.seed, &[purpose::PUBLIC_BATCH, u64::from(old)]);
        images.push(node.shard.public_batch(seed, plan.public_batch)?);
        targets.push(aggregate(messages)?);
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
