//! Membership inference against what a node sent: the loss/confidence-threshold attack
//! (Yeom et al. 2018, "Privacy Risk in Machine Learning"), with a threshold for each
//! class as Shokri et al. 2017 train an attack model for each class and Song & Mittal
//! 2021 ("Systematic Evaluation of Privacy Risks of Machine Learning Models") choose
//! class-dependent thresholds, by a curious neighbour that knows each candidate row's
//! label.
//!
//! Ground truth: a run with `data.public_overlap` > 0 puts a share of each node's shard in
//! the public pool too (`split.json`, `public_overlap.members`). For node k the
//! candidates are the public rows of k's recorded batches: its members are k's rows, its
//! non-members the rows that are no node's (other nodes' members are left out, so a
//! non-member is a row no model trained on with its label).
//!
//! The score of a row is the confidence of its true label, taken as the logit margin
//! `log(p_y / (1 − p_y))` = `z_y − logsumexp_{j≠y} z_j`: the same order as the
//! confidence and as the loss `−log p_y`, without the ties at `p_y = 1` that the
//! confident rows of an overfit model would make in floating point. The attacker
//! guesses "member" when the score is at or above its threshold for the row's class (a
//! model is surer of some classes than of others, member or not).
//!
//! Members and non-members must come from one distribution, or the attack measures
//! something else: a node's shard leans to its classes (a Dirichlet split), on which its
//! model is confident for any row, member or not, while the non-members follow the
//! pool's classes. So the non-members are weighted to the node's members' class mix
//! (each non-member of class c by `share of c among the members / share among the
//! non-members`; a member of a class no non-member has is left out): the FPR is the one
//! over non-members of the members' classes, and a model that is only sure of its
//! classes gains nothing. With an IID split the weights are about 1.
//!
//! No test-set selection: the public rows are cut in two halves (a seeded shuffle of
//! the positions; every observation of a row falls in its row's half). For each node the
//! threshold maximising TPR − FPR on one half is applied to the other, and the other way
//! round (per class), so every observation is scored once by a threshold chosen without it. The
//! advantage is TPR − FPR over those held-out guesses, pooled over the nodes (each node
//! its own thresholds): 0 for a guess that ignores the message, 1 for a perfect one.
//!
//! The 95 % interval is a percentile bootstrap over the public rows (the rows drawn with
//! replacement, each with all its observations, thresholds chosen again in every
//! replicate), so it counts the threshold's own noise. The control repeats the attack
//! with each node's membership labels shuffled among its candidate rows: it must find
//! about 0.

use rand::Rng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

/// Bootstrap replicates for each interval.
pub const REPLICATES: usize = 1000;

/// One observation: a public row as node `node` sent it in one round.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Observation {
    /// Index of the node among those attacked (not its id).
    pub node: usize,
    pub round: u32,
    /// Position in the public pool.
    pub position: usize,
    /// The row's true label.
    pub class: usize,
    /// The true label's logit margin.
    pub score: f64,
    pub member: bool,
}

/// A row of the attack: (score, member, position in the pool, class).
type Row = (f64, bool, usize, usize);

/// An attack's figures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Advantage {
    /// TPR − FPR of the held-out guesses.
    pub advantage: f64,
    /// The 95 % bootstrap interval of `advantage`.
    pub low: f64,
    pub high: f64,
    pub tpr: f64,
    pub fpr: f64,
    /// Observations of members and of non-members (before the class weights).
    pub members: usize,
    pub non_members: usize,
}

/// `log(p_y / (1 − p_y))` for the softmax of `logits`: `z_y − logsumexp_{j≠y} z_j`.
pub fn margin(logits: &[f32], label: usize) -> f64 {
    let own = f64::from(logits[label]);
    let others = logits
        .iter()
        .enumerate()
        .filter(|&(j, _)| j != label)
        .map(|(_, &z)| f64::from(z));
    let max = others.clone().fold(f64::NEG_INFINITY, f64::max);
    if max == f64::NEG_INFINITY {
        return f64::INFINITY; // one class: always right
    }
    own - (max + others.map(|z| (z - max).exp()).sum::<f64>().ln())
}

/// Weighted counts of one set of guesses.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Counts {
    true_positive: f64,
    false_positive: f64,
    members: f64,
    non_members: f64,
}

impl Counts {
    fn add(&mut self, other: Counts) {
        self.true_positive += other.true_positive;
        self.false_positive += other.false_positive;
        self.members += other.members;
        self.non_members += other.non_members;
    }

    fn tpr(&self) -> f64 {
        if self.members > 0.0 {
            self.true_positive / self.members
        } else {
            0.0
        }
    }

    fn fpr(&self) -> f64 {
        if self.non_members > 0.0 {
            self.false_positive / self.non_members
        } else {
            0.0
        }
    }

    fn advantage(&self) -> f64 {
        self.tpr() - self.fpr()
    }
}

/// The threshold maximising TPR − FPR on `rows` (sorted by score, highest first;
/// `weights[i]` is row i's): guess "member" at or above it. `INFINITY` (guess none,
/// advantage 0) when no threshold does better, or the rows lack members or non-members.
fn best_threshold(rows: &[Row], weights: &[f64]) -> f64 {
    let (mut members, mut non_members) = (0.0, 0.0);
    for (&(_, member, _, _), &w) in rows.iter().zip(weights) {
        if member {
            members += w;
        } else {
            non_members += w;
        }
    }
    if members == 0.0 || non_members == 0.0 {
        return f64::INFINITY;
    }
    let (mut best, mut threshold) = (0.0, f64::INFINITY);
    let (mut tp, mut fp) = (0.0, 0.0);
    for (i, (&(score, member, _, _), &w)) in rows.iter().zip(weights).enumerate() {
        if member {
            tp += w;
        } else {
            fp += w;
        }
        // Only between distinct scores: a threshold takes a tie whole.
        if rows.get(i + 1).is_some_and(|next| next.0 == score) {
            continue;
        }
        let advantage = tp / members - fp / non_members;
        // Equal advantages (to rounding) keep the higher threshold, the first found.
        if advantage > best + 1e-12 {
            best = advantage;
            threshold = score;
        }
    }
    threshold
}

/// The guesses of `threshold` on `rows`, row i weighing `weights[i]`.
fn evaluate(rows: &[Row], weights: &[f64], threshold: f64) -> Counts {
    let mut counts = Counts::default();
    for (&(score, member, _, _), &weight) in rows.iter().zip(weights) {
        let guess = score >= threshold;
        if member {
            counts.members += weight;
            counts.true_positive += if guess { weight } else { 0.0 };
        } else {
            counts.non_members += weight;
            counts.false_positive += if guess { weight } else { 0.0 };
        }
    }
    counts
}

/// Each row's weight, class by class (`by_class[c]`: one half's rows of class c): its
/// position's (`by_position`, the bootstrap's count), times, for a non-member, its
/// class's `share among the members / share among the non-members` (the members'
/// class mix); a row of a class that lacks members or non-members weighs 0.
fn class_matched(by_class: &[Vec<Row>], by_position: &[f64]) -> Vec<Vec<f64>> {
    let mass =
        |rows: &[Row], member: bool| -> f64 { rows.iter().filter(|r| r.1 == member).map(|r| by_position[r.2]).sum() };
    let (members, non_members): (Vec<f64>, Vec<f64>) = by_class
        .iter()
        .map(|rows| (mass(rows, true), mass(rows, false)))
        .unzip();
    // Over the classes both have (a scale common to every weight cancels in the rates).
    let both = |c: &usize| members[*c] > 0.0 && non_members[*c] > 0.0;
    let matched: f64 = (0..by_class.len()).filter(both).map(|c| members[c]).sum();
    let all: f64 = (0..by_class.len()).filter(both).map(|c| non_members[c]).sum();
    by_class
        .iter()
        .enumerate()
        .map(|(c, rows)| {
            let (member_factor, non_member_factor) = if both(&c) {
                (1.0, (members[c] / matched) / (non_members[c] / all))
            } else {
                (0.0, 0.0)
            };
            rows.iter()
                .map(|&(_, member, position, _)| {
                    by_position[position] * if member { member_factor } else { non_member_factor }
                })
                .collect()
        })
        .collect()
}

/// Observations grouped for the attack: per node, per half, per class, sorted by score.
struct Prepared {
    /// `groups[node][half][class]`: the rows, highest score first.
    groups: Vec<[Vec<Vec<Row>>; 2]>,
    /// The distinct positions observed, for the bootstrap.
    positions: Vec<usize>,
    /// Positions in the pool (for the weights' length).
    pool: usize,
}

impl Prepared {
    fn new(observations: &[Observation], half: &[bool], nodes: usize) -> Prepared {
        let pool = half.len();
        let classes = observations.iter().map(|o| o.class + 1).max().unwrap_or(0);
        let mut groups: Vec<[Vec<Vec<Row>>; 2]> = (0..nodes)
            .map(|_| [vec![Vec::new(); classes], vec![Vec::new(); classes]])
            .collect();
        let mut seen = vec![false; pool];
        for o in observations {
            groups[o.node][usize::from(half[o.position])][o.class].push((o.score, o.member, o.position, o.class));
            seen[o.position] = true;
        }
        for rows in groups.iter_mut().flatten().flatten() {
            rows.sort_by(|a, b| b.0.total_cmp(&a.0));
        }
        Prepared {
            groups,
            positions: (0..pool).filter(|&p| seen[p]).collect(),
            pool,
        }
    }

    /// Every node's held-out guesses under `by_position` (the bootstrap's counts), the
    /// non-members of each half matched to its members' classes: each half's threshold
    /// for a class applied to the other half's rows of that class.
    fn attack(&self, by_position: &[f64]) -> Vec<Counts> {
        self.groups
            .iter()
            .map(|[a, b]| {
                let (wa, wb) = (class_matched(a, by_position), class_matched(b, by_position));
                let mut counts = Counts::default();
                for c in 0..a.len() {
                    counts.add(evaluate(&b[c], &wb[c], best_threshold(&a[c], &wa[c])));
                    counts.add(evaluate(&a[c], &wa[c], best_threshold(&b[c], &wb[c])));
                }
                counts
            })
            .collect()
    }
}

/// The attack on `observations` (of `nodes` nodes; positions < `half.len()`, the pool),
/// pooled over the nodes, with its bootstrap interval; and each node's alone.
pub fn advantage(
    observations: &[Observation],
    half: &[bool],
    nodes: usize,
    rng: &mut impl Rng,
) -> (Advantage, Vec<Advantage>) {
    let prepared = Prepared::new(observations, half, nodes);
    let ones = vec![1.0; prepared.pool];
    let per_node = prepared.attack(&ones);
    let total = |counts: &[Counts]| {
        let mut sum = Counts::default();
        counts.iter().for_each(|c| sum.add(*c));
        sum
    };
    let mut pooled_draws = Vec::with_capacity(REPLICATES);
    let mut node_draws: Vec<Vec<f64>> = vec![Vec::with_capacity(REPLICATES); nodes];
    let mut weights = vec![0.0; prepared.pool];
    if !prepared.positions.is_empty() {
        for _ in 0..REPLICATES {
            weights.iter_mut().for_each(|w| *w = 0.0);
            for _ in 0..prepared.positions.len() {
                weights[prepared.positions[rng.random_range(0..prepared.positions.len())]] += 1.0;
            }
            let counts = prepared.attack(&weights);
            pooled_draws.push(total(&counts).advantage());
            for (draws, c) in node_draws.iter_mut().zip(&counts) {
                draws.push(c.advantage());
            }
        }
    }
    let figures = |counts: &Counts, draws: &mut Vec<f64>| {
        let (low, high) = percentile_interval(draws);
        Advantage {
            advantage: counts.advantage(),
            low,
            high,
            tpr: counts.tpr(),
            fpr: counts.fpr(),
            members: 0,
            non_members: 0,
        }
    };
    // Observations as seen, before the class weights.
    let seen = |node: Option<usize>| {
        let of = |member: bool| {
            observations
                .iter()
                .filter(|o| o.member == member && node.is_none_or(|n| o.node == n))
                .count()
        };
        (of(true), of(false))
    };
    let mut pooled = figures(&total(&per_node), &mut pooled_draws);
    (pooled.members, pooled.non_members) = seen(None);
    let nodes = per_node
        .iter()
        .zip(&mut node_draws)
        .enumerate()
        .map(|(node, (c, draws))| {
            let mut figures = figures(c, draws);
            (figures.members, figures.non_members) = seen(Some(node));
            figures
        })
        .collect();
    (pooled, nodes)
}

/// The 2.5 % and 97.5 % percentiles of `draws` (nearest rank); (0, 0) for none.
fn percentile_interval(draws: &mut [f64]) -> (f64, f64) {
    if draws.is_empty() {
        return (0.0, 0.0);
    }
    draws.sort_by(f64::total_cmp);
    let at = |q: f64| draws[((q * draws.len() as f64).ceil() as usize).clamp(1, draws.len()) - 1];
    (at(0.025), at(0.975))
}

/// The halves: a seeded shuffle of the `pool` positions, the first half of it `false`,
/// the rest `true`.
pub fn halves(pool: usize, rng: &mut impl Rng) -> Vec<bool> {
    let mut order: Vec<usize> = (0..pool).collect();
    order.shuffle(rng);
    let mut half = vec![false; pool];
    for &p in &order[pool / 2..] {
        half[p] = true;
    }
    half
}

/// The control: each node's membership labels shuffled among its candidate rows (the
/// same number of member rows, chosen at random), every observation of a row relabelled
/// alike.
pub fn shuffled(observations: &[Observation], nodes: usize, pool: usize, rng: &mut impl Rng) -> Vec<Observation> {
    let mut relabelled = observations.to_vec();
    for node in 0..nodes {
        let mut candidates = vec![None; pool];
        for o in observations.iter().filter(|o| o.node == node) {
            candidates[o.position] = Some(o.member);
        }
        let mut rows: Vec<usize> = (0..pool).filter(|&p| candidates[p].is_some()).collect();
        let members = rows.iter().filter(|&&p| candidates[p] == Some(true)).count();
        rows.shuffle(rng);
        let mut member = vec![false; pool];
        for &p in &rows[..members] {
            member[p] = true;
        }
        for o in relabelled.iter_mut().filter(|o| o.node == node) {
            o.member = member[o.position];
        }
    }
    relabelled
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(scored: &[(f64, bool)]) -> (Vec<Row>, Vec<f64>) {
        let mut rows: Vec<Row> = scored.iter().enumerate().map(|(p, &(s, m))| (s, m, p, 0)).collect();
        rows.sort_by(|a, b| b.0.total_cmp(&a.0));
        (rows, vec![1.0; scored.len()])
    }

    #[test]
    fn the_margin_is_the_log_odds_of_the_true_label() {
        // softmax(ln 3, 0) = (¾, ¼): log odds of class 0 ln 3, of class 1 −ln 3.
        let logits = [3f32.ln(), 0.0];
        assert!((margin(&logits, 0) - 3f64.ln()).abs() < 1e-6);
        assert!((margin(&logits, 1) + 3f64.ln()).abs() < 1e-6);
        // Three classes: p = (½, ¼, ¼), odds of class 0 are 1.
        let logits = [2f32.ln(), 0.0, 0.0];
        assert!(margin(&logits, 0).abs() < 1e-6);
        // Confident rows keep their order where p_y would round to 1.
        assert!(margin(&[60.0, 0.0], 0) > margin(&[50.0, 0.0], 0));
    }

    #[test]
    fn the_threshold_maximises_tpr_minus_fpr_and_takes_ties_whole() {
        // Members 0.9, 0.8, 0.3; non-members 0.7, 0.2, 0.1: at ≥ 0.8, TPR ⅔, FPR 0.
        let (r, w) = rows(&[
            (0.9, true),
            (0.8, true),
            (0.3, true),
            (0.7, false),
            (0.2, false),
            (0.1, false),
        ]);
        assert_eq!(best_threshold(&r, &w), 0.8);
        let counts = evaluate(&r, &w, 0.8);
        assert!((counts.advantage() - 2.0 / 3.0).abs() < 1e-12);
        // At ≥ 0.3: TPR 1, FPR ⅓, also ⅔: the first (highest) threshold is kept.
        assert!((evaluate(&r, &w, 0.3).advantage() - 2.0 / 3.0).abs() < 1e-12);
        // A member tied with a non-member: the threshold cannot split them.
        let (r, w) = rows(&[(0.5, true), (0.5, false)]);
        assert_eq!(best_threshold(&r, &w), f64::INFINITY);
        // No members: guess none.
        let (r, w) = rows(&[(0.5, false), (0.4, false)]);
        assert_eq!(best_threshold(&r, &w), f64::INFINITY);
        assert_eq!(evaluate(&r, &w, f64::INFINITY).advantage(), 0.0);
        // Members scoring lower than non-members: no threshold above guesses better.
        let (r, w) = rows(&[(0.1, true), (0.9, false)]);
        assert_eq!(best_threshold(&r, &w), f64::INFINITY);
        // Weights count as repeated rows: without the non-member at 0.8 the best
        // threshold takes both members.
        let (r, _) = rows(&[(0.9, true), (0.8, false), (0.7, true), (0.1, false)]);
        assert_eq!(best_threshold(&r, &[1.0, 1.0, 1.0, 1.0]), 0.9);
        assert_eq!(best_threshold(&r, &[1.0, 0.0, 1.0, 1.0]), 0.7);
    }

    #[test]
    fn non_members_are_weighted_to_the_members_classes() {
        // Members: 3 of class 0, 1 of class 1. Non-members: 1 of class 0, 3 of class 1,
        // 2 of class 2 (which no member has: weight 0). Matched: class 0 weighs
        // (3/4)/(1/4) = 3, class 1 (1/4)/(3/4) = 1/3, so the non-members' mass, 4, is
        // ¾ class 0 like the members'.
        let rows: Vec<Row> = [
            (0, true),
            (0, true),
            (0, true),
            (1, true),
            (0, false),
            (1, false),
            (1, false),
            (1, false),
            (2, false),
            (2, false),
        ]
        .iter()
        .enumerate()
        .map(|(p, &(class, member))| (0.0, member, p, class))
        .collect();
        let by_class = |rows: &[Row], classes: usize| -> Vec<Vec<Row>> {
            (0..classes)
                .map(|c| rows.iter().filter(|r| r.3 == c).copied().collect())
                .collect()
        };
        let w: Vec<f64> = class_matched(&by_class(&rows, 3), &[1.0; 10]).concat();
        let expected = [1.0, 1.0, 1.0, 3.0, 1.0, 1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0, 0.0, 0.0];
        assert!(w.iter().zip(expected).all(|(a, b)| (a - b).abs() < 1e-12), "{w:?}");
        // A member of a class no non-member has is left out.
        let rows: Vec<Row> = vec![(0.0, true, 0, 0), (0.0, true, 1, 1), (0.0, false, 2, 0)];
        assert_eq!(
            class_matched(&by_class(&rows, 2), &[1.0; 3]),
            vec![vec![1.0, 1.0], vec![0.0]]
        );
    }

    #[test]
    fn a_model_only_sure_of_its_classes_gains_nothing() {
        // Node 0's members are 90 % class 0, the non-members 10 %; the model is sure of
        // class 0 whatever the row (score 2 ± 1, else 0 ± 1), member or not: a
        // threshold at 1 would tell the classes apart, not members from non-members.
        let mut rng = wdml_node::seed::rng(4);
        let mut seen = Vec::new();
        for position in 0..2000 {
            let member = position < 400;
            let class = match (member, position % 10) {
                (true, 0) | (false, 1..) => 1,
                _ => 0,
            };
            let score = if class == 0 { 2.0 } else { 0.0 } + rng.random_range(-1.0..1.0);
            seen.push(Observation {
                node: 0,
                round: 1,
                position,
                class,
                score,
                member,
            });
        }
        let half = halves(2000, &mut rng);
        let (pooled, _) = advantage(&seen, &half, 1, &mut rng);
        assert!(
            pooled.advantage.abs() < 0.08 && pooled.low < 0.0 && pooled.high > 0.0,
            "{pooled:?}"
        );
        assert_eq!((pooled.members, pooled.non_members), (400, 1600));
    }

    fn observations(separated: bool, rng: &mut impl Rng) -> Vec<Observation> {
        // 2 nodes, 400 rows; node k's members are the rows ≡ k (mod 4), the rows ≡ 2 or
        // 3 nobody's. Seen in 3 rounds each.
        let mut out = Vec::new();
        for round in 1..=3 {
            for node in 0..2 {
                for position in 0..400 {
                    if position % 4 == 1 - node {
                        continue; // the other node's member
                    }
                    let member = position % 4 == node;
                    let noise: f64 = rng.random_range(-1.0..1.0);
                    let score = if member && separated { 1.5 + noise } else { noise };
                    out.push(Observation {
                        node,
                        round,
                        position,
                        class: position % 3,
                        score,
                        member,
                    });
                }
            }
        }
        out
    }

    #[test]
    fn a_separable_signal_is_found_out_of_sample_and_a_shuffled_one_is_not() {
        let mut rng = wdml_node::seed::rng(1);
        let half = halves(400, &mut rng);
        assert_eq!(half.iter().filter(|&&h| h).count(), 200);
        // Members uniform on [0.5, 2.5], non-members on [−1, 1]: any threshold t in
        // [0.5, 1] gives TPR (2.5 − t)/2 and FPR (1 − t)/2, advantage 0.75.
        let seen = observations(true, &mut rng);
        let (pooled, nodes) = advantage(&seen, &half, 2, &mut rng);
        assert!((pooled.advantage - 0.75).abs() < 0.06, "{pooled:?}");
        assert!(pooled.low > 0.6 && pooled.low < pooled.advantage && pooled.advantage < pooled.high);
        assert_eq!((pooled.members, pooled.non_members), (600, 1200));
        assert_eq!(nodes.len(), 2);
        assert!(nodes.iter().all(|n| n.advantage > 0.6 && n.members == 300), "{nodes:?}");
        // The same scores, membership drawn at random: about 0, the interval over 0.
        let control = shuffled(&seen, 2, 400, &mut rng);
        assert_eq!(control.iter().filter(|o| o.member).count(), 600);
        let (pooled, _) = advantage(&control, &half, 2, &mut rng);
        assert!(pooled.advantage.abs() < 0.1, "{pooled:?}");
        assert!(pooled.low < 0.0 && pooled.high > 0.0, "{pooled:?}");
        // No signal at all: the same.
        let (pooled, _) = advantage(&observations(false, &mut rng), &half, 2, &mut rng);
        assert!(pooled.low < 0.0 && pooled.high > 0.0, "{pooled:?}");
        // Nothing observed: zeros, no interval to draw.
        let (pooled, _) = advantage(&[], &half, 1, &mut rng);
        assert_eq!((pooled.advantage, pooled.low, pooled.high), (0.0, 0.0, 0.0));
    }

    #[test]
    fn a_threshold_per_class_finds_what_one_threshold_for_all_misses() {
        // Members score 1 above non-members of their class, uniform over 2 wide, but
        // class 1 sits 4 above class 0: per class the advantage is 0.5; one threshold for
        // both classes reaches 0.25 at best.
        let mut rng = wdml_node::seed::rng(6);
        let seen: Vec<Observation> = (0..4000)
            .map(|position| {
                let (member, class) = (position % 2 == 0, (position / 2) % 2);
                let score = 4.0 * class as f64 + f64::from(u8::from(member)) + rng.random_range(0.0..2.0);
                Observation {
                    node: 0,
                    round: 1,
                    position,
                    class,
                    score,
                    member,
                }
            })
            .collect();
        let half = halves(4000, &mut rng);
        let (pooled, _) = advantage(&seen, &half, 1, &mut rng);
        assert!(pooled.advantage > 0.42 && pooled.low > 0.35, "{pooled:?}");
    }

    #[test]
    fn the_interval_is_the_nearest_rank_percentiles() {
        let mut draws: Vec<f64> = (1..=1000).rev().map(f64::from).collect();
        assert_eq!(percentile_interval(&mut draws), (25.0, 975.0));
        assert_eq!(percentile_interval(&mut []), (0.0, 0.0));
    }
}
