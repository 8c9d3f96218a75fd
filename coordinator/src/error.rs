//! The coordinator's error type, and how it maps onto gRPC status codes.

/// Everything that can go wrong in the coordinator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is out of range; names the field.
    #[error("invalid config `{field}`: {reason}")]
    Config { field: String, reason: String },

    /// Too few nodes joined before the join timeout.
    #[error("only {joined} of the minimum {min} nodes joined within {waited_s:.0} s")]
    NotEnoughNodes { joined: usize, min: usize, waited_s: f64 },

    /// Every node is gone: there is nobody left to run a round.
    #[error("no live node left at round {round}")]
    NoLiveNodes { round: u32 },

    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),

    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

/// The coordinator's result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Config {
            field: field.into(),
            reason: reason.into(),
        }
    }
}
