//! The small CNN: two conv3×3(padding 1)/ReLU/max-pool-2 stages, then two dense layers.
//!
//! 28×28 → 14×14 → 7×7, so the flattened features are `conv2 · 7 · 7`. The default
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
use super::{CLASSES, IMAGE_SIDE, Model};

/// Side of the feature maps after the two 2×2 poolings.
pub(super) const FLAT_SIDE: usize = IMAGE_SIDE / 4;

/// Layers `conv1`, `conv2`, `fc1`, `fc2`.
#[derive(Clone, Debug)]
pub struct Cnn {
    conv1: ConvStage,
    conv2: ConvStage,
    fc1: Dense,
    fc2: Dense,
}

impl Cnn {
    /// Declares the layers in `vb`. Values are placeholders until
    /// [`super::init::init_seeded`] overwrites them, which [`super::Network::new`] does.
    pub fn new(conv1: usize, conv2: usize, hidden: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            conv1: ConvStage::new(1, conv1, vb.pp("conv1"))?,
            conv2: ConvStage::new(conv1, conv2, vb.pp("conv2"))?,
            fc1: Dense::new(conv2 * FLAT_SIDE * FLAT_SIDE, hidden, vb.pp("fc1"))?,
            fc2: Dense::new(hidden, CLASSES, vb.pp("fc2"))?,
        })
    }
}

impl Model for Cnn {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let b = xs.dim(0)?;
        // Row-major 28×28 pixels already are NHWC with one channel.
        let h = xs.reshape((b, IMAGE_SIDE, IMAGE_SIDE, 1))?;
        let h = self.conv1.forward(&h)?;
        let h = self.conv2.forward(&h)?;
        let h = h.flatten_from(1)?;
        let h = self.fc1.forward_relu(&h)?;
        self.fc2.forward(&h)
    }
}
