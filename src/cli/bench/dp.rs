//! `wdml bench --only dp`: what DP-SGD's step costs against the plain step.
//!
//! For the default MLP (784-256-128-10) and CNN (`cnn:16,32,128`) on Fashion-MNIST's
//! shape, a fixed private batch of [`BATCH`] rows (the default `train.batch_size`), no
//! distillation term, Adam (lr 1e-3):
//!
//! - `plain`: [`Learner::train_step`], forward, cross-entropy, backward, Adam;
//! - `dp`: [`Learner::private_step`] on the same rows with σ = 1, C = 1: one forward
//!   and backward per row, each gradient clipped to C, summed, Gaussian noise σ·C added,
//!   divided by the expected batch, Adam. The noise is drawn from `rand::rng()` (a
//!   ChaCha12 stream seeded from the operating system, not from the run seed; drawing
//!   each number from the operating system, a system call per number, would cost more;
//!   not measured here).
//!
//! and, to see where the DP step's time goes, its parts measured alone on the same rows:
//! `dp_per_example` ([`Learner::per_example_gradients`]), `dp_clip_sum` (clipping
//! [`BATCH`] per-example gradients computed beforehand into a [`dpsgd::ClippedSum`], as
//! `private_step` does) and `dp_noise` ([`dpsgd::ClippedSum::privatise`] of an empty
//! sum of the parameters' shapes). What `dp` spends beyond the three is the store of zero gradients and Adam.
//!
//! One thread, this binary's allocator; per trial, the thread's CPU time per step over
//! a fixed number of calls (after [`super::steps::WARMUP`]); the operations take turns
//! within a trial. It prints the least and the median over the trials and writes every
//! trial to `dp.json`, which `scripts/torch-compare/opacus_step.py` reads when it
//! interleaves single trials of this with PyTorch's and Opacus's.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use candle_core::Tensor;
use serde::Serialize;
use wdml_node::learn::{Learner, LearnerConfig, labels_tensor};
use wdml_node::model::ModelSpec;
use wdml_node::privacy::dpsgd::{self, DpSgd};

use super::steps::{pixels, trial};

/// The private batch: the default `train.batch_size`.
pub const BATCH: usize = 32;
const CLASSES: usize = 10;
/// σ and C.
const NOISE_MULTIPLIER: f64 = 1.0;
const MAX_GRAD_NORM: f64 = 1.0;
/// The private examples `q` is computed from (a tenth of Fashion-MNIST's training set,
/// a node's shard in the 10-node default); the step's time does not depend on it.
const EXAMPLES: usize = 6_000;

/// The operations, in the order they take turns, and their calls per trial (a plain
/// step is a millisecond or two, a DP step tens).
const OPS: [(&str, usize); 5] = [
    ("plain", 30),
    ("dp", 10),
    ("dp_per_example", 10),
    ("dp_clip_sum", 10),
    ("dp_noise", 10),
];

#[derive(Debug, Serialize)]
struct Timing {
    model: String,
    op: &'static str,
    parameters: usize,
    batch: usize,
    noise_multiplier: f64,
    max_grad_norm: f64,
    /// Thread CPU per call, one value per trial, in order.
    cpu_ms: Vec<f64>,
    cpu_ms_min: f64,
    cpu_ms_median: f64,
    calls_per_trial: usize,
}

fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    match n % 2 {
        1 => sorted[n / 2],
        _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

pub fn dp(trials: usize, out: &Path) -> Result<()> {
    anyhow::ensure!(trials > 0, "--trials must be at least 1");
    // SAFETY: set before any other thread of this process reads the environment.
    unsafe { std::env::set_var("RAYON_NUM_THREADS", "1") };
    let cfg = LearnerConfig {
        learning_rate: 1e-3,
        temperature: 1.0,
        kl_weight: 1.0,
    };
    let dp = DpSgd::new(NOISE_MULTIPLIER, MAX_GRAD_NORM, BATCH, EXAMPLES)?;
    let xs = pixels(BATCH, 1)?;
    let ys = labels_tensor((0..BATCH as u32).map(|i| i % CLASSES as u32).collect(), CLASSES)?;
    let mut rng = rand::rng();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "\n== dp: DP-SGD's step against the plain step on one thread (private batch {BATCH}, σ = {NOISE_MULTIPLIER}, \
         C = {MAX_GRAD_NORM}, no distillation, Adam); ms of thread CPU per step over {trials} trials: least / median"
    );
    println!(
        "{:<14} {:>10} {:>17} {:>17} {:>9} {:>17} {:>17} {:>17}",
        "model", "parameters", "plain", "dp", "dp/plain", "per-example", "clip+sum", "noise"
    );
    let mut timings = Vec::new();
    for spec in [ModelSpec::default_mlp(), ModelSpec::default_cnn()] {
        let data = wdml_proto::data::fashion_mnist();
        let mut learner = Learner::new(&spec, &data, cfg, 0)?;
        // Fixed per-example gradients for `dp_clip_sum` (the sum reads them in place).
        let (gradients, _) = learner.per_example_gradients(&xs, &ys)?;
        let shapes: Vec<Tensor> = gradients[0]
            .iter()
            .map(|g| g.zeros_like())
            .collect::<candle_core::Result<_>>()?;
        let mut cpu: Vec<Vec<f64>> = vec![Vec::with_capacity(trials); OPS.len()];
        for _ in 0..trials {
            for (i, &(op, calls)) in OPS.iter().enumerate() {
                let t = trial(calls, &mut || {
                    match op {
                        "plain" => drop(learner.train_step(&xs, &ys, None)?),
                        "dp" => drop(learner.private_step(Some((&xs, &ys)), None, None, &dp, &mut rng)?),
                        "dp_per_example" => drop(learner.per_example_gradients(&xs, &ys)?),
                        "dp_clip_sum" => {
                            let mut sum = dpsgd::ClippedSum::new(&shapes, dp.max_grad_norm);
                            for gradient in &gradients {
                                sum.add(gradient)?;
                            }
                        }
                        _ => drop(dpsgd::ClippedSum::new(&shapes, dp.max_grad_norm).privatise(&dp, &mut rng)?),
                    }
                    Ok(())
                })?;
                cpu[i].push(ms(t.0));
            }
        }
        let mut row = Vec::new();
        for (&(op, calls), cpu) in OPS.iter().zip(cpu) {
            let mut sorted = cpu.clone();
            sorted.sort_by(f64::total_cmp);
            row.push((sorted[0], median(&sorted)));
            timings.push(Timing {
                model: spec.to_string(),
                op,
                parameters: learner.parameter_count(),
                batch: BATCH,
                noise_multiplier: NOISE_MULTIPLIER,
                max_grad_norm: MAX_GRAD_NORM,
                cpu_ms: cpu,
                cpu_ms_min: sorted[0],
                cpu_ms_median: median(&sorted),
                calls_per_trial: calls,
            });
        }
        let cell = |(least, median): (f64, f64)| format!("{least:.2} / {median:.2}");
        println!(
            "{:<14} {:>10} {:>17} {:>17} {:>9.1} {:>17} {:>17} {:>17}",
            spec.to_string(),
            learner.parameter_count(),
            cell(row[0]),
            cell(row[1]),
            row[1].1 / row[0].1,
            cell(row[2]),
            cell(row[3]),
            cell(row[4]),
        );
    }
    println!("(dp/plain: of the medians; per-example, clip+sum and noise: dp's parts, timed alone)");
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let path = out.join("dp.json");
    wdml_files::write_atomic(&path, &serde_json::to_vec_pretty(&timings)?, wdml_files::Mode::Public)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("(written to {})", path.display());
    Ok(())
}
