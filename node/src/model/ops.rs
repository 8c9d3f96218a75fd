//! Hand-written CPU kernels, as Candle custom ops with their gradients.
//!
//! Candle 0.9's CPU convolution is fast forward (im2col + gemm) but its backward pass is
//! not: the input gradient goes through a direct-loop `conv_transpose2d`, the kernel
//! gradient through a convolution with a 14×14 kernel, the bias gradient through a
//! strided reduction, and max-pool's backward through upsampling, masks and an
//! average pool. On one thread that made a CNN step ~7× slower than its arithmetic.
//!
//! Here a 3×3 convolution is `im2col(x) · Wᵀ` in NHWC layout: [`im2col3x3`] gathers
//! each pixel's 3×3 neighbourhood into a row (plus a trailing 1 that multiplies the
//! bias), Candle's matmul does the arithmetic forward and backward, and the gradient of
//! the gather is its scatter-add (col2im). [`max_pool2x2`] pools NHWC maps and routes
//! each gradient to the first maximum of its window, as PyTorch does.
//!
//! NHWC keeps everything contiguous: the matmul's output already is the next layer's
//! input, and a `[b, 784]` batch of images is an NHWC tensor with one channel.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Storage, Tensor, bail};

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

/// Gathers 3×3 neighbourhoods (padding 1) of an NHWC tensor `[b, h, w, c]` into
/// `[b·h·w, 9·c + 1]`: row `(n, y, x)` holds `x[n, y+ky−1, x+kx−1, ci]` at column
/// `(ky·3 + kx)·c + ci` (zero outside the image), and a final 1 for the bias.
struct Im2Col3x3;

/// Columns of one im2col row for `c` channels.
fn row_len(c: usize) -> usize {
    9 * c + 1
}

/// The taps `kx ∈ [lo, hi)` of a 3×3 window centred on column `x` of a row `w` wide
/// that fall inside the image (padding 1 supplies the rest).
fn taps(x: usize, w: usize) -> (usize, usize) {
    (usize::from(x == 0), if x + 1 == w { 2 } else { 3 })
}

fn im2col(x: &[f32], (b, h, w, c): (usize, usize, usize, usize)) -> Vec<f32> {
    let k = row_len(c);
    // Zero-filled, so out-of-image taps need no write.
    let mut out = vec![0f32; b * h * w * k];
    let mut rows = out.chunks_exact_mut(k);
    for n in 0..b {
        for y in 0..h {
            for xx in 0..w {
                let Some(row) = rows.next() else { return out };
                let (lo, hi) = taps(xx, w);
                // With columns in (ky, kx, channel) order, the in-image taps of one
                // kernel row are one contiguous run in both source and destination.
                for ky in 0..3 {
                    let Some(sy) = (y + ky).checked_sub(1).filter(|&sy| sy < h) else {
                        continue;
                    };
                    let src = ((n * h + sy) * w + xx + lo - 1) * c;
                    let dst = (ky * 3 + lo) * c;
                    let len = (hi - lo) * c;
                    row[dst..dst + len].copy_from_slice(&x[src..src + len]);
                }
                row[k - 1] = 1.0;
            }
        }
    }
    out
}

/// The adjoint of [`im2col`]: scatter-adds rows back onto a `[b, h, w, c]` gradient.
fn col2im(cols: &[f32], (b, h, w, c): (usize, usize, usize, usize)) -> Vec<f32> {
    let k = row_len(c);
    let mut out = vec![0f32; b * h * w * c];
    let mut rows = cols.chunks_exact(k);
    for n in 0..b {
        for y in 0..h {
            for xx in 0..w {
                let Some(row) = rows.next() else { return out };
                let (lo, hi) = taps(xx, w);
                for ky in 0..3 {
                    let Some(sy) = (y + ky).checked_sub(1).filter(|&sy| sy < h) else {
                        continue;
                    };
                    let dst = ((n * h + sy) * w + xx + lo - 1) * c;
                    let src = (ky * 3 + lo) * c;
                    let len = (hi - lo) * c;
                    for (o, g) in out[dst..dst + len].iter_mut().zip(&row[src..src + len]) {
                        *o += g;
                    }
                }
            }
        }
    }
    out
}

impl CustomOp1 for Im2Col3x3 {
    fn name(&self) -> &'static str {
        "im2col3x3"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = layout.shape().dims4()?;
        let x = contiguous_f32(storage, layout, self.name())?;
        let (b, h, w, c) = dims;
        let cols = im2col(x, dims);
        Ok((CpuStorage::F32(cols), Shape::from((b * h * w, row_len(c)))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let dims = arg.dims4()?;
        let grad_res = grad_res.contiguous()?;
        let (g, g_layout) = grad_res.storage_and_layout();
        let grad = col2im(tensor_f32(&g, g_layout, self.name())?, dims);
        Ok(Some(Tensor::from_vec(grad, arg.shape(), arg.device())?))
    }
}

/// `[b, h, w, c]` → `[b·h·w, 9·c + 1]` 3×3 neighbourhoods with a bias column, for a
/// convolution as one matmul. Differentiable (its gradient is col2im).
pub fn im2col3x3(x: &Tensor) -> Result<Tensor> {
    x.apply_op1(Im2Col3x3)
}

/// 2×2 max-pooling, stride 2, of an NHWC tensor `[b, h, w, c]` with even `h` and `w`.
struct MaxPool2x2;

impl CustomOp1 for MaxPool2x2 {
    fn name(&self) -> &'static str {
        "max_pool2x2_nhwc"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, h, w, c) = layout.shape().dims4()?;
        if !h.is_multiple_of(2) || !w.is_multiple_of(2) {
            bail!("{}: needs even height and width, got {h}×{w}", self.name())
        }
        let x = contiguous_f32(storage, layout, self.name())?;
        let (oh, ow) = (h / 2, w / 2);
        let mut out = vec![0f32; b * oh * ow * c];
        let mut dsts = out.chunks_exact_mut(c);
        for n in 0..b {
            for oy in 0..oh {
                let top = (n * h + 2 * oy) * w * c;
                let bottom = top + w * c;
                for ox in 0..ow {
                    let Some(dst) = dsts.next() else { break };
                    let o = 2 * ox * c;
                    let (a, bb) = (&x[top + o..top + o + c], &x[top + o + c..top + o + 2 * c]);
                    let (cc, d) = (&x[bottom + o..bottom + o + c], &x[bottom + o + c..][..c]);
                    for ((((m, a), bb), cc), d) in dst.iter_mut().zip(a).zip(bb).zip(cc).zip(d) {
                        *m = a.max(*bb).max(cc.max(*d));
                    }
                }
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((b, oh, ow, c))))
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let (b, h, w, c) = arg.dims4()?;
        let (oh, ow) = (h / 2, w / 2);
        // Candle hands over contiguous tensors here, but nothing promises it.
        let (arg, res, grad_res) = (arg.contiguous()?, res.contiguous()?, grad_res.contiguous()?);
        let ((xs, xl), (ms, ml), (gs, gl)) = (
            arg.storage_and_layout(),
            res.storage_and_layout(),
            grad_res.storage_and_layout(),
        );
        let x = tensor_f32(&xs, xl, self.name())?;
        let m = tensor_f32(&ms, ml, self.name())?;
        let g = tensor_f32(&gs, gl, self.name())?;
        let mut grad = vec![0f32; b * h * w * c];
        let mut r = 0;
        for n in 0..b {
            for oy in 0..oh {
                let top = (n * h + 2 * oy) * w * c;
                for ox in 0..ow {
                    // Window entries in reading order; the first maximum takes the gradient.
                    let base = top + 2 * ox * c;
                    let window = [base, base + c, base + w * c, base + w * c + c];
                    for ci in 0..c {
                        let (max, g_out) = (m[r + ci], g[r + ci]);
                        if let Some(&i) = window.iter().find(|&&i| x[i + ci] == max) {
                            grad[i + ci] = g_out;
                        }
                    }
                    r += c;
                }
            }
        }
        Ok(Some(Tensor::from_vec(grad, arg.shape(), arg.device())?))
    }
}

/// 2×2 max-pooling, stride 2, of an NHWC tensor `[b, h, w, c]` (even `h`, `w`).
pub fn max_pool2x2(x: &Tensor) -> Result<Tensor> {
    x.apply_op1(MaxPool2x2)
}

/// `lhs · wᵀ` as an op on `w` alone: `lhs` is data that needs no gradient.
///
/// Candle's matmul always computes both operand gradients; for a first layer, whose
/// input is the images, the input gradient (`grad · w`) is as costly as the forward
/// product and thrown away. This op differentiates only in `w`.
struct MatmulDataLhs {
    lhs: Tensor,
}

impl CustomOp1 for MatmulDataLhs {
    fn name(&self) -> &'static str {
        "matmul_data_lhs"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let w = contiguous_f32(storage, layout, self.name())?;
        // The weight is small: copying it into a tensor lets Candle's gemm do the work;
        // the product is copied once more into the op's output.
        let w = Tensor::from_slice(w, layout.shape(), self.lhs.device())?;
        let product = self.lhs.matmul(&w.t()?)?;
        let shape = product.shape().clone();
        Ok((CpuStorage::F32(product.flatten_all()?.to_vec1::<f32>()?), shape))
    }

    fn bwd(&self, _w: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad_res.t()?.matmul(&self.lhs)?))
    }
}

/// `x · wᵀ` for `x` `[m, k]` and `w` `[n, k]` → `[m, n]`: the product of a dense or
/// im2col'd convolution layer. When `x` carries no gradient (the network's input),
/// its gradient is not computed.
pub fn matmul_wt(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if x.track_op() {
        x.matmul(&w.t()?)
    } else {
        w.apply_op1(MatmulDataLhs { lhs: x.clone() })
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Var};

    use super::*;

    /// A deterministic, tie-free test tensor.
    fn ramp(dims: &[usize]) -> Tensor {
        let n: usize = dims.iter().product();
        let v: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0).collect();
        Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// The convolution as the CNN computes it (NHWC, bias column).
    fn conv_nhwc(x: &Tensor, w: &Tensor, bias: &Tensor) -> Tensor {
        let (b, h, wd, c) = x.dims4().unwrap();
        let out = w.dim(0).unwrap();
        let wmat = w.permute((0, 2, 3, 1)).unwrap().reshape((out, 9 * c)).unwrap();
        let wfull = Tensor::cat(&[&wmat, &bias.unsqueeze(1).unwrap()], 1).unwrap();
        im2col3x3(x)
            .unwrap()
            .matmul(&wfull.t().unwrap())
            .unwrap()
            .reshape((b, h, wd, out))
            .unwrap()
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}");
        let diff = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(diff < tol, "{what}: max diff {diff}");
    }

    #[test]
    fn conv_matches_a_direct_computation() {
        // Brute-force sums, not Candle's conv2d backward: in 0.9.1 its kernel gradient
        // is wrong whenever batch > 1 and out channels > 1 (it convolves with a
        // transposed, non-contiguous kernel; huggingface/candle#3735).
        let (b, h, w, c, o) = (2, 6, 4, 3, 5);
        let x = Var::from_tensor(&ramp(&[b, h, w, c])).unwrap();
        let wt = Var::from_tensor(&(ramp(&[o, c, 3, 3]) * 0.3).unwrap()).unwrap();
        let bias = Var::from_tensor(&ramp(&[o])).unwrap();
        let probe = ramp(&[b, h, w, o]);
        let ours = conv_nhwc(&x, &wt, &bias);
        let grads = (&ours * &probe).unwrap().sum_all().unwrap().backward().unwrap();

        let (xv, wv, bv, pv) = (values(&x), values(&wt), values(&bias), values(&probe));
        let (mut y, mut gx, mut gw) = (vec![0f32; b * h * w * o], vec![0f32; xv.len()], vec![0f32; wv.len()]);
        let mut gb = vec![0f32; o];
        for n in 0..b {
            for yy in 0..h {
                for xx in 0..w {
                    for oc in 0..o {
                        let yi = ((n * h + yy) * w + xx) * o + oc;
                        y[yi] += bv[oc];
                        gb[oc] += pv[yi];
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let (sy, sx) = (yy + ky, xx + kx);
                                if sy == 0 || sy > h || sx == 0 || sx > w {
                                    continue;
                                }
                                for ci in 0..c {
                                    let xi = ((n * h + sy - 1) * w + sx - 1) * c + ci;
                                    let wi = ((oc * c + ci) * 3 + ky) * 3 + kx;
                                    y[yi] += wv[wi] * xv[xi];
                                    gx[xi] += wv[wi] * pv[yi];
                                    gw[wi] += xv[xi] * pv[yi];
                                }
                            }
                        }
                    }
                }
            }
        }
        assert_close(&values(&ours), &y, 1e-5, "output");
        assert_close(&values(grads.get(&x).unwrap()), &gx, 1e-4, "input gradient");
        assert_close(&values(grads.get(&wt).unwrap()), &gw, 1e-4, "weight gradient");
        assert_close(&values(grads.get(&bias).unwrap()), &gb, 1e-4, "bias gradient");

        // Candle's forward convolution is right; ours agrees with it.
        let reference = x
            .permute((0, 3, 1, 2))
            .unwrap()
            .conv2d(&wt, 1, 1, 1, 1)
            .unwrap()
            .broadcast_add(&bias.reshape((1, o, 1, 1)).unwrap())
            .unwrap()
            .permute((0, 2, 3, 1))
            .unwrap();
        assert!(max_diff(&ours, &reference) < 1e-5);
    }

    #[test]
    fn max_pool_matches_a_direct_computation() {
        let (b, h, w, c) = (2, 4, 6, 3);
        let x = Var::from_tensor(&ramp(&[b, h, w, c])).unwrap();
        let ours = max_pool2x2(&x).unwrap();
        assert_eq!(ours.dims(), &[b, h / 2, w / 2, c]);
        // Candle's forward max-pool is right (its backward is off by a constant factor
        // in 0.9.1, so the gradient is checked by hand).
        let reference = x
            .permute((0, 3, 1, 2))
            .unwrap()
            .max_pool2d(2)
            .unwrap()
            .permute((0, 2, 3, 1))
            .unwrap();
        assert!(max_diff(&ours, &reference) < 1e-7);
        let probe = ramp(&[b, h / 2, w / 2, c]);
        let grads = (&ours * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let (xv, pv) = (values(&x), values(&probe));
        let mut want = vec![0f32; xv.len()];
        for n in 0..b {
            for oy in 0..h / 2 {
                for ox in 0..w / 2 {
                    for ci in 0..c {
                        let at = |dy: usize, dx: usize| ((n * h + 2 * oy + dy) * w + 2 * ox + dx) * c + ci;
                        let best = [at(0, 0), at(0, 1), at(1, 0), at(1, 1)]
                            .into_iter()
                            .max_by(|&i, &j| xv[i].total_cmp(&xv[j]))
                            .unwrap();
                        want[best] = pv[((n * (h / 2) + oy) * (w / 2) + ox) * c + ci];
                    }
                }
            }
        }
        assert_close(&values(grads.get(&x).unwrap()), &want, 1e-7, "pool gradient");
    }

    #[test]
    fn max_pool_gives_a_tie_to_one_entry() {
        let x = Var::from_tensor(&Tensor::ones((1, 2, 2, 1), DType::F32, &Device::Cpu).unwrap()).unwrap();
        let g = max_pool2x2(&x).unwrap().sum_all().unwrap().backward().unwrap();
        let g = g.get(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(g, [1.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn matmul_wt_with_data_lhs_matches_matmul() {
        let x = ramp(&[5, 7]);
        let w = Var::from_tensor(&ramp(&[3, 7])).unwrap();
        let probe = ramp(&[5, 3]);
        let ours = matmul_wt(&x, &w).unwrap();
        let reference = x.matmul(&w.t().unwrap()).unwrap();
        assert!(max_diff(&ours, &reference) < 1e-6);
        let g1 = (&ours * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (&reference * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(max_diff(g1.get(&w).unwrap(), g2.get(&w).unwrap()) < 1e-5);
        // A tracked lhs takes the ordinary path and gets its gradient.
        let xv = Var::from_tensor(&x).unwrap();
        let g = matmul_wt(&xv, &w).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(g.get(&xv).is_some());
    }

    #[test]
    fn bad_shapes_are_errors() {
        assert!(max_pool2x2(&ramp(&[1, 3, 4, 1])).is_err());
        assert!(im2col3x3(&ramp(&[4, 4])).is_err());
        let ints = Tensor::zeros((1, 2, 2, 1), DType::U32, &Device::Cpu).unwrap();
        assert!(im2col3x3(&ints).is_err());
    }
}
