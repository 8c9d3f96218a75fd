//! Scenario files: one TOML describing a whole experiment (the run, training, the
//! exchange, the data split, the coordinator's timing, the nodes). The launcher and
//! the coordinator read the same file; any field can be overridden from the command
//! line with `--set section.field=value`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use wdml_channel::{ChannelConfig, Mobility, ResolvedChannel, purpose};
use wdml_node::data::{Description, Location, Normalisation, Partition};
use wdml_node::device::DeviceProfile;
use wdml_node::learn::LearnerConfig;
use wdml_node::model::ModelSpec;
use wdml_node::strategy;
use wdml_proto::{AdversaryKind, Aggregate, Algorithm, Encoding, RoundPolicy, RunSettings};
use wdml_transport::Security;

/// The quickstart scenario, built in so `wdml run` works with no file at all.
pub const QUICKSTART: &str = include_str!("../examples/quickstart.toml");

/// A whole experiment. Every field has a default; see `examples/quickstart.toml`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Scenario {
    pub run: RunSection,
    pub train: TrainSection,
    pub exchange: ExchangeSection,
    pub data: DataSection,
    pub nodes: NodesSection,
    pub coordinator: CoordinatorSection,
    pub adversary: AdversarySection,
    /// The privacy audit and differential privacy (DP-SGD).
    pub privacy: PrivacySection,
    /// The radio between the nodes: a preset (`ideal`, `lan`, `wifi`, `d2d-urban`,
    /// `d2d-edge`) and overrides; see channel/README.md.
    pub channel: ChannelConfig,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunSection {
    /// Names the run directory and the run id.
    pub name: String,
    /// Seeds everything: split, models, batches, public batches, round tokens.
    pub seed: u64,
    pub rounds: u32,
    /// `dml` (share predictions on the public batch), `local` (no exchange), `fedavg`
    /// (gossip averaging of full parameters; identical models only), `fedmd` (FedMD:
    /// digest the mean logits, then revisit the private data) or `dsfl` (DS-FL: distil
    /// toward the entropy-reduced mean of the softmax outputs, then train privately).
    pub algorithm: Algorithm,
}

impl Default for RunSection {
    fn default() -> Self {
        RunSection {
            name: "wdml".into(),
            seed: 42,
            rounds: 10,
            algorithm: Algorithm::Dml,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSection {
    /// Local optimiser steps per round (E).
    pub local_steps: u32,
    pub batch_size: u32,
    /// Adam's learning rate.
    pub learning_rate: f64,
    /// Softmax temperature T of the distillation term.
    pub temperature: f64,
    /// Weight λ of the distillation term.
    pub kl_weight: f64,
    /// Public images per local step in the distillation term, cycling through the
    /// round's public batch (0: all of them at every step). Fewer cut dml's compute.
    pub distill_batch: u32,
    pub aggregate: Aggregate,
    /// `fedmd`'s digest and `dsfl`'s distillation: optimiser steps on the public batch
    /// alone (`distill_batch` rows each) before the `local_steps` private steps; 0: as
    /// many as `local_steps` (then a round computes exactly what a dml round does).
    pub public_steps: u32,
    /// `dsfl`: the temperature of Entropy Reduction Aggregation, softmax(mean / T), in
    /// (0, 1]; the paper's 0.1.
    pub era_temperature: f64,
}

impl Default for TrainSection {
    fn default() -> Self {
        TrainSection {
            local_steps: 10,
            batch_size: 32,
            learning_rate: 1e-3,
            temperature: 1.0,
            kl_weight: 1.0,
            distill_batch: 0,
            aggregate: Aggregate::Mean,
            public_steps: 0,
            era_temperature: 0.1,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExchangeSection {
    /// Rows of the public batch each round.
    pub public_batch: u32,
    /// Wire encoding of the predictions: `f32`, `f16`, `q8`, `q4` or `topk`.
    pub encoding: Encoding,
    /// With `encoding = "topk"`: the logits kept per row (1 to 9).
    pub top_k: u32,
    /// The largest message a node accepts.
    pub max_message_bytes: u64,
    /// The longest a node waits for its neighbours' predictions in a round.
    pub timeout_ms: u64,
    /// The longest a node waits for a connection to a neighbour (TCP and TLS): a
    /// neighbour nobody can reach (a firewalled port, a wrong `--advertise`) costs this
    /// per round, not `timeout_ms`, until the coordinator takes it out of the exchange.
    /// Raise it when hundreds of nodes share a few cores (their handshakes queue).
    pub connect_timeout_ms: u64,
    /// Wait for each neighbour only as long as the radio and its recent punctuality
    /// justify (at most `timeout_ms`); false: always all of `timeout_ms`.
    pub adaptive_deadline: bool,
    /// A neighbour whose predictions are missing this many exchanges in a row is
    /// reported to the coordinator and not waited for until they arrive again; 0: never.
    pub silent_after: u32,
    /// Use a neighbour's message up to this many rounds after the round it was computed
    /// in (on that round's public batch), when no newer one came; 0: only the current
    /// round's. With `quorum` or `deadline` rounds, a straggler's work still counts.
    pub max_staleness: u32,
    /// `a` in the weight `(1 + age)^-a` of a message `age` rounds old (FedAsync's
    /// polynomial staleness function).
    pub staleness_decay: f64,
}

impl Default for ExchangeSection {
    fn default() -> Self {
        ExchangeSection {
            public_batch: 128,
            encoding: Encoding::Q8,
            top_k: 2,
            max_message_bytes: 16 << 20,
            timeout_ms: 10_000,
            connect_timeout_ms: 2_000,
            adaptive_deadline: true,
            silent_after: 2,
            max_staleness: 0,
            staleness_decay: 0.5,
        }
    }
}

/// Nodes that misbehave on purpose: for research on robustness, and for tests.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdversarySection {
    /// The adversarial nodes' ids (none by default).
    pub nodes: Vec<u32>,
    /// `confident-wrong` (a large logit on a class its own model does not pick) or
    /// `silent` (a member that never sends its predictions).
    pub kind: AdversaryKind,
}

impl Default for AdversarySection {
    fn default() -> Self {
        AdversarySection {
            nodes: Vec::new(),
            kind: AdversaryKind::ConfidentWrong,
        }
    }
}

/// What a node's neighbours may learn of its private data, measured and bounded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrivacySection {
    /// Every node records what its neighbours receive of it each round
    /// (`audit.jsonl` in its state directory), for `wdml privacy RUN` to attack.
    pub audit: bool,
    /// DP-SGD's noise multiplier σ (the noise's standard deviation is σ·C); 0: no DP.
    pub noise_multiplier: f64,
    /// DP-SGD's per-example clipping norm C.
    pub max_grad_norm: f64,
    /// The δ of each node's (ε, δ) guarantee.
    pub delta: f64,
    /// Each node's privacy budget ε; 0: none.
    pub epsilon: f64,
}

impl Default for PrivacySection {
    fn default() -> Self {
        let p = wdml_node::plan::Privacy::default();
        PrivacySection {
            audit: p.audit,
            noise_multiplier: p.noise_multiplier,
            max_grad_norm: p.max_grad_norm,
            delta: p.delta,
            epsilon: p.epsilon,
        }
    }
}

impl PrivacySection {
    /// The wire form, as every node receives it.
    fn to_proto(&self) -> wdml_proto::Privacy {
        wdml_proto::Privacy {
            audit: self.audit,
            noise_multiplier: self.noise_multiplier,
            max_grad_norm: self.max_grad_norm,
            delta: self.delta,
            epsilon: self.epsilon,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataSection {
    /// The dataset: a directory of IDX files (e.g. /usr/share/datasets/fashion-mnist)
    /// or another format `wdml_node::data` reads; absent: the embedded Fashion-MNIST
    /// subset.
    pub dir: Option<PathBuf>,
    /// Which labels, where the format has a choice (a CSV file's label column).
    pub labels: Option<String>,
    /// Another dataset of the same sample shape to draw the public pool from (its
    /// labels never used), as FedMD does; absent: the pool comes from the training set.
    pub public: Option<PathBuf>,
    /// Per-channel means and standard deviations to normalise with; absent: the
    /// dataset's own (Fashion-MNIST's for IDX 28×28 images, else computed from the
    /// training set).
    pub mean: Option<Vec<f32>>,
    pub std: Option<Vec<f32>>,
    /// `iid`, `dirichlet:<α>` (plain per-class Dirichlet, Flower Datasets' default),
    /// `dirichlet-balanced:<α>` (FedLab's / NIID-Bench's capped variant),
    /// `dirichlet-per-node:<α>` (Hsu et al. 2019) or `shards:<per node>`.
    pub partition: String,
    /// Training images set aside as the public pool (labels never used).
    pub public_pool: u32,
    /// Test images every node evaluates on; 0 for the whole test set.
    pub test_size: u32,
    /// Training samples held out as the validation set, in no node's shard: every node
    /// evaluates on it each round, so rounds, targets and settings are chosen on it and
    /// not on the test set. 0 (the default): none.
    pub validation: u32,
    /// The share of each node's private shard also put in the public pool, in [0, 1]:
    /// those rows are the node's members for a membership attack (`wdml privacy`), the
    /// rest of the pool no node's. 0 (the default): none.
    pub public_overlap: f64,
}

impl Default for DataSection {
    fn default() -> Self {
        DataSection {
            dir: None,
            labels: None,
            public: None,
            mean: None,
            std: None,
            partition: "dirichlet:0.5".into(),
            public_pool: 1000,
            test_size: 0,
            validation: 0,
            public_overlap: 0.0,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodesSection {
    pub count: u32,
    /// Node k runs `models[k % models.len()]`: "mlp:256,128", "cnn:16,32,128", …
    pub models: Vec<String>,
    /// Node k emulates the device `devices[k % devices.len()]`: `microcontroller`,
    /// `phone`, `laptop` or `custom:<GFLOP/s>:<W>`. Its compute time and energy then
    /// follow from the FLOPs it performs, paced by `channel.time_scale`. Empty (the
    /// default): no device, the host's speed.
    pub devices: Vec<String>,
    /// Instead of `devices`: profiles and the share of the nodes each gets, e.g.
    /// `{ phone = 0.75, "custom:2.08:2" = 0.25 }`; the shares become whole counts
    /// (largest remainders) and go to the nodes in an order shuffled by the run seed.
    pub device_mix: std::collections::BTreeMap<String, f64>,
    /// The program `wdml run` starts for the nodes whose model is external (`ext:NAME`,
    /// e.g. a Python device), instead of `wdml node`; it finds its id, the coordinator
    /// and its certificates in `WDML_*` variables (docs/python.md).
    pub programs: Vec<Program>,
}

/// A device program for some nodes: `{ ids = [2], command = ["python3", "dev.py"] }`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Program {
    pub ids: Vec<u32>,
    /// The program and its arguments, run from the directory `wdml run` runs in.
    pub command: Vec<String>,
}

impl Default for NodesSection {
    fn default() -> Self {
        NodesSection {
            count: 4,
            models: vec!["mlp".into(), "cnn".into()],
            devices: Vec::new(),
            device_mix: Default::default(),
            programs: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoordinatorSection {
    /// Start with this many nodes if not all joined within the join timeout
    /// (default: all of them).
    pub min_nodes: Option<u32>,
    pub join_timeout_ms: u64,
    pub round_timeout_ms: u64,
    pub heartbeat_interval_ms: u32,
    pub heartbeat_timeout_ms: u64,
    /// A node that joined must open its Sync stream (after loading its data) within
    /// this long, or its id is released for another join.
    pub sync_timeout_ms: u64,
    /// When a round closes: `sync` (every live node reported), `quorum` (a fraction of
    /// them, plus a grace period) or `deadline` (a fixed emulated time after its start).
    /// Nodes still working when it closes finish and go on with the newest round.
    pub round_policy: RoundPolicy,
    /// `quorum`: the fraction of the round's nodes whose reports close it …
    pub quorum: f64,
    /// … after this many more emulated seconds. Nodes also wait this long for their
    /// neighbours once that fraction of them was heard.
    pub grace_s: f64,
    /// `deadline`: emulated seconds from a round's start to its close (nodes stop
    /// waiting for their neighbours then too).
    pub deadline_s: f64,
    /// A run is finished only if every round it closed had reports from at least this
    /// fraction of its nodes; otherwise it ends unfinished, saying which round had how
    /// many (a run of 256 nodes in which 232 were gone is not a run of 256 nodes).
    pub min_participation: f64,
}

impl Default for CoordinatorSection {
    fn default() -> Self {
        CoordinatorSection {
            min_nodes: None,
            join_timeout_ms: 60_000,
            round_timeout_ms: 120_000,
            heartbeat_interval_ms: 500,
            heartbeat_timeout_ms: 3_000,
            sync_timeout_ms: 60_000,
            round_policy: RoundPolicy::Sync,
            quorum: 0.75,
            grace_s: 0.0,
            deadline_s: 0.0,
            min_participation: 0.5,
        }
    }
}

impl Scenario {
    /// Reads a scenario file (or the built-in quickstart for `None`) and applies
    /// `key=value` overrides, then validates it.
    pub fn load(path: Option<&Path>, overrides: &[String]) -> Result<Scenario> {
        let text = match path {
            Some(path) => read_bounded(path)?,
            None => QUICKSTART.to_string(),
        };
        let source = path.map_or("the built-in quickstart".to_string(), |p| p.display().to_string());
        Scenario::parse(&text, &source, overrides)
    }

    /// Parses scenario `text` (named `source` in errors), applies the overrides and
    /// validates the result.
    pub fn parse(text: &str, source: &str, overrides: &[String]) -> Result<Scenario> {
        let mut table: toml::Table = toml::from_str(text).with_context(|| format!("{source} is not valid TOML"))?;
        for assignment in overrides {
            apply_override(&mut table, assignment)?;
        }
        // The path names the field: "run.algorithm: unknown variant `x`, expected …".
        let scenario: Scenario = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| anyhow::anyhow!("{source}: {}: {}", e.path(), e.inner().message()))?;
        scenario.validate()?;
        Ok(scenario)
    }

    /// Checks every field, naming the first one out of range.
    pub fn validate(&self) -> Result<()> {
        if self.run.name.is_empty()
            || !self
                .run
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            bail!(
                "run.name {:?} must be non-empty letters, digits, '-', '_' or '.'",
                self.run.name
            );
        }
        positive("run.rounds", u64::from(self.run.rounds))?;
        positive("nodes.count", u64::from(self.nodes.count))?;
        if self.nodes.models.is_empty() {
            bail!("nodes.models must list at least one model, e.g. [\"mlp\", \"cnn\"]");
        }
        for (i, model) in self.nodes.models.iter().enumerate() {
            model
                .parse::<ModelSpec>()
                .with_context(|| format!("nodes.models[{i}]"))?;
        }
        if !self.nodes.device_mix.is_empty() && !self.nodes.devices.is_empty() {
            bail!(
                "nodes.device_mix: give either nodes.devices (a list by node) or nodes.device_mix (shares), not both"
            );
        }
        for (name, share) in &self.nodes.device_mix {
            if let Err(e) = name.parse::<DeviceProfile>() {
                bail!("nodes.device_mix.{name}: {e}");
            }
            if !(share.is_finite() && *share > 0.0) {
                bail!("nodes.device_mix.{name}: the share must be a positive number, got {share}");
            }
        }
        for (i, device) in self.nodes.devices.iter().enumerate() {
            if let Err(e) = device.parse::<DeviceProfile>() {
                bail!("nodes.devices[{i}]: {e}");
            }
        }
        positive("train.local_steps", u64::from(self.train.local_steps))?;
        positive("train.batch_size", u64::from(self.train.batch_size))?;
        self.learner().validate()?;
        positive("exchange.public_batch", u64::from(self.exchange.public_batch))?;
        positive("exchange.timeout_ms", self.exchange.timeout_ms)?;
        positive("exchange.connect_timeout_ms", self.exchange.connect_timeout_ms)?;
        let participation = self.coordinator.min_participation;
        if !(participation.is_finite() && participation > 0.0 && participation <= 1.0) {
            bail!(
                "coordinator.min_participation = {participation} must be a fraction in (0, 1]: the share of the nodes every round must hear from (0.5: half)"
            );
        }
        if self.exchange.connect_timeout_ms > self.exchange.timeout_ms {
            bail!(
                "exchange.connect_timeout_ms ({}) must not exceed exchange.timeout_ms ({}): lower it, or raise the exchange timeout",
                self.exchange.connect_timeout_ms,
                self.exchange.timeout_ms
            );
        }
        if self.exchange.max_message_bytes == 0 || self.exchange.max_message_bytes > wdml_node::plan::MAX_MESSAGE_BYTES
        {
            bail!(
                "exchange.max_message_bytes must be between 1 and {}",
                wdml_node::plan::MAX_MESSAGE_BYTES
            );
        }
        self.check_external_models()?;
        if strategy::same_model(self.run.algorithm) && self.nodes.models.len() > 1 {
            let distinct: std::collections::BTreeSet<String> =
                (0..self.nodes.count).map(|k| self.model_of(k).to_string()).collect();
            if distinct.len() > 1 {
                bail!(
                    "nodes.models: {} averages parameters, so every node needs the same model; got {}",
                    self.run.algorithm,
                    distinct.into_iter().collect::<Vec<_>>().join(", ")
                );
            }
        }
        // Every model must take the data, and its message fit (a parameter message
        // grows with the model).
        let data = self.data()?.spec;
        for node in 0..self.nodes.count.min(self.nodes.models.len() as u32) {
            let model = self.model_of(node);
            if let Err(e) = model.fits(&data) {
                bail!("nodes.models: {e} (the data is {data})");
            }
            let Some(shape) = strategy::message(
                self.run.algorithm,
                self.exchange.public_batch,
                self.exchange.encoding,
                self.exchange.top_k,
                data.classes,
                model.parameter_count(&data),
            ) else {
                break;
            };
            if shape.bytes() > self.exchange.max_message_bytes {
                // A message whose size does not depend on the model is the public batch's.
                let model_free = strategy::message(
                    self.run.algorithm,
                    self.exchange.public_batch,
                    self.exchange.encoding,
                    self.exchange.top_k,
                    data.classes,
                    0,
                );
                let field = if model_free == Some(shape) {
                    "exchange.public_batch"
                } else {
                    "nodes.models"
                };
                bail!(
                    "{field}: one {} message of {model} is {} × {} values in {} = {} bytes, more than \
                     exchange.max_message_bytes ({})",
                    self.run.algorithm,
                    shape.rows,
                    shape.cols,
                    shape.encoding,
                    shape.bytes(),
                    self.exchange.max_message_bytes
                );
            }
        }
        self.data.partition.parse::<Partition>()?;
        positive("data.public_pool", u64::from(self.data.public_pool))?;
        wdml_node::data::check_public_overlap(self.data.public_overlap, self.data.public.is_some())?;
        if self.train.distill_batch > self.exchange.public_batch {
            bail!(
                "train.distill_batch ({}) is larger than exchange.public_batch ({}); 0 means all of it",
                self.train.distill_batch,
                self.exchange.public_batch
            );
        }
        self.public_from()?;
        if self.exchange.public_batch > self.data.public_pool {
            bail!(
                "exchange.public_batch ({}) is larger than data.public_pool ({})",
                self.exchange.public_batch,
                self.data.public_pool
            );
        }
        self.channel.validate()?;
        if self.nodes.count > MAX_NODES {
            bail!(
                "nodes.count {} is more than the {MAX_NODES} nodes a run can describe (the neighbour tables \
                 alone would not fit in memory)",
                self.nodes.count
            );
        }
        // The node's own check, so both say the same; the accountant's (can the budget
        // be met?) comes with DP-SGD.
        wdml_node::plan::Privacy::check(&self.privacy.to_proto()).map_err(|e| anyhow::anyhow!("{e}"))?;
        if self.privacy.audit
            && let Some(program) = self.nodes.programs.first()
        {
            bail!(
                "privacy.audit: nodes {:?} run a device program of their own, which keeps no state directory for \
                 the audit's record; turn the audit off, or run them as built-in nodes",
                program.ids
            );
        }
        // DP-SGD clips each example's gradient: only a model wdml node builds has them
        // (a device program always runs a model of its own).
        if (self.privacy.noise_multiplier > 0.0 || self.privacy.epsilon > 0.0)
            && let Some(model) = (0..self.nodes.count)
                .map(|k| self.model_of(k))
                .find(|m| m.is_external())
        {
            bail!(
                "privacy.noise_multiplier: {model} is a model of the device's own program, whose per-example \
                 gradients DP-SGD cannot clip; use models wdml node builds, or turn DP off (privacy.noise_multiplier \
                 = 0 and privacy.epsilon = 0)"
            );
        }
        if let Some(bad) = self.adversary.nodes.iter().find(|&&n| n >= self.nodes.count) {
            bail!(
                "adversary.nodes: node {bad} is not in the run (nodes 0 to {})",
                self.nodes.count - 1
            );
        }
        let config = self.coordinator_config(PathBuf::new(), Security::Insecure, false)?;
        config.validate()?;
        // Each StartRound carries the node's neighbours (an address each): it must fit
        // in one gRPC message.
        let largest = start_round_bytes(&config.neighbours);
        if largest > MAX_START_ROUND_BYTES {
            bail!(
                "nodes.count {} with channel.topology {}: a round's start would carry {:.1} MiB of neighbour \
                 addresses to one node, more than the {} MiB a message may have; use fewer nodes or a sparser \
                 topology (e.g. {{ k_nearest = {{ k = 8 }} }})",
                self.nodes.count,
                serde_json::to_string(&self.resolved_channel()?.topology)?,
                largest as f64 / (1 << 20) as f64,
                MAX_START_ROUND_BYTES >> 20
            );
        }
        // What every node checks at Join, checked here first: a run that no node could
        // join is refused before anything starts.
        wdml_node::plan::RunPlan::from_settings(self.settings()?).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(())
    }

    /// Takes two training steps (CE and distillation) of every model in the scenario on a
    /// small fixed batch, and refuses settings under which the losses or the parameters
    /// stop being finite, naming the field: a temperature so small that the softened
    /// logits overflow, a temperature or distillation weight so large that the
    /// distillation term's weight `λ·T²` does, a learning rate so large that the first
    /// update blows up.
    pub fn preflight(&self) -> Result<()> {
        use candle_core::{Device, Tensor};
        use wdml_node::learn::Learner;
        const ROWS: usize = 8;
        // The run's shapes, with fixed pseudo-random values in [0, 1): a batch like any
        // other.
        let data = self.data()?.spec;
        let (values, classes) = (data.sample_len(), data.classes as usize);
        let mut state: u32 = 0x2545_f491;
        let pixels: Vec<f32> = (0..ROWS * values)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (state >> 8) as f32 / (1u32 << 24) as f32
            })
            .collect();
        let device = Device::Cpu;
        let images = Tensor::from_vec(pixels, (ROWS, values), &device)?;
        let labels = Tensor::from_vec((0..ROWS as u32).map(|i| i % classes as u32).collect(), ROWS, &device)?;
        let uniform = 1.0 / classes as f32;
        let target = Tensor::from_vec(vec![uniform; ROWS * classes], (ROWS, classes), &device)?;
        let models: std::collections::BTreeSet<String> =
            (0..self.nodes.count).map(|k| self.model_of(k).to_string()).collect();
        for model in models {
            let spec: ModelSpec = model.parse()?;
            // An external model is its own program's: nothing to try here.
            if spec.is_external() {
                continue;
            }
            let mut learner = Learner::new(&spec, &data, self.learner(), 1)?;
            for step in 1..=2 {
                // A loss measured before any update can only overflow in the softened
                // logits; parameters (or a later loss) overflow through the update.
                let loss_finite = learner
                    .train_step(&images, &labels, Some((&images, &target)))
                    .is_ok_and(|losses| losses.total.is_finite());
                let parameters_finite = learner.parameters_flat()?.iter().all(|p| p.is_finite());
                let (field, value, advice, cause) = match (loss_finite, parameters_finite) {
                    (true, true) => continue,
                    (false, _) if step == 1 => self.distillation_at_fault(&learner, &images, &target)?,
                    _ => (
                        "train.learning_rate",
                        self.train.learning_rate,
                        "smaller",
                        "the parameters overflow",
                    ),
                };
                // Debug: 1e300 as 1e300, not as its 301 digits.
                bail!(
                    "{field} = {value:?} makes the training of {model} non-finite within its first \
                     steps ({cause}); choose a {advice} value"
                );
            }
        }
        Ok(())
    }

    /// The setting to blame for a first step whose loss is not finite, the way to move
    /// it, and why. The step adds `λ·T²·KL(target ‖ softmax(logits/T))` to a finite
    /// cross-entropy: either the KL itself overflows (the logits divided by a tiny T),
    /// or its weight `λ·T²` does, and then the larger of λ and T² is at fault. (Blaming
    /// the temperature for every first step, a huge λ was refused as a temperature, and
    /// a huge T told to grow.)
    fn distillation_at_fault(
        &self,
        learner: &wdml_node::learn::Learner,
        images: &candle_core::Tensor,
        target: &candle_core::Tensor,
    ) -> Result<(&'static str, f64, &'static str, &'static str)> {
        let (temperature, kl_weight) = (self.train.temperature, self.train.kl_weight);
        // A step whose loss is not finite leaves the parameters as they were, and the
        // public batch is `images`: these are the logits of that step's KL.
        let kl = wdml_node::learn::kl_to_target(&learner.logits(images)?, target, temperature)?.to_scalar::<f32>()?;
        let weight_overflows = "the distillation term's weight train.kl_weight × train.temperature² overflows";
        Ok(if !kl.is_finite() {
            (
                "train.temperature",
                temperature,
                "larger",
                "the softened logits overflow",
            )
        } else if temperature * temperature >= kl_weight {
            ("train.temperature", temperature, "smaller", weight_overflows)
        } else {
            ("train.kl_weight", kl_weight, "smaller", weight_overflows)
        })
    }

    pub fn learner(&self) -> LearnerConfig {
        LearnerConfig {
            learning_rate: self.train.learning_rate,
            temperature: self.train.temperature,
            kl_weight: self.train.kl_weight,
        }
    }

    /// Node k's model.
    /// External models (`ext:NAME`, a model of the device's own program): no parameter
    /// averaging (their parameters are their program's), no device profile (their FLOPs
    /// are unknown), and a program only for them, each node at most once.
    fn check_external_models(&self) -> Result<()> {
        let mut programmed = std::collections::BTreeSet::new();
        for (i, program) in self.nodes.programs.iter().enumerate() {
            if program.command.first().is_none_or(|c| c.trim().is_empty()) {
                bail!(
                    "nodes.programs[{i}].command: give the program and its arguments, e.g. [\"python3\", \"device.py\"]"
                );
            }
            if program.ids.is_empty() {
                bail!("nodes.programs[{i}].ids: give the ids of the nodes it runs");
            }
            for &id in &program.ids {
                if id >= self.nodes.count {
                    bail!(
                        "nodes.programs[{i}].ids: node {id} is out of range (nodes.count is {})",
                        self.nodes.count
                    );
                }
                if !self.model_of(id).is_external() {
                    bail!(
                        "nodes.programs[{i}].ids: node {id} runs {}, a model wdml node builds; a program \
                         runs only a node whose model is external (ext:NAME)",
                        self.model_of(id)
                    );
                }
                if !programmed.insert(id) {
                    bail!("nodes.programs[{i}].ids: node {id} already has a program");
                }
            }
        }
        for node in 0..self.nodes.count {
            let model = self.model_of(node);
            if !model.is_external() {
                continue;
            }
            if strategy::same_model(self.run.algorithm) {
                bail!(
                    "nodes.models: {} averages parameters, which node {node}'s external model ({model}) \
                     keeps in its own program",
                    self.run.algorithm
                );
            }
            if strategy::public_alone(self.run.algorithm) {
                bail!(
                    "nodes.models: {} trains on the public batch alone, a step node {node}'s external model \
                     ({model}) does not offer (its program trains only through train_step)",
                    self.run.algorithm
                );
            }
            if self.device_of(node).is_some() {
                bail!(
                    "nodes.devices: node {node} runs an external model ({model}) whose FLOPs are unknown, \
                     so no device profile can time it"
                );
            }
        }
        Ok(())
    }

    /// The program that runs node `id`, if the scenario gives one.
    pub fn program_of(&self, id: u32) -> Option<&[String]> {
        self.nodes
            .programs
            .iter()
            .find(|p| p.ids.contains(&id))
            .map(|p| p.command.as_slice())
    }

    pub fn model_of(&self, node: u32) -> ModelSpec {
        let models = &self.nodes.models;
        models[node as usize % models.len()].parse().expect("validated")
    }

    /// Node k's device, if the scenario gives devices.
    pub fn device_of(&self, node: u32) -> Option<DeviceProfile> {
        let devices = &self.nodes.devices;
        if !self.nodes.device_mix.is_empty() {
            let name = &self.device_assignment()[node as usize];
            return Some(name.parse().expect("validated"));
        }
        (!devices.is_empty()).then(|| devices[node as usize % devices.len()].parse().expect("validated"))
    }

    /// `nodes.device_mix` made concrete: each profile's share of the nodes as a whole
    /// count (largest remainders, ties to the name first in order), the list shuffled
    /// (Fisher–Yates) with draws derived from the run seed, so the same seed gives the
    /// same devices to the same nodes.
    fn device_assignment(&self) -> Vec<String> {
        let n = self.nodes.count as usize;
        let total: f64 = self.nodes.device_mix.values().sum();
        let exact: Vec<(&String, f64)> = self
            .nodes
            .device_mix
            .iter()
            .map(|(name, share)| (name, share / total * n as f64))
            .collect();
        let mut counts: Vec<usize> = exact.iter().map(|(_, e)| e.floor() as usize).collect();
        let mut order: Vec<usize> = (0..exact.len()).collect();
        order.sort_by(|&a, &b| (exact[b].1 - exact[b].1.floor()).total_cmp(&(exact[a].1 - exact[a].1.floor())));
        for &i in order.iter().cycle().take(n - counts.iter().sum::<usize>()) {
            counts[i] += 1;
        }
        let mut names: Vec<String> = exact
            .iter()
            .zip(&counts)
            .flat_map(|((name, _), &count)| std::iter::repeat_n((*name).clone(), count))
            .collect();
        for i in (1..names.len()).rev() {
            let draw = wdml_channel::derive_external_seed(self.run.seed, &[purpose::DEVICES, i as u64]);
            names.swap(i, (draw % (i as u64 + 1)) as usize);
        }
        names
    }

    /// The scenario as the run directory's `config.json` records it: every field, and
    /// under `dataset` what the data turned out to be (its name, sample shape, classes
    /// and normalisation).
    fn resolved(&self) -> Result<serde_json::Value> {
        let mut value = serde_json::to_value(self)?;
        let data = self.data()?;
        value["dataset"] = serde_json::json!({
            "name": data.name,
            "shape": data.spec.shape,
            "classes": data.spec.classes,
            "normalisation": { "mean": data.normalisation.mean, "std": data.normalisation.std },
        });
        Ok(value)
    }

    /// Where the data is.
    pub fn location(&self) -> Location {
        Location {
            path: self.data.dir.clone(),
            labels: self.data.labels.clone(),
        }
    }

    /// How the run splits its data (every node draws its shard from this), with
    /// `public_from` the size of the public set's own training part (`data.public`; see
    /// [`Scenario::public_from`]).
    pub fn split_config(&self, public_from: Option<usize>) -> Result<wdml_node::data::SplitConfig> {
        Ok(wdml_node::data::SplitConfig {
            seed: self.run.seed,
            nodes: self.nodes.count as usize,
            partition: self.data.partition.parse()?,
            public_pool: self.data.public_pool as usize,
            test_size: self.data.test_size as usize,
            validation: self.data.validation as usize,
            public_from,
            public_overlap: self.data.public_overlap,
        })
    }

    /// The size of the public dataset's training set (`data.public`), checked to have
    /// the run's sample shape; `None` without one.
    pub fn public_from(&self) -> Result<Option<usize>> {
        let Some(path) = &self.data.public else {
            return Ok(None);
        };
        let public = wdml_node::data::Dataset::load_labels(&Location::at(Some(path)))
            .map_err(|e| anyhow::anyhow!("data.public: {e}"))?;
        let run = self.data()?.spec;
        let shape: Vec<usize> = run.shape.iter().map(|&d| d as usize).collect();
        if public.train.shape != shape {
            bail!(
                "data.public: its samples are {:?}, the run's are {shape:?}: the public set must have the \
                 run's sample shape",
                public.train.shape
            );
        }
        Ok(Some(public.train.len()))
    }

    /// The run's data: its shape, classes and normalisation, read from the data
    /// (`data.mean` and `data.std` replace its own normalisation).
    pub fn data(&self) -> Result<Description> {
        let mut description =
            wdml_node::data::describe(&self.location()).map_err(|e| anyhow::anyhow!("data.dir: {e}"))?;
        match (&self.data.mean, &self.data.std) {
            (None, None) => {}
            (Some(mean), Some(std)) => {
                let given = Normalisation {
                    mean: mean.clone(),
                    std: std.clone(),
                };
                let shape: Vec<usize> = description.spec.shape.iter().map(|&d| d as usize).collect();
                given
                    .check(&shape)
                    .map_err(|e| anyhow::anyhow!("data.mean / data.std: {e}"))?;
                description.normalisation = given;
            }
            _ => bail!("data.mean and data.std: give both (one value per channel) or neither"),
        }
        Ok(description)
    }

    /// What every node receives when it joins.
    pub fn settings(&self) -> Result<RunSettings> {
        let data = self.data()?;
        let channel = self.resolved_channel()?;
        let mut settings = RunSettings {
            run_id: format!("{}-{}", self.run.name, self.run.seed),
            seed: self.run.seed,
            rounds: self.run.rounds,
            nodes: self.nodes.count,
            local_steps: self.train.local_steps,
            batch_size: self.train.batch_size,
            learning_rate: self.train.learning_rate,
            temperature: self.train.temperature,
            kl_weight: self.train.kl_weight,
            distill_batch: self.train.distill_batch,
            public_steps: self.train.public_steps,
            era_temperature: self.train.era_temperature,
            public_batch: self.exchange.public_batch,
            channel: serde_json::to_string(&channel).expect("a resolved channel serialises"),
            max_message_bytes: self.exchange.max_message_bytes,
            data_dir: self
                .data
                .dir
                .as_ref()
                .map(|d| d.display().to_string())
                .unwrap_or_default(),
            partition: self.data.partition.clone(),
            public_pool: self.data.public_pool,
            test_size: self.data.test_size,
            validation: self.data.validation,
            public_overlap: self.data.public_overlap,
            data: Some(data.spec),
            normalisation: Some(wdml_proto::Normalisation {
                mean: data.normalisation.mean,
                std: data.normalisation.std,
            }),
            data_labels: self.data.labels.clone().unwrap_or_default(),
            public_dir: self
                .data
                .public
                .as_ref()
                .map(|d| d.display().to_string())
                .unwrap_or_default(),
            heartbeat_interval_ms: self.coordinator.heartbeat_interval_ms,
            models: (0..self.nodes.count).map(|k| self.model_of(k).to_string()).collect(),
            devices: (0..self.nodes.count)
                .filter_map(|k| self.device_of(k))
                .map(|d| d.to_string())
                .collect(),
            adversary: Some(wdml_proto::Adversary {
                nodes: self.adversary.nodes.clone(),
                kind: if self.adversary.nodes.is_empty() {
                    AdversaryKind::Unspecified
                } else {
                    self.adversary.kind
                } as i32,
            }),
            silent_after: self.exchange.silent_after,
            // Checked ≤ timeout_ms, which is checked to fit a u32.
            connect_timeout_ms: u32::try_from(self.exchange.connect_timeout_ms).unwrap_or(u32::MAX),
            adaptive_deadline: self.exchange.adaptive_deadline,
            quorum: self.coordinator.quorum,
            grace_s: self.coordinator.grace_s,
            deadline_s: self.coordinator.deadline_s,
            max_staleness: self.exchange.max_staleness,
            staleness_decay: self.exchange.staleness_decay,
            top_k: self.exchange.top_k,
            privacy: Some(self.privacy.to_proto()),
            ..RunSettings::default()
        };
        settings.set_round_policy(self.coordinator.round_policy);
        settings.set_algorithm(self.run.algorithm);
        settings.set_encoding(self.exchange.encoding);
        settings.set_aggregate(self.train.aggregate);
        Ok(settings)
    }

    /// The coordinator's configuration for a run written to `run_dir`.
    pub fn coordinator_config(
        &self,
        run_dir: PathBuf,
        security: Security,
        overwrite: bool,
    ) -> Result<wdml_coordinator::Config> {
        let c = &self.coordinator;
        Ok(wdml_coordinator::Config {
            channel: self.resolved_channel()?,
            run_dir,
            settings: self.settings()?,
            neighbours: self.neighbours()?,
            min_nodes: c.min_nodes.unwrap_or(self.nodes.count),
            min_participation: c.min_participation,
            join_timeout: Duration::from_millis(c.join_timeout_ms),
            round_timeout: Duration::from_millis(c.round_timeout_ms),
            exchange_timeout: Duration::from_millis(self.exchange.timeout_ms),
            heartbeat_timeout: Duration::from_millis(c.heartbeat_timeout_ms),
            sync_timeout: Duration::from_millis(c.sync_timeout_ms),
            resolved: self.resolved()?,
            security,
            overwrite,
            scenario_toml: Some(self.to_toml()?),
            public_overlap: self.public_overlap()?,
        })
    }

    /// Which public rows are which node's (`data.public_overlap`), for `split.json`:
    /// the split as every node draws it. `None` without the overlap.
    fn public_overlap(&self) -> Result<Option<wdml_coordinator::PublicOverlap>> {
        if self.data.public_overlap == 0.0 {
            return Ok(None);
        }
        let dataset = wdml_node::data::Dataset::load_labels(&self.location())?;
        let split = wdml_node::data::split(&dataset, &self.split_config(self.public_from()?)?)?;
        Ok(Some(wdml_coordinator::PublicOverlap {
            share: self.data.public_overlap,
            public_rows: split.public.len() as u64,
            members: split
                .members
                .iter()
                .map(|rows| rows.iter().map(|&p| p as u64).collect())
                .collect(),
        }))
    }

    /// The `[channel]` section with the preset's values filled in, and a mobility
    /// trace read from its file.
    pub fn resolved_channel(&self) -> Result<ResolvedChannel> {
        let mut resolved = self.channel.resolve()?;
        if let Mobility::Trace(trace) = &mut resolved.mobility
            && trace.samples.is_empty()
        {
            let Some(file) = &trace.file else {
                bail!(
                    "channel.mobility.trace needs a file: {{ trace = {{ file = \"walk.csv\" }} }} (time_s,node,x_m,y_m)"
                );
            };
            let text = read_bounded_as(Path::new(file), MAX_TRACE_BYTES, "mobility trace")?;
            trace.samples = wdml_channel::Trace::parse_csv(&text).with_context(|| format!("trace {file}"))?;
            resolved.mobility.validate()?;
        }
        Ok(resolved)
    }

    /// Each node's radio neighbours, from the channel's topology and placement.
    pub fn neighbours(&self) -> Result<Vec<Vec<u32>>> {
        let resolved = self.resolved_channel()?;
        let channel = resolved.channel(self.run.seed, self.nodes.count as usize)?;
        let adjacency = resolved.topology.adjacency(&channel)?;
        Ok(adjacency
            .into_iter()
            .map(|n| n.into_iter().map(|j| j as u32).collect())
            .collect())
    }

    /// The scenario as TOML, for the run directory.
    pub fn to_toml(&self) -> Result<String> {
        Ok(toml::to_string_pretty(self)?)
    }
}

/// A scenario file is a page of TOML; anything larger is not one.
const MAX_SCENARIO_BYTES: u64 = 1 << 20;

/// A mobility trace is travelled by every node's settings: a few MiB at most.
const MAX_TRACE_BYTES: u64 = 8 << 20;

/// Reads a scenario file, refusing one larger than [`MAX_SCENARIO_BYTES`].
fn read_bounded(path: &Path) -> Result<String> {
    read_bounded_as(path, MAX_SCENARIO_BYTES, "scenario")
}

/// Reads `path` (a `what`), refusing one larger than `max` bytes.
fn read_bounded_as(path: &Path, max: u64, what: &str) -> Result<String> {
    use std::io::Read;
    let file = std::fs::File::open(path).with_context(|| format!("cannot read {what} {}", path.display()))?;
    let mut text = String::new();
    file.take(max + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("cannot read {what} {} (is it UTF-8 text?)", path.display()))?;
    if text.len() as u64 > max {
        bail!(
            "{what} {} is larger than {max} bytes: not a {what} file",
            path.display()
        );
    }
    Ok(text)
}

/// The most nodes a scenario may have.
pub const MAX_NODES: u32 = 4096;
/// The largest StartRound a node accepts (tonic's default decoding limit).
const MAX_START_ROUND_BYTES: usize = 4 << 20;

/// An upper bound on the encoded size of the largest StartRound of a run with these
/// neighbour lists: an address and framing per neighbour, the fixed fields, and at
/// worst every other node listed as absent.
fn start_round_bytes(neighbours: &[Vec<u32>]) -> usize {
    let largest = neighbours.iter().map(Vec::len).max().unwrap_or(0);
    80 * largest + 5 * neighbours.len() + 64
}

fn positive(field: &str, value: u64) -> Result<()> {
    if value == 0 {
        bail!("{field} must be at least 1");
    }
    Ok(())
}

/// Applies `section.field=value` to the raw TOML table. The value is read as TOML
/// (`5`, `0.1`, `"q8"`, `["mlp", "cnn"]`) and, failing that, as a bare string.
fn apply_override(table: &mut toml::Table, assignment: &str) -> Result<()> {
    let (key, raw) = assignment
        .split_once('=')
        .with_context(|| format!("override {assignment:?} must look like section.field=value"))?;
    let value: toml::Value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let path: Vec<&str> = key.trim().split('.').collect();
    let (last, sections) = path.split_last().expect("split yields at least one item");
    let mut node = table;
    for section in sections {
        node = node
            .entry(section.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .with_context(|| format!("override {key}: {section} is not a section"))?;
    }
    node.insert(last.to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every field a scenario file may set, as serde knows it: the names `deny_unknown_fields`
    /// lists when a probe field is refused ("expected one of `a`, `b`, …"). Read from the
    /// types themselves, so a new field is seen without anyone listing it.
    fn fields(table: &str) -> Vec<String> {
        let probe = format!("{table}\nzz_probe = 1\n");
        let error = toml::from_str::<Scenario>(&probe)
            .expect_err("a probe field is refused")
            .to_string();
        let listed = error
            .split("expected one of ")
            .nth(1)
            .or_else(|| error.split("expected ").nth(1))
            .unwrap_or_else(|| panic!("{table}: no field list in {error:?}"));
        listed
            .lines()
            .next()
            .unwrap()
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect()
    }

    /// docs/scenario.md is the scenario's reference: every field of every section has
    /// its row there (radio parameters may instead have theirs in channel/README.md's
    /// table). A field added without its row fails here, naming it.
    #[test]
    fn every_scenario_field_has_a_row_in_the_reference() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let reference = std::fs::read_to_string(root.join("docs/scenario.md")).unwrap();
        let radio = std::fs::read_to_string(root.join("channel/README.md")).unwrap();
        let sections = fields("");
        assert!(sections.contains(&"channel".to_string()), "{sections:?}");
        let mut missing = Vec::new();
        for section in &sections {
            for field in fields(&format!("[{section}]")) {
                let key = format!("`{section}.{field}`");
                let documented =
                    reference.contains(&key) || (section == "channel" && radio.contains(&format!("| `{field}`")));
                if !documented {
                    missing.push(key);
                }
            }
        }
        for field in fields("[[nodes.programs]]") {
            let key = format!("`nodes.programs.{field}`");
            if !reference.contains(&key) {
                missing.push(key);
            }
        }
        assert!(
            missing.is_empty(),
            "scenario fields without a row in docs/scenario.md's reference: {}",
            missing.join(", ")
        );
    }

    #[test]
    fn the_quickstart_is_valid() {
        let s = Scenario::load(None, &[]).unwrap();
        assert_eq!(s.nodes.count, 4);
    }

    #[test]
    fn every_example_scenario_is_valid() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        let mut checked = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                // A scenario whose data this machine lacks (the full Fashion-MNIST, an
                // export of scikit-learn's) is checked in everything else, on the
                // embedded data; reading the scenario is what checks its data.
                let text = std::fs::read_to_string(&path).unwrap();
                let mut table: toml::Table = toml::from_str(&text).unwrap();
                let data = table.get_mut("data").and_then(|d| d.as_table_mut());
                if let Some(data) = data {
                    let absent = ["dir", "public"].into_iter().filter(|key| {
                        data.get(*key)
                            .and_then(|d| d.as_str())
                            .is_some_and(|d| !std::path::Path::new(d).exists())
                    });
                    for key in absent.collect::<Vec<_>>() {
                        eprintln!(
                            "{}: data.{key} is not on this machine; checked on the embedded data",
                            path.display()
                        );
                        data.remove(key);
                        data.remove("labels");
                    }
                }
                let text = toml::to_string(&table).unwrap();
                Scenario::parse(&text, &path.display().to_string(), &[])
                    .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
                checked += 1;
            }
        }
        assert!(checked >= 5);
    }

    #[test]
    fn settings_that_make_training_non_finite_are_refused_at_the_start() {
        assert!(Scenario::load(None, &[]).unwrap().preflight().is_ok());
        // The field at fault, named first, and the way to move it.
        for (assignment, field, direction) in [
            ("train.temperature=1e-40", "train.temperature", "larger"),
            ("train.temperature=1e300", "train.temperature", "smaller"),
            ("train.kl_weight=1e308", "train.kl_weight", "smaller"),
            ("train.learning_rate=1e39", "train.learning_rate", "smaller"),
        ] {
            let scenario = Scenario::load(None, &[assignment.to_string()]).unwrap();
            let error = scenario.preflight().unwrap_err().to_string();
            assert!(error.starts_with(&format!("{field} = ")), "{assignment}: {error}");
            assert!(
                error.contains(&format!("choose a {direction} value")),
                "{assignment}: {error}"
            );
        }
    }

    #[test]
    fn overrides_reach_any_field() {
        let s = Scenario::load(
            None,
            &[
                "run.rounds=3".into(),
                "exchange.encoding=f16".into(),
                "nodes.models=[\"cnn:4,8,16\"]".into(),
            ],
        )
        .unwrap();
        assert_eq!(s.run.rounds, 3);
        assert_eq!(s.exchange.encoding, Encoding::F16);
        assert_eq!(s.model_of(3).to_string(), "cnn:4,8,16");
    }

    #[test]
    fn a_node_refuses_settings_the_scenario_would_have_refused() {
        // A coordinator of another build (or a hostile one) may send what our scenario
        // check never lets through: the node checks again and names the field.
        let scenario = Scenario::load(None, &[]).unwrap();
        let good = scenario.settings().unwrap();
        assert!(wdml_node::plan::RunPlan::from_settings(good.clone()).is_ok());
        let cases = [
            (
                RunSettings {
                    distill_batch: good.public_batch + 1,
                    ..good.clone()
                },
                "train.distill_batch",
            ),
            (
                RunSettings {
                    public_batch: 0,
                    ..good.clone()
                },
                "exchange.public_batch",
            ),
            (
                RunSettings {
                    round_policy: 0,
                    ..good.clone()
                },
                "coordinator.round_policy",
            ),
            (
                RunSettings {
                    max_staleness: 1000,
                    ..good.clone()
                },
                "exchange.max_staleness",
            ),
            (
                RunSettings {
                    data: Some(wdml_proto::DataSpec {
                        shape: vec![28, 28],
                        classes: 10,
                    }),
                    ..good.clone()
                },
                "data",
            ),
            (
                RunSettings {
                    normalisation: Some(wdml_proto::Normalisation {
                        mean: vec![0.5, 0.5],
                        std: vec![1.0, 1.0],
                    }),
                    ..good.clone()
                },
                "data.normalisation",
            ),
            (
                RunSettings {
                    encoding: wdml_proto::Encoding::Topk as i32,
                    top_k: 10,
                    ..good.clone()
                },
                "exchange.top_k",
            ),
        ];
        for (settings, field) in cases {
            let error = wdml_node::plan::RunPlan::from_settings(settings)
                .unwrap_err()
                .to_string();
            assert!(error.contains(field), "{field}: {error}");
        }
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            ("run.rounds=0", "run.rounds"),
            ("run.algorithm=\"fedsgd\"", "algorithm"),
            ("exchange.encoding=\"f8\"", "encoding"),
            ("train.learning_rate=-1.0", "train.learning_rate"),
            ("data.partition=\"dirichlet:-1\"", "data"),
            ("exchange.public_batch=5000", "exchange.public_batch"),
            ("train.distill_batch=129", "train.distill_batch"),
            ("nodes.models=[\"resnet\"]", "nodes.models[0]"),
            ("nodes.devices=[\"phone\", \"toaster\"]", "nodes.devices[1]"),
            ("train.unknown=1", "unknown"),
            ("coordinator.min_nodes=9", "coordinator.min_nodes"),
            // A timeout beyond what the wire carries is refused, not wrapped to 5 ms.
            ("exchange.timeout_ms=4294967301", "exchange.timeout_ms"),
            (
                "coordinator.round_timeout_ms=99999999999",
                "coordinator.round_timeout_ms",
            ),
            ("channel.time_scale=1e300", "channel.time_scale"),
            ("nodes.count=1000000", "nodes.count"),
            ("adversary.nodes=[7]", "adversary.nodes"),
            ("adversary.kind=\"loud\"", "adversary.kind"),
            ("exchange.encoding=\"q3\"", "encoding"),
        ];
        for (assignment, field) in cases {
            let error = format!("{:#}", Scenario::load(None, &[assignment.to_string()]).unwrap_err());
            assert!(error.contains(field), "{assignment}: {error}");
        }
    }

    #[test]
    fn dp_with_a_model_of_the_devices_own_program_is_refused() {
        let e = Scenario::load(
            None,
            &[
                "nodes.models=[\"mlp\", \"ext:torch-mlp\"]".into(),
                "privacy.epsilon=4.0".into(),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("privacy.noise_multiplier: ext:torch-mlp"), "{e}");
        Scenario::load(None, &["nodes.models=[\"mlp\", \"ext:torch-mlp\"]".into()]).expect("without DP it runs");
    }

    #[test]
    fn privacy_settings_out_of_range_are_refused_naming_the_field_and_the_way() {
        let defaults = Scenario::load(None, &[]).unwrap();
        assert_eq!(
            wdml_node::plan::RunPlan::from_settings(defaults.settings().unwrap())
                .unwrap()
                .privacy,
            wdml_node::plan::Privacy::default()
        );
        let set = Scenario::load(
            None,
            &[
                "privacy.audit=true".into(),
                "privacy.noise_multiplier=1.1".into(),
                "privacy.epsilon=8.0".into(),
            ],
        )
        .unwrap();
        let plan = wdml_node::plan::RunPlan::from_settings(set.settings().unwrap()).unwrap();
        assert!(plan.privacy.audit);
        assert_eq!((plan.privacy.noise_multiplier, plan.privacy.epsilon), (1.1, 8.0));
        // The scenario's refusal, then the node's of the same value from the wire.
        for (assignment, field, way) in [
            ("privacy.noise_multiplier=-0.5", "privacy.noise_multiplier", "raise it"),
            (
                "privacy.noise_multiplier=nan",
                "privacy.noise_multiplier",
                "not a finite number",
            ),
            ("privacy.max_grad_norm=0.0", "privacy.max_grad_norm", "raise it"),
            (
                "privacy.max_grad_norm=inf",
                "privacy.max_grad_norm",
                "not a finite number",
            ),
            ("privacy.delta=0.0", "privacy.delta", "raise it"),
            ("privacy.delta=1.0", "privacy.delta", "lower it"),
            ("privacy.epsilon=-1.0", "privacy.epsilon", "raise it"),
            ("privacy.epsilon=inf", "privacy.epsilon", "not a finite number"),
            ("privacy.budget=1.0", "budget", "unknown field"),
        ] {
            let error = format!("{:#}", Scenario::load(None, &[assignment.to_string()]).unwrap_err());
            assert!(error.contains(field) && error.contains(way), "{assignment}: {error}");
        }
        // A device program keeps no state directory for the record.
        let mixed = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/python/mixed.toml");
        assert!(Scenario::load(Some(&mixed), &[]).is_ok());
        let error = format!(
            "{:#}",
            Scenario::load(Some(&mixed), &["privacy.audit=true".into()]).unwrap_err()
        );
        assert!(
            error.contains("privacy.audit") && error.contains("device program"),
            "{error}"
        );
        let good = defaults.settings().unwrap();
        let wire = good.privacy.unwrap();
        for (privacy, field, way) in [
            (
                Some(wdml_proto::Privacy {
                    noise_multiplier: -1.0,
                    ..wire
                }),
                "privacy.noise_multiplier",
                "raise it",
            ),
            (
                Some(wdml_proto::Privacy {
                    max_grad_norm: -1.0,
                    ..wire
                }),
                "privacy.max_grad_norm",
                "raise it",
            ),
            (
                Some(wdml_proto::Privacy { delta: 2.0, ..wire }),
                "privacy.delta",
                "lower it",
            ),
            (
                Some(wdml_proto::Privacy {
                    epsilon: f64::NAN,
                    ..wire
                }),
                "privacy.epsilon",
                "not a finite number",
            ),
            // A coordinator that does not send it (its defaults would read as C = 0, δ = 0).
            (None, "privacy", "missing"),
        ] {
            let error = wdml_node::plan::RunPlan::from_settings(RunSettings {
                privacy,
                ..good.clone()
            })
            .unwrap_err()
            .to_string();
            assert!(error.contains(field) && error.contains(way), "{field}: {error}");
        }
    }

    #[test]
    fn fedmd_and_dsfl_settings_that_cannot_work_are_refused_naming_the_field() {
        let load = |sets: &[&str]| {
            let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
            Scenario::load(None, &sets).map(drop).map_err(|e| format!("{e:#}"))
        };
        load(&["run.algorithm=\"fedmd\""]).unwrap();
        load(&["run.algorithm=\"dsfl\""]).unwrap();
        load(&[
            "run.algorithm=\"dsfl\"",
            "train.era_temperature=1.0",
            "train.public_steps=3",
        ])
        .unwrap();
        // dml ignores the ERA temperature.
        load(&["train.era_temperature=5.0"]).unwrap();
        for (sets, says) in [
            (
                &["run.algorithm=\"dsfl\"", "train.era_temperature=0.0"][..],
                "train.era_temperature",
            ),
            (
                &["run.algorithm=\"dsfl\"", "train.era_temperature=1.5"],
                "must lie in (0, 1]",
            ),
            (
                &["run.algorithm=\"dsfl\"", "train.era_temperature=nan"],
                "train.era_temperature",
            ),
            (
                &["run.algorithm=\"fedmd\"", "train.aggregate=\"median\""],
                "train.aggregate",
            ),
            (
                &["run.algorithm=\"dsfl\"", "exchange.max_staleness=2"],
                "exchange.max_staleness",
            ),
            (
                &["run.algorithm=\"fedmd\"", "train.public_steps=-1"],
                "train.public_steps",
            ),
        ] {
            let error = load(sets).unwrap_err();
            assert!(error.contains(says), "{sets:?}: {error}");
        }
        // A node checks again what another coordinator could send.
        let good = Scenario::load(None, &["run.algorithm=\"dsfl\"".into()])
            .unwrap()
            .settings()
            .unwrap();
        let error = wdml_node::plan::RunPlan::from_settings(RunSettings {
            era_temperature: 0.0,
            ..good
        })
        .unwrap_err()
        .to_string();
        assert!(error.contains("train.era_temperature"), "{error}");
    }

    /// FedMD and DS-FL declare the FLOPs a round of theirs counts: the public batch's
    /// forward pass, then `public_steps × distill_batch` public rows and `local_steps ×
    /// batch_size` private rows of training; at the defaults (public_steps =
    /// local_steps, distill_batch = public_batch) exactly dml's.
    #[test]
    fn fedmd_and_dsfl_declare_their_flops_and_match_dml_at_the_defaults() {
        let plan = |sets: &[&str]| {
            let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
            let settings = Scenario::load(None, &sets).unwrap().settings().unwrap();
            wdml_node::plan::RunPlan::from_settings(settings).unwrap()
        };
        let base = ["train.local_steps=7", "train.batch_size=32", "exchange.public_batch=64"];
        let p = plan(&base);
        assert_eq!(p.public_steps, 7, "0: as many as local_steps");
        let model: ModelSpec = "mlp:8".parse().unwrap();
        let flops = model.flops(&p.spec);
        for a in [Algorithm::Fedmd, Algorithm::Dsfl] {
            assert_eq!(strategy::flops_before_exchange(a, &p, &model), 64 * flops.forward);
            assert_eq!(
                strategy::flops_after_exchange(a, &p, &model),
                (7 * 64 + 7 * 32) * flops.train()
            );
            assert_eq!(
                strategy::flops_after_exchange(a, &p, &model),
                strategy::flops_after_exchange(Algorithm::Dml, &p, &model)
            );
        }
        let p = plan(&[&base[..], &["train.public_steps=3", "train.distill_batch=16"]].concat());
        assert_eq!(
            strategy::flops_after_exchange(Algorithm::Fedmd, &p, &model),
            (3 * 16 + 7 * 32) * flops.train()
        );
    }

    #[test]
    fn a_top_k_outside_the_classes_is_refused() {
        let load = |k: u32| {
            Scenario::load(
                None,
                &["exchange.encoding=\"topk\"".into(), format!("exchange.top_k={k}")],
            )
            .map(drop)
            .map_err(|e| format!("{e:#}"))
        };
        load(1).unwrap();
        load(9).unwrap();
        for k in [0, 10] {
            let error = load(k).unwrap_err();
            assert!(error.contains("exchange.top_k"), "{k}: {error}");
        }
    }

    #[test]
    fn settings_over_the_air_cannot_use_are_refused_naming_the_field() {
        let air = [
            "channel.mode=\"over_the_air\"",
            "channel.access=\"shared\"",
            "exchange.encoding=\"f32\"",
        ];
        let load = |extra: &[&str]| {
            let overrides: Vec<String> = air.iter().chain(extra).map(|o| o.to_string()).collect();
            Scenario::load(None, &overrides).map(drop).map_err(|e| format!("{e:#}"))
        };
        load(&[]).unwrap();
        for (extra, field) in [
            (&["channel.access=\"dedicated\""][..], "channel.access"),
            (&["exchange.encoding=\"q8\""], "exchange.encoding"),
            (&["exchange.aggregate=\"median\""], "exchange.aggregate"),
            (&["exchange.max_staleness=2"], "exchange.max_staleness"),
            (&["run.algorithm=\"fedavg\"", "nodes.models=[\"mlp\"]"], "run.algorithm"),
            (&["channel.preset=\"ideal\""], "channel.access"),
        ] {
            let error = load(extra).unwrap_err();
            assert!(error.contains(field), "{extra:?}: {error}");
        }
    }

    #[test]
    fn a_device_mix_gives_each_profile_its_share_of_the_nodes_by_the_seed() {
        let load = |seed: u64| {
            Scenario::load(
                None,
                &[
                    "nodes.count=8".into(),
                    "nodes.device_mix={ phone = 0.75, \"custom:2.08:2\" = 0.25 }".into(),
                    format!("run.seed={seed}"),
                ],
            )
            .unwrap()
        };
        let devices = |s: &Scenario| (0..8).map(|k| s.device_of(k).unwrap().to_string()).collect::<Vec<_>>();
        let a = devices(&load(7));
        assert_eq!(a.iter().filter(|d| d.starts_with("custom")).count(), 2, "{a:?}");
        assert_eq!(a.iter().filter(|d| *d == "phone").count(), 6, "{a:?}");
        assert_eq!(a, devices(&load(7)), "same seed, same devices");
        assert!((1..20).any(|seed| devices(&load(seed)) != a), "the seed shuffles them");
        // Thirds of 8: 3, 3, 2 (largest remainders).
        let thirds = Scenario::load(
            None,
            &[
                "nodes.count=8".into(),
                "nodes.device_mix={ phone = 1, laptop = 1, microcontroller = 1 }".into(),
            ],
        )
        .unwrap();
        let mut counts = std::collections::BTreeMap::new();
        for k in 0..8 {
            *counts.entry(thirds.device_of(k).unwrap().to_string()).or_insert(0) += 1;
        }
        assert_eq!(counts.values().copied().collect::<Vec<_>>().iter().sum::<i32>(), 8);
        assert!(counts.values().all(|&c| c == 2 || c == 3), "{counts:?}");
        let error = format!(
            "{:#}",
            Scenario::load(None, &["nodes.device_mix={ toaster = 1 }".into()]).unwrap_err()
        );
        assert!(error.contains("nodes.device_mix.toaster"), "{error}");
    }

    #[test]
    fn round_policies_that_cannot_work_are_refused_naming_the_field() {
        let load = |sets: &[&str]| {
            let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
            Scenario::load(None, &sets).map_err(|e| format!("{e:#}"))
        };
        let cases: [(&[&str], &str); 7] = [
            (&["coordinator.round_policy=\"soon\""], "unknown round policy `soon`"),
            (
                &["coordinator.round_policy=\"quorum\"", "coordinator.quorum=1.5"],
                "coordinator.quorum",
            ),
            (
                &["coordinator.round_policy=\"quorum\"", "coordinator.grace_s=-1.0"],
                "coordinator.grace_s",
            ),
            // No deadline given.
            (&["coordinator.round_policy=\"deadline\""], "coordinator.deadline_s"),
            // Nothing paced: a deadline in emulated seconds would pass at once.
            (
                &[
                    "coordinator.round_policy=\"deadline\"",
                    "coordinator.deadline_s=5.0",
                    "channel.time_scale=0.0",
                ],
                "channel.time_scale > 0",
            ),
            // Longer in wall time than the round timeout allows.
            (
                &[
                    "coordinator.round_policy=\"deadline\"",
                    "coordinator.deadline_s=20000.0",
                ],
                "coordinator.deadline_s",
            ),
            (&["exchange.staleness_decay=-0.5"], "exchange.staleness_decay"),
        ];
        for (sets, field) in cases {
            let error = load(sets).unwrap_err();
            assert!(error.contains(field), "{sets:?}: {error}");
        }
        let ok = load(&[
            "coordinator.round_policy=\"deadline\"",
            "coordinator.deadline_s=5.0",
            "exchange.max_staleness=3",
        ]);
        assert!(ok.is_ok(), "{ok:?}");
    }

    #[test]
    fn a_message_larger_than_a_node_accepts_is_refused_naming_what_makes_it() {
        let load = |sets: &[&str]| {
            let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
            format!("{:#}", Scenario::load(None, &sets).unwrap_err())
        };
        // dml: the public batch makes the message (128 × 10 × 1 byte > 1,000).
        let error = load(&["exchange.max_message_bytes=1000"]);
        assert!(
            error.contains("exchange.public_batch: one dml message") && error.contains("1280 bytes"),
            "{error}"
        );
        // fedavg: the model does (all its parameters as f32).
        let error = load(&[
            "run.algorithm=\"fedavg\"",
            "nodes.models=[\"mlp:64\"]",
            "exchange.max_message_bytes=100000",
        ]);
        assert!(
            error.contains("nodes.models: one fedavg message of mlp:64 is 1 × 50890 values in f32"),
            "{error}"
        );
    }
}
