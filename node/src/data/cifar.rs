//! CIFAR-10 and CIFAR-100 in their *binary* versions (`cifar-10-binary.tar.gz`,
//! `cifar-100-binary.tar.gz`), not the Python pickles.
//!
//! Every file is a run of fixed-size records, no header:
//! - CIFAR-10: `data_batch_1.bin` … `data_batch_5.bin` (train) and `test_batch.bin`;
//!   a record is 1 label byte (`< 10`) then 3072 pixel bytes;
//! - CIFAR-100: `train.bin` and `test.bin`; a record is a coarse label byte (`< 20`), a
//!   fine label byte (`< 100`), then 3072 pixel bytes. Both labels are checked; the one
//!   [`Cifar100Labels`] names is kept.
//!
//! The 3072 pixels are 1024 red, 1024 green then 1024 blue, each 32×32 row-major: exactly
//! a channels-first `[3, 32, 32]` sample, so they are copied as they are (u8).
//!
//! The files are named by the dataset, so detection ([`is_cifar_dir`]) goes by file name.
//! A directory holding the tarball's own folder (`cifar-10-batches-bin/`,
//! `cifar-100-binary/`) is read through it.

use std::path::{Path, PathBuf};

use super::bounds::{self, error};
use super::raw::{Loaded, Samples, Values};
use crate::Result;

/// Pixels per image: 3 channels of 32×32.
pub const PIXELS: usize = 3 * 32 * 32;
/// One sample's shape, channels first.
pub const SHAPE: [usize; 3] = [3, 32, 32];

const CIFAR10_TRAIN: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];
const CIFAR10_TEST: &str = "test_batch.bin";
const CIFAR100_TRAIN: &str = "train.bin";
const CIFAR100_TEST: &str = "test.bin";
/// The folders the official tarballs unpack to.
const TARBALL_DIRS: [&str; 2] = ["cifar-10-batches-bin", "cifar-100-binary"];

/// Which of CIFAR-100's two labels a record keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Cifar100Labels {
    /// The 100 classes.
    #[default]
    Fine,
    /// The 20 superclasses.
    Coarse,
}

/// The record layout of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// 1 label byte, 3072 pixels.
    Cifar10,
    /// Coarse label, fine label, 3072 pixels; keeps the given one.
    Cifar100(Cifar100Labels),
}

impl Kind {
    /// Label bytes before the pixels.
    fn label_bytes(self) -> usize {
        match self {
            Kind::Cifar10 => 1,
            Kind::Cifar100(_) => 2,
        }
    }

    /// Bytes per record: 3073 or 3074.
    pub fn record_len(self) -> usize {
        self.label_bytes() + PIXELS
    }

    /// Classes of the labels kept.
    pub fn classes(self) -> usize {
        match self {
            Kind::Cifar10 => 10,
            Kind::Cifar100(Cifar100Labels::Fine) => 100,
            Kind::Cifar100(Cifar100Labels::Coarse) => 20,
        }
    }
}

/// Whether `dir` (or the tarball's folder inside it) holds CIFAR-10's first training
/// batch or CIFAR-100's `train.bin`: decided by file names only.
pub fn is_cifar_dir(dir: &Path) -> bool {
    find(dir).is_some()
}

/// The directory holding the files and their kind (CIFAR-100 with fine labels; the
/// caller picks the labels).
fn find(dir: &Path) -> Option<(PathBuf, Kind)> {
    let candidates = std::iter::once(dir.to_path_buf()).chain(TARBALL_DIRS.iter().map(|d| dir.join(d)));
    for d in candidates {
        if d.join(CIFAR10_TRAIN[0]).is_file() {
            return Some((d, Kind::Cifar10));
        }
        if d.join(CIFAR100_TRAIN).is_file() {
            return Some((d, Kind::Cifar100(Cifar100Labels::Fine)));
        }
    }
    None
}

/// Loads CIFAR-10 (`labels` unused) or CIFAR-100 from `dir` or from the tarball's folder
/// in it: every training file and the test file must be there, each a whole number of
/// records with labels in range. `classes` is 10, 100 or 20.
pub fn load_dir(dir: &Path, labels: Cifar100Labels) -> Result<Loaded> {
    let Some((dir, kind)) = find(dir) else {
        return Err(error(
            dir,
            format!(
                "not a CIFAR directory: no `{}` (CIFAR-10) or `{CIFAR100_TRAIN}` (CIFAR-100), here or in {}",
                CIFAR10_TRAIN[0],
                TARBALL_DIRS.map(|d| format!("`{d}/`")).join(" or ")
            ),
        ));
    };
    let (kind, train, test) = match kind {
        Kind::Cifar10 => (kind, &CIFAR10_TRAIN[..], CIFAR10_TEST),
        Kind::Cifar100(_) => (Kind::Cifar100(labels), &[CIFAR100_TRAIN][..], CIFAR100_TEST),
    };
    let paths = |names: &[&str]| -> Result<Vec<PathBuf>> {
        names
            .iter()
            .map(|name| {
                let path = dir.join(name);
                if path.is_file() {
                    Ok(path)
                } else {
                    Err(error(
                        &dir,
                        format!("missing `{name}` ({kind:?} needs {})", names.join(", ")),
                    ))
                }
            })
            .collect()
    };
    let train = read_files(&paths(train)?, kind)?;
    let test = read_files(&paths(&[test])?, kind)?;
    Ok(Loaded {
        train,
        test: Some(test),
        classes: Some(kind.classes()),
    })
}

/// The records of `paths`, one after the other: the total is sized from the files'
/// real lengths (each checked a whole number of records) before any is read.
fn read_files(paths: &[PathBuf], kind: Kind) -> Result<Samples> {
    let mut records = 0u64;
    for path in paths {
        records += records_in(path, bounds::file_len(path)?, kind)? as u64;
    }
    let first = &paths[0];
    bounds::check_values(first, records * PIXELS as u64, "the CIFAR files together")?;
    let records = records as usize;
    let mut pixels = Vec::with_capacity(records * PIXELS);
    let mut labels = Vec::with_capacity(records);
    for path in paths {
        append(&bounds::read_file(path)?, path, kind, &mut pixels, &mut labels)?;
    }
    let samples = Samples {
        shape: SHAPE.to_vec(),
        values: Values::U8(pixels),
        labels,
    };
    samples.check(first)?;
    Ok(samples)
}

/// How many records `len` bytes hold, or an error naming the file, its length and the
/// record size.
fn records_in(source: &Path, len: u64, kind: Kind) -> Result<usize> {
    let record = kind.record_len() as u64;
    if len == 0 || !len.is_multiple_of(record) {
        return Err(error(
            source,
            format!(
                "{len} bytes is not a whole, non-zero number of {kind:?} records of {record} bytes \
                 ({} label byte(s) + {PIXELS} pixels): truncated, or another format",
                kind.label_bytes()
            ),
        ));
    }
    usize::try_from(len / record).map_err(|_| error(source, "more records than memory can address"))
}

/// Parses one file's bytes (`source` names it in errors): for tests and fuzzing.
pub fn parse(bytes: &[u8], source: &Path, kind: Kind) -> Result<Samples> {
    let records = records_in(source, bytes.len() as u64, kind)?;
    let mut pixels = Vec::with_capacity(records * PIXELS);
    let mut labels = Vec::with_capacity(records);
    append(bytes, source, kind, &mut pixels, &mut labels)?;
    Ok(Samples {
        shape: SHAPE.to_vec(),
        values: Values::U8(pixels),
        labels,
    })
}

/// Appends the records of one file to `pixels` and `labels`, checking every label byte.
fn append(bytes: &[u8], source: &Path, kind: Kind, pixels: &mut Vec<u8>, labels: &mut Vec<u8>) -> Result<()> {
    records_in(source, bytes.len() as u64, kind)?;
    for (index, record) in bytes.chunks_exact(kind.record_len()).enumerate() {
        let label = match kind {
            Kind::Cifar10 => check_label(source, index, "label", record[0], 10)?,
            Kind::Cifar100(keep) => {
                let coarse = check_label(source, index, "coarse label", record[0], 20)?;
                let fine = check_label(source, index, "fine label", record[1], 100)?;
                match keep {
                    Cifar100Labels::Fine => fine,
                    Cifar100Labels::Coarse => coarse,
                }
            }
        };
        labels.push(label);
        pixels.extend_from_slice(&record[kind.label_bytes()..]);
    }
    Ok(())
}

fn check_label(source: &Path, index: usize, what: &str, label: u8, classes: u8) -> Result<u8> {
    if label >= classes {
        return Err(error(
            source,
            format!("record {index}: {what} {label} is out of range (expected < {classes})"),
        ));
    }
    Ok(label)
}

/// Encodes samples of shape `[3, 32, 32]` as one CIFAR file of `kind`; for CIFAR-100,
/// `coarse` gives the coarse label of each sample (the samples' own labels are fine).
/// For tests, the fuzz corpus and anyone who needs the files (they cannot be downloaded
/// in CI).
pub fn encode(samples: &Samples, kind: Kind, coarse: Option<&[u8]>) -> Result<Vec<u8>> {
    let source = Path::new("<CIFAR being encoded>");
    let Values::U8(pixels) = &samples.values else {
        return Err(error(source, "CIFAR pixels are u8"));
    };
    if samples.shape != SHAPE || pixels.len() != samples.len() * PIXELS {
        return Err(error(
            source,
            format!("CIFAR samples are {SHAPE:?}, not {:?}", samples.shape),
        ));
    }
    let mut out = Vec::with_capacity(samples.len() * kind.record_len());
    for (i, (image, &label)) in pixels.chunks_exact(PIXELS).zip(&samples.labels).enumerate() {
        if kind == Kind::Cifar10 {
            out.push(label);
        } else {
            let coarse = coarse
                .and_then(|c| c.get(i))
                .ok_or_else(|| error(source, format!("no coarse label for sample {i}")))?;
            out.extend_from_slice(&[*coarse, label]);
        }
        out.extend_from_slice(image);
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::data::bounds::test_support::u8s;
    use crate::data::test_util::TempDir;

    /// `n` samples whose pixels and labels depend on `seed` and the index.
    pub(crate) fn samples(n: usize, classes: usize, seed: usize) -> Samples {
        Samples {
            shape: SHAPE.to_vec(),
            values: Values::U8((0..n * PIXELS).map(|i| ((i * 31 + seed * 7) % 251) as u8).collect()),
            labels: (0..n).map(|i| ((i + seed) % classes) as u8).collect(),
        }
    }

    /// Writes a CIFAR-10 directory: five training batches of `per_batch` records and a
    /// test batch of `test` records. Returns the training and test sets written.
    pub(crate) fn write_cifar10(dir: &Path, per_batch: usize, test: usize) -> (Vec<Samples>, Samples) {
        let train: Vec<Samples> = (0..5).map(|b| samples(per_batch, 10, b)).collect();
        for (name, set) in CIFAR10_TRAIN.iter().zip(&train) {
            std::fs::write(dir.join(name), encode(set, Kind::Cifar10, None).unwrap()).unwrap();
        }
        let test = samples(test, 10, 9);
        std::fs::write(dir.join(CIFAR10_TEST), encode(&test, Kind::Cifar10, None).unwrap()).unwrap();
        (train, test)
    }

    fn reason(err: crate::Error) -> (PathBuf, String) {
        match err {
            crate::Error::Data { path, reason } => (path, reason),
            other => panic!("expected a data error, got {other}"),
        }
    }

    #[test]
    fn cifar10_round_trips_in_file_order() {
        let tmp = TempDir::new("cifar10");
        let (train, test) = write_cifar10(tmp.path(), 7, 5);
        assert!(is_cifar_dir(tmp.path()));
        let loaded = load_dir(tmp.path(), Cifar100Labels::Coarse).unwrap();
        assert_eq!(loaded.classes, Some(10));
        assert_eq!(loaded.test, Some(test));
        let mut pixels = Vec::new();
        let mut labels = Vec::new();
        for set in &train {
            let Values::U8(p) = &set.values else { unreachable!() };
            pixels.extend_from_slice(p);
            labels.extend_from_slice(&set.labels);
        }
        assert_eq!(loaded.train.shape, vec![3, 32, 32]);
        assert_eq!(loaded.train.labels, labels);
        assert_eq!(u8s(&loaded.train.values), &pixels[..]);
    }

    #[test]
    fn the_first_record_is_label_then_red_green_blue_planes() {
        // Record: label 3, red plane all 10, green all 20, blue all 30, with pixel
        // (row 1, column 2) of green set to 99: it lands at [1, 1, 2].
        let mut record = vec![3u8];
        record.extend([10u8; 1024]);
        record.extend([20u8; 1024]);
        record.extend([30u8; 1024]);
        record[1 + 1024 + 32 + 2] = 99;
        let set = parse(&record, Path::new("one.bin"), Kind::Cifar10).unwrap();
        let Values::U8(p) = &set.values else { unreachable!() };
        assert_eq!(set.labels, vec![3]);
        assert_eq!((p[0], p[1024], p[2048]), (10, 20, 30));
        assert_eq!(p[1024 + 32 + 2], 99);
    }

    #[test]
    fn cifar100_keeps_fine_or_coarse_labels_from_the_tarball_folder() {
        let tmp = TempDir::new("cifar100");
        let dir = tmp.path().join("cifar-100-binary");
        std::fs::create_dir(&dir).unwrap();
        let (train, test) = (samples(6, 100, 1), samples(4, 100, 2));
        let coarse = |s: &Samples| s.labels.iter().map(|l| l / 5).collect::<Vec<u8>>();
        let kind = Kind::Cifar100(Cifar100Labels::Fine);
        for (name, set) in [(CIFAR100_TRAIN, &train), (CIFAR100_TEST, &test)] {
            std::fs::write(dir.join(name), encode(set, kind, Some(&coarse(set))).unwrap()).unwrap();
        }
        assert!(is_cifar_dir(tmp.path()));
        let fine = load_dir(tmp.path(), Cifar100Labels::Fine).unwrap();
        assert_eq!(
            (fine.classes, &fine.train, fine.test.as_ref()),
            (Some(100), &train, Some(&test))
        );
        let coarse_loaded = load_dir(tmp.path(), Cifar100Labels::Coarse).unwrap();
        assert_eq!(coarse_loaded.classes, Some(20));
        assert_eq!(coarse_loaded.train.labels, coarse(&train));
        assert_eq!(u8s(&coarse_loaded.train.values), u8s(&train.values));
    }

    #[test]
    fn errors_name_the_file_the_length_and_the_record() {
        let tmp = TempDir::new("cifar-errors");
        assert!(!is_cifar_dir(tmp.path()));
        let (_, why) = reason(load_dir(tmp.path(), Cifar100Labels::Fine).unwrap_err());
        assert!(why.starts_with("not a CIFAR directory: no `data_batch_1.bin`"), "{why}");

        write_cifar10(tmp.path(), 3, 2);
        std::fs::remove_file(tmp.path().join("data_batch_4.bin")).unwrap();
        let (path, why) = reason(load_dir(tmp.path(), Cifar100Labels::Fine).unwrap_err());
        assert_eq!(path, tmp.path());
        assert!(
            why.starts_with("missing `data_batch_4.bin` (Cifar10 needs data_batch_1.bin"),
            "{why}"
        );

        write_cifar10(tmp.path(), 3, 2);
        let batch = tmp.path().join("data_batch_2.bin");
        let mut bytes = std::fs::read(&batch).unwrap();
        bytes.pop();
        std::fs::write(&batch, &bytes).unwrap();
        let (path, why) = reason(load_dir(tmp.path(), Cifar100Labels::Fine).unwrap_err());
        assert_eq!(path, batch);
        assert!(
            why.starts_with("9218 bytes is not a whole, non-zero number of Cifar10 records of 3073 bytes"),
            "{why}"
        );

        bytes.push(0);
        bytes[2 * 3073] = 10;
        std::fs::write(&batch, &bytes).unwrap();
        let (path, why) = reason(load_dir(tmp.path(), Cifar100Labels::Fine).unwrap_err());
        assert_eq!(path, batch);
        assert_eq!(why, "record 2: label 10 is out of range (expected < 10)");

        let mut record = vec![19u8, 100];
        record.extend([0u8; PIXELS]);
        let (_, why) = reason(parse(&record, Path::new("t"), Kind::Cifar100(Cifar100Labels::Coarse)).unwrap_err());
        assert_eq!(why, "record 0: fine label 100 is out of range (expected < 100)");
        let (_, why) = reason(parse(&[], Path::new("t"), Kind::Cifar10).unwrap_err());
        assert!(why.starts_with("0 bytes is not a whole, non-zero number"), "{why}");
    }

    /// Full-size CIFAR-10 (50,000 + 10,000 records, 184 MB) written then loaded, timed,
    /// with the process's peak memory. Run alone, so the peak is this test's:
    /// `cargo test --release -p wdml-node data::cifar::tests::full_size -- --ignored --nocapture`
    #[test]
    #[ignore = "writes 184 MB; a measurement, run by hand"]
    fn full_size() {
        let tmp = TempDir::new("cifar-full");
        // One batch at a time, so writing holds 30 MB, not the whole set.
        let files = CIFAR10_TRAIN.iter().chain([&CIFAR10_TEST]);
        for (seed, name) in files.enumerate() {
            let bytes = encode(&samples(10_000, 10, seed), Kind::Cifar10, None).unwrap();
            std::fs::write(tmp.path().join(name), bytes).unwrap();
        }
        let began = std::time::Instant::now();
        let loaded = load_dir(tmp.path(), Cifar100Labels::Fine).unwrap();
        let took = began.elapsed();
        assert_eq!(
            (loaded.train.len(), loaded.test.as_ref().unwrap().len()),
            (50_000, 10_000)
        );
        println!(
            "MEASURED cifar-10 full size: load {took:.2?}, {}",
            crate::data::bounds::test_support::peak_memory()
        );
    }
}
