//! The node process: bind the peer service, join the coordinator, prepare the data
//! and the model (resuming from the node's checkpoint if it has one), then follow the
//! coordinator's rounds until the run is over.
//!
//! Two tasks share the work. The *session* owns the Sync stream: it forwards
//! StartRound to the round worker (always the newest, so a node that fell behind
//! skips ahead instead of replaying stale rounds), tells the mailbox when a neighbour
//! is gone, sends heartbeats and reports, and reconnects (joining again) when the
//! stream breaks. The *round worker* owns the model, runs [`run_round`], and writes a
//! checkpoint after every round it reports; a round that fails (a panic included) is
//! reported to the coordinator and the node leaves the run.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};
use tracing::{debug, error, info, warn};
use wdml_proto::{
    CoordinatorEvent, Done, Encoding, Heartbeat, Hello, JoinRequest, LeaveRequest, NeighbourSilent, NodeEvent,
    RoundFailed, RunComplete, RunSettings, StartRound, Undelivered, coordinator_client::CoordinatorClient,
    coordinator_event, node_event, peer_exchange_server::PeerExchangeServer,
};
use wdml_transport::{self as transport, Identity, Limits, Security};

use crate::audit::AuditLog;
use crate::checkpoint::{self, Owner};
use crate::data::{DataSpec, Dataset, Location, split};
use crate::exchange::client::{MAX_FRAME_BYTES, PeerClients};
use crate::exchange::shaper::Shaper;
use crate::exchange::{Expectation, Mailbox, PeerService, Punctuality};
use crate::learn::trust::Trust;
use crate::learn::{Learn, Learner};
use crate::model::ModelSpec;
use crate::model::kernels::{self, Kernels};
use crate::plan::RunPlan;
use crate::privacy::PrivateTraining;
use crate::round::{AddressBook, EVAL_BATCH, Node, message, run_round};
use crate::shard::{BatchSampler, Shard};
use crate::{Error, Result, seed, strategy};

/// How a node is started.
#[derive(Clone, Debug)]
pub struct Config {
    /// This node's id, 0-based; it also picks the node's private shard.
    pub id: u32,
    /// The model; `None`: the scenario's model for this id, as the coordinator says.
    pub model: Option<ModelSpec>,
    /// The coordinator's `host:port`.
    pub coordinator: String,
    /// The `host:port` other nodes dial; defaults to the bound address.
    pub advertise: Option<String>,
    /// Overrides the run's dataset directory on this machine.
    pub data_dir: Option<PathBuf>,
    /// How long to keep trying to reach the coordinator, at start and after a break.
    pub coordinator_timeout: Duration,
    /// Mutual TLS with this node's certificate, or `--insecure`.
    pub security: Security,
    /// Where this node keeps its checkpoint; `None`: no checkpoints.
    pub state_dir: Option<PathBuf>,
    /// Fault injection for tests: the round worker panics in this round.
    pub panic_at_round: Option<u32>,
    /// A model that lives in this device's own program; `model` is then its
    /// `ext:NAME`. `None`: a Candle model built from the spec.
    pub external: Option<ExternalModel>,
}

/// A model that lives in the device's own program (the Python package's, say): the
/// node runtime does everything else — data, exchange, radio, reports.
#[derive(Clone)]
pub struct ExternalModel {
    /// Its trainable parameters, as the device declares them when it joins.
    pub parameters: u64,
    /// Builds it once the run's settings are known (the plan, this node's id), on a
    /// blocking thread.
    pub build: Arc<BuildModel>,
}

/// Builds an external model from the run's plan and the node's id.
pub type BuildModel = dyn Fn(&RunPlan, u32) -> Result<Box<dyn Learn>> + Send + Sync;

impl std::fmt::Debug for ExternalModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalModel")
            .field("parameters", &self.parameters)
            .finish_non_exhaustive()
    }
}

/// How a node's run ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The coordinator closed the run.
    Complete(RunComplete),
    /// This node was asked to stop.
    Shutdown,
    /// This node left the run on its own, for the reason given (its privacy budget
    /// was spent).
    Left(String),
}

/// Runs the node with its peer service on `listener` until the run ends or
/// `shutdown` completes.
pub async fn run(config: Config, listener: TcpListener, shutdown: impl Future<Output = ()>) -> Result<Outcome> {
    let kernels = Kernels::from_env().map_err(|e| Error::config(kernels::VAR, e))?;
    let advertise = advertised_address(&config, &listener)?;
    if let Some(identity) = config.security.identity()
        && identity != Identity::Node(config.id)
    {
        return Err(Error::config(
            "node.id",
            format!(
                "this node is {}, but its certificate is {identity}'s",
                Identity::Node(config.id)
            ),
        ));
    }
    // A node given its own data reads it before joining, so that the coordinator can
    // refuse it at once if it is not the run's (else its Hello is checked).
    let own_data = match &config.data_dir {
        Some(dir) => {
            let location = Location::at(Some(dir));
            Some(
                tokio::task::spawn_blocking(move || Dataset::load_labels(&location))
                    .await
                    .map_err(|e| Error::Io(std::io::Error::other(e)))??,
            )
        }
        None => None,
    };
    let declared = match (&config.model, &config.external) {
        (Some(ModelSpec::External { .. }), Some(external)) => external.parameters,
        (Some(model @ ModelSpec::External { .. }), None) => {
            return Err(Error::config(
                "node.model",
                format!("{model} is a model of the device's own program (e.g. the Python package); this node has none"),
            ));
        }
        (_, Some(_)) => {
            return Err(Error::config(
                "node.model",
                "a device that brings its own model joins as `ext:NAME`",
            ));
        }
        // Counted on the node's own data when it has some; else its Hello says it.
        (model, None) => match (model, &own_data) {
            (Some(m), Some(data)) => m.parameter_count(&data.spec()) as u64,
            _ => 0,
        },
    };
    let coordinator = Coordinator::new(&config)?;
    let join = JoinRequest {
        node_id: config.id,
        advertise: advertise.clone(),
        model: config.model.as_ref().map(ToString::to_string).unwrap_or_default(),
        parameters: declared,
        protocol_version: wdml_proto::PROTOCOL_VERSION,
        data_contract: wdml_proto::DATA_CONTRACT,
        data: own_data.as_ref().map(Dataset::spec),
    };
    let joined = coordinator.join(&join).await?;
    let model: ModelSpec = joined
        .model
        .parse()
        .map_err(|e| coordinator.error(format!("the coordinator gave an unusable model: {e}")))?;
    let plan = RunPlan::from_settings(joined.settings)?;
    if config.id >= plan.nodes {
        return Err(Error::config(
            "node.id",
            format!(
                "{} is out of range: the run has nodes 0 to {}",
                config.id,
                plan.nodes - 1
            ),
        ));
    }
    // The audit's record lives in the state directory: a node without one would run
    // without the record the run asked for.
    if plan.privacy.audit && config.state_dir.is_none() {
        return Err(Error::config(
            "privacy.audit",
            "the run records what each node sends (audit.jsonl) in the node's state directory, and this node \
             has none: start it with --state-dir DIR",
        ));
    }
    let parameters = match model {
        ModelSpec::External { .. } => declared,
        _ => model.parameter_count(&plan.spec) as u64,
    };
    info!(node = config.id, run = %plan.run_id, %advertise, %model, parameters, kernels = kernels.describe(), "joined");

    let mut node = prepare(&config, plan, model, own_data).await?;
    // A node whose algorithm sends nothing accepts no message (no 0 × 0 one arrives).
    let shape = message(&node);
    let (rows, cols, top_k) = shape.map_or((0, 0, 0), |m| (m.rows, m.cols, m.top_k));
    let expect = Expectation {
        run_id: node.plan.run_id.clone(),
        me: config.id,
        nodes: node.plan.nodes,
        rows,
        cols,
        max_message_bytes: node.plan.max_message_bytes,
        encoding: shape.map_or(Encoding::Unspecified, |m| m.encoding),
        top_k,
    };
    let (service, closer) = PeerService::new(expect, node.mailbox.clone());
    let service = PeerExchangeServer::new(service).max_decoding_message_size(MAX_FRAME_BYTES);
    let (stop_serving, serving_stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(transport::serve(
        transport::server().add_service(service),
        listener,
        config.security.clone(),
        Limits::members(),
        async {
            serving_stopped.await.ok();
        },
    ));

    let (rounds_tx, rounds_rx) = watch::channel::<Option<(StartRound, AddressBook)>>(None);
    let (report_tx, report_rx) = mpsc::channel::<Report>(16);
    // At most one per neighbour and round, and the session forwards them at once.
    let (undelivered_tx, undelivered_rx) = mpsc::unbounded_channel();
    node.undelivered = Some(undelivered_tx);
    let mailbox = node.mailbox.clone();
    let heartbeat = node.plan.heartbeat_interval;
    let histogram = node.shard.label_histogram(node.plan.classes())?;
    let data = node.plan.spec.clone();
    let worker = tokio::spawn(round_worker(node, rounds_rx, report_tx, config.panic_at_round));
    let session = Session {
        coordinator,
        join,
        parameters,
        histogram,
        data,
        session: joined.session,
        mailbox,
        rounds: rounds_tx,
        heartbeat,
    };
    let outcome = session.follow(report_rx, undelivered_rx, shutdown).await;

    worker.abort();
    closer.close();
    let _ = stop_serving.send(());
    // Graceful shutdown waits for the peers' connections to close; a peer that keeps
    // one open (or is cut off and never answers) must not keep this node alive.
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(Err(e))) => warn!("peer service ended with an error: {e}"),
        Err(_) => warn!("peer connections still open 5 s after the run; stopping anyway"),
        _ => {}
    }
    outcome
}

/// The address other nodes dial: `--advertise`, or the bound address when that is
/// specific (an unspecified 0.0.0.0 cannot be dialled).
fn advertised_address(config: &Config, listener: &TcpListener) -> Result<String> {
    if let Some(advertise) = &config.advertise {
        return Ok(advertise.clone());
    }
    let bound = listener.local_addr()?;
    if bound.ip().is_unspecified() {
        return Err(Error::config(
            "node.advertise",
            format!(
                "the peer service listens on {bound}; give the address other nodes should dial, e.g. --advertise 192.168.1.20:{}",
                bound.port()
            ),
        ));
    }
    Ok(bound.to_string())
}

/// Loads the data (unless the node read its own before joining: `own_data`), checks it
/// is the run's, computes this node's shard of the split, builds the model, and
/// restores it from the node's checkpoint if there is one.
async fn prepare(config: &Config, plan: RunPlan, model: ModelSpec, own_data: Option<Dataset>) -> Result<Node> {
    let location = match &config.data_dir {
        Some(dir) => Location {
            path: Some(dir.clone()),
            labels: plan.data.labels.clone(),
        },
        None => plan.data.clone(),
    };
    let id = config.id;
    let state_dir = config.state_dir.clone();
    let security = config.security.clone();
    let external = config.external.clone();
    // Loading and splitting is seconds of CPU work on the full dataset.
    tokio::task::spawn_blocking(move || {
        // The labels to split by, then only the samples this node keeps.
        let dataset = match own_data {
            Some(dataset) => dataset,
            None => Dataset::load_labels(&location)?,
        };
        if let Err(e) = plan.spec.admits(&dataset.spec()) {
            return Err(Error::Data {
                path: location.path.clone().unwrap_or_else(|| "embedded".into()),
                reason: format!("not this run's data: {e}"),
            });
        }
        // A public pool of its own: only its size is needed to split.
        let public_from = match &plan.public {
            Some(public) => Some(Dataset::load_labels(public)?.train.len()),
            None => None,
        };
        let split = split(&dataset, &plan.split_config(public_from))?;
        let shard = Shard::load(
            &location,
            plan.public.as_ref(),
            &split,
            id as usize,
            &plan.normalisation,
        )?;
        info!(
            node = id,
            dataset = %dataset.name,
            private = shard.private_len(),
            public_pool = shard.public_len(),
            test = split.test.len(),
            "data ready"
        );
        // Independent devices start from their own random models; parameter averaging
        // (FedAvg) starts every node from one shared model, as FedAvg assumes:
        // averaging independently initialised networks destroys them.
        let model_seed = if strategy::same_model(plan.algorithm) {
            seed::derive(plan.seed, &[seed::MODEL])
        } else {
            seed::derive(plan.seed, &[seed::MODEL, u64::from(id)])
        };
        // A device with its own model joined naming it (checked before the join), and
        // the coordinator admits only the scenario's: the model here is that one. (Candle
        // refuses to build an external model, should one ever get this far.)
        let mut learner: Box<dyn Learn> = match external {
            Some(external) => (external.build)(&plan, id)?,
            None => Box::new(Learner::new(&model, &plan.spec, plan.learner, model_seed)?),
        };
        let batch_seed = seed::derive(plan.seed, &[seed::BATCHES, u64::from(id)]);
        let owner = Owner {
            run_id: plan.run_id.clone(),
            instance: plan.run_instance.clone(),
            node: id,
            model: model.to_string(),
        };
        // Checkpoints hold a Candle model's parameters and optimiser; an external model
        // keeps its own state (a restarted device starts it afresh).
        let restored = match (&state_dir, learner.candle_mut()) {
            (Some(dir), Some(candle)) => checkpoint::load(dir, &owner, candle)?,
            _ => None,
        };
        let (batches, trust) = match restored {
            Some(restored) => {
                // Evaluated as the round reported it, so that the log shows the model
                // is the one the node had (the same accuracy, to the digit).
                let evaluation = learner.evaluate(&shard.test_images, &shard.test_labels, EVAL_BATCH)?;
                info!(
                    node = id,
                    round = restored.round,
                    "resumed from its checkpoint after round {} (test accuracy {:.4})",
                    restored.round,
                    evaluation.accuracy
                );
                (
                    BatchSampler::resume(shard.private_len(), plan.batch_size, batch_seed, restored.sampler)?,
                    restored.trust,
                )
            }
            None => (
                BatchSampler::new(shard.private_len(), plan.batch_size, batch_seed),
                Trust::default(),
            ),
        };
        // Its DP-SGD, with σ and the budget for its own shard (each node's sampling
        // rate, and so its ε, is its own).
        let privacy = PrivateTraining::new(
            &plan.privacy,
            plan.batch_size,
            shard.private_len(),
            plan.local_steps,
            plan.rounds,
        )?;
        if privacy.is_some() && learner.candle().is_none() {
            return Err(Error::config(
                "privacy.noise_multiplier",
                "DP-SGD clips each example's gradient, which needs a model wdml node builds; this device's \
                 model lives in its own program",
            ));
        }
        if let Some(privacy) = &privacy {
            info!(
                node = id,
                noise_multiplier = privacy.dp.noise_multiplier,
                sample_rate = privacy.dp.sample_rate,
                planned_epsilon = privacy.epsilon_after(plan.rounds),
                "DP-SGD"
            );
        }
        // Only an algorithm that sends something has anything to record.
        let audit = match &state_dir {
            Some(dir) if plan.privacy.audit && strategy::exchanges(plan.algorithm) => {
                Some(AuditLog::open(dir, &plan.run_instance, id)?)
            }
            _ => None,
        };
        let mailbox = Arc::new(Mailbox::new(plan.nodes, plan.staleness.max));
        let shaper = Shaper::new(plan.channel.clone(), plan.seed, plan.nodes, id)?;
        let peers = PeerClients::new(security, plan.connect_timeout);
        Ok(Node {
            shaper,
            id,
            adversary: plan.adversary(id),
            trust,
            plan,
            learner,
            shard,
            batches,
            mailbox,
            peers,
            punctuality: Punctuality::default(),
            privacy,
            newly_silent: Vec::new(),
            undelivered: None,
            state_dir,
            audit,
            owner,
        })
    })
    .await
    .map_err(|e| Error::Io(std::io::Error::other(e)))?
}

/// What the round worker tells the session.
enum Report {
    // Boxed: a report with its metrics is ten times the size of the others.
    Done(Box<Done>),
    Silent(NeighbourSilent),
    Failed(RoundFailed),
    /// The node leaves the run before the next round, for this reason.
    Leave(String),
}

/// Runs each round the session hands over, and sends back its report. A round that
/// fails (a panic included) is reported and ends the worker: the node leaves the run.
async fn round_worker(
    mut node: Node,
    mut rounds: watch::Receiver<Option<(StartRound, AddressBook)>>,
    reports: mpsc::Sender<Report>,
    panic_at_round: Option<u32>,
) {
    while rounds.changed().await.is_ok() {
        let Some((start, book)) = rounds.borrow_and_update().clone() else {
            continue;
        };
        let token = start.round_token;
        // Numbered from 1 in logs and reports, as everywhere a person reads it.
        let round = start.round + 1;
        if let Some(reason) = node.privacy.as_ref().and_then(|p| p.spent_before(round)) {
            warn!(node = node.id, round, "{reason}; leaving the run");
            let _ = reports.send(Report::Leave(reason)).await;
            return;
        }
        // Its own task, so that a panic in the model code is caught here.
        let task = tokio::spawn(async move {
            if panic_at_round == Some(start.round + 1) {
                panic!("fault injected in round {} (--fault-panic-at-round)", start.round + 1);
            }
            let result = run_round(&mut node, &start, &book).await;
            (node, result)
        });
        let reason = match task.await {
            Ok((returned, Ok(outcome))) => {
                node = returned;
                info!(
                    node = node.id,
                    round,
                    accuracy = format!("{:.4}", outcome.metrics.test_accuracy),
                    heard = outcome.metrics.peers_heard,
                    "round done"
                );
                for (node_id, missed) in outcome.silent {
                    warn!(
                        node = node.id,
                        neighbour = node_id,
                        missed,
                        "neighbour silent: not waiting for it"
                    );
                    let _ = reports.send(Report::Silent(NeighbourSilent { node_id, missed })).await;
                }
                // Saved before it is reported: a round the coordinator counts is one the
                // node resumes after. (Saved after the report, every node's checkpoint
                // raced the coordinator's own fsync as it closed the round: 0.2–0.6 s
                // between rounds at 256 nodes on one disk.)
                let saved = match (&node.state_dir, node.learner.candle()) {
                    (Some(dir), Some(learner)) => {
                        checkpoint::save(dir, &node.owner, learner, round, node.batches.position(), &node.trust)
                            .map(Some)
                    }
                    _ => Ok(None),
                };
                match saved {
                    Ok(written) => {
                        if let Some(written) = written {
                            debug!(
                                node = node.id,
                                round,
                                bytes = written.bytes,
                                ms = format!("{:.2}", written.took.as_secs_f64() * 1e3),
                                "checkpoint written"
                            );
                        }
                        let done = Done {
                            round: round - 1,
                            round_token: token,
                            metrics: Some(outcome.metrics),
                        };
                        if reports.send(Report::Done(Box::new(done))).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    Err(e) => format!("cannot write its checkpoint: {e}"),
                }
            }
            Ok((_, Err(e))) => e.to_string(),
            Err(e) if e.is_panic() => format!("the round worker panicked: {}", panic_message(e.into_panic())),
            Err(e) => format!("the round worker stopped: {e}"),
        };
        error!(round, "round failed: {reason}");
        let failed = RoundFailed {
            round: round - 1,
            round_token: token,
            reason,
        };
        let _ = reports.send(Report::Failed(failed)).await;
        return;
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// What a successful Join gives.
struct Joined {
    session: u64,
    settings: RunSettings,
    model: String,
}

/// The coordinator's client, with retries.
struct Coordinator {
    address: String,
    channel: Channel,
    timeout: Duration,
}

impl Coordinator {
    fn new(config: &Config) -> Result<Self> {
        let channel = config
            .security
            .connect_lazy(&config.coordinator, Identity::Coordinator)
            .map_err(|e| Error::config("node.coordinator", e.to_string()))?;
        Ok(Coordinator {
            address: config.coordinator.clone(),
            channel,
            timeout: config.coordinator_timeout,
        })
    }

    fn client(&self) -> CoordinatorClient<Channel> {
        CoordinatorClient::new(self.channel.clone())
    }

    fn error(&self, reason: impl Into<String>) -> Error {
        Error::Coordinator {
            address: self.address.clone(),
            reason: reason.into(),
        }
    }

    /// Joins, retrying (with bounded backoff) while the coordinator is unreachable or
    /// still thinks an earlier connection of ours is live, up to the timeout.
    async fn join(&self, request: &JoinRequest) -> Result<Joined> {
        let give_up = Instant::now() + self.timeout;
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.client().join(request.clone()).await {
                Ok(response) => {
                    let response = response.into_inner();
                    let versions = (response.protocol_version, response.data_contract);
                    if versions != (wdml_proto::PROTOCOL_VERSION, wdml_proto::DATA_CONTRACT) {
                        return Err(self.error(format!(
                            "it speaks protocol version {} with data contract {}; this node speaks protocol \
                             version {} with data contract {} (0: a coordinator from before versions)",
                            versions.0,
                            versions.1,
                            wdml_proto::PROTOCOL_VERSION,
                            wdml_proto::DATA_CONTRACT
                        )));
                    }
                    let settings = response
                        .settings
                        .ok_or_else(|| self.error("join answer without run settings"))?;
                    return Ok(Joined {
                        session: response.session,
                        settings,
                        model: response.model,
                    });
                }
                Err(status) if tls_refused(&status) => {
                    return Err(self.error(format!(
                        "the TLS handshake failed ({}): are this node's certificate and the coordinator's \
                         from the same run CA (and is neither side --insecure alone)?",
                        detail(&status)
                    )));
                }
                Err(status) if retryable(&status) && Instant::now() < give_up => {
                    info!(
                        code = ?status.code(),
                        "coordinator at {} not ready: {}; retrying",
                        self.address,
                        detail(&status)
                    );
                }
                Err(status) if retryable(&status) => {
                    return Err(self.error(format!(
                        "could not connect within {} s: {}",
                        self.timeout.as_secs(),
                        detail(&status)
                    )));
                }
                Err(status) => return Err(self.error(format!("join refused: {}", status.message()))),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// Opens the Sync stream: Hello first, then whatever the session sends.
    async fn open(&self, hello: Hello) -> Result<(mpsc::Sender<NodeEvent>, Streaming<CoordinatorEvent>)> {
        let (tx, rx) = mpsc::channel(16);
        let hello = NodeEvent {
            event: Some(node_event::Event::Hello(hello)),
        };
        tx.send(hello).await.expect("the receiver is alive");
        let inbound = self
            .client()
            .sync(ReceiverStream::new(rx))
            .await
            .map_err(|status| self.error(format!("sync refused: {}", status.message())))?
            .into_inner();
        Ok((tx, inbound))
    }
}

/// A status and what caused it (tonic keeps a transport error's cause in its source).
fn detail(status: &Status) -> String {
    let mut text = status.message().to_string();
    let mut source = std::error::Error::source(status);
    while let Some(s) = source {
        // Layers often repeat their cause in their own message: say each thing once.
        let said = s.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = s.source();
    }
    text
}

/// A handshake one side refused: no retry will change that.
fn tls_refused(status: &Status) -> bool {
    let text = detail(status).to_ascii_lowercase();
    ["certificate", "alert", "invalidcontenttype", "corrupt message"]
        .iter()
        .any(|w| text.contains(w))
}

/// Errors worth another try: the coordinator is not up yet, or has not yet noticed
/// that our previous connection died.
fn retryable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::AlreadyExists | Code::Unknown | Code::DeadlineExceeded | Code::Cancelled
    )
}

/// The node's side of the Sync stream.
struct Session {
    coordinator: Coordinator,
    join: JoinRequest,
    parameters: u64,
    /// The private shard's samples per class, for the run's split.json.
    histogram: Vec<u32>,
    /// The data it loaded (the run's: [`prepare`] checked it).
    data: DataSpec,
    session: u64,
    mailbox: Arc<Mailbox>,
    rounds: watch::Sender<Option<(StartRound, AddressBook)>>,
    heartbeat: Duration,
}

impl Session {
    /// Follows the coordinator until the run completes or `shutdown`; reconnects
    /// (joining again) whenever the stream breaks.
    async fn follow(
        mut self,
        mut reports: mpsc::Receiver<Report>,
        mut undelivered: mpsc::UnboundedReceiver<Undelivered>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<Outcome> {
        tokio::pin!(shutdown);
        let id = self.join.node_id;
        loop {
            let hello = Hello {
                node_id: id,
                session: self.session,
                parameters: self.parameters,
                label_histogram: self.histogram.clone(),
                data: Some(self.data.clone()),
            };
            let (outbound, mut inbound) = self.coordinator.open(hello).await?;
            // The neighbours' addresses this stream gives: a new stream gives them anew.
            let mut book = AddressBook::default();
            let mut heartbeat = tokio::time::interval(self.heartbeat);
            let broke = loop {
                tokio::select! {
                    event = inbound.message() => match event {
                        Ok(Some(event)) => {
                            if let Some(complete) = self.apply(event, &mut book) {
                                info!(node = id, rounds = complete.rounds_closed, finished = complete.finished, "run complete: {}", complete.reason);
                                return Ok(Outcome::Complete(complete));
                            }
                        }
                        Ok(None) => break "the coordinator closed the stream".to_string(),
                        Err(status) => break status.message().to_string(),
                    },
                    Some(report) = reports.recv() => {
                        let (event, failed) = match report {
                            Report::Leave(reason) => {
                                self.leave(&reason).await;
                                return Ok(Outcome::Left(reason));
                            }
                            Report::Done(done) => (node_event::Event::Done(*done), None),
                            Report::Silent(silent) => (node_event::Event::Silent(silent), None),
                            Report::Failed(failed) => (node_event::Event::Failed(failed.clone()), Some(failed)),
                        };
                        if outbound.send(NodeEvent { event: Some(event) }).await.is_err() {
                            break "the stream closed while reporting".to_string();
                        }
                        if let Some(failed) = failed {
                            // The coordinator releases us and closes the stream; wait for
                            // that (briefly), so the report is not cut off in flight.
                            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                                while let Ok(Some(_)) = inbound.message().await {}
                            })
                            .await;
                            let round = failed.round + 1;
                            return Err(Error::RoundFailed { round, reason: failed.reason });
                        }
                    }
                    Some(message) = undelivered.recv() => {
                        let event = NodeEvent { event: Some(node_event::Event::Undelivered(message)) };
                        if outbound.send(event).await.is_err() {
                            break "the stream closed".to_string();
                        }
                    }
                    _ = heartbeat.tick() => {
                        let event = NodeEvent { event: Some(node_event::Event::Heartbeat(Heartbeat {})) };
                        if outbound.send(event).await.is_err() {
                            break "the stream closed".to_string();
                        }
                    }
                    () = &mut shutdown => {
                        self.leave("").await;
                        return Ok(Outcome::Shutdown);
                    }
                }
            };
            warn!(
                node = id,
                "lost the coordinator at {} ({broke}); joining again", self.coordinator.address
            );
            let rejoin = self.coordinator.join(&self.join);
            tokio::select! {
                joined = rejoin => {
                    self.session = joined?.session;
                }
                () = &mut shutdown => return Ok(Outcome::Shutdown),
            }
        }
    }

    /// Applies one coordinator event (a round's start with the addresses `book` has
    /// from this stream); returns the end of the run if it is one.
    fn apply(&self, event: CoordinatorEvent, book: &mut AddressBook) -> Option<RunComplete> {
        match event.event {
            Some(coordinator_event::Event::StartRound(start)) => {
                // Every start's addresses, also those of one the worker skips.
                book.learn(&start);
                self.rounds.send_replace(Some((start, book.clone())));
                None
            }
            Some(coordinator_event::Event::MemberGone(gone)) => {
                self.mailbox.peer_gone(gone.node_id);
                None
            }
            Some(coordinator_event::Event::NotComing(not_coming)) => {
                debug!(
                    from = not_coming.from,
                    round = not_coming.round + 1,
                    "a neighbour's message will not come: not waiting for it"
                );
                self.mailbox.not_coming(not_coming.round, not_coming.from);
                None
            }
            Some(coordinator_event::Event::RunComplete(complete)) => Some(complete),
            None => {
                warn!("empty event from the coordinator; ignored");
                None
            }
        }
    }

    /// Tells the coordinator this node leaves, and why (`""`: it was asked to stop).
    async fn leave(&self, reason: &str) {
        let request = LeaveRequest {
            node_id: self.join.node_id,
            session: self.session,
            reason: reason.to_string(),
        };
        match tokio::time::timeout(Duration::from_secs(2), self.coordinator.client().leave(request)).await {
            Ok(Ok(_)) => info!(node = self.join.node_id, "left the run"),
            Ok(Err(status)) => warn!("leave refused: {}", status.message()),
            Err(_) => warn!("the coordinator did not answer the leave in time"),
        }
    }
}

/// The node process's tokio runtime: two workers, because the round blocks one while
/// it trains (`block_in_place`) and the other keeps serving the peers' streams and the
/// coordinator's. `wdml bench --only tls` measures a message's CPU on two of these.
pub fn tokio_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}
