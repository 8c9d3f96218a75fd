//! The coordinator's error type.

use std::path::{Path, PathBuf};

/// Everything that can go wrong in the coordinator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is out of range; names the field.
    #[error("invalid config `{field}`: {reason}")]
    Config { field: String, reason: String },

    /// Too few nodes were ready (joined, and their Sync stream open) before the join
    /// timeout.
    #[error(
        "only {ready} of the {min} nodes needed were ready within {waited_s:.0} s, {joined} joined \
         (a node that joined and never opened its stream failed while preparing: see its log; \
         coordinator.join_timeout_ms waits for them, coordinator.min_nodes says how many are needed)"
    )]
    NotEnoughNodes {
        ready: usize,
        joined: usize,
        min: usize,
        waited_s: f64,
    },

    /// Every node is gone: there is nobody left to run a round.
    #[error("no live node left at round {round}")]
    NoLiveNodes { round: u32 },

    /// The run directory cannot be used as asked.
    #[error("run directory {path}: {reason}")]
    RunDirectory { path: PathBuf, reason: String },

    /// A file of the run directory is damaged.
    #[error("{path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },

    /// Reading or writing a file; names the path.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },

    /// A socket or task, not a file.
    #[error("i/o: {0}")]
    Net(#[from] std::io::Error),

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

    /// An I/O error on `path`.
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        // An error from `wdml_files` names the path already: said once ("disk
        // full" printed the path twice).
        let prefix = format!("{}: ", path.display());
        let source = match source.to_string().strip_prefix(&prefix) {
            Some(rest) => std::io::Error::new(source.kind(), rest.to_string()),
            None => source,
        };
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_io_error_names_its_path_once() {
        let path = Path::new("/runs/x/summary.json");
        let named = std::io::Error::new(
            std::io::ErrorKind::StorageFull,
            "/runs/x/summary.json: No space left on device (os error 28)",
        );
        assert_eq!(
            Error::io(path, named).to_string(),
            "/runs/x/summary.json: No space left on device (os error 28)"
        );
        let bare = std::io::Error::new(std::io::ErrorKind::StorageFull, "No space left on device (os error 28)");
        assert_eq!(
            Error::io(path, bare).to_string(),
            "/runs/x/summary.json: No space left on device (os error 28)"
        );
    }
}
