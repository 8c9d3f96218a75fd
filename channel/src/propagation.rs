//! Large- and small-scale propagation: distance path loss, log-normal shadowing and
//! block fast fading.
//!
//! The three multiply (add in dB) into the channel power gain of a link in a round:
//! `g = 10^(−(PL(d) + X_σ)/10) · |h|²`, where `PL` is the distance law, `X_σ ~ N(0, σ²)`
//! dB the shadowing and `|h|²` the fast-fading power gain with `E|h|² = 1`, so fading
//! changes a round's SNR but not the link's mean.

use rand::Rng;
use rand_distr::{Exp1, StandardNormal};
use serde::{Deserialize, Serialize};

use crate::error::{Result, ensure_finite, ensure_positive};
use crate::units::{SPEED_OF_LIGHT_M_PER_S, db_to_linear};

/// Distance-dependent path loss law, in dB, of a link of length `d`.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum PathLoss {
    /// Device-to-device, `148 + 40·log10(d_km)` dB: the UE-to-UE law of the D2D-underlay
    /// literature built on the 3GPP LTE-D2D study (3GPP TR 36.843), e.g. Feng et al.,
    /// "Device-to-device communications underlaying cellular networks", IEEE Trans.
    /// Commun. 61(8), 2013. Exponent 4 (two low antennas, ground reflection); about
    /// 2 GHz.
    #[default]
    D2d,
    /// Urban macro, `128.1 + 37.6·log10(d_km)` dB: 3GPP TR 36.942 §4.5.2 (the
    /// Hata-derived urban law at 2 GHz with a 15 m base-station antenna), reused by TR
    /// 36.814. A less steep, more forgiving law than [`PathLoss::D2d`].
    Urban,
    /// Free space (Friis), `20·log10(4π·d·f/c)` dB at carrier frequency `f`.
    FreeSpace {
        /// Carrier frequency, Hz (2.4e9 for 2.4 GHz Wi-Fi).
        carrier_hz: f64,
    },
}

impl PathLoss {
    /// Path loss in dB at `distance_m`, with the distance floored at `min_distance_m`.
    ///
    /// The laws are fitted for tens of metres and more; the floor keeps them finite as
    /// `d → 0` (two devices at the same spot) instead of returning −∞ dB.
    pub fn loss_db(&self, distance_m: f64, min_distance_m: f64) -> f64 {
        let distance_m = distance_m.max(min_distance_m);
        match *self {
            PathLoss::D2d => 148.0 + 40.0 * (distance_m / 1000.0).log10(),
            PathLoss::Urban => 128.1 + 37.6 * (distance_m / 1000.0).log10(),
            PathLoss::FreeSpace { carrier_hz } => {
                20.0 * (4.0 * std::f64::consts::PI * distance_m * carrier_hz / SPEED_OF_LIGHT_M_PER_S).log10()
            }
        }
    }

    /// Checks the law's own parameters.
    pub fn validate(&self) -> Result<()> {
        match *self {
            PathLoss::D2d | PathLoss::Urban => Ok(()),
            PathLoss::FreeSpace { carrier_hz } => {
                ensure_positive(carrier_hz, "channel.path_loss.free_space.carrier_hz")
            }
        }
    }
}

/// One draw of log-normal shadowing, in dB of *extra loss*: `σ·N(0, 1)`.
pub(crate) fn draw_shadowing_db<R: Rng>(sigma_db: f64, rng: &mut R) -> f64 {
    let standard: f64 = rng.sample(StandardNormal);
    sigma_db * standard
}

/// Fast (multipath) fading: the power gain `|h|²` of a round, with `E|h|² = 1`.
///
/// Block fading: the gain is drawn once per directed link and round, constant for all
/// the frames of that round (a round's exchange is assumed shorter than the channel's
/// coherence time) and independent between rounds.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Fading {
    /// No fast fading: `|h|² = 1`.
    None,
    /// Rayleigh fading (rich scattering, no line of sight): `|h|² ~ Exp(1)`.
    #[default]
    Rayleigh,
    /// Rician fading: a line-of-sight component `K` times stronger than the scattered
    /// power; `K → 0` is Rayleigh, `K → ∞` no fading.
    Rician {
        /// Rician K factor in dB.
        k_db: f64,
    },
}

impl Fading {
    /// Checks the model's own parameters.
    pub fn validate(&self) -> Result<()> {
        match *self {
            Fading::None | Fading::Rayleigh => Ok(()),
            Fading::Rician { k_db } => ensure_finite(k_db, "channel.fading.rician.k_db"),
        }
    }

    /// One draw of the fading power gain `|h|²`.
    pub(crate) fn draw_power_gain<R: Rng>(&self, rng: &mut R) -> f64 {
        match *self {
            Fading::None => 1.0,
            Fading::Rayleigh => rng.sample(Exp1),
            Fading::Rician { k_db } => {
                // h = √(K/(K+1)) + √(1/(K+1))·CN(0, 1); each real part of CN(0, 1) has
                // variance 1/2, so E|h|² = K/(K+1) + 1/(K+1) = 1.
                let k = db_to_linear(k_db);
                let line_of_sight = (k / (k + 1.0)).sqrt();
                let scatter_std = (1.0 / (2.0 * (k + 1.0))).sqrt();
                let in_phase: f64 = rng.sample(StandardNormal);
                let quadrature: f64 = rng.sample(StandardNormal);
                (line_of_sight + scatter_std * in_phase).powi(2) + (scatter_std * quadrature).powi(2)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{SplitMix64, Stream};

    #[test]
    fn path_loss_laws_match_hand_computed_values() {
        // 148 + 40·log10(0.03) = 148 − 60.915 = 87.085 dB
        assert!((PathLoss::D2d.loss_db(30.0, 1.0) - 87.084_850_2).abs() < 1e-6);
        // at 1 km the laws reduce to their constants
        assert!((PathLoss::D2d.loss_db(1000.0, 1.0) - 148.0).abs() < 1e-12);
        assert!((PathLoss::Urban.loss_db(1000.0, 1.0) - 128.1).abs() < 1e-12);
        // 128.1 + 37.6·log10(0.03) = 70.840 dB
        assert!((PathLoss::Urban.loss_db(30.0, 1.0) - 70.839_759_1).abs() < 1e-6);
        // 20·log10(4π·30·2.4e9/c) = 69.594 dB
        let wifi = PathLoss::FreeSpace { carrier_hz: 2.4e9 };
        assert!((wifi.loss_db(30.0, 1.0) - 69.594_433_2).abs() < 1e-6);
    }

    #[test]
    fn the_minimum_distance_keeps_path_loss_finite() {
        for law in [
            PathLoss::D2d,
            PathLoss::Urban,
            PathLoss::FreeSpace { carrier_hz: 2.4e9 },
        ] {
            let at_zero = law.loss_db(0.0, 1.0);
            assert!(at_zero.is_finite());
            assert_eq!(at_zero, law.loss_db(1.0, 1.0));
            assert_eq!(at_zero, law.loss_db(0.5, 1.0));
        }
    }

    #[test]
    fn rayleigh_and_rician_gains_have_unit_mean() {
        let draws = 200_000;
        for fading in [Fading::Rayleigh, Fading::Rician { k_db: 6.0 }] {
            let mut rng = SplitMix64::for_stream(1, Stream::Fading, &[0]);
            let mean = (0..draws).map(|_| fading.draw_power_gain(&mut rng)).sum::<f64>() / draws as f64;
            // Exp(1) has variance 1, so the standard error of the mean is 1/√n ≈ 0.0022;
            // Rician has a smaller variance. 5 standard errors:
            assert!(
                (mean - 1.0).abs() < 5.0 / (draws as f64).sqrt(),
                "{fading:?}: mean {mean}"
            );
        }
    }

    #[test]
    fn rayleigh_power_gain_is_exponential() {
        // P(|h|² < x) = 1 − e^(−x); at x = ln 2 it is exactly one half.
        let draws = 100_000;
        let mut rng = SplitMix64::for_stream(2, Stream::Fading, &[0]);
        let below = (0..draws)
            .filter(|_| Fading::Rayleigh.draw_power_gain(&mut rng) < std::f64::consts::LN_2)
            .count();
        let fraction = below as f64 / draws as f64;
        // binomial standard deviation √(0.25/n) ≈ 0.0016; allow 5 of them
        assert!((fraction - 0.5).abs() < 0.008, "{fraction}");
    }

    #[test]
    fn shadowing_has_the_configured_spread() {
        let draws = 100_000;
        let mut rng = SplitMix64::for_stream(3, Stream::Shadowing, &[0]);
        let samples: Vec<f64> = (0..draws).map(|_| draw_shadowing_db(8.0, &mut rng)).collect();
        let mean = samples.iter().sum::<f64>() / draws as f64;
        let std = (samples.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / draws as f64).sqrt();
        assert!(mean.abs() < 0.15, "{mean}");
        assert!((std - 8.0).abs() < 0.15, "{std}");
    }
}
