//! Aggregation over flat parameter vectors (plain slices). The coordinator only ever sees the
//! *sum* of the participants' weighted updates and the sum of their weights ([`UpdateSum`]);
//! the job's [`ServerOptimizer`] turns that sum into the next global model. Secure aggregation
//! replaces how the sum is obtained, not what the optimiser does with it.

use crate::Error;
use crate::config::{ServerAlgorithm, ServerOptimizerSpec};
use crate::model::TensorShape;
use cairn_proto::metrics::{Metric, Totals};
use std::collections::BTreeMap;

/// How a plaintext update's values are counted when it claims `weight` examples: with at most
/// `max_weight` of them, its weighted delta and loss scaled down by the returned factor (1 when
/// the claim is within the cap), so one site's influence on the average is bounded however many
/// examples it claims.
pub fn capped_weight(weight: u64, max_weight: u64) -> (u64, f64) {
    match weight > max_weight {
        true => (max_weight, max_weight as f64 / weight as f64),
        false => (weight, 1.0),
    }
}

/// The factor that scales an update of weighted L2 norm `weighted_norm` and `weight` examples
/// down to a delta (`weighted_delta / weight`) of norm `max_norm`, if it is longer, so that one
/// site's pull on the average is bounded whatever it sends.
pub fn clip_factor(weighted_norm: f64, weight: u64, max_norm: f32) -> Option<f64> {
    let most = f64::from(max_norm) * weight.max(1) as f64;
    (weighted_norm > most).then(|| most / weighted_norm)
}

/// `values` multiplied by `scale`, as capping and clipping apply it (in f64, rounded to f32).
pub fn scaled(values: &[f32], scale: f64) -> Vec<f32> {
    values
        .iter()
        .map(|&v| (f64::from(v) * scale) as f32)
        .collect()
}

/// Checks an update's scalars: a weight of at least one example and a finite, non-negative
/// weighted training loss.
pub fn check_weight_and_loss(weight: u64, weighted_train_loss: f64) -> Result<(), Error> {
    if weight == 0 {
        return Err(Error::ZeroWeight {
            what: "model update",
        });
    }
    if !weighted_train_loss.is_finite() || weighted_train_loss < 0.0 {
        return Err(Error::TrainLoss {
            value: weighted_train_loss,
        });
    }
    Ok(())
}

/// Bits below the binary point of [`PlainSum`]'s fixed-point values.
const FRACTION_BITS: i32 = 60;

/// Largest magnitude a weighted value of a plaintext update may have (2^50, about 1.1e15): far
/// above what `max_weight` examples of any trained delta give, and low enough that the sum of
/// 2^17 participants' values fits [`PlainSum`]'s 128-bit fixed point.
pub const MAX_WEIGHTED_VALUE: f64 = (1u64 << 50) as f64;

/// The running sum of a round's plaintext updates, added chunk by chunk as they arrive. Each
/// value is held in fixed point, an integer number of 2^-60, so that adding is exact: a
/// participant whose update breaks off halfway is subtracted back out to the bit (see
/// `round::inflight`), and the sum does not depend on the order in which participants answered.
/// Values below 2^-60 in magnitude are truncated towards zero, the only rounding before the
/// average is taken. The values are kept in blocks of [`SUM_BLOCK`], which
/// [`PlainSum::finish`] gives back one by one as it converts them: the 16-byte sum and the
/// 8-byte finished one are never both whole in memory.
#[derive(Debug, Clone)]
pub struct PlainSum {
    blocks: Vec<Vec<i128>>,
    n_values: usize,
    weight: u64,
    weighted_train_loss: f64,
    n_contributors: usize,
}

/// Values in one block of a [`PlainSum`]: 64 MiB of them, past the largest threshold (32 MiB)
/// above which glibc's allocator maps a block of its own and unmaps it when freed. A smaller
/// block would be carved from the allocator's heaps, which keep freed memory, and finishing the
/// sum would hold both sums whole after all.
pub const SUM_BLOCK: usize = 1 << 22;

fn to_fixed(value: f32) -> i128 {
    // Exact: an f32 is an f64, and a power of two scales it without rounding; `as` truncates.
    (f64::from(value) * (FRACTION_BITS as f64).exp2()) as i128
}

impl PlainSum {
    /// An empty sum for a model of `n_values` parameters.
    pub fn new(n_values: usize) -> PlainSum {
        let blocks = (0..n_values.div_ceil(SUM_BLOCK))
            .map(|block| vec![0; SUM_BLOCK.min(n_values - block * SUM_BLOCK)])
            .collect();
        PlainSum {
            blocks,
            n_values,
            weight: 0,
            weighted_train_loss: 0.0,
            n_contributors: 0,
        }
    }

    /// Adds weighted values at `offset` of the model's vector; nothing is added unless all of
    /// them fit and are in range ([`MAX_WEIGHTED_VALUE`]).
    pub fn add(&mut self, offset: usize, values: &[f32]) -> Result<(), Error> {
        self.check_range(offset, values.len())?;
        if let Some(i) = values
            .iter()
            .position(|v| v.is_nan() || f64::from(v.abs()) >= MAX_WEIGHTED_VALUE)
        {
            return Err(Error::UpdateValue {
                position: offset + i,
                value: values[i],
            });
        }
        self.apply(offset, values, i128::wrapping_add);
        Ok(())
    }

    /// Subtracts values that [`PlainSum::add`] added at `offset`, exactly.
    pub fn subtract(&mut self, offset: usize, values: &[f32]) {
        self.check_range(offset, values.len())
            .expect("only what was added is subtracted");
        self.apply(offset, values, i128::wrapping_sub);
    }

    /// Combines `values`, from `offset` on, into the sum's values with `combine`, block by
    /// block. The range has been checked.
    fn apply(&mut self, offset: usize, values: &[f32], combine: fn(i128, i128) -> i128) {
        let (mut at, mut rest) = (offset, values);
        while !rest.is_empty() {
            let block = &mut self.blocks[at / SUM_BLOCK];
            let start = at % SUM_BLOCK;
            let n = (block.len() - start).min(rest.len());
            for (sum, &value) in block[start..start + n].iter_mut().zip(&rest[..n]) {
                *sum = combine(*sum, to_fixed(value));
            }
            at += n;
            rest = &rest[n..];
        }
    }

    fn check_range(&self, offset: usize, len: usize) -> Result<(), Error> {
        match offset.checked_add(len) {
            Some(end) if end <= self.n_values => Ok(()),
            _ => Err(Error::UpdateLength {
                what: "model update",
                values: offset.saturating_add(len),
                expected: self.n_values,
            }),
        }
    }

    /// Counts one participant whose values are all in: its weight and weighted loss.
    pub fn add_contributor(&mut self, weight: u64, weighted_train_loss: f64) -> Result<(), Error> {
        check_weight_and_loss(weight, weighted_train_loss)?;
        self.weight = self
            .weight
            .checked_add(weight)
            .ok_or(Error::WeightOverflow { weight })?;
        self.weighted_train_loss += weighted_train_loss;
        self.n_contributors += 1;
        Ok(())
    }

    /// The sum as the server optimiser takes it.
    pub fn finish(self) -> UpdateSum {
        let unit = (-FRACTION_BITS as f64).exp2();
        let mut weighted_delta = Vec::with_capacity(self.n_values);
        // Each block is dropped once converted.
        for block in self.blocks {
            weighted_delta.extend(block.iter().map(|&v| v as f64 * unit));
        }
        UpdateSum {
            weighted_delta,
            weight: self.weight,
            weighted_train_loss: self.weighted_train_loss,
            n_contributors: self.n_contributors,
        }
    }
}

/// The sum of a round's weighted updates and of their weights, however it was obtained: added
/// up from plaintext updates ([`PlainSum::finish`]) or unmasked by secure aggregation
/// ([`UpdateSum::from_totals`]). No individual update is in it.
#[derive(Debug, Clone)]
pub struct UpdateSum {
    weighted_delta: Vec<f64>,
    weight: u64,
    weighted_train_loss: f64,
    n_contributors: usize,
}

impl UpdateSum {
    /// The sum as secure aggregation yields it: already totalled, with no individual update ever
    /// seen. `weighted_delta` must have the model's length.
    pub fn from_totals(
        weighted_delta: Vec<f64>,
        weight: u64,
        weighted_train_loss: f64,
        n_contributors: usize,
    ) -> Result<UpdateSum, Error> {
        check_weight_and_loss(weight, weighted_train_loss)?;
        if let Some(position) = weighted_delta.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFiniteSum { position });
        }
        Ok(UpdateSum {
            weighted_delta,
            weight,
            weighted_train_loss,
            n_contributors,
        })
    }

    /// The element-wise sum of the weighted deltas.
    pub fn weighted_delta(&self) -> &[f64] {
        &self.weighted_delta
    }

    /// Sum of the weights (examples) of all contributors.
    pub fn weight(&self) -> u64 {
        self.weight
    }

    /// Number of updates added.
    pub fn n_contributors(&self) -> usize {
        self.n_contributors
    }

    /// Mean training loss weighted by examples.
    pub fn mean_train_loss(&self) -> f64 {
        self.weighted_train_loss / self.weight.max(1) as f64
    }
}

/// Refuses a model with a value that is not finite (an overflow to infinity in f32, a NaN), so
/// that a round never commits one.
pub fn check_finite(model: &[f32]) -> Result<(), Error> {
    match model.iter().position(|v| !v.is_finite()) {
        Some(position) => Err(Error::NonFiniteModel { position }),
        None => Ok(()),
    }
}

/// The server optimiser of a job ([`ServerOptimizerSpec`]), with its state: the moments it
/// keeps across rounds (none for FedAvg, `m` for FedAvgM, `m` and `v` for the adaptive ones),
/// one value per model parameter each. It needs only the round's sum: `Δ = sum / total
/// weight` is the weighted average of the participants' deltas, the pseudo-gradient of Reddi
/// et al. 2021, so it works the same whether the sum came from secure aggregation or not.
/// The state is kept in f32, as it is checkpointed, so that a resumed job steps exactly as one
/// that never stopped.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerOptimizer {
    spec: ServerOptimizerSpec,
    /// The moments, one after the other (`m`, then `v`).
    state: Vec<f32>,
}

impl ServerOptimizer {
    /// The optimiser before the first round, for a model of `n_values` parameters: `m = 0`,
    /// `v = τ²`.
    pub fn new(spec: &ServerOptimizerSpec, n_values: usize) -> ServerOptimizer {
        let mut state = vec![0.0; Self::moments(spec) * n_values];
        if Self::moments(spec) == 2 {
            let start = (spec.tau * spec.tau) as f32;
            state[n_values..].fill(start);
        }
        ServerOptimizer {
            spec: spec.clone(),
            state,
        }
    }

    /// The optimiser with a checkpointed `state` (what [`ServerOptimizer::state`] gave);
    /// refused when its length is not that of the moments of a model of `n_values` values.
    pub fn resumed(
        spec: &ServerOptimizerSpec,
        n_values: usize,
        state: Vec<f32>,
    ) -> Result<ServerOptimizer, Error> {
        let expected = Self::moments(spec) * n_values;
        if state.len() != expected {
            return Err(Error::UpdateLength {
                what: "server optimiser state",
                values: state.len(),
                expected,
            });
        }
        Ok(ServerOptimizer {
            spec: spec.clone(),
            state,
        })
    }

    /// How many moments the algorithm keeps.
    fn moments(spec: &ServerOptimizerSpec) -> usize {
        match spec.algorithm {
            ServerAlgorithm::FedAvg => 0,
            ServerAlgorithm::FedAvgM => 1,
            ServerAlgorithm::FedAdagrad | ServerAlgorithm::FedAdam | ServerAlgorithm::FedYogi => 2,
        }
    }

    /// The tensors its state is checkpointed as, for a model of `n_values` values: `m` and
    /// `v`, as many as the algorithm keeps.
    pub fn state_layout(spec: &ServerOptimizerSpec, n_values: usize) -> Vec<TensorShape> {
        ["m", "v"]
            .into_iter()
            .take(Self::moments(spec))
            .map(|name| TensorShape::new(name, &[n_values]))
            .collect()
    }

    /// The state to checkpoint with the model (empty for FedAvg).
    pub fn state(&self) -> &[f32] {
        &self.state
    }

    /// The next global model and the optimiser's next state, from the current model and the
    /// round's sum; `self` is unchanged until the round commits ([`ServerOptimizer::adopt`]).
    pub fn step(&self, global: &[f32], sum: &UpdateSum) -> Result<(Vec<f32>, Vec<f32>), Error> {
        if sum.weight == 0 {
            return Err(Error::ZeroWeight {
                what: "sum of updates",
            });
        }
        if global.len() != sum.weighted_delta.len() {
            return Err(Error::UpdateLength {
                what: "sum of updates",
                values: sum.weighted_delta.len(),
                expected: global.len(),
            });
        }
        let s = &self.spec;
        let n = global.len();
        let lr = s.learning_rate;
        let total = sum.weight as f64;
        let average = |i: usize| sum.weighted_delta[i] / total;
        let mut state = self.state.clone();
        let mut next = Vec::with_capacity(n);
        match s.algorithm {
            ServerAlgorithm::FedAvg => {
                next.extend((0..n).map(|i| (f64::from(global[i]) + lr * average(i)) as f32));
            }
            ServerAlgorithm::FedAvgM => {
                for (i, m) in state.iter_mut().enumerate() {
                    *m = (s.momentum * f64::from(*m) + average(i)) as f32;
                    next.push((f64::from(global[i]) + lr * f64::from(*m)) as f32);
                }
            }
            algorithm => {
                let (first, second) = state.split_at_mut(n);
                for i in 0..n {
                    let delta = average(i);
                    let m = s.beta1 * f64::from(first[i]) + (1.0 - s.beta1) * delta;
                    let v = f64::from(second[i]);
                    let squared = delta * delta;
                    let v = match algorithm {
                        ServerAlgorithm::FedAdagrad => v + squared,
                        ServerAlgorithm::FedYogi => {
                            v - (1.0 - s.beta2) * squared * (v - squared).signum()
                        }
                        _ => s.beta2 * v + (1.0 - s.beta2) * squared,
                    };
                    first[i] = m as f32;
                    second[i] = v as f32;
                    // The step uses the moments as stored, so that a resumed job, which reads
                    // them back in f32, steps exactly alike.
                    let (m, v) = (f64::from(first[i]), f64::from(second[i]));
                    next.push((f64::from(global[i]) + lr * m / (v.max(0.0).sqrt() + s.tau)) as f32);
                }
            }
        }
        check_finite(&next)?;
        if let Some(position) = state.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFiniteOptimizerState { position });
        }
        Ok((next, state))
    }

    /// Takes on the state [`ServerOptimizer::step`] gave, once its round is committed.
    pub fn adopt(&mut self, state: Vec<f32>) {
        self.state = state;
    }
}

/// The evaluation reports of a round added up: each metric's sums over every participant's test
/// examples (`cairn_proto::metrics`), so that the metrics are those of the pooled test sets.
#[derive(Debug, Clone, PartialEq)]
pub struct EvaluationSum {
    totals: Totals,
    n_reports: usize,
}

impl EvaluationSum {
    /// No report yet, for the job's `metrics`.
    pub fn new(metrics: &[Metric]) -> EvaluationSum {
        EvaluationSum {
            totals: Totals::new(metrics),
            n_reports: 0,
        }
    }

    /// The securely aggregated `totals` of `n_reports` evaluations.
    pub fn from_secure(totals: Totals, n_reports: usize) -> EvaluationSum {
        EvaluationSum { totals, n_reports }
    }

    /// Adds one participant's report, already checked against the job's metrics
    /// (`Totals::from_wire`); a report of other metrics is a programming error and is ignored.
    pub fn add(&mut self, report: &Totals) {
        let same = |totals: &Totals| totals.metrics.iter().map(|(m, _)| *m).collect::<Vec<_>>();
        if same(report) != same(&self.totals) {
            return;
        }
        self.totals.add(report);
        self.n_reports += 1;
    }

    /// Test examples evaluated.
    pub fn n_examples(&self) -> u64 {
        self.totals.n_examples
    }

    /// Each metric's value by name, leaving out the undefined ones (no example, or for ROC AUC
    /// one class missing).
    pub fn finish(&self) -> BTreeMap<String, f64> {
        self.totals
            .finish()
            .into_iter()
            .filter_map(|(metric, value)| Some((metric.name().to_string(), value?)))
            .collect()
    }

    /// Number of reports added.
    pub fn n_reports(&self) -> usize {
        self.n_reports
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::{prop_assert, prop_assert_eq, proptest};

    fn fedavg() -> ServerOptimizer {
        ServerOptimizer::new(&ServerOptimizerSpec::default(), 0)
    }

    /// Adds an update of `delta` weighted by `weight` (and loss `weight * 0.5`) in one piece.
    fn add(sum: &mut PlainSum, delta: &[f32], weight: u64) {
        let weighted: Vec<f32> = delta.iter().map(|d| d * weight as f32).collect();
        sum.add(0, &weighted).unwrap();
        sum.add_contributor(weight, weight as f64 * 0.5).unwrap();
    }

    #[test]
    fn fedavg_weights_by_examples() {
        let mut plain = PlainSum::new(2);
        add(&mut plain, &[1.0, 0.0], 1);
        add(&mut plain, &[4.0, 3.0], 3);
        let sum = plain.finish();
        let next = fedavg().step(&[10.0, 10.0], &sum).unwrap().0;
        assert_eq!(next, vec![10.0 + 13.0 / 4.0, 10.0 + 9.0 / 4.0]);
        assert_eq!(sum.mean_train_loss(), 0.5);
        assert_eq!(sum.n_contributors(), 2);
    }

    #[test]
    fn bad_updates_are_refused_and_leave_the_sum_alone() {
        let mut sum = PlainSum::new(3);
        let err = sum.add(2, &[1.0; 2]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid update: model update has 4 values, job expects 3"
        );
        let err = sum.add(0, &[1.0, 2.0e15, 1.0]).unwrap_err();
        assert!(err.to_string().contains("at position 1"), "{err}");
        assert!(sum.add(0, &[f32::NAN, 0.0, 0.0]).is_err());
        assert!(sum.add_contributor(0, 0.0).is_err());
        let sum = sum.finish();
        assert_eq!(sum.weighted_delta, vec![0.0; 3]);
        assert_eq!(sum.n_contributors(), 0);
        assert!(fedavg().step(&[0.0; 3], &sum).is_err());
    }

    #[test]
    fn what_was_added_is_subtracted_to_the_bit() {
        let before = [0.1f32, -3.7e-5, 12345.678, 1.0e-30];
        let mut sum = PlainSum::new(4);
        sum.add(0, &before).unwrap();
        let snapshot = sum.blocks.clone();
        let partial = [7.25e-9f32, 1.0e9];
        sum.add(1, &partial).unwrap();
        sum.subtract(1, &partial);
        assert_eq!(sum.blocks, snapshot);
    }

    #[test]
    fn a_sum_of_many_blocks_adds_across_their_boundaries() {
        let n = 2 * SUM_BLOCK + 5;
        let values: Vec<f32> = (0..n).map(|i| i as f32 * 0.25 - 9.0).collect();
        let mut sum = PlainSum::new(n);
        assert_eq!(sum.blocks.len(), 3);
        // In pieces that straddle the blocks' boundaries.
        sum.add(0, &values[..SUM_BLOCK - 3]).unwrap();
        sum.add(SUM_BLOCK - 3, &values[SUM_BLOCK - 3..]).unwrap();
        sum.add(0, &values).unwrap();
        sum.subtract(SUM_BLOCK + 1, &values[SUM_BLOCK + 1..2 * SUM_BLOCK + 2]);
        let finished = sum.finish().weighted_delta;
        for (i, (got, value)) in finished.iter().zip(&values).enumerate() {
            let times = if (SUM_BLOCK + 1..2 * SUM_BLOCK + 2).contains(&i) {
                1.0
            } else {
                2.0
            };
            assert_eq!(*got, times * f64::from(*value), "value {i}");
        }
    }

    fn report(n_examples: u64, loss_sum: f64, correct: f64) -> Totals {
        let mut totals = Totals::new(&[Metric::Loss, Metric::Accuracy]);
        totals.n_examples = n_examples;
        totals.metrics[0].1[0] = loss_sum;
        totals.metrics[1].1[0] = correct;
        totals
    }

    #[test]
    fn evaluation_sums_are_those_of_the_pooled_examples() {
        let mut eval = EvaluationSum::new(&[Metric::Loss, Metric::Accuracy]);
        assert!(
            eval.finish().is_empty(),
            "no example: every metric undefined"
        );
        eval.add(&report(100, 100.0, 50.0));
        eval.add(&report(300, 600.0, 270.0));
        // Other metrics than the job's are not added.
        eval.add(&Totals::new(&[Metric::Mse]));
        assert_eq!(eval.n_reports(), 2);
        assert_eq!(eval.n_examples(), 400);
        let metrics = eval.finish();
        assert!((metrics["loss"] - 1.75).abs() < 1e-12, "{metrics:?}");
        assert!((metrics["accuracy"] - 0.8).abs() < 1e-12, "{metrics:?}");
    }

    #[test]
    fn undefined_metrics_are_left_out() {
        let mut eval = EvaluationSum::new(&[Metric::Loss, Metric::RocAuc]);
        let mut only_positives = Totals::new(&[Metric::Loss, Metric::RocAuc]);
        only_positives.n_examples = 2;
        only_positives.metrics[1].1[cairn_proto::metrics::AUC_BINS - 1] = 2.0;
        eval.add(&only_positives);
        assert_eq!(eval.finish().keys().collect::<Vec<_>>(), ["loss"]);
    }

    proptest! {
        #[test]
        fn fedavg_of_equal_updates_is_that_update(delta in proptest::collection::vec(-10.0f32..10.0, 1..50), weights in proptest::collection::vec(1u64..1000, 1..8)) {
            let global = vec![0.5f32; delta.len()];
            let mut sum = PlainSum::new(delta.len());
            for &w in &weights {
                add(&mut sum, &delta, w);
            }
            let next = fedavg().step(&global, &sum.finish()).unwrap().0;
            for (n, d) in next.iter().zip(&delta) {
                prop_assert!((n - (0.5 + d)).abs() <= 1e-4 * (1.0 + d.abs()), "{n} vs {}", 0.5 + d);
            }
        }

        #[test]
        fn the_result_does_not_depend_on_participant_order(updates in proptest::collection::vec((proptest::collection::vec(-1.0f32..1.0, 8), 1u64..100), 1..10)) {
            let run = |order: &[(Vec<f32>, u64)]| {
                let mut sum = PlainSum::new(8);
                for (delta, w) in order {
                    add(&mut sum, delta, *w);
                }
                fedavg().step(&[0.0; 8], &sum.finish()).unwrap().0
            };
            let forward = run(&updates);
            let mut reversed = updates.clone();
            reversed.reverse();
            prop_assert_eq!(forward, run(&reversed), "fixed point adds in any order to the same bits");
        }
    }
}
