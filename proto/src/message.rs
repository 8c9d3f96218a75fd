//! The message a node sends its neighbours each round, as the wire fixes it: its shape
//! follows from the algorithm, the run's public batch and encoding, and the sender's
//! parameter count. Every node validates what it receives against it, and the
//! coordinator needs it to plan a shared band's turns (`channel.access = "shared"`), so
//! it lives here, once.
//!
//! Adding an algorithm: its line in [`shape`].

use crate::{Algorithm, Encoding};

/// Classes of the datasets WDML learns (Fashion-MNIST, MNIST, KMNIST): the columns of a
/// prediction message.
pub const CLASSES: usize = 10;

/// Payload bytes of `values` values in `encoding` (headers not counted), or `None` for
/// an encoding this build cannot decode.
pub fn payload_bytes(encoding: Encoding, values: u64) -> Option<u64> {
    match encoding {
        Encoding::F32 => values.checked_mul(4),
        Encoding::F16 => values.checked_mul(2),
        Encoding::Q8 => Some(values),
        // Two values per byte.
        Encoding::Q4 => Some(values.div_ceil(2)),
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
}

impl MessageShape {
    /// Values in one message.
    pub fn values(&self) -> u64 {
        u64::from(self.rows) * u64::from(self.cols)
    }

    /// Payload bytes of one message (headers not counted).
    pub fn bytes(&self) -> u64 {
        payload_bytes(self.encoding, self.values()).unwrap_or(u64::MAX)
    }
}

/// The message `algorithm` sends each round, given the run's public batch and encoding
/// and the sender's parameter count; `None`: it exchanges nothing.
pub fn shape(algorithm: Algorithm, public_batch: u32, encoding: Encoding, parameters: u64) -> Option<MessageShape> {
    match algorithm {
        // Predictions on the public batch, in the run's encoding.
        Algorithm::Dml => Some(MessageShape {
            rows: public_batch,
            cols: CLASSES as u32,
            encoding,
        }),
        // Parameters travel exactly, whatever the run's encoding.
        Algorithm::Fedavg => Some(MessageShape {
            rows: 1,
            cols: u32::try_from(parameters).unwrap_or(u32::MAX),
            encoding: Encoding::F32,
        }),
        Algorithm::Local | Algorithm::Unspecified => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_algorithm_sends_its_shape() {
        let dml = shape(Algorithm::Dml, 128, Encoding::Q8, 50_890).unwrap();
        assert_eq!((dml.rows, dml.cols, dml.encoding), (128, 10, Encoding::Q8));
        assert_eq!(dml.bytes(), 1_280);
        let fedavg = shape(Algorithm::Fedavg, 128, Encoding::Q8, 50_890).unwrap();
        assert_eq!((fedavg.rows, fedavg.cols, fedavg.encoding), (1, 50_890, Encoding::F32));
        assert_eq!(fedavg.bytes(), 203_560);
        assert_eq!(shape(Algorithm::Local, 128, Encoding::Q8, 50_890), None);
        // Half a byte a value, the last byte half used when the count is odd.
        assert_eq!(shape(Algorithm::Dml, 128, Encoding::Q4, 1).unwrap().bytes(), 640);
        assert_eq!(payload_bytes(Encoding::Q4, 7), Some(4));
        assert_eq!(payload_bytes(Encoding::Unspecified, 7), None);
    }
}
