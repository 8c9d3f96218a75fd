//! The node process: bind the peer service, join the coordinator, prepare the data
//! and the model, then follow the coordinator's rounds until the run is over.
//!
//! Two tasks share the work. The *session* owns the Sync stream: it forwards
//! StartRound to the round worker (always the newest, so a node that fell behind
//! skips ahead instead of replaying stale rounds), tells the mailbox when a neighbour
//! is gone, sends heartbeats and Done reports, and reconnects (joining again) when
//! the stream breaks. The *round worker* owns the model and runs [`run_round`].

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};
use tracing::{error, info, warn};
use wdml_proto::{
    Algorithm, CoordinatorEvent, Done, Heartbeat, Hello, JoinRequest, LeaveRequest, NodeEvent, RunComplete,
    RunSettings, StartRound, coordinator_client::CoordinatorClient, coordinator_event, node_event,
    peer_exchange_server::PeerExchangeServer,
};

use crate::data::{Dataset, split};
use crate::exchange::client::{MAX_FRAME_BYTES, PeerClients};
use crate::exchange::shaper::Shaper;
use crate::exchange::{Expectation, Mailbox, PeerService};
use crate::learn::Learner;
use crate::model::ModelSpec;
use crate::plan::RunPlan;
use crate::round::{Node, message_shape, run_round};
use crate::shard::{BatchSampler, Shard};
use crate::{Error, Result, seed};

/// How a node is started.
#[derive(Clone, Debug)]
pub struct Config {
    /// This node's id, 0-based; it also picks the node's private shard.
    pub id: u32,
    pub model: ModelSpec,
    /// The coordinator's `host:port`.
    pub coordinator: String,
    /// The `host:port` other nodes dial; defaults to the bound address.
    pub advertise: Option<String>,
    /// Overrides the run's dataset directory on this machine.
    pub data_dir: Option<PathBuf>,
    /// How long to keep trying to reach the coordinator, at start and after a break.
    pub coordinator_timeout: Duration,
}

/// How a node's run ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The coordinator closed the run.
    Complete(RunComplete),
    /// This node was asked to stop.
    Shutdown,
}

/// Runs the node with its peer service on `listener` until the run ends or
/// `shutdown` completes.
pub async fn run(config: Config, listener: TcpListener, shutdown: impl Future<Output = ()>) -> Result<Outcome> {
    let advertise = advertised_address(&config, &listener)?;
    let coordinator = Coordinator::new(&config)?;
    let parameters = config.model.parameter_count() as u64;
    let join = JoinRequest {
        node_id: config.id,
        advertise: advertise.clone(),
        model: config.model.to_string(),
        parameters,
    };
    let (session, settings) = coordinator.join(&join).await?;
    let plan = RunPlan::from_settings(settings)?;
    if config.id >= plan.nodes {
        return Err(Error::config(
            "node.id",
            format!("{} is out of range: the run has nodes 0..{}", config.id, plan.nodes),
        ));
    }
    info!(node = config.id, run = %plan.run_id, %advertise, model = %config.model, parameters, "joined");

    let node = prepare(&config, plan).await?;
    let (rows, cols, _) = message_shape(&node.plan, node.learner.parameter_count());
    let expect = Expectation {
        run_id: node.plan.run_id.clone(),
        me: config.id,
        nodes: node.plan.nodes,
        rows,
        cols,
        max_message_bytes: node.plan.max_message_bytes,
    };
    let service = PeerExchangeServer::new(PeerService::new(expect, node.mailbox.clone()))
        .max_decoding_message_size(MAX_FRAME_BYTES);
    let (stop_serving, serving_stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                serving_stopped.await.ok();
            }),
    );

    let (rounds_tx, rounds_rx) = watch::channel::<Option<StartRound>>(None);
    let (done_tx, done_rx) = mpsc::channel::<Done>(4);
    let mailbox = node.mailbox.clone();
    let heartbeat = node.plan.heartbeat_interval;
    let worker = tokio::spawn(round_worker(node, rounds_rx, done_tx));
    let session = Session {
        coordinator,
        join,
        session,
        mailbox,
        rounds: rounds_tx,
        heartbeat,
    };
    let outcome = session.follow(done_rx, shutdown).await;

    worker.abort();
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

/// Loads the data, computes this node's shard of the split, builds the model.
async fn prepare(config: &Config, plan: RunPlan) -> Result<Node> {
    let data_dir = config.data_dir.clone().or_else(|| plan.data_dir.clone());
    let id = config.id;
    let model = config.model.clone();
    // Loading and splitting is seconds of CPU work on the full dataset.
    tokio::task::spawn_blocking(move || {
        let dataset = Dataset::load(data_dir.as_deref())?;
        let split = split(&dataset, &plan.split_config())?;
        let shard = Shard::new(&dataset, &split, id as usize)?;
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
        let model_seed = match plan.algorithm {
            Algorithm::Fedavg => seed::derive(plan.seed, &[seed::MODEL]),
            _ => seed::derive(plan.seed, &[seed::MODEL, u64::from(id)]),
        };
        let learner = Learner::new(&model, plan.learner, model_seed)?;
        let batches = BatchSampler::new(
            shard.private_len(),
            plan.batch_size,
            seed::derive(plan.seed, &[seed::BATCHES, u64::from(id)]),
        );
        let mailbox = Arc::new(Mailbox::new(plan.nodes));
        let shaper = Shaper::new(plan.channel.clone(), plan.seed, plan.nodes, id)?;
        Ok(Node {
            shaper,
            id,
            plan,
            learner,
            shard,
            batches,
            mailbox,
            peers: PeerClients::default(),
        })
    })
    .await
    .map_err(|e| Error::Io(std::io::Error::other(e)))?
}

/// Runs each round the session hands over, and sends back its report.
async fn round_worker(mut node: Node, mut rounds: watch::Receiver<Option<StartRound>>, done: mpsc::Sender<Done>) {
    while rounds.changed().await.is_ok() {
        let Some(start) = rounds.borrow_and_update().clone() else {
            continue;
        };
        match run_round(&mut node, &start).await {
            Ok(metrics) => {
                info!(
                    node = node.id,
                    round = start.round,
                    accuracy = format!("{:.4}", metrics.test_accuracy),
                    heard = metrics.peers_heard,
                    "round done"
                );
                let report = Done {
                    round: start.round,
                    round_token: start.round_token,
                    metrics: Some(metrics),
                };
                if done.send(report).await.is_err() {
                    return;
                }
            }
            // A failed round is this node's problem only: it reports nothing and the
            // coordinator's deadline carries the others on.
            Err(e) => error!(node = node.id, round = start.round, "round failed: {e}"),
        }
    }
}

/// The coordinator's client, with retries.
struct Coordinator {
    address: String,
    channel: Channel,
    timeout: Duration,
}

impl Coordinator {
    fn new(config: &Config) -> Result<Self> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", config.coordinator))
            .map_err(|e| {
                Error::config(
                    "node.coordinator",
                    format!("{:?} is not host:port: {e}", config.coordinator),
                )
            })?
            .connect_timeout(Duration::from_secs(2))
            // A cut link never closes the stream: HTTP/2 pings notice it within seconds,
            // so the node joins again when the link is back.
            .http2_keep_alive_interval(Duration::from_secs(1))
            .keep_alive_timeout(Duration::from_secs(2))
            .keep_alive_while_idle(true)
            .connect_lazy();
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

    /// Joins, retrying while the coordinator is unreachable or still thinks an
    /// earlier connection of ours is live, up to the timeout.
    async fn join(&self, request: &JoinRequest) -> Result<(u64, RunSettings)> {
        let give_up = Instant::now() + self.timeout;
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.client().join(request.clone()).await {
                Ok(response) => {
                    let response = response.into_inner();
                    let settings = response
                        .settings
                        .ok_or_else(|| self.error("join answer without run settings"))?;
                    return Ok((response.session, settings));
                }
                Err(status) if retryable(&status) && Instant::now() < give_up => {
                    info!(code = ?status.code(), "coordinator not ready: {}; retrying", status.message());
                }
                Err(status) => return Err(self.error(format!("join refused: {}", status.message()))),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// Opens the Sync stream: Hello first, then whatever the session sends.
    async fn open(&self, id: u32, session: u64) -> Result<(mpsc::Sender<NodeEvent>, Streaming<CoordinatorEvent>)> {
        let (tx, rx) = mpsc::channel(16);
        let hello = NodeEvent {
            event: Some(node_event::Event::Hello(Hello { node_id: id, session })),
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
    session: u64,
    mailbox: Arc<Mailbox>,
    rounds: watch::Sender<Option<StartRound>>,
    heartbeat: Duration,
}

impl Session {
    /// Follows the coordinator until the run completes or `shutdown`; reconnects
    /// (joining again) whenever the stream breaks.
    async fn follow(mut self, mut done: mpsc::Receiver<Done>, shutdown: impl Future<Output = ()>) -> Result<Outcome> {
        tokio::pin!(shutdown);
        let id = self.join.node_id;
        loop {
            let (outbound, mut inbound) = self.coordinator.open(id, self.session).await?;
            let mut heartbeat = tokio::time::interval(self.heartbeat);
            let broke = loop {
                tokio::select! {
                    event = inbound.message() => match event {
                        Ok(Some(event)) => {
                            if let Some(complete) = self.apply(event) {
                                info!(node = id, rounds = complete.rounds_closed, finished = complete.finished, "run complete: {}", complete.reason);
                                return Ok(Outcome::Complete(complete));
                            }
                        }
                        Ok(None) => break "the coordinator closed the stream".to_string(),
                        Err(status) => break status.message().to_string(),
                    },
                    Some(report) = done.recv() => {
                        let event = NodeEvent { event: Some(node_event::Event::Done(report)) };
                        if outbound.send(event).await.is_err() {
                            break "the stream closed while reporting".to_string();
                        }
                    }
                    _ = heartbeat.tick() => {
                        let event = NodeEvent { event: Some(node_event::Event::Heartbeat(Heartbeat {})) };
                        if outbound.send(event).await.is_err() {
                            break "the stream closed".to_string();
                        }
                    }
                    () = &mut shutdown => {
                        self.leave().await;
                        return Ok(Outcome::Shutdown);
                    }
                }
            };
            warn!(node = id, "lost the coordinator ({broke}); joining again");
            let rejoin = self.coordinator.join(&self.join);
            tokio::select! {
                joined = rejoin => {
                    let (session, _) = joined?;
                    self.session = session;
                }
                () = &mut shutdown => return Ok(Outcome::Shutdown),
            }
        }
    }

    /// Applies one coordinator event; returns the end of the run if it is one.
    fn apply(&self, event: CoordinatorEvent) -> Option<RunComplete> {
        match event.event {
            Some(coordinator_event::Event::StartRound(start)) => {
                self.rounds.send_replace(Some(start));
                None
            }
            Some(coordinator_event::Event::MemberGone(gone)) => {
                self.mailbox.peer_gone(gone.node_id);
                None
            }
            Some(coordinator_event::Event::RunComplete(complete)) => Some(complete),
            None => {
                warn!("empty event from the coordinator; ignored");
                None
            }
        }
    }

    async fn leave(&self) {
        let request = LeaveRequest {
            node_id: self.join.node_id,
            session: self.session,
        };
        match tokio::time::timeout(Duration::from_secs(2), self.coordinator.client().leave(request)).await {
            Ok(Ok(_)) => info!(node = self.join.node_id, "left the run"),
            Ok(Err(status)) => warn!("leave refused: {}", status.message()),
            Err(_) => warn!("the coordinator did not answer the leave in time"),
        }
    }
}
