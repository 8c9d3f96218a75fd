//! The shape of a run's data ([`DataSpec`]): what every member's samples and models
//! must agree on, and the number of columns of every prediction message.

use std::fmt;

use crate::DataSpec;

/// The fewest classes a classification run has.
pub const MIN_CLASSES: u32 = 2;
/// The most classes: a label is one byte in every format WDML reads (IDX, CIFAR), and a
/// top-k entry names its class in one byte.
pub const MAX_CLASSES: u32 = 256;
/// The most values in one sample (e.g. 3 × 512 × 512): bounds a public batch's tensors
/// and anything a peer can make a node allocate from a shape.
pub const MAX_SAMPLE_VALUES: u64 = 1 << 20;

/// Fashion-MNIST's: 28×28 grey images, 10 classes (the embedded dataset).
pub fn fashion_mnist() -> DataSpec {
    DataSpec {
        shape: vec![1, 28, 28],
        classes: 10,
    }
}

impl DataSpec {
    /// Values per sample (the product of the shape).
    pub fn sample_len(&self) -> usize {
        self.shape.iter().map(|&d| d as usize).product()
    }

    /// `Some([c, h, w])` for images, `None` for feature vectors.
    pub fn image(&self) -> Option<[usize; 3]> {
        match self.shape[..] {
            [c, h, w] => Some([c as usize, h as usize, w as usize]),
            _ => None,
        }
    }

    /// `Ok` if this is a shape and a number of classes WDML can run, else why not.
    pub fn validate(&self) -> Result<(), String> {
        if !matches!(self.shape.len(), 1 | 3) {
            return Err(format!(
                "a sample of shape {:?}: expected [channels, height, width] or [features]",
                self.shape
            ));
        }
        if self.shape.contains(&0) {
            return Err(format!("a sample of shape {:?}: no dimension may be 0", self.shape));
        }
        let values: u64 = self.shape.iter().map(|&d| u64::from(d)).product();
        if values > MAX_SAMPLE_VALUES {
            return Err(format!(
                "a sample of shape {:?} has {values} values: at most {MAX_SAMPLE_VALUES}",
                self.shape
            ));
        }
        if !(MIN_CLASSES..=MAX_CLASSES).contains(&self.classes) {
            return Err(format!(
                "{} classes: between {MIN_CLASSES} and {MAX_CLASSES}",
                self.classes
            ));
        }
        Ok(())
    }

    /// `Ok` if a member's data (`theirs`) is this run's, else the refusal naming both.
    pub fn admits(&self, theirs: &DataSpec) -> Result<(), String> {
        if self == theirs {
            Ok(())
        } else {
            Err(format!("the run's data is {self}; this node's is {theirs}"))
        }
    }
}

impl crate::RunSettings {
    /// The run's classes: the columns of every prediction message (0 before the
    /// coordinator's configuration is validated, which requires the data).
    pub fn classes(&self) -> u32 {
        self.data.as_ref().map_or(0, |d| d.classes)
    }
}

/// `[1, 28, 28] × 10 classes`.
impl fmt::Display for DataSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} × {} classes", self.shape, self.classes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(shape: &[u32], classes: u32) -> DataSpec {
        DataSpec {
            shape: shape.to_vec(),
            classes,
        }
    }

    #[test]
    fn shapes_and_classes_are_bounded() {
        fashion_mnist().validate().unwrap();
        spec(&[30], 2).validate().unwrap();
        spec(&[3, 32, 32], 100).validate().unwrap();
        spec(&[3, 32, 32], 256).validate().unwrap();
        for (bad, says) in [
            (spec(&[28, 28], 10), "expected [channels, height, width] or [features]"),
            (spec(&[], 10), "expected [channels"),
            (spec(&[3, 0, 32], 10), "no dimension may be 0"),
            (spec(&[3, 1024, 1024], 10), "at most 1048576"),
            (spec(&[30], 1), "between 2 and 256"),
            (spec(&[30], 257), "between 2 and 256"),
        ] {
            let error = bad.validate().unwrap_err();
            assert!(error.contains(says), "{bad}: {error}");
        }
        assert_eq!(spec(&[3, 32, 32], 10).sample_len(), 3072);
        assert_eq!(spec(&[3, 32, 32], 10).image(), Some([3, 32, 32]));
        assert_eq!(spec(&[13], 3).image(), None);
    }

    #[test]
    fn a_member_must_bring_the_runs_data() {
        fashion_mnist().admits(&fashion_mnist()).unwrap();
        let error = fashion_mnist().admits(&spec(&[3, 32, 32], 10)).unwrap_err();
        assert_eq!(
            error,
            "the run's data is [1, 28, 28] × 10 classes; this node's is [3, 32, 32] × 10 classes"
        );
    }
}
