//! The final per-node table: printed by the launcher and the coordinator, and
//! written to `report.md` in the run directory.

use std::fmt::Write;

use crate::Summary;

impl Summary {
    /// The run as a plain-text table, one row per node.
    pub fn table(&self) -> String {
        render(self)
    }
}

fn render(summary: &Summary) -> String {
    let mut out = String::new();
    let status = if summary.finished { "finished" } else { "ended early" };
    let _ = writeln!(
        out,
        "run {} ({}): {status}, {}/{} rounds in {:.1} s, {:.0} ms per round",
        summary.run_id,
        summary.algorithm,
        summary.rounds_closed,
        summary.rounds_planned,
        summary.wall_s,
        summary.mean_round_ms
    );
    if !summary.finished {
        let _ = writeln!(out, "reason: {}", summary.reason);
    }
    let _ = writeln!(
        out,
        "{:>4}  {:<14} {:>8}  {:<8} {:>6}  {:>6}  {:>10}  {:>5}  {:>9}  {:>10}  {:>9}  {:>9}  {:>8}",
        "node",
        "model",
        "params",
        "status",
        "final",
        "best",
        "wire sent",
        "lost",
        "airtime",
        "energy",
        "compute",
        "exchange",
        "wait"
    );
    for n in &summary.nodes {
        let pct = |a: Option<f64>| a.map_or("-".to_string(), |a| format!("{:.1}%", 100.0 * a));
        let _ = writeln!(
            out,
            "{:>4}  {:<14} {:>8}  {:<8} {:>6}  {:>6}  {:>10}  {:>5}  {:>7.1}ms  {:>8.2}mJ  {:>7.0}ms  {:>7.0}ms  {:>6.0}ms",
            n.id,
            n.model,
            n.parameters,
            n.status,
            pct(n.final_accuracy),
            pct(n.best_accuracy),
            bytes(n.wire_bytes_sent),
            n.messages_lost,
            1e3 * n.airtime_s,
            1e3 * (n.tx_energy_j + n.rx_energy_j),
            n.mean_compute_ms,
            n.mean_exchange_ms,
            n.mean_wait_ms,
        );
    }
    let _ = writeln!(
        out,
        "(wire sent, lost, airtime and energy (transmit + receive) over the run; compute, exchange and wait per round)"
    );
    if let (Some(mean), Some(min)) = (summary.mean_final_accuracy, summary.min_final_accuracy) {
        let _ = writeln!(
            out,
            "mean final accuracy {:.2}%, worst node {:.2}%",
            100.0 * mean,
            100.0 * min
        );
    }
    out
}

/// A byte count with a binary unit.
pub fn bytes(n: u64) -> String {
    let n = n as f64;
    match n {
        n if n >= 1024.0 * 1024.0 => format!("{:.1} MiB", n / 1024.0 / 1024.0),
        n if n >= 1024.0 => format!("{:.1} KiB", n / 1024.0),
        n => format!("{n} B"),
    }
}
