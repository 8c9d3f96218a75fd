//! Device time: a node's compute is counted in FLOPs from its model's shapes, and on an
//! emulated device its time and energy follow from them — the same on an idle and on a
//! loaded machine.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::{TempDir, launch, metrics, small};

/// Per round, a `dml` node of the `small` scenario (mlp:64, 15 local steps of 32 private
/// images, a public batch of 64 distilled whole at every step) computes its predictions
/// on the public batch and trains on private and public rows: by hand, with mlp:64's
/// 101,632 FLOPs forward and 204,544 to train per image (see `model::flops`).
const FLOPS_PER_ROUND: u64 = PREDICTIONS + 15 * (32 + 64) * 204_544;
/// The part computed before the exchange: the predictions on the public batch.
const PREDICTIONS: u64 = 64 * 101_632;

#[test]
fn device_time_and_energy_follow_the_flops_whatever_the_load() {
    let mut overrides = small(3, 3);
    overrides.push("nodes.devices=[\"phone\", \"custom:2:0.5\"]".into());
    overrides.push("channel.time_scale=0.0".into());
    let idle = TempDir::new("devices-idle");
    assert!(launch(idle.path(), &overrides).status.success());

    // The same run with every core busy.
    let stop = Arc::new(AtomicBool::new(false));
    let burners: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                }
                x
            })
        })
        .collect();
    let loaded = TempDir::new("devices-loaded");
    let status = launch(loaded.path(), &overrides).status;
    stop.store(true, Ordering::Relaxed);
    for burner in burners {
        burner.join().unwrap();
    }
    assert!(status.success());

    let (a, b) = (metrics(idle.path()), metrics(loaded.path()));
    assert_eq!(a.len(), 9);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!((x.round, x.node), (y.round, y.node));
        assert_eq!(x.metrics.flops, FLOPS_PER_ROUND, "{x:?}");
        assert_eq!(
            (x.metrics.flops, x.metrics.device_compute_s, x.metrics.compute_energy_j),
            (y.metrics.flops, y.metrics.device_compute_s, y.metrics.compute_energy_j),
            "node {} round {}",
            x.node,
            x.round
        );
        // Node k emulates devices[k % 2]: a phone (10.4 GFLOP/s, 2 W) or 2 GFLOP/s at 0.5 W.
        let (rate, watts) = if x.node % 2 == 0 { (10.4e9, 2.0) } else { (2e9, 0.5) };
        assert_eq!(x.metrics.device_compute_s, FLOPS_PER_ROUND as f64 / rate);
        assert_eq!(x.metrics.compute_energy_j, x.metrics.device_compute_s * watts);
        assert_eq!(x.metrics.emulated_round_s, y.metrics.emulated_round_s);
        // The emulated clock (an ideal radio carries messages in no time): a node sends
        // once its predictions are computed and trains once the slowest neighbour's
        // have arrived — the 2 GFLOP/s node 1 is everyone's neighbour and slowest.
        let before = PREDICTIONS;
        let ready = before as f64 / 2e9;
        assert_eq!(
            x.metrics.emulated_round_s,
            ready + (FLOPS_PER_ROUND - before) as f64 / rate,
            "{x:?}"
        );
    }
}

#[test]
fn without_devices_the_work_is_counted_and_no_device_time_is_made_up() {
    let dir = TempDir::new("no-devices");
    let mut overrides = small(2, 1);
    overrides.push("run.algorithm=\"local\"".into());
    assert!(launch(dir.path(), &overrides).status.success());
    for row in metrics(dir.path()) {
        // local: 15 steps of 32 private images, no public batch.
        assert_eq!(row.metrics.flops, 15 * 32 * 204_544);
        assert_eq!((row.metrics.device_compute_s, row.metrics.compute_energy_j), (0.0, 0.0));
        assert_eq!(row.metrics.emulated_round_s, 0.0);
    }
}
