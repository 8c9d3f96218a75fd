//! Every per-round metric, declared once: its name (the field of `metrics.jsonl`), unit,
//! meaning, and how a node's rounds add up. The coordinator's checks of a report, the
//! Prometheus scrape, the dashboard's series and the plots all read this table, so a
//! new metric is its proto field, the node code that measures it, and one line here.

use std::collections::HashMap;

use crate::MetricsRow;

/// How a node's rounds of a metric add up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A level after the round (accuracy, a loss): a node's value is its newest.
    Level,
    /// Spent or done in the round (bytes, joules, seconds of air): a node's value is the
    /// sum over its rounds, and its series is cumulative.
    Amount,
}

/// What a reported value can be in its round, beyond finite, ≥ 0 and at most 10¹⁵: the
/// coordinator refuses a report that breaks it (a member that lies is told which field).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bound {
    /// Nothing more the coordinator can check (a loss, joules, FLOPs).
    None,
    /// A fraction: at most 1.
    Fraction,
    /// A count of neighbours' messages: at most the node's neighbours this round.
    Neighbours,
    /// Payload bytes: at most neighbours × 4 × `max_message_bytes` + 1 MiB.
    Payload,
    /// Bytes on the wire: twice the payload's bound.
    Wire,
    /// Wall time inside the round: at most 1.1 × the round's age + 1 s.
    Elapsed,
}

/// One metric of a [`MetricsRow`].
#[derive(Clone, Copy, Debug)]
pub struct Metric {
    /// The field of `metrics.jsonl` (or, for a derived metric, the name it is served under).
    pub name: &'static str,
    /// `""` for a fraction or a pure number.
    pub unit: &'static str,
    pub kind: Kind,
    /// Measured on the wall or CPU clock, so it moves with the machine's load: not
    /// bit-for-bit reproducible (docs/determinism.md), left out of the golden run.
    pub clock: bool,
    /// Reported only by some runs (an optional field of the wire): its value is NaN in
    /// a row without it, which the checks let through and the means leave out.
    pub optional: bool,
    pub help: &'static str,
    pub value: fn(&MetricsRow) -> f64,
    /// What the coordinator checks it against (reported metrics only).
    pub bound: Bound,
}

use Kind::{Amount, Level};

const fn metric(
    name: &'static str,
    kind: Kind,
    unit: &'static str,
    help: &'static str,
    value: fn(&MetricsRow) -> f64,
) -> Metric {
    Metric {
        name,
        unit,
        kind,
        clock: false,
        optional: false,
        help,
        value,
        bound: Bound::None,
    }
}

const fn clock(name: &'static str, help: &'static str, value: fn(&MetricsRow) -> f64) -> Metric {
    Metric {
        clock: true,
        ..metric(name, Amount, "ms", help, value)
    }
}

impl Metric {
    /// The same metric, checked against `bound`.
    const fn bounded(self, bound: Bound) -> Metric {
        Metric { bound, ..self }
    }

    /// The same metric, absent (NaN) from some rows.
    const fn optional(self) -> Metric {
        Metric { optional: true, ..self }
    }
}

use Bound::{Elapsed, Fraction, Neighbours, Payload, Wire};

/// The table. Reported by the node unless said otherwise.
#[rustfmt::skip]
pub static METRICS: &[Metric] = &[
    metric("test_accuracy", Level, "", "Test accuracy after the round.", |r| r.metrics.test_accuracy).bounded(Fraction),
    metric("validation_accuracy", Level, "", "Accuracy on the run's validation set after the round (data.validation; absent without one).", |r| r.metrics.validation_accuracy.unwrap_or(f64::NAN)).bounded(Fraction).optional(),
    metric("epsilon", Level, "", "The (ε, δ)-DP budget the node's training has spent after the round (privacy.*; absent without DP-SGD).", |r| r.metrics.epsilon.unwrap_or(f64::NAN)).optional(),
    metric("test_loss", Level, "", "Test cross-entropy after the round.", |r| r.metrics.test_loss),
    metric("train_loss", Level, "", "Mean training loss of the round's local steps.", |r| r.metrics.train_loss),
    metric("ce_loss", Level, "", "Its cross-entropy part.", |r| r.metrics.ce_loss),
    metric("kl_loss", Level, "", "Its KL part (toward the neighbours' predictions).", |r| r.metrics.kl_loss),
    metric("private_samples", Level, "samples", "Size of the node's private shard.", |r| f64::from(r.metrics.private_samples)),
    metric("peers_heard", Level, "nodes", "Neighbours whose predictions the node used this round.", |r| f64::from(r.metrics.peers_heard)).bounded(Neighbours),
    metric("payload_bytes_sent", Amount, "bytes", "Encoded predictions sent (payload only).", |r| r.metrics.payload_bytes_sent as f64).bounded(Payload),
    metric("payload_bytes_received", Amount, "bytes", "Encoded predictions received.", |r| r.metrics.payload_bytes_received as f64).bounded(Payload),
    metric("wire_bytes_sent", Amount, "bytes", "Bytes sent on the wire (every frame as encoded).", |r| r.metrics.wire_bytes_sent as f64).bounded(Wire),
    metric("wire_bytes_received", Amount, "bytes", "Bytes received on the wire.", |r| r.metrics.wire_bytes_received as f64).bounded(Wire),
    metric("messages_sent", Amount, "messages", "Prediction messages sent.", |r| f64::from(r.metrics.messages_sent)).bounded(Neighbours),
    metric("messages_received", Amount, "messages", "Prediction messages received.", |r| f64::from(r.metrics.messages_received)).bounded(Neighbours),
    metric("messages_lost", Amount, "messages", "Neighbour messages expected and not received in time.", |r| f64::from(r.metrics.messages_lost)).bounded(Neighbours),
    metric("messages_rejected", Amount, "messages", "Messages refused by the node's validation.", |r| f64::from(r.metrics.messages_rejected)),
    metric("messages_radio_lost", Amount, "messages", "Neighbour messages the emulated radio lost (outage, frames lost past their retransmissions; over the air, senders below the slot's SNR floor): the part of messages_lost no neighbour caused.", |r| f64::from(r.metrics.messages_radio_lost)).bounded(Neighbours),
    metric("frames_sent", Amount, "frames", "Radio frames sent (emulated channel).", |r| f64::from(r.metrics.frames_sent)),
    metric("frames_lost", Amount, "frames", "Radio frames lost.", |r| f64::from(r.metrics.frames_lost)),
    metric("retransmissions", Amount, "frames", "Radio frames sent again.", |r| f64::from(r.metrics.retransmissions)),
    metric("airtime_s", Amount, "s", "Emulated air time of the node's transmissions.", |r| r.metrics.airtime_s),
    metric("tx_energy_j", Amount, "J", "Emulated radio energy, transmit.", |r| r.metrics.tx_energy_j),
    metric("rx_energy_j", Amount, "J", "Emulated radio energy, receive.", |r| r.metrics.rx_energy_j),
    metric("radio_energy_j", Amount, "J", "Emulated radio energy, transmit and receive (derived).", MetricsRow::radio_energy_j),
    metric("flops", Amount, "FLOP", "Floating-point work of training and inference, from the model's shapes.", |r| r.metrics.flops as f64),
    metric("device_compute_s", Amount, "s", "That work's emulated time on the node's device profile.", |r| r.metrics.device_compute_s),
    metric("compute_energy_j", Amount, "J", "That work's emulated energy on the device profile.", |r| r.metrics.compute_energy_j),
    metric("emulated_round_s", Amount, "s", "Emulated seconds until the node finished the round.", |r| r.metrics.emulated_round_s),
    metric("round_emulated_s", Amount, "s", "Emulated seconds the round lasted as its policy closed it (coordinator).", |r| r.round_emulated_s),
    metric("stale_used", Amount, "messages", "Neighbours' messages from earlier rounds used.", |r| f64::from(r.metrics.stale_used)),
    metric("stale_age", Level, "rounds", "Their mean age.", |r| r.metrics.stale_age),
    clock("compute_ms", "Wall time of the model work (inference, training, evaluation).", |r| r.metrics.compute_ms).bounded(Elapsed),
    clock("compute_cpu_ms", "CPU time of the model work.", |r| r.metrics.compute_cpu_ms),
    clock("exchange_ms", "Wall time sending predictions and waiting for the neighbours'.", |r| r.metrics.exchange_ms).bounded(Elapsed),
    clock("wait_ms", "Wall time idle at the barrier after the node's report (coordinator).", |r| r.wait_ms),
    clock("round_ms", "Wall time of the whole round, StartRound to close (coordinator).", |r| r.round_ms),
];

/// The metric called `name`.
pub fn metric_named(name: &str) -> Option<&'static Metric> {
    METRICS.iter().find(|m| m.name == name)
}

impl MetricsRow {
    /// Radio energy of the round, transmit and receive.
    pub fn radio_energy_j(&self) -> f64 {
        self.metrics.tx_energy_j + self.metrics.rx_energy_j
    }
}

impl Metric {
    /// The Prometheus name: `node_` and the metric's name with its unit spelled as
    /// Prometheus wants it (`_s` as `_seconds`, `_j` as `_joules`, milliseconds as
    /// seconds), and `_total` for an amount; with the factor from the row's unit.
    pub fn prometheus(&self) -> (String, f64) {
        let (stem, suffix, scale) = match self.unit {
            "s" => (self.name.strip_suffix("_s").unwrap_or(self.name), "_seconds", 1.0),
            "J" => (self.name.strip_suffix("_j").unwrap_or(self.name), "_joules", 1.0),
            "ms" => (self.name.strip_suffix("_ms").unwrap_or(self.name), "_seconds", 1e-3),
            _ => (self.name, "", 1.0),
        };
        let total = if self.kind == Amount { "_total" } else { "" };
        (format!("node_{stem}{suffix}{total}"), scale)
    }
}

/// Per node, every metric of [`METRICS`] over its rows so far: amounts summed, levels
/// the newest round's. One pass over `rows`, in the order given.
pub fn totals<'a>(rows: impl IntoIterator<Item = &'a MetricsRow>) -> HashMap<u32, Totals> {
    let mut totals: HashMap<u32, Totals> = HashMap::new();
    for row in rows {
        totals.entry(row.node).or_default().add(row);
    }
    totals
}

/// One node's metrics over its rows so far, in the order of [`METRICS`].
#[derive(Clone, Debug, Default)]
pub struct Totals {
    pub rows: u32,
    /// The round of the newest row, whose levels these are.
    pub newest: Option<u32>,
    pub values: Vec<f64>,
}

impl Totals {
    pub fn add(&mut self, row: &MetricsRow) {
        if self.values.is_empty() {
            self.values = vec![0.0; METRICS.len()];
        }
        self.rows += 1;
        let newest = self.newest.is_none_or(|round| row.round >= round);
        for (total, m) in self.values.iter_mut().zip(METRICS) {
            match m.kind {
                Amount => *total += (m.value)(row),
                Level if newest => *total = (m.value)(row),
                Level => {}
            }
        }
        if newest {
            self.newest = Some(row.round);
        }
    }

    /// The value of the metric called `name` (0 before any row).
    pub fn get(&self, name: &str) -> f64 {
        METRICS
            .iter()
            .position(|m| m.name == name)
            .and_then(|i| self.values.get(i).copied())
            .unwrap_or(0.0)
    }

    /// The amounts as `name → value`, for the dashboard's cumulative series.
    pub fn amounts(&self) -> std::collections::BTreeMap<&'static str, f64> {
        METRICS
            .iter()
            .zip(&self.values)
            .filter(|(m, _)| m.kind == Amount)
            .map(|(m, v)| (m.name, *v))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_every_reported_field_is_declared() {
        let mut names: Vec<&str> = METRICS.iter().map(|m| m.name).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "a metric is declared twice");
        // Every field a node reports (the wire's RoundMetrics, as metrics.jsonl writes
        // it) has its line in the table: a new proto field without one fails here.
        let row = serde_json::to_value(MetricsRow::default()).unwrap();
        for field in row.as_object().unwrap().keys() {
            if ["round", "node", "model"].contains(&field.as_str()) {
                continue;
            }
            assert!(
                metric_named(field).is_some(),
                "metrics.jsonl has `{field}` but coordinator/src/metrics.rs does not declare it"
            );
        }
    }

    #[test]
    fn amounts_add_up_and_levels_are_the_newest() {
        let row = |round, accuracy, airtime| MetricsRow {
            round,
            node: 3,
            metrics: wdml_proto::RoundMetrics {
                test_accuracy: accuracy,
                airtime_s: airtime,
                tx_energy_j: 1.0,
                rx_energy_j: 0.5,
                ..Default::default()
            },
            ..Default::default()
        };
        // A late row of an older round adds its costs but not its accuracy.
        let rows = [row(0, 0.5, 0.25), row(2, 0.75, 0.5), row(1, 0.6, 1.0)];
        let t = &totals(&rows)[&3];
        assert_eq!((t.rows, t.newest), (3, Some(2)));
        assert_eq!(t.get("test_accuracy"), 0.75);
        assert_eq!(t.get("airtime_s"), 1.75);
        assert_eq!(t.get("radio_energy_j"), 4.5);
        assert_eq!(
            metric_named("airtime_s").unwrap().prometheus(),
            ("node_airtime_seconds_total".into(), 1.0)
        );
        assert_eq!(
            metric_named("test_accuracy").unwrap().prometheus(),
            ("node_test_accuracy".into(), 1.0)
        );
        assert_eq!(
            metric_named("round_ms").unwrap().prometheus(),
            ("node_round_seconds_total".into(), 1e-3)
        );
    }
}
