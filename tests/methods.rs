//! The other prediction-sharing methods, `fedmd` (FedMD) and `dsfl` (DS-FL), run as
//! real processes: each finishes a small run, sends dml's message every round, digests
//! or distils on the public batch once it hears a neighbour, and learns.

mod common;

use common::{TempDir, metrics, small, summary};

/// Four nodes with label-skewed data, eight rounds: every node reports every round,
/// sends its predictions to its three neighbours and hears them, reports a loss on the
/// public batch, and the nodes' mean accuracy at the end is well above their first
/// round's. Seeded: a second run of the same seed gives every node the same accuracy
/// in every round, to the last bit.
fn runs_to_the_end_exchanging_and_learning(algorithm: &str) {
    let (nodes, rounds) = (4u32, 8u32);
    let mut overrides = small(nodes, rounds);
    overrides.retain(|o| !o.starts_with("data.partition"));
    overrides.extend([
        format!("run.algorithm=\"{algorithm}\""),
        "data.partition=\"dirichlet:0.5\"".to_string(),
        "train.public_steps=5".to_string(),
    ]);
    let dir = TempDir::new(algorithm);
    assert!(common::launch(dir.path(), &overrides).status.success());
    let rows = metrics(dir.path());
    assert_eq!(rows.len(), (nodes * rounds) as usize, "every node, every round");
    // The same message as dml's: 64 rows × 10 classes in q8, a byte each.
    for row in &rows {
        assert_eq!(row.metrics.messages_sent, 3, "{row:?}");
        assert_eq!(row.metrics.messages_received, 3, "{row:?}");
        assert_eq!(row.metrics.payload_bytes_sent, 3 * 640, "{row:?}");
        assert!(row.metrics.kl_loss > 0.0, "a public-batch loss: {row:?}");
    }
    let mean = |round: u32| {
        let accuracies: Vec<f64> = rows
            .iter()
            .filter(|r| r.round == round)
            .map(|r| r.metrics.test_accuracy)
            .collect();
        accuracies.iter().sum::<f64>() / accuracies.len() as f64
    };
    let (first, last) = (mean(1), mean(rounds));
    let s = summary(dir.path());
    eprintln!("{algorithm}: mean accuracy {first:.4} after the first round, {last:.4} after the last");
    assert!(s.finished);
    assert_eq!(s.algorithm, algorithm);
    assert!(last > first + 0.05, "{algorithm} did not learn: {first} → {last}");

    let again = TempDir::new(algorithm);
    assert!(common::launch(again.path(), &overrides).status.success());
    let accuracies = |rows: &[wdml_coordinator::MetricsRow]| {
        let mut a: Vec<(u32, u32, u64)> = rows
            .iter()
            .map(|r| (r.round, r.node, r.metrics.test_accuracy.to_bits()))
            .collect();
        a.sort_unstable();
        a
    };
    assert_eq!(
        accuracies(&rows),
        accuracies(&metrics(again.path())),
        "the same seed, the same run"
    );
}

#[test]
fn fedmd_runs_to_the_end_exchanging_and_learning() {
    runs_to_the_end_exchanging_and_learning("fedmd");
}

#[test]
fn dsfl_runs_to_the_end_exchanging_and_learning() {
    runs_to_the_end_exchanging_and_learning("dsfl");
}
