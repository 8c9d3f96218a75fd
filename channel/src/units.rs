//! Decibel and power-unit conversions used by the link budget.

/// Speed of light in vacuum, m/s (exact by the SI definition of the metre).
pub const SPEED_OF_LIGHT_M_PER_S: f64 = 299_792_458.0;

/// A power ratio in dB as a linear factor: `10^(dB/10)`.
pub fn db_to_linear(db: f64) -> f64 {
    10f64.powf(db / 10.0)
}

/// A linear power ratio in dB: `10·log10(x)` (−∞ for 0).
pub fn linear_to_db(ratio: f64) -> f64 {
    10.0 * ratio.log10()
}

/// A power in dBm (dB relative to 1 mW) in watts.
pub fn dbm_to_watts(dbm: f64) -> f64 {
    10f64.powf((dbm - 30.0) / 10.0)
}

/// A power in watts in dBm.
pub fn watts_to_dbm(watts: f64) -> f64 {
    10.0 * watts.log10() + 30.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_round_trip_and_hit_known_points() {
        assert!((dbm_to_watts(20.0) - 0.1).abs() < 1e-15);
        assert!((dbm_to_watts(30.0) - 1.0).abs() < 1e-15);
        assert!((watts_to_dbm(0.001) - 0.0).abs() < 1e-12);
        assert!((db_to_linear(3.0) - 1.995_262_314_968_88).abs() < 1e-12);
        assert!((linear_to_db(db_to_linear(-7.25)) + 7.25).abs() < 1e-12);
    }
}
