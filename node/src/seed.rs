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

pub use wdml_channel::purpose::{BATCHES, MODEL, PUBLIC_OVERLAP, PUBLIC_POOL};

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

    #[test]
    fn the_generator_buffers_words_as_rand_core_does() {
        let mut r = rng(0);
        let words: Vec<u32> = (0..8).map(|_| r.next_u32()).collect();
        assert_eq!(words, U32_0);
        // A u64 is two consecutive words, the first as its low half, even at an odd
        // position and across the 64-word (four-block) buffer's end.
        let mut r = rng(0);
        r.next_u32();
        assert_eq!(r.next_u64(), U64_0_AFTER_1_U32);
        let mut r = rng(0);
        for _ in 0..63 {
            r.next_u32();
        }
        assert_eq!(r.next_u64(), U64_0_AFTER_63_U32);
        assert_eq!(r.next_u32(), U32_0_AFTER_THAT);
    }

    #[test]
    fn bounded_integers_are_rand_canon_samples() {
        // The bounded draws under the shuffles: u32 below 2^32, u64 from there (usize).
        let mut r = rng(5);
        let draws: Vec<u32> = (0..8).map(|_| r.random_range(..3_000_000_000u32)).collect();
        assert_eq!(draws, RANGE_5_U32_3E9);
        let mut r = rng(5);
        let draws: Vec<usize> = (0..8).map(|_| r.random_range(..1000usize)).collect();
        assert_eq!(draws, RANGE_5_USIZE_1000);
        let mut r = rng(5);
        let draws: Vec<u64> = (0..4).map(|_| r.random_range(..(1u64 << 40) + 7)).collect();
        assert_eq!(draws, RANGE_5_U64_2_40_7);
    }

    #[test]
    fn public_batches_follow_from_the_run_seed() {
        // The quickstart's (run seed 42, a public pool of 1000) public batches, seeded as
        // the coordinator seeds them and drawn as `Shard::public_batch` draws them.
        use wdml_channel::purpose::PUBLIC_BATCH;
        assert_eq!(derive(42, &[PUBLIC_BATCH, 0]), PUBLIC_BATCH_SEEDS_42[0]);
        assert_eq!(derive(42, &[PUBLIC_BATCH, 1]), PUBLIC_BATCH_SEEDS_42[1]);
        let batches = [
            (0u32, 100usize, PUBLIC_BATCH_42_0_100),
            (1, 100, PUBLIC_BATCH_42_1_100),
            (0, 128, PUBLIC_BATCH_42_0_128),
            (1, 128, PUBLIC_BATCH_42_1_128),
        ];
        for (round, size, first) in batches {
            let mut order: Vec<u32> = (0..1000).collect();
            let seed = derive(42, &[PUBLIC_BATCH, u64::from(round)]);
            let (chosen, _) = order.partial_shuffle(&mut rng(seed), size);
            assert_eq!(chosen.len(), size);
            assert_eq!(&chosen[..16], &first[..], "round {round}, size {size}");
        }
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
    const U32_0: [u32; 8] = [
        3_442_241_407,
        3_140_108_210,
        2_384_947_579,
        3_321_986_196,
        3_476_097_558,
        111_001_858,
        2_883_974_864,
        2_508_944_925,
    ];
    const U64_0_AFTER_1_U32: u64 = 10_243_271_857_619_484_594;
    const U64_0_AFTER_63_U32: u64 = 5_479_698_165_821_090_786;
    const U32_0_AFTER_THAT: u32 = 3_940_391_150;
    const RANGE_5_U32_3E9: [u32; 8] = [
        538_838_173,
        539_646_500,
        19_854_244,
        1_569_437_178,
        2_493_966_518,
        754_361_491,
        2_244_422_095,
        1_096_560_729,
    ];
    const RANGE_5_USIZE_1000: [usize; 8] = [179, 342, 179, 6, 523, 454, 831, 652];
    const RANGE_5_U64_2_40_7: [u64; 4] = [376_172_054_832, 7_276_657_454, 499_760_587_145, 717_939_932_121];
    const PUBLIC_BATCH_SEEDS_42: [u64; 2] = [9_810_015_922_006_720_641, 295_006_522_510_590_645];
    /// The first 16 rows of round 0's and round 1's public batches of 100 and of 128 (the
    /// quickstart's size) for run seed 42 and a pool of 1000.
    const PUBLIC_BATCH_42_0_100: [u32; 16] = [
        852, 244, 13, 822, 84, 252, 175, 986, 524, 817, 682, 960, 112, 6, 913, 295,
    ];
    const PUBLIC_BATCH_42_1_100: [u32; 16] = [
        330, 677, 888, 585, 684, 795, 415, 70, 257, 962, 970, 524, 951, 688, 931, 774,
    ];
    const PUBLIC_BATCH_42_0_128: [u32; 16] = [
        587, 881, 12, 520, 265, 244, 706, 840, 507, 751, 811, 562, 961, 318, 256, 685,
    ];
    const PUBLIC_BATCH_42_1_128: [u32; 16] = [
        436, 168, 861, 418, 143, 771, 665, 139, 249, 787, 262, 508, 60, 850, 923, 984,
    ];
}
