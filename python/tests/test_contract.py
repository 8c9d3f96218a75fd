"""An independent implementation of WDML's determinism contract (docs/determinism.md).

Pure Python, standard library only. It derives seeds as `wdml_channel::rng::derive_seed`
does, runs ChaCha12 as rand_chacha 0.9's `ChaCha12Rng` seeded by rand_core 0.9's
`seed_from_u64`, and shuffles as rand 0.9's `SliceRandom` does, and checks each against
test vectors produced by the Rust code (node/src/seed.rs holds the same vectors), so that
another implementation can follow this file and agree with a run bit for bit.

Run from the repository root:  python3 -m unittest discover -s python/tests -v
"""

import unittest

M32 = 0xFFFF_FFFF
M64 = 0xFFFF_FFFF_FFFF_FFFF

# --- Seed derivation (channel/src/rng.rs) ---------------------------------------------

GOLDEN_GAMMA = 0x9E37_79B9_7F4A_7C15

# Stream tags (`Stream` in channel/src/rng.rs).
PLACEMENT, SHADOWING, FADING, JITTER, FRAME_LOSS, EXTERNAL, MOBILITY, AIR_NOISE = range(1, 9)

# Purposes of the External stream (`wdml_channel::purpose`).
MODEL = 1
BATCHES = 2
PUBLIC_BATCH = 3
DEVICES = 6


def splitmix64_mix(z):
    """SplitMix64's output finaliser."""
    z &= M64
    z = ((z ^ (z >> 30)) * 0xBF58_476D_1CE4_E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D0_49BB_1331_11EB) & M64
    return z ^ (z >> 31)


def derive_seed(run_seed, stream, words):
    """`derive_seed(run_seed, stream, words)`: a 64-bit seed for one draw."""
    h = splitmix64_mix(run_seed ^ splitmix64_mix(stream))
    for w in words:
        h = splitmix64_mix(((h + GOLDEN_GAMMA) & M64) ^ splitmix64_mix(w))
    return splitmix64_mix(h ^ len(words))


def derive_external_seed(run_seed, words):
    """`wdml_channel::derive_external_seed` = `wdml_node::seed::derive`."""
    return derive_seed(run_seed, EXTERNAL, words)


class SplitMix64:
    """The channel's generator (`wdml_channel::rng::SplitMix64`)."""

    def __init__(self, seed):
        self.state = seed & M64

    def next_u64(self):
        self.state = (self.state + GOLDEN_GAMMA) & M64
        return splitmix64_mix(self.state)

    def next_u32(self):
        return self.next_u64() >> 32


# --- ChaCha12, as rand_chacha 0.9's ChaCha12Rng --------------------------------------

PCG_MUL = 6364136223846793005
PCG_INC = 11634580027462260723
CHACHA_CONSTANTS = (0x6170_7865, 0x3320_646E, 0x7962_2D32, 0x6B20_6574)  # "expand 32-byte k"
BUFFER_WORDS = 64  # rand_chacha refills 4 blocks of 16 words at a time


def pcg32_key(seed):
    """rand_core 0.9 `SeedableRng::seed_from_u64`: eight PCG32 outputs, little-endian,
    as the 32-byte seed; returned as the eight key words."""
    state = seed & M64
    words = []
    for _ in range(8):
        state = (state * PCG_MUL + PCG_INC) & M64  # advance first
        xorshifted = (((state >> 18) ^ state) >> 27) & M32
        rot = state >> 59
        words.append(((xorshifted >> rot) | (xorshifted << ((32 - rot) & 31))) & M32)
    return words


def _rotl(x, n):
    return ((x << n) | (x >> (32 - n))) & M32


def _quarter(s, a, b, c, d):
    s[a] = (s[a] + s[b]) & M32
    s[d] = _rotl(s[d] ^ s[a], 16)
    s[c] = (s[c] + s[d]) & M32
    s[b] = _rotl(s[b] ^ s[c], 12)
    s[a] = (s[a] + s[b]) & M32
    s[d] = _rotl(s[d] ^ s[a], 8)
    s[c] = (s[c] + s[d]) & M32
    s[b] = _rotl(s[b] ^ s[c], 7)


def chacha_block(key, counter, nonce=0, rounds=12):
    """One 16-word ChaCha block: constants, key (8 words), 64-bit block counter (words 12,
    13: low, high), 64-bit stream id (words 14, 15: low, high)."""
    init = list(CHACHA_CONSTANTS) + list(key) + [
        counter & M32, (counter >> 32) & M32, nonce & M32, (nonce >> 32) & M32]
    s = list(init)
    for _ in range(rounds // 2):
        _quarter(s, 0, 4, 8, 12)  # columns
        _quarter(s, 1, 5, 9, 13)
        _quarter(s, 2, 6, 10, 14)
        _quarter(s, 3, 7, 11, 15)
        _quarter(s, 0, 5, 10, 15)  # diagonals
        _quarter(s, 1, 6, 11, 12)
        _quarter(s, 2, 7, 8, 13)
        _quarter(s, 3, 4, 9, 14)
    return [(x + y) & M32 for x, y in zip(s, init)]


class ChaCha12Rng:
    """`ChaCha12Rng::seed_from_u64(seed)` with rand_core 0.9's `BlockRng` buffering."""

    def __init__(self, seed):
        self.key = pcg32_key(seed)
        self.counter = 0  # next block to generate
        self.results = [0] * BUFFER_WORDS
        self.index = BUFFER_WORDS  # empty: the first draw refills

    def _generate(self):
        self.results = []
        for _ in range(BUFFER_WORDS // 16):
            self.results += chacha_block(self.key, self.counter)
            self.counter = (self.counter + 1) & M64

    def next_u32(self):
        if self.index >= BUFFER_WORDS:
            self._generate()
            self.index = 0
        value = self.results[self.index]
        self.index += 1
        return value

    def next_u64(self):
        # Two consecutive words of the stream, the first as the low half; at the buffer's
        # last word the high half is the first word of the next buffer.
        if self.index < BUFFER_WORDS - 1:
            lo, hi = self.results[self.index], self.results[self.index + 1]
            self.index += 2
        elif self.index >= BUFFER_WORDS:
            self._generate()
            lo, hi = self.results[0], self.results[1]
            self.index = 2
        else:
            lo = self.results[BUFFER_WORDS - 1]
            self._generate()
            hi = self.results[0]
            self.index = 1
        return (hi << 32) | lo


def rng(seed):
    """`wdml_node::seed::rng`."""
    return ChaCha12Rng(seed)


# --- Bounded integers, as rand 0.9 (default features: no `unbiased`) -----------------

def random_range_u32(r, bound):
    """`r.random_range(..bound)` for u32 (`UniformInt<u32>::sample_single`): Canon's
    method: one widening multiply and at most one extra draw, no loop."""
    assert 0 < bound <= M32
    m = r.next_u32() * bound
    result, lo = m >> 32, m & M32
    if lo > ((-bound) & M32):  # lo_order > range.wrapping_neg()
        new_hi = (r.next_u32() * bound) >> 32
        if lo + new_hi > M32:  # lo_order.checked_add(new_hi) overflows
            result += 1
    return result


def random_range_u64(r, bound):
    """`UniformInt<u64>::sample_single(0, bound)`: the same on 64-bit words."""
    assert 0 < bound <= M64
    m = r.next_u64() * bound
    result, lo = m >> 64, m & M64
    if lo > ((-bound) & M64):
        new_hi = (r.next_u64() * bound) >> 64
        if lo + new_hi > M64:
            result += 1
    return result


def random_range_usize(r, bound):
    """`r.random_range(..bound)` for usize on a 64-bit target (`UniformUsize`): u32
    sampling while the exclusive bound fits in a u32, u64 sampling above."""
    if bound > M32:
        return random_range_u64(r, bound)
    return random_range_u32(r, bound)


def _bound_u32(m):
    """rand's `calculate_bound_u32`: the product m (m+1) ... (m+k-1) for the largest k that
    fits in a u32, and k."""
    product, current = m, m + 1
    while product * current <= M32:
        product *= current
        current += 1
    return product, current - m


class IncreasingUniform:
    """rand 0.9 `seq::increasing_uniform::IncreasingUniform`: yields an index uniform in
    0..=n, then 0..=n+1, …, taking several from one bounded u32 draw."""

    def __init__(self, r, n):
        self.r = r
        self.n = n
        self.chunk = 0
        self.chunk_remaining = 1 if n == 0 else 0

    def next_index(self):
        next_n = self.n + 1
        if self.chunk_remaining == 0:
            bound, count = _bound_u32(next_n)
            self.chunk = random_range_u32(self.r, bound)
            next_remaining = count - 1
        else:
            next_remaining = self.chunk_remaining - 1
        if next_remaining == 0:
            result = self.chunk
        else:
            result = self.chunk % next_n
            self.chunk //= next_n
        self.chunk_remaining = next_remaining
        self.n = next_n
        return result


def partial_shuffle(items, r, amount):
    """rand 0.9 `SliceRandom::partial_shuffle` on a list, in place; returns
    (chosen, rest). The chosen elements are the list's *last* `amount` elements."""
    length = len(items)
    m = max(length - amount, 0)
    if length < M32:
        chooser = IncreasingUniform(r, m)
        for i in range(m, length):
            j = chooser.next_index()
            items[i], items[j] = items[j], items[i]
    else:  # never reached by WDML; kept for completeness
        for i in range(m, length):
            j = random_range_usize(r, i + 1)
            items[i], items[j] = items[j], items[i]
    return items[m:], items[:m]


def shuffle(items, r):
    """rand 0.9 `SliceRandom::shuffle`: a full partial_shuffle (no draw for len <= 1)."""
    if len(items) > 1:
        partial_shuffle(items, r, len(items))


def public_batch_indices(run_seed, round_, pool, size):
    """The rows of the public pool a node uses as round `round_`'s public batch
    (coordinator/src/rounds.rs derives the seed, node/src/shard.rs `public_batch`)."""
    if size > pool:
        raise ValueError("public batch larger than the public pool")
    seed = derive_external_seed(run_seed, [PUBLIC_BATCH, round_])
    order = list(range(pool))
    chosen, _ = partial_shuffle(order, rng(seed), size)
    return chosen


# --- Test vectors (from the Rust code; node/src/seed.rs holds the same) --------------

GENERATOR_42 = [9_713_269_763_989_775_522, 10_011_513_049_433_592_189, 11_740_708_795_755_607_249]
SHUFFLE_7 = [1, 3, 4, 6, 0, 7, 2, 5, 8, 9]
PARTIAL_SHUFFLE_7 = [2, 14, 8, 16, 9]

DERIVE_42 = {
    (PUBLIC_BATCH, 0): 9_810_015_922_006_720_641,
    (PUBLIC_BATCH, 1): 295_006_522_510_590_645,
    (MODEL, 0): 13_776_959_553_214_245_622,
    (BATCHES, 0): 7_441_156_338_384_111_392,
    (): 15_827_732_510_056_183_095,
}
DERIVE_FADING_7_123 = 3_000_678_088_677_788_127  # derive_seed(7, Fading, [1, 2, 3])

PUBLIC_BATCH_42_POOL_1000 = {  # (round, size): first 16 rows
    (0, 100): [852, 244, 13, 822, 84, 252, 175, 986, 524, 817, 682, 960, 112, 6, 913, 295],
    (1, 100): [330, 677, 888, 585, 684, 795, 415, 70, 257, 962, 970, 524, 951, 688, 931, 774],
    (0, 128): [587, 881, 12, 520, 265, 244, 706, 840, 507, 751, 811, 562, 961, 318, 256, 685],
    (1, 128): [436, 168, 861, 418, 143, 771, 665, 139, 249, 787, 262, 508, 60, 850, 923, 984],
}
# The quickstart's whole first public batch (seed 42, public_pool 1000, public_batch 128).
QUICKSTART_PUBLIC_BATCH_0 = [
    587, 881, 12, 520, 265, 244, 706, 840, 507, 751, 811, 562, 961, 318, 256, 685,
    101, 891, 880, 514, 245, 459, 5, 510, 48, 336, 601, 568, 105, 182, 293, 803,
    801, 438, 390, 834, 75, 616, 598, 580, 411, 668, 508, 19, 987, 309, 52, 585,
    41, 307, 404, 943, 604, 748, 196, 650, 990, 85, 143, 933, 624, 10, 405, 571,
    406, 579, 592, 860, 226, 377, 994, 794, 33, 633, 623, 259, 541, 778, 581, 456,
    232, 989, 383, 445, 211, 713, 345, 992, 790, 233, 325, 732, 384, 478, 951, 286,
    978, 771, 347, 618, 189, 622, 341, 889, 775, 873, 742, 275, 477, 160, 277, 800,
    45, 480, 815, 783, 201, 34, 816, 373, 442, 186, 559, 939, 777, 157, 813, 296,
]

# seed_from_u64(0)'s 32-byte ChaCha key.
KEY_0 = bytes([
    236, 242, 115, 249, 129, 181, 205, 69, 135, 240, 70, 115, 6, 173, 108, 173,
    208, 208, 163, 227, 51, 23, 231, 103, 242, 155, 234, 114, 215, 138, 125, 254,
])
U32_0 = [3442241407, 3140108210, 2384947579, 3321986196, 3476097558, 111001858, 2883974864, 2508944925]
U32_0_60_70 = [693850995, 931138443, 1876721159, 4196412386, 1275841650,
               3940391150, 1667408037, 2908566801, 1628334484, 64531984]
U64_0_AFTER_1_U32 = 10_243_271_857_619_484_594
U64_0_AFTER_63_U32 = 5_479_698_165_821_090_786  # straddles the 64-word buffer
U32_0_AFTER_THAT = 3_940_391_150
U64_0_33RD = 16_923_851_123_973_672_050  # after 32 next_u64: the second buffer's first

RANGE_5 = {  # rng(5): eight (or four) successive random_range(..bound)
    ("u32", 3_000_000_000): [538838173, 539646500, 19854244, 1569437178,
                             2493966518, 754361491, 2244422095, 1096560729],
    ("usize", 1000): [179, 342, 179, 6, 523, 454, 831, 652],
    ("usize", (1 << 40) + 7): [376172054832, 7276657454, 499760587145, 717939932121],
    ("usize", M32): [771430778, 772588022, 2246893784, 3570501543],
    ("usize", 1 << 32): [1469422089, 28424443, 1952189793, 2804452859],
}
SHUFFLE_1000_11_FIRST16 = [572, 2, 772, 712, 17, 526, 790, 394, 197, 117, 388, 846, 98, 198, 120, 357]


class SeedDerivation(unittest.TestCase):
    def test_splitmix64_matches_the_reference_sequence(self):
        # channel/src/rng.rs: Vigna's splitmix64.c seeded with 0.
        g = SplitMix64(0)
        self.assertEqual([g.next_u64() for _ in range(3)],
                         [0xE220_A839_7B1D_CDAF, 0x6E78_9E6A_A1B9_65F4, 0x06C4_5D18_8009_454F])

    def test_external_seeds(self):
        for words, seed in DERIVE_42.items():
            self.assertEqual(derive_external_seed(42, list(words)), seed, words)
        self.assertEqual(derive_seed(7, FADING, [1, 2, 3]), DERIVE_FADING_7_123)

    def test_seeds_depend_on_every_coordinate(self):
        base = derive_seed(7, FADING, [1, 2, 3])
        for other in (derive_seed(8, FADING, [1, 2, 3]), derive_seed(7, SHADOWING, [1, 2, 3]),
                      derive_seed(7, FADING, [2, 1, 3]), derive_seed(7, FADING, [1, 2, 3, 0])):
            self.assertNotEqual(base, other)


class Generator(unittest.TestCase):
    def test_the_generator_is_chacha12_seeded_by_pcg32(self):
        r = rng(42)
        self.assertEqual([r.next_u64() for _ in range(3)], GENERATOR_42)

    def test_seed_expansion(self):
        key = b"".join(w.to_bytes(4, "little") for w in pcg32_key(0))
        self.assertEqual(key, KEY_0)

    def test_words_and_buffering(self):
        r = rng(0)
        self.assertEqual([r.next_u32() for _ in range(8)], U32_0)
        r = rng(0)
        words = [r.next_u32() for _ in range(70)]
        self.assertEqual(words[60:70], U32_0_60_70)
        r = rng(0)
        r.next_u32()
        self.assertEqual(r.next_u64(), U64_0_AFTER_1_U32)
        r = rng(0)
        for _ in range(63):
            r.next_u32()
        self.assertEqual(r.next_u64(), U64_0_AFTER_63_U32)
        self.assertEqual(r.next_u32(), U32_0_AFTER_THAT)
        self.assertEqual(U64_0_AFTER_63_U32, words[63] | (words[64] << 32))
        r = rng(0)
        for _ in range(32):
            r.next_u64()
        self.assertEqual(r.next_u64(), U64_0_33RD)

    def test_chacha_block_function(self):
        # The round function on RFC 8439 section 2.3.2's 20-round block. The RFC's words
        # 12..15 (counter 1, nonce 0x09000000, 0x4a000000, 0) map onto rand_chacha's layout
        # (words 12, 13: 64-bit counter low, high; 14, 15: 64-bit stream id low, high).
        key = [int.from_bytes(bytes(range(i, i + 4)), "little") for i in range(0, 32, 4)]
        block = chacha_block(key, counter=1 | (0x0900_0000 << 32), nonce=0x4A00_0000, rounds=20)
        self.assertEqual(block[:4], [0xE4E7F110, 0x15593BD1, 0x1FDD0F50, 0xC47120A3])


class Samplers(unittest.TestCase):
    def test_bounded_integers(self):
        for (kind, bound), expected in RANGE_5.items():
            r = rng(5)
            draw = random_range_u32 if kind == "u32" else random_range_usize
            self.assertEqual([draw(r, bound) for _ in expected], expected, (kind, bound))

    def test_shuffles_are_fisher_yates_on_the_generator(self):
        order = list(range(10))
        shuffle(order, rng(7))
        self.assertEqual(order, SHUFFLE_7)
        chosen, _ = partial_shuffle(list(range(20)), rng(7), 5)
        self.assertEqual(chosen, PARTIAL_SHUFFLE_7)
        order = list(range(1000))
        shuffle(order, rng(11))
        self.assertEqual(order[:16], SHUFFLE_1000_11_FIRST16)

    def test_public_batches_follow_from_the_run_seed(self):
        for (round_, size), first in PUBLIC_BATCH_42_POOL_1000.items():
            batch = public_batch_indices(42, round_, 1000, size)
            self.assertEqual(len(batch), size)
            self.assertEqual(len(set(batch)), size)
            self.assertEqual(batch[:16], first, (round_, size))
        self.assertEqual(public_batch_indices(42, 0, 1000, 128), QUICKSTART_PUBLIC_BATCH_0)


if __name__ == "__main__":
    unittest.main()
