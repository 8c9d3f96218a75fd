//! Differentially private devices (DP-SGD), as real processes: every node reports the
//! ε the accountant gives for its own sampling rate and the steps so far, and a node
//! whose budget a round would exceed leaves before it, saying why.

mod common;

use common::{TempDir, metrics, small, summary};
use wdml_node::privacy::accountant;

/// DP-SGD on `small`'s three nodes, σ = 1: with `budget` (0: none).
fn overrides(rounds: u32, budget: f64) -> Vec<String> {
    let mut o = small(3, rounds);
    o.extend([
        "privacy.noise_multiplier=1.0".to_string(),
        format!("privacy.epsilon={budget}"),
    ]);
    o
}

/// A run at σ = 1 with no budget: every node's reported ε after each round is the
/// accountant's for q = batch / its shard and 15 steps a round, to the last bit, and
/// grows. Then the same run with a budget between the nodes' ε after round 2 and after
/// round 3: every node reports rounds 1 and 2, then leaves before round 3, and the
/// membership events say why.
#[test]
fn each_node_reports_the_accountants_epsilon_and_leaves_before_its_budget_is_exceeded() {
    let dir = TempDir::new("dp");
    assert!(common::launch(dir.path(), &overrides(3, 0.0)).status.success());
    let rows = metrics(dir.path());
    assert_eq!(rows.len(), 9, "three nodes, three rounds");
    let mut after = std::collections::BTreeMap::new();
    for row in &rows {
        let q = 32.0 / f64::from(row.metrics.private_samples);
        let expected = accountant::epsilon(q, 1.0, 15 * u64::from(row.round), 1e-5).0;
        assert_eq!(row.metrics.epsilon, Some(expected), "{row:?}");
        after.insert((row.node, row.round), expected);
    }
    for node in 0..3 {
        assert!(after[&(node, 1)] < after[&(node, 2)] && after[&(node, 2)] < after[&(node, 3)]);
    }
    let s = summary(dir.path());
    assert!(s.finished, "{}", s.reason);
    assert!(
        s.nodes.iter().all(|n| n.epsilon == Some(after[&(n.id, 3)])),
        "{:?}",
        s.nodes
    );
    let report = std::fs::read_to_string(dir.path().join("report.md")).expect("report.md");
    assert!(report.contains('ε'), "{report}");

    let two = (0..3).map(|n| after[&(n, 2)]).fold(0.0, f64::max);
    let three = (0..3).map(|n| after[&(n, 3)]).fold(f64::INFINITY, f64::min);
    assert!(two < three, "the nodes' ε overlap: {after:?}");
    let budget = (two + three) / 2.0;
    let spent = TempDir::new("dp-budget");
    let output = common::launch(spent.path(), &overrides(5, budget));
    let rows = metrics(spent.path());
    let mut reported: Vec<(u32, u32)> = rows.iter().map(|r| (r.node, r.round)).collect();
    reported.sort_unstable();
    assert_eq!(reported, [(0, 1), (0, 2), (1, 1), (1, 2), (2, 1), (2, 2)], "{output:?}");
    let s = summary(spent.path());
    for node in 0..3 {
        assert!(
            s.events.iter().any(|e| e.node == node
                && e.reason
                    .starts_with("left: privacy budget spent: round 3 would take ε to")),
            "node {node}: {:?}",
            s.events
        );
    }
    assert!(!s.finished, "nobody was left for rounds 3 to 5: {}", s.reason);
}

/// A budget the planned rounds cannot meet with any noise up to the bound is refused
/// when the node starts, naming the field.
#[test]
fn a_budget_that_cannot_be_met_is_refused_naming_the_field() {
    let dir = TempDir::new("dp-refused");
    let mut o = small(2, 3);
    o.push("privacy.epsilon=0.0001".to_string());
    let output = common::launch(dir.path(), &o);
    assert!(!output.status.success());
    let logs: String = std::fs::read_dir(dir.path().join("logs"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    let said = format!("{}{logs}", String::from_utf8_lossy(&output.stderr));
    assert!(
        said.contains("privacy.epsilon") && said.contains("cannot be met"),
        "{said}"
    );
}
