//! `wdml node`

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use wdml_node::model::ModelSpec;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// This node's id (0-based); it also selects the node's data shard.
    #[arg(long, env = "WDML_NODE_ID")]
    id: u32,
    /// The model: "mlp", "mlp:256,128", "cnn", "cnn:16,32,128", …; it must be the
    /// scenario's model for this id (default: whatever the scenario gives this id).
    #[arg(long, env = "WDML_MODEL")]
    model: Option<ModelSpec>,
    /// The coordinator's host:port.
    #[arg(long, env = "WDML_COORDINATOR", default_value = "127.0.0.1:7000")]
    coordinator: String,
    /// Address the peer service listens on (port 0: any free port).
    #[arg(long, env = "WDML_LISTEN", default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// host:port the other nodes dial (default: the bound address).
    #[arg(long, env = "WDML_ADVERTISE")]
    advertise: Option<String>,
    /// Directory of IDX files, overriding the run's data.dir on this machine.
    #[arg(long, env = "WDML_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Threads for the model's linear algebra; keep 1 when nodes share a machine.
    #[arg(long, env = "WDML_THREADS", default_value_t = 1)]
    threads: usize,
    /// Seconds to keep trying to reach the coordinator, at start and after a break.
    #[arg(long, env = "WDML_COORDINATOR_TIMEOUT_S", default_value_t = 60)]
    coordinator_timeout_s: u64,
    /// Directory for this node's checkpoint, written after every round it reports; a
    /// node started again with it resumes from there. None: no checkpoints.
    #[arg(long, env = "WDML_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Also append the log to this file (e.g. into the run directory from a container).
    #[arg(long, env = "WDML_LOG_FILE", value_name = "FILE")]
    log_file: Option<PathBuf>,
    /// Stay up when the run is over (finished or not) until SIGTERM or ctrl-c, instead of
    /// exiting: for Kubernetes, which restarts a StatefulSet's pod that exits.
    #[arg(long, env = "WDML_LINGER", value_parser = clap::builder::BoolishValueParser::new())]
    linger: bool,
    #[command(flatten)]
    tls: crate::cli::TlsArgs,
    /// Fault injection, for tests: the round worker panics in round N.
    #[arg(long, hide = true, value_name = "N")]
    fault_panic_at_round: Option<u32>,
}

pub fn main(args: Args) -> Result<ExitCode> {
    if args.threads == 0 {
        anyhow::bail!("--threads must be at least 1");
    }
    // Candle and rayon read this once, at their first parallel operation; set it
    // before any thread exists.
    // SAFETY: no other thread is running yet.
    unsafe { std::env::set_var("RAYON_NUM_THREADS", args.threads.to_string()) };
    crate::cli::init_tracing(args.log_file.as_deref())?;
    let security = args.tls.security(wdml_transport::Identity::Node(args.id))?;
    let config = wdml_node::Config {
        id: args.id,
        model: args.model,
        coordinator: args.coordinator,
        advertise: args.advertise,
        data_dir: args.data_dir,
        coordinator_timeout: Duration::from_secs(args.coordinator_timeout_s),
        security,
        state_dir: args.state_dir,
        panic_at_round: args.fault_panic_at_round,
        external: None,
    };
    let runtime = wdml_node::runtime::tokio_runtime()?;
    runtime.block_on(async {
        let listener = crate::cli::bind(args.listen, "--listen").await?;
        crate::cli::announce_listening(listener.local_addr()?);
        let outcome = wdml_node::run(config, listener, crate::cli::shutdown_signal()).await?;
        let complete = match outcome {
            wdml_node::Outcome::Complete(complete) => complete,
            wdml_node::Outcome::Left(reason) => {
                eprintln!("left the run: {reason}");
                return Ok(ExitCode::SUCCESS);
            }
            wdml_node::Outcome::Shutdown => return Ok(ExitCode::SUCCESS),
        };
        if !complete.finished {
            eprintln!("the run ended early: {}", complete.reason);
        }
        if args.linger {
            tracing::info!("the run is over; waiting to be stopped (--linger)");
            crate::cli::shutdown_signal().await;
        }
        Ok(if complete.finished {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    })
}
