//! Evaluation metrics as sums. A participant reports, for each metric the job names, a few sums
//! over its local test examples; the coordinator adds them across participants and only then
//! turns the totals into the metric's value. Every metric is therefore exact over the union of
//! the sites' test sets (ROC AUC up to its score histogram's bin width), and the coordinator
//! needs no per-site value beyond those sums. Both roles use this one definition of what the
//! sums are.

use crate::v1;

/// Bins of the score histograms behind ROC AUC: scores in `[0, 1]` fall into `AUC_BINS` equal
/// bins, and pairs of a positive and a negative example in the same bin count as ties. The error
/// of the AUC is at most the fraction of such pairs.
pub const AUC_BINS: usize = 1000;

/// A metric a job can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Metric {
    /// Mean loss of the participant's objective (cross-entropy for classification, squared
    /// error for regression, or the user's own). Sum: the loss summed over examples.
    Loss,
    /// Fraction of examples whose most probable class is the true one. Sum: correct examples.
    Accuracy,
    /// Area under the ROC curve of a binary classifier's score for the positive class (class 1).
    /// Sums: `AUC_BINS` counts of positive examples per score bin, then `AUC_BINS` of negatives.
    RocAuc,
    /// Mean squared error of a regression. Sum: squared errors.
    Mse,
    /// Mean absolute error of a regression. Sum: absolute errors.
    Mae,
}

/// What is wrong with a metric name or a report of sums.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum MetricError {
    /// The name is not a metric.
    #[error("metric {name:?} is unknown; expected one of loss, accuracy, roc_auc, mse, mae")]
    Unknown {
        /// The name given.
        name: String,
    },
    /// A report names other metrics, or the same in another order, than the job.
    #[error("evaluation reports metrics {found:?}, the job asks for {expected:?}")]
    Names {
        /// The names reported.
        found: Vec<String>,
        /// The job's names, in its order.
        expected: Vec<String>,
    },
    /// A metric came with the wrong number of sums.
    #[error("metric {metric} has {found} sums, expected {expected}")]
    SumCount {
        /// The metric's name.
        metric: &'static str,
        /// Sums received.
        found: usize,
        /// Sums the metric has.
        expected: usize,
    },
    /// A secure sum holds more than honest evaluations can give, or has the wrong length.
    #[error(
        "the secure evaluation sum's {what} is {value}; {n_participants} honest evaluations give at most {most}"
    )]
    OutOfRange {
        /// The slot ("examples", "sum 3 of loss", "length").
        what: String,
        /// Its value.
        value: u64,
        /// The most honest inputs give.
        most: u64,
        /// Evaluations in the sum.
        n_participants: u64,
    },
    /// An encoding's settings are impossible.
    #[error("secure evaluation encoding: {0}")]
    Encoding(String),
    /// A sum is negative, not finite, or more than its examples allow.
    #[error("metric {metric}: sum {value} is impossible for {n_examples} examples")]
    Impossible {
        /// The metric's name.
        metric: &'static str,
        /// The offending sum.
        value: f64,
        /// Examples the report covers.
        n_examples: u64,
    },
}

impl Metric {
    /// Every metric, in the order of their names in messages.
    pub const ALL: [Metric; 5] = [
        Metric::Loss,
        Metric::Accuracy,
        Metric::RocAuc,
        Metric::Mse,
        Metric::Mae,
    ];

    /// The metric called `name` in job files and on the wire.
    pub fn parse(name: &str) -> Result<Metric, MetricError> {
        Metric::ALL
            .into_iter()
            .find(|metric| metric.name() == name)
            .ok_or_else(|| MetricError::Unknown { name: name.into() })
    }

    /// Its name in job files and on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Loss => "loss",
            Metric::Accuracy => "accuracy",
            Metric::RocAuc => "roc_auc",
            Metric::Mse => "mse",
            Metric::Mae => "mae",
        }
    }

    /// Number of sums a report carries for it.
    pub fn n_sums(self) -> usize {
        match self {
            Metric::RocAuc => 2 * AUC_BINS,
            _ => 1,
        }
    }

    /// The histogram bin of a positive-class score (clamped into `[0, 1]`; NaN falls in bin 0).
    pub fn auc_bin(score: f32) -> usize {
        let bin = (score.clamp(0.0, 1.0) * AUC_BINS as f32) as usize;
        bin.min(AUC_BINS - 1)
    }

    /// The metric's value from its sums over `n_examples` examples; `None` when it is undefined
    /// (no example, or for ROC AUC no positive or no negative example).
    pub fn finish(self, sums: &[f64], n_examples: u64) -> Option<f64> {
        if n_examples == 0 || sums.len() != self.n_sums() {
            return None;
        }
        match self {
            Metric::RocAuc => {
                let (positives, negatives) = sums.split_at(AUC_BINS);
                let (n_positive, n_negative): (f64, f64) =
                    (positives.iter().sum(), negatives.iter().sum());
                if n_positive == 0.0 || n_negative == 0.0 {
                    return None;
                }
                // Each positive ranks above every negative in a lower bin and ties with those
                // in its own bin (the Mann-Whitney U statistic, normalised).
                let mut below = 0.0;
                let mut pairs = 0.0;
                for (positive, negative) in positives.iter().zip(negatives) {
                    pairs += positive * (below + 0.5 * negative);
                    below += negative;
                }
                Some(pairs / (n_positive * n_negative))
            }
            _ => Some(sums[0] / n_examples as f64),
        }
    }

    /// Checks one participant's sums for this metric over `n_examples` examples.
    fn check(self, sums: &[f64], n_examples: u64) -> Result<(), MetricError> {
        if sums.len() != self.n_sums() {
            return Err(MetricError::SumCount {
                metric: self.name(),
                found: sums.len(),
                expected: self.n_sums(),
            });
        }
        let impossible = |value| MetricError::Impossible {
            metric: self.name(),
            value,
            n_examples,
        };
        if let Some(&value) = sums.iter().find(|v| !v.is_finite() || **v < 0.0) {
            return Err(impossible(value));
        }
        let counted: f64 = sums.iter().sum();
        match self {
            Metric::Accuracy if counted > n_examples as f64 => Err(impossible(counted)),
            Metric::RocAuc if counted != n_examples as f64 => Err(impossible(counted)),
            _ => Ok(()),
        }
    }
}

/// The sums of one evaluation, or of many added together.
#[derive(Debug, Clone, PartialEq)]
pub struct Totals {
    /// Examples evaluated.
    pub n_examples: u64,
    /// Each metric with its sums, in the job's order.
    pub metrics: Vec<(Metric, Vec<f64>)>,
}

impl Totals {
    /// Zero sums for `metrics`.
    pub fn new(metrics: &[Metric]) -> Totals {
        Totals {
            n_examples: 0,
            metrics: metrics
                .iter()
                .map(|&metric| (metric, vec![0.0; metric.n_sums()]))
                .collect(),
        }
    }

    /// The sums of `metric`, if these totals hold it.
    pub fn sums_mut(&mut self, metric: Metric) -> Option<&mut Vec<f64>> {
        self.metrics
            .iter_mut()
            .find(|(m, _)| *m == metric)
            .map(|(_, sums)| sums)
    }

    /// Adds `other`, which must hold the same metrics in the same order.
    pub fn add(&mut self, other: &Totals) {
        self.n_examples += other.n_examples;
        for ((_, sums), (_, more)) in self.metrics.iter_mut().zip(&other.metrics) {
            for (sum, value) in sums.iter_mut().zip(more) {
                *sum += value;
            }
        }
    }

    /// Every metric's value, in order (`None` where undefined).
    pub fn finish(&self) -> Vec<(Metric, Option<f64>)> {
        self.metrics
            .iter()
            .map(|(metric, sums)| (*metric, metric.finish(sums, self.n_examples)))
            .collect()
    }

    /// The wire report of these sums for `round`.
    pub fn to_wire(&self, round: u64) -> v1::EvaluationReport {
        v1::EvaluationReport {
            round,
            n_examples: self.n_examples,
            metrics: self
                .metrics
                .iter()
                .map(|(metric, sums)| v1::MetricSums {
                    name: metric.name().into(),
                    sums: sums.clone(),
                })
                .collect(),
        }
    }

    /// Reads a participant's report, which must carry exactly `expected`, in order, with sums
    /// that are possible for its example count.
    pub fn from_wire(
        report: &v1::EvaluationReport,
        expected: &[Metric],
    ) -> Result<Totals, MetricError> {
        let names: Vec<&str> = report.metrics.iter().map(|m| m.name.as_str()).collect();
        if names != expected.iter().map(|m| m.name()).collect::<Vec<_>>() {
            return Err(MetricError::Names {
                found: names.into_iter().map(String::from).collect(),
                expected: expected.iter().map(|m| m.name().to_string()).collect(),
            });
        }
        let mut metrics = Vec::with_capacity(expected.len());
        for (&metric, reported) in expected.iter().zip(&report.metrics) {
            metric.check(&reported.sums, report.n_examples)?;
            metrics.push((metric, reported.sums.clone()));
        }
        Ok(Totals {
            n_examples: report.n_examples,
            metrics,
        })
    }
}

/// Mean loss, squared error and absolute error per example above this are clipped in a secure
/// evaluation (the training loss is clipped at the same value), so every sum has a known bound.
pub const MEAN_CLIP: f64 = 32.0;

/// How one evaluation becomes a vector of `Z_{2^32}`, so that the secure sum of every site's
/// vector yields [`Totals`] and no site's sums travel on their own. A site with `n` test examples
/// counts `w = min(n, max_examples)` of them, as a training update counts its weight: every sum
/// is scaled by `w / n`. The vector is `[w, q(sum)...]` in the metrics' order, where `q` maps a
/// scaled sum in `[0, w · bound]` to one of `levels` integers, `bound` being 1 for counts
/// (correct examples, histogram bins) and [`MEAN_CLIP`] for losses and errors. The job's
/// quantisation levels and weight cap already keep `n` such vectors from wrapping.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvaluationEncoding {
    max_examples: u32,
    levels: u32,
}

impl EvaluationEncoding {
    /// An encoding counting at most `max_examples` per site, with `levels` quantisation levels.
    pub fn new(max_examples: u32, levels: u32) -> Result<EvaluationEncoding, MetricError> {
        if max_examples == 0 || levels < 2 {
            return Err(MetricError::Encoding(format!(
                "max_examples {max_examples} and {levels} levels; expected at least 1 and 2"
            )));
        }
        Ok(EvaluationEncoding {
            max_examples,
            levels,
        })
    }

    /// Length of the vector of an evaluation of `metrics`.
    pub fn vector_len(metrics: &[Metric]) -> usize {
        1 + metrics.iter().map(|m| m.n_sums()).sum::<usize>()
    }

    /// The largest scaled sum of `metric` one site can contribute.
    fn bound(&self, metric: Metric) -> f64 {
        let per_example = match metric {
            Metric::Loss | Metric::Mse | Metric::Mae => MEAN_CLIP,
            Metric::Accuracy | Metric::RocAuc => 1.0,
        };
        f64::from(self.max_examples) * per_example
    }

    fn step(&self, metric: Metric) -> f64 {
        self.bound(metric) / f64::from(self.levels - 1)
    }

    /// Encodes one site's evaluation.
    pub fn encode(&self, totals: &Totals) -> Vec<u32> {
        let counted = totals.n_examples.min(u64::from(self.max_examples));
        let ratio = if totals.n_examples == 0 {
            0.0
        } else {
            counted as f64 / totals.n_examples as f64
        };
        let mut out = vec![counted as u32];
        for (metric, sums) in &totals.metrics {
            let most = counted as f64 * self.bound(*metric) / f64::from(self.max_examples);
            for &sum in sums {
                let scaled = if sum.is_finite() { ratio * sum } else { 0.0 };
                let level = (scaled.clamp(0.0, most) / self.step(*metric)).round();
                out.push((level as u32).min(self.levels - 1));
            }
        }
        out
    }

    /// Decodes the secure sum of `n_participants` encoded evaluations of `metrics`, after
    /// checking that honest encodings can give it.
    pub fn decode(
        &self,
        sum: &[u32],
        n_participants: u64,
        metrics: &[Metric],
    ) -> Result<Totals, MetricError> {
        let out_of_range = |what: String, value: u64, most: u64| MetricError::OutOfRange {
            what,
            value,
            most,
            n_participants,
        };
        let expected = EvaluationEncoding::vector_len(metrics);
        let Some((counted, mut rest)) = sum.split_first() else {
            return Err(out_of_range("length".into(), 0, expected as u64));
        };
        if sum.len() != expected {
            return Err(out_of_range(
                "length".into(),
                sum.len() as u64,
                expected as u64,
            ));
        }
        let most_examples = n_participants.saturating_mul(u64::from(self.max_examples));
        if u64::from(*counted) > most_examples {
            return Err(out_of_range(
                "examples".into(),
                u64::from(*counted),
                most_examples,
            ));
        }
        let most_level = n_participants.saturating_mul(u64::from(self.levels - 1));
        let mut totals = Totals::new(metrics);
        totals.n_examples = u64::from(*counted);
        for (metric, sums) in &mut totals.metrics {
            let (own, later) = rest.split_at(metric.n_sums());
            rest = later;
            for (position, (total, &level)) in sums.iter_mut().zip(own).enumerate() {
                if u64::from(level) > most_level {
                    return Err(out_of_range(
                        format!("sum {position} of {}", metric.name()),
                        u64::from(level),
                        most_level,
                    ));
                }
                *total = f64::from(level) * self.step(*metric);
            }
        }
        Ok(totals)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_ones_are_refused() {
        for metric in Metric::ALL {
            assert_eq!(Metric::parse(metric.name()), Ok(metric));
        }
        let err = Metric::parse("f1").unwrap_err().to_string();
        assert!(err.contains("\"f1\"") && err.contains("roc_auc"), "{err}");
    }

    #[test]
    fn auc_of_perfect_random_and_inverted_scores() {
        let auc = |scores: &[(f32, bool)]| {
            let mut sums = vec![0.0; 2 * AUC_BINS];
            for &(score, positive) in scores {
                let offset = if positive { 0 } else { AUC_BINS };
                sums[offset + Metric::auc_bin(score)] += 1.0;
            }
            Metric::RocAuc.finish(&sums, scores.len() as u64)
        };
        assert_eq!(auc(&[(0.9, true), (0.8, true), (0.2, false)]), Some(1.0));
        assert_eq!(auc(&[(0.1, true), (0.9, false)]), Some(0.0));
        assert_eq!(auc(&[(0.5, true), (0.5, false)]), Some(0.5));
        // Three of the four positive-negative pairs are ordered correctly.
        assert_eq!(
            auc(&[(0.9, true), (0.3, true), (0.6, false), (0.1, false)]),
            Some(0.75)
        );
        assert_eq!(auc(&[(0.9, true)]), None, "no negative example");
    }

    #[test]
    fn totals_add_across_sites_like_the_pooled_data() {
        let metrics = [Metric::Loss, Metric::Accuracy];
        let mut a = Totals::new(&metrics);
        a.n_examples = 10;
        a.metrics[0].1[0] = 5.0;
        a.metrics[1].1[0] = 9.0;
        let mut b = Totals::new(&metrics);
        b.n_examples = 30;
        b.metrics[0].1[0] = 3.0;
        b.metrics[1].1[0] = 15.0;
        a.add(&b);
        assert_eq!(
            a.finish(),
            vec![(Metric::Loss, Some(0.2)), (Metric::Accuracy, Some(0.6))]
        );
        let wire = a.to_wire(4);
        assert_eq!(Totals::from_wire(&wire, &metrics).unwrap(), a);
    }

    #[test]
    fn impossible_reports_are_refused() {
        let metrics = [Metric::Accuracy, Metric::RocAuc];
        let mut totals = Totals::new(&metrics);
        totals.n_examples = 2;
        totals.metrics[1].1[0] = 1.0;
        totals.metrics[1].1[AUC_BINS] = 1.0;
        let good = totals.to_wire(1);
        assert!(Totals::from_wire(&good, &metrics).is_ok());

        let mut reordered = good.clone();
        reordered.metrics.reverse();
        let err = Totals::from_wire(&reordered, &metrics).unwrap_err();
        assert!(matches!(err, MetricError::Names { .. }), "{err}");

        let mut too_many_correct = good.clone();
        too_many_correct.metrics[0].sums[0] = 3.0;
        let err = Totals::from_wire(&too_many_correct, &metrics).unwrap_err();
        assert!(
            err.to_string().contains("impossible for 2 examples"),
            "{err}"
        );

        let mut short = good.clone();
        short.metrics[1].sums.pop();
        let err = Totals::from_wire(&short, &metrics).unwrap_err();
        assert!(matches!(err, MetricError::SumCount { .. }), "{err}");

        let mut nan = good;
        nan.metrics[0].sums[0] = f64::NAN;
        assert!(Totals::from_wire(&nan, &metrics).is_err());
    }

    #[test]
    fn encoded_evaluations_sum_to_the_capped_totals() {
        let metrics = [Metric::Loss, Metric::Accuracy, Metric::RocAuc];
        let encoding = EvaluationEncoding::new(100, 1 << 20).unwrap();
        let site = |n: u64, loss: f64, correct: f64| {
            let mut totals = Totals::new(&metrics);
            totals.n_examples = n;
            totals.metrics[0].1[0] = loss;
            totals.metrics[1].1[0] = correct;
            totals.metrics[2].1[Metric::auc_bin(0.9)] = correct;
            totals.metrics[2].1[AUC_BINS + Metric::auc_bin(0.1)] = n as f64 - correct;
            encoding.encode(&totals)
        };
        // 50 examples count whole; 400 count as 100, every sum scaled by a quarter.
        let a = site(50, 25.0, 40.0);
        let b = site(400, 80.0, 200.0);
        assert_eq!(a.len(), EvaluationEncoding::vector_len(&metrics));
        let sum: Vec<u32> = a.iter().zip(&b).map(|(x, y)| x.wrapping_add(*y)).collect();
        let totals = encoding.decode(&sum, 2, &metrics).unwrap();
        assert_eq!(totals.n_examples, 150);
        let close = |got: f64, want: f64| (got - want).abs() < 1e-3;
        let finished = totals.finish();
        assert!(
            close(finished[0].1.unwrap(), (25.0 + 20.0) / 150.0),
            "{finished:?}"
        );
        assert!(
            close(finished[1].1.unwrap(), (40.0 + 50.0) / 150.0),
            "{finished:?}"
        );
        assert!(close(finished[2].1.unwrap(), 1.0), "{finished:?}");

        let mut shifted = sum.clone();
        shifted[2] = u32::MAX - 3;
        let err = encoding
            .decode(&shifted, 2, &metrics)
            .unwrap_err()
            .to_string();
        assert!(err.contains("sum 0 of accuracy"), "{err}");
        let mut crowded = sum.clone();
        crowded[0] = 201;
        let err = encoding
            .decode(&crowded, 2, &metrics)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("examples is 201") && err.contains("at most 200"),
            "{err}"
        );
        let err = encoding
            .decode(&sum[1..], 2, &metrics)
            .unwrap_err()
            .to_string();
        assert!(err.contains("length"), "{err}");
        assert!(EvaluationEncoding::new(0, 16).is_err());
    }
}
