//! The node's error type.

use std::path::PathBuf;

/// Everything that can go wrong inside a node.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is out of range; names the field and what is allowed.
    #[error("invalid config `{field}`: {reason}")]
    Config { field: String, reason: String },

    /// A dataset file is missing or malformed.
    #[error("dataset {path}: {reason}")]
    Data { path: PathBuf, reason: String },

    /// A tensor operation failed inside Candle.
    #[error("model: {0}")]
    Candle(#[from] candle_core::Error),

    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),

    /// The coordinator could not be reached, or refused this node.
    #[error("coordinator at {address}: {reason}")]
    Coordinator { address: String, reason: String },

    /// A round failed on this node; it left the run.
    #[error("round {round} failed: {reason}")]
    RoundFailed { round: u32, reason: String },

    /// The model of the device's own program (e.g. Python code) failed or answered
    /// something unusable.
    #[error("the device's model failed in `{method}`: {reason}")]
    Model { method: String, reason: String },

    /// The peer service could not be started.
    #[error("peer service: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// The node's result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A config error naming `field`.
    pub fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Config {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// An I/O failure on the node's own file at `path` (its checkpoint, its audit
    /// record).
    pub fn file(path: &std::path::Path, e: std::io::Error) -> Self {
        Error::Data {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }
    }
}
