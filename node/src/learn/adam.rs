//! Adam (Kingma & Ba, 2015), fused into one pass over each parameter tensor.
//!
//! The update is exactly `candle_nn::AdamW` with no weight decay (and PyTorch's
//! `Adam`): `m ← β₁m + (1−β₁)g`, `v ← β₂v + (1−β₂)g²`,
//! `θ ← θ − lr · (m / (1−β₁ᵗ)) / (√(v / (1−β₂ᵗ)) + ε)`. Candle's version spends about a
//! dozen tensor operations (each a full pass and an allocation) per parameter tensor,
//! which was a quarter of an MLP step on one thread; this one reads the gradient once
//! and writes the parameter once.

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};

use crate::model::ops::tensor_f32;

/// First and second moment of one parameter tensor.
struct Slot {
    var: Var,
    m: Vec<f32>,
    v: Vec<f32>,
}

/// One variable's first and second moments.
pub type Moments<'a> = (&'a [f32], &'a [f32]);

/// Adam over a fixed list of variables.
pub struct Adam {
    slots: Vec<Slot>,
    step: u64,
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
}

impl Adam {
    /// Adam with step size `lr`, β = (0.9, 0.999), ε = 1e-8, over `vars`.
    pub fn new(vars: Vec<Var>, lr: f64) -> Self {
        let slots = vars
            .into_iter()
            .map(|var| {
                let n = var.elem_count();
                Slot {
                    var,
                    m: vec![0.0; n],
                    v: vec![0.0; n],
                }
            })
            .collect();
        Self {
            slots,
            step: 0,
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }

    /// The step size.
    pub fn learning_rate(&self) -> f64 {
        self.lr
    }

    /// Steps taken, and each variable's first and second moments, in variable order.
    pub fn state(&self) -> (u64, Vec<Moments<'_>>) {
        let moments = self.slots.iter().map(|s| (s.m.as_slice(), s.v.as_slice())).collect();
        (self.step, moments)
    }

    /// Puts back what [`Self::state`] gave; every moment must fit its variable.
    pub fn restore(&mut self, step: u64, moments: Vec<(Vec<f32>, Vec<f32>)>) -> Result<()> {
        if moments.len() != self.slots.len() {
            candle_core::bail!(
                "adam: {} moment pairs for {} variables",
                moments.len(),
                self.slots.len()
            )
        }
        for (slot, (m, v)) in self.slots.iter().zip(&moments) {
            if m.len() != slot.m.len() || v.len() != slot.v.len() {
                candle_core::bail!("adam: moments of {} values for a variable of {}", m.len(), slot.m.len())
            }
        }
        for (slot, (m, v)) in self.slots.iter_mut().zip(moments) {
            (slot.m, slot.v) = (m, v);
        }
        self.step = step;
        Ok(())
    }

    /// Applies one update from `grads`; variables without a gradient are left alone.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step += 1;
        let t = self.step as f64;
        let (b1, b2) = (self.beta1 as f32, self.beta2 as f32);
        let (one_b1, one_b2) = ((1.0 - self.beta1) as f32, (1.0 - self.beta2) as f32);
        let scale_m = (1.0 / (1.0 - self.beta1.powf(t))) as f32;
        let scale_v = (1.0 / (1.0 - self.beta2.powf(t))) as f32;
        let (lr, eps) = (self.lr as f32, self.eps as f32);
        let constants = Constants {
            b1,
            b2,
            one_b1,
            one_b2,
            scale_m,
            scale_v,
            lr,
            eps,
        };
        for slot in &mut self.slots {
            let Some(grad) = grads.get(slot.var.as_tensor()) else {
                continue;
            };
            let grad = grad.contiguous()?;
            let next = {
                let (g_store, g_layout) = grad.storage_and_layout();
                let g = tensor_f32(&g_store, g_layout, "adam")?;
                let theta = slot.var.as_tensor();
                let (t_store, t_layout) = theta.storage_and_layout();
                let theta = tensor_f32(&t_store, t_layout, "adam")?;
                if g.len() != theta.len() || slot.m.len() != theta.len() {
                    candle_core::bail!("adam: gradient of {} values for {}", g.len(), theta.len())
                }
                update(&constants, g, theta, &mut slot.m, &mut slot.v)
                // The read guards drop here: `set` below takes the write lock.
            };
            slot.var
                .set(&Tensor::from_vec(next, slot.var.shape(), slot.var.device())?)?;
        }
        Ok(())
    }
}

/// One step's constants, in f32 as the update uses them.
struct Constants {
    b1: f32,
    b2: f32,
    one_b1: f32,
    one_b2: f32,
    scale_m: f32,
    scale_v: f32,
    lr: f32,
    eps: f32,
}

/// The moments updated in place, and the new parameters. Slices of one length zipped,
/// each output written in place: the loop compiles to SIMD (sqrtps, divps, IEEE-exact
/// like their scalar forms, and no operation reordered, so the same bits). Pushing onto
/// a Vec kept it scalar, a square root and a division at a time.
fn update(c: &Constants, g: &[f32], theta: &[f32], m: &mut [f32], v: &mut [f32]) -> Vec<f32> {
    let mut next = vec![0f32; theta.len()];
    let lanes = next.iter_mut().zip(g).zip(theta).zip(m).zip(v);
    for ((((next, &g), &th), m), v) in lanes {
        *m = c.b1 * *m + c.one_b1 * g;
        *v = c.b2 * *v + c.one_b2 * (g * g);
        *next = th - c.lr * (*m * c.scale_m) / ((*v * c.scale_v).sqrt() + c.eps);
    }
    next
}

#[cfg(test)]
mod tests {
    use candle_core::Device;
    use candle_nn::{AdamW, Optimizer, ParamsAdamW};

    use super::*;

    #[test]
    fn matches_candle_adamw_without_decay() {
        let dev = Device::Cpu;
        let init = |s: f32| {
            let v: Vec<f32> = (0..12).map(|i| s * ((i * 7 % 11) as f32 - 5.0) / 5.0).collect();
            Var::from_vec(v, (3, 4), &dev).unwrap()
        };
        let (ours, theirs) = ((init(1.0), init(0.5)), (init(1.0), init(0.5)));
        let mut adam = Adam::new(vec![ours.0.clone(), ours.1.clone()], 0.01);
        let params = ParamsAdamW {
            lr: 0.01,
            weight_decay: 0.0,
            ..Default::default()
        };
        let mut adamw = AdamW::new(vec![theirs.0.clone(), theirs.1.clone()], params).unwrap();
        // A loss with a different gradient at every step: Σ (a·b)² + Σ a³.
        let loss = |a: &Var, b: &Var| {
            let prod = (a.as_tensor() * b.as_tensor())
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap();
            let cube = (a.as_tensor().sqr().unwrap() * a.as_tensor()).unwrap();
            (prod + cube.sum_all().unwrap()).unwrap()
        };
        for _ in 0..20 {
            adam.step(&loss(&ours.0, &ours.1).backward().unwrap()).unwrap();
            adamw.step(&loss(&theirs.0, &theirs.1).backward().unwrap()).unwrap();
        }
        for (a, b) in [(&ours.0, &theirs.0), (&ours.1, &theirs.1)] {
            let diff = (a.as_tensor() - b.as_tensor())
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap();
            assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
        }
        assert_ne!(
            ours.0.as_tensor().to_vec2::<f32>().unwrap(),
            init(1.0).to_vec2::<f32>().unwrap()
        );
    }

    /// The update as it was written before it was vectorised (pushing onto a Vec).
    fn scalar(c: &Constants, g: &[f32], theta: &[f32], m: &mut [f32], v: &mut [f32]) -> Vec<f32> {
        let mut next = Vec::with_capacity(theta.len());
        for (((&g, &th), m), v) in g.iter().zip(theta).zip(m.iter_mut()).zip(v.iter_mut()) {
            *m = c.b1 * *m + c.one_b1 * g;
            *v = c.b2 * *v + c.one_b2 * (g * g);
            next.push(th - c.lr * (*m * c.scale_m) / ((*v * c.scale_v).sqrt() + c.eps));
        }
        next
    }

    fn constants(t: f64) -> Constants {
        Constants {
            b1: 0.9,
            b2: 0.999,
            one_b1: (1.0 - 0.9f64) as f32,
            one_b2: (1.0 - 0.999f64) as f32,
            scale_m: (1.0 / (1.0 - 0.9f64.powf(t))) as f32,
            scale_v: (1.0 / (1.0 - 0.999f64.powf(t))) as f32,
            lr: 1e-3,
            eps: 1e-8,
        }
    }

    /// An MLP's worth of values (235,146), deterministic, of mixed signs and scales.
    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n as u32)
            .map(|i| ((i.wrapping_mul(2_654_435_761) ^ seed) % 20_001) as f32 / 10_000.0 - 1.0)
            .map(|x| x * x * x * 0.05)
            .collect()
    }

    #[test]
    fn the_vectorised_update_gives_the_scalar_one_bit_for_bit() {
        let n = 235_146;
        let theta = values(n, 1);
        let (mut m1, mut v1) = (vec![0.0; n], vec![0.0; n]);
        let (mut m2, mut v2) = (vec![0.0; n], vec![0.0; n]);
        for t in 1..=5 {
            let g = values(n, 7 + t);
            let c = constants(f64::from(t));
            let ours = update(&c, &g, &theta, &mut m1, &mut v1);
            let reference = scalar(&c, &g, &theta, &mut m2, &mut v2);
            let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&ours), bits(&reference), "step {t}");
            assert_eq!(bits(&m1), bits(&m2));
            assert_eq!(bits(&v1), bits(&v2));
        }
    }

    /// CPU time of one update of an MLP's 235,146 parameters, vectorised and as it was,
    /// interleaved: `cargo test --release --workspace --lib adam_timing -- --ignored --nocapture`.
    #[test]
    #[ignore = "timing; run on an idle machine"]
    fn adam_timing() {
        let n = 235_146;
        let (theta, g) = (values(n, 1), values(n, 2));
        let c = constants(3.0);
        let (mut m, mut v) = (vec![0.0; n], vec![0.0; n]);
        let cpu = || crate::round::thread_cpu_time().as_secs_f64() * 1e3;
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for _ in 0..20 {
            let start = cpu();
            for _ in 0..20 {
                std::hint::black_box(update(&c, &g, &theta, &mut m, &mut v));
            }
            ours.push((cpu() - start) / 20.0);
            let start = cpu();
            for _ in 0..20 {
                std::hint::black_box(scalar(&c, &g, &theta, &mut m, &mut v));
            }
            theirs.push((cpu() - start) / 20.0);
        }
        let min = |x: &[f64]| x.iter().copied().fold(f64::INFINITY, f64::min);
        println!(
            "adam update, 235,146 parameters, ms of thread CPU (min of 20 × 20): vectorised {:.3}, scalar {:.3}, ratio {:.2}",
            min(&ours),
            min(&theirs),
            min(&theirs) / min(&ours)
        );
    }
}
