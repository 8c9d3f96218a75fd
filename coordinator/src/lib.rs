//! The WDML coordinator: round synchronisation and membership, nothing else.
//!
//! Nodes [`Join`](wdml_proto::JoinRequest) with their id and advertised address, open
//! a long-lived `Sync` stream, and from then on the coordinator only says *when*: it
//! starts each round with a fresh token and the node's neighbours, waits at the
//! barrier for every live node's `Done` (or the round deadline), and marks a node
//! gone when its stream breaks or its heartbeats stop. No prediction or parameter
//! ever passes through it. It writes the run directory from the `Done` reports.
//!
//! [`run`] is the whole process: serve, drive the rounds, write the report, stop.

mod config;
mod error;
mod members;
mod report;
mod rounds;
mod service;
mod table;

pub use config::Config;
pub use error::{Error, Result};
pub use report::{MembershipEventRecord, MetricsRow, NodeSummary, Summary};
pub use table::bytes;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_stream::wrappers::TcpListenerStream;
use tracing::info;
use wdml_proto::coordinator_server::CoordinatorServer;

/// Runs the coordinator on an already bound listener until the run is over or
/// `shutdown` completes; returns the run's summary (also written to the run directory).
pub async fn run(config: Config, listener: TcpListener, shutdown: impl Future<Output = ()>) -> Result<Summary> {
    config.validate()?;
    let addr = listener.local_addr()?;
    let shared = Arc::new(service::Shared::new(config)?);
    let server_shared = shared.clone();
    let (stop_server, server_stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(CoordinatorServer::new(service::CoordinatorService::new(server_shared)))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                server_stopped.await.ok();
            })
            .await
    });
    info!(%addr, "coordinator serving");
    let reaper = tokio::spawn(service::reap_silent_members(shared.clone()));

    let outcome = tokio::select! {
        outcome = rounds::drive(shared.clone()) => outcome,
        () = shutdown => {
            info!("shutdown requested: ending the run early");
            Ok(rounds::Ending::Interrupted("coordinator shut down".into()))
        }
    };
    let summary = rounds::finish(&shared, outcome).await;
    reaper.abort();
    let _ = stop_server.send(());
    // Streams end with the run; a client that never hangs up must not keep us here.
    match tokio::time::timeout(std::time::Duration::from_secs(5), server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!("coordinator server ended with an error: {e}"),
        Ok(Err(e)) => tracing::warn!("coordinator server task failed: {e}"),
        Err(_) => tracing::warn!("connections still open 5 s after the run; stopping anyway"),
    }
    summary
}
