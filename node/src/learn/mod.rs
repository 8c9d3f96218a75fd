//! Learning on one device: the losses of mutual learning ([`losses`]) and the
//! [`Learner`] that owns a model and its optimiser ([`trainer`]).
//!
//! A round uses it in this order: [`Learn::logits_vec`] on the public batch (sent to
//! the neighbours), [`soft_targets`] over what the neighbours sent, then E calls of
//! [`Learn::train_step_weighted`], then [`Learn::evaluate`]. [`Learn`] is the seam: a
//! Candle [`Learner`] is one model behind it, a device whose model lives in its own
//! program (the Python package's) is another.

pub mod adam;
pub mod losses;
pub mod trainer;
pub mod trust;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use candle_core::{Device, Tensor};

pub use losses::{kl_to_target, soft_targets, trust_weighted_targets, weighted_kl_to_target};
pub use trainer::{Evaluation, Learner, LearnerConfig, PublicLoss, StepLosses};

use crate::{Error, Result};

/// How peers' predictions are combined into one target distribution per row (the
/// proto's enum, which carries the names `mean`, `median`, `trimmed-mean`,
/// `trust-weighted`).
pub use wdml_proto::Aggregate;

/// What a node needs of its model, whatever computes it. Samples are `[rows, values]`
/// f32 tensors of normalised values (each row a sample of the run's shape), labels
/// `[rows]` u32, logits row-major `rows × classes`.
pub trait Learn: Send {
    /// Trainable parameters (what the node declares when it joins).
    fn parameter_count(&self) -> usize;

    /// The FLOPs of the training and inference done so far, as a counter whoever times
    /// the work can read while the model is busy (it stays 0 for a model whose FLOPs
    /// are not known from its shapes).
    fn flops(&self) -> Arc<AtomicU64>;

    /// Inference logits, `rows × classes` values, row-major: the payload of a prediction
    /// message.
    fn logits_vec(&self, images: &Tensor) -> Result<Vec<f32>>;

    /// One optimiser step on `CE(private batch) + λ·T²·KL(target ‖ softmax(f(public)/T))`,
    /// each public row's KL weighted by `weights` (`None`: all 1); `distill` = `None` is
    /// a step on CE alone. See [`Learner::train_step`].
    fn train_step_weighted(
        &mut self,
        images: &Tensor,
        labels: &Tensor,
        distill: Option<(&Tensor, &Tensor)>,
        weights: Option<&Tensor>,
    ) -> Result<StepLosses>;

    /// Accuracy and mean cross-entropy on a labelled set, `batch` rows at a time.
    fn evaluate(&self, images: &Tensor, labels: &Tensor, batch: usize) -> Result<Evaluation>;

    /// One optimiser step on the public batch alone toward `target` (FedMD's digest,
    /// DS-FL's distillation); see [`Learner::public_step`]. A model in the device's own
    /// program has no such step (its program trains only through `train_step`).
    fn public_step(&mut self, _public: &Tensor, _target: &Tensor, loss: PublicLoss) -> Result<f32> {
        Err(invalid(format!(
            "this model's own program has no step on the public batch alone ({loss:?}): fedmd and dsfl \
             need a model wdml node builds"
        )))
    }

    /// One DP-SGD step ([`Learner::private_step`]): `private` is the step's Poisson
    /// batch (`None` when it took no row). A model in the device's own program has no
    /// per-example gradients wdml can clip.
    fn private_step(
        &mut self,
        _private: Option<(&Tensor, &Tensor)>,
        _distill: Option<(&Tensor, &Tensor)>,
        _weights: Option<&Tensor>,
        _dp: &crate::privacy::dpsgd::DpSgd,
        _rng: &mut dyn rand::RngCore,
    ) -> Result<StepLosses> {
        Err(Error::config(
            "privacy.noise_multiplier",
            "DP-SGD clips each example's gradient, which needs a model wdml node builds; \
             this device's model lives in its own program",
        ))
    }

    /// The Candle learner, when this is one: what needs its parameters (checkpoints,
    /// gossip averaging) works only with it.
    fn candle(&self) -> Option<&Learner> {
        None
    }

    /// [`Learn::candle`], mutable.
    fn candle_mut(&mut self) -> Option<&mut Learner> {
        None
    }
}

impl Learn for Learner {
    fn parameter_count(&self) -> usize {
        Learner::parameter_count(self)
    }

    fn flops(&self) -> Arc<AtomicU64> {
        Learner::flops(self)
    }

    fn logits_vec(&self, images: &Tensor) -> Result<Vec<f32>> {
        Learner::logits_vec(self, images)
    }

    fn train_step_weighted(
        &mut self,
        images: &Tensor,
        labels: &Tensor,
        distill: Option<(&Tensor, &Tensor)>,
        weights: Option<&Tensor>,
    ) -> Result<StepLosses> {
        Learner::train_step_weighted(self, images, labels, distill, weights)
    }

    fn evaluate(&self, images: &Tensor, labels: &Tensor, batch: usize) -> Result<Evaluation> {
        Learner::evaluate(self, images, labels, batch)
    }

    fn private_step(
        &mut self,
        private: Option<(&Tensor, &Tensor)>,
        distill: Option<(&Tensor, &Tensor)>,
        weights: Option<&Tensor>,
        dp: &crate::privacy::dpsgd::DpSgd,
        rng: &mut dyn rand::RngCore,
    ) -> Result<StepLosses> {
        Learner::private_step(self, private, distill, weights, dp, rng)
    }

    fn public_step(&mut self, public: &Tensor, target: &Tensor, loss: PublicLoss) -> Result<f32> {
        Learner::public_step(self, public, target, loss)
    }

    fn candle(&self) -> Option<&Learner> {
        Some(self)
    }

    fn candle_mut(&mut self) -> Option<&mut Learner> {
        Some(self)
    }
}

/// Accuracy and mean cross-entropy of `logits` (`rows × classes`, row-major) against
/// `labels`: the evaluation of a model that only gives its logits. The cross-entropy
/// is a log-sum-exp per row in f64; a tie counts for the lowest class.
pub fn evaluation_of(logits: &[f32], labels: &[u32], classes: usize) -> Result<Evaluation> {
    if labels.is_empty() || classes == 0 || logits.len() != labels.len() * classes {
        return Err(invalid(format!(
            "{} logits for {} labels: expected {classes} a row",
            logits.len(),
            labels.len()
        )));
    }
    let (mut correct, mut ce) = (0u64, 0f64);
    for (row, &label) in logits.chunks(classes).zip(labels) {
        let label = label as usize;
        if label >= classes {
            return Err(invalid(format!("label {label} is not a class")));
        }
        let best = row
            .iter()
            .enumerate()
            .fold(0, |best, (i, &v)| if v > row[best] { i } else { best });
        correct += u64::from(best == label);
        let max = f64::from(row[best]);
        let sum: f64 = row.iter().map(|&v| (f64::from(v) - max).exp()).sum();
        ce += max + sum.ln() - f64::from(row[label]);
    }
    let rows = labels.len() as f64;
    Ok(Evaluation {
        accuracy: (correct as f64 / rows) as f32,
        loss: (ce / rows) as f32,
    })
}

/// An error about a tensor or slice handed to this module with the wrong shape or
/// contents. The crate's error enum has no variant for bad call arguments, so these
/// travel as Candle messages (`Error::Candle`), like Candle's own shape errors.
pub(crate) fn invalid(msg: impl Into<String>) -> Error {
    Error::Candle(candle_core::Error::Msg(msg.into()))
}

/// Wraps row-major samples (`rows × values`, as the data module gathers them) in a
/// `[rows, values]` tensor, without copying.
pub fn images_tensor(samples: Vec<f32>, values: usize) -> Result<Tensor> {
    if values == 0 || !samples.len().is_multiple_of(values) {
        return Err(invalid(format!(
            "{} values is not a whole number of {values}-value samples",
            samples.len()
        )));
    }
    let rows = samples.len() / values;
    Ok(Tensor::from_vec(samples, (rows, values), &Device::Cpu)?)
}

/// Wraps class labels in a `[rows]` `u32` tensor, checking they are below `classes`.
pub fn labels_tensor(labels: Vec<u32>, classes: usize) -> Result<Tensor> {
    if let Some(bad) = labels.iter().find(|&&l| l as usize >= classes) {
        return Err(invalid(format!(
            "label {bad} is not a class (classes 0 to {})",
            classes.saturating_sub(1)
        )));
    }
    let rows = labels.len();
    Ok(Tensor::from_vec(labels, rows, &Device::Cpu)?)
}

/// Wraps row-major probabilities (`rows × classes`, e.g. from [`soft_targets`]) in a
/// `[rows, classes]` tensor, without copying.
pub fn targets_tensor(probabilities: Vec<f32>, classes: usize) -> Result<Tensor> {
    if classes == 0 || !probabilities.len().is_multiple_of(classes) {
        return Err(invalid(format!(
            "{} probabilities is not a whole number of {classes}-class rows",
            probabilities.len()
        )));
    }
    let rows = probabilities.len() / classes;
    Ok(Tensor::from_vec(probabilities, (rows, classes), &Device::Cpu)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_helpers_check_shapes() {
        assert_eq!(images_tensor(vec![0.0; 2 * 784], 784).unwrap().dims(), &[2, 784]);
        assert!(images_tensor(vec![0.0; 784 + 1], 784).is_err());
        assert_eq!(labels_tensor(vec![0, 9], 10).unwrap().dims(), &[2]);
        assert!(labels_tensor(vec![10], 10).is_err());
        assert!(labels_tensor(vec![99], 100).is_ok());
        assert_eq!(targets_tensor(vec![0.1; 30], 10).unwrap().dims(), &[3, 10]);
        assert_eq!(targets_tensor(vec![0.5; 30], 2).unwrap().dims(), &[15, 2]);
        assert!(targets_tensor(vec![0.1; 11], 10).is_err());
    }

    #[test]
    fn logits_alone_evaluate_as_the_candle_learner_does() {
        use crate::model::ModelSpec;
        let learner = Learner::new(
            &ModelSpec::Mlp { hidden: vec![8] },
            &wdml_proto::data::fashion_mnist(),
            LearnerConfig {
                learning_rate: 1e-3,
                temperature: 1.0,
                kl_weight: 1.0,
            },
            3,
        )
        .unwrap();
        let pixels: Vec<f32> = (0..20 * 784).map(|i| ((i * 7919) % 255) as f32 / 255.0).collect();
        let images = images_tensor(pixels, 784).unwrap();
        let labels: Vec<u32> = (0..20).map(|i| i % 10).collect();
        let theirs = learner
            .evaluate(&images, &labels_tensor(labels.clone(), 10).unwrap(), 7)
            .unwrap();
        let ours = evaluation_of(&learner.logits_vec(&images).unwrap(), &labels, 10).unwrap();
        assert_eq!(ours.accuracy, theirs.accuracy);
        assert!((ours.loss - theirs.loss).abs() < 1e-5, "{ours:?} vs {theirs:?}");
        assert!(
            evaluation_of(&[0.0; 10], &[10], 10).is_err(),
            "a label beyond the classes"
        );
        assert!(evaluation_of(&[0.0; 9], &[1], 10).is_err(), "a short row");
        assert_eq!(evaluation_of(&[0.0, 1.0, 2.0, 1.0], &[1, 0], 2).unwrap().accuracy, 1.0);
    }
}
