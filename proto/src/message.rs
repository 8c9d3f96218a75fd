//! The message a node sends its neighbours each round, as the wire fixes it: its shape
//! follows from the algorithm, the run's public batch and encoding, and the sender's
//! parameter count. Every node validates what it receives against it, and the
//! coordinator needs it to plan a shared band's turns (`channel.access = "shared"`), so
//! it lives here, once.
//!
//! Adding an algorithm: its line in [`shape`].

use crate::{Algorithm, Encoding};

/// Bytes of one kept entry of a top-k row: a u8 class and an f16 logit.
pub const TOP_K_ENTRY_BYTES: u64 = 3;
/// Bytes of a top-k row's shared logit for the other classes (f16).
pub const TOP_K_REST_BYTES: u64 = 2;

/// Payload bytes of a `rows × cols` matrix in `encoding` (headers not counted; `top_k`
/// only counts for [`Encoding::Topk`]), or `None` for an encoding this build cannot
/// decode.
pub fn payload_bytes(encoding: Encoding, rows: u32, cols: u32, top_k: u32) -> Option<u64> {
    let values = u64::from(rows) * u64::from(cols);
    match encoding {
        Encoding::F32 => values.checked_mul(4),
        Encoding::F16 => values.checked_mul(2),
        Encoding::Q8 => Some(values),
        // Two values per byte.
        Encoding::Q4 => Some(values.div_ceil(2)),
        Encoding::Topk => u64::from(rows).checked_mul(u64::from(top_k) * TOP_K_ENTRY_BYTES + TOP_K_REST_BYTES),
        Encoding::Unspecified => None,
    }
}

/// The shape of the message a node sends each round: a `rows × cols` matrix of values
/// in `encoding` (predictions on the public batch, or all parameters as one row).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessageShape {
    pub rows: u32,
    pub cols: u32,
    pub encoding: Encoding,
    /// Entries kept per row with [`Encoding::Topk`]; 0 otherwise.
    pub top_k: u32,
}

impl MessageShape {
    /// Values in one message.
    pub fn values(&self) -> u64 {
        u64::from(self.rows) * u64::from(self.cols)
    }

    /// Payload bytes of one message (headers not counted).
    pub fn bytes(&self) -> u64 {
        payload_bytes(self.encoding, self.rows, self.cols, self.top_k).unwrap_or(u64::MAX)
    }
}

/// The message `algorithm` sends each round, given the run's public batch, encoding,
/// top-k and classes (its data's), and the sender's parameter count; `None`: it
/// exchanges nothing.
pub fn shape(
    algorithm: Algorithm,
    public_batch: u32,
    encoding: Encoding,
    top_k: u32,
    classes: u32,
    parameters: u64,
) -> Option<MessageShape> {
    match algorithm {
        // Predictions (logits) on the public batch, in the run's encoding.
        Algorithm::Dml | Algorithm::Fedmd | Algorithm::Dsfl => Some(MessageShape {
            rows: public_batch,
            cols: classes,
            encoding,
            top_k: if encoding == Encoding::Topk { top_k } else { 0 },
        }),
        // Parameters travel exactly, whatever the run's encoding.
        Algorithm::Fedavg => Some(MessageShape {
            rows: 1,
            cols: u32::try_from(parameters).unwrap_or(u32::MAX),
            encoding: Encoding::F32,
            top_k: 0,
        }),
        Algorithm::Local | Algorithm::Unspecified => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_algorithm_sends_its_shape() {
        let dml = shape(Algorithm::Dml, 128, Encoding::Q8, 0, 10, 50_890).unwrap();
        assert_eq!((dml.rows, dml.cols, dml.encoding), (128, 10, Encoding::Q8));
        assert_eq!(dml.bytes(), 1_280);
        let fedavg = shape(Algorithm::Fedavg, 128, Encoding::Q8, 0, 10, 50_890).unwrap();
        assert_eq!((fedavg.rows, fedavg.cols, fedavg.encoding), (1, 50_890, Encoding::F32));
        assert_eq!(fedavg.bytes(), 203_560);
        assert_eq!(shape(Algorithm::Local, 128, Encoding::Q8, 0, 10, 50_890), None);
        // FedMD and DS-FL send what dml sends.
        for a in [Algorithm::Fedmd, Algorithm::Dsfl] {
            assert_eq!(shape(a, 128, Encoding::Q8, 0, 10, 50_890), Some(dml));
        }
        // Half a byte a value, the last byte half used when the count is odd.
        assert_eq!(shape(Algorithm::Dml, 128, Encoding::Q4, 0, 10, 1).unwrap().bytes(), 640);
        assert_eq!(payload_bytes(Encoding::Q4, 1, 7, 0), Some(4));
        assert_eq!(payload_bytes(Encoding::Unspecified, 1, 7, 0), None);
        // Top-2: two (class, f16) pairs and one f16 per row, 8 bytes instead of 10 (q8).
        assert_eq!(
            shape(Algorithm::Dml, 128, Encoding::Topk, 2, 10, 1).unwrap().bytes(),
            1_024
        );
        // K = 2 and K = 100 (CIFAR-100): the columns are the classes.
        let two = shape(Algorithm::Dml, 64, Encoding::F32, 0, 2, 1).unwrap();
        assert_eq!((two.cols, two.bytes()), (2, 512));
        let hundred = shape(Algorithm::Dml, 64, Encoding::Topk, 5, 100, 1).unwrap();
        assert_eq!((hundred.cols, hundred.bytes()), (100, 64 * (5 * 3 + 2)));
        // The run's top-k means nothing to another encoding.
        assert_eq!(shape(Algorithm::Dml, 128, Encoding::Q8, 2, 10, 1).unwrap().top_k, 0);
    }
}
