//! The `trust-weighted` aggregate: a defence against neighbours that send confident
//! wrong predictions, which needs no labelled public set.
//!
//! Each round a node softens its own predictions and every fresh neighbour's
//! (`softmax(z/T)`), takes their coordinate-wise median as the reference (its own
//! predictions count as one more voter, so that with two neighbours one liar is still
//! outvoted), and measures each neighbour's distance to it: the total-variation
//! distance `½·Σ_c |p_c − m_c|` of each row, averaged over the rows, in `[0, 1]`. A
//! neighbour's *score* is an exponential moving average of its distances
//! ([`SMOOTHING`] for the newest round), kept across rounds in [`Trust`]; so is the
//! node's own.
//!
//! The target is the neighbours' mean weighted by `w_j = exp(−max(0, s_j − τ·m) /
//! (κ·m))`, normalised, where `m` is the median of the scores present (the neighbours'
//! and the node's own), `τ` is [`TOLERANCE`] and `κ` is [`SOFTNESS`]: a neighbour up to
//! τ times as far from the consensus as the typical member keeps its full weight (honest
//! neighbours differ too, more so on skewed data), and every further κ·m costs it a
//! factor `e`, so a persistent liar, whose distance is near 1 where the honest sit
//! around 0.1–0.3, falls to a negligible weight. Measuring against the neighbourhood's
//! own median score makes the rule free of units: it follows the predictions as they
//! sharpen over training.
//!
//! Deterministic: the same messages in the same order (the mailbox sorts them by
//! sender) give the same weights, bit for bit.

use std::collections::BTreeMap;

/// The weight of the newest round's distance in a neighbour's score (an exponential
/// moving average with a memory of about `1/SMOOTHING` = 3 rounds).
pub const SMOOTHING: f64 = 0.3;
/// τ: a neighbour whose score is at most this multiple of the neighbourhood's median
/// score keeps its full weight.
pub const TOLERANCE: f64 = 1.5;
/// κ: how far beyond τ·m, as a multiple of the median score m, costs a neighbour a
/// factor `e` of its weight.
pub const SOFTNESS: f64 = 0.25;
/// The smallest median score the weights are measured against: below it the
/// predictions agree to within rounding, and no neighbour is singled out for less.
pub const MIN_SCALE: f64 = 1e-3;

/// The coordinate-wise median of `n` peers' probabilities (`probs[j * len + i]`), each
/// row renormalised (a uniform row if every entry is 0).
pub fn median_reference(probs: &[f64], n: usize, len: usize, classes: usize) -> Vec<f64> {
    debug_assert_eq!(probs.len(), n * len);
    let mut reference = vec![0.0f64; len];
    if n == 0 || classes == 0 {
        return reference;
    }
    let mut column = Vec::with_capacity(n);
    for (i, r) in reference.iter_mut().enumerate() {
        column.clear();
        column.extend((0..n).map(|j| probs[j * len + i]));
        column.sort_by(f64::total_cmp);
        *r = if n % 2 == 1 {
            column[n / 2]
        } else {
            0.5 * (column[n / 2 - 1] + column[n / 2])
        };
    }
    for row in reference.chunks_exact_mut(classes) {
        let sum: f64 = row.iter().sum();
        if sum > 0.0 && sum.is_finite() {
            row.iter_mut().for_each(|p| *p /= sum);
        } else {
            row.iter_mut().for_each(|p| *p = 1.0 / classes as f64);
        }
    }
    reference
}

/// Each peer's distance to `reference`: the total-variation distance of each row,
/// averaged over the rows (0 for no rows).
pub fn distances(probs: &[f64], n: usize, len: usize, classes: usize, reference: &[f64]) -> Vec<f64> {
    debug_assert_eq!(probs.len(), n * len);
    let rows = len.checked_div(classes).unwrap_or(0);
    (0..n)
        .map(|j| {
            if rows == 0 {
                return 0.0;
            }
            let peer = &probs[j * len..(j + 1) * len];
            let total: f64 = peer.iter().zip(reference).map(|(p, m)| (p - m).abs()).sum();
            0.5 * total / rows as f64
        })
        .collect()
}

/// The median of `values` (mean of the two middle ones for an even count; 0 for none).
fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => 0.5 * (v[n / 2 - 1] + v[n / 2]),
    }
}

/// The weights of neighbours with `scores`, normalised to sum to 1:
/// `exp(−max(0, s_j − τ·m)/(κ·m))` with `m` the median of `scores` and `own` (when the
/// node has a score of its own). Equal weights when there is nothing to tell them
/// apart by (every score equal, a non-finite score, or every weight underflowed).
pub fn weights(scores: &[f64], own: Option<f64>) -> Vec<f64> {
    let n = scores.len();
    if n == 0 {
        return Vec::new();
    }
    let equal = vec![1.0 / n as f64; n];
    if scores.iter().chain(own.iter()).any(|s| !s.is_finite() || *s < 0.0) {
        return equal;
    }
    let mut all = scores.to_vec();
    all.extend(own);
    let m = median(&all);
    let m = m.max(MIN_SCALE);
    let (band, scale) = (TOLERANCE * m, SOFTNESS * m);
    let raw: Vec<f64> = scores.iter().map(|&s| (-(s - band).max(0.0) / scale).exp()).collect();
    let sum: f64 = raw.iter().sum();
    if !(sum > 0.0 && sum.is_finite()) {
        return equal;
    }
    raw.into_iter().map(|w| w / sum).collect()
}

/// What a node remembers of its neighbours' agreement: each one's score (the moving
/// average of its distance to the round's median), and its own.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Trust {
    scores: BTreeMap<u32, f64>,
    own: Option<f64>,
}

impl Trust {
    /// Folds one round into the scores. `probs` holds `1 + peers.len()` softened
    /// predictions of `len` entries each (`probs[j * len + i]`): the node's own first,
    /// then each neighbour's in the order of `peers` (their ids).
    pub fn observe(&mut self, probs: &[f64], peers: &[u32], len: usize, classes: usize) {
        let n = peers.len() + 1;
        let reference = median_reference(probs, n, len, classes);
        let d = distances(probs, n, len, classes, &reference);
        let fold = |old: Option<f64>, new: f64| match old {
            Some(s) => s + SMOOTHING * (new - s),
            None => new,
        };
        self.own = Some(fold(self.own, d[0]));
        for (&id, &dist) in peers.iter().zip(&d[1..]) {
            let score = fold(self.scores.get(&id).copied(), dist);
            self.scores.insert(id, score);
        }
    }

    /// A neighbour's score, if it was ever heard.
    pub fn score(&self, id: u32) -> Option<f64> {
        self.scores.get(&id).copied()
    }

    /// The node's own score (its distance to the median), if it observed a round.
    pub fn own(&self) -> Option<f64> {
        self.own
    }

    /// The normalised weights of `senders` (see [`weights`]). A sender never observed
    /// counts as typical: its score is taken as the median of the others'.
    pub fn weights(&self, senders: &[u32]) -> Vec<f64> {
        let known: Vec<f64> = senders.iter().filter_map(|id| self.score(*id)).collect();
        let typical = {
            let mut all = known.clone();
            all.extend(self.own);
            median(&all)
        };
        let scores: Vec<f64> = senders.iter().map(|id| self.score(*id).unwrap_or(typical)).collect();
        weights(&scores, self.own)
    }

    /// Every score, for a checkpoint: `(None, own)` first, then `(Some(id), score)` by id.
    pub fn entries(&self) -> impl Iterator<Item = (Option<u32>, f64)> + '_ {
        self.own
            .map(|s| (None, s))
            .into_iter()
            .chain(self.scores.iter().map(|(&id, &s)| (Some(id), s)))
    }

    /// The scores of [`Trust::entries`] again.
    pub fn from_entries(entries: impl IntoIterator<Item = (Option<u32>, f64)>) -> Trust {
        let mut trust = Trust::default();
        for (id, score) in entries {
            match id {
                None => trust.own = Some(score),
                Some(id) => {
                    trust.scores.insert(id, score);
                }
            }
        }
        trust
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLASSES: usize = 4;

    /// One peer's softened predictions over `rows` rows: `p` on class `(r + shift) % 4`,
    /// the rest shared evenly.
    fn peer(rows: usize, p: f64, shift: usize) -> Vec<f64> {
        let mut v = vec![(1.0 - p) / (CLASSES - 1) as f64; rows * CLASSES];
        for r in 0..rows {
            v[r * CLASSES + (r + shift) % CLASSES] = p;
        }
        v
    }

    /// The own node, `honest` neighbours that agree with it (each a little differently)
    /// and `liars` that put 0.99 on the next class.
    fn round(rows: usize, honest: usize, liars: usize, wobble: f64) -> Vec<f64> {
        let mut probs = peer(rows, 0.7, 0);
        for h in 0..honest {
            probs.extend(peer(rows, 0.55 + wobble * h as f64, 0));
        }
        for _ in 0..liars {
            probs.extend(peer(rows, 0.99, 1));
        }
        probs
    }

    #[test]
    fn a_persistent_liar_falls_toward_zero_and_the_honest_keep_their_weight() {
        let rows = 8;
        let len = rows * CLASSES;
        // Ids 1–5 honest, 6 lies.
        let ids = [1, 2, 3, 4, 5, 6];
        let mut trust = Trust::default();
        let mut liar = Vec::new();
        for _ in 0..10 {
            trust.observe(&round(rows, 5, 1, 0.02), &ids, len, CLASSES);
            let w = trust.weights(&ids);
            assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12, "{w:?}");
            liar.push(w[5]);
            // The honest share the rest, none below half of the equal share.
            for &h in &w[..5] {
                assert!(h > 0.5 / 5.0, "{w:?}");
            }
        }
        assert!(liar[9] < 1e-3, "{liar:?}");
        assert!(liar.windows(2).all(|p| p[1] <= p[0] * (1.0 + 1e-9)), "{liar:?}");
    }

    #[test]
    fn a_liar_that_turns_honest_regains_its_weight_and_one_that_turns_liar_loses_it() {
        let rows = 4;
        let len = rows * CLASSES;
        let ids = [10, 11, 12, 13];
        let mut trust = Trust::default();
        for _ in 0..6 {
            trust.observe(&round(rows, 3, 1, 0.02), &ids, len, CLASSES);
        }
        assert!(trust.weights(&ids)[3] < 1e-3);
        // Node 13 now agrees: its score decays by (1 − 0.3) a round toward the others'.
        for _ in 0..15 {
            trust.observe(&round(rows, 4, 0, 0.02), &ids, len, CLASSES);
        }
        let w = trust.weights(&ids);
        assert!(w[3] > 0.2, "{w:?}");
        // Two rounds of lying from a trusted member already cost it most of its weight.
        let mut probs = round(rows, 3, 0, 0.02);
        probs.extend(peer(rows, 0.99, 1));
        let before = trust.weights(&ids)[3];
        trust.observe(&probs, &ids, len, CLASSES);
        trust.observe(&probs, &ids, len, CLASSES);
        assert!(trust.weights(&ids)[3] < 0.25 * before, "{:?}", trust.weights(&ids));
    }

    #[test]
    fn two_liars_among_few_are_outvoted_with_the_nodes_own_view() {
        // Two honest neighbours, two liars: the median of five (own + four) is honest.
        let rows = 6;
        let len = rows * CLASSES;
        let ids = [1, 2, 3, 4];
        let mut trust = Trust::default();
        for _ in 0..5 {
            trust.observe(&round(rows, 2, 2, 0.05), &ids, len, CLASSES);
        }
        let w = trust.weights(&ids);
        assert!(w[2] + w[3] < 1e-3, "{w:?}");
        assert!((w[0] + w[1] - 1.0).abs() < 1e-3, "{w:?}");
    }

    #[test]
    fn degenerate_cases() {
        // No neighbours.
        assert!(weights(&[], Some(0.1)).is_empty());
        assert!(Trust::default().weights(&[]).is_empty());
        // Every score equal (zero too): equal weights.
        assert_eq!(weights(&[0.2, 0.2, 0.2], Some(0.2)), vec![1.0 / 3.0; 3]);
        assert_eq!(weights(&[0.0, 0.0], Some(0.0)), vec![0.5; 2]);
        assert_eq!(weights(&[0.0, 0.0], None), vec![0.5; 2]);
        // A tie between one honest neighbour and one liar: the own score breaks it.
        let w = weights(&[0.1, 0.9], Some(0.1));
        assert!(w[1] < 1e-6 && w[0] > 0.999, "{w:?}");
        // Without it, the median is their mean (0.5): the liar is only 0.15 beyond
        // τ·m = 0.75 and keeps exp(−0.15/(κ·m)) of the weight.
        let w = weights(&[0.1, 0.9], None);
        let kept = (-(0.9 - TOLERANCE * 0.5) / (SOFTNESS * 0.5)).exp();
        assert!((w[1] / w[0] - kept).abs() < 1e-12, "{w:?}");
        // One neighbour is the whole target, whatever its score.
        assert_eq!(weights(&[0.9], Some(0.0)), vec![1.0]);
        // A score of exactly 0 among agreeing peers: the scale's floor keeps it finite.
        let w = weights(&[0.0, 0.0, 0.5], Some(0.0));
        assert!(w.iter().all(|x| x.is_finite()) && w[2] < 1e-100, "{w:?}");
        // Non-finite scores: equal weights rather than NaN.
        assert_eq!(weights(&[f64::NAN, 0.1], Some(0.1)), vec![0.5; 2]);
        assert_eq!(weights(&[f64::INFINITY, 0.1], None), vec![0.5; 2]);
        // A sender never heard counts as typical.
        let mut trust = Trust::default();
        let rows = 2;
        trust.observe(&round(rows, 2, 0, 0.0), &[1, 2], rows * CLASSES, CLASSES);
        let w = trust.weights(&[1, 2, 99]);
        assert!(w.iter().all(|&x| (x - 1.0 / 3.0).abs() < 1e-12), "{w:?}");
        // No rows: every distance 0.
        let mut empty = Trust::default();
        empty.observe(&[], &[1, 2], 0, CLASSES);
        assert_eq!(empty.score(1), Some(0.0));
        assert_eq!(empty.weights(&[1, 2]), vec![0.5; 2]);
    }

    #[test]
    fn the_reference_is_the_renormalised_median_and_distances_are_total_variation() {
        // Three peers, one row of two classes.
        let probs = [0.9, 0.1, 0.6, 0.4, 0.2, 0.8];
        let m = median_reference(&probs, 3, 2, 2);
        assert_eq!(m, vec![0.6, 0.4]);
        let d = distances(&probs, 3, 2, 2, &m);
        for (got, want) in d.iter().zip([0.3, 0.0, 0.4]) {
            assert!((got - want).abs() < 1e-12, "{d:?}");
        }
        // Medians that do not sum to one are renormalised; all zero → uniform.
        let probs = [0.5, 0.5, 0.0, 0.0, 0.0, 0.0];
        assert_eq!(median_reference(&probs, 3, 2, 2), vec![0.5, 0.5]);
    }

    #[test]
    fn scores_round_trip_through_entries_and_are_deterministic() {
        let rows = 3;
        let ids = [4, 7, 9];
        let run = || {
            let mut t = Trust::default();
            for k in 0..4 {
                t.observe(&round(rows, 2, 1, 0.01 * k as f64), &ids, rows * CLASSES, CLASSES);
            }
            t
        };
        let (a, b) = (run(), run());
        assert_eq!(a, b);
        assert_eq!(a.weights(&ids), b.weights(&ids));
        let again = Trust::from_entries(a.entries().collect::<Vec<_>>());
        assert_eq!(again, a);
        assert_eq!(a.entries().next().map(|e| e.0), Some(None));
    }
}
