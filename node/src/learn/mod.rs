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
pub use trainer::{Evaluation, Learner, LearnerConfig, StepLosses};

use crate::model::{CLASSES, INPUT_DIM};
use crate::{Error, Result};

/// How peers' predictions are combined into one target distribution per row (the
/// proto's enum, which carries the names `mean`, `median`, `trimmed-mean`,
/// `trust-weighted`).
pub use wdml_proto::Aggregate;

/// What a node needs of its model, whatever computes it. Images are `[rows, 784]` f32
/// tensors of normalised pixels, labels `[rows]` u32, logits row-major `rows × 10`.
pub trait Learn: Send {
    /// Trainable parameters (what the node declares when it joins).
    fn parameter_count(&self) -> usize;

    /// The FLOPs of the training and inference done so far, as a counter whoever times
    /// the work can read while the model is busy (it stays 0 for a model whose FLOPs
    /// are not known from its shapes).
    fn flops(&self) -> Arc<AtomicU64>;

    /// Inference logits, `rows × 10` values, row-major: the payload of a prediction
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

    fn candle(&self) -> Option<&Learner> {
        Some(self)
    }

    fn candle_mut(&mut self) -> Option<&mut Learner> {
        Some(self)
    }
}

/// Accuracy and mean cross-entropy of `logits` (`rows × 10`, row-major) against
/// `labels`: the evaluation of a model that only gives its logits. The cross-entropy
/// is a log-sum-exp per row in f64; a tie counts for the lowest class.
pub fn evaluation_of(logits: &[f32], labels: &[u32]) -> Result<Evaluation> {
    if labels.is_empty() || logits.len() != labels.len() * CLASSES {
        return Err(invalid(format!(
            "{} logits for {} labels: expected {CLASSES} a row",
            logits.len(),
            labels.len()
        )));
    }
    let (mut correct, mut ce) = (0u64, 0f64);
    for (row, &label) in logits.chunks(CLASSES).zip(labels) {
        let label = label as usize;
        if label >= CLASSES {
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

/// Wraps row-major pixels (`rows × 784` values, as the data module gathers them) in an
/// `[rows, 784]` tensor, without copying.
pub fn images_tensor(pixels: Vec<f32>) -> Result<Tensor> {
    if !pixels.len().is_multiple_of(INPUT_DIM) {
        return Err(invalid(format!(
            "{} pixel values is not a whole number of {INPUT_DIM}-pixel images",
            pixels.len()
        )));
    }
    let rows = pixels.len() / INPUT_DIM;
    Ok(Tensor::from_vec(pixels, (rows, INPUT_DIM), &Device::Cpu)?)
}

/// Wraps class labels in a `[rows]` `u32` tensor, checking they are below 10.
pub fn labels_tensor(labels: Vec<u32>) -> Result<Tensor> {
    if let Some(bad) = labels.iter().find(|&&l| l as usize >= CLASSES) {
        return Err(invalid(format!(
            "label {bad} is not a class (classes 0 to {})",
            CLASSES - 1
        )));
    }
    let rows = labels.len();
    Ok(Tensor::from_vec(labels, rows, &Device::Cpu)?)
}

/// Wraps row-major probabilities (`rows × 10`, e.g. from [`soft_targets`]) in an
/// `[rows, 10]` tensor, without copying.
pub fn targets_tensor(probabilities: Vec<f32>) -> Result<Tensor> {
    if !probabilities.len().is_multiple_of(CLASSES) {
        return Err(invalid(format!(
            "{} probabilities is not a whole number of {CLASSES}-class rows",
            probabilities.len()
        )));
    }
    let rows = probabilities.len() / CLASSES;
    Ok(Tensor::from_vec(probabilities, (rows, CLASSES), &Device::Cpu)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_helpers_check_shapes() {
        assert_eq!(images_tensor(vec![0.0; 2 * INPUT_DIM]).unwrap().dims(), &[2, INPUT_DIM]);
        assert!(images_tensor(vec![0.0; INPUT_DIM + 1]).is_err());
        assert_eq!(labels_tensor(vec![0, 9]).unwrap().dims(), &[2]);
        assert!(labels_tensor(vec![10]).is_err());
        assert_eq!(targets_tensor(vec![0.1; 30]).unwrap().dims(), &[3, CLASSES]);
        assert!(targets_tensor(vec![0.1; 11]).is_err());
    }

    #[test]
    fn logits_alone_evaluate_as_the_candle_learner_does() {
        use crate::model::ModelSpec;
        let learner = Learner::new(
            &ModelSpec::Mlp { hidden: vec![8] },
            LearnerConfig {
                learning_rate: 1e-3,
                temperature: 1.0,
                kl_weight: 1.0,
            },
            3,
        )
        .unwrap();
        let pixels: Vec<f32> = (0..20 * INPUT_DIM).map(|i| ((i * 7919) % 255) as f32 / 255.0).collect();
        let images = images_tensor(pixels).unwrap();
        let labels: Vec<u32> = (0..20).map(|i| i % 10).collect();
        let theirs = learner
            .evaluate(&images, &labels_tensor(labels.clone()).unwrap(), 7)
            .unwrap();
        let ours = evaluation_of(&learner.logits_vec(&images).unwrap(), &labels).unwrap();
        assert_eq!(ours.accuracy, theirs.accuracy);
        assert!((ours.loss - theirs.loss).abs() < 1e-5, "{ours:?} vs {theirs:?}");
        assert!(evaluation_of(&[0.0; 10], &[10]).is_err(), "a label beyond the classes");
        assert!(evaluation_of(&[0.0; 9], &[1]).is_err(), "a short row");
    }
}
