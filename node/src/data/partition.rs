//! Splitting a dataset into the nodes' private shards, the public pool and the test set.
//!
//! The training indices are shuffled with the run seed; the first `public_pool` of them
//! form the public pool (whose labels are never used), and the rest — the private pool —
//! is partitioned across the nodes by one of these schemes (`data.partition`):
//!
//! - **`iid`**: equal shares of the shuffled pool (sizes differ by at most one).
//! - **`dirichlet:<α>`** — plain per-class Dirichlet label skew, **the default convention
//!   in the field** and what "Dirichlet(α) non-IID" usually means: Flower Datasets'
//!   `DirichletPartitioner` with its default `self_balancing=False`. For each class,
//!   proportions `p ~ Dir(α·1)` over all nodes cut that class's samples at the cumulative
//!   proportions (`⌊(p₁+…+p_k)·n_c⌋`, the last node taking the rest), with no cap on a
//!   node's size. Small α gives each node few classes, large α tends to IID.
//! - **`dirichlet-balanced:<α>`** — the same with a fair-share cap: once a node holds
//!   `≥ N/n` samples (N the private pool, n the nodes) it gets weight 0 for every class
//!   still to be split. This is FedLab's `hetero_dir_partition` and NIID-Bench's
//!   `noniid-labeldir` (Li et al. 2022, "Federated Learning on Non-IID Data Silos"), after
//!   Yurochkin et al. 2019 ("Bayesian Nonparametric Federated Learning of Neural
//!   Networks"); Flower's `self_balancing=True`. The cap keeps sizes in check but leaves
//!   late classes to few nodes, so it is more skewed than the plain split at the same α.
//! - **`dirichlet-per-node:<α>`** — Hsu, Qi & Brown 2019 ("Measuring the Effects of
//!   Non-Identical Data Distribution for Federated Visual Classification"): each node
//!   draws its own class distribution `q_k ~ Dir(α·p)`, `p` the pool's class frequencies,
//!   and gets an equal share of the pool whose samples' classes are drawn from `q_k`
//!   (without replacement, see [`Partition::DirichletPerNode`]).
//! - **`shards:<k>`** (McMahan et al. 2017): sort the pool by label, cut it into `n·k`
//!   equal shards, deal `k` random shards to each node, so a node sees about `k` classes.
//!
//! The two per-class Dirichlet splits are redrawn until every node has at least
//! [`MIN_PARTITION_SIZE`] samples (Flower's `min_partition_size`, NIID-Bench's
//! `min_require_size`, both 10), at most [`MAX_DIRICHLET_TRIES`] times. Unlike the
//! reference implementations, which take the classes in the order 0, 1, …, the three
//! Dirichlet splits take them in an order drawn from the seed ([`class_order`]): with the
//! fair-share cap the order decides which classes the full nodes miss, and a fixed order
//! would always starve the same classes.
//!
//! # Reproducibility and the order of random draws
//!
//! Everything is drawn from one generator (ChaCha12, [`crate::seed::rng`]) seeded with
//! the split seed, on one thread, so a split is a function of the seed and of named
//! algorithms (the determinism contract of docs/determinism.md). The draws are, in this
//! order:
//!
//! 1. a shuffle of all training indices (`SliceRandom::shuffle`); the first `public_pool`
//!    are the public pool, the rest (in that order) the private pool, whose first
//!    `validation` are the validation set (`data.validation`; no draw of its own);
//! 2. per scheme —
//!    - `iid`: nothing more;
//!    - `shards:<k>`: a shuffle of the `n·k` shard ids, dealt `k` at a time;
//!    - the Dirichlet splits: first a shuffle of the class ids `0..C` (the class order,
//!      `C` = the dataset's classes, [`Dataset::classes`]), then
//!      - `dirichlet` / `dirichlet-balanced`: per attempt, per class in the class order
//!        (empty classes included), per node `0..n`: one uniform `U` then one
//!        `Gamma(α+1)` sample (together one `Gamma(α)` sample, see below);
//!      - `dirichlet-per-node`: per node `0..n`, per class in the class order that occurs
//!        in the pool: `U` then `Gamma(α·p_c+1)` (the node's `q_k`); then, round-robin
//!        over the nodes (one sample to each node that still needs one, repeated), one
//!        uniform per sample to pick its class.
//!
//! Gamma draws are made in log space — `Gamma(a) = Gamma(a+1)·U^(1/a)` — because for
//! small shapes they underflow to 0 and every weight of a draw could vanish.

use std::fmt;
use std::str::FromStr;

use rand::Rng;
use rand::seq::SliceRandom;
use rand_distr::{Distribution, Gamma};
use serde::{Deserialize, Serialize};

use super::Dataset;
use crate::seed::Rng as SeedRng;
use crate::{Error, Result};

/// The fewest private samples a node may get under a Dirichlet split (Flower Datasets'
/// `min_partition_size` default).
pub const MIN_PARTITION_SIZE: usize = 10;
/// How many draws of a per-class Dirichlet split are tried before giving up on
/// [`MIN_PARTITION_SIZE`].
pub const MAX_DIRICHLET_TRIES: usize = 1000;

/// How the private pool is divided among the nodes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Partition {
    /// `iid`: equal random shares.
    Iid,
    /// `dirichlet:<alpha>`: plain per-class label skew, as Flower Datasets'
    /// `DirichletPartitioner` (default `self_balancing=False`): per class, proportions
    /// over all nodes drawn from `Dir(alpha·1)`, no cap. Every node must get
    /// [`MIN_PARTITION_SIZE`], which a small alpha cannot give many more nodes than
    /// classes (each class then goes almost whole to one node).
    Dirichlet {
        /// Concentration, > 0: small is skewed, large is close to IID.
        alpha: f64,
    },
    /// `dirichlet-balanced:<alpha>`: per-class `Dir(alpha·1)` proportions, but a node that
    /// already holds its fair share (private pool / nodes) gets none of the classes still
    /// to be split. FedLab's `hetero_dir_partition` / NIID-Bench, after Yurochkin et al.
    /// 2019. Same minimum as [`Partition::Dirichlet`], reachable for smaller alpha.
    DirichletBalanced {
        /// Concentration, > 0: small is skewed, large is close to IID.
        alpha: f64,
    },
    /// `dirichlet-per-node:<alpha>`: Hsu, Qi & Brown 2019. Node k draws its class
    /// distribution `q_k ~ Dir(alpha·p)` (`p`: the pool's class frequencies) and gets an
    /// equal share of the pool (sizes differ by at most one). The shares are filled one
    /// sample at a time, round-robin over the nodes: each sample's class is drawn from
    /// `q_k` renormalised over the classes with samples left (or, if `q_k` weights none of
    /// those, from `p` over them), and the node takes that class's next unused sample.
    DirichletPerNode {
        /// Concentration, > 0: small gives each node about one class, large follows `p`.
        alpha: f64,
    },
    /// `shards:<k>`: `per_node` label-sorted shards per node.
    Shards {
        /// Shards dealt to each node, ≥ 1.
        per_node: usize,
    },
}

/// The forms [`Partition::from_str`] accepts, for error messages.
const PARTITION_FORMS: &str = "`iid`, `dirichlet:<alpha>` (e.g. `dirichlet:0.5`), `dirichlet-balanced:<alpha>`, \
     `dirichlet-per-node:<alpha>` or `shards:<per node>` (e.g. `shards:2`)";

impl FromStr for Partition {
    type Err = Error;

    /// Parses `iid`, `dirichlet:<alpha>`, `dirichlet-balanced:<alpha>`,
    /// `dirichlet-per-node:<alpha>` or `shards:<per node>` (case-insensitive kind).
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::config("data.partition", format!("`{s}` is not one of {PARTITION_FORMS}"));
        let (kind, arg) = match s.trim().split_once(':') {
            Some((kind, arg)) => (kind.trim(), Some(arg.trim())),
            None => (s.trim(), None),
        };
        let alpha = |arg: &str| arg.parse::<f64>().map_err(|_| bad());
        let partition = match (kind.to_ascii_lowercase().as_str(), arg) {
            ("iid", None) => Partition::Iid,
            ("dirichlet", Some(arg)) => Partition::Dirichlet { alpha: alpha(arg)? },
            ("dirichlet-balanced", Some(arg)) => Partition::DirichletBalanced { alpha: alpha(arg)? },
            ("dirichlet-per-node", Some(arg)) => Partition::DirichletPerNode { alpha: alpha(arg)? },
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
            Partition::DirichletBalanced { alpha } => write!(f, "dirichlet-balanced:{alpha}"),
            Partition::DirichletPerNode { alpha } => write!(f, "dirichlet-per-node:{alpha}"),
            Partition::Shards { per_node } => write!(f, "shards:{per_node}"),
        }
    }
}

impl Partition {
    /// The concentration of a Dirichlet split, `None` for `iid` and `shards`.
    pub fn alpha(&self) -> Option<f64> {
        match *self {
            Partition::Dirichlet { alpha }
            | Partition::DirichletBalanced { alpha }
            | Partition::DirichletPerNode { alpha } => Some(alpha),
            Partition::Iid | Partition::Shards { .. } => None,
        }
    }

    /// The fewest private samples this scheme needs per node: 1 for `iid`, one per shard
    /// for `shards`, [`MIN_PARTITION_SIZE`] for the Dirichlet splits.
    pub fn min_per_node(&self) -> usize {
        match *self {
            Partition::Iid => 1,
            Partition::Shards { per_node } => per_node,
            Partition::Dirichlet { .. } | Partition::DirichletBalanced { .. } | Partition::DirichletPerNode { .. } => {
                MIN_PARTITION_SIZE
            }
        }
    }

    /// Checks the scheme's own parameter, naming its config field.
    fn check(&self) -> Result<()> {
        match (self, self.alpha()) {
            (_, Some(alpha)) if !(alpha.is_finite() && alpha > 0.0) => Err(Error::config(
                "data.alpha",
                format!("must be a finite number > 0, got {alpha}"),
            )),
            (Partition::Shards { per_node: 0 }, _) => Err(Error::config("data.shards_per_node", "must be at least 1")),
            _ => Ok(()),
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
    /// Training samples held out as the validation set: the first this many of the
    /// shuffled private pool, before it is divided (0: none, and the split is what it
    /// was before validation sets existed).
    #[serde(default)]
    pub validation: usize,
    /// `Some(n)`: the public pool is drawn from another dataset of `n` samples
    /// (`data.public`), and the whole training set is private.
    #[serde(default)]
    pub public_from: Option<usize>,
    /// `data.public_overlap`: the share of each node's shard that is also put in the
    /// public pool, for membership inference to be measurable (0: none, and the split
    /// is the one before the knob existed, bit for bit). See [`Split::members`].
    #[serde(default)]
    pub public_overlap: f64,
}

impl SplitConfig {
    /// Checks the settings against `dataset`; errors name the offending field.
    pub fn validate(&self, dataset: &Dataset) -> Result<()> {
        if self.nodes == 0 {
            return Err(Error::config("nodes", "must be at least 1"));
        }
        self.partition.check()?;
        self.check_overlap()?;
        let train = dataset.train.len();
        let private = match self.public_from {
            Some(public) if self.public_pool > public => {
                return Err(Error::config(
                    "data.public_pool",
                    format!(
                        "{} is more than the public dataset's {public} samples (data.public)",
                        self.public_pool
                    ),
                ));
            }
            Some(_) => train,
            None if self.public_pool >= train => {
                return Err(Error::config(
                    "data.public_pool",
                    format!(
                        "{} leaves no private data: the training set has {train} images",
                        self.public_pool
                    ),
                ));
            }
            None => train - self.public_pool,
        };
        if self.validation >= private {
            return Err(Error::config(
                "data.validation",
                format!(
                    "{} leaves no private data: the private pool has {private} samples; hold out fewer",
                    self.validation
                ),
            ));
        }
        let private = private - self.validation;
        let public = if self.public_from.is_some() {
            0
        } else {
            self.public_pool
        };
        let per_node = self.partition.min_per_node();
        let why = match self.partition {
            Partition::Iid => "so every node gets at least one".to_string(),
            Partition::Shards { per_node } => format!("one per shard, {per_node} shards per node"),
            _ => format!("the Dirichlet splits' minimum of {MIN_PARTITION_SIZE} per node"),
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
                    "the private pool ({train} training images - {public} public - {} validation = {private}) is \
                     too small for {} nodes: needs at least {needed} ({why})",
                    self.validation, self.nodes
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

    fn check_overlap(&self) -> Result<()> {
        check_public_overlap(self.public_overlap, self.public_from.is_some())
    }
}

/// `data.public_overlap`: a share in [0, 1], and only where the public pool comes from
/// the training set (`public_set`: it comes from `data.public`, another dataset, which
/// cannot hold a private row). The error names the field and the way to move it.
pub fn check_public_overlap(share: f64, public_set: bool) -> Result<()> {
    let field = "data.public_overlap";
    if !share.is_finite() {
        return Err(Error::config(field, format!("{share} is not a finite number")));
    }
    if share < 0.0 {
        return Err(Error::config(
            field,
            format!(
                "{share} is negative: it is the share of each shard also put in the public pool; raise it to 0 or more"
            ),
        ));
    }
    if share > 1.0 {
        return Err(Error::config(
            field,
            format!(
                "{share} is more than 1: it is the share of each shard also put in the public pool; lower it to 1 or less"
            ),
        ));
    }
    if share > 0.0 && public_set {
        return Err(Error::config(
            field,
            format!(
                "{share} with data.public: the public pool is drawn from another dataset, which holds no private \
                 row; set it to 0, or draw the pool from the training set (no data.public)"
            ),
        ));
    }
    Ok(())
}

/// How many of a shard of `len` rows `share` puts in the public pool: `share · len`
/// rounded half up.
pub fn overlap_rows(share: f64, len: usize) -> usize {
    ((share * len as f64 + 0.5).floor() as usize).min(len)
}

/// Indices into `dataset.train` for each node's private shard and for the public pool
/// (labels never used; into the public dataset's training set when it has its own),
/// and indices into `dataset.test`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Split {
    /// `private[k]`: node k's shard, never empty.
    pub private: Vec<Vec<usize>>,
    /// The public pool, in shuffled order.
    pub public: Vec<usize>,
    /// The test images every node evaluates on.
    pub test: Vec<usize>,
    /// The validation set every node evaluates on: indices into `dataset.train`, in
    /// no shard and not in the public pool (empty: none).
    pub validation: Vec<usize>,
    /// `members[k]`: positions in `public` of node k's rows that `data.public_overlap`
    /// also put there (its members, for a membership attack), ascending; empty for
    /// every node without the overlap. Every other public row is no node's.
    pub members: Vec<Vec<usize>>,
}

/// The realised split: each node's shard size and label histogram.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitStats {
    /// One entry per node, in node order.
    pub nodes: Vec<NodeStats>,
}

/// One node's private shard, summarised.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStats {
    /// The node's index.
    pub node: usize,
    /// Private samples the node holds.
    pub samples: usize,
    /// `histogram[c]`: how many of them have label `c`, for every class.
    pub histogram: Vec<usize>,
}

impl Split {
    /// Each node's shard size and label histogram over `classes`; `labels` are the
    /// training labels (`dataset.train.labels`). A label `>= classes` (which the loaders
    /// never produce) counts in `samples` but in no histogram bin.
    ///
    /// # Panics
    /// If a shard index is out of range of `labels` (i.e. `labels` is not the training
    /// set this split was made from).
    pub fn stats(&self, labels: &[u8], classes: usize) -> SplitStats {
        let nodes = self
            .private
            .iter()
            .enumerate()
            .map(|(node, shard)| {
                let mut histogram = vec![0; classes];
                for &i in shard {
                    if let Some(bin) = histogram.get_mut(usize::from(labels[i])) {
                        *bin += 1;
                    }
                }
                NodeStats {
                    node,
                    samples: shard.len(),
                    histogram,
                }
            })
            .collect();
        SplitStats { nodes }
    }
}

/// Splits `dataset` as `cfg` says; deterministic for a given seed (and build).
pub fn split(dataset: &Dataset, cfg: &SplitConfig) -> Result<Split> {
    let (mut rng, public, mut private_pool) = shuffled_pool(dataset, cfg)?;
    // No draw of its own: with no validation set the split is the one before they
    // existed, bit for bit.
    let validation: Vec<usize> = private_pool.drain(..cfg.validation).collect();
    let labels = &dataset.train.labels;
    let nodes = cfg.nodes;
    let private = match cfg.partition {
        Partition::Iid => iid(&private_pool, nodes),
        Partition::Shards { per_node } => shards(&private_pool, labels, nodes, per_node, &mut rng),
        Partition::Dirichlet { alpha } | Partition::DirichletBalanced { alpha } => {
            let by_class = by_class(&private_pool, labels, dataset.classes);
            let order = draw_class_order(by_class.len(), &mut rng);
            let balanced = matches!(cfg.partition, Partition::DirichletBalanced { .. });
            match per_class_dirichlet(&by_class, &order, nodes, alpha, balanced, &mut rng)? {
                Some((shards, _attempts)) => shards,
                None => {
                    return Err(Error::config(
                        "data.partition",
                        format!(
                            "`{}` with {nodes} nodes: after {MAX_DIRICHLET_TRIES} draws some node still had fewer \
                             than {MIN_PARTITION_SIZE} private samples (a small alpha gives each class to few nodes, \
                             so with many nodes some get almost nothing); use a larger alpha, fewer nodes or a \
                             smaller public pool (data.public_pool)",
                            cfg.partition
                        ),
                    ));
                }
            }
        }
        Partition::DirichletPerNode { alpha } => {
            let by_class = by_class(&private_pool, labels, dataset.classes);
            let order = draw_class_order(by_class.len(), &mut rng);
            per_node_dirichlet(&by_class, &order, nodes, alpha, &mut rng)?
        }
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
    let (public, members) = overlap(public, &private, cfg);
    Ok(Split {
        private,
        public,
        test: (0..test_len).collect(),
        validation,
        members,
    })
}

/// Appends each node's members (`data.public_overlap`) to the public pool, node by node:
/// for node k, the first `overlap_rows(share, |shard k|)` of a shuffle of its shard, from
/// a generator of their own (so the rest of the split draws what it drew without them).
/// The pool and the members' positions in it, ascending.
fn overlap(mut public: Vec<usize>, private: &[Vec<usize>], cfg: &SplitConfig) -> (Vec<usize>, Vec<Vec<usize>>) {
    if cfg.public_overlap == 0.0 {
        return (public, vec![Vec::new(); private.len()]);
    }
    let mut rng = crate::seed::rng(crate::seed::derive(cfg.seed, &[crate::seed::PUBLIC_OVERLAP]));
    let mut members = Vec::with_capacity(private.len());
    for shard in private {
        let mut rows = shard.clone();
        let (chosen, _) = rows.partial_shuffle(&mut rng, overlap_rows(cfg.public_overlap, shard.len()));
        let start = public.len();
        public.extend_from_slice(chosen);
        members.push((start..public.len()).collect());
    }
    (public, members)
}

/// The order in which a Dirichlet split of `dataset` under `cfg` takes the classes (class
/// ids, a permutation of `0..C`), `None` for `iid` and `shards`. Recomputed from the seed
/// exactly as [`split`] draws it.
pub fn class_order(dataset: &Dataset, cfg: &SplitConfig) -> Result<Option<Vec<usize>>> {
    if cfg.partition.alpha().is_none() {
        cfg.validate(dataset)?;
        return Ok(None);
    }
    let (mut rng, _, mut private_pool) = shuffled_pool(dataset, cfg)?;
    private_pool.drain(..cfg.validation);
    let classes = by_class(&private_pool, &dataset.train.labels, dataset.classes).len();
    Ok(Some(draw_class_order(classes, &mut rng)))
}

/// Validates `cfg`, seeds the split's RNG and makes the first draw: the shuffle of the
/// training indices, cut into the public pool and the private pool.
fn shuffled_pool(dataset: &Dataset, cfg: &SplitConfig) -> Result<(SeedRng, Vec<usize>, Vec<usize>)> {
    cfg.validate(dataset)?;
    let mut rng = crate::seed::rng(cfg.seed);
    let mut order: Vec<usize> = (0..dataset.train.len()).collect();
    order.shuffle(&mut rng);
    if let Some(public) = cfg.public_from {
        // A pool of its own: the whole training set is private, and the public pool the
        // first of a shuffle of the public set, drawn from a seed of its own.
        let mut pool: Vec<usize> = (0..public).collect();
        pool.shuffle(&mut crate::seed::rng(crate::seed::derive(
            cfg.seed,
            &[crate::seed::PUBLIC_POOL],
        )));
        pool.truncate(cfg.public_pool);
        return Ok((rng, pool, order));
    }
    let private_pool = order.split_off(cfg.public_pool);
    Ok((rng, order, private_pool))
}

/// The pool's indices by label, each class in pool order: `classes` of them (empty ones
/// included), or more if the labels go higher (a hand-built set loses nothing).
fn by_class(pool: &[usize], labels: &[u8], classes: usize) -> Vec<Vec<usize>> {
    let present = pool.iter().map(|&i| usize::from(labels[i]) + 1).max().unwrap_or(0);
    let mut by_class = vec![Vec::new(); present.max(classes)];
    for &index in pool {
        by_class[usize::from(labels[index])].push(index);
    }
    by_class
}

/// The class order of a Dirichlet split: a shuffle of `0..classes`.
fn draw_class_order(classes: usize, rng: &mut SeedRng) -> Vec<usize> {
    let mut order: Vec<usize> = (0..classes).collect();
    order.shuffle(rng);
    order
}

/// Cuts `pool` into `nodes` contiguous runs whose sizes differ by at most one.
fn equal_runs<T: Clone>(pool: &[T], nodes: usize) -> Vec<Vec<T>> {
    let mut start = 0;
    equal_sizes(pool.len(), nodes)
        .map(|len| {
            let run = pool[start..start + len].to_vec();
            start += len;
            run
        })
        .collect()
}

/// `nodes` sizes summing to `total` and differing by at most one, the larger first.
fn equal_sizes(total: usize, nodes: usize) -> impl Iterator<Item = usize> {
    let (base, extra) = (total / nodes, total % nodes);
    (0..nodes).map(move |k| base + usize::from(k < extra))
}

/// IID: the (already shuffled) pool in equal runs.
fn iid(pool: &[usize], nodes: usize) -> Vec<Vec<usize>> {
    equal_runs(pool, nodes)
}

/// A per-class Dirichlet(α) split of `by_class` (plain, or with the fair-share cap if
/// `balanced`), classes taken in `order`, redrawn until every node has
/// [`MIN_PARTITION_SIZE`]: `Some((shards, attempts used))`, or `None` when
/// [`MAX_DIRICHLET_TRIES`] attempts all failed.
fn per_class_dirichlet(
    by_class: &[Vec<usize>],
    order: &[usize],
    nodes: usize,
    alpha: f64,
    balanced: bool,
    rng: &mut SeedRng,
) -> Result<Option<(Vec<Vec<usize>>, usize)>> {
    // The pool is shuffled, so each class's members are in random order already.
    let total: usize = by_class.iter().map(Vec::len).sum();
    // Balanced: a node holding its fair share (or more) takes no further classes.
    let fair_share = total as f64 / nodes as f64;
    let log_gamma = LogGamma::new(alpha)?;
    for attempt in 1..=MAX_DIRICHLET_TRIES {
        let mut shards: Vec<Vec<usize>> = vec![Vec::new(); nodes];
        for &class in order {
            let members = &by_class[class];
            let open: Vec<bool> = shards
                .iter()
                .map(|s| !balanced || (s.len() as f64) < fair_share)
                .collect();
            let logs: Vec<f64> = (0..nodes).map(|_| log_gamma.sample(rng)).collect();
            let weights = scaled_weights(&logs, &open);
            let weight_total: f64 = weights.iter().sum();
            // Cut points at the cumulative proportions, as the reference implementations do.
            let mut cumulative = 0.0;
            let mut start = 0;
            for (k, weight) in weights.iter().enumerate() {
                cumulative += weight;
                let end = if k + 1 == nodes {
                    members.len()
                } else {
                    ((cumulative / weight_total * members.len() as f64) as usize).clamp(start, members.len())
                };
                shards[k].extend_from_slice(&members[start..end]);
                start = end;
            }
        }
        if shards.iter().all(|s| s.len() >= MIN_PARTITION_SIZE) {
            return Ok(Some((shards, attempt)));
        }
    }
    Ok(None)
}

/// Hsu et al.'s per-node Dirichlet split of `by_class` (see [`Partition::DirichletPerNode`]);
/// classes in `order` fix the order of the draws and of the inverse-CDF class choice.
fn per_node_dirichlet(
    by_class: &[Vec<usize>],
    order: &[usize],
    nodes: usize,
    alpha: f64,
    rng: &mut SeedRng,
) -> Result<Vec<Vec<usize>>> {
    // Everything below is indexed by position in `order`.
    let counts: Vec<usize> = order.iter().map(|&c| by_class[c].len()).collect();
    let total: usize = counts.iter().sum();
    let samplers: Vec<Option<LogGamma>> = counts
        .iter()
        .map(|&n| {
            (n > 0)
                .then(|| LogGamma::new(alpha * n as f64 / total as f64))
                .transpose()
        })
        .collect::<Result<_>>()?;
    let present: Vec<bool> = counts.iter().map(|&n| n > 0).collect();
    let q: Vec<Vec<f64>> = (0..nodes)
        .map(|_| {
            let logs: Vec<f64> = samplers
                .iter()
                .map(|s| s.as_ref().map_or(f64::NEG_INFINITY, |s| s.sample(rng)))
                .collect();
            scaled_weights(&logs, &present)
        })
        .collect();
    let prior: Vec<f64> = counts.iter().map(|&n| n as f64).collect();

    let sizes: Vec<usize> = equal_sizes(total, nodes).collect();
    let mut shards: Vec<Vec<usize>> = sizes.iter().map(|&n| Vec::with_capacity(n)).collect();
    let mut used = vec![0; counts.len()];
    for step in 0..sizes.first().copied().unwrap_or(0) {
        for (k, shard) in shards.iter_mut().enumerate() {
            if step >= sizes[k] {
                continue;
            }
            let u = rng.random::<f64>();
            let left = |i: usize| used[i] < counts[i];
            let pick = pick_weighted(&q[k], &left, u)
                .or_else(|| pick_weighted(&prior, &left, u))
                .ok_or_else(|| Error::config("data.partition", "the per-node Dirichlet split ran out of samples"))?;
            shard.push(by_class[order[pick]][used[pick]]);
            used[pick] += 1;
        }
    }
    Ok(shards)
}

/// The index whose cumulative weight (over indices where `allowed`) first exceeds
/// `u ∈ [0, 1)` times their total; `None` if that total is 0.
fn pick_weighted(weights: &[f64], allowed: &impl Fn(usize) -> bool, u: f64) -> Option<usize> {
    let total: f64 = (0..weights.len()).filter(|&i| allowed(i)).map(|i| weights[i]).sum();
    if total <= 0.0 {
        return None;
    }
    let target = u * total;
    let mut cumulative = 0.0;
    let mut last = None;
    for (i, &w) in weights.iter().enumerate() {
        if allowed(i) && w > 0.0 {
            cumulative += w;
            last = Some(i);
            if cumulative > target {
                return Some(i);
            }
        }
    }
    last // rounding left `cumulative` a hair below `target`
}

/// Draws `ln X` for `X ~ Gamma(shape, 1)` as `ln Gamma(shape+1) + ln(U)/shape`: one
/// uniform `U` then one `Gamma(shape+1)` sample. In log space because for small shapes
/// `Gamma(shape)` underflows to 0.
struct LogGamma {
    shape: f64,
    plus_one: Gamma<f64>,
}

impl LogGamma {
    /// For a finite `shape > 0`, which [`Partition::check`] ensures for α and `α·p_c`
    /// (`p_c > 0`); the error names `data.alpha`.
    fn new(shape: f64) -> Result<LogGamma> {
        let plus_one = Gamma::new(shape + 1.0, 1.0)
            .map_err(|e| Error::config("data.alpha", format!("cannot draw Gamma({}): {e}", shape + 1.0)))?;
        Ok(LogGamma { shape, plus_one })
    }

    fn sample(&self, rng: &mut SeedRng) -> f64 {
        let u = 1.0 - rng.random::<f64>(); // in (0, 1], so ln is finite
        self.plus_one.sample(rng).ln() + u.ln() / self.shape
    }
}

/// Weights `exp(logs[i] - max)` where `open[i]` (max over the open ones), 0 elsewhere:
/// unnormalised, and the largest open weight is 1, so the total is never 0 if any is open.
fn scaled_weights(logs: &[f64], open: &[bool]) -> Vec<f64> {
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
fn shards(pool: &[usize], labels: &[u8], nodes: usize, per_node: usize, rng: &mut SeedRng) -> Vec<Vec<usize>> {
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
    use crate::data::{Format, Samples, Values};

    const CLASSES: usize = 10;

    /// A synthetic dataset: `per_class` 1×1 images of each class, labels in class order.
    fn synthetic(per_class: usize) -> Dataset {
        let labels: Vec<u8> = (0..CLASSES as u8)
            .flat_map(|c| std::iter::repeat_n(c, per_class))
            .collect();
        let set = Samples {
            shape: vec![1, 1, 1],
            values: Values::U8(vec![0; labels.len()]),
            labels,
        };
        Dataset {
            name: "synthetic".into(),
            format: Format::Idx,
            train: set.clone(),
            test: set,
            classes: CLASSES,
        }
    }

    fn cfg(partition: Partition) -> SplitConfig {
        SplitConfig {
            seed: 7,
            nodes: 5,
            partition,
            public_pool: 100,
            test_size: 0,
            public_from: None,
            public_overlap: 0.0,
            validation: 0,
        }
    }

    fn field(err: Error) -> String {
        match err {
            Error::Config { field, .. } => field,
            other => panic!("expected a config error, got {other}"),
        }
    }

    fn dirichlets(alpha: f64) -> [Partition; 3] {
        [
            Partition::Dirichlet { alpha },
            Partition::DirichletBalanced { alpha },
            Partition::DirichletPerNode { alpha },
        ]
    }

    fn all_partitions() -> Vec<Partition> {
        let mut all = vec![Partition::Iid, Partition::Shards { per_node: 2 }];
        all.extend(dirichlets(0.1));
        all.extend(dirichlets(100.0));
        all
    }

    /// Node k's label counts, `counts[k][c]`.
    fn counts(split: &Split, labels: &[u8]) -> Vec<Vec<usize>> {
        split
            .stats(labels, CLASSES)
            .nodes
            .into_iter()
            .map(|n| n.histogram)
            .collect()
    }

    /// Mean over nodes of the entropy (bits) of the node's label distribution.
    fn mean_label_entropy(split: &Split, labels: &[u8]) -> f64 {
        let entropies = counts(split, labels).into_iter().map(|counts| {
            let n: usize = counts.iter().sum();
            counts
                .iter()
                .filter(|&&c| c > 0)
                .map(|&c| -(c as f64 / n as f64) * (c as f64 / n as f64).log2())
                .sum::<f64>()
        });
        entropies.sum::<f64>() / split.private.len() as f64
    }

    /// The fraction of (node, class) pairs where the node holds none of the class.
    fn empty_fraction(split: &Split, labels: &[u8]) -> f64 {
        let counts = counts(split, labels);
        let empty = counts.iter().flatten().filter(|&&c| c == 0).count();
        empty as f64 / (counts.len() * CLASSES) as f64
    }

    #[test]
    fn partition_parses_and_round_trips() {
        for p in all_partitions()
            .into_iter()
            .chain(dirichlets(0.3))
            .chain(dirichlets(1e-3))
        {
            assert_eq!(p.to_string().parse::<Partition>().unwrap(), p);
        }
        assert_eq!(
            " Dirichlet : 0.5 ".parse::<Partition>().unwrap(),
            Partition::Dirichlet { alpha: 0.5 }
        );
        assert_eq!(
            "dirichlet-balanced:0.5".parse::<Partition>().unwrap(),
            Partition::DirichletBalanced { alpha: 0.5 }
        );
        assert_eq!(
            "Dirichlet-Per-Node: 2".parse::<Partition>().unwrap(),
            Partition::DirichletPerNode { alpha: 2.0 }
        );
        assert_eq!(
            Partition::DirichletPerNode { alpha: 0.25 }.to_string(),
            "dirichlet-per-node:0.25"
        );
        assert_eq!(
            "shards:2".parse::<Partition>().unwrap(),
            Partition::Shards { per_node: 2 }
        );
        for bad in [
            "",
            "iid:1",
            "dirichlet",
            "dirichlet:x",
            "dirichlet-balanced",
            "dirichlet-per-node:",
            "dirichlet-capped:0.5",
            "shards:-1",
            "gauss",
        ] {
            let err = bad.parse::<Partition>().unwrap_err();
            let text = err.to_string();
            for form in [
                "`iid`",
                "`dirichlet:<alpha>`",
                "`dirichlet-balanced:<alpha>`",
                "`dirichlet-per-node:<alpha>`",
                "`shards:<per node>`",
            ] {
                assert!(text.contains(form), "{bad}: {text} lacks {form}");
            }
            assert_eq!(field(err), "data.partition");
        }
        for bad in [
            "dirichlet:0",
            "dirichlet:nan",
            "dirichlet-balanced:-1",
            "dirichlet-per-node:inf",
        ] {
            assert_eq!(field(bad.parse::<Partition>().unwrap_err()), "data.alpha", "{bad}");
        }
        assert_eq!(
            field("shards:0".parse::<Partition>().unwrap_err()),
            "data.shards_per_node"
        );
    }

    #[test]
    fn partition_serde_is_tagged() {
        let json = serde_json::to_string(&Partition::Dirichlet { alpha: 0.5 }).unwrap();
        assert_eq!(json, r#"{"kind":"dirichlet","alpha":0.5}"#);
        let json = serde_json::to_string(&Partition::DirichletBalanced { alpha: 0.5 }).unwrap();
        assert_eq!(json, r#"{"kind":"dirichlet-balanced","alpha":0.5}"#);
        let json = serde_json::to_string(&Partition::DirichletPerNode { alpha: 0.5 }).unwrap();
        assert_eq!(json, r#"{"kind":"dirichlet-per-node","alpha":0.5}"#);
        let back: Partition = serde_json::from_str(r#"{"kind":"shards","per_node":3}"#).unwrap();
        assert_eq!(back, Partition::Shards { per_node: 3 });
        assert_eq!(serde_json::to_string(&Partition::Iid).unwrap(), r#"{"kind":"iid"}"#);
        for p in all_partitions() {
            let back: Partition = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
            assert_eq!(back, p);
        }
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
    fn class_order_is_a_seeded_permutation() {
        let dataset = synthetic(60);
        for partition in dirichlets(0.5) {
            let orders: BTreeSet<Vec<usize>> = (0..6)
                .map(|seed| {
                    let cfg = SplitConfig {
                        seed,
                        ..cfg(partition.clone())
                    };
                    let order = class_order(&dataset, &cfg).unwrap().unwrap();
                    assert_eq!(order, class_order(&dataset, &cfg).unwrap().unwrap(), "{partition}");
                    let mut sorted = order.clone();
                    sorted.sort_unstable();
                    assert_eq!(sorted, (0..CLASSES).collect::<Vec<_>>(), "{partition}");
                    order
                })
                .collect();
            assert_eq!(orders.len(), 6, "{partition}: every seed its own order");
            assert!(!orders.contains(&(0..CLASSES).collect::<Vec<_>>()), "{partition}");
        }
        assert_eq!(class_order(&dataset, &cfg(Partition::Iid)).unwrap(), None);
        assert_eq!(
            class_order(&dataset, &cfg(Partition::Shards { per_node: 2 })).unwrap(),
            None
        );
        let bad = SplitConfig {
            nodes: 0,
            ..cfg(Partition::Dirichlet { alpha: 0.5 })
        };
        assert_eq!(field(class_order(&dataset, &bad).unwrap_err()), "nodes");
    }

    #[test]
    fn stats_histograms_sum_to_the_shard_sizes() {
        let dataset = synthetic(60);
        let labels = &dataset.train.labels;
        for partition in all_partitions() {
            let split = split(&dataset, &cfg(partition.clone())).unwrap();
            let stats = split.stats(labels, CLASSES);
            assert_eq!(stats.nodes.len(), split.private.len(), "{partition}");
            let mut pooled = [0usize; CLASSES];
            for (k, (node, shard)) in stats.nodes.iter().zip(&split.private).enumerate() {
                assert_eq!(node.node, k);
                assert_eq!(node.samples, shard.len(), "{partition}");
                assert_eq!(node.histogram.iter().sum::<usize>(), shard.len(), "{partition}");
                for (c, (&count, total)) in node.histogram.iter().zip(&mut pooled).enumerate() {
                    let expected = shard.iter().filter(|&&i| usize::from(labels[i]) == c).count();
                    assert_eq!(count, expected, "{partition}");
                    *total += count;
                }
            }
            // With the public pool's labels, every class has its 60 images.
            for &i in &split.public {
                pooled[usize::from(labels[i])] += 1;
            }
            assert_eq!(pooled, [60; CLASSES], "{partition}");
            let json = serde_json::to_string(&stats).unwrap();
            assert_eq!(serde_json::from_str::<SplitStats>(&json).unwrap(), stats);
        }
        let json = serde_json::to_string(
            &Split {
                private: vec![vec![0, 61]],
                public: vec![],
                test: vec![],
                validation: vec![],
                members: vec![],
            }
            .stats(labels, CLASSES),
        )
        .unwrap();
        assert_eq!(
            json,
            r#"{"nodes":[{"node":0,"samples":2,"histogram":[1,1,0,0,0,0,0,0,0,0]}]}"#
        );
    }

    /// The plain Dirichlet split written out directly, draw by draw, for comparison.
    fn reference_plain_dirichlet(dataset: &Dataset, cfg: &SplitConfig, alpha: f64) -> Vec<Vec<usize>> {
        let labels = &dataset.train.labels;
        let mut rng = crate::seed::rng(cfg.seed);
        let mut indices: Vec<usize> = (0..dataset.train.len()).collect();
        indices.shuffle(&mut rng);
        let pool = indices.split_off(cfg.public_pool);
        let mut classes: Vec<usize> = (0..CLASSES).collect();
        classes.shuffle(&mut rng);
        let gamma = Gamma::new(alpha + 1.0, 1.0).unwrap();
        loop {
            let mut shards = vec![Vec::new(); cfg.nodes];
            for &c in &classes {
                let members: Vec<usize> = pool.iter().copied().filter(|&i| usize::from(labels[i]) == c).collect();
                // Gamma(α) = Gamma(α+1)·U^(1/α), U in (0, 1].
                let weights: Vec<f64> = (0..cfg.nodes)
                    .map(|_| {
                        let u = 1.0 - rng.random::<f64>();
                        gamma.sample(&mut rng) * u.powf(1.0 / alpha)
                    })
                    .collect();
                let total: f64 = weights.iter().sum();
                let mut cumulative = 0.0;
                let mut start = 0;
                for k in 0..cfg.nodes {
                    cumulative += weights[k] / total;
                    let end = if k + 1 == cfg.nodes {
                        members.len()
                    } else {
                        ((cumulative * members.len() as f64).floor() as usize).clamp(start, members.len())
                    };
                    shards[k].extend_from_slice(&members[start..end]);
                    start = end;
                }
            }
            if shards.iter().all(|s| s.len() >= MIN_PARTITION_SIZE) {
                return shards;
            }
        }
    }

    #[test]
    fn plain_dirichlet_matches_a_reference_computation() {
        let dataset = synthetic(9); // 90 images
        for (seed, alpha, nodes) in [(0, 1.0, 3), (1, 0.5, 3), (2, 2.0, 4), (3, 0.3, 2), (4, 5.0, 5)] {
            let cfg = SplitConfig {
                seed,
                nodes,
                partition: Partition::Dirichlet { alpha },
                public_pool: 12,
                test_size: 0,
                public_from: None,
                public_overlap: 0.0,
                validation: 0,
            };
            let got = split(&dataset, &cfg).unwrap();
            assert_eq!(got.private, reference_plain_dirichlet(&dataset, &cfg, alpha), "{cfg:?}");
        }
    }

    #[test]
    fn balanced_dirichlet_never_gives_a_full_node_more() {
        let dataset = Dataset::embedded().unwrap();
        let labels = &dataset.train.labels;
        let mut capped = 0;
        for (seed, alpha) in (0..6).flat_map(|s| [(s, 0.1), (s, 0.5), (s, 5.0)]) {
            let cfg = SplitConfig {
                seed,
                nodes: 8,
                partition: Partition::DirichletBalanced { alpha },
                public_pool: 1000,
                test_size: 0,
                public_from: None,
                public_overlap: 0.0,
                validation: 0,
            };
            let split = split(&dataset, &cfg).unwrap();
            let order = class_order(&dataset, &cfg).unwrap().unwrap();
            let counts = counts(&split, labels);
            let fair_share = (dataset.train.len() - cfg.public_pool) as f64 / cfg.nodes as f64;
            let mut held = vec![0usize; cfg.nodes];
            for &class in &order {
                for k in 0..cfg.nodes {
                    if held[k] as f64 >= fair_share {
                        assert_eq!(
                            counts[k][class], 0,
                            "{cfg:?}: node {k} held {held:?} before class {class}"
                        );
                        capped += 1;
                    }
                }
                for k in 0..cfg.nodes {
                    held[k] += counts[k][class];
                }
            }
            assert_eq!(held, split.private.iter().map(Vec::len).collect::<Vec<_>>());
        }
        assert!(capped > 20, "the cap was exercised only {capped} times");
    }

    #[test]
    fn plain_dirichlet_leaves_fewer_classes_missing_than_balanced() {
        // 10 balanced classes of 500 private images, 8 nodes, α = 0.5, 40 seeds.
        let dataset = synthetic(6000);
        let labels = &dataset.train.labels;
        let mean_empty = |partition: Partition| {
            (0..40)
                .map(|seed| {
                    let cfg = SplitConfig {
                        seed,
                        nodes: 8,
                        partition: partition.clone(),
                        public_pool: 10000,
                        test_size: 0,
                        public_from: None,
                        public_overlap: 0.0,
                        validation: 0,
                    };
                    empty_fraction(&split(&dataset, &cfg).unwrap(), labels)
                })
                .sum::<f64>()
                / 40.0
        };
        let plain = mean_empty(Partition::Dirichlet { alpha: 0.5 });
        let balanced = mean_empty(Partition::DirichletBalanced { alpha: 0.5 });
        eprintln!(
            "empty (node, class) pairs, mean over 40 seeds: dirichlet:0.5 {:.1} %, dirichlet-balanced:0.5 {:.1} %",
            100.0 * plain,
            100.0 * balanced
        );
        assert!(plain < 0.05, "plain {plain}");
        assert!(balanced > 0.08, "balanced {balanced}");
        assert!(3.0 * plain < balanced, "plain {plain} vs balanced {balanced}");
    }

    #[test]
    fn per_node_dirichlet_gives_equal_shares_of_skewed_classes() {
        let dataset = Dataset::embedded().unwrap();
        let labels = &dataset.train.labels;
        let run = |alpha, seed| {
            let cfg = SplitConfig {
                seed,
                nodes: 19,
                partition: Partition::DirichletPerNode { alpha },
                public_pool: 1000,
                test_size: 0,
                public_from: None,
                public_overlap: 0.0,
                validation: 0,
            };
            split(&dataset, &cfg).unwrap()
        };
        for seed in 0..4 {
            let (skewed, mild, flat) = (run(0.1, seed), run(1.0, seed), run(100.0, seed));
            for s in [&skewed, &mild, &flat] {
                // 5000 = 3·264 + 16·263
                let sizes: Vec<usize> = s.private.iter().map(Vec::len).collect();
                assert_eq!(sizes[..3], [264; 3]);
                assert_eq!(sizes[3..], [263; 16]);
            }
            let entropy = |s| mean_label_entropy(s, labels);
            let (low, middle, high) = (entropy(&skewed), entropy(&mild), entropy(&flat));
            assert!(
                low < 1.6 && low < middle && middle < high,
                "seed {seed}: {low} {middle} {high} bits"
            );
            assert!(
                high > 3.15,
                "seed {seed}: α = 100 gives {high} bits, near log2(10) = 3.32"
            );
            // Near-uniform: every node holds every class, on average within a few points of
            // 10 % (q_k's own spread at α·p_c = 10 is about ±3 points, sampling adds ±2).
            let mut deviation = 0.0;
            for (node, shard) in counts(&flat, labels).iter().zip(&flat.private) {
                for &c in node {
                    let share = c as f64 / shard.len() as f64;
                    assert!(share > 0.0 && share < 0.25, "seed {seed}: {node:?}");
                    deviation += (share - 0.1).abs();
                }
            }
            let deviation = deviation / (19 * CLASSES) as f64;
            assert!(deviation < 0.04, "seed {seed}: mean |share - 10 %| = {deviation}");
        }
    }

    #[test]
    fn small_alpha_is_more_skewed_than_large_alpha() {
        let dataset = Dataset::embedded().unwrap();
        for partition in dirichlets(1.0) {
            let entropy = |alpha| {
                let partition = match partition {
                    Partition::Dirichlet { .. } => Partition::Dirichlet { alpha },
                    Partition::DirichletBalanced { .. } => Partition::DirichletBalanced { alpha },
                    _ => Partition::DirichletPerNode { alpha },
                };
                let cfg = SplitConfig {
                    seed: 3,
                    nodes: 10,
                    partition,
                    public_pool: 1000,
                    test_size: 0,
                    public_from: None,
                    public_overlap: 0.0,
                    validation: 0,
                };
                mean_label_entropy(&split(&dataset, &cfg).unwrap(), &dataset.train.labels)
            };
            let (skewed, mild, flat) = (entropy(0.1), entropy(1.0), entropy(1000.0));
            assert!(skewed < mild && mild < flat, "{partition}: {skewed} {mild} {flat}");
            assert!(flat > 3.2, "{partition}: near log2(10) = 3.32: {flat}");
            assert!(skewed < 2.0, "{partition}: {skewed}");
        }
    }

    #[test]
    fn tiny_alpha_still_gives_every_node_the_minimum() {
        let dataset = Dataset::embedded().unwrap();
        let cfg = |nodes, partition| SplitConfig {
            seed: 1,
            nodes,
            partition,
            public_pool: 500,
            test_size: 100,
            public_from: None,
            public_overlap: 0.0,
            validation: 0,
        };
        let cases = [
            (Partition::DirichletBalanced { alpha: 0.001 }, vec![2, 5, 10]),
            (Partition::Dirichlet { alpha: 0.001 }, vec![2, 5]),
            (Partition::DirichletPerNode { alpha: 0.001 }, vec![2, 5, 10, 20]),
        ];
        for (partition, node_counts) in cases {
            for nodes in node_counts {
                let split = split(&dataset, &cfg(nodes, partition.clone())).unwrap();
                let sizes: Vec<usize> = split.private.iter().map(Vec::len).collect();
                assert!(sizes.iter().all(|&n| n >= MIN_PARTITION_SIZE), "{partition}: {sizes:?}");
                assert_eq!(split.test.len(), 100);
            }
        }
        // With twice as many nodes as classes, each class going to about one node leaves
        // half the nodes empty: a bounded search, then a clear error.
        for partition in [
            Partition::Dirichlet { alpha: 0.001 },
            Partition::DirichletBalanced { alpha: 0.001 },
        ] {
            let err = split(&dataset, &cfg(20, partition.clone())).unwrap_err();
            let text = err.to_string();
            for hint in ["use a larger alpha", "fewer nodes", "smaller public pool", "1000 draws"] {
                assert!(text.contains(hint), "{partition}: {text}");
            }
            assert!(text.contains(&format!("`{partition}` with 20 nodes")), "{text}");
            assert_eq!(field(err), "data.partition");
        }
    }

    #[test]
    fn the_minimum_is_reached_by_redrawing() {
        // Plain, α = 0.05, 5 nodes: each class goes almost whole to one node, so a first
        // draw often leaves a node short; the split redraws until none is.
        let dataset = synthetic(60);
        let labels = &dataset.train.labels;
        let mut redrawn = 0;
        for seed in 0..20 {
            for balanced in [false, true] {
                let (mut rng, _, pool) = shuffled_pool(
                    &dataset,
                    &SplitConfig {
                        seed,
                        ..cfg(Partition::Dirichlet { alpha: 0.05 })
                    },
                )
                .unwrap();
                let by_class = by_class(&pool, labels, CLASSES);
                let order = draw_class_order(by_class.len(), &mut rng);
                let (shards, attempts) = per_class_dirichlet(&by_class, &order, 5, 0.05, balanced, &mut rng)
                    .unwrap()
                    .unwrap();
                assert!(shards.iter().all(|s| s.len() >= MIN_PARTITION_SIZE), "{shards:?}");
                redrawn += usize::from(attempts > 1);
            }
        }
        assert!(redrawn >= 5, "only {redrawn} of 40 splits needed a redraw");
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
                public_from: None,
                public_overlap: 0.0,
                validation: 0,
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
                public_from: None,
                public_overlap: 0.0,
                validation: 0,
            };
            let split = split(&dataset, &cfg).unwrap();
            for shard in &split.private {
                let labels: BTreeSet<u8> = shard.iter().map(|&i| dataset.train.labels[i]).collect();
                assert!(labels.len() <= 2 * k, "k = {k}: {labels:?}");
            }
        }
    }

    #[test]
    fn a_validation_set_is_held_out_of_every_shard_and_leaves_the_rest_as_it_was() {
        let dataset = synthetic(60);
        for partition in [Partition::Iid, Partition::Dirichlet { alpha: 0.5 }] {
            let plain = split(&dataset, &cfg(partition.clone())).unwrap();
            assert!(plain.validation.is_empty());
            let held = split(
                &dataset,
                &SplitConfig {
                    validation: 50,
                    ..cfg(partition.clone())
                },
            )
            .unwrap();
            assert_eq!(held.validation.len(), 50, "{partition}");
            // The same public pool and test set; the validation set in no shard.
            assert_eq!((&held.public, &held.test), (&plain.public, &plain.test));
            let validation: std::collections::BTreeSet<usize> = held.validation.iter().copied().collect();
            assert_eq!(validation.len(), 50);
            assert!(held.private.iter().flatten().all(|i| !validation.contains(i)));
            assert!(held.public.iter().all(|i| !validation.contains(i)));
            // The first samples of the private pool: what the shards of the plain split
            // held, less those 50.
            let before: usize = plain.private.iter().map(Vec::len).sum();
            let after: usize = held.private.iter().map(Vec::len).sum();
            assert_eq!(after + 50, before, "{partition}");
            assert!(plain.private.iter().flatten().any(|i| validation.contains(i)));
        }
    }

    #[test]
    fn the_overlap_puts_a_share_of_each_shard_in_the_public_pool_and_moves_nothing_else() {
        let dataset = Dataset::embedded().unwrap();
        for partition in [Partition::Iid, Partition::Dirichlet { alpha: 0.5 }] {
            let base = SplitConfig {
                seed: 3,
                nodes: 4,
                partition: partition.clone(),
                public_pool: 500,
                test_size: 0,
                public_from: None,
                public_overlap: 0.0,
                validation: 100,
            };
            let plain = split(&dataset, &base).unwrap();
            assert_eq!(plain.members, vec![Vec::<usize>::new(); 4]);
            let with = split(
                &dataset,
                &SplitConfig {
                    public_overlap: 0.1,
                    ..base.clone()
                },
            )
            .unwrap();
            // The same shards, validation and test sets, and the same pool before the members.
            assert_eq!(
                (&with.private, &with.validation, &with.test),
                (&plain.private, &plain.validation, &plain.test)
            );
            assert_eq!(with.public[..500], plain.public[..], "{partition}");
            let mut next = 500;
            for (k, members) in with.members.iter().enumerate() {
                let n = overlap_rows(0.1, plain.private[k].len());
                assert!(n > 0);
                assert_eq!(members, &(next..next + n).collect::<Vec<_>>(), "{partition} node {k}");
                next += n;
                // n distinct rows of node k's shard, and of no other node's.
                let shard: BTreeSet<usize> = with.private[k].iter().copied().collect();
                let rows: BTreeSet<usize> = members.iter().map(|&p| with.public[p]).collect();
                assert_eq!(rows.len(), n);
                assert!(rows.is_subset(&shard), "{partition} node {k}");
            }
            assert_eq!(with.public.len(), next);
        }
        assert_eq!(
            [
                overlap_rows(0.5, 3),
                overlap_rows(0.1, 14),
                overlap_rows(0.1, 15),
                overlap_rows(1.0, 7),
                overlap_rows(0.0, 7)
            ],
            [2, 1, 2, 7, 0]
        );
        for (share, public_from, says) in [
            (-0.1, None, "raise it"),
            (1.5, None, "lower it"),
            (f64::NAN, None, "finite"),
            (0.1, Some(1000), "data.public"),
        ] {
            let cfg = SplitConfig {
                public_overlap: share,
                public_from,
                ..cfg(Partition::Iid)
            };
            let err = split(&synthetic(60), &cfg).unwrap_err();
            assert!(err.to_string().contains(says), "{share}: {err}");
            assert_eq!(field(err), "data.public_overlap");
        }
        // The whole shard is allowed, and with data.public no overlap is.
        let cfg = SplitConfig {
            public_overlap: 1.0,
            ..cfg(Partition::Iid)
        };
        assert!(split(&synthetic(60), &cfg).is_ok());
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
            public_from: None,
            public_overlap: 0.0,
            validation: 0,
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
            // 4 nodes × 10 minimum > 39 private, for each Dirichlet split.
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
                    partition: Partition::DirichletBalanced { alpha: 1.0 },
                    public_pool: 61,
                    ..base.clone()
                },
                "data.public_pool",
            ),
            (
                SplitConfig {
                    partition: Partition::DirichletPerNode { alpha: 1.0 },
                    public_pool: 61,
                    ..base.clone()
                },
                "data.public_pool",
            ),
            (
                SplitConfig {
                    partition: Partition::DirichletPerNode { alpha: 0.0 },
                    ..base.clone()
                },
                "data.alpha",
            ),
            (
                SplitConfig {
                    partition: Partition::DirichletBalanced { alpha: f64::NAN },
                    ..base.clone()
                },
                "data.alpha",
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
            (
                SplitConfig {
                    validation: 80,
                    ..base.clone()
                },
                "data.validation",
            ),
            (
                // 3 private samples left for 4 nodes: the pool names what took them.
                SplitConfig {
                    validation: 77,
                    ..base.clone()
                },
                "data.public_pool",
            ),
        ];
        for (cfg, expected) in cases {
            assert_eq!(field(cfg.validate(&dataset).unwrap_err()), expected, "{cfg:?}");
            assert_eq!(field(split(&dataset, &cfg).unwrap_err()), expected, "{cfg:?}");
        }
        // Exactly 4 × 10 private samples is enough for every Dirichlet split.
        for partition in dirichlets(1.0) {
            let cfg = SplitConfig {
                partition,
                public_pool: 60,
                ..base.clone()
            };
            assert!(cfg.validate(&dataset).is_ok(), "{cfg:?}");
        }
    }
}
