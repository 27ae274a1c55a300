//! The learning task a participant runs: the [`Task`] trait (train, evaluate, get and set the
//! flat parameter vector) and its burn implementation in [`burn`], the only module that imports
//! burn. The client drives a `Task` without knowing which framework or device is behind it.

mod burn;

pub use self::burn::{Backend, BurnTask};

use crate::Error;

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
    /// Passes over the local training data.
    pub local_epochs: u32,
    /// Examples per gradient step.
    pub batch_size: u32,
    /// SGD step size.
    pub learning_rate: f64,
    /// Seed for this round's shuffling.
    pub seed: u64,
}

/// What local training produced.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingOutcome {
    /// Examples trained on (the participant's weight in FedAvg).
    pub n_examples: u64,
    /// Mean training loss over the last local epoch.
    pub mean_loss: f64,
}

/// Metrics of the current model on local test data.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// Examples evaluated.
    pub n_examples: u64,
    /// Mean cross-entropy loss.
    pub loss: f64,
    /// Fraction classified correctly.
    pub accuracy: f64,
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

/// A model together with the local data it trains and evaluates on.
pub trait Task: Send {
    /// Names and shapes of the parameters, in the order of [`Task::parameters`].
    fn layout(&self) -> Vec<TensorShape>;
    /// All parameters as one flat vector, in layout order.
    fn parameters(&self) -> Vec<f32>;
    /// Replaces all parameters; `values` is laid out as [`Task::layout`] says.
    fn set_parameters(&mut self, values: &[f32]) -> Result<(), Error>;
    /// Trains on the local training data, calling `progress` after every epoch.
    fn train(
        &mut self,
        config: &TrainingConfig,
        progress: &mut dyn FnMut(EpochProgress),
    ) -> Result<TrainingOutcome, Error>;
    /// Evaluates the current parameters on the local test data.
    fn evaluate(&self) -> Result<Evaluation, Error>;
}
