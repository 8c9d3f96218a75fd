//! The privacy audit, end to end: with `privacy.audit = true` every node records what
//! its neighbours received of it each round, and `wdml privacy RUN` attacks the record
//! as a curious neighbour would. On a strongly skewed split (Dirichlet α = 0.1, so each
//! node's classes are far from the public pool's) the attack must beat the blind guess
//! by a wide margin: the leak is real, and measured. A `local` run sends nothing, and
//! the attack says so.

mod common;

use std::process::Command;

use std::time::Duration;

use common::{Cluster, TempDir, WDML, small};

fn skewed(algorithm: &str, nodes: u32, rounds: u32) -> Vec<String> {
    let mut overrides = small(nodes, rounds);
    overrides.retain(|o| !o.starts_with("data.partition"));
    overrides.extend([
        format!("run.algorithm=\"{algorithm}\""),
        "data.partition=\"dirichlet:0.1\"".to_string(),
        "privacy.audit=true".to_string(),
    ]);
    overrides
}

/// Runs `wdml privacy` on `dir`; returns its stdout and the `privacy.json` it wrote.
fn attack(dir: &std::path::Path) -> (String, serde_json::Value) {
    let output = Command::new(WDML).arg("privacy").arg(dir).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "wdml privacy failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(dir.join("privacy.json")).expect("privacy.json");
    (stdout, serde_json::from_str(&text).expect("privacy.json is JSON"))
}

#[test]
fn shared_predictions_reveal_a_skewed_nodes_classes_and_local_sends_nothing() {
    let (nodes, rounds) = (4u32, 6u32);
    let dir = TempDir::new("privacy-dml");
    assert!(
        common::launch(dir.path(), &skewed("dml", nodes, rounds))
            .status
            .success()
    );
    for node in 0..nodes {
        let file = dir.path().join(format!("state/node-{node}/audit.jsonl"));
        let text = std::fs::read_to_string(&file).expect("an audit record per node");
        let records: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let rounds_recorded: Vec<u64> = records.iter().map(|r| r["round"].as_u64().unwrap()).collect();
        assert_eq!(
            rounds_recorded,
            (1..=u64::from(rounds)).collect::<Vec<_>>(),
            "node {node}: one record per round"
        );
        for r in &records {
            assert_eq!(
                (r["node"].as_u64(), r["rows"].as_u64(), r["classes"].as_u64()),
                (Some(node.into()), Some(64), Some(10))
            );
            assert_eq!(r["sent"], "predictions");
            assert_eq!(r["logits"].as_array().unwrap().len(), 640);
        }
    }
    let (table, report) = attack(dir.path());
    eprintln!("{table}");
    assert_eq!(report["recorded"], true);
    assert_eq!(report["nodes"].as_array().unwrap().len(), nodes as usize);
    let mean = &report["mean"];
    let tv = |key: &str| mean[key].as_f64().unwrap_or_else(|| panic!("{key} in {mean}"));
    let (raw, calibrated, prior, uniform) = (tv("tv_raw"), tv("tv_calibrated"), tv("tv_prior"), tv("tv_uniform"));
    // α = 0.1 leaves each node a few classes: the blind guesses are far off.
    assert!(prior > 0.5 && uniform > 0.5, "{mean}");
    // What the nodes sent gives their classes away: the estimates land clearly closer
    // than the blind guesses (here about 0.50 against 0.62; mutual distillation pulls
    // every node's predictions toward its neighbours' classes, which blurs them).
    assert!(
        calibrated < prior - 0.08,
        "calibrated {calibrated} against the prior's {prior}: {mean}"
    );
    assert!(raw < prior - 0.08 && raw < uniform - 0.08, "{mean}");

    let local = TempDir::new("privacy-local");
    assert!(
        common::launch(local.path(), &skewed("local", nodes, 2))
            .status
            .success()
    );
    assert!(
        !local.path().join("state/node-0/audit.jsonl").exists(),
        "local sends nothing, so records nothing"
    );
    let (table, report) = attack(local.path());
    assert!(table.contains("nothing was sent"), "{table}");
    assert_eq!(
        (report["sends"].as_bool(), report["recorded"].as_bool()),
        (Some(false), Some(false))
    );
    assert!(report["mean"]["tv_calibrated"].is_null(), "{report}");
    assert!(report["mean"]["tv_prior"].as_f64().unwrap() > 0.5, "{report}");
}

/// The record lives in the node's state directory: a node started without one, in an
/// audited run, refuses to go on once it learns the run's settings, naming the setting
/// and the flag.
#[test]
fn a_node_without_a_state_directory_refuses_an_audited_run() {
    let mut cluster = Cluster::coordinator_on("privacy-no-state", "127.0.0.1", &skewed("dml", 2, 2));
    let mut args = cluster.node_args(0, "mlp:64", "127.0.0.1:0");
    let at = args.iter().position(|a| a == "--state-dir").unwrap();
    args.drain(at..at + 2);
    let node = cluster.start_node_with(0, &args);
    let status = cluster.nodes[node]
        .wait_for(Duration::from_secs(60))
        .expect("the node stops");
    assert!(!status.success());
    let log = std::fs::read_to_string(cluster.out().join("logs/node-0.log")).unwrap();
    assert!(log.contains("privacy.audit") && log.contains("--state-dir"), "{log}");
}

/// A run built for membership inference: 2 nodes of 200 private rows each (the rest of
/// the embedded set held out as validation), half of each shard also in the public pool,
/// many passes over the shard (30 steps of 32 a round: 4.8 epochs a round), and a large
/// public batch, so that each round's batch holds about 50 of each node's members.
fn overfit(algorithm: &str, rounds: u32) -> Vec<String> {
    let mut overrides = small(2, rounds);
    overrides.retain(|o| !o.starts_with("train.local_steps") && !o.starts_with("exchange.public_batch"));
    overrides.extend([
        format!("run.algorithm=\"{algorithm}\""),
        "privacy.audit=true".to_string(),
        "data.public_pool=1000".to_string(),
        "data.validation=4600".to_string(),
        "data.public_overlap=0.5".to_string(),
        "train.local_steps=30".to_string(),
        "exchange.public_batch=600".to_string(),
    ]);
    overrides
}

#[test]
fn the_overlap_puts_the_stated_rows_in_the_pool_and_an_overfit_node_gives_its_members_away() {
    let dir = TempDir::new("privacy-members");
    assert!(common::launch(dir.path(), &overfit("dml", 6)).status.success());
    // split.json: node k's members are round(0.5 · 200) = 100 public rows, appended after
    // the 1,000 that are no node's, node by node.
    let split: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("split.json")).unwrap()).unwrap();
    let overlap = &split["public_overlap"];
    assert_eq!(overlap["share"], 0.5, "{split}");
    assert_eq!(overlap["public_rows"], 1200, "{split}");
    let mut next = 1000;
    for (k, members) in overlap["members"].as_array().unwrap().iter().enumerate() {
        let samples = split["nodes"][k]["samples"].as_u64().unwrap();
        assert_eq!(samples, 200, "{split}");
        let members: Vec<u64> = members
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_u64().unwrap())
            .collect();
        assert_eq!(members, (next..next + 100).collect::<Vec<_>>(), "node {k}");
        next += 100;
    }

    let (table, report) = attack(dir.path());
    eprintln!("{table}");
    let m = &report["membership"];
    let figure = |key: &str| {
        let a = &m[key];
        let f = |k: &str| a[k].as_f64().unwrap_or_else(|| panic!("{key}.{k} in {m}"));
        (f("advantage"), f("low"), f("high"), a["members"].as_u64().unwrap())
    };
    // The batches drew the members: about 50 of each node's a round.
    let (advantage, low, high, members) = figure("whole_run");
    assert!(members > 300, "{m}");
    // 200 rows seen ~29 times each: the node's own rows stand out, well clear of 0.
    assert!(
        low > 0.05 && advantage > 0.1 && low < advantage && advantage < high,
        "{m}"
    );
    // The same scores with membership shuffled: nothing.
    let (control, low, high, _) = figure("control");
    assert!(control.abs() < 0.1 && low < 0.0 && high > 0.0, "control: {m}");
    assert_eq!(m["per_round"].as_array().unwrap().len(), 6, "{m}");
    assert!(m["best_round"]["advantage"].as_f64().unwrap() >= advantage - 0.2, "{m}");
    assert!(m["best_round_control"]["advantage"].is_f64(), "{m}");
    assert!(table.contains("picked in hindsight"), "{table}");

    // `local` sends nothing: no advantage is made up.
    let local = TempDir::new("privacy-members-local");
    assert!(common::launch(local.path(), &overfit("local", 1)).status.success());
    let (table, report) = attack(local.path());
    assert!(report["membership"]["whole_run"].is_null(), "{report}");
    assert!(table.contains("sends nothing"), "{table}");
}

/// Out-of-range shares are refused before anything starts, naming the field and the
/// way to move it.
#[test]
fn a_bad_overlap_is_refused_naming_the_field() {
    for (share, way) in [("-0.1", "raise it"), ("1.5", "lower it"), ("nan", "finite")] {
        let dir = TempDir::new("privacy-bad-overlap");
        let mut o = small(2, 1);
        o.push(format!("data.public_overlap={share}"));
        let output = common::launch(dir.path(), &o);
        assert!(!output.status.success(), "{share} accepted");
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(
            said.contains("data.public_overlap") && said.contains(way),
            "{share}: {said}"
        );
    }
}
