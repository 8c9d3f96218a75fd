//! The spectrum, done with real processes: on a shared band the nodes take turns, so a
//! round's exchange lasts the sum of every node's air time (on dedicated bands they
//! transmit at once); broadcast needs one transmission per node where unicast needs one
//! per neighbour, and shortens the band's busy time accordingly.

mod common;

use common::{TempDir, launch, metrics, small};
use wdml_coordinator::MetricsRow;

/// 4 nodes in a full mesh, close together, on an emulated radio without losses, latency 1 ms, no
/// jitter, time_scale 0 (the emulated clock runs, nothing waits), no device compute.
fn radio(access: &str, mode: &str) -> Vec<String> {
    let mut overrides = small(4, 3);
    overrides.retain(|o| !o.starts_with("channel.preset"));
    overrides.extend([
        "channel.preset=\"d2d-urban\"".into(),
        "channel.loss=\"none\"".into(),
        // No link in outage either: every message reaches every neighbour.
        "channel.area_m=30".into(),
        "channel.topology=\"full_mesh\"".into(),
        "channel.latency_ms=1".into(),
        "channel.jitter_ms=0".into(),
        "channel.time_scale=0".into(),
        format!("channel.access=\"{access}\""),
        format!("channel.mode=\"{mode}\""),
    ]);
    overrides
}

fn run(access: &str, mode: &str) -> Vec<MetricsRow> {
    let dir = TempDir::new(&format!("spectrum-{access}-{mode}"));
    assert!(launch(dir.path(), &radio(access, mode)).status.success());
    metrics(dir.path())
}

/// Per round: (the sum of the nodes' air times, the latest node's emulated round, the
/// longest air time of one node).
fn per_round(rows: &[MetricsRow]) -> Vec<(f64, f64, f64)> {
    (1..=3)
        .map(|round| {
            let these: Vec<&MetricsRow> = rows.iter().filter(|r| r.round == round).collect();
            assert_eq!(these.len(), 4, "round {round}");
            let airtime: f64 = these.iter().map(|r| r.airtime_s).sum();
            let last = these.iter().map(|r| r.emulated_round_s).fold(0.0, f64::max);
            let longest = these.iter().map(|r| r.airtime_s).fold(0.0, f64::max);
            (airtime, last, longest)
        })
        .collect()
}

#[test]
fn a_shared_band_takes_turns_and_broadcast_takes_fewer() {
    let dedicated = run("dedicated", "unicast");
    let shared = run("shared", "unicast");
    let broadcast = run("shared", "broadcast");
    // The same transmissions (same seed, same channel draws), only scheduled apart.
    for (d, s) in dedicated.iter().zip(&shared) {
        assert_eq!((d.node, d.round, d.airtime_s), (s.node, s.round, s.airtime_s));
        assert_eq!(d.test_accuracy, s.test_accuracy, "timing never shapes learning");
    }
    for ((airtime, dedicated_last, longest), (_, shared_last, _)) in
        per_round(&dedicated).into_iter().zip(per_round(&shared))
    {
        // One band: the last message lands after every air time, plus its latency.
        assert!(
            (shared_last - (airtime + 1e-3)).abs() < 1e-9,
            "shared: {shared_last} s against {airtime} s of air time"
        );
        // A band each: the nodes send at once, so the slowest sender's last message
        // lands last.
        assert!(
            (dedicated_last - (longest + 1e-3)).abs() < 1e-9,
            "dedicated: {dedicated_last} s, the longest air time {longest} s"
        );
        assert!(dedicated_last < shared_last);
    }
    // Broadcast: one transmission per frame to the three neighbours at once.
    let frames = |rows: &[MetricsRow]| rows.iter().map(|r| u64::from(r.frames_sent)).sum::<u64>();
    assert_eq!(frames(&shared), 3 * frames(&broadcast));
    for ((unicast_air, unicast_last, _), (broadcast_air, broadcast_last, _)) in
        per_round(&shared).into_iter().zip(per_round(&broadcast))
    {
        assert!(
            (broadcast_last - (broadcast_air + 1e-3)).abs() < 1e-9,
            "{broadcast_last} {broadcast_air}"
        );
        // At the worst neighbour's rate, so up to 3× shorter, never longer.
        assert!(broadcast_last < unicast_last && 3.0 * broadcast_air >= unicast_air * (1.0 - 1e-12));
    }
}
