//! Semi-synchronous rounds, done for real: one device five times slower than the rest
//! under the `quorum` policy. Rounds close without it; its reports come late and are
//! recorded as late; it skips to the newest round and never reports a closed one
//! twice; its neighbours use its predictions as stale, within `max_staleness`.

mod common;

use std::collections::BTreeSet;

use common::{TempDir, launch, metrics, small, summary};
use wdml_coordinator::MetricsRow;

const ROUNDS: u32 = 16;
const STRAGGLER: u32 = 3;

/// Four `small` nodes: three at 2 GFLOP/s and node 3 at 0.4 GFLOP/s (about 0.15 and
/// 0.75 emulated seconds of compute a round), paced one to one in wall time.
fn semi_synchronous(policy: &str, max_staleness: u32) -> Vec<String> {
    let mut overrides = small(4, ROUNDS);
    overrides.extend([
        "nodes.devices=[\"custom:2:1\", \"custom:2:1\", \"custom:2:1\", \"custom:0.4:1\"]".to_string(),
        "channel.time_scale=1.0".into(),
        format!("coordinator.round_policy=\"{policy}\""),
        "coordinator.quorum=0.75".into(),
        "coordinator.grace_s=0.05".into(),
        format!("exchange.max_staleness={max_staleness}"),
    ]);
    overrides
}

#[test]
fn a_quorum_round_closes_without_the_straggler_which_reports_late_and_skips_ahead() {
    let out = TempDir::new("quorum");
    assert!(launch(out.path(), &semi_synchronous("quorum", 8)).status.success());
    let s = summary(out.path());
    assert!(s.finished, "{}", s.reason);
    let rows = metrics(out.path());
    let late = MetricsRow::read_late(out.path()).unwrap();

    // The fast nodes are in every round; some rounds closed without the straggler.
    for node in 0..3 {
        assert_eq!(
            rows.iter().filter(|r| r.node == node).count(),
            ROUNDS as usize,
            "node {node}"
        );
    }
    let straggler_in_time: Vec<u32> = rows.iter().filter(|r| r.node == STRAGGLER).map(|r| r.round).collect();
    assert!(
        straggler_in_time.len() < ROUNDS as usize / 2,
        "the straggler was waited for: {straggler_in_time:?}"
    );

    // Its late reports are recorded as late: in late.jsonl, in the summary, as events.
    let straggler_late: Vec<u32> = late.iter().filter(|r| r.node == STRAGGLER).map(|r| r.round).collect();
    assert!(!straggler_late.is_empty(), "no late report");
    assert!(late.iter().all(|r| r.late && r.node == STRAGGLER), "{late:?}");
    let node = s.nodes.iter().find(|n| n.id == STRAGGLER).unwrap();
    assert_eq!(node.late_reports as usize, straggler_late.len());
    assert_eq!(node.status, "finished");
    let events = s
        .events
        .iter()
        .filter(|e| e.node == STRAGGLER && e.event == "late")
        .count();
    assert_eq!(events, straggler_late.len());

    // It skipped to the newest round: it worked on fewer rounds than there were, and
    // never on one twice (nobody replays a closed round).
    let worked: Vec<u32> = {
        let mut all = straggler_in_time.clone();
        all.extend(&straggler_late);
        all.sort_unstable();
        all
    };
    let distinct: BTreeSet<u32> = worked.iter().copied().collect();
    assert_eq!(distinct.len(), worked.len(), "a round reported twice: {worked:?}");
    assert!(worked.len() < ROUNDS as usize, "no round skipped: {worked:?}");
    assert!(worked.windows(2).any(|w| w[1] > w[0] + 1), "{worked:?}");

    // Its neighbours used its predictions as stale, never older than max_staleness; the
    // round's emulated span is the quorum's (0.15 s of compute) plus the grace, not the
    // straggler's 0.75 s.
    let fast: Vec<&MetricsRow> = rows.iter().filter(|r| r.node != STRAGGLER).collect();
    assert!(
        fast.iter().any(|r| r.metrics.stale_used > 0),
        "no stale predictions used"
    );
    assert!(fast.iter().all(|r| r.metrics.stale_age <= 8.0), "too old");
    // Within the bound, its neighbours refused none of its messages.
    assert!(fast.iter().all(|r| r.metrics.messages_rejected == 0), "{fast:?}");
    let without: Vec<&MetricsRow> = fast
        .iter()
        .copied()
        .filter(|r| !straggler_in_time.contains(&r.round))
        .collect();
    assert!(!without.is_empty());
    for r in &without {
        assert!(
            r.round_emulated_s < 0.5,
            "round {} lasted {} s",
            r.round,
            r.round_emulated_s
        );
    }
}

#[test]
fn without_staleness_a_straggler_s_predictions_are_never_used() {
    let out = TempDir::new("quorum-fresh-only");
    assert!(launch(out.path(), &semi_synchronous("quorum", 0)).status.success());
    let rows = metrics(out.path());
    assert!(rows.iter().all(|r| r.metrics.stale_used == 0));
    // Late still, and recorded so; whether one of its messages is refused as too old
    // depends on when it lands (the mailbox's unit tests pin that down exactly).
    assert!(!MetricsRow::read_late(out.path()).unwrap().is_empty());
}
