//! Command-line glue: parse the arguments, set up logging, build a config, call the
//! library's `run(config, shutdown)`.

mod bench;
mod certs;
mod compare;
mod coordinator;
mod health;
mod launcher;
mod node;
mod plot;
mod privacy;
mod view;

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
    /// Attack a finished run as a curious neighbour would: estimate each node's private
    /// class histogram from what it sent (`privacy.audit`) and score the estimates
    /// against the truth and a blind guess, and with `data.public_overlap` tell its own
    /// rows among the public ones (membership); writes RUN_DIR/privacy.json.
    Privacy(privacy::Args),
    /// Write a run's certificates (a CA, the coordinator, an observer, each node) for
    /// processes started by hand; `wdml run` makes its own.
    Certs(certs::Args),
    /// Serve the dashboard of a finished (or stopped) run from its run directory.
    View(view::Args),
    /// Exit 0 if a coordinator or node answers gRPC at host:port (container healthchecks).
    Health(health::Args),
}

pub fn main(cli: Cli) -> ExitCode {
    let command = cli.command.unwrap_or_else(|| Command::Run(launcher::Args::default()));
    quiet_on_broken_pipe();
    // Read once for the whole process (and inherited by the nodes it starts): a bad
    // value is refused before any work, not met mid-run.
    if let Err(e) = wdml_node::model::kernels::Kernels::from_env() {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let result = match command {
        Command::Run(args) => launcher::main(args),
        Command::Coordinator(args) => coordinator::main(args),
        Command::Node(args) => node::main(args),
        Command::Bench(args) => bench::main(args),
        Command::Compare(args) => compare::main(args),
        Command::Certs(args) => certs::main(args),
        Command::Privacy(args) => privacy::main(args),
        Command::Health(args) => health::main(args),
        Command::View(args) => view::main(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => match e.downcast_ref::<launcher::Interrupted>() {
            // The conventional status of a process stopped by a signal: 128 + its number.
            Some(interrupted) => {
                eprintln!("{interrupted}");
                ExitCode::from((128 + interrupted.signal).clamp(0, 255) as u8)
            }
            None => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

/// `wdml … | head`: when the reader of our output goes away, end quietly with the
/// status of a process stopped by SIGPIPE (128 + 13), as other command-line tools do,
/// instead of a panic. (SIGPIPE itself stays ignored: every command also writes to
/// sockets, where a closed peer must be an error, not the end of the process.)
fn quiet_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("failed printing to std") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info)
    }));
}

/// Logs to stderr, and to `file` too when given (appended; e.g. a container's log into
/// the run directory); `RUST_LOG` filters (default: info). Colours only on a terminal,
/// and never with `NO_COLOR` set: a log file must stay greppable.
pub(crate) fn init_tracing(file: Option<&std::path::Path>) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    use tracing_subscriber::prelude::*;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .with_target(false);
    let file = match file {
        Some(path) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
            }
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| anyhow::anyhow!("--log-file {}: {e}", path.display()))?;
            Some(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::sync::Mutex::new(log))
                    .with_ansi(false)
                    .with_target(false),
            )
        }
        None => None,
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(stderr)
        .with(file)
        .init();
    Ok(())
}

/// Completes on ctrl-c or SIGTERM, whichever comes first.
pub(crate) async fn shutdown_signal() {
    signal().await;
}

/// Waits for ctrl-c (SIGINT) or SIGTERM; returns the signal's number.
pub(crate) async fn signal() -> i32 {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => {
                let _ = ctrl_c.await;
                return libc::SIGINT;
            }
        };
        tokio::select! {
            _ = ctrl_c => libc::SIGINT,
            _ = term.recv() => libc::SIGTERM,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
        2
    }
}

/// How a process secures its connections: mutual TLS with the run's certificates
/// (the default), or plaintext when asked for explicitly.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct TlsArgs {
    /// Directory of the run's certificates (made by `wdml certs`): ca.pem, and this
    /// process's own certificate and key (coordinator.pem, node-<id>.pem, …).
    #[arg(long, env = "WDML_TLS_DIR", value_name = "DIR")]
    pub tls_dir: Option<std::path::PathBuf>,
    /// Instead of --tls-dir, three files of any name: the run's CA certificate ...
    #[arg(long, env = "WDML_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// ... this process's certificate ...
    #[arg(long, env = "WDML_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// ... and its private key.
    #[arg(long, env = "WDML_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<std::path::PathBuf>,
    /// No encryption and no authentication: anyone who reaches the ports can read and
    /// forge messages. For debugging only.
    #[arg(long, env = "WDML_INSECURE", value_parser = clap::builder::BoolishValueParser::new())]
    pub insecure: bool,
}

impl TlsArgs {
    /// The security of a process that is `identity`; says loudly when it is none.
    pub fn security(&self, identity: wdml_transport::Identity) -> anyhow::Result<Security> {
        let files = [
            ("--tls-ca", &self.tls_ca),
            ("--tls-cert", &self.tls_cert),
            ("--tls-key", &self.tls_key),
        ];
        if files.iter().any(|(_, f)| f.is_some()) {
            if self.tls_dir.is_some() || self.insecure {
                anyhow::bail!(
                    "--tls-ca/--tls-cert/--tls-key and {} contradict each other: give one",
                    if self.insecure { "--insecure" } else { "--tls-dir" }
                );
            }
            if let (Some(ca), Some(cert), Some(key)) = (&self.tls_ca, &self.tls_cert, &self.tls_key) {
                return Ok(Security::from_files(ca, cert, key, identity)?);
            }
            let missing: Vec<&str> = files.iter().filter(|(_, f)| f.is_none()).map(|(n, _)| *n).collect();
            anyhow::bail!(
                "--tls-ca, --tls-cert and --tls-key go together: {} missing",
                missing.join(" and ")
            );
        }
        match (&self.tls_dir, self.insecure) {
            (Some(_), true) => anyhow::bail!("--tls-dir and --insecure contradict each other: give one"),
            (Some(dir), false) => Ok(Security::from_dir(dir, identity)?),
            (None, true) => {
                wdml_transport::warn_insecure(&format!("this {}", identity.stem()));
                Ok(Security::Insecure)
            }
            (None, false) => anyhow::bail!(
                "connections use mutual TLS: give --tls-dir DIR with the run's certificates \
                 (`wdml certs --out DIR --nodes N` makes them; DIR needs ca.pem and {0}.pem / {0}.key), \
                 or --insecure to run without (debugging only)",
                identity.stem()
            ),
        }
    }
}

use wdml_transport::Security;

/// Binds `address`; a port in use says so and suggests another.
pub(crate) async fn bind(address: std::net::SocketAddr, flag: &str) -> anyhow::Result<tokio::net::TcpListener> {
    match tokio::net::TcpListener::bind(address).await {
        Ok(listener) => Ok(listener),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => anyhow::bail!(
            "cannot listen on {address}: the port is in use (another wdml still running?); \
             pick another with {flag} {}:{}, or port 0 for any free one",
            address.ip(),
            address.port().wrapping_add(1).max(1)
        ),
        Err(e) => Err(anyhow::anyhow!("cannot listen on {address}: {e}")),
    }
}

/// The line a server prints on stdout once it listens, for the launcher and tests.
pub(crate) fn announce_listening(addr: std::net::SocketAddr) {
    use std::io::Write;
    let mut out = std::io::stdout();
    let _ = writeln!(out, "listening on {addr}");
    let _ = out.flush();
}

/// Who may read the dashboard of the run in `dir`: whoever has its token (made there
/// on first use), or, with `public` (`--dashboard-public`), anyone, said loudly.
pub(crate) fn dashboard_access(
    dir: &std::path::Path,
    public: bool,
) -> anyhow::Result<wdml_coordinator::dashboard::Access> {
    use wdml_coordinator::dashboard::Access;
    if public {
        let warning = "the dashboard is PUBLIC (--dashboard-public): anyone who reaches its port \
                       reads every node's address, the seed and every metric";
        eprintln!("WARNING: {warning}");
        tracing::warn!("{warning}");
        return Ok(Access::Public);
    }
    anyhow::Context::context(Access::token_in(dir), "the dashboard's token")
}

/// Prints `dashboard on URL` (the line after `listening on`, for the launcher): the URL
/// a person opens, with the token `access` asks for.
pub(crate) fn announce_dashboard(
    addr: std::net::SocketAddr,
    tls: bool,
    access: &wdml_coordinator::dashboard::Access,
) -> String {
    use std::io::Write;
    let url = access.url(&format!("{}://{addr}/", if tls { "https" } else { "http" }));
    let mut out = std::io::stdout();
    let _ = writeln!(out, "dashboard on {url}");
    let _ = out.flush();
    url
}
