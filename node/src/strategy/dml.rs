//! `dml`: decentralised deep mutual learning (Zhang et al. 2018). Each round a node
//! predicts on the shared public batch, swaps its predictions with its neighbours, and
//! trains on its private data with a distillation term toward their aggregate.

use candle_core::{Device, Tensor};
use wdml_proto::{AdversaryKind, Encoding};

use super::{Losses, Strategy};
use crate::exchange::{Collected, MessageShape};
use crate::learn::soft_targets;
use crate::model::{CLASSES, ModelSpec};
use crate::plan::RunPlan;
use crate::round::{Node, Round, train};
use crate::{Error, Result};

pub(crate) struct Dml;

impl Strategy for Dml {
    /// Logits on the public batch, one row per image.
    fn message(&self, public_batch: u32, encoding: Encoding, _parameters: usize) -> Option<MessageShape> {
        Some(MessageShape {
            rows: public_batch,
            cols: CLASSES as u32,
            encoding,
        })
    }

    /// Its predictions on the public batch.
    fn flops_before_exchange(&self, plan: &RunPlan, model: &ModelSpec) -> u64 {
        plan.public_batch as u64 * model.flops().forward
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
        let distill = targets(&node.plan, public, &collected)?;
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
/// softened predictions, or `None` when no neighbour was heard (CE alone).
fn targets(plan: &RunPlan, public: Tensor, collected: &Collected) -> Result<Option<(Tensor, Tensor)>> {
    if collected.messages.is_empty() {
        return Ok(None);
    }
    let peers: Vec<&[f32]> = collected.messages.iter().map(|m| m.values.as_slice()).collect();
    let target = soft_targets(
        &peers,
        plan.public_batch,
        CLASSES,
        plan.learner.temperature,
        plan.aggregate,
    )?;
    let target = Tensor::from_vec(target, (plan.public_batch, CLASSES), &Device::Cpu).map_err(Error::from)?;
    Ok(Some((public, target)))
}
