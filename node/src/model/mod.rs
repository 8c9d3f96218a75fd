//! The models a device can train: a spec that names an architecture, the [`Model`]
//! trait every architecture implements, and [`Network`], a built model together with
//! its named, seeded parameters.
//!
//! Every device may run a different architecture: mutual learning only exchanges
//! predictions, so the only contract between models is the run's data ([`DataSpec`]):
//! "a normalised sample of its shape in, one logit per class out". A spec names sizes
//! that do not depend on the data (`mlp:256,128`); the layers at either end follow
//! from the data when the model is built. Parameters live in a [`candle_nn::VarMap`] under stable names
//! (`fc1.weight`, `conv2.bias`, …); whatever needs a fixed order over them (seeded
//! initialisation, the flat vector gossip-FedAvg averages) walks them sorted by name.

mod cnn;
mod flops;
pub(crate) mod gemm;
pub mod init;
pub mod kernels;
mod layers;
mod mlp;
pub(crate) mod ops;
mod resnet;

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};

pub use cnn::Cnn;
pub use flops::Flops;
pub use mlp::Mlp;
pub use resnet::{ResNet, resnet_flops, resnet_parameter_count};

pub use wdml_proto::DataSpec;

use crate::{Error, Result};
/// Largest model a spec may describe. A typo such as `mlp:1000000` would otherwise
/// try to allocate gigabytes and abort the process instead of returning an error.
pub const MAX_PARAMETERS: usize = 50_000_000;

/// Which architecture a device trains, and its sizes.
///
/// Written and read as a short string (`"mlp:256,128"`, `"cnn:16,32,128"`) in config
/// files, on the command line and in metrics.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ModelSpec {
    /// A multilayer perceptron: the sample's values → `hidden[0]` → … → the classes,
    /// ReLU between layers.
    Mlp {
        /// Widths of the hidden layers, input side first.
        hidden: Vec<usize>,
    },
    /// A small LeNet-style CNN: two 3×3 conv/ReLU/max-pool stages, then two dense layers
    /// (images whose height and width are multiples of 4).
    Cnn {
        /// Channels of the first convolution.
        conv1: usize,
        /// Channels of the second convolution.
        conv2: usize,
        /// Width of the hidden dense layer.
        hidden: usize,
    },
    /// A residual network for small images, CIFAR style (He et al. 2016: a 16-channel
    /// stem, three stages of 16/32/64 channels), with GroupNorm for non-IID clients
    /// (Hsieh et al. 2020); `depth` = 6n + 2 (8, 20, …).
    ResNet {
        /// Layers with weights: 8 (one block per stage), 20 (three), …
        depth: usize,
    },
    /// A model of the device's own program (a PyTorch or numpy model behind the Python
    /// package): the node runtime knows its name, and its parameter count only as the
    /// device declares it; its FLOPs are unknown (counted as 0).
    External {
        /// 1 to [`EXTERNAL_NAME_MAX`] characters of `a-z`, `0-9`, `.`, `_`, `-`.
        name: String,
    },
}

/// Longest name of an external model.
pub const EXTERNAL_NAME_MAX: usize = 40;

/// The forms [`ModelSpec::from_str`] accepts, quoted in its errors.
const SPEC_FORMS: &str = "`mlp` (= mlp:256,128), `mlp:W1[,W2…]` (hidden widths), \
     `cnn` (= cnn:16,32,128) or `cnn:C1,C2,H` (conv channels and hidden width), all sizes ≥ 1, \
     `resnet:DEPTH` (6n + 2: 8, 20, …), or `ext:NAME` (a model of the device's own program, e.g. a Python device)";

impl ModelSpec {
    /// The default MLP, 256-128 hidden (784-256-128-10 on Fashion-MNIST).
    pub fn default_mlp() -> Self {
        ModelSpec::Mlp { hidden: vec![256, 128] }
    }

    /// The default CNN, conv 16 → conv 32 → dense 128.
    pub fn default_cnn() -> Self {
        ModelSpec::Cnn {
            conv1: 16,
            conv2: 32,
            hidden: 128,
        }
    }

    /// Number of trainable parameters this spec describes on `data`, or `None` when it
    /// overflows or the model cannot take the data.
    fn checked_parameter_count(&self, data: &DataSpec) -> Option<usize> {
        // A dense layer in → out holds out·in weights and out biases.
        let dense = |i: usize, o: usize| o.checked_mul(i)?.checked_add(o);
        let classes = data.classes as usize;
        match self {
            ModelSpec::Mlp { hidden } => {
                let mut total = 0usize;
                let mut prev = data.sample_len();
                for &w in hidden.iter().chain(std::iter::once(&classes)) {
                    total = total.checked_add(dense(prev, w)?)?;
                    prev = w;
                }
                Some(total)
            }
            &ModelSpec::Cnn { conv1, conv2, hidden } => {
                let [c, h, w] = cnn::input(data).ok()?;
                let c1 = dense(c.checked_mul(9)?, conv1)?; // C input channels × 3×3 kernel
                let c2 = dense(conv1.checked_mul(9)?, conv2)?;
                let flat = conv2.checked_mul((h / 4) * (w / 4))?;
                let f1 = dense(flat, hidden)?;
                let f2 = dense(hidden, classes)?;
                c1.checked_add(c2)?.checked_add(f1)?.checked_add(f2)
            }
            &ModelSpec::ResNet { depth } => {
                resnet::check(depth, data).ok()?;
                let input = data.image()?;
                Some(resnet_parameter_count(depth, input, classes))
            }
            ModelSpec::External { .. } => Some(0),
        }
    }

    /// Whether the model lives in the device's own program.
    pub fn is_external(&self) -> bool {
        matches!(self, ModelSpec::External { .. })
    }

    /// Number of trainable parameters this spec describes on `data` (saturating on
    /// absurd sizes or data it cannot take, which [`Self::fits`] refuses; 0 for an
    /// external model, whose count only its device knows).
    pub fn parameter_count(&self, data: &DataSpec) -> usize {
        self.checked_parameter_count(data).unwrap_or(usize::MAX)
    }

    /// Checks that this model can learn `data` (a CNN needs images of a size its
    /// pooling allows) and stays below [`MAX_PARAMETERS`] on it.
    pub fn fits(&self, data: &DataSpec) -> std::result::Result<(), ParseModelSpecError> {
        self.validate()?;
        let shape = match self {
            ModelSpec::Cnn { .. } => cnn::input(data).map(|_| ()),
            &ModelSpec::ResNet { depth } => resnet::check(depth, data),
            _ => Ok(()),
        };
        shape.map_err(|reason| ParseModelSpecError::new(self.to_string(), reason))?;
        match self.checked_parameter_count(data) {
            Some(n) if n <= MAX_PARAMETERS => Ok(()),
            _ => Err(ParseModelSpecError::new(
                self.to_string(),
                format!("more than {MAX_PARAMETERS} parameters on {data}"),
            )),
        }
    }

    /// Checks that every size is at least 1, and that the model stays below
    /// [`MAX_PARAMETERS`] on Fashion-MNIST (a typo such as `mlp:1000000` is refused
    /// where it is read; [`Self::fits`] checks it on the run's data); specs parsed from
    /// strings pass this.
    pub fn validate(&self) -> std::result::Result<(), ParseModelSpecError> {
        let sizes_ok = match self {
            ModelSpec::Mlp { hidden } => !hidden.is_empty() && hidden.iter().all(|&w| w > 0),
            &ModelSpec::Cnn { conv1, conv2, hidden } => conv1 > 0 && conv2 > 0 && hidden > 0,
            &ModelSpec::ResNet { depth } => {
                if depth < 8 || !(depth - 2).is_multiple_of(6) {
                    return Err(ParseModelSpecError::new(
                        self.to_string(),
                        format!("depth {depth} is not 6n + 2 with n ≥ 1 (8, 14, 20, 26, 32, 44, 56, 110 …)"),
                    ));
                }
                return Ok(());
            }
            ModelSpec::External { name } => {
                return match external_name_ok(name) {
                    true => Ok(()),
                    false => Err(ParseModelSpecError::new(
                        self.to_string(),
                        format!("an external model's name is 1 to {EXTERNAL_NAME_MAX} of a-z 0-9 . _ -"),
                    )),
                };
            }
        };
        if !sizes_ok {
            return Err(ParseModelSpecError::new(self.to_string(), "a size is zero or missing"));
        }
        match self.checked_parameter_count(&wdml_proto::data::fashion_mnist()) {
            Some(n) if n <= MAX_PARAMETERS => Ok(()),
            _ => Err(ParseModelSpecError::new(
                self.to_string(),
                format!("more than {MAX_PARAMETERS} parameters"),
            )),
        }
    }
}

/// A model spec string that does not parse, or describes an unusable model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseModelSpecError {
    input: String,
    reason: String,
}

impl ParseModelSpecError {
    fn new(input: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            input: input.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ParseModelSpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid model `{}`: {}; expected {}",
            self.input, self.reason, SPEC_FORMS
        )
    }
}

impl std::error::Error for ParseModelSpecError {}

fn external_name_ok(name: &str) -> bool {
    (1..=EXTERNAL_NAME_MAX).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

/// Parses a comma-separated list of positive sizes.
fn parse_sizes(input: &str, list: &str) -> std::result::Result<Vec<usize>, ParseModelSpecError> {
    list.split(',')
        .map(|item| match item.trim().parse::<usize>() {
            Ok(0) => Err(ParseModelSpecError::new(input, "sizes must be at least 1")),
            Ok(n) => Ok(n),
            Err(_) => Err(ParseModelSpecError::new(
                input,
                format!("`{}` is not a size", item.trim()),
            )),
        })
        .collect()
}

impl FromStr for ModelSpec {
    type Err = ParseModelSpecError;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let trimmed = s.trim();
        let (kind, sizes) = match trimmed.split_once(':') {
            Some((kind, sizes)) => (kind.trim(), Some(sizes)),
            None => (trimmed, None),
        };
        let spec = match (kind.to_ascii_lowercase().as_str(), sizes) {
            ("mlp", None) => ModelSpec::default_mlp(),
            ("cnn", None) => ModelSpec::default_cnn(),
            ("mlp", Some(list)) => ModelSpec::Mlp {
                hidden: parse_sizes(s, list)?,
            },
            ("cnn", Some(list)) => match parse_sizes(s, list)?.as_slice() {
                &[conv1, conv2, hidden] => ModelSpec::Cnn { conv1, conv2, hidden },
                other => {
                    return Err(ParseModelSpecError::new(
                        s,
                        format!("cnn takes exactly 3 sizes, got {}", other.len()),
                    ));
                }
            },
            ("resnet", Some(depth)) => match parse_sizes(s, depth)?.as_slice() {
                &[depth] => ModelSpec::ResNet { depth },
                other => {
                    return Err(ParseModelSpecError::new(
                        s,
                        format!("resnet takes one size, its depth, got {}", other.len()),
                    ));
                }
            },
            ("ext", Some(name)) => ModelSpec::External {
                name: name.trim().to_string(),
            },
            _ => {
                return Err(ParseModelSpecError::new(s, format!("unknown model kind `{kind}`")));
            }
        };
        spec.validate().map_err(|e| ParseModelSpecError::new(s, e.reason))?;
        Ok(spec)
    }
}

impl fmt::Display for ModelSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelSpec::Mlp { hidden } => {
                f.write_str("mlp:")?;
                for (i, w) in hidden.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{w}")?;
                }
                Ok(())
            }
            ModelSpec::Cnn { conv1, conv2, hidden } => write!(f, "cnn:{conv1},{conv2},{hidden}"),
            ModelSpec::ResNet { depth } => write!(f, "resnet:{depth}"),
            ModelSpec::External { name } => write!(f, "ext:{name}"),
        }
    }
}

impl TryFrom<String> for ModelSpec {
    type Error = ParseModelSpecError;

    fn try_from(s: String) -> std::result::Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<ModelSpec> for String {
    fn from(spec: ModelSpec) -> String {
        spec.to_string()
    }
}

/// A classifier over the run's samples.
pub trait Model: Send + Sync {
    /// `xs`: `[batch, values]` normalised samples, each row-major in its shape (an
    /// image channels first) → logits `[batch, classes]`.
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor>;
}

/// A built model: its spec, its layers, and its parameters by name.
///
/// Runs on the CPU in `f32`. The parameter list is kept sorted by name, which fixes the
/// order of seeded initialisation, of the optimiser's variables and of the flat vector.
pub struct Network {
    spec: ModelSpec,
    model: Box<dyn Model>,
    // Kept so the variables stay reachable by name (and for saving, should we need it).
    varmap: VarMap,
    params: Vec<(String, Var)>,
    count: usize,
}

impl fmt::Debug for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Network")
            .field("spec", &self.spec)
            .field("parameters", &self.count)
            .finish_non_exhaustive()
    }
}

impl Network {
    /// Builds `spec` for `data` on the CPU and initialises every parameter from `seed`
    /// (PyTorch's default uniform ranges, see [`init`]). Same seed ⇒ identical bits.
    pub fn new(spec: &ModelSpec, data: &DataSpec, seed: u64) -> Result<Self> {
        spec.fits(data).map_err(|e| Error::config("model", e.to_string()))?;
        let device = Device::Cpu;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
        let model: Box<dyn Model> = match spec {
            ModelSpec::Mlp { hidden } => Box::new(Mlp::new(data, hidden, vb)?),
            &ModelSpec::Cnn { conv1, conv2, hidden } => Box::new(Cnn::new(data, conv1, conv2, hidden, vb)?),
            &ModelSpec::ResNet { depth } => {
                let input = data
                    .image()
                    .ok_or_else(|| Error::config("model", "a ResNet learns images"))?;
                Box::new(ResNet::new(depth, input, data.classes as usize, vb)?)
            }
            ModelSpec::External { .. } => {
                return Err(Error::config(
                    "model",
                    format!("{spec} is a model of the device's own program; Candle cannot build it"),
                ));
            }
        };
        let mut params: Vec<(String, Var)> = {
            let data = varmap
                .data()
                .lock()
                .map_err(|_| candle_core::Error::Msg("parameter map lock poisoned".into()))?;
            data.iter().map(|(name, var)| (name.clone(), var.clone())).collect()
        };
        params.sort_by(|a, b| a.0.cmp(&b.0));
        // He init for a ResNet's convolutions and identity norms, as torchvision's;
        // PyTorch's layer defaults for the others.
        match spec {
            ModelSpec::ResNet { .. } => init::init_seeded_resnet(&params, seed)?,
            _ => init::init_seeded(&params, seed)?,
        }
        let count = params.iter().map(|(_, v)| v.elem_count()).sum();
        Ok(Self {
            spec: spec.clone(),
            model,
            varmap,
            params,
            count,
        })
    }

    /// The spec this network was built from.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// Logits `[batch, classes]` for `xs` `[batch, values]` (records the graph for
    /// backprop).
    pub fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.model.forward(xs)
    }

    /// The underlying variable store.
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    /// The parameters, sorted by name.
    pub fn named_parameters(&self) -> &[(String, Var)] {
        &self.params
    }

    /// The trainable variables in sorted-name order (for an optimiser).
    pub fn variables(&self) -> Vec<Var> {
        self.params.iter().map(|(_, v)| v.clone()).collect()
    }

    /// Total number of trainable scalars.
    pub fn parameter_count(&self) -> usize {
        self.count
    }

    /// All parameters concatenated in sorted-name order, each tensor row-major.
    pub fn parameters_flat(&self) -> Result<Vec<f32>> {
        let mut flat = Vec::with_capacity(self.count);
        for (_, var) in &self.params {
            flat.extend_from_slice(&var.as_tensor().flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(flat)
    }

    /// Overwrites every parameter from a vector laid out as [`Self::parameters_flat`]
    /// returns it. Nothing is changed when the length is wrong.
    pub fn set_parameters_flat(&mut self, flat: &[f32]) -> Result<()> {
        if flat.len() != self.count {
            return Err(Error::config(
                "parameters",
                format!(
                    "flat parameter vector has {} values, model `{}` has {}",
                    flat.len(),
                    self.spec,
                    self.count
                ),
            ));
        }
        if let Some(bad) = flat.iter().position(|x| !x.is_finite()) {
            return Err(Error::config(
                "parameters",
                format!("flat parameter vector has a non-finite value at index {bad}"),
            ));
        }
        let mut offset = 0;
        for (_, var) in &self.params {
            let n = var.elem_count();
            let t = Tensor::from_slice(&flat[offset..offset + n], var.shape(), var.device())?;
            var.set(&t)?;
            offset += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fm() -> DataSpec {
        wdml_proto::data::fashion_mnist()
    }

    #[test]
    fn parameter_counts() {
        let mlp = Network::new(&ModelSpec::default_mlp(), &fm(), 1).unwrap();
        assert_eq!(mlp.parameter_count(), 235_146);
        assert_eq!(ModelSpec::default_mlp().parameter_count(&fm()), 235_146);
        let cnn = Network::new(&ModelSpec::default_cnn(), &fm(), 1).unwrap();
        assert_eq!(cnn.parameter_count(), 206_922);
        assert_eq!(ModelSpec::default_cnn().parameter_count(&fm()), 206_922);
        for s in ["mlp:512", "mlp:32,16,8", "cnn:8,16,64", "cnn:1,1,1"] {
            let spec: ModelSpec = s.parse().unwrap();
            let net = Network::new(&spec, &fm(), 0).unwrap();
            assert_eq!(net.parameter_count(), spec.parameter_count(&fm()), "{s}");
        }
    }

    #[test]
    fn forward_shapes() {
        let xs = Tensor::zeros((3, 784), DType::F32, &Device::Cpu).unwrap();
        for spec in [ModelSpec::default_mlp(), "cnn:4,8,16".parse().unwrap()] {
            let net = Network::new(&spec, &fm(), 5).unwrap();
            assert_eq!(net.forward(&xs).unwrap().dims(), &[3, 10], "{spec}");
        }
    }

    /// The layers at either end follow from the data: any image a CNN's pooling allows,
    /// any feature vector for an MLP, 2 to 256 classes.
    #[test]
    fn models_take_their_input_and_classes_from_the_data() {
        let data = |shape: &[u32], classes| DataSpec {
            shape: shape.to_vec(),
            classes,
        };
        for (spec, d) in [
            ("cnn:4,8,16", data(&[3, 32, 32], 100)),
            ("cnn:4,8,16", data(&[1, 8, 8], 10)),
            ("mlp:16", data(&[30], 2)),
            ("mlp:16", data(&[3, 32, 32], 256)),
        ] {
            let spec: ModelSpec = spec.parse().unwrap();
            let net = Network::new(&spec, &d, 3).unwrap();
            assert_eq!(net.parameter_count(), spec.parameter_count(&d), "{spec} on {d}");
            let xs = Tensor::ones((2, d.sample_len()), DType::F32, &Device::Cpu).unwrap();
            assert_eq!(
                net.forward(&xs).unwrap().dims(),
                &[2, d.classes as usize],
                "{spec} on {d}"
            );
        }
        // conv1 has 3·9 weights per output channel for colour images.
        let cnn: ModelSpec = "cnn:4,8,16".parse().unwrap();
        let colour = data(&[3, 32, 32], 10);
        assert_eq!(
            cnn.parameter_count(&colour),
            (27 * 4 + 4) + (36 * 8 + 8) + (8 * 8 * 8 * 16 + 16) + (16 * 10 + 10)
        );
        for (d, says) in [
            (
                data(&[13], 3),
                "a CNN learns images [channels, height, width]; this data's samples are [13]",
            ),
            (data(&[1, 6, 6], 10), "multiples of 4; these images are 6×6"),
        ] {
            let error = cnn.fits(&d).unwrap_err().to_string();
            assert!(error.contains(says), "{error}");
            assert!(Network::new(&cnn, &d, 0).is_err());
        }
        let error = "mlp:4096"
            .parse::<ModelSpec>()
            .unwrap()
            .fits(&data(&[3, 128, 128], 10))
            .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("more than 50000000 parameters on [3, 128, 128] × 10 classes"),
            "{error}"
        );
    }

    #[test]
    fn parameter_names_are_sorted_and_stable() {
        let net = Network::new(&ModelSpec::default_cnn(), &fm(), 0).unwrap();
        let names: Vec<&str> = net.named_parameters().iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "conv1.bias",
                "conv1.weight",
                "conv2.bias",
                "conv2.weight",
                "fc1.bias",
                "fc1.weight",
                "fc2.bias",
                "fc2.weight"
            ]
        );
    }

    #[test]
    fn seeded_init_is_deterministic() {
        for spec in [ModelSpec::default_mlp(), ModelSpec::default_cnn()] {
            let a = Network::new(&spec, &fm(), 42).unwrap().parameters_flat().unwrap();
            let b = Network::new(&spec, &fm(), 42).unwrap().parameters_flat().unwrap();
            let c = Network::new(&spec, &fm(), 43).unwrap().parameters_flat().unwrap();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&a), bits(&b));
            assert_ne!(bits(&a), bits(&c));
        }
    }

    #[test]
    fn init_ranges_follow_fan_in() {
        let net = Network::new(&ModelSpec::default_cnn(), &fm(), 3).unwrap();
        for (name, var) in net.named_parameters() {
            let fan_in: usize = match name.as_str() {
                "conv1.weight" | "conv1.bias" => 9,
                "conv2.weight" | "conv2.bias" => 16 * 9,
                "fc1.weight" | "fc1.bias" => 32 * 49,
                _ => 128,
            };
            let bound = 1.0 / (fan_in as f32).sqrt();
            let v = var.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
            assert!(max <= bound, "{name}: {max} > {bound}");
            // With ≥ 16 draws, the largest magnitude lands in the top half of the range.
            assert!(max > 0.5 * bound, "{name}: {max} vs {bound}");
        }
    }

    #[test]
    fn flat_parameters_round_trip() {
        let spec: ModelSpec = "mlp:8".parse().unwrap();
        let mut a = Network::new(&spec, &fm(), 1).unwrap();
        let b = Network::new(&spec, &fm(), 2).unwrap();
        let flat = b.parameters_flat().unwrap();
        assert_eq!(flat.len(), a.parameter_count());
        a.set_parameters_flat(&flat).unwrap();
        assert_eq!(a.parameters_flat().unwrap(), flat);
        let before = a.parameters_flat().unwrap();
        assert!(a.set_parameters_flat(&flat[1..]).is_err());
        let mut bad = flat.clone();
        bad[3] = f32::NAN;
        assert!(a.set_parameters_flat(&bad).is_err());
        assert_eq!(
            a.parameters_flat().unwrap(),
            before,
            "a rejected vector changes nothing"
        );
    }

    #[test]
    fn spec_parse_and_display() {
        let cases = [
            ("mlp", "mlp:256,128"),
            ("mlp:512", "mlp:512"),
            ("mlp:256,128", "mlp:256,128"),
            (" mlp: 64 , 32 ", "mlp:64,32"),
            ("cnn", "cnn:16,32,128"),
            ("cnn:8,16,64", "cnn:8,16,64"),
            ("CNN", "cnn:16,32,128"),
            ("ext:torch-resnet", "ext:torch-resnet"),
            (" ext: numpy.mlp_2 ", "ext:numpy.mlp_2"),
        ];
        for (input, canonical) in cases {
            let spec: ModelSpec = input.parse().unwrap();
            assert_eq!(spec.to_string(), canonical);
            assert_eq!(canonical.parse::<ModelSpec>().unwrap(), spec);
        }
        assert_eq!(
            "mlp".parse::<ModelSpec>().unwrap(),
            ModelSpec::Mlp { hidden: vec![256, 128] }
        );
        assert_eq!(
            "cnn:8,16,64".parse::<ModelSpec>().unwrap(),
            ModelSpec::Cnn {
                conv1: 8,
                conv2: 16,
                hidden: 64
            }
        );
    }

    #[test]
    fn spec_errors() {
        for bad in [
            "",
            "rnn",
            "mlp:",
            "mlp:0",
            "mlp:256,0",
            "mlp:a",
            "mlp:-3",
            "cnn:8,16",
            "cnn:8,16,64,2",
            "cnn:0,16,64",
            "mlp:10000000",
            "cnn:1,1,99999999999999999999",
            "ext:",
            "ext:Torch",
            "ext:a/b",
            "ext:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        ] {
            let err = bad.parse::<ModelSpec>().unwrap_err().to_string();
            assert!(err.contains("expected `mlp`"), "{bad}: {err}");
        }
        assert!(Network::new(&ModelSpec::Mlp { hidden: vec![] }, &fm(), 0).is_err());
        let external: ModelSpec = "ext:numpy-mlp".parse().unwrap();
        let err = Network::new(&external, &fm(), 0).unwrap_err().to_string();
        assert!(
            err.contains("ext:numpy-mlp is a model of the device's own program"),
            "{err}"
        );
        assert_eq!((external.parameter_count(&fm()), external.flops(&fm()).train()), (0, 0));
        assert!(
            Network::new(
                &ModelSpec::Cnn {
                    conv1: 1,
                    conv2: 0,
                    hidden: 1
                },
                &fm(),
                0
            )
            .is_err()
        );
    }

    #[test]
    fn spec_serde_is_the_string() {
        let spec = ModelSpec::default_cnn();
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(json, "\"cnn:16,32,128\"");
        assert_eq!(serde_json::from_str::<ModelSpec>(&json).unwrap(), spec);
        assert_eq!(
            serde_json::from_str::<ModelSpec>("\"mlp\"").unwrap(),
            ModelSpec::default_mlp()
        );
        assert!(serde_json::from_str::<ModelSpec>("\"mlp:0\"").is_err());
    }
}
