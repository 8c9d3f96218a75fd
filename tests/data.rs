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

/// What the run directory records of the data (`config.json`'s `dataset`).
fn dataset(out: &Path) -> serde_json::Value {
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    config["dataset"].clone()
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

/// `rows` rows of a two-class table of 6 features, as CSV with a header and a `label`
/// column (first, to show it need not be last): class 1's features sit higher.
fn table(rows: usize, seed: u32) -> String {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(7);
    let mut uniform = || {
        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        f64::from(state >> 8) / f64::from(1u32 << 24)
    };
    let mut out = String::from("label,f0,f1,f2,f3,f4,f5\n");
    for i in 0..rows {
        let class = i % 2;
        let features: Vec<String> = (0..6)
            .map(|f| format!("{:.4}", uniform() + class as f64 * 0.8 + f as f64))
            .collect();
        out.push_str(&format!("{class},{}\n", features.join(",")));
    }
    out
}

/// A tabular dataset of two classes from CSV files, over the air: the analog slots
/// carry 32 × 2 soft predictions; the label column is named by `data.labels`.
#[test]
fn a_two_class_table_from_csv_runs_over_the_air() {
    let tmp = TempDir::new("data-csv");
    let data = tmp.path().join("table");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("train.csv"), table(400, 1)).unwrap();
    std::fs::write(data.join("test.csv"), table(100, 2)).unwrap();
    let out = tmp.path().join("run");
    let mut overrides = common::small_mesh(3, 3);
    overrides.retain(|o| !o.starts_with("nodes.models") && !o.starts_with("data.test_size"));
    overrides.extend([
        format!("data.dir={:?}", data.display().to_string()),
        "data.labels=\"label\"".into(),
        "nodes.models=[\"mlp:16\"]".into(),
        "data.public_pool=90".into(),
        "exchange.public_batch=32".into(),
        "exchange.encoding=\"f32\"".into(),
        "channel.access=\"shared\"".into(),
        "channel.mode=\"over_the_air\"".into(),
        "channel.air_min_snr_db=-100".into(),
        "channel.time_scale=0".into(),
    ]);
    let output = launch(&out, &overrides);
    assert!(output.status.success(), "the run failed");
    let rows = metrics(&out);
    assert_eq!(rows.len(), 9);
    assert!(
        rows.iter().all(|r| r.metrics.peers_heard == 2),
        "every neighbour aligned in its slot"
    );
    let last: Vec<f64> = rows
        .iter()
        .filter(|r| r.round == 2)
        .map(|r| r.metrics.test_accuracy)
        .collect();
    // Two well-separated classes, chance 0.5: after 3 short rounds every node learned
    // something, most of them all of it.
    let mean = last.iter().sum::<f64>() / last.len() as f64;
    assert!(last.iter().all(|&a| a > 0.55) && mean > 0.75, "{last:?}");
    let data = &dataset(&out);
    assert_eq!(
        (data["shape"].clone(), data["classes"].clone()),
        (serde_json::json!([6]), serde_json::json!(2)),
        "{data}"
    );
    // Standardised per feature, from the training set.
    assert_eq!(
        data["normalisation"]["mean"].as_array().map(Vec::len),
        Some(6),
        "{data}"
    );
}

/// One `.npy` file (format 1.0, as numpy writes it) of `shape`, little-endian f32 or u8.
fn npy(shape: &[usize], dtype: &str, data: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(ToString::to_string).collect();
    let tuple = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '{dtype}', 'fortran_order': False, 'shape': {tuple}, }}");
    // The magic (6), version (2), length (2) and header end on a multiple of 64.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

/// Keras-style NumPy arrays (`x_train.npy`, … channels last, as Keras stores colour
/// images) and CIFAR-100 batches in their exact binary layout: both run, the first
/// transposed to channels first, the second with 100 classes through top-k.
#[test]
fn numpy_arrays_and_cifar_100_batches_run_end_to_end() {
    use wdml_node::data::cifar::{self, Cifar100Labels, Kind};
    let tmp = TempDir::new("data-npy-cifar");
    // NumPy: 8×8 RGB-like images, channels last, f32; 3 classes.
    let numpy = tmp.path().join("blocks-npy");
    std::fs::create_dir_all(&numpy).unwrap();
    for (name, set) in [("train", blocks(3, 100, 8, 1)), ("test", blocks(3, 20, 8, 2))] {
        let Values::U8(grey) = &set.values else { unreachable!() };
        // Each pixel to (v, v/2, 255 - v), channels last.
        let values: Vec<u8> = grey
            .iter()
            .flat_map(|&v| [v, v / 2, 255 - v])
            .flat_map(|v| f32::from(v).to_le_bytes())
            .collect();
        let x = npy(&[set.len(), 8, 8, 3], "<f4", &values);
        let y = npy(&[set.len()], "|u1", &set.labels);
        std::fs::write(numpy.join(format!("x_{name}.npy")), x).unwrap();
        std::fs::write(numpy.join(format!("y_{name}.npy")), y).unwrap();
    }
    let out = tmp.path().join("run-npy");
    let output = launch(&out, &on(&numpy, 3, 2, "cnn:4,8,16"));
    assert!(output.status.success(), "the NumPy run failed");
    assert_eq!(metrics(&out).len(), 6);
    assert_eq!(dataset(&out)["shape"], serde_json::json!([3, 8, 8]), "channels first");

    // CIFAR-100: 32×32 colour images of 100 classes, 5 training samples each.
    let cifar_dir = tmp.path().join("cifar-100-binary");
    std::fs::create_dir_all(&cifar_dir).unwrap();
    for (file, per_class, seed) in [("train.bin", 5, 3u32), ("test.bin", 1, 4)] {
        let mut state = seed;
        let (mut values, mut labels) = (Vec::new(), Vec::new());
        for i in 0..100 * per_class {
            labels.push((i % 100) as u8);
            values.extend((0..3 * 32 * 32).map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (state >> 24) as u8
            }));
        }
        let coarse: Vec<u8> = labels.iter().map(|l| l / 5).collect();
        let set = Samples {
            shape: vec![3, 32, 32],
            values: Values::U8(values),
            labels,
        };
        let bytes = cifar::encode(&set, Kind::Cifar100(Cifar100Labels::Fine), Some(&coarse)).unwrap();
        std::fs::write(cifar_dir.join(file), bytes).unwrap();
    }
    let out = tmp.path().join("run-cifar");
    let mut overrides = on(&cifar_dir, 3, 2, "cnn:4,8,16");
    // Devices of two architectures: the small CNN and a ResNet-8 (GroupNorm).
    overrides.extend([
        "exchange.encoding=\"topk\"".into(),
        "exchange.top_k=5".into(),
        "nodes.models=[\"cnn:4,8,16\", \"resnet:8\"]".into(),
        "train.local_steps=3".into(),
    ]);
    let output = launch(&out, &overrides);
    assert!(output.status.success(), "the CIFAR-100 run failed");
    let rows = metrics(&out);
    assert_eq!(rows.len(), 6);
    // 32 rows × (5 entries of 3 bytes + a 2-byte rest), to each of two neighbours.
    assert!(rows.iter().all(|r| r.metrics.payload_bytes_sent == 2 * 32 * 17));
    assert_eq!(dataset(&out)["classes"], serde_json::json!(100));
    let models: Vec<&str> = rows.iter().map(|r| r.model.as_str()).collect();
    assert!(
        models.contains(&"resnet:8") && models.contains(&"cnn:4,8,16"),
        "{models:?}"
    );
}
