//! What a new user meets in the first hour, as behaviours that must not regress: a run
//! directory is never replaced by accident, ctrl-c stops cleanly with the conventional
//! status and `--resume` continues the run with every round once, a run ends at once,
//! rounds are counted from 1 everywhere, a wrong model is refused naming both,
//! contradicting options are refused, log files have no colour codes, a closed pipe is
//! no panic, `compare` says what it could not run.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Cluster, Process, TempDir, WDML, launch, metrics, run_command, small, summary};

#[test]
fn a_run_counts_rounds_from_one_ends_at_once_and_logs_without_colour() {
    let dir = TempDir::new("first-run");
    let rounds = 3;
    let output = launch(dir.path(), &small(2, rounds));
    assert!(output.status.success());
    // metrics.jsonl, the progress lines, and both kinds of log count 1, 2, 3.
    let numbers: Vec<u32> = metrics(dir.path()).iter().map(|r| r.round).collect();
    assert_eq!(numbers, [1, 1, 2, 2, 3, 3]);
    let progress = String::from_utf8_lossy(&output.stderr);
    assert!(
        progress.contains("round 1/3:") && progress.contains("round 3/3:"),
        "{progress}"
    );
    assert!(
        !progress.contains("round 0/") && !progress.contains("round 4/"),
        "{progress}"
    );
    let coordinator = std::fs::read_to_string(dir.path().join("logs/coordinator.log")).unwrap();
    assert!(coordinator.contains("round started round=1 "), "{coordinator}");
    assert!(!coordinator.contains("round=0 "), "{coordinator}");
    let node = std::fs::read_to_string(dir.path().join("logs/node-0.log")).unwrap();
    assert!(node.contains("round done node=0 round=1 "), "{node}");
    // The run ends when its last round does: nothing is left open to wait for.
    assert!(!coordinator.contains("still open"), "{coordinator}");
    // Logs written to files carry no terminal colour codes, and no process waited for
    // connections left open at its end (the coordinator's and the nodes' alike).
    for entry in std::fs::read_dir(dir.path().join("logs")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        assert!(!text.contains('\u{1b}'), "colour codes in a log file:\n{text}");
        assert!(!text.contains("still open"), "{text}");
    }
    // The realised split is recorded: per node, its samples per class, and a picture.
    let split: wdml_coordinator::SplitRecord =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("split.json")).unwrap()).unwrap();
    assert_eq!(split.partition, "iid");
    assert_eq!(split.nodes.len(), 2);
    for node in &split.nodes {
        let row = metrics(dir.path()).into_iter().find(|r| r.node == node.node).unwrap();
        assert_eq!(node.histogram.len(), 10);
        assert_eq!(
            node.samples,
            u64::from(row.metrics.private_samples),
            "node {}",
            node.node
        );
        assert_eq!(node.histogram.iter().map(|&c| u64::from(c)).sum::<u64>(), node.samples);
    }
    let figure = std::fs::read_to_string(dir.path().join("split.svg")).unwrap();
    assert!(figure.contains("node 1 ("), "{figure}");
    // The tables fit an 80-column terminal.
    let table = String::from_utf8_lossy(&output.stdout);
    for line in table.lines() {
        assert!(line.chars().count() <= 80, "{line}");
    }
}

#[test]
fn a_run_directory_is_never_replaced_by_accident() {
    let dir = TempDir::new("no-overwrite");
    let out = dir.path().join("run");
    let overrides = small(2, 1);
    assert!(launch(&out, &overrides).status.success());
    let before = std::fs::read(out.join("metrics.jsonl")).unwrap();
    let again = launch(&out, &overrides);
    assert!(!again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        stderr.contains("holds an earlier run") && stderr.contains("--overwrite") && stderr.contains("--resume"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(out.join("metrics.jsonl")).unwrap(),
        before,
        "the earlier run was touched"
    );
    // Asked to, it replaces it.
    let output = run_command(&out, &overrides).arg("--overwrite").output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn ctrl_c_stops_the_run_with_the_conventional_status_and_the_nodes_left() {
    let dir = TempDir::new("ctrl-c");
    let mut command = run_command(&dir.path().join("run"), &small(3, 100_000));
    let mut child = Process::adopt(
        "run",
        command.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap(),
    );
    // Wait for rounds to close, then ctrl-c (SIGINT) as a terminal sends it.
    let out = dir.path().join("run");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while metrics(&out).iter().all(|r| r.round < 2) {
        assert!(std::time::Instant::now() < deadline, "no round closed");
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert_eq!(status.code(), Some(130), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("interrupted: "), "{stderr}");
    assert!(!stderr.contains("exited with"), "{stderr}");
    let s = summary(&out);
    assert!(!s.finished);
    for node in &s.nodes {
        assert_eq!(node.status, "left", "node {}: {:?}", node.id, s.events);
    }
}

#[test]
fn a_stopped_run_resumes_with_every_round_once_and_a_finished_one_is_not_resumed() {
    let dir = TempDir::new("resume");
    let out = dir.path().join("run");
    let rounds = 30;
    let mut overrides = small(3, rounds);
    overrides.push("train.local_steps=60".into());
    let run = |extra: &[&str]| {
        let mut command = run_command(&out, &overrides);
        command.args(extra);
        command
    };
    let mut child = Process::adopt(
        "run",
        run(&[]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap(),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while metrics(&out).iter().all(|r| r.round < 2) {
        assert!(std::time::Instant::now() < deadline, "no round closed");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    assert_eq!(child.wait().unwrap().code(), Some(130));
    let stopped = metrics(&out).iter().map(|r| r.round).max().unwrap();
    assert!(stopped < rounds, "the run ended before it was stopped");

    // Continued with nothing but the directory: the run's own scenario (its rounds, its
    // steps), not the built-in quickstart's, and a flag that contradicts it is refused.
    let contradicting = Command::new(WDML)
        .args(["run", "--resume", "--rounds", "5", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(!contradicting.status.success());
    let stderr = String::from_utf8_lossy(&contradicting.stderr);
    assert!(stderr.contains("run.rounds"), "{stderr}");
    let output = Command::new(WDML)
        .args(["run", "--resume", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(summary(&out).finished);
    let mut seen = std::collections::BTreeMap::new();
    for row in metrics(&out) {
        *seen.entry((row.round, row.node)).or_insert(0) += 1;
    }
    for round in 1..=rounds {
        for node in 0..3 {
            assert_eq!(
                seen.get(&(round, node)),
                Some(&1),
                "round {round}, node {node}: {seen:?}"
            );
        }
    }
    assert_eq!(seen.len(), 3 * rounds as usize, "{seen:?}");

    // A finished run has nothing to continue.
    let again = run(&["--resume"]).output().unwrap();
    assert!(!again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("nothing to continue"), "{stderr}");
}

#[test]
fn a_closed_pipe_ends_the_launcher_quietly() {
    let dir = TempDir::new("pipe");
    let mut command = run_command(&dir.path().join("run"), &small(2, 1));
    // `wdml run | head -0`: the reader is gone before the table is printed.
    let mut child = Process::adopt(
        "run",
        command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap(),
    );
    drop(child.stdout.take());
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(status.code(), Some(141), "{stderr}");
}

#[test]
fn a_flag_and_a_set_for_the_same_field_are_refused_naming_both() {
    let output = Command::new(WDML)
        .args(["run", "--rounds", "2", "--set", "run.rounds=3"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--rounds 2") && stderr.contains("run.rounds=3"),
        "{stderr}"
    );
    // An invalid --set is refused even beside a flag for another field.
    let output = Command::new(WDML)
        .args(["run", "--rounds", "2", "--set", "train.local_steps=many"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("train.local_steps"), "{stderr}");
}

#[test]
fn a_node_with_another_model_than_the_scenarios_is_refused_naming_both() {
    let mut cluster = Cluster::coordinator_on("model", "127.0.0.1", &small(2, 2));
    let index = cluster.start_node(0, "cnn:4,8,16", "127.0.0.1");
    let status = cluster.nodes[index]
        .wait_for(Duration::from_secs(60))
        .expect("refused at once");
    assert!(!status.success());
    let log = std::fs::read_to_string(cluster.out().join("logs/node-0.log")).unwrap();
    assert!(log.contains("cnn:4,8,16") && log.contains("mlp:64"), "{log}");
    // Without --model it runs the scenario's.
    let mut args = cluster.node_args(0, "", "127.0.0.1:0");
    let at = args.iter().position(|a| a == "--model").unwrap();
    args.drain(at..at + 2);
    cluster.start_node_with(0, &args);
    cluster.start_node(1, "mlp:64", "127.0.0.1");
    assert!(cluster.wait_for_end(Duration::from_secs(120)).success());
    assert!(summary(cluster.out()).nodes.iter().all(|n| n.model == "mlp:64"));
}

#[test]
fn compare_runs_what_it_can_and_says_what_it_left_out() {
    let dir = TempDir::new("compare-skip");
    let mut command = Command::new(WDML);
    command.arg("compare").arg("--out").arg(dir.path().join("cmp"));
    let mut overrides = small(2, 1);
    // Different models: fedavg cannot average them.
    overrides.push("nodes.models=[\"mlp:64\",\"mlp:32\"]".into());
    for o in overrides {
        command.arg("--set").arg(o);
    }
    let output = command.output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let table = std::fs::read_to_string(dir.path().join("cmp/comparison.md")).unwrap();
    assert!(
        table.contains("Not run: fedavg") && table.contains("same model"),
        "{table}"
    );
    assert!(table.contains("| local |") && table.contains("| dml |"), "{table}");
    // What it prints fits an 80-column terminal, and says what it left out too.
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(printed.contains("not run: fedavg"), "{printed}");
    for line in printed.lines() {
        assert!(line.chars().count() <= 80, "{line}");
    }
    // The curves count rounds from 1 too.
    let json = std::fs::read_to_string(dir.path().join("cmp/comparison.json")).unwrap();
    let outcomes: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(outcomes[0]["curve"][0]["round"], 1);

    // Only local: no claim about exchanging algorithms.
    let mut command = Command::new(WDML);
    command
        .args(["compare", "--algorithms", "local", "--out"])
        .arg(dir.path().join("local"));
    for o in small(2, 1) {
        command.arg("--set").arg(o);
    }
    assert!(command.output().unwrap().status.success());
    let table = std::fs::read_to_string(dir.path().join("local/comparison.md")).unwrap();
    assert!(!table.contains("exchanging"), "{table}");
}

#[test]
fn a_node_that_cannot_reach_its_coordinator_names_it_and_says_it_could_not_connect() {
    let dir = TempDir::new("unreachable");
    let tls = common::certs(dir.path(), 1);
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("127.0.0.1:{port}");
    let output = Command::new(WDML)
        .args([
            "node",
            "--id",
            "0",
            "--coordinator",
            &address,
            "--coordinator-timeout-s",
            "2",
        ])
        .arg("--tls-dir")
        .arg(&tls)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let log = String::from_utf8_lossy(&output.stderr);
    let retries: Vec<&str> = log.lines().filter(|l| l.contains("retrying")).collect();
    assert!(!retries.is_empty(), "{log}");
    assert!(retries.iter().all(|l| l.contains(&address)), "{log}");
    let last = log.lines().last().unwrap_or_default();
    assert!(last.contains(&address) && last.contains("could not connect"), "{log}");
    assert!(!log.contains("join refused"), "{log}");
}

#[test]
fn a_coordinator_says_who_it_waits_for_and_names_the_fields_when_it_gives_up() {
    let dir = TempDir::new("no-nodes");
    std::fs::create_dir_all(dir.path().join("logs")).unwrap();
    let mut overrides = small(3, 1);
    overrides.push("coordinator.join_timeout_ms=500".into());
    let args = Cluster::coordinator_args(dir.path(), "127.0.0.1:0", &{
        common::certs(dir.path(), 3);
        overrides
    });
    let log = dir.path().join("logs/coordinator.log");
    let mut coordinator = common::Process::start("coordinator", &args, &log);
    let status = coordinator.wait_for(Duration::from_secs(30)).expect("it gives up");
    assert!(!status.success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("waiting for nodes: 0 of 3 joined"), "{text}");
    assert!(
        text.contains("coordinator.join_timeout_ms") && text.contains("coordinator.min_nodes"),
        "{text}"
    );
    assert!(
        text.contains("only 0 of the 3 nodes needed were ready within") && text.contains(" s, 0 joined"),
        "{text}"
    );
}

#[test]
fn a_split_that_leaves_a_node_below_the_minimum_is_refused_before_any_process_starts() {
    let dir = TempDir::new("split-below");
    // The embedded subset in 256 label-skewed shards: some node gets fewer than 10.
    let output = launch(dir.path(), &["nodes.count=256".into()]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("nodes.count = 256 with data.partition = \"dirichlet:0.5\" cannot be split")
            && stderr.contains("fewer than 10 private samples"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("logs/coordinator.log").exists(),
        "a process was started"
    );
}

#[test]
fn a_port_in_use_is_said_with_another_to_try() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let dir = TempDir::new("port");
    let tls = common::certs(dir.path(), 1);
    let output = Command::new(WDML)
        .args(["coordinator", "--listen", &address, "--out"])
        .arg(dir.path().join("run"))
        .arg("--tls-dir")
        .arg(&tls)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("in use") && stderr.contains("--listen 127.0.0.1:"),
        "{stderr}"
    );
}

#[test]
fn a_device_that_dies_before_the_run_begins_fails_the_start_at_once_naming_it() {
    let dir = TempDir::new("dies-early");
    let mut overrides = small(3, 2);
    overrides.retain(|o| !o.starts_with("nodes.models"));
    overrides.push("nodes.models=[\"mlp:64\", \"mlp:64\", \"ext:gone\"]".into());
    overrides.push(
        "nodes.programs=[{ ids = [2], command = [\"sh\", \"-c\", \"echo no such package >&2; exit 3\"] }]".into(),
    );
    let output = run_command(&dir.path().join("run"), &overrides).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("node-2 exited (exit status: 3) before the first round closed")
            && stderr.contains("no such package"),
        "{stderr}"
    );
}
