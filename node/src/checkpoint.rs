//! A node's state, written after every round it reports so that a node restarted
//! after a crash (kill -9 included) resumes where it was instead of from a fresh model.
//!
//! One file, `checkpoint.safetensors` in the node's state directory, replaced
//! atomically (temporary file, fsync, rename): the parameters (through the model's
//! variable map, by name), Adam's moments and step count as tensors, and in the
//! header's metadata the run, the node, its model, the last round, where its batch
//! sampler stands and its trust in its neighbours (`train.aggregate =
//! "trust-weighted"`: each score's exact bits; a checkpoint without them, from an
//! earlier build, resumes with no scores, which the first round back rebuilds). A
//! checkpoint of another run, node or model is refused, naming it.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use candle_core::Device;
use wdml_files::{Mode, write_atomic};

use crate::learn::Learner;
use crate::learn::trust::Trust;
use crate::shard::SamplerPosition;
use crate::{Error, Result};

/// The checkpoint's file name in the state directory.
pub const FILE: &str = "checkpoint.safetensors";
/// The layout of the file; another number is refused.
const FORMAT: &str = "1";
/// The largest checkpoint read: parameters and two Adam moments, f32, of a model of
/// about 350 M parameters, far beyond what a device here trains.
const MAX_BYTES: u64 = 4 << 30;

/// Who a checkpoint belongs to.
#[derive(Clone, Debug, PartialEq)]
pub struct Owner {
    pub run_id: String,
    /// The run's random instance: an earlier run of the same scenario has another.
    pub instance: String,
    pub node: u32,
    pub model: String,
}

/// What a checkpoint restores besides the learner.
#[derive(Clone, Debug, PartialEq)]
pub struct Restored {
    /// The last round the node reported before it stopped.
    pub round: u32,
    pub sampler: SamplerPosition,
    /// Its trust scores as they stood after that round (empty when it kept none).
    pub trust: Trust,
}

/// What writing one cost.
#[derive(Clone, Copy, Debug)]
pub struct Written {
    pub bytes: u64,
    pub took: Duration,
}

/// Writes `learner`'s state and `trust` after `round` into `dir` (created if need be).
pub fn save(
    dir: &Path,
    owner: &Owner,
    learner: &Learner,
    round: u32,
    sampler: SamplerPosition,
    trust: &Trust,
) -> Result<Written> {
    let began = Instant::now();
    std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, e))?;
    let (tensors, step) = learner.state()?;
    let metadata: HashMap<String, String> = [
        ("format", FORMAT.to_string()),
        ("run_id", owner.run_id.clone()),
        ("run_instance", owner.instance.clone()),
        ("node", owner.node.to_string()),
        ("model", owner.model.clone()),
        ("round", round.to_string()),
        ("adam_step", step.to_string()),
        ("sampler_epoch", sampler.epoch.to_string()),
        ("sampler_next", sampler.next.to_string()),
        ("trust", encode_trust(trust)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let bytes = safetensors::serialize(tensors, &Some(metadata))
        .map_err(|e| Error::config("checkpoint", format!("cannot encode: {e}")))?;
    let path = dir.join(FILE);
    write_atomic(&path, &bytes, Mode::Public).map_err(|e| Error::file(&path, e))?;
    Ok(Written {
        bytes: bytes.len() as u64,
        took: began.elapsed(),
    })
}

/// Restores `learner` from the checkpoint in `dir`, if there is one, and says where
/// the node stood.
pub fn load(dir: &Path, owner: &Owner, learner: &mut Learner) -> Result<Option<Restored>> {
    let path = dir.join(FILE);
    let bytes = match wdml_files::read_bounded(&path, MAX_BYTES) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::file(&path, e)),
    };
    let bad = |reason: String| Error::Data {
        path: path.clone(),
        reason,
    };
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(format!("unreadable: {e}")))?;
    let meta = header.metadata().clone().unwrap_or_default();
    let field =
        |key: &str| -> Result<&String> { meta.get(key).ok_or_else(|| bad(format!("no `{key}` in its metadata"))) };
    let number =
        |key: &str| -> Result<u64> { field(key)?.parse().map_err(|_| bad(format!("`{key}` is not a number"))) };
    if field("format")? != FORMAT {
        return Err(bad(format!("format {} (this build reads {FORMAT})", field("format")?)));
    }
    let found = Owner {
        run_id: field("run_id")?.clone(),
        instance: field("run_instance")?.clone(),
        node: number("node")? as u32,
        model: field("model")?.clone(),
    };
    let same_place = found.run_id == owner.run_id && found.node == owner.node && found.model == owner.model;
    if same_place && found.instance != owner.instance {
        // The same node of an earlier run of this scenario: this run starts afresh (its
        // own checkpoints replace that one).
        tracing::warn!(
            path = %path.display(),
            "the checkpoint is from an earlier run of {} (instance {}); starting afresh",
            found.run_id,
            found.instance
        );
        return Ok(None);
    }
    if &found != owner {
        return Err(bad(format!(
            "belongs to node {} ({}) of run {}, not node {} ({}) of run {}; give this node its own --state-dir",
            found.node, found.model, found.run_id, owner.node, owner.model, owner.run_id
        )));
    }
    let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
        .map_err(|e| bad(format!("unreadable tensors: {e}")))?;
    learner
        .restore(&tensors, number("adam_step")?)
        .map_err(|e| bad(e.to_string()))?;
    let trust = match meta.get("trust") {
        Some(text) => decode_trust(text).ok_or_else(|| bad(format!("`trust` is not a list of scores: {text:?}")))?,
        None => Trust::default(),
    };
    Ok(Some(Restored {
        round: number("round")? as u32,
        sampler: SamplerPosition {
            epoch: number("sampler_epoch")?,
            next: number("sampler_next")? as usize,
        },
        trust,
    }))
}

/// `own=<bits>,<id>=<bits>,…`: each score as the hex of its `f64` bits, so that a
/// resumed node weighs its neighbours exactly as it would have.
fn encode_trust(trust: &Trust) -> String {
    trust
        .entries()
        .map(|(id, score)| match id {
            None => format!("own={:x}", score.to_bits()),
            Some(id) => format!("{id}={:x}", score.to_bits()),
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn decode_trust(text: &str) -> Option<Trust> {
    let mut entries = Vec::new();
    for entry in text.split(',').filter(|e| !e.is_empty()) {
        let (id, bits) = entry.split_once('=')?;
        let score = f64::from_bits(u64::from_str_radix(bits, 16).ok()?);
        let id = match id {
            "own" => None,
            id => Some(id.parse().ok()?),
        };
        entries.push((id, score));
    }
    Some(Trust::from_entries(entries))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::learn::LearnerConfig;
    use crate::model::ModelSpec;
    use candle_core::Tensor;

    #[test]
    fn trust_scores_survive_their_encoding_and_garbage_is_refused() {
        let empty = Trust::default();
        assert_eq!(encode_trust(&empty), "");
        assert_eq!(decode_trust(""), Some(empty));
        let trust = Trust::from_entries([(None, 1e-300), (Some(0), 0.3), (Some(4_000_000_000), 1.0)]);
        assert_eq!(decode_trust(&encode_trust(&trust)), Some(trust));
        assert_eq!(decode_trust("own=zz"), None);
        assert_eq!(decode_trust("x=3ff0000000000000"), None);
        assert_eq!(decode_trust("3"), None);
    }

    #[test]
    fn a_restored_learner_continues_exactly_as_the_original() {
        let dir = std::env::temp_dir().join(format!("wdml-checkpoint-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let spec: ModelSpec = "mlp:16".parse().unwrap();
        let cfg = LearnerConfig {
            learning_rate: 0.01,
            temperature: 1.0,
            kl_weight: 1.0,
        };
        let xs = Tensor::rand(0f32, 1f32, (8, 784), &Device::Cpu).unwrap();
        let ys = Tensor::from_vec((0..8u32).map(|i| i % 10).collect(), 8, &Device::Cpu).unwrap();
        let mut original = Learner::new(&spec, &wdml_proto::data::fashion_mnist(), cfg, 1).unwrap();
        for _ in 0..3 {
            original.train_step(&xs, &ys, None).unwrap();
        }
        let owner = Owner {
            run_id: "r-1".into(),
            instance: "a1".into(),
            node: 2,
            model: spec.to_string(),
        };
        let position = SamplerPosition { epoch: 4, next: 32 };
        let trust = Trust::from_entries([(None, 0.125), (Some(3), 0.1 + 0.2), (Some(11), 0.875)]);
        let written = save(&dir, &owner, &original, 7, position, &trust).unwrap();
        assert!(
            written.bytes > 3 * 4 * spec.parameter_count(&wdml_proto::data::fashion_mnist()) as u64,
            "parameters and two moments"
        );

        let mut restored = Learner::new(&spec, &wdml_proto::data::fashion_mnist(), cfg, 99).unwrap();
        assert_eq!(
            load(&dir, &owner, &mut restored).unwrap(),
            Some(Restored {
                round: 7,
                sampler: position,
                trust: trust.clone(),
            }),
            "the trust scores to the bit"
        );
        let a = original.train_step(&xs, &ys, None).unwrap();
        let b = restored.train_step(&xs, &ys, None).unwrap();
        assert_eq!(a, b, "same losses");
        assert_eq!(
            original.parameters_flat().unwrap(),
            restored.parameters_flat().unwrap(),
            "same Adam update, bit for bit"
        );
        // An earlier run of the same scenario: a fresh start, not an error.
        let earlier = Owner {
            instance: "b2".into(),
            ..owner.clone()
        };
        assert_eq!(load(&dir, &earlier, &mut restored).unwrap(), None);
        // Another node's checkpoint is refused, naming both.
        let other = Owner { node: 3, ..owner };
        let error = load(&dir, &other, &mut restored).unwrap_err().to_string();
        assert!(error.contains("node 2") && error.contains("node 3"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            load(&dir, &other, &mut restored).unwrap(),
            None,
            "no checkpoint: a fresh start"
        );
    }
}
