//! The shaper on a real gRPC stream over loopback, over mutual TLS as every WDML
//! connection: what arrives, arrives at the model's rate, and the frames the model
//! loses are the ones that never arrive.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::time::Instant;
use tonic::transport::Channel;
use wdml_channel::{ChannelConfig, Fading, LossModel, Position, Preset, ResolvedChannel};
use wdml_node::exchange::codec::{self, Envelope, MessageShape};
use wdml_node::exchange::service::Closer;
use wdml_node::exchange::shaper::Shaper;
use wdml_node::exchange::{Expectation, Mailbox, PeerService, client};
use wdml_proto::Encoding;
use wdml_proto::peer_exchange_server::PeerExchangeServer;
use wdml_transport::pki::{self, Authority};
use wdml_transport::{self as transport, Identity, Limits, Security};

const COLS: u32 = 10;

/// Two devices 30 m apart on the default D2D radio, with no shadowing or fading, so
/// the rate is the hand-checked 12.595 Mbit/s of the channel crate's tests.
fn radio(loss: LossModel, time_scale: f64) -> ResolvedChannel {
    ChannelConfig {
        time_scale,
        positions: Some(vec![Position::new(0.0, 0.0), Position::new(30.0, 0.0)]),
        shadowing_sigma_db: Some(0.0),
        fading: Some(Fading::None),
        loss: Some(loss),
        max_retransmissions: Some(30),
        ..ChannelConfig::from_preset(Preset::D2dUrban)
    }
    .resolve()
    .unwrap()
}

/// Node 0's and node 1's credentials under a CA made for the test.
fn credentials() -> (Security, Security) {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "wdml-shaped-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let authority = Authority::generate(pki::DEFAULT_VALIDITY).unwrap();
    let nodes = [Identity::Node(0), Identity::Node(1)];
    pki::write_dir(&dir, &authority, &nodes, pki::DEFAULT_VALIDITY, false).unwrap();
    let pair = (
        Security::from_dir(&dir, Identity::Node(0)).unwrap(),
        Security::from_dir(&dir, Identity::Node(1)).unwrap(),
    );
    std::fs::remove_dir_all(&dir).unwrap();
    pair
}

/// Node 1's peer service on loopback, in round 0 with token 9, expecting node 0.
async fn receiver(rows: u32) -> (Arc<Mailbox>, Channel) {
    let (node0, node1) = credentials();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address: SocketAddr = listener.local_addr().unwrap();
    let mailbox = serve_node1(listener, node1, rows);
    // Connected before the clock starts: the handshake is not the radio's.
    let channel = node0
        .endpoint(&address.to_string(), Identity::Node(1))
        .unwrap()
        .connect()
        .await
        .unwrap();
    (mailbox, channel)
}

/// Node 1's peer service and its mailbox (round 0, token 9, expecting node 0).
fn node1_service(rows: u32) -> (Arc<Mailbox>, PeerService, Closer) {
    let mailbox = Arc::new(Mailbox::new(2, 0));
    mailbox.begin_round(0, 9, &[0], &[0]);
    let expect = Expectation {
        run_id: "t".into(),
        me: 1,
        nodes: 2,
        rows,
        cols: COLS,
        max_message_bytes: 1 << 24,
        encoding: Encoding::F32,
        top_k: 0,
    };
    let (service, closer) = PeerService::new(expect, mailbox.clone());
    (mailbox, service, closer)
}

/// Serves node 1's peer service on `listener` ([`node1_service`]).
fn serve_node1(listener: TcpListener, node1: Security, rows: u32) -> Arc<Mailbox> {
    let (mailbox, service, closer) = node1_service(rows);
    tokio::spawn(async move {
        let _open_until_served = closer;
        transport::serve(
            transport::server().add_service(PeerExchangeServer::new(service)),
            listener,
            node1,
            Limits::default(),
            std::future::pending(),
        )
        .await
    });
    mailbox
}

struct Run {
    /// Wall seconds until the receiver had the whole message.
    elapsed_s: f64,
    airtime_s: f64,
    transmissions: u32,
    frames_lost: u32,
    frames_written: u32,
    bytes: u64,
    delivered: bool,
}

/// Node 0's round-0 message of `rows × 10` f32 values to node 1: its frames, their
/// schedule on `resolved`, and the payload's bytes.
fn message(
    rows: u32,
    resolved: ResolvedChannel,
) -> (Vec<wdml_proto::Frame>, wdml_node::exchange::shaper::Schedule, u64) {
    message_in(0, 9, rows, resolved)
}

/// Node 0's message for `round` (with `token`), as [`message`].
fn message_in(
    round: u32,
    token: u64,
    rows: u32,
    resolved: ResolvedChannel,
) -> (Vec<wdml_proto::Frame>, wdml_node::exchange::shaper::Schedule, u64) {
    let sender = Shaper::new(resolved, 1, 2, 0).unwrap();
    let values = vec![0.5f32; (rows * COLS) as usize];
    let encoded = codec::encode(
        &values,
        MessageShape {
            rows,
            cols: COLS,
            encoding: Encoding::F32,
            top_k: 0,
        },
    );
    let envelope = Envelope {
        run_id: "t".into(),
        round,
        round_token: token,
        sender: 0,
    };
    let frames = codec::frames(&envelope, &encoded, sender.frame_bytes());
    let bytes = encoded.bytes.len() as u64;
    let schedule = sender.schedule(round, &[1], bytes, frames.len(), 0.0).unwrap();
    (frames, schedule, bytes)
}

/// Sends one message of `rows × 10` f32 values from node 0 to node 1.
async fn send_one(rows: u32, resolved: ResolvedChannel) -> Run {
    let (mailbox, channel) = receiver(rows).await;
    let (frames, schedule, bytes) = message(rows, resolved.clone());
    let cost = schedule.cost;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(60);
    let received = async {
        let collected = mailbox.collect(0, deadline, &BTreeMap::new(), None).await;
        (collected, started.elapsed())
    };
    let sending = client::transmit(
        frames,
        schedule,
        vec![(1, Some(client::Link::new(channel)))],
        resolved.time_scale,
        deadline,
        None,
    );
    let ((collected, elapsed), sent) = tokio::join!(received, sending);
    Run {
        elapsed_s: elapsed.as_secs_f64(),
        airtime_s: cost.airtime_s,
        transmissions: cost.transmissions,
        frames_lost: cost.frames_lost,
        frames_written: sent[0].0.frames,
        bytes,
        delivered: collected.messages.len() == 1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goodput_on_a_real_shaped_stream_is_the_model_rate() {
    // About 3 MiB in about 2 s of emulated air time, in real time (time_scale 1). Frames
    // are paced against absolute due times, so a busy machine delays only the last one:
    // 2 s leaves 200 ms of slack within the 10 %.
    let run = send_one(78_643, radio(LossModel::None, 1.0)).await;
    assert!(run.delivered);
    let modelled = run.bytes as f64 * 8.0 / run.airtime_s;
    let measured = run.bytes as f64 * 8.0 / run.elapsed_s;
    let ratio = measured / modelled;
    eprintln!("goodput {measured:.0} bit/s, model {modelled:.0} bit/s, ratio {ratio:.4}");
    assert!(
        (0.9..=1.1).contains(&ratio),
        "goodput {measured:.0} bit/s against the model's {modelled:.0} bit/s (ratio {ratio:.3})"
    );
    // Framing: 1500-byte payloads plus a 40-byte header at 12.595 Mbit/s.
    assert!(
        (modelled - 12.595e6 * 1500.0 / 1540.0).abs() / modelled < 0.01,
        "model goodput {modelled}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_lost_by_the_model_never_reach_the_stream_at_the_seeded_rate() {
    let p = 0.2;
    let run = send_one(6_400, radio(LossModel::Bernoulli { p }, 0.01)).await;
    assert!(run.delivered, "30 retransmissions get every frame through");
    let frames = run.bytes.div_ceil(1500) as u32;
    assert_eq!(run.frames_written, frames, "each frame reaches the stream exactly once");
    assert_eq!(
        run.transmissions,
        frames + run.frames_lost,
        "every loss was retransmitted"
    );
    // The loss rate the stream saw, against a binomial bound around p (4 σ).
    let n = f64::from(run.transmissions);
    let lost = f64::from(run.transmissions - run.frames_written);
    let sigma = (n * p * (1.0 - p)).sqrt();
    assert!(
        (lost - n * p).abs() <= 4.0 * sigma,
        "{lost} of {n} frames lost, expected {:.1} ± {:.1}",
        n * p,
        4.0 * sigma
    );
}

/// A send whose connection fails (here nobody listens yet; on a loaded machine, a
/// handshake that timed out) is tried again before the deadline, and the message
/// arrives: its receiver does not wait out the round for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_whose_connection_failed_is_tried_again_before_the_deadline() {
    let (node0, node1) = credentials();
    let free = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = free.local_addr().unwrap();
    drop(free);
    let channel = node0.connect_lazy(&address.to_string(), Identity::Node(1)).unwrap();
    let rows = 4;
    let (frames, schedule, _) = message(rows, radio(LossModel::None, 0.0));
    let deadline = Instant::now() + Duration::from_secs(30);
    let sending = client::transmit(
        frames,
        schedule,
        vec![(1, Some(client::Link::new(channel)))],
        0.0,
        deadline,
        None,
    );
    // The receiver comes up after the first try was refused, before the second.
    let serving = async {
        tokio::time::sleep(client::RETRY_AFTER / 2).await;
        serve_node1(TcpListener::bind(address).await.unwrap(), node1, rows)
    };
    let (sent, mailbox) = tokio::join!(sending, serving);
    let (outcome, result) = &sent[0];
    assert!(result.is_ok(), "{result:?}");
    assert!(outcome.accepted);
    let collected = mailbox.collect(0, deadline, &BTreeMap::new(), None).await;
    assert_eq!(collected.messages.len(), 1, "the message arrived on the second try");
}

/// A neighbour has its message once its own frames are on the air, not when the radio
/// has served every neighbour: a paced broadcast to many neighbours held the first
/// ones' messages back until the last one's frames were out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_neighbour_has_its_message_once_its_own_frames_are_out() {
    use wdml_node::exchange::shaper::{Delivery, Schedule};
    let rows = 4;
    let (mailbox, channel) = receiver(rows).await;
    let (frames, _, _) = message(rows, radio(LossModel::None, 1.0));
    assert_eq!(frames.len(), 1);
    // Node 1's frame goes out at once, another neighbour's a minute later (a long
    // turn on a shared band).
    let schedule = Schedule {
        deliveries: vec![
            Delivery {
                at_s: 0.0,
                receiver: 0,
                frame: 0,
            },
            Delivery {
                at_s: 60.0,
                receiver: 1,
                frame: 0,
            },
        ],
        ..Schedule::default()
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let sending = tokio::spawn(client::transmit(
        frames,
        schedule,
        vec![(1, Some(client::Link::new(channel))), (2, None)],
        1.0,
        deadline,
        None,
    ));
    let collected = mailbox
        .collect(0, Instant::now() + Duration::from_secs(30), &BTreeMap::new(), None)
        .await;
    sending.abort();
    assert_eq!(
        collected.messages.len(),
        1,
        "node 1 heard node 0 within 30 s, while the radio still owed the other neighbour its frame"
    );
}

/// A node's messages to a neighbour travel round after round on one stream, so that a
/// message costs its frames and a receipt rather than a new HTTP/2 stream
/// (`wdml bench --only tls`). A message the receiver refuses, or one the radio cut
/// short, closes that stream; the next round's message still arrives, on a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_carries_round_after_round_on_one_stream_and_recovers_from_a_refusal_or_a_cut() {
    let rows = 100; // 4,000 bytes: 3 frames
    let (mailbox, channel) = receiver(rows).await;
    let link = client::Link::new(channel);
    let unshaped = radio(LossModel::None, 0.0);
    // Sends node 0's message for `round` with `token`; `first_frame_only`: the radio
    // gives up after the first frame.
    let send = |round: u32, token: u64, first_frame_only: bool| {
        let (frames, mut schedule, _) = message_in(round, token, rows, unshaped.clone());
        assert_eq!(frames.len(), 3);
        if first_frame_only {
            schedule.deliveries.truncate(1);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let destinations = vec![(1, Some(link.clone()))];
        async move {
            client::transmit(frames, schedule, destinations, 0.0, deadline, None)
                .await
                .remove(0)
        }
    };
    let heard = |round: u32, within: Duration| {
        let mailbox = mailbox.clone();
        async move {
            let deadline = Instant::now() + within;
            mailbox
                .collect(round, deadline, &BTreeMap::new(), None)
                .await
                .messages
                .len()
        }
    };
    for round in 0..3 {
        if round > 0 {
            mailbox.begin_round(round, 9, &[0], &[0]);
        }
        let (outcome, result) = send(round, 9, false).await;
        assert!(result.is_ok() && outcome.accepted, "round {round}: {result:?}");
        assert_eq!(outcome.frames, 3, "round {round}: each frame once");
        assert_eq!(heard(round, Duration::from_secs(30)).await, 1, "round {round}");
    }
    assert_eq!(link.streams_opened().await, 1, "three rounds, one stream");

    // Round 3: a message with another round's token is refused (and not tried again).
    mailbox.begin_round(3, 9, &[0], &[0]);
    let (outcome, result) = send(3, 8, false).await;
    assert_eq!(result.unwrap_err().code(), tonic::Code::FailedPrecondition);
    assert!(!outcome.accepted);
    // Round 4: the radio gave up after the first frame; the receiver hears nothing.
    mailbox.begin_round(4, 9, &[0], &[0]);
    let (outcome, result) = send(4, 9, true).await;
    assert_eq!(result.unwrap_err().code(), tonic::Code::DataLoss);
    assert_eq!(outcome.frames, 1);
    assert_eq!(heard(4, Duration::from_secs(1)).await, 0);
    // Round 5: whole again, on a new stream.
    mailbox.begin_round(5, 9, &[0], &[0]);
    let (outcome, result) = send(5, 9, false).await;
    assert!(result.is_ok() && outcome.accepted, "{result:?}");
    assert_eq!(heard(5, Duration::from_secs(30)).await, 1);
    assert_eq!(
        link.streams_opened().await,
        3,
        "a new stream after the refusal and after the cut, and only then"
    );
}

/// A neighbour's stream, open between messages, does not hold up the receiver's
/// shutdown: graceful shutdown waits for open streams, and a neighbour still running
/// keeps its stream; the node ends them when it stops serving instead of after their
/// 60 s idle limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_open_between_messages_does_not_hold_up_the_receivers_shutdown() {
    let rows = 4;
    let (node0, node1) = credentials();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (_mailbox, service, closer) = node1_service(rows);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(transport::serve(
        transport::server().add_service(PeerExchangeServer::new(service)),
        listener,
        node1,
        Limits::default(),
        async {
            stopped.await.ok();
        },
    ));
    let channel = node0.connect_lazy(&address.to_string(), Identity::Node(1)).unwrap();
    let link = client::Link::new(channel);
    let (frames, schedule, _) = message(rows, radio(LossModel::None, 0.0));
    let deadline = Instant::now() + Duration::from_secs(30);
    let sent = client::transmit(frames, schedule, vec![(1, Some(link.clone()))], 0.0, deadline, None).await;
    assert!(sent[0].1.is_ok(), "{:?}", sent[0].1);
    // The link stays open (and referenced) while the receiver shuts down.
    closer.close();
    stop.send(()).unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(30), server).await;
    assert!(
        matches!(ended, Ok(Ok(Ok(())))),
        "the server did not shut down while a neighbour's stream was open: {ended:?}"
    );
    drop(link);
}

/// A TCP relay to `target` whose connections can all be cut at once: a link that
/// breaks between two rounds.
struct Relay {
    address: SocketAddr,
    connections: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Relay {
    async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let connections = Arc::new(std::sync::Mutex::new(Vec::new()));
        let held = connections.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let relay = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                held.lock().unwrap().push(relay);
            }
        });
        Relay { address, connections }
    }

    /// Drops every connection relayed so far, both ends.
    fn cut(&self) {
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }
}

/// A link whose stream died while quiet between rounds (the connection broke, or the
/// neighbour restarted) still delivers the next round's message, on a new stream over
/// a new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_after_the_link_broke_between_rounds_arrives_on_a_new_stream() {
    let rows = 4;
    let (node0, node1) = credentials();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay = Relay::start(listener.local_addr().unwrap()).await;
    let mailbox = serve_node1(listener, node1, rows);
    let channel = node0
        .connect_lazy(&relay.address.to_string(), Identity::Node(1))
        .unwrap();
    let link = client::Link::new(channel);
    for round in 0..2 {
        if round == 1 {
            relay.cut();
            mailbox.begin_round(1, 9, &[0], &[0]);
        }
        let (frames, schedule, _) = message_in(round, 9, rows, radio(LossModel::None, 0.0));
        let deadline = Instant::now() + Duration::from_secs(30);
        let sent = client::transmit(frames, schedule, vec![(1, Some(link.clone()))], 0.0, deadline, None).await;
        let (outcome, result) = &sent[0];
        assert!(result.is_ok() && outcome.accepted, "round {round}: {result:?}");
        let collected = mailbox.collect(round, deadline, &BTreeMap::new(), None).await;
        assert_eq!(collected.messages.len(), 1, "round {round}");
    }
    // The dead stream was not used again: a new one (or, while the connection's loss
    // was not yet noticed, two: the regular retry then reconnects).
    assert!(link.streams_opened().await >= 2);
}

/// A frame larger than a receiver decodes ([`client::MAX_FRAME_BYTES`], 4 MiB), first
/// or later in its message, is refused as every oversized payload is,
/// `RESOURCE_EXHAUSTED`, and counted as a rejection; the sender does not try it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_over_the_size_limit_is_refused_and_counted() {
    use wdml_node::exchange::shaper::{Delivery, Schedule};
    // 5 MiB of f32 predictions: within the run's 16 MiB a message may have, over the
    // 4 MiB a frame may have.
    let rows = (client::MAX_FRAME_BYTES as u32 + (1 << 20)) / (4 * COLS);
    let (mailbox, channel) = receiver(rows).await;
    let encoded = codec::encode(
        &vec![0.5f32; (rows * COLS) as usize],
        MessageShape {
            rows,
            cols: COLS,
            encoding: Encoding::F32,
            top_k: 0,
        },
    );
    let envelope = Envelope {
        run_id: "t".into(),
        round: 0,
        round_token: 9,
        sender: 0,
    };
    let whole = codec::frames(&envelope, &encoded, usize::MAX);
    assert_eq!(whole.len(), 1);
    // The same message as a small first frame and a 5 MiB second one.
    let (head, tail) = whole[0].data.split_at(16);
    let split = vec![
        wdml_proto::Frame {
            count: 2,
            data: head.to_vec(),
            ..whole[0].clone()
        },
        wdml_proto::Frame {
            index: 1,
            count: 2,
            data: tail.to_vec(),
            ..whole[0].clone()
        },
    ];
    let link = client::Link::new(channel);
    for (case, frames) in [("one frame", whole), ("the second frame", split)] {
        let deliveries = (0..frames.len())
            .map(|frame| Delivery {
                at_s: 0.0,
                receiver: 0,
                frame,
            })
            .collect();
        let schedule = Schedule {
            deliveries,
            ..Schedule::default()
        };
        let opened = link.streams_opened().await;
        let deadline = Instant::now() + Duration::from_secs(30);
        let (outcome, result) = client::transmit(frames, schedule, vec![(1, Some(link.clone()))], 0.0, deadline, None)
            .await
            .remove(0);
        let status = result.unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{case}: {status:?}");
        assert!(!outcome.accepted, "{case}");
        assert_eq!(
            link.streams_opened().await,
            opened + 1,
            "{case}: a refusal is not tried again"
        );
        assert_eq!(
            mailbox.take_rejected(),
            1,
            "{case}: the receiver counts the frame it refused"
        );
    }
}
