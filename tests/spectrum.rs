//! The spectrum, done with real processes: on a shared band the nodes take turns, so a
//! round's exchange lasts the sum of every node's air time (on dedicated bands they
//! transmit at once); broadcast needs one transmission per node where unicast needs one
//! per neighbour, and shortens the band's busy time accordingly. Over the air, without
//! noise, learning is exactly digital exchange's; with noise it still learns; a sender
//! below the truncation threshold is left out by both ends.

mod common;

use common::{TempDir, launch, metrics, small, small_mesh};
use wdml_coordinator::MetricsRow;

/// 4 nodes in a full mesh, close together, on an emulated radio without losses, latency 1 ms, no
/// jitter, time_scale 0 (the emulated clock runs, nothing waits), no device compute.
fn radio(access: &str, mode: &str) -> Vec<String> {
    let mut overrides = small_mesh(4, 3);
    overrides.extend([
        "channel.latency_ms=1".into(),
        "channel.jitter_ms=0".into(),
        "channel.time_scale=0".into(),
        format!("channel.access=\"{access}\""),
        format!("channel.mode=\"{mode}\""),
    ]);
    overrides
}

fn run(access: &str, mode: &str) -> Vec<MetricsRow> {
    run_with(access, mode, &[])
}

fn run_with(access: &str, mode: &str, extra: &[&str]) -> Vec<MetricsRow> {
    let dir = TempDir::new(&format!("spectrum-{access}-{mode}"));
    let mut overrides = radio(access, mode);
    overrides.extend(extra.iter().map(|o| o.to_string()));
    assert!(launch(dir.path(), &overrides).status.success());
    // The links the receivers had: 4 nodes in a full mesh, 12 directed links.
    let links: wdml_coordinator::LinksRecord =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("links.json")).unwrap()).unwrap();
    assert_eq!(links.links.len(), 12);
    let mean = links.links.iter().map(|l| l.mean_snr_db).sum::<f64>() / 12.0;
    assert!((links.mean_snr_db - mean).abs() < 1e-9 && mean.is_finite());
    metrics(dir.path())
}

/// Per round: (the sum of the nodes' air times, the latest node's emulated round, the
/// longest air time of one node).
fn per_round(rows: &[MetricsRow]) -> Vec<(f64, f64, f64)> {
    (1..=3)
        .map(|round| {
            let these: Vec<&MetricsRow> = rows.iter().filter(|r| r.round == round).collect();
            assert_eq!(these.len(), 4, "round {round}");
            let airtime: f64 = these.iter().map(|r| r.metrics.airtime_s).sum();
            let last = these.iter().map(|r| r.metrics.emulated_round_s).fold(0.0, f64::max);
            let longest = these.iter().map(|r| r.metrics.airtime_s).fold(0.0, f64::max);
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
        assert_eq!(
            (d.node, d.round, d.metrics.airtime_s),
            (s.node, s.round, s.metrics.airtime_s)
        );
        assert_eq!(
            d.metrics.test_accuracy, s.metrics.test_accuracy,
            "timing never shapes learning"
        );
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
    let frames = |rows: &[MetricsRow]| rows.iter().map(|r| u64::from(r.metrics.frames_sent)).sum::<u64>();
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

#[test]
fn over_the_air_without_noise_learns_exactly_as_digital_exchange_and_with_noise_still_learns() {
    // Values as they are (f32), every sender aligned (no threshold, no link in outage).
    let analog = ["exchange.encoding=\"f32\"", "channel.air_min_snr_db=-100"];
    let digital = run_with("shared", "unicast", &analog);
    let mut ideal = analog.to_vec();
    ideal.push("channel.air_noise=false");
    let ideal = run_with("shared", "over_the_air", &ideal);
    let noisy = run_with("shared", "over_the_air", &analog);
    for ((d, i), n) in digital.iter().zip(&ideal).zip(&noisy) {
        assert_eq!((d.node, d.round), (i.node, i.round));
        assert_eq!(
            i.metrics.peers_heard, 3,
            "node {} round {}: every neighbour aligned",
            i.node, i.round
        );
        assert_eq!(
            d.metrics.test_accuracy, i.metrics.test_accuracy,
            "node {} round {}",
            i.node, i.round
        );
        assert_eq!(
            d.metrics.kl_loss, i.metrics.kl_loss,
            "node {} round {}",
            i.node, i.round
        );
        // The noise moves the target, but the run still learns.
        assert_eq!(n.metrics.peers_heard, 3);
        assert!(n.metrics.kl_loss.is_finite() && n.metrics.test_accuracy > 0.3, "{n:?}");
    }
    assert!(
        noisy
            .iter()
            .zip(&ideal)
            .any(|(n, i)| n.metrics.kl_loss != i.metrics.kl_loss),
        "the noise did nothing"
    );
    // The analog slots are far shorter than one digital message per link, and each
    // receiver's listening energy is its slot's length times P_rx (0.1 W): the slots
    // follow each other, so the last node's round ends after all of them.
    for round in 1..=3 {
        let these: Vec<&MetricsRow> = noisy.iter().filter(|r| r.round == round).collect();
        let slots: f64 = these.iter().map(|r| r.metrics.rx_energy_j / 0.1).sum();
        let last = these.iter().map(|r| r.metrics.emulated_round_s).fold(0.0, f64::max);
        assert!(
            (last - (slots + 1e-3)).abs() < 1e-9,
            "round {round}: {last} s against {slots} s of slots"
        );
        let digital_air: f64 = digital
            .iter()
            .filter(|r| r.round == round)
            .map(|r| r.metrics.airtime_s)
            .sum();
        let analog_air: f64 = these.iter().map(|r| r.metrics.airtime_s).sum();
        assert!(analog_air < digital_air, "{analog_air} vs {digital_air}");
    }
}

#[test]
fn over_the_air_leaves_a_sender_below_the_threshold_out_at_both_ends() {
    // A threshold between the links' SNRs: some senders are aligned, some are not.
    let rows = run_with(
        "shared",
        "over_the_air",
        &[
            "exchange.encoding=\"f32\"",
            "channel.area_m=400",
            "channel.air_min_snr_db=25",
        ],
    );
    let heard: u32 = rows.iter().map(|r| r.metrics.peers_heard).sum();
    let possible = 3 * rows.len() as u32;
    assert!(heard > 0 && heard < possible, "{heard} of {possible} messages heard");
    // What was not heard was not sent either: a silent sender spends no air time in
    // that slot, so the air times add up to one burst per message heard.
    for round in 1..=3 {
        let these: Vec<&MetricsRow> = rows.iter().filter(|r| r.round == round).collect();
        let sent: u32 = these.iter().map(|r| r.metrics.frames_sent).sum();
        let heard: u32 = these.iter().map(|r| r.metrics.peers_heard).sum();
        assert_eq!(
            sent,
            2 * heard,
            "round {round}: an analog burst and a control message per message heard"
        );
        // A neighbour left out counts as a message the radio did not deliver.
        for r in &these {
            assert_eq!(r.metrics.peers_heard + r.metrics.messages_lost, 3, "{r:?}");
        }
    }
}

#[test]
fn a_sweep_runs_the_grid_and_draws_accuracy_against_its_costs() {
    let dir = TempDir::new("sweep");
    let mut command = std::process::Command::new(common::WDML);
    command
        .args(["compare", "--algorithms", "dml", "--out"])
        .arg(dir.path());
    for o in small(2, 1) {
        command.arg("--set").arg(o);
    }
    command.args(["--set", "channel.preset=\"d2d-urban\"", "--set", "channel.time_scale=0"]);
    command.args([
        "--sweep",
        "exchange.encoding=q8,q4",
        "--sweep",
        "exchange.public_batch=32,64",
    ]);
    let output = command.output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let points: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("sweep.json")).unwrap()).unwrap();
    let points = points.as_array().unwrap();
    assert_eq!(points.len(), 4, "2 encodings × 2 public batches, one algorithm");
    let bytes = |encoding: &str, batch: &str| {
        let p = points
            .iter()
            .find(|p| p["setting"]["exchange.encoding"] == encoding && p["setting"]["exchange.public_batch"] == batch)
            .unwrap();
        p["wire_bytes_per_round_per_node"].as_f64().unwrap()
    };
    // Half the values, and half a byte each: the wire says so.
    assert!(bytes("\"q4\"", "64") < bytes("\"q8\"", "64"));
    assert!(bytes("\"q8\"", "32") < bytes("\"q8\"", "64"));
    // Each setting has its own full comparison, and the picture has a dot per point.
    assert!(dir.path().join("encoding=q4,public_batch=32/comparison.json").exists());
    let svg = std::fs::read_to_string(dir.path().join("sweep.svg")).unwrap();
    // Two panels of four settings, and the algorithm's mark in the legend.
    assert_eq!(svg.matches("<circle").count(), 2 * 4 + 1, "{svg}");
    // Its table fits 80 columns (the line naming the output directory is as long as
    // the directory's path).
    let printed = String::from_utf8_lossy(&output.stdout);
    let path = dir.path().display().to_string();
    for line in printed.lines().filter(|l| !l.contains(&path)) {
        assert!(line.chars().count() <= 80, "{line}");
    }
}
