//! Seeds for this node's random draws, each derived from the run seed and a purpose,
//! so that adding a draw somewhere never shifts another.

pub use wdml_channel::purpose::{BATCHES, MODEL};

/// A seed for `words` (a purpose tag and coordinates) derived from `run_seed`.
pub fn derive(run_seed: u64, words: &[u64]) -> u64 {
    wdml_channel::derive_external_seed(run_seed, words)
}
