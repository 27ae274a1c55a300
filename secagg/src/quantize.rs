//! Fixed-point quantisation: a value is clipped to `[-c, c]` and mapped to one of `levels`
//! integers `0..levels`, so that sums of quantised values live in `Z_{2^32}`. The sum of `n`
//! quantised vectors dequantises to the sum of the clipped values within `n` half-steps per
//! element. A configuration where `n * (levels - 1)` could exceed `2^32 - 1` is refused, since a
//! wrapped sum cannot be told from a correct one.

use crate::Error;

/// How values are clipped and quantised.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quantizer {
    /// Clipping bound `c`: values are clipped to `[-c, c]`.
    pub clip: f32,
    /// Number of quantisation levels (at least 2, at most 2^31).
    pub levels: u32,
}

impl Quantizer {
    /// A quantiser, checking its settings.
    pub fn new(clip: f32, levels: u32) -> Result<Quantizer, Error> {
        if !(clip.is_finite() && clip > 0.0) {
            return Err(Error::Quantization(format!(
                "clipping bound is {clip}; expected a finite number > 0"
            )));
        }
        if !(2..=1 << 31).contains(&levels) {
            return Err(Error::Quantization(format!(
                "{levels} levels; expected 2..=2^31"
            )));
        }
        Ok(Quantizer { clip, levels })
    }

    /// The most participants whose quantised values can be summed without wrapping.
    pub fn max_participants(&self) -> u64 {
        u64::from(u32::MAX) / u64::from(self.levels - 1)
    }

    /// Refuses a participant count whose worst-case sum could wrap the 2^32 modulus.
    pub fn check_capacity(&self, n_participants: u64) -> Result<(), Error> {
        if n_participants > self.max_participants() {
            return Err(Error::SumCouldWrap {
                n_participants,
                levels: u64::from(self.levels),
                max_participants: self.max_participants(),
            });
        }
        Ok(())
    }

    fn step(&self) -> f64 {
        2.0 * f64::from(self.clip) / f64::from(self.levels - 1)
    }

    /// Clips and quantises one value (NaN counts as 0).
    pub fn quantize(&self, value: f32) -> u32 {
        let clip = f64::from(self.clip);
        let value = if value.is_nan() {
            0.0
        } else {
            f64::from(value).clamp(-clip, clip)
        };
        ((value + clip) / self.step()).round() as u32
    }

    /// Clips and quantises a vector.
    pub fn quantize_all(&self, values: &[f32]) -> Vec<u32> {
        values.iter().map(|&v| self.quantize(v)).collect()
    }

    /// The sum of `n_participants` clipped values, from the sum of their quantised values.
    pub fn dequantize_sum(&self, sum: &[u32], n_participants: u64) -> Vec<f32> {
        let offset = n_participants as f64 * f64::from(self.clip);
        sum.iter()
            .map(|&s| (f64::from(s) * self.step() - offset) as f32)
            .collect()
    }

    /// Largest error of one dequantised sum element over `n_participants` (half a step each,
    /// plus f32 rounding of the result).
    pub fn error_bound(&self, n_participants: u64) -> f64 {
        n_participants as f64 * self.step() / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::{prop_assert, proptest};

    #[test]
    fn the_ends_and_the_middle_map_as_expected() {
        let q = Quantizer::new(1.0, 1 << 16).unwrap();
        assert_eq!(q.quantize(-1.0), 0);
        assert_eq!(q.quantize(-7.0), 0, "clipped");
        assert_eq!(q.quantize(1.0), (1 << 16) - 1);
        assert_eq!(q.quantize(f32::INFINITY), (1 << 16) - 1);
        assert_eq!(q.quantize(f32::NAN), q.quantize(0.0));
    }

    #[test]
    fn a_configuration_that_could_wrap_is_refused() {
        // Flower's default: 2^22 levels leave room for 1024 participants in 2^32.
        let q = Quantizer::new(8.0, 1 << 22).unwrap();
        assert_eq!(q.max_participants(), 1024);
        assert!(q.check_capacity(1024).is_ok());
        let err = q.check_capacity(1025).unwrap_err().to_string();
        assert!(
            err.contains("1025 participants") && err.contains("at most 1024"),
            "{err}"
        );
        assert!(Quantizer::new(0.0, 16).is_err());
        assert!(Quantizer::new(1.0, 1).is_err());
    }

    proptest! {
        #[test]
        fn the_dequantised_sum_is_within_the_error_bound(
            inputs in proptest::collection::vec(proptest::collection::vec(-3.0f32..3.0, 16), 1..20),
            clip in 0.5f32..4.0,
            bits in 8u32..22,
        ) {
            let q = Quantizer::new(clip, 1 << bits).unwrap();
            let n = inputs.len() as u64;
            q.check_capacity(n).unwrap();
            let mut sum = vec![0u32; 16];
            let mut exact = vec![0f64; 16];
            for input in &inputs {
                for (i, &v) in input.iter().enumerate() {
                    sum[i] = sum[i].wrapping_add(q.quantize(v));
                    exact[i] += f64::from(v.clamp(-clip, clip));
                }
            }
            let bound = q.error_bound(n) + 1e-4 * (1.0 + n as f64 * f64::from(clip));
            for (got, want) in q.dequantize_sum(&sum, n).iter().zip(&exact) {
                prop_assert!((f64::from(*got) - want).abs() <= bound, "{got} vs {want}, bound {bound}");
            }
        }
    }
}
