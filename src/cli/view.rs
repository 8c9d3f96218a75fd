//! `wdml view DIR`: the dashboard of a run that is over, served from its run directory
//! (the same page, JSON API and /metrics the coordinator serves live), or of a
//! comparison (`wdml compare`'s output directory: the algorithms side by side).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use wdml_coordinator::dashboard::{Access, Source, router};
use wdml_transport::{self as transport, Identity, Limits, Security};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The run directory (holding summary.json and metrics.jsonl), or a comparison's
    /// (holding one run directory per algorithm).
    run_dir: PathBuf,
    /// Address to serve on; port 0: any free port.
    #[arg(long, env = "WDML_HTTP", default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    /// The certificates to serve HTTPS with (the coordinator's); default: the
    /// directory's tls/ (where `wdml run` and `wdml compare` keep them).
    #[arg(long, value_name = "DIR")]
    tls_dir: Option<PathBuf>,
    /// Serve plain HTTP (the pages are read-only; use it on loopback only).
    #[arg(long)]
    insecure: bool,
    /// Serve it to anyone who reaches the port, without the run's dashboard token (a
    /// demo; said loudly). By default it asks for RUN_DIR/dashboard.token.
    #[arg(long, env = "WDML_DASHBOARD_PUBLIC", value_parser = clap::builder::BoolishValueParser::new())]
    dashboard_public: bool,
}

pub fn main(args: Args) -> Result<ExitCode> {
    crate::cli::init_tracing(None)?;
    let source = match args.run_dir.join("summary.json").exists() {
        true => Source::dir(&args.run_dir),
        false => Source::compare(&args.run_dir),
    };
    // Refused now, not at the first request: a directory that holds no run.
    let view = source
        .view()
        .with_context(|| format!("{} holds no finished run", args.run_dir.display()))?;
    if view.run.kind == "compare" && view.compare.is_empty() {
        anyhow::bail!(
            "{} holds no finished run (no summary.json) and no comparison (no run directory named after an algorithm)",
            args.run_dir.display()
        );
    }
    let security = if args.insecure {
        transport::warn_insecure("this dashboard");
        Security::Insecure
    } else {
        let dir = args.tls_dir.clone().unwrap_or_else(|| args.run_dir.join("tls"));
        Security::from_dir(&dir, Identity::Coordinator)
            .context("HTTPS needs the coordinator's certificate (--tls-dir), or --insecure")?
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let access = crate::cli::dashboard_access(&args.run_dir, args.dashboard_public)?;
    runtime.block_on(serve(source, args.http, security, access))?;
    Ok(ExitCode::SUCCESS)
}

/// Serves `source`'s dashboard on `address` (announced on stdout) until SIGTERM or
/// ctrl-c: `wdml view`, and a coordinator that lingers on a finished run.
pub(crate) async fn serve(source: Source, address: SocketAddr, security: Security, access: Access) -> Result<()> {
    let listener = crate::cli::bind(address, "--http").await?;
    let url = crate::cli::announce_dashboard(listener.local_addr()?, security.is_tls(), &access);
    tracing::info!("dashboard on {url} until stopped");
    transport::serve_web(
        router(source, access),
        listener,
        security,
        Limits::web(),
        crate::cli::shutdown_signal(),
    )
    .await?;
    Ok(())
}
