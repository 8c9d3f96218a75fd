//! The coordinator's configuration.

use std::path::PathBuf;
use std::time::Duration;

use wdml_proto::RunSettings;
use wdml_proto::policy::{Closing, Staleness};
use wdml_transport::Security;

use crate::{Error, Result};

/// What the coordinator needs to run one experiment. The run settings are passed to
/// every node verbatim: the coordinator itself only reads `rounds`, `nodes` and `seed`.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where `config.json`, `metrics.jsonl` and `summary.json` go.
    pub run_dir: PathBuf,
    /// The settings every node receives when it joins.
    pub settings: RunSettings,
    /// Each node's radio neighbours (by id), from the channel's topology; a round's
    /// neighbours are these minus the nodes that are not live.
    pub neighbours: Vec<Vec<u32>>,
    /// Start once this many nodes have joined and the join timeout has passed
    /// (the run starts at once when all `settings.nodes` have joined).
    pub min_nodes: u32,
    /// The run is finished only if every closed round heard from at least this
    /// fraction of `settings.nodes`.
    pub min_participation: f64,
    pub join_timeout: Duration,
    /// A round closes when every participant reported, or after this long.
    pub round_timeout: Duration,
    /// How long nodes wait for their neighbours' predictions within a round.
    pub exchange_timeout: Duration,
    /// A node silent for this long (no heartbeat, no report) is marked gone.
    pub heartbeat_timeout: Duration,
    /// The fully resolved scenario, written to `config.json` for the record.
    pub resolved: serde_json::Value,
    /// How connections are secured (mutual TLS, or `--insecure`).
    pub security: Security,
    /// A node that joined must open its Sync stream within this long, or it is
    /// released (so the same id can join again).
    pub sync_timeout: Duration,
    /// Replace a finished run in `run_dir` instead of refusing.
    pub overwrite: bool,
    /// The scenario as TOML, written to `scenario.toml` in a new run directory.
    pub scenario_toml: Option<String>,
    /// The run's channel, resolved (the same as `settings.channel`, read once): its
    /// time scale turns the round policy's emulated grace and deadline into wall time,
    /// and with moving devices each round's neighbours come from it.
    pub channel: wdml_channel::ResolvedChannel,
    /// Which public rows are which node's (`data.public_overlap`), for `split.json`;
    /// `None` without the overlap.
    pub public_overlap: Option<crate::PublicOverlap>,
}

/// The longest timeout the wire can carry (milliseconds in a `uint32`).
pub const MAX_TIMEOUT: Duration = Duration::from_millis(u32::MAX as u64);

impl Config {
    /// Checks every field, naming the first one out of range.
    pub fn validate(&self) -> Result<()> {
        let s = &self.settings;
        if s.nodes == 0 {
            return Err(Error::config("nodes.count", "at least one node is needed"));
        }
        if s.models.len() != s.nodes as usize {
            return Err(Error::config(
                "nodes.models",
                format!(
                    "{} models for {} nodes: one per node is needed",
                    s.models.len(),
                    s.nodes
                ),
            ));
        }
        if let Some(adversary) = &s.adversary
            && let Some(bad) = adversary.nodes.iter().find(|&&n| n >= s.nodes)
        {
            return Err(Error::config(
                "adversary.nodes",
                format!("node {bad} is not in the run ({})", crate::members::node_range(s.nodes)),
            ));
        }
        if s.rounds == 0 {
            return Err(Error::config("run.rounds", "must be at least 1"));
        }
        match &s.data {
            None => return Err(Error::config("data", "the run's data shape and classes are needed")),
            Some(data) => data.validate().map_err(|e| Error::config("data", e))?,
        }
        if self.neighbours.len() != s.nodes as usize
            || self
                .neighbours
                .iter()
                .enumerate()
                .any(|(i, n)| n.iter().any(|&j| j >= s.nodes || j as usize == i))
        {
            return Err(Error::config(
                "channel.topology",
                "the neighbour lists must name other nodes of the run, one list per node",
            ));
        }
        if self.min_nodes == 0 || self.min_nodes > s.nodes {
            return Err(Error::config(
                "coordinator.min_nodes",
                format!(
                    "must be between 1 and the number of nodes ({}), got {}",
                    s.nodes, self.min_nodes
                ),
            ));
        }
        for (field, value) in [
            ("coordinator.join_timeout_ms", self.join_timeout),
            ("coordinator.round_timeout_ms", self.round_timeout),
            ("exchange.timeout_ms", self.exchange_timeout),
            ("coordinator.heartbeat_timeout_ms", self.heartbeat_timeout),
            ("coordinator.sync_timeout_ms", self.sync_timeout),
        ] {
            if value.is_zero() {
                return Err(Error::config(field, "must be greater than 0"));
            }
            if value > MAX_TIMEOUT {
                return Err(Error::config(
                    field,
                    format!(
                        "{} ms is longer than the {} ms (about 49 days) a timeout can be",
                        value.as_millis(),
                        MAX_TIMEOUT.as_millis()
                    ),
                ));
            }
        }
        if self.exchange_timeout >= self.round_timeout {
            return Err(Error::config(
                "exchange.timeout_ms",
                "must be shorter than coordinator.round_timeout_ms: the exchange is one part of a round",
            ));
        }
        let closing = self.closing()?;
        Staleness::from_settings(s).map_err(|(field, e)| Error::config(field, e))?;
        let (field, emulated) = match closing {
            Closing::Sync => ("", 0.0),
            Closing::Quorum { grace_s, .. } => ("coordinator.grace_s", grace_s),
            Closing::Deadline { deadline_s } => ("coordinator.deadline_s", deadline_s),
        };
        if matches!(closing, Closing::Deadline { .. }) && self.channel.time_scale <= 0.0 {
            return Err(Error::config(
                "coordinator.round_policy",
                "a deadline in emulated seconds needs emulated time: set channel.time_scale > 0 \
                 (it is 0, so nothing is paced and the deadline would pass at once)",
            ));
        }
        if self.wall(emulated) >= self.round_timeout {
            return Err(Error::config(
                field,
                format!(
                    "{emulated} emulated s × channel.time_scale {} is {:.1} s of wall time, not shorter \
                     than coordinator.round_timeout_ms",
                    self.channel.time_scale,
                    emulated * self.channel.time_scale
                ),
            ));
        }
        let heartbeat = Duration::from_millis(u64::from(s.heartbeat_interval_ms));
        if heartbeat.is_zero() || heartbeat * 2 > self.heartbeat_timeout {
            return Err(Error::config(
                "coordinator.heartbeat_interval_ms",
                "must be greater than 0 and at most half of coordinator.heartbeat_timeout_ms",
            ));
        }
        Ok(())
    }

    /// How rounds close (checked by [`Config::validate`]).
    pub fn closing(&self) -> Result<Closing> {
        Closing::from_settings(&self.settings).map_err(|(field, e)| Error::config(field, e))
    }

    /// The wall time `emulated` seconds take at the run's time scale (saturating).
    pub fn wall(&self, emulated: f64) -> Duration {
        self.channel.wall(emulated).unwrap_or(Duration::MAX)
    }
}
