//! Seeds for this node's random draws, each derived from the run seed and a purpose,
//! so that adding a draw somewhere never shifts another, and the one generator every
//! one of those draws uses.
//!
//! The determinism contract (docs/determinism.md): a draw is a function of its seed and
//! of named algorithms only. The generator is ChaCha12 (`rand_chacha`, whose output is
//! value-stable across its releases), seeded from a `u64` by rand_core's PCG32
//! expansion; the samplers on top are rand 0.9's and rand_distr 0.5's (Fisher–Yates
//! shuffles, Marsaglia–Tsang gamma, uniform floats), value-stable within those minor
//! versions and pinned by `Cargo.lock`. The tests below hold test vectors for each, so a
//! dependency update that moved any seeded figure fails here first. This is the same
//! stream `rand::rngs::StdRng` gave in rand 0.9 (every figure measured with it is
//! unchanged); `StdRng` itself is not used because rand may change its algorithm in any
//! release.

pub use wdml_channel::purpose::{BATCHES, MODEL};

/// The generator behind the node's own draws: split, initialisation, mini-batches and
/// the round's public batch.
pub type Rng = rand_chacha::ChaCha12Rng;

/// The generator for `seed`.
pub fn rng(seed: u64) -> Rng {
    rand::SeedableRng::seed_from_u64(seed)
}

/// A seed for `words` (a purpose tag and coordinates) derived from `run_seed`.
pub fn derive(run_seed: u64, words: &[u64]) -> u64 {
    wdml_channel::derive_external_seed(run_seed, words)
}

#[cfg(test)]
mod tests {
    //! Test vectors of the determinism contract. Each pins one algorithm the seeded
    //! figures depend on; if one fails after a dependency update, the figures moved.
    use super::*;
    use rand::seq::SliceRandom;
    use rand::{Rng as _, RngCore};
    use rand_distr::{Distribution, Gamma, Uniform};

    #[test]
    fn the_generator_is_chacha12_seeded_by_pcg32() {
        let mut r = rng(42);
        let words: Vec<u64> = (0..3).map(|_| r.next_u64()).collect();
        assert_eq!(words, GENERATOR_42);
    }

    #[test]
    fn shuffles_are_fisher_yates_on_the_generator() {
        let mut order: Vec<u32> = (0..10).collect();
        order.shuffle(&mut rng(7));
        assert_eq!(order, SHUFFLE_7);
        let mut pool: Vec<u32> = (0..20).collect();
        let (chosen, _) = pool.partial_shuffle(&mut rng(7), 5);
        assert_eq!(chosen, PARTIAL_SHUFFLE_7);
    }

    #[test]
    fn samplers_are_value_stable() {
        let mut r = rng(3);
        let gamma: Vec<f64> = (0..3).map(|_| Gamma::new(0.5, 1.0).unwrap().sample(&mut r)).collect();
        assert_eq!(gamma, GAMMA_3);
        let uniform: Vec<f32> = (0..3)
            .map(|_| Uniform::new(-0.5f32, 0.5).unwrap().sample(&mut r))
            .collect();
        assert_eq!(uniform, UNIFORM_3);
        let unit: f64 = r.random();
        assert_eq!(unit, UNIT_3);
    }

    const GENERATOR_42: [u64; 3] = [
        9_713_269_763_989_775_522,
        10_011_513_049_433_592_189,
        11_740_708_795_755_607_249,
    ];
    const SHUFFLE_7: [u32; 10] = [1, 3, 4, 6, 0, 7, 2, 5, 8, 9];
    const PARTIAL_SHUFFLE_7: [u32; 5] = [2, 14, 8, 16, 9];
    const GAMMA_3: [f64; 3] = [0.005807578480306518, 0.10840626996505635, 0.22160132830472007];
    const UNIFORM_3: [f32; 3] = [-0.1891818, 0.46227026, 0.030614853];
    const UNIT_3: f64 = 0.48771146464204884;
}
