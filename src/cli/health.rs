//! `wdml health`: does a WDML gRPC server answer at `host:port`? For container
//! healthchecks — the image is built `FROM scratch`, with no shell and no curl.
//!
//! It dials the address (TCP, the TLS handshake with this process's certificate, and
//! HTTP/2) and makes one `Watch` call. A coordinator answers with a stream; a node's
//! peer service answers `UNIMPLEMENTED` (it serves only `PeerExchange`), which still
//! proves a gRPC server is up. Anything else — refused, unresolvable, a certificate
//! that is not the expected one, no answer within the timeout — exits 1 with the reason.
//!
//! In a container the defaults come from the environment: `WDML_TLS_DIR` for the
//! certificates, and `WDML_NODE_ID` (set in a node's container) for who to expect at
//! the address and who to be.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tonic::Code;
use wdml_proto::{WatchRequest, coordinator_client::CoordinatorClient};
use wdml_transport::{Identity, Security};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// host:port of a coordinator or of a node's peer service, e.g. 127.0.0.1:7000.
    address: String,
    /// Give up after this many milliseconds.
    #[arg(long, default_value_t = 2000)]
    timeout_ms: u64,
    /// Require a coordinator: a node's peer service does not count.
    #[arg(long, conflicts_with = "node")]
    coordinator: bool,
    /// Expect node K's peer service at the address (default: the coordinator).
    #[arg(long, env = "WDML_NODE_ID", value_name = "K")]
    node: Option<u32>,
    /// Whose certificate to present: coordinator, observer or node-<id> (default:
    /// node-K with --node, else coordinator).
    #[arg(long = "as", value_name = "IDENTITY")]
    identity: Option<Identity>,
    #[command(flatten)]
    tls: crate::cli::TlsArgs,
}

/// What answered at the address.
#[derive(Debug, PartialEq)]
enum Answer {
    Coordinator,
    OtherGrpcServer,
}

pub fn main(args: Args) -> Result<ExitCode> {
    let timeout = Duration::from_millis(args.timeout_ms.max(1));
    let server = match (args.coordinator, args.node) {
        (false, Some(k)) => Identity::Node(k),
        _ => Identity::Coordinator,
    };
    let me = args.identity.unwrap_or(server);
    let security = args.tls.security(me)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let answer = runtime
        .block_on(async { tokio::time::timeout(timeout, probe(&args.address, &security, server, timeout)).await });
    let answer = match answer {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => {
            println!("unhealthy: {e:#}");
            return Ok(ExitCode::FAILURE);
        }
        Err(_) => {
            println!("unhealthy: {} did not answer within {timeout:?}", args.address);
            return Ok(ExitCode::FAILURE);
        }
    };
    match answer {
        Answer::Coordinator => println!("ok: the coordinator at {} answers", args.address),
        Answer::OtherGrpcServer if args.coordinator => {
            println!("unhealthy: {} answers gRPC but is not a coordinator", args.address);
            return Ok(ExitCode::FAILURE);
        }
        Answer::OtherGrpcServer => println!("ok: a gRPC server (a node's peer service) at {} answers", args.address),
    }
    Ok(ExitCode::SUCCESS)
}

async fn probe(address: &str, security: &Security, server: Identity, timeout: Duration) -> Result<Answer> {
    let endpoint = security
        .endpoint(address, server)
        .with_context(|| format!("{address:?} is not host:port"))?
        .connect_timeout(timeout)
        .timeout(timeout);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to {address}: {}", source_chain(&e)))?;
    match CoordinatorClient::new(channel).watch(WatchRequest {}).await {
        Ok(_stream) => Ok(Answer::Coordinator),
        Err(status) if status.code() == Code::Unimplemented => Ok(Answer::OtherGrpcServer),
        Err(status) if matches!(status.code(), Code::Cancelled | Code::DeadlineExceeded) => {
            bail!("{address} accepted the connection but gave no gRPC answer within {timeout:?}")
        }
        Err(status) => bail!("{address} answered {:?}: {}", status.code(), status.message()),
    }
}

/// "transport error: tcp connect error: Connection refused (os error 111)"
fn source_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
