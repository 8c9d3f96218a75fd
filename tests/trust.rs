//! Trust, done for real against running processes: strangers without the run's
//! certificates, with a foreign CA's, with an expired one, a member claiming another
//! member's id or sender; errors that tell an unauthenticated caller nothing; streams
//! and handshakes that never finish; a member that never sends; an adversary.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use common::{Cluster, TempDir, frame, metrics, small, summary};
use tonic::Code;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
use wdml_proto::{Frame, JoinRequest, NodeEvent, coordinator_client::CoordinatorClient};
use wdml_transport::pki::{self, Authority};
use wdml_transport::{Identity, Security};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

/// A credentials directory that trusts the run's CA (`ca.pem` of `tls`) but holds
/// `identity`'s certificate from `issued`.
fn credentials(dir: &Path, tls: &Path, identity: Identity, issued: &pki::Issued) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(tls.join("ca.pem"), dir.join("ca.pem")).unwrap();
    std::fs::write(dir.join(format!("{}.pem", identity.stem())), &issued.cert_pem).unwrap();
    std::fs::write(dir.join(format!("{}.key", identity.stem())), &issued.key_pem).unwrap();
    dir.to_path_buf()
}

/// A TLS connection to `server` at `address` that trusts the CA in `tls` but presents
/// no certificate of its own.
async fn without_certificate(
    tls: &Path,
    server: Identity,
    address: &str,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let tls_config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(tls.join("ca.pem")).unwrap()))
        .domain_name(server.dns_name());
    Endpoint::from_shared(format!("https://{address}"))
        .unwrap()
        .tls_config(tls_config)
        .unwrap()
        .connect()
        .await
}

/// What a Join as `node_id` over `security` gets.
async fn join(security: &Security, address: &str, node_id: u32) -> Result<(), tonic::Status> {
    let channel = security
        .endpoint(address, Identity::Coordinator)
        .unwrap()
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let request = JoinRequest {
        node_id,
        advertise: "127.0.0.1:9".into(),
        model: "mlp:64".into(),
        parameters: 1,
        protocol_version: wdml_proto::PROTOCOL_VERSION,
        data_contract: wdml_proto::DATA_CONTRACT,
        data: Some(wdml_proto::data::fashion_mnist()),
    };
    CoordinatorClient::new(channel).join(request).await.map(drop)
}

/// What sending `frame` to the node at `address` (which must be node `to`) gets.
async fn send(security: &Security, address: &str, to: u32, frame: Frame) -> Result<(), tonic::Status> {
    let channel = security
        .endpoint(address, Identity::Node(to))
        .unwrap()
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    common::send_message(channel, vec![frame]).await.map(drop)
}

#[test]
fn strangers_and_impostors_are_refused_and_the_run_finishes_unharmed() {
    let rounds = 60;
    let mut overrides = small(3, rounds);
    overrides.push("run.name=\"trust\"".into());
    let mut cluster = Cluster::start("trust", 3, &overrides);
    cluster.wait_for_round(1, Duration::from_secs(120));
    let tls = cluster.tls();
    let scratch = TempDir::new("trust-attackers");
    let coordinator = cluster.coordinator.address.clone();
    let node0 = cluster.nodes[0].address.clone();
    let rt = runtime();

    // 1. No certificate at all: TLS to the right server, presenting nothing.
    let anonymous = rt.block_on(async {
        match without_certificate(&tls, Identity::Node(0), &node0).await {
            Err(_) => Err(Code::Unavailable),
            Ok(channel) => common::send_message(channel, vec![frame("trust-42", 1)])
                .await
                .map(drop)
                .map_err(|s| s.code()),
        }
    });
    assert!(anonymous.is_err(), "a client without a certificate was served");
    // … nor plaintext.
    let plaintext = rt.block_on(join(&Security::Insecure, &coordinator, 2));
    assert!(plaintext.is_err(), "a plaintext Join was served");

    // 2. A certificate of another CA, for an id of the run.
    let foreign = Authority::generate(pki::DEFAULT_VALIDITY).unwrap();
    let issued = foreign.issue(Identity::Node(1), pki::DEFAULT_VALIDITY).unwrap();
    let dir = credentials(&scratch.path().join("foreign"), &tls, Identity::Node(1), &issued);
    let forged = Security::from_dir(&dir, Identity::Node(1)).unwrap();
    assert!(rt.block_on(send(&forged, &node0, 0, frame("trust-42", 1))).is_err());
    assert!(rt.block_on(join(&forged, &coordinator, 1)).is_err());

    // 3. A certificate of the run's CA that has expired.
    let authority = Authority::load(&tls).unwrap();
    let day = Duration::from_secs(86_400);
    let now = SystemTime::now();
    let issued = authority
        .issue_between(Identity::Node(1), now - 2 * day, now - day)
        .unwrap();
    let dir = credentials(&scratch.path().join("expired"), &tls, Identity::Node(1), &issued);
    let expired = Security::from_dir(&dir, Identity::Node(1)).unwrap();
    assert!(rt.block_on(send(&expired, &node0, 0, frame("trust-42", 1))).is_err());
    assert!(rt.block_on(join(&expired, &coordinator, 1)).is_err());

    // 4. Node 2's own certificate, claiming to be node 1: as a Join, and as a sender.
    let node2 = Security::from_dir(&tls, Identity::Node(2)).unwrap();
    let status = rt.block_on(join(&node2, &coordinator, 1)).unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let status = rt.block_on(send(&node2, &node0, 0, frame("trust-42", 1))).unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    // A client that expects node 0 at node 1's address is told it is someone else.
    let node1_address = cluster.nodes[1].address.clone();
    assert!(
        rt.block_on(send(&node2, &node1_address, 0, frame("trust-42", 2)))
            .is_err()
    );

    assert!(cluster.wait_for_end(Duration::from_secs(300)).success());
    let s = summary(cluster.out());
    assert!(s.finished, "{}", s.reason);
    for node in &s.nodes {
        assert_eq!(node.status, "finished", "node {}", node.id);
        assert_eq!(node.rounds_reported, rounds, "node {} missed rounds", node.id);
        assert!(node.final_accuracy.unwrap() > 0.6, "node {}", node.id);
    }
    // Only the impostor's frame reached a handler (the rest died in the handshake),
    // and it is the one rejection counted.
    let rejected: u32 = s.nodes.iter().map(|n| n.messages_rejected).sum();
    assert_eq!(rejected, 1, "{:?}", s.nodes);
    // Nobody joined but the three members, once each.
    let joins: Vec<(u32, &str)> = s.events.iter().map(|e| (e.node, e.event.as_str())).collect();
    assert_eq!(joins.len(), 3, "{joins:?}");
    // The refusals are in the refusing processes' logs, with their cause.
    let log = std::fs::read_to_string(cluster.out().join("logs/node-0.log")).unwrap();
    assert!(log.contains("certificate is node-2's"), "{log}");
}

#[test]
fn an_unauthenticated_caller_learns_nothing_about_the_run() {
    // --insecure: nobody proves who they are, so nobody is told anything.
    let dir = TempDir::new("opaque");
    std::fs::create_dir_all(dir.path().join("logs")).unwrap();
    let mut overrides = small(2, 200);
    overrides.push("run.name=\"secretrun\"".into());
    let mut args = common::Cluster::coordinator_args(dir.path(), "127.0.0.1:0", &overrides);
    let tls_at = args.iter().position(|a| a == "--tls-dir").unwrap();
    args.splice(tls_at..tls_at + 2, ["--insecure".to_string()]);
    let coordinator = common::Process::start("coordinator", &args, &dir.path().join("logs/coordinator.log"));
    let rt = runtime();
    for (node_id, what) in [(7, "an id out of range"), (0, "a second process")] {
        let status = rt
            .block_on(async {
                let mut client = CoordinatorClient::connect(format!("http://{}", coordinator.address))
                    .await
                    .unwrap();
                // No model: whatever the scenario gives this id.
                let request = JoinRequest {
                    node_id,
                    advertise: "127.0.0.1:9".into(),
                    model: String::new(),
                    parameters: 1,
                    protocol_version: wdml_proto::PROTOCOL_VERSION,
                    data_contract: wdml_proto::DATA_CONTRACT,
                    data: Some(wdml_proto::data::fashion_mnist()),
                };
                let first = client.join(request.clone()).await;
                if node_id == 0 {
                    first.unwrap();
                    return client.join(request).await.map(drop);
                }
                first.map(drop)
            })
            .unwrap_err();
        let message = status.message();
        assert_eq!(message, "refused", "{what}: {status:?}");
        for secret in ["secretrun", "nodes 0 to 1", "mlp", "42"] {
            assert!(!message.contains(secret), "{what} disclosed {secret}: {message}");
        }
    }
    // The precise cause is in the coordinator's log.
    std::thread::sleep(Duration::from_millis(200));
    let log = std::fs::read_to_string(dir.path().join("logs/coordinator.log")).unwrap();
    assert!(log.contains("out of range") && log.contains("nodes 0 to 1"), "{log}");
}

#[test]
fn streams_and_handshakes_that_never_finish_are_dropped_and_the_run_goes_on() {
    // Far more rounds than the test lasts: it watches rounds close under the attack.
    let cluster = Cluster::start("stall", 2, &small(2, 1_000_000));
    cluster.wait_for_round(1, Duration::from_secs(120));
    let last_round = || metrics(cluster.out()).iter().map(|r| r.round).max().unwrap_or(0);
    let before = last_round();
    let rt = runtime();
    let tls = cluster.tls();
    let (coordinator, node0) = (cluster.coordinator.address.clone(), cluster.nodes[0].address.clone());
    let outcome = rt.block_on(async {
        // Hundreds of connections that never start their handshake, at both servers:
        // more than the pending handshakes a server keeps (the oldest are evicted).
        let mut stalled = Vec::new();
        for i in 0..600 {
            let address = if i % 2 == 0 { &coordinator } else { &node0 };
            stalled.push(tokio::net::TcpStream::connect(address).await.unwrap());
        }
        // A member's Sync stream that never says Hello.
        let member = Security::from_dir(&tls, Identity::Node(1)).unwrap();
        let channel = member
            .endpoint(&coordinator, Identity::Coordinator)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let (_quiet, events) = tokio::sync::mpsc::channel::<NodeEvent>(1);
        let started = tokio::time::Instant::now();
        let sync = CoordinatorClient::new(channel)
            .sync(tokio_stream::wrappers::ReceiverStream::new(events))
            .await;
        let hello_deadline = (sync.map(drop), started.elapsed());
        // Every stalled connection is closed by the server within its handshake
        // deadline (plus the time to get to it).
        let mut closed = 0;
        for mut socket in stalled {
            use tokio::io::AsyncReadExt;
            let mut byte = [0u8; 1];
            if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(Duration::from_secs(30), socket.read(&mut byte)).await {
                closed += 1;
            }
        }
        (hello_deadline, closed)
    });
    let ((sync, waited), closed) = outcome;
    let status = sync.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        waited >= Duration::from_secs(4),
        "dropped before its deadline: {waited:?}"
    );
    assert_eq!(closed, 600, "stalled handshakes left open");
    // Rounds kept closing all along, every node reporting each.
    let during = last_round();
    assert!(
        during > before + 10,
        "the run stalled: round {before} before, {during} after"
    );
    cluster.wait_for_round(during + 5, Duration::from_secs(60));
    let rows = metrics(cluster.out());
    for round in before..=during {
        assert_eq!(rows.iter().filter(|r| r.round == round).count(), 2, "round {round}");
    }
}

#[test]
fn a_silent_member_does_not_stretch_the_rounds() {
    let rounds = 8;
    let timeout_ms = 10_000;
    let mut overrides = small(4, rounds);
    overrides.extend([
        "adversary.nodes=[3]".into(),
        "adversary.kind=\"silent\"".into(),
        format!("exchange.timeout_ms={timeout_ms}"),
    ]);
    let dir = TempDir::new("silent");
    assert!(common::launch(dir.path(), &overrides).status.success());
    let s = summary(dir.path());
    assert!(s.finished, "{}", s.reason);
    // Every honest node reported that node 3 went silent, once.
    let silent: Vec<&str> = s
        .events
        .iter()
        .filter(|e| e.node == 3 && e.event == "silent")
        .map(|e| e.reason.as_str())
        .collect();
    assert_eq!(silent.len(), 3, "{:?}", s.events);
    // Once it is known silent (after two misses), nobody waits for it: the exchange
    // takes a small part of the timeout it used to take every round.
    for row in metrics(dir.path()).iter().filter(|r| r.node != 3 && r.round >= 3) {
        assert!(
            row.metrics.exchange_ms < f64::from(timeout_ms) / 5.0,
            "round {} node {} waited {} ms",
            row.round,
            row.node,
            row.metrics.exchange_ms
        );
        assert_eq!(
            row.metrics.messages_received, 2,
            "the honest neighbours are still heard: {row:?}"
        );
    }
}

/// A node its neighbours cannot reach (here: it advertises an address nothing listens
/// on) is told at once that their messages will not come, through the coordinator,
/// instead of waiting for them until the exchange deadline; it is still heard itself
/// until, after two such rounds, it is out of the exchange and trains alone.
#[test]
fn a_node_its_neighbours_cannot_reach_does_not_wait_out_the_deadline() {
    let timeout_ms = 20_000;
    let mut overrides = small(3, 3);
    overrides.push(format!("exchange.timeout_ms={timeout_ms}"));
    let mut cluster = Cluster::coordinator_on("unreachable", "127.0.0.1", &overrides);
    for id in 0..2 {
        cluster.start_node(id, "mlp:64", "127.0.0.1");
    }
    let nowhere = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let mut args = cluster.node_args(2, "mlp:64", "127.0.0.1:0");
    args.extend(["--advertise".into(), nowhere.to_string()]);
    cluster.start_node_with(2, &args);
    assert!(cluster.wait_for_end(Duration::from_secs(120)).success());
    let s = summary(cluster.out());
    assert!(s.finished, "{}", s.reason);
    // In rounds 1 and 2, each of node 2's neighbours said it could not deliver, and the
    // coordinator told node 2; then it took node 2 out of the exchange.
    let log = std::fs::read_to_string(cluster.out().join("logs/coordinator.log")).unwrap();
    let told = log
        .lines()
        .filter(|l| l.contains("could not deliver its message") && l.contains("neighbour=2"))
        .count();
    assert_eq!(told, 4, "two neighbours, two rounds:\n{log}");
    let out: Vec<_> = s.events.iter().filter(|e| e.event == "unreachable").collect();
    assert!(out.len() == 1 && out[0].node == 2, "{:?}", s.events);
    // Node 0 and node 1 sent every round, over a link that could not reach node 2: a
    // broken link, which must not get them reported silent (exchange.silent_after is 2
    // misses in a row, so rounds 0 and 1 would have).
    let silent: Vec<_> = s.events.iter().filter(|e| e.event == "silent").collect();
    assert!(
        silent.is_empty(),
        "senders reported silent for a broken link: {silent:?}"
    );
    let rows = metrics(cluster.out());
    assert_eq!(rows.len(), 9, "every node reported every round: {rows:?}");
    for row in &rows {
        if row.node == 2 && row.round == 3 {
            // Out of the exchange: it expects nothing and sends nothing.
            assert_eq!(
                (
                    row.metrics.messages_received,
                    row.metrics.messages_lost,
                    row.metrics.messages_sent
                ),
                (0, 0, 0),
                "{row:?}"
            );
        } else if row.node == 2 {
            // Neither neighbour's message came, and it did not wait for them.
            assert_eq!(
                (row.metrics.messages_received, row.metrics.messages_lost),
                (0, 2),
                "{row:?}"
            );
            assert!(
                row.metrics.exchange_ms < f64::from(timeout_ms) / 4.0,
                "round {}: node 2 waited {} ms for messages that could not come",
                row.round,
                row.metrics.exchange_ms
            );
        } else if row.round < 3 {
            assert_eq!(row.metrics.messages_received, 2, "node 2 is heard: {row:?}");
        } else {
            assert_eq!(
                (row.metrics.messages_received, row.metrics.messages_lost),
                (1, 0),
                "{row:?}"
            );
        }
    }
}

#[test]
fn honest_nodes_keep_their_accuracy_under_median_while_an_adversary_lies() {
    // Seven devices with label-skewed data, node 0 lying confidently to its six
    // neighbours. Seeded: the same figures every time (measured: clean 72.7 %, the liar
    // under mean 65.7 %, under median 71.3 %).
    let base = |extra: &[&str]| -> Vec<String> {
        let mut o = small(7, 8);
        o.push("data.partition=\"dirichlet:0.5\"".to_string());
        o.extend(extra.iter().map(|s| s.to_string()));
        o
    };
    let honest_final = |overrides: Vec<String>| -> f64 {
        let dir = TempDir::new("adversary");
        assert!(common::launch(dir.path(), &overrides).status.success());
        let s = summary(dir.path());
        s.mean_final_accuracy.unwrap()
    };
    let clean = honest_final(base(&["train.aggregate=\"median\""]));
    let liar = ["adversary.nodes=[0]", "adversary.kind=\"confident-wrong\""];
    let under_mean = honest_final(base(&[&liar[..], &["train.aggregate=\"mean\""]].concat()));
    let under_median = honest_final(base(&[&liar[..], &["train.aggregate=\"median\""]].concat()));
    eprintln!(
        "honest nodes' mean final accuracy: clean {clean:.4}, liar under mean {under_mean:.4}, under median {under_median:.4}"
    );
    assert!(
        under_median > clean - 0.03,
        "median let the liar in: {under_median} against {clean}"
    );
    assert!(
        under_mean < under_median - 0.03,
        "the liar cost little under mean: {under_mean} against {under_median}"
    );
}

#[test]
fn honest_nodes_keep_their_accuracy_under_trust_weighted_while_two_adversaries_lie() {
    // The setting above with two liars among seven (nodes 0 and 3): `trust-weighted`
    // finds them from how far their predictions sit from the median, with no label.
    // Seeded (measured: clean 71.6 % over all seven, the liars under mean 49.0 %, under
    // trust-weighted 68.7 % over the five honest). The bound is issue 28's goal for two
    // liars: within 5 points of the clean run.
    let base = |extra: &[&str]| -> Vec<String> {
        let mut o = small(7, 8);
        o.push("data.partition=\"dirichlet:0.5\"".to_string());
        o.extend(extra.iter().map(|s| s.to_string()));
        o
    };
    let honest_final = |overrides: Vec<String>| -> f64 {
        let dir = TempDir::new("adversaries");
        assert!(common::launch(dir.path(), &overrides).status.success());
        summary(dir.path()).mean_final_accuracy.unwrap()
    };
    let clean = honest_final(base(&["train.aggregate=\"mean\""]));
    let liars = ["adversary.nodes=[0, 3]", "adversary.kind=\"confident-wrong\""];
    let under_mean = honest_final(base(&[&liars[..], &["train.aggregate=\"mean\""]].concat()));
    let under_trust = honest_final(base(&[&liars[..], &["train.aggregate=\"trust-weighted\""]].concat()));
    eprintln!(
        "honest nodes' mean final accuracy: clean {clean:.4}, two liars under mean {under_mean:.4}, under \
         trust-weighted {under_trust:.4}"
    );
    assert!(
        under_trust > clean - 0.05,
        "trust-weighted let the liars in: {under_trust} against {clean}"
    );
    assert!(
        under_mean < under_trust - 0.10,
        "the liars cost little under mean: {under_mean} against {under_trust}"
    );
}

#[test]
fn a_node_refuses_a_coordinator_that_another_ca_certified() {
    // An impostor coordinator, certified as "coordinator" by a CA of its own, where the
    // node expects the run's: the node must not join it (nor tell it anything).
    let dir = TempDir::new("impostor-coordinator");
    std::fs::create_dir_all(dir.path().join("logs")).unwrap();
    let run = common::certs(&dir.path().join("run"), 1);
    let foreign = common::certs(&dir.path().join("foreign"), 1);
    let mut args = Cluster::coordinator_args(dir.path(), "127.0.0.1:0", &small(1, 2));
    let tls_at = args.iter().position(|a| a == "--tls-dir").unwrap();
    args[tls_at + 1] = foreign.display().to_string();
    let impostor = common::Process::start("coordinator", &args, &dir.path().join("logs/coordinator.log"));
    let output = std::process::Command::new(common::WDML)
        .args(["node", "--id", "0", "--coordinator", &impostor.address])
        .args(["--coordinator-timeout-s", "2", "--tls-dir"])
        .arg(&run)
        .output()
        .unwrap();
    assert!(!output.status.success());
    // At once and clearly: a certificate no retry can change.
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(
        log.contains(&impostor.address)
            && log.contains("TLS handshake failed")
            && log.contains("invalid peer certificate"),
        "{log}"
    );
    std::thread::sleep(Duration::from_millis(200));
    let impostor_log = std::fs::read_to_string(dir.path().join("logs/coordinator.log")).unwrap();
    assert!(!impostor_log.contains("event=\"joined\""), "{impostor_log}");
    assert!(impostor_log.contains("0 of 1 joined"), "{impostor_log}");

    // The run's own coordinator, by contrast, streams its events only to a caller with
    // the run's credentials: Watch without a certificate is refused in the handshake.
    let rt = runtime();
    let watched = rt.block_on(async {
        match without_certificate(&foreign, Identity::Coordinator, &impostor.address).await {
            Err(_) => Err(Code::Unavailable),
            Ok(channel) => CoordinatorClient::new(channel)
                .watch(wdml_proto::WatchRequest {})
                .await
                .map(drop)
                .map_err(|s| s.code()),
        }
    });
    assert!(watched.is_err(), "Watch without a certificate was served");
}

/// A node given its credentials as three files of any name (as a Kubernetes pod mounts
/// them from one Secret shared by every node) takes part like any other; given another
/// node's certificate, it is refused at start with the file and both names.
#[test]
fn a_node_with_its_credentials_as_three_named_files_takes_part() {
    let mut cluster = Cluster::coordinator_on("tls-files", "127.0.0.1", &small(2, 2));
    let mounted = cluster.out().join("mounted");
    std::fs::create_dir_all(&mounted).unwrap();
    let tls = cluster.tls();
    for (from, to) in [
        ("ca.pem", "ca.crt"),
        ("node-0.pem", "tls.crt"),
        ("node-0.key", "tls.key"),
    ] {
        std::fs::copy(tls.join(from), mounted.join(to)).unwrap();
    }
    let files = |args: Vec<String>| -> Vec<String> {
        let at = args.iter().position(|a| a == "--tls-dir").unwrap();
        let mut args = args;
        args.splice(
            at..at + 2,
            [
                ("--tls-ca", "ca.crt"),
                ("--tls-cert", "tls.crt"),
                ("--tls-key", "tls.key"),
            ]
            .into_iter()
            .flat_map(|(flag, name)| [flag.to_string(), mounted.join(name).display().to_string()]),
        );
        args
    };
    // Node 1 with node 0's files: refused before it listens, naming the certificate.
    let wrong = std::process::Command::new(common::WDML)
        .args(files(cluster.node_args(1, "mlp:64", "127.0.0.1:0")))
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    let said = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        said.contains("tls.crt") && said.contains("names node-0, not node-1"),
        "{said}"
    );
    cluster.start_node_with(0, &files(cluster.node_args(0, "mlp:64", "127.0.0.1:0")));
    cluster.start_node(1, "mlp:64", "127.0.0.1");
    assert!(cluster.wait_for_end(Duration::from_secs(120)).success());
    let s = summary(cluster.out());
    assert!(s.finished, "{}", s.reason);
    assert!(s.nodes.iter().all(|n| n.status == "finished"), "{:?}", s.nodes);
    assert_eq!(metrics(cluster.out()).len(), 4);
}
