//! The WDML transport: every connection WDML makes or accepts is built here, mutual TLS
//! by default (tonic and rustls, with the run CA's certificates naming each process),
//! plaintext only when the operator asks for it explicitly (`--insecure`). What travels
//! over it is `wdml-proto`'s business; this crate knows nothing of the messages.
//!
//! - Servers accept through [`serve`]: this crate's own accept loop, so that every TLS
//!   handshake has a deadline, the handshakes in flight and the connections held open
//!   are bounded ([`Limits`], sized from [`raise_open_files`]), and each connection
//!   carries the identity its certificate proves into the handlers ([`caller`]).
//! - Clients dial through [`Security::endpoint`], naming *who* they expect at the
//!   address (node 3, the coordinator): the server must present that identity's
//!   certificate, not merely any certificate of the run.
//!
//! Identities are DNS names in the certificate's subject alternative name:
//! `node-<id>.wdml`, `coordinator.wdml`, `observer.wdml` ([`Identity`]). The files of
//! a credentials directory are `ca.pem` and `<stem>.pem` / `<stem>.key` per identity,
//! as written by [`pki`] (`wdml certs`).

pub mod pki;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, Router};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tracing::{debug, warn};

/// Who a process is, as its certificate says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Identity {
    /// The round coordinator.
    Coordinator,
    /// A read-only watcher of the run (the launcher's progress, a dashboard).
    Observer,
    /// A device of the run.
    Node(u32),
}

/// The DNS suffix of every identity name.
const DOMAIN: &str = "wdml";

impl Identity {
    /// The name in the certificate, e.g. `node-3.wdml`.
    pub fn dns_name(self) -> String {
        format!("{}.{DOMAIN}", self.stem())
    }

    /// The file stem of its credentials, e.g. `node-3` (`node-3.pem`, `node-3.key`).
    pub fn stem(self) -> String {
        match self {
            Identity::Coordinator => "coordinator".into(),
            Identity::Observer => "observer".into(),
            Identity::Node(id) => format!("node-{id}"),
        }
    }

    /// The identity a certificate name stands for, if it is one of ours.
    pub fn from_dns_name(name: &str) -> Option<Self> {
        name.strip_suffix(&format!(".{DOMAIN}"))?.parse().ok()
    }

    /// The node id, for a node.
    pub fn node(self) -> Option<u32> {
        match self {
            Identity::Node(id) => Some(id),
            _ => None,
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.stem())
    }
}

impl FromStr for Identity {
    type Err = Error;

    /// `coordinator`, `observer` or `node-<id>`.
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "coordinator" => Ok(Identity::Coordinator),
            "observer" => Ok(Identity::Observer),
            _ => s
                .strip_prefix("node-")
                .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|id| id.parse().ok())
                .map(Identity::Node)
                .ok_or_else(|| Error::Identity(format!("{s:?} is not coordinator, observer or node-<id>"))),
        }
    }
}

/// What can go wrong setting up a connection.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A credentials file is missing or unreadable.
    #[error("TLS credentials {path}: {reason}")]
    Credentials { path: PathBuf, reason: String },
    /// Not an identity name.
    #[error("identity: {0}")]
    Identity(String),
    /// An address that cannot be dialled.
    #[error("address {address:?}: {reason}")]
    Address { address: String, reason: String },
    #[error("TLS: {0}")]
    Tls(String),
}

/// This process's certificate, key and the run CA, loaded once.
pub struct Credentials {
    identity: Identity,
    ca_pem: Vec<u8>,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    acceptor: TlsAcceptor,
    /// For the read-only web pages (the dashboard): the same certificate, a client
    /// certificate of the run CA taken if one is offered (an observer's proves who reads)
    /// but not required (a browser has none and shows the dashboard token instead),
    /// HTTP/1.1 or HTTP/2.
    web_acceptor: TlsAcceptor,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials").field("identity", &self.identity).finish()
    }
}

/// How a process connects: mutual TLS with its credentials, or plaintext.
#[derive(Clone, Debug)]
pub enum Security {
    Tls(Arc<Credentials>),
    /// No encryption, no authentication: for debugging only, and said loudly.
    Insecure,
}

impl Security {
    /// Loads `identity`'s credentials from `dir` (`ca.pem`, `<stem>.pem`, `<stem>.key`).
    pub fn from_dir(dir: &Path, identity: Identity) -> Result<Self, Error> {
        Self::from_files(
            &dir.join("ca.pem"),
            &dir.join(format!("{}.pem", identity.stem())),
            &dir.join(format!("{}.key", identity.stem())),
            identity,
        )
    }

    /// Loads `identity`'s credentials from three files of any name: the run's CA
    /// certificate, this process's certificate (which must name `identity`) and its key
    /// (e.g. each mounted from one Secret shared by many pods).
    pub fn from_files(ca: &Path, cert: &Path, key: &Path, identity: Identity) -> Result<Self, Error> {
        let read = |path: &Path| -> Result<(PathBuf, Vec<u8>), Error> {
            let path = path.to_path_buf();
            let bytes = wdml_files::read_bounded(&path, crate::pki::MAX_PEM_BYTES).map_err(|e| Error::Credentials {
                reason: match e.kind() {
                    io::ErrorKind::NotFound => "not found (make the run's certificates with `wdml certs`)".into(),
                    _ => e.to_string(),
                },
                path: path.clone(),
            })?;
            Ok((path, bytes))
        };
        let (ca_path, ca_pem) = read(ca)?;
        let (cert_path, cert_pem) = read(cert)?;
        let (key_path, key_pem) = read(key)?;
        let bad = |path: &Path, reason: String| Error::Credentials {
            path: path.to_path_buf(),
            reason,
        };
        let ca = CertificateDer::pem_slice_iter(&ca_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(&ca_path, format!("not a PEM certificate: {e}")))?;
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(&cert_path, format!("not a PEM certificate: {e}")))?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| bad(&key_path, format!("not a PEM key: {e}")))?;
        let Some(leaf) = chain.first() else {
            return Err(bad(&cert_path, "holds no certificate".into()));
        };
        match identity_of(leaf) {
            Some(named) if named == identity => {}
            Some(named) => return Err(bad(&cert_path, format!("names {named}, not {identity}"))),
            None => return Err(bad(&cert_path, "names no WDML identity".into())),
        }
        if ca.is_empty() {
            return Err(bad(&ca_path, "holds no certificate".into()));
        }
        let web_acceptor =
            web_acceptor(ca.clone(), chain.clone(), key.clone_key()).map_err(|e| bad(&cert_path, e.to_string()))?;
        let acceptor = acceptor(ca, chain, key).map_err(|e| bad(&cert_path, e.to_string()))?;
        Ok(Security::Tls(Arc::new(Credentials {
            identity,
            ca_pem,
            cert_pem,
            key_pem,
            acceptor,
            web_acceptor,
        })))
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Security::Tls(_))
    }

    /// Who this process is, when it has credentials.
    pub fn identity(&self) -> Option<Identity> {
        match self {
            Security::Tls(c) => Some(c.identity),
            Security::Insecure => None,
        }
    }

    /// An endpoint for `address` (`host:port`), at which `server` must answer. Lazily
    /// connected, with the keepalives every long-lived WDML connection needs: a cut link
    /// never closes a stream, HTTP/2 pings notice it within [`KEEPALIVE_INTERVAL`] +
    /// [`KEEPALIVE_TIMEOUT`]. Only the coordinator's connection is pinged while idle (it
    /// carries the node's Sync stream); a peer's is idle between exchanges, and with a
    /// full mesh those idle pings were N² wake-ups a second.
    pub fn endpoint(&self, address: &str, server: Identity) -> Result<Endpoint, Error> {
        self.endpoint_within(address, server, CONNECT_TIMEOUT)
    }

    /// [`Security::endpoint`] whose connection (TCP, then the TLS handshake) must come up
    /// within `connect`: a neighbour's link, whose every wait counts against a round.
    pub fn endpoint_within(&self, address: &str, server: Identity, connect: Duration) -> Result<Endpoint, Error> {
        let scheme = if self.is_tls() { "https" } else { "http" };
        let bad = |reason: String| Error::Address {
            address: address.to_string(),
            reason,
        };
        if address.contains("://") || address.contains('/') {
            return Err(bad("expected host:port, without a scheme or a path".into()));
        }
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))
            .map_err(|e| bad(e.to_string()))?
            .connect_timeout(connect)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(server == Identity::Coordinator)
            .tcp_nodelay(true);
        if let Security::Tls(c) = self {
            let tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&c.ca_pem))
                .identity(tonic::transport::Identity::from_pem(&c.cert_pem, &c.key_pem))
                .domain_name(server.dns_name())
                .timeout(connect.min(HANDSHAKE_TIMEOUT));
            endpoint = endpoint.tls_config(tls).map_err(|e| bad(e.to_string()))?;
        }
        Ok(endpoint)
    }

    /// A lazily connected channel to `server` at `address` ([`Security::endpoint`]).
    /// The coordinator's also ends when the link is cut ([`LINK_TIMEOUT`]).
    pub fn connect_lazy(&self, address: &str, server: Identity) -> Result<Channel, Error> {
        let endpoint = self.endpoint(address, server)?;
        if server != Identity::Coordinator {
            return Ok(endpoint.connect_lazy());
        }
        // tonic's own connector, as its Endpoint builds it, plus the user timeout.
        let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        #[cfg(target_os = "linux")]
        http.set_tcp_user_timeout(Some(LINK_TIMEOUT));
        Ok(endpoint.connect_with_connector_lazy(http))
    }
}

/// Sent data that the coordinator's kernel has not acknowledged for this long ends the
/// node's connection to it (`TCP_USER_TIMEOUT`, Linux). A node writes a heartbeat to
/// that connection every heartbeat interval, so a cut link (a laptop off the Wi-Fi, a
/// container moved to another address) is noticed within this time, and the node joins
/// again; without it, only the HTTP/2 keepalive below notices, within 25 s. The kernel
/// acknowledges for a process that waits for a core, so a loaded machine does not trip
/// it, as it tripped the 2 s keepalive. Peer links do not get it: a receiver that does
/// not read for this long (its window full) would end them too.
pub const LINK_TIMEOUT: Duration = Duration::from_secs(10);

/// HTTP/2 keepalive: a ping after this long without a frame (clients; servers ping
/// after twice as long) ...
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// ... and the connection is dead when the answer takes longer than this. Measured: at
/// 1 s / 2 s (clients) and 2 s / 5 s (servers), 128 full-mesh nodes on 2 cores (load
/// above 100) broke hundreds of streams in the first round ("http2 error"), and 256
/// lost their coordinator streams; a process on such a machine can wait seconds for
/// a core. A link that is really cut is still noticed within 25 s.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a client waits for TCP to connect, and either side for a TLS handshake
/// to complete. Measured: at 2 s and 5 s, 128 full-mesh nodes on 2 cores, all dialling
/// their neighbours at the first round's start, lost dozens of connections (each a
/// message lost for the whole round) while tens of thousands of handshakes queued for
/// two cores. A stalled handshake still holds one of a bounded set of slots, and the
/// oldest is evicted when they run out ([`Limits`]).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A neighbour's connect deadline as `RunSettings.connect_timeout_ms` gives it: 0 is
/// the transport's own [`CONNECT_TIMEOUT`]. The nodes and the coordinator's probe
/// read it alike.
pub fn peer_connect_timeout(ms: u32) -> Duration {
    match ms {
        0 => CONNECT_TIMEOUT,
        ms => Duration::from_millis(u64::from(ms)),
    }
}
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The identity a certificate names, if it names exactly one of ours.
pub fn identity_of(cert: &CertificateDer<'_>) -> Option<Identity> {
    let cert = webpki::EndEntityCert::try_from(cert).ok()?;
    let mut names = cert.valid_dns_names().filter_map(Identity::from_dns_name);
    match (names.next(), names.next()) {
        (Some(identity), None) => Some(identity),
        _ => None,
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server side of mutual TLS: only clients with a certificate from `ca` get in.
fn acceptor(
    ca: Vec<CertificateDer<'static>>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<TlsAcceptor, Error> {
    server_config(ca, chain, key, false, &[b"h2"])
}

/// The server side of the web pages' TLS: the server proves who it is; a client may
/// prove who it is with a certificate of the run CA (checked as the members' are), or
/// offer none and show the dashboard's token in the request instead.
fn web_acceptor(
    ca: Vec<CertificateDer<'static>>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<TlsAcceptor, Error> {
    server_config(ca, chain, key, true, &[b"h2", b"http/1.1"])
}

/// TLS 1.3 with this process's `chain` and `key`, client certificates checked against
/// `ca` (required, or `optional`), speaking `alpn`.
fn server_config(
    ca: Vec<CertificateDer<'static>>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    optional: bool,
    alpn: &[&[u8]],
) -> Result<TlsAcceptor, Error> {
    let mut roots = RootCertStore::empty();
    for cert in ca {
        roots
            .add(cert)
            .map_err(|e| Error::Tls(format!("the CA certificate: {e}")))?;
    }
    let mut verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
    if optional {
        verifier = verifier.allow_unauthenticated();
    }
    let verifier = verifier.build().map_err(|e| Error::Tls(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| Error::Tls(format!("the certificate and key do not go together: {e}")))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// What a handler knows about the connection a request came on.
#[derive(Clone, Debug, Default)]
pub struct Caller {
    pub remote: Option<SocketAddr>,
    /// The identity the client's certificate proves; `None` on a plaintext connection.
    pub identity: Option<Identity>,
}

/// The caller of `request` (as [`serve`] accepted its connection).
pub fn caller<T>(request: &tonic::Request<T>) -> Caller {
    request.extensions().get::<Caller>().cloned().unwrap_or_default()
}

impl Caller {
    /// Whether the caller proved who it is.
    pub fn is_authenticated(&self) -> bool {
        self.identity.is_some()
    }

    /// A refusal for this caller: the precise `detail` for an authenticated member of
    /// the run; nothing about the run for anyone else (the detail goes to the log).
    pub fn refuse(&self, code: tonic::Code, detail: impl Into<String>) -> tonic::Status {
        let detail = detail.into();
        if self.is_authenticated() {
            tonic::Status::new(code, detail)
        } else {
            warn!(remote = ?self.remote, code = ?code, "refused an unauthenticated caller: {detail}");
            tonic::Status::new(code, "refused")
        }
    }

    /// Refuses the caller unless it is `expected` (on a plaintext connection anyone is
    /// taken at its word, since nobody can prove anything).
    pub fn require(&self, expected: Identity) -> Result<(), tonic::Status> {
        match self.identity {
            None => Ok(()),
            Some(identity) if identity == expected => Ok(()),
            Some(identity) => Err(self.refuse(
                tonic::Code::PermissionDenied,
                format!("this connection's certificate is {identity}'s, not {expected}'s"),
            )),
        }
    }
}

/// Bounds on what clients may hold open on a server.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// TLS handshakes pending at once; a new connection beyond them evicts the oldest.
    pub handshakes: usize,
    /// Open connections per identity (or per plaintext server, in all).
    pub per_identity: usize,
    /// Open connections in all.
    pub connections: usize,
}

/// The open-file limit every cap here is sized from ([`raise_open_files`]); Linux's
/// usual soft limit until then.
static OPEN_FILES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1024);

/// Raises this process's open-file soft limit to its hard limit (Linux starts
/// processes at 1,024 while allowing far more) and returns it; every listener's caps
/// ([`Limits::members`], [`Limits::web`]) are then sized from it. Measured before: at
/// 1,024, 1,006 dashboard connections took every descriptor of a coordinator, and
/// nodes could no longer rejoin nor the summary be written.
pub fn raise_open_files() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write only the struct passed.
    let raised = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return OPEN_FILES.load(std::sync::atomic::Ordering::Relaxed);
        }
        let wanted = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        match libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) {
            0 => limit.rlim_max,
            _ => limit.rlim_cur,
        }
    };
    // rlim_t is u64 on Linux.
    #[allow(clippy::useless_conversion)]
    let raised = u64::try_from(raised).unwrap_or(u64::MAX);
    OPEN_FILES.store(raised, std::sync::atomic::Ordering::Relaxed);
    raised
}

impl Limits {
    /// For a members' listener (the coordinator's, a node's peer server): half the
    /// open files, the rest kept for the web listener, outgoing connections, the run
    /// directory and the data.
    pub fn members() -> Limits {
        let open = OPEN_FILES.load(std::sync::atomic::Ordering::Relaxed);
        let connections = usize::try_from((open / 2).clamp(64, 65_536)).unwrap_or(65_536);
        Limits {
            handshakes: (connections / 4).clamp(16, 256),
            per_identity: 16,
            connections,
        }
    }

    /// For a dashboard: a sixteenth of the open files, at most 256 connections, so
    /// that web clients can never take what the members and the run directory need.
    pub fn web() -> Limits {
        let open = OPEN_FILES.load(std::sync::atomic::Ordering::Relaxed);
        let connections = usize::try_from((open / 16).clamp(8, 256)).unwrap_or(256);
        Limits {
            handshakes: connections / 2,
            per_identity: connections,
            connections,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            handshakes: 256,
            per_identity: 16,
            connections: 4096,
        }
    }
}

/// A tonic server builder with the settings every WDML server shares: HTTP/2 pings to
/// notice dead clients, and a bound on streams per connection.
pub fn server() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(2 * KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .max_concurrent_streams(Some(256))
        .tcp_nodelay(true)
}

/// Serves `router` on `listener` until `shutdown` completes.
pub async fn serve(
    router: Router,
    listener: TcpListener,
    security: Security,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    router
        .serve_with_incoming_shutdown(accept(listener, security, limits, Side::Members), shutdown)
        .await
}

/// Serves read-only web pages (`router`: the dashboard, its JSON API, `/metrics`) on
/// `listener` until `shutdown` completes: HTTPS with this process's certificate when it
/// has credentials (no client certificate asked), plain HTTP under `--insecure`. The
/// same handshake deadline and connection limits as the gRPC listeners.
pub async fn serve_web(
    router: axum::Router,
    listener: TcpListener,
    security: Security,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let local = listener.local_addr()?;
    let incoming = WebIncoming {
        connections: accept(listener, security, limits, Side::Web),
        local,
    };
    // Each request carries its connection's [`Caller`] (`ConnectInfo`): the dashboard
    // admits an observer by its certificate.
    axum::serve(incoming, router.into_make_service_with_connect_info::<Caller>())
        .with_graceful_shutdown(shutdown)
        .await
}

/// Who a listener serves: the run's members (mutual TLS, every caller named by its
/// certificate) or the read-only web pages (server authentication only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Members,
    Web,
}

/// The accepted connections of a web listener, for axum.
struct WebIncoming {
    connections: ReceiverStream<io::Result<Conn>>,
    local: SocketAddr,
}

impl axum::serve::Listener for WebIncoming {
    type Io = Conn;
    /// Who is at the other end (its address, and the identity its certificate proves).
    type Addr = Caller;

    async fn accept(&mut self) -> (Conn, Caller) {
        use tokio_stream::StreamExt as _;
        loop {
            match self.connections.next().await {
                Some(Ok(conn)) => {
                    let caller = conn.caller.clone();
                    return (conn, caller);
                }
                Some(Err(_)) => continue,
                // The accept loop ended: nothing will come again.
                None => std::future::pending::<()>().await,
            }
        }
    }

    /// This listener's own address (axum asks for it in the listener's `Addr` type).
    fn local_addr(&self) -> io::Result<Caller> {
        Ok(Caller {
            remote: Some(self.local),
            identity: None,
        })
    }
}

/// A web request's [`Caller`], as axum hands it to the handlers (`ConnectInfo`).
impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, WebIncoming>> for Caller {
    fn connect_info(stream: axum::serve::IncomingStream<'_, WebIncoming>) -> Self {
        stream.remote_addr().clone()
    }
}

/// The accepted, authenticated connections of `listener`, as a stream for tonic. The
/// accept loop ends when tonic drops the stream.
///
/// Handshakes run concurrently, each within [`HANDSHAKE_TIMEOUT`]. At most
/// `limits.handshakes` are pending at once: a new connection beyond that evicts the
/// oldest pending one. So connections that never finish their handshake hold a bounded
/// amount of memory and cannot make an honest newcomer wait in line behind them (an
/// honest handshake takes milliseconds; a stalled one is the oldest).
fn accept(listener: TcpListener, security: Security, limits: Limits, side: Side) -> ReceiverStream<io::Result<Conn>> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let pending: Arc<Mutex<VecDeque<(u64, AbortHandle)>>> = Arc::default();
        let open = Arc::new(OpenConnections::new(limits));
        for number in 0u64.. {
            let (tcp, remote) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, do not spin.
                        warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = tx.closed() => return,
            };
            let _ = tcp.set_nodelay(true);
            let (tx, security, open, done) = (tx.clone(), security.clone(), open.clone(), pending.clone());
            let task = tokio::spawn(async move {
                let conn = establish(tcp, remote, &security, &open, side).await;
                lock(&done).retain(|(n, _)| *n != number);
                if let Some(conn) = conn {
                    let _ = tx.send(Ok(conn)).await;
                }
            });
            let mut pending = lock(&pending);
            pending.push_back((number, task.abort_handle()));
            while pending.len() > limits.handshakes {
                if let Some((_, oldest)) = pending.pop_front() {
                    debug!("too many handshakes pending: dropping the oldest");
                    oldest.abort();
                }
            }
        }
    });
    ReceiverStream::new(rx)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Completes the handshake of one connection, within its deadline and the limits.
async fn establish(
    tcp: TcpStream,
    remote: SocketAddr,
    security: &Security,
    open: &Arc<OpenConnections>,
    side: Side,
) -> Option<Conn> {
    let (io, identity) = match security {
        Security::Insecure => (Io::Plain(tcp), None),
        Security::Tls(credentials) => {
            let acceptor = match side {
                Side::Members => &credentials.acceptor,
                Side::Web => &credentials.web_acceptor,
            };
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    debug!(%remote, "TLS handshake refused: {e}");
                    return None;
                }
                Err(_) => {
                    debug!(%remote, "TLS handshake stalled; dropped after {HANDSHAKE_TIMEOUT:?}");
                    return None;
                }
            };
            let identity = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(identity_of);
            if side == Side::Web {
                // The pages' connections share one pool (no identity is a member's
                // slot); whoever the certificate names, if any, the handler is told.
                let slot = open.take(None)?;
                return Some(Conn {
                    io: Io::Tls(Box::new(tls)),
                    caller: Caller {
                        remote: Some(remote),
                        identity,
                    },
                    _slot: slot,
                });
            }
            let Some(identity) = identity else {
                warn!(%remote, "a certificate of the run CA that names no WDML identity; dropped");
                return None;
            };
            (Io::Tls(Box::new(tls)), Some(identity))
        }
    };
    let slot = open.take(identity)?;
    Some(Conn {
        io,
        caller: Caller {
            remote: Some(remote),
            identity,
        },
        _slot: slot,
    })
}

/// Counts the open connections per identity, within [`Limits`].
struct OpenConnections {
    limits: Limits,
    counts: Mutex<HashMap<Option<Identity>, usize>>,
}

impl OpenConnections {
    fn new(limits: Limits) -> Self {
        OpenConnections {
            limits,
            counts: Mutex::new(HashMap::new()),
        }
    }

    fn take(self: &Arc<Self>, identity: Option<Identity>) -> Option<Slot> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let total: usize = counts.values().sum();
        let mine = counts.entry(identity).or_default();
        // Plaintext connections share one count: nobody is told apart.
        let cap = match identity {
            Some(_) => self.limits.per_identity,
            None => self.limits.connections,
        };
        if *mine >= cap || total >= self.limits.connections {
            warn!(
                identity = identity.map_or("unauthenticated".to_string(), |i| i.to_string()),
                open = *mine,
                "too many open connections; refusing another"
            );
            return None;
        }
        *mine += 1;
        Some(Slot {
            open: self.clone(),
            identity,
        })
    }
}

/// One open connection's place in [`OpenConnections`], given back on drop.
struct Slot {
    open: Arc<OpenConnections>,
    identity: Option<Identity>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.open.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.identity) {
            *n = n.saturating_sub(1);
        }
    }
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// An accepted connection, with who is on the other end.
pub struct Conn {
    io: Io,
    caller: Caller,
    _slot: Slot,
}

impl Connected for Conn {
    type ConnectInfo = Caller;

    fn connect_info(&self) -> Caller {
        self.caller.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(io) => Pin::new(io).poll_read(cx, buf),
            Io::Tls(io) => Pin::new(io.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Plain(io) => Pin::new(io).poll_write(cx, buf),
            Io::Tls(io) => Pin::new(io.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Plain(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Io::Tls(io) => Pin::new(io.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(io) => io.is_write_vectored(),
            Io::Tls(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(io) => Pin::new(io).poll_flush(cx),
            Io::Tls(io) => Pin::new(io.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(io) => Pin::new(io).poll_shutdown(cx),
            Io::Tls(io) => Pin::new(io.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A fresh 64-bit secret (a session, a round token) from the operating system's random
/// source: unguessable, and never derived from the run seed. Never 0.
pub fn random_secret() -> io::Result<u64> {
    use rand::TryRngCore;
    let secret = rand::rngs::OsRng.try_next_u64().map_err(io::Error::other)?;
    Ok(secret | 1)
}

/// Says loudly that a process runs without TLS, on stderr and in its log.
pub fn warn_insecure(what: &str) {
    let banner = format!(
        "WARNING: {what} runs with --insecure: connections are NOT encrypted and NOT authenticated; \
         anyone who can reach its ports can read and forge its messages. For debugging only."
    );
    eprintln!("{}\n{banner}\n{}", "!".repeat(78), "!".repeat(78));
    warn!("{banner}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_names_round_trip() {
        for identity in [
            Identity::Coordinator,
            Identity::Observer,
            Identity::Node(0),
            Identity::Node(4096),
        ] {
            assert_eq!(Identity::from_dns_name(&identity.dns_name()), Some(identity));
            assert_eq!(identity.stem().parse::<Identity>().unwrap(), identity);
        }
        for bad in [
            "node-",
            "node-x",
            "node--1",
            "node-1.wdml.evil",
            "evil",
            "node-99999999999",
        ] {
            assert!(bad.parse::<Identity>().is_err(), "{bad}");
            assert_eq!(Identity::from_dns_name(bad), None, "{bad}");
        }
        assert_eq!(Identity::from_dns_name("node-3.example"), None);
    }
}
