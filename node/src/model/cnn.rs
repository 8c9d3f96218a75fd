//! The small CNN: two conv3×3(padding 1)/ReLU/max-pool-2 stages, then two dense layers.
//!
//! H×W → H/2×W/2 → H/4×W/4 (so H and W are multiples of 4), and the flattened features
//! are `conv2 · H/4 · W/4`. On Fashion-MNIST (28×28 → 14×14 → 7×7) the default
//! `cnn:16,32,128` has 206,922 parameters, most of them (200,832) in `fc1`.
//!
//! Activations are NHWC and the convolutions are im2col + matmul ([`super::ops`]),
//! which keeps the backward pass fast on one CPU thread. Two consequences, neither of
//! which changes the function class: the features reach `fc1` in (y, x, channel) order
//! rather than PyTorch's (channel, y, x); and each stage (one op) pools before its
//! ReLU, which is the same function, as ReLU is monotone and commutes with max. Conv
//! weights keep PyTorch's `[out, in, 3, 3]` layout.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::layers::{ConvStage, Dense};
use super::{DataSpec, Model};

/// The `[channels, height, width]` of `data` if the CNN can take it, else why not.
pub(super) fn input(data: &DataSpec) -> Result<[usize; 3], String> {
    let Some([c, h, w]) = data.image() else {
        return Err(format!(
            "a CNN learns images [channels, height, width]; this data's samples are {:?} (use an mlp)",
            data.shape
        ));
    };
    if !(h.is_multiple_of(4) && w.is_multiple_of(4)) {
        return Err(format!(
            "its two 2×2 poolings need a height and width that are multiples of 4; these images are {h}×{w}"
        ));
    }
    Ok([c, h, w])
}

/// Layers `conv1`, `conv2`, `fc1`, `fc2`.
#[derive(Clone, Debug)]
pub struct Cnn {
    /// `[channels, height, width]` of an input image.
    input: [usize; 3],
    conv1: ConvStage,
    conv2: ConvStage,
    fc1: Dense,
    fc2: Dense,
}

impl Cnn {
    /// Declares the layers in `vb`. Values are placeholders until
    /// [`super::init::init_seeded`] overwrites them, which [`super::Network::new`] does.
    pub fn new(
        data: &DataSpec,
        conv1: usize,
        conv2: usize,
        hidden: usize,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        let [c, h, w] = input(data).map_err(candle_core::Error::Msg)?;
        Ok(Self {
            input: [c, h, w],
            conv1: ConvStage::new(c, conv1, vb.pp("conv1"))?,
            conv2: ConvStage::new(conv1, conv2, vb.pp("conv2"))?,
            fc1: Dense::new(conv2 * (h / 4) * (w / 4), hidden, vb.pp("fc1"))?,
            fc2: Dense::new(hidden, data.classes as usize, vb.pp("fc2"))?,
        })
    }
}

impl Model for Cnn {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let b = xs.dim(0)?;
        let [c, height, width] = self.input;
        // One channel: row-major pixels already are NHWC. More: channels first → last.
        let h = if c == 1 {
            xs.reshape((b, height, width, 1))?
        } else {
            xs.reshape((b, c, height, width))?.permute((0, 2, 3, 1))?.contiguous()?
        };
        let h = self.conv1.forward(&h)?;
        let h = self.conv2.forward(&h)?;
        let h = h.flatten_from(1)?;
        let h = self.fc1.forward_relu(&h)?;
        self.fc2.forward(&h)
    }
}
