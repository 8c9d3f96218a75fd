//! The [`Learner`]: one device's model, its Adam optimiser and the training step of
//! deep mutual learning.
//!
//! Everything runs on the CPU in `f32`. With `RAYON_NUM_THREADS=1` (how nodes run) every
//! kernel Candle calls is single-threaded, so a learner built from the same seed and fed
//! the same batches reaches bit-identical parameters.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{D, DType, Tensor};

use super::adam::Adam;
use super::{invalid, kl_to_target, weighted_kl_to_target};
use crate::model::ops::tensor_f32;
use crate::model::{DataSpec, Flops, ModelSpec, Network};
use crate::{Error, Result};

/// Hyper-parameters of a learner.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LearnerConfig {
    /// Adam's step size; positive and finite.
    pub learning_rate: f64,
    /// Softening temperature `T` of the distillation term; positive and finite.
    pub temperature: f64,
    /// Weight `λ` of the distillation term (the loss adds `λ·T²·KL`); 0 turns it off.
    pub kl_weight: f64,
}

impl LearnerConfig {
    /// Checks every field, naming it as the scenario file does (`train.…`).
    pub fn validate(&self) -> Result<()> {
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return Err(Error::config(
                "train.learning_rate",
                format!("must be positive and finite, got {}", self.learning_rate),
            ));
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(Error::config(
                "train.temperature",
                format!("must be positive and finite, got {}", self.temperature),
            ));
        }
        if !(self.kl_weight.is_finite() && self.kl_weight >= 0.0) {
            return Err(Error::config(
                "train.kl_weight",
                format!("must be finite and ≥ 0, got {}", self.kl_weight),
            ));
        }
        Ok(())
    }
}

/// The losses of one training step, measured before the update.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepLosses {
    /// Mean cross-entropy on the private batch.
    pub ce: f32,
    /// `KL(target ‖ softmax(f(public)/T))`, averaged over public rows; 0 when the step
    /// had no distillation term (no target, or `kl_weight` = 0).
    pub kl: f32,
    /// The optimised loss, `ce + λ·T²·kl`.
    pub total: f32,
}

/// What a step on the public batch alone ([`Learner::public_step`]) pulls the model's
/// logits `z` toward, given one target row per public row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublicLoss {
    /// FedMD's digest (Li & Wang 2019): the mean absolute error between the logits and
    /// target logits (the consensus class scores), `mean_{rows, classes} |z − target|`,
    /// as the reference implementation's Keras `mean_absolute_error` on the logits.
    L1Logits,
    /// DS-FL's distillation (Itahara et al. 2021): `KL(target ‖ softmax(z))` with
    /// target probabilities, averaged over rows; its gradient is that of the
    /// cross-entropy with soft targets the paper minimises.
    Kl,
}

/// Quality of a model on a labelled set.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Evaluation {
    /// Fraction of rows whose arg-max logit is the label, in `[0, 1]`.
    pub accuracy: f32,
    /// Mean cross-entropy over the rows.
    pub loss: f32,
}

/// One device's model and optimiser.
pub struct Learner {
    net: Network,
    /// Values per sample and classes: the shapes every call is checked against.
    values: usize,
    classes: usize,
    opt: Adam,
    cfg: LearnerConfig,
    /// The model's FLOPs per image.
    per_image: Flops,
    /// FLOPs of the work a device does (training, and inference for its neighbours)
    /// so far; evaluation is the experimenter's, not counted.
    flops: Arc<AtomicU64>,
}

impl std::fmt::Debug for Learner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Learner")
            .field("net", &self.net)
            .field("cfg", &self.cfg)
            .finish()
    }
}

/// Checks `images` is `[rows ≥ 1, values]` `f32` with finite values; returns `rows`.
///
/// Finiteness matters beyond the loss: ReLU maps a NaN activation to 0, so a NaN pixel
/// can leave the loss finite while its weight gradient (`x · 0 = NaN`) poisons the first
/// layer.
fn check_images(images: &Tensor, values: usize, what: &str) -> Result<usize> {
    let rows = match images.dims() {
        &[rows, v] if rows > 0 && v == values && images.dtype() == DType::F32 => rows,
        dims => {
            return Err(invalid(format!(
                "{what}: expected a non-empty [rows, {values}] f32 tensor, got {dims:?} {:?}",
                images.dtype()
            )));
        }
    };
    // Every value, read in place (Candle's sum over all of them took an eighth of a
    // small MLP's prediction time, and a sum can overflow where no value is infinite).
    let images = images.contiguous()?;
    let (storage, layout) = images.storage_and_layout();
    let values = tensor_f32(&storage, layout, what)?;
    if !values.iter().fold(true, |finite, v| finite & v.is_finite()) {
        return Err(invalid(format!("{what}: non-finite pixel values")));
    }
    Ok(rows)
}

/// Checks `labels` is `[rows]` of an integer type Candle can index with.
fn check_labels(labels: &Tensor, rows: usize) -> Result<()> {
    let int = matches!(labels.dtype(), DType::U8 | DType::U32 | DType::I64);
    if labels.dims() != [rows] || !int {
        return Err(invalid(format!(
            "labels: expected [{rows}] u32, got {:?} {:?}",
            labels.dims(),
            labels.dtype()
        )));
    }
    Ok(())
}

impl Learner {
    /// Builds the model of `spec` initialised from `seed`, and a fresh Adam optimiser
    /// (β = 0.9/0.999, ε = 1e-8, no weight decay; see [`Adam`]).
    pub fn new(spec: &ModelSpec, data: &DataSpec, cfg: LearnerConfig, seed: u64) -> Result<Self> {
        cfg.validate()?;
        let net = Network::new(spec, data, seed)?;
        let opt = Adam::new(net.variables(), cfg.learning_rate);
        Ok(Self {
            net,
            values: data.sample_len(),
            classes: data.classes as usize,
            opt,
            cfg,
            per_image: spec.flops(data),
            flops: Arc::default(),
        })
    }

    /// The FLOPs of the training and inference done so far (see
    /// [`crate::model::Flops`] for what is counted; evaluation is not), as a counter
    /// that whoever times the work can read while the learner is busy.
    pub fn flops(&self) -> Arc<AtomicU64> {
        self.flops.clone()
    }

    fn count(&self, images: usize, per_image: u64) {
        self.flops
            .fetch_add((images as u64).saturating_mul(per_image), Ordering::Relaxed);
    }

    /// The spec of the model.
    pub fn spec(&self) -> &ModelSpec {
        self.net.spec()
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &LearnerConfig {
        &self.cfg
    }

    /// The model and its parameters.
    pub fn network(&self) -> &Network {
        &self.net
    }

    /// Number of trainable parameters.
    pub fn parameter_count(&self) -> usize {
        self.net.parameter_count()
    }

    /// All parameters, flat, in sorted-name order (for gossip averaging).
    pub fn parameters_flat(&self) -> Result<Vec<f32>> {
        self.net.parameters_flat()
    }

    /// Overwrites all parameters from a flat vector laid out as
    /// [`Self::parameters_flat`]. Adam's moment estimates are kept: gossip-FedAvg moves
    /// the parameters, not the optimiser.
    pub fn set_parameters_flat(&mut self, flat: &[f32]) -> Result<()> {
        self.net.set_parameters_flat(flat)
    }

    /// Inference logits, row-major `[rows, 10]`, for `images` `[rows, 784]`.
    pub fn logits(&self, images: &Tensor) -> Result<Tensor> {
        let rows = check_images(images, self.values, "images")?;
        // Detached so that the forward graph (every intermediate activation) is freed
        // now rather than when the caller drops the logits.
        let logits = self.net.forward(images)?.detach();
        self.count(rows, self.per_image.forward);
        Ok(logits)
    }

    /// [`Self::logits`] copied out as `rows × 10` values, row-major: the payload sent
    /// to the neighbours.
    pub fn logits_vec(&self, images: &Tensor) -> Result<Vec<f32>> {
        Ok(self.logits(images)?.flatten_all()?.to_vec1::<f32>()?)
    }

    /// [`Self::logits_vec`] left out of the FLOP count: inference that is not the
    /// device's work in the round (the privacy audit's view of a parameter message),
    /// which must not move its emulated clock or its reported FLOPs.
    pub fn logits_vec_uncounted(&self, images: &Tensor) -> Result<Vec<f32>> {
        check_images(images, self.values, "images")?;
        Ok(self.net.forward(images)?.detach().flatten_all()?.to_vec1::<f32>()?)
    }

    /// Checks public rows `[P, values]` and their `target` `[P, classes]` f32 (`what`
    /// names the target in the error); returns P.
    fn check_public(&self, public: &Tensor, target: &Tensor, what: &str) -> Result<usize> {
        let rows = check_images(public, self.values, "public images")?;
        if target.dims() != [rows, self.classes] || target.dtype() != DType::F32 {
            return Err(invalid(format!(
                "{what}: expected [{rows}, {}] f32, got {:?} {:?}",
                self.classes,
                target.dims(),
                target.dtype()
            )));
        }
        Ok(rows)
    }

    /// One optimiser step on `CE(private batch) + λ·T²·KL(target ‖ softmax(f(public)/T))`.
    ///
    /// `images` `[B, 784]`, `labels` `[B]` (u32); `distill` = `Some((public [P, 784],
    /// target [P, 10]))`, where each target row is a probability distribution (the
    /// aggregate of the peers' softened predictions, see [`super::soft_targets`]).
    /// With `None` — or with `kl_weight` = 0, where the public batch cannot change the
    /// update and its forward pass is skipped — the step is on CE alone and `kl` is 0.
    ///
    /// A non-finite loss is an error and leaves the parameters unchanged.
    pub fn train_step(
        &mut self,
        images: &Tensor,
        labels: &Tensor,
        distill: Option<(&Tensor, &Tensor)>,
    ) -> Result<StepLosses> {
        self.train_step_weighted(images, labels, distill, None)
    }

    /// [`Learner::train_step`] with a weight per public row in the distillation term
    /// (`weights`: one f32 per row; `None`: all 1).
    pub fn train_step_weighted(
        &mut self,
        images: &Tensor,
        labels: &Tensor,
        distill: Option<(&Tensor, &Tensor)>,
        weights: Option<&Tensor>,
    ) -> Result<StepLosses> {
        let rows = check_images(images, self.values, "images")?;
        check_labels(labels, rows)?;
        let distill = distill.filter(|_| self.cfg.kl_weight > 0.0);
        if let Some((public, target)) = distill {
            self.check_public(public, target, "distillation target")?;
        }

        let (ce, kl) = match distill {
            Some((public, target)) => {
                // One forward pass over private and public rows together: every layer
                // runs one larger product instead of two, forward and backward.
                let logits = self.net.forward(&Tensor::cat(&[images, public], 0)?)?;
                let ce = candle_nn::loss::cross_entropy(&logits.narrow(0, 0, rows)?, labels)?;
                let own = logits.narrow(0, rows, public.dim(0)?)?;
                let kl = match weights {
                    Some(weights) => weighted_kl_to_target(&own, target, weights, self.cfg.temperature)?,
                    None => kl_to_target(&own, target, self.cfg.temperature)?,
                };
                (ce, Some(kl))
            }
            None => (
                candle_nn::loss::cross_entropy(&self.net.forward(images)?, labels)?,
                None,
            ),
        };
        let t = self.cfg.temperature;
        let loss = match &kl {
            Some(kl) => ce.add(&kl.affine(self.cfg.kl_weight * t * t, 0.0)?)?,
            None => ce.clone(),
        };

        let losses = StepLosses {
            ce: ce.to_scalar::<f32>()?,
            kl: kl.map(|kl| kl.to_scalar::<f32>()).transpose()?.unwrap_or(0.0),
            total: loss.to_scalar::<f32>()?,
        };
        if !losses.total.is_finite() {
            return Err(invalid(format!(
                "non-finite loss (ce {}, kl {}); step skipped",
                losses.ce, losses.kl
            )));
        }
        self.opt.step(&loss.backward()?)?;
        let public = distill.map_or(Ok(0), |(public, _)| public.dim(0))?;
        self.count(rows + public, self.per_image.train());
        Ok(losses)
    }

    /// Each example's gradient of its own cross-entropy, one tensor per parameter in
    /// [`Network::variables`] order: one forward and backward pass per row (see
    /// [`crate::privacy::dpsgd`] for why). `images` `[B, values]`, `labels` `[B]`.
    /// Returns them with the sum of the examples' cross-entropies.
    pub fn per_example_gradients(&self, images: &Tensor, labels: &Tensor) -> Result<(Vec<Vec<Tensor>>, f64)> {
        let mut gradients = Vec::new();
        let ce_sum = self.each_example_gradient(images, labels, |g| {
            gradients.push(g);
            Ok(())
        })?;
        Ok((gradients, ce_sum))
    }

    /// [`Self::per_example_gradients`], each handed to `each` as it is computed (a
    /// step keeps one at a time, not the batch's). Returns the summed cross-entropy.
    fn each_example_gradient(
        &self,
        images: &Tensor,
        labels: &Tensor,
        mut each: impl FnMut(Vec<Tensor>) -> Result<()>,
    ) -> Result<f64> {
        let rows = check_images(images, self.values, "images")?;
        check_labels(labels, rows)?;
        let vars = self.net.variables();
        let mut ce_sum = 0f64;
        for row in 0..rows {
            let logits = self.net.forward(&images.narrow(0, row, 1)?)?;
            let ce = candle_nn::loss::cross_entropy(&logits, &labels.narrow(0, row, 1)?)?;
            ce_sum += f64::from(ce.to_scalar::<f32>()?);
            let grads = ce.backward()?;
            let gradient = vars
                .iter()
                .map(|v| match grads.get(v.as_tensor()) {
                    Some(g) => Ok(g.clone()),
                    None => v.as_tensor().zeros_like(),
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            each(gradient)?;
        }
        self.count(rows, self.per_image.train());
        Ok(ce_sum)
    }

    /// One DP-SGD step ([`crate::privacy::dpsgd`]): the private rows' gradients, each
    /// clipped to `dp.max_grad_norm`, summed, noised and divided by the expected batch;
    /// plus, unclipped, the distillation term's gradient on the public rows as in
    /// [`Self::train_step_weighted`] (it reads no private example). `private` is
    /// `None` when the step's Poisson batch took no row: the step is then noise and
    /// distillation. `ce` is the mean over the rows taken (0 for none).
    pub fn private_step(
        &mut self,
        private: Option<(&Tensor, &Tensor)>,
        distill: Option<(&Tensor, &Tensor)>,
        weights: Option<&Tensor>,
        dp: &crate::privacy::dpsgd::DpSgd,
        rng: &mut dyn rand::RngCore,
    ) -> Result<StepLosses> {
        let vars = self.net.variables();
        let parameters: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let mut clipped = crate::privacy::dpsgd::ClippedSum::new(&parameters, dp.max_grad_norm);
        let mut ce = 0f64;
        if let Some((images, labels)) = private {
            let ce_sum = self.each_example_gradient(images, labels, |g| clipped.add(&g).map(drop))?;
            ce = ce_sum / images.dim(0)? as f64;
        }
        let sums = clipped.privatise(dp, rng)?;

        let distill = distill.filter(|_| self.cfg.kl_weight > 0.0);
        let t = self.cfg.temperature;
        // The store Adam reads: a backward pass of the distillation loss when there is
        // one (its gradients are added to below), else of a zero-cost sum that gives
        // every parameter an entry to overwrite.
        let (kl, mut store) = match distill {
            Some((public, target)) => {
                let p = self.check_public(public, target, "distillation target")?;
                let own = self.net.forward(public)?;
                let kl = match weights {
                    Some(weights) => weighted_kl_to_target(&own, target, weights, t)?,
                    None => kl_to_target(&own, target, t)?,
                };
                let store = kl.affine(self.cfg.kl_weight * t * t, 0.0)?.backward()?;
                self.count(p, self.per_image.train());
                (kl.to_scalar::<f32>()?, store)
            }
            None => {
                let mut zero = Tensor::zeros((), DType::F32, &candle_core::Device::Cpu)?;
                for v in &vars {
                    zero = (zero + v.as_tensor().sum_all()?.affine(0.0, 0.0)?)?;
                }
                (0.0, zero.backward()?)
            }
        };
        for (v, noisy) in vars.iter().zip(sums) {
            let gradient = match (distill.is_some(), store.get(v.as_tensor())) {
                (true, Some(g)) => (noisy + g)?,
                _ => noisy,
            };
            store.insert(v.as_tensor(), gradient);
        }
        let losses = StepLosses {
            ce: ce as f32,
            kl,
            total: ce as f32 + (self.cfg.kl_weight * t * t) as f32 * kl,
        };
        if !losses.total.is_finite() {
            return Err(invalid(format!(
                "non-finite loss (ce {}, kl {}); step skipped",
                losses.ce, losses.kl
            )));
        }
        self.opt.step(&store)?;
        Ok(losses)
    }

    /// One optimiser step on the public batch alone: `loss` between the logits of
    /// `public` `[P, values]` and `target` `[P, classes]` (logits for
    /// [`PublicLoss::L1Logits`], probabilities for [`PublicLoss::Kl`]); no private row,
    /// no `kl_weight`, no temperature. Returns the loss before the update. A non-finite
    /// loss (or target) is an error and leaves the parameters unchanged.
    pub fn public_step(&mut self, public: &Tensor, target: &Tensor, loss: PublicLoss) -> Result<f32> {
        let rows = self.check_public(public, target, "public-step target")?;
        let logits = self.net.forward(public)?;
        let value = match loss {
            PublicLoss::L1Logits => (logits - target)?.abs()?.mean_all()?,
            PublicLoss::Kl => kl_to_target(&logits, target, 1.0)?,
        };
        let scalar = value.to_scalar::<f32>()?;
        if !scalar.is_finite() {
            return Err(invalid(format!("non-finite public-step loss ({scalar}); step skipped")));
        }
        self.opt.step(&value.backward()?)?;
        self.count(rows, self.per_image.train());
        Ok(scalar)
    }

    /// Everything training changes, by name, for a checkpoint: each parameter
    /// (`param.<name>`) and its Adam moments (`adam.m.<name>`, `adam.v.<name>`); and
    /// Adam's step count.
    pub fn state(&self) -> Result<(Vec<(String, Tensor)>, u64)> {
        let (step, moments) = self.opt.state();
        let mut tensors = Vec::with_capacity(3 * moments.len());
        for ((name, var), (m, v)) in self.net.named_parameters().iter().zip(moments) {
            let device = var.device();
            tensors.push((format!("param.{name}"), var.as_tensor().clone()));
            tensors.push((format!("adam.m.{name}"), Tensor::from_slice(m, var.shape(), device)?));
            tensors.push((format!("adam.v.{name}"), Tensor::from_slice(v, var.shape(), device)?));
        }
        Ok((tensors, step))
    }

    /// Puts back what [`Self::state`] gave. Every tensor must be there with its
    /// parameter's shape; nothing changes otherwise.
    pub fn restore(&mut self, tensors: &std::collections::HashMap<String, Tensor>, step: u64) -> Result<()> {
        let get = |key: String, shape: &candle_core::Shape| -> Result<Tensor> {
            let t = tensors
                .get(&key)
                .ok_or_else(|| invalid(format!("checkpoint: no tensor {key}")))?;
            if t.shape() != shape || t.dtype() != DType::F32 {
                return Err(invalid(format!(
                    "checkpoint: {key} is {:?} {:?}, the model needs {shape:?} f32",
                    t.dims(),
                    t.dtype()
                )));
            }
            Ok(t.clone())
        };
        let mut values = Vec::new();
        let mut moments = Vec::new();
        for (name, var) in self.net.named_parameters() {
            let value = get(format!("param.{name}"), var.shape())?;
            if !value.sum_all()?.to_scalar::<f32>()?.is_finite() {
                return Err(invalid(format!("checkpoint: param.{name} is not finite")));
            }
            values.push(value);
            let m = get(format!("adam.m.{name}"), var.shape())?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let v = get(format!("adam.v.{name}"), var.shape())?
                .flatten_all()?
                .to_vec1::<f32>()?;
            moments.push((m, v));
        }
        self.opt.restore(step, moments)?;
        for ((_, var), value) in self.net.named_parameters().iter().zip(values) {
            var.set(&value)?;
        }
        Ok(())
    }

    /// Accuracy and mean cross-entropy on `images` `[N, 784]` / `labels` `[N]`, in
    /// batches of at most `batch` rows (bounding the memory of activations).
    pub fn evaluate(&self, images: &Tensor, labels: &Tensor, batch: usize) -> Result<Evaluation> {
        let rows = check_images(images, self.values, "images")?;
        check_labels(labels, rows)?;
        if batch == 0 {
            return Err(invalid("evaluation batch size must be at least 1"));
        }
        let labels = labels.to_dtype(DType::U32)?;
        let mut correct = 0u64;
        let mut ce_sum = 0f64;
        for start in (0..rows).step_by(batch) {
            let len = batch.min(rows - start);
            let ys = labels.narrow(0, start, len)?;
            let logits = self.net.forward(&images.narrow(0, start, len)?)?.detach();
            let ce = candle_nn::loss::cross_entropy(&logits, &ys)?.to_scalar::<f32>()?;
            ce_sum += f64::from(ce) * len as f64;
            let hits = logits.argmax(D::Minus1)?.eq(&ys)?.to_dtype(DType::U32)?.sum_all()?;
            correct += u64::from(hits.to_scalar::<u32>()?);
        }
        Ok(Evaluation {
            accuracy: (correct as f64 / rows as f64) as f32,
            loss: (ce_sum / rows as f64) as f32,
        })
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;
    use rand_distr::{Distribution, StandardNormal};

    use super::*;

    const CLASSES: usize = 10;
    const INPUT_DIM: usize = 784;

    fn fm() -> DataSpec {
        wdml_proto::data::fashion_mnist()
    }
    use crate::learn::{labels_tensor, targets_tensor};

    fn cfg(learning_rate: f64, temperature: f64, kl_weight: f64) -> LearnerConfig {
        LearnerConfig {
            learning_rate,
            temperature,
            kl_weight,
        }
    }

    /// `n` rows of a 10-class problem: each class is a random prototype plus noise.
    fn separable(n: usize, seed: u64) -> (Tensor, Tensor) {
        let mut rng = crate::seed::rng(seed);
        let mut draw = || -> f32 { StandardNormal.sample(&mut rng) };
        let protos: Vec<f32> = (0..CLASSES * INPUT_DIM).map(|_| draw()).collect();
        let mut xs = Vec::with_capacity(n * INPUT_DIM);
        let mut ys = Vec::with_capacity(n);
        for i in 0..n {
            let c = (i * 7 + i / 3) % CLASSES;
            ys.push(c as u32);
            let proto = &protos[c * INPUT_DIM..(c + 1) * INPUT_DIM];
            xs.extend(proto.iter().map(|p| 0.3 * p + draw()));
        }
        (
            Tensor::from_vec(xs, (n, INPUT_DIM), &Device::Cpu).unwrap(),
            labels_tensor(ys, CLASSES).unwrap(),
        )
    }

    #[test]
    fn learner_can_move_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Learner>();
    }

    #[test]
    fn config_is_validated_with_field_names() {
        let spec = ModelSpec::Mlp { hidden: vec![4] };
        for (c, field) in [
            (cfg(0.0, 1.0, 1.0), "train.learning_rate"),
            (cfg(f64::INFINITY, 1.0, 1.0), "train.learning_rate"),
            (cfg(1e-3, 0.0, 1.0), "train.temperature"),
            (cfg(1e-3, f64::NAN, 1.0), "train.temperature"),
            (cfg(1e-3, 1.0, -0.1), "train.kl_weight"),
        ] {
            match Learner::new(&spec, &fm(), c, 0) {
                Err(Error::Config { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{c:?}: {other:?}"),
            }
        }
        let l = Learner::new(&spec, &fm(), cfg(1e-3, 1.0, 0.0), 0).unwrap();
        assert_eq!(l.spec(), &spec);
        assert_eq!(l.parameter_count(), 784 * 4 + 4 + 4 * 10 + 10);
    }

    #[test]
    fn ce_steps_learn_a_separable_problem() {
        let (xs, ys) = separable(320, 1);
        let (test_x, test_y) = separable(200, 1);
        let mut l = Learner::new(&"mlp:32".parse().unwrap(), &fm(), cfg(1e-3, 1.0, 0.0), 7).unwrap();
        let before = l.evaluate(&test_x, &test_y, 64).unwrap();
        let batch = 32;
        for step in 0..200 {
            let start = (step * batch) % 320;
            let x = xs.narrow(0, start, batch).unwrap();
            let y = ys.narrow(0, start, batch).unwrap();
            let s = l.train_step(&x, &y, None).unwrap();
            assert_eq!(s.kl, 0.0);
            assert_eq!(s.ce, s.total);
        }
        let after = l.evaluate(&test_x, &test_y, 64).unwrap();
        assert!(after.accuracy >= 0.95, "{before:?} → {after:?}");
        assert!(after.loss < 0.2 * before.loss, "{before:?} → {after:?}");
    }

    /// The per-example gradients are the batch's: they sum to B × the gradient of the
    /// batch's mean cross-entropy, on a CNN (the hand-written convolution ops) and an
    /// MLP; clipped, every one of them has a norm of at most C.
    #[test]
    fn per_example_gradients_sum_to_the_batch_gradient_and_clip_to_the_norm() {
        use crate::privacy::dpsgd::{ClippedSum, DpSgd, norm};
        let (xs, ys) = separable(6, 4);
        for spec in ["mlp:16", "cnn:4,8,16"] {
            let l = Learner::new(&spec.parse().unwrap(), &fm(), cfg(1e-3, 1.0, 0.0), 5).unwrap();
            let (each, ce_sum) = l.per_example_gradients(&xs, &ys).unwrap();
            assert_eq!(each.len(), 6);
            let batch_ce = candle_nn::loss::cross_entropy(&l.net.forward(&xs).unwrap(), &ys).unwrap();
            assert!((ce_sum / 6.0 - f64::from(batch_ce.to_scalar::<f32>().unwrap())).abs() < 1e-5);
            let grads = batch_ce.backward().unwrap();
            for (k, v) in l.net.variables().iter().enumerate() {
                let batch: Vec<f32> = grads
                    .get(v.as_tensor())
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                let mut summed = vec![0f32; batch.len()];
                for g in &each {
                    for (s, x) in summed
                        .iter_mut()
                        .zip(g[k].flatten_all().unwrap().to_vec1::<f32>().unwrap())
                    {
                        *s += x;
                    }
                }
                for (s, b) in summed.iter().zip(&batch) {
                    assert!(
                        (s - 6.0 * b).abs() <= 1e-4 + 1e-3 * (6.0 * b).abs(),
                        "{spec} parameter {k}: {s} vs 6 × {b}"
                    );
                }
            }
            let norms: Vec<f64> = each.iter().map(|g| norm(g).unwrap()).collect();
            let c = norms.iter().cloned().fold(f64::INFINITY, f64::min) / 2.0;
            assert!(c > 0.0, "{spec}: {norms:?}");
            // Each example alone through the step's sum, without noise or division:
            // what it contributes is its clipped gradient.
            let alone = DpSgd {
                noise_multiplier: 0.0,
                max_grad_norm: c,
                sample_rate: 1.0,
                expected_batch: 1.0,
            };
            let parameters: Vec<Tensor> = l.net.variables().iter().map(|v| v.as_tensor().clone()).collect();
            for (g, before) in each.iter().zip(&norms) {
                let mut sum = ClippedSum::new(&parameters, c);
                let seen = sum.add(g).unwrap();
                assert!(
                    (seen - before).abs() <= 1e-6 * before,
                    "{spec}: norm {seen} against {before}"
                );
                let clipped = sum.privatise(&alone, &mut rand::rng()).unwrap();
                let after = norm(&clipped).unwrap();
                assert!(
                    after <= c * (1.0 + 1e-5),
                    "{spec}: {before} clipped to {after} > C = {c}"
                );
                assert!(
                    after >= c * (1.0 - 1e-4),
                    "{spec}: a gradient above C is clipped to C, not below it"
                );
            }
        }
    }

    /// With a modest noise the private steps still learn, and the parameters move only
    /// through them (a step with no private row and no distillation is noise alone).
    #[test]
    fn private_steps_learn_a_separable_problem() {
        use crate::privacy::dpsgd::{DpSgd, poisson_batch};
        use rand::SeedableRng;
        let (xs, ys) = separable(640, 1);
        let (test_x, test_y) = separable(200, 1);
        // DP-SGD usually runs a larger step size than plain training (clipped gradients).
        let mut l = Learner::new(&"mlp:32".parse().unwrap(), &fm(), cfg(5e-3, 1.0, 0.0), 7).unwrap();
        let dp = DpSgd::new(0.6, 1.0, 32, 640).unwrap();
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(9);
        for _ in 0..200 {
            let rows = poisson_batch(640, dp.sample_rate, &mut rng);
            let index = Tensor::from_slice(&rows, rows.len(), &Device::Cpu).unwrap();
            let (x, y) = (xs.index_select(&index, 0).unwrap(), ys.index_select(&index, 0).unwrap());
            let private = (!rows.is_empty()).then_some((&x, &y));
            let s = l.private_step(private, None, None, &dp, &mut rng).unwrap();
            assert!(s.ce.is_finite() && s.kl == 0.0);
        }
        let after = l.evaluate(&test_x, &test_y, 64).unwrap();
        assert!(after.accuracy >= 0.9, "{after:?}");
        let before = l.parameters_flat().unwrap();
        l.private_step(None, None, None, &dp, &mut rng).unwrap();
        assert_ne!(l.parameters_flat().unwrap(), before, "an empty batch still adds noise");
    }

    #[test]
    fn distillation_pulls_towards_the_target() {
        let (xs, ys) = separable(32, 2);
        let (public, _) = separable(64, 3);
        // A fixed target: 0.7 on class (row mod 10), the rest spread evenly.
        let probs: Vec<f32> = (0..64)
            .flat_map(|r| (0..CLASSES).map(move |c| if c == r % CLASSES { 0.7 } else { 0.3 / 9.0 }))
            .collect();
        let target = targets_tensor(probs, CLASSES).unwrap();
        let mut l = Learner::new(&"mlp:32".parse().unwrap(), &fm(), cfg(1e-3, 2.0, 1.0), 1).unwrap();
        let first = l.train_step(&xs, &ys, Some((&public, &target))).unwrap();
        let t2 = 2.0f32 * 2.0;
        assert!((first.total - (first.ce + t2 * first.kl)).abs() < 1e-4, "{first:?}");
        let mut last = first;
        for _ in 0..60 {
            last = l.train_step(&xs, &ys, Some((&public, &target))).unwrap();
        }
        assert!(last.kl < 0.3 * first.kl, "{first:?} → {last:?}");
    }

    /// FedMD's digest: L1 steps toward fixed target logits bring the logits close to
    /// them (the loss is the mean absolute gap, by hand at the first step); DS-FL's
    /// KL steps bring softmax(z) close to a target distribution.
    #[test]
    fn public_steps_pull_the_logits_toward_the_target() {
        let (public, _) = separable(32, 3);
        let goal: Vec<f32> = (0..32 * CLASSES)
            .map(|i| {
                if i % CLASSES == (i / CLASSES) % CLASSES {
                    4.0
                } else {
                    -1.0
                }
            })
            .collect();
        let target = Tensor::from_vec(goal.clone(), (32, CLASSES), &Device::Cpu).unwrap();
        let mut l = Learner::new(&"mlp:32".parse().unwrap(), &fm(), cfg(3e-3, 2.0, 0.0), 1).unwrap();
        let own = l.logits_vec(&public).unwrap();
        let by_hand = own.iter().zip(&goal).map(|(z, t)| (z - t).abs()).sum::<f32>() / own.len() as f32;
        let first = l.public_step(&public, &target, PublicLoss::L1Logits).unwrap();
        assert!((first - by_hand).abs() < 1e-5, "{first} vs {by_hand}");
        let mut last = first;
        for _ in 0..150 {
            last = l.public_step(&public, &target, PublicLoss::L1Logits).unwrap();
        }
        assert!(last < 0.25 * first, "L1: {first} → {last}");

        let probs: Vec<f32> = (0..32)
            .flat_map(|r| (0..CLASSES).map(move |c| if c == r % CLASSES { 0.82 } else { 0.02 }))
            .collect();
        let target = targets_tensor(probs, CLASSES).unwrap();
        let mut l = Learner::new(&"mlp:32".parse().unwrap(), &fm(), cfg(3e-3, 2.0, 0.0), 1).unwrap();
        let first = l.public_step(&public, &target, PublicLoss::Kl).unwrap();
        let mut last = first;
        for _ in 0..100 {
            last = l.public_step(&public, &target, PublicLoss::Kl).unwrap();
        }
        assert!(last < 0.3 * first, "KL: {first} → {last}");
        // Counted as training, one row each.
        let rows = 32 * 101;
        let per = ModelSpec::Mlp { hidden: vec![32] }.flops(&fm()).train();
        assert_eq!(l.flops().load(Ordering::Relaxed), rows as u64 * per);
        let wrong = targets_tensor(vec![0.1; 31 * CLASSES], CLASSES).unwrap();
        assert!(l.public_step(&public, &wrong, PublicLoss::Kl).is_err());
    }

    #[test]
    fn training_is_deterministic() {
        let (xs, ys) = separable(16, 4);
        let (public, _) = separable(8, 5);
        let target = targets_tensor(vec![0.1; 8 * CLASSES], CLASSES).unwrap();
        for spec in ["mlp:16,8", "cnn:2,4,8"] {
            let spec: ModelSpec = spec.parse().unwrap();
            let run = || {
                let mut l = Learner::new(&spec, &fm(), cfg(1e-2, 3.0, 0.5), 9).unwrap();
                let mut losses = Vec::new();
                for i in 0..3 {
                    let d = (i > 0).then_some((&public, &target));
                    losses.push(l.train_step(&xs, &ys, d).unwrap());
                }
                let bits: Vec<u32> = l.parameters_flat().unwrap().iter().map(|x| x.to_bits()).collect();
                (losses, bits)
            };
            let (la, a) = run();
            let (lb, b) = run();
            assert_eq!(la, lb, "{spec}");
            assert_eq!(a, b, "{spec}");
        }
    }

    #[test]
    fn evaluate_on_a_known_case() {
        // All parameters zero except the output bias: every image gets the logits
        // (ln 2, 0, …, 0), so the prediction is class 0 and p(0) = 2/11, p(c) = 1/11.
        let l = Learner::new(&"mlp:4".parse().unwrap(), &fm(), cfg(1e-3, 1.0, 0.0), 0).unwrap();
        for (name, var) in l.network().named_parameters() {
            let mut v = vec![0f32; var.elem_count()];
            if name == "fc2.bias" {
                v[0] = 2f32.ln();
            }
            var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
                .unwrap();
        }
        let xs = separable(5, 0).0;
        let ys = labels_tensor(vec![0, 0, 1, 2, 3], CLASSES).unwrap();
        let expected_loss = (2.0 * (11f64 / 2.0).ln() + 3.0 * 11f64.ln()) / 5.0;
        for batch in [1, 2, 5, 100] {
            let e = l.evaluate(&xs, &ys, batch).unwrap();
            assert!((e.accuracy - 0.4).abs() < 1e-6, "{batch}: {e:?}");
            assert!((f64::from(e.loss) - expected_loss).abs() < 1e-5, "{batch}: {e:?}");
        }
        assert_eq!(l.logits(&xs).unwrap().dims(), &[5, CLASSES]);
        let z = l.logits_vec(&xs).unwrap();
        assert_eq!(z.len(), 5 * CLASSES);
        assert!((z[CLASSES] - 2f32.ln()).abs() < 1e-7 && z[CLASSES + 1] == 0.0);
    }

    #[test]
    fn bad_input_is_an_error_and_changes_nothing() {
        let mut l = Learner::new(&"mlp:4".parse().unwrap(), &fm(), cfg(1e-3, 1.0, 1.0), 0).unwrap();
        let before = l.parameters_flat().unwrap();
        let (xs, ys) = separable(4, 0);
        let target = targets_tensor(vec![0.1; 4 * CLASSES], CLASSES).unwrap();
        let short = labels_tensor(vec![0, 1, 2], CLASSES).unwrap();
        assert!(l.train_step(&xs, &short, None).is_err());
        let wide = Tensor::zeros((4, 10), DType::F32, &Device::Cpu).unwrap();
        assert!(l.train_step(&wide, &ys, None).is_err());
        let bad_target = targets_tensor(vec![0.1; 3 * CLASSES], CLASSES).unwrap();
        assert!(l.train_step(&xs, &ys, Some((&xs, &bad_target))).is_err());
        let nan = (&xs * f64::NAN).unwrap();
        assert!(l.train_step(&nan, &ys, Some((&xs, &target))).is_err());
        assert!(l.train_step(&xs, &ys, Some((&nan, &target))).is_err());
        let big = labels_tensor(vec![0, 1, 2, 3], CLASSES)
            .unwrap()
            .affine(1.0, 20.0)
            .unwrap();
        assert!(l.train_step(&xs, &big, None).is_err());
        assert!(l.evaluate(&xs, &ys, 0).is_err());
        assert!(l.evaluate(&wide, &ys, 2).is_err());
        assert_eq!(l.parameters_flat().unwrap(), before);
    }
}
