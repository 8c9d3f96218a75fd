//! The device a node emulates: how fast it computes and what computing costs it in
//! power. With a profile, a node's compute time and compute energy per round follow
//! from the FLOPs it performs ([`crate::model::Flops`]) and not from the host's load:
//! they are deterministic, like the radio's air time and energy.
//!
//! The presets are illustrative orders of magnitude, derived as peak FP32 rate ×
//! an assumed utilisation for small models, with a typical power under load; use
//! `custom:<GFLOP/s>:<W>` for a device you have measured.
//!
//! | preset | derivation | effective | power |
//! |---|---|---:|---:|
//! | `microcontroller` | Arm Cortex-M7 at 480 MHz (e.g. ST STM32H743), one single-precision FMA per cycle (Arm Cortex-M7 TRM: FPv5) = 0.96 GFLOP/s peak, 50 % used | 0.48 GFLOP/s | 0.3 W (≈ 100 mA at 3.3 V, the order of the STM32H7 datasheet's run-mode current at 480 MHz) |
//! | `phone` | one big Arm Cortex-A76-class core at 2.6 GHz, two 128-bit NEON FMA pipes = 16 FLOP/cycle = 41.6 GFLOP/s peak, 25 % used | 10.4 GFLOP/s | 2 W (a big core under full load) |
//! | `laptop` | one x86 core with AVX2, two 256-bit FMA ports = 32 FLOP/cycle at 3 GHz = 96 GFLOP/s peak, 25 % used | 24 GFLOP/s | 15 W (a 15 W-class laptop package under load) |
//!
//! For scale: on one core of the 2-core AMD EPYC development machine, this project's
//! kernels do 44–49 GFLOP/s of counted work (the case study's CNN runs of
//! `docs/results.md`: FLOPs from the shapes, evaluation included, over measured CPU time).

use std::fmt;
use std::str::FromStr;

/// A device's compute speed and power.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceProfile {
    /// The name it was given (`phone`, `custom:12:3`, …).
    pub name: String,
    /// Effective floating-point operations per second on model work.
    pub flops_per_s: f64,
    /// Power drawn while computing, in watts.
    pub watts: f64,
}

/// The forms [`DeviceProfile::from_str`] accepts, quoted in its errors.
const FORMS: &str = "`microcontroller`, `phone`, `laptop` or `custom:<GFLOP/s>:<W>` (both positive)";

impl DeviceProfile {
    /// Emulated seconds to perform `flops`.
    pub fn seconds(&self, flops: u64) -> f64 {
        flops as f64 / self.flops_per_s
    }

    /// Joules to perform `flops`.
    pub fn joules(&self, flops: u64) -> f64 {
        self.seconds(flops) * self.watts
    }
}

impl FromStr for DeviceProfile {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let name = s.trim();
        let (flops_per_s, watts) = match name {
            "microcontroller" => (0.48e9, 0.3),
            "phone" => (10.4e9, 2.0),
            "laptop" => (24e9, 15.0),
            _ => {
                let custom = name
                    .strip_prefix("custom:")
                    .and_then(|rest| rest.split_once(':'))
                    .and_then(|(g, w)| Some((g.trim().parse::<f64>().ok()?, w.trim().parse::<f64>().ok()?)));
                match custom {
                    Some((g, w)) if g.is_finite() && g > 0.0 && w.is_finite() && w > 0.0 && g < 1e9 => (g * 1e9, w),
                    _ => return Err(format!("unknown device profile `{name}`: expected {FORMS}")),
                }
            }
        };
        Ok(DeviceProfile {
            name: name.to_string(),
            flops_per_s,
            watts,
        })
    }
}

impl fmt::Display for DeviceProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_and_custom_profiles_parse_and_bad_ones_are_refused() {
        let phone: DeviceProfile = "phone".parse().unwrap();
        assert_eq!(phone.flops_per_s, 10.4e9);
        // 10.4 GFLOP in one second at 2 W.
        assert_eq!(phone.seconds(10_400_000_000), 1.0);
        assert_eq!(phone.joules(10_400_000_000), 2.0);
        let custom: DeviceProfile = "custom:12.5:3".parse().unwrap();
        assert_eq!((custom.flops_per_s, custom.watts), (12.5e9, 3.0));
        for bad in [
            "toaster",
            "custom:0:1",
            "custom:5",
            "custom:-1:2",
            "custom:nan:2",
            "custom:5:inf",
        ] {
            let error = bad.parse::<DeviceProfile>().unwrap_err();
            assert!(error.contains("custom:<GFLOP/s>:<W>"), "{bad}: {error}");
        }
    }
}
