//! An in-process harness for the coordinator, as mini-redis tests its server: the real
//! coordinator ([`wdml_coordinator::run`]) on a loopback listener with mutual TLS, a
//! temporary run directory and a fresh certificate authority, driven by *scripted
//! members*: small gRPC clients that speak Join, Sync and Done with their own node
//! certificate, exactly as a node does, and do whatever a test tells them.
//!
//! Everything runs on the test's one tokio runtime, started paused
//! (`#[tokio::test(start_paused = true)]`): the coordinator reads only tokio's clock, so
//! every deadline it has (round timeout, quorum grace, barrier patience, heartbeat
//! silence, probe interval) passes in virtual time, as soon as nothing else is ready to
//! run. The sockets are real; on loopback a write is readable by the other end at once,
//! and tokio polls the sockets before it advances a paused clock, so the messages are
//! never overtaken by a timer. A round timeout of a minute costs a test nothing.
//!
//! Every wait here has a deadline ([`WAIT`], virtual): a test that would hang fails.

#![allow(dead_code)] // each test file uses a part of it

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;
use wdml_coordinator::{Config, MetricsRow, Summary};
use wdml_proto::coordinator_client::CoordinatorClient;
use wdml_proto::{
    CoordinatorEvent, Done, Heartbeat, Hello, JoinRequest, NodeEvent, RoundMetrics, RunComplete, RunSettings,
    StartRound, coordinator_event, node_event,
};
use wdml_transport::{Identity, Security};

/// The longest any one wait of the harness lasts, in (virtual) time: far beyond every
/// deadline a test sets, so only a coordinator that never answers reaches it.
pub const WAIT: Duration = Duration::from_secs(600);

/// Milliseconds, for readable tests.
pub const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A temporary directory, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("wdml-coord-{label}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("a temporary directory");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A run of `nodes` nodes and `rounds` rounds, `sync` policy, full mesh, the `lan`
/// preset paced one to one (an emulated second is a wall second, so `grace_s` and
/// `deadline_s` read as wall time), and timeouts that never fire by themselves in a
/// test that does not mean them to: tests set what they exercise.
pub fn config(run_dir: &Path, security: Security, nodes: u32, rounds: u32) -> Config {
    let channel = wdml_channel::ChannelConfig {
        preset: wdml_channel::Preset::Lan,
        time_scale: 1.0,
        ..Default::default()
    }
    .resolve()
    .expect("the lan preset resolves");
    let settings = RunSettings {
        run_id: "harness".into(),
        seed: 7,
        rounds,
        nodes,
        public_batch: 16,
        max_message_bytes: 1 << 20,
        heartbeat_interval_ms: 1_000,
        models: vec!["mlp:64".into(); nodes as usize],
        channel: serde_json::to_string(&channel).expect("a channel serialises"),
        quorum: 1.0,
        data: Some(wdml_proto::data::fashion_mnist()),
        ..RunSettings::default()
    };
    let mut config = Config {
        run_dir: run_dir.to_path_buf(),
        settings,
        neighbours: (0..nodes).map(|i| (0..nodes).filter(|&j| j != i).collect()).collect(),
        min_nodes: nodes,
        min_participation: 0.0,
        join_timeout: Duration::from_secs(60),
        round_timeout: Duration::from_secs(60),
        // Only passed on to the nodes; shorter than any round timeout a test sets.
        exchange_timeout: Duration::from_secs(2),
        heartbeat_timeout: Duration::from_secs(10),
        sync_timeout: Duration::from_secs(10),
        resolved: serde_json::json!({ "harness": true }),
        security,
        overwrite: false,
        scenario_toml: None,
        public_overlap: None,
        channel,
    };
    config.settings.set_round_policy(wdml_proto::RoundPolicy::Sync);
    config
}

/// The run's certificates: a fresh authority, the coordinator's and every node's.
pub fn certificates(dir: &Path, nodes: u32) -> PathBuf {
    use wdml_transport::pki;
    let tls = dir.join("tls");
    let authority = pki::Authority::generate(pki::DEFAULT_VALIDITY).expect("a CA");
    let identities: Vec<Identity> = std::iter::once(Identity::Coordinator)
        .chain((0..nodes).map(Identity::Node))
        .collect();
    pki::write_dir(&tls, &authority, &identities, pki::DEFAULT_VALIDITY, false).expect("certificates");
    tls
}

/// The coordinator, serving on a loopback port of this runtime.
pub struct Coordinator {
    pub address: String,
    pub tls: PathBuf,
    pub run_dir: PathBuf,
    pub nodes: u32,
    /// Plaintext (`--insecure`): members connect without certificates.
    pub insecure: bool,
    /// What it was started with (a restart starts again with it).
    config: Config,
    stop: Option<oneshot::Sender<()>>,
    run: JoinHandle<wdml_coordinator::Result<Summary>>,
    _dir: TempDir,
}

impl Coordinator {
    /// Starts a run of `nodes` nodes and `rounds` rounds ([`config`]), changed by `tweak`.
    pub async fn start(label: &str, nodes: u32, rounds: u32, tweak: impl FnOnce(&mut Config)) -> Coordinator {
        let dir = TempDir::new(label);
        let tls = certificates(dir.path(), nodes);
        let security = Security::from_dir(&tls, Identity::Coordinator).expect("the coordinator's credentials");
        let run_dir = dir.path().join("run");
        std::fs::create_dir_all(&run_dir).unwrap();
        let mut config = config(&run_dir, security, nodes, rounds);
        tweak(&mut config);
        let insecure = !config.security.is_tls();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let (stop, stopped) = oneshot::channel::<()>();
        let run = tokio::spawn(wdml_coordinator::run(config.clone(), listener, async {
            let _ = stopped.await;
        }));
        Coordinator {
            address,
            tls,
            run_dir,
            nodes,
            insecure,
            config,
            stop: Some(stop),
            run,
            _dir: dir,
        }
    }

    /// Waits for the run to end by itself; its result.
    pub async fn end(&mut self) -> wdml_coordinator::Result<Summary> {
        tokio::time::timeout(WAIT, &mut self.run)
            .await
            .expect("the run ends")
            .expect("the coordinator did not panic")
    }

    /// Stops the run (as a shutdown signal would) and waits for it to end.
    pub async fn stop(&mut self) -> wdml_coordinator::Result<Summary> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.end().await
    }

    /// Stops the run (as a shutdown signal would) and starts the coordinator again on
    /// the same run directory and configuration, on a new port (members must join
    /// again, as they do when their coordinator comes back). Returns how the first run
    /// ended.
    pub async fn restart(&mut self) -> wdml_coordinator::Result<Summary> {
        let ended = self.stop().await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        self.address = listener.local_addr().unwrap().to_string();
        let (stop, stopped) = oneshot::channel::<()>();
        self.stop = Some(stop);
        self.run = tokio::spawn(wdml_coordinator::run(self.config.clone(), listener, async {
            let _ = stopped.await;
        }));
        ended
    }

    /// `summary.json`, as the run wrote it (also when `run` returned an error).
    pub fn summary(&self) -> Summary {
        let text = std::fs::read_to_string(self.run_dir.join("summary.json")).expect("summary.json");
        serde_json::from_str(&text).expect("summary.json reads")
    }

    /// The rows of `metrics.jsonl`.
    pub fn metrics(&self) -> Vec<MetricsRow> {
        let text = std::fs::read_to_string(self.run_dir.join("metrics.jsonl")).unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str(l).expect("a metrics row"))
            .collect()
    }

    /// The rows of `late.jsonl`.
    pub fn late(&self) -> Vec<MetricsRow> {
        MetricsRow::read_late(&self.run_dir).expect("late.jsonl reads")
    }

    /// Each closed round's wall time, by round (from 1).
    pub fn round_ms(&self) -> std::collections::BTreeMap<u32, f64> {
        self.metrics().iter().map(|r| (r.round, r.round_ms)).collect()
    }

    /// A connection as node `id`, with its own certificate.
    pub async fn connect(&self, id: u32) -> CoordinatorClient<Channel> {
        let security = match self.insecure {
            true => Security::Insecure,
            false => Security::from_dir(&self.tls, Identity::Node(id)).expect("the node's credentials"),
        };
        let endpoint = security.endpoint(&self.address, Identity::Coordinator).unwrap();
        match tokio::time::timeout(WAIT, endpoint.connect())
            .await
            .expect("connects in time")
        {
            Ok(channel) => CoordinatorClient::new(channel),
            // Say why: most likely the run ended (and closed its listener).
            Err(e) => panic!(
                "node {id} cannot connect: {e:?}; the coordinator's run {}",
                if self.run.is_finished() {
                    "has ended"
                } else {
                    "is still going"
                }
            ),
        }
    }

    /// Node `id` joins (advertising `advertise`) and opens its Sync stream.
    pub async fn member(&self, id: u32) -> Member {
        self.member_at(id, "127.0.0.1:9").await
    }

    pub async fn member_at(&self, id: u32, advertise: &str) -> Member {
        self.try_member_at(id, advertise)
            .await
            .expect("joins and opens its stream")
    }

    /// Node `id` joins and opens its stream, or the status it was refused with.
    pub async fn try_member_at(&self, id: u32, advertise: &str) -> Result<Member, tonic::Status> {
        let mut client = self.connect(id).await;
        let session = within(client.join(join_request(id, advertise)))
            .await?
            .into_inner()
            .session;
        Member::sync(client, id, session).await
    }

    /// `n` members, 0 to n − 1, every one joined and streaming.
    pub async fn members(&self, n: u32) -> Vec<Member> {
        let mut members = Vec::new();
        for id in 0..n {
            members.push(self.member(id).await);
        }
        members
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.run.abort();
    }
}

/// `future`, or a panic if it takes longer than [`WAIT`].
pub async fn within<F: std::future::Future>(future: F) -> F::Output {
    tokio::time::timeout(WAIT, future)
        .await
        .expect("an answer within the harness's wait")
}

/// What node `id` says when it joins: `advertise` as its address (nothing dials it
/// unless a test means it to), the scenario's model, this build's versions.
pub fn join_request(id: u32, advertise: &str) -> JoinRequest {
    JoinRequest {
        node_id: id,
        advertise: advertise.into(),
        model: "mlp:64".into(),
        parameters: 1_000,
        protocol_version: wdml_proto::PROTOCOL_VERSION,
        data_contract: wdml_proto::DATA_CONTRACT,
        data: Some(wdml_proto::data::fashion_mnist()),
    }
}

pub fn event(e: node_event::Event) -> NodeEvent {
    NodeEvent { event: Some(e) }
}

/// An honest report: 1 ms of compute, within what any round so far can hold.
pub fn honest_metrics(accuracy: f64) -> RoundMetrics {
    RoundMetrics {
        train_loss: 0.5,
        test_accuracy: accuracy,
        test_loss: 0.9,
        // Heard nobody and reached nobody (a round may give it no neighbour at all):
        // counters that fit every round.
        compute_ms: 1.0,
        ..RoundMetrics::default()
    }
}

/// A scripted member: node `id`, joined, its Sync stream open and heartbeating (from a
/// task of its own, as a node's heartbeat is) until it is dropped or told to stop.
pub struct Member {
    pub id: u32,
    pub session: u64,
    pub client: CoordinatorClient<Channel>,
    tx: mpsc::Sender<NodeEvent>,
    inbound: Streaming<CoordinatorEvent>,
    heartbeat: JoinHandle<()>,
}

/// How a member's stream ended.
#[derive(Debug)]
pub enum End {
    /// The run is over.
    Complete(RunComplete),
    /// The coordinator closed the stream with this status.
    Refused(tonic::Status),
    /// The stream closed without a word.
    Closed,
}

impl Member {
    /// Opens node `id`'s Sync stream for `session` (its Hello sent first).
    pub async fn sync(mut client: CoordinatorClient<Channel>, id: u32, session: u64) -> Result<Member, tonic::Status> {
        let (tx, rx) = mpsc::channel(64);
        let hello = Hello {
            node_id: id,
            session,
            parameters: 1_000,
            data: Some(wdml_proto::data::fashion_mnist()),
            ..Hello::default()
        };
        tx.send(event(node_event::Event::Hello(hello))).await.unwrap();
        let inbound = within(client.sync(ReceiverStream::new(rx))).await?.into_inner();
        let beat = tx.clone();
        let heartbeat = tokio::spawn(async move {
            let mut tick = tokio::time::interval(ms(1_000));
            loop {
                tick.tick().await;
                if beat
                    .send(event(node_event::Event::Heartbeat(Heartbeat {})))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        Ok(Member {
            id,
            session,
            client,
            tx,
            inbound,
            heartbeat,
        })
    }

    /// Stops heartbeating (the stream stays open): a member whose link went quiet.
    pub fn go_quiet(&self) {
        self.heartbeat.abort();
    }

    /// Sends an event on its stream.
    pub async fn send(&self, e: node_event::Event) {
        let _ = self.tx.send(event(e)).await;
    }

    /// Where its events go (for a task of its own).
    pub fn sender(&self) -> mpsc::Sender<NodeEvent> {
        self.tx.clone()
    }

    /// Reports `start`'s round with `metrics`.
    pub async fn report(&self, start: &StartRound, metrics: RoundMetrics) {
        self.send(node_event::Event::Done(Done {
            round: start.round,
            round_token: start.round_token,
            metrics: Some(metrics),
        }))
        .await;
    }

    /// Reports `start`'s round with `metrics` after `delay`, from a task of its own (the
    /// member goes on reading its stream meanwhile, as a node does).
    pub fn report_after(&self, delay: Duration, start: &StartRound, metrics: RoundMetrics) {
        let tx = self.tx.clone();
        let done = Done {
            round: start.round,
            round_token: start.round_token,
            metrics: Some(metrics),
        };
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = tx.send(event(node_event::Event::Done(done))).await;
        });
    }

    /// The next event from the coordinator, or how the stream ended.
    pub async fn next(&mut self) -> Result<CoordinatorEvent, End> {
        match within(self.inbound.next()).await {
            Some(Ok(event)) => match event.event {
                Some(coordinator_event::Event::RunComplete(complete)) => Err(End::Complete(complete)),
                _ => Ok(event),
            },
            Some(Err(status)) => Err(End::Refused(status)),
            None => Err(End::Closed),
        }
    }

    /// The next StartRound (other events skipped), or how the stream ended.
    pub async fn next_start(&mut self) -> Result<StartRound, End> {
        loop {
            if let Some(coordinator_event::Event::StartRound(start)) = self.next().await?.event {
                return Ok(start);
            }
        }
    }

    /// Plays the whole run: for each StartRound, `act` says what to do; returns the
    /// rounds it was started on (from 1) and how its stream ended.
    pub async fn play(mut self, mut act: impl FnMut(&Member, &StartRound)) -> (Vec<u32>, End) {
        let mut started = Vec::new();
        loop {
            match self.next_start().await {
                Ok(start) => {
                    started.push(start.round + 1);
                    act(&self, &start);
                }
                Err(end) => return (started, end),
            }
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}

/// Every member reports at once, honestly, until the run is over: the common case.
pub async fn play_honest(member: Member) -> (Vec<u32>, End) {
    member
        .play(|m, start| m.report_after(Duration::ZERO, start, honest_metrics(0.5)))
        .await
}

/// Every member reports honestly `after` into each round (as long as a node's round
/// takes), until the run is over.
pub async fn play_taking(member: Member, after: Duration) -> (Vec<u32>, End) {
    member
        .play(move |m, start| m.report_after(after, start, honest_metrics(0.5)))
        .await
}
