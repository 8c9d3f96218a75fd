//! A run as one curve: per closed round, the mean accuracy over the nodes and the
//! radio's costs so far. `wdml compare` compares algorithms by it, and the dashboard's
//! compare view draws it, so both say the same.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::MetricsRow;

/// One round of one run, over all nodes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    pub round: u32,
    pub mean_accuracy: f64,
    /// The same mean on the run's validation set (`data.validation`); `None` without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_validation_accuracy: Option<f64>,
    /// Summed over every node, up to and including this round.
    pub cumulative_energy_j: f64,
    pub cumulative_airtime_s: f64,
    /// Emulated time of the rounds so far: each round lasts as long as its slowest node.
    pub cumulative_emulated_s: f64,
    pub wire_bytes_per_node: f64,
}

/// Per closed round: the mean over the nodes of the accuracy of each one's newest model
/// (a node late for a round counts with the model it last reported, in time or late:
/// under `sync` every node reports every round, and this is that round's mean); the
/// radio's costs so far, late reports' included; the emulated time so far, as each
/// round's policy closed it. `rows`: `metrics.jsonl` and `late.jsonl`.
pub fn curve(rows: &[MetricsRow]) -> Vec<CurvePoint> {
    let last = rows.iter().map(|r| r.round).max().unwrap_or(0);
    let (mut energy, mut airtime, mut emulated) = (0.0, 0.0, 0.0);
    let mut newest: BTreeMap<u32, f64> = BTreeMap::new();
    let mut newest_validation: BTreeMap<u32, f64> = BTreeMap::new();
    let mut points = Vec::new();
    for round in 0..=last {
        let all: Vec<&MetricsRow> = rows.iter().filter(|r| r.round == round).collect();
        energy += all.iter().map(|r| r.radio_energy_j()).sum::<f64>();
        airtime += all.iter().map(|r| r.metrics.airtime_s).sum::<f64>();
        for r in &all {
            newest.insert(r.node, r.metrics.test_accuracy);
            if let Some(v) = r.metrics.validation_accuracy.filter(|v| v.is_finite()) {
                newest_validation.insert(r.node, v);
            }
        }
        let these: Vec<&&MetricsRow> = all.iter().filter(|r| !r.late).collect();
        if these.is_empty() {
            continue;
        }
        let n = these.len() as f64;
        emulated += match these.iter().map(|r| r.round_emulated_s).fold(0.0, f64::max) {
            // Directories written before rounds recorded their span: the last node's.
            0.0 => these.iter().map(|r| r.metrics.emulated_round_s).fold(0.0, f64::max),
            span => span,
        };
        points.push(CurvePoint {
            round,
            mean_accuracy: newest.values().sum::<f64>() / newest.len() as f64,
            // Over the same nodes as the test mean, or none: a mean over some would
            // not be the same quantity.
            mean_validation_accuracy: (newest_validation.len() == newest.len())
                .then(|| newest_validation.values().sum::<f64>() / newest.len() as f64),
            cumulative_energy_j: energy,
            cumulative_airtime_s: airtime,
            cumulative_emulated_s: emulated,
            wire_bytes_per_node: these.iter().map(|r| r.metrics.wire_bytes_sent as f64).sum::<f64>() / n,
        });
    }
    points
}
