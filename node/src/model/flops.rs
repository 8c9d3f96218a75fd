//! The floating-point work of a model, counted from its shapes, so that a device's
//! emulated compute time depends on what it computes and not on the host it runs on.
//!
//! Convention (the usual one for training cost, e.g. Kaplan et al. 2020's "6N per
//! example"): a multiply-accumulate is 2 FLOPs; only the dense and convolutional layers'
//! products are counted — biases, activations, pooling, the losses and the optimiser are
//! element-wise and together add under 2 % for these models. Per image:
//!
//! - forward: 2 · MACs of every layer;
//! - backward: the weight gradient of every layer (as many MACs as its forward) plus
//!   the input gradient of every layer but the first (the images need none, and this
//!   implementation does not compute it: see `ops::MatmulDataLhs`).
//!
//! So a training image costs 3 · forward − the first layer's forward.

use super::{DataSpec, ModelSpec};

/// FLOPs per image of one model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flops {
    /// One forward pass (inference).
    pub forward: u64,
    /// The backward pass of one training image.
    pub backward: u64,
}

impl Flops {
    /// One training image: forward and backward.
    pub fn train(&self) -> u64 {
        self.forward + self.backward
    }
}

impl ModelSpec {
    /// The FLOPs per sample of this model on `data` (saturating on absurd sizes, which
    /// [`ModelSpec::fits`] refuses anyway).
    pub fn flops(&self, data: &DataSpec) -> Flops {
        let classes = u64::from(data.classes);
        // MACs of each layer, input side first.
        let macs: Vec<u64> = match self {
            ModelSpec::Mlp { hidden } => {
                let widths: Vec<u64> = std::iter::once(data.sample_len())
                    .chain(hidden.iter().copied())
                    .map(|w| w as u64)
                    .chain(std::iter::once(classes))
                    .collect();
                widths.windows(2).map(|w| w[0].saturating_mul(w[1])).collect()
            }
            &ModelSpec::Cnn { conv1, conv2, hidden } => {
                let [c, height, width] = data.image().unwrap_or([1, 0, 0]).map(|d| d as u64);
                let (c1, c2, h) = (conv1 as u64, conv2 as u64, hidden as u64);
                let plane = height * width;
                let quarter = (height / 2) * (width / 2);
                let flat = c2.saturating_mul((height / 4) * (width / 4));
                vec![
                    // 3×3 convolutions with same padding, each before a 2×2 max-pool.
                    (plane * 9 * c).saturating_mul(c1),
                    (quarter * 9).saturating_mul(c1).saturating_mul(c2),
                    flat.saturating_mul(h),
                    h.saturating_mul(classes),
                ]
            }
            &ModelSpec::ResNet { depth } => {
                return match data.image() {
                    Some(input) => super::resnet_flops(depth, input, data.classes as usize),
                    None => Flops {
                        forward: 0,
                        backward: 0,
                    },
                };
            }
            // Unknown: its device's program computes it.
            ModelSpec::External { .. } => Vec::new(),
        };
        let forward = macs
            .iter()
            .fold(0u64, |sum, &m| sum.saturating_add(m.saturating_mul(2)));
        let first = macs.first().map_or(0, |&m| m.saturating_mul(2));
        Flops {
            forward,
            backward: forward.saturating_mul(2).saturating_sub(first),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fm() -> DataSpec {
        wdml_proto::data::fashion_mnist()
    }

    #[test]
    fn the_counts_are_the_hand_counts() {
        // mlp:64 = 784-64-10: 50,176 + 640 MACs.
        let mlp: ModelSpec = "mlp:64".parse().unwrap();
        let f = mlp.flops(&fm());
        assert_eq!(f.forward, 2 * (784 * 64 + 64 * 10));
        assert_eq!(f.backward, 2 * (784 * 64 + 64 * 10) + 2 * (64 * 10));
        assert_eq!(f.train(), 101_632 + 102_912);
        // The case study's MLP, 784-256-128-10.
        let mlp: ModelSpec = "mlp:256,128".parse().unwrap();
        assert_eq!(mlp.flops(&fm()).forward, 2 * (200_704 + 32_768 + 1_280));
        // cnn:16,32,128: conv1 28·28·9·16 = 112,896; conv2 14·14·9·16·32 = 903,168;
        // fc1 (32·7·7)·128 = 200,704; fc2 128·10 = 1,280 MACs.
        let cnn: ModelSpec = "cnn:16,32,128".parse().unwrap();
        let f = cnn.flops(&fm());
        assert_eq!(f.forward, 2 * (112_896 + 903_168 + 200_704 + 1_280));
        assert_eq!(f.forward, 2_436_096);
        assert_eq!(f.backward, 2 * f.forward - 2 * 112_896);
    }
}
