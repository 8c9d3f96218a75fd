//! The layers the models are made of: a dense layer and a convolution stage (see
//! [`super::ops`] for how they are computed).

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::init::PLACEHOLDER;
use super::ops::{conv3x3_pool_relu, linear};

/// A dense layer `in → out`: `weight` `[out, in]`, `bias` `[out]`.
#[derive(Clone, Debug)]
pub struct Dense {
    weight: Tensor,
    bias: Tensor,
}

impl Dense {
    /// Declares `weight` and `bias` under `vb` (values are set by seeded init).
    pub fn new(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints((out_dim, in_dim), "weight", PLACEHOLDER)?,
            bias: vb.get_with_hints(out_dim, "bias", PLACEHOLDER)?,
        })
    }

    /// `[rows, in]` → `[rows, out]`.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        linear(xs, &self.weight, &self.bias, false)
    }

    /// `relu(x · wᵀ + b)`, in one op.
    pub fn forward_relu(&self, xs: &Tensor) -> Result<Tensor> {
        linear(xs, &self.weight, &self.bias, true)
    }
}

/// A CNN stage over NHWC activations: 3×3 convolution (stride 1, padding 1), 2×2
/// max-pool, ReLU. Parameters: `weight` `[out, in, 3, 3]` (PyTorch's layout), `bias`
/// `[out]`.
#[derive(Clone, Debug)]
pub struct ConvStage {
    weight: Tensor,
    bias: Tensor,
}

impl ConvStage {
    /// Declares `weight` and `bias` under `vb` (values are set by seeded init).
    pub fn new(in_ch: usize, out_ch: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints((out_ch, in_ch, 3, 3), "weight", PLACEHOLDER)?,
            bias: vb.get_with_hints(out_ch, "bias", PLACEHOLDER)?,
        })
    }

    /// `[b, h, w, in]` → `[b, h/2, w/2, out]`.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let c = xs.dim(3)?;
        let out = self.weight.dim(0)?;
        // One row per output channel, columns in im2col's (ky, kx, channel) order, then
        // the bias, which meets im2col's trailing column of ones: weights and bias get
        // their gradients from the same product. (A few thousand values to copy.)
        let w_rows = self.weight.permute((0, 2, 3, 1))?.reshape((out, 9 * c))?;
        let w_full = Tensor::cat(&[&w_rows, &self.bias.unsqueeze(1)?], 1)?;
        conv3x3_pool_relu(xs, &w_full)
    }
}
