//! Hand-written CPU kernels, as Candle custom ops with their gradients.
//!
//! Candle 0.9.1's CPU convolution is fast forward (im2col + gemm) but its backward pass
//! is slow and, for the kernel, wrong: the input gradient is a direct-loop
//! `conv_transpose2d`, and the kernel gradient a convolution by the transposed,
//! non-contiguous output gradient, which comes out wrong whenever batch > 1 and out
//! channels > 1 (huggingface/candle#3735). Its `max_pool2d` backward scales gradients by
//! a constant factor. On one thread, a CNN training step built from them measured ~5×
//! slower than with the ops below.
//!
//! Here:
//! - [`conv3x3_pool_relu`] is a whole CNN stage (3×3 convolution, 2×2 max-pool, ReLU)
//!   in NHWC layout, the convolution as `im2col(x) · Wᵀ` with the bias as an extra
//!   weight column meeting a column of ones, run a few images at a time (see
//!   `ConvPoolRelu` for the gradient). ReLU after pooling is the same function as
//!   before it (ReLU is monotone), on a quarter of the values. A first layer (one input
//!   channel) skips im2col: [`conv_one_channel`] computes the same bits directly.
//! - [`linear`] is a dense layer, `x · wᵀ + b` and its ReLU, in one op whose products
//!   run on [`super::gemm`] and which skips the input gradient when the input is data.
//! - [`conv_norm`] is a ResNet layer: a convolution without bias for any odd window
//!   and stride (the CNN's im2col generalised, [`gather`]; the input gradient of a
//!   stride-1 one as a convolution by the flipped kernel, of others a [`scatter`]),
//!   then a group norm with its affine γ/β, the block's residual sum and the ReLU, all
//!   one op.
//!
//! NHWC keeps everything contiguous: a convolution's output already is the next layer's
//! input, and a `[b, 784]` batch of images is an NHWC tensor with one channel.

use std::ops::Range;
use std::sync::OnceLock;

use super::gemm::{self, Mat};
use super::kernels::Kernels;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Device, Layout, Result, Shape, Storage, Tensor, bail};

/// The contiguous `f32` values of a CPU storage seen through `layout`.
fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(values) = storage else {
        bail!("{op}: expects f32, got {:?}", storage.dtype())
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&values[start..end]),
        None => bail!("{op}: expects a contiguous tensor"),
    }
}

/// The contiguous `f32` values behind a tensor's storage guard (CPU only).
pub(crate) fn tensor_f32<'a>(storage: &'a Storage, layout: &Layout, op: &str) -> Result<&'a [f32]> {
    match storage {
        Storage::Cpu(cpu) => contiguous_f32(cpu, layout, op),
        _ => bail!("{op}: only implemented on the CPU"),
    }
}

/// The dimensions `(batch, height, width, channels)` of an NHWC tensor.
type Nhwc = (usize, usize, usize, usize);

/// Columns of one im2col row for `c` channels: 3×3 taps of every channel, then a 1.
fn row_len(c: usize) -> usize {
    9 * c + 1
}

/// The taps `kx ∈ [lo, hi)` of a 3×3 window centred on column `x` of a row `w` wide
/// that fall inside the image (padding 1 supplies the rest).
fn taps(x: usize, w: usize) -> (usize, usize) {
    (usize::from(x == 0), if x + 1 == w { 2 } else { 3 })
}

/// Image, row and column of a pixel, stepped in NHWC order (dividing for them on
/// every pixel was a visible share of the gather).
struct Pixel {
    n: usize,
    y: usize,
    x: usize,
}

impl Pixel {
    fn at(index: usize, h: usize, w: usize) -> Self {
        Self {
            n: index / (h * w),
            y: (index / w) % h,
            x: index % w,
        }
    }

    fn advance(&mut self, h: usize, w: usize) {
        self.x += 1;
        if self.x == w {
            self.x = 0;
            self.y += 1;
            if self.y == h {
                self.y = 0;
                self.n += 1;
            }
        }
    }
}

/// A convolution's window over NHWC maps: a `k × k` kernel (`k` odd), a stride, and
/// padding `k / 2`, so that output pixel `(y, x)` is centred on input pixel
/// `(y·stride, x·stride)` and a map `h` high gives `⌈h / stride⌉` rows, whatever the
/// kernel: a ResNet's 3×3 and 1×1 stride-2 branches meet on the same grid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Window {
    pub k: usize,
    pub stride: usize,
}

impl Window {
    /// The CNN's: 3×3, stride 1.
    pub const THREE: Window = Window { k: 3, stride: 1 };

    fn pad(self) -> usize {
        self.k / 2
    }

    /// Output side for an input side.
    pub fn out_side(self, side: usize) -> usize {
        (side + 2 * self.pad() - self.k) / self.stride + 1
    }

    /// Output `(rows, columns)` for an input `h × w`.
    fn out_dims(self, h: usize, w: usize) -> (usize, usize) {
        (self.out_side(h), self.out_side(w))
    }

    /// Checked: an odd kernel and a stride of at least 1, on a map of at least 1×1.
    fn check(self, h: usize, w: usize, op: &str) -> Result<()> {
        if self.k.is_multiple_of(2) || self.stride == 0 || h == 0 || w == 0 {
            bail!(
                "{op}: a {k}×{k} kernel, stride {s}, on a {h}×{w} map",
                k = self.k,
                s = self.stride
            )
        }
        Ok(())
    }

    /// The taps `kx ∈ [lo, hi)` of the window of output column `ox` that fall inside a
    /// row `w` wide (padding supplies the rest); the first of them reads input column
    /// `ox·stride + lo − pad`. With an odd kernel and padding `k / 2` the centre tap is
    /// always inside, so `lo < hi`.
    fn taps(self, ox: usize, w: usize) -> (usize, usize) {
        let x0 = ox * self.stride;
        (self.pad().saturating_sub(x0), self.k.min(w + self.pad() - x0))
    }
}

/// Gathers the 3×3 neighbourhoods (padding 1) of pixels `rows` of an NHWC tensor
/// `[b, h, w, c]` into `[rows.len(), 9·c + 1]`: row `(n, y, x)` holds
/// `x[n, y+ky−1, x+kx−1, ci]` at column `(ky·3 + kx)·c + ci` (zero outside the
/// image), then a 1 that multiplies the bias. ([`gather`] for the CNN's window.)
fn im2col(x: &[f32], dims: Nhwc, rows: Range<usize>) -> Vec<f32> {
    gather(x, dims, Window::THREE, rows, true)
}

/// im2col for any [`Window`]: the windows of output pixels `rows` (numbered in NHWC
/// order over the output grid) of an NHWC tensor `[b, h, w, c]`, one row each of
/// `k·k·c` columns in (ky, kx, channel) order, zero outside the image, then (`bias`) a 1.
fn gather(x: &[f32], (_, h, w, c): Nhwc, win: Window, rows: Range<usize>, bias: bool) -> Vec<f32> {
    let (k, s, p) = (win.k, win.stride, win.pad());
    let (ho, wo) = win.out_dims(h, w);
    let len = k * k * c + usize::from(bias);
    // Appended in order, zeros only where a tap is outside the image: zero-filling the
    // whole matrix first was a pass over megabytes that the copies then overwrote.
    let mut out = Vec::with_capacity(rows.len() * len);
    let mut pixel = Pixel::at(rows.start, ho, wo);
    for _ in rows {
        let (lo, hi) = win.taps(pixel.x, w);
        let first_x = pixel.x * s + lo - p;
        // With columns in (ky, kx, channel) order, the in-image taps of one kernel row
        // are one contiguous run in both source and destination.
        for ky in 0..k {
            let Some(sy) = (pixel.y * s + ky).checked_sub(p).filter(|&sy| sy < h) else {
                out.resize(out.len() + k * c, 0.0);
                continue;
            };
            let src = ((pixel.n * h + sy) * w + first_x) * c;
            out.resize(out.len() + lo * c, 0.0);
            out.extend_from_slice(&x[src..src + (hi - lo) * c]);
            out.resize(out.len() + (k - hi) * c, 0.0);
        }
        if bias {
            out.push(1.0);
        }
        pixel.advance(ho, wo);
    }
    out
}

/// The convolution `im2col(x) · Wᵀ` of pixels `rows` of a one-channel NHWC tensor,
/// `[rows.len(), out]`, computed directly: bit for bit the product `gemm` computes
/// (each output one chain of fused multiply-adds from zero over the 9 taps in column
/// order, zeros outside the image included, then the bias), without the 10-wide column
/// matrix. For the CNN's first layer the gather and that thin product were most of the
/// stage's time. `None` (take the product) for more channels; for a single row or
/// output channel, which `gemm` computes as a matrix-vector product in another order;
/// and on a CPU without AVX-512, where it was not measured.
fn conv_one_channel(x: &[f32], (_, h, w, c): Nhwc, rows: Range<usize>, w_full: &[f32], out: usize) -> Option<Vec<f32>> {
    #[cfg(target_arch = "x86_64")]
    if c == 1 && out >= 2 && rows.len() >= 2 && w_full.len() == out * row_len(1) && direct_conv() {
        // By tap and in lanes of 16 channels: `by_tap[(g·10 + t)·16 + i]` is channel
        // `16·g + i`'s weight for column `t` (0 past the last channel).
        let groups = out.div_ceil(LANES);
        let by_tap: Vec<f32> = (0..groups * row_len(1) * LANES)
            .map(|at| {
                let (g, t, i) = (at / (row_len(1) * LANES), at / LANES % row_len(1), at % LANES);
                let o = g * LANES + i;
                if o < out { w_full[o * row_len(1) + t] } else { 0.0 }
            })
            .collect();
        let mut y = vec![0f32; rows.len() * out];
        // SAFETY: the CPU has AVX-512F and FMA (checked above); the function indexes
        // its slices.
        unsafe { one_channel(x, (h, w), rows, &by_tap, out, &mut y) };
        return Some(y);
    }
    let _ = (x, h, w, c, rows, w_full, out);
    None
}

/// Whether this process runs [`conv_one_channel`]'s kernel: AVX-512F and FMA (FMA also
/// makes `gemm` fuse its multiply-adds, the order the kernel follows), unless
/// `WDML_KERNELS=portable`.
fn direct_conv() -> bool {
    Kernels::active().avx512_fma()
}

/// [`conv_one_channel`]'s loop, for 16 output channels at a time: per pixel, its
/// im2col row (3×3 neighbourhood, 0 outside the image, then 1), and each channel's
/// chain of multiply-adds over it. Compiled for AVX-512, a group's ten weight vectors
/// and its sums stay in registers, and `mul_add` is one instruction.
///
/// # Safety
/// The CPU supports AVX-512F and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn one_channel(
    x: &[f32],
    (h, w): (usize, usize),
    rows: Range<usize>,
    by_tap: &[f32],
    out: usize,
    y: &mut [f32],
) {
    for (g, group) in by_tap.chunks_exact(row_len(1) * LANES).enumerate() {
        let mut weights = [[0f32; LANES]; 10];
        for (t, column) in weights.iter_mut().enumerate() {
            column.copy_from_slice(&group[t * LANES..(t + 1) * LANES]);
        }
        let (first, width) = (g * LANES, (out - g * LANES).min(LANES));
        let mut pixel = Pixel::at(rows.start, h, w);
        for outputs in y.chunks_exact_mut(out) {
            let row = one_channel_row(x, &pixel, (h, w));
            let mut acc = [0f32; LANES];
            for (&value, column) in row.iter().zip(&weights) {
                for (a, &weight) in acc.iter_mut().zip(column) {
                    *a = value.mul_add(weight, *a);
                }
            }
            if width == LANES {
                outputs[first..first + LANES].copy_from_slice(&acc);
            } else {
                outputs[first..first + width].copy_from_slice(&acc[..width]);
            }
            pixel.advance(h, w);
        }
    }
}

/// Output channels [`one_channel`] computes at once.
const LANES: usize = 16;

/// [`im2col`]'s row of `pixel` in a one-channel image: its 3×3 neighbourhood (0 outside
/// the image), then the bias's 1. Inlined into the direct kernels, which build it in
/// registers instead of a column matrix.
#[inline(always)]
fn one_channel_row(x: &[f32], pixel: &Pixel, (h, w): (usize, usize)) -> [f32; 10] {
    let mut row = [0f32; 10];
    row[9] = 1.0;
    let (lo, hi) = taps(pixel.x, w);
    for ky in 0..3 {
        let Some(sy) = (pixel.y + ky).checked_sub(1).filter(|&sy| sy < h) else {
            continue;
        };
        let src = (pixel.n * h + sy) * w + pixel.x - 1;
        for kx in lo..hi {
            row[ky * 3 + kx] = x[src + kx];
        }
    }
    row
}

/// The weight gradient `gᵀ · im2col(x)` of pixels `rows` of a one-channel NHWC tensor,
/// `[out, 10]`, from their output gradient `g` `[rows.len(), out]`, computed directly:
/// bit for bit the product `gemm` computes (rows in its contraction blocks, each
/// weight's chain of fused multiply-adds from zero over a block, added to the blocks
/// before), without the column matrix. Its gather copied runs of one to three values,
/// and `gemm` ran the 16 × 10 product at a fraction of its speed: together a few
/// percent of a CNN step. `None` (take the product) where [`conv_one_channel`] takes it.
fn weight_grad_one_channel(
    x: &[f32],
    (_, h, w, c): Nhwc,
    rows: Range<usize>,
    g: &[f32],
    out: usize,
) -> Option<Vec<f32>> {
    #[cfg(target_arch = "x86_64")]
    if c == 1 && out >= 2 && rows.len() >= 3 && g.len() == rows.len() * out && direct_conv() {
        let block = gemm::block(out, row_len(1), rows.len());
        let mut grad = vec![0f32; out * row_len(1)];
        // SAFETY: the CPU has AVX-512F and FMA (checked above); the function indexes
        // its slices.
        unsafe { one_channel_weight_grad(x, (h, w), rows, g, out, block, &mut grad) };
        return Some(grad);
    }
    let _ = (x, h, w, c, rows, g, out);
    None
}

/// [`weight_grad_one_channel`]'s loop, for 16 output channels at a time: per pixel, its
/// im2col row and the channels' gradients, one multiply-add per column into the
/// block's sums, which stay in registers.
///
/// # Safety
/// The CPU supports AVX-512F and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn one_channel_weight_grad(
    x: &[f32],
    (h, w): (usize, usize),
    rows: Range<usize>,
    g: &[f32],
    out: usize,
    block: usize,
    grad: &mut [f32],
) {
    for first in (0..out).step_by(LANES) {
        let width = (out - first).min(LANES);
        // `total[t][i]`: channel `first + i`'s gradient for column `t`.
        let mut total = [[0f32; LANES]; 10];
        let mut pixel = Pixel::at(rows.start, h, w);
        for (b, block) in g.chunks(block * out).enumerate() {
            let mut acc = [[0f32; LANES]; 10];
            for grads in block.chunks_exact(out) {
                let mut lanes = [0f32; LANES];
                lanes[..width].copy_from_slice(&grads[first..first + width]);
                let row = one_channel_row(x, &pixel, (h, w));
                for (&value, column) in row.iter().zip(acc.iter_mut()) {
                    for (a, &gi) in column.iter_mut().zip(&lanes) {
                        *a = gi.mul_add(value, *a);
                    }
                }
                pixel.advance(h, w);
            }
            for (total, acc) in total.iter_mut().zip(&acc) {
                for (t, &a) in total.iter_mut().zip(acc) {
                    *t = if b == 0 { a } else { *t + a };
                }
            }
        }
        for (i, weights) in grad.chunks_exact_mut(row_len(1)).skip(first).take(width).enumerate() {
            for (v, column) in weights.iter_mut().zip(&total) {
                *v = column[i];
            }
        }
    }
}

/// The adjoint of [`im2col`]: scatter-adds the columns of pixels `rows` onto the
/// `[b, h, w, c]` gradient `grad` (the bias column has no pixel and is skipped).
fn col2im(cols: &[f32], dims: Nhwc, rows: Range<usize>, grad: &mut [f32]) {
    scatter(cols, dims, Window::THREE, rows, true, grad)
}

/// The adjoint of [`gather`]: scatter-adds the columns of output pixels `rows` onto
/// the `[b, h, w, c]` input gradient `grad` (a bias column has no pixel: skipped).
fn scatter(cols: &[f32], (_, h, w, c): Nhwc, win: Window, rows: Range<usize>, bias: bool, grad: &mut [f32]) {
    let (k, s, p) = (win.k, win.stride, win.pad());
    let (ho, wo) = win.out_dims(h, w);
    let len = k * k * c + usize::from(bias);
    let mut pixel = Pixel::at(rows.start, ho, wo);
    for row in cols.chunks_exact(len).take(rows.len()) {
        let (lo, hi) = win.taps(pixel.x, w);
        let first_x = pixel.x * s + lo - p;
        for ky in 0..k {
            let Some(sy) = (pixel.y * s + ky).checked_sub(p).filter(|&sy| sy < h) else {
                continue;
            };
            let dst = ((pixel.n * h + sy) * w + first_x) * c;
            let src = (ky * k + lo) * c;
            let run = (hi - lo) * c;
            for (o, g) in grad[dst..dst + run].iter_mut().zip(&row[src..src + run]) {
                *o += g;
            }
        }
        pixel.advance(ho, wo);
    }
}

/// `relu(max_pool2x2(y))` of one block of NHWC maps `y` `[imgs, h, w, c]`, appended
/// to `out`, with each output's winner code appended to `winners`: bits 0–1 the window
/// entry that won (the first in reading order on ties), bit 2 set if the output is
/// positive (else its gradient is 0, as ReLU's is at 0).
fn pool_relu(y: &[f32], (imgs, h, w, c): Nhwc, out: &mut Vec<f32>, winners: &mut Vec<u8>) {
    // Into slices, channel by channel in lock-step: the loop vectorises (pushing one
    // value at a time did not, and this was a seventh of a CNN forward pass).
    let count = imgs * (h / 2) * (w / 2) * c;
    let (at, won_at) = (out.len(), winners.len());
    out.resize(at + count, 0.0);
    winners.resize(won_at + count, 0);
    let mut windows = out[at..].chunks_exact_mut(c).zip(winners[won_at..].chunks_exact_mut(c));
    for n in 0..imgs {
        for oy in 0..h / 2 {
            let top = (n * h + 2 * oy) * w * c;
            let bottom = top + w * c;
            for ox in 0..w / 2 {
                let o = 2 * ox * c;
                let (p0, p1) = y[top + o..top + o + 2 * c].split_at(c);
                let (q0, q1) = y[bottom + o..bottom + o + 2 * c].split_at(c);
                let (out, won) = windows.next().expect("one output per window and channel");
                let inputs = p0.iter().zip(p1).zip(q0.iter().zip(q1));
                for (((&p0, &p1), (&q0, &q1)), (out, won)) in inputs.zip(out.iter_mut().zip(won.iter_mut())) {
                    // Strict comparisons keep the earlier entry on ties. Flags as
                    // integers, not `if`s: the winner is random, a branch on it is not.
                    let top_right = u8::from(p1 > p0);
                    let bottom_right = u8::from(q1 > q0);
                    let (top_max, bottom_max) = (p0.max(p1), q0.max(q1));
                    let lower = u8::from(bottom_max > top_max);
                    let max = top_max.max(bottom_max);
                    *out = max.max(0.0);
                    let winner = lower * (2 + bottom_right) + (1 - lower) * top_right;
                    *won = winner + 4 * u8::from(max > 0.0);
                }
            }
        }
    }
}

/// The adjoint of [`pool_relu`]: spreads the pooled gradient `g` of one block back onto
/// its `[imgs, h, w, c]` maps, each value to its window's winner.
fn unpool(g: &[f32], winners: &[u8], (imgs, h, w, c): Nhwc) -> Vec<f32> {
    let offsets = [0, c, w * c, w * c + c];
    let mut grad = vec![0f32; imgs * h * w * c];
    let mut r = 0;
    for n in 0..imgs {
        for oy in 0..h / 2 {
            let top = (n * h + 2 * oy) * w * c;
            for ox in 0..w / 2 {
                let base = top + 2 * ox * c;
                for (ci, (&g, &code)) in g[r..r + c].iter().zip(&winners[r..r + c]).enumerate() {
                    // Each window entry belongs to one output only, so a non-positive
                    // output may write its 0 to the winner's slot: no branch needed.
                    grad[base + offsets[usize::from(code & 3)] + ci] = g * f32::from(code >> 2);
                }
                r += c;
            }
        }
    }
    grad
}

/// One convolution stage of the CNN in a single op: a 3×3 convolution (stride 1,
/// padding 1) of NHWC `x` `[b, h, w, c]` with `w_full` `[out, 9·c + 1]` (each output
/// channel's weights in im2col's column order, then its bias), a 2×2 max-pool and a
/// ReLU: `[b, h/2, w/2, out]`.
///
/// It runs a few images at a time (about 1 MB of im2col columns): a block's columns are
/// gathered, multiplied, and its convolution output pooled while all of it is in cache,
/// so neither the 9× larger column matrix nor the 4× larger unpooled output ever exists
/// whole. The backward pass gathers each block's columns again (a pass over the input
/// is cheaper than keeping them), rebuilds the block's output gradient from the recorded
/// pool winners, and takes the weight gradient from one product and the input gradient
/// from another plus a scatter-add (col2im), skipping the latter for a first layer.
struct ConvPoolRelu {
    images_per_block: Option<usize>,
    winners: OnceLock<Vec<u8>>,
}

impl ConvPoolRelu {
    /// `([b, h, w, c], out, images per block)`, checked.
    fn dims(&self, x: &Shape, w_full: &Shape) -> Result<(Nhwc, usize, usize)> {
        let dims = x.dims4()?;
        let (b, h, w, c) = dims;
        let (out, k) = w_full.dims2()?;
        if k != row_len(c) {
            bail!(
                "conv3x3: {c} input channels need {} weight columns, got {k}",
                row_len(c)
            )
        }
        if !h.is_multiple_of(2) || !w.is_multiple_of(2) {
            bail!("conv3x3_pool_relu: needs even height and width, got {h}×{w}")
        }
        let per_block = self
            .images_per_block
            .unwrap_or(((1 << 18) / (row_len(c) * h * w).max(1)).max(1));
        Ok((dims, out, per_block.min(b.max(1))))
    }
}

impl CustomOp2 for ConvPoolRelu {
    fn name(&self) -> &'static str {
        "conv3x3_pool_relu_nhwc"
    }

    fn cpu_fwd(
        &self,
        x_storage: &CpuStorage,
        x_layout: &Layout,
        w_storage: &CpuStorage,
        w_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (dims, out, per_block) = self.dims(x_layout.shape(), w_layout.shape())?;
        let (b, h, w, c) = dims;
        let x = contiguous_f32(x_storage, x_layout, self.name())?;
        let w_values = contiguous_f32(w_storage, w_layout, self.name())?;
        let w_full = Mat::row_major(w_values, out, row_len(c))?;
        let pooled = b * (h / 2) * (w / 2) * out;
        let (mut y, mut winners) = (Vec::with_capacity(pooled), Vec::with_capacity(pooled));
        for first in (0..b).step_by(per_block) {
            let imgs = per_block.min(b - first);
            let rows = first * h * w..(first + imgs) * h * w;
            let conv = match conv_one_channel(x, dims, rows.clone(), w_values, out) {
                Some(conv) => conv,
                None => {
                    let cols = im2col(x, dims, rows.clone());
                    gemm::matmul(Mat::row_major(&cols, rows.len(), row_len(c))?, w_full.t())?
                }
            };
            pool_relu(&conv, (imgs, h, w, out), &mut y, &mut winners);
        }
        // One record per op value; Candle never runs a forward twice, and a second record
        // would mis-route gradients, so refuse it.
        if self.winners.set(winners).is_err() {
            bail!("{}: op applied twice", self.name())
        }
        Ok((CpuStorage::F32(y), Shape::from((b, h / 2, w / 2, out))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w_full: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dims, out, per_block) = self.dims(x.shape(), w_full.shape())?;
        let (b, h, w, c) = dims;
        let Some(winners) = self.winners.get() else {
            bail!("{}: backward before forward", self.name())
        };
        let (x_c, grad_c) = (x.contiguous()?, grad_res.contiguous()?);
        let (xs, xl) = x_c.storage_and_layout();
        let (gs, gl) = grad_c.storage_and_layout();
        let (ws, wl) = w_full.storage_and_layout();
        let xv = tensor_f32(&xs, xl, self.name())?;
        let g = tensor_f32(&gs, gl, self.name())?;
        let w_mat = tensor_matrix(&ws, wl, self.name())?;
        let pooled_per_image = (h / 2) * (w / 2) * out;
        if g.len() != b * pooled_per_image || winners.len() != g.len() {
            bail!(
                "{}: gradient of {} values for {} outputs",
                self.name(),
                g.len(),
                winners.len()
            )
        }
        // The images need no gradient: skip the input gradient for a first layer.
        let mut grad_x = x.track_op().then(|| vec![0f32; b * h * w * c]);
        let mut grad_w: Option<Tensor> = None;
        for first in (0..b).step_by(per_block) {
            let imgs = per_block.min(b - first);
            let rows = first * h * w..(first + imgs) * h * w;
            let pooled = first * pooled_per_image..(first + imgs) * pooled_per_image;
            let g_conv = unpool(&g[pooled.clone()], &winners[pooled], (imgs, h, w, out));
            let g_conv_mat = Mat::row_major(&g_conv, rows.len(), out)?;
            let block_w = match weight_grad_one_channel(xv, dims, rows.clone(), &g_conv, out) {
                Some(block_w) => block_w,
                None => {
                    let cols = im2col(xv, dims, rows.clone());
                    gemm::matmul(g_conv_mat.t(), Mat::row_major(&cols, rows.len(), row_len(c))?)?
                }
            };
            let block_w = Tensor::from_vec(block_w, (out, row_len(c)), &Device::Cpu)?;
            grad_w = Some(match grad_w {
                Some(acc) => (acc + block_w)?,
                None => block_w,
            });
            if let Some(grad_x) = grad_x.as_mut() {
                col2im(&gemm::matmul(g_conv_mat, w_mat)?, dims, rows, grad_x);
            }
        }
        let grad_x = grad_x.map(|v| Tensor::from_vec(v, x.shape(), x.device())).transpose()?;
        let grad_w = match grad_w {
            Some(gw) => gw,
            None => w_full.zeros_like()?,
        };
        Ok((grad_x, Some(grad_w)))
    }
}

/// One CNN stage, `relu(max_pool2x2(conv3x3(x)))`: NHWC `x` `[b, h, w, c]` (even `h`,
/// `w`), `w_full` `[out, 9·c + 1]` with row `o` holding output channel `o`'s weights in
/// (ky, kx, channel) order and then its bias. Returns `[b, h/2, w/2, out]`.
/// Differentiable in both; the input gradient is skipped when `x` needs none.
pub fn conv3x3_pool_relu(x: &Tensor, w_full: &Tensor) -> Result<Tensor> {
    x.apply_op2(
        w_full,
        ConvPoolRelu {
            images_per_block: None,
            winners: OnceLock::new(),
        },
    )
}

/// Columns per block of a [`Conv`]: 1 MB, as [`ConvPoolRelu`]'s. (One Zen 3 core,
/// ResNet-8 step: 0.5, 2 and 4 MB were 7 to 20 % slower, on a busy machine.)
const BLOCK_FLOATS: usize = 1 << 18;

/// A convolution without bias over NHWC maps, for any [`Window`] (the ResNet's 3×3 of
/// stride 1 and 2 and its 1×1 stride-2 projections): `x` `[b, h, w, c]` by `w_rows`
/// `[out, k·k·c]` (each output channel's weights in (ky, kx, channel) order) gives
/// `[b, ⌈h/s⌉, ⌈w/s⌉, out]`, as `gather(x) · w_rowsᵀ`.
///
/// Run a few images at a time, as [`ConvPoolRelu`] is (about 1 MB of columns per block,
/// gathered again in the backward pass rather than kept). The backward pass takes the
/// weight gradient as `gᵀ · gather(x)`, summed over the blocks, and the input gradient as
/// `g · w_rows` scattered back (the adjoint of the gather); the latter is skipped when
/// `x` needs no gradient (the images).
struct Conv {
    window: Window,
    input_grad: bool,
    /// Images per block; `None`: about 1 MB of columns (the tests set 1).
    images_per_block: Option<usize>,
}

impl Conv {
    /// `([b, h, w, c], out, images per block)`, checked.
    fn dims(&self, x: &Shape, w_rows: &Shape) -> Result<(Nhwc, usize, usize)> {
        let dims = x.dims4()?;
        let (b, h, w, c) = dims;
        self.window.check(h, w, "conv")?;
        let (out, cols) = w_rows.dims2()?;
        let k = self.window.k;
        if cols != k * k * c {
            bail!(
                "conv: a {k}×{k} kernel on {c} channels needs {} weight columns, got {cols}",
                k * k * c
            )
        }
        let (ho, wo) = self.window.out_dims(h, w);
        let per_block = self
            .images_per_block
            .unwrap_or(BLOCK_FLOATS / (cols * ho * wo).max(1))
            .clamp(1, b.max(1));
        Ok((dims, out, per_block))
    }

    /// The output values `[b, ho, wo, out]` of NHWC `x` by `w_rows` `[out, k²·c]`.
    fn forward_values(&self, x: &[f32], dims: Nhwc, w_rows: Mat, per_block: usize) -> Result<Vec<f32>> {
        let (b, h, w, c) = dims;
        let (ho, wo) = self.window.out_dims(h, w);
        let cols_per_row = self.window.k * self.window.k * c;
        let mut y = Vec::with_capacity(b * ho * wo * w_rows.rows());
        for first in (0..b).step_by(per_block) {
            let imgs = per_block.min(b - first);
            let rows = first * ho * wo..(first + imgs) * ho * wo;
            let cols = gather(x, dims, self.window, rows.clone(), false);
            y.extend_from_slice(&gemm::matmul(
                Mat::row_major(&cols, rows.len(), cols_per_row)?,
                w_rows.t(),
            )?);
        }
        Ok(y)
    }

    /// The gradients of `x` (when `wants_x`) and of `w_mat` `[out, k²·c]` from the
    /// output gradient `g` `[b, ho, wo, out]`.
    fn backward_values(
        &self,
        xv: &[f32],
        dims: Nhwc,
        w_mat: Mat,
        g: &[f32],
        per_block: usize,
        wants_x: bool,
    ) -> Result<(Option<Vec<f32>>, Vec<f32>)> {
        let (b, h, w, c) = dims;
        let (ho, wo) = self.window.out_dims(h, w);
        let out = w_mat.rows();
        let cols_per_row = self.window.k * self.window.k * c;
        if g.len() != b * ho * wo * out {
            bail!("conv: gradient of {} values for {} outputs", g.len(), b * ho * wo * out)
        }
        let k = self.window.k;
        // The input gradient. With stride 1 it is itself a convolution, of `g` by the
        // kernel turned half a turn with inputs and outputs swapped: `gather(g) · w_flipᵀ`
        // with `w_flip[ci, (ky, kx, o)] = w[o, ci, k−1−ky, k−1−kx]`, which writes each
        // value once. The adjoint form `scatter(g · w_rows)` (any stride) multiplies over
        // only `out` values into a matrix `k²` times the input, then adds it back with a
        // read-modify-write per tap onto zeros; in ResNet's 16-channel stage it ran
        // several times slower than the forward product of the same size.
        let w_flip: Option<Vec<f32>> = (wants_x && self.window.stride == 1).then(|| {
            let w_at = |o: usize, ci: usize, ky: usize, kx: usize| w_mat.at(o, (ky * k + kx) * c + ci);
            let mut flip = Vec::with_capacity(c * k * k * out);
            for ci in 0..c {
                for ky in 0..k {
                    for kx in 0..k {
                        flip.extend((0..out).map(|o| w_at(o, ci, k - 1 - ky, k - 1 - kx)));
                    }
                }
            }
            flip
        });
        let mut grad_x = match &w_flip {
            Some(_) => wants_x.then(|| Vec::with_capacity(b * h * w * c)),
            None => wants_x.then(|| vec![0f32; b * h * w * c]),
        };
        let mut grad_w = vec![0f32; out * cols_per_row];
        for first in (0..b).step_by(per_block) {
            let imgs = per_block.min(b - first);
            let rows = first * ho * wo..(first + imgs) * ho * wo;
            let g_block = Mat::row_major(&g[rows.start * out..rows.end * out], rows.len(), out)?;
            let cols = gather(xv, dims, self.window, rows.clone(), false);
            // `gemm` runs a row-major product as its transpose: here the `k²·c` columns
            // become its kernel's rows, in whole tiles of 24. (Asking for the transpose
            // instead put the 16 channels there, in its narrower kernel: 8 % slower.)
            let block_w = gemm::matmul(g_block.t(), Mat::row_major(&cols, rows.len(), cols_per_row)?)?;
            for (sum, v) in grad_w.iter_mut().zip(&block_w) {
                *sum += v;
            }
            match (grad_x.as_mut(), &w_flip) {
                (Some(grad_x), Some(flip)) => {
                    // Stride 1: the output grid is the input's, pixel for pixel.
                    let g_cols = gather(g, (b, ho, wo, out), self.window, rows.clone(), false);
                    grad_x.extend_from_slice(&gemm::matmul(
                        Mat::row_major(&g_cols, rows.len(), k * k * out)?,
                        Mat::row_major(flip, c, k * k * out)?.t(),
                    )?);
                }
                (Some(grad_x), None) => scatter(&gemm::matmul(g_block, w_mat)?, dims, self.window, rows, false, grad_x),
                (None, _) => {}
            }
        }
        Ok((grad_x, grad_w))
    }
}

impl CustomOp2 for Conv {
    fn name(&self) -> &'static str {
        "conv_nhwc"
    }

    fn cpu_fwd(
        &self,
        x_storage: &CpuStorage,
        x_layout: &Layout,
        w_storage: &CpuStorage,
        w_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (dims, out, per_block) = self.dims(x_layout.shape(), w_layout.shape())?;
        let (b, h, w, c) = dims;
        let (ho, wo) = self.window.out_dims(h, w);
        let cols_per_row = self.window.k * self.window.k * c;
        let x = contiguous_f32(x_storage, x_layout, self.name())?;
        let w_rows = Mat::row_major(contiguous_f32(w_storage, w_layout, self.name())?, out, cols_per_row)?;
        let y = self.forward_values(x, dims, w_rows, per_block)?;
        Ok((CpuStorage::F32(y), Shape::from((b, ho, wo, out))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w_rows: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dims, _, per_block) = self.dims(x.shape(), w_rows.shape())?;
        let (x_c, grad_c) = (x.contiguous()?, grad_res.contiguous()?);
        let (xs, xl) = x_c.storage_and_layout();
        let (gs, gl) = grad_c.storage_and_layout();
        let (ws, wl) = w_rows.storage_and_layout();
        let xv = tensor_f32(&xs, xl, self.name())?;
        let g = tensor_f32(&gs, gl, self.name())?;
        let w_mat = tensor_matrix(&ws, wl, self.name())?;
        let (grad_x, grad_w) = self.backward_values(xv, dims, w_mat, g, per_block, self.input_grad && x.track_op())?;
        let grad_x = grad_x.map(|v| Tensor::from_vec(v, x.shape(), x.device())).transpose()?;
        Ok((grad_x, Some(Tensor::from_vec(grad_w, w_rows.shape(), w_rows.device())?)))
    }
}

/// A convolution without bias, NHWC `x` `[b, h, w, c]` by `w_rows` `[out, k·k·c]` (rows
/// in (ky, kx, channel) order), `k × k` kernel (odd), padding `k / 2`, `stride`:
/// `[b, ⌈h/stride⌉, ⌈w/stride⌉, out]`. Differentiable in both; the input gradient is
/// skipped when `x` needs none.
///
/// The ResNet runs it fused with its norm ([`conv_norm`]); the op alone is that one's
/// reference in the tests.
#[cfg(test)]
pub fn conv(x: &Tensor, w_rows: &Tensor, k: usize, stride: usize) -> Result<Tensor> {
    x.apply_op2(
        w_rows,
        Conv {
            window: Window { k, stride },
            input_grad: x.track_op(),
            images_per_block: None,
        },
    )
}

/// Group normalisation over NHWC maps (Wu & He, 2018), with an affine scale and shift
/// per channel, optionally followed by a residual sum and a ReLU:
/// `y = relu?(γ · (x − μ) / √(σ² + ε) + β [+ r])`, with `μ`, `σ²` the mean and (biased)
/// variance of each image's group of `c / groups` consecutive channels over all its
/// pixels (PyTorch's `nn.GroupNorm` on NCHW, channel order being the same).
///
/// Candle's composition of the same (reshape, mean, broadcast arithmetic, sqrt, ReLU)
/// is a dozen ops, each a pass over the activations forward and again backward; this is
/// two passes forward (statistics, then the output) and two backward. The backward pass
/// rebuilds `x̂ = (x − μ)/σ` from `x` and the saved statistics, and uses the standard
/// gradient `∂x = (γ·g − mean(γ·g) − x̂ · mean(γ·g·x̂)) / σ` (means over the group), with
/// `g` the output gradient masked by the ReLU (output > 0, PyTorch's convention), which
/// is also the residual's gradient.
struct GroupNorm {
    groups: usize,
    relu: bool,
    /// Per image and group: the mean and 1/σ, from the forward pass.
    stats: OnceLock<Vec<(f32, f32)>>,
}

/// The `ε` of [`GroupNorm`], PyTorch's default.
const GN_EPS: f64 = 1e-5;

impl GroupNorm {
    /// `([b, h, w, c], channels per group)`, checked against the affine `[2, c]`.
    fn dims(&self, x: &Shape, affine: &Shape, residual: Option<&Shape>) -> Result<(Nhwc, usize)> {
        let dims = x.dims4()?;
        let c = dims.3;
        if self.groups == 0 || !c.is_multiple_of(self.groups) {
            bail!("group_norm: {c} channels do not split into {} groups", self.groups)
        }
        if affine.dims() != [2, c] {
            bail!("group_norm: expects γ and β as [2, {c}], got {:?}", affine.dims())
        }
        if let Some(r) = residual
            && r.dims() != x.dims()
        {
            bail!("group_norm: residual {:?} for maps {:?}", r.dims(), x.dims())
        }
        Ok((dims, c / self.groups))
    }

    fn forward(
        &self,
        x: &[f32],
        affine: &[f32],
        residual: Option<&[f32]>,
        (b, h, w, c): Nhwc,
        per_group: usize,
    ) -> Result<Vec<f32>> {
        let (gamma, beta) = affine.split_at(c);
        let pixels = h * w;
        let count = (pixels * per_group) as f64;
        let mut stats = Vec::with_capacity(b * self.groups);
        let mut y = Vec::with_capacity(x.len());
        // Per channel: the mean and 1/σ of its group; then the scale and shift that map
        // x to γ·x̂ + β in one multiply-add.
        let (mut sums, mut scale, mut shift) = (vec![0f32; c], vec![0f32; c], vec![0f32; c]);
        for (n, image) in x.chunks_exact(pixels * c).enumerate() {
            // Two passes over one image's maps (in cache): the mean, then the squared
            // deviations, each summed per channel in f32 over a row of pixels and per
            // group in f64; no cancellation from E[x²] − E[x]².
            let mut group_mean = vec![0f64; self.groups];
            sums.fill(0.0);
            for pixel in image.chunks_exact(c) {
                for (s, &v) in sums.iter_mut().zip(pixel) {
                    *s += v;
                }
            }
            for (ch, &s) in sums.iter().enumerate() {
                group_mean[ch / per_group] += f64::from(s);
            }
            group_mean.iter_mut().for_each(|m| *m /= count);
            let mean: Vec<f32> = (0..c).map(|ch| group_mean[ch / per_group] as f32).collect();
            sums.fill(0.0);
            for pixel in image.chunks_exact(c) {
                for ((s, &v), &m) in sums.iter_mut().zip(pixel).zip(&mean) {
                    let d = v - m;
                    *s += d * d;
                }
            }
            let mut group_var = vec![0f64; self.groups];
            for (ch, &s) in sums.iter().enumerate() {
                group_var[ch / per_group] += f64::from(s);
            }
            for (g, (&m, &v)) in group_mean.iter().zip(&group_var).enumerate() {
                let rstd = 1.0 / (v / count + GN_EPS).sqrt();
                stats.push((m as f32, rstd as f32));
                for ch in g * per_group..(g + 1) * per_group {
                    scale[ch] = gamma[ch] * rstd as f32;
                    shift[ch] = beta[ch] - m as f32 * scale[ch];
                }
            }
            // Appended, not written over zeros (a pass over megabytes saved); a plain
            // multiply and add: `mul_add` is a call to `fmaf` where the build does not
            // assume FMA, and was a twentieth of a ResNet step.
            let start = y.len();
            match residual {
                Some(r) => {
                    let r = &r[n * pixels * c..(n + 1) * pixels * c];
                    for (pixel, rp) in image.chunks_exact(c).zip(r.chunks_exact(c)) {
                        let values = pixel.iter().zip(&scale).zip(&shift).zip(rp);
                        y.extend(values.map(|(((&v, &a), &s), &r)| v * a + s + r));
                    }
                }
                None => {
                    for pixel in image.chunks_exact(c) {
                        y.extend(pixel.iter().zip(&scale).zip(&shift).map(|((&v, &a), &s)| v * a + s));
                    }
                }
            }
            if self.relu {
                y[start..].iter_mut().for_each(|o| *o = o.max(0.0));
            }
        }
        if self.stats.set(stats).is_err() {
            bail!("group_norm: op applied twice")
        }
        Ok(y)
    }

    /// The gradients of the input `xv`, of the affine (γ's then β's) and of the sum
    /// before the ReLU (the residual's), from the op's output `out` and its gradient `g`.
    fn backward_values(
        &self,
        xv: &[f32],
        gamma: &[f32],
        out: &[f32],
        g: &[f32],
        (b, h, w, c): Nhwc,
        per_group: usize,
    ) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        let Some(stats) = self.stats.get() else {
            bail!("group_norm: backward before forward")
        };
        if xv.len() != b * h * w * c || out.len() != xv.len() || g.len() != xv.len() || gamma.len() != c {
            bail!("group_norm: backward on {} values for maps {:?}", g.len(), (b, h, w, c))
        }
        let pixels = h * w;
        let count = (pixels * per_group) as f64;
        // The output gradient through the ReLU: the residual's gradient, and γ·x̂'s.
        let gp: Vec<f32> = if self.relu {
            g.iter()
                .zip(out)
                .map(|(&g, &o)| if o > 0.0 { g } else { 0.0 })
                .collect()
        } else {
            g.to_vec()
        };
        let mut grad_x = Vec::with_capacity(xv.len());
        let (mut d_gamma, mut d_beta) = (vec![0f64; c], vec![0f64; c]);
        let (mut mean, mut rstd) = (vec![0f32; c], vec![0f32; c]);
        let (mut sum_g, mut sum_gx) = (vec![0f32; c], vec![0f32; c]);
        let (mut on_g, mut on_x, mut constant) = (vec![0f32; c], vec![0f32; c], vec![0f32; c]);
        for n in 0..b {
            let span = n * pixels * c..(n + 1) * pixels * c;
            let (image, grads) = (&xv[span.clone()], &gp[span]);
            for ch in 0..c {
                (mean[ch], rstd[ch]) = stats[n * self.groups + ch / per_group];
            }
            // Per channel: Σ g and Σ g·x̂ over the image's pixels (β's and γ's gradients).
            sum_g.fill(0.0);
            sum_gx.fill(0.0);
            for (pixel, gpix) in image.chunks_exact(c).zip(grads.chunks_exact(c)) {
                let sums = sum_g.iter_mut().zip(sum_gx.iter_mut());
                let terms = pixel.iter().zip(gpix).zip(mean.iter().zip(&rstd));
                for ((sg, sgx), ((&x, &g), (&m, &r))) in sums.zip(terms) {
                    *sg += g;
                    *sgx += g * ((x - m) * r);
                }
            }
            // Per group: the means of γ·g and of γ·g·x̂.
            let mut group = vec![(0f64, 0f64); self.groups];
            for ch in 0..c {
                d_beta[ch] += f64::from(sum_g[ch]);
                d_gamma[ch] += f64::from(sum_gx[ch]);
                let (a, bb) = &mut group[ch / per_group];
                *a += f64::from(gamma[ch]) * f64::from(sum_g[ch]);
                *bb += f64::from(gamma[ch]) * f64::from(sum_gx[ch]);
            }
            // ∂x = (γ·g − m₁ − x̂·m₂)/σ, as one multiply-add per value:
            // ∂x = (γ/σ)·g + (−m₂/σ²)·x + (μ·m₂/σ² − m₁/σ).
            for ch in 0..c {
                let (a, bb) = group[ch / per_group];
                let (m1, m2) = ((a / count) as f32, (bb / count) as f32);
                let r = rstd[ch];
                on_g[ch] = gamma[ch] * r;
                on_x[ch] = -m2 * r * r;
                constant[ch] = mean[ch] * m2 * r * r - m1 * r;
            }
            for (pixel, gpix) in image.chunks_exact(c).zip(grads.chunks_exact(c)) {
                let terms = gpix.iter().zip(pixel).zip(&on_g).zip(&on_x).zip(&constant);
                grad_x.extend(terms.map(|((((&g, &x), &a), &b), &k)| a * g + b * x + k));
            }
        }
        let grad_affine: Vec<f32> = d_gamma.iter().chain(&d_beta).map(|&v| v as f32).collect();
        Ok((grad_x, grad_affine, gp))
    }

    /// The gradients of `x`, of the affine `[2, c]` (γ's then β's) and, when the op has
    /// a residual, of it.
    fn backward(
        &self,
        x: &Tensor,
        affine: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
        residual: bool,
    ) -> Result<(Tensor, Tensor, Option<Tensor>)> {
        let ((b, h, w, c), per_group) = self.dims(x.shape(), affine.shape(), None)?;
        let (x_c, a_c, r_c, g_c) = (
            x.contiguous()?,
            affine.contiguous()?,
            res.contiguous()?,
            grad_res.contiguous()?,
        );
        let (xs, xl) = x_c.storage_and_layout();
        let (as_, al) = a_c.storage_and_layout();
        let (rs, rl) = r_c.storage_and_layout();
        let (gs, gl) = g_c.storage_and_layout();
        let xv = tensor_f32(&xs, xl, "group_norm")?;
        let gamma = &tensor_f32(&as_, al, "group_norm")?[..c];
        let out = tensor_f32(&rs, rl, "group_norm")?;
        let g = tensor_f32(&gs, gl, "group_norm")?;
        let (grad_x, grad_affine, gp) = self.backward_values(xv, gamma, out, g, (b, h, w, c), per_group)?;
        let grad_r = residual
            .then(|| Tensor::from_vec(gp, x.shape(), x.device()))
            .transpose()?;
        Ok((
            Tensor::from_vec(grad_x, x.shape(), x.device())?,
            Tensor::from_vec(grad_affine, affine.shape(), affine.device())?,
            grad_r,
        ))
    }
}

impl CustomOp2 for GroupNorm {
    fn name(&self) -> &'static str {
        "group_norm_nhwc"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, a_s: &CpuStorage, al: &Layout) -> Result<(CpuStorage, Shape)> {
        let (dims, per_group) = self.dims(xl.shape(), al.shape(), None)?;
        let x = contiguous_f32(xs, xl, "group_norm_nhwc")?;
        let affine = contiguous_f32(a_s, al, "group_norm_nhwc")?;
        let y = self.forward(x, affine, None, dims, per_group)?;
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        affine: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (gx, ga, _) = self.backward(x, affine, res, grad_res, false)?;
        Ok((Some(gx), Some(ga)))
    }
}

impl CustomOp3 for GroupNorm {
    fn name(&self) -> &'static str {
        "group_norm_add_nhwc"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        a_s: &CpuStorage,
        al: &Layout,
        rs: &CpuStorage,
        rl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (dims, per_group) = self.dims(xl.shape(), al.shape(), Some(rl.shape()))?;
        let x = contiguous_f32(xs, xl, "group_norm_add_nhwc")?;
        let affine = contiguous_f32(a_s, al, "group_norm_add_nhwc")?;
        let r = contiguous_f32(rs, rl, "group_norm_add_nhwc")?;
        let y = self.forward(x, affine, Some(r), dims, per_group)?;
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        affine: &Tensor,
        _residual: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (gx, ga, gr) = self.backward(x, affine, res, grad_res, true)?;
        Ok((Some(gx), Some(ga), gr))
    }
}

/// Group normalisation of NHWC `x` `[b, h, w, c]` in `groups` groups of consecutive
/// channels, with `affine` `[2, c]` (γ, then β), then `+ residual` (same shape as `x`)
/// when given, then a ReLU when `relu`. Differentiable in every input.
///
/// The ResNet runs it fused with its convolution ([`conv_norm`]); the op alone is that
/// one's reference in the tests.
#[cfg(test)]
pub fn group_norm(x: &Tensor, affine: &Tensor, groups: usize, residual: Option<&Tensor>, relu: bool) -> Result<Tensor> {
    let op = GroupNorm {
        groups,
        relu,
        stats: OnceLock::new(),
    };
    match residual {
        Some(r) => x.apply_op3(affine, r, op),
        None => x.apply_op2(affine, op),
    }
}

/// A ResNet layer in one op: [`Conv`] then [`GroupNorm`] (with its residual sum and
/// ReLU), over `params` = `[w_rows (out × k²·c) | γ (out) | β (out)]`, one flat tensor
/// so that the op has at most three inputs.
///
/// As two ops, the convolution's output and its gradient were tensors of the graph, and
/// Candle's backward pass accumulates every gradient into a fresh zero tensor (a fill and
/// an addition over megabytes per layer); here the convolution's output stays inside
/// the op, kept for the norm's backward pass, and its gradient goes straight from the
/// norm's backward pass into the convolution's.
struct ConvNorm {
    conv: Conv,
    norm: GroupNorm,
    out: usize,
    /// The convolution's output, from the forward pass.
    conv_out: OnceLock<Vec<f32>>,
}

impl ConvNorm {
    /// `([b, h, w, c], images per block, output dims, channels per group)`, checked.
    fn dims(&self, x: &Shape, params: &Shape, residual: Option<&Shape>) -> Result<(Nhwc, usize, Nhwc, usize)> {
        let (_, h, w, c) = x.dims4()?;
        let k = self.conv.window.k;
        let w_len = self.out * k * k * c;
        if params.dims() != [w_len + 2 * self.out] {
            bail!(
                "conv_norm: {c} channels in, {} out, a {k}×{k} kernel: expects [{}] parameters, got {:?}",
                self.out,
                w_len + 2 * self.out,
                params.dims()
            )
        }
        let (dims, _, per_block) = self.conv.dims(x, &Shape::from((self.out, k * k * c)))?;
        let (ho, wo) = self.conv.window.out_dims(h, w);
        let y = Shape::from((dims.0, ho, wo, self.out));
        let (y_dims, per_group) = self.norm.dims(&y, &Shape::from((2, self.out)), residual)?;
        Ok((dims, per_block, y_dims, per_group))
    }

    fn forward(
        &self,
        (xs, xl): (&CpuStorage, &Layout),
        (ps, pl): (&CpuStorage, &Layout),
        residual: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let (dims, per_block, y_dims, per_group) =
            self.dims(xl.shape(), pl.shape(), residual.map(|(_, l)| l.shape()))?;
        let x = contiguous_f32(xs, xl, "conv_norm")?;
        let params = contiguous_f32(ps, pl, "conv_norm")?;
        let (w_rows, affine) = params.split_at(params.len() - 2 * self.out);
        let w_rows = Mat::row_major(w_rows, self.out, w_rows.len() / self.out.max(1))?;
        let residual = residual
            .map(|(rs, rl)| contiguous_f32(rs, rl, "conv_norm"))
            .transpose()?;
        let y = self.conv.forward_values(x, dims, w_rows, per_block)?;
        let z = self.norm.forward(&y, affine, residual, y_dims, per_group)?;
        if self.conv_out.set(y).is_err() {
            bail!("conv_norm: op applied twice")
        }
        Ok((CpuStorage::F32(z), Shape::from(y_dims)))
    }

    /// The gradients of `x` (if it needs one), of `params`, and of the residual.
    fn backward(
        &self,
        x: &Tensor,
        params: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Tensor, Tensor)> {
        let (dims, per_block, y_dims, per_group) = self.dims(x.shape(), params.shape(), None)?;
        let Some(y) = self.conv_out.get() else {
            bail!("conv_norm: backward before forward")
        };
        let (x_c, p_c, r_c, g_c) = (
            x.contiguous()?,
            params.contiguous()?,
            res.contiguous()?,
            grad_res.contiguous()?,
        );
        let (xs, xl) = x_c.storage_and_layout();
        let (ps, pl) = p_c.storage_and_layout();
        let (rs, rl) = r_c.storage_and_layout();
        let (gs, gl) = g_c.storage_and_layout();
        let xv = tensor_f32(&xs, xl, "conv_norm")?;
        let pv = tensor_f32(&ps, pl, "conv_norm")?;
        let (w_rows, affine) = pv.split_at(pv.len() - 2 * self.out);
        let w_mat = Mat::row_major(w_rows, self.out, w_rows.len() / self.out.max(1))?;
        let out = tensor_f32(&rs, rl, "conv_norm")?;
        let g = tensor_f32(&gs, gl, "conv_norm")?;
        let (grad_y, grad_affine, grad_sum) =
            self.norm
                .backward_values(y, &affine[..self.out], out, g, y_dims, per_group)?;
        let (grad_x, mut grad_params) = self.conv.backward_values(
            xv,
            dims,
            w_mat,
            &grad_y,
            per_block,
            self.conv.input_grad && x.track_op(),
        )?;
        grad_params.extend_from_slice(&grad_affine);
        Ok((
            grad_x.map(|v| Tensor::from_vec(v, x.shape(), x.device())).transpose()?,
            Tensor::from_vec(grad_params, params.shape(), params.device())?,
            Tensor::from_vec(grad_sum, y_dims, x.device())?,
        ))
    }
}

impl CustomOp2 for ConvNorm {
    fn name(&self) -> &'static str {
        "conv_norm_nhwc"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, ps: &CpuStorage, pl: &Layout) -> Result<(CpuStorage, Shape)> {
        self.forward((xs, xl), (ps, pl), None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        params: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (gx, gp, _) = self.backward(x, params, res, grad_res)?;
        Ok((gx, Some(gp)))
    }
}

impl CustomOp3 for ConvNorm {
    fn name(&self) -> &'static str {
        "conv_norm_add_nhwc"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ps: &CpuStorage,
        pl: &Layout,
        rs: &CpuStorage,
        rl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.forward((xs, xl), (ps, pl), Some((rs, rl)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        params: &Tensor,
        _residual: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (gx, gp, gr) = self.backward(x, params, res, grad_res)?;
        Ok((gx, Some(gp), Some(gr)))
    }
}

/// `relu?(group_norm(conv(x)) [+ residual])` in one op ([`ConvNorm`]): NHWC `x`
/// `[b, h, w, c]`; `params` `[out·k²·c + 2·out]`, the convolution's `[out, k²·c]` rows
/// (as [`conv`] takes them), then γ, then β; a `k × k` kernel (odd) with padding `k / 2`
/// and `stride`; `groups` groups. Returns `[b, ⌈h/stride⌉, ⌈w/stride⌉, out]`; the
/// same values and gradients as [`conv`] followed by [`group_norm`], in one op.
#[allow(clippy::too_many_arguments)]
pub fn conv_norm(
    x: &Tensor,
    params: &Tensor,
    (out, k, stride): (usize, usize, usize),
    groups: usize,
    residual: Option<&Tensor>,
    relu: bool,
) -> Result<Tensor> {
    let op = ConvNorm {
        conv: Conv {
            window: Window { k, stride },
            input_grad: x.track_op(),
            images_per_block: None,
        },
        norm: GroupNorm {
            groups,
            relu,
            stats: OnceLock::new(),
        },
        out,
        conv_out: OnceLock::new(),
    };
    match residual {
        Some(r) => x.apply_op3(params, r, op),
        None => x.apply_op2(params, op),
    }
}

/// A dense layer, `y = x · wᵀ + b` and optionally `relu(y)`, with its gradients.
///
/// Every product goes through [`gemm::matmul`] (Candle's bits; faster where the CPU has
/// AVX-512), and every other step is Candle's arithmetic in Candle's order: the bias
/// added to each product, `f32::max(0)`, the gradient times 1 or 0 by `pre ≥ 0`, the
/// bias gradient summed over the rows from the first. So a layer computes what
/// `x.matmul(&w.t())?.broadcast_add(&b)?.relu()` did, bit for bit (a test checks it),
/// in one pass instead of four, and without the product Candle's matmul would spend on
/// the gradient of a first layer's input, the images, which nothing uses.
struct Linear {
    input_grad: bool,
    relu: bool,
    /// Whether `x · wᵀ + b` was ≥ 0 before the ReLU (Candle's ReLU gradient), per output.
    passed: OnceLock<Vec<bool>>,
}

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn cpu_fwd(
        &self,
        x_storage: &CpuStorage,
        x_layout: &Layout,
        w_storage: &CpuStorage,
        w_layout: &Layout,
        b_storage: &CpuStorage,
        b_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = matrix(x_storage, x_layout, self.name())?;
        let w = matrix(w_storage, w_layout, self.name())?;
        let b = contiguous_f32(b_storage, b_layout, self.name())?;
        let out = w.rows();
        if b.len() != out {
            bail!("{}: {} bias values for {out} outputs", self.name(), b.len())
        }
        let mut y = gemm::matmul(x, w.t())?;
        for row in y.chunks_exact_mut(out.max(1)) {
            for (v, b) in row.iter_mut().zip(b) {
                *v += b;
            }
        }
        if self.relu {
            let passed = y
                .iter_mut()
                .map(|v| {
                    let pass = *v >= 0.0;
                    *v = v.max(0f32);
                    pass
                })
                .collect();
            if self.passed.set(passed).is_err() {
                bail!("{}: op applied twice", self.name())
            }
        }
        Ok((CpuStorage::F32(y), Shape::from((x.rows(), out))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad_res.contiguous()?;
        let (gs, gl) = grad.storage_and_layout();
        let mut g = tensor_f32(&gs, gl, self.name())?.to_vec();
        if self.relu {
            let Some(passed) = self.passed.get() else {
                bail!("{}: backward before forward", self.name())
            };
            for (g, &pass) in g.iter_mut().zip(passed) {
                *g *= if pass { 1.0 } else { 0.0 };
            }
        }
        let out = w.dim(0)?;
        let mut grad_b = vec![0f32; out];
        for row in g.chunks_exact(out.max(1)) {
            for (sum, v) in grad_b.iter_mut().zip(row) {
                *sum += v;
            }
        }
        let g = Mat::row_major(&g, g.len() / out.max(1), out)?;
        let grad_x = if self.input_grad {
            let (ws, wl) = w.storage_and_layout();
            let product = gemm::matmul(g, tensor_matrix(&ws, wl, self.name())?)?;
            Some(Tensor::from_vec(product, x.shape(), x.device())?)
        } else {
            None
        };
        let (xs, xl) = x.storage_and_layout();
        let grad_w = gemm::matmul(g.t(), tensor_matrix(&xs, xl, self.name())?)?;
        Ok((
            grad_x,
            Some(Tensor::from_vec(grad_w, w.shape(), w.device())?),
            Some(Tensor::from_vec(grad_b, b.shape(), b.device())?),
        ))
    }
}

/// A 2-D `f32` CPU storage seen through `layout` as a matrix, strides and all.
fn matrix<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<Mat<'a>> {
    let CpuStorage::F32(values) = storage else {
        bail!("{op}: expects f32, got {:?}", storage.dtype())
    };
    let (&[rows, cols], &[rs, cs]) = (layout.dims(), layout.stride()) else {
        bail!("{op}: expects a matrix, got shape {:?}", layout.dims())
    };
    Mat::strided(&values[layout.start_offset()..], (rows, cols), (rs, cs))
}

/// [`matrix`] behind a tensor's storage guard (CPU only).
fn tensor_matrix<'a>(storage: &'a Storage, layout: &Layout, op: &str) -> Result<Mat<'a>> {
    match storage {
        Storage::Cpu(cpu) => matrix(cpu, layout, op),
        _ => bail!("{op}: only implemented on the CPU"),
    }
}

/// A dense layer on `x` `[m, k]`, weights `w` `[n, k]` and bias `b` `[n]`:
/// `x · wᵀ + b`, then `relu` if asked, `[m, n]` ([`Linear`]). When `x` carries no
/// gradient (the network's input), its gradient is not computed.
pub fn linear(x: &Tensor, w: &Tensor, b: &Tensor, relu: bool) -> Result<Tensor> {
    x.apply_op3(
        w,
        b,
        Linear {
            input_grad: x.track_op(),
            relu,
            passed: OnceLock::new(),
        },
    )
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Var};

    use super::*;

    /// A deterministic, tie-free test tensor with both signs.
    fn ramp(dims: &[usize]) -> Tensor {
        let n: usize = dims.iter().product();
        let v: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0).collect();
        Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}");
        let diff = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(diff < tol, "{what}: max diff {diff}");
    }

    /// `w_full` from PyTorch-layout weights `[out, c, 3, 3]` and a bias, as the CNN builds it.
    fn w_full(w: &Tensor, bias: &Tensor) -> Tensor {
        let (out, c) = (w.dim(0).unwrap(), w.dim(1).unwrap());
        let rows = w.permute((0, 2, 3, 1)).unwrap().reshape((out, 9 * c)).unwrap();
        Tensor::cat(&[&rows, &bias.unsqueeze(1).unwrap()], 1).unwrap()
    }

    /// The first layer's direct convolution gives the product's bits: values of both
    /// signs, exact zeros and a zero bias, blocks starting mid-image, 2 to 33 channels
    /// (with one, or one row, the product runs: `gemm` takes another order there).
    #[test]
    fn a_one_channel_convolution_is_the_products_bit_for_bit() {
        if !direct_conv() {
            eprintln!(
                "SKIPPED: {}: the direct kernel needs AVX-512F and FMA ({})",
                stringify!(a_one_channel_convolution_is_the_products_bit_for_bit),
                Kernels::active().describe()
            );
            return;
        }
        let (b, h, w) = (3, 6, 8);
        let x: Vec<f32> = (0..b * h * w)
            .map(|i| {
                if i % 7 == 3 {
                    0.0
                } else {
                    ((i * 37 % 101) as f32 - 50.0) / 13.0
                }
            })
            .collect();
        for out in [1, 5, 16, 33] {
            let w_full: Vec<f32> = (0..out * 10)
                .map(|i| {
                    if i % 10 == 9 && i % 20 == 9 {
                        0.0
                    } else {
                        ((i * 53 % 89) as f32 - 44.0) / 17.0
                    }
                })
                .collect();
            for rows in [0..b * h * w, 5..b * h * w - 9, 13..15, 13..14] {
                let dims = (b, h, w, 1);
                let Some(direct) = conv_one_channel(&x, dims, rows.clone(), &w_full, out) else {
                    // The product runs: without AVX-512, or as a matrix-vector product.
                    assert!(
                        !direct_conv() || out == 1 || rows.len() == 1,
                        "{out} channels, rows {rows:?}"
                    );
                    continue;
                };
                let cols = im2col(&x, dims, rows.clone());
                let product = gemm::matmul(
                    Mat::row_major(&cols, rows.len(), 10).unwrap(),
                    Mat::row_major(&w_full, out, 10).unwrap().t(),
                )
                .unwrap();
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&direct), bits(&product), "{out} channels, rows {rows:?}");
            }
        }
    }

    /// The first layer's direct weight gradient gives the product's bits: over one and
    /// several of `gemm`'s contraction blocks (512 rows here), from mid-image, 2 to 33
    /// channels (a tail of lanes past 16 and 32).
    #[test]
    fn a_one_channel_weight_gradient_is_the_products_bit_for_bit() {
        if !direct_conv() {
            eprintln!(
                "SKIPPED: {}: the direct kernel needs AVX-512F and FMA ({})",
                stringify!(a_one_channel_weight_gradient_is_the_products_bit_for_bit),
                Kernels::active().describe()
            );
            return;
        }
        let (b, h, w) = (14, 8, 6);
        let x: Vec<f32> = (0..b * h * w)
            .map(|i| {
                if i % 7 == 3 {
                    0.0
                } else {
                    ((i * 37 % 101) as f32 - 50.0) / 13.0
                }
            })
            .collect();
        for out in [1, 2, 5, 16, 33] {
            for rows in [0..b * h * w, 5..b * h * w - 9, 13..600, 13..16, 13..15] {
                let g: Vec<f32> = (0..rows.len() * out)
                    .map(|i| {
                        if i % 11 == 4 {
                            0.0
                        } else {
                            ((i * 61 % 97) as f32 - 48.0) / 7.0
                        }
                    })
                    .collect();
                let dims = (b, h, w, 1);
                let Some(direct) = weight_grad_one_channel(&x, dims, rows.clone(), &g, out) else {
                    assert!(
                        !direct_conv() || out == 1 || rows.len() < 3,
                        "{out} channels, rows {rows:?}"
                    );
                    continue;
                };
                let cols = im2col(&x, dims, rows.clone());
                let product = gemm::matmul(
                    Mat::row_major(&g, rows.len(), out).unwrap().t(),
                    Mat::row_major(&cols, rows.len(), 10).unwrap(),
                )
                .unwrap();
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&direct), bits(&product), "{out} channels, rows {rows:?}");
            }
        }
    }

    #[test]
    fn conv_pool_relu_matches_a_direct_computation() {
        // Brute-force sums, not Candle's conv2d backward: in 0.9.1 its kernel gradient
        // is wrong whenever batch > 1 and out channels > 1 (it convolves with a
        // transposed, non-contiguous kernel; huggingface/candle#3735), and its
        // max_pool2d gradient is off by a constant factor.
        let (b, h, w, c, o) = (3, 6, 4, 3, 5);
        let probe = ramp(&[b, h / 2, w / 2, o]);
        let x = Var::from_tensor(&ramp(&[b, h, w, c])).unwrap();
        let wt = Var::from_tensor(&(ramp(&[o, c, 3, 3]) * 0.3).unwrap()).unwrap();
        let bias = Var::from_tensor(&(ramp(&[o]) * 0.5).unwrap()).unwrap();
        let (xv, wv, bv, pv) = (values(&x), values(&wt), values(&bias), values(&probe));

        // Convolution, then pooling with its winners, then ReLU, by hand.
        let mut conv = vec![0f32; b * h * w * o];
        let at = |n: usize, yy: usize, xx: usize, ch: usize, chans: usize| ((n * h + yy) * w + xx) * chans + ch;
        for n in 0..b {
            for yy in 0..h {
                for xx in 0..w {
                    for oc in 0..o {
                        let mut sum = bv[oc];
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let (sy, sx) = (yy + ky, xx + kx);
                                if sy == 0 || sy > h || sx == 0 || sx > w {
                                    continue;
                                }
                                for ci in 0..c {
                                    sum += wv[((oc * c + ci) * 3 + ky) * 3 + kx] * xv[at(n, sy - 1, sx - 1, ci, c)];
                                }
                            }
                        }
                        conv[at(n, yy, xx, oc, o)] = sum;
                    }
                }
            }
        }
        let mut want_y = Vec::new();
        let mut g_conv = vec![0f32; conv.len()];
        for n in 0..b {
            for oy in 0..h / 2 {
                for ox in 0..w / 2 {
                    for oc in 0..o {
                        let window =
                            [(0, 0), (0, 1), (1, 0), (1, 1)].map(|(dy, dx)| at(n, 2 * oy + dy, 2 * ox + dx, oc, o));
                        let best = window
                            .into_iter()
                            .reduce(|i, j| if conv[j] > conv[i] { j } else { i })
                            .unwrap();
                        want_y.push(conv[best].max(0.0));
                        if conv[best] > 0.0 {
                            g_conv[best] = pv[((n * (h / 2) + oy) * (w / 2) + ox) * o + oc];
                        }
                    }
                }
            }
        }
        let (mut gx, mut gw, mut gb) = (vec![0f32; xv.len()], vec![0f32; wv.len()], vec![0f32; o]);
        for n in 0..b {
            for yy in 0..h {
                for xx in 0..w {
                    for oc in 0..o {
                        let g = g_conv[at(n, yy, xx, oc, o)];
                        gb[oc] += g;
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let (sy, sx) = (yy + ky, xx + kx);
                                if sy == 0 || sy > h || sx == 0 || sx > w {
                                    continue;
                                }
                                for ci in 0..c {
                                    let (xi, wi) = (at(n, sy - 1, sx - 1, ci, c), ((oc * c + ci) * 3 + ky) * 3 + kx);
                                    gx[xi] += wv[wi] * g;
                                    gw[wi] += xv[xi] * g;
                                }
                            }
                        }
                    }
                }
            }
        }
        assert!(
            want_y.contains(&0.0) && want_y.iter().any(|&v| v > 0.0),
            "both ReLU sides"
        );

        // One block, and one image per block: same values.
        for images_per_block in [None, Some(1), Some(2)] {
            let op = ConvPoolRelu {
                images_per_block,
                winners: OnceLock::new(),
            };
            let y = x.apply_op2(&w_full(&wt, &bias), op).unwrap();
            assert_eq!(y.dims(), &[b, h / 2, w / 2, o]);
            assert_close(&values(&y), &want_y, 1e-5, "output");
            let grads = (&y * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            assert_close(&values(grads.get(&x).unwrap()), &gx, 1e-4, "input gradient");
            assert_close(&values(grads.get(&wt).unwrap()), &gw, 1e-4, "weight gradient");
            assert_close(&values(grads.get(&bias).unwrap()), &gb, 1e-4, "bias gradient");
        }

        // Candle's forward conv2d and max_pool2d are right; ours agrees with them.
        let reference = x
            .permute((0, 3, 1, 2))
            .and_then(|t| t.conv2d(&wt, 1, 1, 1, 1))
            .and_then(|t| t.broadcast_add(&bias.reshape((1, o, 1, 1))?))
            .and_then(|t| t.max_pool2d(2)?.relu()?.permute((0, 2, 3, 1)))
            .unwrap();
        assert_close(&values(&reference), &want_y, 1e-5, "candle forward");
    }

    /// A convolution without bias by direct sums, NHWC: the output and, for the probe
    /// `p` (the output gradient), the input and weight gradients. `w` is PyTorch's
    /// `[out, c, k, k]`; padding `k / 2`.
    #[allow(clippy::type_complexity)]
    fn conv_by_hand(
        x: &[f32],
        (b, h, w, c): Nhwc,
        wt: &[f32],
        (o, k, s): (usize, usize, usize),
        p: &[f32],
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let pad = k / 2;
        let (ho, wo) = ((h - 1) / s + 1, (w - 1) / s + 1);
        let (mut y, mut gx, mut gw) = (vec![0f32; b * ho * wo * o], vec![0f32; x.len()], vec![0f32; wt.len()]);
        for n in 0..b {
            for oy in 0..ho {
                for ox in 0..wo {
                    for oc in 0..o {
                        let at = ((n * ho + oy) * wo + ox) * o + oc;
                        for ky in 0..k {
                            for kx in 0..k {
                                let (sy, sx) = (oy * s + ky, ox * s + kx);
                                if sy < pad || sx < pad || sy - pad >= h || sx - pad >= w {
                                    continue;
                                }
                                for ci in 0..c {
                                    let xi = ((n * h + sy - pad) * w + sx - pad) * c + ci;
                                    let wi = ((oc * c + ci) * k + ky) * k + kx;
                                    y[at] += wt[wi] * x[xi];
                                    gx[xi] += wt[wi] * p[at];
                                    gw[wi] += x[xi] * p[at];
                                }
                            }
                        }
                    }
                }
            }
        }
        (y, gx, gw)
    }

    /// [`conv`]'s values and both gradients against direct sums, its values against
    /// Candle's forward `conv2d` (right; only its backward is not), and its weight
    /// gradient against central differences (exact up to rounding: the loss is linear
    /// in the weights). 3×3 and 1×1 windows, strides 1 and 2, odd and even sizes, two
    /// and three images, one image per block as well as all in one.
    #[test]
    fn conv_matches_direct_sums_candle_and_finite_differences() {
        for (dims, o, k, s) in [
            ((2, 5, 7, 3), 4, 3, 1),
            ((3, 6, 4, 2), 5, 3, 2),
            ((2, 7, 5, 3), 2, 3, 2),
            ((3, 6, 6, 4), 3, 1, 2),
            ((2, 5, 3, 2), 4, 1, 2),
            ((2, 1, 1, 3), 2, 3, 2),
        ] {
            let (b, h, w, c) = dims;
            let what = format!("{b}×{h}×{w}×{c} by {o}×{k}×{k}, stride {s}");
            let (ho, wo) = ((h - 1) / s + 1, (w - 1) / s + 1);
            let x = Var::from_tensor(&ramp(&[b, h, w, c])).unwrap();
            let wt = Var::from_tensor(&(ramp(&[o, c, k, k]) * 0.3).unwrap()).unwrap();
            let probe = (ramp(&[b, ho, wo, o]) * 0.7).unwrap().sin().unwrap();
            let (want_y, want_gx, want_gw) = conv_by_hand(&values(&x), dims, &values(&wt), (o, k, s), &values(&probe));
            let rows = |wt: &Tensor| wt.permute((0, 2, 3, 1)).unwrap().reshape((o, k * k * c)).unwrap();
            let y = conv(&x, &rows(&wt), k, s).unwrap();
            assert_eq!(y.dims(), &[b, ho, wo, o], "{what}");
            assert_close(&values(&y), &want_y, 1e-4, &what);
            let grads = (&y * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            assert_close(
                &values(grads.get(&x).unwrap()),
                &want_gx,
                1e-4,
                &format!("{what}: input gradient"),
            );
            let gw = values(grads.get(&wt).unwrap());
            assert_close(&gw, &want_gw, 1e-4, &format!("{what}: weight gradient"));

            // One image per block: the same values, the weight gradient summed over blocks.
            let op = Conv {
                window: Window { k, stride: s },
                input_grad: true,
                images_per_block: Some(1),
            };
            let y1 = x.apply_op2(&rows(&wt), op).unwrap();
            assert_close(&values(&y1), &want_y, 1e-4, &format!("{what}: by image"));
            let grads = (&y1 * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            assert_close(
                &values(grads.get(&x).unwrap()),
                &want_gx,
                1e-4,
                &format!("{what}: by image, input gradient"),
            );
            assert_close(
                &values(grads.get(&wt).unwrap()),
                &want_gw,
                1e-4,
                &format!("{what}: by image, weight gradient"),
            );

            let reference = x
                .permute((0, 3, 1, 2))
                .and_then(|t| t.conv2d(&wt, k / 2, s, 1, 1)?.permute((0, 2, 3, 1)))
                .unwrap();
            assert_close(&values(&reference), &want_y, 1e-4, &format!("{what}: candle forward"));

            let loss = |wv: &[f32]| -> f64 {
                let wt = Tensor::from_vec(wv.to_vec(), (o, c, k, k), &Device::Cpu).unwrap();
                let y = conv(x.as_tensor(), &rows(&wt), k, s).unwrap();
                values(&y)
                    .iter()
                    .zip(values(&probe))
                    .map(|(a, b)| f64::from(*a) * f64::from(b))
                    .sum()
            };
            let w0 = values(&wt);
            for i in (0..w0.len()).step_by(7) {
                let (mut plus, mut minus) = (w0.clone(), w0.clone());
                plus[i] += 0.5;
                minus[i] -= 0.5;
                let fd = (loss(&plus) - loss(&minus)) as f32;
                assert!(
                    (fd - gw[i]).abs() < 1e-3 * (1.0 + fd.abs()),
                    "{what}: weight {i}: {fd} vs {}",
                    gw[i]
                );
            }
        }
    }

    /// Group norm with its residual sum and ReLU against the same composed of Candle's
    /// own differentiable ops: values and the gradients of x, γ, β and the residual;
    /// odd and even sizes, 2 and 3 groups, 2 and 3 images.
    #[test]
    fn group_norm_matches_candles_composition() {
        for ((b, h, w, c), groups) in [((2, 5, 3, 4), 2), ((3, 4, 6, 6), 3), ((2, 3, 3, 8), 2)] {
            for (residual, relu) in [(false, false), (false, true), (true, true), (true, false)] {
                let what = format!("{b}×{h}×{w}×{c}, {groups} groups, residual {residual}, relu {relu}");
                // Offsets per channel, so the groups' means are far from 0.
                let x = Var::from_tensor(&((ramp(&[b, h, w, c]) * 1.3).unwrap() + 0.8).unwrap()).unwrap();
                let gamma = Var::from_tensor(&(ramp(&[c]) * 0.5).unwrap().cos().unwrap()).unwrap();
                let beta = Var::from_tensor(&(ramp(&[c]) * 0.3).unwrap()).unwrap();
                let r = Var::from_tensor(&(ramp(&[b, h, w, c]) * 0.9).unwrap().sin().unwrap()).unwrap();
                let probe = (ramp(&[b, h, w, c]) * 0.7).unwrap().cos().unwrap();

                let affine = Tensor::stack(&[gamma.as_tensor(), beta.as_tensor()], 0).unwrap();
                let ours = group_norm(&x, &affine, groups, residual.then_some(r.as_tensor()), relu).unwrap();

                let reference = {
                    let xg = x.reshape((b, h * w, groups, c / groups)).unwrap();
                    let mean = xg.mean_keepdim(1).unwrap().mean_keepdim(3).unwrap();
                    let d = xg.broadcast_sub(&mean).unwrap();
                    let var = d.sqr().unwrap().mean_keepdim(1).unwrap().mean_keepdim(3).unwrap();
                    let xhat = d.broadcast_div(&(var + GN_EPS).unwrap().sqrt().unwrap()).unwrap();
                    let mut y = xhat
                        .reshape((b, h, w, c))
                        .unwrap()
                        .broadcast_mul(&gamma)
                        .unwrap()
                        .broadcast_add(&beta)
                        .unwrap();
                    if residual {
                        y = (y + r.as_tensor()).unwrap();
                    }
                    if relu { y.relu().unwrap() } else { y }
                };
                assert_close(&values(&ours), &values(&reference), 1e-5, &what);
                if relu {
                    assert!(values(&ours).contains(&0.0), "{what}: the ReLU cuts some");
                }
                let g1 = (&ours * &probe).unwrap().sum_all().unwrap().backward().unwrap();
                let g2 = (&reference * &probe).unwrap().sum_all().unwrap().backward().unwrap();
                for (var, name) in [(&x, "x"), (&gamma, "γ"), (&beta, "β"), (&r, "residual")] {
                    match (g1.get(var), g2.get(var)) {
                        (Some(a), Some(b)) => assert_close(
                            &values(a),
                            &values(b),
                            2e-5 * (b.elem_count() as f32).sqrt().max(1.0),
                            &format!("{what}: {name}"),
                        ),
                        (None, None) => assert!(!residual && name == "residual", "{what}: {name}"),
                        _ => panic!("{what}: {name}: gradient present in one only"),
                    }
                }
            }
        }
    }

    /// The fused layer computes what the convolution and the norm compute as two ops:
    /// the same values and gradients (to the bit: the same arithmetic in the same order).
    #[test]
    fn conv_norm_is_conv_then_group_norm() {
        let bits = |t: &Tensor| values(t).iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        for ((b, h, w, c), out, k, s) in [
            ((2, 5, 7, 3), 4, 3, 1),
            ((3, 6, 5, 4), 6, 3, 2),
            ((2, 5, 4, 4), 4, 1, 2),
        ] {
            for (residual, relu) in [(false, true), (true, true), (false, false)] {
                let what = format!("{b}×{h}×{w}×{c} by {out}×{k}×{k}, stride {s}, residual {residual}, relu {relu}");
                let (ho, wo) = ((h - 1) / s + 1, (w - 1) / s + 1);
                let x = Var::from_tensor(&ramp(&[b, h, w, c])).unwrap();
                let wr = Var::from_tensor(&(ramp(&[out, k * k * c]) * 0.3).unwrap()).unwrap();
                let gamma = Var::from_tensor(&(ramp(&[out]) * 0.5).unwrap().cos().unwrap()).unwrap();
                let beta = Var::from_tensor(&(ramp(&[out]) * 0.3).unwrap()).unwrap();
                let r = Var::from_tensor(&(ramp(&[b, ho, wo, out]) * 0.9).unwrap().sin().unwrap()).unwrap();
                let probe = (ramp(&[b, ho, wo, out]) * 0.7).unwrap().cos().unwrap();
                let r_arg = residual.then_some(r.as_tensor());
                let params =
                    Tensor::cat(&[&wr.flatten_all().unwrap(), gamma.as_tensor(), beta.as_tensor()], 0).unwrap();
                let fused = conv_norm(&x, &params, (out, k, s), 2, r_arg, relu).unwrap();
                let affine = Tensor::stack(&[gamma.as_tensor(), beta.as_tensor()], 0).unwrap();
                let apart = group_norm(&conv(&x, &wr, k, s).unwrap(), &affine, 2, r_arg, relu).unwrap();
                assert_eq!(bits(&fused), bits(&apart), "{what}");
                let g1 = (&fused * &probe).unwrap().sum_all().unwrap().backward().unwrap();
                let g2 = (&apart * &probe).unwrap().sum_all().unwrap().backward().unwrap();
                for (var, name) in [
                    (&x, "x"),
                    (&wr, "weights"),
                    (&gamma, "γ"),
                    (&beta, "β"),
                    (&r, "residual"),
                ] {
                    match (g1.get(var), g2.get(var)) {
                        (Some(a), Some(b)) => assert_eq!(bits(a), bits(b), "{what}: {name}"),
                        (None, None) => assert!(!residual && name == "residual", "{what}: {name}"),
                        _ => panic!("{what}: {name}: gradient in one only"),
                    }
                }
            }
        }
        let x = ramp(&[2, 4, 4, 3]);
        assert!(conv_norm(&x, &ramp(&[4 * 27 + 8]), (4, 3, 1), 2, None, true).is_ok());
        assert!(
            conv_norm(&x, &ramp(&[4 * 27 + 7]), (4, 3, 1), 2, None, true).is_err(),
            "parameters"
        );
        assert!(
            conv_norm(&x, &ramp(&[3 * 27 + 6]), (3, 3, 1), 2, None, true).is_err(),
            "3 channels in 2 groups"
        );
    }

    #[test]
    fn conv_and_norm_refuse_bad_shapes() {
        let x = ramp(&[2, 4, 4, 3]);
        assert!(conv(&x, &ramp(&[2, 27]), 3, 1).is_ok());
        assert!(conv(&x, &ramp(&[2, 26]), 3, 1).is_err(), "27 columns for 3 channels");
        assert!(conv(&x, &ramp(&[2, 12]), 2, 1).is_err(), "even kernel");
        assert!(conv(&x, &ramp(&[2, 27]), 3, 0).is_err(), "stride 0");
        assert!(conv(&ramp(&[4, 4]), &ramp(&[2, 27]), 3, 1).is_err(), "not NHWC");
        let affine = ramp(&[2, 3]);
        assert!(group_norm(&x, &affine, 3, None, true).is_ok());
        assert!(
            group_norm(&x, &affine, 2, None, true).is_err(),
            "3 channels in 2 groups"
        );
        assert!(group_norm(&x, &ramp(&[3]), 3, None, true).is_err(), "affine [2, c]");
        assert!(
            group_norm(&x, &affine, 3, Some(&ramp(&[2, 4, 4, 2])), true).is_err(),
            "residual shape"
        );
    }

    #[test]
    fn data_input_gets_no_gradient_but_weights_do() {
        let x = ramp(&[2, 4, 4, 1]);
        let wf = Var::from_tensor(&(ramp(&[3, 10]) * 0.2).unwrap()).unwrap();
        let grads = conv3x3_pool_relu(&x, &wf)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(grads.get(&x).is_none());
        assert!(values(grads.get(&wf).unwrap()).iter().any(|&g| g != 0.0));
    }

    #[test]
    fn pooling_ties_and_zeros() {
        // One channel, three 2×2 maps (so one window each): a tie goes to the first
        // entry; an all-negative window passes no gradient, nor does a maximum of 0.
        let y = [1.0f32, 1.0, 1.0, 1.0, -2.0, -1.0, -3.0, -1.5, 0.0, -1.0, 0.0, -2.0];
        let (mut out, mut winners) = (Vec::new(), Vec::new());
        pool_relu(&y, (3, 2, 2, 1), &mut out, &mut winners);
        assert_eq!(out, [1.0, 0.0, 0.0]);
        let g = unpool(&[1.0, 1.0, 1.0], &winners, (3, 2, 2, 1));
        assert_eq!(g, [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn a_dense_layer_and_its_gradients_are_candles_bit_for_bit() {
        // The default MLP's first layer on a batch of 70 (its contraction over 784 takes
        // two blocks, its gradient's over the batch one), against Candle's own ops:
        // with and without ReLU, the input as data and as a variable.
        let bits = |t: &Tensor| values(t).iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        let x = (ramp(&[70, 784]) * 0.37).unwrap().sin().unwrap();
        let w = Var::from_tensor(&(ramp(&[256, 784]) * 0.11).unwrap().cos().unwrap()).unwrap();
        let b = Var::from_tensor(&(ramp(&[256]) * 0.5).unwrap().sin().unwrap()).unwrap();
        let probe = (ramp(&[70, 256]) * 0.7).unwrap().sin().unwrap();
        for (input_grad, relu) in [(false, false), (false, true), (true, false), (true, true)] {
            let xv = Var::from_tensor(&x).unwrap();
            let x = if input_grad { xv.as_tensor() } else { &x };
            let ours = linear(x, &w, &b, relu).unwrap();
            let mut reference = x.matmul(&w.t().unwrap()).unwrap().broadcast_add(&b).unwrap();
            if relu {
                reference = reference.relu().unwrap();
                assert!(values(&ours).contains(&0.0), "some outputs cut by the ReLU");
            }
            assert_eq!(bits(&ours), bits(&reference), "output (relu {relu})");
            let g1 = (&ours * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (&reference * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            for (var, what) in [(&w, "weight"), (&b, "bias")] {
                let theirs = g2.get(var).unwrap().contiguous().unwrap();
                assert_eq!(
                    bits(g1.get(var).unwrap()),
                    bits(&theirs),
                    "{what} gradient (relu {relu})"
                );
            }
            // The input's gradient exactly when the input is tracked.
            match (g1.get(&xv), g2.get(&xv)) {
                (Some(a), Some(b)) => assert_eq!(bits(a), bits(b), "input gradient (relu {relu})"),
                (None, None) => assert!(!input_grad),
                other => panic!("input gradient present {:?}", (other.0.is_some(), other.1.is_some())),
            }
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        let wf = ramp(&[2, 10]);
        assert!(conv3x3_pool_relu(&ramp(&[1, 3, 4, 1]), &wf).is_err(), "odd height");
        assert!(conv3x3_pool_relu(&ramp(&[4, 4]), &wf).is_err(), "not NHWC");
        assert!(
            conv3x3_pool_relu(&ramp(&[1, 4, 4, 2]), &wf).is_err(),
            "2 channels need 19 columns"
        );
        let ints = Tensor::zeros((1, 2, 2, 1), DType::U32, &Device::Cpu).unwrap();
        assert!(conv3x3_pool_relu(&ints, &wf).is_err());
    }
}
