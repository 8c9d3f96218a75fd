//! The limits every dataset loader (CIFAR, NumPy, CSV) holds to, and the helpers that
//! enforce them: a file, a zip entry or a header is untrusted input, so nothing is
//! allocated from a size it declares before that size is checked against these caps
//! and, for a plain file, against the file's real length.

use std::fs;
use std::io::Read;
use std::path::Path;

use crate::{Error, Result};

/// At most 2^31 values in one set (train or test): 2 GiB as u8, 8 GiB as f32. The full
/// CIFAR-10 training set is 153.6 M values, 7 % of it.
pub const MAX_VALUES: u64 = 1 << 31;

/// At most 4 GiB in one file, or inflated from one zip entry: enough for every set of
/// [`MAX_VALUES`] u8 values and its labels, and far past CIFAR-100's 150 MB `train.bin`.
pub const MAX_FILE_BYTES: u64 = 1 << 32;

/// `Error::Data` for `path`.
pub fn error(path: &Path, reason: impl Into<String>) -> Error {
    Error::Data {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// A whole file, after checking its length against [`MAX_FILE_BYTES`] (read from the
/// file system, so a file that is not there or not regular is named, not allocated for).
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    let len = file_len(path)?;
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    fs::File::open(path)
        .and_then(|file| file.take(len).read_to_end(&mut bytes))
        .map_err(|e| error(path, format!("cannot read: {e}")))?;
    Ok(bytes)
}

/// The length of a regular file, refused past [`MAX_FILE_BYTES`].
pub fn file_len(path: &Path) -> Result<u64> {
    let meta = fs::metadata(path).map_err(|e| error(path, format!("cannot read: {e}")))?;
    if !meta.is_file() {
        return Err(error(path, "not a regular file"));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(error(
            path,
            format!(
                "{} bytes: larger than the {MAX_FILE_BYTES}-byte limit of one dataset file",
                meta.len()
            ),
        ));
    }
    Ok(meta.len())
}

/// Checks that `values` (samples × values per sample, already multiplied without
/// overflow by the caller) fit in [`MAX_VALUES`]; `what` says whose they are.
pub fn check_values(path: &Path, values: u64, what: &str) -> Result<()> {
    if values > MAX_VALUES {
        return Err(error(
            path,
            format!("{what}: {values} values, more than the limit of {MAX_VALUES} per set"),
        ));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod test_support {
    //! What the loaders' tests share: the process's peak memory, and scikit-learn's
    //! real datasets exported by `scripts/datasets/sklearn_export.py`.

    use std::path::{Path, PathBuf};
    use std::sync::OnceLock;

    use crate::data::raw::Values;

    /// The values as f32, or a panic naming what they are (`Values` has no `Debug`).
    pub fn f32s(values: &Values) -> &[f32] {
        match values {
            Values::F32(v) => v,
            Values::U8(_) => panic!("u8 values where f32 were expected"),
        }
    }

    /// The values as u8, or a panic naming what they are.
    pub fn u8s(values: &Values) -> &[u8] {
        match values {
            Values::U8(v) => v,
            Values::F32(_) => panic!("f32 values where u8 were expected"),
        }
    }

    /// `VmHWM` (peak resident memory) of this process, as `/proc` states it.
    pub fn peak_memory() -> String {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .map_or("peak memory unknown".into(), |l| {
                l.split_whitespace().skip(1).collect::<Vec<_>>().join(" ") + " peak RSS"
            })
    }

    /// The directory the export script wrote (`digits.npz`, `breast_cancer/`, `wine/`):
    /// `WDML_SKLEARN_DATA` if set, else a fresh export by Debian's Python (which ships
    /// scikit-learn as `python3-sklearn`), once per test process. `None`, after a loud
    /// `SKIPPED`, when neither is there; `WDML_REQUIRE_ALL=1` (CI) fails instead.
    pub fn sklearn_data(test: &str) -> Option<&'static Path> {
        static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
        let dir = DIR.get_or_init(|| {
            if let Some(dir) = std::env::var_os("WDML_SKLEARN_DATA") {
                return Ok(PathBuf::from(dir));
            }
            let out = std::env::temp_dir().join(format!("wdml-sklearn-{}", std::process::id()));
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/datasets/sklearn_export.py");
            let status = std::process::Command::new("/usr/bin/python3")
                .arg(&script)
                .arg(&out)
                .output();
            match status {
                Ok(o) if o.status.success() => Ok(out),
                Ok(o) => Err(String::from_utf8_lossy(&o.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
                    .to_string()),
                Err(e) => Err(format!("/usr/bin/python3: {e}")),
            }
        });
        match dir {
            Ok(dir) => Some(dir),
            Err(why) => {
                let install = "apt-get install python3-sklearn, or set WDML_SKLEARN_DATA to an export";
                assert!(
                    std::env::var_os("WDML_REQUIRE_ALL").is_none_or(|v| v != "1"),
                    "{test} needs scikit-learn's datasets ({why}), and WDML_REQUIRE_ALL=1 requires every test to run: {install}"
                );
                eprintln!("SKIPPED: {test}: scikit-learn's datasets could not be exported ({why}): {install}");
                None
            }
        }
    }
}
