//! [`Examples`]: what every loader produces and every model trains on. Features are flat `f32`
//! vectors of a fixed shape, targets are class indices or real values; the model decides how to
//! read the features (a table's columns, an image's channels, rows and columns).

use crate::Error;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha20Rng;
use std::path::Path;

/// Labelled examples held in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Examples {
    /// Shape of one example's features: `[n_features]` for a table, `[channels, rows, cols]`
    /// for images (PyTorch's order).
    pub feature_shape: Vec<usize>,
    /// Names of the features, a table's column names; empty for images.
    pub feature_names: Vec<String>,
    /// `len() * product(feature_shape)` values, one example after the other.
    pub features: Vec<f32>,
    /// One target per example.
    pub targets: Targets,
}

/// What the examples are labelled with.
#[derive(Debug, Clone, PartialEq)]
pub enum Targets {
    /// Classification: each label indexes `classes`.
    Classes {
        /// One class index per example.
        labels: Vec<u32>,
        /// The class names, in index order; their number is the number of classes.
        classes: Vec<String>,
    },
    /// Regression: one real value per example.
    Values(Vec<f32>),
}

impl Targets {
    /// Number of targets.
    pub fn len(&self) -> usize {
        match self {
            Targets::Classes { labels, .. } => labels.len(),
            Targets::Values(values) => values.len(),
        }
    }

    /// Whether there is no target.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of classes, or `None` for a regression.
    pub fn n_classes(&self) -> Option<usize> {
        match self {
            Targets::Classes { classes, .. } => Some(classes.len()),
            Targets::Values(_) => None,
        }
    }

    /// Class labels, or `None` for a regression.
    pub fn labels(&self) -> Option<&[u32]> {
        match self {
            Targets::Classes { labels, .. } => Some(labels),
            Targets::Values(_) => None,
        }
    }

    fn select(&self, indices: &[usize]) -> Targets {
        match self {
            Targets::Classes { labels, classes } => Targets::Classes {
                labels: indices.iter().map(|&i| labels[i]).collect(),
                classes: classes.clone(),
            },
            Targets::Values(values) => {
                Targets::Values(indices.iter().map(|&i| values[i]).collect())
            }
        }
    }
}

impl Examples {
    /// Number of examples.
    pub fn len(&self) -> usize {
        self.targets.len()
    }

    /// Whether there is no example.
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// Values per example.
    pub fn example_size(&self) -> usize {
        self.feature_shape.iter().product()
    }

    /// Features of one example.
    pub fn features_of(&self, index: usize) -> &[f32] {
        let size = self.example_size();
        &self.features[index * size..(index + 1) * size]
    }

    /// The examples at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Examples {
        Examples {
            feature_shape: self.feature_shape.clone(),
            feature_names: self.feature_names.clone(),
            features: indices
                .iter()
                .flat_map(|&i| self.features_of(i).iter().copied())
                .collect(),
            targets: self.targets.select(indices),
        }
    }

    /// The same examples in a seeded random order.
    pub fn shuffled(&self, seed: u64) -> Examples {
        let mut order: Vec<usize> = (0..self.len()).collect();
        order.shuffle(&mut ChaCha20Rng::seed_from_u64(seed));
        self.select(&order)
    }

    /// The examples of several sets one after the other; they must have the same features and
    /// the same kind of targets (the same classes).
    pub fn concat(parts: &[Examples]) -> Result<Examples, Error> {
        let Some((first, rest)) = parts.split_first() else {
            return Err(Error::Data {
                path: "(no examples)".into(),
                reason: "nothing to concatenate".into(),
            });
        };
        let mut all = first.clone();
        for (index, part) in rest.iter().enumerate() {
            let mismatch = |what: &str| Error::Data {
                path: format!("(set {})", index + 1).into(),
                reason: format!("its {what} differ from the first set's"),
            };
            if part.feature_shape != all.feature_shape || part.feature_names != all.feature_names {
                return Err(mismatch("features"));
            }
            all.features.extend_from_slice(&part.features);
            match (&mut all.targets, &part.targets) {
                (
                    Targets::Classes { labels, classes },
                    Targets::Classes {
                        labels: more,
                        classes: their_classes,
                    },
                ) if classes == their_classes => labels.extend_from_slice(more),
                (Targets::Values(values), Targets::Values(more)) => values.extend_from_slice(more),
                _ => return Err(mismatch("targets")),
            }
        }
        Ok(all)
    }

    /// Splits off a held-out share: a seeded shuffle, then `test_fraction` of the examples (at
    /// least one, when there are two or more) go to the second set.
    pub fn split(&self, test_fraction: f64, seed: u64) -> (Examples, Examples) {
        let mut order: Vec<usize> = (0..self.len()).collect();
        order.shuffle(&mut ChaCha20Rng::seed_from_u64(seed));
        let n_test = ((self.len() as f64 * test_fraction).round() as usize)
            .max(usize::from(self.len() >= 2))
            .min(self.len());
        let (test, train) = order.split_at(n_test);
        (self.select(train), self.select(test))
    }

    /// Standardises every feature as `(x - mean) / std` with the given statistics, one per
    /// feature by name: the job's fixed statistics, so that every site transforms alike. `path`
    /// names the data in errors.
    pub fn standardize(
        &mut self,
        statistics: &[FeatureStatistics],
        path: &Path,
    ) -> Result<(), Error> {
        if statistics.is_empty() {
            return Ok(());
        }
        if self.feature_names.is_empty() {
            return Err(Error::Data {
                path: path.to_path_buf(),
                reason: "the job standardises named features, but these examples have no feature names (images?)".into(),
            });
        }
        let mut per_feature = Vec::with_capacity(self.feature_names.len());
        for name in &self.feature_names {
            let statistic = statistics
                .iter()
                .find(|s| &s.feature == name)
                .ok_or_else(|| Error::Data {
                    path: path.to_path_buf(),
                    reason: format!(
                        "the job gives no statistics for feature {name:?}; it standardises {:?}",
                        statistics
                            .iter()
                            .map(|s| s.feature.as_str())
                            .collect::<Vec<_>>()
                    ),
                })?;
            per_feature.push((statistic.mean as f32, statistic.std as f32));
        }
        if let Some(extra) = statistics
            .iter()
            .find(|s| !self.feature_names.contains(&s.feature))
        {
            return Err(Error::Data {
                path: path.to_path_buf(),
                reason: format!(
                    "the job standardises feature {:?}, which this data does not have; its features are {:?}",
                    extra.feature, self.feature_names
                ),
            });
        }
        for example in self.features.chunks_mut(per_feature.len()) {
            for (value, (mean, std)) in example.iter_mut().zip(&per_feature) {
                *value = (*value - mean) / std;
            }
        }
        Ok(())
    }
}

/// A feature's fixed mean and standard deviation, from the job.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureStatistics {
    /// The feature's name (a column of the table).
    pub feature: String,
    /// Its mean.
    pub mean: f64,
    /// Its standard deviation, positive.
    pub std: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Examples {
        Examples {
            feature_shape: vec![2],
            feature_names: vec!["a".into(), "b".into()],
            features: vec![1.0, 10.0, 3.0, 30.0, 5.0, 50.0],
            targets: Targets::Values(vec![0.0, 1.0, 2.0]),
        }
    }

    #[test]
    fn splits_are_seeded_and_disjoint() {
        let examples = table();
        let (train, test) = examples.split(0.34, 7);
        assert_eq!((train.len(), test.len()), (2, 1));
        assert_eq!(examples.split(0.34, 7), (train.clone(), test.clone()));
        let mut all: Vec<f32> = match (&train.targets, &test.targets) {
            (Targets::Values(a), Targets::Values(b)) => a.iter().chain(b).copied().collect(),
            _ => unreachable!(),
        };
        all.sort_by(f32::total_cmp);
        assert_eq!(all, vec![0.0, 1.0, 2.0]);
    }

    #[test]
    fn shuffles_are_seeded_and_concatenation_keeps_every_example() {
        let examples = table();
        assert_eq!(examples.shuffled(3), examples.shuffled(3));
        let (a, b) = examples.split(0.34, 1);
        let all = Examples::concat(&[a.clone(), b]).unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all.select(&[0, 1]), a);
        let mut other = table();
        other.feature_names[0] = "z".into();
        assert!(Examples::concat(&[a, other]).is_err());
    }

    #[test]
    fn standardisation_uses_the_given_statistics_by_name() {
        let mut examples = table();
        let statistics = [
            FeatureStatistics {
                feature: "b".into(),
                mean: 30.0,
                std: 20.0,
            },
            FeatureStatistics {
                feature: "a".into(),
                mean: 3.0,
                std: 2.0,
            },
        ];
        examples
            .standardize(&statistics, Path::new("t.csv"))
            .unwrap();
        assert_eq!(examples.features, vec![-1.0, -1.0, 0.0, 0.0, 1.0, 1.0]);

        let err = table()
            .standardize(&statistics[..1], Path::new("t.csv"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no statistics for feature \"a\""), "{err}");
        let mut extra = statistics.to_vec();
        extra.push(FeatureStatistics {
            feature: "c".into(),
            mean: 0.0,
            std: 1.0,
        });
        let err = table()
            .standardize(&extra, Path::new("t.csv"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("feature \"c\", which this data does not have"),
            "{err}"
        );
    }
}
