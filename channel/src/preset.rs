//! Named channel presets: documented bundles of parameters a scenario picks by name.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::loss::LossModel;
use crate::propagation::{Fading, PathLoss};
use crate::radio::RadioParams;
use crate::topology::Topology;

/// How the node's shaper treats its links.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shaping {
    /// No emulation and no radio accounting: messages go as fast as the socket allows
    /// and never get lost; airtime and energy are reported as 0.
    Off,
    /// No emulation: messages go over the real link as they are, and the shaper reports
    /// the real link's measured transfer time instead of an emulated airtime.
    Measure,
    /// Full emulation: frames wait their airtime × `time_scale`, get lost and
    /// retransmitted, and cost energy, all by the radio model.
    Emulate,
}

/// A named set of channel parameters. The numbers are in the crate README's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// No shaping at all: the learning algorithm alone, as if the radio were perfect.
    Ideal,
    /// No shaping; the real link (loopback, LAN) is measured as it is.
    Lan,
    /// An 802.11n-like single-stream Wi-Fi link at 2.4 GHz: 20 MHz, free-space path
    /// loss in a 30 m area, 60 % MAC efficiency capped at 2 bit/s/Hz (≈ 40 Mbit/s).
    Wifi,
    /// The D2D defaults of the literature (DESIGN): 1 MHz, 20 dBm, NF 9 dB, the
    /// `148 + 40·log10(d_km)` law, 8 dB shadowing, Rayleigh fading, a 100 m area.
    #[default]
    D2dUrban,
    /// Far, weak and lossy D2D: a 300 m area, 17 dBm, 10 dB shadowing, uplink-like link
    /// abstraction (η = 0.4, ≤ 2 bit/s/Hz), one retransmission; each node talks to its
    /// three nearest neighbours, and messages do get lost.
    D2dEdge,
}

impl Preset {
    /// Every preset, in documentation order.
    pub const ALL: [Preset; 5] = [
        Preset::Ideal,
        Preset::Lan,
        Preset::Wifi,
        Preset::D2dUrban,
        Preset::D2dEdge,
    ];

    /// The preset's name as a scenario file and the command line spell it.
    pub fn name(self) -> &'static str {
        match self {
            Preset::Ideal => "ideal",
            Preset::Lan => "lan",
            Preset::Wifi => "wifi",
            Preset::D2dUrban => "d2d-urban",
            Preset::D2dEdge => "d2d-edge",
        }
    }

    /// A one-line description, for help texts.
    pub fn description(self) -> &'static str {
        match self {
            Preset::Ideal => "no shaping, no loss, no radio accounting",
            Preset::Lan => "no shaping; the real link is measured",
            Preset::Wifi => "802.11n-like 20 MHz Wi-Fi at 2.4 GHz in a 30 m room",
            Preset::D2dUrban => "D2D defaults: 1 MHz, 20 dBm, 3GPP-style D2D path loss, 100 m area",
            Preset::D2dEdge => "far, weak, lossy D2D: 300 m area, 17 dBm, 3 nearest neighbours",
        }
    }

    /// The comma-separated list of names, for error messages and help texts.
    pub fn allowed_names() -> String {
        Self::ALL.map(Preset::name).join(", ")
    }

    /// How the shaper treats the links.
    pub fn shaping(self) -> Shaping {
        match self {
            Preset::Ideal => Shaping::Off,
            Preset::Lan => Shaping::Measure,
            Preset::Wifi | Preset::D2dUrban | Preset::D2dEdge => Shaping::Emulate,
        }
    }

    /// Side of the square area devices are placed in, m.
    pub fn area_m(self) -> f64 {
        match self {
            Preset::Wifi => 30.0,
            Preset::Ideal | Preset::Lan | Preset::D2dUrban => 100.0,
            Preset::D2dEdge => 300.0,
        }
    }

    /// The default topology.
    pub fn topology(self) -> Topology {
        match self {
            Preset::D2dEdge => Topology::KNearest { k: 3 },
            _ => Topology::FullMesh,
        }
    }

    /// The radio parameters. `ideal` and `lan` do not emulate the radio; they carry the
    /// `d2d-urban` numbers so that a radio-range topology still has a meaning.
    pub fn radio_params(self) -> RadioParams {
        match self {
            Preset::Ideal | Preset::Lan | Preset::D2dUrban => RadioParams::default(),
            Preset::Wifi => RadioParams {
                path_loss: PathLoss::FreeSpace { carrier_hz: 2.4e9 },
                // Indoor log-normal spread of the TGn channel models (3–5 dB).
                shadowing_sigma_db: 4.0,
                fading: Fading::Rayleigh,
                bandwidth_hz: 20e6,
                // 100 mW: the 2.4 GHz EIRP limit in Europe (ETSI EN 300 328).
                tx_power_dbm: 20.0,
                // 802.11 derives its receiver sensitivities assuming a 10 dB noise figure.
                noise_figure_db: 10.0,
                // DCF contention, preambles and ACKs leave roughly 60 % of the PHY rate.
                rate_efficiency: 0.6,
                // Single-stream 802.11n tops out at 65 Mbit/s (MCS 7) in 20 MHz; 60 % of
                // it is ≈ 2 bit/s/Hz.
                max_spectral_efficiency_bps_per_hz: Some(2.0),
                // A Wi-Fi NIC draws about 1 W receiving and 1–2 W transmitting
                // (Halperin et al., HotPower 2010).
                circuit_power_w: 1.0,
                rx_power_w: 1.0,
                latency_ms: 2.0,
                // contention back-off
                jitter_ms: 2.0,
                // IPv4 + TCP (40) + 802.11 MAC header with QoS (26) + LLC/SNAP (8) + FCS (4)
                frame_header_bytes: 78,
                // dot11ShortRetryLimit = 7 transmissions
                max_retransmissions: 6,
                loss: LossModel::FromSnr,
                ..RadioParams::default()
            },
            Preset::D2dEdge => RadioParams {
                // Wider spread than the urban default: the D2D-underlay literature uses
                // up to 12 dB for UE-to-UE links.
                shadowing_sigma_db: 10.0,
                // Half the default's power (50 mW): a battery-saving device, not a
                // handset at full power.
                tx_power_dbm: 17.0,
                // Sidelink reuses the LTE uplink: TR 36.942's uplink link abstraction.
                rate_efficiency: 0.4,
                max_spectral_efficiency_bps_per_hz: Some(2.0),
                latency_ms: 5.0,
                jitter_ms: 5.0,
                // Latency-bound: one retry per frame, then the message is given up.
                max_retransmissions: 1,
                ..RadioParams::default()
            },
        }
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Preset {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self, Error> {
        Self::ALL
            .into_iter()
            .find(|preset| preset.name() == name)
            .ok_or_else(|| Error::UnknownPreset {
                name: name.to_owned(),
                allowed: Self::allowed_names(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_from_str_display_and_serde() {
        for preset in Preset::ALL {
            assert_eq!(preset.name().parse::<Preset>().unwrap(), preset);
            assert_eq!(preset.to_string(), preset.name());
            let json = serde_json::to_string(&preset).unwrap();
            assert_eq!(json, format!("\"{}\"", preset.name()));
            assert_eq!(serde_json::from_str::<Preset>(&json).unwrap(), preset);
        }
    }

    #[test]
    fn unknown_names_list_the_allowed_ones() {
        let err = "d2d".parse::<Preset>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown channel preset `d2d`; allowed: ideal, lan, wifi, d2d-urban, d2d-edge"
        );
    }

    #[test]
    fn every_preset_validates() {
        for preset in Preset::ALL {
            preset.radio_params().validate().unwrap();
            preset.topology().validate().unwrap();
            assert!(preset.area_m() > 0.0);
        }
        assert_eq!(Preset::default(), Preset::D2dUrban);
        assert_eq!(Preset::D2dUrban.radio_params(), RadioParams::default());
    }

    /// Wi-Fi at 30 m: FSPL 69.594 dB, noise −174 + 73.010 + 10 = −90.990 dBm,
    /// SNR = 20 − 69.594 + 90.990 = 41.396 dB; 0.6·log2(1 + 13,790) = 8.25 > 2, so the
    /// cap holds the rate at 2 bit/s/Hz × 20 MHz = 40 Mbit/s.
    #[test]
    fn wifi_link_budget_at_30_m() {
        let params = Preset::Wifi.radio_params();
        let path_loss_db = params.path_loss.loss_db(30.0, params.min_distance_m);
        let snr_db = params.snr_db(path_loss_db, 0.0, 1.0);
        assert!((params.noise_power_dbm() + 90.989_700).abs() < 1e-5);
        assert!((snr_db - 41.395_267).abs() < 1e-5, "{snr_db}");
        assert_eq!(params.rate_bps(snr_db), 40e6);
    }
}
