//! `wdml bench --only resnet`: a ResNet-8 training step on CIFAR-sized images.
//!
//! A batch of 64 images `[3, 32, 32]` (channels-first rows, as PyTorch stores them), 10
//! classes: forward, cross-entropy, backward and Adam, as a node trains. One thread,
//! this binary's allocator; per trial, the thread's CPU time per step over
//! [`CALLS`] steps (after [`super::steps::WARMUP`]). It prints the least and the median
//! over the trials and writes them to `resnet.json`, which
//! `scripts/torch-compare/resnet_step.py` reads when it interleaves single trials of
//! this with PyTorch's.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use serde::Serialize;
use wdml_node::learn::adam::Adam;
use wdml_node::model::init::init_seeded_resnet;
use wdml_node::model::{Model, ResNet, resnet_parameter_count};

use super::steps::trial;

const DEPTH: usize = 8;
const INPUT: [usize; 3] = [3, 32, 32];
const CLASSES: usize = 10;
const BATCH: usize = 64;
/// Steps per trial (a step is tens of milliseconds: fewer than `steps`' 30 calls).
const CALLS: usize = 10;

#[derive(Debug, Serialize)]
struct Timing {
    model: String,
    batch: usize,
    input: [usize; 3],
    classes: usize,
    parameters: usize,
    /// Thread CPU per step, one value per trial, in order.
    cpu_ms: Vec<f64>,
    cpu_ms_min: f64,
    cpu_ms_median: f64,
    calls_per_trial: usize,
}

pub fn resnet(trials: usize, out: &Path) -> Result<()> {
    anyhow::ensure!(trials > 0, "--trials must be at least 1");
    // SAFETY: set before any other thread of this process reads the environment.
    unsafe { std::env::set_var("RAYON_NUM_THREADS", "1") };
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let net = ResNet::new(DEPTH, INPUT, CLASSES, vb)?;
    let mut params: Vec<(String, Var)> = {
        let data = varmap
            .data()
            .lock()
            .map_err(|_| anyhow::anyhow!("parameter map lock poisoned"))?;
        data.iter().map(|(n, v)| (n.clone(), v.clone())).collect()
    };
    params.sort_by(|a, b| a.0.cmp(&b.0));
    init_seeded_resnet(&params, 0)?;
    let mut adam = Adam::new(params.iter().map(|(_, v)| v.clone()).collect(), 1e-3);
    // Pseudo-pixels from a fixed LCG: the time does not depend on their values.
    let dim: usize = INPUT.iter().product();
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    let pixels: Vec<f32> = (0..BATCH * dim)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    let xs = Tensor::from_vec(pixels, (BATCH, dim), &Device::Cpu)?;
    let ys = Tensor::from_vec(
        (0..BATCH as u32).map(|i| i % CLASSES as u32).collect(),
        BATCH,
        &Device::Cpu,
    )?;
    let mut step = || -> Result<()> {
        let loss = candle_nn::loss::cross_entropy(&net.forward(&xs)?, &ys)?;
        adam.step(&loss.backward()?)?;
        Ok(())
    };
    let mut cpu = Vec::with_capacity(trials);
    for _ in 0..trials {
        cpu.push(trial(CALLS, &mut step)?.0);
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mut sorted = cpu.clone();
    sorted.sort();
    let median = match trials % 2 {
        1 => ms(sorted[trials / 2]),
        _ => (ms(sorted[trials / 2 - 1]) + ms(sorted[trials / 2])) / 2.0,
    };
    let timing = Timing {
        model: format!("resnet{DEPTH}"),
        batch: BATCH,
        input: INPUT,
        classes: CLASSES,
        parameters: resnet_parameter_count(DEPTH, INPUT, CLASSES),
        cpu_ms: cpu.iter().copied().map(ms).collect(),
        cpu_ms_min: ms(sorted[0]),
        cpu_ms_median: median,
        calls_per_trial: CALLS,
    };
    println!(
        "\n== resnet: ResNet-{DEPTH} (GroupNorm), {BATCH} × {}×{}×{} images, {CLASSES} classes, {} parameters: \
         CE training step with Adam on one thread; ms of thread CPU per step over {trials} trials of {CALLS}: \
         least {:.2}, median {:.2}",
        INPUT[0], INPUT[1], INPUT[2], timing.parameters, timing.cpu_ms_min, timing.cpu_ms_median
    );
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let path = out.join("resnet.json");
    wdml_files::write_atomic(&path, &serde_json::to_vec_pretty(&timing)?, wdml_files::Mode::Public)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("(written to {})", path.display());
    Ok(())
}
