//! Aggregation over flat parameter vectors (plain slices). The coordinator only ever sees the
//! *sum* of the participants' weighted updates and the sum of their weights ([`UpdateSum`]);
//! the job's [`ServerOptimizer`] turns that sum into the next global model. Secure aggregation
//! replaces how the sum is obtained, not what the optimiser does with it.

use crate::Error;
use crate::config::{ServerAlgorithm, ServerOptimizerSpec};
use crate::model::TensorShape;
use cairn_proto::metrics::{Metric, Totals};
use std::collections::BTreeMap;

/// One participant's contribution, before it is added to the sum: its model delta already
/// multiplied by its weight, the weight (example count), and its weight times its mean training
/// loss.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    /// `weight * (local model - global model)`.
    pub weighted_delta: Vec<f32>,
    /// Local training examples.
    pub weight: u64,
    /// `weight * mean training loss`.
    pub weighted_train_loss: f64,
}

impl Update {
    /// The update with its weight capped at `max_weight` examples: the weighted delta and loss
    /// are scaled down with it, so one site's influence on the average is bounded however many
    /// examples it claims.
    pub fn capped(mut self, max_weight: u64) -> Update {
        if self.weight > max_weight {
            let scale = max_weight as f64 / self.weight as f64;
            for value in &mut self.weighted_delta {
                *value = (f64::from(*value) * scale) as f32;
            }
            self.weighted_train_loss *= scale;
            self.weight = max_weight;
        }
        self
    }

    /// The update with its delta (`weighted_delta / weight`) scaled down to L2 norm `max_norm`
    /// if it is longer, so that one site's pull on the average is bounded whatever it sends.
    pub fn clipped(mut self, max_norm: f32) -> Update {
        let weighted_norm = self
            .weighted_delta
            .iter()
            .map(|&v| f64::from(v) * f64::from(v))
            .sum::<f64>()
            .sqrt();
        let most = f64::from(max_norm) * self.weight.max(1) as f64;
        if weighted_norm > most {
            let scale = most / weighted_norm;
            for value in &mut self.weighted_delta {
                *value = (f64::from(*value) * scale) as f32;
            }
        }
        self
    }
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

/// The running sum of the updates of one round. It keeps no individual update: each is added
/// and dropped.
#[derive(Debug, Clone)]
pub struct UpdateSum {
    /// Element-wise sum of the weighted deltas. Summed in f64 so that the result does not depend
    /// on the order in which participants answered beyond the last f32 rounding.
    weighted_delta: Vec<f64>,
    weight: u64,
    weighted_train_loss: f64,
    n_contributors: usize,
}

impl UpdateSum {
    /// An empty sum for a model of `n_values` parameters.
    pub fn new(n_values: usize) -> UpdateSum {
        UpdateSum {
            weighted_delta: vec![0.0; n_values],
            weight: 0,
            weighted_train_loss: 0.0,
            n_contributors: 0,
        }
    }

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

    /// Adds one update, which is then dropped by the caller.
    pub fn add(&mut self, update: &Update) -> Result<(), Error> {
        if update.weighted_delta.len() != self.weighted_delta.len() {
            return Err(Error::UpdateLength {
                what: "model update",
                values: update.weighted_delta.len(),
                expected: self.weighted_delta.len(),
            });
        }
        check_weight_and_loss(update.weight, update.weighted_train_loss)?;
        // `zip` stops at the shorter vector; the lengths are equal (checked above), so every
        // value is added.
        for (sum, &value) in self.weighted_delta.iter_mut().zip(&update.weighted_delta) {
            *sum += f64::from(value);
        }
        self.weight = self
            .weight
            .checked_add(update.weight)
            .ok_or(Error::WeightOverflow {
                weight: update.weight,
            })?;
        self.weighted_train_loss += update.weighted_train_loss;
        self.n_contributors += 1;
        Ok(())
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
    use proptest::prelude::{prop_assert, proptest};

    fn fedavg() -> ServerOptimizer {
        ServerOptimizer::new(&ServerOptimizerSpec::default(), 0)
    }

    fn update(delta: Vec<f32>, weight: u64) -> Update {
        let weighted_delta = delta.iter().map(|d| d * weight as f32).collect();
        Update {
            weighted_delta,
            weight,
            weighted_train_loss: weight as f64 * 0.5,
        }
    }

    #[test]
    fn fedavg_weights_by_examples() {
        let mut sum = UpdateSum::new(2);
        sum.add(&update(vec![1.0, 0.0], 1)).unwrap();
        sum.add(&update(vec![4.0, 3.0], 3)).unwrap();
        let next = fedavg().step(&[10.0, 10.0], &sum).unwrap().0;
        assert_eq!(next, vec![10.0 + 13.0 / 4.0, 10.0 + 9.0 / 4.0]);
        assert_eq!(sum.mean_train_loss(), 0.5);
        assert_eq!(sum.n_contributors(), 2);
    }

    #[test]
    fn bad_updates_are_refused_and_leave_the_sum_alone() {
        let mut sum = UpdateSum::new(3);
        let err = sum.add(&update(vec![1.0; 2], 1)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid update: model update has 2 values, job expects 3"
        );
        assert!(sum.add(&update(vec![1.0; 3], 0)).is_err());
        assert_eq!(sum.n_contributors(), 0);
        assert!(fedavg().step(&[0.0; 3], &sum).is_err());
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
            let mut sum = UpdateSum::new(delta.len());
            for &w in &weights {
                sum.add(&Update { weighted_delta: delta.iter().map(|d| d * w as f32).collect(), weight: w, weighted_train_loss: 0.0 }).unwrap();
            }
            let next = fedavg().step(&global, &sum).unwrap().0;
            for (n, d) in next.iter().zip(&delta) {
                prop_assert!((n - (0.5 + d)).abs() <= 1e-4 * (1.0 + d.abs()), "{n} vs {}", 0.5 + d);
            }
        }

        #[test]
        fn the_result_does_not_depend_on_participant_order(updates in proptest::collection::vec((proptest::collection::vec(-1.0f32..1.0, 8), 1u64..100), 1..10)) {
            let run = |order: &[(Vec<f32>, u64)]| {
                let mut sum = UpdateSum::new(8);
                for (delta, w) in order {
                    sum.add(&update(delta.clone(), *w)).unwrap();
                }
                fedavg().step(&[0.0; 8], &sum).unwrap().0
            };
            let forward = run(&updates);
            let mut reversed = updates.clone();
            reversed.reverse();
            let backward = run(&reversed);
            for (a, b) in forward.iter().zip(&backward) {
                prop_assert!((a - b).abs() <= 1e-6, "{a} vs {b}");
            }
        }
    }
}
