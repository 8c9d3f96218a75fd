//! Single-precision matrix products for the layers, bit for bit Candle's, faster on
//! CPUs with AVX-512.
//!
//! Candle's CPU matmul is the `gemm` crate (0.17). On stable Rust that crate runs only
//! its AVX2/FMA kernels (its AVX-512 ones need its `nightly` feature): one Zen 4 core
//! multiplied a `[256, 784]` batch by a `[784, 256]` layer at 74 GFLOP/s, where MKL
//! (PyTorch) reached 100. On a CPU with AVX-512, [`matmul`] runs a kernel of its own
//! instead; elsewhere, and for the shapes `gemm` treats apart, it calls `gemm` exactly as
//! Candle does.
//!
//! **The same bits.** `gemm` cuts the contraction into blocks of `kc` values (from its
//! cache model), computes each output element's dot product over a block as one chain of
//! fused multiply-adds starting from zero, and adds each block's chain to the sum of
//! the blocks before it. The kernel here does exactly that, with `kc` from the same
//! function of the same crate. The order of the multiply-adds, not the vector width,
//! decides the rounding, so a node's results (and every seeded figure) are those of
//! Candle's matmul on every x86-64 CPU with FMA, with or without AVX-512 (other CPU
//! families: docs/determinism.md); the tests compare the bits of both paths, and
//! `WDML_KERNELS=portable` ([`super::kernels`]) forces Candle's path for a whole run.

use candle_core::{Result, bail};

use super::kernels::Kernels;

/// A matrix over a slice: element `(i, j)` is `data[i·rs + j·cs]`.
#[derive(Clone, Copy, Debug)]
pub struct Mat<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> Mat<'a> {
    /// A matrix with the given strides; refused when an element would fall outside `data`.
    pub fn strided(data: &'a [f32], (rows, cols): (usize, usize), (rs, cs): (usize, usize)) -> Result<Self> {
        let last = match (rows.checked_sub(1), cols.checked_sub(1)) {
            (Some(r), Some(c)) => r
                .checked_mul(rs)
                .zip(c.checked_mul(cs))
                .and_then(|(a, b)| a.checked_add(b)),
            _ => Some(0),
        };
        match last {
            Some(last) if rows == 0 || cols == 0 || last < data.len() => Ok(Self {
                data,
                rows,
                cols,
                rs,
                cs,
            }),
            _ => bail!(
                "matmul: a {rows}×{cols} matrix with strides ({rs}, {cs}) does not fit in {} values",
                data.len()
            ),
        }
    }

    /// A row-major `rows × cols` matrix.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Result<Self> {
        if rows.checked_mul(cols) != Some(data.len()) {
            bail!("matmul: {} values are not a {rows}×{cols} matrix", data.len())
        }
        Self::strided(data, (rows, cols), (cols, 1))
    }

    /// The transpose (no copy).
    pub fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub(crate) fn at(&self, i: usize, j: usize) -> f32 {
        self.data[i * self.rs + j * self.cs]
    }
}

#[cfg(test)]
impl<'a> Mat<'a> {
    /// A `rows × cols` matrix stored row-major, or (`transposed`) stored as its row-major
    /// `cols × rows` transpose: the two layouts the layers hand to [`matmul`].
    fn stored(data: &'a [f32], rows: usize, cols: usize, transposed: bool) -> Self {
        if transposed {
            Self::row_major(data, cols, rows).unwrap().t()
        } else {
            Self::row_major(data, rows, cols).unwrap()
        }
    }
}

/// `a · b`, row-major `[a.rows, b.cols]`, on the process's kernels.
pub fn matmul(a: Mat, b: Mat) -> Result<Vec<f32>> {
    matmul_on(Kernels::active(), a, b)
}

/// `a · b` on the given kernels (the tests run both).
fn matmul_on(kernels: Kernels, a: Mat, b: Mat) -> Result<Vec<f32>> {
    if a.cols != b.rows {
        bail!("matmul: {}×{} by {}×{}", a.rows, a.cols, b.rows, b.cols)
    }
    let (m, n, k) = (a.rows, b.cols, a.cols);
    // The kernel's tile is 12 × 32: for fewer than 32 columns its padded lanes cost
    // more than the wider vectors save (one Zen 4 core, one thread: the `[320, 128]` by
    // `[128, 10]` output layer took 1.7× `gemm`'s time, the CNN's `[25872, 10]` by
    // `[10, 16]` convolution 1.4×), while few rows cost little (the output layer's
    // weight gradient, 10 × 320 by 320 × 128, ran 1.2× faster than `gemm`). `gemm` has
    // paths of its own, in another order, for one row and for k ≤ 2.
    #[cfg(target_arch = "x86_64")]
    if m >= 2 && n >= 32 && k > 2 && kernels.avx512() {
        let mut c = Vec::with_capacity(m * n);
        // SAFETY: the CPU has AVX-512F (checked above); `a`, `b` are in bounds (checked
        // when built); the kernel writes each of the m·n values of `c` (its first block
        // stores, later ones add to what it stored) before any is read.
        unsafe {
            avx512::gemm(&a, &b, c.as_mut_ptr(), block(m, n, k));
            c.set_len(m * n);
        }
        return Ok(c);
    }
    // Zeroed as Candle's matmul does: `gemm`'s paths for thin products may read it.
    let mut c = vec![0f32; m * n];
    if m > 0 && n > 0 {
        with_gemm_crate(&a, &b, &mut c);
    }
    Ok(c)
}

/// `gemm`'s contraction block for an `m × n` product over `k` (its
/// `gemm_basic_generic`, for its f32 FMA kernel of 24 × 4): small products take blocks
/// of 512, others those of its cache model. It depends on neither `m` nor `n` beyond
/// that test, so it does not matter that `gemm` may swap them.
pub(crate) fn block(m: usize, n: usize, k: usize) -> usize {
    const FMA_MR: usize = 24;
    const FMA_NR: usize = 4;
    if m <= 64 && n <= 64 {
        k.min(512)
    } else {
        gemm_common::cache::kernel_params(m, n, k, FMA_MR, FMA_NR, size_of::<f32>()).kc
    }
}

/// The call Candle's CPU matmul makes (`cpu_backend::MatMul`): `c = a · b`.
fn with_gemm_crate(a: &Mat, b: &Mat, c: &mut [f32]) {
    let (m, n, k) = (a.rows, b.cols, a.cols);
    let threads = candle_core::utils::get_num_threads();
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: every element `gemm` reads lies inside `a.data` / `b.data` (checked when
    // the matrices were built), and `c` holds the m·n row-major outputs it writes.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            0f32,
            1f32,
            false,
            false,
            false,
            parallelism,
        )
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::Mat;

    /// Rows of `c` per kernel call; with [`NR`] columns, 24 of the 32 vector registers
    /// hold the accumulators.
    const MR: usize = 12;
    /// Columns per kernel call: two vectors of 16.
    const NR: usize = 32;

    /// `c = a · b` (`c` row-major, initialised or not: every element is written before it
    /// is read), the contraction in blocks of `kc`.
    ///
    /// The kernel reads each operand in place where its layout allows, and packs only
    /// what it must: B's block when its rows are not contiguous (a layer's `wᵀ`), A's
    /// panel when neither its rows nor its steps are contiguous, and A's last panel of
    /// rows when reading its steps in place would run past the matrix. Packing
    /// everything took 12 % of a node's model work (`perf`, `wdml bench --only steps`,
    /// 2-core Zen 4): with the CNN's products of 32 columns each packed value served
    /// only 32 multiply-adds.
    ///
    /// # Safety
    /// The CPU supports AVX-512F; `c` points to room for `a.rows · b.cols` values.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn gemm(a: &Mat, b: &Mat, c: *mut f32, kc: usize) {
        let (m, n, k) = (a.rows, b.cols, a.cols);
        if m == 0 || n == 0 {
            return;
        }
        let kc = kc.clamp(1, k);
        let panels = n.div_ceil(NR);
        let direct_b = b.cs == 1;
        // B's block as panels of NR columns, k-major within a panel (zeros beyond n);
        // A's rows, when packed, as one panel of MR, k-major (zeros beyond m).
        let mut packed_b = if direct_b {
            Vec::new()
        } else {
            vec![0f32; panels * NR * kc]
        };
        let mut packed_a = Vec::new();
        let mut k0 = 0;
        while k0 < k {
            let depth = kc.min(k - k0);
            if !direct_b {
                for (p, panel) in packed_b.chunks_exact_mut(NR * depth).take(panels).enumerate() {
                    pack(b, k0, depth, p * NR, NR.min(n - p * NR), NR, panel);
                }
            }
            for i0 in (0..m).step_by(MR) {
                let rows = MR.min(m - i0);
                let at = |ii: usize| {
                    // SAFETY: row i0 + ii < m and step k0 < k lie in `a` (its bounds were
                    // checked when it was built), so the offset stays inside `a.data`.
                    unsafe { a.data.as_ptr().add((i0 + ii) * a.rs + k0 * a.cs) }
                };
                let rows_of_a = if a.cs == 1 {
                    // Each row contiguous (a batch): one pointer per row, the missing rows
                    // of a last panel repeating the last row (computed, never stored).
                    RowsOfA::Rows(std::array::from_fn(|ii| at(ii.min(rows - 1))))
                } else if a.rs == 1 && rows == MR {
                    // A step's rows contiguous (a gradient's `gᵀ`): the packed layout,
                    // with the step's stride.
                    RowsOfA::Steps(at(0), a.cs)
                } else {
                    packed_a.resize(MR * kc, 0.0);
                    pack(&a.t(), k0, depth, i0, rows, MR, &mut packed_a);
                    RowsOfA::Steps(packed_a.as_ptr(), MR)
                };
                for p in 0..panels {
                    let j0 = p * NR;
                    let (panel, ldb) = if direct_b {
                        // SAFETY: row k0, column j0 < n of `b`.
                        (unsafe { b.data.as_ptr().add(k0 * b.rs + j0) }, b.rs)
                    } else {
                        // SAFETY: panel p of the packed block exists.
                        (unsafe { packed_b.as_ptr().add(p * NR * depth) }, NR)
                    };
                    let tile = Tile {
                        // SAFETY: row i0 < m, column j0 < n of `c`.
                        c: unsafe { c.add(i0 * n + j0) },
                        ldc: n,
                        rows,
                        cols: NR.min(n - j0),
                        first: k0 == 0,
                    };
                    // SAFETY: A's rows and B's panel hold `depth` steps from these
                    // pointers (rows i0.., columns j0..j0 + cols, or the packed copies);
                    // the tile's rows and columns of `c` exist.
                    unsafe {
                        match rows_of_a {
                            RowsOfA::Rows(ref rows) => kernel(Rows(rows), panel, ldb, depth, tile),
                            RowsOfA::Steps(first, step) => kernel(Steps(first, step), panel, ldb, depth, tile),
                        }
                    }
                }
            }
            k0 += depth;
        }
    }

    /// Where a panel's MR rows of A are: one pointer per row (each row contiguous), or
    /// the first row's pointer and the stride between steps (each step's rows
    /// contiguous).
    enum RowsOfA {
        Rows([*const f32; MR]),
        Steps(*const f32, usize),
    }

    /// How the kernel finds row `ii`'s value at step `kk`; a type per layout, so that
    /// each compiles to its own addressing.
    trait ReadA: Copy {
        /// # Safety
        /// `ii < MR` and `kk` a step of the panel.
        unsafe fn at(self, ii: usize, kk: usize) -> f32;
    }

    #[derive(Clone, Copy)]
    struct Rows<'a>(&'a [*const f32; MR]);

    impl ReadA for Rows<'_> {
        #[inline(always)]
        unsafe fn at(self, ii: usize, kk: usize) -> f32 {
            // SAFETY: the caller's contract; each row holds the panel's steps.
            unsafe { *self.0[ii].add(kk) }
        }
    }

    #[derive(Clone, Copy)]
    struct Steps(*const f32, usize);

    impl ReadA for Steps {
        #[inline(always)]
        unsafe fn at(self, ii: usize, kk: usize) -> f32 {
            // SAFETY: the caller's contract; each step holds MR rows.
            unsafe { *self.0.add(kk * self.1 + ii) }
        }
    }

    /// Where the kernel leaves its MR × NR tile: `rows` × `cols` of it at `c` (row
    /// stride `ldc`), written (`first` block) or added to what the earlier blocks left.
    struct Tile {
        c: *mut f32,
        ldc: usize,
        rows: usize,
        cols: usize,
        first: bool,
    }

    /// Packs columns `j0..j0+cols` of rows `k0..k0+depth` of `m` into a panel `width`
    /// wide: step `kk`, column `jj` at `kk·width + jj`, zeros beyond `cols`. B's panels
    /// are its columns (NR wide); A's are its rows, the columns of `aᵀ` (MR wide).
    ///
    /// Runs that lie contiguous are copied whole (a batch's rows); columns that do (a
    /// layer's `wᵀ`) go through 16 × 16 transposes in registers, the last steps an
    /// element at a time, each step written whole. An element at a time, packing took a
    /// quarter of a product's time, and the compiler turned a column-at-a-time loop into
    /// scatters, slower still.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    fn pack(m: &Mat, k0: usize, depth: usize, j0: usize, cols: usize, width: usize, out: &mut [f32]) {
        let out = &mut out[..width * depth];
        if m.cs == 1 {
            for (kk, step) in out.chunks_exact_mut(width).enumerate() {
                let start = (k0 + kk) * m.rs + j0;
                step[..cols].copy_from_slice(&m.data[start..start + cols]);
                step[cols..].fill(0.0);
            }
        } else if m.rs == 1 {
            let columns: Vec<&[f32]> = (0..cols)
                .map(|jj| {
                    let start = (j0 + jj) * m.cs + k0;
                    &m.data[start..start + depth]
                })
                .collect();
            let full_steps = depth - depth % 16;
            for (group, columns) in columns.chunks(16).enumerate() {
                // Lanes past `cols` come from zero vectors: the panel's padding.
                let (first, lanes_here) = (16 * group, 16.min(width - 16 * group));
                for kk in (0..full_steps).step_by(16) {
                    let steps = transpose(load16(columns, kk));
                    for (i, step) in steps.iter().enumerate() {
                        let at = (kk + i) * width + first;
                        // SAFETY: `lanes_here` values of step kk + i from `first` exist;
                        // masked-off lanes are not written.
                        unsafe {
                            _mm512_mask_storeu_ps(out[at..at + lanes_here].as_mut_ptr(), lanes(lanes_here), *step)
                        };
                    }
                }
            }
            let written = 16 * cols.div_ceil(16);
            for (kk, step) in out.chunks_exact_mut(width).enumerate() {
                if kk < full_steps {
                    step[written.min(width)..].fill(0.0);
                    continue;
                }
                for (v, column) in step.iter_mut().zip(&columns) {
                    *v = column[kk];
                }
                step[cols..].fill(0.0);
            }
        } else {
            for (kk, step) in out.chunks_exact_mut(width).enumerate() {
                for (jj, v) in step[..cols].iter_mut().enumerate() {
                    *v = m.at(k0 + kk, j0 + jj);
                }
                step[cols..].fill(0.0);
            }
        }
    }

    /// The transpose of a 16 × 16 block held as 16 row vectors: element `c` of result
    /// `r` is element `r` of row `c`. Pairs of rows are interleaved, then pairs of pairs
    /// (64 bits), then 128-bit lanes twice.
    #[target_feature(enable = "avx512f")]
    fn transpose(r: [__m512; 16]) -> [__m512; 16] {
        let t: [__m512; 16] = std::array::from_fn(|i| {
            let pair = (i / 2) * 2;
            if i % 2 == 0 {
                _mm512_unpacklo_ps(r[pair], r[pair + 1])
            } else {
                _mm512_unpackhi_ps(r[pair], r[pair + 1])
            }
        });
        let pd = _mm512_castps_pd;
        // In fours: (t0, t2) low and high, then (t1, t3): rows 4g..4g+3 of columns
        // c, c + 4, c + 8, c + 12 in u[4g + c].
        let u: [__m512; 16] = std::array::from_fn(|i| {
            let base = (i / 4) * 4;
            let (x, y) = if i % 4 < 2 {
                (t[base], t[base + 2])
            } else {
                (t[base + 1], t[base + 3])
            };
            _mm512_castpd_ps(if i % 2 == 0 {
                _mm512_unpacklo_pd(pd(x), pd(y))
            } else {
                _mm512_unpackhi_pd(pd(x), pd(y))
            })
        });
        // Lanes 0 and 2 (0x88) or 1 and 3 (0xdd) of two vectors: first within each half
        // of the rows, then across the halves.
        let v: [__m512; 16] = std::array::from_fn(|i| {
            let (base, j) = ((i / 8) * 8, i % 8);
            let (x, y) = (u[base + j % 4], u[base + j % 4 + 4]);
            if j < 4 {
                _mm512_shuffle_f32x4::<0x88>(x, y)
            } else {
                _mm512_shuffle_f32x4::<0xdd>(x, y)
            }
        });
        std::array::from_fn(|i| {
            let (x, y) = (v[i % 8], v[i % 8 + 8]);
            if i < 8 {
                _mm512_shuffle_f32x4::<0x88>(x, y)
            } else {
                _mm512_shuffle_f32x4::<0xdd>(x, y)
            }
        })
    }

    /// Sixteen values from `kk` of each of up to 16 runs (zeros for the missing ones).
    #[target_feature(enable = "avx512f")]
    fn load16(runs: &[&[f32]], kk: usize) -> [__m512; 16] {
        std::array::from_fn(|i| match runs.get(i) {
            // SAFETY: the slice holds the 16 values (bounds checked by indexing).
            Some(run) => unsafe { _mm512_loadu_ps(run[kk..kk + 16].as_ptr()) },
            None => _mm512_setzero_ps(),
        })
    }

    /// Mask of the first `n` (≤ 16) lanes.
    fn lanes(n: usize) -> __mmask16 {
        ((1u32 << n.min(16)) - 1) as __mmask16
    }

    /// An MR × NR tile of `c`: each element's dot product over the block as one chain of
    /// fused multiply-adds from zero (as `gemm`'s kernel), then written (`first` block)
    /// or added to what the earlier blocks left. B's step `kk` is at `b + kk·ldb`, its
    /// lanes past the tile's columns neither read nor stored.
    ///
    /// # Safety
    /// A's MR rows and B's `cols` columns hold `depth` steps; the tile lies in `c`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn kernel(a: impl ReadA, b: *const f32, ldb: usize, depth: usize, tile: Tile) {
        let masks = [lanes(tile.cols), lanes(tile.cols.saturating_sub(16))];
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        for kk in 0..depth {
            // SAFETY: step kk of B's columns exists (masked-off lanes are not read), and
            // of A's rows (the caller's contract).
            let (b0, b1) = unsafe {
                let step = b.add(kk * ldb);
                (
                    _mm512_maskz_loadu_ps(masks[0], step),
                    _mm512_maskz_loadu_ps(masks[1], step.add(16)),
                )
            };
            for (ii, acc) in acc.iter_mut().enumerate() {
                // SAFETY: ii < MR, kk < depth.
                let x = _mm512_set1_ps(unsafe { a.at(ii, kk) });
                acc[0] = _mm512_fmadd_ps(x, b0, acc[0]);
                acc[1] = _mm512_fmadd_ps(x, b1, acc[1]);
            }
        }
        for (ii, acc) in acc.iter().enumerate().take(tile.rows) {
            for (half, (&mask, &sum)) in masks.iter().zip(acc).enumerate() {
                if mask == 0 {
                    continue;
                }
                // SAFETY: the masked lanes are columns < cols of row ii < rows; masked-off
                // lanes are neither read nor written.
                unsafe {
                    let dst = tile.c.add(ii * tile.ldc + 16 * half);
                    let value = if tile.first {
                        sum
                    } else {
                        _mm512_add_ps(_mm512_maskz_loadu_ps(mask, dst), sum)
                    };
                    _mm512_mask_storeu_ps(dst, mask, value);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;

    /// Values of both signs and many magnitudes, so that a different order of the
    /// multiply-adds would show in the last bits.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let unit = (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                unit * (1 + (s & 7)) as f32
            })
            .collect()
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// Candle's matmul of the same operands, laid out the same way.
    fn candle(a: &[f32], (m, k): (usize, usize), a_t: bool, b: &[f32], n: usize, b_t: bool) -> Vec<f32> {
        let lhs = if a_t {
            Tensor::from_slice(a, (k, m), &Device::Cpu).unwrap().t().unwrap()
        } else {
            Tensor::from_slice(a, (m, k), &Device::Cpu).unwrap()
        };
        let rhs = if b_t {
            Tensor::from_slice(b, (n, k), &Device::Cpu).unwrap().t().unwrap()
        } else {
            Tensor::from_slice(b, (k, n), &Device::Cpu).unwrap()
        };
        lhs.matmul(&rhs).unwrap().flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn products_are_bit_for_bit_candles_in_every_layout() {
        // The layers' shapes (batch 64 and 64 + 256 through 784-256-128-10 and the CNN's
        // fc1 of 1,568 inputs), their gradients' (contraction over the batch), and
        // edges: k ≤ 512 in one block, 512 < k in two or more, tails of rows and
        // columns, small products that take `gemm`'s fixed blocks.
        let shapes = [
            (64, 784, 256),
            (320, 784, 256),
            (320, 256, 128),
            (320, 128, 10),
            (256, 320, 784),
            (10, 320, 128),
            (320, 1568, 128),
            (128, 320, 1568),
            (1764, 145, 32),
            (32, 1764, 145),
            (40, 1100, 48),
            (13, 700, 33),
            (65, 1030, 17),
            (2, 3, 2),
            (1, 50, 7),
            (7, 50, 1),
            (5, 2, 9),
            (10, 320, 128),
            (2, 100, 64),
            (3, 700, 33),
            (13, 1100, 40),
            (1, 300, 64),
        ];
        // Both paths, whatever WDML_KERNELS says: on a CPU without AVX-512 the native
        // one is the portable one, and that is said rather than passed in silence.
        if !Kernels::Native.avx512() {
            eprintln!(
                "SKIPPED: gemm AVX-512 kernel bits: this CPU has no AVX-512F (the portable path is still checked)"
            );
        }
        for kernels in [Kernels::Native, Kernels::Portable] {
            for (m, k, n) in shapes {
                let (a, b) = (values(m * k, 1), values(k * n, 2));
                for a_t in [false, true] {
                    for b_t in [false, true] {
                        let ours = matmul_on(kernels, Mat::stored(&a, m, k, a_t), Mat::stored(&b, k, n, b_t)).unwrap();
                        let theirs = candle(&a, (m, k), a_t, &b, n, b_t);
                        let differ = bits(&ours).iter().zip(bits(&theirs)).filter(|(x, y)| *x != y).count();
                        assert_eq!(
                            (ours.len(), differ),
                            (m * n, 0),
                            "{kernels:?}: {m}×{k} by {k}×{n}, a transposed {a_t}, b transposed {b_t}: values that differ"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn mismatched_or_out_of_bounds_matrices_are_refused() {
        let v = values(12, 3);
        assert!(Mat::row_major(&v, 3, 5).is_err());
        assert!(Mat::strided(&v, (3, 4), (5, 1)).is_err());
        let a = Mat::row_major(&v, 3, 4).unwrap();
        let err = matmul(a, a).unwrap_err().to_string();
        assert!(err.contains("3×4 by 3×4"), "{err}");
        assert_eq!(matmul(a, a.t()).unwrap().len(), 9);
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod timing {
    use super::*;

    /// Thread CPU per product, the `gemm` crate against the AVX-512 kernel, for the
    /// default models' products: `cargo test --release -p wdml-node --lib gemm_timing
    /// -- --ignored --nocapture`.
    #[test]
    #[ignore = "timing; run on an idle machine"]
    fn gemm_timing() {
        if !Kernels::Native.avx512() {
            println!("no AVX-512 on this CPU: every product takes the gemm crate");
            return;
        }
        let cpu = || crate::round::thread_cpu_time().as_secs_f64() * 1e3;
        // (name, m, k, n, a stored transposed, b stored transposed), as the layers call
        // it: a forward pass is `x · wᵀ`, a weight gradient `gᵀ · x`, an input one `g · w`.
        let shapes = [
            ("mlp fc1", 320, 784, 256, false, true),
            ("mlp fc2", 320, 256, 128, false, true),
            ("mlp fc3", 320, 128, 10, false, true),
            ("mlp fc1 dW", 256, 320, 784, true, false),
            ("mlp fc2 dW", 128, 320, 256, true, false),
            ("mlp fc3 dW", 10, 320, 128, true, false),
            ("mlp fc2 dX", 320, 128, 256, false, false),
            ("mlp fc3 dX", 320, 10, 128, false, false),
            ("conv1", 25872, 10, 16, false, true),
            ("conv1 dW", 16, 25872, 10, true, false),
            ("conv2", 1764, 145, 32, false, true),
            ("conv2 dW", 32, 1764, 145, true, false),
            ("conv2 dX", 1764, 32, 145, false, false),
            ("cnn fc1", 320, 1568, 128, false, true),
            ("cnn fc1 dW", 128, 320, 1568, true, false),
        ];
        for (name, m, k, n, a_t, b_t) in shapes {
            let (a, b) = (vec![0.5f32; m * k], vec![0.25f32; k * n]);
            let (a, b) = (Mat::stored(&a, m, k, a_t), Mat::stored(&b, k, n, b_t));
            let reps = (2e8 / (2 * m * k * n) as f64).clamp(3.0, 200.0) as usize;
            let (mut crate_ms, mut ours_ms) = (f64::INFINITY, f64::INFINITY);
            for _ in 0..7 {
                let start = cpu();
                for _ in 0..reps {
                    let mut c = vec![0f32; m * n];
                    with_gemm_crate(&a, &b, &mut c);
                    std::hint::black_box(c);
                }
                crate_ms = crate_ms.min((cpu() - start) / reps as f64);
                let start = cpu();
                for _ in 0..reps {
                    let mut c = vec![0f32; m * n];
                    // SAFETY: AVX-512 checked above; c holds m·n values.
                    unsafe { avx512::gemm(&a, &b, c.as_mut_ptr(), block(m, n, k)) };
                    std::hint::black_box(c);
                }
                ours_ms = ours_ms.min((cpu() - start) / reps as f64);
            }
            let gflops = |ms: f64| 2.0 * (m * k * n) as f64 / ms / 1e6;
            println!(
                "{name:<12} {m:>6}×{k:>5}×{n:>4}  gemm crate {crate_ms:8.3} ms {:6.1} GFLOP/s   avx512 {ours_ms:8.3} ms {:6.1} GFLOP/s  ×{:.2}",
                gflops(crate_ms),
                gflops(ours_ms),
                crate_ms / ours_ms
            );
        }
    }
}
