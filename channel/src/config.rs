//! The `[channel]` section of a scenario: a preset plus optional overrides, resolved into
//! the effective parameters of a run.
//!
//! ```toml
//! [channel]
//! preset = "d2d-urban"
//! time_scale = 0.01
//! mode = "broadcast"
//! topology = { k_nearest = { k = 3 } }
//! tx_power_dbm = 17
//! loss = { gilbert_elliott = { p_good_to_bad = 0.05, p_bad_to_good = 0.3, loss_good = 0.01, loss_bad = 0.5 } }
//! ```

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, ensure_non_negative};
use crate::geometry::{Placement, Position};
use crate::link::Channel;
use crate::loss::LossModel;
use crate::mobility::{DEFAULT_DECORRELATION_M, Mobility};
use crate::policy::{BandOrder, PowerControl, Selection};
use crate::preset::{Preset, Shaping};
use crate::propagation::{Fading, PathLoss};
use crate::radio::RadioParams;
use crate::topology::Topology;

/// Default wall seconds per emulated second: a 10 s emulated round runs in 0.1 s, so a
/// many-round experiment finishes on a laptop while airtime and energy are accounted in
/// full emulated time.
pub const DEFAULT_TIME_SCALE: f64 = 0.01;

/// How a node sends one message to its neighbours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// One transmission per neighbour, each at its own link's rate.
    #[default]
    Unicast,
    /// One transmission heard by every neighbour, at the worst neighbour's rate
    /// (see [`crate::BroadcastTransmission`]).
    Broadcast,
    /// Analog over-the-air aggregation: one slot per receiver, in which all its
    /// neighbours transmit their soft predictions at once and the channel adds them
    /// (see [`crate::spectrum`]). Needs `access = "shared"`.
    OverTheAir,
}

/// The default truncation threshold of over-the-air aggregation, dB: a sender whose
/// full-power SNR to the receiver is below it stays silent in that slot.
pub const DEFAULT_AIR_MIN_SNR_DB: f64 = 10.0;

/// Who shares the spectrum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// Every link has a band of its own (`bandwidth_hz` each): transmissions of
    /// different nodes happen at once and never meet.
    #[default]
    Dedicated,
    /// One band of `bandwidth_hz` for the whole network: the nodes take turns,
    /// one transmission at a time, in a fixed order (TDMA, see [`crate::spectrum`]),
    /// so a round's exchange lasts the sum of every node's air time.
    Shared,
}

/// The channel section of a scenario: a preset and overrides of any of its parameters.
///
/// Every override is optional; an absent one keeps the preset's value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChannelConfig {
    /// The preset the overrides apply to. Default `d2d-urban`.
    pub preset: Preset,
    /// Wall seconds per emulated second (≥ 0; 0 accounts airtime without waiting).
    /// Default [`DEFAULT_TIME_SCALE`].
    pub time_scale: f64,
    /// Unicast or broadcast. Default unicast.
    pub mode: Mode,
    /// A band per link, or one shared band. Default dedicated.
    pub access: Access,
    /// Over the air: the truncation threshold, dB (a sender below it in a slot stays
    /// silent). Default [`DEFAULT_AIR_MIN_SNR_DB`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub air_min_snr_db: Option<f64>,
    /// Over the air: whether the receiver noise is added to the sum (default true;
    /// false gives ideal over-the-air aggregation, for comparison).
    pub air_noise: bool,
    /// Neighbour selection; default the preset's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topology: Option<Topology>,
    /// With which live neighbours each node exchanges each round. Default all.
    pub selection: Selection,
    /// On a shared band: the order of the senders' turns. Default by id.
    pub band_order: BandOrder,
    /// Overrides [`RadioParams::power_control`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub power_control: Option<PowerControl>,
    /// Side of the square area devices are placed in uniformly, m; default the preset's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub area_m: Option<f64>,
    /// Explicit positions, one per node (instead of `area_m`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub positions: Option<Vec<Position>>,
    /// Overrides [`RadioParams::path_loss`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_loss: Option<PathLoss>,
    /// Overrides [`RadioParams::min_distance_m`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_distance_m: Option<f64>,
    /// Overrides [`RadioParams::shadowing_sigma_db`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadowing_sigma_db: Option<f64>,
    /// Overrides [`RadioParams::fading`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fading: Option<Fading>,
    /// Overrides [`RadioParams::bandwidth_hz`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bandwidth_hz: Option<f64>,
    /// Overrides [`RadioParams::tx_power_dbm`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tx_power_dbm: Option<f64>,
    /// Overrides [`RadioParams::noise_density_dbm_per_hz`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub noise_density_dbm_per_hz: Option<f64>,
    /// Overrides [`RadioParams::noise_figure_db`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub noise_figure_db: Option<f64>,
    /// Overrides [`RadioParams::rate_efficiency`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_efficiency: Option<f64>,
    /// Overrides [`RadioParams::max_spectral_efficiency_bps_per_hz`]; `inf` removes a
    /// preset's cap (TOML has no null).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_spectral_efficiency_bps_per_hz: Option<f64>,
    /// Overrides [`RadioParams::outage_snr_db`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outage_snr_db: Option<f64>,
    /// Overrides [`RadioParams::circuit_power_w`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub circuit_power_w: Option<f64>,
    /// Overrides [`RadioParams::rx_power_w`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rx_power_w: Option<f64>,
    /// Overrides [`RadioParams::latency_ms`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    /// Overrides [`RadioParams::jitter_ms`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jitter_ms: Option<f64>,
    /// Overrides [`RadioParams::frame_payload_bytes`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frame_payload_bytes: Option<u32>,
    /// Overrides [`RadioParams::frame_header_bytes`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frame_header_bytes: Option<u32>,
    /// Overrides [`RadioParams::max_retransmissions`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_retransmissions: Option<u32>,
    /// Overrides [`RadioParams::loss`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss: Option<LossModel>,
    /// How the devices move (default: they do not).
    pub mobility: Mobility,
    /// Gudmundson's shadowing decorrelation distance for moving devices, m.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadowing_decorrelation_m: Option<f64>,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        Self {
            preset: Preset::default(),
            time_scale: DEFAULT_TIME_SCALE,
            mode: Mode::default(),
            access: Access::default(),
            air_min_snr_db: None,
            air_noise: true,
            topology: None,
            selection: Selection::All,
            band_order: BandOrder::Id,
            power_control: None,
            area_m: None,
            positions: None,
            path_loss: None,
            min_distance_m: None,
            shadowing_sigma_db: None,
            fading: None,
            bandwidth_hz: None,
            tx_power_dbm: None,
            noise_density_dbm_per_hz: None,
            noise_figure_db: None,
            rate_efficiency: None,
            max_spectral_efficiency_bps_per_hz: None,
            outage_snr_db: None,
            circuit_power_w: None,
            rx_power_w: None,
            latency_ms: None,
            jitter_ms: None,
            frame_payload_bytes: None,
            frame_header_bytes: None,
            max_retransmissions: None,
            loss: None,
            mobility: Mobility::Static,
            shadowing_decorrelation_m: None,
        }
    }
}

/// The effective channel of a run: the preset with every override applied, validated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolvedChannel {
    /// The preset it came from.
    pub preset: Preset,
    /// How the shaper treats the links.
    pub shaping: Shaping,
    /// Wall seconds per emulated second.
    pub time_scale: f64,
    /// Unicast or broadcast.
    pub mode: Mode,
    /// A band per link, or one shared band.
    #[serde(default)]
    pub access: Access,
    /// Over the air: the truncation threshold, dB.
    #[serde(default = "default_air_min_snr_db")]
    pub air_min_snr_db: f64,
    /// Over the air: whether the receiver noise is added.
    #[serde(default = "default_true")]
    pub air_noise: bool,
    /// Neighbour selection.
    pub topology: Topology,
    /// With which live neighbours each node exchanges each round.
    #[serde(default, skip_serializing_if = "Selection::is_all")]
    pub selection: Selection,
    /// On a shared band: the order of the senders' turns.
    #[serde(default, skip_serializing_if = "BandOrder::is_id")]
    pub band_order: BandOrder,
    /// Device placement.
    pub placement: Placement,
    /// The radio parameters.
    pub radio: RadioParams,
    /// How the devices move.
    #[serde(default)]
    pub mobility: Mobility,
    /// Gudmundson's decorrelation distance, m.
    #[serde(default = "default_decorrelation")]
    pub shadowing_decorrelation_m: f64,
}

fn default_true() -> bool {
    true
}

fn default_air_min_snr_db() -> f64 {
    DEFAULT_AIR_MIN_SNR_DB
}

fn default_decorrelation() -> f64 {
    DEFAULT_DECORRELATION_M
}

impl ResolvedChannel {
    /// The channel of a run of `nodes` devices seeded by `run_seed`, where they were
    /// placed (emulated time 0).
    pub fn channel(&self, run_seed: u64, nodes: usize) -> Result<Channel> {
        self.channel_at(run_seed, nodes, 0.0)
    }

    /// The channel at emulated time `t`: the devices where `mobility` has taken them.
    pub fn channel_at(&self, run_seed: u64, nodes: usize, t: f64) -> Result<Channel> {
        let positions = self.placement.positions(run_seed, nodes)?;
        if self.mobility.is_static() {
            return Channel::new(run_seed, self.radio.clone(), positions);
        }
        Channel::moving(
            run_seed,
            self.radio.clone(),
            positions,
            &self.mobility,
            self.shadowing_decorrelation_m,
            t,
        )
    }
}

/// The slowest pacing the shaper represents: wall seconds per emulated second.
pub const MAX_TIME_SCALE: f64 = 1000.0;

/// The wall time `emulated_s` emulated seconds take at `time_scale` wall seconds per
/// emulated second; `None` when no clock can hold it (each caller decides what then).
pub fn wall_time(emulated_s: f64, time_scale: f64) -> Option<std::time::Duration> {
    std::time::Duration::try_from_secs_f64(emulated_s * time_scale).ok()
}

impl ResolvedChannel {
    /// [`wall_time`] at this channel's time scale.
    pub fn wall(&self, emulated_s: f64) -> Option<std::time::Duration> {
        wall_time(emulated_s, self.time_scale)
    }
}

impl ChannelConfig {
    /// A configuration of `preset` with no overrides.
    pub fn from_preset(preset: Preset) -> Self {
        Self {
            preset,
            ..Self::default()
        }
    }

    /// Checks every value; the error names the offending field (`channel.…`).
    pub fn validate(&self) -> Result<()> {
        self.resolve().map(drop)
    }

    /// The effective radio parameters: the preset's with the overrides applied.
    pub fn radio_params(&self) -> Result<RadioParams> {
        Ok(self.resolve()?.radio)
    }

    /// The preset with every override applied, validated.
    pub fn resolve(&self) -> Result<ResolvedChannel> {
        ensure_non_negative(self.time_scale, "channel.time_scale")?;
        crate::error::ensure(
            self.time_scale <= MAX_TIME_SCALE,
            "channel.time_scale",
            "must be at most 1000 wall seconds per emulated second: slower pacing cannot be represented",
            self.time_scale,
        )?;
        let placement = match (&self.positions, self.area_m) {
            (Some(_), Some(_)) => return Err(Error::ConflictingPlacement),
            (Some(positions), None) => Placement::Explicit {
                positions: positions.clone(),
            },
            (None, area_m) => Placement::UniformSquare {
                area_m: area_m.unwrap_or(self.preset.area_m()),
            },
        };
        placement.validate()?;
        let topology = self.topology.unwrap_or(self.preset.topology());
        topology.validate()?;
        let radio = self.apply_overrides(self.preset.radio_params());
        radio.validate()?;
        self.selection.validate()?;
        crate::error::ensure(
            radio.power_control.is_full() || self.preset.shaping() == Shaping::Emulate,
            "channel.power_control",
            "can be set only on an emulated radio (the preset's links are not emulated, so \
             there is no power to control)",
            format!("set, with preset {}", self.preset),
        )?;
        crate::error::ensure(
            radio.power_control.is_full() || self.mode != Mode::OverTheAir,
            "channel.power_control",
            "must be `full` over the air: channel inversion already sets each sender's power",
            "set, with mode over_the_air",
        )?;
        crate::error::ensure(
            self.band_order.is_id() || self.access == Access::Shared,
            "channel.band_order",
            "orders the turns on a shared band: set channel.access = \"shared\", or drop it",
            "set, with dedicated bands",
        )?;
        crate::error::ensure(
            self.band_order.is_id() || self.mode != Mode::OverTheAir,
            "channel.band_order",
            "orders the senders' turns; over the air every receiver has a slot, in id order: drop it",
            "set, with mode over_the_air",
        )?;
        let mut mobility = self.mobility.clone();
        if let Mobility::RandomWaypoint(walk) = &mut mobility
            && walk.area_m.is_none()
        {
            // The placement's square, or the preset's.
            walk.area_m = Some(match &placement {
                Placement::UniformSquare { area_m } => *area_m,
                Placement::Explicit { .. } => self.preset.area_m(),
            });
        }
        // A trace is checked once the scenario has read its file.
        if !matches!(&mobility, Mobility::Trace(t) if t.samples.is_empty()) {
            mobility.validate()?;
        }
        crate::error::ensure(
            self.access == Access::Dedicated || self.preset.shaping() == Shaping::Emulate,
            "channel.access",
            "can be `shared` only on an emulated radio (the preset's links are not emulated, so \
             there is no air time to share)",
            format!("shared, with preset {}", self.preset),
        )?;
        crate::error::ensure(
            self.mode != Mode::OverTheAir || self.access == Access::Shared,
            "channel.mode",
            "can be `over_the_air` only with channel.access = \"shared\" (the receivers take turns \
             on one band: a node cannot transmit and receive at once)",
            "over_the_air, with dedicated bands",
        )?;
        let air_min_snr_db = self.air_min_snr_db.unwrap_or(DEFAULT_AIR_MIN_SNR_DB);
        crate::error::ensure(
            air_min_snr_db.is_finite(),
            "channel.air_min_snr_db",
            "must be a finite threshold in dB",
            air_min_snr_db,
        )?;
        let shadowing_decorrelation_m = self.shadowing_decorrelation_m.unwrap_or(DEFAULT_DECORRELATION_M);
        crate::error::ensure_positive(shadowing_decorrelation_m, "channel.shadowing_decorrelation_m")?;
        Ok(ResolvedChannel {
            preset: self.preset,
            shaping: self.preset.shaping(),
            time_scale: self.time_scale,
            mode: self.mode,
            access: self.access,
            air_min_snr_db,
            air_noise: self.air_noise,
            topology,
            selection: self.selection,
            band_order: self.band_order,
            placement,
            radio,
            mobility,
            shadowing_decorrelation_m,
        })
    }

    /// `base` with every override that is set replacing its value.
    fn apply_overrides(&self, base: RadioParams) -> RadioParams {
        let max_spectral_efficiency_bps_per_hz = match self.max_spectral_efficiency_bps_per_hz {
            // `inf` is how a TOML file says "no cap".
            Some(cap) if cap == f64::INFINITY => None,
            Some(cap) => Some(cap),
            None => base.max_spectral_efficiency_bps_per_hz,
        };
        RadioParams {
            path_loss: self.path_loss.unwrap_or(base.path_loss),
            min_distance_m: self.min_distance_m.unwrap_or(base.min_distance_m),
            shadowing_sigma_db: self.shadowing_sigma_db.unwrap_or(base.shadowing_sigma_db),
            fading: self.fading.unwrap_or(base.fading),
            bandwidth_hz: self.bandwidth_hz.unwrap_or(base.bandwidth_hz),
            tx_power_dbm: self.tx_power_dbm.unwrap_or(base.tx_power_dbm),
            noise_density_dbm_per_hz: self.noise_density_dbm_per_hz.unwrap_or(base.noise_density_dbm_per_hz),
            noise_figure_db: self.noise_figure_db.unwrap_or(base.noise_figure_db),
            rate_efficiency: self.rate_efficiency.unwrap_or(base.rate_efficiency),
            max_spectral_efficiency_bps_per_hz,
            outage_snr_db: self.outage_snr_db.unwrap_or(base.outage_snr_db),
            circuit_power_w: self.circuit_power_w.unwrap_or(base.circuit_power_w),
            rx_power_w: self.rx_power_w.unwrap_or(base.rx_power_w),
            latency_ms: self.latency_ms.unwrap_or(base.latency_ms),
            jitter_ms: self.jitter_ms.unwrap_or(base.jitter_ms),
            frame_payload_bytes: self.frame_payload_bytes.unwrap_or(base.frame_payload_bytes),
            frame_header_bytes: self.frame_header_bytes.unwrap_or(base.frame_header_bytes),
            max_retransmissions: self.max_retransmissions.unwrap_or(base.max_retransmissions),
            loss: self.loss.unwrap_or(base.loss),
            power_control: self.power_control.unwrap_or(base.power_control),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_band_needs_an_emulated_radio() {
        let shared = |preset| ChannelConfig {
            access: Access::Shared,
            ..ChannelConfig::from_preset(preset)
        };
        assert_eq!(shared(Preset::D2dUrban).resolve().unwrap().access, Access::Shared);
        let error = shared(Preset::Ideal).resolve().unwrap_err().to_string();
        assert!(
            error.contains("channel.access") && error.contains("emulated"),
            "{error}"
        );
    }

    #[test]
    fn the_default_config_is_d2d_urban() {
        let resolved = ChannelConfig::default().resolve().unwrap();
        assert_eq!(resolved.preset, Preset::D2dUrban);
        assert_eq!(resolved.shaping, Shaping::Emulate);
        assert_eq!(resolved.time_scale, 0.01);
        assert_eq!(resolved.mode, Mode::Unicast);
        assert_eq!(resolved.topology, Topology::FullMesh);
        assert_eq!(resolved.placement, Placement::UniformSquare { area_m: 100.0 });
        assert_eq!(resolved.radio, RadioParams::default());
    }

    #[test]
    fn every_preset_resolves() {
        for preset in Preset::ALL {
            let resolved = ChannelConfig::from_preset(preset).resolve().unwrap();
            assert_eq!(resolved.radio, preset.radio_params());
            let channel = resolved.channel(1, 6).unwrap();
            assert_eq!(resolved.topology.adjacency(&channel).unwrap().len(), 6);
        }
    }

    #[test]
    fn a_toml_section_parses_and_overrides_the_preset() {
        let text = r#"
            preset = "d2d-edge"
            time_scale = 0
            mode = "broadcast"
            topology = { radio_range = { min_snr_db = 3 } }
            tx_power_dbm = 17
            bandwidth_hz = 2000000
            max_spectral_efficiency_bps_per_hz = inf
            fading = { rician = { k_db = 6 } }
            path_loss = { free_space = { carrier_hz = 5.8e9 } }
            loss = { gilbert_elliott = { p_good_to_bad = 0.05, p_bad_to_good = 0.3, loss_good = 0.01, loss_bad = 0.5 } }
        "#;
        let config: ChannelConfig = toml::from_str(text).unwrap();
        let resolved = config.resolve().unwrap();
        assert_eq!(resolved.mode, Mode::Broadcast);
        assert_eq!(resolved.time_scale, 0.0);
        assert_eq!(resolved.topology, Topology::RadioRange { min_snr_db: 3.0 });
        assert_eq!(resolved.placement, Placement::UniformSquare { area_m: 300.0 });
        let radio = resolved.radio;
        assert_eq!(radio.tx_power_dbm, 17.0);
        assert_eq!(radio.bandwidth_hz, 2e6);
        assert_eq!(radio.max_spectral_efficiency_bps_per_hz, None);
        assert_eq!(radio.fading, Fading::Rician { k_db: 6.0 });
        assert_eq!(radio.path_loss, PathLoss::FreeSpace { carrier_hz: 5.8e9 });
        assert!(matches!(radio.loss, LossModel::GilbertElliott { .. }));
        // untouched values keep the preset's
        assert_eq!(radio.shadowing_sigma_db, 10.0);
        assert_eq!(radio.max_retransmissions, 1);
    }

    #[test]
    fn unit_variants_and_explicit_positions_parse() {
        let text = r#"
            preset = "wifi"
            topology = "ring"
            fading = "none"
            loss = "from_snr"
            path_loss = "urban"
            positions = [{ x_m = 0, y_m = 0 }, { x_m = 10.5, y_m = 3 }]
        "#;
        let resolved = toml::from_str::<ChannelConfig>(text).unwrap().resolve().unwrap();
        assert_eq!(resolved.topology, Topology::Ring);
        assert_eq!(resolved.radio.fading, Fading::None);
        assert_eq!(resolved.radio.path_loss, PathLoss::Urban);
        let channel = resolved.channel(0, 2).unwrap();
        assert_eq!(channel.positions()[1], Position::new(10.5, 3.0));
        assert_eq!(
            resolved.channel(0, 3).unwrap_err(),
            Error::PositionCount { given: 2, nodes: 3 }
        );
    }

    #[test]
    fn the_resolved_channel_round_trips_through_toml_and_json() {
        let resolved = ChannelConfig::from_preset(Preset::Wifi).resolve().unwrap();
        let json = serde_json::to_string(&resolved).unwrap();
        assert_eq!(serde_json::from_str::<ResolvedChannel>(&json).unwrap(), resolved);
        let config = ChannelConfig {
            tx_power_dbm: Some(3.0),
            ..ChannelConfig::from_preset(Preset::D2dEdge)
        };
        let text = toml::to_string(&config).unwrap();
        assert_eq!(toml::from_str::<ChannelConfig>(&text).unwrap(), config);
    }

    fn error_of(text: &str) -> String {
        match toml::from_str::<ChannelConfig>(text) {
            Ok(config) => config.validate().unwrap_err().to_string(),
            Err(err) => err.to_string(),
        }
    }

    #[test]
    fn config_errors_name_the_field() {
        let cases = [
            ("bandwidth_hz = -1", "channel.bandwidth_hz must be > 0 (got -1)"),
            ("time_scale = -0.5", "channel.time_scale must be >= 0 (got -0.5)"),
            (
                "time_scale = 2000",
                "channel.time_scale must be at most 1000 wall seconds per emulated second: slower pacing \
                 cannot be represented (got 2000)",
            ),
            ("area_m = 0", "channel.area_m must be > 0 (got 0)"),
            (
                "rate_efficiency = 0",
                "channel.rate_efficiency must be in (0, 1] (got 0)",
            ),
            (
                "shadowing_sigma_db = nan",
                "channel.shadowing_sigma_db must be >= 0 (got NaN)",
            ),
            (
                "max_retransmissions = 300",
                "channel.max_retransmissions must be <= 255 (got 300)",
            ),
            (
                "frame_payload_bytes = 0",
                "channel.frame_payload_bytes must be > 0 (got 0)",
            ),
            (
                "topology = { k_nearest = { k = 0 } }",
                "channel.topology.k_nearest.k must be >= 1 (got 0)",
            ),
            (
                "loss = { bernoulli = { p = 2 } }",
                "channel.loss.bernoulli.p must be a probability in [0, 1] (got 2)",
            ),
            (
                "fading = { rician = { k_db = inf } }",
                "channel.fading.rician.k_db must be a finite number (got inf)",
            ),
            (
                "path_loss = { free_space = { carrier_hz = 0 } }",
                "channel.path_loss.free_space.carrier_hz must be > 0 (got 0)",
            ),
            (
                "positions = []",
                "channel.positions must list at least one position (got [])",
            ),
            (
                "area_m = 50\npositions = [{ x_m = 0, y_m = 0 }]",
                "channel.positions and channel.area_m are both set; give one placement, not both",
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(error_of(text), expected, "for `{text}`");
        }
    }

    #[test]
    fn unknown_fields_and_presets_are_rejected_by_name() {
        let unknown_field = error_of("bandwith_hz = 1e6");
        assert!(unknown_field.contains("unknown field `bandwith_hz`"), "{unknown_field}");
        let unknown_preset = error_of("preset = \"5g\"");
        assert!(unknown_preset.contains("unknown variant `5g`"), "{unknown_preset}");
        assert!(unknown_preset.contains("d2d-urban"), "{unknown_preset}");
    }
}
