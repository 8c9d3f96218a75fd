//! Recovery, done for real: kill -9 a node mid-run and start it again from its state
//! directory; kill -9 the coordinator mid-run and start it again on its run directory;
//! a round that fails on a node. (A node that joins and dies before its stream opens,
//! and a join released after the sync timeout, are tested in-process:
//! coordinator/tests/members.rs.)

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{Cluster, Process, get, metrics, small, summary};
use wdml_coordinator::MetricsRow;

/// Every (round, node) of `metrics.jsonl`, counted.
fn rows_per_round_and_node(cluster: &Cluster) -> BTreeMap<(u32, u32), usize> {
    let mut counts = BTreeMap::new();
    for row in metrics(cluster.out()) {
        *counts.entry((row.round, row.node)).or_default() += 1;
    }
    counts
}

#[test]
fn a_node_killed_mid_run_resumes_from_its_checkpoint() {
    let rounds = 100;
    let mut cluster = Cluster::start("resume-node", 3, &small(3, rounds));
    cluster.wait_for_round(6, Duration::from_secs(120));
    cluster.nodes[2].kill(); // SIGKILL: no goodbye, no last write
    // A round is filed when it closes, so node 2's report of the round open at the kill
    // may not be in metrics.jsonl yet; once that round is filed, node 2's first life is
    // on record in full.
    let filed = metrics(cluster.out()).iter().map(|r| r.round).max().unwrap_or(0);
    cluster.wait_for_round(filed + 1, Duration::from_secs(120));
    let before: Vec<_> = metrics(cluster.out()).into_iter().filter(|r| r.node == 2).collect();
    let last = before.last().expect("node 2 reported before the kill").clone();

    // The same device starts again with its state directory.
    cluster.start_node(2, "mlp:64", "127.0.0.1");
    assert!(cluster.wait_for_end(Duration::from_secs(300)).success());

    // Its last checkpoint is its last report's (or, killed between the report and the
    // checkpoint, the one before).
    let log = std::fs::read_to_string(cluster.out().join("logs/node-2.log")).unwrap();
    let (resumed, accuracy): (u32, f32) = log
        .split("resumed from its checkpoint after round ")
        .nth(1)
        .and_then(|rest| {
            let round = rest.split_whitespace().next()?.parse().ok()?;
            let accuracy = rest.split("(test accuracy ").nth(1)?.split(')').next()?.parse().ok()?;
            Some((round, accuracy))
        })
        .unwrap_or_else(|| panic!("the restarted node did not resume from a checkpoint: {log}"));
    // One round past the last filed report when the kill cut the report of that round
    // on its way (the checkpoint follows the sending, not the coordinator's receipt).
    assert!(
        resumed + 1 >= last.round && resumed <= last.round + 1,
        "resumed after {resumed}, last report {}",
        last.round
    );
    // The restored model is the one that reported that round: the same test accuracy,
    // as filed, or as the node logged it when its report was cut.
    let rows = metrics(cluster.out());
    let reported = match rows.iter().find(|r| r.node == 2 && r.round == resumed) {
        Some(row) => row.metrics.test_accuracy,
        None => log
            .split(&format!("round done node=2 round={resumed} accuracy=\""))
            .nth(1)
            .and_then(|rest| rest.split('"').next()?.parse().ok())
            .expect("node 2 reported, or at least logged, the round it resumed after"),
    };
    assert!(
        (f64::from(accuracy) - reported).abs() < 1e-4,
        "restored model: {accuracy:.4}; round {resumed} reported {reported:.4}: not the model it had"
    );
    assert!(
        rows.iter().any(|r| r.node == 2 && r.round > last.round),
        "node 2 reported again"
    );
    let s = summary(cluster.out());
    assert!(s.finished, "{}", s.reason);
    // One row per node per round it reported, never two.
    for ((round, node), n) in rows_per_round_and_node(&cluster) {
        assert_eq!(n, 1, "round {round} node {node}");
    }
}

#[test]
fn a_coordinator_killed_mid_run_resumes_where_it_stopped() {
    let rounds = 40;
    let overrides = small(3, rounds);
    let mut cluster = Cluster::start("resume-coordinator", 3, &overrides);
    cluster.wait_for_round(5, Duration::from_secs(120));
    let listen = cluster.coordinator.address.clone();
    cluster.coordinator.kill(); // SIGKILL mid-run
    let closed_before = metrics(cluster.out()).iter().map(|r| r.round).max().unwrap();

    // Started again on the same address with the same run directory.
    let restarted = Instant::now();
    let args = Cluster::coordinator_args(cluster.out(), &listen, &overrides);
    cluster.coordinator = Process::start("coordinator", &args, &cluster.out().join("logs/coordinator.log"));
    cluster.wait_for_round(closed_before + 1, Duration::from_secs(120));
    eprintln!(
        "first round closed {:.2} s after the coordinator restarted",
        restarted.elapsed().as_secs_f64()
    );
    assert!(cluster.wait_for_end(Duration::from_secs(300)).success());

    let s = summary(cluster.out());
    assert!(s.finished, "{}", s.reason);
    assert_eq!(s.rounds_closed, rounds);
    assert_eq!(s.outages.len(), 1, "{:?}", s.outages);
    // (The kill may land between the journal and metrics.jsonl: one round apart.)
    let after = s.outages[0].after_round.expect("rounds had closed");
    assert!(
        after == closed_before || after == closed_before + 1,
        "{after} against {closed_before}"
    );
    // metrics.jsonl: exactly one row per node per round, no gap, no duplicate.
    let counts = rows_per_round_and_node(&cluster);
    for round in 1..=rounds {
        for node in 0..3 {
            assert_eq!(counts.get(&(round, node)), Some(&1), "round {round} node {node}");
        }
    }
    assert_eq!(counts.len(), 3 * rounds as usize);
    for node in &s.nodes {
        assert_eq!(node.status, "finished", "node {}", node.id);
        assert_eq!(node.rounds_reported, rounds, "node {}", node.id);
    }
    // A finished run is never replaced by accident.
    let mut again = Process::start_unlistening(&args, &cluster.out().join("logs/again.log"));
    let status = again.wait_for(Duration::from_secs(30)).expect("refused at once");
    assert!(!status.success());
    let log = std::fs::read_to_string(cluster.out().join("logs/again.log")).unwrap();
    assert!(
        log.contains("holds a finished run") && log.contains("--overwrite"),
        "{log}"
    );
}

#[test]
fn a_node_whose_round_panics_reports_it_and_leaves_and_the_run_goes_on() {
    let rounds = 8;
    let mut overrides = small(3, rounds);
    overrides.push("coordinator.round_timeout_ms=60000".into());
    let mut cluster = Cluster::coordinator_on("panic", "127.0.0.1", &overrides);
    for id in 0..2 {
        cluster.start_node(id, "mlp:64", "127.0.0.1");
    }
    let mut args = cluster.node_args(2, "mlp:64", "127.0.0.1:0");
    args.extend(["--fault-panic-at-round".into(), "3".into()]);
    cluster.start_node_with(2, &args);
    assert!(cluster.wait_for_end(Duration::from_secs(120)).success());
    let status = cluster.nodes[2]
        .wait_for(Duration::from_secs(30))
        .expect("node 2 exits");
    assert!(!status.success(), "a node whose round failed exits non-zero");
    let log = std::fs::read_to_string(cluster.out().join("logs/node-2.log")).unwrap();
    assert!(log.contains("round 3 failed: the round worker panicked"), "{log}");

    let s = summary(cluster.out());
    assert!(s.finished, "{}", s.reason);
    let node2 = s.nodes.iter().find(|n| n.id == 2).unwrap();
    assert_eq!((node2.status.as_str(), node2.rounds_reported), ("left", 2));
    assert!(
        s.events
            .iter()
            .any(|e| e.node == 2 && e.event == "failed" && e.reason.contains("panicked"))
    );
    // The barrier did not wait out its 60 s for the failed node.
    let round3: Vec<_> = metrics(cluster.out()).into_iter().filter(|r| r.round == 3).collect();
    assert_eq!(round3.len(), 2);
    assert!(round3[0].round_ms < 30_000.0, "round 3 took {} ms", round3[0].round_ms);
    for node in [0, 1] {
        assert_eq!(s.nodes[node].rounds_reported, rounds);
    }
}

#[test]
fn a_run_whose_every_round_failed_is_not_finished_and_says_why() {
    let mut cluster = Cluster::coordinator_on("all-failed", "127.0.0.1", &small(2, 3));
    for id in 0..2 {
        let mut args = cluster.node_args(id, "mlp:64", "127.0.0.1:0");
        args.extend(["--fault-panic-at-round".into(), "1".into()]);
        cluster.start_node_with(id, &args);
    }
    let status = cluster.wait_for_end(Duration::from_secs(120));
    assert!(!status.success(), "a run in which nothing was learned exits non-zero");
    let s = summary(cluster.out());
    assert!(!s.finished);
    assert!(s.reason.contains("every round failed"), "{}", s.reason);
}

#[test]
fn a_run_whose_nodes_all_died_is_not_finished_and_exits_non_zero() {
    // Many rounds, so the run cannot end by itself while the nodes are being killed;
    // after they are gone the coordinator waits the join timeout for them to come back
    // (60 s by default), so a short one.
    let mut overrides = small(2, 500);
    overrides.push("coordinator.join_timeout_ms=3000".into());
    let mut cluster = Cluster::coordinator_on("all-died", "127.0.0.1", &overrides);
    for id in 0..2 {
        cluster.start_node(id, "mlp:64", "127.0.0.1");
    }
    cluster.wait_for_round(2, Duration::from_secs(60));
    for node in &mut cluster.nodes {
        node.kill();
    }
    let status = cluster.wait_for_end(Duration::from_secs(120));
    assert!(!status.success(), "a run that lost every node exits non-zero");
    let s = summary(cluster.out());
    assert!(!s.finished, "{}", s.reason);
    assert!(s.rounds_closed < 500, "{}", s.rounds_closed);
    let statuses: Vec<&str> = s.nodes.iter().map(|n| n.status.as_str()).collect();
    assert_eq!(statuses, ["gone", "gone"], "{}", s.reason);
}

/// Kubernetes restarts whatever exits: with `--linger` the coordinator and the nodes
/// stay up after the run until SIGTERM (then exit 0), the coordinator's dashboard
/// still serves the run, and a coordinator restarted on the finished run serves it
/// instead of being refused (or running it again).
#[test]
fn with_linger_a_run_stays_up_until_sigterm_and_a_restart_serves_the_finished_run() {
    let overrides = small(2, 2);
    let extra = ["--linger", "--http", "127.0.0.1:0"];
    let mut cluster = Cluster::coordinator_with("linger", "127.0.0.1", &overrides, &extra);
    for id in 0..2 {
        let mut args = cluster.node_args(id, "mlp:64", "127.0.0.1:0");
        args.push("--linger".into());
        cluster.start_node_with(id, &args);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while !cluster.out().join("summary.json").exists() {
        assert!(Instant::now() < deadline, "the run did not end");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(summary(cluster.out()).finished);
    // The coordinator prints the table after summary.json; give everyone time to exit
    // if they were going to.
    std::thread::sleep(Duration::from_secs(2));
    for process in std::iter::once(&mut cluster.coordinator).chain(cluster.nodes.iter_mut()) {
        assert!(
            process.child.try_wait().unwrap().is_none(),
            "{} exited after the run",
            process.name
        );
    }
    let url = cluster.dashboard_url();
    let log = std::fs::read_to_string(cluster.out().join("logs/coordinator.log")).unwrap();
    assert!(
        log.contains(&format!("its dashboard stays on {url} until stopped (--linger)")),
        "no lingering dashboard: {log}"
    );
    let ca = cluster.tls().join("ca.pem");
    let rounds: Vec<MetricsRow> = serde_json::from_str(&get(&url, "/api/rounds", &ca)).unwrap();
    assert_eq!(rounds.len(), metrics(cluster.out()).len());
    for process in std::iter::once(&mut cluster.coordinator).chain(cluster.nodes.iter_mut()) {
        // SAFETY: a plain signal to our own child.
        unsafe { libc::kill(process.child.id() as i32, libc::SIGTERM) };
        let status = process.wait_for(Duration::from_secs(30)).expect("stopped by SIGTERM");
        assert!(status.success(), "{}: {status}", process.name);
    }

    // Restarted on the finished run: it serves it, and runs nothing. (Set as a
    // manifest sets it: the environment, with 1 for yes.)
    let journal = std::fs::read(cluster.out().join("journal.jsonl")).unwrap();
    let mut args = Cluster::coordinator_args(cluster.out(), "127.0.0.1:0", &overrides);
    args.extend(["--http".into(), "127.0.0.1:0".into()]);
    let child = std::process::Command::new(common::WDML)
        .args(&args)
        .env("WDML_LINGER", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(cluster.out().join("logs/again.log")).unwrap())
        .spawn()
        .unwrap();
    let mut again = common::Process::adopt("coordinator again", child);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(again.stdout.as_mut().unwrap()), &mut line).unwrap();
    let url = line
        .strip_prefix("dashboard on ")
        .unwrap_or_else(|| panic!("{line:?}"))
        .trim()
        .to_string();
    let served: serde_json::Value = serde_json::from_str(&get(&url, "/api/run", &ca)).unwrap();
    assert_eq!(served["finished"], true, "{served}");
    assert_eq!(served["rounds_closed"], 2, "{served}");
    assert_eq!(served["live"], false, "{served}");
    // SAFETY: as above.
    unsafe { libc::kill(again.id() as i32, libc::SIGTERM) };
    assert!(again.wait().unwrap().success());
    assert_eq!(
        std::fs::read(cluster.out().join("journal.jsonl")).unwrap(),
        journal,
        "the record is untouched"
    );
}

/// A run whose every round closed but whose summary was never written (the disk was
/// full, the coordinator was killed right then): its coordinator, started again alone
/// on the run directory, writes the summary and exits 0 without waiting for any node.
#[test]
fn a_coordinator_restarted_after_every_round_closed_writes_the_summary_alone() {
    let rounds = 3;
    let overrides = small(2, rounds);
    let mut cluster = Cluster::start("summary-after", 2, &overrides);
    assert!(cluster.wait_for_end(Duration::from_secs(120)).success());
    // As if the coordinator had died between the last round and the summary.
    let journal = cluster.out().join("journal.jsonl");
    let text = std::fs::read_to_string(&journal).unwrap();
    let kept: Vec<&str> = text.lines().filter(|l| !l.contains("\"kind\":\"end\"")).collect();
    assert_eq!(kept.len() + 1, text.lines().count(), "one end entry");
    std::fs::write(&journal, kept.join("\n") + "\n").unwrap();
    std::fs::remove_file(cluster.out().join("summary.json")).unwrap();

    let args = Cluster::coordinator_args(cluster.out(), "127.0.0.1:0", &overrides);
    let mut again = Process::start("coordinator again", &args, &cluster.out().join("logs/again.log"));
    let status = again
        .wait_for(Duration::from_secs(30))
        .expect("it writes the run up at once");
    assert!(status.success(), "{status}");
    let s = summary(cluster.out());
    assert!(s.finished, "{}", s.reason);
    assert_eq!(s.rounds_closed, rounds);
}
