//! The channel crate's error type.
//!
//! Every error that comes from a configuration value names that value the way a
//! scenario file spells it (`channel.bandwidth_hz`), so a user can find the line to fix.

use std::fmt::Display;

/// Everything the channel model can refuse.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// A parameter is out of its allowed range.
    #[error("{field} {requirement} (got {got})")]
    InvalidParameter {
        /// The parameter as a scenario file names it, e.g. `channel.bandwidth_hz`.
        field: String,
        /// What the value must satisfy, e.g. `must be > 0`.
        requirement: String,
        /// The offending value, printed.
        got: String,
    },

    /// A preset name that is not one of the known presets.
    #[error("unknown channel preset `{name}`; allowed: {allowed}")]
    UnknownPreset {
        /// The name that was given.
        name: String,
        /// The allowed names, comma-separated.
        allowed: String,
    },

    /// Explicit positions and a placement area were both given.
    #[error("channel.positions and channel.area_m are both set; give one placement, not both")]
    ConflictingPlacement,

    /// Explicit positions do not match the number of nodes in the run.
    #[error("channel.positions lists {given} positions but the run has {nodes} nodes")]
    PositionCount {
        /// How many positions the configuration lists.
        given: usize,
        /// How many nodes the run has.
        nodes: usize,
    },

    /// A node index beyond the channel's nodes.
    #[error("node {node} does not exist: the channel has {nodes} nodes")]
    NodeOutOfRange {
        /// The index asked for.
        node: usize,
        /// How many nodes the channel has.
        nodes: usize,
    },

    /// A link from a node to itself.
    #[error("a link needs two different nodes, got {node} -> {node}")]
    SelfLink {
        /// The node on both ends.
        node: usize,
    },

    /// A broadcast that names the same receiver twice.
    #[error("broadcast receiver {node} is listed more than once")]
    DuplicateReceiver {
        /// The repeated receiver.
        node: usize,
    },
}

/// The channel crate's result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An [`Error::InvalidParameter`] naming `field`.
    pub fn invalid(field: impl Into<String>, requirement: impl Into<String>, got: impl Display) -> Self {
        Error::InvalidParameter {
            field: field.into(),
            requirement: requirement.into(),
            got: got.to_string(),
        }
    }
}

/// Fails with [`Error::InvalidParameter`] unless `ok`; keeps validation code to one line per rule.
pub(crate) fn ensure(ok: bool, field: &str, requirement: &str, got: impl Display) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(field, requirement, got))
    }
}

/// Fails unless `value` is a finite number (NaN and infinities slip through `>` comparisons).
pub(crate) fn ensure_finite(value: f64, field: &str) -> Result<()> {
    ensure(value.is_finite(), field, "must be a finite number", value)
}

/// Fails unless `value` is finite and strictly positive.
pub(crate) fn ensure_positive(value: f64, field: &str) -> Result<()> {
    ensure(value.is_finite() && value > 0.0, field, "must be > 0", value)
}

/// Fails unless `value` is finite and not negative.
pub(crate) fn ensure_non_negative(value: f64, field: &str) -> Result<()> {
    ensure(value.is_finite() && value >= 0.0, field, "must be >= 0", value)
}

/// Fails unless `value` is a probability.
pub(crate) fn ensure_probability(value: f64, field: &str) -> Result<()> {
    ensure(
        (0.0..=1.0).contains(&value),
        field,
        "must be a probability in [0, 1]",
        value,
    )
}
