//! `wdml bench --only steps`: a node's model work, timed as a node runs it.
//!
//! For the default MLP and CNN: predictions on a public batch of 256 (the message a node
//! sends), a training step on a private batch of 64 (cross-entropy), and one on the
//! same batch plus the 256 public rows (cross-entropy + KL to a peer's predictions),
//! each with Adam. One thread, this binary's allocator; the figure is the thread's CPU
//! time per call, the minimum over `trials` interleaved trials (the least disturbed by
//! other work on the machine), with the wall time of that trial beside it.
//!
//! `steps.json` in the bench's directory holds the same figures for
//! `scripts/torch-compare/compare.py`, which interleaves them with PyTorch's.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use serde::Serialize;
use wdml_node::learn::{Aggregate, Learner, LearnerConfig, labels_tensor, soft_targets, targets_tensor};
use wdml_node::model::ModelSpec;

/// The benchmark's data: Fashion-MNIST's shape (784 values, 10 classes).
const CLASSES: usize = 10;
const INPUT_DIM: usize = 784;
use wdml_node::round::thread_cpu_time;

pub const PRIVATE: usize = 64;
pub const PUBLIC: usize = 256;
/// Calls before a trial's clock starts (allocator pools, caches).
pub(super) const WARMUP: usize = 3;
/// Calls per trial.
const CALLS: usize = 30;

/// One operation's figures, as `steps.json` lists them.
#[derive(Debug, Serialize)]
struct Timing {
    model: String,
    /// `logits`, `ce` or `ce_kl`.
    op: &'static str,
    parameters: usize,
    /// Thread CPU per call, the least over the trials.
    cpu_ms: f64,
    /// Wall time per call in that trial.
    wall_ms: f64,
    trials: usize,
    calls_per_trial: usize,
}

/// Pseudo-pixels in [−1, 1) from a fixed LCG: timing does not depend on their values,
/// and every run times the same inputs.
pub(super) fn pixels(rows: usize, seed: u64) -> Result<Tensor> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let v: Vec<f32> = (0..rows * INPUT_DIM)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    Ok(Tensor::from_vec(v, (rows, INPUT_DIM), &Device::Cpu)?)
}

/// CPU and wall time per call of `f` over one trial of `calls` calls.
pub(super) fn trial(calls: usize, f: &mut dyn FnMut() -> Result<()>) -> Result<(Duration, Duration)> {
    for _ in 0..WARMUP {
        f()?;
    }
    let (wall, cpu) = (Instant::now(), thread_cpu_time());
    for _ in 0..calls {
        f()?;
    }
    let n = calls as u32;
    Ok(((thread_cpu_time() - cpu) / n, wall.elapsed() / n))
}

pub fn steps(trials: usize, out: &Path) -> Result<()> {
    anyhow::ensure!(trials > 0, "--trials must be at least 1");
    // A node's tensor work runs on one thread (`wdml node --threads 1`); Candle reads
    // this before each operation.
    // SAFETY: set before any other thread of this process reads the environment.
    unsafe { std::env::set_var("RAYON_NUM_THREADS", "1") };
    let cfg = LearnerConfig {
        learning_rate: 1e-3,
        temperature: 3.0,
        kl_weight: 1.0,
    };
    let xs = pixels(PRIVATE, 1)?;
    let ys = labels_tensor((0..PRIVATE as u32).map(|i| i % CLASSES as u32).collect(), CLASSES)?;
    let public = pixels(PUBLIC, 2)?;
    println!(
        "\n== steps: a node's model work on one thread (private batch {PRIVATE}, public batch {PUBLIC}, Adam); \
         ms of thread CPU per call, least of {trials} trials of {CALLS} (wall time of that trial)"
    );
    println!(
        "{:<14} {:>10} {:>20} {:>20} {:>20}",
        "model", "parameters", "logits(256)", "CE step", "CE+KL step"
    );
    let mut timings = Vec::new();
    for spec in [ModelSpec::default_mlp(), ModelSpec::default_cnn()] {
        let data = wdml_proto::data::fashion_mnist();
        let mut learner = Learner::new(&spec, &data, cfg, 0)?;
        let peer = Learner::new(&spec, &data, cfg, 1)?;
        let z = peer.logits_vec(&public)?;
        let target = targets_tensor(
            soft_targets(&[&z], PUBLIC, CLASSES, cfg.temperature, Aggregate::Mean)?,
            CLASSES,
        )?;
        let mut best = [(Duration::MAX, Duration::ZERO); 3];
        for _ in 0..trials {
            // The three operations take turns, so a disturbance spreads over them.
            for (op, best) in best.iter_mut().enumerate() {
                let t = trial(CALLS, &mut || {
                    match op {
                        0 => drop(learner.logits(&public)?),
                        1 => drop(learner.train_step(&xs, &ys, None)?),
                        _ => drop(learner.train_step(&xs, &ys, Some((&public, &target)))?),
                    }
                    Ok(())
                })?;
                if t.0 < best.0 {
                    *best = t;
                }
            }
        }
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let cell = |(cpu, wall): (Duration, Duration)| format!("{:.3} ({:.3})", ms(cpu), ms(wall));
        println!(
            "{:<14} {:>10} {:>20} {:>20} {:>20}",
            spec.to_string(),
            learner.parameter_count(),
            cell(best[0]),
            cell(best[1]),
            cell(best[2])
        );
        for (op, (cpu, wall)) in ["logits", "ce", "ce_kl"].into_iter().zip(best) {
            timings.push(Timing {
                model: spec.to_string(),
                op,
                parameters: learner.parameter_count(),
                cpu_ms: ms(cpu),
                wall_ms: ms(wall),
                trials,
                calls_per_trial: CALLS,
            });
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let path = out.join("steps.json");
    wdml_files::write_atomic(&path, &serde_json::to_vec_pretty(&timings)?, wdml_files::Mode::Public)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("(written to {})", path.display());
    Ok(())
}
