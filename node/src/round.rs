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

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use candle_core::{Device, Tensor};
use tokio::task::block_in_place;
use tokio::time::Instant;
use tracing::{debug, warn};
use wdml_channel::Shaping;
use wdml_proto::{AdversaryKind, Algorithm, Encoding, RoundMetrics, StartRound};

use crate::checkpoint::Owner;
use crate::exchange::client::{self, PeerClients};
use crate::exchange::codec::{self, Envelope};
use crate::exchange::shaper::Shaper;
use crate::exchange::{Collected, Mailbox, Punctuality};
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
    /// How this node misbehaves, if the scenario makes it an adversary.
    pub adversary: Option<AdversaryKind>,
    /// How long to wait for each neighbour; who is silent.
    pub punctuality: Punctuality,
    /// Where its checkpoint goes, and whose it is.
    pub state_dir: Option<PathBuf>,
    pub owner: Owner,
    /// Neighbours that went silent in the round under way (for its outcome).
    pub newly_silent: Vec<(u32, u32)>,
}

/// What a round yields: its metrics, and the neighbours that just went silent (with
/// how many exchanges in a row they missed), for the coordinator.
#[derive(Debug)]
pub struct RoundOutcome {
    pub metrics: RoundMetrics,
    pub silent: Vec<(u32, u32)>,
}

/// Who this round waits for, and until when.
#[derive(Debug)]
struct Expected {
    /// When the round began (deadlines and punctuality count from here).
    began: Instant,
    /// Neighbours whose message the radio delivers, with its air time in wall time.
    delivered: BTreeMap<u32, Duration>,
    /// The ones the round waits for (not silent), and each one's deadline.
    deadlines: BTreeMap<u32, Instant>,
}

/// Time spent on model work in a round: wall time, and the process's CPU time, which
/// is what the work costs however many nodes share the cores. (The process's, not
/// the thread's, so that work a library hands to a helper thread is counted too; the
/// peer service receiving meanwhile adds a little.)
#[derive(Default)]
struct ComputeClock {
    wall: Duration,
    cpu: Duration,
}

impl ComputeClock {
    fn time<T>(&mut self, work: impl FnOnce() -> T) -> T {
        let (wall, cpu) = (Instant::now(), process_cpu_time());
        let out = work();
        self.wall += wall.elapsed();
        self.cpu += process_cpu_time().saturating_sub(cpu);
        out
    }
}

/// CPU time of this process so far (user + system, every thread).
pub fn process_cpu_time() -> Duration {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec we own; this clock exists on every
    // platform we build for, and should it fail `now` stays zero (nothing counted).
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut now) };
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// Runs one round and returns its metrics.
pub async fn run_round(node: &mut Node, start: &StartRound) -> Result<RoundOutcome> {
    let began = Instant::now();
    let timeout = Duration::from_millis(u64::from(start.exchange_timeout_ms));
    let deadline = began + timeout;
    let mut metrics = RoundMetrics::default();
    let mut compute = ComputeClock::default();
    let exchanging = node.plan.algorithm != Algorithm::Local;
    let mut expected = Expected {
        began,
        delivered: BTreeMap::new(),
        deadlines: BTreeMap::new(),
    };
    if exchanging {
        // At once: a faster neighbour's message may already be on its way.
        let neighbours: Vec<u32> = start.neighbours.iter().map(|p| p.node_id).collect();
        expected = listen(node, start, began, timeout, &mut metrics)?;
        let awaited: Vec<u32> = expected.deadlines.keys().copied().collect();
        node.mailbox
            .begin_round(start.round, start.round_token, &neighbours, &awaited);
    }

    let (ce, kl, total) = match node.plan.algorithm {
        Algorithm::Dml => {
            // 1–2. The public batch and our predictions on it.
            let (public, mut logits) = compute.time(|| -> Result<_> {
                let public = node.shard.public_batch(start.public_seed, node.plan.public_batch)?;
                let logits = block_in_place(|| node.learner.logits_vec(&public))?;
                Ok((public, logits))
            })?;
            if node.adversary == Some(AdversaryKind::ConfidentWrong) {
                confidently_wrong(&mut logits);
            }
            // 3. Exchange with the neighbours.
            let t = Instant::now();
            let collected = exchange(node, start, &logits, deadline, &expected, &mut metrics).await?;
            metrics.exchange_ms = ms(t.elapsed());
            // 4. Local steps toward the neighbours' predictions.
            let distill = targets(&node.plan, public, &collected)?;
            compute.time(|| block_in_place(|| train(node, distill.as_ref())))?
        }
        Algorithm::Fedavg => {
            // Gossip FedAvg: local steps on CE, then average parameters with the
            // neighbours whose parameters arrived.
            let (losses, parameters) = compute.time(|| -> Result<_> {
                let losses = block_in_place(|| train(node, None))?;
                Ok((losses, node.learner.parameters_flat()?))
            })?;
            let t = Instant::now();
            let collected = exchange(node, start, &parameters, deadline, &expected, &mut metrics).await?;
            metrics.exchange_ms = ms(t.elapsed());
            let averaged = gossip_average(&parameters, start, &collected);
            node.learner.set_parameters_flat(&averaged)?;
            losses
        }
        Algorithm::Local | Algorithm::Unspecified => compute.time(|| block_in_place(|| train(node, None)))?,
    };

    // 5. Evaluate.
    let evaluation = compute.time(|| {
        block_in_place(|| {
            node.learner
                .evaluate(&node.shard.test_images, &node.shard.test_labels, EVAL_BATCH)
        })
    })?;

    metrics.ce_loss = ce;
    metrics.kl_loss = kl;
    metrics.train_loss = total;
    metrics.test_accuracy = f64::from(evaluation.accuracy);
    metrics.test_loss = f64::from(evaluation.loss);
    metrics.compute_ms = ms(compute.wall);
    metrics.compute_cpu_ms = ms(compute.cpu);
    metrics.private_samples = node.shard.private_len() as u32;
    metrics.messages_rejected = node.mailbox.take_rejected();
    let silent = node.take_silent();
    debug!(round = start.round + 1, accuracy = metrics.test_accuracy, "round done");
    Ok(RoundOutcome { metrics, silent })
}

impl Node {
    /// Neighbours that went silent this round (set aside by [`exchange`]).
    fn take_silent(&mut self) -> Vec<(u32, u32)> {
        std::mem::take(&mut self.newly_silent)
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

/// The shape and encoding of the message every node sends each round: predictions
/// on the public batch (`dml`), or all parameters as f32 (`fedavg`: averaging
/// quantised parameters would drift, so they travel exactly).
pub fn message_shape(plan: &RunPlan, parameters: usize) -> (u32, u32, Encoding) {
    match plan.algorithm {
        Algorithm::Fedavg => (1, parameters as u32, Encoding::F32),
        _ => (plan.public_batch as u32, CLASSES as u32, plan.encoding),
    }
}

/// Metropolis–Hastings gossip weights (Xiao & Boyd 2004): w_ij = 1 / (1 + max(d_i, d_j))
/// for each neighbour j heard, the rest of the weight on our own parameters. A lost
/// message's weight stays with us, so the weights always sum to 1.
fn gossip_average(own: &[f32], start: &StartRound, collected: &Collected) -> Vec<f32> {
    let degree = start.neighbours.len();
    let mut own_weight = 1.0;
    let mut sum = vec![0.0f64; own.len()];
    for message in &collected.messages {
        let their_degree = start
            .neighbours
            .iter()
            .find(|p| p.node_id == message.sender)
            .map_or(degree, |p| p.neighbours.len());
        let weight = 1.0 / (1.0 + degree.max(their_degree) as f64);
        own_weight -= weight;
        for (s, &v) in sum.iter_mut().zip(&message.values) {
            *s += weight * f64::from(v);
        }
    }
    sum.iter()
        .zip(own)
        .map(|(s, &mine)| (s + own_weight * f64::from(mine)) as f32)
        .collect()
}

/// Which neighbours' messages the radio delivers to us this round, what listening to
/// all of them costs (the same pure model the senders evaluate), and how long to wait
/// for each: silent neighbours not at all, the others as long as the radio and their
/// punctuality justify (or the whole timeout, without `adaptive_deadline`).
fn listen(
    node: &Node,
    start: &StartRound,
    began: Instant,
    timeout: Duration,
    metrics: &mut RoundMetrics,
) -> Result<Expected> {
    let (rows, cols, encoding) = message_shape(&node.plan, node.learner.parameter_count());
    let width = codec::bytes_per_value(encoding).unwrap_or(4);
    let bytes = u64::from(rows) * u64::from(cols) * width as u64;
    let mut expected = Expected {
        began,
        delivered: BTreeMap::new(),
        deadlines: BTreeMap::new(),
    };
    for peer in &start.neighbours {
        let listening = node.shaper.listen(start.round, peer.node_id, &peer.neighbours, bytes)?;
        metrics.rx_energy_j += listening.rx_energy_j;
        if !listening.delivered {
            continue;
        }
        // Pacing that no clock can represent was refused at the start (time_scale).
        let air = Duration::try_from_secs_f64(listening.arrival_s * node.shaper.time_scale()).unwrap_or(timeout);
        expected.delivered.insert(peer.node_id, air);
        if node.punctuality.is_silent(peer.node_id) {
            continue;
        }
        let due = if node.plan.adaptive_deadline {
            node.punctuality.deadline(peer.node_id, began, air, timeout)
        } else {
            began + timeout
        };
        expected.deadlines.insert(peer.node_id, due);
    }
    Ok(expected)
}

/// Sends this round's message (predictions or parameters) to every neighbour, paced
/// by the shaper's schedule, while collecting theirs; fills the exchange and radio
/// counters of `metrics`.
async fn exchange(
    node: &mut Node,
    start: &StartRound,
    values: &[f32],
    deadline: Instant,
    expected: &Expected,
    metrics: &mut RoundMetrics,
) -> Result<Collected> {
    let plan = &node.plan;
    let (rows, cols, encoding) = message_shape(plan, node.learner.parameter_count());
    let encoded = codec::encode(values, rows, cols, encoding);
    let envelope = Envelope {
        run_id: plan.run_id.clone(),
        round: start.round,
        round_token: start.round_token,
        sender: node.id,
    };
    let frames = codec::frames(&envelope, &encoded, node.shaper.frame_bytes());
    let receivers: Vec<u32> = start.neighbours.iter().map(|p| p.node_id).collect();
    // A silent adversary keeps its predictions to itself (and its radio idle).
    let silent = node.adversary == Some(AdversaryKind::Silent);
    let schedule = if silent {
        Default::default()
    } else {
        node.shaper
            .schedule(start.round, &receivers, encoded.bytes.len() as u64, frames.len())?
    };
    let cost = schedule.cost;
    metrics.airtime_s = cost.airtime_s;
    metrics.tx_energy_j = cost.tx_energy_j;
    metrics.frames_lost = cost.frames_lost;
    metrics.retransmissions = cost.retransmissions;

    let destinations: Vec<(u32, Option<tonic::transport::Channel>)> = start
        .neighbours
        .iter()
        .filter(|_| !silent)
        .map(|peer| match node.peers.channel(peer.node_id, &peer.address) {
            Ok(channel) => (peer.node_id, Some(channel)),
            Err(status) => {
                warn!(peer = peer.node_id, "cannot reach neighbour: {}", status.message());
                (peer.node_id, None)
            }
        })
        .collect();
    let sending = client::transmit(frames, schedule, destinations, node.shaper.time_scale(), deadline);
    let began = expected.began;
    let (collected, sent) = tokio::join!(
        node.mailbox.collect(start.round, deadline, &expected.deadlines),
        sending
    );
    // Punctuality: how late each expected message came beyond its air time, or that
    // it did not come (the radio's losses are no neighbour's fault: not counted).
    for (&neighbour, &air) in &expected.delivered {
        match collected.messages.iter().find(|m| m.sender == neighbour) {
            Some(message) => {
                let arrived = message.arrived.unwrap_or(began);
                let lead = arrived.saturating_duration_since(began).saturating_sub(air);
                node.punctuality.arrived(neighbour, lead);
            }
            None => {
                if let Some(missed) = node.punctuality.miss(neighbour, node.plan.silent_after) {
                    node.newly_silent.push((neighbour, missed));
                }
            }
        }
    }
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
    for step in 0..steps {
        let (images, labels) = node.batches.next_batch(&node.shard)?;
        let slice = match distill {
            Some((public, targets)) => {
                let rows = public.dim(0)?;
                let take = node.plan.distill_batch.min(rows);
                let start = (step as usize * take) % rows.max(1);
                Some((cyclic_rows(public, start, take)?, cyclic_rows(targets, start, take)?))
            }
            None => None,
        };
        let losses = node
            .learner
            .train_step(&images, &labels, slice.as_ref().map(|(p, t)| (p, t)))?;
        ce += f64::from(losses.ce);
        kl += f64::from(losses.kl);
        total += f64::from(losses.total);
    }
    let n = f64::from(steps);
    Ok((ce / n, kl / n, total / n))
}

/// `len` rows of `t` from `start`, wrapping past the end (all of `t` when it has `len`).
fn cyclic_rows(t: &Tensor, start: usize, len: usize) -> Result<Tensor> {
    let rows = t.dim(0)?;
    if len >= rows {
        return Ok(t.clone());
    }
    let head = (rows - start).min(len);
    let first = t.narrow(0, start, head)?;
    Ok(if head == len {
        first
    } else {
        Tensor::cat(&[&first, &t.narrow(0, 0, len - head)?], 0)?
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::Delivered;
    use wdml_proto::Peer;

    fn peer(node_id: u32, neighbours: Vec<u32>) -> Peer {
        Peer {
            node_id,
            address: String::new(),
            neighbours,
        }
    }

    fn from(sender: u32, values: Vec<f32>) -> Delivered {
        Delivered {
            sender,
            round: 0,
            round_token: 1,
            values,
            payload_bytes: 0,
            wire_bytes: 0,
            arrived: None,
        }
    }

    #[test]
    fn distillation_slices_cycle_through_every_public_row() {
        let rows = |t: Tensor| -> Vec<u32> { t.flatten_all().unwrap().to_vec1().unwrap() };
        let public = Tensor::arange(0u32, 5, &Device::Cpu).unwrap().reshape((5, 1)).unwrap();
        assert_eq!(rows(cyclic_rows(&public, 3, 3).unwrap()), [3, 4, 0]);
        assert_eq!(rows(cyclic_rows(&public, 0, 2).unwrap()), [0, 1]);
        assert_eq!(rows(cyclic_rows(&public, 2, 5).unwrap()), [0, 1, 2, 3, 4], "all of it");
        // As train() walks it: 5 steps of 2 rows see each row twice.
        let mut seen = [0; 5];
        for step in 0..5 {
            for row in rows(cyclic_rows(&public, (step * 2) % 5, 2).unwrap()) {
                seen[row as usize] += 1;
            }
        }
        assert_eq!(seen, [2; 5]);
    }

    #[test]
    fn gossip_weights_are_metropolis_hastings_and_sum_to_one() {
        // Node 0 with neighbours 1 (degree 1) and 2 (degree 3): d_0 = 2.
        let start = StartRound {
            neighbours: vec![peer(1, vec![0]), peer(2, vec![0, 3, 4])],
            ..StartRound::default()
        };
        let collected = Collected {
            messages: vec![from(1, vec![3.0]), from(2, vec![6.0])],
            lost: 0,
        };
        // w_01 = 1/(1+2) = 1/3, w_02 = 1/(1+3) = 1/4, w_00 = 5/12.
        let averaged = gossip_average(&[0.0], &start, &collected);
        assert!((averaged[0] - (3.0 / 3.0 + 6.0 / 4.0)).abs() < 1e-6);
        // A constant vector stays constant whatever arrives.
        let collected = Collected {
            messages: vec![from(1, vec![2.0])],
            lost: 1,
        };
        assert!((gossip_average(&[2.0], &start, &collected)[0] - 2.0).abs() < 1e-6);
        // Nothing heard: unchanged.
        assert_eq!(gossip_average(&[1.5], &start, &Collected::default()), vec![1.5]);
    }
}
