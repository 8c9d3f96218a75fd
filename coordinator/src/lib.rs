//! The WDML coordinator: round synchronisation and membership, nothing else.
//!
//! Nodes [`Join`](wdml_proto::JoinRequest) with their id and advertised address (over
//! mutual TLS, their certificate naming their id), open a long-lived `Sync` stream, and
//! from then on the coordinator only says *when*: it starts each round with a fresh
//! token and the node's neighbours, waits at the barrier for every live node's `Done`
//! (or the deadline), and marks a node gone when its stream breaks or its heartbeats
//! stop. No prediction or parameter ever passes through it. It writes the run
//! directory from the `Done` reports, journalled so that a restarted coordinator
//! resumes the run where it stopped.
//!
//! [`run`] is the whole process: serve, drive the rounds, write the report, stop.

mod barrier;
mod config;
mod curve;
pub mod dashboard;
mod error;
mod journal;
mod members;
pub mod metrics;
mod report;
mod rounds;
mod service;
mod state;
mod table;

pub use config::{Config, MAX_TIMEOUT};
pub use curve::{CurvePoint, curve};
pub use error::{Error, Result};
pub use members::MembershipEvent;
pub use report::{
    ChannelRecord, Decisions, LinkRecord, LinksRecord, MembershipEventRecord, MetricsRow, NodeSplit, NodeSummary,
    Outage, POLICY_FILE, PublicOverlap, SenderDecision, SplitRecord, Summary,
};
pub use table::{bytes, joules, seconds};

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tracing::info;
use wdml_proto::coordinator_server::CoordinatorServer;
use wdml_transport::{self as transport, Limits};

/// Runs the coordinator on an already bound listener until the run is over or
/// `shutdown` completes; returns the run's summary (also written to the run directory).
/// A run directory whose journal records an unfinished run is resumed at its next round.
pub async fn run(config: Config, listener: TcpListener, shutdown: impl Future<Output = ()>) -> Result<Summary> {
    open(config)?.serve(listener, None, shutdown).await
}

/// A run whose configuration is checked and whose run directory is open (new, or
/// resumed from its journal), ready to serve: what can be refused is refused here,
/// before the process listens.
pub struct Run {
    config: Config,
    report: report::Report,
    recovered: Option<report::Recovered>,
}

/// Whether `run_dir`'s journal records a finished run (which [`open`] refuses unless
/// told to overwrite it).
pub fn holds_finished_run(run_dir: &std::path::Path) -> Result<bool> {
    let path = run_dir.join(journal::FILE);
    if !path.exists() {
        return Ok(false);
    }
    let (entries, _) = journal::read(&path)?;
    Ok(journal::finished(&entries))
}

/// Checks `config` and opens its run directory.
pub fn open(mut config: Config) -> Result<Run> {
    config.validate()?;
    let (report, recovered) = report::Report::open(&config)?;
    config.settings.run_instance = report.instance().to_string();
    Ok(Run {
        config,
        report,
        recovered,
    })
}

impl Run {
    /// Whether this run continues one its run directory's journal recorded.
    pub fn resumed(&self) -> bool {
        self.recovered.is_some()
    }

    /// Serves the run on `listener` until it is over or `shutdown` completes, and its
    /// read-only dashboard on `web` if given (HTTPS with the coordinator's certificate,
    /// or plain HTTP under `--insecure`), for as long as the process lives.
    pub async fn serve(
        self,
        listener: TcpListener,
        web: Option<(TcpListener, dashboard::Access)>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<Summary> {
        let Run {
            config,
            report,
            recovered,
        } = self;
        let addr = listener.local_addr()?;
        let start = match &recovered {
            Some(r) => rounds::Start {
                first_round: r.next_round,
                // Every member the run had: a crash leaves them running (they reconnect), a
                // stop made them leave (they are started again).
                expected: r.members.len().max(1),
                minimum: 1,
            },
            None => rounds::Start {
                first_round: 0,
                expected: config.settings.nodes as usize,
                minimum: config.min_nodes as usize,
            },
        };
        let security = config.security.clone();
        let shared = Arc::new(state::Shared::new(config, report, recovered.as_ref()));
        let (stop_server, server_stopped) = oneshot::channel::<()>();
        let router =
            transport::server().add_service(CoordinatorServer::new(service::CoordinatorService::new(shared.clone())));
        let server = tokio::spawn(transport::serve(router, listener, security, Limits::members(), async {
            server_stopped.await.ok();
        }));
        info!(%addr, "coordinator serving");
        if let Some((web, access)) = web {
            let router = dashboard::router(dashboard::Source::live(shared.clone()), access);
            let security = shared.config.security.clone();
            tokio::spawn(async move {
                if let Err(e) = transport::serve_web(router, web, security, Limits::web(), std::future::pending()).await
                {
                    tracing::warn!("the dashboard stopped: {e}");
                }
            });
        }
        let reaper = tokio::spawn(state::reap_silent_members(shared.clone()));
        let prober = tokio::spawn(state::probe_unreachable(shared.clone()));

        let outcome = tokio::select! {
            outcome = rounds::drive(shared.clone(), start) => outcome,
            () = shutdown => {
                info!("shutdown requested: ending the run early");
                Ok(rounds::Ending::Interrupted("the coordinator was stopped".into()))
            }
        };
        let summary = rounds::finish(&shared, outcome).await;
        reaper.abort();
        prober.abort();
        let _ = stop_server.send(());
        // Every stream ends with the run (watchers right after RunFinished, nodes' Sync
        // streams when they are closed); a client that never hangs up must not keep us here.
        match tokio::time::timeout(std::time::Duration::from_secs(5), server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!("coordinator server ended with an error: {e}"),
            Ok(Err(e)) => tracing::warn!("coordinator server task failed: {e}"),
            Err(_) => tracing::warn!("connections still open 5 s after the run; stopping anyway"),
        }
        summary
    }
}
