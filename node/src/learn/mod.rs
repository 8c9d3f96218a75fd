//! Learning on one device: the losses of mutual learning ([`losses`]) and the
//! [`Learner`] that owns a model and its optimiser ([`trainer`]).
//!
//! A round uses it in this order: [`Learner::logits_vec`] on the public batch (sent to
//! the neighbours), [`soft_targets`] over what the neighbours sent, then E calls of
//! [`Learner::train_step`], then [`Learner::evaluate`].

pub mod adam;
pub mod losses;
pub mod trainer;

use candle_core::{Device, Tensor};

pub use losses::{kl_to_target, soft_targets, weighted_kl_to_target};
pub use trainer::{Evaluation, Learner, LearnerConfig, StepLosses};

use crate::model::{CLASSES, INPUT_DIM};
use crate::{Error, Result};

/// How peers' predictions are combined into one target distribution per row (the
/// proto's enum, which carries the names `mean`, `median`, `trimmed-mean`).
pub use wdml_proto::Aggregate;

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
}
