//! The small CNN: two conv3×3(padding 1)/ReLU/max-pool-2 stages, then two dense layers.
//!
//! 28×28 → 14×14 → 7×7, so the flattened features are `conv2 · 7 · 7`. The default
//! `cnn:16,32,128` has 206,922 parameters, most of them (200,832) in `fc1`.

use candle_core::Tensor;
use candle_nn::{Conv2d, Linear, Module, VarBuilder};

use super::{CLASSES, IMAGE_SIDE, Model, init};

/// Side of the feature maps after the two 2×2 poolings.
pub(super) const FLAT_SIDE: usize = IMAGE_SIDE / 4;

/// Layers `conv1`, `conv2`, `fc1`, `fc2`.
#[derive(Clone, Debug)]
pub struct Cnn {
    conv1: Conv2d,
    conv2: Conv2d,
    fc1: Linear,
    fc2: Linear,
}

impl Cnn {
    /// Declares the layers in `vb`. Values are placeholders until [`init::init_seeded`]
    /// overwrites them, which [`super::Network::new`] always does.
    pub fn new(
        conv1: usize,
        conv2: usize,
        hidden: usize,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        Ok(Self {
            conv1: init::conv3x3(1, conv1, vb.pp("conv1"))?,
            conv2: init::conv3x3(conv1, conv2, vb.pp("conv2"))?,
            fc1: init::linear(conv2 * FLAT_SIDE * FLAT_SIDE, hidden, vb.pp("fc1"))?,
            fc2: init::linear(hidden, CLASSES, vb.pp("fc2"))?,
        })
    }
}

impl Model for Cnn {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let b = xs.dim(0)?;
        let h = xs.reshape((b, 1, IMAGE_SIDE, IMAGE_SIDE))?;
        let h = self.conv1.forward(&h)?.relu()?.max_pool2d(2)?;
        let h = self.conv2.forward(&h)?.relu()?.max_pool2d(2)?;
        let h = h.flatten_from(1)?;
        let h = self.fc1.forward(&h)?.relu()?;
        self.fc2.forward(&h)
    }
}
