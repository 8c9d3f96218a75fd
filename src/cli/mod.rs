//! Command-line glue: parse the arguments, set up logging, build a config, call the
//! library's `run(config, shutdown)`.

mod bench;
mod compare;
mod coordinator;
mod health;
mod launcher;
mod node;
mod plot;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// Wireless deep mutual learning: devices that learn together by sharing
/// predictions over emulated device-to-device radio.
#[derive(Debug, Parser)]
#[command(name = "wdml", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run an experiment on this machine: a coordinator and every node as child
    /// processes on loopback (the default command: the quickstart).
    Run(launcher::Args),
    /// Run the round coordinator.
    Coordinator(coordinator::Args),
    /// Run one node (one device).
    Node(node::Args),
    /// Run a scenario under dml and local with the same seed and print the figures:
    /// round time split, bytes per round, final accuracies.
    Bench(bench::Args),
    /// Run a scenario under several algorithms (local, fedavg, dml) with the same
    /// seeds and write the comparison: tables, plots, cost to a target accuracy.
    Compare(compare::Args),
    /// Exit 0 if a coordinator or node answers gRPC at host:port (container healthchecks).
    Health(health::Args),
}

pub fn main(cli: Cli) -> ExitCode {
    let command = cli.command.unwrap_or_else(|| Command::Run(launcher::Args::default()));
    let result = match command {
        Command::Run(args) => launcher::main(args),
        Command::Coordinator(args) => {
            init_tracing();
            coordinator::main(args)
        }
        Command::Node(args) => node::main(args),
        Command::Bench(args) => bench::main(args),
        Command::Compare(args) => compare::main(args),
        Command::Health(args) => health::main(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr; `RUST_LOG` filters (default: info).
pub(crate) fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

/// Completes on ctrl-c or SIGTERM, whichever comes first.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// The line a server prints on stdout once it listens, for the launcher and tests.
pub(crate) fn announce_listening(addr: std::net::SocketAddr) {
    use std::io::Write;
    let mut out = std::io::stdout();
    let _ = writeln!(out, "listening on {addr}");
    let _ = out.flush();
}
