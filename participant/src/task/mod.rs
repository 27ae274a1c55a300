//! The learning task a participant runs. The client drives a [`Task`] (check and load the global
//! model, train, evaluate, hand back the parameters) without knowing which framework or device
//! is behind it; [`Site`] is the burn implementation for any user model: a burn `Module` that
//! implements [`Model`], trained by the default loop or by the user's [`Training`].
//! [`presets`] holds the built-in networks. This module and its children are the only ones that
//! import burn.

mod backend;
mod model;
pub mod presets;
mod site;
mod synthetic;

pub use self::backend::{Backend, set_threads, threads};
pub use self::model::{Batch, BatchTargets, DefaultTraining, Model, Training, default_loss};
pub use self::site::{Site, load_model, save_model};
pub use self::synthetic::{SYNTHETIC_TENSOR, Synthetic, save_synthetic_model};

use crate::Error;
use crate::data::FeatureStatistics;
pub use cairn_proto::metrics::{Metric, Totals};

/// A named tensor's shape, in the wire layout (PyTorch's convention: a linear layer's weight is
/// `[out, in]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorShape {
    /// Dotted path, as in `fc1.weight`.
    pub name: String,
    /// Dimensions.
    pub shape: Vec<usize>,
}

/// Hyper-parameters of one round of local training, from the coordinator.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingConfig {
    /// The round being trained (1-based), for schedules across rounds.
    pub round: u64,
    /// Passes over the local training data.
    pub local_epochs: u32,
    /// Examples per gradient step.
    pub batch_size: u32,
    /// SGD step size.
    pub learning_rate: f64,
    /// Seed for this round's shuffling.
    pub seed: u64,
    /// FedProx's `μ`: the default loop follows each SGD step with the proximal step of
    /// `μ/2 ‖w - w_global‖²`. 0: none.
    pub proximal_mu: f64,
}

/// What the job asks of every participant's data and evaluation (from the coordinator's
/// `Welcome`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct JobTask {
    /// Metrics each evaluation reports, in the job's order.
    pub metrics: Vec<Metric>,
    /// Fixed statistics to standardise tabular features with; empty: none.
    pub standardize: Vec<FeatureStatistics>,
}

/// What local training produced.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingOutcome {
    /// Examples trained on (the participant's weight in FedAvg).
    pub n_examples: u64,
    /// Mean training loss over the last local epoch.
    pub mean_loss: f64,
}

/// Progress of local training, reported once per epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochProgress {
    /// 1-based epoch just finished.
    pub epoch: u32,
    /// Epochs in this round.
    pub epochs: u32,
    /// Mean loss over that epoch.
    pub mean_loss: f64,
    /// Examples per second during that epoch.
    pub examples_per_second: f64,
}

/// How the job's model differs from this participant's: what [`Task::check_layout`] refuses.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LayoutDiff {
    /// Tensors this participant's model has and the job's lacks.
    pub missing: Vec<TensorShape>,
    /// Tensors the job's model has and this participant's lacks.
    pub extra: Vec<TensorShape>,
    /// Tensors of both, shaped differently: name, the job's shape, this participant's.
    pub reshaped: Vec<(String, Vec<usize>, Vec<usize>)>,
}

impl LayoutDiff {
    /// The difference between the job's `theirs` and this participant's `ours`.
    pub fn between(theirs: &[TensorShape], ours: &[TensorShape]) -> LayoutDiff {
        let find = |layout: &[TensorShape], name: &str| -> Option<Vec<usize>> {
            layout
                .iter()
                .find(|t| t.name == name)
                .map(|t| t.shape.clone())
        };
        let mut diff = LayoutDiff::default();
        for tensor in ours {
            match find(theirs, &tensor.name) {
                None => diff.missing.push(tensor.clone()),
                Some(shape) if shape != tensor.shape => {
                    diff.reshaped
                        .push((tensor.name.clone(), shape, tensor.shape.clone()));
                }
                Some(_) => {}
            }
        }
        diff.extra = theirs
            .iter()
            .filter(|t| find(ours, &t.name).is_none())
            .cloned()
            .collect();
        diff
    }

    /// Whether the two layouts are the same.
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.extra.is_empty() && self.reshaped.is_empty()
    }
}

impl std::fmt::Display for LayoutDiff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        for tensor in &self.missing {
            parts.push(format!(
                "{} {:?} is missing from the job's model",
                tensor.name, tensor.shape
            ));
        }
        for tensor in &self.extra {
            parts.push(format!(
                "{} {:?} is in the job's model but not in this participant's",
                tensor.name, tensor.shape
            ));
        }
        for (name, theirs, ours) in &self.reshaped {
            parts.push(format!(
                "{name} is {theirs:?} in the job's model, {ours:?} in this participant's"
            ));
        }
        write!(f, "{}", parts.join("; "))
    }
}

/// A model together with the local data it trains and evaluates on, as the client drives it.
pub trait Task: Send {
    /// Takes the job's instructions about data and evaluation (on every `Welcome`): the
    /// standardisation to apply and the metrics to report. Refuses what this task cannot do.
    fn prepare(&mut self, job: &JobTask) -> Result<(), Error>;
    /// Checks that the job's model has exactly this task's tensors; the error lists every
    /// difference.
    fn check_layout(&self, layout: &[TensorShape]) -> Result<(), Error>;
    /// Replaces all parameters with `values`, laid out as `layout` (the wire order).
    fn set_parameters(&mut self, layout: &[TensorShape], values: &[f32]) -> Result<(), Error>;
    /// All parameters as one flat vector, laid out as `layout`.
    fn parameters(&self, layout: &[TensorShape]) -> Result<Vec<f32>, Error>;
    /// Trains on the local training data, calling `progress` after every epoch.
    fn train(
        &mut self,
        config: &TrainingConfig,
        progress: &mut dyn FnMut(EpochProgress),
    ) -> Result<TrainingOutcome, Error>;
    /// Evaluates the current parameters on the local test data: the sums of every metric
    /// [`Task::prepare`] was given.
    fn evaluate(&self) -> Result<Totals, Error>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(name: &str, shape: &[usize]) -> TensorShape {
        TensorShape {
            name: name.into(),
            shape: shape.to_vec(),
        }
    }

    #[test]
    fn a_layout_diff_names_every_difference() {
        let ours = [
            shape("a.weight", &[2, 3]),
            shape("a.bias", &[2]),
            shape("b", &[1]),
        ];
        let theirs = [
            shape("a.weight", &[2, 4]),
            shape("a.bias", &[2]),
            shape("c", &[5]),
        ];
        let diff = LayoutDiff::between(&theirs, &ours);
        assert_eq!(diff.missing, vec![shape("b", &[1])]);
        assert_eq!(diff.extra, vec![shape("c", &[5])]);
        assert_eq!(
            diff.reshaped,
            vec![("a.weight".to_string(), vec![2, 4], vec![2, 3])]
        );
        let text = diff.to_string();
        assert!(text.contains("b [1] is missing"), "{text}");
        assert!(text.contains("c [5] is in the job's model"), "{text}");
        assert!(
            text.contains("a.weight is [2, 4] in the job's model, [2, 3]"),
            "{text}"
        );
        assert!(LayoutDiff::between(&ours, &ours).is_empty());
    }
}
