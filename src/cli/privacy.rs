//! `wdml privacy RUN_DIR`: what a curious neighbour learns of each node's private data
//! from what the node sent it, measured on a finished run.
//!
//! The attack: estimate a node's private class histogram from its audit record
//! (`privacy.audit`, `RUN/state/node-N/audit.jsonl`, written by the node itself; see
//! `wdml_node::audit`), every recorded round or those of `--rounds A-B`:
//!
//! - *raw*: the mean softmax (temperature 1) over every recorded public row. A model
//!   trained on a skewed shard predicts its own classes for much of any input.
//! - *calibrated*: the raw estimate divided by the public pool's class distribution π,
//!   renormalised (ĥ ∝ mean softmax / π): a class the public rows hold more of draws
//!   more predictions whatever the node holds. The attacker is assumed to know π (the
//!   pool's labels were never sent, but a public set's class balance is rarely secret,
//!   and a few labelled public samples estimate it); here π is the pool's true label
//!   histogram, recomputed from the run's seed and data as every node draws it.
//! - *votes*: the share of public rows whose largest logit is each class, calibrated by
//!   π as above. A soft model spreads probability over every class; its top choices
//!   fall on the classes it was trained on more sharply.
//!
//! The calibrated and vote estimates are also scored round by round (`per_round`, over
//! every recorded round): how the leak grows or fades as the models learn.
//!
//! Each estimate is scored by its total-variation distance to the node's realised
//! histogram (`split.json`, normalised), against two blind guesses an attacker makes
//! without any message: π, and the uniform distribution. The records are the sender's,
//! before the encoding and the radio, so the figures bound what any one neighbour can do
//! with this attack from above.
//!
//! With `data.public_overlap` > 0 it also runs a membership attack on the same records
//! (`membership`; see [`membership`]): how well the neighbour tells node k's own rows
//! among the public rows it received predictions on.

mod membership;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use wdml_node::audit;
use wdml_proto::Algorithm;

use crate::scenario::Scenario;

/// The result file in the run directory.
pub const FILE: &str = "privacy.json";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The run directory of a run made with `--set privacy.audit=true`.
    run_dir: PathBuf,
    /// Attack only these rounds (1-based, inclusive): `A-B`, `A-` (from A on) or `A`
    /// (default: every recorded round).
    #[arg(long, value_name = "A-B", value_parser = parse_rounds)]
    rounds: Option<(u32, u32)>,
    /// Where the nodes' state directories are, one `node-N` each (default:
    /// RUN_DIR/state, where `wdml run` puts them).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

/// `privacy.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub run_id: String,
    pub algorithm: Algorithm,
    /// Whether the algorithm sends anything a neighbour could attack.
    pub sends: bool,
    /// Whether any node's record was found.
    pub recorded: bool,
    /// What the figures are, in a sentence.
    pub note: String,
    /// The rounds attacked, first and last, 1-based (`None`: every recorded one).
    pub rounds: Option<(u32, u32)>,
    /// π: the public pool's class distribution (the calibration, and a blind guess).
    pub public_prior: Vec<f64>,
    pub nodes: Vec<NodeReport>,
    /// Means over the nodes attacked (every node when none was).
    pub mean: Mean,
    /// Each recorded round attacked alone, means over the nodes that recorded it.
    pub per_round: Vec<RoundLeak>,
    /// The membership attack (`data.public_overlap`).
    pub membership: Membership,
}

/// The membership attack's figures in `privacy.json`: advantages TPR − FPR with 95 %
/// bootstrap intervals over the public rows (see [`membership`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Membership {
    /// `data.public_overlap` (0: not measured).
    pub share: f64,
    /// What the figures are, or why there are none.
    pub note: String,
    /// Every attacked round's observations together, pooled over the nodes.
    pub whole_run: Option<membership::Advantage>,
    /// The same with each node's membership labels shuffled: about 0, or the attack is
    /// reading something other than membership.
    pub control: Option<membership::Advantage>,
    /// Each recorded round alone (every recorded round, whatever `--rounds`).
    pub per_round: Vec<RoundMembership>,
    /// The round with the largest advantage, picked in hindsight with the truth: an
    /// optimistic attacker's figure, not one an attacker could choose.
    pub best_round: Option<RoundMembership>,
    /// The same pick among the rounds with the membership labels shuffled: what the
    /// largest of that many noisy rounds gives without any membership signal, the
    /// baseline of `best_round`.
    pub best_round_control: Option<RoundMembership>,
    /// Each node's whole-run attack, by node id.
    pub nodes: Vec<NodeMembership>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoundMembership {
    pub round: u32,
    #[serde(flatten)]
    pub attack: membership::Advantage,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeMembership {
    pub node: u32,
    #[serde(flatten)]
    pub attack: membership::Advantage,
}

/// One round's record attacked alone.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoundLeak {
    pub round: u32,
    pub nodes: usize,
    pub tv_calibrated: f64,
    pub tv_votes: f64,
    /// The blind guess π, over the same nodes.
    pub tv_prior: f64,
}

/// One node's figures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeReport {
    pub node: u32,
    /// Its private samples, and their class distribution (`split.json`, normalised).
    pub samples: u64,
    pub histogram: Vec<f64>,
    /// Rounds and public rows attacked.
    pub rounds: usize,
    pub rows: usize,
    /// The estimates (absent: nothing recorded).
    pub raw: Option<Vec<f64>>,
    pub calibrated: Option<Vec<f64>>,
    pub votes: Option<Vec<f64>>,
    /// Total-variation distances to `histogram`.
    pub tv_raw: Option<f64>,
    pub tv_calibrated: Option<f64>,
    pub tv_votes: Option<f64>,
    pub tv_prior: f64,
    pub tv_uniform: f64,
}

/// Means over nodes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Mean {
    pub nodes: usize,
    pub tv_raw: Option<f64>,
    pub tv_calibrated: Option<f64>,
    pub tv_votes: Option<f64>,
    pub tv_prior: f64,
    pub tv_uniform: f64,
}

pub fn main(args: Args) -> Result<ExitCode> {
    let report = attack(&args.run_dir, args.state_dir.as_deref(), args.rounds)?;
    print!("{}", table(&report));
    let json = serde_json::to_string_pretty(&report)? + "\n";
    let path = args.run_dir.join(FILE);
    wdml_files::write_atomic(&path, json.as_bytes(), wdml_files::Mode::Public)
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!("written: {}", path.display());
    Ok(ExitCode::SUCCESS)
}

/// The run's scenario as `config.json` records it (with the data it resolved to
/// under `dataset`, which is not a scenario field).
fn scenario_of(run_dir: &Path) -> Result<Scenario> {
    let path = run_dir.join("config.json");
    let text = wdml_files::read_bounded_text(&path, 64 << 20)
        .with_context(|| format!("{} holds no run (no readable config.json)", run_dir.display()))?;
    let mut value: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{}", path.display()))?;
    if let Some(object) = value.as_object_mut() {
        object.remove("dataset");
    }
    serde_json::from_value(value).with_context(|| format!("{}: not a scenario this build reads", path.display()))
}

/// The labels of the public pool's rows, in pool order, from the run's seed and data as
/// every node draws the pool.
fn public_labels(scenario: &Scenario) -> Result<Vec<u8>> {
    let dataset = wdml_node::data::Dataset::load_labels(&scenario.location()).context("the run's data (data.dir)")?;
    let public = match &scenario.data.public {
        Some(path) => Some(
            wdml_node::data::Dataset::load_labels(&wdml_node::data::Location::at(Some(path)))
                .context("the run's public set (data.public)")?,
        ),
        None => None,
    };
    let config = scenario.split_config(public.as_ref().map(|p| p.train.len()))?;
    let split = wdml_node::data::split(&dataset, &config)?;
    let labels = &public.as_ref().unwrap_or(&dataset).train.labels;
    Ok(split.public.iter().map(|&i| labels[i]).collect())
}

/// The public pool's class distribution.
fn public_prior(labels: &[u8], classes: usize) -> Vec<f64> {
    let mut counts = vec![0.0; classes];
    for &label in labels {
        // A public set with more classes than the run's: those rows pull no class.
        if let Some(count) = counts.get_mut(usize::from(label)) {
            *count += 1.0;
        }
    }
    normalised(&counts)
}

/// Runs the attack on `run_dir`'s records.
pub fn attack(run_dir: &Path, state_dir: Option<&Path>, rounds: Option<(u32, u32)>) -> Result<Report> {
    let scenario = scenario_of(run_dir)?;
    let algorithm = scenario.run.algorithm;
    let sends = wdml_node::strategy::exchanges(algorithm);
    if sends && !scenario.privacy.audit {
        bail!(
            "{}: the run kept no audit record (privacy.audit = false), so there is nothing to attack; run it again \
             with --set privacy.audit=true",
            run_dir.display()
        );
    }
    let path = run_dir.join("split.json");
    let text = wdml_files::read_bounded_text(&path, 64 << 20)
        .with_context(|| format!("{}: the realised split is needed", path.display()))?;
    let split: wdml_coordinator::SplitRecord =
        serde_json::from_str(&text).with_context(|| format!("{}", path.display()))?;
    let classes = split.nodes.iter().map(|n| n.histogram.len()).max().unwrap_or(0);
    if classes < 2 {
        bail!("{}: no node's histogram has two classes or more", path.display());
    }
    let labels = public_labels(&scenario)?;
    let prior = public_prior(&labels, classes);
    // Membership's ground truth: which node's row each public position is (`None`: no
    // node's), from split.json; `None` without the overlap.
    let owners: Option<Vec<Option<u32>>> = match &split.public_overlap {
        None => None,
        Some(overlap) => {
            if overlap.public_rows != labels.len() as u64 {
                bail!(
                    "{}: its public pool has {} rows, but the run's data and seed give {}: the data changed since the run",
                    path.display(),
                    overlap.public_rows,
                    labels.len()
                );
            }
            let mut owners = vec![None; labels.len()];
            for (node, members) in overlap.members.iter().enumerate() {
                for &p in members {
                    let slot = owners
                        .get_mut(p as usize)
                        .with_context(|| format!("{}: member row {p} is outside the public pool", path.display()))?;
                    *slot = Some(node as u32);
                }
            }
            Some(owners)
        }
    };
    let mut observations: Vec<membership::Observation> = Vec::new();
    let uniform = vec![1.0 / classes as f64; classes];
    let states = state_dir.map_or_else(|| run_dir.join("state"), Path::to_path_buf);
    let mut nodes = Vec::new();
    // Per round: nodes, and the sums of their calibrated, vote and prior distances.
    let mut by_round: std::collections::BTreeMap<u32, (usize, f64, f64, f64)> = Default::default();
    for (index, node) in split.nodes.iter().enumerate() {
        let counts: Vec<f64> = (0..classes)
            .map(|c| f64::from(node.histogram.get(c).copied().unwrap_or(0)))
            .collect();
        let histogram = normalised(&counts);
        let mut report = NodeReport {
            node: node.node,
            samples: node.samples,
            tv_prior: total_variation(&prior, &histogram),
            tv_uniform: total_variation(&uniform, &histogram),
            histogram,
            rounds: 0,
            rows: 0,
            raw: None,
            calibrated: None,
            votes: None,
            tv_raw: None,
            tv_calibrated: None,
            tv_votes: None,
        };
        let file = states.join(format!("node-{}", node.node)).join(audit::FILE);
        if sends && file.exists() {
            let record = audit::read(&file)?;
            if record.torn {
                eprintln!("{}: a torn last line (a crash mid-write) left out", file.display());
            }
            if let Some(wrong) = record
                .records
                .iter()
                .find(|r| r.classes as usize != classes || r.node != node.node)
            {
                bail!(
                    "{}: round {} records node {} with {} classes; the run's split has node {} with {classes}",
                    file.display(),
                    wrong.round,
                    wrong.node,
                    wrong.classes,
                    node.node
                );
            }
            if let Some(owners) = &owners {
                observe(&record.records, index, node.node, owners, &labels, &mut observations);
            }
            for one in &record.records {
                let single = std::slice::from_ref(one);
                let (Some(raw), Some(votes)) = (mean_softmax(single, classes), votes(single, classes)) else {
                    continue;
                };
                let leak = by_round.entry(one.round).or_insert((0, 0.0, 0.0, 0.0));
                leak.0 += 1;
                leak.1 += total_variation(&calibrate(&raw, &prior), &report.histogram);
                leak.2 += total_variation(&calibrate(&votes, &prior), &report.histogram);
                leak.3 += report.tv_prior;
            }
            let used: Vec<audit::Record> = record
                .records
                .into_iter()
                .filter(|r| rounds.is_none_or(|(first, last)| (first..=last).contains(&r.round)))
                .collect();
            let used = used.as_slice();
            if let (Some(raw), Some(votes)) = (mean_softmax(used, classes), votes(used, classes)) {
                let calibrated = calibrate(&raw, &prior);
                let votes = calibrate(&votes, &prior);
                report.tv_votes = Some(total_variation(&votes, &report.histogram));
                report.votes = Some(votes);
                report.rounds = used.len();
                report.rows = used.iter().map(|r| r.rows as usize).sum();
                report.tv_raw = Some(total_variation(&raw, &report.histogram));
                report.tv_calibrated = Some(total_variation(&calibrated, &report.histogram));
                report.raw = Some(raw);
                report.calibrated = Some(calibrated);
            }
        }
        nodes.push(report);
    }
    let attacked: Vec<&NodeReport> = nodes.iter().filter(|n| n.raw.is_some()).collect();
    let recorded = !attacked.is_empty();
    let over: Vec<&NodeReport> = if recorded { attacked } else { nodes.iter().collect() };
    let mean_of = |f: &dyn Fn(&NodeReport) -> f64| over.iter().map(|n| f(n)).sum::<f64>() / over.len().max(1) as f64;
    let mean = Mean {
        nodes: over.len(),
        tv_raw: recorded.then(|| mean_of(&|n| n.tv_raw.unwrap_or(0.0))),
        tv_calibrated: recorded.then(|| mean_of(&|n| n.tv_calibrated.unwrap_or(0.0))),
        tv_votes: recorded.then(|| mean_of(&|n| n.tv_votes.unwrap_or(0.0))),
        tv_prior: mean_of(&|n| n.tv_prior),
        tv_uniform: mean_of(&|n| n.tv_uniform),
    };
    let note = match (sends, recorded) {
        (false, _) => format!("{algorithm} sends nothing: nothing was sent; the attacker's best is the blind guess"),
        (true, false) => format!(
            "no audit record found under {}: no node sent anything to a neighbour, or the records are elsewhere \
             (--state-dir); only the blind guess is reported",
            states.display()
        ),
        (true, true) if over.len() < nodes.len() => format!(
            "{} of {} nodes recorded what they sent; the means are over those",
            over.len(),
            nodes.len()
        ),
        (true, true) => format!("every node's record attacked ({algorithm})"),
    };
    let membership = match owners {
        None => Membership::none(
            0.0,
            "not measured: the run has no data.public_overlap, so no public row is any node's; run with \
             --set data.public_overlap=0.1 (for example)"
                .into(),
        ),
        Some(_) if !sends => Membership::none(
            scenario.data.public_overlap,
            format!("{algorithm} sends nothing: a neighbour has nothing to attack, so no advantage is defined"),
        ),
        Some(_) if observations.is_empty() => Membership::none(
            scenario.data.public_overlap,
            "no recorded public row was a candidate (no record, or no round attacked)".into(),
        ),
        Some(_) => attack_membership(&observations, rounds, &split, labels.len(), &scenario),
    };
    Ok(Report {
        membership,
        run_id: format!("{}-{}", scenario.run.name, scenario.run.seed),
        algorithm,
        sends,
        recorded,
        note,
        rounds,
        per_round: by_round
            .into_iter()
            .map(|(round, (n, calibrated, votes, prior))| RoundLeak {
                round,
                nodes: n,
                tv_calibrated: calibrated / n as f64,
                tv_votes: votes / n as f64,
                tv_prior: prior / n as f64,
            })
            .collect(),
        public_prior: prior,
        nodes,
        mean,
    })
}

/// Node `node`'s (index `index` in split.json) observations from its `records`: each
/// public row it sent that is its own (a member) or no node's (a non-member), scored by
/// the margin of its true label. Another node's member, or a row whose label is not
/// one of the record's classes, is left out.
fn observe(
    records: &[audit::Record],
    index: usize,
    node: u32,
    owners: &[Option<u32>],
    labels: &[u8],
    observations: &mut Vec<membership::Observation>,
) {
    for record in records {
        let classes = record.classes as usize;
        let positions = wdml_node::shard::public_rows(record.public_seed, owners.len(), record.rows as usize);
        for (&position, logits) in positions.iter().zip(record.logits.chunks(classes)) {
            let position = position as usize;
            let label = usize::from(labels[position]);
            let member = match owners[position] {
                Some(owner) if owner == node => true,
                Some(_) => continue,
                None => false,
            };
            if label >= classes {
                continue;
            }
            observations.push(membership::Observation {
                node: index,
                round: record.round,
                position,
                class: label,
                score: membership::margin(logits, label),
                member,
            });
        }
    }
}

impl Membership {
    fn none(share: f64, note: String) -> Membership {
        Membership {
            share,
            note,
            whole_run: None,
            control: None,
            per_round: Vec::new(),
            best_round: None,
            best_round_control: None,
            nodes: Vec::new(),
        }
    }
}

/// The membership attack on `observations` (of every recorded round; the whole-run and
/// control figures over `rounds` only), seeded with the run seed so that its figures
/// are reproducible.
fn attack_membership(
    observations: &[membership::Observation],
    rounds: Option<(u32, u32)>,
    split: &wdml_coordinator::SplitRecord,
    pool: usize,
    scenario: &Scenario,
) -> Membership {
    let nodes = split.nodes.len();
    let mut rng = wdml_node::seed::rng(scenario.run.seed);
    let half = membership::halves(pool, &mut rng);
    let used: Vec<membership::Observation> = observations
        .iter()
        .filter(|o| rounds.is_none_or(|(first, last)| (first..=last).contains(&o.round)))
        .copied()
        .collect();
    let (whole_run, by_node) = membership::advantage(&used, &half, nodes, &mut rng);
    // One shuffle of every recorded round's labels: the control of the whole run and of
    // each round alone.
    let shuffled = membership::shuffled(observations, nodes, pool, &mut rng);
    let in_rounds: Vec<membership::Observation> = shuffled
        .iter()
        .filter(|o| rounds.is_none_or(|(first, last)| (first..=last).contains(&o.round)))
        .copied()
        .collect();
    let (control, _) = membership::advantage(&in_rounds, &half, nodes, &mut rng);
    let mut recorded: Vec<u32> = observations.iter().map(|o| o.round).collect();
    recorded.sort_unstable();
    recorded.dedup();
    let mut per_round = Vec::new();
    let mut per_round_control = Vec::new();
    for round in recorded {
        let mut alone = |of: &[membership::Observation]| {
            let alone: Vec<membership::Observation> = of.iter().filter(|o| o.round == round).copied().collect();
            RoundMembership {
                round,
                attack: membership::advantage(&alone, &half, nodes, &mut rng).0,
            }
        };
        per_round.push(alone(observations));
        per_round_control.push(alone(&shuffled));
    }
    let best = |rounds: &[RoundMembership]| {
        rounds
            .iter()
            .max_by(|a, b| a.attack.advantage.total_cmp(&b.attack.advantage))
            .cloned()
    };
    let (best_round, best_round_control) = (best(&per_round), best(&per_round_control));
    Membership {
        share: scenario.data.public_overlap,
        note: format!(
            "confidence-threshold attack on each node's rows among the public rows it sent (true label's log-odds, \
             a threshold per class; non-members weighted to the node's members' classes; thresholds chosen on one \
             half of the rows and applied to the other, pooled over nodes; 95 % bootstrap over rows, {} \
             replicates); best_round is picked in hindsight (optimistic)",
            membership::REPLICATES
        ),
        whole_run: Some(whole_run),
        control: Some(control),
        per_round,
        best_round,
        best_round_control,
        nodes: split
            .nodes
            .iter()
            .zip(by_node)
            .map(|(n, attack)| NodeMembership { node: n.node, attack })
            .collect(),
    }
}

/// `--rounds`: `A-B`, `A-` or `A`, 1-based.
fn parse_rounds(text: &str) -> std::result::Result<(u32, u32), String> {
    let number = |s: &str| {
        s.trim()
            .parse::<u32>()
            .map_err(|_| format!("{s:?} is not a round number"))
    };
    let (first, last) = match text.split_once('-') {
        Some((a, "")) => (number(a)?, u32::MAX),
        Some((a, b)) => (number(a)?, number(b)?),
        None => (number(text)?, number(text)?),
    };
    if first == 0 || last < first {
        return Err(format!(
            "{text}: rounds count from 1, and the first must not come after the last"
        ));
    }
    Ok((first, last))
}

/// The mean softmax (temperature 1) over every row of `records` (`None`: no row).
fn mean_softmax(records: &[audit::Record], classes: usize) -> Option<Vec<f64>> {
    let mut sum = vec![0.0f64; classes];
    let mut rows = 0usize;
    for row in records.iter().flat_map(|r| r.logits.chunks(classes)) {
        let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(f64::from(v)));
        let exp: Vec<f64> = row.iter().map(|&v| (f64::from(v) - max).exp()).collect();
        let total: f64 = exp.iter().sum();
        for (s, e) in sum.iter_mut().zip(&exp) {
            *s += e / total;
        }
        rows += 1;
    }
    (rows > 0).then(|| sum.iter().map(|s| s / rows as f64).collect())
}

/// The share of rows of `records` whose largest logit is each class (a tie goes to the
/// lowest class); `None`: no row.
fn votes(records: &[audit::Record], classes: usize) -> Option<Vec<f64>> {
    let mut counts = vec![0.0f64; classes];
    let mut rows = 0usize;
    for row in records.iter().flat_map(|r| r.logits.chunks(classes)) {
        let top = row
            .iter()
            .enumerate()
            .fold(
                (0, f32::NEG_INFINITY),
                |best, (c, &v)| if v > best.1 { (c, v) } else { best },
            )
            .0;
        counts[top] += 1.0;
        rows += 1;
    }
    (rows > 0).then(|| counts.iter().map(|c| c / rows as f64).collect())
}

/// ĥ ∝ raw / π, renormalised. A class the pool lacks (π = 0) cannot be calibrated and
/// keeps its raw share's weight relative to a class of average π.
fn calibrate(raw: &[f64], prior: &[f64]) -> Vec<f64> {
    let average = 1.0 / prior.len() as f64;
    let ratio: Vec<f64> = raw
        .iter()
        .zip(prior)
        .map(|(&r, &p)| if p > 0.0 { r / p } else { r / average })
        .collect();
    normalised(&ratio)
}

fn normalised(values: &[f64]) -> Vec<f64> {
    let total: f64 = values.iter().sum();
    if total > 0.0 {
        values.iter().map(|v| v / total).collect()
    } else {
        vec![1.0 / values.len() as f64; values.len()]
    }
}

/// ½ Σ |p − q|: 0 for the same distribution, 1 for disjoint ones.
fn total_variation(p: &[f64], q: &[f64]) -> f64 {
    0.5 * p.iter().zip(q).map(|(a, b)| (a - b).abs()).sum::<f64>()
}

/// The report as a table, for the terminal.
fn table(report: &Report) -> String {
    let mut out = format!(
        "{} ({}): what a neighbour learns of each node's class histogram from what it sent\n{}\n",
        report.run_id, report.algorithm, report.note
    );
    let cell = |v: Option<f64>| v.map_or_else(|| "—".to_string(), |v| format!("{v:.3}"));
    out += &format!(
        "{:>6} {:>8} {:>7} {:>8} {:>14} {:>9} {:>11} {:>11}\n",
        "node", "samples", "rounds", "TV raw", "TV calibrated", "TV votes", "TV prior π", "TV uniform"
    );
    for n in &report.nodes {
        out += &format!(
            "{:>6} {:>8} {:>7} {:>8} {:>14} {:>9} {:>11} {:>11}\n",
            n.node,
            n.samples,
            n.rounds,
            cell(n.tv_raw),
            cell(n.tv_calibrated),
            cell(n.tv_votes),
            cell(Some(n.tv_prior)),
            cell(Some(n.tv_uniform))
        );
    }
    let m = &report.mean;
    out += &format!(
        "{:>6} {:>8} {:>7} {:>8} {:>14} {:>9} {:>11} {:>11}\n",
        "mean",
        "",
        "",
        cell(m.tv_raw),
        cell(m.tv_calibrated),
        cell(m.tv_votes),
        cell(Some(m.tv_prior)),
        cell(Some(m.tv_uniform))
    );
    if !report.per_round.is_empty() {
        let best = report
            .per_round
            .iter()
            .min_by(|a, b| a.tv_votes.total_cmp(&b.tv_votes))
            .expect("not empty");
        out += &format!(
            "round by round (calibrated / votes, mean over nodes): {}\nclosest round (picked in hindsight): {}, votes {:.3} against the prior's {:.3}\n",
            report
                .per_round
                .iter()
                .map(|r| format!("{}: {:.2}/{:.2}", r.round, r.tv_calibrated, r.tv_votes))
                .collect::<Vec<_>>()
                .join(", "),
            best.round,
            best.tv_votes,
            best.tv_prior
        );
    }
    out += "(total-variation distance to the node's true histogram: 0 = exact, 1 = disjoint; \
            the blind guesses use no message)\n";
    let m = &report.membership;
    match (&m.whole_run, &m.control) {
        (Some(whole), Some(control)) => {
            let figure = |a: &membership::Advantage| {
                format!(
                    "{:+.3} [{:+.3}, {:+.3}] (TPR {:.3}, FPR {:.3}; {} member and {} non-member observations)",
                    a.advantage, a.low, a.high, a.tpr, a.fpr, a.members, a.non_members
                )
            };
            out += &format!(
                "membership (data.public_overlap = {}): advantage TPR − FPR, 95 % bootstrap interval\n  whole run: {}\n  control (membership shuffled): {}\n",
                m.share,
                figure(whole),
                figure(control)
            );
            if let (Some(best), Some(baseline)) = (&m.best_round, &m.best_round_control) {
                out += &format!(
                    "  best round (picked in hindsight, optimistic): {}: {}\n  best round of the control (the pick's own baseline): {}: {:+.3}\n",
                    best.round,
                    figure(&best.attack),
                    baseline.round,
                    baseline.attack.advantage
                );
            }
            out += &format!(
                "  by node: {}\n",
                m.nodes
                    .iter()
                    .map(|n| format!("{}: {:+.3}", n.node, n.attack.advantage))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        _ => out += &format!("membership: {}\n", m.note),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(round: u32, logits: Vec<f32>) -> audit::Record {
        audit::Record {
            run_instance: "x".into(),
            node: 0,
            round,
            public_seed: 0,
            sent: audit::Sent::Predictions,
            rows: (logits.len() / 2) as u32,
            classes: 2,
            logits,
        }
    }

    #[test]
    fn the_estimates_and_distances_are_what_they_say() {
        // Rows of logits (0, 0) and (ln 3, 0): softmax (½, ½) and (¾, ¼).
        let records = [record(1, vec![0.0, 0.0]), record(2, vec![3f32.ln(), 0.0])];
        let raw = mean_softmax(&records, 2).unwrap();
        assert!(
            (raw[0] - 0.625).abs() < 1e-6 && (raw[1] - 0.375).abs() < 1e-6,
            "{raw:?}"
        );
        assert_eq!(mean_softmax(&[], 2), None);
        // A pool three quarters class 0: the calibrated estimate leans the other way.
        let calibrated = calibrate(&raw, &[0.75, 0.25]);
        let expected = [0.625 / 0.75, 0.375 / 0.25];
        let total: f64 = expected.iter().sum();
        assert!((calibrated[0] - expected[0] / total).abs() < 1e-6, "{calibrated:?}");
        // The votes: row 1 is a tie (class 0 by the lower index), row 2 class 0.
        assert_eq!(votes(&records, 2), Some(vec![1.0, 0.0]));
        // A class the pool lacks is not divided by zero.
        assert!(calibrate(&[0.5, 0.5], &[1.0, 0.0]).iter().all(|v| v.is_finite()));
        assert_eq!(total_variation(&[1.0, 0.0], &[0.0, 1.0]), 1.0);
        assert_eq!(total_variation(&[0.5, 0.5], &[0.5, 0.5]), 0.0);
        assert!((total_variation(&[0.625, 0.375], &[1.0, 0.0]) - 0.375).abs() < 1e-12);
        assert_eq!(normalised(&[0.0, 0.0]), vec![0.5, 0.5]);
        assert_eq!(parse_rounds("2-5"), Ok((2, 5)));
        assert_eq!(parse_rounds("3"), Ok((3, 3)));
        assert_eq!(parse_rounds("3-"), Ok((3, u32::MAX)));
        assert!(parse_rounds("0-2").is_err() && parse_rounds("5-2").is_err() && parse_rounds("x").is_err());
    }
}
