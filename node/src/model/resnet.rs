//! The small residual networks of the federated and distillation literature for
//! CIFAR-sized images: the CIFAR variant of He et al. (2016, §4.2), with group
//! normalisation in place of batch normalisation.
//!
//! A 3×3 convolution of 16 channels (the stem), three stages of `n` basic blocks of
//! 16, 32 and 64 channels, the first block of stages 2 and 3 with stride 2, global
//! average pooling and a dense layer to the classes; depth `6n + 2` (ResNet-8: `n = 1`,
//! ResNet-20: `n = 3`). A basic block is `relu(gn(conv3×3(relu(gn(conv3×3(x))))) + s(x))`
//! with `s` the identity, or a 1×1 stride-2 convolution and its own group norm when the
//! shape changes (He et al.'s option B, as torchvision's `downsample`).
//!
//! **Group norm, 2 groups per layer.** Batch statistics are what non-IID clients
//! disagree on (Hsieh et al., ICML 2020, "The non-IID data quagmire", which replaced
//! BatchNorm with GroupNorm in exactly this network with 2 groups); group norm has no
//! running statistics, so a model behaves the same in training and evaluation, on a
//! batch of one and on a device whose labels are skewed. Two groups of 8/16/32 channels
//! keep each group's statistics over many values (`8 · 32 · 32` in stage 1, `32 · 8 · 8`
//! in stage 3) while still normalising channels apart. Every norm has PyTorch's affine γ
//! and β per channel (`ε = 1e-5`). Convolutions have no bias (the norm's β replaces it),
//! as in every ResNet.
//!
//! Activations are NHWC and every layer is one op of [`super::ops`]: the convolution
//! (im2col + product), its group norm, the residual sum and the ReLU together. Inputs arrive as PyTorch stores images, each row channels-first
//! `(C, H, W)`, and are permuted to NHWC once. Parameters keep PyTorch's names and
//! layouts (`conv1.weight` `[16, C, 3, 3]`, `layer2.0.shortcut.0.weight`, `gn1.bias`, …,
//! as `nn.Sequential` numbers a shortcut's convolution and norm), so a PyTorch model's
//! `state_dict` maps onto them one to one.

use candle_core::{Error, Result, Tensor};
use candle_nn::VarBuilder;

use super::Model;
use super::flops::Flops;
use super::init::PLACEHOLDER;
use super::ops::{conv_norm, linear};

/// Groups of every group norm.
pub const GROUPS: usize = 2;
/// Channels of the three stages.
pub const WIDTHS: [usize; 3] = [16, 32, 64];
/// Smallest height and width: each stride-2 stage must have at least 2 rows and columns
/// to subsample, so stage 3 sees at least 1×1 after halving 4×4 twice.
pub const MIN_SIDE: usize = 4;

/// Blocks per stage of a ResNet `depth` deep, checked against the input and classes.
fn blocks_per_stage(depth: usize, [c, h, w]: [usize; 3], classes: usize) -> Result<usize> {
    if depth < 8 || !(depth - 2).is_multiple_of(6) {
        return Err(Error::Msg(format!(
            "resnet: depth {depth} is not 6n + 2 with n ≥ 1 (8, 14, 20, 26, 32, 44, 56, 110 …)"
        )));
    }
    if c == 0 || h < MIN_SIDE || w < MIN_SIDE {
        return Err(Error::Msg(format!(
            "resnet: input {c}×{h}×{w} (C×H×W) is too small: the two stride-2 stages need at least \
             1 channel and {MIN_SIDE}×{MIN_SIDE} pixels"
        )));
    }
    if classes < 2 {
        return Err(Error::Msg(format!("resnet: {classes} classes; at least 2")));
    }
    Ok((depth - 2) / 6)
}

/// `Ok` if a ResNet `depth` deep can learn `data`'s images, else why not (naming the
/// sizes).
pub(super) fn check(depth: usize, data: &super::DataSpec) -> std::result::Result<(), String> {
    let Some(input) = data.image() else {
        return Err(format!(
            "a ResNet learns images [channels, height, width]; this data's samples are {:?} (use an mlp)",
            data.shape
        ));
    };
    blocks_per_stage(depth, input, data.classes as usize)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The convolutions of a ResNet in order, input side first, as `(in, out, k, stride,
/// output side h, output side w)`; an error naming the sizes [`ResNet::new`] refuses.
fn convolutions(depth: usize, input: [usize; 3], classes: usize) -> Result<Vec<[usize; 6]>> {
    let n = blocks_per_stage(depth, input, classes)?;
    let [c, mut h, mut w] = input;
    let mut layers = vec![[c, WIDTHS[0], 3, 1, h, w]];
    let mut prev = WIDTHS[0];
    for (stage, &width) in WIDTHS.iter().enumerate() {
        for block in 0..n {
            let stride = if stage > 0 && block == 0 { 2 } else { 1 };
            let (ho, wo) = (h.div_ceil(stride), w.div_ceil(stride));
            layers.push([prev, width, 3, stride, ho, wo]);
            layers.push([width, width, 3, 1, ho, wo]);
            if stride != 1 || prev != width {
                layers.push([prev, width, 1, stride, ho, wo]);
            }
            (prev, h, w) = (width, ho, wo);
        }
    }
    Ok(layers)
}

/// Trainable scalars of a ResNet `depth` deep on `input` `[C, H, W]` with `classes`
/// outputs: every convolution's `out · in · k²` weights and its norm's `2 · out`, then
/// the dense layer's `64 · classes + classes`. 0 for sizes [`ResNet::new`] refuses.
///
/// For `[3, 32, 32]` and 10 classes: ResNet-8 78,042, ResNet-20 272,474 (PyTorch's
/// equivalent model, `scripts/torch-compare/resnet_step.py`, counts the same).
pub fn resnet_parameter_count(depth: usize, input: [usize; 3], classes: usize) -> usize {
    match convolutions(depth, input, classes) {
        Ok(layers) => {
            let convs: usize = layers.iter().map(|&[i, o, k, ..]| o * i * k * k + 2 * o).sum();
            convs + WIDTHS[2] * classes + classes
        }
        Err(_) => 0,
    }
}

/// FLOPs per image of a ResNet, by [`Flops`]'s convention (see `flops.rs`): 2 per
/// multiply-accumulate of the convolutions and the dense layer (the norms, ReLUs,
/// residual sums and pooling are element-wise and left out, about 1 % here); backward
/// is twice the forward less the stem's input gradient, which the images do not need.
/// All zero for sizes [`ResNet::new`] refuses.
pub fn resnet_flops(depth: usize, input: [usize; 3], classes: usize) -> Flops {
    let Ok(layers) = convolutions(depth, input, classes) else {
        return Flops {
            forward: 0,
            backward: 0,
        };
    };
    let macs = |&[i, o, k, _, h, w]: &[usize; 6]| (h * w * k * k * i * o) as u64;
    let first = 2 * macs(&layers[0]);
    let forward = 2 * (layers.iter().map(macs).sum::<u64>() + (WIDTHS[2] * classes) as u64);
    Flops {
        forward,
        backward: 2 * forward - first,
    }
}

/// A convolution without bias followed by a group norm: `weight` `[out, in, k, k]`,
/// the norm's `weight` (γ) and `bias` (β) `[out]`.
#[derive(Clone, Debug)]
struct ConvNorm {
    weight: Tensor,
    gamma: Tensor,
    beta: Tensor,
    k: usize,
    stride: usize,
}

impl ConvNorm {
    /// Declares the convolution under `conv` and the norm under `norm`.
    fn new(in_ch: usize, out_ch: usize, k: usize, stride: usize, conv: VarBuilder, norm: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: conv.get_with_hints((out_ch, in_ch, k, k), "weight", PLACEHOLDER)?,
            gamma: norm.get_with_hints(out_ch, "weight", PLACEHOLDER)?,
            beta: norm.get_with_hints(out_ch, "bias", PLACEHOLDER)?,
            k,
            stride,
        })
    }

    /// `relu?(gn(conv(x)) [+ residual])`, NHWC.
    fn forward(&self, x: &Tensor, residual: Option<&Tensor>, relu: bool) -> Result<Tensor> {
        let (out, in_ch) = (self.weight.dim(0)?, self.weight.dim(1)?);
        // One row per output channel in the kernel's (ky, kx, channel) column order, then
        // γ and β, in one vector for the layer's one op (a copy of at most 37k values).
        let w_rows = self
            .weight
            .permute((0, 2, 3, 1))?
            .reshape((out, self.k * self.k * in_ch))?;
        let params = Tensor::cat(&[&w_rows.flatten_all()?, &self.gamma, &self.beta], 0)?;
        conv_norm(x, &params, (out, self.k, self.stride), GROUPS, residual, relu)
    }
}

/// A basic block: two 3×3 conv/norm layers and a shortcut.
#[derive(Clone, Debug)]
struct Block {
    first: ConvNorm,
    second: ConvNorm,
    /// The projection when the shape changes; the identity otherwise.
    shortcut: Option<ConvNorm>,
}

impl Block {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.first.forward(x, None, true)?;
        let skip = match &self.shortcut {
            Some(projection) => projection.forward(x, None, false)?,
            None => x.clone(),
        };
        self.second.forward(&h, Some(&skip), true)
    }
}

/// A CIFAR ResNet with group norm (see the module's documentation).
#[derive(Clone, Debug)]
pub struct ResNet {
    input: [usize; 3],
    stem: ConvNorm,
    blocks: Vec<Block>,
    fc_weight: Tensor,
    fc_bias: Tensor,
}

impl ResNet {
    /// Declares the layers of a ResNet `depth` deep (6n + 2) for images `input` =
    /// `[C, H, W]` (each side at least 4) and `classes` outputs in `vb`.
    /// Values are placeholders until [`super::init::init_seeded_resnet`] overwrites them.
    pub fn new(depth: usize, input: [usize; 3], classes: usize, vb: VarBuilder) -> Result<Self> {
        let n = blocks_per_stage(depth, input, classes)?;
        let stem = ConvNorm::new(input[0], WIDTHS[0], 3, 1, vb.pp("conv1"), vb.pp("gn1"))?;
        let mut blocks = Vec::with_capacity(3 * n);
        let mut prev = WIDTHS[0];
        for (stage, &width) in WIDTHS.iter().enumerate() {
            for block in 0..n {
                let vb = vb.pp(format!("layer{}.{block}", stage + 1));
                let stride = if stage > 0 && block == 0 { 2 } else { 1 };
                let shortcut = (stride != 1 || prev != width)
                    .then(|| {
                        let vb = vb.pp("shortcut");
                        ConvNorm::new(prev, width, 1, stride, vb.pp("0"), vb.pp("1"))
                    })
                    .transpose()?;
                blocks.push(Block {
                    first: ConvNorm::new(prev, width, 3, stride, vb.pp("conv1"), vb.pp("gn1"))?,
                    second: ConvNorm::new(width, width, 3, 1, vb.pp("conv2"), vb.pp("gn2"))?,
                    shortcut,
                });
                prev = width;
            }
        }
        Ok(Self {
            input,
            stem,
            blocks,
            fc_weight: vb.get_with_hints((classes, prev), "fc.weight", PLACEHOLDER)?,
            fc_bias: vb.get_with_hints(classes, "fc.bias", PLACEHOLDER)?,
        })
    }
}

impl Model for ResNet {
    /// `xs`: `[batch, C·H·W]`, each row an image channels-first → logits `[batch, K]`.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let [c, h, w] = self.input;
        let b = xs.dim(0)?;
        let x = if c == 1 {
            // One channel: the rows already are NHWC.
            xs.reshape((b, h, w, 1))?
        } else {
            xs.reshape((b, c, h, w))?.permute((0, 2, 3, 1))?.contiguous()?
        };
        let mut x = self.stem.forward(&x, None, true)?;
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        let (_, ho, wo, ch) = x.dims4()?;
        let pooled = x.reshape((b, ho * wo, ch))?.mean(1)?;
        linear(&pooled, &self.fc_weight, &self.fc_bias, false)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Var};
    use candle_nn::VarMap;
    use rand::Rng;
    use rand_distr::{Distribution, StandardNormal};

    use super::*;
    use crate::learn::adam::Adam;
    use crate::model::init::init_seeded_resnet;

    /// A ResNet built and initialised from `seed`, with its parameters sorted by name.
    fn build(depth: usize, input: [usize; 3], classes: usize, seed: u64) -> (ResNet, Vec<(String, Var)>) {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let net = ResNet::new(depth, input, classes, vb).unwrap();
        let mut params: Vec<(String, Var)> = varmap
            .data()
            .lock()
            .unwrap()
            .iter()
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        init_seeded_resnet(&params, seed).unwrap();
        (net, params)
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    /// ResNet-8 and ResNet-20 on CIFAR-10's shapes: the formula, the built model and
    /// PyTorch's equivalent (`resnet_step.py --count`: 78042 and 272474) agree.
    #[test]
    fn parameter_counts_are_the_formulas_and_pytorchs() {
        for (depth, want) in [(8, 78_042), (20, 272_474)] {
            let (_, params) = build(depth, [3, 32, 32], 10, 0);
            let built: usize = params.iter().map(|(_, v)| v.elem_count()).sum();
            assert_eq!(resnet_parameter_count(depth, [3, 32, 32], 10), want, "ResNet-{depth}");
            assert_eq!(built, want, "ResNet-{depth} built");
        }
        // By hand for ResNet-8: stem 3·16·9 + 32; stage 1 2·(16·16·9 + 32); stage 2
        // 16·32·9 + 32·32·9 + 16·32 + 3·64; stage 3 likewise at 32 → 64; dense 64·10 + 10.
        let stage = |i: usize, o: usize| i * o * 9 + o * o * 9 + i * o + 6 * o;
        let hand = 3 * 16 * 9 + 32 + 2 * (16 * 16 * 9 + 32) + stage(16, 32) + stage(32, 64) + 650;
        assert_eq!(resnet_parameter_count(8, [3, 32, 32], 10), hand);
        // Another input and class count: one channel, 28×28 (odd sizes after a halving).
        for depth in [8, 14] {
            let (_, params) = build(depth, [1, 28, 28], 7, 0);
            let built: usize = params.iter().map(|(_, v)| v.elem_count()).sum();
            assert_eq!(built, resnet_parameter_count(depth, [1, 28, 28], 7));
        }
    }

    #[test]
    fn names_follow_pytorch() {
        let (_, params) = build(8, [3, 32, 32], 10, 0);
        let names: Vec<&str> = params.iter().map(|(n, _)| n.as_str()).collect();
        for name in [
            "conv1.weight",
            "gn1.weight",
            "gn1.bias",
            "layer1.0.conv1.weight",
            "layer1.0.gn2.bias",
            "layer2.0.shortcut.0.weight",
            "layer2.0.shortcut.1.weight",
            "layer3.0.shortcut.1.bias",
            "fc.weight",
            "fc.bias",
        ] {
            assert!(names.contains(&name), "{name} in {names:?}");
        }
        assert!(
            !names.contains(&"layer1.0.shortcut.0.weight"),
            "stage 1 keeps the identity"
        );
        assert_eq!(names.len(), 3 + 3 * 6 + 2 * 3 + 2);
    }

    #[test]
    fn refuses_depths_and_sizes_it_cannot_build() {
        let vb = || VarBuilder::from_varmap(&VarMap::new(), DType::F32, &Device::Cpu);
        for depth in [0, 2, 7, 9, 19, 21] {
            let err = ResNet::new(depth, [3, 32, 32], 10, vb()).unwrap_err().to_string();
            assert!(err.contains(&format!("depth {depth} is not 6n + 2")), "{err}");
            assert_eq!(resnet_parameter_count(depth, [3, 32, 32], 10), 0);
        }
        for input in [[3, 3, 32], [3, 32, 2], [0, 32, 32]] {
            let err = ResNet::new(8, input, 10, vb()).unwrap_err().to_string();
            let [c, h, w] = input;
            assert!(
                err.contains(&format!("input {c}×{h}×{w}")) && err.contains("4×4"),
                "{err}"
            );
        }
        assert!(ResNet::new(8, [3, 4, 4], 10, vb()).is_ok());
        assert!(ResNet::new(8, [3, 32, 32], 1, vb()).is_err());
    }

    /// One image: He et al.'s count, by layer. Stem 32·32·27·16; stage 1 two
    /// 32·32·144·16; stage 2 16·16·(144·32 + 288·32 + 16·32); stage 3 8·8·(288·64 +
    /// 576·64 + 32·64); dense 64·10.
    #[test]
    fn flops_are_the_hand_count() {
        let stem = 32 * 32 * 27 * 16;
        let macs =
            stem + 2 * 32 * 32 * 144 * 16 + 16 * 16 * (144 + 288 + 16) * 32 + 8 * 8 * (288 + 576 + 32) * 64 + 640;
        let f = resnet_flops(8, [3, 32, 32], 10);
        assert_eq!(f.forward, 2 * macs as u64);
        assert_eq!(f.backward, 2 * f.forward - 2 * stem as u64);
        assert_eq!(resnet_flops(9, [3, 32, 32], 10).train(), 0);
        assert!(resnet_flops(20, [3, 32, 32], 10).forward > 2 * f.forward);
    }

    #[test]
    fn init_is_seeded_he_and_identity_norms() {
        let (_, a) = build(8, [3, 32, 32], 10, 42);
        let (_, b) = build(8, [3, 32, 32], 10, 42);
        let (_, c) = build(8, [3, 32, 32], 10, 43);
        let flat = |p: &[(String, Var)]| -> Vec<u32> {
            p.iter()
                .flat_map(|(_, v)| values(v.as_tensor()))
                .map(f32::to_bits)
                .collect()
        };
        assert_eq!(flat(&a), flat(&b));
        assert_ne!(flat(&a), flat(&c));
        for (name, var) in &a {
            let v = values(var.as_tensor());
            if name.contains("gn") || name.contains("shortcut.1") {
                let want = if name.ends_with("bias") { 0.0 } else { 1.0 };
                assert!(v.iter().all(|&x| x == want), "{name}");
            } else if var.rank() == 4 {
                let (o, k) = (var.dims()[0], var.dims()[2]);
                let std = (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt();
                let want = (2.0 / (o * k * k) as f32).sqrt();
                assert!((std / want - 1.0).abs() < 0.2, "{name}: std {std}, want {want}");
            } else {
                let bound = 1.0 / 8.0; // the dense layer's 1/√64
                assert!(v.iter().all(|x| x.abs() <= bound), "{name}");
            }
        }
    }

    /// The same network in Candle's own ops, NCHW: `conv2d` (its forward is right; only
    /// its kernel gradient is not for batches > 1, huggingface/candle#3735) and the group
    /// norm composed of reductions and broadcasts.
    fn reference(net: &ResNet, xs: &Tensor) -> Tensor {
        let [c, h, w] = net.input;
        let b = xs.dim(0).unwrap();
        let layer = |x: &Tensor, l: &ConvNorm, residual: Option<&Tensor>, relu: bool| -> Tensor {
            let y = x.conv2d(&l.weight, l.k / 2, l.stride, 1, 1).unwrap();
            let (b, ch, h, w) = y.dims4().unwrap();
            let yg = y.reshape((b, GROUPS, ch / GROUPS * h * w)).unwrap();
            let mean = yg.mean_keepdim(2).unwrap();
            let d = yg.broadcast_sub(&mean).unwrap();
            let var = d.sqr().unwrap().mean_keepdim(2).unwrap();
            let xhat = d.broadcast_div(&(var + 1e-5).unwrap().sqrt().unwrap()).unwrap();
            let mut y = xhat
                .reshape((b, ch, h, w))
                .unwrap()
                .broadcast_mul(&l.gamma.reshape((1, ch, 1, 1)).unwrap())
                .unwrap()
                .broadcast_add(&l.beta.reshape((1, ch, 1, 1)).unwrap())
                .unwrap();
            if let Some(r) = residual {
                y = (y + r).unwrap();
            }
            if relu { y.relu().unwrap() } else { y }
        };
        let mut x = layer(&xs.reshape((b, c, h, w)).unwrap(), &net.stem, None, true);
        for block in &net.blocks {
            let first = layer(&x, &block.first, None, true);
            let skip = match &block.shortcut {
                Some(p) => layer(&x, p, None, false),
                None => x.clone(),
            };
            x = layer(&first, &block.second, Some(&skip), true);
        }
        let pooled = x.mean((2, 3)).unwrap();
        pooled
            .matmul(&net.fc_weight.t().unwrap())
            .unwrap()
            .broadcast_add(&net.fc_bias)
            .unwrap()
    }

    fn noise(dims: &[usize], seed: u64) -> Tensor {
        let mut rng = crate::seed::rng(seed);
        let n: usize = dims.iter().product();
        let v: Vec<f32> = (0..n).map(|_| StandardNormal.sample(&mut rng)).collect();
        Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
    }

    /// Logits against the reference on odd and even sizes and 1 and 3 channels (the
    /// rows channels-first); and, on one image of even sides (where Candle's
    /// convolution gradients are right: with odd sides its stride-2 input gradient
    /// comes out a column short), every parameter's gradient. The ops' own tests cover
    /// odd sides and batches.
    #[test]
    fn forward_and_gradients_match_candles_own_ops() {
        for (input, batch) in [([3, 9, 7], 3), ([1, 8, 10], 2), ([3, 12, 12], 1), ([2, 8, 12], 1)] {
            let what = format!("{input:?}, batch {batch}");
            let (net, params) = build(8, input, 5, 7);
            // The norms start as identities; other γ, β exercise them.
            for (name, var) in &params {
                if var.rank() == 1 && !name.starts_with("fc") {
                    var.set(&((noise(var.dims(), name.len() as u64) * 0.3).unwrap() + 1.0).unwrap())
                        .unwrap();
                }
            }
            let xs = noise(&[batch, input.iter().product()], 1);
            let ours = net.forward(&xs).unwrap();
            let theirs = reference(&net, &xs);
            assert_eq!(ours.dims(), &[batch, 5], "{what}");
            let (a, b) = (values(&ours), values(&theirs));
            let diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            assert!(diff < 1e-4, "{what}: logits differ by {diff}");
            if batch > 1 {
                continue;
            }
            let probe = noise(&[batch, 5], 2);
            let g1 = (&ours * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (&theirs * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            for (name, var) in &params {
                let (a, b) = (values(g1.get(var).unwrap()), values(g2.get(var).unwrap()));
                let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-3);
                let diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
                assert!(
                    diff < 1e-3 * scale,
                    "{what}: {name} gradient differs by {diff} (scale {scale})"
                );
            }
        }
    }

    /// Four classes of noisy 3×32×32 images, told apart by which colour channel is
    /// brighter (classes 0–2) or by horizontal stripes (class 3): ResNet-8 with Adam
    /// learns them well above chance (25 %) on images it did not train on.
    #[test]
    fn resnet8_learns_a_separable_problem() {
        const CLASSES: usize = 4;
        let image = |label: usize, rng: &mut crate::seed::Rng| -> Vec<f32> {
            let mut v = vec![0f32; 3 * 32 * 32];
            for (i, p) in v.iter_mut().enumerate() {
                let (ch, y) = (i / 1024, i / 32 % 32);
                let signal = match label {
                    3 => f32::from(u8::from(y % 4 < 2)) - 0.5,
                    l => 0.5 * f32::from(u8::from(ch == l)),
                };
                *p = signal + rng.sample::<f32, _>(StandardNormal);
            }
            v
        };
        let batch = |n: usize, rng: &mut crate::seed::Rng| -> (Tensor, Tensor) {
            let labels: Vec<u32> = (0..n).map(|_| rng.random_range(0..CLASSES as u32)).collect();
            let pixels: Vec<f32> = labels.iter().flat_map(|&l| image(l as usize, rng)).collect();
            (
                Tensor::from_vec(pixels, (n, 3 * 32 * 32), &Device::Cpu).unwrap(),
                Tensor::from_vec(labels, n, &Device::Cpu).unwrap(),
            )
        };
        let mut rng = crate::seed::rng(5);
        let (net, params) = build(8, [3, 32, 32], CLASSES, 3);
        let mut adam = Adam::new(params.iter().map(|(_, v)| v.clone()).collect(), 3e-3);
        for _ in 0..150 {
            let (xs, ys) = batch(16, &mut rng);
            let loss = candle_nn::loss::cross_entropy(&net.forward(&xs).unwrap(), &ys).unwrap();
            adam.step(&loss.backward().unwrap()).unwrap();
        }
        let (xs, ys) = batch(200, &mut rng);
        let predicted = net.forward(&xs).unwrap().argmax(1).unwrap().to_vec1::<u32>().unwrap();
        let labels = ys.to_vec1::<u32>().unwrap();
        let correct = predicted.iter().zip(&labels).filter(|(p, l)| p == l).count();
        let accuracy = correct as f64 / labels.len() as f64;
        assert!(accuracy > 0.7, "accuracy {accuracy} (chance 0.25)");
    }
}
