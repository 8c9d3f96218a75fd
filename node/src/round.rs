//! One round on one node, in the order it happens:
//!
//! 1. draw the round's public batch from the coordinator's seed (no data is sent);
//! 2. compute the model's logits on it;
//! 3. encode them, stream them to every neighbour, and collect the neighbours'
//!    until all have arrived, left, or the exchange deadline passed;
//! 4. run E local steps of CE on private batches plus λ·T²·KL toward the peers'
//!    aggregated soft predictions (CE alone if no neighbour was heard);
//! 5. evaluate on the test set and report.
//!
//! `local` skips steps 1–3.

use std::sync::Arc;
use std::time::Duration;

use candle_core::{Device, Tensor};
use tokio::task::block_in_place;
use tokio::time::Instant;
use tracing::{debug, warn};
use wdml_channel::Shaping;
use wdml_proto::{Algorithm, RoundMetrics, StartRound};

use crate::exchange::client::{self, PeerClients};
use crate::exchange::codec::{self, Envelope};
use crate::exchange::shaper::Shaper;
use crate::exchange::{Collected, Mailbox};
use crate::learn::{Learner, soft_targets};
use crate::model::CLASSES;
use crate::plan::RunPlan;
use crate::shard::{BatchSampler, Shard};
use crate::{Error, Result};

/// Rows per evaluation batch: bounds memory, not results.
const EVAL_BATCH: usize = 500;

/// Everything a node keeps from round to round.
pub struct Node {
    pub id: u32,
    pub plan: RunPlan,
    pub learner: Learner,
    pub shard: Shard,
    pub batches: BatchSampler,
    pub mailbox: Arc<Mailbox>,
    pub peers: PeerClients,
    pub shaper: Shaper,
}

/// Runs one round and returns its metrics.
pub async fn run_round(node: &mut Node, start: &StartRound) -> Result<RoundMetrics> {
    let began = Instant::now();
    let deadline = began + Duration::from_millis(u64::from(start.exchange_timeout_ms));
    let mut metrics = RoundMetrics::default();
    let mut compute = Duration::ZERO;

    let distill = if node.plan.algorithm == Algorithm::Dml {
        let neighbours: Vec<u32> = start.neighbours.iter().map(|p| p.node_id).collect();
        let expected = listen(node, start, &mut metrics)?;
        node.mailbox
            .begin_round(start.round, start.round_token, &neighbours, &expected);

        // 1–2. The public batch and our predictions on it.
        let t = Instant::now();
        let public = node.shard.public_batch(start.public_seed, node.plan.public_batch)?;
        let logits = block_in_place(|| node.learner.logits_vec(&public))?;
        compute += t.elapsed();

        // 3. Exchange with the neighbours.
        let t = Instant::now();
        let collected = exchange(node, start, &logits, deadline, &mut metrics).await?;
        metrics.exchange_ms = ms(t.elapsed());
        targets(&node.plan, public, &collected)?
    } else {
        None
    };

    // 4. Local steps.
    let t = Instant::now();
    let (ce, kl, total) = block_in_place(|| train(node, distill.as_ref()))?;
    // 5. Evaluate.
    let evaluation = block_in_place(|| {
        node.learner
            .evaluate(&node.shard.test_images, &node.shard.test_labels, EVAL_BATCH)
    })?;
    compute += t.elapsed();

    metrics.ce_loss = ce;
    metrics.kl_loss = kl;
    metrics.train_loss = total;
    metrics.test_accuracy = f64::from(evaluation.accuracy);
    metrics.test_loss = f64::from(evaluation.loss);
    metrics.compute_ms = ms(compute);
    metrics.private_samples = node.shard.private_len() as u32;
    metrics.messages_rejected = node.mailbox.take_rejected();
    debug!(round = start.round, accuracy = metrics.test_accuracy, "round done");
    Ok(metrics)
}

/// Which neighbours' messages the radio delivers to us this round, and what
/// listening to all of them costs (the same pure model the senders evaluate).
fn listen(node: &Node, start: &StartRound, metrics: &mut RoundMetrics) -> Result<Vec<u32>> {
    let width = codec::bytes_per_value(node.plan.encoding).unwrap_or(4);
    let bytes = (node.plan.public_batch * CLASSES * width) as u64;
    let mut expected = Vec::new();
    for peer in &start.neighbours {
        let listening = node.shaper.listen(start.round, peer.node_id, &peer.neighbours, bytes)?;
        metrics.rx_energy_j += listening.rx_energy_j;
        if listening.delivered {
            expected.push(peer.node_id);
        }
    }
    Ok(expected)
}

/// Sends our logits to every neighbour, paced by the shaper's schedule, while
/// collecting theirs; fills the exchange and radio counters of `metrics`.
async fn exchange(
    node: &mut Node,
    start: &StartRound,
    logits: &[f32],
    deadline: Instant,
    metrics: &mut RoundMetrics,
) -> Result<Collected> {
    let plan = &node.plan;
    let encoded = codec::encode(logits, plan.public_batch as u32, CLASSES as u32, plan.encoding);
    let envelope = Envelope {
        run_id: plan.run_id.clone(),
        round: start.round,
        round_token: start.round_token,
        sender: node.id,
    };
    let frames = codec::frames(&envelope, &encoded, node.shaper.frame_bytes());
    let receivers: Vec<u32> = start.neighbours.iter().map(|p| p.node_id).collect();
    let schedule = node
        .shaper
        .schedule(start.round, &receivers, encoded.bytes.len() as u64, frames.len())?;
    let cost = schedule.cost;
    metrics.airtime_s = cost.airtime_s;
    metrics.tx_energy_j = cost.tx_energy_j;
    metrics.frames_lost = cost.frames_lost;
    metrics.retransmissions = cost.retransmissions;

    let destinations: Vec<(u32, Option<tonic::transport::Channel>)> = start
        .neighbours
        .iter()
        .map(|peer| match node.peers.channel(&peer.address) {
            Ok(channel) => (peer.node_id, Some(channel)),
            Err(status) => {
                warn!(peer = peer.node_id, "cannot reach neighbour: {}", status.message());
                (peer.node_id, None)
            }
        })
        .collect();
    let sending = client::transmit(frames, schedule, destinations, node.shaper.time_scale(), deadline);
    let (collected, sent) = tokio::join!(node.mailbox.collect(start.round, deadline), sending);
    for (outcome, result) in sent {
        metrics.frames_sent += outcome.frames;
        metrics.payload_bytes_sent += outcome.payload_bytes;
        metrics.wire_bytes_sent += outcome.wire_bytes;
        match result {
            Ok(()) if outcome.accepted => metrics.messages_sent += 1,
            Ok(()) => warn!(peer = outcome.to, "neighbour did not accept the message"),
            Err(status) if status.code() == tonic::Code::DataLoss => {}
            Err(status) => {
                warn!(peer = outcome.to, code = ?status.code(), "send failed: {}", status.message())
            }
        }
    }
    if node.shaper.shaping() == Shaping::Emulate {
        // Frames on the air: lost tries and retransmissions count, not just the
        // frames that reached a stream.
        metrics.frames_sent = cost.transmissions;
    }
    metrics.messages_received = collected.messages.len() as u32;
    metrics.peers_heard = collected.messages.len() as u32;
    metrics.messages_lost = collected.lost;
    metrics.payload_bytes_received = collected.messages.iter().map(|m| m.payload_bytes).sum();
    metrics.wire_bytes_received = collected.messages.iter().map(|m| m.wire_bytes).sum();
    Ok(collected)
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

/// E local steps; returns the mean CE, KL and total loss.
fn train(node: &mut Node, distill: Option<&(Tensor, Tensor)>) -> Result<(f64, f64, f64)> {
    let steps = node.plan.local_steps;
    let (mut ce, mut kl, mut total) = (0.0, 0.0, 0.0);
    for _ in 0..steps {
        let (images, labels) = node.batches.next_batch(&node.shard)?;
        let losses = node
            .learner
            .train_step(&images, &labels, distill.map(|(p, t)| (p, t)))?;
        ce += f64::from(losses.ce);
        kl += f64::from(losses.kl);
        total += f64::from(losses.total);
    }
    let n = f64::from(steps);
    Ok((ce / n, kl / n, total / n))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
