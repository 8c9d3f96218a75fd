//! The statistics `wdml compare --seeds` reports: a mean over seeds with its 95 %
//! Student-t interval, and the paired difference of two algorithms over the same seeds
//! (each seed draws one split, initialisation and radio for both, so the difference per
//! seed removes what the seed alone explains).
//!
//! Hand-written rather than a statistics crate: it needs one quantile of one
//! distribution, and `statrs` would add `nalgebra` and its dependencies to the build for
//! it. The quantiles are checked against SciPy below.

use serde::Serialize;

/// The 0.975 quantile of Student's t with 1 to 30 degrees of freedom
/// (`scipy.stats.t.ppf(0.975, df)`, to 4 decimals).
const T975: [f64; 30] = [
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281, 2.2010, 2.1788, 2.1604, 2.1448,
    2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860, 2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484,
    2.0452, 2.0423,
];

/// The 0.975 quantile of Student's t with `df` ≥ 1 degrees of freedom: the table up
/// to 30, beyond it the Cornish–Fisher expansion around the normal quantile (Abramowitz
/// & Stegun 26.7.5, three terms), within 2·10⁻⁶ of the exact value from 30 on.
pub fn t975(df: usize) -> f64 {
    if let Some(&t) = df.checked_sub(1).and_then(|i| T975.get(i)) {
        return t;
    }
    let z: f64 = 1.959_963_984_540_054;
    let nu = df as f64;
    let g1 = (z.powi(3) + z) / 4.0;
    let g2 = (5.0 * z.powi(5) + 16.0 * z.powi(3) + 3.0 * z) / 96.0;
    let g3 = (3.0 * z.powi(7) + 19.0 * z.powi(5) + 17.0 * z.powi(3) - 15.0 * z) / 384.0;
    z + g1 / nu + g2 / nu.powi(2) + g3 / nu.powi(3)
}

/// A mean over `n` values and its 95 % t-interval (`None` with one value: no spread
/// to estimate).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Interval {
    pub n: usize,
    pub mean: f64,
    /// Sample standard deviation (n − 1 in the denominator).
    pub sd: f64,
    pub low: Option<f64>,
    pub high: Option<f64>,
}

impl Interval {
    /// The mean of `values` and its 95 % t-interval, mean ± t₀.₉₇₅(n−1) · sd / √n.
    pub fn of(values: &[f64]) -> Interval {
        let n = values.len();
        let mean = values.iter().sum::<f64>() / n.max(1) as f64;
        if n < 2 {
            return Interval {
                n,
                mean,
                sd: 0.0,
                low: None,
                high: None,
            };
        }
        let sd = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt();
        let half = t975(n - 1) * sd / (n as f64).sqrt();
        Interval {
            n,
            mean,
            sd,
            low: Some(mean - half),
            high: Some(mean + half),
        }
    }

    /// The paired difference `b − a`, seed by seed (`a[i]` and `b[i]` from one seed).
    ///
    /// # Panics
    /// If the two have different lengths (a pairing needs one value of each per seed).
    pub fn paired(a: &[f64], b: &[f64]) -> Interval {
        assert_eq!(a.len(), b.len(), "a paired difference needs one value of each per seed");
        Interval::of(&a.iter().zip(b).map(|(a, b)| b - a).collect::<Vec<_>>())
    }

    /// Whether the interval covers zero: a difference within noise at this level (also
    /// with one seed, where nothing tells noise from an effect).
    pub fn covers_zero(&self) -> bool {
        match (self.low, self.high) {
            (Some(low), Some(high)) => low <= 0.0 && 0.0 <= high,
            _ => true,
        }
    }

    /// `93.20 [92.41, 94.00]`, the values scaled by `scale` (100 for percent), or the
    /// mean alone with one value; `signed` writes a sign on each (a difference).
    pub fn show(&self, scale: f64, signed: bool) -> String {
        let v = |x: f64| {
            if signed {
                format!("{:+.2}", scale * x)
            } else {
                format!("{:.2}", scale * x)
            }
        };
        match (self.low, self.high) {
            (Some(low), Some(high)) => format!("{} [{}, {}]", v(self.mean), v(low), v(high)),
            _ => v(self.mean),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quantile_is_scipys() {
        // SciPy: t.ppf(0.975, df) for df = 4, 30 (the table) and 31, 60, 120 (the expansion).
        assert_eq!(t975(4), 2.7764);
        assert!((t975(30) - 2.042_272).abs() < 1e-4);
        for (df, exact) in [(31, 2.039_513), (60, 2.000_298), (120, 1.979_930)] {
            assert!((t975(df) - exact).abs() < 1e-5, "df {df}: {} vs {exact}", t975(df));
        }
        assert!((t975(1_000_000) - 1.959_964).abs() < 1e-5);
    }

    #[test]
    fn an_interval_is_the_mean_plus_minus_t_times_the_standard_error() {
        // Five seeds of the digits dml row in docs/results.md, as printed (rounded):
        // 93.20 [92.40, 94.00] (92.41 from the unrounded values).
        let i = Interval::of(&[93.47, 93.89, 92.29, 93.54, 92.81]);
        assert_eq!(i.n, 5);
        assert!((i.mean - 93.2).abs() < 1e-9);
        assert_eq!(i.show(1.0, false), "93.20 [92.40, 94.00]");
        assert!(!i.covers_zero());
        let one = Interval::of(&[0.5]);
        assert_eq!((one.low, one.high, one.sd), (None, None, 0.0));
        assert!(one.covers_zero(), "one seed cannot tell an effect from noise");
        assert_eq!(one.show(100.0, false), "50.00");
    }

    #[test]
    fn a_paired_difference_removes_what_the_seed_explains() {
        // Seeds that move both algorithms alike: apart, the intervals overlap widely;
        // paired, the difference is clearly positive.
        let a = [0.60, 0.70, 0.80, 0.65, 0.75];
        let b = [0.62, 0.71, 0.83, 0.66, 0.77];
        let (ia, ib) = (Interval::of(&a), Interval::of(&b));
        assert!(ib.low.unwrap() < ia.high.unwrap());
        let d = Interval::paired(&a, &b);
        assert!((d.mean - 0.018).abs() < 1e-12);
        assert!(!d.covers_zero());
        assert_eq!(d.show(100.0, true), "+1.80 [+0.76, +2.84]");
        let noise = Interval::paired(&[0.5, 0.6, 0.7], &[0.52, 0.58, 0.71]);
        assert!(noise.covers_zero());
    }
}
