//! `wdml coordinator`

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Result;
use wdml_coordinator::dashboard::Source;
use wdml_transport::Security;

use crate::scenario::Scenario;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Scenario file (TOML); default: the built-in quickstart.
    #[arg(long, env = "WDML_CONFIG")]
    config: Option<PathBuf>,
    /// Override a scenario field, e.g. --set run.rounds=20 (repeatable).
    #[arg(long = "set", value_name = "FIELD=VALUE", env = "WDML_SET", value_delimiter = ';')]
    overrides: Vec<String>,
    /// Address to listen on.
    #[arg(long, env = "WDML_LISTEN", default_value = "0.0.0.0:7000")]
    listen: SocketAddr,
    /// Run directory: journal.jsonl, config.json, metrics.jsonl, summary.json, report.md.
    /// One that holds an unfinished run (the coordinator stopped or crashed) is
    /// resumed at its next round; a finished one is refused (see --overwrite).
    #[arg(long, env = "WDML_OUT", default_value = "runs/latest")]
    out: PathBuf,
    /// Replace a finished run in --out instead of refusing.
    #[arg(long, env = "WDML_OVERWRITE", value_parser = clap::builder::BoolishValueParser::new())]
    overwrite: bool,
    /// Serve the run's read-only dashboard (its page, JSON API and Prometheus /metrics)
    /// on this address: HTTPS with the coordinator's certificate, or HTTP with
    /// --insecure. Port 0: any free port. None: no dashboard.
    #[arg(long, env = "WDML_HTTP", value_name = "ADDR")]
    http: Option<SocketAddr>,
    /// Also append the log to this file (e.g. into the run directory from a container).
    #[arg(long, env = "WDML_LOG_FILE", value_name = "FILE")]
    log_file: Option<PathBuf>,
    /// Stay up when the run is over, serving its dashboard (--http) until SIGTERM or
    /// ctrl-c; and, started on a finished run in --out, serve that run instead of
    /// refusing it. For Kubernetes, which restarts a Deployment's pod that exits.
    #[arg(long, env = "WDML_LINGER", value_parser = clap::builder::BoolishValueParser::new())]
    linger: bool,
    /// Serve the dashboard to anyone who reaches its port, without its token (a demo;
    /// said loudly). By default it asks for the token in `OUT/dashboard.token`.
    #[arg(long, env = "WDML_DASHBOARD_PUBLIC", value_parser = clap::builder::BoolishValueParser::new())]
    dashboard_public: bool,
    #[command(flatten)]
    tls: crate::cli::TlsArgs,
}

pub fn main(args: Args) -> Result<ExitCode> {
    crate::cli::init_tracing(args.log_file.as_deref())?;
    let security = args.tls.security(wdml_transport::Identity::Coordinator)?;
    if args.linger && !args.overwrite && wdml_coordinator::holds_finished_run(&args.out)? {
        tracing::info!(
            "{} holds a finished run: serving it (--linger), not running it again",
            args.out.display()
        );
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(linger(&args, security))?;
        return Ok(ExitCode::SUCCESS);
    }
    let scenario = Scenario::load(args.config.as_deref(), &args.overrides)?;
    scenario.preflight()?;
    let config = scenario.coordinator_config(args.out.clone(), security, args.overwrite)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    // The ports first: one in use is refused before the run directory is touched (a
    // coordinator that wrote its journal and then found its port taken left a run that
    // never began, which the retry then "resumed").
    let (listener, web) = runtime.block_on(async {
        let listener = crate::cli::bind(args.listen, "--listen").await?;
        let web = match args.http {
            Some(address) => Some(crate::cli::bind(address, "--http").await?),
            None => None,
        };
        anyhow::Ok((listener, web))
    })?;
    // The run directory is checked (and a journal replayed) before anything is announced.
    let run = wdml_coordinator::open(config)?;
    if run.resumed() {
        tracing::warn!("resuming the unfinished run in {}", args.out.display());
    }
    runtime.block_on(async {
        crate::cli::announce_listening(listener.local_addr()?);
        let web = match web {
            Some(web) => {
                let access = crate::cli::dashboard_access(&args.out, args.dashboard_public)?;
                let url = crate::cli::announce_dashboard(web.local_addr()?, !args.tls.insecure, &access);
                tracing::info!("dashboard on {url}");
                Some(((web, access), url))
            }
            None => None,
        };
        let (web, url) = web.unzip();
        let stopped = Arc::new(AtomicBool::new(false));
        let signal = {
            let stopped = stopped.clone();
            async move {
                crate::cli::shutdown_signal().await;
                stopped.store(true, Ordering::Relaxed);
            }
        };
        let summary = run.serve(listener, web, signal).await?;
        // The table goes to stdout only: in a container, stdout and the log share one
        // stream, and it is printed once. The launcher stops reading our stdout after
        // the first line, so a closed pipe is not an error here (report.md has it too).
        tracing::info!(
            finished = summary.finished,
            rounds = summary.rounds_closed,
            "run over ({}); table in {}",
            summary.reason,
            args.out.join("report.md").display()
        );
        // The picture is a convenience: a run whose figure cannot be written still
        // finished, and its metrics are on disk.
        let title = format!("{} ({})", summary.run_id, summary.algorithm);
        if let Err(e) = crate::cli::plot::write_run_figure(&args.out, &title) {
            tracing::warn!("no rounds.svg: {e:#}");
        }
        if let Err(e) = crate::cli::plot::write_positions_figure(&args.out, &title) {
            tracing::warn!("no positions.svg: {e:#}");
        }
        if let Err(e) = crate::cli::plot::write_split_figure(&args.out) {
            tracing::warn!("no split.svg: {e:#}");
        }
        let _ = writeln!(std::io::stdout(), "{}", summary.table());
        // Stopped by a signal: stop, lingering or not. The dashboard serves on for as
        // long as the process lives.
        if args.linger && !stopped.load(Ordering::Relaxed) {
            match url {
                Some(url) => tracing::info!("the run is over; its dashboard stays on {url} until stopped (--linger)"),
                None => tracing::info!("the run is over; waiting to be stopped (--linger)"),
            }
            crate::cli::shutdown_signal().await;
        }
        Ok(if summary.finished {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    })
}

/// `--linger` on a finished run in `--out`: its dashboard served read-only on `--http`
/// (as `wdml view` serves it), until SIGTERM or ctrl-c. Nothing listens for nodes: a
/// node that asks to join is refused by its connection, and gives up after its
/// `--coordinator-timeout-s`.
async fn linger(args: &Args, security: Security) -> Result<()> {
    match args.http {
        Some(address) => {
            let access = crate::cli::dashboard_access(&args.out, args.dashboard_public)?;
            crate::cli::view::serve(Source::dir(&args.out), address, security, access).await
        }
        None => {
            crate::cli::shutdown_signal().await;
            Ok(())
        }
    }
}
