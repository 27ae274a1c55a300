//! Distributed differential privacy on the secure sum: the distributed discrete Gaussian of
//! Kairouz, Liu and Steinke, "The Distributed Discrete Gaussian Mechanism for Federated Learning
//! with Secure Aggregation" (ICML 2021; arXiv 2102.06387, cited below as DDG).
//!
//! Each site clips its update to an L2 norm, scales it to integers, rounds it at random under a
//! norm bound, and adds discrete Gaussian noise *before* masking; the coordinator only ever sees
//! the noisy sum. Why this mechanism rather than Skellam (Agarwal et al. 2021): both are exact
//! integer noise that sums inside `Z_{2^32}`, but the discrete Gaussian has a sampler proven exact
//! and kept in a library (OpenDP's, Canonne, Kamath and Steinke 2020, "The Discrete Gaussian for
//! Differential Privacy", Algorithm 3, on rationals with no floating point), while an exact
//! Poisson sampler for Skellam would be ours to write. The price is the sum of discrete
//! Gaussians not being one: DDG's Theorem 1 bounds the gap by `τ` below, which is 0 in `f64` at
//! the noise levels here (the noise is thousands of quantisation steps).
//!
//! An update is `[values..., 1, 0]`: the noisy rounded values as two's-complement `u32`, a weight
//! of 1 (under differential privacy every site counts the same, so the coordinator divides by
//! the number of contributors, which it knows anyway) and a training loss of 0 (a loss is a
//! function of the data and would need noise of its own).
//!
//! The privacy guarantee assumes that at least `min_contributors` sites, each adding its share
//! of the noise, are in every released sum; a participant enforces it by refusing to sign a
//! smaller survivor set ([`crate::protocol::RoundConfig::min_survivors`]).

use crate::Error;
use crate::quantize::DecodedSum;
use dashu::rational::RBig;
use rayon::prelude::*;

/// The L2 clipping norm in quantisation steps: an update clipped to `clip_norm` is scaled so that
/// its norm is at most this many steps. 2^16 steps keep the rounding's share of the sensitivity
/// (`d/4` against `c^2`) below 1% up to 10^8 parameters, and leave the sum of thousands of sites
/// and their noise far inside the 2^32 modulus.
pub const QUANTIZED_CLIP: f64 = 65536.0;

/// `ln(1/β)` of DDG's conditional randomised rounding (their `β = e^{-1/2}`): a rounding whose
/// norm exceeds the bound is drawn again, which happens with probability at most `β`.
const ROUNDING_LOG_INV_BETA: f64 = 0.5;

/// Most draws of the randomised rounding before giving up (each passes with probability at
/// least `1 - β` ≈ 0.39).
const MAX_ROUNDINGS: u32 = 1000;

/// `log2` of the chance that some value of an honest noisy sum lies outside the range the
/// decoder accepts (and so that the sum could wrap): 2^-40 per round.
const WRAP_LOG2: f64 = -40.0;

/// A decoded sum may use at most this much of the signed 2^32 range, so that a masked input
/// shifted out of range shows (as [`crate::quantize`]'s one bit of headroom).
const MAX_SUM: f64 = (1u64 << 30) as f64;

/// The parameters of the distributed discrete Gaussian for one job.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DistributedDp {
    clip_norm: f32,
    noise_multiplier: f64,
    min_contributors: u32,
    dim: usize,
}

impl DistributedDp {
    /// The mechanism for updates of `dim` values clipped to L2 norm `clip_norm`, with noise
    /// whose sum over `min_contributors` sites has standard deviation `noise_multiplier` times
    /// the sensitivity.
    pub fn new(
        clip_norm: f32,
        noise_multiplier: f64,
        min_contributors: u32,
        dim: usize,
    ) -> Result<DistributedDp, Error> {
        let invalid = |what: String| Err(Error::Privacy(what));
        if !(clip_norm.is_finite() && clip_norm > 0.0) {
            return invalid(format!(
                "clip norm is {clip_norm}; expected a finite number > 0"
            ));
        }
        if !(noise_multiplier.is_finite() && (0.01..=1000.0).contains(&noise_multiplier)) {
            return invalid(format!(
                "noise multiplier is {noise_multiplier}; expected a number in [0.01, 1000]"
            ));
        }
        if min_contributors == 0 {
            return invalid("0 contributors; expected at least 1".into());
        }
        if dim == 0 {
            return invalid("an update of no values".into());
        }
        Ok(DistributedDp {
            clip_norm,
            noise_multiplier,
            min_contributors,
            dim,
        })
    }

    /// L2 clipping norm of an update, in the model's units.
    pub fn clip_norm(&self) -> f32 {
        self.clip_norm
    }

    /// Standard deviation of the summed noise over the sensitivity.
    pub fn noise_multiplier(&self) -> f64 {
        self.noise_multiplier
    }

    /// Fewest sites whose noise is in a released sum.
    pub fn min_contributors(&self) -> u32 {
        self.min_contributors
    }

    /// Quantisation steps per unit of the model.
    fn scale(&self) -> f64 {
        QUANTIZED_CLIP / f64::from(self.clip_norm)
    }

    /// L2 sensitivity of one site's rounded update, in steps: DDG's bound after conditional
    /// randomised rounding (their Theorem 1, `Δ2² ≤ c² + d/4 + √(2 ln 1/β)(c + √d/2)`), or
    /// `c + √d` if smaller. The rounding is redrawn until it holds, so it holds always.
    pub fn sensitivity(&self) -> f64 {
        let (c, d) = (QUANTIZED_CLIP, self.dim as f64);
        let conditional =
            (c * c + d / 4.0 + (2.0 * ROUNDING_LOG_INV_BETA).sqrt() * (c + d.sqrt() / 2.0)).sqrt();
        conditional.min(c + d.sqrt())
    }

    /// Standard deviation of each site's noise, in steps: `z Δ2 / √m`, so that the noise of
    /// `m` sites sums to `z Δ2`.
    pub fn local_stddev(&self) -> f64 {
        self.noise_multiplier * self.sensitivity() / f64::from(self.min_contributors).sqrt()
    }

    /// Rényi DP of one round at `order` (> 1), from DDG's Proposition 14 with the `m` sites'
    /// noise: the least of `α/2 s² + τd`, `α/2 (s² + 2 s1 τ + τ² d)` and `α/2 (s + √d τ)²`, with
    /// `s = Δ2/(√m σ)`, `s1 = Δ1/(√m σ)`, `Δ1 = Δ2 min(√d, Δ2)` and
    /// `τ = 10 Σ_{k<m} exp(-2π²σ² k/(k+1))`.
    pub fn round_rdp(&self, order: f64) -> f64 {
        let sigma = self.local_stddev();
        let m = f64::from(self.min_contributors);
        let d = self.dim as f64;
        let l2 = self.sensitivity();
        let l1 = l2 * d.sqrt().min(l2);
        let spread = m.sqrt() * sigma;
        let (s, s1) = (l2 / spread, l1 / spread);
        let tau = 10.0
            * (1..self.min_contributors)
                .map(|k| {
                    let k = f64::from(k);
                    (-2.0 * (std::f64::consts::PI * sigma).powi(2) * k / (k + 1.0)).exp()
                })
                .sum::<f64>();
        let half = order / 2.0;
        (half * s * s + tau * d)
            .min(half * (s * s + 2.0 * s1 * tau + tau * tau * d))
            .min(half * (s + d.sqrt() * tau).powi(2))
    }

    /// Rényi DP of one round at each of [`ORDERS`].
    pub fn round_rdp_curve(&self) -> Vec<f64> {
        ORDERS.iter().map(|&order| self.round_rdp(order)).collect()
    }

    /// Length of the encoded vector of a model of `n_values` parameters.
    pub fn vector_len(n_values: usize) -> usize {
        n_values + 2
    }

    /// Largest magnitude of a value of the noisy sum of `n` honest inputs, in steps: `n ⌊Δ2⌋`
    /// for the rounded values (no value exceeds the norm) and the noise's tail, `√(2 n σ²
    /// ln(2d / 2^-40))` (a discrete Gaussian of variance `σ²` is `σ²`-subgaussian, CKS20,
    /// so the sum of `n` is `nσ²`-subgaussian and every one of the `d` values stays inside but with chance 2^-40).
    pub fn sum_bound(&self, n: u64) -> f64 {
        let n = n as f64;
        let sigma = self.local_stddev();
        let log_terms = (2.0 * self.dim as f64).ln() - WRAP_LOG2 * std::f64::consts::LN_2;
        n * self.sensitivity().floor() + (2.0 * n * sigma * sigma * log_terms).sqrt()
    }

    /// Refuses `n` participants whose noisy sum could leave the range the decoder accepts.
    pub fn check_capacity(&self, n: u64) -> Result<(), Error> {
        let bound = self.sum_bound(n);
        if bound > MAX_SUM {
            return Err(Error::Privacy(format!(
                "the noisy sum of {n} participants reaches {bound:.0} steps, past the {MAX_SUM} the 2^32 modulus holds with a bit to spare; use fewer participants or a smaller noise multiplier"
            )));
        }
        Ok(())
    }

    /// Encodes one site's update (`delta` is `local - global`): clipped to the L2 norm, scaled
    /// to steps, rounded at random until its norm is within the sensitivity, and noised with an
    /// exact discrete Gaussian draw per value.
    pub fn encode(&self, delta: &[f32]) -> Result<Vec<u32>, Error> {
        if delta.len() != self.dim {
            return Err(Error::Length {
                actual: delta.len(),
                expected: self.dim,
            });
        }
        let values: Vec<f64> = delta
            .iter()
            .map(|&v| if v.is_finite() { f64::from(v) } else { 0.0 })
            .collect();
        let norm = values.iter().map(|v| v * v).sum::<f64>().sqrt();
        let factor = self.scale() * (f64::from(self.clip_norm) / norm).min(1.0);
        let scaled: Vec<f64> = values.iter().map(|v| v * factor).collect();
        let mut rounded = self.round(&scaled)?;
        let stddev = RBig::try_from(self.local_stddev())
            .map_err(|e| Error::Privacy(format!("noise standard deviation is no rational: {e}")))?;
        rounded
            .par_iter_mut()
            .try_for_each(|value| -> Result<(), Error> {
                let noise = opendp::traits::samplers::sample_discrete_gaussian(stddev.clone())
                    .map_err(|e| Error::Privacy(format!("sampling noise: {e}")))?;
                let noise = i64::try_from(noise)
                    .map_err(|_| Error::Privacy("a noise draw past 2^63".into()))?;
                *value = value.wrapping_add(noise);
                Ok(())
            })?;
        let mut out: Vec<u32> = rounded.into_iter().map(|v| v as u32).collect();
        out.extend([1, 0]);
        Ok(out)
    }

    /// DDG's conditional randomised rounding: each value goes up with probability its
    /// fractional part, and the whole draw is repeated until its L2 norm is within
    /// [`DistributedDp::sensitivity`]. The coin flips come from the mask PRG under a fresh key
    /// (they need to be unpredictable, not exact: the privacy rests on the norm bound).
    fn round(&self, scaled: &[f64]) -> Result<Vec<i64>, Error> {
        let bound = self.sensitivity();
        for _ in 0..MAX_ROUNDINGS {
            let coins = crate::prg::expand(&crate::crypto::random_bytes::<16>(), 2 * scaled.len());
            let rounded: Vec<i64> = scaled
                .iter()
                .zip(coins.chunks_exact(2))
                .map(|(&v, coin)| {
                    let floor = v.floor();
                    let coin = (u64::from(coin[0]) << 32 | u64::from(coin[1])) as f64;
                    let up = coin < (v - floor) * 18_446_744_073_709_551_616.0;
                    floor as i64 + i64::from(up)
                })
                .collect();
            let norm = rounded
                .iter()
                .map(|&v| (v as f64) * (v as f64))
                .sum::<f64>()
                .sqrt();
            if norm <= bound {
                return Ok(rounded);
            }
        }
        Err(Error::Privacy(format!(
            "no randomised rounding within the norm bound {bound} in {MAX_ROUNDINGS} draws"
        )))
    }

    /// Decodes the noisy sum of `n` encoded updates, after checking that honest inputs give it:
    /// every value within [`DistributedDp::sum_bound`], a weight of exactly `n` and a loss of 0.
    pub fn decode(&self, sum: &[u32], n: u64) -> Result<DecodedSum, Error> {
        let expected = DistributedDp::vector_len(self.dim);
        let Some((values, [weight, loss])) = sum
            .split_last_chunk::<2>()
            .filter(|_| sum.len() == expected)
        else {
            return Err(Error::Length {
                actual: sum.len(),
                expected,
            });
        };
        let bound = self.sum_bound(n).floor() as u64;
        let out_of_range = |what: String, value: u32, min: u64, max: u64| Error::OutOfRange {
            what,
            value: u64::from(value),
            min,
            max,
            n_participants: n,
        };
        if let Some(position) = values
            .iter()
            .position(|&s| (s as i32).unsigned_abs() as u64 > bound)
        {
            // Shown shifted by the bound, so that the range reads 0..=2 bound.
            let shifted = i64::from(values[position] as i32) + bound as i64;
            return Err(Error::OutOfRange {
                what: format!("value {position} (noisy, shifted by {bound})"),
                value: shifted.max(0) as u64,
                min: 0,
                max: 2 * bound,
                n_participants: n,
            });
        }
        if u64::from(*weight) != n {
            return Err(out_of_range("weight".into(), *weight, n, n));
        }
        if *loss != 0 {
            return Err(out_of_range("loss".into(), *loss, 0, 0));
        }
        let step = 1.0 / self.scale();
        Ok(DecodedSum {
            weighted_delta: values.iter().map(|&s| f64::from(s as i32) * step).collect(),
            weight: n,
            weighted_loss: 0.0,
        })
    }
}

/// The least noise multiplier (within 0.1%) whose `rounds` rounds of updates of `dim` values,
/// with `min_contributors` sites' noise in each sum, cost at most `epsilon` at `delta`; an error
/// if even the most noise allowed costs more.
pub fn noise_multiplier_for(
    epsilon: f64,
    delta: f64,
    rounds: u64,
    min_contributors: u32,
    dim: usize,
) -> Result<f64, Error> {
    let cost = |z: f64| -> Result<f64, Error> {
        let mechanism = DistributedDp::new(1.0, z, min_contributors, dim)?;
        Ok(Ledger::after(&mechanism, rounds).epsilon(delta))
    };
    let (mut low, mut high) = (0.01f64, 1000.0f64);
    if cost(high)? > epsilon {
        return Err(Error::Privacy(format!(
            "{rounds} rounds cost more than epsilon {epsilon} at delta {delta} even with noise multiplier {high}"
        )));
    }
    if cost(low)? <= epsilon {
        return Ok(low);
    }
    while high / low > 1.001 {
        let mid = (low * high).sqrt();
        match cost(mid)? <= epsilon {
            true => high = mid,
            false => low = mid,
        }
    }
    Ok(high)
}

/// The Rényi orders the accountant tracks: those of Google's `dp_accounting`
/// (`RdpAccountant`'s default), so that its results can be checked against it.
pub const ORDERS: [f64; 156] = {
    // 1.1, 1.2, ..., 10.9 (99 orders), then 11, 12, ..., 63, then 128, 256, 512 and 1024.
    let mut orders = [0.0; 156];
    let mut i = 0;
    while i < 99 {
        orders[i] = 1.0 + (i + 1) as f64 / 10.0;
        i += 1;
    }
    while i < 99 + 53 {
        orders[i] = (11 + (i - 99)) as f64;
        i += 1;
    }
    let tail = [128.0, 256.0, 512.0, 1024.0];
    let mut j = 0;
    while j < tail.len() {
        orders[i] = tail[j];
        i += 1;
        j += 1;
    }
    orders
};

/// `(ε, δ)` from a Rényi DP curve over [`ORDERS`]: the least over the orders of
/// `r + ln(1 - 1/α) - ln(δ α)/(α - 1)` (Canonne, Kamath and Steinke 2020, Proposition 12; the
/// conversion `dp_accounting` uses), never below 0.
pub fn epsilon(rdp: &[f64], delta: f64) -> f64 {
    ORDERS
        .iter()
        .zip(rdp)
        .map(|(&order, &r)| {
            if r < 0.0 || delta * delta + (-r).exp_m1() > 0.0 {
                0.0
            } else if order > 1.01 {
                r + (-1.0 / order).ln_1p() - (delta * order).ln() / (order - 1.0)
            } else {
                f64::INFINITY
            }
        })
        .fold(f64::INFINITY, f64::min)
        .max(0.0)
}

/// What a job has spent: the Rényi DP of the rounds composed so far.
#[derive(Debug, Clone, PartialEq)]
pub struct Ledger {
    rdp: Vec<f64>,
}

impl Default for Ledger {
    fn default() -> Ledger {
        Ledger {
            rdp: vec![0.0; ORDERS.len()],
        }
    }
}

impl Ledger {
    /// `rounds` rounds of `dp`, composed (Rényi DP adds up).
    pub fn after(dp: &DistributedDp, rounds: u64) -> Ledger {
        let mut ledger = Ledger::default();
        ledger.add(&dp.round_rdp_curve(), rounds);
        ledger
    }

    /// Adds `rounds` rounds of the curve `rdp`.
    pub fn add(&mut self, rdp: &[f64], rounds: u64) {
        for (total, r) in self.rdp.iter_mut().zip(rdp) {
            *total += r * rounds as f64;
        }
    }

    /// The ledger with one more round of `rdp`.
    pub fn with(&self, rdp: &[f64]) -> Ledger {
        let mut next = self.clone();
        next.add(rdp, 1);
        next
    }

    /// `ε` at `delta` of everything spent.
    pub fn epsilon(&self, delta: f64) -> f64 {
        epsilon(&self.rdp, delta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_orders_are_dp_accountings() {
        assert_eq!(ORDERS[0], 1.1);
        assert_eq!(ORDERS[98], 10.9);
        assert_eq!(ORDERS[99], 11.0);
        assert_eq!(ORDERS[151], 63.0);
        assert_eq!(ORDERS[152..], [128.0, 256.0, 512.0, 1024.0]);
    }

    #[test]
    fn settings_out_of_range_are_refused() {
        assert!(DistributedDp::new(0.0, 1.0, 3, 10).is_err());
        assert!(DistributedDp::new(1.0, f64::NAN, 3, 10).is_err());
        assert!(DistributedDp::new(1.0, 0.0, 3, 10).is_err());
        assert!(DistributedDp::new(1.0, 1.0, 0, 10).is_err());
        assert!(DistributedDp::new(1.0, 1.0, 3, 0).is_err());
        let dp = DistributedDp::new(1.0, 1.0, 3, 10).unwrap();
        let err = dp.check_capacity(1_000_000).unwrap_err().to_string();
        assert!(err.contains("1000000 participants"), "{err}");
        assert!(dp.check_capacity(1000).is_ok());
    }

    #[test]
    fn at_these_noise_levels_the_round_is_a_gaussian_mechanisms() {
        // σ is thousands of steps, so DDG's τ vanishes and the RDP is α / (2 z²).
        let dp = DistributedDp::new(1.0, 1.1, 10, 199_210).unwrap();
        assert!(dp.local_stddev() > 1000.0);
        for order in [1.5, 2.0, 32.0, 1024.0] {
            let gaussian = order / (2.0 * 1.1 * 1.1);
            assert!((dp.round_rdp(order) - gaussian).abs() < 1e-12 * gaussian);
        }
        // Few steps of noise: the sum of discrete Gaussians is not one, and DDG charges for it.
        // (Only with a million sites at the least noise allowed, each adding under one step.)
        let coarse = DistributedDp::new(1.0, 0.01, 1_000_000, 1000).unwrap();
        assert!(coarse.local_stddev() < 1.0);
        let gaussian = 2.0 / (2.0 * 1e-4);
        assert!(coarse.round_rdp(2.0) > gaussian * 1.0001);
    }

    #[test]
    fn the_calibrated_noise_spends_the_budget_and_no_more() {
        let z = noise_multiplier_for(3.0, 1e-5, 50, 10, 1000).unwrap();
        let spent = |z| Ledger::after(&DistributedDp::new(1.0, z, 10, 1000).unwrap(), 50);
        assert!(spent(z).epsilon(1e-5) <= 3.0);
        assert!(spent(z / 1.002).epsilon(1e-5) > 3.0);
        assert!(noise_multiplier_for(1e-6, 1e-5, 1_000_000, 10, 1000).is_err());
    }

    #[test]
    fn epsilon_grows_with_rounds_and_shrinks_with_noise() {
        let dp = |z| DistributedDp::new(1.0, z, 10, 1000).unwrap();
        let e = |z, rounds| Ledger::after(&dp(z), rounds).epsilon(1e-5);
        assert_eq!(Ledger::default().epsilon(1e-5), 0.0);
        assert!(e(1.0, 10) < e(1.0, 100));
        assert!(e(2.0, 100) < e(1.0, 100));
        let one = Ledger::default().with(&dp(1.0).round_rdp_curve());
        assert_eq!(one, Ledger::after(&dp(1.0), 1));
    }

    /// The noise of `m` sites sums to variance `(z Δ2)²`; checked on many draws.
    #[test]
    fn the_summed_noise_has_the_calibrated_variance() {
        let (m, dim) = (4u32, 20_000usize);
        let dp = DistributedDp::new(1.0, 0.5, m, dim).unwrap();
        let zero = vec![0.0f32; dim];
        let mut sum = vec![0u32; DistributedDp::vector_len(dim)];
        for _ in 0..m {
            let input = dp.encode(&zero).unwrap();
            for (s, v) in sum.iter_mut().zip(&input) {
                *s = s.wrapping_add(*v);
            }
        }
        let decoded = dp.decode(&sum, u64::from(m)).unwrap();
        assert_eq!(decoded.weight, u64::from(m));
        // In steps: the decoded values are in model units, a step is clip / 2^16.
        let steps: Vec<f64> = decoded
            .weighted_delta
            .iter()
            .map(|v| v * QUANTIZED_CLIP)
            .collect();
        let mean = steps.iter().sum::<f64>() / dim as f64;
        let variance = steps.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / dim as f64;
        let expected = (0.5 * dp.sensitivity()).powi(2);
        // The sample variance of 20,000 normal draws has a relative standard error of
        // √(2/20,000) = 1%; 5% is five of those.
        assert!(
            (variance / expected - 1.0).abs() < 0.05,
            "variance {variance} against {expected}"
        );
        assert!(
            mean.abs() < 5.0 * (expected / dim as f64).sqrt(),
            "mean {mean}"
        );
    }

    #[test]
    fn an_update_is_clipped_and_decodes_to_itself_plus_noise() {
        let dim = 1000;
        let dp = DistributedDp::new(0.5, 0.01, 3, dim).unwrap();
        // Norm 10, clipped to 0.5: each value 0.316 becomes 0.0158.
        let delta = vec![10.0 / (dim as f32).sqrt(); dim];
        let inputs: Vec<Vec<u32>> = (0..3).map(|_| dp.encode(&delta).unwrap()).collect();
        let sum: Vec<u32> = (0..inputs[0].len())
            .map(|i| inputs.iter().fold(0u32, |s, v| s.wrapping_add(v[i])))
            .collect();
        let decoded = dp.decode(&sum, 3).unwrap();
        let clipped = 0.5 / (dim as f64).sqrt();
        let noise_sd = 0.01 * dp.sensitivity() / QUANTIZED_CLIP * 0.5;
        for value in &decoded.weighted_delta {
            assert!(
                (value - 3.0 * clipped).abs() < 6.0 * noise_sd + 3.0 / QUANTIZED_CLIP,
                "{value} against {}",
                3.0 * clipped
            );
        }
        let rounded_norm = |input: &[u32]| {
            input[..dim]
                .iter()
                .map(|&v| f64::from(v as i32).powi(2))
                .sum::<f64>()
                .sqrt()
        };
        // With almost no noise, the norm of what a site sends is its clipped norm in steps.
        assert!(rounded_norm(&inputs[0]) < dp.sensitivity() * 1.05);
    }

    #[test]
    fn a_sum_no_honest_inputs_give_is_refused() {
        let dp = DistributedDp::new(1.0, 1.0, 3, 4).unwrap();
        let honest = || dp.encode(&[0.1, -0.2, 0.3, 0.0]).unwrap();
        let add = |inputs: &[Vec<u32>]| -> Vec<u32> {
            (0..inputs[0].len())
                .map(|i| inputs.iter().fold(0u32, |s, v| s.wrapping_add(v[i])))
                .collect()
        };
        assert!(dp.decode(&add(&[honest(), honest(), honest()]), 3).is_ok());
        let mut shifted = honest();
        shifted[2] = shifted[2].wrapping_add(1 << 31);
        let err = dp
            .decode(&add(&[honest(), honest(), shifted]), 3)
            .unwrap_err()
            .to_string();
        assert!(err.contains("value 2 (noisy"), "{err}");
        let mut heavy = honest();
        heavy[4] = 5;
        let err = dp
            .decode(&add(&[honest(), honest(), heavy]), 3)
            .unwrap_err()
            .to_string();
        assert!(err.contains("weight is 7"), "{err}");
        let mut lossy = honest();
        lossy[5] = 9;
        assert!(dp.decode(&add(&[honest(), honest(), lossy]), 3).is_err());
        assert!(dp.decode(&[1, 2], 3).is_err());
        assert!(dp.encode(&[0.0; 3]).is_err());
    }
}
