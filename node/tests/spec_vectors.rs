//! The test vectors of docs/determinism.md and docs/protocol.md, checked against the code.
//!
//! Every fenced block of those pages whose info string is `vector kind=<kind>` holds a
//! vector: lines `key: value`, the inputs first, then the outputs. This test reads each
//! block's inputs, computes the outputs with the code a run uses, renders the whole block
//! and compares it with the page, line for line. So an edit of a vector's input or output
//! in the documents, or a change of the code that moves one, fails here; a block of an
//! unknown kind fails too, and so does a page that lost the vectors of a kind.
//!
//! To see what the code computes for every block (to write a new vector, put its inputs
//! in the page and copy the output): `WDML_SPEC_VECTORS_PRINT=1 cargo test --release
//! --locked -p wdml-node --test spec_vectors -- --nocapture`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use candle_core::{Device, Tensor};
use prost::Message as _;
use rand::seq::SliceRandom;
use rand::{Rng as _, RngCore};
use rand_distr::{Distribution, Gamma, Open01, StandardNormal};
use wdml_channel::{ResolvedChannel, SplitMix64, Stream, derive_seed};
use wdml_node::data::partition::class_order;
use wdml_node::data::{Dataset, Format, Partition, Samples, SplitConfig, Values, split};
use wdml_node::exchange::codec::{MessageShape, decode, encode};
use wdml_node::seed;
use wdml_node::shard::{BatchSampler, Shard};
use wdml_proto::{Encoding, Frame};

/// The pages that hold vectors, relative to the workspace root.
const PAGES: [&str; 2] = ["docs/determinism.md", "docs/protocol.md"];

/// Every kind of vector, each of which the pages must hold at least once.
const KINDS: [&str; 16] = [
    "splitmix64",
    "derive-seed",
    "chacha12",
    "uniform-f64",
    "bounded-u32",
    "shuffle",
    "normal",
    "gamma",
    "public-batch",
    "private-batches",
    "split",
    "split-embedded",
    "placement",
    "topology",
    "encoding",
    "frame",
];

/// One vector: where it is, its kind, and its `key: value` lines in order.
struct Block {
    page: &'static str,
    line: usize,
    kind: String,
    lines: Vec<(String, String)>,
}

impl Block {
    fn get(&self, key: &str) -> &str {
        self.lines
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("{}:{}: vector {} has no `{key}`", self.page, self.line, self.kind))
    }

    fn num<T: std::str::FromStr>(&self, key: &str) -> T
    where
        T::Err: std::fmt::Debug,
    {
        let text = self.get(key);
        parse_int(text).unwrap_or_else(|| {
            text.parse()
                .unwrap_or_else(|e| panic!("{}:{}: `{key}: {text}`: {e:?}", self.page, self.line))
        })
    }

    fn list<T: std::str::FromStr>(&self, key: &str) -> Vec<T>
    where
        T::Err: std::fmt::Debug,
    {
        split_list(self.get(key))
            .map(|item| {
                item.parse()
                    .unwrap_or_else(|e| panic!("{}:{}: `{key}`: {item}: {e:?}", self.page, self.line))
            })
            .collect()
    }

    /// The text the block must have: its inputs (the keys `inputs`, as written) then what
    /// `outputs` computed.
    fn expected(&self, inputs: &[&str], outputs: Vec<(String, String)>) -> String {
        let mut text = String::new();
        for key in inputs {
            writeln!(text, "{key}: {}", self.get(key)).unwrap();
        }
        for (key, value) in outputs {
            writeln!(text, "{key}: {value}").unwrap();
        }
        text
    }

    fn actual(&self) -> String {
        self.lines.iter().map(|(k, v)| format!("{k}: {v}\n")).collect()
    }
}

/// A decimal or `0x` hexadecimal integer, `None` if it is neither (left to `parse`).
fn parse_int<T: std::str::FromStr>(text: &str) -> Option<T> {
    let hex = text.strip_prefix("0x")?;
    let value = u64::from_str_radix(&hex.replace('_', ""), 16).ok()?;
    value.to_string().parse().ok()
}

fn split_list(text: &str) -> impl Iterator<Item = &str> {
    text.split(',').map(str::trim).filter(|s| !s.is_empty())
}

fn join<T>(items: impl IntoIterator<Item = T>, show: impl Fn(T) -> String) -> String {
    items.into_iter().map(show).collect::<Vec<_>>().join(", ")
}

fn hex64(v: u64) -> String {
    format!("0x{v:016x}")
}

fn hex_bytes(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn out(key: impl Into<String>, value: impl Into<String>) -> (String, String) {
    (key.into(), value.into())
}

/// The vectors of `page`.
fn blocks(page: &'static str) -> Vec<Block> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(page);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut blocks = Vec::new();
    let mut current: Option<Block> = None;
    for (index, line) in text.lines().enumerate() {
        match current.as_mut() {
            None => {
                if let Some(info) = line.trim().strip_prefix("```vector") {
                    let kind = info
                        .split_whitespace()
                        .find_map(|word| word.strip_prefix("kind="))
                        .unwrap_or_else(|| panic!("{page}:{}: a vector block needs kind=", index + 1));
                    current = Some(Block {
                        page,
                        line: index + 1,
                        kind: kind.to_string(),
                        lines: Vec::new(),
                    });
                }
            }
            Some(block) => {
                if line.trim() == "```" {
                    blocks.push(current.take().unwrap());
                } else if !line.trim().is_empty() {
                    let (key, value) = line
                        .split_once(':')
                        .unwrap_or_else(|| panic!("{page}:{}: expected `key: value`, got {line:?}", index + 1));
                    block.lines.push((key.trim().to_string(), value.trim().to_string()));
                }
            }
        }
    }
    assert!(current.is_none(), "{page}: a vector block is not closed");
    blocks
}

/// What the code computes for `block`, as the block's full text.
fn compute(block: &Block) -> String {
    match block.kind.as_str() {
        "splitmix64" => {
            let mut rng = SplitMix64::new(block.num("seed"));
            let count: usize = block.num("count");
            let words = join((0..count).map(|_| rng.next_u64()), hex64);
            block.expected(&["seed", "count"], vec![out("next_u64", words)])
        }
        "derive-seed" => {
            let stream = match block.get("stream") {
                "Placement (1)" => Stream::Placement,
                "Shadowing (2)" => Stream::Shadowing,
                "Fading (3)" => Stream::Fading,
                "Jitter (4)" => Stream::Jitter,
                "FrameLoss (5)" => Stream::FrameLoss,
                "External (6)" => Stream::External,
                "Mobility (7)" => Stream::Mobility,
                "AirNoise (8)" => Stream::AirNoise,
                other => panic!("{}:{}: unknown stream {other}", block.page, block.line),
            };
            let words: Vec<u64> = block.list("words");
            let seed = derive_seed(block.num("run_seed"), stream, &words);
            block.expected(&["run_seed", "stream", "words"], vec![out("seed", seed.to_string())])
        }
        "chacha12" => {
            let seed: u64 = block.num("seed");
            let mut rng = seed::rng(seed);
            let key = rng.get_seed();
            let key = join(key.chunks(4), |b| {
                format!("0x{:08x}", u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            });
            let words = join((0..8).map(|_| rng.next_u32()), |w| format!("0x{w:08x}"));
            let mut rng = seed::rng(seed);
            rng.next_u32();
            let odd = hex64(rng.next_u64());
            let mut rng = seed::rng(seed);
            for _ in 0..63 {
                rng.next_u32();
            }
            let across = hex64(rng.next_u64());
            let then = format!("0x{:08x}", rng.next_u32());
            block.expected(
                &["seed"],
                vec![
                    out("key", key),
                    out("next_u32 x 8", words),
                    out("next_u64 after 1 next_u32", odd),
                    out("next_u64 after 63 next_u32", across),
                    out("next_u32 after that", then),
                ],
            )
        }
        "uniform-f64" => {
            let seed: u64 = block.num("seed");
            let mut rng = seed::rng(seed);
            let unit = join((0..4).map(|_| rng.random::<f64>()), |v| format!("{v:?}"));
            let mut rng = seed::rng(seed);
            let open = join((0..4).map(|_| rng.sample::<f64, _>(Open01)), |v| format!("{v:?}"));
            let mut rng = SplitMix64::new(seed);
            let split_mix = join((0..4).map(|_| rng.random::<f64>()), |v| format!("{v:?}"));
            block.expected(
                &["seed"],
                vec![
                    out("chacha12 random f64 x 4", unit),
                    out("chacha12 open01 f64 x 4", open),
                    out("splitmix64 random f64 x 4", split_mix),
                ],
            )
        }
        "bounded-u32" => {
            let mut rng = seed::rng(block.num("seed"));
            let bound: u32 = block.num("bound");
            let count: usize = block.num("count");
            let draws = join((0..count).map(|_| rng.random_range(..bound)), |v| v.to_string());
            block.expected(&["seed", "bound", "count"], vec![out("draws", draws)])
        }
        "shuffle" => {
            let seed: u64 = block.num("seed");
            let len: u32 = block.num("len");
            let mut order: Vec<u32> = (0..len).collect();
            order.shuffle(&mut seed::rng(seed));
            let amount: usize = block.num("amount");
            let mut pool: Vec<u32> = (0..len).collect();
            let (chosen, _) = pool.partial_shuffle(&mut seed::rng(seed), amount);
            let chosen = join(chosen.iter(), |v| v.to_string());
            let rest = join(pool[..pool.len() - amount.min(pool.len())].iter(), |v| v.to_string());
            block.expected(
                &["seed", "len", "amount"],
                vec![
                    out("shuffle", join(order, |v| v.to_string())),
                    out("partial_shuffle chosen", chosen),
                    out("partial_shuffle rest", rest),
                ],
            )
        }
        "normal" => {
            let mut rng = SplitMix64::new(block.num("seed"));
            let count: usize = block.num("count");
            let draws = join((0..count).map(|_| rng.sample::<f64, _>(StandardNormal)), |v| {
                format!("{v:?}")
            });
            block.expected(&["seed", "count"], vec![out("splitmix64 standard normal", draws)])
        }
        "gamma" => {
            let mut rng = seed::rng(block.num("seed"));
            let gamma = Gamma::new(block.num::<f64>("shape"), 1.0).unwrap();
            let count: usize = block.num("count");
            let draws = join((0..count).map(|_| gamma.sample(&mut rng)), |v| format!("{v:?}"));
            block.expected(&["seed", "shape", "count"], vec![out("chacha12 gamma", draws)])
        }
        "public-batch" => {
            let run_seed: u64 = block.num("run_seed");
            let round: u64 = block.num("round");
            let pool: usize = block.num("public_pool");
            let size: usize = block.num("public_batch");
            let seed = seed::derive(run_seed, &[wdml_channel::purpose::PUBLIC_BATCH, round]);
            // The public pool's row r holds the value r: the batch's values are its rows.
            let shard = indexed_shard(1, pool);
            let rows: Vec<u32> = shard
                .public_batch(seed, size)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            block.expected(
                &["run_seed", "round", "public_pool", "public_batch"],
                vec![
                    out("public_seed", seed.to_string()),
                    out("rows", join(rows, |v| v.to_string())),
                ],
            )
        }
        "private-batches" => {
            let run_seed: u64 = block.num("run_seed");
            let node: u64 = block.num("node");
            let samples: usize = block.num("samples");
            let batch: usize = block.num("batch_size");
            let count: usize = block.num("batches");
            let seed = seed::derive(run_seed, &[seed::BATCHES, node]);
            let shard = indexed_shard(samples, 1);
            let mut sampler = BatchSampler::new(samples, batch, seed);
            let mut lines = vec![out("seed", seed.to_string())];
            for b in 0..count {
                let (_, labels) = sampler.next_batch(&shard).unwrap();
                let rows: Vec<u32> = labels.to_vec1().unwrap();
                lines.push(out(format!("batch {b}"), join(rows, |v| v.to_string())));
            }
            block.expected(&["run_seed", "node", "samples", "batch_size", "batches"], lines)
        }
        "split" => {
            let labels: Vec<u8> = block.list("labels");
            // The classes are the labels' (one more than the highest), as for a file.
            let classes = usize::from(labels.iter().copied().max().unwrap_or(0)) + 1;
            let set = Samples {
                shape: vec![1],
                values: Values::U8(vec![0; labels.len()]),
                labels,
            };
            let dataset = Dataset {
                name: "vector".into(),
                format: Format::Idx,
                train: set.clone(),
                test: set,
                classes,
            };
            let cfg = split_config(block);
            let split = split(&dataset, &cfg).unwrap();
            let mut lines = vec![out("public", join(&split.public, |v| v.to_string()))];
            if let Some(order) = class_order(&dataset, &cfg).unwrap() {
                lines.push(out("class order", join(order, |v| v.to_string())));
            }
            for (k, shard) in split.private.iter().enumerate() {
                lines.push(out(format!("node {k}"), join(shard, |v| v.to_string())));
            }
            block.expected(&["seed", "nodes", "partition", "public_pool", "labels"], lines)
        }
        "split-embedded" => {
            let dataset = Dataset::embedded().unwrap();
            let mut cfg = split_config(block);
            cfg.test_size = block.num("test_size");
            let split = split(&dataset, &cfg).unwrap();
            let first = |v: &[usize]| join(v.iter().take(10), |v| v.to_string());
            let mut lines = vec![
                out("public (first 10)", first(&split.public)),
                out("test", format!("0 .. {}", split.test.len())),
            ];
            if let Some(order) = class_order(&dataset, &cfg).unwrap() {
                lines.push(out("class order", join(order, |v| v.to_string())));
            }
            for (stats, shard) in split
                .stats(&dataset.train.labels, dataset.classes)
                .nodes
                .iter()
                .zip(&split.private)
            {
                lines.push(out(
                    format!("node {} histogram", stats.node),
                    join(&stats.histogram, |v| v.to_string()),
                ));
                lines.push(out(format!("node {} (first 10)", stats.node), first(shard)));
            }
            block.expected(&["seed", "nodes", "partition", "public_pool", "test_size"], lines)
        }
        "placement" | "topology" => {
            let resolved: ResolvedChannel = serde_json::from_str(block.get("channel")).unwrap();
            let run_seed: u64 = block.num("run_seed");
            let nodes: usize = block.num("nodes");
            let t: f64 = block.num("t");
            let channel = resolved.channel_at(run_seed, nodes, t).unwrap();
            let mut lines = Vec::new();
            for (i, p) in channel.positions().iter().enumerate() {
                lines.push(out(format!("position {i}"), format!("{:?}, {:?}", p.x_m, p.y_m)));
            }
            if block.kind == "topology" {
                for i in 0..nodes {
                    for j in i + 1..nodes {
                        let link = wdml_channel::Link::new(i, j);
                        lines.push(out(
                            format!("link {i}-{j}"),
                            format!(
                                "distance {:?}, shadowing {:?}, mean snr {:?}",
                                channel.distance_m(link).unwrap(),
                                channel.shadowing_db(link).unwrap(),
                                channel.mean_snr_db(link).unwrap()
                            ),
                        ));
                    }
                }
                for (i, neighbours) in resolved.topology.adjacency(&channel).unwrap().iter().enumerate() {
                    let list = if neighbours.is_empty() {
                        "none".to_string()
                    } else {
                        join(neighbours, |v| v.to_string())
                    };
                    lines.push(out(format!("neighbours {i}"), list));
                }
            }
            block.expected(&["channel", "run_seed", "nodes", "t"], lines)
        }
        "encoding" => {
            let encoding = encoding(block.get("encoding"));
            let rows: u32 = block.num("rows");
            let cols: u32 = block.num("cols");
            let top_k: u32 = block.num("top_k");
            let values: Vec<f32> = block.list("values");
            let encoded = encode(
                &values,
                MessageShape {
                    rows,
                    cols,
                    encoding,
                    top_k,
                },
            );
            let decoded = decode(&encoded).unwrap();
            block.expected(
                &["encoding", "rows", "cols", "top_k", "values"],
                vec![
                    out(
                        "scale",
                        format!("{:?} (0x{:08x})", encoded.scale, encoded.scale.to_bits()),
                    ),
                    out(
                        "offset",
                        format!("{:?} (0x{:08x})", encoded.offset, encoded.offset.to_bits()),
                    ),
                    out("payload", hex_bytes(&encoded.bytes)),
                    out("decoded", join(decoded, |v| format!("{v:?}"))),
                ],
            )
        }
        "frame" => {
            let encoding = encoding(block.get("encoding"));
            let data = (0..block.get("data").len() / 2)
                .map(|i| u8::from_str_radix(&block.get("data")[2 * i..2 * i + 2], 16).unwrap())
                .collect::<Vec<u8>>();
            let frame = Frame {
                run_id: block.get("run_id").to_string(),
                round: block.num("round"),
                round_token: block.num("round_token"),
                sender: block.num("sender"),
                encoding: encoding as i32,
                rows: block.num("rows"),
                cols: block.num("cols"),
                scale: block.num("scale"),
                offset: block.num("offset"),
                index: block.num("index"),
                count: block.num("count"),
                total_bytes: block.num("total_bytes"),
                data,
            };
            // The decoder of the peer service reads it back to the same frame.
            let bytes = frame.encode_to_vec();
            assert_eq!(Frame::decode(bytes.as_slice()).unwrap(), frame);
            block.expected(
                &[
                    "run_id",
                    "round",
                    "round_token",
                    "sender",
                    "encoding",
                    "rows",
                    "cols",
                    "scale",
                    "offset",
                    "index",
                    "count",
                    "total_bytes",
                    "data",
                ],
                vec![out("protobuf", hex_bytes(&bytes))],
            )
        }
        other => panic!("{}:{}: unknown vector kind `{other}`", block.page, block.line),
    }
}

fn encoding(name: &str) -> Encoding {
    match name {
        "F32" => Encoding::F32,
        "F16" => Encoding::F16,
        "Q8" => Encoding::Q8,
        "Q4" => Encoding::Q4,
        "TOPK" => Encoding::Topk,
        other => panic!("unknown encoding {other}"),
    }
}

fn split_config(block: &Block) -> SplitConfig {
    SplitConfig {
        seed: block.num("seed"),
        nodes: block.num("nodes"),
        partition: block.get("partition").parse::<Partition>().unwrap(),
        public_pool: block.num("public_pool"),
        test_size: 0,
        public_from: None,
        public_overlap: 0.0,
        validation: 0,
    }
}

/// A shard whose private labels and public images are their own row numbers (u32), so
/// what the samplers select reads back as the rows they chose.
fn indexed_shard(private: usize, public: usize) -> Shard {
    let device = Device::Cpu;
    let rows = |n: usize| Tensor::from_vec((0..n as u32).collect::<Vec<u32>>(), (n, 1), &device).unwrap();
    Shard {
        private_images: rows(private),
        private_labels: Tensor::from_vec((0..private as u32).collect::<Vec<u32>>(), private, &device).unwrap(),
        public_images: rows(public),
        test_images: rows(1),
        test_labels: Tensor::from_vec(vec![0u32], 1, &device).unwrap(),
        validation: None,
    }
}

#[test]
fn the_documents_vectors_are_what_the_code_computes() {
    let print = std::env::var_os("WDML_SPEC_VECTORS_PRINT").is_some();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut wrong = Vec::new();
    for page in PAGES {
        for block in blocks(page) {
            *seen.entry(block.kind.clone()).or_default() += 1;
            let expected = compute(&block);
            if print {
                println!("{page}:{} ```vector kind={}\n{expected}```\n", block.line, block.kind);
            }
            if expected != block.actual() {
                wrong.push(format!(
                    "{page}:{} (kind={}): the page says\n{}the code computes\n{expected}",
                    block.line,
                    block.kind,
                    block.actual()
                ));
            }
        }
    }
    let missing: Vec<&str> = KINDS.iter().copied().filter(|k| !seen.contains_key(*k)).collect();
    assert!(
        wrong.is_empty(),
        "{} vector(s) differ:\n\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    assert!(
        missing.is_empty(),
        "no vector of kind {missing:?} in {PAGES:?}; found {seen:?}"
    );
}
