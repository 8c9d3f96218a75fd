//! Seed derivation and the generator behind every random draw.
//!
//! Each random quantity (a node's position, a link's shadowing, a link's fading in a
//! round, a message's frame losses, …) gets its own generator, seeded by hashing the run
//! seed with a stream tag and the quantity's coordinates (nodes, round, message). A
//! draw therefore depends only on *what* is drawn, never on how many other draws came
//! before it: links can be queried in any order, by the coordinator or by any node, and
//! everyone sees the same channel.
//!
//! The generator is SplitMix64 (Steele, Lea & Flood, OOPSLA 2014), written out here
//! rather than taken from `rand::rngs::StdRng` because `StdRng`'s algorithm may change
//! between `rand` releases; a fixed algorithm keeps a run seed's channel reproducible
//! across dependency upgrades. SplitMix64 passes BigCrush and we draw only a handful of
//! numbers per stream.

use rand::RngCore;

/// The SplitMix64 increment (2^64 / golden ratio).
const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's output mix (a bijective avalanche of 64 bits).
pub fn splitmix64_mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Which quantity a stream draws; the tag keeps the streams of one link independent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Placement = 1,
    Shadowing = 2,
    Fading = 3,
    Jitter = 4,
    FrameLoss = 5,
    /// Draws made outside the channel (a node's model initialisation, its batches, …).
    External = 6,
    /// Random-waypoint walks.
    Mobility = 7,
    /// The receiver noise on an over-the-air sum.
    AirNoise = 8,
}

/// A seed for a random quantity outside the channel, named by `words` (a [`purpose`]
/// tag and coordinates), derived from `run_seed` exactly as the channel derives its
/// own: one derivation for the whole system.
pub fn derive_external_seed(run_seed: u64, words: &[u64]) -> u64 {
    derive_seed(run_seed, Stream::External, words)
}

/// The purposes of the draws made outside the channel, all in one place so that no
/// two share a seed.
pub mod purpose {
    /// A node's model initialisation (coordinate: node id).
    pub const MODEL: u64 = 1;
    /// A node's private mini-batches (coordinate: node id).
    pub const BATCHES: u64 = 2;
    /// The public batch of a round (coordinate: round).
    pub const PUBLIC_BATCH: u64 = 3;
    // 4 and 5 were the coordinator's round tokens and sessions, once derived from the
    // run seed; they are secrets from the OS random source now. Not reused.
    /// Which node gets which device profile of a mix (coordinate: shuffle step).
    pub const DEVICES: u64 = 6;
    /// The public pool drawn from a dataset of its own (`data.public`; no coordinate).
    pub const PUBLIC_POOL: u64 = 7;
    /// Which of each node's private rows `data.public_overlap` also puts in the public
    /// pool (no coordinate).
    pub const PUBLIC_OVERLAP: u64 = 8;
}

/// A 64-bit seed for `stream` at the coordinates `words`, derived from `run_seed`.
///
/// Every word goes through the full SplitMix64 mix, and the number of words is mixed in
/// last, so tuples of different lengths or different orders give unrelated seeds.
pub fn derive_seed(run_seed: u64, stream: Stream, words: &[u64]) -> u64 {
    let mut hash = splitmix64_mix(run_seed ^ splitmix64_mix(stream as u64));
    for &word in words {
        hash = splitmix64_mix(hash.wrapping_add(GOLDEN_GAMMA) ^ splitmix64_mix(word));
    }
    splitmix64_mix(hash ^ words.len() as u64)
}

/// The SplitMix64 generator, usable with every `rand` / `rand_distr` distribution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator whose state starts at `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// A generator for `stream` at `words` under `run_seed` (see [`derive_seed`]).
    pub fn for_stream(run_seed: u64, stream: Stream, words: &[u64]) -> Self {
        Self {
            state: derive_seed(run_seed, stream, words),
        }
    }
}

impl RngCore for SplitMix64 {
    fn next_u32(&mut self) -> u32 {
        // The high half of a SplitMix64 output is its best-mixed part.
        (self.next_u64() >> 32) as u32
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN_GAMMA);
        splitmix64_mix(self.state)
    }

    fn fill_bytes(&mut self, dst: &mut [u8]) {
        rand::rand_core::impls::fill_bytes_via_next(self, dst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_matches_the_reference_sequence() {
        // Reference outputs of Vigna's splitmix64.c seeded with 0.
        let mut rng = SplitMix64 { state: 0 };
        assert_eq!(rng.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(rng.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(rng.next_u64(), 0x06C4_5D18_8009_454F);
    }

    #[test]
    fn derived_seeds_depend_on_every_coordinate() {
        let base = derive_seed(7, Stream::Fading, &[1, 2, 3]);
        assert_eq!(base, derive_seed(7, Stream::Fading, &[1, 2, 3]));
        assert_ne!(base, derive_seed(8, Stream::Fading, &[1, 2, 3]));
        assert_ne!(base, derive_seed(7, Stream::Shadowing, &[1, 2, 3]));
        assert_ne!(base, derive_seed(7, Stream::Fading, &[2, 1, 3]));
        assert_ne!(base, derive_seed(7, Stream::Fading, &[1, 2, 4]));
        assert_ne!(base, derive_seed(7, Stream::Fading, &[1, 2, 3, 0]));
    }
}
