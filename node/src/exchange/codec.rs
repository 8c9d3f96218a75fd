//! Encoding predictions for the wire (f32, f16, affine 8-bit, affine 4-bit, top-k
//! sparsified) and cutting an encoded message into frames.

use wdml_proto::{Encoding, Frame};

pub use wdml_proto::message::{MessageShape, payload_bytes};

/// An encoded `rows × cols` matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct Encoded {
    pub encoding: Encoding,
    pub rows: u32,
    pub cols: u32,
    /// Q8 and Q4 only: value = offset + scale · level.
    pub scale: f32,
    pub offset: f32,
    /// TopK only: the entries kept per row (the receiver's from its plan).
    pub top_k: u32,
    pub bytes: Vec<u8>,
}

/// Encodes row-major values. Q8 maps the message's own [min, max] onto 0..=255, so a
/// message costs exactly `rows · cols` bytes plus two floats in the header; Q4 onto
/// 0..=15, two values a byte (low nibble first), so half that. Either is off by at
/// most half a step, (max − min) / 510 or / 30. TopK keeps each row's k largest logits
/// (to f16 precision; ties to the lower class) and gives every other class the
/// log-mean-exp of theirs, so at temperature 1 the row's top-k probabilities are kept
/// and the rest's total is spread uniformly over them.
pub fn encode(values: &[f32], shape: MessageShape) -> Encoded {
    let MessageShape {
        rows,
        cols,
        encoding,
        top_k,
    } = shape;
    debug_assert_eq!(values.len(), rows as usize * cols as usize);
    let (mut scale, mut offset) = (0.0, 0.0);
    let bytes = match encoding {
        Encoding::F32 | Encoding::Unspecified => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Encoding::F16 => values
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect(),
        Encoding::Q8 | Encoding::Q4 => {
            let top = if encoding == Encoding::Q8 { 255.0 } else { 15.0 };
            let min = values.iter().copied().fold(f32::INFINITY, f32::min);
            let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            offset = if min.is_finite() { min } else { 0.0 };
            scale = if max > min { (max - min) / top } else { 0.0 };
            let levels = values.iter().map(|v| {
                if scale > 0.0 {
                    ((v - offset) / scale).round().clamp(0.0, top) as u8
                } else {
                    0
                }
            });
            if encoding == Encoding::Q8 {
                levels.collect()
            } else {
                let levels: Vec<u8> = levels.collect();
                levels
                    .chunks(2)
                    .map(|pair| pair[0] | pair.get(1).map_or(0, |high| high << 4))
                    .collect()
            }
        }
        Encoding::Topk => values
            .chunks(cols.max(1) as usize)
            .flat_map(|row| top_k_row(row, top_k as usize))
            .collect(),
    };
    let encoding = if encoding == Encoding::Unspecified {
        Encoding::F32
    } else {
        encoding
    };
    Encoded {
        encoding,
        rows,
        cols,
        scale,
        offset,
        top_k,
        bytes,
    }
}

/// One row of a top-k message: the k largest logits as (class, f16) pairs, largest
/// first, then the f16 logit every other class gets (the log-mean-exp of theirs).
fn top_k_row(row: &[f32], k: usize) -> Vec<u8> {
    let mut order: Vec<usize> = (0..row.len()).collect();
    // Largest first; ties to the lower class (a stable sort keeps index order).
    order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
    let (kept, rest) = order.split_at(k.min(row.len()));
    let mut bytes = Vec::with_capacity(kept.len() * 3 + 2);
    for &class in kept {
        bytes.push(class as u8);
        bytes.extend(half::f16::from_f32(row[class]).to_le_bytes());
    }
    // log(mean(exp(z))) over the rest, computed from their largest for stability.
    let high = rest.iter().map(|&c| row[c]).fold(f32::NEG_INFINITY, f32::max);
    let rest_logit = if rest.is_empty() || !high.is_finite() {
        0.0
    } else {
        let sum: f32 = rest.iter().map(|&c| (row[c] - high).exp()).sum();
        high + (sum / rest.len() as f32).ln()
    };
    bytes.extend(half::f16::from_f32(rest_logit).to_le_bytes());
    bytes
}

/// Why a payload could not be decoded.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown encoding")]
    UnknownEncoding,
    #[error("payload is {got} bytes, but {rows}×{cols} values in this encoding take {want}")]
    Length {
        got: usize,
        want: usize,
        rows: u32,
        cols: u32,
    },
    #[error("quantisation scale {scale} / offset {offset} must be finite and the scale ≥ 0")]
    Quantisation { scale: f32, offset: f32 },
    #[error("value at row {row}, column {col} is not finite")]
    NotFinite { row: usize, col: usize },
    #[error("top-k row {row}: {reason}")]
    TopK { row: usize, reason: String },
}

/// Decodes a payload back to row-major f32 values, rejecting non-finite ones.
pub fn decode(encoded: &Encoded) -> Result<Vec<f32>, DecodeError> {
    let count = encoded.rows as usize * encoded.cols as usize;
    let want = payload_bytes(encoded.encoding, encoded.rows, encoded.cols, encoded.top_k)
        .ok_or(DecodeError::UnknownEncoding)? as usize;
    if encoded.bytes.len() != want {
        return Err(DecodeError::Length {
            got: encoded.bytes.len(),
            want,
            rows: encoded.rows,
            cols: encoded.cols,
        });
    }
    let values: Vec<f32> = match encoded.encoding {
        Encoding::F32 => encoded
            .bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Encoding::F16 => encoded
            .bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Encoding::Q8 | Encoding::Q4 => {
            let (scale, offset) = (encoded.scale, encoded.offset);
            if !scale.is_finite() || !offset.is_finite() || scale < 0.0 {
                return Err(DecodeError::Quantisation { scale, offset });
            }
            let level = |l: u8| offset + scale * f32::from(l);
            if encoded.encoding == Encoding::Q8 {
                encoded.bytes.iter().map(|&b| level(b)).collect()
            } else {
                encoded
                    .bytes
                    .iter()
                    .flat_map(|&b| [level(b & 0x0f), level(b >> 4)])
                    .take(count)
                    .collect()
            }
        }
        Encoding::Topk => decode_top_k(encoded)?,
        Encoding::Unspecified => return Err(DecodeError::UnknownEncoding),
    };
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        let cols = encoded.cols as usize;
        return Err(DecodeError::NotFinite {
            row: i / cols,
            col: i % cols,
        });
    }
    Ok(values)
}

/// A top-k payload (its length already checked) back to full rows: every class the
/// row's shared logit, then the kept ones their own. A class out of range or kept
/// twice is refused.
fn decode_top_k(encoded: &Encoded) -> Result<Vec<f32>, DecodeError> {
    let (cols, k) = (encoded.cols as usize, encoded.top_k as usize);
    let f16 = |b: &[u8]| half::f16::from_le_bytes([b[0], b[1]]).to_f32();
    let mut values = Vec::with_capacity(encoded.rows as usize * cols);
    for (r, row) in encoded.bytes.chunks_exact(k * 3 + 2).enumerate() {
        let start = values.len();
        values.resize(start + cols, f16(&row[k * 3..]));
        let mut seen = vec![false; cols];
        for entry in row[..k * 3].chunks_exact(3) {
            let class = entry[0] as usize;
            if class >= cols || std::mem::replace(&mut seen[class], true) {
                return Err(DecodeError::TopK {
                    row: r,
                    reason: format!("class {class} is out of range or kept twice"),
                });
            }
            values[start + class] = f16(&entry[1..]);
        }
    }
    Ok(values)
}

/// Who sends a message, and for which round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub run_id: String,
    pub round: u32,
    pub round_token: u64,
    pub sender: u32,
}

/// Cuts an encoded message into frames of at most `frame_bytes` payload bytes each;
/// every frame carries the full header.
pub fn frames(envelope: &Envelope, encoded: &Encoded, frame_bytes: usize) -> Vec<Frame> {
    let chunks: Vec<&[u8]> = encoded.bytes.chunks(frame_bytes.max(1)).collect();
    let count = chunks.len() as u32;
    chunks
        .into_iter()
        .enumerate()
        .map(|(index, data)| Frame {
            run_id: envelope.run_id.clone(),
            round: envelope.round,
            round_token: envelope.round_token,
            sender: envelope.sender,
            encoding: encoded.encoding as i32,
            rows: encoded.rows,
            cols: encoded.cols,
            scale: encoded.scale,
            offset: encoded.offset,
            index: index as u32,
            count,
            total_bytes: encoded.bytes.len() as u64,
            data: data.to_vec(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of [`sample`]'s 4 × 10 values in `encoding`.
    fn shape(encoding: Encoding) -> MessageShape {
        MessageShape {
            rows: 4,
            cols: 10,
            encoding,
            top_k: if encoding == Encoding::Topk { 3 } else { 0 },
        }
    }

    fn softmax(row: &[f32]) -> Vec<f64> {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exps: Vec<f64> = row.iter().map(|&z| f64::from(z - max).exp()).collect();
        let sum: f64 = exps.iter().sum();
        exps.iter().map(|e| e / sum).collect()
    }

    #[test]
    fn top_k_keeps_the_largest_probabilities_and_spreads_the_rest_evenly() {
        let values: Vec<f32> = (0..40).map(|i| ((i * 7919) % 23) as f32 * 0.4 - 4.0).collect();
        let encoded = encode(&values, shape(Encoding::Topk));
        // Per row: three (class, f16) pairs and one f16.
        assert_eq!(encoded.bytes.len(), 4 * (3 * 3 + 2));
        let decoded = decode(&encoded).unwrap();
        for (row, back) in values.chunks(10).zip(decoded.chunks(10)) {
            let (p, q) = (softmax(row), softmax(back));
            let mut order: Vec<usize> = (0..10).collect();
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
            // The three largest keep their probability (to f16 precision of the logit:
            // a relative error of about 2^-11 on the logit, here under 0.5 %).
            for &c in &order[..3] {
                assert!(
                    (p[c] - q[c]).abs() <= 0.01 * p[c] + 1e-6,
                    "class {c}: {} vs {}",
                    p[c],
                    q[c]
                );
            }
            // The others share their total equally.
            let rest: f64 = order[3..].iter().map(|&c| p[c]).sum();
            for &c in &order[3..] {
                assert!(
                    (q[c] - rest / 7.0).abs() <= 0.01 * rest,
                    "class {c}: {} vs {}",
                    q[c],
                    rest / 7.0
                );
            }
        }
    }

    #[test]
    fn a_top_k_payload_naming_a_class_twice_or_out_of_range_is_refused() {
        let mut encoded = encode(&sample(), shape(Encoding::Topk));
        let good = encoded.clone();
        encoded.bytes[3] = encoded.bytes[0]; // row 0: its second entry names the first's class
        assert!(matches!(decode(&encoded), Err(DecodeError::TopK { row: 0, .. })));
        let mut encoded = good.clone();
        encoded.bytes[11] = 10; // row 1's first class: out of range
        assert!(matches!(decode(&encoded), Err(DecodeError::TopK { row: 1, .. })));
        // A payload for another k has the wrong length.
        let other_k = Encoded { top_k: 2, ..good };
        assert!(matches!(decode(&other_k), Err(DecodeError::Length { .. })));
    }

    fn sample() -> Vec<f32> {
        (0..40).map(|i| (i as f32 - 17.0) * 0.37).collect()
    }

    #[test]
    fn sizes_are_rows_times_cols_times_width() {
        for (encoding, bytes) in [
            (Encoding::F32, 160),
            (Encoding::F16, 80),
            (Encoding::Q8, 40),
            (Encoding::Q4, 20),
        ] {
            let e = encode(&sample(), shape(encoding));
            assert_eq!(e.bytes.len(), bytes, "{encoding:?}");
        }
    }

    #[test]
    fn round_trips_within_the_encoding_precision() {
        let values = sample();
        let range = 39.0 * 0.37;
        for (encoding, tolerance) in [
            (Encoding::F32, 0.0),
            (Encoding::F16, 0.01),
            (Encoding::Q8, range / 255.0 / 2.0 + 1e-5),
            (Encoding::Q4, range / 15.0 / 2.0 + 1e-5),
        ] {
            let decoded = decode(&encode(&values, shape(encoding))).unwrap();
            for (a, b) in values.iter().zip(&decoded) {
                assert!((a - b).abs() <= tolerance, "{encoding:?}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn q8_of_a_constant_message_decodes_exactly() {
        let decoded = decode(&encode(
            &[2.5; 6],
            MessageShape {
                rows: 2,
                cols: 3,
                encoding: Encoding::Q8,
                top_k: 0,
            },
        ))
        .unwrap();
        assert_eq!(decoded, vec![2.5; 6]);
    }

    #[test]
    fn rejects_bad_payloads() {
        let mut e = encode(&sample(), shape(Encoding::F32));
        e.bytes.pop();
        assert!(matches!(decode(&e), Err(DecodeError::Length { .. })));
        let mut e = encode(&sample(), shape(Encoding::F32));
        e.bytes[8..12].copy_from_slice(&f32::NAN.to_le_bytes());
        assert_eq!(decode(&e), Err(DecodeError::NotFinite { row: 0, col: 2 }));
        let mut e = encode(&sample(), shape(Encoding::Q8));
        e.scale = f32::INFINITY;
        assert!(matches!(decode(&e), Err(DecodeError::Quantisation { .. })));
        e.encoding = Encoding::Unspecified;
        assert_eq!(decode(&e), Err(DecodeError::UnknownEncoding));
    }

    #[test]
    fn frames_cover_the_payload_in_order() {
        let e = encode(&sample(), shape(Encoding::F32));
        let envelope = Envelope {
            run_id: "r".into(),
            round: 3,
            round_token: 9,
            sender: 1,
        };
        let frames = frames(&envelope, &e, 64);
        assert_eq!(frames.len(), 3);
        assert!(
            frames
                .iter()
                .enumerate()
                .all(|(i, f)| f.index == i as u32 && f.count == 3 && f.total_bytes == 160)
        );
        let joined: Vec<u8> = frames.iter().flat_map(|f| f.data.clone()).collect();
        assert_eq!(joined, e.bytes);
    }
}
