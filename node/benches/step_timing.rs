//! Wall-clock timing of one training step (forward, backward, Adam) for the default
//! MLP and CNN, at a private batch of 64 and a public (distillation) batch of 256.
//!
//! Not a Criterion bench (no extra dependency): an ignored test that prints ms/step.
//! Run it on an idle machine, single-threaded as nodes run:
//!
//! ```text
//! RAYON_NUM_THREADS=1 cargo test -p wdml-node --bench step_timing -- --ignored --nocapture
//! ```

use std::time::Instant;

/// The `wdml` binary's allocator (src/main.rs): Candle allocates a tensor per
/// operation, and the system allocator's cost would understate the real node's speed.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use candle_core::{Device, Tensor};
use wdml_node::learn::{Aggregate, Learner, LearnerConfig, labels_tensor, soft_targets, targets_tensor};
use wdml_node::model::{CLASSES, INPUT_DIM, ModelSpec};

const PRIVATE: usize = 64;
const PUBLIC: usize = 256;
const WARMUP: usize = 3;
const STEPS: usize = 30;

/// Deterministic pseudo-pixels in [−1, 1) (a cheap LCG: timing does not care).
fn pixels(rows: usize, seed: u64) -> Tensor {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let v: Vec<f32> = (0..rows * INPUT_DIM)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    Tensor::from_vec(v, (rows, INPUT_DIM), &Device::Cpu).expect("pixels")
}

/// This thread's CPU time (user + system) in ms, from `/proc/thread-self/stat` (Linux,
/// 100 ticks/s): unlike wall time, it does not count time the thread waited for a core
/// that other processes held.
fn thread_cpu_ms() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks * 10.0)
}

/// Mean wall and CPU milliseconds per call of `f` (CPU time `NaN` off Linux).
fn time_ms(mut f: impl FnMut()) -> (f64, f64) {
    for _ in 0..WARMUP {
        f();
    }
    let (start, cpu_start) = (Instant::now(), thread_cpu_ms());
    for _ in 0..STEPS {
        f();
    }
    let wall = start.elapsed().as_secs_f64() * 1e3 / STEPS as f64;
    let cpu = match (cpu_start, thread_cpu_ms()) {
        (Some(a), Some(b)) => (b - a) / STEPS as f64,
        _ => f64::NAN,
    };
    (wall, cpu)
}

#[test]
#[ignore = "timing harness; run with --ignored --nocapture on an idle machine"]
fn step_timing() {
    let threads = candle_core::utils::get_num_threads();
    println!("candle threads: {threads}, private batch {PRIVATE}, public batch {PUBLIC}");
    let xs = pixels(PRIVATE, 1);
    let ys = labels_tensor((0..PRIVATE as u32).map(|i| i % CLASSES as u32).collect()).expect("labels");
    let public = pixels(PUBLIC, 2);
    let cfg = LearnerConfig {
        learning_rate: 1e-3,
        temperature: 3.0,
        kl_weight: 1.0,
    };
    for spec in [ModelSpec::default_mlp(), ModelSpec::default_cnn()] {
        let mut learner = Learner::new(&spec, cfg, 0).expect("learner");
        let peer = Learner::new(&spec, cfg, 1).expect("peer");
        let z = peer.logits_vec(&public).expect("peer logits");
        let target = soft_targets(&[&z], PUBLIC, CLASSES, cfg.temperature, Aggregate::Mean)
            .and_then(targets_tensor)
            .expect("targets");
        let infer = time_ms(|| {
            learner.logits(&public).expect("logits");
        });
        let ce = time_ms(|| {
            learner.train_step(&xs, &ys, None).expect("ce step");
        });
        let dml = time_ms(|| {
            learner
                .train_step(&xs, &ys, Some((&public, &target)))
                .expect("dml step");
        });
        println!(
            "{spec:<14} params {:>7}  ms wall/cpu:  logits({PUBLIC}) {:6.1}/{:6.1}  CE step {:6.1}/{:6.1}  \
             CE+KL step {:6.1}/{:6.1}",
            learner.parameter_count(),
            infer.0,
            infer.1,
            ce.0,
            ce.1,
            dml.0,
            dml.1
        );
    }
}
