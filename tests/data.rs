//! Bring your own data: datasets of other shapes and numbers of classes run end to end
//! (real processes, real files in each format's exact layout), and a node whose data is
//! not the run's is refused at its Join, naming both shapes.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Cluster, Process, TempDir, launch, metrics, small};
use wdml_node::data::{Samples, Values, idx};

/// `per_class` samples of each of `classes` classes, `side`×`side` grey images whose
/// class is a bright square at its own place, plus noise: learnable in a few rounds.
fn blocks(classes: usize, per_class: usize, side: usize, seed: u32) -> Samples {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    let mut noise = || {
        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (state >> 26) as u8
    };
    let (mut values, mut labels) = (Vec::new(), Vec::new());
    for i in 0..classes * per_class {
        let class = i % classes;
        let (cx, cy) = ((class * 3) % side, (class * 3 / side * 3) % side);
        for y in 0..side {
            for x in 0..side {
                let inside = x >= cx && x < cx + 3 && y >= cy && y < cy + 3;
                values.push(if inside { 200 } else { 0 } + noise());
            }
        }
        labels.push(class as u8);
    }
    Samples {
        shape: vec![1, side, side],
        values: Values::U8(values),
        labels,
    }
}

/// Writes `train` and `test` as an IDX dataset directory.
fn write_idx(dir: &Path, train: &Samples, test: &Samples) {
    std::fs::create_dir_all(dir).unwrap();
    for (prefix, set) in [("train", train), ("t10k", test)] {
        idx::write(
            &dir.join(format!("{prefix}-images-idx3-ubyte.gz")),
            &idx::encode_images(set).unwrap(),
            true,
        )
        .unwrap();
        idx::write(
            &dir.join(format!("{prefix}-labels-idx1-ubyte")),
            &idx::encode_labels(&set.labels).unwrap(),
            false,
        )
        .unwrap();
    }
}

/// The overrides of a short run of `nodes` nodes on the dataset at `dir`.
fn on(dir: &Path, nodes: u32, rounds: u32, models: &str) -> Vec<String> {
    let mut overrides = small(nodes, rounds);
    overrides.retain(|o| !o.starts_with("nodes.models") && !o.starts_with("data.test_size"));
    overrides.extend([
        format!("data.dir={:?}", dir.display().to_string()),
        format!("nodes.models=[{models:?}]"),
        "data.public_pool=90".into(),
        "exchange.public_batch=32".into(),
    ]);
    overrides
}

/// 8×8 images of 3 classes: the CNN takes them (two poolings: 8 → 4 → 2), the
/// messages are 32 × 3, top-1 of 3 through the codec, and the record says 3 classes.
#[test]
fn images_of_another_size_and_three_classes_run_end_to_end() {
    let tmp = TempDir::new("data-idx");
    let data = tmp.path().join("blocks-8x8");
    write_idx(&data, &blocks(3, 200, 8, 1), &blocks(3, 30, 8, 2));
    let out = tmp.path().join("run");
    let mut overrides = on(&data, 3, 3, "cnn:4,8,16");
    overrides.extend(["exchange.encoding=\"topk\"".into(), "exchange.top_k=1".into()]);
    let output = launch(&out, &overrides);
    assert!(output.status.success(), "the run failed");
    let rows = metrics(&out);
    assert_eq!(rows.len(), 9, "3 nodes × 3 rounds");
    // 32 rows × (one 3-byte entry + a 2-byte rest) = 160 payload bytes to each of two
    // neighbours.
    assert!(
        rows.iter().all(|r| r.metrics.payload_bytes_sent == 2 * 32 * 5),
        "{:?}",
        rows.iter().map(|r| r.metrics.payload_bytes_sent).collect::<Vec<_>>()
    );
    let last: Vec<f64> = rows
        .iter()
        .filter(|r| r.round == 2)
        .map(|r| r.metrics.test_accuracy)
        .collect();
    assert!(
        last.iter().all(|&a| a > 0.6),
        "3 classes, chance 0.33; the blocks are easy: {last:?}"
    );
    let split: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("split.json")).unwrap()).unwrap();
    let histogram = &split["nodes"][0]["histogram"];
    assert_eq!(histogram.as_array().map(Vec::len), Some(3), "{split}");
}

/// A node given other data than the run's is refused when it joins, and says why.
#[test]
fn a_node_with_other_data_is_refused_at_join_naming_both_shapes() {
    let tmp = TempDir::new("data-refused");
    let data = tmp.path().join("blocks-8x8");
    write_idx(&data, &blocks(3, 40, 8, 1), &blocks(3, 10, 8, 2));
    // The run learns the embedded Fashion-MNIST.
    let cluster = Cluster::coordinator_on("data-refused", "127.0.0.1", &small(2, 2));
    let mut args = cluster.node_args(0, "mlp:64", "127.0.0.1:0");
    args.extend(["--data-dir".into(), data.display().to_string()]);
    let log = cluster.out().join("logs/node-0.log");
    let mut node = Process::start_unlistening(&args, &log);
    let status = node.wait_for(Duration::from_secs(60)).expect("the refused node exits");
    assert!(!status.success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("the run's data is [1, 28, 28] × 10 classes; this node's is [1, 8, 8] × 3 classes"),
        "{text}"
    );
    drop(cluster);
}

/// A public pool from a dataset of its own (another distribution, as in FedMD): the
/// whole training set is private, and the pool may be larger than it could spare; a
/// public set of another shape is refused before anything starts, naming both.
#[test]
fn a_public_set_of_its_own_feeds_the_exchange_and_must_have_the_runs_shape() {
    let tmp = TempDir::new("data-public");
    let data = tmp.path().join("private");
    write_idx(&data, &blocks(3, 40, 8, 1), &blocks(3, 30, 8, 2));
    // Another distribution of the same shape: 5 block positions, so 2 of them are not
    // among the private classes at all.
    let public = tmp.path().join("public");
    write_idx(&public, &blocks(5, 100, 8, 3), &blocks(5, 2, 8, 4));
    let out = tmp.path().join("run");
    let mut overrides = on(&data, 3, 2, "mlp:16");
    overrides.retain(|o| !o.starts_with("data.public_pool"));
    // 400 public samples: more than the 120 training samples hold.
    overrides.extend([
        format!("data.public={:?}", public.display().to_string()),
        "data.public_pool=400".into(),
    ]);
    let output = launch(&out, &overrides);
    assert!(output.status.success(), "the run failed");
    let rows = metrics(&out);
    assert_eq!(rows.len(), 6);
    assert!(
        rows.iter().all(|r| r.metrics.payload_bytes_received > 0),
        "every node heard its neighbours"
    );
    // Every private sample is a shard's: 120 over 3 nodes.
    let split: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("split.json")).unwrap()).unwrap();
    let samples: u64 = split["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["samples"].as_u64().unwrap())
        .sum();
    assert_eq!(samples, 120, "{split}");

    let wrong = tmp.path().join("public-12x12");
    write_idx(&wrong, &blocks(3, 50, 12, 5), &blocks(3, 2, 12, 6));
    overrides.push(format!("data.public={:?}", wrong.display().to_string()));
    let output = launch(&tmp.path().join("refused"), &overrides);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("data.public: its samples are [1, 12, 12], the run's are [1, 8, 8]"),
        "{stderr}"
    );
}
