//! Regenerates the embedded dataset, `data/fashion-mnist-subset/`, from the full
//! Fashion-MNIST: 600 training images per class and 100 test images per class, drawn
//! and shuffled with `wdml_node::data::embedded::SUBSET_SEED`.
//!
//! ```text
//! cargo run --release -p wdml-node --example make_embedded_subset -- \
//!     [FULL_DIR (default /usr/share/datasets/fashion-mnist)] [OUT_DIR (default data/fashion-mnist-subset)]
//! ```
//!
//! The output is byte-for-byte reproducible for a given build (gzip without timestamps,
//! ChaCha12, `wdml_node::seed::rng`). The crate embeds the files it writes, so they must
//! exist (from git) for this example to compile.

use std::path::PathBuf;

use wdml_node::data::embedded::CLASSES;
use wdml_node::data::{Dataset, Location, embedded, idx};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args_os().skip(1);
    let full_dir = args
        .next()
        .map_or_else(|| PathBuf::from("/usr/share/datasets/fashion-mnist"), PathBuf::from);
    let out_dir = args.next().map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(embedded::DIR),
        PathBuf::from,
    );

    let full = Dataset::load(&Location::at(Some(&full_dir)))?;
    println!(
        "read {}: {} train, {} test images",
        full_dir.display(),
        full.train.len(),
        full.test.len()
    );

    std::fs::create_dir_all(&out_dir)?;
    let parts = [
        ("train", &full.train, embedded::TRAIN_PER_CLASS),
        ("t10k", &full.test, embedded::TEST_PER_CLASS),
    ];
    for (prefix, set, per_class) in parts {
        let subset = embedded::balanced_subset(set, CLASSES, per_class, embedded::SUBSET_SEED)?;
        let images = out_dir.join(format!("{prefix}-images-idx3-ubyte.gz"));
        let labels = out_dir.join(format!("{prefix}-labels-idx1-ubyte.gz"));
        idx::write(&images, &idx::encode_images(&subset)?, true)?;
        idx::write(&labels, &idx::encode_labels(&subset.labels)?, true)?;
        for path in [images, labels] {
            println!("wrote {} ({} bytes)", path.display(), std::fs::metadata(&path)?.len());
        }
    }
    Ok(())
}
