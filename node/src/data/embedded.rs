//! The dataset compiled into the binary, so a fresh clone runs with no download.
//!
//! It is a class-balanced, seeded subset of Fashion-MNIST (© Zalando SE, MIT licence):
//! 600 training images per class from the 60k training set and 100 test images per class
//! from the 10k test set, stored as gzipped IDX files under `data/fashion-mnist-subset/`
//! at the repository root. `data/README.md` says how to regenerate them with the
//! `make_embedded_subset` example, which calls [`balanced_subset`] with [`SUBSET_SEED`].

use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;

use super::{Dataset, Format, Samples, idx};
use crate::{Error, Result};

/// The embedded dataset's name.
pub const NAME: &str = "fashion-mnist-subset";
/// Training images per class in the embedded subset.
pub const TRAIN_PER_CLASS: usize = 600;
/// Test images per class in the embedded subset.
pub const TEST_PER_CLASS: usize = 100;
/// Fashion-MNIST's classes.
pub const CLASSES: usize = 10;
/// The seed the embedded subset was drawn with.
pub const SUBSET_SEED: u64 = 20_240_601;

/// Where the embedded files live, relative to the repository root.
pub const DIR: &str = "data/fashion-mnist-subset";

// The files are those `Dataset::load_dir` reads, under the same names.
static TRAIN_IMAGES: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../data/fashion-mnist-subset/train-images-idx3-ubyte.gz"
));
static TRAIN_LABELS: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../data/fashion-mnist-subset/train-labels-idx1-ubyte.gz"
));
static TEST_IMAGES: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../data/fashion-mnist-subset/t10k-images-idx3-ubyte.gz"
));
static TEST_LABELS: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../data/fashion-mnist-subset/t10k-labels-idx1-ubyte.gz"
));

/// The embedded files (train images, train labels, test images, test labels), each
/// with the path errors name it by: as it sits in the repository, prefixed `embedded:`.
pub(super) fn files() -> [(PathBuf, &'static [u8]); 4] {
    [
        (source("train-images-idx3-ubyte.gz"), TRAIN_IMAGES),
        (source("train-labels-idx1-ubyte.gz"), TRAIN_LABELS),
        (source("t10k-images-idx3-ubyte.gz"), TEST_IMAGES),
        (source("t10k-labels-idx1-ubyte.gz"), TEST_LABELS),
    ]
}

fn source(file: &str) -> PathBuf {
    Path::new("embedded:").join(DIR).join(file)
}

/// Decodes the embedded subset.
pub fn load() -> Result<Dataset> {
    let train = idx::parse_set(
        TRAIN_IMAGES,
        &source("train-images-idx3-ubyte.gz"),
        TRAIN_LABELS,
        &source("train-labels-idx1-ubyte.gz"),
    )?;
    let test = idx::parse_set(
        TEST_IMAGES,
        &source("t10k-images-idx3-ubyte.gz"),
        TEST_LABELS,
        &source("t10k-labels-idx1-ubyte.gz"),
    )?;
    Ok(Dataset {
        name: NAME.to_string(),
        format: Format::Idx,
        train,
        test,
        classes: CLASSES,
    })
}

/// Draws `per_class` images of every class `0..classes` from `set`, then shuffles them.
///
/// For each class, in order, its indices are shuffled and the first `per_class` taken;
/// the union is shuffled again so classes are interleaved. Reproducible for a given
/// `seed` and a given build (the `rand` version pinned in `Cargo.lock`).
pub fn balanced_subset(set: &Samples, classes: usize, per_class: usize, seed: u64) -> Result<Samples> {
    let mut rng = crate::seed::rng(seed);
    let mut by_class = vec![Vec::new(); classes];
    for (index, &label) in set.labels.iter().enumerate() {
        if let Some(members) = by_class.get_mut(usize::from(label)) {
            members.push(index);
        }
    }
    let mut chosen = Vec::with_capacity(classes * per_class);
    for (class, members) in by_class.iter_mut().enumerate() {
        if members.len() < per_class {
            return Err(Error::config(
                "per_class",
                format!(
                    "class {class} has {} images, fewer than the {per_class} asked for",
                    members.len()
                ),
            ));
        }
        members.shuffle(&mut rng);
        chosen.extend_from_slice(&members[..per_class]);
    }
    chosen.shuffle(&mut rng);
    Ok(set.select(&chosen))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class_counts(set: &Samples) -> Vec<usize> {
        let mut counts = vec![0; CLASSES];
        for &label in &set.labels {
            counts[usize::from(label)] += 1;
        }
        counts
    }

    #[test]
    fn embedded_subset_loads_balanced() {
        let dataset = Dataset::embedded().unwrap();
        assert_eq!(dataset.name, NAME);
        assert_eq!(dataset.train.len(), CLASSES * TRAIN_PER_CLASS);
        assert_eq!(dataset.test.len(), CLASSES * TEST_PER_CLASS);
        for set in [&dataset.train, &dataset.test] {
            assert_eq!(set.shape, [1, 28, 28]);
            assert_eq!(set.values.len(), set.len() * 784);
        }
        assert_eq!(class_counts(&dataset.train), vec![TRAIN_PER_CLASS; CLASSES]);
        assert_eq!(class_counts(&dataset.test), vec![TEST_PER_CLASS; CLASSES]);
        // Shuffled: the first 50 labels are not one class.
        let first = dataset.train.labels[0];
        assert!(dataset.train.labels[..50].iter().any(|&l| l != first));
    }

    #[test]
    fn balanced_subset_is_seeded_and_balanced() {
        let dataset = Dataset::embedded().unwrap();
        let a = balanced_subset(&dataset.train, CLASSES, 7, 1).unwrap();
        let b = balanced_subset(&dataset.train, CLASSES, 7, 1).unwrap();
        let c = balanced_subset(&dataset.train, CLASSES, 7, 2).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(class_counts(&a), vec![7; CLASSES]);
        let err = balanced_subset(&dataset.test, CLASSES, 101, 1).unwrap_err();
        assert!(err.to_string().contains("fewer than the 101"), "{err}");
    }

    /// The shipped files are exactly what the generator makes from the full dataset.
    /// Skipped when the full dataset is not installed.
    #[test]
    fn embedded_subset_matches_the_full_dataset() {
        let full_dir = Path::new("/usr/share/datasets/fashion-mnist");
        if !full_dir.is_dir() {
            eprintln!("skipped: {} not installed", full_dir.display());
            return;
        }
        let full = Dataset::load(&crate::data::Location::at(Some(full_dir))).unwrap();
        assert_eq!((full.train.len(), full.test.len()), (60_000, 10_000));
        let embedded = Dataset::embedded().unwrap();
        assert_eq!(
            balanced_subset(&full.train, CLASSES, TRAIN_PER_CLASS, SUBSET_SEED).unwrap(),
            embedded.train
        );
        assert_eq!(
            balanced_subset(&full.test, CLASSES, TEST_PER_CLASS, SUBSET_SEED).unwrap(),
            embedded.test
        );
    }
}
