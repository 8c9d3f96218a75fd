//! Python devices, for real: the package built from this tree (the extension cargo
//! builds, beside `python/wdml`), a numpy model in a Python process joining a run of
//! Candle nodes through `wdml run`'s `[[nodes.programs]]`. It learns, its predictions
//! cross both ways, its bytes are the message's, its radio is accounted exactly as a
//! Rust node's on the same links; an exception in its model fails its round and the run
//! goes on. The determinism contract is checked by an independent Python
//! implementation, and a Join in another protocol version is refused naming both.
//!
//! Needs `python3` with numpy (`pip install numpy`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::{Cluster, TempDir, dump_logs, metrics, run_command, summary};
use wdml_coordinator::MetricsRow;
use wdml_proto::{Encoding, JoinRequest, coordinator_client::CoordinatorClient};
use wdml_transport::{Identity, Security};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// A directory to put on `PYTHONPATH` holding the `wdml` package as `pip install
/// ./python` lays it out: `python/wdml/*.py` and the extension `cargo test` built for
/// these tests (the root package depends on `wdml-python` for that reason).
fn package() -> &'static Path {
    static PACKAGE: OnceLock<PathBuf> = OnceLock::new();
    PACKAGE.get_or_init(|| {
        // Beside this test's own binaries (target/<profile>/deps).
        let profile = Path::new(common::WDML).parent().unwrap();
        let extension = profile.join("deps/lib_wdml.so");
        assert!(
            extension.exists(),
            "{} is missing: run the tests with cargo test",
            extension.display()
        );
        let dir = profile.join("python-test-package");
        let wdml = dir.join("wdml");
        std::fs::create_dir_all(&wdml).unwrap();
        for entry in std::fs::read_dir(Path::new(REPO).join("python/wdml")).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "py") {
                std::fs::copy(&path, wdml.join(path.file_name().unwrap())).unwrap();
            }
        }
        std::fs::copy(extension, wdml.join("_wdml.abi3.so")).unwrap();
        dir
    })
}

/// Three devices — a Candle MLP, a Candle CNN, and node 2 — in a full mesh on an
/// emulated radio that loses nothing, with time_scale 0 (the emulated clock runs,
/// nothing waits).
fn mixed(rounds: u32) -> Vec<String> {
    [
        format!("run.rounds={rounds}"),
        "train.local_steps=10".into(),
        "channel.loss=\"none\"".into(),
        "channel.area_m=30".into(),
        "channel.topology=\"full_mesh\"".into(),
        "channel.time_scale=0".into(),
    ]
    .into()
}

/// Runs examples/python/mixed.toml with `overrides`; its metrics, and the summary.
fn run_mixed(label: &str, overrides: &[String]) -> (TempDir, Vec<MetricsRow>) {
    let dir = TempDir::new(label);
    let output = run_command(dir.path(), overrides)
        .arg(Path::new(REPO).join("examples/python/mixed.toml"))
        .current_dir(REPO)
        .env("PYTHONPATH", package())
        .output()
        .unwrap();
    if !output.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&output.stderr));
        dump_logs(dir.path());
        panic!("the mixed run failed");
    }
    let rows = metrics(dir.path());
    (dir, rows)
}

#[test]
fn a_numpy_device_learns_beside_candle_nodes_and_its_radio_is_a_rust_nodes() {
    if !common::have_numpy("a_numpy_device_learns_beside_candle_nodes_and_its_radio_is_a_rust_nodes") {
        return;
    }
    let rounds = 4;
    let (dir, python) = run_mixed("python-mixed", &mixed(rounds));
    let s = summary(dir.path());
    assert!(s.finished, "{}", s.reason);
    let node2 = &s.nodes[2];
    assert_eq!((node2.model.as_str(), node2.parameters), ("ext:numpy-mlp", 101_770));
    assert_eq!(python.len(), 3 * rounds as usize);

    // All three learn well above chance (10 %).
    for row in python.iter().filter(|r| r.round == rounds) {
        assert!(
            row.metrics.test_accuracy > 0.6,
            "node {} at {:.3}",
            row.node,
            row.metrics.test_accuracy
        );
    }
    // Predictions cross both ways, every round, and each message is the public batch ×
    // the classes × 1 byte (q8) plus its scale and offset.
    let message = wdml_proto::message::payload_bytes(Encoding::Q8, 128, 10, 0).unwrap();
    for row in &python {
        assert_eq!(
            (
                row.metrics.peers_heard,
                row.metrics.messages_sent,
                row.metrics.messages_received
            ),
            (2, 2, 2),
            "node {} round {}",
            row.node,
            row.round
        );
        assert_eq!(row.metrics.payload_bytes_sent, 2 * message, "node {}", row.node);
        assert_eq!(row.metrics.payload_bytes_received, 2 * message, "node {}", row.node);
        assert!(
            row.metrics.kl_loss > 0.0,
            "node {} distils from its neighbours",
            row.node
        );
    }
    // Its training is timed like a Rust node's; its FLOPs are unknown (0).
    assert!(
        python
            .iter()
            .filter(|r| r.node == 2)
            .all(|r| r.metrics.compute_ms > 0.0 && r.metrics.flops == 0)
    );

    // The same run with a Candle MLP as node 2: the radio (every draw is the seed's and
    // the link's) and the bytes are the same, to the bit, for every node and round.
    let mut candle = mixed(rounds);
    candle.extend([
        "nodes.models=[\"mlp:256,128\", \"cnn:16,32,128\", \"mlp:128\"]".into(),
        "nodes.programs=[]".into(),
    ]);
    let (_dir, rust) = run_mixed("python-mixed-candle", &candle);
    assert_eq!(rust.len(), python.len());
    let radio = |r: &MetricsRow| {
        (
            r.round,
            r.node,
            r.metrics.frames_sent,
            r.metrics.retransmissions,
            r.metrics.payload_bytes_sent,
            r.metrics.payload_bytes_received,
            r.metrics.airtime_s.to_bits(),
            r.metrics.tx_energy_j.to_bits(),
            r.metrics.rx_energy_j.to_bits(),
        )
    };
    let key = |r: &&MetricsRow| (r.round, r.node);
    let mut a: Vec<&MetricsRow> = python.iter().collect();
    let mut b: Vec<&MetricsRow> = rust.iter().collect();
    a.sort_by_key(key);
    b.sort_by_key(key);
    for (p, r) in a.iter().zip(&b) {
        assert_eq!(radio(p), radio(r), "round {} node {}", p.round, p.node);
    }
}

#[test]
fn an_exception_in_the_model_fails_its_round_and_the_run_goes_on() {
    if !common::have_numpy("an_exception_in_the_model_fails_its_round_and_the_run_goes_on") {
        return;
    }
    let scratch = TempDir::new("python-faulty");
    let script = scratch.path().join("faulty.py");
    std::fs::write(
        &script,
        format!(
            r#"import sys
sys.path.insert(0, {examples:?})
from numpy_device import NumpyMlp
import wdml

class Faulty(NumpyMlp):
    steps = 0
    def train_step(self, *args):
        Faulty.steps += 1
        if Faulty.steps > 2 * 10:  # the first step of round 3
            raise ValueError("a bug in the model, round 3")
        return super().train_step(*args)

sys.exit(0 if wdml.run(Faulty()) else 1)
"#,
            examples = Path::new(REPO).join("examples/python").display().to_string()
        ),
    )
    .unwrap();
    let mut overrides = mixed(5);
    overrides.push(format!(
        "nodes.programs=[{{ ids = [2], command = [\"python3\", {:?}] }}]",
        script.display().to_string()
    ));
    let (dir, rows) = run_mixed("python-faulty-run", &overrides);
    let s = summary(dir.path());
    assert!(s.finished, "the run goes on: {}", s.reason);
    assert_eq!((s.nodes[2].status.as_str(), s.nodes[2].rounds_reported), ("left", 2));
    for node in [0, 1] {
        assert_eq!(s.nodes[node].rounds_reported, 5, "node {node}");
    }
    assert!(
        s.events.iter().any(|e| e.node == 2
            && e.event == "failed"
            && e.reason.contains("ValueError: a bug in the model, round 3")),
        "the coordinator records why: {:?}",
        s.events
    );
    let log = std::fs::read_to_string(dir.path().join("logs/node-2.log")).unwrap();
    assert!(
        log.contains("the model's `train_step` raised ValueError: a bug in the model, round 3")
            && log.contains("Traceback")
            && log.contains("faulty.py"),
        "the device's log holds the exception and where it was raised:\n{log}"
    );
    assert_eq!(rows.iter().filter(|r| r.node == 2).count(), 2);
}

#[test]
fn the_determinism_contract_agrees_with_an_independent_python_implementation() {
    if !common::have_numpy("the_determinism_contract_agrees_with_an_independent_python_implementation") {
        return;
    }
    let output = Command::new("python3")
        .args(["-m", "unittest", "discover", "-s", "python/tests", "-v"])
        .current_dir(REPO)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{text}");
    assert!(
        text.contains("public_batch"),
        "the public batches are among the vectors:\n{text}"
    );
}

#[test]
fn a_join_in_another_protocol_version_is_refused_naming_both() {
    let cluster = Cluster::coordinator_on("python-versions", "127.0.0.1", &common::small(2, 2));
    let security = Security::from_dir(&cluster.tls(), Identity::Node(0)).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let join = |protocol_version: u32, data_contract: u32| {
        runtime.block_on(async {
            let channel = security
                .endpoint(&cluster.coordinator.address, Identity::Coordinator)
                .unwrap()
                .connect()
                .await
                .unwrap();
            CoordinatorClient::new(channel)
                .join(JoinRequest {
                    node_id: 0,
                    advertise: "127.0.0.1:9".into(),
                    model: "mlp:64".into(),
                    parameters: 1,
                    protocol_version,
                    data_contract,
                    data: Some(wdml_proto::data::fashion_mnist()),
                })
                .await
        })
    };
    let (ours, contract) = (wdml_proto::PROTOCOL_VERSION, wdml_proto::DATA_CONTRACT);
    for (protocol, data) in [(0, 0), (ours + 1, contract), (ours, contract + 6)] {
        let status = join(protocol, data).unwrap_err();
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        let expected = format!(
            "node 0 speaks protocol version {protocol} with data contract {data}; this coordinator speaks \
             protocol version {} with data contract {}",
            wdml_proto::PROTOCOL_VERSION,
            wdml_proto::DATA_CONTRACT
        );
        assert!(status.message().contains(&expected), "{}", status.message());
    }
    // This build's versions are admitted.
    let joined = join(wdml_proto::PROTOCOL_VERSION, wdml_proto::DATA_CONTRACT);
    assert!(joined.is_ok(), "{joined:?}");
}
