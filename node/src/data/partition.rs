//! Splitting a dataset into the nodes' private shards, the public pool and the test set.
//!
//! The training indices are shuffled with the run seed; the first `public_pool` of them
//! form the public pool (whose labels are never used), and the rest — the private pool —
//! is partitioned across the nodes by one of three standard schemes:
//!
//! - **IID**: equal shares of the shuffled pool.
//! - **Dirichlet(α) label skew** (Hsu et al. 2019; the variant of NIID-Bench and FedLab's
//!   `hetero_dir_partition`): for each class, proportions `p ~ Dir(α·1)` over the nodes
//!   split that class's samples; nodes that already hold their fair share get no more.
//!   Small α gives each node few classes, large α tends to IID.
//! - **Shards** (McMahan et al. 2017): sort the pool by label, cut it into `nodes·k`
//!   equal shards, deal `k` random shards to each node, so a node sees about `k` classes.
//!
//! Everything is drawn from one `StdRng` seeded with the run seed, on one thread, so a
//! split is reproducible for a given seed and a given build (`StdRng`'s algorithm is
//! pinned by the `rand` version in `Cargo.lock`, not across `rand` upgrades).

use std::fmt;
use std::str::FromStr;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Gamma};
use serde::{Deserialize, Serialize};

use super::{CLASSES, Dataset};
use crate::{Error, Result};

/// The fewest private samples a node may get under a Dirichlet split.
pub const MIN_DIRICHLET_SAMPLES: usize = 10;
/// How many Dirichlet draws are tried before giving up on [`MIN_DIRICHLET_SAMPLES`].
pub const MAX_DIRICHLET_TRIES: usize = 1000;

/// How the private pool is divided among the nodes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Partition {
    /// Equal random shares.
    Iid,
    /// Label skew: per class, proportions over the nodes drawn from `Dir(alpha·1)`.
    /// Every node must get [`MIN_DIRICHLET_SAMPLES`], which a small alpha cannot give
    /// many more nodes than classes (e.g. alpha 0.01 works up to about 10 nodes).
    Dirichlet {
        /// Concentration, > 0: small is skewed, large is close to IID.
        alpha: f64,
    },
    /// `per_node` label-sorted shards per node.
    Shards {
        /// Shards dealt to each node, ≥ 1.
        per_node: usize,
    },
}

/// The forms [`Partition::from_str`] accepts, for error messages.
const PARTITION_FORMS: &str =
    "`iid`, `dirichlet:<alpha>` (e.g. `dirichlet:0.5`) or `shards:<per node>` (e.g. `shards:2`)";

impl FromStr for Partition {
    type Err = Error;

    /// Parses `iid`, `dirichlet:<alpha>` or `shards:<per node>`.
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::config("data.partition", format!("`{s}` is not one of {PARTITION_FORMS}"));
        let (kind, arg) = match s.trim().split_once(':') {
            Some((kind, arg)) => (kind.trim(), Some(arg.trim())),
            None => (s.trim(), None),
        };
        let partition = match (kind.to_ascii_lowercase().as_str(), arg) {
            ("iid", None) => Partition::Iid,
            ("dirichlet", Some(arg)) => Partition::Dirichlet {
                alpha: arg.parse().map_err(|_| bad())?,
            },
            ("shards", Some(arg)) => Partition::Shards {
                per_node: arg.parse().map_err(|_| bad())?,
            },
            _ => return Err(bad()),
        };
        partition.check()?;
        Ok(partition)
    }
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // f64's Display is the shortest form that parses back to the same value.
        match self {
            Partition::Iid => write!(f, "iid"),
            Partition::Dirichlet { alpha } => write!(f, "dirichlet:{alpha}"),
            Partition::Shards { per_node } => write!(f, "shards:{per_node}"),
        }
    }
}

impl Partition {
    /// Checks the scheme's own parameter, naming its config field.
    fn check(&self) -> Result<()> {
        match *self {
            Partition::Dirichlet { alpha } if !(alpha.is_finite() && alpha > 0.0) => Err(Error::config(
                "data.alpha",
                format!("must be a finite number > 0, got {alpha}"),
            )),
            Partition::Shards { per_node: 0 } => Err(Error::config("data.shards_per_node", "must be at least 1")),
            Partition::Iid | Partition::Dirichlet { .. } | Partition::Shards { .. } => Ok(()),
        }
    }
}

/// What [`split`] needs to know.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SplitConfig {
    /// Seed of every random choice of the split.
    pub seed: u64,
    /// Number of nodes, each getting one private shard.
    pub nodes: usize,
    /// How the private pool is divided.
    pub partition: Partition,
    /// Training images set aside as the public pool (their labels are never used).
    pub public_pool: usize,
    /// 0 for the whole test set, else the first `test_size` test images.
    pub test_size: usize,
}

impl SplitConfig {
    /// Checks the settings against `dataset`; errors name the offending field.
    pub fn validate(&self, dataset: &Dataset) -> Result<()> {
        if self.nodes == 0 {
            return Err(Error::config("nodes", "must be at least 1"));
        }
        self.partition.check()?;
        let train = dataset.train.len();
        if self.public_pool >= train {
            return Err(Error::config(
                "data.public_pool",
                format!(
                    "{} leaves no private data: the training set has {train} images",
                    self.public_pool
                ),
            ));
        }
        let private = train - self.public_pool;
        let (per_node, why) = match self.partition {
            Partition::Iid => (1, "so every node gets at least one".to_string()),
            Partition::Dirichlet { .. } => (MIN_DIRICHLET_SAMPLES, "the Dirichlet split's minimum".to_string()),
            Partition::Shards { per_node } => (per_node, format!("one per shard, {per_node} shards per node")),
        };
        let needed = self.nodes.saturating_mul(per_node);
        if private < needed {
            let field = match self.partition {
                Partition::Shards { .. } => "data.shards_per_node",
                _ => "data.public_pool",
            };
            return Err(Error::config(
                field,
                format!(
                    "the private pool ({train} training images - {} public = {private}) is too small for {} nodes: \
                     needs at least {needed} ({why})",
                    self.public_pool, self.nodes
                ),
            ));
        }
        if self.test_size > dataset.test.len() {
            return Err(Error::config(
                "data.test_size",
                format!(
                    "{} is more than the {} test images (0 means all)",
                    self.test_size,
                    dataset.test.len()
                ),
            ));
        }
        Ok(())
    }
}

/// Indices into `dataset.train` for each node's private shard and for the public pool
/// (labels never used), and indices into `dataset.test`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Split {
    /// `private[k]`: node k's shard, never empty.
    pub private: Vec<Vec<usize>>,
    /// The public pool, in shuffled order.
    pub public: Vec<usize>,
    /// The test images every node evaluates on.
    pub test: Vec<usize>,
}

/// Splits `dataset` as `cfg` says; deterministic for a given seed (and build).
pub fn split(dataset: &Dataset, cfg: &SplitConfig) -> Result<Split> {
    cfg.validate(dataset)?;
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut order: Vec<usize> = (0..dataset.train.len()).collect();
    order.shuffle(&mut rng);
    let private_pool = order.split_off(cfg.public_pool);
    let public = order;

    let labels = &dataset.train.labels;
    let private = match cfg.partition {
        Partition::Iid => iid(&private_pool, cfg.nodes),
        Partition::Dirichlet { alpha } => dirichlet(&private_pool, labels, cfg.nodes, alpha, &mut rng)?,
        Partition::Shards { per_node } => shards(&private_pool, labels, cfg.nodes, per_node, &mut rng),
    };
    // Validation makes this impossible; checked anyway so no caller ever sees an empty shard.
    if let Some(node) = private.iter().position(Vec::is_empty) {
        return Err(Error::config("nodes", format!("node {node} got no private data")));
    }

    let test_len = if cfg.test_size == 0 {
        dataset.test.len()
    } else {
        cfg.test_size
    };
    Ok(Split {
        private,
        public,
        test: (0..test_len).collect(),
    })
}

/// Cuts `pool` into `nodes` contiguous runs whose sizes differ by at most one.
fn equal_runs<T: Clone>(pool: &[T], nodes: usize) -> Vec<Vec<T>> {
    let (base, extra) = (pool.len() / nodes, pool.len() % nodes);
    let mut start = 0;
    (0..nodes)
        .map(|k| {
            let len = base + usize::from(k < extra);
            let run = pool[start..start + len].to_vec();
            start += len;
            run
        })
        .collect()
}

/// IID: the (already shuffled) pool in equal runs.
fn iid(pool: &[usize], nodes: usize) -> Vec<Vec<usize>> {
    equal_runs(pool, nodes)
}

/// Dirichlet(α) label skew, redrawn until every node has [`MIN_DIRICHLET_SAMPLES`].
fn dirichlet(pool: &[usize], labels: &[u8], nodes: usize, alpha: f64, rng: &mut StdRng) -> Result<Vec<Vec<usize>>> {
    if nodes == 1 {
        return Ok(vec![pool.to_vec()]);
    }
    // The pool is shuffled, so each class's members are in random order already.
    // Sized by the labels present, so a hand-built set with more classes loses nothing.
    let classes = pool.iter().map(|&i| usize::from(labels[i]) + 1).max().unwrap_or(0);
    let mut by_class = vec![Vec::new(); classes.max(CLASSES)];
    for &index in pool {
        by_class[usize::from(labels[index])].push(index);
    }
    // A node holding its fair share (or more) takes no further classes; this keeps
    // shard sizes in check and makes the minimum reachable even for tiny α.
    let fair_share = pool.len() as f64 / nodes as f64;
    let gamma = Gamma::new(alpha + 1.0, 1.0)
        .map_err(|e| Error::config("data.alpha", format!("cannot draw Gamma({}): {e}", alpha + 1.0)))?;

    for _ in 0..MAX_DIRICHLET_TRIES {
        let mut shards: Vec<Vec<usize>> = vec![Vec::new(); nodes];
        for members in &by_class {
            let open: Vec<bool> = shards.iter().map(|s| (s.len() as f64) < fair_share).collect();
            let weights = dirichlet_weights(nodes, alpha, &gamma, &open, rng);
            let total: f64 = weights.iter().sum();
            // Cut points at the cumulative proportions, as the reference implementations do.
            let mut cumulative = 0.0;
            let mut start = 0;
            for (k, weight) in weights.iter().enumerate() {
                cumulative += weight;
                let end = if k + 1 == nodes {
                    members.len()
                } else {
                    ((cumulative / total * members.len() as f64) as usize).clamp(start, members.len())
                };
                shards[k].extend_from_slice(&members[start..end]);
                start = end;
            }
        }
        if shards.iter().all(|s| s.len() >= MIN_DIRICHLET_SAMPLES) {
            return Ok(shards);
        }
    }
    Err(Error::config(
        "data.alpha",
        format!(
            "after {MAX_DIRICHLET_TRIES} draws with alpha = {alpha}, some node still had fewer than \
             {MIN_DIRICHLET_SAMPLES} private samples (a small alpha gives each class to few nodes, so with many nodes some \
             get almost nothing); use a larger alpha, fewer nodes or a smaller public pool"
        ),
    ))
}

/// Proportions `p ~ Dir(α·1)` over `nodes`, zeroed where `open` is false, unnormalised.
///
/// Drawn in log space — `Gamma(α) = Gamma(α+1)·U^(1/α)` — because for small α the Gamma
/// samples underflow to 0 and every weight could vanish. Scaling by the largest open
/// weight keeps at least one weight at 1, so the total is never 0.
fn dirichlet_weights(nodes: usize, alpha: f64, gamma: &Gamma<f64>, open: &[bool], rng: &mut StdRng) -> Vec<f64> {
    let logs: Vec<f64> = (0..nodes)
        .map(|_| {
            let u = 1.0 - rng.random::<f64>(); // in (0, 1], so ln is finite
            gamma.sample(rng).ln() + u.ln() / alpha
        })
        .collect();
    let max = logs
        .iter()
        .zip(open)
        .filter(|&(_, &o)| o)
        .map(|(&l, _)| l)
        .fold(f64::NEG_INFINITY, f64::max);
    logs.iter()
        .zip(open)
        .map(|(&l, &o)| if o { (l - max).exp() } else { 0.0 })
        .collect()
}

/// McMahan shards: the pool sorted by label, cut into `nodes·per_node` equal shards,
/// `per_node` random shards dealt to each node.
fn shards(pool: &[usize], labels: &[u8], nodes: usize, per_node: usize, rng: &mut StdRng) -> Vec<Vec<usize>> {
    let mut sorted = pool.to_vec();
    // Stable, so within a label the shuffled order is kept.
    sorted.sort_by_key(|&index| labels[index]);
    let shards = equal_runs(&sorted, nodes * per_node);
    let mut deal: Vec<usize> = (0..shards.len()).collect();
    deal.shuffle(rng);
    deal.chunks(per_node)
        .map(|ids| ids.iter().flat_map(|&id| shards[id].iter().copied()).collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::data::ImageSet;

    /// A synthetic dataset: `per_class` 1×1 images of each class, labels in class order.
    fn synthetic(per_class: usize) -> Dataset {
        let labels: Vec<u8> = (0..CLASSES as u8)
            .flat_map(|c| std::iter::repeat_n(c, per_class))
            .collect();
        let set = ImageSet {
            images: vec![0; labels.len()],
            labels,
            height: 1,
            width: 1,
        };
        Dataset {
            name: "synthetic".into(),
            train: set.clone(),
            test: set,
        }
    }

    fn cfg(partition: Partition) -> SplitConfig {
        SplitConfig {
            seed: 7,
            nodes: 5,
            partition,
            public_pool: 100,
            test_size: 0,
        }
    }

    fn field(err: Error) -> String {
        match err {
            Error::Config { field, .. } => field,
            other => panic!("expected a config error, got {other}"),
        }
    }

    fn all_partitions() -> [Partition; 4] {
        [
            Partition::Iid,
            Partition::Dirichlet { alpha: 0.1 },
            Partition::Dirichlet { alpha: 100.0 },
            Partition::Shards { per_node: 2 },
        ]
    }

    /// Mean over nodes of the entropy (bits) of the node's label distribution.
    fn mean_label_entropy(split: &Split, labels: &[u8]) -> f64 {
        let entropies = split.private.iter().map(|shard| {
            let mut counts = [0usize; CLASSES];
            for &i in shard {
                counts[usize::from(labels[i])] += 1;
            }
            let n = shard.len() as f64;
            counts
                .iter()
                .filter(|&&c| c > 0)
                .map(|&c| -(c as f64 / n) * (c as f64 / n).log2())
                .sum::<f64>()
        });
        entropies.sum::<f64>() / split.private.len() as f64
    }

    #[test]
    fn partition_parses_and_round_trips() {
        for p in all_partitions()
            .into_iter()
            .chain([Partition::Dirichlet { alpha: 0.3 }])
        {
            assert_eq!(p.to_string().parse::<Partition>().unwrap(), p);
        }
        assert_eq!(
            " Dirichlet : 0.5 ".parse::<Partition>().unwrap(),
            Partition::Dirichlet { alpha: 0.5 }
        );
        assert_eq!(
            "shards:2".parse::<Partition>().unwrap(),
            Partition::Shards { per_node: 2 }
        );
        for bad in ["", "iid:1", "dirichlet", "dirichlet:x", "shards:-1", "gauss"] {
            let err = bad.parse::<Partition>().unwrap_err();
            assert!(err.to_string().contains("`iid`, `dirichlet:<alpha>`"), "{bad}: {err}");
            assert_eq!(field(err), "data.partition");
        }
        assert_eq!(field("dirichlet:0".parse::<Partition>().unwrap_err()), "data.alpha");
        assert_eq!(field("dirichlet:nan".parse::<Partition>().unwrap_err()), "data.alpha");
        assert_eq!(
            field("shards:0".parse::<Partition>().unwrap_err()),
            "data.shards_per_node"
        );
    }

    #[test]
    fn partition_serde_is_tagged() {
        let json = serde_json::to_string(&Partition::Dirichlet { alpha: 0.5 }).unwrap();
        assert_eq!(json, r#"{"kind":"dirichlet","alpha":0.5}"#);
        let back: Partition = serde_json::from_str(r#"{"kind":"shards","per_node":3}"#).unwrap();
        assert_eq!(back, Partition::Shards { per_node: 3 });
        assert_eq!(serde_json::to_string(&Partition::Iid).unwrap(), r#"{"kind":"iid"}"#);
    }

    #[test]
    fn split_is_disjoint_and_covers_the_training_set() {
        let dataset = synthetic(60);
        for partition in all_partitions() {
            let split = split(&dataset, &cfg(partition.clone())).unwrap();
            assert_eq!(split.public.len(), 100);
            assert_eq!(split.private.len(), 5);
            let mut seen: Vec<usize> = split.public.clone();
            for shard in &split.private {
                assert!(!shard.is_empty(), "{partition}");
                seen.extend(shard);
            }
            seen.sort_unstable();
            assert_eq!(seen, (0..600).collect::<Vec<_>>(), "{partition}");
            assert_eq!(split.test, (0..600).collect::<Vec<_>>());
        }
    }

    #[test]
    fn iid_shares_differ_by_at_most_one() {
        let dataset = synthetic(60);
        let split = split(
            &dataset,
            &SplitConfig {
                nodes: 7,
                ..cfg(Partition::Iid)
            },
        )
        .unwrap();
        let sizes: BTreeSet<usize> = split.private.iter().map(Vec::len).collect();
        assert_eq!(sizes, BTreeSet::from([71, 72])); // 500 = 3·71 + 4·72
    }

    #[test]
    fn split_is_deterministic_per_seed() {
        let dataset = synthetic(60);
        for partition in all_partitions() {
            let a = split(&dataset, &cfg(partition.clone())).unwrap();
            let b = split(&dataset, &cfg(partition.clone())).unwrap();
            let c = split(
                &dataset,
                &SplitConfig {
                    seed: 8,
                    ..cfg(partition.clone())
                },
            )
            .unwrap();
            assert_eq!(a, b, "{partition}");
            assert_ne!(a, c, "{partition}");
        }
    }

    #[test]
    fn small_alpha_is_more_skewed_than_large_alpha() {
        let dataset = Dataset::embedded().unwrap();
        let entropy = |alpha| {
            let cfg = SplitConfig {
                seed: 3,
                nodes: 10,
                partition: Partition::Dirichlet { alpha },
                public_pool: 1000,
                test_size: 0,
            };
            mean_label_entropy(&split(&dataset, &cfg).unwrap(), &dataset.train.labels)
        };
        let (skewed, mild, flat) = (entropy(0.1), entropy(1.0), entropy(1000.0));
        assert!(skewed < mild && mild < flat, "{skewed} {mild} {flat}");
        assert!(flat > 3.2, "near log2(10) = 3.32: {flat}");
        assert!(skewed < 2.0, "{skewed}");
    }

    #[test]
    fn tiny_alpha_still_gives_every_node_the_minimum() {
        let dataset = Dataset::embedded().unwrap();
        let cfg = |nodes| SplitConfig {
            seed: 1,
            nodes,
            partition: Partition::Dirichlet { alpha: 0.001 },
            public_pool: 500,
            test_size: 100,
        };
        for nodes in [2, 5, 10] {
            let split = split(&dataset, &cfg(nodes)).unwrap();
            let sizes: Vec<usize> = split.private.iter().map(Vec::len).collect();
            assert!(sizes.iter().all(|&n| n >= MIN_DIRICHLET_SAMPLES), "{sizes:?}");
            assert_eq!(split.test.len(), 100);
        }
        // With twice as many nodes as classes, each class going to about one node leaves
        // half the nodes empty: a bounded search, then a clear error.
        let err = split(&dataset, &cfg(20)).unwrap_err();
        assert!(err.to_string().contains("use a larger alpha"), "{err}");
        assert_eq!(field(err), "data.alpha");
    }

    #[test]
    fn label_pure_shards_give_at_most_k_labels() {
        // 10 classes × 60, no public pool, 5 nodes × 2 shards of 60: each shard is one class.
        let dataset = synthetic(60);
        for seed in 0..5 {
            let cfg = SplitConfig {
                seed,
                nodes: 5,
                partition: Partition::Shards { per_node: 2 },
                public_pool: 0,
                test_size: 0,
            };
            let split = split(&dataset, &cfg).unwrap();
            for shard in &split.private {
                let labels: BTreeSet<u8> = shard.iter().map(|&i| dataset.train.labels[i]).collect();
                assert!(labels.len() <= 2, "{labels:?}");
                assert_eq!(shard.len(), 120);
            }
        }
        // In general a shard straddles at most two labels when it is no larger than any class
        // (here ≤ 275 images; each class has about 550 in the private pool).
        let dataset = Dataset::embedded().unwrap();
        for k in [2, 3, 5] {
            let cfg = SplitConfig {
                seed: 9,
                nodes: 10,
                partition: Partition::Shards { per_node: k },
                public_pool: 500,
                test_size: 0,
            };
            let split = split(&dataset, &cfg).unwrap();
            for shard in &split.private {
                let labels: BTreeSet<u8> = shard.iter().map(|&i| dataset.train.labels[i]).collect();
                assert!(labels.len() <= 2 * k, "k = {k}: {labels:?}");
            }
        }
    }

    #[test]
    fn validation_names_the_field() {
        let dataset = synthetic(10); // 100 training images
        let base = SplitConfig {
            seed: 0,
            nodes: 4,
            partition: Partition::Iid,
            public_pool: 20,
            test_size: 0,
        };
        assert!(base.validate(&dataset).is_ok());
        let cases = [
            (
                SplitConfig {
                    nodes: 0,
                    ..base.clone()
                },
                "nodes",
            ),
            (
                SplitConfig {
                    public_pool: 100,
                    ..base.clone()
                },
                "data.public_pool",
            ),
            (
                SplitConfig {
                    public_pool: 97,
                    ..base.clone()
                },
                "data.public_pool",
            ),
            (
                SplitConfig {
                    partition: Partition::Dirichlet { alpha: -1.0 },
                    ..base.clone()
                },
                "data.alpha",
            ),
            (
                SplitConfig {
                    partition: Partition::Dirichlet { alpha: f64::INFINITY },
                    ..base.clone()
                },
                "data.alpha",
            ),
            // 4 nodes × 10 minimum > 50 private.
            (
                SplitConfig {
                    partition: Partition::Dirichlet { alpha: 1.0 },
                    public_pool: 61,
                    ..base.clone()
                },
                "data.public_pool",
            ),
            (
                SplitConfig {
                    partition: Partition::Shards { per_node: 0 },
                    ..base.clone()
                },
                "data.shards_per_node",
            ),
            (
                SplitConfig {
                    partition: Partition::Shards { per_node: 21 },
                    ..base.clone()
                },
                "data.shards_per_node",
            ),
            (
                SplitConfig {
                    test_size: 101,
                    ..base.clone()
                },
                "data.test_size",
            ),
        ];
        for (cfg, expected) in cases {
            assert_eq!(field(cfg.validate(&dataset).unwrap_err()), expected, "{cfg:?}");
            assert_eq!(field(split(&dataset, &cfg).unwrap_err()), expected, "{cfg:?}");
        }
    }
}
