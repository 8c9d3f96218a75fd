//! The data a node learns from: loading a dataset and splitting it.
//!
//! A [`Dataset`] is either the subset of Fashion-MNIST compiled into the binary
//! ([`Dataset::embedded`], the default, so nothing needs downloading) or files of one of
//! the formats below ([`Dataset::load`]), told apart by their names:
//! - IDX, the MNIST family's (`train-images-idx3-ubyte` … in a directory, each raw or
//!   gzipped), e.g. the full Fashion-MNIST that Debian's `dataset-fashion-mnist` installs
//!   at `/usr/share/datasets/fashion-mnist`; samples of any rank ([`idx`]);
//! - CIFAR-10 and CIFAR-100 binary batches ([`cifar`]);
//! - NumPy `.npz` / `.npy` arrays in the Keras convention ([`npy`]);
//! - CSV tables with a label column ([`csv`]).
//!
//! Every sample is `[C, H, W]` (an image, channels first) or `[D]` (a feature vector),
//! with a label below the dataset's classes; the shape and the classes are the run's
//! [`DataSpec`], which every member must share. A format without a test set has one
//! held out ([`hold_out`]). [`split`] then divides the training set into the nodes'
//! private shards and the public pool, and picks the test samples; every node computes
//! the same split from the shared seed, so no data or index list is ever sent.

pub mod bounds;
pub mod cifar;
pub mod csv;
pub mod embedded;
pub mod idx;
pub mod npy;
pub mod partition;
pub mod raw;

use std::path::{Path, PathBuf};

pub use partition::{NodeStats, Partition, Split, SplitConfig, SplitStats, check_public_overlap, overlap_rows, split};
pub use raw::{Loaded, Samples, Values};
pub use wdml_proto::DataSpec;

use crate::{Error, Result};

/// Mean of Fashion-MNIST training pixels scaled to `[0, 1]`.
pub const MEAN: f32 = 0.2860;
/// Standard deviation of Fashion-MNIST training pixels scaled to `[0, 1]`.
pub const STD: f32 = 0.3530;

/// Where a dataset comes from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Location {
    /// A file or directory of one of the formats; `None`: the embedded dataset.
    pub path: Option<PathBuf>,
    /// Which labels, where a format has a choice (a CSV file's label column).
    pub labels: Option<String>,
}

impl Location {
    /// The dataset at `path` (`None`: the embedded one), default labels.
    pub fn at(path: Option<&Path>) -> Location {
        Location {
            path: path.map(Path::to_path_buf),
            labels: None,
        }
    }
}

/// Per-channel normalisation, `(x - mean[c]) / std[c]`, where `x` is a pixel scaled to
/// `[0, 1]` (u8 values are divided by 255 first, as torchvision's `ToTensor` does) or
/// the value as stored (f32). A channel is an image's colour plane, or one feature of
/// a feature vector (as scikit-learn's `StandardScaler`).
#[derive(Clone, Debug, PartialEq)]
pub struct Normalisation {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Normalisation {
    /// Fashion-MNIST's: every figure in the docs was measured with it.
    pub fn fashion_mnist() -> Normalisation {
        Normalisation {
            mean: vec![MEAN],
            std: vec![STD],
        }
    }

    /// Computed from `set`: each channel's mean and (population) standard deviation,
    /// in two passes accumulated in f64; a constant channel (a deviation below f32's
    /// resolution of its mean) gets 1: it only shifts to 0.
    pub fn of(set: &Samples) -> Normalisation {
        let (channels, plane) = channels(&set.shape);
        let value = |i: usize| -> f64 {
            match &set.values {
                Values::U8(v) => f64::from(v[i]) / 255.0,
                Values::F32(v) => f64::from(v[i]),
            }
        };
        let n = (set.len() * plane).max(1) as f64;
        let channel = |i: usize| (i / plane) % channels;
        let mut sum = vec![0f64; channels];
        (0..set.values.len()).for_each(|i| sum[channel(i)] += value(i));
        let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
        let mut squares = vec![0f64; channels];
        (0..set.values.len()).for_each(|i| squares[channel(i)] += (value(i) - mean[channel(i)]).powi(2));
        let std = squares
            .iter()
            .zip(&mean)
            .map(|(q, m)| {
                let sd = (q / n).sqrt();
                if sd > 1e-6 * m.abs().max(1e-6) { sd as f32 } else { 1.0 }
            })
            .collect();
        Normalisation {
            mean: mean.into_iter().map(|m| m as f32).collect(),
            std,
        }
    }

    /// `Ok` if this normalises samples of `shape` (one mean and one positive, finite
    /// standard deviation per channel), else why not.
    pub fn check(&self, shape: &[usize]) -> std::result::Result<(), String> {
        let (channels, _) = channels(shape);
        if self.mean.len() != channels || self.std.len() != channels {
            return Err(format!(
                "{} means and {} standard deviations for samples of shape {shape:?}: one per channel ({channels})",
                self.mean.len(),
                self.std.len()
            ));
        }
        if let Some(bad) = self.mean.iter().find(|m| !m.is_finite()) {
            return Err(format!("mean {bad}: must be finite"));
        }
        if let Some(bad) = self.std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(format!("standard deviation {bad}: must be positive and finite"));
        }
        Ok(())
    }
}

/// `(channels, values per channel)` of a sample: an image's planes, or one channel per
/// feature.
fn channels(shape: &[usize]) -> (usize, usize) {
    match shape {
        [c, h, w] => (*c, h * w),
        [d] => (*d, 1),
        _ => (1, shape.iter().product()),
    }
}

impl Samples {
    /// The values of the rows `indices` normalised by `norm`, row-major, and their labels
    /// as u32.
    ///
    /// # Panics
    /// If an index is `>= len()`, like slice indexing: indices come from [`split`], so an
    /// out-of-range one is a bug, not bad input; and if `norm` does not fit the shape
    /// ([`Normalisation::check`] is done where it is given).
    pub fn gather(&self, indices: &[usize], norm: &Normalisation) -> (Vec<f32>, Vec<u32>) {
        let len = self.sample_len();
        let (channels, plane) = channels(&self.shape);
        let mut xs = Vec::with_capacity(indices.len() * len);
        let ys = indices.iter().map(|&i| u32::from(self.labels[i])).collect();
        match &self.values {
            Values::U8(values) => {
                // 256 possible values: normalise each once per channel.
                let tables: Vec<Vec<f32>> = (0..channels)
                    .map(|c| {
                        (0..=255u8)
                            .map(|x| (f32::from(x) / 255.0 - norm.mean[c]) / norm.std[c])
                            .collect()
                    })
                    .collect();
                for &i in indices {
                    let row = &values[i * len..(i + 1) * len];
                    xs.extend(row.iter().enumerate().map(|(k, &x)| tables[k / plane][usize::from(x)]));
                }
            }
            Values::F32(values) => {
                for &i in indices {
                    let row = &values[i * len..(i + 1) * len];
                    xs.extend(row.iter().enumerate().map(|(k, &x)| {
                        let c = k / plane;
                        (x - norm.mean[c]) / norm.std[c]
                    }));
                }
            }
        }
        (xs, ys)
    }

    /// A new set of the rows `indices`, in that order (same panics as [`Self::gather`]).
    pub fn select(&self, indices: &[usize]) -> Samples {
        let len = self.sample_len();
        fn rows<T: Copy>(values: &[T], len: usize, indices: &[usize]) -> Vec<T> {
            let mut out = Vec::with_capacity(indices.len() * len);
            for &i in indices {
                out.extend_from_slice(&values[i * len..(i + 1) * len]);
            }
            out
        }
        Samples {
            shape: self.shape.clone(),
            values: match &self.values {
                Values::U8(v) => Values::U8(rows(v, len, indices)),
                Values::F32(v) => Values::F32(rows(v, len, indices)),
            },
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
        }
    }
}

/// The file formats [`Dataset::load`] reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// IDX files (the embedded dataset is too).
    Idx,
    /// CIFAR-10 or CIFAR-100 binary batches.
    Cifar,
    /// NumPy `.npz` or `.npy` arrays.
    Npy,
    /// CSV tables.
    Csv,
}

/// A named dataset: a training set (split into private shards and the public pool) and
/// a test set, of one shape, with labels below `classes`.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// Where it came from: [`embedded::NAME`] or the file's or directory's name.
    pub name: String,
    pub format: Format,
    /// Training samples.
    pub train: Samples,
    /// Test samples.
    pub test: Samples,
    /// The classes: as the format states them, else one more than the highest label.
    pub classes: usize,
}

/// The IDX file names an IDX directory holds, each raw or with `.gz`.
const TRAIN_IMAGES: &str = "train-images-idx3-ubyte";
const TRAIN_LABELS: &str = "train-labels-idx1-ubyte";
const TEST_IMAGES: &str = "t10k-images-idx3-ubyte";
const TEST_LABELS: &str = "t10k-labels-idx1-ubyte";

impl Dataset {
    /// The Fashion-MNIST subset compiled into the binary (6,000 train / 1,000 test),
    /// named `fashion-mnist-subset`.
    pub fn embedded() -> Result<Dataset> {
        embedded::load()
    }

    /// Loads the dataset at `location` (the embedded one when it has no path).
    pub fn load(location: &Location) -> Result<Dataset> {
        let Some(path) = location.path.as_deref() else {
            return Dataset::embedded();
        };
        let format = format_of(path)?;
        let loaded = match format {
            Format::Idx => {
                let files = Files::of(Some(path))?;
                let set = |images: &IdxFile, labels: &IdxFile| idx::read_set(&images.path, &labels.path);
                Loaded {
                    train: set(&files.train_images, &files.train_labels)?,
                    test: Some(set(&files.test_images, &files.test_labels)?),
                    classes: None,
                }
            }
            Format::Cifar => {
                let labels = match location.labels.as_deref() {
                    None | Some("fine") => cifar::Cifar100Labels::Fine,
                    Some("coarse") => cifar::Cifar100Labels::Coarse,
                    Some(other) => {
                        return Err(data_error(
                            path,
                            format!("labels `{other}`: CIFAR-100's are `fine` (100 classes) or `coarse` (20)"),
                        ));
                    }
                };
                cifar::load_dir(path, labels)?
            }
            Format::Npy => npy::load(path)?,
            Format::Csv => {
                let column = match location.labels.as_deref() {
                    None => csv::LabelColumn::Last,
                    Some(name) => match name.parse::<usize>() {
                        Ok(index) => csv::LabelColumn::Index(index),
                        Err(_) => csv::LabelColumn::Name(name.to_string()),
                    },
                };
                csv::load(path, &column, csv::Header::Auto)?
            }
        };
        Dataset::new(dir_name(path), format, loaded.train, loaded.test, loaded.classes, path)
    }

    /// Checks what a loader read (one shape for both sets, the classes) and holds out a
    /// test set if there is none.
    fn new(
        name: String,
        format: Format,
        train: Samples,
        test: Option<Samples>,
        classes: Option<usize>,
        path: &Path,
    ) -> Result<Dataset> {
        train.check(path)?;
        let (train, test) = match test {
            Some(test) => {
                test.check(path)?;
                same_shape(&train, &test, path)?;
                (train, test)
            }
            None => hold_out(&train),
        };
        Dataset::of_sets(name, format, train, test, classes, path)
    }

    /// The dataset of `train` and `test` (checked to be of one shape), its classes as
    /// the format states them or one more than the highest label, checked to be a run's
    /// ([`DataSpec::validate`]); errors name `path`.
    fn of_sets(
        name: String,
        format: Format,
        train: Samples,
        test: Samples,
        classes: Option<usize>,
        path: &Path,
    ) -> Result<Dataset> {
        let highest = train.labels.iter().chain(&test.labels).copied().max().unwrap_or(0);
        let classes = classes.unwrap_or(usize::from(highest) + 1);
        if usize::from(highest) >= classes {
            return Err(data_error(
                path,
                format!("label {highest} is out of range: the format has {classes} classes"),
            ));
        }
        if classes < wdml_proto::data::MIN_CLASSES as usize {
            return Err(data_error(
                path,
                format!("every label is {highest}: a classification needs at least 2 classes"),
            ));
        }
        let dataset = Dataset {
            name,
            format,
            train,
            test,
            classes,
        };
        dataset.spec().validate().map_err(|e| data_error(path, e))?;
        Ok(dataset)
    }

    /// The labels and sample shapes of the dataset [`Dataset::load`] would load, and
    /// its pixels only where they cost nothing to keep: an IDX dataset's sets have no
    /// values (a few KB where the pixels of the full Fashion-MNIST are 55 MB); the
    /// other formats are read whole.
    pub fn load_labels(location: &Location) -> Result<Dataset> {
        if !is_idx(location)? {
            return Dataset::load(location);
        }
        let files = Files::of(location.path.as_deref())?;
        let set = |images: &IdxFile, labels: &IdxFile| -> Result<Samples> {
            let (_, shape) = idx::read_images_header(&mut *images.open()?, &images.path)?;
            Ok(Samples {
                shape,
                values: Values::U8(Vec::new()),
                labels: labels.labels()?,
            })
        };
        let train = set(&files.train_images, &files.train_labels)?;
        let test = set(&files.test_images, &files.test_labels)?;
        same_shape(&train, &test, &files.test_images.path)?;
        let path = location.path.clone().unwrap_or_else(|| files.train_labels.path.clone());
        Dataset::of_sets(files.name, Format::Idx, train, test, None, &path)
    }

    /// Only the training samples `train` and the test samples `test` (each strictly
    /// ascending) of the dataset [`Dataset::load`] would load, as two sets of those rows
    /// in that order: IDX files are streamed, and the other samples read past.
    pub fn load_rows(location: &Location, train: &[usize], test: &[usize]) -> Result<(Samples, Samples)> {
        if !is_idx(location)? {
            let whole = Dataset::load(location)?;
            let checked = |set: &Samples, rows: &[usize], what: &str| -> Result<()> {
                if let Some(&last) = rows.last().filter(|&&last| last >= set.len()) {
                    return Err(data_error(
                        location.path.as_deref().unwrap_or(Path::new("")),
                        format!("{what} sample {last} asked for, of {}", set.len()),
                    ));
                }
                Ok(())
            };
            checked(&whole.train, train, "training")?;
            checked(&whole.test, test, "test")?;
            return Ok((whole.train.select(train), whole.test.select(test)));
        }
        let files = Files::of(location.path.as_deref())?;
        let rows = |images: &IdxFile, labels: &IdxFile, rows: &[usize]| -> Result<Samples> {
            let all = labels.labels()?;
            let kept = idx::read_image_rows(&mut *images.open()?, &images.path, all.len(), rows)?;
            Ok(Samples {
                shape: kept.shape,
                values: Values::U8(kept.pixels),
                labels: rows.iter().map(|&i| all[i]).collect(),
            })
        };
        let train = rows(&files.train_images, &files.train_labels, train)?;
        let test = rows(&files.test_images, &files.test_labels, test)?;
        same_shape(&train, &test, &files.test_images.path)?;
        Ok((train, test))
    }

    /// The run's view of this dataset: its sample shape and classes.
    pub fn spec(&self) -> DataSpec {
        DataSpec {
            shape: self
                .train
                .shape
                .iter()
                .map(|&d| u32::try_from(d).unwrap_or(u32::MAX))
                .collect(),
            classes: u32::try_from(self.classes).unwrap_or(u32::MAX),
        }
    }

    /// The normalisation a run of this dataset uses unless its scenario gives one:
    /// Fashion-MNIST's for IDX 28×28 grey images (the MNIST family, and every figure in
    /// the docs), else computed from the training set ([`Normalisation::of`]; needs its
    /// values, so not on a set from [`Dataset::load_labels`]).
    pub fn normalisation(&self) -> Normalisation {
        if self.format == Format::Idx && self.train.shape == [1, 28, 28] {
            Normalisation::fashion_mnist()
        } else {
            Normalisation::of(&self.train)
        }
    }
}

/// What a run needs to know of its dataset before any node loads it: its name, shape
/// and classes, and the normalisation [`Dataset::normalisation`] gives it.
#[derive(Clone, Debug, PartialEq)]
pub struct Description {
    pub name: String,
    pub spec: DataSpec,
    pub normalisation: Normalisation,
}

/// Describes the dataset at `location`, reading as little of it as it can (an IDX
/// 28×28 set: its labels; any other: all of it, for its statistics). Remembered per
/// location for the life of the process: a scenario is validated, turned into settings
/// and launched, each of which asks.
pub fn describe(location: &Location) -> Result<Description> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static KNOWN: OnceLock<Mutex<HashMap<Location, Description>>> = OnceLock::new();
    let known = KNOWN.get_or_init(Mutex::default);
    if let Some(description) = known.lock().ok().and_then(|k| k.get(location).cloned()) {
        return Ok(description);
    }
    let labels = Dataset::load_labels(location)?;
    let description = if labels.format == Format::Idx && labels.train.shape == [1, 28, 28] {
        Description {
            name: labels.name.clone(),
            spec: labels.spec(),
            normalisation: labels.normalisation(),
        }
    } else {
        let dataset = Dataset::load(location)?;
        Description {
            name: dataset.name.clone(),
            spec: dataset.spec(),
            normalisation: dataset.normalisation(),
        }
    };
    if let Ok(mut known) = known.lock() {
        known.insert(location.clone(), description.clone());
    }
    Ok(description)
}

/// Holds out a test set from a dataset that has none: of each class's samples, in the
/// order of the file, every fifth (the 5th, the 10th, …) is a test sample. Stratified,
/// the same on every node and with no seed: part of the data contract.
pub fn hold_out(set: &Samples) -> (Samples, Samples) {
    let mut seen = [0usize; 256];
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for (i, &label) in set.labels.iter().enumerate() {
        let n = &mut seen[usize::from(label)];
        *n += 1;
        if n.is_multiple_of(5) {
            test.push(i);
        } else {
            train.push(i);
        }
    }
    (set.select(&train), set.select(&test))
}

/// The format of the dataset at `path`, by its file names.
fn format_of(path: &Path) -> Result<Format> {
    if !path.exists() {
        return Err(data_error(path, "no such file or directory"));
    }
    if path.is_dir() && (find(path, TRAIN_IMAGES).is_ok() || find(path, TRAIN_LABELS).is_ok()) {
        return Ok(Format::Idx);
    }
    if path.is_dir() && cifar::is_cifar_dir(path) {
        return Ok(Format::Cifar);
    }
    if npy::is_numpy(path) {
        return Ok(Format::Npy);
    }
    if csv::is_csv(path) {
        return Ok(Format::Csv);
    }
    if !path.is_dir() {
        return Err(data_error(
            path,
            "not a dataset: expected a directory of IDX or CIFAR files, an .npz file or a .csv file",
        ));
    }
    Err(data_error(
        path,
        format!(
            "no dataset here: expected IDX files (`{TRAIN_IMAGES}`, …, raw or .gz), CIFAR batches \
             (`data_batch_1.bin` … or `train.bin`), NumPy arrays (one `.npz`, or `x_train.npy` and \
             `y_train.npy`) or CSV tables (`train.csv` and `test.csv`)"
        ),
    ))
}

/// Whether `location` is IDX files (the embedded dataset is).
fn is_idx(location: &Location) -> Result<bool> {
    match location.path.as_deref() {
        None => Ok(true),
        Some(path) => Ok(format_of(path)? == Format::Idx),
    }
}

/// Training and test samples of one shape, or an error naming `path`.
fn same_shape(train: &Samples, test: &Samples, path: &Path) -> Result<()> {
    if train.shape != test.shape {
        return Err(data_error(
            path,
            format!(
                "training samples are {:?} but test samples are {:?}",
                train.shape, test.shape
            ),
        ));
    }
    Ok(())
}

/// `Error::Data` for `path`.
fn data_error(path: &Path, reason: impl Into<String>) -> Error {
    Error::Data {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The four files of an IDX dataset, compiled in or in a directory.
struct Files {
    name: String,
    train_images: IdxFile,
    train_labels: IdxFile,
    test_images: IdxFile,
    test_labels: IdxFile,
}

/// One IDX file: its path (errors name it) and, when compiled in, its bytes.
struct IdxFile {
    path: PathBuf,
    embedded: Option<&'static [u8]>,
}

impl Files {
    fn of(dir: Option<&Path>) -> Result<Files> {
        let Some(dir) = dir else {
            let [train_images, train_labels, test_images, test_labels] =
                embedded::files().map(|(path, bytes)| IdxFile {
                    path,
                    embedded: Some(bytes),
                });
            return Ok(Files {
                name: embedded::NAME.to_string(),
                train_images,
                train_labels,
                test_images,
                test_labels,
            });
        };
        if !dir.is_dir() {
            return Err(data_error(dir, "not a directory"));
        }
        let source = |name| -> Result<IdxFile> {
            Ok(IdxFile {
                path: find(dir, name)?,
                embedded: None,
            })
        };
        Ok(Files {
            name: dir_name(dir),
            train_images: source(TRAIN_IMAGES)?,
            train_labels: source(TRAIN_LABELS)?,
            test_images: source(TEST_IMAGES)?,
            test_labels: source(TEST_LABELS)?,
        })
    }
}

impl IdxFile {
    /// The file as a stream, decompressed if gzipped.
    fn open(&self) -> Result<Box<dyn std::io::Read>> {
        match self.embedded {
            Some(bytes) => Ok(idx::decoder(bytes)),
            None => idx::open(&self.path),
        }
    }

    /// The file read as labels (a few KB: read whole).
    fn labels(&self) -> Result<Vec<u8>> {
        match self.embedded {
            Some(bytes) => idx::parse_labels(bytes, &self.path),
            None => idx::read_labels(&self.path),
        }
    }
}

/// `dir/name` if it exists, else `dir/name.gz`, else an error naming both.
fn find(dir: &Path, name: &str) -> Result<PathBuf> {
    let raw = dir.join(name);
    let gz = dir.join(format!("{name}.gz"));
    [raw, gz]
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| data_error(dir, format!("missing `{name}` (tried `{name}` and `{name}.gz`)")))
}

/// The directory's own name, resolving paths like `.` that have none.
fn dir_name(dir: &Path) -> String {
    let canonical = dir.canonicalize().ok();
    dir.file_name()
        .or_else(|| canonical.as_deref()?.file_name())
        .map_or_else(|| dir.display().to_string(), |name| name.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::test_util::TempDir;
    use super::*;

    fn set(len: usize, height: usize, width: usize) -> Samples {
        Samples {
            shape: vec![1, height, width],
            values: Values::U8((0..len * height * width).map(|i| (i % 256) as u8).collect()),
            labels: (0..len).map(|i| (i % 10) as u8).collect(),
        }
    }

    /// Writes `train` and `test` into `dir`, the images gzipped and the labels raw.
    fn write_dataset(dir: &Path, train: &Samples, test: &Samples) {
        for (prefix, s) in [("train", train), ("t10k", test)] {
            let images = dir.join(format!("{prefix}-images-idx3-ubyte.gz"));
            let labels = dir.join(format!("{prefix}-labels-idx1-ubyte"));
            idx::write(&images, &idx::encode_images(s).unwrap(), true).unwrap();
            idx::write(&labels, &idx::encode_labels(&s.labels).unwrap(), false).unwrap();
        }
    }

    /// A node reads the labels, then only its rows: the same labels and the same
    /// pixels as the whole dataset holds, from a directory (gzipped images) and from
    /// the embedded files.
    #[test]
    fn labels_and_chosen_rows_are_those_of_the_whole_dataset() {
        let tmp = TempDir::new("rows");
        let (train, test) = (set(30, 3, 2), set(12, 3, 2));
        write_dataset(tmp.path(), &train, &test);
        let embedded = Dataset::embedded().unwrap();
        for (dir, whole) in [
            (
                Location::at(Some(tmp.path())),
                Dataset::load(&Location::at(Some(tmp.path()))).unwrap(),
            ),
            (Location::default(), embedded),
        ] {
            let labels = Dataset::load_labels(&dir).unwrap();
            assert_eq!(
                (labels.train.labels.clone(), labels.test.labels.clone()),
                (whole.train.labels.clone(), whole.test.labels.clone())
            );
            assert_eq!(labels.train.shape, whole.train.shape);
            assert_eq!(labels.classes, whole.classes);
            assert!(labels.train.values.is_empty() && labels.test.values.is_empty());
            let last = whole.train.len() - 1;
            for rows in [vec![0], vec![1, 2, 7, last], (0..=last).step_by(3).collect()] {
                let (train, test) = Dataset::load_rows(&dir, &rows, &[0, 5]).unwrap();
                assert_eq!(train, whole.train.select(&rows));
                assert_eq!(test, whole.test.select(&[0, 5]));
            }
        }
    }

    #[test]
    fn rows_out_of_range_or_order_are_refused_naming_the_file() {
        let tmp = TempDir::new("bad-rows");
        write_dataset(tmp.path(), &set(30, 3, 2), &set(12, 3, 2));
        for (rows, says) in [
            (vec![3, 30], "image 30 asked for, of 30"),
            (vec![4, 2], "not strictly ascending"),
            (vec![2, 2], "not strictly ascending"),
        ] {
            let err = Dataset::load_rows(&Location::at(Some(tmp.path())), &rows, &[])
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(says) && err.contains("train-images-idx3-ubyte.gz"),
                "{rows:?}: {err}"
            );
        }
        // A stream cut short is found even past the last row kept.
        let images = tmp.path().join("train-images-idx3-ubyte.gz");
        let whole = idx::encode_images(&set(30, 3, 2)).unwrap();
        idx::write(&images, &whole[..whole.len() - 5], true).unwrap();
        let err = Dataset::load_rows(&Location::at(Some(tmp.path())), &[0], &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("truncated") && err.contains("ends in image 29"), "{err}");
    }

    #[test]
    fn load_dir_reads_raw_and_gz_names() {
        let tmp = TempDir::new("load-dir");
        let dir = tmp.path().join("tiny-mnist");
        std::fs::create_dir(&dir).unwrap();
        let (train, test) = (set(30, 3, 2), set(12, 3, 2));
        write_dataset(&dir, &train, &test);
        let dataset = Dataset::load(&Location::at(Some(&dir))).unwrap();
        assert_eq!(
            dataset,
            Dataset {
                name: "tiny-mnist".into(),
                format: Format::Idx,
                train,
                test,
                classes: 10,
            }
        );
        assert_eq!(dataset.spec().to_string(), "[1, 3, 2] × 10 classes");
    }

    #[test]
    fn load_dir_errors_name_the_problem() {
        let tmp = TempDir::new("load-dir-errors");
        let load = |path: &Path| Dataset::load(&Location::at(Some(path)));
        let err = load(&tmp.path().join("absent")).unwrap_err();
        assert!(err.to_string().ends_with("absent: no such file or directory"), "{err}");

        write_dataset(tmp.path(), &set(30, 3, 2), &set(12, 2, 3));
        let err = load(tmp.path()).unwrap_err();
        assert!(
            err.to_string()
                .contains("training samples are [1, 3, 2] but test samples are [1, 2, 3]"),
            "{err}"
        );

        std::fs::remove_file(tmp.path().join("t10k-labels-idx1-ubyte")).unwrap();
        let err = load(tmp.path()).unwrap_err();
        assert!(
            err.to_string().contains(
                "missing `t10k-labels-idx1-ubyte` (tried `t10k-labels-idx1-ubyte` and `t10k-labels-idx1-ubyte.gz`)"
            ),
            "{err}"
        );
    }

    #[test]
    fn dir_name_resolves_dot() {
        assert_eq!(
            dir_name(Path::new("/usr/share/datasets/fashion-mnist")),
            "fashion-mnist"
        );
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(dir_name(Path::new(".")), cwd.file_name().unwrap().to_string_lossy());
    }

    #[test]
    fn load_none_is_embedded() {
        let embedded = Dataset::load(&Location::default()).unwrap();
        assert_eq!(embedded.name, embedded::NAME);
        assert_eq!(embedded.spec(), wdml_proto::data::fashion_mnist());
        assert_eq!(embedded.normalisation(), Normalisation::fashion_mnist());
    }

    #[test]
    fn gather_normalises_and_selects_rows() {
        let s = Samples {
            shape: vec![1, 1, 3],
            values: Values::U8(vec![0, 255, 73, 10, 20, 30]),
            labels: vec![4, 9],
        };
        let (xs, ys) = s.gather(&[1, 0, 1], &Normalisation::fashion_mnist());
        assert_eq!(ys, vec![9, 4, 9]);
        let norm = |x: f32| (x / 255.0 - MEAN) / STD;
        let expected: Vec<f32> = [10.0, 20.0, 30.0, 0.0, 255.0, 73.0, 10.0, 20.0, 30.0]
            .map(norm)
            .to_vec();
        assert_eq!(xs, expected);
        assert!((xs[3] + 0.2860 / 0.3530).abs() < 1e-6);
        assert_eq!(
            s.select(&[1]),
            Samples {
                shape: vec![1, 1, 3],
                values: Values::U8(vec![10, 20, 30]),
                labels: vec![9],
            }
        );
        assert!(s.gather(&[], &Normalisation::fashion_mnist()).0.is_empty());
    }

    /// Per channel: an image's colour planes, a feature vector's features.
    #[test]
    fn normalisation_is_per_channel_and_standardises_each() {
        // Two RGB-like planes of 2 pixels, 3 images: plane 0 is 0 or 255, plane 1 constant.
        let images = Samples {
            shape: vec![2, 1, 2],
            values: Values::U8(vec![0, 255, 9, 9, 255, 0, 9, 9, 0, 255, 9, 9]),
            labels: vec![0, 1, 0],
        };
        let norm = Normalisation::of(&images);
        assert_eq!(norm.mean, vec![0.5, 9.0 / 255.0]);
        // A constant channel keeps a standard deviation of 1: it only shifts to 0.
        assert_eq!(norm.std, vec![0.5, 1.0]);
        let (xs, _) = images.gather(&[0], &norm);
        assert_eq!(xs, vec![-1.0, 1.0, 0.0, 0.0]);
        let features = Samples {
            shape: vec![2],
            values: Values::F32(vec![1.0, -3.0, 3.0, -3.0]),
            labels: vec![0, 1],
        };
        let norm = Normalisation::of(&features);
        assert_eq!((norm.mean.clone(), norm.std.clone()), (vec![2.0, -3.0], vec![1.0, 1.0]));
        assert_eq!(features.gather(&[1, 0], &norm).0, vec![1.0, 0.0, -1.0, 0.0]);
        norm.check(&[2]).unwrap();
        let error = norm.check(&[3, 4, 4]).unwrap_err();
        assert!(error.contains("one per channel (3)"), "{error}");
    }

    /// One-table formats hold out every fifth sample of each class, in file order.
    #[test]
    fn hold_out_is_every_fifth_of_each_class() {
        let labels: Vec<u8> = (0..20).map(|i| u8::from(i >= 10)).collect();
        let set = Samples {
            shape: vec![1],
            values: Values::F32((0..20).map(|i| i as f32).collect()),
            labels,
        };
        let (train, test) = hold_out(&set);
        assert_eq!(test.values, Values::F32(vec![4.0, 9.0, 14.0, 19.0]));
        assert_eq!((train.len(), test.labels.clone()), (16, vec![0, 0, 1, 1]));
    }

    #[test]
    fn samples_debug_is_a_summary() {
        let s = set(5, 28, 28);
        assert_eq!(
            format!("{s:?}"),
            "Samples { len: 5, shape: [1, 28, 28], values: \"u8\", .. }"
        );
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    //! Helpers shared by the data tests.

    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh directory under the system temp dir, removed on drop.
    pub struct TempDir(PathBuf);

    impl TempDir {
        /// A directory unique to this process and call, its name containing `label`.
        pub fn new(label: &str) -> TempDir {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path = std::env::temp_dir().join(format!("wdml-data-{label}-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&path).expect("create temp dir");
            TempDir(path)
        }

        /// The directory.
        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
