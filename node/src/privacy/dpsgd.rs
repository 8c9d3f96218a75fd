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

/// The L2 norm of a gradient given as one tensor per parameter, in f64 (what the
/// tests check a clipped gradient against).
#[cfg(test)]
pub(crate) fn norm(gradient: &[Tensor]) -> Result<f64> {
    let mut squares = 0f64;
    for g in gradient {
        squares += f64::from(g.sqr()?.sum_all()?.to_scalar::<f32>()?);
    }
    Ok(squares.sqrt())
}

/// The sum of a step's clipped per-example gradients, kept as plain `f32` buffers, one
/// per parameter: each example's gradient is read in place, its norm taken and its
/// clipped values added in one pass, and dropped. (Through Candle's tensor ops, a
/// square, a reduction, a scale and an addition per parameter and example, all into
/// fresh tensors, the clipping and summing took 10 ms of a 16 ms MLP step at a batch of
/// 32; this takes about 2: `wdml bench --only dp`, docs/privacy.md.)
pub struct ClippedSum {
    sums: Vec<Vec<f32>>,
    shapes: Vec<candle_core::Shape>,
    max_norm: f64,
}

impl ClippedSum {
    /// An empty sum for parameters of these tensors' shapes, clipping at `max_norm`.
    pub fn new(parameters: &[Tensor], max_norm: f64) -> Self {
        ClippedSum {
            sums: parameters.iter().map(|p| vec![0.0; p.elem_count()]).collect(),
            shapes: parameters.iter().map(|p| p.shape().clone()).collect(),
            max_norm,
        }
    }

    /// Adds one example's gradient (one tensor per parameter, in the order of
    /// [`ClippedSum::new`]) scaled by `min(1, C / (‖g‖ + 1e-6))`, as Opacus clips;
    /// returns its norm before clipping.
    pub fn add(&mut self, gradient: &[Tensor]) -> Result<f64> {
        if gradient.len() != self.sums.len() {
            return Err(invalid(format!(
                "a gradient of {} parameters for a sum of {}",
                gradient.len(),
                self.sums.len()
            )));
        }
        let gradient = gradient
            .iter()
            .map(|g| g.contiguous())
            .collect::<candle_core::Result<Vec<_>>>()?;
        let guards: Vec<_> = gradient.iter().map(|g| g.storage_and_layout()).collect();
        let mut values = Vec::with_capacity(guards.len());
        for ((storage, layout), sum) in guards.iter().zip(&self.sums) {
            let g = crate::model::ops::tensor_f32(storage, layout, "a per-example gradient")?;
            if g.len() != sum.len() {
                return Err(invalid(format!("a gradient of {} values for {}", g.len(), sum.len())));
            }
            values.push(g);
        }
        let norm = values.iter().map(|g| squares(g)).sum::<f64>().sqrt();
        if !norm.is_finite() {
            return Err(invalid(format!(
                "a per-example gradient has a non-finite norm ({norm})"
            )));
        }
        let factor = clip_factor(norm, self.max_norm) as f32;
        for (sum, g) in self.sums.iter_mut().zip(&values) {
            for (s, &v) in sum.iter_mut().zip(g.iter()) {
                *s += factor * v;
            }
        }
        Ok(norm)
    }

    /// The privatised gradient of the step: N(0, (σ·C)²) added to every coordinate of
    /// the sum, divided by the expected batch; one tensor per parameter.
    pub fn privatise<R: Rng + ?Sized>(self, dp: &DpSgd, rng: &mut R) -> Result<Vec<Tensor>> {
        let normal =
            Normal::new(0.0, dp.noise_multiplier * dp.max_grad_norm).map_err(|e| invalid(format!("DP noise: {e}")))?;
        let scale = (1.0 / dp.expected_batch) as f32;
        let mut out = Vec::with_capacity(self.sums.len());
        for (mut sum, shape) in self.sums.into_iter().zip(self.shapes) {
            for s in sum.iter_mut() {
                *s = (*s + normal.sample(rng) as f32) * scale;
            }
            out.push(Tensor::from_vec(sum, shape, &candle_core::Device::Cpu)?);
        }
        Ok(out)
    }
}

/// Opacus's clipping factor for a gradient of norm `norm`.
fn clip_factor(norm: f64, max_norm: f64) -> f64 {
    (max_norm / (norm + 1e-6)).min(1.0)
}

/// Σ v², in sixteen `f32` lanes the compiler vectorises, totalled in `f64`.
fn squares(values: &[f32]) -> f64 {
    let mut lanes = [0f32; 16];
    let chunks = values.chunks_exact(16);
    let tail: f64 = chunks.remainder().iter().map(|&v| f64::from(v * v)).sum();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += v * v;
        }
    }
    lanes.iter().map(|&l| f64::from(l)).sum::<f64>() + tail
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
    fn the_noise_has_the_promised_spread_and_the_sum_is_divided() {
        let dp = DpSgd::new(2.0, 0.5, 10, 100).unwrap();
        assert_eq!((dp.sample_rate, dp.expected_batch), (0.1, 10.0));
        let mut sum = ClippedSum::new(
            &[Tensor::zeros(100_000, candle_core::DType::F32, &Device::Cpu).unwrap()],
            1e9,
        );
        // Ten examples whose gradient is 1 everywhere (not clipped at this C).
        let ones = [Tensor::ones(100_000, candle_core::DType::F32, &Device::Cpu).unwrap()];
        for _ in 0..10 {
            sum.add(&ones).unwrap();
        }
        let noisy = sum
            .privatise(&dp, &mut rand_chacha::ChaCha20Rng::seed_from_u64(1))
            .unwrap();
        let v = noisy[0].to_vec1::<f32>().unwrap();
        let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|&x| (f64::from(x) - mean).powi(2)).sum::<f64>() / v.len() as f64;
        // (10 + N(0, 1)) / 10: mean 1, standard deviation σ·C / 10 = 0.1.
        assert!((mean - 1.0).abs() < 0.002, "{mean}");
        assert!((var.sqrt() - 0.1).abs() < 0.002, "{}", var.sqrt());
    }

    /// The sum clips each example as [`clip`] does, on every parameter together: each
    /// added gradient contributes a norm of at most C, and a small one is added whole.
    #[test]
    fn the_sum_clips_each_example_across_all_its_parameters() {
        let zeros = [t(&[0.0, 0.0]), t(&[0.0])];
        let mut sum = ClippedSum::new(&zeros, 1.0);
        assert_eq!(sum.add(&[t(&[3.0, 0.0]), t(&[4.0])]).unwrap(), 5.0);
        assert!((sum.add(&[t(&[0.1, 0.2]), t(&[0.2])]).unwrap() - 0.3).abs() < 1e-6);
        let dp = DpSgd {
            noise_multiplier: 0.0,
            max_grad_norm: 1.0,
            sample_rate: 1.0,
            expected_batch: 1.0,
        };
        let out = sum
            .privatise(&dp, &mut rand_chacha::ChaCha20Rng::seed_from_u64(1))
            .unwrap();
        let first = out[0].to_vec1::<f32>().unwrap();
        let c = (1.0 / (5.0 + 1e-6)) as f32;
        assert!((first[0] - (3.0 * c + 0.1)).abs() < 1e-6, "{first:?}");
        assert!((first[1] - 0.2).abs() < 1e-6, "{first:?}");
        assert!((out[1].to_vec1::<f32>().unwrap()[0] - (4.0 * c + 0.2)).abs() < 1e-6);
        assert!(sum_of_bad_shape_is_refused());
    }

    fn sum_of_bad_shape_is_refused() -> bool {
        let mut sum = ClippedSum::new(&[t(&[0.0, 0.0])], 1.0);
        sum.add(&[t(&[1.0])]).is_err()
            && sum.add(&[t(&[1.0, 1.0]), t(&[1.0])]).is_err()
            && sum.add(&[t(&[f32::NAN, 0.0])]).is_err()
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
