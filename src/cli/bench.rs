//! `wdml bench`: runs a scenario under `dml` and `local` with the same seed, as real
//! processes, and prints the figures the project reports: wall time per round split
//! into compute / exchange / wait, bytes per round per node, and final accuracies.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use wdml_coordinator::{MetricsRow, Summary, bytes};

use super::launcher::{Progress, launch};
use crate::scenario::{AlgorithmName, Scenario};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Scenario file (TOML); default: the built-in quickstart.
    scenario: Option<PathBuf>,
    /// Override any scenario field (repeatable).
    #[arg(long = "set", value_name = "FIELD=VALUE")]
    overrides: Vec<String>,
    /// Where the runs go (one sub-directory per algorithm).
    #[arg(long, default_value = "runs/bench")]
    out: PathBuf,
}

pub fn main(args: Args) -> Result<ExitCode> {
    let base = Scenario::load(args.scenario.as_deref(), &args.overrides)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let mut results = Vec::new();
    for algorithm in [AlgorithmName::Dml, AlgorithmName::Local] {
        let mut scenario = base.clone();
        scenario.run.algorithm = algorithm;
        let name = format!("{algorithm:?}").to_lowercase();
        let out = args.out.join(&name);
        eprintln!(
            "running {} under {name} ({} nodes, {} rounds)…",
            scenario.run.name, scenario.nodes.count, scenario.run.rounds
        );
        let summary = runtime.block_on(launch(&scenario, &out, Progress::Quiet))?;
        let rows = read_metrics(&out)?;
        results.push((name, summary, rows));
    }
    print_report(&base, &results);
    Ok(ExitCode::SUCCESS)
}

fn read_metrics(out: &std::path::Path) -> Result<Vec<MetricsRow>> {
    let text = std::fs::read_to_string(out.join("metrics.jsonl"))?;
    Ok(text.lines().map(serde_json::from_str).collect::<Result<_, _>>()?)
}

fn print_report(scenario: &Scenario, results: &[(String, Summary, Vec<MetricsRow>)]) {
    println!(
        "scenario {}: {} nodes, {} rounds, E = {}, public batch {} ({:?}), seed {}",
        scenario.run.name,
        scenario.nodes.count,
        scenario.run.rounds,
        scenario.train.local_steps,
        scenario.exchange.public_batch,
        scenario.exchange.encoding,
        scenario.run.seed
    );
    println!(
        "machine: {} logical cores; timings are wall clock, all processes sharing them",
        cores()
    );
    println!();
    println!(
        "{:<6} {:>9} {:>10} {:>11} {:>9} {:>14} {:>14} {:>10} {:>10}",
        "algo",
        "round ms",
        "compute ms",
        "exchange ms",
        "wait ms",
        "payload/round",
        "wire/round",
        "mean acc",
        "worst acc"
    );
    for (name, summary, rows) in results {
        let mean = |f: fn(&MetricsRow) -> f64| rows.iter().map(f).sum::<f64>() / rows.len().max(1) as f64;
        println!(
            "{:<6} {:>9.0} {:>10.0} {:>11.0} {:>9.0} {:>14} {:>14} {:>9.2}% {:>9.2}%",
            name,
            summary.mean_round_ms,
            mean(|r| r.compute_ms),
            mean(|r| r.exchange_ms),
            mean(|r| r.wait_ms),
            bytes(mean(|r| r.payload_bytes_sent as f64) as u64),
            bytes(mean(|r| r.wire_bytes_sent as f64) as u64),
            100.0 * summary.mean_final_accuracy.unwrap_or(0.0),
            100.0 * summary.min_final_accuracy.unwrap_or(0.0),
        );
    }
    println!("(compute, exchange, wait and bytes: mean per node per round; bytes are those sent)");
    println!();
    print!("{:<6}", "node");
    for (name, _, _) in results {
        print!(" {name:>8}");
    }
    println!("  model");
    let nodes = results.first().map_or(0, |(_, s, _)| s.nodes.len());
    for i in 0..nodes {
        print!("{i:<6}");
        for (_, summary, _) in results {
            let accuracy = summary.nodes.get(i).and_then(|n| n.final_accuracy).unwrap_or(0.0);
            print!(" {:>7.2}%", 100.0 * accuracy);
        }
        println!("  {}", results[0].1.nodes.get(i).map_or("", |n| n.model.as_str()));
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
