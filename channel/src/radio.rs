//! The radio's parameters and the link-budget arithmetic built on them: SNR, rate,
//! outage, framing, airtime and energy.
//!
//! ```text
//! noise  N   = N0 + 10·log10(B) + NF                          dBm
//! SNR    γ   = P_tx − PL(d) − X_σ + 10·log10|h|² − N          dB
//! rate   R   = B · min(η·log2(1 + γ), S_max),  0 in outage    bit/s
//! outage     = γ < γ_out
//! airtime t  = bits / R                                        s
//! energy     E_tx = (P_tx + P_circuit)·t,  E_rx = P_rx·t      J
//! ```

use serde::{Deserialize, Serialize};

use crate::error::{Result, ensure, ensure_finite, ensure_non_negative, ensure_positive};
use crate::loss::LossModel;
use crate::policy::PowerControl;
use crate::propagation::{Fading, PathLoss};
use crate::units::{db_to_linear, dbm_to_watts};

/// The most retransmissions a frame may get: 802.11's retry limits have the same
/// range (1..=255), and the bound keeps a degenerate configuration from looping for
/// billions of attempts.
pub const MAX_RETRANSMISSIONS_LIMIT: u32 = 255;

/// Everything that determines a link's quality and cost, the same for every device.
///
/// `Default` is the `d2d-urban` preset: the D2D defaults of the literature (see each
/// field and the crate README).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RadioParams {
    /// Distance path-loss law. Default [`PathLoss::D2d`].
    pub path_loss: PathLoss,
    /// Distances below this are treated as this, m, so the laws stay finite. Default 1 m.
    pub min_distance_m: f64,
    /// Standard deviation of log-normal shadowing, dB; drawn once per node pair for the
    /// run. Default 8 dB, the log-normal σ of the 3GPP LTE system-evaluation
    /// methodology (TR 36.814) that most D2D studies reuse; published D2D evaluations
    /// range from about 4 dB (line of sight, TR 36.885) to 12 dB.
    pub shadowing_sigma_db: f64,
    /// Fast-fading model, redrawn every round. Default [`Fading::Rayleigh`].
    pub fading: Fading,
    /// Bandwidth of one link, Hz. Default 1 MHz (DESIGN; about five LTE resource blocks).
    pub bandwidth_hz: f64,
    /// Transmit power, dBm. Default 20 dBm (100 mW), below LTE's 23 dBm UE maximum.
    pub tx_power_dbm: f64,
    /// Thermal noise power spectral density, dBm/Hz. Default −174 dBm/Hz (kT at 290 K).
    pub noise_density_dbm_per_hz: f64,
    /// Receiver noise figure, dB. Default 9 dB, the UE noise figure of 3GPP TR 36.942 /
    /// TR 36.814.
    pub noise_figure_db: f64,
    /// Fraction `η` of the Shannon capacity the link achieves, in (0, 1]. Default 1.0:
    /// the ideal Shannon rate of DESIGN; 3GPP TR 36.942 (Annex A.2) uses 0.6 (downlink)
    /// and 0.4 (uplink) to stand for real modulation, coding and overheads.
    pub rate_efficiency: f64,
    /// Cap on the achieved spectral efficiency `η·log2(1+γ)`, bit/s/Hz, modelling the
    /// highest modulation and coding scheme. Default none (pure Shannon); TR 36.942
    /// Annex A.2 caps at 4.4 (downlink) and 2.0 (uplink) bit/s/Hz.
    pub max_spectral_efficiency_bps_per_hz: Option<f64>,
    /// Outage threshold `γ_out`, dB: below it the link carries nothing this round.
    /// Default −1.5 dB, where the coded-BPSK frame-error curve of
    /// [`LossModel::FromSnr`] reaches 1 (Liu, Zhou & Giannakis 2004: γ = −1.53 dB):
    /// under it not a frame would get through, so the transmitter, whose rate follows
    /// the SNR and therefore knows it, does not try.
    pub outage_snr_db: f64,
    /// Power drawn by the transmitter's circuits on top of the radiated power while
    /// sending, W. Default 0.1 W, an order-of-magnitude handset RF chain (the radio's
    /// share, not the whole phone).
    pub circuit_power_w: f64,
    /// Power drawn while receiving, W. Default 0.1 W, same order as the circuit power.
    pub rx_power_w: f64,
    /// One-way latency added to every message besides its airtime (processing,
    /// scheduling), ms. Default 1 ms, one LTE subframe.
    pub latency_ms: f64,
    /// Extra latency drawn uniformly in `[0, jitter_ms]` per link and round, ms.
    /// Default 0.
    pub jitter_ms: f64,
    /// Payload bytes per frame; a message is cut into frames of this size (the last one
    /// shorter). Default 1500 bytes, an Ethernet/IP MTU.
    pub frame_payload_bytes: u32,
    /// Overhead bytes sent with every frame and costing airtime. Default 40 bytes, the
    /// IPv4 + TCP headers (without options) of the emulated TCP stream.
    pub frame_header_bytes: u32,
    /// Retransmissions allowed per frame before the message is given up
    /// (at most [`MAX_RETRANSMISSIONS_LIMIT`]). Default 3, i.e. four transmissions per
    /// frame, the usual LTE HARQ maximum.
    pub max_retransmissions: u32,
    /// How frames are lost. Default [`LossModel::FromSnr`].
    pub loss: LossModel,
    /// How much of `tx_power_dbm` each transmission uses. Default
    /// [`PowerControl::Full`].
    #[serde(skip_serializing_if = "PowerControl::is_full")]
    pub power_control: PowerControl,
}

impl Default for RadioParams {
    fn default() -> Self {
        Self {
            path_loss: PathLoss::D2d,
            min_distance_m: 1.0,
            shadowing_sigma_db: 8.0,
            fading: Fading::Rayleigh,
            bandwidth_hz: 1e6,
            tx_power_dbm: 20.0,
            noise_density_dbm_per_hz: -174.0,
            noise_figure_db: 9.0,
            rate_efficiency: 1.0,
            max_spectral_efficiency_bps_per_hz: None,
            outage_snr_db: -1.5,
            circuit_power_w: 0.1,
            rx_power_w: 0.1,
            latency_ms: 1.0,
            jitter_ms: 0.0,
            frame_payload_bytes: 1500,
            frame_header_bytes: 40,
            max_retransmissions: 3,
            loss: LossModel::FromSnr,
            power_control: PowerControl::Full,
        }
    }
}

impl RadioParams {
    /// Checks every parameter; the error names the first offending one.
    pub fn validate(&self) -> Result<()> {
        self.path_loss.validate()?;
        ensure_positive(self.min_distance_m, "channel.min_distance_m")?;
        ensure_non_negative(self.shadowing_sigma_db, "channel.shadowing_sigma_db")?;
        self.fading.validate()?;
        ensure_positive(self.bandwidth_hz, "channel.bandwidth_hz")?;
        ensure_finite(self.tx_power_dbm, "channel.tx_power_dbm")?;
        ensure_finite(self.noise_density_dbm_per_hz, "channel.noise_density_dbm_per_hz")?;
        ensure_non_negative(self.noise_figure_db, "channel.noise_figure_db")?;
        ensure(
            self.rate_efficiency > 0.0 && self.rate_efficiency <= 1.0,
            "channel.rate_efficiency",
            "must be in (0, 1]",
            self.rate_efficiency,
        )?;
        if let Some(cap) = self.max_spectral_efficiency_bps_per_hz {
            ensure_positive(cap, "channel.max_spectral_efficiency_bps_per_hz")?;
        }
        ensure_finite(self.outage_snr_db, "channel.outage_snr_db")?;
        ensure_non_negative(self.circuit_power_w, "channel.circuit_power_w")?;
        ensure_non_negative(self.rx_power_w, "channel.rx_power_w")?;
        ensure_non_negative(self.latency_ms, "channel.latency_ms")?;
        ensure_non_negative(self.jitter_ms, "channel.jitter_ms")?;
        ensure(
            self.frame_payload_bytes > 0,
            "channel.frame_payload_bytes",
            "must be > 0",
            self.frame_payload_bytes,
        )?;
        ensure(
            self.max_retransmissions <= MAX_RETRANSMISSIONS_LIMIT,
            "channel.max_retransmissions",
            &format!("must be <= {MAX_RETRANSMISSIONS_LIMIT}"),
            self.max_retransmissions,
        )?;
        self.loss.validate()?;
        self.power_control.validate(self.tx_power_dbm)
    }

    /// Transmit power in watts.
    pub fn tx_power_w(&self) -> f64 {
        dbm_to_watts(self.tx_power_dbm)
    }

    /// Noise power at the receiver over the link bandwidth, dBm: `N0 + 10·log10(B) + NF`.
    pub fn noise_power_dbm(&self) -> f64 {
        self.noise_density_dbm_per_hz + 10.0 * self.bandwidth_hz.log10() + self.noise_figure_db
    }

    /// SNR in dB of a link with `path_loss_db`, `shadowing_db` of extra loss and fading
    /// power gain `fading_gain` (`|h|²`, 1 for the mean).
    pub fn snr_db(&self, path_loss_db: f64, shadowing_db: f64, fading_gain: f64) -> f64 {
        self.tx_power_dbm - path_loss_db - shadowing_db + 10.0 * fading_gain.log10() - self.noise_power_dbm()
    }

    /// Whether a link at `snr_db` is in outage (below the threshold, or not a number).
    pub fn is_outage(&self, snr_db: f64) -> bool {
        snr_db.is_nan() || snr_db < self.outage_snr_db
    }

    /// Achieved rate at `snr_db`, bit/s: `B·min(η·log2(1+γ), S_max)`, and 0 in outage
    /// (the truncated Shannon bound of 3GPP TR 36.942 Annex A.2).
    pub fn rate_bps(&self, snr_db: f64) -> f64 {
        if self.is_outage(snr_db) {
            return 0.0;
        }
        let shannon = self.rate_efficiency * (1.0 + db_to_linear(snr_db)).log2();
        let spectral_efficiency = match self.max_spectral_efficiency_bps_per_hz {
            Some(cap) => shannon.min(cap),
            None => shannon,
        };
        self.bandwidth_hz * spectral_efficiency
    }

    /// Number of frames a message of `payload_bytes` is cut into. An empty message still
    /// takes one (header-only) frame: the receiver has to learn that it exists.
    pub fn frame_count(&self, payload_bytes: u64) -> u64 {
        payload_bytes.div_ceil(u64::from(self.frame_payload_bytes)).max(1)
    }

    /// Payload bytes carried by frame `index` (0-based) of a `payload_bytes` message.
    pub fn frame_payload(&self, payload_bytes: u64, index: u64) -> u64 {
        let per_frame = u64::from(self.frame_payload_bytes);
        payload_bytes
            .saturating_sub(index.saturating_mul(per_frame))
            .min(per_frame)
    }

    /// Bits on air for one transmission of a frame carrying `frame_payload_bytes`.
    pub fn frame_bits(&self, frame_payload_bytes: u64) -> u64 {
        (frame_payload_bytes + u64::from(self.frame_header_bytes)).saturating_mul(8)
    }

    /// Bits on air to send every frame of a `payload_bytes` message once.
    pub fn message_bits(&self, payload_bytes: u64) -> u64 {
        let frames = self.frame_count(payload_bytes);
        payload_bytes
            .saturating_add(frames.saturating_mul(u64::from(self.frame_header_bytes)))
            .saturating_mul(8)
    }

    /// Energy the transmitter spends over `airtime_s` at full power, J:
    /// `(P_tx + P_circuit)·t`.
    pub fn tx_energy_j(&self, airtime_s: f64) -> f64 {
        self.tx_energy_at_j(self.tx_power_dbm, airtime_s)
    }

    /// Energy the transmitter spends over `airtime_s` radiating `tx_power_dbm`, J.
    pub fn tx_energy_at_j(&self, tx_power_dbm: f64, airtime_s: f64) -> f64 {
        (dbm_to_watts(tx_power_dbm) + self.circuit_power_w) * airtime_s
    }

    /// Energy a receiver spends listening for `airtime_s`, J: `P_rx·t`.
    pub fn rx_energy_j(&self, airtime_s: f64) -> f64 {
        self.rx_power_w * airtime_s
    }
}

/// Time on air of `bits` at `rate_bps`, s; `None` when the rate is not positive (the
/// bits would never get through).
pub fn airtime_s(bits: u64, rate_bps: f64) -> Option<f64> {
    (rate_bps > 0.0 && rate_bps.is_finite()).then(|| bits as f64 / rate_bps)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 30 m link of the crate README, worked by hand:
    /// PL = 148 + 40·log10(0.03) = 87.0849 dB; N = −174 + 60 + 9 = −105 dBm;
    /// γ = 20 − 87.0849 + 105 = 37.9151 dB = 6187.50; R = 1e6·log2(6188.50) = 12.5954 Mbit/s.
    #[test]
    fn link_budget_of_a_30_m_link_at_the_defaults() {
        let params = RadioParams::default();
        assert_eq!(params.noise_power_dbm(), -105.0);
        let path_loss_db = params.path_loss.loss_db(30.0, params.min_distance_m);
        let snr_db = params.snr_db(path_loss_db, 0.0, 1.0);
        assert!((snr_db - 37.915_149_8).abs() < 1e-6, "{snr_db}");
        assert!((db_to_linear(snr_db) - 6_187.496_7).abs() < 1e-3);
        let rate = params.rate_bps(snr_db);
        assert!((rate - 12_595_373.28).abs() < 0.1, "{rate}");
    }

    /// A 2,560-byte message (64 × 10 f32 logits) on that link: frames of 1500 and 1060
    /// payload bytes, each with 40 header bytes: (1540 + 1100)·8 = 21,120 bits;
    /// t = 21120 / 12,595,373 = 1.67681 ms; E_tx = (0.1 + 0.1 W)·t = 0.335361 mJ;
    /// E_rx = 0.1 W·t = 0.167681 mJ.
    #[test]
    fn airtime_and_energy_of_a_2560_byte_message() {
        let params = RadioParams::default();
        assert_eq!(params.frame_count(2560), 2);
        assert_eq!(params.frame_payload(2560, 0), 1500);
        assert_eq!(params.frame_payload(2560, 1), 1060);
        assert_eq!(params.frame_payload(2560, 2), 0);
        assert_eq!(params.message_bits(2560), 21_120);
        let rate = params.rate_bps(params.snr_db(params.path_loss.loss_db(30.0, 1.0), 0.0, 1.0));
        let airtime = airtime_s(params.message_bits(2560), rate).unwrap();
        assert!((airtime - 1.676_806_2e-3).abs() < 1e-9, "{airtime}");
        assert!((params.tx_energy_j(airtime) - 3.353_612_4e-4).abs() < 1e-10);
        assert!((params.rx_energy_j(airtime) - 1.676_806_2e-4).abs() < 1e-10);
    }

    #[test]
    fn empty_messages_take_one_header_only_frame() {
        let params = RadioParams::default();
        assert_eq!(params.frame_count(0), 1);
        assert_eq!(params.frame_payload(0, 0), 0);
        assert_eq!(params.message_bits(0), 320);
        assert_eq!(params.frame_count(1500), 1);
        assert_eq!(params.frame_count(1501), 2);
    }

    #[test]
    fn outage_truncates_the_rate_and_the_cap_limits_it() {
        let mut params = RadioParams::default();
        assert_eq!(params.rate_bps(-1.6), 0.0);
        assert!(params.rate_bps(-1.5) > 0.0);
        assert!(params.is_outage(f64::NAN));
        assert!(params.is_outage(f64::NEG_INFINITY));
        params.rate_efficiency = 0.6;
        params.max_spectral_efficiency_bps_per_hz = Some(4.4);
        // at 0 dB: 0.6·log2(2) = 0.6 bit/s/Hz
        assert!((params.rate_bps(0.0) - 0.6e6).abs() < 1e-6);
        // at 40 dB: 0.6·log2(10001) = 7.97, capped at 4.4
        assert!((params.rate_bps(40.0) - 4.4e6).abs() < 1e-6);
    }

    #[test]
    fn airtime_needs_a_positive_rate() {
        assert_eq!(airtime_s(1000, 1e6), Some(1e-3));
        assert_eq!(airtime_s(1000, 0.0), None);
        assert_eq!(airtime_s(1000, f64::NAN), None);
    }

    #[test]
    fn defaults_validate_and_bad_values_name_their_field() {
        RadioParams::default().validate().unwrap();
        /// Breaks one parameter of the defaults.
        type Breakage = fn(&mut RadioParams);
        let cases: Vec<(&str, Breakage)> = vec![
            ("channel.bandwidth_hz must be > 0", |p| p.bandwidth_hz = 0.0),
            ("channel.min_distance_m must be > 0", |p| p.min_distance_m = -1.0),
            ("channel.rate_efficiency must be in (0, 1]", |p| p.rate_efficiency = 1.5),
            ("channel.noise_figure_db must be >= 0", |p| p.noise_figure_db = f64::NAN),
            ("channel.tx_power_dbm must be a finite number", |p| {
                p.tx_power_dbm = f64::INFINITY
            }),
            ("channel.frame_payload_bytes must be > 0", |p| p.frame_payload_bytes = 0),
            ("channel.max_retransmissions must be <= 255", |p| {
                p.max_retransmissions = 1000
            }),
            ("channel.max_spectral_efficiency_bps_per_hz must be > 0", |p| {
                p.max_spectral_efficiency_bps_per_hz = Some(0.0)
            }),
        ];
        for (expected, mutate) in cases {
            let mut params = RadioParams::default();
            mutate(&mut params);
            let message = params.validate().unwrap_err().to_string();
            assert!(message.starts_with(expected), "{message}");
        }
    }
}
