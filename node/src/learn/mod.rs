//! Learning on one device: the losses of mutual learning ([`losses`]) and the
//! [`Learner`] that owns a model and its optimiser ([`trainer`]).
//!
//! A round uses it in this order: [`Learner::logits_vec`] on the public batch (sent to
//! the neighbours), [`soft_targets`] over what the neighbours sent, then E calls of
//! [`Learner::train_step`], then [`Learner::evaluate`].

pub mod adam;
pub mod losses;
pub mod trainer;

use std::fmt;
use std::str::FromStr;

use candle_core::{Device, Tensor};

pub use losses::{kl_to_target, soft_targets};
pub use trainer::{Evaluation, Learner, LearnerConfig, StepLosses};

use crate::model::{CLASSES, INPUT_DIM};
use crate::{Error, Result};

/// How peers' predictions are combined into one target distribution per row.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Aggregate {
    /// The mean of the peers' softened probabilities (DML); the default.
    #[default]
    Mean,
    /// The per-entry median, renormalised per row: robust to a minority of bad peers.
    Median,
    /// The per-entry mean without the highest and lowest peer (when there are ≥ 3),
    /// renormalised per row.
    TrimmedMean,
}

impl Aggregate {
    /// Every aggregate, in the order they are documented.
    pub const ALL: [Aggregate; 3] = [Aggregate::Mean, Aggregate::Median, Aggregate::TrimmedMean];

    /// The name used in configs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Aggregate::Mean => "mean",
            Aggregate::Median => "median",
            Aggregate::TrimmedMean => "trimmed-mean",
        }
    }
}

impl fmt::Display for Aggregate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An aggregate name that is not one of `mean`, `median`, `trimmed-mean`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseAggregateError(String);

impl fmt::Display for ParseAggregateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown aggregate `{}`: expected `mean`, `median` or `trimmed-mean`",
            self.0
        )
    }
}

impl std::error::Error for ParseAggregateError {}

impl FromStr for Aggregate {
    type Err = ParseAggregateError;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Aggregate::ALL
            .into_iter()
            .find(|a| a.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| ParseAggregateError(s.to_string()))
    }
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
    fn aggregate_names_round_trip() {
        for a in Aggregate::ALL {
            assert_eq!(a.to_string().parse::<Aggregate>().unwrap(), a);
            let json = serde_json::to_string(&a).unwrap();
            assert_eq!(json, format!("\"{a}\""));
            assert_eq!(serde_json::from_str::<Aggregate>(&json).unwrap(), a);
        }
        assert_eq!("trimmed-mean".parse::<Aggregate>().unwrap(), Aggregate::TrimmedMean);
        let err = "trimmed".parse::<Aggregate>().unwrap_err().to_string();
        assert!(err.contains("`mean`, `median` or `trimmed-mean`"), "{err}");
    }

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
