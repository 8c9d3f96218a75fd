//! Helpers for the integration tests: real `wdml` processes on loopback, killed when
//! the test ends (pass or fail), and readers for the run directory.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;
use wdml_coordinator::{MetricsRow, Summary};
use wdml_transport::Identity;

pub const WDML: &str = env!("CARGO_BIN_EXE_wdml");

/// Whether `tool`, which `test` needs, is on this machine (`probe` succeeds). Without it
/// the test prints one loud `SKIPPED:` line — past the harness's capture, so that it
/// shows in a passing run — and passes: a newcomer's suite runs to its end. With
/// `WDML_REQUIRE_ALL=1` (CI sets it) a missing tool fails the test instead.
pub fn have(test: &str, tool: &str, probe: &mut Command, install: &str) -> bool {
    let found = probe
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return true;
    }
    assert!(
        std::env::var_os("WDML_REQUIRE_ALL").is_none_or(|v| v != "1"),
        "{test} needs {tool}, and WDML_REQUIRE_ALL=1 requires every test to run: {install}"
    );
    // `eprintln!` is captured by the test harness; a write to the handle is not.
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!("\nSKIPPED: {test}: needs {tool} ({install})\n").as_bytes(),
    );
    false
}

/// `have` for Chromium, which the dashboard tests drive.
pub fn have_chromium(test: &str) -> bool {
    have(
        test,
        "chromium",
        Command::new("chromium").arg("--version"),
        "apt-get install chromium",
    )
}

/// `have` for Python 3 with numpy, which the Python device tests run.
pub fn have_numpy(test: &str) -> bool {
    have(
        test,
        "python3 with numpy",
        Command::new("python3").args(["-c", "import numpy"]),
        "pip install numpy",
    )
}

/// A small, fast scenario: tiny MLPs so a round takes a fraction of a second.
pub fn small(nodes: u32, rounds: u32) -> Vec<String> {
    vec![
        format!("nodes.count={nodes}"),
        format!("run.rounds={rounds}"),
        "nodes.models=[\"mlp:64\"]".into(),
        "train.local_steps=15".into(),
        "train.batch_size=32".into(),
        "exchange.public_batch=64".into(),
        "data.partition=\"iid\"".into(),
        "data.test_size=500".into(),
        "channel.preset=\"ideal\"".into(),
    ]
}

/// [`small`] on an emulated radio where every message arrives: the d2d-urban preset,
/// no losses, devices within 30 m (no link in outage), a full mesh.
pub fn small_mesh(nodes: u32, rounds: u32) -> Vec<String> {
    let mut overrides = small(nodes, rounds);
    overrides.retain(|o| !o.starts_with("channel.preset"));
    overrides.extend([
        "channel.preset=\"d2d-urban\"".into(),
        "channel.loss=\"none\"".into(),
        "channel.area_m=30".into(),
        "channel.topology=\"full_mesh\"".into(),
    ]);
    overrides
}

/// A well-formed single-frame message of the `small` scenario (64 × 10 values in its
/// encoding, q8: a byte each, value = offset + scale · byte), from `sender`, for round 0
/// with token 1.
pub fn frame(run_id: &str, sender: u32) -> wdml_proto::Frame {
    wdml_proto::Frame {
        run_id: run_id.into(),
        round: 0,
        round_token: 1,
        sender,
        encoding: wdml_proto::Encoding::Q8 as i32,
        rows: 64,
        cols: 10,
        scale: 1.0 / 255.0,
        offset: 0.0,
        index: 0,
        count: 1,
        total_bytes: 64 * 10,
        data: (0..64 * 10).map(|i| (i % 256) as u8).collect(),
    }
}

/// Sends one message (`frames`) on a new `PeerExchange.Stream` and ends it: the
/// receiver's receipt, or the status it ended the stream with.
#[allow(dead_code)]
pub async fn send_message(
    channel: tonic::transport::Channel,
    frames: Vec<wdml_proto::Frame>,
) -> Result<wdml_proto::Receipt, tonic::Status> {
    let mut client = wdml_proto::peer_exchange_client::PeerExchangeClient::new(channel);
    let mut receipts = client.stream(tokio_stream::iter(frames)).await?.into_inner();
    receipts
        .message()
        .await?
        .ok_or_else(|| tonic::Status::unknown("the stream ended without a receipt"))
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "wdml-test-{label}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("keeping {} for inspection", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// `wdml run --out OUT --set …` for each override, to be started by the caller.
pub fn run_command(out: &Path, overrides: &[String]) -> Command {
    let mut command = Command::new(WDML);
    command.arg("run").arg("--out").arg(out);
    for o in overrides {
        command.arg("--set").arg(o);
    }
    command
}

/// Runs `wdml run` to the end with the given overrides; returns its output.
pub fn launch(out: &Path, overrides: &[String]) -> Output {
    let output = run_command(out, overrides).output().expect("wdml runs");
    if !output.status.success() {
        eprintln!("stdout:\n{}", String::from_utf8_lossy(&output.stdout));
        eprintln!("stderr:\n{}", String::from_utf8_lossy(&output.stderr));
        dump_logs(out);
    }
    output
}

/// Prints every log of a run directory (for a failing test).
pub fn dump_logs(out: &Path) {
    if let Ok(entries) = std::fs::read_dir(out.join("logs")) {
        for entry in entries.flatten() {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            eprintln!("--- {} (last lines)", entry.path().display());
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// The run's rows so far (none before the coordinator created the file).
pub fn metrics(out: &Path) -> Vec<MetricsRow> {
    if !out.join("metrics.jsonl").exists() {
        return Vec::new();
    }
    MetricsRow::read_all(out).expect("metrics.jsonl holds metrics rows")
}

pub fn summary(out: &Path) -> Summary {
    let text = std::fs::read_to_string(out.join("summary.json")).expect("summary.json");
    serde_json::from_str(&text).expect("a summary")
}

/// A process killed when dropped.
pub struct Process {
    pub name: String,
    pub child: Child,
    /// The address from its `listening on` line.
    pub address: String,
}

impl Process {
    /// Takes a child started elsewhere into a guard that kills it when the test ends,
    /// however it ends (a panic included): no test leaves a process behind.
    pub fn adopt(name: &str, child: Child) -> Process {
        Process {
            name: name.to_string(),
            child,
            address: String::new(),
        }
    }

    /// Starts `wdml ARGS…`, appending stderr to `log`, and reads its listening address.
    pub fn start(name: &str, args: &[String], log: &Path) -> Process {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        let mut child = Command::new(WDML)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("wdml starts");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        let address = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("{name}: {line:?}"))
            .trim()
            .to_string();
        Process {
            name: name.to_string(),
            child,
            address,
        }
    }

    /// Starts `wdml ARGS…` that is not expected to listen (it may be refused at once);
    /// stderr is appended to `log`.
    pub fn start_unlistening(args: &[String], log: &Path) -> Process {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        let child = Command::new(WDML)
            .args(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("wdml starts");
        Process {
            name: args.first().cloned().unwrap_or_default(),
            child,
            address: String::new(),
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit by itself; `None` if it is still running.
    pub fn wait_for(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

// The guard reads as the child it holds: `id()`, `wait()`, `stderr.take()`.
impl std::ops::Deref for Process {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.child
    }
}

impl std::ops::DerefMut for Process {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Writes the certificates of a run of `nodes` nodes into `dir/tls` with `wdml certs`.
pub fn certs(dir: &Path, nodes: u32) -> PathBuf {
    let tls = dir.join("tls");
    let output = Command::new(WDML)
        .args(["certs", "--nodes", &nodes.to_string(), "--out"])
        .arg(&tls)
        .output()
        .expect("wdml certs runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    tls
}

/// `nodes.count` in `overrides`, or the quickstart's 4.
pub fn node_count(overrides: &[String]) -> u32 {
    overrides
        .iter()
        .find_map(|o| o.strip_prefix("nodes.count=")?.parse().ok())
        .unwrap_or(4)
}

/// A coordinator and its nodes, started one by one so a test can act on each, over
/// mutual TLS with certificates from `wdml certs` in `out/tls`.
pub struct Cluster {
    pub dir: TempDir,
    pub coordinator: Process,
    pub nodes: Vec<Process>,
}

impl Cluster {
    /// Starts a coordinator for `overrides` and `nodes` nodes running `mlp:64`.
    pub fn start(label: &str, nodes: u32, overrides: &[String]) -> Cluster {
        let mut cluster = Cluster::coordinator_on(label, "127.0.0.1", overrides);
        for id in 0..nodes {
            cluster.start_node(id, "mlp:64", "127.0.0.1");
        }
        cluster
    }

    /// A coordinator listening on `host`, with no node yet.
    pub fn coordinator_on(label: &str, host: &str, overrides: &[String]) -> Cluster {
        Cluster::coordinator_with(label, host, overrides, &[])
    }

    /// [`Cluster::coordinator_on`], the coordinator also given `extra` arguments (e.g.
    /// `--http 127.0.0.1:0`).
    pub fn coordinator_with(label: &str, host: &str, overrides: &[String], extra: &[&str]) -> Cluster {
        let dir = TempDir::new(label);
        std::fs::create_dir_all(dir.path().join("logs")).unwrap();
        certs(dir.path(), node_count(overrides));
        let mut args = Cluster::coordinator_args(dir.path(), &format!("{host}:0"), overrides);
        args.extend(extra.iter().map(|a| a.to_string()));
        let coordinator = Process::start("coordinator", &args, &dir.path().join("logs/coordinator.log"));
        Cluster {
            dir,
            coordinator,
            nodes: Vec::new(),
        }
    }

    /// The arguments of this run's coordinator, listening on `listen`.
    pub fn coordinator_args(out: &Path, listen: &str, overrides: &[String]) -> Vec<String> {
        let mut args: Vec<String> = vec!["coordinator".into(), "--listen".into(), listen.into()];
        args.extend(["--out".into(), out.display().to_string()]);
        args.extend(["--tls-dir".into(), out.join("tls").display().to_string()]);
        for o in overrides {
            args.extend(["--set".into(), o.clone()]);
        }
        args
    }

    /// Starts node `id` bound to `host` (any free port), with its state directory.
    pub fn start_node(&mut self, id: u32, model: &str, host: &str) -> usize {
        let args = self.node_args(id, model, &format!("{host}:0"));
        self.start_node_with(id, &args)
    }

    /// Node `id`'s arguments, listening on `listen`.
    pub fn node_args(&self, id: u32, model: &str, listen: &str) -> Vec<String> {
        vec![
            "node".into(),
            "--id".into(),
            id.to_string(),
            "--model".into(),
            model.into(),
            "--coordinator".into(),
            self.coordinator.address.clone(),
            "--listen".into(),
            listen.into(),
            "--tls-dir".into(),
            self.tls().display().to_string(),
            "--state-dir".into(),
            self.out().join(format!("state/node-{id}")).display().to_string(),
        ]
    }

    /// Starts node `id` with `args` (its log appended to `logs/node-<id>.log`).
    pub fn start_node_with(&mut self, id: u32, args: &[String]) -> usize {
        let log = self.dir.path().join(format!("logs/node-{id}.log"));
        self.nodes.push(Process::start(&format!("node-{id}"), args, &log));
        self.nodes.len() - 1
    }

    pub fn out(&self) -> &Path {
        self.dir.path()
    }

    pub fn tls(&self) -> PathBuf {
        self.out().join("tls")
    }

    /// The dashboard's URL, as the coordinator's log gives it (within 30 s).
    pub fn dashboard_url(&self) -> String {
        let log = self.out().join("logs/coordinator.log");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(url) = text.lines().find_map(|l| l.split("dashboard on ").nth(1)) {
                return url.trim().to_string();
            }
            assert!(Instant::now() < deadline, "no dashboard line in {}", log.display());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until `metrics.jsonl` holds rows of round `round`.
    pub fn wait_for_round(&self, round: u32, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if metrics(self.out()).iter().any(|r| r.round >= round) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        dump_logs(self.out());
        panic!("round {round} did not close within {timeout:?}");
    }

    /// Waits for the coordinator to finish the run; returns its exit status.
    pub fn wait_for_end(&mut self, timeout: Duration) -> std::process::ExitStatus {
        match self.coordinator.wait_for(timeout) {
            Some(status) => status,
            None => {
                dump_logs(self.out());
                panic!("the run did not end within {timeout:?}");
            }
        }
    }
}

/// Sends `request` for `path` over HTTPS, trusting the run's CA (as a user of the JSON
/// API would), and hands the response's bytes to `read` as they come.
pub fn exchange<T>(
    url: &str,
    path: &str,
    ca: &Path,
    read: impl AsyncFnOnce(&mut (dyn tokio::io::AsyncRead + Unpin)) -> T,
) -> T {
    exchange_as(url, path, ca, None, read)
}

/// [`exchange`], presenting the client certificate `certificate` (its `.pem` and
/// `.key` files) in the handshake when given.
pub fn exchange_as<T>(
    url: &str,
    path: &str,
    ca: &Path,
    certificate: Option<(&Path, &Path)>,
    read: impl AsyncFnOnce(&mut (dyn tokio::io::AsyncRead + Unpin)) -> T,
) -> T {
    // `https://host:port/?token=T`, as the coordinator prints it: the token goes in the
    // Authorization header, as an API client would send it.
    let (base, token) = url.split_once("?token=").unwrap_or((url, ""));
    let address = base.trim_start_matches("https://").trim_end_matches('/').to_string();
    let authorization = match token {
        "" => String::new(),
        token => format!("Authorization: Bearer {token}\r\n"),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pki_types::pem::PemObject::pem_file_iter(ca).unwrap() {
            let cert: rustls_pki_types::CertificateDer = cert.unwrap();
            roots.add(cert).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let config = match certificate {
            None => config.with_no_client_auth(),
            Some((pem, key)) => {
                let chain = rustls_pki_types::pem::PemObject::pem_file_iter(pem)
                    .unwrap()
                    .map(Result::unwrap)
                    .collect();
                let key = rustls_pki_types::pem::PemObject::from_pem_file(key).unwrap();
                config.with_client_auth_cert(chain, key).unwrap()
            }
        };
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(&address).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from(Identity::Coordinator.dns_name()).unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\n{authorization}Connection: close\r\n\r\n");
        tls.write_all(request.as_bytes()).await.unwrap();
        read(&mut tls).await
    })
}

/// The head of an HTTPS GET of `path` by whoever holds the certificate `certificate`
/// (`.pem`, `.key`), without a token.
pub fn head_as(url: &str, path: &str, ca: &Path, certificate: (&Path, &Path)) -> String {
    let base = url.split_once("?token=").map_or(url, |(base, _)| base);
    let response = exchange_as(base, path, ca, Some(certificate), async |io| {
        let mut response = Vec::new();
        let _ = io.read_to_end(&mut response).await;
        response
    });
    let response = String::from_utf8(response).unwrap();
    response
        .split_once("\r\n\r\n")
        .map_or(response.clone(), |(head, _)| head.to_string())
}

/// The body of an HTTPS GET of `path` (status 200 asserted).
pub fn get(url: &str, path: &str, ca: &Path) -> String {
    let (head, body) = response(url, path, ca);
    assert!(head.starts_with("HTTP/1.1 200"), "{path}: {head}");
    body
}

/// The head and body of an HTTPS GET of `path`, whatever its status.
pub fn response(url: &str, path: &str, ca: &Path) -> (String, String) {
    let response = exchange(url, path, ca, async |io| {
        let mut response = Vec::new();
        let _ = io.read_to_end(&mut response).await;
        response
    });
    let response = String::from_utf8(response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.to_string(), body.to_string())
}
