//! The IDX file format of MNIST-style datasets (MNIST, Fashion-MNIST, KMNIST…).
//!
//! An IDX file is a big-endian header — a magic number `0x0000TTDD` (`TT` the element
//! type, `08` for u8; `DD` the number of dimensions), then one u32 per dimension — followed
//! by the elements in row-major order. u8 files are accepted: labels `[n]` (magic
//! `0x00000801`) and samples of any rank WDML learns: `[n, d]` feature vectors (`0x0802`),
//! `[n, h, w]` grey images (`0x0803`, read as `[1, h, w]`) and `[n, c, h, w]` images
//! (`0x0804`).
//!
//! Files may be gzipped or not; gzip is detected from its magic bytes `1f 8b`, never from
//! the file name. Every error names the file it came from.

use std::fs;
use std::io::{self, BufRead, Read, Write};
use std::path::Path;

use flate2::Compression;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;

use super::raw::{Samples, Values};
use crate::{Error, Result};

/// Magic number of a u8 IDX file with 3 dimensions: grey images `[n, h, w]`.
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of a u8 IDX file with 1 dimension: labels `[n]`.
pub const LABELS_MAGIC: u32 = 0x0000_0801;
/// u8 with any dimensions: `0x0000_08DD`.
const U8_TYPE: u32 = 0x0000_0800;

/// The first two bytes of every gzip stream (RFC 1952).
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Samples as parsed from an IDX file: `count` rows of `shape` u8 values.
#[derive(Clone, PartialEq, Eq)]
pub struct Images {
    /// Row-major values, `count * shape.iter().product()` of them.
    pub pixels: Vec<u8>,
    /// Number of samples.
    pub count: usize,
    /// One sample's shape: `[d]` or `[c, h, w]`.
    pub shape: Vec<usize>,
}

// Summarised: the derived form would print every pixel.
impl std::fmt::Debug for Images {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Images")
            .field("count", &self.count)
            .field("shape", &self.shape)
            .finish_non_exhaustive()
    }
}

/// Reads an images file and a labels file and checks that they describe the same samples.
pub fn read_set(images: &Path, labels: &Path) -> Result<Samples> {
    let images_bytes = read_bytes(images)?;
    let labels_bytes = read_bytes(labels)?;
    parse_set(&images_bytes, images, &labels_bytes, labels)
}

/// Parses an images file and a labels file already in memory (gzipped or not); `*_source`
/// only names them in errors.
pub fn parse_set(images: &[u8], images_source: &Path, labels: &[u8], labels_source: &Path) -> Result<Samples> {
    let images = parse_images(images, images_source)?;
    let labels = parse_labels(labels, labels_source)?;
    if labels.len() != images.count {
        return Err(data_error(
            labels_source,
            format!(
                "holds {} labels but {} holds {} images",
                labels.len(),
                images_source.display(),
                images.count
            ),
        ));
    }
    Ok(Samples {
        shape: images.shape,
        values: Values::U8(images.pixels),
        labels,
    })
}

/// Reads an IDX images file (gzipped or not).
pub fn read_images(path: &Path) -> Result<Images> {
    parse_images(&read_bytes(path)?, path)
}

/// Reads an IDX labels file (gzipped or not).
pub fn read_labels(path: &Path) -> Result<Vec<u8>> {
    parse_labels(&read_bytes(path)?, path)
}

/// Parses an IDX images file held in memory (gzipped or not); `source` names it in errors.
pub fn parse_images(bytes: &[u8], source: &Path) -> Result<Images> {
    images_from(&mut *decoder(bytes), source)
}

/// Reads a whole IDX images stream.
fn images_from(reader: &mut dyn Read, source: &Path) -> Result<Images> {
    let (count, shape) = read_images_header(reader, source)?;
    let what = format!("{count} samples of {shape:?}");
    // Checked not to overflow with the header.
    let pixels = read_body(reader, source, count * shape.iter().product::<usize>(), &what)?;
    Ok(Images { pixels, count, shape })
}

/// Parses an IDX labels file held in memory (gzipped or not); `source` names it in
/// errors. (Every byte is a label: the classes follow from them, see
/// [`super::Dataset::classes`].)
pub fn parse_labels(bytes: &[u8], source: &Path) -> Result<Vec<u8>> {
    let mut reader = decoder(bytes);
    let dims = read_header(&mut reader, source, &[LABELS_MAGIC], "labels [n]")?;
    let count = dims[0];
    if count == 0 {
        return Err(data_error(source, "empty labels: header says 0 labels"));
    }
    read_body(&mut reader, source, count, &format!("{count} labels"))
}

/// The header of an IDX samples stream: the count and one sample's shape (`[d]` or
/// `[c, h, w]`; `[n, h, w]` files hold `[1, h, w]` samples), each checked non-zero.
pub fn read_images_header(reader: &mut dyn Read, source: &Path) -> Result<(usize, Vec<usize>)> {
    let dims = read_header(
        reader,
        source,
        &[U8_TYPE | 2, IMAGES_MAGIC, U8_TYPE | 4],
        "samples [n, d], [n, h, w] or [n, c, h, w]",
    )?;
    if dims.contains(&0) {
        return Err(data_error(source, format!("empty: header says dimensions {dims:?}")));
    }
    dims.iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| data_error(source, format!("{dims:?} values overflow")))?;
    let (count, sample) = (dims[0], &dims[1..]);
    let shape = match sample {
        [h, w] => vec![1, *h, *w],
        other => other.to_vec(),
    };
    Ok((count, shape))
}

/// The images `rows` (strictly ascending) of an IDX images stream of `expected` images:
/// the others are read past through a one-image buffer, so only the kept rows are held
/// (a node keeps its shard, not the dataset). The whole stream is still read and checked
/// as [`parse_images`] checks it (length, trailing bytes, gzip CRC).
pub fn read_image_rows(reader: &mut dyn Read, source: &Path, expected: usize, rows: &[usize]) -> Result<Images> {
    let (count, shape) = read_images_header(reader, source)?;
    if count != expected {
        return Err(data_error(
            source,
            format!("holds {count} images but {expected} labels"),
        ));
    }
    if let Some(&last) = rows.last().filter(|&&last| last >= count) {
        return Err(data_error(source, format!("image {last} asked for, of {count}")));
    }
    if rows.windows(2).any(|w| w[0] >= w[1]) {
        return Err(data_error(source, "the rows to keep are not strictly ascending"));
    }
    let row: usize = shape.iter().product();
    let mut pixels = Vec::with_capacity(rows.len() * row);
    let mut skipped = vec![0u8; row];
    let mut wanted = rows.iter().peekable();
    for i in 0..count {
        let buffer = match wanted.next_if_eq(&&i) {
            Some(_) => {
                let start = pixels.len();
                pixels.resize(start + row, 0);
                &mut pixels[start..]
            }
            None => &mut skipped[..],
        };
        reader.read_exact(buffer).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => data_error(
                source,
                format!("truncated: header says {count} samples of {shape:?} but it ends in image {i}"),
            ),
            _ => stream_error(source, &e),
        })?;
    }
    check_end(reader, source, &format!("{count} samples of {shape:?}"))?;
    Ok(Images {
        pixels,
        count: rows.len(),
        shape,
    })
}

/// Opens an IDX file as a stream, decompressing it if it is gzipped: read as it goes,
/// never whole.
pub fn open(path: &Path) -> Result<Box<dyn Read>> {
    let file = fs::File::open(path).map_err(|e| data_error(path, format!("cannot read: {e}")))?;
    let mut reader = io::BufReader::new(file);
    let head = reader
        .fill_buf()
        .map_err(|e| data_error(path, format!("cannot read: {e}")))?;
    Ok(if head.starts_with(&GZIP_MAGIC) {
        Box::new(MultiGzDecoder::new(reader))
    } else {
        Box::new(reader)
    })
}

/// Encodes u8 samples as an (uncompressed) IDX file: `[n, h, w]` for one-channel images
/// (as MNIST's), else `[n, d]` or `[n, c, h, w]`.
pub fn encode_images(set: &Samples) -> Result<Vec<u8>> {
    let source = Path::new("<images being encoded>");
    let Values::U8(values) = &set.values else {
        return Err(data_error(source, "IDX holds u8 values; these are f32"));
    };
    let sample = match set.shape[..] {
        [1, h, w] => vec![h, w],
        _ => set.shape.clone(),
    };
    let mut out = Vec::with_capacity(4 + 4 * (1 + sample.len()) + values.len());
    out.extend_from_slice(&(U8_TYPE | (1 + sample.len() as u32)).to_be_bytes());
    for dim in std::iter::once(set.len()).chain(sample) {
        out.extend_from_slice(&u32_dim(dim, source)?.to_be_bytes());
    }
    out.extend_from_slice(values);
    Ok(out)
}

/// Encodes labels as an (uncompressed) IDX labels file.
pub fn encode_labels(labels: &[u8]) -> Result<Vec<u8>> {
    let count = u32_dim(labels.len(), Path::new("<labels being encoded>"))?;
    let mut out = Vec::with_capacity(8 + labels.len());
    out.extend_from_slice(&LABELS_MAGIC.to_be_bytes());
    out.extend_from_slice(&count.to_be_bytes());
    out.extend_from_slice(labels);
    Ok(out)
}

/// Writes an encoded IDX file to `path`, gzipped (best compression, no timestamp, so the
/// output is byte-for-byte reproducible) when `gzip` is set.
pub fn write(path: &Path, idx: &[u8], gzip: bool) -> Result<()> {
    let bytes = if gzip {
        // GzEncoder's default header has mtime 0 and no file name.
        let mut encoder = GzEncoder::new(Vec::new(), Compression::best());
        encoder
            .write_all(idx)
            .and_then(|()| encoder.finish())
            .map_err(|e| data_error(path, format!("gzip: {e}")))?
    } else {
        idx.to_vec()
    };
    fs::write(path, bytes).map_err(|e| data_error(path, format!("cannot write: {e}")))
}

/// Reads a whole file, naming it on failure.
fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|e| data_error(path, format!("cannot read: {e}")))
}

/// A reader over the IDX bytes, decompressing them if they are gzipped.
pub fn decoder(bytes: &[u8]) -> Box<dyn Read + '_> {
    if bytes.starts_with(&GZIP_MAGIC) {
        // Multi-member, so files produced by concatenating gzip streams read whole.
        Box::new(MultiGzDecoder::new(bytes))
    } else {
        Box::new(bytes)
    }
}

/// Reads the magic number and the dimensions, checking the magic is one of `expected`.
fn read_header(reader: &mut dyn Read, source: &Path, expected: &[u32], layout: &str) -> Result<Vec<usize>> {
    let magic = read_u32(reader, source, "magic number")?;
    if !expected.contains(&magic) {
        let hint = match magic {
            LABELS_MAGIC => " (this is a labels file)",
            m if m & !0xff == U8_TYPE && (2..=4).contains(&(m & 0xff)) => " (this is a samples file)",
            _ => "",
        };
        let expected: Vec<String> = expected.iter().map(|m| format!("{m:#010x}")).collect();
        return Err(data_error(
            source,
            format!(
                "bad magic number {magic:#010x}{hint}; expected {}, IDX u8 {layout}",
                expected.join(" or ")
            ),
        ));
    }
    let ndims = (magic & 0xff) as usize;
    (0..ndims)
        .map(|i| {
            let dim = read_u32(reader, source, &format!("dimension {i}"))?;
            usize::try_from(dim)
                .map_err(|_| data_error(source, format!("dimension {i} = {dim} does not fit in memory")))
        })
        .collect()
}

/// Reads one big-endian u32 of the header.
fn read_u32(reader: &mut dyn Read, source: &Path, what: &str) -> Result<u32> {
    let mut buf = [0u8; 4];
    reader.read_exact(&mut buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => data_error(source, format!("truncated: ends inside the header ({what})")),
        _ => stream_error(source, &e),
    })?;
    Ok(u32::from_be_bytes(buf))
}

/// Reads exactly `len` body bytes and checks nothing follows them.
fn read_body(reader: &mut dyn Read, source: &Path, len: usize, what: &str) -> Result<Vec<u8>> {
    // Grow as data arrives rather than trusting the header with one huge allocation.
    let mut body = Vec::new();
    let limit = u64::try_from(len).unwrap_or(u64::MAX);
    reader
        .take(limit)
        .read_to_end(&mut body)
        .map_err(|e| stream_error(source, &e))?;
    if body.len() < len {
        return Err(data_error(
            source,
            format!(
                "truncated: header says {what} ({len} bytes) but only {} bytes follow",
                body.len()
            ),
        ));
    }
    check_end(reader, source, &format!("{len} bytes of {what}"))?;
    Ok(body)
}

/// Checks that the stream ends right after the `what` its header declares, taking at
/// most one more byte from it: a small gzip file can inflate to gigabytes after a valid
/// body (a 7.3 MB one to 4 GiB of zeros), and reading that rest to its end only to
/// refuse it cost 8.4 GB of memory and 32 s. A stream that does end has been read to
/// its end, which makes the gzip decoder check the stream's CRC and length.
fn check_end(reader: &mut dyn Read, source: &Path, what: &str) -> Result<()> {
    let mut more = Vec::with_capacity(1);
    reader
        .take(1)
        .read_to_end(&mut more)
        .map_err(|e| stream_error(source, &e))?;
    if !more.is_empty() {
        return Err(data_error(
            source,
            format!(
                "holds more data than its header declares: bytes follow the {what} (not read further: the \
                 file is damaged, or its header counts too few)"
            ),
        ));
    }
    Ok(())
}

/// An I/O error while decoding: for in-memory bytes this can only be a bad gzip stream.
fn stream_error(source: &Path, e: &io::Error) -> Error {
    data_error(source, format!("corrupt or truncated gzip stream: {e}"))
}

/// A dimension as the u32 the IDX header stores.
fn u32_dim(value: usize, source: &Path) -> Result<u32> {
    u32::try_from(value).map_err(|_| data_error(source, format!("dimension {value} does not fit an IDX header (u32)")))
}

/// `Error::Data` for `path`.
fn data_error(path: &Path, reason: impl Into<String>) -> Error {
    Error::Data {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::test_util::TempDir;

    fn tiny() -> Samples {
        Samples {
            shape: vec![1, 2, 4],
            values: Values::U8((0..3 * 2 * 4).map(|i| (i * 7) as u8).collect()),
            labels: vec![0, 9, 4],
        }
    }

    fn write_tiny(dir: &Path, gzip: bool) -> (std::path::PathBuf, std::path::PathBuf) {
        let set = tiny();
        let images = dir.join(if gzip { "images.gz" } else { "images" });
        let labels = dir.join(if gzip { "labels.gz" } else { "labels" });
        write(&images, &encode_images(&set).unwrap(), gzip).unwrap();
        write(&labels, &encode_labels(&set.labels).unwrap(), gzip).unwrap();
        (images, labels)
    }

    fn reason(err: Error) -> (std::path::PathBuf, String) {
        match err {
            Error::Data { path, reason } => (path, reason),
            other => panic!("expected a data error, got {other}"),
        }
    }

    #[test]
    fn round_trip_raw_and_gzip() {
        let dir = TempDir::new("idx-round-trip");
        for gzip in [false, true] {
            let (images, labels) = write_tiny(dir.path(), gzip);
            let bytes = fs::read(&images).unwrap();
            assert_eq!(bytes.starts_with(&GZIP_MAGIC), gzip);
            assert_eq!(read_set(&images, &labels).unwrap(), tiny());
        }
    }

    #[test]
    fn gzip_is_detected_by_content_not_name() {
        let dir = TempDir::new("idx-detect");
        let set = tiny();
        // A gzipped file without .gz and a raw file with .gz both read.
        let gz_no_ext = dir.path().join("images");
        let raw_gz_ext = dir.path().join("labels.gz");
        write(&gz_no_ext, &encode_images(&set).unwrap(), true).unwrap();
        write(&raw_gz_ext, &encode_labels(&set.labels).unwrap(), false).unwrap();
        assert_eq!(read_set(&gz_no_ext, &raw_gz_ext).unwrap(), set);
    }

    #[test]
    fn bad_magic_names_the_file() {
        let labels = encode_labels(&[1, 2]).unwrap();
        let (path, why) = reason(parse_images(&labels, Path::new("x/train-images")).unwrap_err());
        assert_eq!(path, Path::new("x/train-images"));
        assert!(why.contains("bad magic number 0x00000801"), "{why}");
        assert!(why.contains("labels file"), "{why}");

        let mut junk = encode_labels(&[1, 2]).unwrap();
        junk[2] = 0x0d; // int32 element type
        let (_, why) = reason(parse_labels(&junk, Path::new("l")).unwrap_err());
        assert!(why.contains("bad magic number 0x00000d01"), "{why}");
    }

    #[test]
    fn truncated_files_are_rejected() {
        let full = encode_images(&tiny()).unwrap();
        let (_, why) = reason(parse_images(&full[..10], Path::new("i")).unwrap_err());
        assert!(why.contains("truncated: ends inside the header"), "{why}");

        let (_, why) = reason(parse_images(&full[..full.len() - 1], Path::new("i")).unwrap_err());
        assert!(
            why.contains("truncated: header says 3 samples of [1, 2, 4] (24 bytes) but only 23"),
            "{why}"
        );

        let mut gz = GzEncoder::new(Vec::new(), Compression::default());
        gz.write_all(&full).unwrap();
        let gz = gz.finish().unwrap();
        let err = parse_images(&gz[..gz.len() - 6], Path::new("i.gz")).unwrap_err();
        let (path, why) = reason(err);
        assert_eq!(path, Path::new("i.gz"));
        assert!(why.contains("gzip") || why.contains("truncated"), "{why}");
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut bytes = encode_labels(&[1, 2]).unwrap();
        bytes.push(3);
        let (_, why) = reason(parse_labels(&bytes, Path::new("l")).unwrap_err());
        assert!(
            why.contains("holds more data than its header declares: bytes follow the 2 bytes of 2 labels"),
            "{why}"
        );
    }

    /// Counts the bytes a reader hands out: how much of a gzip stream was inflated.
    struct Counted<'a> {
        inner: &'a mut dyn Read,
        bytes: u64,
    }

    impl Read for Counted<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.bytes += n as u64;
            Ok(n)
        }
    }

    /// A gzipped images file whose header truly declares `count` images of 28×28, their
    /// pixels, then `trailing` zero bytes: zeros deflate about 1000:1, so the file stays
    /// small however much it inflates to.
    fn bomb(count: u32, trailing: usize) -> Vec<u8> {
        let mut gz = GzEncoder::new(Vec::new(), Compression::default());
        gz.write_all(&IMAGES_MAGIC.to_be_bytes()).unwrap();
        for dim in [count, 28, 28] {
            gz.write_all(&dim.to_be_bytes()).unwrap();
        }
        let zeros = vec![0u8; 1 << 20];
        let mut left = count as usize * 28 * 28 + trailing;
        while left > 0 {
            let n = left.min(zeros.len());
            gz.write_all(&zeros[..n]).unwrap();
            left -= n;
        }
        gz.finish().unwrap()
    }

    #[test]
    fn a_gzip_bomb_is_refused_after_inflating_one_byte_more_than_its_header_declares() {
        // 10 images of 28×28 declared, 200 MB of zeros after them.
        let gz = bomb(10, 200 << 20);
        assert!(gz.len() < 1 << 20, "the test's bomb is {} bytes", gz.len());
        let declared = 16 + 10 * 28 * 28;
        let source = Path::new("bomb.gz");

        let (path, why) = reason(parse_images(&gz, source).unwrap_err());
        assert_eq!(path, source);
        assert!(why.contains("more data than its header declares"), "{why}");

        // Whole, and streamed row by row (what a node reads for its shard): neither
        // takes from the decoder more than the declared bytes and the one that tells
        // there is more, so neither inflates (nor holds) the rest.
        let mut inflating = decoder(&gz);
        let mut counted = Counted {
            inner: &mut *inflating,
            bytes: 0,
        };
        let (_, why) = reason(images_from(&mut counted, source).unwrap_err());
        assert!(why.contains("more data than its header declares"), "{why}");
        assert!(counted.bytes <= declared + 1, "{} bytes inflated", counted.bytes);

        let mut inflating = decoder(&gz);
        let mut counted = Counted {
            inner: &mut *inflating,
            bytes: 0,
        };
        let (_, why) = reason(read_image_rows(&mut counted, source, 10, &[0, 9]).unwrap_err());
        assert!(why.contains("more data than its header declares"), "{why}");
        assert!(counted.bytes <= declared + 1, "{} bytes inflated", counted.bytes);
    }

    #[test]
    fn corrupt_gzip_is_rejected() {
        let mut gz = GzEncoder::new(Vec::new(), Compression::default());
        gz.write_all(&encode_labels(&[1, 2, 3]).unwrap()).unwrap();
        let mut gz = gz.finish().unwrap();
        let crc_at = gz.len() - 8;
        gz[crc_at] ^= 0xff;
        let (_, why) = reason(parse_labels(&gz, Path::new("l.gz")).unwrap_err());
        assert!(why.contains("corrupt or truncated gzip stream"), "{why}");
    }

    #[test]
    fn count_mismatch_is_rejected() {
        let set = tiny();
        let images = encode_images(&set).unwrap();
        let labels = encode_labels(&set.labels[..2]).unwrap();
        let err = parse_set(&images, Path::new("imgs"), &labels, Path::new("lbls")).unwrap_err();
        let (path, why) = reason(err);
        assert_eq!(path, Path::new("lbls"));
        assert_eq!(why, "holds 2 labels but imgs holds 3 images");
    }

    #[test]
    fn features_and_colour_images_round_trip_and_grey_ones_gain_a_channel() {
        for shape in [vec![5], vec![1, 2, 3], vec![3, 2, 2]] {
            let len: usize = shape.iter().product();
            let set = Samples {
                shape: shape.clone(),
                values: Values::U8((0..2 * len).map(|i| i as u8).collect()),
                labels: vec![1, 0],
            };
            let bytes = encode_images(&set).unwrap();
            // Grey images are stored [n, h, w], as MNIST's are.
            assert_eq!(
                bytes[3] as usize,
                1 + if shape[0] == 1 { 2 } else { shape.len() },
                "{shape:?}"
            );
            let labels = encode_labels(&set.labels).unwrap();
            assert_eq!(parse_set(&bytes, Path::new("i"), &labels, Path::new("l")).unwrap(), set);
        }
        // Rank 5 is not a sample WDML learns.
        let mut bytes = (U8_TYPE | 5).to_be_bytes().to_vec();
        for dim in [1u32, 1, 1, 1, 1] {
            bytes.extend_from_slice(&dim.to_be_bytes());
        }
        let (_, why) = reason(parse_images(&bytes, Path::new("i")).unwrap_err());
        assert!(why.contains("bad magic number 0x00000805"), "{why}");
    }

    #[test]
    fn empty_and_huge_headers_are_rejected() {
        let mut bytes = IMAGES_MAGIC.to_be_bytes().to_vec();
        for dim in [5u32, 0, 28] {
            bytes.extend_from_slice(&dim.to_be_bytes());
        }
        let (_, why) = reason(parse_images(&bytes, Path::new("i")).unwrap_err());
        assert!(why.contains("empty: header says dimensions [5, 0, 28]"), "{why}");

        // A header promising ~64 PB must fail cleanly, not try to allocate it.
        let mut bytes = IMAGES_MAGIC.to_be_bytes().to_vec();
        for dim in [u32::MAX, 65_535, 65_535] {
            bytes.extend_from_slice(&dim.to_be_bytes());
        }
        let (_, why) = reason(parse_images(&bytes, Path::new("i")).unwrap_err());
        assert!(why.contains("truncated") || why.contains("overflow"), "{why}");
    }

    #[test]
    fn missing_file_names_the_path() {
        let dir = TempDir::new("idx-missing");
        let path = dir.path().join("nope");
        let (err_path, why) = reason(read_images(&path).unwrap_err());
        assert_eq!(err_path, path);
        assert!(why.starts_with("cannot read"), "{why}");
    }
}
