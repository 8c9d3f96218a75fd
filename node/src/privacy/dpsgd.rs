//! DP-SGD (Abadi et al. 2016), as Opacus and TensorFlow Privacy run it: each step
//! samples the private data by Poisson sampling (every example in with probability
//! `q`), clips every example's gradient to an L2 norm of at most `C`, sums them, adds
//! Gaussian noise of standard deviation `σ·C` to every coordinate and divides by the
//! expected batch size `q·N`. The accountant ([`super::accountant`]) turns `(q, σ,
//! steps)` into the (ε, δ) a node has spent.
//!
//! Only the private cross-entropy needs this. dml's distillation term is computed on
//! the public batch, toward targets the neighbours sent, with the current parameters:
//! none of it reads a private example, so its gradient is added unclipped and
//! noise-free, and the model stays post-processing of the noisy private gradients.
//!
//! The per-example gradients come from one backward pass per example. The models'
//! layers are hand-written Candle ops whose backward passes return batch sums; per-
//! example gradients inside them (Opacus's hooks) would need a second backward in
//! every op. How much the loop costs against the plain step and against Opacus is
//! measured in docs/privacy.md.
//!
//! The noise and the sampling draw from the operating system's random source, never
//! from the run seed: every node knows the run seed, and a neighbour who could replay
//! the noise could subtract it, and one who knew which examples a step sampled would
//! void the amplification by subsampling the accountant counts on. A DP run is
//! therefore not bit-reproducible.

use candle_core::Tensor;
use rand::Rng;
use rand_distr::{Distribution, Normal};

use crate::learn::invalid;
use crate::{Error, Result};

/// A node's DP-SGD settings, in the units of one step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DpSgd {
    /// σ: the noise's standard deviation in units of the clipping norm.
    pub noise_multiplier: f64,
    /// C: the largest L2 norm an example's gradient keeps.
    pub max_grad_norm: f64,
    /// `q`: the probability each private example is in a step's batch.
    pub sample_rate: f64,
    /// The expected batch, `q·N`: what the noisy sum is divided by (a fixed divisor, as
    /// in Opacus: dividing by the realised batch size would reveal it).
    pub expected_batch: f64,
}

impl DpSgd {
    /// The settings for a shard of `examples` private examples and an expected batch of
    /// `batch` (so `q = batch / examples`, at most 1).
    pub fn new(noise_multiplier: f64, max_grad_norm: f64, batch: usize, examples: usize) -> Result<Self> {
        if !(noise_multiplier.is_finite() && noise_multiplier > 0.0) {
            return Err(Error::config(
                "privacy.noise_multiplier",
                format!("{noise_multiplier} must be a positive number (σ, e.g. 1.0)"),
            ));
        }
        if !(max_grad_norm.is_finite() && max_grad_norm > 0.0) {
            return Err(Error::config(
                "privacy.max_grad_norm",
                format!("{max_grad_norm} must be a positive number (C, e.g. 1.0)"),
            ));
        }
        if batch == 0 || examples == 0 {
            return Err(Error::config(
                "train.batch_size",
                format!("DP-SGD needs a batch and private examples (batch {batch}, {examples} examples)"),
            ));
        }
        let batch = batch.min(examples);
        Ok(DpSgd {
            noise_multiplier,
            max_grad_norm,
            sample_rate: batch as f64 / examples as f64,
            expected_batch: batch as f64,
        })
    }
}

/// The rows of a Poisson-sampled batch out of `examples`: each one independently with
/// probability `q` (possibly none).
pub fn poisson_batch<R: Rng + ?Sized>(examples: usize, q: f64, rng: &mut R) -> Vec<u32> {
    (0..examples as u32).filter(|_| rng.random::<f64>() < q).collect()
}

/// The L2 norm of a gradient given as one tensor per parameter, in f64.
pub fn norm(gradient: &[Tensor]) -> Result<f64> {
    let mut squares = 0f64;
    for g in gradient {
        squares += f64::from(g.sqr()?.sum_all()?.to_scalar::<f32>()?);
    }
    Ok(squares.sqrt())
}

/// Scales `gradient` (one tensor per parameter) so its L2 norm is at most
/// `max_norm`, as Opacus does (`min(1, C / (‖g‖ + 1e-6))`); returns the norm before.
pub fn clip(gradient: &mut [Tensor], max_norm: f64) -> Result<f64> {
    let before = norm(gradient)?;
    if !before.is_finite() {
        return Err(invalid(format!(
            "a per-example gradient has a non-finite norm ({before})"
        )));
    }
    let factor = (max_norm / (before + 1e-6)).min(1.0);
    if factor < 1.0 {
        for g in gradient.iter_mut() {
            *g = g.affine(factor, 0.0)?;
        }
    }
    Ok(before)
}

/// Adds N(0, (σ·C)²) to every coordinate of `sums` and divides by the expected batch:
/// the privatised gradient of the step.
pub fn privatise<R: Rng + ?Sized>(sums: &mut [Tensor], dp: &DpSgd, rng: &mut R) -> Result<()> {
    let std = dp.noise_multiplier * dp.max_grad_norm;
    let normal = Normal::new(0.0, std).map_err(|e| invalid(format!("DP noise: {e}")))?;
    for sum in sums.iter_mut() {
        let noise: Vec<f32> = (0..sum.elem_count()).map(|_| normal.sample(rng) as f32).collect();
        let noise = Tensor::from_vec(noise, sum.shape(), sum.device())?;
        *sum = ((&*sum + noise)? / dp.expected_batch)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use rand::SeedableRng;

    fn t(values: &[f32]) -> Tensor {
        Tensor::from_slice(values, values.len(), &Device::Cpu).unwrap()
    }

    #[test]
    fn clipping_bounds_the_norm_and_keeps_a_small_gradient() {
        let mut big = vec![t(&[3.0, 0.0]), t(&[0.0, 4.0])];
        assert_eq!(clip(&mut big, 1.0).unwrap(), 5.0);
        assert!((norm(&big).unwrap() - 1.0).abs() < 1e-5);
        assert_eq!(big[0].to_vec1::<f32>().unwrap()[0], 3.0 / (5.0 + 1e-6) as f32);
        let mut small = vec![t(&[0.3, 0.4])];
        clip(&mut small, 1.0).unwrap();
        assert_eq!(small[0].to_vec1::<f32>().unwrap(), [0.3, 0.4], "left as it is");
        assert!(clip(&mut [t(&[f32::NAN])], 1.0).is_err());
    }

    #[test]
    fn the_noise_has_the_promised_spread_and_the_sum_is_divided() {
        let dp = DpSgd::new(2.0, 0.5, 10, 100).unwrap();
        assert_eq!((dp.sample_rate, dp.expected_batch), (0.1, 10.0));
        let mut sums = vec![Tensor::full(10.0f32, 100_000, &Device::Cpu).unwrap()];
        privatise(&mut sums, &dp, &mut rand_chacha::ChaCha20Rng::seed_from_u64(1)).unwrap();
        let v = sums[0].to_vec1::<f32>().unwrap();
        let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|&x| (f64::from(x) - mean).powi(2)).sum::<f64>() / v.len() as f64;
        // (10 + N(0, 1)) / 10: mean 1, standard deviation σ·C / 10 = 0.1.
        assert!((mean - 1.0).abs() < 0.002, "{mean}");
        assert!((var.sqrt() - 0.1).abs() < 0.002, "{}", var.sqrt());
    }

    #[test]
    fn poisson_sampling_takes_each_example_with_the_rate() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
        let total: usize = (0..200).map(|_| poisson_batch(1000, 0.032, &mut rng).len()).sum();
        let mean = total as f64 / 200.0;
        assert!((mean - 32.0).abs() < 1.5, "{mean}");
        assert!(poisson_batch(10, 0.0, &mut rng).is_empty());
        assert_eq!(poisson_batch(10, 1.0, &mut rng).len(), 10);
    }

    #[test]
    fn settings_are_refused_naming_the_field() {
        let e = DpSgd::new(0.0, 1.0, 32, 100).unwrap_err().to_string();
        assert!(e.contains("privacy.noise_multiplier"), "{e}");
        let e = DpSgd::new(1.0, f64::NAN, 32, 100).unwrap_err().to_string();
        assert!(e.contains("privacy.max_grad_norm"), "{e}");
        assert_eq!(DpSgd::new(1.0, 1.0, 500, 100).unwrap().sample_rate, 1.0);
    }
}
