//! The final per-node tables: printed by the launcher and the coordinator, and written
//! to `report.md` in the run directory. Two tables of at most 80 columns (what each
//! node learned; what its radio and its time cost), so they fit any terminal.

use std::fmt::Write;

use crate::Summary;

impl Summary {
    /// The run as plain text: a headline, then two tables with a row per node.
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
    for outage in &summary.outages {
        let after = outage
            .after_round
            .map_or("before the first round".to_string(), |r| format!("after round {r}"));
        let _ = writeln!(
            out,
            "the coordinator was down {after} and resumed ({:.1} s)",
            outage.down_s
        );
    }
    let mark = |adversary: bool| if adversary { "!" } else { " " };
    // As wide as the longest model name (an external one can be 44 characters).
    let width = summary.nodes.iter().map(|n| n.model.len()).fold(14, usize::max);
    // A column for the privacy spent, only in a run that trained with DP-SGD.
    let private = summary.nodes.iter().any(|n| n.epsilon.is_some());
    let _ = writeln!(
        out,
        "{:>5}  {:<width$} {:>8}  {:<8} {:>7}  {:>9}{}",
        "node",
        "model",
        "params",
        "status",
        "rounds",
        "final acc",
        if private {
            format!("  {:>7}", "ε")
        } else {
            String::new()
        }
    );
    for n in &summary.nodes {
        let final_accuracy = n
            .final_accuracy
            .map_or("-".to_string(), |a| format!("{:.1}%", 100.0 * a));
        let epsilon = match (private, n.epsilon) {
            (false, _) => String::new(),
            (true, Some(e)) => format!("  {e:>7.2}"),
            (true, None) => format!("  {:>7}", "-"),
        };
        let _ = writeln!(
            out,
            "{:>4}{}  {:<width$} {:>8}  {:<8} {:>7}  {:>9}{epsilon}",
            n.id,
            mark(n.adversary),
            n.model,
            n.parameters,
            n.status,
            format!("{}/{}", n.rounds_reported, summary.rounds_planned),
            final_accuracy,
        );
    }
    let _ = writeln!(
        out,
        "{:>5}  {:>9}  {:>5}  {:>9}  {:>10}  {:>8}  {:>8}  {:>8}",
        "node", "wire sent", "lost", "air time", "energy", "compute", "exchange", "wait"
    );
    for n in &summary.nodes {
        let _ = writeln!(
            out,
            "{:>4}{}  {:>9}  {:>5}  {:>9}  {:>10}  {:>8}  {:>8}  {:>8}",
            n.id,
            mark(n.adversary),
            bytes(n.wire_bytes_sent),
            n.messages_lost,
            seconds(n.airtime_s),
            joules(n.tx_energy_j + n.rx_energy_j),
            seconds(n.mean_compute_ms / 1e3),
            seconds(n.mean_exchange_ms / 1e3),
            seconds(n.mean_wait_ms / 1e3),
        );
    }
    let _ = writeln!(
        out,
        "(wire sent, messages lost, air time, radio energy (transmit + receive): over the\n \
         run; compute, exchange and waiting at the barrier: per round)"
    );
    if summary.nodes.iter().any(|n| n.adversary) {
        let _ = writeln!(out, "(! an adversary, left out of the means)");
    }
    if let (Some(mean), Some(min)) = (summary.mean_final_accuracy, summary.min_final_accuracy) {
        // Accuracy is each node's own claim (in range, not checkable here): the median
        // shows how far one node's claim moves the mean.
        let median = summary.median_final_accuracy.unwrap_or(mean);
        let _ = writeln!(
            out,
            "mean final accuracy {:.2}%, median {:.2}%, worst node {:.2}% (self-reported)",
            100.0 * mean,
            100.0 * median,
            100.0 * min
        );
    }
    out
}

/// A byte count with a binary unit.
pub fn bytes(n: u64) -> String {
    let n = n as f64;
    const KIB: f64 = 1024.0;
    match n {
        n if n >= KIB * KIB * KIB => format!("{:.1} GiB", n / KIB / KIB / KIB),
        n if n >= KIB * KIB => format!("{:.1} MiB", n / KIB / KIB),
        n if n >= KIB => format!("{:.1} KiB", n / KIB),
        n => format!("{n} B"),
    }
}

/// A duration in seconds, in ms below a second (at most 8 characters up to 10⁵ s).
pub fn seconds(s: f64) -> String {
    match s {
        s if s < 1.0 => format!("{:.1} ms", 1e3 * s),
        s if s < 100.0 => format!("{s:.2} s"),
        s => format!("{s:.0} s"),
    }
}

/// Energy in joules, in mJ below a joule, kJ from a thousand.
pub fn joules(j: f64) -> String {
    match j {
        j if j < 1.0 => format!("{:.2} mJ", 1e3 * j),
        j if j < 1e3 => format!("{j:.3} J"),
        j => format!("{:.1} kJ", j / 1e3),
    }
}

#[cfg(test)]
mod tests {
    use crate::{NodeSummary, Summary};

    #[test]
    fn every_line_fits_80_columns() {
        let node = |id: u32, adversary: bool| NodeSummary {
            id,
            model: "cnn:160,320,1280".into(),
            parameters: 12_345_678,
            status: "finished".into(),
            adversary,
            rounds_reported: 999,
            final_accuracy: Some(0.9999),
            epsilon: Some(9_999.99),
            wire_bytes_sent: 999 << 30,
            messages_lost: 99_999,
            airtime_s: 9_999.9,
            tx_energy_j: 99_999.0,
            mean_compute_ms: 99_999.0,
            mean_exchange_ms: 99_999.0,
            mean_wait_ms: 99_999.0,
            ..NodeSummary::default()
        };
        let summary = Summary {
            run_id: "quickstart-42".into(),
            algorithm: "dml".into(),
            finished: true,
            rounds_planned: 999,
            rounds_closed: 999,
            nodes: vec![node(4095, false), node(1, true)],
            mean_final_accuracy: Some(0.5),
            median_final_accuracy: Some(0.5),
            min_final_accuracy: Some(0.25),
            ..Summary::default()
        };
        let table = summary.table();
        for line in table.lines() {
            assert!(line.chars().count() <= 80, "{} columns: {line}", line.chars().count());
        }
        assert!(table.contains("4095 ") && table.contains("   1! "), "{table}");
        assert!(table.contains("9999.99"), "the privacy spent, in a DP run: {table}");
    }
}
