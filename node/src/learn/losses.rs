//! The losses of mutual learning and the aggregation of peers' predictions.
//!
//! A device's loss on a step is `CE(private batch) + λ·T²·KL(p ‖ q)`, where `q =
//! softmax(f(public)/T)` is its own softened prediction on the public batch and `p` is
//! the target built by [`soft_targets`] from its neighbours' logits. The `T²` factor
//! (Hinton et al., 2015) keeps the KL gradient's scale independent of `T`.

use candle_core::{D, Tensor};

use super::trust::{self, Trust};
use super::{Aggregate, invalid};
use crate::Result;

/// Writes `softmax(z/T)` of one row into `out`, in `f64` with the max subtracted so that
/// large logits (or a small `T`) cannot overflow.
fn softmax_row(z: &[f32], temperature: f64, out: &mut [f64]) {
    let inv_t = 1.0 / temperature;
    let max = z.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(f64::from(x)));
    let mut sum = 0.0;
    for (o, &x) in out.iter_mut().zip(z) {
        *o = ((f64::from(x) - max) * inv_t).exp();
        sum += *o;
    }
    // The max entry contributes exp(0) = 1, so `sum ≥ 1`.
    for o in out.iter_mut() {
        *o /= sum;
    }
}

/// Validates peers' logits and softens them: `probs[j * len + i]` is peer `j`'s
/// `softmax(z/T)` for entry `i`, with `len = rows × classes`.
fn softened(peers: &[&[f32]], rows: usize, classes: usize, temperature: f64) -> Result<(Vec<f64>, usize)> {
    if peers.is_empty() {
        return Err(invalid(
            "soft_targets needs at least one peer (train on CE alone instead)",
        ));
    }
    if classes == 0 {
        return Err(invalid("soft_targets needs at least one class"));
    }
    if !(temperature.is_finite() && temperature > 0.0) {
        return Err(invalid(format!(
            "temperature must be positive and finite, got {temperature}"
        )));
    }
    let len = rows
        .checked_mul(classes)
        .ok_or_else(|| invalid(format!("{rows} rows × {classes} classes overflows")))?;
    for (j, peer) in peers.iter().enumerate() {
        if peer.len() != len {
            return Err(invalid(format!(
                "peer {j} sent {} logits, expected {rows} rows × {classes} classes = {len}",
                peer.len()
            )));
        }
        if let Some(i) = peer.iter().position(|x| !x.is_finite()) {
            return Err(invalid(format!("peer {j} sent a non-finite logit at index {i}")));
        }
    }

    let n = peers.len();
    // probs[j * len + i]: peer j's softened probability for entry i.
    let mut probs = vec![0.0f64; n * len];
    for (peer, dst) in peers.iter().zip(probs.chunks_exact_mut(len.max(1))) {
        for (z, out) in peer.chunks_exact(classes).zip(dst.chunks_exact_mut(classes)) {
            softmax_row(z, temperature, out);
        }
    }
    Ok((probs, len))
}

/// Combines peers' logits into one target distribution per row.
///
/// `peers`: each `rows × classes` logits, row-major. Returns `rows × classes` target
/// probabilities, row-major, every row summing to 1.
///
/// - [`Aggregate::Mean`]: `mean_j softmax(z_j/T)`. Because `KL(p̄‖q) = Σ p̄·log p̄ −
///   Σ p̄·log q` and the first term does not depend on the model, its gradient is
///   `1/n · ∇ Σ_j KL(p_j‖q)`: exactly DML's sum of per-peer KL terms (Zhang et al.,
///   2018) up to the constant factor `1/n`, which the KL weight absorbs.
/// - [`Aggregate::Median`]: the per-entry median over peers (mean of the two middle
///   values for an even count), then each row renormalised.
/// - [`Aggregate::TrimmedMean`]: per entry, drop the highest and the lowest peer when
///   there are at least 3 peers, average the rest, then renormalise each row.
/// - [`Aggregate::TrustWeighted`]: the peers' mean weighted by their agreement with the
///   per-entry median ([`super::trust`]), here from this one call alone; a node keeps
///   the scores across rounds and calls [`trust_weighted_targets`] instead.
///
/// Errors on no peers, a peer of the wrong length, a non-finite logit, or a
/// temperature that is not positive and finite.
pub fn soft_targets(
    peers: &[&[f32]],
    rows: usize,
    classes: usize,
    temperature: f64,
    aggregate: Aggregate,
) -> Result<Vec<f32>> {
    let (probs, len) = softened(peers, rows, classes, temperature)?;
    if aggregate == Aggregate::Unspecified {
        return Err(invalid(
            "soft_targets needs an aggregate (mean, median, trimmed-mean or trust-weighted)",
        ));
    }
    let n = peers.len();
    // One call, no history: the scores are this round's distances, and no own view.
    let trust_weights = if aggregate == Aggregate::TrustWeighted {
        let reference = trust::median_reference(&probs, n, len, classes);
        trust::weights(&trust::distances(&probs, n, len, classes, &reference), None)
    } else {
        Vec::new()
    };
    let mut target = vec![0.0f64; len];
    let mut column = Vec::with_capacity(n);
    for (i, t) in target.iter_mut().enumerate() {
        column.clear();
        column.extend((0..n).map(|j| probs[j * len + i]));
        *t = match aggregate {
            Aggregate::Mean => column.iter().sum::<f64>() / n as f64,
            Aggregate::Median => {
                column.sort_by(f64::total_cmp);
                if n % 2 == 1 {
                    column[n / 2]
                } else {
                    0.5 * (column[n / 2 - 1] + column[n / 2])
                }
            }
            Aggregate::TrimmedMean if n >= 3 => {
                column.sort_by(f64::total_cmp);
                column[1..n - 1].iter().sum::<f64>() / (n - 2) as f64
            }
            // Refused above; the mean is the trimmed mean of fewer than three.
            Aggregate::TrimmedMean | Aggregate::Unspecified => column.iter().sum::<f64>() / n as f64,
            Aggregate::TrustWeighted => column.iter().zip(&trust_weights).map(|(p, w)| p * w).sum::<f64>(),
        };
    }
    Ok(normalised(target, classes))
}

/// The trust-weighted target of a node that remembers its neighbours: folds this
/// round into `trust` when `own` (the node's own logits on the same rows) is given —
/// once a round, for its fresh messages — then weighs each of `peers` (`(id, logits)`,
/// by id) by its score. Stale messages of earlier rounds are weighed without `own`,
/// by the scores as they stand. Errors as [`soft_targets`] does, `own` included.
pub fn trust_weighted_targets(
    trust: &mut Trust,
    own: Option<&[f32]>,
    peers: &[(u32, &[f32])],
    rows: usize,
    classes: usize,
    temperature: f64,
) -> Result<Vec<f32>> {
    let logits: Vec<&[f32]> = peers.iter().map(|p| p.1).collect();
    let ids: Vec<u32> = peers.iter().map(|p| p.0).collect();
    let (probs, len) = softened(&logits, rows, classes, temperature)?;
    if let Some(own) = own {
        let (mut all, _) = softened(&[own], rows, classes, temperature)?;
        all.extend_from_slice(&probs);
        trust.observe(&all, &ids, len, classes);
    }
    let weights = trust.weights(&ids);
    let mut target = vec![0.0f64; len];
    for (peer, w) in probs.chunks_exact(len.max(1)).zip(&weights) {
        for (t, p) in target.iter_mut().zip(peer) {
            *t += w * p;
        }
    }
    Ok(normalised(target, classes))
}

/// Each row of `target` renormalised and made `f32`.
fn normalised(mut target: Vec<f64>, classes: usize) -> Vec<f32> {
    // The (weighted) mean of distributions is already one; median and trimmed mean are not.
    // Renormalise every row regardless, which also absorbs rounding.
    for row in target.chunks_exact_mut(classes) {
        let sum: f64 = row.iter().sum();
        if sum > 0.0 && sum.is_finite() {
            row.iter_mut().for_each(|p| *p /= sum);
        } else {
            // Only reachable if every entry underflowed to 0; a uniform row is the
            // least-informative target, so the KL term then pulls towards nothing.
            row.iter_mut().for_each(|p| *p = 1.0 / classes as f64);
        }
    }
    target.into_iter().map(|p| p as f32).collect()
}

/// `KL(p ‖ softmax(logits/T))`, summed over classes and averaged over rows
/// ("batchmean"), as a scalar tensor differentiable in `logits`.
///
/// `target` `[rows, classes]` holds probabilities (no gradient flows into it); entries
/// equal to 0 contribute nothing, as `0·log 0 = 0`.
pub fn kl_to_target(logits: &Tensor, target: &Tensor, temperature: f64) -> Result<Tensor> {
    if logits.dims() != target.dims() || logits.rank() != 2 {
        return Err(invalid(format!(
            "KL needs logits and target of the same [rows, classes] shape, got {:?} and {:?}",
            logits.dims(),
            target.dims()
        )));
    }
    let rows = logits.dim(0)?;
    if rows == 0 {
        return Err(invalid("KL over an empty batch"));
    }
    let log_q = candle_nn::ops::log_softmax(&(logits / temperature)?, D::Minus1)?;
    // Σ p·log p is a constant of the model; clamping p before the log turns 0·log 0 into
    // 0·(−87) = 0 instead of 0·(−∞) = NaN.
    let p_log_p = (target * target.clamp(f32::MIN_POSITIVE, 1.0f32)?.log()?)?.sum_all()?;
    let p_log_q = (target * log_q)?.sum_all()?;
    Ok(((p_log_p - p_log_q)? / rows as f64)?)
}

/// [`kl_to_target`] with a weight per row: `Σ_i w_i · KL(p_i ‖ q_i) / rows`. A row of
/// a neighbour's stale predictions counts less than a fresh one (see
/// `wdml_proto::policy::Staleness`); all weights 1 give [`kl_to_target`].
pub fn weighted_kl_to_target(logits: &Tensor, target: &Tensor, weights: &Tensor, temperature: f64) -> Result<Tensor> {
    if logits.dims() != target.dims() || logits.rank() != 2 || weights.dims() != [logits.dim(0)?] {
        return Err(invalid(format!(
            "weighted KL needs logits and target of one [rows, classes] shape and one weight per row, got \
             {:?}, {:?} and {:?}",
            logits.dims(),
            target.dims(),
            weights.dims()
        )));
    }
    let rows = logits.dim(0)?;
    if rows == 0 {
        return Err(invalid("KL over an empty batch"));
    }
    let log_q = candle_nn::ops::log_softmax(&(logits / temperature)?, D::Minus1)?;
    let log_p = target.clamp(f32::MIN_POSITIVE, 1.0f32)?.log()?;
    let per_row = (target * (log_p - log_q)?)?.sum(D::Minus1)?;
    Ok(((per_row * weights)?.sum_all()? / rows as f64)?)
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Var};

    use super::*;

    fn close(a: &[f32], b: &[f64], tol: f64) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((f64::from(*x) - y).abs() < tol, "{a:?} vs {b:?}");
        }
    }

    fn softmax(z: &[f64]) -> Vec<f64> {
        let e: Vec<f64> = z.iter().map(|x| x.exp()).collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|x| x / s).collect()
    }

    #[test]
    fn mean_by_hand() {
        // Two peers, one row of three classes.
        let a = [0.0f32, 1.0, 2.0];
        let b = [2.0f32, 0.0, 0.0];
        // T = 1: softmax(a) = (e⁰, e¹, e²)/(1+e+e²) = (0.0900306, 0.2447285, 0.6652410);
        // softmax(b) = (e², 1, 1)/(e²+2) = (0.7869860, 0.1065070, 0.1065070).
        let t1 = soft_targets(&[&a, &b], 1, 3, 1.0, Aggregate::Mean).unwrap();
        close(&t1, &[0.4385083, 0.1756177, 0.3858740], 1e-6);
        // T = 2: softmax(a/2) = (1, e^½, e)/(1+e^½+e) = (0.1863237, 0.3071959, 0.5064804);
        // softmax(b/2) = (e, 1, 1)/(e+2) = (0.5761169, 0.2119416, 0.2119416).
        let t2 = soft_targets(&[&a, &b], 1, 3, 2.0, Aggregate::Mean).unwrap();
        close(&t2, &[0.3812203, 0.2595687, 0.3592110], 1e-6);
        // Against a direct computation, too.
        let pa = softmax(&[0.0, 0.5, 1.0]);
        let pb = softmax(&[1.0, 0.0, 0.0]);
        let direct: Vec<f64> = pa.iter().zip(&pb).map(|(x, y)| 0.5 * (x + y)).collect();
        close(&t2, &direct, 1e-6);
    }

    #[test]
    fn median_and_trimmed_mean() {
        // Three peers whose logits are log-probabilities, so softmax returns them as is.
        let ln = |p: [f64; 2]| p.map(|x| x.ln() as f32);
        let peers = [ln([0.9, 0.1]), ln([0.6, 0.4]), ln([0.2, 0.8])];
        let refs: Vec<&[f32]> = peers.iter().map(|p| p.as_slice()).collect();
        // Median per entry: (0.6, 0.4), already normalised.
        let med = soft_targets(&refs, 1, 2, 1.0, Aggregate::Median).unwrap();
        close(&med, &[0.6, 0.4], 1e-6);
        // Trimmed mean with 3 peers keeps only the middle one per entry.
        let tm = soft_targets(&refs, 1, 2, 1.0, Aggregate::TrimmedMean).unwrap();
        close(&tm, &[0.6, 0.4], 1e-6);

        // An outlier peer moves the mean but not the median; per-entry medians that do
        // not sum to one are renormalised.
        let peers = [
            [0.5f64, 0.3, 0.2].map(|x| x.ln() as f32).to_vec(),
            [0.4f64, 0.4, 0.2].map(|x| x.ln() as f32).to_vec(),
            [0.3f64, 0.3, 0.4].map(|x| x.ln() as f32).to_vec(),
            [0.01f64, 0.01, 0.98].map(|x| x.ln() as f32).to_vec(),
        ];
        let refs: Vec<&[f32]> = peers.iter().map(|p| p.as_slice()).collect();
        // Medians of 4: (0.35, 0.3, 0.3) → sum 0.95.
        let med = soft_targets(&refs, 1, 3, 1.0, Aggregate::Median).unwrap();
        close(&med, &[0.35 / 0.95, 0.3 / 0.95, 0.3 / 0.95], 1e-6);
        // Trimmed of 4: means of the middle two, (0.35, 0.3, 0.3) as well here.
        let tm = soft_targets(&refs, 1, 3, 1.0, Aggregate::TrimmedMean).unwrap();
        close(&tm, &[0.35 / 0.95, 0.3 / 0.95, 0.3 / 0.95], 1e-6);
        let mean = soft_targets(&refs, 1, 3, 1.0, Aggregate::Mean).unwrap();
        close(&mean, &[0.3025, 0.2525, 0.445], 1e-6);

        // Below three peers the trimmed mean is the mean.
        let two = &refs[..2];
        assert_eq!(
            soft_targets(two, 1, 3, 1.0, Aggregate::TrimmedMean).unwrap(),
            soft_targets(two, 1, 3, 1.0, Aggregate::Mean).unwrap()
        );
    }

    #[test]
    fn rows_are_independent_and_normalised() {
        let a = [1.0f32, 2.0, 3.0, -50.0, 0.0, 50.0];
        let b = [3.0f32, 2.0, 1.0, 100.0, 0.0, 0.0];
        for &agg in Aggregate::ALL {
            let t = soft_targets(&[&a, &b], 2, 3, 0.5, agg).unwrap();
            for row in t.chunks(3) {
                assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6, "{agg}: {t:?}");
                assert!(row.iter().all(|p| p.is_finite() && *p >= 0.0));
            }
            let first = soft_targets(&[&a[..3], &b[..3]], 1, 3, 0.5, agg).unwrap();
            assert_eq!(&t[..3], first.as_slice());
        }
    }

    #[test]
    fn soft_targets_rejects_bad_input() {
        let a = [0.0f32; 6];
        assert!(soft_targets(&[], 2, 3, 1.0, Aggregate::Mean).is_err());
        assert!(soft_targets(&[&a[..5]], 2, 3, 1.0, Aggregate::Mean).is_err());
        assert!(soft_targets(&[&a], 2, 3, 0.0, Aggregate::Mean).is_err());
        assert!(soft_targets(&[&a], 2, 3, f64::NAN, Aggregate::Mean).is_err());
        assert!(soft_targets(&[&a], 6, 0, 1.0, Aggregate::Mean).is_err());
        let nan = [0.0, f32::NAN, 0.0];
        assert!(soft_targets(&[&nan], 1, 3, 1.0, Aggregate::Median).is_err());
        assert!(soft_targets(&[&a], 0, 3, 1.0, Aggregate::Mean).is_err());
        assert_eq!(
            soft_targets(&[&[]], 0, 3, 1.0, Aggregate::Mean).unwrap(),
            Vec::<f32>::new()
        );
    }

    #[test]
    fn kl_matches_hand_value_and_handles_zeros() {
        let dev = Device::Cpu;
        // p = (0.5, 0.5, 0), q = softmax(0, 0, 0) = 1/3 each:
        // KL = 0.5·ln(1.5) + 0.5·ln(1.5) = ln 1.5.
        let logits = Tensor::zeros((1, 3), DType::F32, &dev).unwrap();
        let p = Tensor::new(&[[0.5f32, 0.5, 0.0]], &dev).unwrap();
        let kl = kl_to_target(&logits, &p, 3.0).unwrap().to_scalar::<f32>().unwrap();
        assert!((f64::from(kl) - 1.5f64.ln()).abs() < 1e-6, "{kl}");
        // batchmean: a second identical row leaves the value unchanged.
        let logits2 = Tensor::zeros((2, 3), DType::F32, &dev).unwrap();
        let p2 = Tensor::new(&[[0.5f32, 0.5, 0.0], [0.5, 0.5, 0.0]], &dev).unwrap();
        let kl2 = kl_to_target(&logits2, &p2, 1.0).unwrap().to_scalar::<f32>().unwrap();
        assert!((kl2 - kl).abs() < 1e-6);
        assert!(kl_to_target(&logits, &p2, 1.0).is_err());
    }

    #[test]
    fn kl_is_zero_with_vanishing_gradient_at_own_prediction() {
        let dev = Device::Cpu;
        let z =
            Var::from_tensor(&Tensor::new(&[[1.0f32, -2.0, 0.5, 3.0], [0.0, 0.1, -0.3, 2.0]], &dev).unwrap()).unwrap();
        let t = 2.5;
        let own = candle_nn::ops::softmax(&(z.as_tensor() / t).unwrap(), D::Minus1)
            .unwrap()
            .detach();
        let kl = kl_to_target(z.as_tensor(), &own, t).unwrap();
        assert!(kl.to_scalar::<f32>().unwrap().abs() < 1e-6);
        let grads = kl.backward().unwrap();
        let g = grads
            .get(z.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(g.iter().all(|x| x.abs() < 1e-6), "{g:?}");

        // Away from it, the gradient is (q − p)/(T·rows).
        let p = Tensor::new(&[[0.25f32; 4], [0.25; 4]], &dev).unwrap();
        let kl = kl_to_target(z.as_tensor(), &p, t).unwrap();
        let g = kl.backward().unwrap().get(z.as_tensor()).unwrap().clone();
        let expected = ((&own - &p).unwrap() / (t * 2.0)).unwrap();
        let diff = (g - expected).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-6);
    }
    #[test]
    fn weighted_kl_weighs_each_row_and_is_the_plain_kl_with_unit_weights() {
        let device = Device::Cpu;
        let logits = Tensor::new(&[[1.0f32, 0.0, -1.0], [0.5, 0.5, 2.0]], &device).unwrap();
        let target = Tensor::new(&[[0.2f32, 0.3, 0.5], [0.6, 0.3, 0.1]], &device).unwrap();
        let plain = kl_to_target(&logits, &target, 2.0).unwrap().to_scalar::<f32>().unwrap();
        let ones = Tensor::new(&[1.0f32, 1.0], &device).unwrap();
        let unit = weighted_kl_to_target(&logits, &target, &ones, 2.0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((plain - unit).abs() < 1e-6, "{plain} vs {unit}");
        // Row by row: the weighted sum of each row's own KL, over the rows.
        let row = |i: usize| {
            kl_to_target(&logits.narrow(0, i, 1).unwrap(), &target.narrow(0, i, 1).unwrap(), 2.0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        let weights = Tensor::new(&[1.0f32, 0.25], &device).unwrap();
        let weighted = weighted_kl_to_target(&logits, &target, &weights, 2.0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((weighted - (row(0) + 0.25 * row(1)) / 2.0).abs() < 1e-6);
        assert!(weighted_kl_to_target(&logits, &target, &ones.narrow(0, 0, 1).unwrap(), 2.0).is_err());
    }
}
