//! The data a node learns from: loading a dataset and splitting it.
//!
//! A [`Dataset`] is either the subset of Fashion-MNIST compiled into the binary
//! ([`Dataset::embedded`], the default, so nothing needs downloading) or a directory of
//! IDX files ([`Dataset::load_dir`], e.g. the full Fashion-MNIST that Debian's
//! `dataset-fashion-mnist` installs at `/usr/share/datasets/fashion-mnist`).
//! [`split`] then divides the training set into the nodes' private shards and the
//! public pool, and picks the test images; every node computes the same split from the
//! shared seed, so no data or index list is ever sent.

pub mod bounds;
pub mod cifar;
pub mod csv;
pub mod embedded;
pub mod idx;
pub mod npy;
pub mod partition;
pub mod raw;

use std::fmt;
use std::path::{Path, PathBuf};

pub use partition::{NodeStats, Partition, Split, SplitConfig, SplitStats, split};

use crate::{Error, Result};

/// Classes of the datasets (the wire's: the columns of a prediction message).
pub use wdml_proto::message::CLASSES;
/// Mean of Fashion-MNIST training pixels scaled to `[0, 1]`.
pub const MEAN: f32 = 0.2860;
/// Standard deviation of Fashion-MNIST training pixels scaled to `[0, 1]`.
pub const STD: f32 = 0.3530;

/// Images as u8 pixels row-major `[len, height*width]`, labels u8.
#[derive(Clone, PartialEq, Eq)]
pub struct ImageSet {
    /// Row-major pixels, `len() * pixels()` of them.
    pub images: Vec<u8>,
    /// One label per image, each `< CLASSES`.
    pub labels: Vec<u8>,
    /// Rows per image.
    pub height: usize,
    /// Columns per image.
    pub width: usize,
}

impl ImageSet {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Pixels per image, `height * width`.
    pub fn pixels(&self) -> usize {
        self.height * self.width
    }

    /// Normalised pixels (`(x/255 - MEAN)/STD`, FMNIST mean 0.2860 std 0.3530) of the rows
    /// `indices`, row-major, and their labels as u32.
    ///
    /// # Panics
    /// If an index is `>= len()`, like slice indexing: indices come from [`split`], so an
    /// out-of-range one is a bug, not bad input.
    pub fn gather(&self, indices: &[usize]) -> (Vec<f32>, Vec<u32>) {
        // 256 possible pixel values: normalise each once.
        let table: Vec<f32> = (0..=255u8).map(|x| (f32::from(x) / 255.0 - MEAN) / STD).collect();
        let pixels = self.pixels();
        let mut xs = Vec::with_capacity(indices.len() * pixels);
        let mut ys = Vec::with_capacity(indices.len());
        for &i in indices {
            xs.extend(
                self.images[i * pixels..(i + 1) * pixels]
                    .iter()
                    .map(|&x| table[usize::from(x)]),
            );
            ys.push(u32::from(self.labels[i]));
        }
        (xs, ys)
    }

    /// A new set of the rows `indices`, in that order (same panics as [`Self::gather`]).
    pub fn select(&self, indices: &[usize]) -> ImageSet {
        let pixels = self.pixels();
        let mut images = Vec::with_capacity(indices.len() * pixels);
        for &i in indices {
            images.extend_from_slice(&self.images[i * pixels..(i + 1) * pixels]);
        }
        let labels = indices.iter().map(|&i| self.labels[i]).collect();
        ImageSet {
            images,
            labels,
            height: self.height,
            width: self.width,
        }
    }
}

// Summarised: the derived form would print every pixel.
impl fmt::Debug for ImageSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImageSet")
            .field("len", &self.len())
            .field("height", &self.height)
            .field("width", &self.width)
            .finish_non_exhaustive()
    }
}

/// A named dataset: a training set (split into private shards and the public pool) and
/// a test set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dataset {
    /// Where it came from: [`embedded::NAME`] or the directory's name.
    pub name: String,
    /// Training images.
    pub train: ImageSet,
    /// Test images.
    pub test: ImageSet,
}

/// The IDX file names `load_dir` looks for, each raw or with `.gz`.
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

    /// Loads `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`
    /// and `t10k-labels-idx1-ubyte` from `dir`, each raw or gzipped, with or without `.gz`
    /// (the raw name is tried first). Named after the directory.
    pub fn load_dir(dir: &Path) -> Result<Dataset> {
        let files = Files::of(Some(dir))?;
        let set = |images: &Source, labels: &Source| idx::read_set(&images.path, &labels.path, CLASSES);
        let train = set(&files.train_images, &files.train_labels)?;
        let test = set(&files.test_images, &files.test_labels)?;
        same_size(&train, &test, dir)?;
        Ok(Dataset {
            name: files.name,
            train,
            test,
        })
    }

    /// `None` → [`Dataset::embedded`], `Some(dir)` → [`Dataset::load_dir`].
    pub fn load(dir: Option<&Path>) -> Result<Dataset> {
        match dir {
            None => Dataset::embedded(),
            Some(dir) => Dataset::load_dir(dir),
        }
    }

    /// The labels and image sizes of the dataset [`Dataset::load`] would load, without
    /// its pixels (both sets' `images` are empty): what [`split`] needs, a few KB where
    /// the pixels of the full Fashion-MNIST are 55 MB.
    pub fn load_labels(dir: Option<&Path>) -> Result<Dataset> {
        let files = Files::of(dir)?;
        let set = |images: &Source, labels: &Source| -> Result<ImageSet> {
            let (_, height, width) = idx::read_images_header(&mut *images.open()?, &images.path)?;
            Ok(ImageSet {
                images: Vec::new(),
                labels: labels.labels()?,
                height,
                width,
            })
        };
        Ok(Dataset {
            name: files.name.clone(),
            train: set(&files.train_images, &files.train_labels)?,
            test: set(&files.test_images, &files.test_labels)?,
        })
    }

    /// Only the training images `train` and the test images `test` (each strictly
    /// ascending) of the dataset [`Dataset::load`] would load, as two sets of those rows
    /// in that order: the files are streamed, and the other images read past.
    pub fn load_rows(dir: Option<&Path>, train: &[usize], test: &[usize]) -> Result<(ImageSet, ImageSet)> {
        let files = Files::of(dir)?;
        let rows = |images: &Source, labels: &Source, rows: &[usize]| -> Result<ImageSet> {
            let all = labels.labels()?;
            let kept = idx::read_image_rows(&mut *images.open()?, &images.path, all.len(), rows)?;
            Ok(ImageSet {
                images: kept.pixels,
                labels: rows.iter().map(|&i| all[i]).collect(),
                height: kept.height,
                width: kept.width,
            })
        };
        let train = rows(&files.train_images, &files.train_labels, train)?;
        let test = rows(&files.test_images, &files.test_labels, test)?;
        same_size(&train, &test, &files.test_images.path)?;
        Ok((train, test))
    }
}

/// Training and test images of one size, or an error naming `path`.
fn same_size(train: &ImageSet, test: &ImageSet, path: &Path) -> Result<()> {
    if (train.height, train.width) != (test.height, test.width) {
        return Err(Error::Data {
            path: path.to_path_buf(),
            reason: format!(
                "training images are {}×{} but test images are {}×{}",
                train.height, train.width, test.height, test.width
            ),
        });
    }
    Ok(())
}

/// The four files of a dataset, compiled in or in a directory.
struct Files {
    name: String,
    train_images: Source,
    train_labels: Source,
    test_images: Source,
    test_labels: Source,
}

/// One IDX file: its path (errors name it) and, when compiled in, its bytes.
struct Source {
    path: PathBuf,
    embedded: Option<&'static [u8]>,
}

impl Files {
    fn of(dir: Option<&Path>) -> Result<Files> {
        let Some(dir) = dir else {
            let [train_images, train_labels, test_images, test_labels] =
                embedded::files().map(|(path, bytes)| Source {
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
            return Err(Error::Data {
                path: dir.to_path_buf(),
                reason: "not a directory".into(),
            });
        }
        let source = |name| -> Result<Source> {
            Ok(Source {
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

impl Source {
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
            Some(bytes) => idx::parse_labels(bytes, &self.path, CLASSES),
            None => idx::read_labels(&self.path, CLASSES),
        }
    }
}

/// `dir/name` if it exists, else `dir/name.gz`, else an error naming both.
fn find(dir: &Path, name: &str) -> Result<PathBuf> {
    let raw = dir.join(name);
    let gz = dir.join(format!("{name}.gz"));
    [raw, gz].into_iter().find(|p| p.is_file()).ok_or_else(|| Error::Data {
        path: dir.to_path_buf(),
        reason: format!("missing `{name}` (tried `{name}` and `{name}.gz`)"),
    })
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

    fn set(len: usize, height: usize, width: usize) -> ImageSet {
        ImageSet {
            images: (0..len * height * width).map(|i| (i % 256) as u8).collect(),
            labels: (0..len).map(|i| (i % CLASSES) as u8).collect(),
            height,
            width,
        }
    }

    /// Writes `train` and `test` into `dir`, the images gzipped and the labels raw.
    fn write_dataset(dir: &Path, train: &ImageSet, test: &ImageSet) {
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
            (Some(tmp.path()), Dataset::load(Some(tmp.path())).unwrap()),
            (None, embedded),
        ] {
            let labels = Dataset::load_labels(dir).unwrap();
            assert_eq!(
                (labels.train.labels.clone(), labels.test.labels.clone()),
                (whole.train.labels.clone(), whole.test.labels.clone())
            );
            assert_eq!(
                (labels.train.height, labels.train.width),
                (whole.train.height, whole.train.width)
            );
            assert!(labels.train.images.is_empty() && labels.test.images.is_empty());
            let last = whole.train.len() - 1;
            for rows in [vec![0], vec![1, 2, 7, last], (0..=last).step_by(3).collect()] {
                let (train, test) = Dataset::load_rows(dir, &rows, &[0, 5]).unwrap();
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
            let err = Dataset::load_rows(Some(tmp.path()), &rows, &[])
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
        let err = Dataset::load_rows(Some(tmp.path()), &[0], &[]).unwrap_err().to_string();
        assert!(err.contains("truncated") && err.contains("ends in image 29"), "{err}");
    }

    #[test]
    fn load_dir_reads_raw_and_gz_names() {
        let tmp = TempDir::new("load-dir");
        let dir = tmp.path().join("tiny-mnist");
        std::fs::create_dir(&dir).unwrap();
        let (train, test) = (set(30, 3, 2), set(12, 3, 2));
        write_dataset(&dir, &train, &test);
        let dataset = Dataset::load(Some(&dir)).unwrap();
        assert_eq!(
            dataset,
            Dataset {
                name: "tiny-mnist".into(),
                train,
                test
            }
        );
    }

    #[test]
    fn load_dir_errors_name_the_problem() {
        let tmp = TempDir::new("load-dir-errors");
        let err = Dataset::load_dir(&tmp.path().join("absent")).unwrap_err();
        assert!(err.to_string().ends_with("absent: not a directory"), "{err}");

        write_dataset(tmp.path(), &set(30, 3, 2), &set(12, 2, 3));
        let err = Dataset::load_dir(tmp.path()).unwrap_err();
        assert!(
            err.to_string()
                .contains("training images are 3×2 but test images are 2×3"),
            "{err}"
        );

        std::fs::remove_file(tmp.path().join("t10k-labels-idx1-ubyte")).unwrap();
        let err = Dataset::load_dir(tmp.path()).unwrap_err();
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
        assert_eq!(Dataset::load(None).unwrap().name, embedded::NAME);
    }

    #[test]
    fn gather_normalises_and_selects_rows() {
        let s = ImageSet {
            images: vec![0, 255, 73, 10, 20, 30],
            labels: vec![4, 9],
            height: 1,
            width: 3,
        };
        let (xs, ys) = s.gather(&[1, 0, 1]);
        assert_eq!(ys, vec![9, 4, 9]);
        let norm = |x: f32| (x / 255.0 - MEAN) / STD;
        let expected: Vec<f32> = [10.0, 20.0, 30.0, 0.0, 255.0, 73.0, 10.0, 20.0, 30.0]
            .map(norm)
            .to_vec();
        assert_eq!(xs, expected);
        assert!((xs[3] + 0.2860 / 0.3530).abs() < 1e-6);
        assert_eq!(
            s.select(&[1]),
            ImageSet {
                images: vec![10, 20, 30],
                labels: vec![9],
                height: 1,
                width: 3
            }
        );
        assert!(s.gather(&[]).0.is_empty());
    }

    #[test]
    fn image_set_debug_is_a_summary() {
        let s = set(5, 28, 28);
        assert_eq!(format!("{s:?}"), "ImageSet { len: 5, height: 28, width: 28, .. }");
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
