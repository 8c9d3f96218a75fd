//! The multilayer perceptron: a sample's values → hidden… → the classes, with ReLU
//! between dense layers.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::layers::Dense;
use super::{DataSpec, Model};

/// A stack of dense layers named `fc1`, `fc2`, …, the last one producing the logits.
#[derive(Clone, Debug)]
pub struct Mlp {
    layers: Vec<Dense>,
}

impl Mlp {
    /// Declares the layers in `vb`. Values are placeholders until
    /// [`super::init::init_seeded`] overwrites them, which [`super::Network::new`] does.
    pub fn new(data: &DataSpec, hidden: &[usize], vb: VarBuilder) -> candle_core::Result<Self> {
        let mut layers = Vec::with_capacity(hidden.len() + 1);
        let mut prev = data.sample_len();
        let classes = data.classes as usize;
        for (i, &width) in hidden.iter().chain(std::iter::once(&classes)).enumerate() {
            layers.push(Dense::new(prev, width, vb.pp(format!("fc{}", i + 1)))?);
            prev = width;
        }
        Ok(Self { layers })
    }
}

impl Model for Mlp {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let (last, hidden) = self
            .layers
            .split_last()
            .ok_or_else(|| candle_core::Error::Msg("mlp without layers".into()))?;
        let mut h = xs.clone();
        for layer in hidden {
            h = layer.forward_relu(&h)?;
        }
        last.forward(&h)
    }
}
