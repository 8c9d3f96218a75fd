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

use candle_core::{Tensor, Var};
use candle_nn::Init;
use rand_distr::{Distribution, Uniform};

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
        let bound = 1.0 / (fan_in(name, params)? as f32).sqrt();
        let dist = Uniform::new_inclusive(-bound, bound)
            .map_err(|e| candle_core::Error::Msg(format!("init range for `{name}`: {e}")))?;
        let values: Vec<f32> = (0..var.elem_count()).map(|_| dist.sample(&mut rng)).collect();
        var.set(&Tensor::from_vec(values, var.shape(), var.device())?)?;
    }
    Ok(())
}
