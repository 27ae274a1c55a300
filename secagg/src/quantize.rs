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

/// Training losses above this are clipped in the secure sum.
pub const LOSS_CLIP: f32 = 32.0;

/// How a participant's model update becomes one vector of `Z_{2^32}`, so that the secure sum of
/// all of them yields what FedAvg needs: the sum of the weighted deltas, the total weight and the
/// weighted training loss, with no plaintext per-participant value (Flower's SecAgg+ weights the
/// same way). A participant with `w = min(examples, max_weight)` examples sends, with
/// `r = w / max_weight`:
/// `[quantize(r * clip(delta_i))]..., w, quantize_loss(r * min(loss, LOSS_CLIP))`. Scaling by
/// `r <= 1` keeps every weighted value inside the clipping range; the weight itself is an exact
/// integer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UpdateEncoding {
    values: Quantizer,
    loss: Quantizer,
    max_weight: u32,
}

/// What the secure sum of encoded updates decodes to.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedSum {
    /// `Σ w_i * clip(delta_i)`, per value.
    pub weighted_delta: Vec<f64>,
    /// `Σ w_i`.
    pub weight: u64,
    /// `Σ w_i * min(loss_i, LOSS_CLIP)`.
    pub weighted_loss: f64,
}

impl UpdateEncoding {
    /// An encoding with clipping bound `clip`, `levels` quantisation levels and weights capped at
    /// `max_weight` examples.
    pub fn new(clip: f32, levels: u32, max_weight: u32) -> Result<UpdateEncoding, Error> {
        if max_weight == 0 {
            return Err(Error::Quantization(
                "max_weight is 0; expected at least 1 example".into(),
            ));
        }
        Ok(UpdateEncoding {
            values: Quantizer::new(clip, levels)?,
            loss: Quantizer::new(LOSS_CLIP, levels)?,
            max_weight,
        })
    }

    /// Clipping bound of a delta value.
    pub fn clip(&self) -> f32 {
        self.values.clip
    }

    /// Quantisation levels.
    pub fn levels(&self) -> u32 {
        self.values.levels
    }

    /// Weight cap.
    pub fn max_weight(&self) -> u32 {
        self.max_weight
    }

    /// Length of the encoded vector of a model of `n_values` parameters.
    pub fn vector_len(n_values: usize) -> usize {
        n_values + 2
    }

    /// Refuses a participant count whose worst-case sum of values or of weights could wrap.
    pub fn check_capacity(&self, n_participants: u64) -> Result<(), Error> {
        self.values.check_capacity(n_participants)?;
        let max_weight = u64::from(self.max_weight);
        if n_participants.saturating_mul(max_weight) > u64::from(u32::MAX) {
            return Err(Error::Quantization(format!(
                "{n_participants} participants x max_weight {max_weight} could wrap the 2^32 modulus; use a max_weight of at most {}",
                u64::from(u32::MAX) / n_participants.max(1)
            )));
        }
        Ok(())
    }

    /// Encodes one update: `delta` is `local - global`, computed on `n_examples` examples with
    /// mean training loss `mean_loss`.
    pub fn encode(&self, delta: &[f32], n_examples: u64, mean_loss: f64) -> Vec<u32> {
        let weight = n_examples.clamp(1, u64::from(self.max_weight)) as u32;
        let ratio = f64::from(weight) / f64::from(self.max_weight);
        let clip = f64::from(self.values.clip);
        let mut out: Vec<u32> = delta
            .iter()
            .map(|&d| {
                let d = if d.is_nan() { 0.0 } else { f64::from(d) };
                self.values.quantize((ratio * d.clamp(-clip, clip)) as f32)
            })
            .collect();
        out.push(weight);
        let loss = if mean_loss.is_finite() {
            mean_loss.max(0.0)
        } else {
            0.0
        };
        out.push(
            self.loss
                .quantize((ratio * loss.min(f64::from(LOSS_CLIP))) as f32),
        );
        out
    }

    /// Decodes the sum of `n_participants` encoded updates, after checking that honest inputs
    /// can produce it: each value and the loss at most `n * (levels - 1)`, the weight between
    /// `n` and `n * max_weight`. An input masked out of range is caught here unless the sum
    /// lands back in that range (a wrap of the modulus); bounding each hidden input needs
    /// zero-knowledge range proofs, which are out of scope.
    pub fn decode(&self, sum: &[u32], n_participants: u64) -> Result<DecodedSum, Error> {
        let [values @ .., weight, loss] = sum else {
            return Err(Error::Length {
                actual: sum.len(),
                expected: 2,
            });
        };
        let out_of_range = |what: String, value: u32, min: u64, max: u64| Error::OutOfRange {
            what,
            value: u64::from(value),
            min,
            max,
            n_participants,
        };
        let most = n_participants.saturating_mul(u64::from(self.values.levels - 1));
        if let Some(position) = values.iter().position(|&s| u64::from(s) > most) {
            return Err(out_of_range(
                format!("value {position}"),
                values[position],
                0,
                most,
            ));
        }
        let heaviest = n_participants.saturating_mul(u64::from(self.max_weight));
        if !(n_participants..=heaviest).contains(&u64::from(*weight)) {
            return Err(out_of_range(
                "weight".into(),
                *weight,
                n_participants,
                heaviest,
            ));
        }
        let most_loss = n_participants.saturating_mul(u64::from(self.loss.levels - 1));
        if u64::from(*loss) > most_loss {
            return Err(out_of_range("loss".into(), *loss, 0, most_loss));
        }
        let scale = f64::from(self.max_weight);
        let dequantize = |q: &Quantizer, s: u32| {
            (f64::from(s) * q.step() - n_participants as f64 * f64::from(q.clip)) * scale
        };
        Ok(DecodedSum {
            weighted_delta: values
                .iter()
                .map(|&s| dequantize(&self.values, s))
                .collect(),
            weight: u64::from(*weight),
            weighted_loss: dequantize(&self.loss, *loss).max(0.0),
        })
    }

    /// Largest error of one decoded weighted value over `n_participants`, in the units of
    /// [`DecodedSum::weighted_delta`].
    pub fn error_bound(&self, n_participants: u64) -> f64 {
        // Each participant's value is rounded once in f32 before quantisation and once by it.
        let f32_rounding = f64::from(self.values.clip) * f64::from(f32::EPSILON);
        (self.values.error_bound(n_participants) + n_participants as f64 * f32_rounding)
            * f64::from(self.max_weight)
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
    fn a_sum_no_honest_inputs_give_is_refused() {
        let encoding = UpdateEncoding::new(1.0, 1 << 8, 100).unwrap();
        let honest = |d: f32, n: u64| encoding.encode(&[d, -d], n, 0.5);
        let add = |inputs: &[Vec<u32>]| -> Vec<u32> {
            (0..inputs[0].len())
                .map(|i| inputs.iter().fold(0u32, |s, v| s.wrapping_add(v[i])))
                .collect()
        };
        let fine = add(&[honest(1.0, 100), honest(-1.0, 1)]);
        assert!(encoding.decode(&fine, 2).is_ok());
        // A shifted value: one participant adds far more than the largest level.
        let mut shifted = honest(0.5, 10);
        shifted[1] = shifted[1].wrapping_add(1 << 20);
        let err = encoding
            .decode(&add(&[honest(0.5, 10), shifted]), 2)
            .unwrap_err();
        assert!(
            err.to_string().starts_with("the sum's value 1 is 1048"),
            "{err}"
        );
        assert!(
            err.to_string().contains("2 honest inputs give 0..=510"),
            "{err}"
        );
        // A weight slot wrapped below zero, or pushed past the cap.
        let mut wrapped = honest(0.5, 10);
        wrapped[2] = u32::MAX - 20;
        let err = encoding
            .decode(&add(&[honest(0.5, 10), wrapped]), 2)
            .unwrap_err();
        assert!(
            err.to_string().contains("the sum's weight is 4294967285"),
            "{err}"
        );
        let mut heavy = honest(0.5, 100);
        heavy[2] = 1_000;
        let err = encoding
            .decode(&add(&[honest(0.5, 100), heavy]), 2)
            .unwrap_err();
        assert!(err.to_string().contains("give 2..=200"), "{err}");
        let mut lossy = honest(0.5, 100);
        lossy[3] = u32::MAX / 2;
        assert!(
            encoding
                .decode(&add(&[honest(0.5, 100), lossy]), 2)
                .is_err()
        );
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

    #[test]
    fn encoded_updates_sum_to_the_weighted_sum_the_weight_and_the_loss() {
        let encoding = UpdateEncoding::new(1.0, 1 << 24, 1000).unwrap();
        let a = encoding.encode(&[0.5, -0.25, 3.0], 200, 1.5);
        let b = encoding.encode(&[-0.1, 0.2, -3.0], 5000, 0.5);
        assert_eq!(a.len(), UpdateEncoding::vector_len(3));
        let sum: Vec<u32> = a.iter().zip(&b).map(|(x, y)| x.wrapping_add(*y)).collect();
        let decoded = encoding.decode(&sum, 2).unwrap();
        assert_eq!(
            decoded.weight, 1200,
            "the second weight is capped at max_weight"
        );
        // 200 * [0.5, -0.25, 1 (clipped)] + 1000 * [-0.1, 0.2, -1 (clipped)]
        let expected = [0.0, 150.0, -800.0];
        let bound = encoding.error_bound(2);
        for (got, want) in decoded.weighted_delta.iter().zip(expected) {
            assert!(
                (got - want).abs() <= bound,
                "{got} vs {want} (bound {bound})"
            );
        }
        assert!((decoded.weighted_loss - (200.0 * 1.5 + 1000.0 * 0.5)).abs() < 0.01);
        assert!(encoding.check_capacity(256).is_ok());
        let coarse = UpdateEncoding::new(1.0, 1 << 8, 1000).unwrap();
        let err = coarse.check_capacity(5_000_000).unwrap_err().to_string();
        assert!(err.contains("max_weight"), "{err}");
        assert!(UpdateEncoding::new(1.0, 1 << 24, 0).is_err());
        assert!(encoding.decode(&[1], 1).is_err());
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
