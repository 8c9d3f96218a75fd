//! End-to-end behaviour of real `wdml` processes on loopback: learning, the bytes on
//! the wire, the `local` baseline, reproducibility, a node dying, bad messages.

mod common;

use std::time::Duration;

use common::{Cluster, TempDir, launch, metrics, small, summary};
use wdml_coordinator::MetricsRow;

#[test]
fn dml_nodes_learn_and_send_exactly_batch_times_classes_per_neighbour() {
    let dir = TempDir::new("dml");
    let mut overrides = small(3, 3);
    overrides.push("exchange.encoding=\"f16\"".into());
    let output = launch(dir.path(), &overrides);
    assert!(output.status.success(), "the run fails");

    let rows = metrics(dir.path());
    assert_eq!(rows.len(), 9, "3 nodes × 3 rounds");
    let (public_batch, classes, f16_bytes, neighbours) = (64, 10, 2, 2);
    for row in &rows {
        assert_eq!(
            row.metrics.payload_bytes_sent,
            neighbours * public_batch * classes * f16_bytes,
            "{row:?}"
        );
        assert_eq!(
            row.metrics.payload_bytes_received,
            neighbours * public_batch * classes * f16_bytes
        );
        assert_eq!(
            (
                row.metrics.messages_sent,
                row.metrics.messages_received,
                row.metrics.messages_lost
            ),
            (2, 2, 0)
        );
        assert!(
            row.metrics.wire_bytes_sent > row.metrics.payload_bytes_sent,
            "frame headers cost bytes too"
        );
        assert!(row.metrics.kl_loss > 0.0, "the distillation term is active");
        // 15 training steps and an evaluation are measured as CPU time, not only wall.
        assert!(row.metrics.compute_cpu_ms > 0.0, "{row:?}");
    }
    let s = summary(dir.path());
    assert!(s.finished);
    for node in &s.nodes {
        let accuracy = node.final_accuracy.unwrap();
        assert!(
            accuracy > 0.6,
            "node {} reached only {accuracy} (chance is 0.1)",
            node.id
        );
    }
    // The run directory has its picture, as SVG and PNG: a line per node in each of
    // three panels (the data's lines are 2 wide; the legend's 3, the axes' 1).
    let figure = std::fs::read_to_string(dir.path().join("rounds.svg")).expect("rounds.svg");
    assert_eq!(figure.matches(r#"stroke-width="2" points"#).count(), 3 * 3, "{figure}");
    let png = std::fs::read(dir.path().join("rounds.png")).expect("rounds.png");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    // The launcher's final table names every node.
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(table.contains("mean final accuracy"), "{table}");
}

#[test]
fn local_exchanges_nothing_and_keeps_the_same_partition() {
    let local = TempDir::new("local");
    let mut overrides = small(3, 2);
    overrides.push("run.algorithm=\"local\"".into());
    assert!(launch(local.path(), &overrides).status.success());
    let dml = TempDir::new("local-vs-dml");
    assert!(launch(dml.path(), &small(3, 1)).status.success());

    let rows = metrics(local.path());
    assert_eq!(rows.len(), 6);
    for row in &rows {
        assert_eq!(
            (
                row.metrics.payload_bytes_sent,
                row.metrics.wire_bytes_sent,
                row.metrics.wire_bytes_received
            ),
            (0, 0, 0)
        );
        assert_eq!((row.metrics.messages_sent, row.metrics.messages_received), (0, 0));
        assert_eq!(row.metrics.kl_loss, 0.0);
        assert!(row.metrics.test_accuracy > 0.3);
    }
    let shard = |rows: &[MetricsRow], node| rows.iter().find(|r| r.node == node).unwrap().metrics.private_samples;
    let dml_rows = metrics(dml.path());
    for node in 0..3 {
        assert!(shard(&rows, node) > 0);
        assert_eq!(
            shard(&rows, node),
            shard(&dml_rows, node),
            "node {node}'s shard differs between algorithms"
        );
    }
}

#[test]
fn the_same_seed_gives_the_same_metrics_and_radio_accounting() {
    let first = TempDir::new("seed-a");
    let second = TempDir::new("seed-b");
    let mut overrides = small(3, 2);
    overrides.push("data.partition=\"dirichlet:0.5\"".into());
    // On a lossy radio, so the channel's draws and accounting are compared too.
    overrides.push("channel.preset=\"d2d-urban\"".into());
    assert!(launch(first.path(), &overrides).status.success());
    assert!(launch(second.path(), &overrides).status.success());
    // Everything but the measured timings.
    let learned = |rows: Vec<MetricsRow>| -> Vec<MetricsRow> {
        rows.into_iter()
            .map(|mut r| {
                (r.metrics.compute_ms, r.metrics.compute_cpu_ms, r.metrics.exchange_ms) = (0.0, 0.0, 0.0);
                (r.wait_ms, r.round_ms) = (0.0, 0.0);
                r
            })
            .collect()
    };
    let (a, b) = (learned(metrics(first.path())), learned(metrics(second.path())));
    assert_eq!(a.len(), 6);
    assert_eq!(a, b);
}

#[test]
fn a_killed_node_is_marked_gone_and_the_others_finish_every_round() {
    let rounds = 8;
    let mut cluster = Cluster::start("kill", 3, &small(3, rounds));
    cluster.wait_for_round(1, Duration::from_secs(120));
    cluster.nodes[2].kill();
    let status = cluster.wait_for_end(Duration::from_secs(180));
    assert!(status.success());

    let s = summary(cluster.out());
    assert!(s.finished);
    assert_eq!(s.rounds_closed, rounds);
    let node = |id: u32| s.nodes.iter().find(|n| n.id == id).unwrap();
    assert_eq!(node(2).status, "gone");
    assert!(node(2).rounds_reported < rounds);
    for id in [0, 1] {
        assert_eq!(node(id).status, "finished");
        assert_eq!(node(id).rounds_reported, rounds, "node {id} missed rounds");
    }
    assert!(
        s.events.iter().any(|e| e.node == 2 && e.event == "gone"),
        "{:?}",
        s.events
    );
    // The survivors stopped expecting node 2 once it was gone.
    let last = metrics(cluster.out())
        .into_iter()
        .filter(|r| r.round == rounds)
        .collect::<Vec<_>>();
    assert!(
        last.iter()
            .all(|r| r.metrics.messages_lost == 0 && r.metrics.messages_received == 1),
        "{last:?}"
    );
}

mod bad_messages {
    use super::*;
    use std::path::Path;
    use tonic::Code;
    use wdml_proto::Frame;
    use wdml_transport::{Identity, Security};

    /// A well-formed single-frame message for the `small` scenario, as node 1.
    fn frame(run_id: &str) -> Frame {
        common::frame(run_id, 1)
    }

    /// Sends `frame` to node 0 at `address` over a connection with node 1's certificate.
    async fn send(tls: &Path, address: &str, frame: Frame) -> Code {
        let node1 = Security::from_dir(tls, Identity::Node(1)).unwrap();
        let channel = node1
            .endpoint(address, Identity::Node(0))
            .unwrap()
            .connect()
            .await
            .unwrap();
        match common::send_message(channel, vec![frame]).await {
            Ok(_) => Code::Ok,
            Err(status) => status.code(),
        }
    }

    #[test]
    fn get_precise_status_codes_and_the_node_keeps_training() {
        // Enough rounds that the run is still going when the bad messages arrive, even
        // on a fast machine (a round of this scenario can take well under 100 ms).
        let rounds = 150;
        let mut overrides = small(2, rounds);
        overrides.push("run.name=\"bad\"".into());
        let mut cluster = Cluster::start("bad", 2, &overrides);
        // Rounds 1 and 2 closed: every node is past the wire's round 0, which is stale.
        cluster.wait_for_round(2, Duration::from_secs(120));
        let run_id = "bad-42"; // run.name-run.seed
        let address = cluster.nodes[0].address.clone();

        let mut cases: Vec<(&str, Frame, Code)> = Vec::new();
        let mut f = frame(run_id);
        f.rows = 63;
        f.total_bytes = 63 * 10;
        f.data.truncate(63 * 10);
        cases.push(("wrong shape", f, Code::InvalidArgument));
        let mut f = frame(run_id);
        f.scale = f32::NAN;
        cases.push(("non-finite value", f, Code::InvalidArgument));
        let mut f = frame(run_id);
        f.encoding = wdml_proto::Encoding::F16 as i32;
        f.total_bytes = 64 * 10 * 2;
        f.data = vec![0; 64 * 10 * 2];
        cases.push(("another encoding than the run's", f, Code::InvalidArgument));
        let mut f = frame(run_id);
        f.sender = 99;
        cases.push(("unknown sender", f, Code::PermissionDenied));
        cases.push(("stale round", frame(run_id), Code::FailedPrecondition));
        let mut f = frame(run_id);
        f.total_bytes = 1 << 40;
        cases.push(("oversized payload", f, Code::ResourceExhausted));
        let mut f = frame(run_id);
        f.encoding = 99;
        cases.push(("undecodable encoding", f, Code::InvalidArgument));
        cases.push(("another run", frame("other-run"), Code::FailedPrecondition));
        let bad = cases.len() as u32;

        let runtime = tokio::runtime::Runtime::new().unwrap();
        let tls = cluster.tls();
        for (what, frame, code) in cases {
            assert_eq!(runtime.block_on(send(&tls, &address, frame)), code, "{what}");
        }

        assert!(cluster.wait_for_end(Duration::from_secs(180)).success());
        let s = summary(cluster.out());
        assert!(s.finished);
        let node0 = s.nodes.iter().find(|n| n.id == 0).unwrap();
        assert_eq!(node0.rounds_reported, rounds, "node 0 stopped training");
        assert_eq!(
            node0.messages_rejected, bad,
            "every bad message is counted, and nothing else"
        );
        assert!(node0.final_accuracy.unwrap() > 0.6);
        // The good messages kept flowing.
        assert!(metrics(cluster.out()).iter().all(|r| r.metrics.messages_lost == 0));
    }
}

#[test]
fn a_d2d_edge_run_loses_messages_and_still_completes_every_round() {
    let dir = TempDir::new("edge");
    let rounds = 8;
    let mut overrides = small(4, rounds);
    overrides.push("channel.preset=\"d2d-edge\"".into());
    // 2,560-byte messages: two frames each, the size the preset's loss rate is tuned for.
    overrides.push("exchange.public_batch=256".into());
    assert!(launch(dir.path(), &overrides).status.success());

    let s = summary(dir.path());
    assert!(s.finished);
    assert!(s.nodes.iter().all(|n| n.rounds_reported == rounds), "{:?}", s.nodes);
    let rows = metrics(dir.path());
    assert!(
        rows.iter().any(|r| r.metrics.messages_lost > 0),
        "d2d-edge lost nothing"
    );
    for row in &rows {
        // Air time and energy exactly when frames went on the air (an outage sends nothing).
        assert_eq!(row.metrics.airtime_s > 0.0, row.metrics.frames_sent > 0, "{row:?}");
        assert_eq!(row.metrics.tx_energy_j > 0.0, row.metrics.frames_sent > 0, "{row:?}");
        assert!(row.metrics.rx_energy_j > 0.0 || row.metrics.peers_heard == 0, "{row:?}");
        assert_eq!(
            row.metrics.messages_received + row.metrics.messages_lost,
            3,
            "every neighbour is heard or lost"
        );
        assert_eq!(
            row.metrics.messages_rejected, 0,
            "a message lost on the air is no bad message: {row:?}"
        );
        // Heard nobody: trained on its own data alone (no distillation term).
        if row.metrics.peers_heard == 0 {
            assert_eq!(row.metrics.kl_loss, 0.0, "{row:?}");
        } else {
            assert!(row.metrics.kl_loss > 0.0, "{row:?}");
        }
    }
    assert!(
        rows.iter().any(|r| r.metrics.peers_heard == 0),
        "no node was cut off in any round: the case is untested"
    );
}

#[test]
fn compare_runs_every_algorithm_and_writes_the_table_and_the_plot() {
    let dir = TempDir::new("compare");
    let mut command = std::process::Command::new(common::WDML);
    command.arg("compare").arg("--out").arg(dir.path());
    // A radio with costs (energy, air time) but no losses, so byte counts are exact.
    let mut overrides = small(3, 2);
    overrides.extend(
        [
            "channel.preset=\"d2d-urban\"",
            "channel.loss=\"none\"",
            "channel.fading=\"none\"",
            "channel.shadowing_sigma_db=0.0",
        ]
        .map(String::from),
    );
    for o in overrides {
        command.arg("--set").arg(o);
    }
    let output = command.output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    let table = std::fs::read_to_string(dir.path().join("comparison.md")).unwrap();
    for algorithm in ["| local |", "| fedavg |", "| dml |", "| fedmd |", "| dsfl |"] {
        assert!(table.contains(algorithm), "{algorithm} missing from\n{table}");
    }
    let svg = std::fs::read_to_string(dir.path().join("comparison.svg")).unwrap();
    // Accuracy per round for all five; against energy and air time (log axes) for the
    // four that spend any.
    assert_eq!(svg.matches(r#"stroke-width="2" points"#).count(), 5 + 4 + 4, "{svg}");
    assert!(dir.path().join("comparison.png").exists());

    // Parameters (50,890 of mlp:64, f32) against predictions (64 × 10, q8), per neighbour.
    let payload = |algorithm: &str| metrics(&dir.path().join(algorithm))[0].metrics.payload_bytes_sent;
    assert_eq!(payload("fedavg"), 2 * 50_890 * 4);
    assert_eq!(payload("dml"), 2 * 64 * 10);
    // FedMD and DS-FL send dml's message.
    assert_eq!(payload("fedmd"), 2 * 64 * 10);
    assert_eq!(payload("dsfl"), 2 * 64 * 10);
    assert_eq!(payload("local"), 0);

    // FedAvg starts every node from one model, and over a lossless full mesh of three
    // the Metropolis–Hastings weights (1/3 each) average exactly: the nodes stay equal,
    // and averaging does not wreck what they learned.
    let fedavg = metrics(&dir.path().join("fedavg"));
    for round in 1..=2 {
        let accuracies: Vec<f64> = fedavg
            .iter()
            .filter(|r| r.round == round)
            .map(|r| r.metrics.test_accuracy)
            .collect();
        assert_eq!(accuracies.len(), 3);
        assert!(
            accuracies.iter().all(|a| *a == accuracies[0]),
            "round {round}: {accuracies:?}"
        );
        assert!(
            accuracies[0] > 0.5,
            "round {round}: averaging destroyed the models ({accuracies:?})"
        );
    }
}

#[test]
fn compare_across_seeds_gives_intervals_paired_differences_and_chooses_on_validation() {
    let wdml = || {
        let mut command = std::process::Command::new(common::WDML);
        command.arg("compare").args(["--algorithms", "local,dml"]);
        for o in small(3, 1) {
            command.arg("--set").arg(o);
        }
        // A validation set: rounds are selected on it, not on the test set.
        command.args(["--set", "data.validation=300"]);
        command
    };
    // A seed given twice is a mistake, refused before anything runs.
    let output = wdml().args(["--seeds", "4,5,4"]).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--seeds: seed 4 is given twice"), "{stderr}");

    let dir = TempDir::new("seeds");
    let output = wdml()
        .args(["--seeds", "4,5"])
        .arg("--out")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    // Each seed is its own run: its own initialisation and batches, so its own losses.
    let first_loss = |seed: u64| {
        metrics(&dir.path().join(format!("seed-{seed}/local")))[0]
            .metrics
            .train_loss
    };
    assert_ne!(first_loss(4), first_loss(5));
    // Every node reported its validation accuracy every round.
    let rows = metrics(&dir.path().join("seed-4/dml"));
    assert!(
        rows.iter()
            .all(|r| r.metrics.validation_accuracy.is_some_and(|v| (0.0..=1.0).contains(&v))),
        "{rows:?}"
    );
    let outcome = |seed: u64, i: usize, field: &str| -> f64 {
        let json = std::fs::read_to_string(dir.path().join(format!("seed-{seed}/comparison.json"))).unwrap();
        let outcomes: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(outcomes[i]["selected"]["basis"], "validation");
        outcomes[i][field].as_f64().unwrap()
    };
    let table = std::fs::read_to_string(dir.path().join("seeds.md")).unwrap();
    assert!(table.contains("\n| 4 |") && table.contains("\n| 5 |"), "{table}");
    assert!(table.contains("best on the validation set"), "{table}");
    // Its figure: per algorithm a line (the mean over the seeds) in its interval, and
    // dml's paired difference to local beside them, accuracy in percent.
    let svg = std::fs::read_to_string(dir.path().join("seeds.svg")).expect("seeds.svg");
    assert_eq!(svg.matches("<polygon").count(), 3, "{svg}");
    assert!(svg.contains("mean test accuracy, %"), "{svg}");
    assert!(dir.path().join("seeds.png").exists());
    // seeds.json: dml's mean and the paired difference, as the per-seed files give them.
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("seeds.json")).unwrap()).unwrap();
    assert_eq!(json["basis"], "validation");
    let final_mean = |seed, i| outcome(seed, i, "final_mean_accuracy");
    let mean = (final_mean(4, 1) + final_mean(5, 1)) / 2.0;
    let dml = &json["algorithms"][1];
    assert_eq!(dml["algorithm"], "dml");
    assert!((dml["final_mean_accuracy"]["mean"].as_f64().unwrap() - mean).abs() < 1e-12);
    let gain = (final_mean(4, 1) - final_mean(4, 0) + final_mean(5, 1) - final_mean(5, 0)) / 2.0;
    let difference = &json["differences"][0];
    assert_eq!((&difference["a"], &difference["b"]), (&"local".into(), &"dml".into()));
    assert!((difference["final_mean_accuracy"]["mean"].as_f64().unwrap() - gain).abs() < 1e-12);
    let row = format!("| dml − local | {:+.2}", 100.0 * gain);
    assert!(table.contains(&row), "{row} in {table}");
}

#[test]
fn fedavg_with_different_models_is_refused_with_a_clear_error() {
    // The quickstart mixes MLPs and CNNs.
    let output = std::process::Command::new(common::WDML)
        .args(["run", "--algorithm", "fedavg"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("nodes.models") && stderr.contains("same model"),
        "{stderr}"
    );
}

#[test]
fn a_node_that_comes_back_rejoins_and_trains_again() {
    // Rounds of this scenario take ~25 ms once a node is gone, and a restarted node
    // needs ~0.3 s to join, load and open its stream: with 12 rounds the run could end
    // before it was back (seen in CI). 60 leave it more than a second.
    let rounds = 60;
    let mut cluster = Cluster::start("rejoin", 3, &small(3, rounds));
    cluster.wait_for_round(1, Duration::from_secs(120));
    cluster.nodes[2].kill();
    // The survivors go on without it for a while …
    let killed_at = metrics(cluster.out()).iter().map(|r| r.round).max().unwrap();
    cluster.wait_for_round(killed_at + 2, Duration::from_secs(120));
    // … then the same device starts again, with the same id.
    cluster.start_node(2, "mlp:64", "127.0.0.1");
    assert!(cluster.wait_for_end(Duration::from_secs(180)).success());

    let s = summary(cluster.out());
    assert!(s.finished);
    let events: Vec<(u32, &str)> = s.events.iter().map(|e| (e.node, e.event.as_str())).collect();
    let gone = events
        .iter()
        .position(|e| *e == (2, "gone"))
        .expect("node 2 marked gone");
    let back = events
        .iter()
        .position(|e| *e == (2, "rejoined"))
        .expect("node 2 rejoined");
    assert!(gone < back, "{events:?}");
    let node2 = s.nodes.iter().find(|n| n.id == 2).unwrap();
    assert_eq!(node2.status, "finished", "back in the run at the end");
    let rows = metrics(cluster.out());
    let rejoined_at = s.events[back].round;
    assert!(
        rows.iter()
            .any(|r| r.node == 2 && r.round >= rejoined_at && r.metrics.messages_received > 0),
        "node 2 exchanged again after rejoining"
    );
    assert!(
        rows.iter().filter(|r| r.node == 2).count() < rounds as usize,
        "it missed the rounds it was away"
    );
}
