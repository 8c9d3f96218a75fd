//! One round on one node, the same for every algorithm:
//!
//! 1. work out which neighbours the radio lets us hear this round, and how long to
//!    wait for each (so that a faster neighbour's message is accepted at once);
//! 2. the algorithm's own steps ([`crate::strategy`]): for `dml`, predict on the
//!    public batch, swap predictions, train toward the neighbours' aggregate; for
//!    `fedavg`, train, swap parameters, average; for `local`, train. Its model work
//!    goes through [`Round::compute`], its exchange through [`Round::exchange`];
//! 3. evaluate on the test set and report.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use candle_core::Tensor;
use tokio::sync::mpsc;
use tokio::task::block_in_place;
use tokio::time::Instant;
use tracing::{debug, warn};
use wdml_proto::policy::Closing;
use wdml_proto::{AdversaryKind, Peer, RoundMetrics, StartRound, Undelivered};

use crate::audit::AuditLog;
use crate::checkpoint::Owner;
use crate::device::DeviceProfile;
use crate::emulated::{self, Sent, band_phase_s, band_wait_s};
use crate::exchange::client::{Link, PeerClients};
use crate::exchange::codec::Envelope;
use crate::exchange::shaper::{AirReceiver, Listening, Shaper};
use crate::exchange::{Collected, Mailbox, MessageShape, Outgoing, Punctuality, Quorum, send_and_collect};
use crate::learn::Learn;
use crate::learn::trust::Trust;
use crate::plan::RunPlan;
use crate::privacy::PrivateTraining;
use crate::shard::{BatchSampler, Shard};
use crate::strategy::{self, Losses};
use crate::{Error, Result};
use wdml_channel::spectrum::AirSlot;

/// Rows per evaluation batch: bounds memory, not results.
pub(crate) const EVAL_BATCH: usize = 500;

/// Everything a node keeps from round to round.
pub struct Node {
    pub id: u32,
    pub plan: RunPlan,
    /// The model: Candle's, or one in the device's own program.
    pub learner: Box<dyn Learn>,
    pub shard: Shard,
    pub batches: BatchSampler,
    pub mailbox: Arc<Mailbox>,
    pub peers: PeerClients,
    pub shaper: Shaper,
    /// How this node misbehaves, if the scenario makes it an adversary.
    pub adversary: Option<AdversaryKind>,
    /// How far each neighbour's predictions sat from the consensus over recent rounds
    /// (`train.aggregate = "trust-weighted"`; empty otherwise).
    pub trust: Trust,
    /// How long to wait for each neighbour; who is silent.
    pub punctuality: Punctuality,
    /// Where its checkpoint goes, and whose it is.
    pub state_dir: Option<PathBuf>,
    /// The privacy audit's record of what it sends (`privacy.audit`; `None`: off, or an
    /// algorithm that sends nothing).
    pub audit: Option<AuditLog>,
    pub owner: Owner,
    /// DP-SGD and its budget, when the run's `[privacy]` asks for them.
    pub privacy: Option<PrivateTraining>,
    /// Neighbours that went silent in the round under way (for its outcome).
    pub newly_silent: Vec<(u32, u32)>,
    /// Where a message that could not be delivered is said at once (the session tells
    /// the coordinator, which tells its receiver not to wait for it).
    pub undelivered: Option<mpsc::UnboundedSender<Undelivered>>,
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
    /// The same arrivals in emulated seconds from the sender's start of transmission.
    arrival_s: BTreeMap<u32, f64>,
    /// The ones the round waits for (not silent), and each one's deadline.
    deadlines: BTreeMap<u32, Instant>,
    /// On a shared band: when the exchange phase begins, emulated seconds after the
    /// round's start ([`band_phase_s`]); 0 on dedicated bands.
    band_phase_s: f64,
    /// Over the air: this node's own slot, in which its aligned neighbours transmit.
    air_slot: Option<AirSlot>,
}

impl Expected {
    fn new(began: Instant) -> Self {
        Expected {
            began,
            delivered: BTreeMap::new(),
            arrival_s: BTreeMap::new(),
            deadlines: BTreeMap::new(),
            band_phase_s: 0.0,
            air_slot: None,
        }
    }
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

/// CPU time of the calling thread so far: unlike wall time, it leaves out the time the
/// thread waited for a core that other processes held.
pub fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: as in `process_cpu_time`, for the calling thread's clock.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// A round under way, as a strategy sees it: its start, the clock of its model work,
/// and the exchange with its neighbours.
pub(crate) struct Round<'a> {
    pub start: &'a StartRound,
    /// Each neighbour's own neighbours this round.
    pub neighbourhood: Neighbourhood,
    /// The device this node emulates, if any, and the wall seconds per emulated
    /// second (the channel's `time_scale`): compute is paced like the radio.
    device: Option<(DeviceProfile, f64)>,
    /// The learner's FLOP counter, and its value when the round began.
    flops: (Arc<AtomicU64>, u64),
    /// Once exchanged: the emulated time at which this node had sent its message and
    /// heard its neighbours', and the FLOPs it had computed by then.
    exchanged: Option<(f64, u64)>,
    /// What the algorithm sends, if anything.
    shape: Option<MessageShape>,
    metrics: RoundMetrics,
    compute: ComputeClock,
    expected: Expected,
    deadline: Instant,
}

impl Round<'_> {
    /// Over the air: this node's own slot this round (its aligned neighbours, the
    /// noise of their sum), as listening found it.
    pub fn air_slot(&self) -> Option<&AirSlot> {
        self.expected.air_slot.as_ref()
    }

    /// Model work, on this thread (tensor work blocks it), counted as compute. On an
    /// emulated device it lasts, in wall time, at least its emulated time × time_scale:
    /// a slow device is slow in wall time too.
    pub fn compute<T>(&mut self, work: impl FnOnce() -> T) -> T {
        let (counter, device) = (&self.flops.0, &self.device);
        self.compute.time(|| {
            block_in_place(|| {
                let (began, before) = (Instant::now(), counter.load(Ordering::Relaxed));
                let out = work();
                if let Some((profile, scale)) = device {
                    let done = counter.load(Ordering::Relaxed) - before;
                    // Representable: time_scale was checked at the start, and a round's
                    // work is bounded by its model and batch sizes.
                    let paced = wdml_channel::wall_time(profile.seconds(done), *scale).unwrap_or_default();
                    std::thread::sleep(paced.saturating_sub(began.elapsed()));
                }
                out
            })
        })
    }

    /// Sends this round's message (`values`, in the algorithm's [`MessageShape`]) to
    /// every neighbour, paced by the radio, while collecting theirs; counts the
    /// exchange's time, bytes and radio cost, and each neighbour's punctuality.
    pub async fn exchange(&mut self, node: &mut Node, values: &[f32]) -> Result<Collected> {
        // An algorithm that sends nothing hears nothing either.
        let Some(shape) = self.shape else {
            return Ok(Collected::default());
        };
        let began = Instant::now();
        let before = self.flops.0.load(Ordering::Relaxed) - self.flops.1;
        // A silent adversary keeps its predictions to itself (and its radio idle):
        // misbehaviour is applied here, at the exchange, whatever the algorithm.
        let withhold = node.adversary == Some(AdversaryKind::Silent);
        let destinations = if withhold { Vec::new() } else { self.destinations(node) };
        let air = match node.plan.over_the_air() {
            true => Some(self.air_receivers(node, shape, withhold)?),
            false => None,
        };
        let phase_s = self.expected.band_phase_s;
        let outgoing = Outgoing {
            envelope: Envelope {
                run_id: node.plan.run_id.clone(),
                round: self.start.round,
                round_token: self.start.round_token,
                sender: node.id,
            },
            values,
            shape,
            destinations,
            withhold,
            wait_s: band_wait_s(&node.plan, phase_s, node.id, self.start.band_start_s),
            air,
            undelivered: node.undelivered.clone(),
        };
        // When this node's radio is done transmitting, over the air: its last slot.
        let air_busy_s = outgoing.air.iter().flatten().fold(0.0f64, |busy, receiver| {
            match receiver.slot.aligned(node.id as usize) {
                Some(_) => busy.max(receiver.wait_s + receiver.slot.span_s()),
                None => busy,
            }
        });
        let (deadline, quorum) = self.closing(node);
        let collected = send_and_collect(
            &node.shaper,
            &node.mailbox,
            outgoing,
            deadline,
            &self.expected.deadlines,
            quorum,
            &mut self.metrics,
        )
        .await?;
        if !collected.stale.is_empty() {
            let ages: u32 = collected.stale.iter().map(|m| self.start.round - m.round).sum();
            self.metrics.stale_used = collected.stale.len() as u32;
            self.metrics.stale_age = f64::from(ages) / collected.stale.len() as f64;
        }
        self.note_punctuality(node, &collected);
        self.metrics.exchange_ms = ms(began.elapsed());
        let ready = self.emulated_ready(node, before, air_busy_s, &collected);
        self.exchanged = Some((ready, before));
        // A message withheld, or with no neighbour to go to, gave nobody anything.
        if node.audit.is_some() && !withhold && !self.start.neighbours.is_empty() {
            self.audit(node, values)?;
        }
        Ok(collected)
    }

    /// The privacy audit: records what the neighbours now hold of this node
    /// ([`crate::audit`]). After the exchange and its timing, so that the message does
    /// not leave later for it, and outside [`Round::compute`], so that neither the
    /// emulated clock nor the FLOPs count it: a run's figures are the same with the
    /// audit on.
    fn audit(&self, node: &mut Node, sent: &[f32]) -> Result<()> {
        let start = self.start;
        block_in_place(|| {
            let Some((kind, logits)) = strategy::neighbours_view(node.plan.algorithm, node, start, sent)? else {
                return Ok(());
            };
            let classes = node.plan.classes();
            match node.audit.as_mut() {
                Some(log) => log.record(start.round + 1, start.public_seed, kind, classes, &logits),
                None => Ok(()),
            }
        })
    }

    /// Where this round's message goes: each neighbour's link (`None`: it could not be
    /// set up, and the send counts the neighbour unreachable).
    fn destinations(&self, node: &mut Node) -> Vec<(u32, Option<Link>)> {
        self.start
            .neighbours
            .iter()
            .map(|peer| match node.peers.link(peer.node_id, &peer.address) {
                Ok(link) => (peer.node_id, Some(link)),
                Err(status) => {
                    warn!(peer = peer.node_id, "cannot reach neighbour: {}", status.message());
                    (peer.node_id, None)
                }
            })
            .collect()
    }

    /// Over the air: each neighbour's slot, which its own neighbours share (none when
    /// this node withholds).
    fn air_receivers(&self, node: &Node, shape: MessageShape, withhold: bool) -> Result<Vec<AirReceiver>> {
        let phase_s = self.expected.band_phase_s;
        self.start
            .neighbours
            .iter()
            .filter(|_| !withhold)
            .map(|peer| {
                Ok(AirReceiver {
                    id: peer.node_id,
                    wait_s: band_wait_s(&node.plan, phase_s, node.id, peer.band_start_s),
                    slot: node.shaper.air_slot(
                        self.start.round,
                        peer.node_id,
                        self.neighbourhood.of(peer.node_id),
                        shape.values(),
                    )?,
                })
            })
            .collect()
    }

    /// How long the exchange may wait, and for how many: the round's deadline, and
    /// under a semi-synchronous policy the round's own rule.
    fn closing(&self, node: &Node) -> (Instant, Option<Quorum>) {
        let wall = |emulated_s: f64| node.shaper.wall(emulated_s).unwrap_or(Duration::MAX);
        match node.plan.closing {
            Closing::Sync => (self.deadline, None),
            Closing::Quorum { grace_s, .. } => (
                self.deadline,
                Some(Quorum {
                    // The same fraction of the neighbourhood, this node counted in: with
                    // 3 neighbours and a quorum of 0.75, 2 of them.
                    needed: node.plan.closing.needed(self.expected.deadlines.len() + 1) - 1,
                    grace: wall(grace_s),
                }),
            ),
            // What comes after the exchange must fit before the deadline too, with a
            // margin (5 % of it) for the report's way to the coordinator.
            Closing::Deadline { deadline_s } => {
                let model = &node.plan.models[node.id as usize];
                let after = strategy::flops_after_exchange(node.plan.algorithm, &node.plan, model);
                let after_s = node.plan.device(node.id).map_or(0.0, |d| d.seconds(after));
                let cutoff = self.expected.began + wall((0.95 * deadline_s - after_s).max(0.0));
                (self.deadline.min(cutoff), None)
            }
        }
    }

    /// Punctuality: how late each expected message came beyond its air time, or that
    /// it did not come (the radio's losses are no neighbour's fault: not counted; nor
    /// is a message its sender said could not reach this node: that neighbour is
    /// sending, over a broken link, and must not be reported silent for it).
    fn note_punctuality(&self, node: &mut Node, collected: &Collected) {
        for (&neighbour, &air) in &self.expected.delivered {
            if collected.unreachable.contains(&neighbour) {
                continue;
            }
            match collected.messages.iter().find(|m| m.sender == neighbour) {
                Some(message) => {
                    let arrived = message.arrived.unwrap_or(self.expected.began);
                    let lead = arrived
                        .saturating_duration_since(self.expected.began)
                        .saturating_sub(air);
                    node.punctuality.arrived(neighbour, lead);
                }
                None => {
                    if let Some(missed) = node.punctuality.miss(neighbour, node.plan.silent_after) {
                        node.newly_silent.push((neighbour, missed));
                    }
                }
            }
        }
    }

    /// The emulated time at which this node has sent its message and heard its
    /// neighbours' ([`emulated::exchange_done`]).
    fn emulated_ready(&self, node: &Node, before: u64, air_busy_s: f64, collected: &Collected) -> f64 {
        let sent = if node.plan.over_the_air() {
            Sent::OverTheAir { busy_s: air_busy_s }
        } else {
            Sent::Transmitted {
                wait_s: band_wait_s(&node.plan, self.expected.band_phase_s, node.id, self.start.band_start_s),
                airtime_s: self.metrics.airtime_s,
            }
        };
        let heard = collected.messages.iter().filter_map(|m| {
            self.expected
                .arrival_s
                .get(&m.sender)
                .map(|&arrival| (m.sender, arrival))
        });
        emulated::exchange_done(&node.plan, node.id, before, sent, heard)
    }
}

/// The message this node's algorithm sends each round, if any.
pub fn message(node: &Node) -> Option<MessageShape> {
    strategy::message(
        node.plan.algorithm,
        node.plan.public_batch as u32,
        node.plan.encoding,
        node.plan.top_k,
        node.plan.spec.classes,
        node.learner.parameter_count(),
    )
}

/// A round's neighbourhood as this node derives it: each live neighbour's own live
/// neighbours, which set its broadcast's rate, its unicast order and its over-the-air
/// slot. They are its radio neighbours (from the channel, as the coordinator computes
/// them) minus the members the coordinator lists as absent, narrowed by
/// `channel.selection` when the run sets one.
#[derive(Debug, Default)]
pub(crate) struct Neighbourhood(pub(crate) BTreeMap<u32, Vec<u32>>);

impl Neighbourhood {
    /// From the round's start; refuses an absence list that is not one, and a
    /// neighbour count or entries that the same rule does not give for this node (the
    /// coordinator and this node would account the radio differently).
    fn derive(shaper: &Shaper, me: u32, nodes: u32, start: &StartRound) -> Result<Self> {
        let absent = &start.absent;
        let ascending = absent.windows(2).all(|w| w[0] < w[1]);
        if !ascending || absent.last().is_some_and(|&a| a >= nodes) {
            return Err(Error::config(
                "StartRound.absent",
                format!("is not an ascending list of node ids below {nodes}"),
            ));
        }
        let live = |j: &u32| absent.binary_search(j).is_err();
        let live_neighbours =
            |j: u32| -> Vec<u32> { shaper.radio_neighbours(j).iter().copied().filter(live).collect() };
        // With a selection policy, the round's neighbours are its choice among everyone's
        // live neighbours (the coordinator then lists every absence, not only those near).
        let selected = match shaper.selects() {
            false => None,
            true => Some(shaper.select(start.round, |j| live(&j))?),
        };
        let round_neighbours = |j: u32| match &selected {
            Some(lists) => lists.get(j as usize).cloned().unwrap_or_default(),
            None => live_neighbours(j),
        };
        let mine = round_neighbours(me);
        if start.neighbour_count as usize != mine.len() {
            return Err(Error::config(
                "StartRound.neighbour_count",
                format!(
                    "{} neighbours, where this node's channel and the absences give {}: the \
                     coordinator runs another channel",
                    start.neighbour_count,
                    mine.len()
                ),
            ));
        }
        // Entries ascending, each a neighbour's: one walk through both.
        let mut entries = start.neighbours.iter().map(|p| p.node_id).peekable();
        for &j in &mine {
            entries.next_if_eq(&j);
        }
        if let Some(stray) = entries.next() {
            return Err(Error::config(
                "StartRound.neighbours",
                format!(
                    "an entry for node {stray}, which is not a neighbour this round by this \
                     node's channel and the absences, or not in ascending order: the \
                     coordinator runs another channel"
                ),
            ));
        }
        Ok(Neighbourhood(
            mine.into_iter().map(|j| (j, round_neighbours(j))).collect(),
        ))
    }

    /// `peer`'s live neighbours this round (empty for a node that is not ours).
    pub(crate) fn of(&self, peer: u32) -> &[u32] {
        self.0.get(&peer).map_or(&[], Vec::as_slice)
    }

    /// Every neighbour this round, ascending, with its address (its entry's in `start`,
    /// else the one the coordinator's stream gave before, in `book`) and band turn (0
    /// without an entry).
    fn peers(&self, start: &StartRound, book: &AddressBook) -> Result<Vec<Peer>> {
        let mut entries = start.neighbours.iter().peekable();
        self.0
            .keys()
            .map(|&j| {
                let entry = entries.next_if(|p| p.node_id == j);
                let given = entry.map(|p| p.address.as_str()).filter(|a| !a.is_empty());
                let Some(address) = given.or_else(|| book.get(j)) else {
                    return Err(Error::config(
                        "StartRound.neighbours",
                        format!("no address for neighbour {j}: the coordinator's stream never gave one"),
                    ));
                };
                Ok(Peer {
                    node_id: j,
                    address: address.to_string(),
                    band_start_s: entry.map_or(0.0, |p| p.band_start_s),
                })
            })
            .collect()
    }
}

/// The neighbours' addresses as one stream from the coordinator gave them: a round's
/// start carries only those it had not given before (docs/protocol.md §4). Cheap to
/// clone: the round worker holds the book of its round while the stream goes on.
#[derive(Clone, Debug, Default)]
pub struct AddressBook(Arc<BTreeMap<u32, String>>);

impl AddressBook {
    /// Takes in the addresses `start` gives.
    pub fn learn(&mut self, start: &StartRound) {
        for peer in start.neighbours.iter().filter(|p| !p.address.is_empty()) {
            if self.get(peer.node_id) != Some(peer.address.as_str()) {
                Arc::make_mut(&mut self.0).insert(peer.node_id, peer.address.clone());
            }
        }
    }

    fn get(&self, id: u32) -> Option<&str> {
        self.0.get(&id).map(String::as_str)
    }
}

/// A shared band's turn from the coordinator: emulated seconds, finite and ≥ 0.
fn check_band_start(field: &str, band_start_s: f64) -> Result<()> {
    if band_start_s.is_finite() && band_start_s >= 0.0 {
        return Ok(());
    }
    Err(Error::config(field, format!("{band_start_s} is not an emulated time")))
}

/// Runs one round, whose start came with the addresses its stream had given (`book`),
/// and returns its metrics.
pub async fn run_round(node: &mut Node, start: &StartRound, book: &AddressBook) -> Result<RoundOutcome> {
    let began = Instant::now();
    check_band_start("StartRound.band_start_s", start.band_start_s)?;
    for peer in &start.neighbours {
        check_band_start("StartRound.neighbours.band_start_s", peer.band_start_s)?;
    }
    node.shaper.move_to(start.emulated_start_s)?;
    let neighbourhood = Neighbourhood::derive(&node.shaper, node.id, node.plan.nodes, start)?;
    // From here on the start lists every neighbour, with its address and band turn.
    let start = &StartRound {
        neighbours: neighbourhood.peers(start, book)?,
        ..start.clone()
    };
    let neighbours = start.neighbours.iter().map(|p| (p.node_id, p.address.as_str()));
    node.peers.begin_round(start.round, neighbours);
    let timeout = Duration::from_millis(u64::from(start.exchange_timeout_ms));
    let mut round = Round {
        start,
        neighbourhood,
        device: node.plan.device(node.id).map(|d| (d.clone(), node.shaper.time_scale())),
        flops: {
            let counter = node.learner.flops();
            let now = counter.load(Ordering::Relaxed);
            (counter, now)
        },
        exchanged: None,
        shape: message(node),
        metrics: RoundMetrics::default(),
        compute: ComputeClock::default(),
        expected: Expected::new(began),
        deadline: began + timeout,
    };
    if let Some(shape) = round.shape {
        // At once: a faster neighbour's message may already be on its way.
        let neighbours: Vec<u32> = start.neighbours.iter().map(|p| p.node_id).collect();
        round.expected = listen(
            node,
            start,
            &round.neighbourhood,
            began,
            timeout,
            shape,
            &mut round.metrics,
        )?;
        let awaited: Vec<u32> = round.expected.deadlines.keys().copied().collect();
        node.mailbox
            .begin_round(start.round, start.round_token, &neighbours, &awaited);
    }

    let losses = strategy::learn(node.plan.algorithm, node, &mut round).await?;
    // What the device computed this round: evaluation below is the experimenter's.
    let flops = round.flops.0.load(Ordering::Relaxed) - round.flops.1;

    let (evaluation, validation) = round.compute(|| -> Result<_> {
        let shard = &node.shard;
        let test = node
            .learner
            .evaluate(&shard.test_images, &shard.test_labels, EVAL_BATCH)?;
        let validation = match &shard.validation {
            Some((images, labels)) => Some(node.learner.evaluate(images, labels, EVAL_BATCH)?),
            None => None,
        };
        Ok((test, validation))
    })?;

    let mut metrics = round.metrics;
    metrics.ce_loss = losses.ce;
    metrics.kl_loss = losses.kl;
    metrics.train_loss = losses.total;
    metrics.test_accuracy = f64::from(evaluation.accuracy);
    metrics.test_loss = f64::from(evaluation.loss);
    metrics.validation_accuracy = validation.map(|v| f64::from(v.accuracy));
    metrics.epsilon = node.privacy.as_ref().map(|p| p.epsilon_after(start.round + 1));
    metrics.compute_ms = ms(round.compute.wall);
    metrics.compute_cpu_ms = ms(round.compute.cpu);
    metrics.flops = flops;
    // Without a device, compute takes no emulated time and no energy.
    let device = round.device.as_ref().map(|(d, _)| d);
    let seconds = |flops: u64| device.map_or(0.0, |d| d.seconds(flops));
    metrics.device_compute_s = device.map_or(0.0, |d| d.seconds(flops));
    metrics.compute_energy_j = device.map_or(0.0, |d| d.joules(flops));
    metrics.emulated_round_s = emulated::round_done(round.exchanged, flops, seconds);
    metrics.private_samples = node.shard.private_len() as u32;
    metrics.messages_rejected = node.mailbox.take_rejected();
    let silent = node.take_silent();
    debug!(round = start.round + 1, accuracy = metrics.test_accuracy, "round done");
    Ok(RoundOutcome { metrics, silent })
}

impl Node {
    /// Neighbours that went silent this round (set aside by [`Round::exchange`]).
    fn take_silent(&mut self) -> Vec<(u32, u32)> {
        std::mem::take(&mut self.newly_silent)
    }
}

/// Which neighbours' messages the radio delivers to us this round, what listening to
/// all of them costs (the same pure model the senders evaluate), and how long to wait
/// for each: silent neighbours not at all, the others as long as the radio and their
/// punctuality justify (or the whole timeout, without `adaptive_deadline`).
fn listen(
    node: &Node,
    start: &StartRound,
    neighbourhood: &Neighbourhood,
    began: Instant,
    timeout: Duration,
    shape: MessageShape,
    metrics: &mut RoundMetrics,
) -> Result<Expected> {
    let bytes = shape.bytes();
    let mut expected = Expected::new(began);
    let phase_s = band_phase_s(&node.plan);
    expected.band_phase_s = phase_s;
    // Over the air: this node's own slot, in which every aligned neighbour transmits at
    // once; listening to it costs the same however many take part.
    if node.plan.over_the_air() {
        let senders: Vec<u32> = start.neighbours.iter().map(|p| p.node_id).collect();
        let slot = node.shaper.air_slot(start.round, node.id, &senders, shape.values())?;
        metrics.rx_energy_j += slot.receiver_energy_j();
        expected.air_slot = Some(slot);
    }
    for peer in &start.neighbours {
        let listening = match &expected.air_slot {
            Some(slot) => Listening {
                delivered: slot.aligned(peer.node_id as usize).is_some(),
                rx_energy_j: 0.0,
                // From the sender's readiness to the end of our slot (the sum exists
                // only then), plus its link's latency.
                arrival_s: band_wait_s(&node.plan, phase_s, peer.node_id, start.band_start_s)
                    + slot.span_s()
                    + slot.aligned(peer.node_id as usize).map_or(0.0, |a| a.latency_s),
            },
            None => {
                let wait = band_wait_s(&node.plan, phase_s, peer.node_id, peer.band_start_s);
                let receivers = neighbourhood.of(peer.node_id);
                node.shaper.listen(start.round, peer.node_id, receivers, bytes, wait)?
            }
        };
        metrics.rx_energy_j += listening.rx_energy_j;
        if !listening.delivered {
            metrics.messages_radio_lost += 1;
            continue;
        }
        // Pacing that no clock can represent was refused at the start (time_scale).
        let air = node.shaper.wall(listening.arrival_s).unwrap_or(timeout);
        expected.delivered.insert(peer.node_id, air);
        expected.arrival_s.insert(peer.node_id, listening.arrival_s);
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

/// What the distillation term pulls toward: public images and a target distribution
/// per row; with stale predictions, the public batches of several rounds one after the
/// other, and a weight per row.
pub(crate) struct Distill {
    pub public: Tensor,
    pub targets: Tensor,
    pub weights: Option<Tensor>,
}

/// E local steps of CE on private batches, plus the distillation term toward
/// `distill` when given; the mean losses.
pub(crate) fn train(node: &mut Node, distill: Option<&Distill>) -> Result<Losses> {
    let steps = node.plan.local_steps;
    let (mut ce, mut kl, mut total) = (0.0, 0.0, 0.0);
    for step in 0..steps {
        let slice = match distill {
            Some(d) => {
                let rows = d.public.dim(0)?;
                // As many rows per step with stale batches as without (the compute of a
                // round does not grow): the steps cycle through all of them.
                let take = node.plan.distill_batch.min(rows);
                let start = (step as usize * take) % rows.max(1);
                let weights = d.weights.as_ref().map(|w| cyclic_rows(w, start, take)).transpose()?;
                Some((
                    cyclic_rows(&d.public, start, take)?,
                    cyclic_rows(&d.targets, start, take)?,
                    weights,
                ))
            }
            None => None,
        };
        let distill = slice.as_ref().map(|(p, t, _)| (p, t));
        let weights = slice.as_ref().and_then(|(_, _, w)| w.as_ref());
        let losses = match &mut node.privacy {
            // DP-SGD: a Poisson batch from the node's secret randomness.
            Some(privacy) => {
                let private = privacy.batch(&node.shard)?;
                let dp = privacy.dp;
                let private = private.as_ref().map(|(x, y)| (x, y));
                node.learner
                    .private_step(private, distill, weights, &dp, privacy.rng())?
            }
            None => {
                let (images, labels) = node.batches.next_batch(&node.shard)?;
                node.learner.train_step_weighted(&images, &labels, distill, weights)?
            }
        };
        ce += f64::from(losses.ce);
        kl += f64::from(losses.kl);
        total += f64::from(losses.total);
    }
    let n = f64::from(steps);
    Ok(Losses {
        ce: ce / n,
        kl: kl / n,
        total: total / n,
    })
}

/// `len` rows of `t` from `start`, wrapping past the end (all of `t` when it has `len`).
pub(crate) fn cyclic_rows(t: &Tensor, start: usize, len: usize) -> Result<Tensor> {
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
    use candle_core::Device;

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

    fn ring_shaper(me: u32) -> Shaper {
        let config: wdml_channel::ChannelConfig = serde_json::from_str(r#"{"topology": "ring"}"#).unwrap();
        Shaper::new(config.resolve().unwrap(), 7, 6, me).unwrap()
    }

    /// A start with `count` neighbours, entries (id, address, band turn) and absences.
    fn start(count: u32, entries: &[(u32, &str, f64)], absent: &[u32]) -> StartRound {
        StartRound {
            neighbours: entries
                .iter()
                .map(|&(node_id, address, band_start_s)| Peer {
                    node_id,
                    address: address.into(),
                    band_start_s,
                })
                .collect(),
            neighbour_count: count,
            absent: absent.to_vec(),
            ..StartRound::default()
        }
    }

    /// On a ring of 6 without node 3, node 1 derives its neighbours' neighbourhoods:
    /// 0 hears 5 and 1; 2 hears only 1. A count or entries the ring does not give are
    /// refused.
    #[test]
    fn a_node_derives_its_neighbours_neighbourhoods_and_checks_its_own() {
        let shaper = ring_shaper(1);
        let around = Neighbourhood::derive(&shaper, 1, 6, &start(2, &[], &[3])).unwrap();
        assert_eq!(
            (around.of(0), around.of(2), around.of(4)),
            (&[1, 5][..], &[1][..], &[][..])
        );
        let refused = |start: StartRound| Neighbourhood::derive(&shaper, 1, 6, &start).unwrap_err().to_string();
        assert!(refused(start(3, &[], &[3])).contains("StartRound.neighbour_count"));
        assert!(refused(start(2, &[(3, "c:3", 0.0)], &[3])).contains("an entry for node 3"));
        assert!(refused(start(2, &[(2, "", 0.0), (0, "", 0.0)], &[3])).contains("StartRound.neighbours"));
        assert!(refused(start(2, &[], &[3, 3])).contains("StartRound.absent"));
        assert!(refused(start(2, &[], &[6])).contains("StartRound.absent"));
    }

    /// A neighbour's address comes from its entry, else from what the stream gave
    /// before; one given nowhere refuses the round. The book keeps every address a
    /// stream gave, a newer one replacing the older.
    #[test]
    fn a_node_finds_each_neighbours_address_in_its_entry_or_its_stream() {
        let shaper = ring_shaper(1);
        let mut book = AddressBook::default();
        book.learn(&start(2, &[(0, "a:1", 0.0), (2, "b:1", 0.0)], &[]));
        book.learn(&start(2, &[(2, "b:2", 0.0)], &[]));
        let peers = |start: StartRound, book: &AddressBook| {
            let around = Neighbourhood::derive(&shaper, 1, 6, &start)?;
            let peers = around.peers(&start, book)?;
            Ok::<_, Error>(
                peers
                    .into_iter()
                    .map(|p| (p.node_id, p.address, p.band_start_s))
                    .collect::<Vec<_>>(),
            )
        };
        assert_eq!(
            peers(start(2, &[(2, "", 0.5)], &[]), &book).unwrap(),
            [(0, "a:1".to_string(), 0.0), (2, "b:2".to_string(), 0.5)]
        );
        let e = peers(start(2, &[(0, "a:1", 0.0)], &[]), &AddressBook::default()).unwrap_err();
        assert!(e.to_string().contains("no address for neighbour 2"), "{e}");
    }
}
