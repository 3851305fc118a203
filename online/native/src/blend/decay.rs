//! Forward decay read side: a port of the read half of `models/decay.py`.
//!
//! Only what a recommendation read needs: the factor that turns a stored forward score into its
//! value at `now`, and the backward decay used when a shopper has history but no stored weights.
//! `exp` is glibc's in both languages (CPython's `math.exp` and Rust's `f64::exp` both call it),
//! so the values are the same bits; `blend_parity.py` checks that.

/// Stored units per unit of weight at the landmark (`SCORE_SCALE` in `models/decay.py`).
pub const SCORE_SCALE: f64 = 65536.0;

/// `exp(−λ (now − L)) / S`: multiplies a stored score into its value at `now` (`read_factor`).
pub fn read_factor(rate: f64, landmark: f64, now: f64) -> f64 {
    (-rate * (now - landmark)).exp() / SCORE_SCALE
}

/// The decay rate of a half-life, `DecayPolicy` without the write side.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecayPolicy {
    pub half_life_s: f64,
    /// `ln 2 / half_life_s`, as `DecayPolicy.__post_init__` computes it: `math.log(2.0)` is the
    /// correctly rounded ln 2, which is `LN_2`.
    pub rate: f64,
}

impl DecayPolicy {
    /// Panics on a half-life that is not positive and finite, as the Python constructor raises:
    /// the settings were validated before a policy is built, so this is a programming error.
    pub fn new(half_life_s: f64) -> Self {
        assert!(
            half_life_s.is_finite() && half_life_s > 0.0,
            "half_life_s must be positive and finite, got {half_life_s}"
        );
        Self {
            half_life_s,
            rate: std::f64::consts::LN_2 / half_life_s,
        }
    }

    /// `exp(−λ (now − L)) / S` (`DecayPolicy.read_factor`).
    pub fn read_factor(&self, landmark: f64, now: f64) -> f64 {
        read_factor(self.rate, landmark, now)
    }

    /// `exp(−λ (L' − L))`: what stored scores relative to `old` are multiplied by to be relative
    /// to `new` (`DecayPolicy.rescale_factor`; the trending snapshot's shift).
    pub fn rescale_factor(&self, old_landmark: f64, new_landmark: f64) -> f64 {
        (-self.rate * (new_landmark - old_landmark)).exp()
    }

    /// Backward decay `w · exp(−λ (now − t))` (`DecayPolicy.decayed_weight`).
    pub fn decayed_weight(&self, w: f64, t: f64, now: f64) -> f64 {
        w * (-self.rate * (now - t)).exp()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_is_python_log_2_over_half_life() {
        // python -c "import math; print(repr(math.log(2.0) / 604800.0))" printed 1.1460766874337719e-06.
        assert_eq!(
            DecayPolicy::new(604800.0).rate.to_bits(),
            1.1460766874337719e-06_f64.to_bits()
        );
    }

    #[test]
    fn read_factor_at_the_landmark_is_one_unit() {
        assert_eq!(read_factor(1e-6, 1000.0, 1000.0), 1.0 / SCORE_SCALE);
    }
}
