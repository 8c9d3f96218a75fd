//! Seeded initialisation.
//!
//! Candle draws its CPU random numbers from an unseeded generator, so layers are
//! declared with [`PLACEHOLDER`] zeros and every variable is then drawn again from
//! `crate::seed::rng(seed)`, walking the variables in sorted-name order: the same
//! seed gives bit-identical parameters on every run and every machine.
//!
//! The ranges are PyTorch's defaults for `nn.Linear` / `nn.Conv2d`: weights and biases
//! both `U(−1/√fan_in, 1/√fan_in)`, where `fan_in` is the product of the weight's
//! dimensions after the first (inputs × kernel area); a bias uses its layer's weight's
//! fan-in. (PyTorch's `kaiming_uniform_(a = √5)` on weights reduces to that bound.)
//!
//! A network with normalisation layers (the ResNet) is drawn by [`init_seeded_resnet`]
//! instead: torchvision's ResNet initialisation, He et al. (2015) for the convolutions.

use candle_core::{Tensor, Var};
use candle_nn::Init;
use rand_distr::{Distribution, Normal, Uniform};

/// The value layers are declared with. Zeros cost no random draws, and every
/// parameter is overwritten by [`init_seeded`] before use.
pub const PLACEHOLDER: Init = Init::Const(0.0);

/// The fan-in that sets the range of parameter `name`: the product of its weight's
/// dimensions after the first. A `….bias` takes it from its sibling `….weight`.
fn fan_in(name: &str, params: &[(String, Var)]) -> candle_core::Result<usize> {
    let weight_name = match name.strip_suffix(".bias") {
        Some(prefix) => format!("{prefix}.weight"),
        None => name.to_string(),
    };
    let weight = params
        .iter()
        .find(|(n, _)| *n == weight_name)
        .map(|(_, v)| v)
        .ok_or_else(|| candle_core::Error::Msg(format!("no weight `{weight_name}` for `{name}`")))?;
    let dims = weight.dims();
    if dims.len() < 2 {
        return Err(candle_core::Error::Msg(format!(
            "`{weight_name}` has rank {}",
            dims.len()
        )));
    }
    Ok(dims[1..].iter().product::<usize>().max(1))
}

/// Redraws every parameter of `params` (which must be sorted by name) from `seed`.
pub fn init_seeded(params: &[(String, Var)], seed: u64) -> candle_core::Result<()> {
    debug_assert!(params.windows(2).all(|w| w[0].0 < w[1].0), "params must be sorted");
    let mut rng = crate::seed::rng(seed);
    for (name, var) in params {
        let values = pytorch_default(name, var, params, &mut rng)?;
        var.set(&Tensor::from_vec(values, var.shape(), var.device())?)?;
    }
    Ok(())
}

/// PyTorch's default draw for parameter `name`: `U(−1/√fan_in, 1/√fan_in)`.
fn pytorch_default(
    name: &str,
    var: &Var,
    params: &[(String, Var)],
    rng: &mut impl rand::Rng,
) -> candle_core::Result<Vec<f32>> {
    let bound = 1.0 / (fan_in(name, params)? as f32).sqrt();
    let dist = Uniform::new_inclusive(-bound, bound)
        .map_err(|e| candle_core::Error::Msg(format!("init range for `{name}`: {e}")))?;
    Ok((0..var.elem_count()).map(|_| dist.sample(rng)).collect())
}

/// Whether `name` is a normalisation layer's parameter: a `….weight` of rank 1 (its
/// scale γ; dense and convolution weights have rank 2 and 4), or the `….bias` beside one
/// (its shift β).
fn is_norm(name: &str, params: &[(String, Var)]) -> bool {
    let weight_name = match name.strip_suffix(".bias") {
        Some(prefix) => format!("{prefix}.weight"),
        None => name.to_string(),
    };
    params.iter().any(|(n, v)| *n == weight_name && v.rank() == 1)
}

/// Redraws every parameter of a network with normalisation layers (the ResNet) from
/// `seed`, walking `params` (sorted by name) as [`init_seeded`] does, with torchvision's
/// ResNet rules:
///
/// - a convolution weight `[out, in, k, k]` (rank 4): He et al.'s normal for ReLU
///   networks, `N(0, 2 / fan_out)` with `fan_out = out · k²` (`kaiming_normal_(mode =
///   "fan_out", nonlinearity = "relu")`), which keeps the gradients' scale through the
///   backward pass;
/// - a norm's scale γ: 1, its shift β: 0 (no random draws: a norm starts as the identity
///   on its normalised input);
/// - anything else (the dense layer): PyTorch's default, as [`init_seeded`].
///
/// Same seed ⇒ identical bits.
pub fn init_seeded_resnet(params: &[(String, Var)], seed: u64) -> candle_core::Result<()> {
    debug_assert!(params.windows(2).all(|w| w[0].0 < w[1].0), "params must be sorted");
    let mut rng = crate::seed::rng(seed);
    for (name, var) in params {
        let n = var.elem_count();
        let values = if is_norm(name, params) {
            vec![if name.ends_with(".bias") { 0.0 } else { 1.0 }; n]
        } else if let &[out, _, kh, kw] = var.dims() {
            let std = (2.0 / (out * kh * kw).max(1) as f32).sqrt();
            let dist =
                Normal::new(0.0, std).map_err(|e| candle_core::Error::Msg(format!("init range for `{name}`: {e}")))?;
            (0..n).map(|_| dist.sample(&mut rng)).collect()
        } else {
            pytorch_default(name, var, params, &mut rng)?
        };
        var.set(&Tensor::from_vec(values, var.shape(), var.device())?)?;
    }
    Ok(())
}
