//! Writes the split a run draws, index for index, as JSON: each node's private shard
//! (indices into the training set, in the split's order), the public pool and the test
//! rows. A run's `split.json` holds only each shard's label histogram; this is the same
//! split (`wdml_node::data::split`, as every node calls it) for a reference
//! implementation to train on (`scripts/torch-compare/local_baseline.py`).
//!
//! ```text
//! cargo run --release -p wdml-node --example dump_split -- \
//!     DATA_DIR SEED NODES PARTITION PUBLIC_POOL TEST_SIZE OUT.json
//! # the heterogeneous case study, seed 7:
//! ./target/release/examples/dump_split /usr/share/datasets/fashion-mnist 7 8 dirichlet:0.5 10000 2000 split-indices.json
//! ```
//!
//! The output also carries each shard's label histogram, to check against the run's
//! `split.json`.

use std::path::PathBuf;

use wdml_node::data::{Dataset, Location, SplitConfig, split};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, seed, nodes, partition, public_pool, test_size, out] = args.as_slice() else {
        return Err("usage: dump_split DATA_DIR SEED NODES PARTITION PUBLIC_POOL TEST_SIZE OUT.json".into());
    };
    let dataset = Dataset::load_labels(&Location::at(Some(&PathBuf::from(dir))))?;
    let config = SplitConfig {
        seed: seed.parse()?,
        nodes: nodes.parse()?,
        partition: partition.parse()?,
        public_pool: public_pool.parse()?,
        test_size: test_size.parse()?,
        public_from: None,
        public_overlap: 0.0,
        // The results' case studies hold no validation set out.
        validation: 0,
    };
    let drawn = split(&dataset, &config)?;
    let classes = dataset.classes;
    let histograms: Vec<Vec<u32>> = drawn
        .private
        .iter()
        .map(|shard| {
            let mut h = vec![0u32; classes];
            shard.iter().for_each(|&i| h[usize::from(dataset.train.labels[i])] += 1);
            h
        })
        .collect();
    let json = serde_json::json!({
        "data": dir,
        "seed": config.seed,
        "partition": partition,
        "private": drawn.private,
        "histograms": histograms,
        "public": drawn.public,
        "test": drawn.test,
    });
    std::fs::write(out, serde_json::to_string(&json)?)?;
    println!(
        "{out}: {} shards of {:?} samples, public pool {}, test {}",
        drawn.private.len(),
        drawn.private.iter().map(Vec::len).collect::<Vec<_>>(),
        drawn.public.len(),
        drawn.test.len()
    );
    Ok(())
}
