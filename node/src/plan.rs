//! The run as this node understands it: the coordinator's [`RunSettings`], checked
//! field by field (they come from the network) and turned into domain types.

use std::path::PathBuf;
use std::time::Duration;

use wdml_channel::ResolvedChannel;
use wdml_proto::policy::{Closing, Staleness};
use wdml_proto::{AdversaryKind, Algorithm, Encoding, RunSettings};

use crate::data::{DataSpec, Location, Normalisation, Partition, SplitConfig};
use crate::device::DeviceProfile;
use crate::learn::{Aggregate, LearnerConfig};
use crate::model::ModelSpec;
use crate::strategy;
use crate::{Error, Result};

/// Largest message a node agrees to receive, whatever the coordinator says.
pub const MAX_MESSAGE_BYTES: u64 = 256 << 20;

/// Validated run settings.
#[derive(Clone, Debug)]
pub struct RunPlan {
    pub run_id: String,
    /// Random, this run's alone (tells its checkpoints from an earlier run's).
    pub run_instance: String,
    pub seed: u64,
    pub algorithm: Algorithm,
    pub rounds: u32,
    pub nodes: u32,
    pub local_steps: u32,
    pub batch_size: usize,
    pub learner: LearnerConfig,
    pub aggregate: Aggregate,
    pub public_batch: usize,
    /// Public images per local step in the distillation term (≤ public_batch).
    pub distill_batch: usize,
    pub encoding: Encoding,
    /// Logits kept per row with the top-k encoding (0 with any other).
    pub top_k: u32,
    /// The radio between the nodes (every node builds the same seeded channel).
    pub channel: ResolvedChannel,
    pub max_message_bytes: u64,
    /// Where the data is, unless the node was given its own.
    pub data: Location,
    /// Where the public pool is drawn from, if not from the training set.
    pub public: Option<Location>,
    /// The run's data: the shape and classes every member's must have.
    pub spec: DataSpec,
    pub normalisation: Normalisation,
    pub partition: Partition,
    pub public_pool: usize,
    pub test_size: usize,
    /// Training samples held out as the validation set (0: none).
    pub validation: usize,
    /// The share of each shard also in the public pool (`data.public_overlap`; 0: none).
    pub public_overlap: f64,
    pub heartbeat_interval: Duration,
    /// Each node's model, by id.
    pub models: Vec<ModelSpec>,
    /// Each node's device profile, by id (empty: none; the host's speed).
    pub devices: Vec<DeviceProfile>,
    /// Nodes that misbehave on purpose, and how.
    pub adversaries: Vec<u32>,
    pub adversary_kind: AdversaryKind,
    /// Stop waiting for a neighbour after this many missed exchanges in a row (0: never).
    pub silent_after: u32,
    /// Per-neighbour exchange deadlines from the radio and their punctuality.
    pub adaptive_deadline: bool,
    /// How long a connection to a neighbour may take to come up (TCP and TLS).
    pub connect_timeout: Duration,
    /// When rounds close: the exchange waits by the same rule.
    pub closing: Closing,
    /// How old a neighbour's message may be, and its weight.
    pub staleness: Staleness,
    /// `fedmd`'s digest and `dsfl`'s distillation: optimiser steps on the public batch
    /// alone, `distill_batch` rows each, before the private steps (0 in the settings:
    /// `local_steps`, the public rows a dml round trains on).
    pub public_steps: u32,
    /// `dsfl`: the temperature of its Entropy Reduction Aggregation, in (0, 1].
    pub era_temperature: f64,
    /// The privacy audit and DP-SGD's settings.
    pub privacy: Privacy,
}

/// The run's `[privacy]` settings, range-checked. Whether a budget can be met with the
/// noise and the rounds asked for is the accountant's question, not this check's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Privacy {
    /// Record what the neighbours receive of this node each round (`audit.jsonl` in the
    /// state directory), for `wdml privacy` to attack offline.
    pub audit: bool,
    /// DP-SGD's noise multiplier σ: the noise's standard deviation is σ·C; 0: no DP.
    pub noise_multiplier: f64,
    /// DP-SGD's per-example clipping norm C.
    pub max_grad_norm: f64,
    /// The δ of the (ε, δ) guarantee.
    pub delta: f64,
    /// The node's privacy budget ε; 0: none.
    pub epsilon: f64,
}

impl Default for Privacy {
    /// No audit and no DP; C = 1 and δ = 10⁻⁵, the usual values, for when DP is turned on.
    fn default() -> Self {
        Privacy {
            audit: false,
            noise_multiplier: 0.0,
            max_grad_norm: 1.0,
            delta: 1e-5,
            epsilon: 0.0,
        }
    }
}

impl Privacy {
    /// Checks each value's range, naming the field (`privacy.<name>`) and which way to
    /// move it. The scenario and the node both check with this, so they agree.
    pub fn check(p: &wdml_proto::Privacy) -> Result<Privacy> {
        fn finite(field: &str, value: f64) -> Result<f64> {
            if value.is_finite() {
                Ok(value)
            } else {
                Err(Error::config(field, format!("{value} is not a finite number")))
            }
        }
        let noise_multiplier = finite("privacy.noise_multiplier", p.noise_multiplier)?;
        if noise_multiplier < 0.0 {
            return Err(Error::config(
                "privacy.noise_multiplier",
                format!("{noise_multiplier} is negative: DP-SGD's σ must be ≥ 0 (0: no DP); raise it"),
            ));
        }
        let max_grad_norm = finite("privacy.max_grad_norm", p.max_grad_norm)?;
        if max_grad_norm <= 0.0 {
            return Err(Error::config(
                "privacy.max_grad_norm",
                format!("{max_grad_norm}: the per-example clipping norm C must be > 0; raise it (1.0 is usual)"),
            ));
        }
        let delta = finite("privacy.delta", p.delta)?;
        if !(delta > 0.0 && delta < 1.0) {
            return Err(Error::config(
                "privacy.delta",
                format!(
                    "{delta}: δ must lie strictly between 0 and 1 ({} it; 1e-5 is usual, below 1 / the samples of a shard)",
                    if delta <= 0.0 { "raise" } else { "lower" }
                ),
            ));
        }
        let epsilon = finite("privacy.epsilon", p.epsilon)?;
        if epsilon < 0.0 {
            return Err(Error::config(
                "privacy.epsilon",
                format!("{epsilon} is negative: the budget ε must be ≥ 0 (0: none); raise it"),
            ));
        }
        Ok(Privacy {
            audit: p.audit,
            noise_multiplier,
            max_grad_norm,
            delta,
            epsilon,
        })
    }
}

impl RunPlan {
    /// Checks the settings a coordinator sent; every error names the field.
    pub fn from_settings(s: RunSettings) -> Result<Self> {
        fn positive(field: &str, value: u32) -> Result<u32> {
            if value == 0 {
                Err(Error::config(field, "must be at least 1"))
            } else {
                Ok(value)
            }
        }
        let algorithm = match Algorithm::try_from(s.algorithm) {
            Ok(a) if strategy::runs(a) => a,
            _ => {
                let names: Vec<String> = Algorithm::ALL.iter().map(|a| format!("{a} ({})", *a as i32)).collect();
                return Err(Error::config(
                    "run.algorithm",
                    format!(
                        "unknown algorithm {}; expected one of {}",
                        s.algorithm,
                        names.join(", ")
                    ),
                ));
            }
        };
        let encoding = match Encoding::try_from(s.encoding) {
            Ok(Encoding::Unspecified) | Err(_) => {
                return Err(Error::config(
                    "exchange.encoding",
                    format!("unknown encoding {}; expected f32, f16, q8, q4 or topk", s.encoding),
                ));
            }
            Ok(e) => e,
        };
        let aggregate = match Aggregate::try_from(s.aggregate) {
            Ok(Aggregate::Unspecified) | Err(_) => {
                return Err(Error::config(
                    "train.aggregate",
                    format!("unknown aggregate {}", s.aggregate),
                ));
            }
            Ok(a) => a,
        };
        if s.run_id.is_empty() {
            return Err(Error::config("run.id", "must not be empty"));
        }
        if s.max_message_bytes == 0 || s.max_message_bytes > MAX_MESSAGE_BYTES {
            return Err(Error::config(
                "exchange.max_message_bytes",
                format!("must be between 1 and {MAX_MESSAGE_BYTES}, got {}", s.max_message_bytes),
            ));
        }
        let learner = LearnerConfig {
            learning_rate: s.learning_rate,
            temperature: s.temperature,
            kl_weight: s.kl_weight,
        };
        learner.validate()?;
        let partition: Partition = s.partition.parse()?;
        let spec = s
            .data
            .clone()
            .ok_or_else(|| Error::config("data", "the run's data shape and classes are missing"))?;
        spec.validate().map_err(|e| Error::config("data", e))?;
        let normalisation = s
            .normalisation
            .clone()
            .map(|n| Normalisation {
                mean: n.mean,
                std: n.std,
            })
            .ok_or_else(|| Error::config("data.normalisation", "missing"))?;
        let shape: Vec<usize> = spec.shape.iter().map(|&d| d as usize).collect();
        normalisation
            .check(&shape)
            .map_err(|e| Error::config("data.normalisation", e))?;
        let classes = spec.classes;
        let models = s
            .models
            .iter()
            .enumerate()
            .map(|(i, m)| {
                m.parse::<ModelSpec>()
                    .map_err(|e| Error::config(format!("nodes.models[{i}]"), e.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        if models.len() != s.nodes as usize {
            return Err(Error::config(
                "nodes.models",
                format!("{} models for {} nodes: one per node is needed", models.len(), s.nodes),
            ));
        }
        let devices = s
            .devices
            .iter()
            .enumerate()
            .map(|(i, d)| {
                d.parse::<DeviceProfile>()
                    .map_err(|e| Error::config(format!("nodes.devices[{i}]"), e))
            })
            .collect::<Result<Vec<_>>>()?;
        if !devices.is_empty() && devices.len() != s.nodes as usize {
            return Err(Error::config(
                "nodes.devices",
                format!(
                    "{} device profiles for {} nodes: one per node, or none",
                    devices.len(),
                    s.nodes
                ),
            ));
        }
        let adversary = s.adversary.clone().unwrap_or_default();
        let adversary_kind = match AdversaryKind::try_from(adversary.kind) {
            Ok(AdversaryKind::Unspecified) if adversary.nodes.is_empty() => AdversaryKind::Unspecified,
            Ok(kind @ (AdversaryKind::ConfidentWrong | AdversaryKind::Silent)) => kind,
            _ => {
                return Err(Error::config(
                    "adversary.kind",
                    format!(
                        "unknown adversary kind {}; expected confident-wrong or silent",
                        adversary.kind
                    ),
                ));
            }
        };
        if let Some(bad) = adversary.nodes.iter().find(|&&n| n >= s.nodes) {
            return Err(Error::config(
                "adversary.nodes",
                format!("node {bad} is not in the run"),
            ));
        }
        let channel: ResolvedChannel =
            serde_json::from_str(&s.channel).map_err(|e| Error::config("channel", format!("unreadable: {e}")))?;
        channel
            .radio
            .validate()
            .map_err(|e| Error::config("channel", e.to_string()))?;
        if channel.mode == wdml_channel::Mode::OverTheAir {
            over_the_air_fits(algorithm, aggregate, encoding, s.max_staleness)?;
        }
        consensus_fits(algorithm, aggregate, s.max_staleness, s.era_temperature)?;
        let closing = Closing::from_settings(&s).map_err(|(field, e)| Error::config(field, e))?;
        let staleness = Staleness::from_settings(&s).map_err(|(field, e)| Error::config(field, e))?;
        // Absent would read as C = 0 and δ = 0: refused like any other missing section,
        // since a node that guessed defaults could train without the guarantee asked for.
        let privacy = Privacy::check(
            s.privacy
                .as_ref()
                .ok_or_else(|| Error::config("privacy", "missing (a coordinator of protocol version 7 sends it)"))?,
        )?;
        Ok(RunPlan {
            public_steps: match s.public_steps {
                0 => s.local_steps,
                k => k,
            },
            era_temperature: s.era_temperature,
            privacy,
            closing,
            staleness,
            run_instance: s.run_instance,
            run_id: s.run_id,
            seed: s.seed,
            algorithm,
            rounds: positive("run.rounds", s.rounds)?,
            nodes: positive("nodes", s.nodes)?,
            local_steps: positive("train.local_steps", s.local_steps)?,
            batch_size: positive("train.batch_size", s.batch_size)? as usize,
            learner,
            aggregate,
            public_batch: positive("exchange.public_batch", s.public_batch)? as usize,
            distill_batch: match s.distill_batch {
                0 => s.public_batch as usize,
                k if k <= s.public_batch => k as usize,
                k => {
                    return Err(Error::config(
                        "train.distill_batch",
                        format!("{k} is larger than exchange.public_batch ({})", s.public_batch),
                    ));
                }
            },
            encoding,
            top_k: match encoding {
                Encoding::Topk if (1..classes).contains(&s.top_k) => s.top_k,
                Encoding::Topk => {
                    return Err(Error::config(
                        "exchange.top_k",
                        format!(
                            "{} logits kept per row: between 1 and {} (of {classes} classes)",
                            s.top_k,
                            classes - 1
                        ),
                    ));
                }
                _ => 0,
            },
            channel,
            max_message_bytes: s.max_message_bytes,
            data: Location {
                path: (!s.data_dir.is_empty()).then(|| PathBuf::from(s.data_dir)),
                labels: (!s.data_labels.is_empty()).then_some(s.data_labels),
            },
            public: (!s.public_dir.is_empty()).then(|| Location {
                path: Some(PathBuf::from(&s.public_dir)),
                labels: None,
            }),
            spec,
            normalisation,
            partition,
            public_pool: positive("data.public_pool", s.public_pool)? as usize,
            test_size: s.test_size as usize,
            validation: s.validation as usize,
            // Range-checked with the split (`SplitConfig::validate`), which knows data.public.
            public_overlap: s.public_overlap,
            heartbeat_interval: Duration::from_millis(u64::from(positive(
                "coordinator.heartbeat_interval_ms",
                s.heartbeat_interval_ms,
            )?)),
            models,
            devices,
            adversaries: adversary.nodes,
            adversary_kind,
            silent_after: s.silent_after,
            adaptive_deadline: s.adaptive_deadline,
            connect_timeout: wdml_transport::peer_connect_timeout(s.connect_timeout_ms),
        })
    }

    /// The run's classes: the columns of every prediction message.
    pub fn classes(&self) -> usize {
        self.spec.classes as usize
    }

    /// Whether the run aggregates over the air (`channel.mode = "over_the_air"`).
    pub fn over_the_air(&self) -> bool {
        self.channel.mode == wdml_channel::Mode::OverTheAir
    }

    /// How node `id` misbehaves, if it is one of the run's adversaries.
    pub fn adversary(&self, id: u32) -> Option<AdversaryKind> {
        self.adversaries.contains(&id).then_some(self.adversary_kind)
    }

    /// The device node `id` emulates, if the run gives profiles.
    pub fn device(&self, id: u32) -> Option<&DeviceProfile> {
        self.devices.get(id as usize)
    }

    /// How the data is split: the same on every node, so each computes it alone.
    /// `public_from`: the samples of the public dataset, when the run has one.
    pub fn split_config(&self, public_from: Option<usize>) -> SplitConfig {
        SplitConfig {
            seed: self.seed,
            nodes: self.nodes as usize,
            partition: self.partition.clone(),
            public_pool: self.public_pool,
            test_size: self.test_size,
            validation: self.validation,
            public_from,
            public_overlap: self.public_overlap,
        }
    }
}

/// `fedmd` and `dsfl` form one consensus of this round's predictions, their own
/// included, as their papers do: the plain mean (FedMD), or its sharpened softmax
/// (DS-FL's ERA, whose temperature must lie in (0, 1]: below 1 it sharpens the mean,
/// above it would flatten it). No other aggregate, and no older round's predictions.
fn consensus_fits(algorithm: Algorithm, aggregate: Aggregate, max_staleness: u32, era_temperature: f64) -> Result<()> {
    if !matches!(algorithm, Algorithm::Fedmd | Algorithm::Dsfl) {
        return Ok(());
    }
    if aggregate != Aggregate::Mean {
        return Err(Error::config(
            "train.aggregate",
            format!("{aggregate}: {algorithm} forms its consensus as its paper does, from the mean; set \"mean\""),
        ));
    }
    if max_staleness > 0 {
        return Err(Error::config(
            "exchange.max_staleness",
            format!(
                "{max_staleness}: {algorithm}'s consensus is of one public batch, this round's; an older round's \
                 predictions cannot join it (set 0)"
            ),
        ));
    }
    if algorithm == Algorithm::Dsfl && !(era_temperature.is_finite() && era_temperature > 0.0 && era_temperature <= 1.0)
    {
        return Err(Error::config(
            "train.era_temperature",
            format!(
                "{era_temperature}: the temperature of DS-FL's entropy reduction, softmax(mean / T), must lie in \
                 (0, 1] (below 1 it sharpens the mean; the paper uses 0.1)"
            ),
        ));
    }
    Ok(())
}

/// Over the air, the channel itself computes the neighbours' mean soft prediction: only
/// an algorithm that needs that mean can use it, on values sent as they are.
fn over_the_air_fits(algorithm: Algorithm, aggregate: Aggregate, encoding: Encoding, max_staleness: u32) -> Result<()> {
    let refuse = |field: &str, reason: String| Err(Error::config(field, reason));
    if algorithm != Algorithm::Dml {
        return refuse(
            "run.algorithm",
            format!("{algorithm} cannot run over the air: the channel sums soft predictions, which only dml sends"),
        );
    }
    if aggregate != Aggregate::Mean {
        return refuse(
            "exchange.aggregate",
            format!("{aggregate} cannot be computed over the air: the channel adds signals, so only `mean` works"),
        );
    }
    if encoding != Encoding::F32 {
        return refuse(
            "exchange.encoding",
            format!(
                "{encoding}: over the air each value is an analog symbol, so the stream carries them as they are; \
                 set exchange.encoding = \"f32\""
            ),
        );
    }
    if max_staleness > 0 {
        return refuse(
            "exchange.max_staleness",
            format!(
                "{max_staleness}: over the air a neighbour's predictions exist only as part of its slot's sum; \
                 an old one cannot be added later (set 0)"
            ),
        );
    }
    Ok(())
}
