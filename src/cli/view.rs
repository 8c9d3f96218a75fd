//! `wdml view RUN_DIR`: the dashboard of a run that is over, served from its run
//! directory (the same page, JSON API and /metrics the coordinator serves live).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use wdml_coordinator::dashboard::{Source, router};
use wdml_proto::transport::{self, Identity, Limits, Security};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The run directory (holding summary.json and metrics.jsonl).
    run_dir: PathBuf,
    /// Address to serve on; port 0: any free port.
    #[arg(long, env = "WDML_HTTP", default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    /// The certificates to serve HTTPS with (the coordinator's); default: the run
    /// directory's tls/ (where `wdml run` keeps them).
    #[arg(long, value_name = "DIR")]
    tls_dir: Option<PathBuf>,
    /// Serve plain HTTP (the pages are read-only; use it on loopback only).
    #[arg(long)]
    insecure: bool,
}

pub fn main(args: Args) -> Result<ExitCode> {
    crate::cli::init_tracing(None)?;
    let source = Source::dir(&args.run_dir);
    // Refused now, not at the first request: a directory that holds no run.
    source
        .view()
        .with_context(|| format!("{} holds no finished run", args.run_dir.display()))?;
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
    runtime.block_on(async {
        let listener = crate::cli::bind(args.http, "--http").await?;
        crate::cli::announce_dashboard(listener.local_addr()?, security.is_tls());
        transport::serve_web(
            router(source),
            listener,
            security,
            Limits::default(),
            crate::cli::shutdown_signal(),
        )
        .await?;
        Ok(ExitCode::SUCCESS)
    })
}
