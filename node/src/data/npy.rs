//! NumPy arrays: a `.npz` archive (`np.savez`, or `np.savez_compressed`: deflate) or a
//! directory of `.npy` files, holding Keras's four names: `x_train`, `y_train` and,
//! optionally together, `x_test`, `y_test` (without them `test` is `None`).
//!
//! [`load`] takes a `.npz` file, a directory holding exactly one `.npz`, or a directory
//! holding `x_train.npy` and `y_train.npy` (and maybe `x_test.npy`, `y_test.npy`).
//!
//! **Values** (`x_*`): `uint8` stays u8 (pixels, divided by 255 later); every other
//! number type — `bool`, `int8`…`int64`, `uint16`…`uint64`, `float16`, `float32`,
//! `float64`, either byte order — becomes f32, and a value that is not finite as an f32
//! (NaN, ±inf, or a float64 beyond f32's range) is refused, naming its sample.
//! Structured, complex, string, date and object (pickled) arrays are refused.
//!
//! **Shapes** of `x` (the first axis counts samples, `n`):
//! - `(n, D)` → a feature vector `[D]`;
//! - `(n, H, W)` → a one-channel image `[1, H, W]`;
//! - `(n, a, b, c)` → if `c` is 1, 3 or 4 and `a`, `b` are both > 4 it is channels-last
//!   (Keras's NHWC, e.g. CIFAR from `keras.datasets`: `(50000, 32, 32, 3)`) and is
//!   transposed to `[c, a, b]`; otherwise it is already channels-first `[a, b, c]`
//!   (PyTorch's NCHW, e.g. `(n, 3, 32, 32)`);
//! - anything else is refused.
//!
//! `train` and `test` must have the same sample shape and both be u8 or both not.
//! Fortran-order arrays are refused (`np.ascontiguousarray` fixes them) unless at most
//! one axis is longer than 1, where both orders are the same bytes.
//!
//! **Labels** (`y_*`): shape `(n,)` or `(n, 1)`, any integer or bool type, or a float
//! type holding whole numbers; each in `0..=255`, else the error names its index and
//! value. `classes` is `None`: it follows from the labels.
//!
//! **Why npyz** (over ndarray-npy): it reads an array whose element type is known only
//! at run time (we dispatch on the header's dtype, then read typed values), while
//! ndarray-npy reads into an `ndarray::Array<T, _>` whose `T` is fixed at compile time
//! (so one trial read per type) and would add ndarray 0.17 and a second zip to the build.
//! npyz's own `npz` feature is not used: it pulls zip 0.6 with all its default codecs
//! (bzip2 and zstd in C, AES); the archive is read with zip (deflate only) instead.
//!
//! **Bounds**: the header is checked before npyz parses it (at most 10,000 bytes, as
//! numpy's own `max_header_size`; at most 8 levels of brackets; a shape whose product fits,
//! within [`bounds::MAX_VALUES`], and whose bytes fit the file or, in a zip entry,
//! [`bounds::MAX_FILE_BYTES`]). The data is then read up to the declared size plus one
//! byte, so an entry that inflates past its header is refused after one byte, not read.

use std::fs;
use std::io::{self, Read, Seek};
use std::path::{Path, PathBuf};

use npyz::{Deserialize, NpyFile, NpyHeader, TypeChar, TypeStr};
use py_literal::Value as Py;

use super::bounds::{self, error};
use super::raw::{Loaded, Samples, Values};
use crate::Result;

/// numpy's own default `max_header_size`: longer headers are refused by numpy too.
const MAX_HEADER_BYTES: usize = 10_000;
/// A dtype-and-shape dict nests 2 deep; anything much deeper is not a numpy header.
const MAX_NESTING: usize = 8;
const NAMES: [&str; 4] = ["x_train", "y_train", "x_test", "y_test"];

/// Whether `path` is a `.npz` file, or a directory holding a `.npz` or `x_train.npy`.
pub fn is_numpy(path: &Path) -> bool {
    if path.is_file() {
        return has_extension(path, "npz");
    }
    path.join("x_train.npy").is_file() || npz_files(path).is_ok_and(|files| !files.is_empty())
}

/// Loads a `.npz` file, a directory holding one `.npz`, or a directory holding
/// `x_train.npy`, `y_train.npy` and optionally `x_test.npy`, `y_test.npy`.
pub fn load(path: &Path) -> Result<Loaded> {
    if path.is_file() {
        if has_extension(path, "npy") {
            return Err(error(
                path,
                "one .npy holds one array: give the directory holding x_train.npy and y_train.npy",
            ));
        }
        let file = fs::File::open(path).map_err(|e| error(path, format!("cannot read: {e}")))?;
        bounds::file_len(path)?;
        return read_npz(io::BufReader::new(file), path);
    }
    if !path.is_dir() {
        return Err(error(path, "neither a .npz file nor a directory"));
    }
    let npz = npz_files(path).map_err(|e| error(path, format!("cannot list: {e}")))?;
    match npz.as_slice() {
        [one] => return load(one),
        [] => {}
        several => {
            let names: Vec<_> = several.iter().map(|p| p.display().to_string()).collect();
            return Err(error(
                path,
                format!("holds several .npz files ({}): name one", names.join(", ")),
            ));
        }
    }
    let [x_train, y_train, x_test, y_test] =
        NAMES.map(|name| Some(path.join(format!("{name}.npy"))).filter(|p| p.is_file()));
    let (Some(x_train), Some(y_train)) = (x_train, y_train) else {
        return Err(error(
            path,
            "no .npz file, and not both `x_train.npy` and `y_train.npy`: expected Keras's names",
        ));
    };
    let array = |p: &Path| -> Result<Array> {
        let len = bounds::file_len(p)?;
        let file = fs::File::open(p).map_err(|e| error(p, format!("cannot read: {e}")))?;
        Array::read(&mut io::BufReader::new(file), &Source::file(p), Some(len))
    };
    let train = samples(array(&x_train)?, array(&y_train)?)?;
    let test = match (x_test, y_test) {
        (Some(x), Some(y)) => Some(samples(array(&x)?, array(&y)?)?),
        (None, None) => None,
        (Some(_), None) => return Err(error(path, "has `x_test.npy` but no `y_test.npy`")),
        (None, Some(_)) => return Err(error(path, "has `y_test.npy` but no `x_test.npy`")),
    };
    loaded(train, test, path)
}

/// Parses a `.npz` archive held in memory (`source` names it): for tests and fuzzing.
pub fn parse_npz(bytes: &[u8], source: &Path) -> Result<Loaded> {
    read_npz(io::Cursor::new(bytes), source)
}

/// Parses an `x` and a `y` `.npy` file held in memory: for tests and fuzzing.
pub fn parse_set(x: &[u8], x_source: &Path, y: &[u8], y_source: &Path) -> Result<Samples> {
    let array = |bytes: &[u8], path| Array::read(&mut &bytes[..], &Source::file(path), Some(bytes.len() as u64));
    samples(array(x, x_source)?, array(y, y_source)?)
}

fn read_npz<R: Read + Seek>(reader: R, path: &Path) -> Result<Loaded> {
    let mut zip =
        zip::ZipArchive::new(reader).map_err(|e| error(path, format!("not a readable .npz (zip) archive: {e}")))?;
    let mut arrays = NAMES.map(|_| None);
    for (slot, name) in arrays.iter_mut().zip(NAMES) {
        let entry = format!("{name}.npy");
        let source = Source {
            path: path.to_path_buf(),
            entry: Some(entry.clone()),
        };
        match zip.by_name(&entry) {
            Ok(mut file) => *slot = Some(Array::read(&mut file, &source, None)?),
            Err(zip::result::ZipError::FileNotFound) => {}
            Err(e) => return Err(source.error(format!("cannot read from the archive: {e}"))),
        }
    }
    let [x_train, y_train, x_test, y_test] = arrays;
    let (Some(x_train), Some(y_train)) = (x_train, y_train) else {
        let names: Vec<String> = zip
            .file_names()
            .map(|n| n.map(|n| n.into_owned()).unwrap_or_default())
            .take(20)
            .collect();
        return Err(error(
            path,
            format!("needs `x_train.npy` and `y_train.npy` (Keras's names); it holds {names:?}"),
        ));
    };
    let train = samples(x_train, y_train)?;
    let test = match (x_test, y_test) {
        (Some(x), Some(y)) => Some(samples(x, y)?),
        (None, None) => None,
        (Some(_), None) => return Err(error(path, "has `x_test` but no `y_test`")),
        (None, Some(_)) => return Err(error(path, "has `y_test` but no `x_test`")),
    };
    loaded(train, test, path)
}

/// Checks that train and test agree, and the invariants of [`Samples::check`].
fn loaded(train: Samples, test: Option<Samples>, path: &Path) -> Result<Loaded> {
    train.check(path)?;
    if let Some(test) = &test {
        test.check(path)?;
        if test.shape != train.shape {
            return Err(error(
                path,
                format!(
                    "training samples are {:?} but test samples are {:?}",
                    train.shape, test.shape
                ),
            ));
        }
        if matches!(train.values, Values::U8(_)) != matches!(test.values, Values::U8(_)) {
            return Err(error(
                path,
                "x_train and x_test must both be uint8 or both be another number type",
            ));
        }
    }
    Ok(Loaded {
        train,
        test,
        classes: None,
    })
}

fn has_extension(path: &Path, ext: &str) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case(ext))
}

fn npz_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && has_extension(p, "npz"))
        .collect();
    files.sort();
    Ok(files)
}

/// Where an array comes from: a file, or an entry of a `.npz` file.
#[derive(Clone)]
struct Source {
    path: PathBuf,
    entry: Option<String>,
}

impl Source {
    fn file(path: &Path) -> Self {
        Source {
            path: path.to_path_buf(),
            entry: None,
        }
    }

    fn error(&self, reason: impl Into<String>) -> crate::Error {
        match &self.entry {
            Some(entry) => error(&self.path, format!("`{entry}`: {}", reason.into())),
            None => error(&self.path, reason),
        }
    }

    /// The array's name: the entry or the file name, without `.npy`.
    fn name(&self) -> String {
        let name = match &self.entry {
            Some(entry) => entry.clone(),
            None => self.path.file_name().unwrap_or_default().to_string_lossy().into_owned(),
        };
        name.trim_end_matches(".npy").to_string()
    }
}

/// One array read whole: its checked header and its data bytes.
struct Array {
    header: NpyHeader,
    shape: Vec<usize>,
    dtype: TypeStr,
    body: Vec<u8>,
    name: String,
    source: Source,
}

/// One value, as the array's type holds it.
#[derive(Clone, Copy)]
enum Number {
    Int(i128),
    Float(f64),
}

impl Array {
    /// Reads a `.npy` stream; `known_len` is the stream's whole length when known (a
    /// file: a header promising more is refused before anything is allocated).
    fn read(reader: &mut dyn Read, source: &Source, known_len: Option<u64>) -> Result<Array> {
        let truncated = |what: &str| source.error(format!("truncated: ends inside the {what}"));
        let mut prefix = vec![0u8; 8];
        reader.read_exact(&mut prefix).map_err(|_| truncated("magic number"))?;
        if &prefix[..6] != b"\x93NUMPY" {
            return Err(source.error("not a .npy array: no `\\x93NUMPY` magic number"));
        }
        let header_len = match prefix[6] {
            1 => {
                let mut len = [0u8; 2];
                reader.read_exact(&mut len).map_err(|_| truncated("header length"))?;
                prefix.extend_from_slice(&len);
                usize::from(u16::from_le_bytes(len))
            }
            2 | 3 => {
                let mut len = [0u8; 4];
                reader.read_exact(&mut len).map_err(|_| truncated("header length"))?;
                prefix.extend_from_slice(&len);
                usize::try_from(u32::from_le_bytes(len)).unwrap_or(usize::MAX)
            }
            v => return Err(source.error(format!("unknown .npy format version {v}.{}", prefix[7]))),
        };
        if header_len > MAX_HEADER_BYTES {
            return Err(source.error(format!(
                "header of {header_len} bytes, longer than numpy's own limit of {MAX_HEADER_BYTES}"
            )));
        }
        let start = prefix.len();
        prefix.resize(start + header_len, 0);
        reader
            .read_exact(&mut prefix[start..])
            .map_err(|_| truncated("header"))?;
        let (shape, dtype, fortran) =
            check_header(&prefix[start..]).map_err(|why| source.error(format!("header: {why}")))?;

        let values = shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d as u64));
        let item = dtype.num_bytes().unwrap_or(usize::MAX) as u64;
        let bytes = values.and_then(|v| v.checked_mul(item));
        let (Some(values), Some(bytes)) = (values, bytes) else {
            return Err(source.error(format!("shape {shape:?} of {dtype} overflows")));
        };
        bounds::check_values(&source.path, values, &format!("{} of shape {shape:?}", source.name()))?;
        let room = known_len.map_or(bounds::MAX_FILE_BYTES, |len| len.saturating_sub(prefix.len() as u64));
        if bytes > room {
            return Err(source.error(format!(
                "shape {shape:?} of {dtype} needs {bytes} bytes, {}",
                match known_len {
                    Some(_) => format!("but only {room} follow the header"),
                    None => format!("more than the {room}-byte limit"),
                }
            )));
        }
        if fortran && shape.iter().filter(|&&d| d > 1).count() > 1 {
            return Err(source.error(format!(
                "shape {shape:?} in Fortran order: not supported, save it with np.ascontiguousarray"
            )));
        }
        // Checked above: npyz can now parse the same header without overflowing.
        let header = NpyHeader::from_reader(&prefix[..]).map_err(|e| source.error(format!("header: {e}")))?;

        // A zip entry's sizes are untrusted: start at most 64 MiB, grow as bytes arrive.
        let mut body = Vec::with_capacity(bytes.min(known_len.unwrap_or(1 << 26)) as usize);
        reader
            .take(bytes + 1)
            .read_to_end(&mut body)
            .map_err(|e| source.error(format!("cannot read the data: {e}")))?;
        if body.len() as u64 != bytes {
            let got = body.len();
            return Err(source.error(if got as u64 > bytes {
                format!("holds more than its header declares: bytes follow the {bytes} of shape {shape:?} of {dtype}")
            } else {
                format!("truncated: shape {shape:?} of {dtype} needs {bytes} bytes but only {got} follow the header")
            }));
        }
        Ok(Array {
            header,
            shape,
            dtype,
            body,
            name: source.name(),
            source: source.clone(),
        })
    }

    /// An error about this array's values, naming its file (and entry) and the array.
    fn error(&self, reason: impl std::fmt::Display) -> crate::Error {
        self.source.error(format!("{}: {reason}", self.name))
    }

    /// Calls `f` with each value in file order, read as the dtype says.
    fn each(&self, f: impl FnMut(usize, Number) -> Result<()>) -> Result<()> {
        use Number::{Float, Int};
        let size = self.dtype.size_field();
        match (self.dtype.type_char(), size) {
            (TypeChar::Bool, 1) => self.typed(f, |v: bool| Int(i128::from(v))),
            (TypeChar::Int, 1) => self.typed(f, |v: i8| Int(v.into())),
            (TypeChar::Int, 2) => self.typed(f, |v: i16| Int(v.into())),
            (TypeChar::Int, 4) => self.typed(f, |v: i32| Int(v.into())),
            (TypeChar::Int, 8) => self.typed(f, |v: i64| Int(v.into())),
            (TypeChar::Uint, 1) => self.typed(f, |v: u8| Int(v.into())),
            (TypeChar::Uint, 2) => self.typed(f, |v: u16| Int(v.into())),
            (TypeChar::Uint, 4) => self.typed(f, |v: u32| Int(v.into())),
            (TypeChar::Uint, 8) => self.typed(f, |v: u64| Int(v.into())),
            (TypeChar::Float, 2) => self.typed(f, |v: half::f16| Float(v.into())),
            (TypeChar::Float, 4) => self.typed(f, |v: f32| Float(v.into())),
            (TypeChar::Float, 8) => self.typed(f, Float),
            _ => Err(self.error(format!("dtype `{}` is not supported", self.dtype))),
        }
    }

    fn typed<T: Deserialize>(
        &self,
        mut f: impl FnMut(usize, Number) -> Result<()>,
        to: impl Fn(T) -> Number,
    ) -> Result<()> {
        let file = NpyFile::with_header(self.header.clone(), &self.body[..]);
        let values = file.data::<T>().map_err(|e| self.error(e))?;
        for (i, v) in values.enumerate() {
            f(i, to(v.map_err(|e| self.error(e))?))?;
        }
        Ok(())
    }
}

/// The header dict's shape, dtype and Fortran flag, checked as this loader needs them
/// (so that npyz, parsing it next, never sees a shape whose product overflows).
fn check_header(text: &[u8]) -> std::result::Result<(Vec<usize>, TypeStr, bool), String> {
    let text = std::str::from_utf8(text).map_err(|_| "not UTF-8".to_string())?;
    let mut depth = 0usize;
    for c in text.chars() {
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        if depth > MAX_NESTING {
            return Err(format!("brackets nest deeper than {MAX_NESTING}: not a numpy header"));
        }
    }
    let dict = match text.trim().parse::<Py>() {
        Ok(Py::Dict(dict)) => dict,
        Ok(_) => return Err("not a dict".into()),
        Err(e) => {
            // pest's message is a multi-line drawing: keep its position and its verdict.
            let e = e.to_string();
            let at = e
                .split("--> ")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .unwrap_or("?");
            let verdict = e.lines().last().unwrap_or("").trim().trim_start_matches("= ");
            return Err(format!("not a Python literal (at {at}: {verdict})"));
        }
    };
    let get = |key: &str| {
        dict.iter()
            .find(|(k, _)| matches!(k, Py::String(s) if s == key))
            .map(|(_, v)| v)
            .ok_or_else(|| format!("no `{key}`"))
    };
    let dtype = match get("descr")? {
        Py::String(descr) => descr.parse::<TypeStr>().map_err(|e| format!("dtype `{descr}`: {e}"))?,
        other => {
            return Err(format!(
                "dtype {other}: structured arrays are not supported, numbers only"
            ));
        }
    };
    let supported = matches!(
        (dtype.type_char(), dtype.size_field()),
        (TypeChar::Bool, 1) | (TypeChar::Int | TypeChar::Uint, 1 | 2 | 4 | 8) | (TypeChar::Float, 2 | 4 | 8)
    );
    if !supported {
        return Err(format!(
            "dtype `{dtype}` is not supported: bool, int8…int64, uint8…uint64, float16, float32 or float64"
        ));
    }
    let Py::Boolean(fortran) = *get("fortran_order")? else {
        return Err("`fortran_order` is not True or False".into());
    };
    let (Py::Tuple(dims) | Py::List(dims)) = get("shape")? else {
        return Err("`shape` is not a tuple".into());
    };
    let shape = dims
        .iter()
        .map(|d| match d {
            Py::Integer(d) => usize::try_from(d).ok().filter(|&d| d > 0),
            _ => None,
        })
        .collect::<Option<Vec<usize>>>()
        .ok_or_else(|| {
            format!(
                "shape {}: every dimension must be a whole number > 0",
                Py::Tuple(dims.clone())
            )
        })?;
    if shape.is_empty() {
        return Err("a scalar (shape ()): expected an array of samples".into());
    }
    Ok((shape, dtype, fortran))
}

/// The samples of `x` and the labels of `y`.
fn samples(x: Array, y: Array) -> Result<Samples> {
    let n = x.shape[0];
    let (sample, channels_last) = match x.shape[1..] {
        [d] => (vec![d], false),
        [h, w] => (vec![1, h, w], false),
        [a, b, c] if matches!(c, 1 | 3 | 4) && a > 4 && b > 4 => (vec![c, a, b], true),
        [a, b, c] => (vec![a, b, c], false),
        _ => {
            return Err(x.error(format!(
                "shape {:?}: expected (n, features), (n, height, width) or (n, a, b, c) images",
                x.shape
            )));
        }
    };
    let labels = labels(&y)?;
    if labels.len() != n {
        return Err(y.error(format!("{} labels but {} holds {n} samples", labels.len(), x.name)));
    }
    let per = sample.iter().product::<usize>();
    let values = if (x.dtype.type_char(), x.dtype.size_field()) == (TypeChar::Uint, 1) {
        Values::U8(x.body)
    } else {
        let mut values = Vec::with_capacity(n * per);
        x.each(|i, v| {
            let value = match v {
                Number::Int(v) => v as f32,
                Number::Float(v) => v as f32,
            };
            if !value.is_finite() {
                let shown = match v {
                    Number::Int(v) => v.to_string(),
                    Number::Float(v) => format!("{v:?}"),
                };
                return Err(x.error(format!(
                    "sample {} (value {} of it) is {shown}: values must be finite f32",
                    i / per,
                    i % per
                )));
            }
            values.push(value);
            Ok(())
        })?;
        Values::F32(values)
    };
    let values = if channels_last {
        let [c, h, w] = [sample[0], sample[1], sample[2]];
        match values {
            Values::U8(v) => Values::U8(to_channels_first(v, c, h, w)),
            Values::F32(v) => Values::F32(to_channels_first(v, c, h, w)),
        }
    } else {
        values
    };
    Ok(Samples {
        shape: sample,
        values,
        labels,
    })
}

/// `(n, h, w, c)` samples rearranged in place to `(n, c, h, w)`, one sample at a time
/// (a scratch of one sample, not a second copy of the set).
fn to_channels_first<T: Copy>(mut values: Vec<T>, c: usize, h: usize, w: usize) -> Vec<T> {
    let per = c * h * w;
    let mut scratch = Vec::with_capacity(per);
    for sample in values.chunks_exact_mut(per) {
        scratch.clear();
        scratch.extend_from_slice(sample);
        for (pixel, channels) in scratch.chunks_exact(c).enumerate() {
            for (k, &v) in channels.iter().enumerate() {
                sample[k * h * w + pixel] = v;
            }
        }
    }
    values
}

/// Labels of shape `(n,)` or `(n, 1)`, each a whole number in `0..=255`.
fn labels(y: &Array) -> Result<Vec<u8>> {
    if !matches!(y.shape[..], [_] | [_, 1]) {
        return Err(y.error(format!("labels of shape {:?}: expected (n,) or (n, 1)", y.shape)));
    }
    let mut labels = Vec::with_capacity(y.shape[0]);
    y.each(|i, v| {
        let label = match v {
            Number::Int(v) => u8::try_from(v).ok(),
            Number::Float(v) => (v.fract() == 0.0 && (0.0..=255.0).contains(&v)).then_some(v as u8),
        };
        let Some(label) = label else {
            let shown = match v {
                Number::Int(v) => v.to_string(),
                Number::Float(v) => format!("{v:?}"),
            };
            return Err(y.error(format!(
                "label {shown} at index {i}: labels must be whole numbers in 0..=255"
            )));
        };
        labels.push(label);
        Ok(())
    })?;
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::data::bounds::test_support::{f32s, peak_memory, sklearn_data};
    use crate::data::test_util::TempDir;

    /// A version-1 `.npy` file: `descr` (e.g. `<f4`), `shape` as Python writes it (e.g.
    /// `(2, 3)`), the raw data bytes.
    fn npy(descr: &str, shape: &str, fortran: bool, body: &[u8]) -> Vec<u8> {
        let order = if fortran { "True" } else { "False" };
        npy_with(
            &format!("{{'descr': '{descr}', 'fortran_order': {order}, 'shape': {shape}, }}"),
            body,
        )
    }

    /// A version-1 `.npy` file of any header text.
    fn npy_with(header: &str, body: &[u8]) -> Vec<u8> {
        let mut header = header.to_string();
        // numpy pads with spaces to a multiple of 64 bytes (magic and length included).
        while !(10 + header.len() + 1).is_multiple_of(64) {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(body);
        out
    }

    fn le_f32s(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    /// A `.npz` (deflated, as `np.savez_compressed` writes) of `(name, npy bytes)`.
    fn npz(arrays: &[(&str, &[u8])]) -> Vec<u8> {
        let mut zip = zip::ZipWriter::new(io::Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        for (name, bytes) in arrays {
            zip.start_file(format!("{name}.npy"), options).unwrap();
            zip.write_all(bytes).unwrap();
        }
        zip.finish().unwrap().into_inner()
    }

    fn reason(err: crate::Error) -> (PathBuf, String) {
        match err {
            crate::Error::Data { path, reason } => (path, reason),
            other => panic!("expected a data error, got {other}"),
        }
    }

    #[test]
    fn npz_of_channels_last_u8_images_is_transposed_to_channels_first() {
        // 2 images 6×5 with 3 channels; pixel (i, h, w, c) holds a value unique to it.
        let value = |i: usize, h: usize, w: usize, c: usize| (i * 90 + h * 15 + w * 3 + c) as u8;
        let mut nhwc = Vec::new();
        for i in 0..2 {
            for h in 0..6 {
                for w in 0..5 {
                    nhwc.extend((0..3).map(|c| value(i, h, w, c)));
                }
            }
        }
        let x = npy("|u1", "(2, 6, 5, 3)", false, &nhwc);
        let y = npy("<i8", "(2,)", false, &[7i64.to_le_bytes(), 3i64.to_le_bytes()].concat());
        let bytes = npz(&[("x_train", &x), ("y_train", &y), ("x_test", &x), ("y_test", &y)]);
        let loaded = parse_npz(&bytes, Path::new("set.npz")).unwrap();
        assert_eq!(loaded.classes, None);
        let test = loaded.test.unwrap();
        assert_eq!(test, loaded.train);
        assert_eq!(loaded.train.shape, vec![3, 6, 5]);
        assert_eq!(loaded.train.labels, vec![7, 3]);
        let Values::U8(v) = &loaded.train.values else {
            panic!("u8 stays u8")
        };
        for (i, c, h, w) in [(0, 0, 0, 0), (0, 2, 1, 4), (1, 1, 5, 0), (1, 2, 5, 4)] {
            assert_eq!(
                v[i * 90 + c * 30 + h * 5 + w],
                value(i, h, w, c),
                "({i}, {c}, {h}, {w})"
            );
        }
    }

    #[test]
    fn shapes_follow_the_documented_rule() {
        let cases = [
            ("(2, 7)", vec![7]),
            ("(2, 4, 5)", vec![1, 4, 5]),
            ("(2, 3, 8, 8)", vec![3, 8, 8]),
            ("(2, 8, 8, 1)", vec![1, 8, 8]),
            ("(2, 8, 8, 4)", vec![4, 8, 8]),
            ("(2, 4, 8, 3)", vec![4, 8, 3]),
            ("(2, 8, 8, 5)", vec![8, 8, 5]),
        ];
        let y = npy("|u1", "(2, 1)", false, &[0, 1]);
        for (shape, expected) in cases {
            let n: usize = expected.iter().product::<usize>() * 2;
            let x = npy("<f4", shape, false, &le_f32s(&vec![0.5; n]));
            let set = parse_set(&x, Path::new("x"), &y, Path::new("y")).unwrap();
            assert_eq!(set.shape, expected, "{shape}");
            assert_eq!(f32s(&set.values), vec![0.5; n]);
        }
        for shape in ["(2,)", "(2, 2, 2, 2, 2)"] {
            let x = npy(
                "<f4",
                shape,
                false,
                &le_f32s(&[0.0; 32][..if shape == "(2,)" { 2 } else { 32 }]),
            );
            let (_, why) = reason(parse_set(&x, Path::new("x"), &y, Path::new("y")).unwrap_err());
            assert!(why.contains("expected (n, features)"), "{shape}: {why}");
        }
    }

    #[test]
    fn every_number_type_becomes_f32_and_labels_any_whole_number() {
        let y = npy(
            "<f8",
            "(3,)",
            false,
            &[2.0f64, 0.0, 255.0]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<u8>>(),
        );
        let cases: [(&str, Vec<u8>, [f32; 3]); 6] = [
            (
                ">i2",
                [-300i16, 0, 7].iter().flat_map(|v| v.to_be_bytes()).collect(),
                [-300.0, 0.0, 7.0],
            ),
            (
                "<u8",
                [1u64 << 40, 0, 9].iter().flat_map(|v| v.to_le_bytes()).collect(),
                [(1u64 << 40) as f32, 0.0, 9.0],
            ),
            ("|i1", vec![0x80, 0, 0x7f], [-128.0, 0.0, 127.0]),
            ("|b1", vec![1, 0, 1], [1.0, 0.0, 1.0]),
            (
                "<f2",
                [
                    half::f16::from_f32(0.5),
                    half::f16::from_f32(-2.0),
                    half::f16::from_f32(65504.0),
                ]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
                [0.5, -2.0, 65504.0],
            ),
            (
                "<f8",
                [0.25f64, -1e30, 3.0].iter().flat_map(|v| v.to_le_bytes()).collect(),
                [0.25, -1e30, 3.0],
            ),
        ];
        for (descr, body, expected) in cases {
            let x = npy(descr, "(3, 1)", false, &body);
            let set = parse_set(&x, Path::new("x"), &y, Path::new("y")).unwrap();
            assert_eq!(f32s(&set.values), expected, "{descr}");
            assert_eq!(set.labels, vec![2, 0, 255]);
        }
    }

    #[test]
    fn errors_name_the_file_the_array_and_the_place() {
        let x = |values: &[f32]| npy("<f4", &format!("({}, 1)", values.len()), false, &le_f32s(values));
        let y = |labels: &[i32]| {
            let body: Vec<u8> = labels.iter().flat_map(|v| v.to_le_bytes()).collect();
            npy("<i4", &format!("({},)", labels.len()), false, &body)
        };
        let set = |x: &[u8], y: &[u8]| {
            reason(parse_set(x, Path::new("d/x_train.npy"), y, Path::new("d/y_train.npy")).unwrap_err())
        };

        let (path, why) = set(&x(&[1.0, f32::NAN]), &y(&[0, 1]));
        assert_eq!(path, Path::new("d/x_train.npy"));
        assert_eq!(
            why,
            "x_train: sample 1 (value 0 of it) is NaN: values must be finite f32"
        );
        let f64_big = npy("<f8", "(1, 1)", false, &1e300f64.to_le_bytes());
        let (_, why) = set(&f64_big, &y(&[0]));
        assert!(why.contains("sample 0 (value 0 of it) is 1e300"), "{why}");
        let (path, why) = set(&x(&[1.0, 2.0]), &y(&[0, 256]));
        assert_eq!(path, Path::new("d/y_train.npy"));
        assert_eq!(
            why,
            "y_train: label 256 at index 1: labels must be whole numbers in 0..=255"
        );
        let (_, why) = set(&x(&[1.0]), &y(&[-1]));
        assert!(why.contains("label -1 at index 0"), "{why}");
        let halves = npy("<f4", "(2,)", false, &le_f32s(&[1.0, 1.5]));
        let (_, why) = set(&x(&[1.0, 2.0]), &halves);
        assert!(why.contains("label 1.5 at index 1"), "{why}");
        let (_, why) = set(&x(&[1.0, 2.0]), &y(&[0, 1, 2]));
        assert_eq!(why, "y_train: 3 labels but x_train holds 2 samples");
        let (_, why) = set(&x(&[1.0, 2.0]), &npy("<i4", "(2, 2)", false, &[0; 16]));
        assert!(why.contains("labels of shape [2, 2]: expected (n,) or (n, 1)"), "{why}");

        let fortran = npy("<f4", "(2, 3)", true, &le_f32s(&[0.0; 6]));
        let (_, why) = set(&fortran, &y(&[0, 1]));
        assert!(why.contains("Fortran order: not supported"), "{why}");
        // One axis longer than 1: both orders are the same bytes.
        let column = npy("<i4", "(2,)", true, &[0i32.to_le_bytes(), 1i32.to_le_bytes()].concat());
        assert!(parse_set(&x(&[1.0, 2.0]), Path::new("x"), &column, Path::new("y")).is_ok());

        let mut truncated = x(&[1.0, 2.0]);
        truncated.pop();
        let (_, why) = set(&truncated, &y(&[0, 1]));
        assert!(why.contains("needs 8 bytes, but only 7 follow the header"), "{why}");
        let mut trailing = x(&[1.0]);
        trailing.push(0);
        let (_, why) = set(&trailing, &y(&[0]));
        assert!(why.contains("holds more than its header declares"), "{why}");
        // 2^40 values declared in a small file: refused before any allocation.
        let huge = npy("<f4", "(1048576, 1048576)", false, &[]);
        let (_, why) = set(&huge, &y(&[0]));
        assert!(why.contains("more than the limit of 2147483648 per set"), "{why}");
        let overflow = npy("<f4", "(4294967296, 4294967296, 4294967296)", false, &[]);
        assert!(set(&overflow, &y(&[0])).1.contains("overflows"));
        for (bad, says) in [
            (npy("<c8", "(1, 1)", false, &[0; 8]), "dtype `<c8` is not supported"),
            (npy("<U3", "(1, 1)", false, &[0; 12]), "dtype `<U3` is not supported"),
            (npy("|O", "(1, 1)", false, &[0; 8]), "is not supported"),
            (
                npy("<f4", "(2, 0)", false, &[]),
                "every dimension must be a whole number > 0",
            ),
            (npy("<f4", "()", false, &[0; 4]), "a scalar"),
            (b"PK\x03\x04 not an npy".to_vec(), "no `\\x93NUMPY` magic number"),
            (
                b"\x93NUMPY\x01\x00\xff\xff{".to_vec(),
                "header of 65535 bytes, longer than numpy's own limit",
            ),
            (
                npy("<f4", "((((((((((1,),),),),),),),),),)", false, &[]),
                "nest deeper than 8",
            ),
        ] {
            let (_, why) = set(&bad, &y(&[0]));
            assert!(why.contains(says), "{says}: {why}");
        }
        let structured = npy_with(
            "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }",
            &[0; 4],
        );
        let (_, why) = set(&structured, &y(&[0]));
        assert!(why.contains("structured arrays are not supported"), "{why}");
        let (_, why) = set(&npy_with("{'descr': '<f4', 'shape': (", &[]), &y(&[0]));
        assert_eq!(why, "header: not a Python literal (at 1:28: expected value)");
    }

    #[test]
    fn npz_and_directory_forms_and_their_errors() {
        let tmp = TempDir::new("npy");
        let x = npy("<f4", "(2, 3)", false, &le_f32s(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]));
        let y = npy("|u1", "(2,)", false, &[1, 0]);
        let x_test = npy("<f4", "(1, 4)", false, &le_f32s(&[0.0; 4]));
        let u8s = npy("|u1", "(1, 3)", false, &[0; 3]);

        // A directory of .npy files without a test set.
        let dir = tmp.path().join("arrays");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("x_train.npy"), &x).unwrap();
        std::fs::write(dir.join("y_train.npy"), &y).unwrap();
        assert!(is_numpy(&dir));
        let loaded = load(&dir).unwrap();
        assert_eq!((loaded.train.len(), loaded.test), (2, None));
        let (_, why) = reason(load(&dir.join("x_train.npy")).unwrap_err());
        assert!(why.starts_with("one .npy holds one array"), "{why}");
        std::fs::write(dir.join("x_test.npy"), &x_test).unwrap();
        let (_, why) = reason(load(&dir).unwrap_err());
        assert_eq!(why, "has `x_test.npy` but no `y_test.npy`");
        std::fs::write(dir.join("y_test.npy"), npy("|u1", "(1,)", false, &[0])).unwrap();
        let (_, why) = reason(load(&dir).unwrap_err());
        assert_eq!(why, "training samples are [3] but test samples are [4]");
        std::fs::write(dir.join("x_test.npy"), &u8s).unwrap();
        let (_, why) = reason(load(&dir).unwrap_err());
        assert!(why.contains("both be uint8 or both"), "{why}");

        // A directory holding one .npz is that .npz; two are refused.
        let zdir = tmp.path().join("zipped");
        std::fs::create_dir(&zdir).unwrap();
        std::fs::write(zdir.join("a.npz"), npz(&[("x_train", &x), ("y_train", &y)])).unwrap();
        assert!(is_numpy(&zdir) && is_numpy(&zdir.join("a.npz")) && !is_numpy(tmp.path()));
        assert_eq!(load(&zdir).unwrap().train.labels, vec![1, 0]);
        std::fs::write(zdir.join("b.npz"), npz(&[("x_train", &x)])).unwrap();
        assert!(
            reason(load(&zdir).unwrap_err())
                .1
                .starts_with("holds several .npz files")
        );
        let (path, why) = reason(load(&zdir.join("b.npz")).unwrap_err());
        assert_eq!(path, zdir.join("b.npz"));
        assert_eq!(
            why,
            "needs `x_train.npy` and `y_train.npy` (Keras's names); it holds [\"x_train.npy\"]"
        );

        // An entry's error names the archive and the entry.
        let bad = npz(&[("x_train", &x), ("y_train", &npy("|u1", "(3,)", false, &[0]))]);
        let (_, why) = reason(parse_npz(&bad, Path::new("s.npz")).unwrap_err());
        assert_eq!(
            why,
            "`y_train.npy`: truncated: shape [3] of |u1 needs 3 bytes but only 1 follow the header"
        );
        let (_, why) = reason(parse_npz(b"not a zip", Path::new("s.npz")).unwrap_err());
        assert!(why.starts_with("not a readable .npz (zip) archive"), "{why}");
    }

    #[test]
    fn an_entry_inflating_past_its_header_is_refused_after_one_byte() {
        // Header: 4 bytes of data; the entry inflates to 64 MiB more zeros (~64 KB zipped).
        let mut x = npy("|u1", "(1, 4)", false, &[0; 4]);
        x.resize(x.len() + (64 << 20), 0);
        let bytes = npz(&[("x_train", &x), ("y_train", &npy("|u1", "(1,)", false, &[0]))]);
        assert!(bytes.len() < 1 << 20, "{} bytes", bytes.len());
        let (_, why) = reason(parse_npz(&bytes, Path::new("bomb.npz")).unwrap_err());
        assert_eq!(
            why,
            "`x_train.npy`: holds more than its header declares: bytes follow the 4 of shape [1, 4] of |u1"
        );
    }

    /// scikit-learn's digits as `np.savez_compressed` wrote it (float32 (n, 8, 8), uint8
    /// labels): a real numpy file, not one this test wrote.
    #[test]
    fn real_digits_npz_from_numpy() {
        let Some(dir) = sklearn_data("real_digits_npz_from_numpy") else {
            return;
        };
        let began = std::time::Instant::now();
        let loaded = load(&dir.join("digits.npz")).unwrap();
        let took = began.elapsed();
        let test = loaded.test.as_ref().unwrap();
        assert_eq!((loaded.train.len(), test.len()), (1437, 360));
        assert_eq!(loaded.train.shape, vec![1, 8, 8]);
        let Values::F32(v) = &loaded.train.values else {
            panic!("float32 stays f32")
        };
        assert!(v.iter().all(|&p| (0.0..=16.0).contains(&p) && p.fract() == 0.0));
        assert_eq!(*loaded.train.labels.iter().max().unwrap(), 9);
        println!("MEASURED digits.npz: load {took:.2?}, {}", peak_memory());
    }
}
