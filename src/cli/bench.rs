//! `wdml bench`: the figures the project reports, measured on this machine.
//!
//! - `learning`: a scenario under `dml` and `local` with the same seed, as real
//!   processes: wall time per round split into compute / exchange / wait, bytes per
//!   round per node, final accuracies.
//! - `radio`: the same scenario under `dml` on the `wifi` and `d2d-urban` presets:
//!   air time and energy per round per node, frames and messages lost.
//! - `shaper`: the shaper's own cost on a real loopback stream with no waiting
//!   (`time_scale` 0): CPU time per MB shaped against the same bytes unshaped, and the
//!   highest rate it sustains.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use wdml_channel::{ChannelConfig, Preset};
use wdml_coordinator::{MetricsRow, Summary, bytes};
use wdml_node::exchange::codec::{self, Envelope};
use wdml_node::exchange::shaper::Shaper;
use wdml_node::exchange::{Expectation, Mailbox, PeerService, client};
use wdml_node::round::process_cpu_time;
use wdml_proto::Encoding;

use super::launcher::{Progress, launch};
use crate::scenario::{AlgorithmName, Scenario};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Scenario file (TOML); default: the built-in quickstart.
    scenario: Option<PathBuf>,
    /// Override any scenario field (repeatable).
    #[arg(long = "set", value_name = "FIELD=VALUE")]
    overrides: Vec<String>,
    /// Where the runs go (one sub-directory per run).
    #[arg(long, default_value = "runs/bench")]
    out: PathBuf,
    /// Parts to run: learning, radio, shaper.
    #[arg(long, value_delimiter = ',', default_value = "learning,radio,shaper")]
    only: Vec<String>,
}

pub fn main(args: Args) -> Result<ExitCode> {
    let base = Scenario::load(args.scenario.as_deref(), &args.overrides)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    println!(
        "machine: {} logical cores; wall-clock timings, every process sharing them",
        cores()
    );
    for part in &args.only {
        match part.trim() {
            "learning" => learning(&runtime, &base, &args.out)?,
            "radio" => radio(&runtime, &base, &args.out)?,
            "shaper" => runtime.block_on(shaper())?,
            other => anyhow::bail!("--only: unknown part {other:?}; expected learning, radio or shaper"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `scenario` quietly and returns its summary and rows.
fn run(runtime: &tokio::runtime::Runtime, scenario: &Scenario, out: PathBuf) -> Result<(Summary, Vec<MetricsRow>)> {
    eprintln!(
        "running {} ({} nodes, {} rounds) into {}…",
        scenario.run.name,
        scenario.nodes.count,
        scenario.run.rounds,
        out.display()
    );
    let summary = runtime.block_on(launch(scenario, &out, Progress::Quiet))?;
    let rows = MetricsRow::read_all(&out)?;
    Ok((summary, rows))
}

fn mean(rows: &[MetricsRow], f: fn(&MetricsRow) -> f64) -> f64 {
    rows.iter().map(f).sum::<f64>() / rows.len().max(1) as f64
}

fn learning(runtime: &tokio::runtime::Runtime, base: &Scenario, out: &std::path::Path) -> Result<()> {
    let mut results = Vec::new();
    for algorithm in [AlgorithmName::Dml, AlgorithmName::Local] {
        let mut scenario = base.clone();
        scenario.run.algorithm = algorithm;
        let name = format!("{algorithm:?}").to_lowercase();
        let (summary, rows) = run(runtime, &scenario, out.join(&name))?;
        results.push((name, summary, rows));
    }
    println!(
        "\n== learning: {} — {} nodes, {} rounds, E = {}, public batch {} ({:?}), channel {}, seed {}",
        base.run.name,
        base.nodes.count,
        base.run.rounds,
        base.train.local_steps,
        base.exchange.public_batch,
        base.exchange.encoding,
        base.channel.preset,
        base.run.seed
    );
    println!(
        "{:<6} {:>9} {:>10} {:>8} {:>11} {:>9} {:>14} {:>14} {:>10} {:>10}",
        "algo",
        "round ms",
        "compute ms",
        "cpu ms",
        "exchange ms",
        "wait ms",
        "payload/round",
        "wire/round",
        "mean acc",
        "worst acc"
    );
    for (name, summary, rows) in &results {
        println!(
            "{:<6} {:>9.0} {:>10.0} {:>8.0} {:>11.0} {:>9.0} {:>14} {:>14} {:>9.2}% {:>9.2}%",
            name,
            summary.mean_round_ms,
            mean(rows, |r| r.compute_ms),
            mean(rows, |r| r.compute_cpu_ms),
            mean(rows, |r| r.exchange_ms),
            mean(rows, |r| r.wait_ms),
            bytes(mean(rows, |r| r.payload_bytes_sent as f64) as u64),
            bytes(mean(rows, |r| r.wire_bytes_sent as f64) as u64),
            100.0 * summary.mean_final_accuracy.unwrap_or(0.0),
            100.0 * summary.min_final_accuracy.unwrap_or(0.0),
        );
    }
    println!("(compute (wall), its CPU time, exchange, wait and bytes sent: mean per node per round)");
    print!("{:<6}", "node");
    for (name, _, _) in &results {
        print!(" {name:>8}");
    }
    println!("  model");
    for i in 0..results.first().map_or(0, |(_, s, _)| s.nodes.len()) {
        print!("{i:<6}");
        for (_, summary, _) in &results {
            let accuracy = summary.nodes.get(i).and_then(|n| n.final_accuracy).unwrap_or(0.0);
            print!(" {:>7.2}%", 100.0 * accuracy);
        }
        println!("  {}", results[0].1.nodes.get(i).map_or("", |n| n.model.as_str()));
    }
    Ok(())
}

fn radio(runtime: &tokio::runtime::Runtime, base: &Scenario, out: &std::path::Path) -> Result<()> {
    println!(
        "\n== radio: {} under dml, per node per round (means over every node and round)",
        base.run.name
    );
    println!(
        "{:<10} {:>11} {:>12} {:>12} {:>13} {:>12} {:>13} {:>10}",
        "preset", "air time", "tx energy", "rx energy", "frames sent", "frames lost", "msgs lost", "mean acc"
    );
    for preset in [Preset::Wifi, Preset::D2dUrban] {
        let mut scenario = base.clone();
        scenario.run.algorithm = AlgorithmName::Dml;
        scenario.channel = ChannelConfig {
            preset,
            ..base.channel.clone()
        };
        let (summary, rows) = run(runtime, &scenario, out.join(format!("radio-{preset}")))?;
        let expected: f64 = rows
            .iter()
            .map(|r| f64::from(r.messages_received + r.messages_lost))
            .sum();
        let lost: f64 = rows.iter().map(|r| f64::from(r.messages_lost)).sum();
        println!(
            "{:<10} {:>8.3} ms {:>9.3} mJ {:>9.3} mJ {:>13.1} {:>12.2} {:>12.1}% {:>9.2}%",
            preset.to_string(),
            1e3 * mean(&rows, |r| r.airtime_s),
            1e3 * mean(&rows, |r| r.tx_energy_j),
            1e3 * mean(&rows, |r| r.rx_energy_j),
            mean(&rows, |r| f64::from(r.frames_sent)),
            mean(&rows, |r| f64::from(r.frames_lost)),
            100.0 * lost / expected.max(1.0),
            100.0 * summary.mean_final_accuracy.unwrap_or(0.0),
        );
    }
    Ok(())
}

/// Streams `messages` messages of ~1 MiB each from node 0 to node 1 on loopback
/// through `preset` with no waiting; returns (bytes, wall, CPU of both ends).
async fn stream_through(preset: Preset, messages: u32) -> Result<(u64, Duration, Duration)> {
    let rows = 26_214; // × 10 columns × 4 bytes ≈ 1 MiB
    let resolved = ChannelConfig {
        preset,
        time_scale: 0.0,
        ..ChannelConfig::from_preset(preset)
    }
    .resolve()?;
    let mailbox = Arc::new(Mailbox::new(2));
    let expect = Expectation {
        run_id: "bench".into(),
        me: 1,
        nodes: 2,
        rows,
        cols: 10,
        max_message_bytes: 1 << 24,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let service = wdml_proto::peer_exchange_server::PeerExchangeServer::new(PeerService::new(expect, mailbox.clone()));
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))?
        .connect()
        .await?;
    let sender = Shaper::new(resolved, 1, 2, 0)?;
    let values: Vec<f32> = (0..rows * 10).map(|i| (i % 97) as f32 * 0.01).collect();
    let encoded = codec::encode(&values, rows, 10, Encoding::F32);
    let (mut sent, cpu, wall) = (0, process_cpu_time(), Instant::now());
    for round in 0..messages {
        mailbox.begin_round(round, 1, &[0], &[0]);
        let envelope = Envelope {
            run_id: "bench".into(),
            round,
            round_token: 1,
            sender: 0,
        };
        let frames = codec::frames(&envelope, &encoded, sender.frame_bytes());
        let schedule = sender.schedule(round, &[1], encoded.bytes.len() as u64, frames.len())?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let (collected, outcomes) = tokio::join!(
            mailbox.collect(round, deadline),
            client::transmit(frames, schedule, vec![(1, Some(channel.clone()))], 0.0, deadline)
        );
        sent += outcomes[0].0.payload_bytes;
        // A message the radio lost still cost the shaper its work.
        let _ = collected;
    }
    let result = (sent, wall.elapsed(), process_cpu_time() - cpu);
    server.abort();
    Ok(result)
}

async fn shaper() -> Result<()> {
    let messages = 64;
    let (plain_bytes, plain_wall, plain_cpu) = stream_through(Preset::Ideal, messages)
        .await
        .context("unshaped stream")?;
    let (shaped_bytes, shaped_wall, shaped_cpu) = stream_through(Preset::D2dUrban, messages)
        .await
        .context("shaped stream")?;
    let mb = |b: u64| b as f64 / 1e6;
    println!("\n== shaper: {messages} messages of 1 MiB, node 0 → node 1 on loopback, time_scale 0 (no waiting)");
    println!(
        "{:<24} {:>10} {:>10} {:>12} {:>12}",
        "", "MB", "wall s", "CPU ms/MB", "MB/s"
    );
    for (label, bytes, wall, cpu) in [
        ("unshaped (ideal)", plain_bytes, plain_wall, plain_cpu),
        ("shaped (d2d-urban)", shaped_bytes, shaped_wall, shaped_cpu),
    ] {
        println!(
            "{label:<24} {:>10.1} {:>10.2} {:>12.2} {:>12.1}",
            mb(bytes),
            wall.as_secs_f64(),
            cpu.as_secs_f64() * 1e3 / mb(bytes).max(1e-9),
            mb(bytes) / wall.as_secs_f64()
        );
    }
    println!("(CPU: both ends of the stream in this process; shaped bytes are those the radio delivered)");
    Ok(())
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
