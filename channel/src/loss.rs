//! Frame losses: the models, the SNR-driven frame-error curve, and [`FrameLoss`], the
//! seeded per-message process a shaper asks "is this frame lost?" frame after frame.

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Result, ensure, ensure_probability};
use crate::rng::SplitMix64;
use crate::units::db_to_linear;

/// `a` of the packet-error fit `PER(γ) = a·exp(−g·γ)` for BPSK with the rate-1/2,
/// constraint-length-7 convolutional code of IEEE 802.11a / HIPERLAN/2 (Liu, Zhou &
/// Giannakis, "Cross-layer combining of adaptive modulation and coding with truncated
/// ARQ over wireless links", IEEE Trans. Wireless Commun. 3(5), 2004, Table I, mode 1).
pub const CODED_BPSK_FIT_A: f64 = 274.7229;
/// `g` of the same fit (per unit of linear SNR).
pub const CODED_BPSK_FIT_G: f64 = 7.9932;
/// Packet length the fit was made for, bits.
pub const CODED_BPSK_FIT_PACKET_BITS: f64 = 1080.0;

/// Probability that a frame of `frame_bits` is lost at linear SNR `snr_linear`, for a
/// BPSK rate-1/2 convolutionally coded link on AWGN.
///
/// The 1080-bit packet-error rate is the exponential fit of Liu, Zhou & Giannakis
/// (2004): `PER(γ) = min(1, a·e^(−g·γ))`, `a = 274.7229`, `g = 7.9932`, which reaches 1
/// at γ = ln(a)/g = −1.53 dB and falls to 1 % by γ = 1.07 dB: the waterfall of a coded
/// link. It is scaled to other lengths by treating a frame as `bits/1080` independent
/// packets: `FER = 1 − (1 − PER)^(bits/1080)` (a full 1,540-byte frame: 67 % at 0 dB,
/// 1 % at 2 dB, 4·10⁻¹¹ at 6 dB). BPSK-1/2 is the most robust mode a link
/// falls back to, so the curve is the natural loss model for a link whose rate already
/// follows the SNR; see the crate README for the reasoning.
pub fn coded_bpsk_frame_error_rate(snr_linear: f64, frame_bits: u64) -> f64 {
    if frame_bits == 0 {
        return 0.0;
    }
    if snr_linear.is_nan() || snr_linear <= 0.0 {
        return 1.0;
    }
    let reference_per = CODED_BPSK_FIT_A * (-CODED_BPSK_FIT_G * snr_linear).exp();
    if reference_per >= 1.0 {
        return 1.0;
    }
    // 1 − (1 − p)^n evaluated as −expm1(n·ln1p(−p)), exact even for p ~ 1e-300.
    let packets = frame_bits as f64 / CODED_BPSK_FIT_PACKET_BITS;
    -(packets * (-reference_per).ln_1p()).exp_m1()
}

/// How frames get lost on a link that is not in outage.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum LossModel {
    /// Independent losses with the probability of [`coded_bpsk_frame_error_rate`] at
    /// the round's SNR.
    #[default]
    FromSnr,
    /// Independent losses with a fixed probability, whatever the SNR.
    Bernoulli {
        /// Frame loss probability.
        p: f64,
    },
    /// Bursty losses: a two-state Markov chain (Gilbert 1960, Elliott 1963) that moves
    /// between a good and a bad state once per frame and loses a frame with the
    /// probability of its current state. Each message starts in a state drawn from the
    /// chain's stationary distribution.
    GilbertElliott {
        /// Probability of moving from the good to the bad state after a frame.
        p_good_to_bad: f64,
        /// Probability of moving from the bad to the good state after a frame.
        p_bad_to_good: f64,
        /// Frame loss probability in the good state.
        loss_good: f64,
        /// Frame loss probability in the bad state.
        loss_bad: f64,
    },
    /// No frame is ever lost (outage still applies).
    None,
}

impl LossModel {
    /// Checks the model's parameters.
    pub fn validate(&self) -> Result<()> {
        match *self {
            LossModel::FromSnr | LossModel::None => Ok(()),
            LossModel::Bernoulli { p } => ensure_probability(p, "channel.loss.bernoulli.p"),
            LossModel::GilbertElliott {
                p_good_to_bad,
                p_bad_to_good,
                loss_good,
                loss_bad,
            } => {
                const FIELD: &str = "channel.loss.gilbert_elliott";
                ensure_probability(p_good_to_bad, &format!("{FIELD}.p_good_to_bad"))?;
                ensure_probability(p_bad_to_good, &format!("{FIELD}.p_bad_to_good"))?;
                ensure_probability(loss_good, &format!("{FIELD}.loss_good"))?;
                ensure_probability(loss_bad, &format!("{FIELD}.loss_bad"))?;
                // With both transitions 0 the chain never mixes: no stationary state.
                ensure(
                    p_good_to_bad + p_bad_to_good > 0.0,
                    &format!("{FIELD}.p_good_to_bad + p_bad_to_good"),
                    "must be > 0",
                    p_good_to_bad + p_bad_to_good,
                )
            }
        }
    }

    /// The mean loss probability of a frame of `frame_bits` at `snr_db` (ignoring
    /// outage): the curve's value, `p`, or the Gilbert–Elliott stationary loss rate.
    pub fn frame_error_rate(&self, snr_db: f64, frame_bits: u64) -> f64 {
        match *self {
            LossModel::FromSnr => coded_bpsk_frame_error_rate(db_to_linear(snr_db), frame_bits),
            LossModel::Bernoulli { p } => p,
            LossModel::GilbertElliott {
                loss_good, loss_bad, ..
            } => {
                let bad = self.stationary_bad_probability();
                (1.0 - bad) * loss_good + bad * loss_bad
            }
            LossModel::None => 0.0,
        }
    }

    /// Stationary probability of the Gilbert–Elliott bad state,
    /// `p_good_to_bad / (p_good_to_bad + p_bad_to_good)`; 0 for the memoryless models.
    pub fn stationary_bad_probability(&self) -> f64 {
        match *self {
            LossModel::GilbertElliott {
                p_good_to_bad,
                p_bad_to_good,
                ..
            } if p_good_to_bad + p_bad_to_good > 0.0 => p_good_to_bad / (p_good_to_bad + p_bad_to_good),
            _ => 0.0,
        }
    }
}

/// The loss process of one message on one link: answers, frame after frame, whether
/// that transmission is lost. Deterministic for a given seed.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameLoss {
    model: LossModel,
    snr_db: f64,
    rng: SplitMix64,
    in_bad_state: bool,
}

impl FrameLoss {
    /// A loss process for `model` on a link at `snr_db` this round, seeded by `seed`.
    /// [`crate::Channel::frame_loss`] derives the seed from the run seed, the link, the
    /// round and the message.
    pub fn new(model: LossModel, snr_db: f64, seed: u64) -> Self {
        let mut rng = SplitMix64::new(seed);
        let in_bad_state = match model {
            LossModel::GilbertElliott { .. } => rng.random::<f64>() < model.stationary_bad_probability(),
            _ => false,
        };
        Self {
            model,
            snr_db,
            rng,
            in_bad_state,
        }
    }

    /// Whether the next transmission, a frame of `frame_bits` on air, is lost.
    pub fn lost(&mut self, frame_bits: u64) -> bool {
        match self.model {
            LossModel::FromSnr => {
                let p = coded_bpsk_frame_error_rate(db_to_linear(self.snr_db), frame_bits);
                self.happens(p)
            }
            LossModel::Bernoulli { p } => self.happens(p),
            LossModel::GilbertElliott {
                p_good_to_bad,
                p_bad_to_good,
                loss_good,
                loss_bad,
            } => {
                let (loss, leave) = if self.in_bad_state {
                    (loss_bad, p_bad_to_good)
                } else {
                    (loss_good, p_good_to_bad)
                };
                let lost = self.happens(loss);
                if self.happens(leave) {
                    self.in_bad_state = !self.in_bad_state;
                }
                lost
            }
            LossModel::None => false,
        }
    }

    /// Whether the Gilbert–Elliott chain is in its bad state (always false otherwise).
    pub fn in_bad_state(&self) -> bool {
        self.in_bad_state
    }

    /// The model this process follows.
    pub fn model(&self) -> &LossModel {
        &self.model
    }

    /// A Bernoulli(`p`) draw; `p = 0` never and `p = 1` always happens, since the
    /// uniform draw lies in `[0, 1)`.
    fn happens(&mut self, p: f64) -> bool {
        self.rng.random::<f64>() < p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME_BITS: u64 = (1500 + 40) * 8;

    #[test]
    fn coded_bpsk_curve_matches_hand_computed_points() {
        // At 0 dB: PER_1080 = 274.7229·e^(−7.9932) = 0.0927881;
        // FER_12320 = 1 − 0.9072119^(12320/1080) = 0.670719.
        let at_0_db = coded_bpsk_frame_error_rate(1.0, FRAME_BITS);
        assert!((at_0_db - 0.670_719_2).abs() < 1e-6, "{at_0_db}");
        let reference = coded_bpsk_frame_error_rate(1.0, 1080);
        assert!((reference - 0.092_788_08).abs() < 1e-7, "{reference}");
        // It reaches 1 at ln(a)/g = 0.70256 (−1.533 dB) and below.
        assert_eq!(coded_bpsk_frame_error_rate(db_to_linear(-1.54), FRAME_BITS), 1.0);
        assert_eq!(coded_bpsk_frame_error_rate(0.0, FRAME_BITS), 1.0);
        assert_eq!(coded_bpsk_frame_error_rate(f64::NAN, FRAME_BITS), 1.0);
        // and is negligible well above the waterfall.
        assert!(coded_bpsk_frame_error_rate(db_to_linear(6.0), FRAME_BITS) < 1e-9);
        assert_eq!(coded_bpsk_frame_error_rate(db_to_linear(37.9), FRAME_BITS), 0.0);
        assert_eq!(coded_bpsk_frame_error_rate(1.0, 0), 0.0);
    }

    #[test]
    fn coded_bpsk_curve_falls_with_snr_and_rises_with_length() {
        let mut previous = 1.0;
        for tenth_db in -20..60 {
            let fer = coded_bpsk_frame_error_rate(db_to_linear(f64::from(tenth_db) / 10.0), FRAME_BITS);
            assert!(fer <= previous);
            previous = fer;
        }
        assert!(coded_bpsk_frame_error_rate(1.2, 8000) > coded_bpsk_frame_error_rate(1.2, 4000));
    }

    /// Bernoulli(p) over n frames: the count is within 5 binomial standard deviations.
    #[test]
    fn bernoulli_loss_rate_is_within_a_binomial_bound() {
        let (p, n) = (0.1, 100_000_u32);
        let mut process = FrameLoss::new(LossModel::Bernoulli { p }, 0.0, 99);
        let lost = (0..n).filter(|_| process.lost(FRAME_BITS)).count() as f64;
        let expected = p * f64::from(n);
        let sigma = (f64::from(n) * p * (1.0 - p)).sqrt();
        assert!((lost - expected).abs() < 5.0 * sigma, "{lost} vs {expected} ± {sigma}");
    }

    #[test]
    fn certain_and_impossible_losses_are_exact() {
        let mut never = FrameLoss::new(LossModel::Bernoulli { p: 0.0 }, 0.0, 1);
        let mut always = FrameLoss::new(LossModel::Bernoulli { p: 1.0 }, 0.0, 1);
        let mut none = FrameLoss::new(LossModel::None, -50.0, 1);
        for _ in 0..10_000 {
            assert!(!never.lost(FRAME_BITS));
            assert!(always.lost(FRAME_BITS));
            assert!(!none.lost(FRAME_BITS));
        }
    }

    /// π_bad = 0.05/0.30 = 1/6; mean loss = 5/6·0.01 + 1/6·0.5 = 0.0916667.
    #[test]
    fn gilbert_elliott_converges_to_its_stationary_loss_rate() {
        let model = LossModel::GilbertElliott {
            p_good_to_bad: 0.05,
            p_bad_to_good: 0.25,
            loss_good: 0.01,
            loss_bad: 0.5,
        };
        model.validate().unwrap();
        let stationary = model.frame_error_rate(0.0, FRAME_BITS);
        assert!((stationary - 0.091_666_67).abs() < 1e-8);
        let n = 200_000;
        let mut process = FrameLoss::new(model, 0.0, 5);
        let rate = (0..n).filter(|_| process.lost(FRAME_BITS)).count() as f64 / n as f64;
        // The chain's correlation (λ = 0.7) inflates the variance of the mean to about
        // 0.27/n, a standard error of 0.0012; allow 5 of them.
        assert!((rate - stationary).abs() < 0.006, "{rate}");
    }

    /// With loss only in the bad state, losses come in bursts of mean length 1/p_bad_to_good.
    #[test]
    fn gilbert_elliott_losses_are_bursty() {
        let model = LossModel::GilbertElliott {
            p_good_to_bad: 0.02,
            p_bad_to_good: 0.25,
            loss_good: 0.0,
            loss_bad: 1.0,
        };
        let mut process = FrameLoss::new(model, 0.0, 11);
        let (mut bursts, mut lost, mut previous) = (0_u32, 0_u32, false);
        for _ in 0..200_000 {
            let now = process.lost(FRAME_BITS);
            if now {
                lost += 1;
                if !previous {
                    bursts += 1;
                }
            }
            previous = now;
        }
        let mean_burst = f64::from(lost) / f64::from(bursts);
        assert!((mean_burst - 4.0).abs() < 0.3, "{mean_burst}");
    }

    #[test]
    fn the_same_seed_gives_the_same_losses() {
        let model = LossModel::Bernoulli { p: 0.3 };
        let draw = |seed| {
            let mut process = FrameLoss::new(model, 0.0, seed);
            (0..64).map(|_| process.lost(FRAME_BITS)).collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
    }

    #[test]
    fn bad_loss_parameters_name_their_field() {
        let err = LossModel::Bernoulli { p: 1.5 }.validate().unwrap_err();
        assert!(
            err.to_string()
                .starts_with("channel.loss.bernoulli.p must be a probability"),
            "{err}"
        );
        let err = LossModel::GilbertElliott {
            p_good_to_bad: 0.0,
            p_bad_to_good: 0.0,
            loss_good: 0.0,
            loss_bad: 1.0,
        }
        .validate()
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("channel.loss.gilbert_elliott.p_good_to_bad + p_bad_to_good"),
            "{err}"
        );
    }
}
