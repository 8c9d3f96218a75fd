//! What every loader produces, whatever the file format: samples of one shape with
//! their labels, as stored (before the split and before normalisation).
//!
//! A sample is `[C, H, W]` (an image, channels first, as PyTorch and the CIFAR files
//! store it) or `[D]` (a feature vector). Pixels stay bytes, as the files hold them (the
//! full CIFAR-10 training set is 150 MB as u8, 600 MB as f32); anything else is f32.

use std::fmt;
use std::path::Path;

use crate::{Error, Result};

/// The values of every sample, row-major, one sample after the other.
#[derive(Clone, Debug, PartialEq)]
pub enum Values {
    /// Pixels `0..=255`; normalisation divides by 255 first (as torchvision's ToTensor).
    U8(Vec<u8>),
    /// Any other numbers, finite.
    F32(Vec<f32>),
}

impl Values {
    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            Values::U8(v) => v.len(),
            Values::F32(v) => v.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Samples of one shape and their labels.
#[derive(Clone, PartialEq)]
pub struct Samples {
    /// One sample's shape: `[C, H, W]` or `[D]`.
    pub shape: Vec<usize>,
    /// `len() * shape.iter().product()` values.
    pub values: Values,
    /// One label per sample.
    pub labels: Vec<u8>,
}

impl Samples {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Values per sample.
    pub fn sample_len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Checks the invariants every loader must return (the shape's rank, the number of
    /// values, finite f32 values), naming `path` in the error.
    pub fn check(&self, path: &Path) -> Result<()> {
        let error = |reason: String| {
            Err(Error::Data {
                path: path.to_path_buf(),
                reason,
            })
        };
        if !matches!(self.shape.len(), 1 | 3) || self.shape.contains(&0) {
            return error(format!(
                "a sample of shape {:?}: expected [channels, height, width] or [features], none of them 0",
                self.shape
            ));
        }
        if self.values.len() != self.len() * self.sample_len() {
            return error(format!(
                "{} values for {} samples of shape {:?} (expected {})",
                self.values.len(),
                self.len(),
                self.shape,
                self.len() * self.sample_len()
            ));
        }
        if let Values::F32(values) = &self.values
            && let Some(at) = values.iter().position(|v| !v.is_finite())
        {
            return error(format!(
                "value {at} (sample {}) is {}: every value must be finite",
                at / self.sample_len(),
                values[at]
            ));
        }
        Ok(())
    }
}

// Summarised: the derived form would print every value.
impl fmt::Debug for Samples {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.values {
            Values::U8(_) => "u8",
            Values::F32(_) => "f32",
        };
        f.debug_struct("Samples")
            .field("len", &self.len())
            .field("shape", &self.shape)
            .field("values", &kind)
            .finish_non_exhaustive()
    }
}

/// What a loader read: a training set and, when the format has one, a test set; the
/// number of classes when the format states it (CIFAR-10: 10), else it follows from the
/// labels.
#[derive(Clone, Debug, PartialEq)]
pub struct Loaded {
    pub train: Samples,
    pub test: Option<Samples>,
    pub classes: Option<usize>,
}
