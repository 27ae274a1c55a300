//! What a user brings: a burn module that implements [`Model`] (its forward pass), and, when the
//! default loop does not fit, a [`Training`] that changes the loss (a regularizer), the step size
//! (a schedule) or the whole round of local training. [`DefaultTraining`] is plain mini-batch
//! SGD on [`default_loss`], stateless, so that a fresh optimizer each round loses nothing, with
//! FedProx's proximal step when the job sets `proximal_mu`.

use super::{EpochProgress, TrainingConfig, TrainingOutcome};
use crate::Error;
use crate::data::{Examples, Targets};
use ::burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use ::burn::nn::loss::{CrossEntropyLossConfig, MseLoss, Reduction};
use ::burn::optim::{GradientsParams, SgdConfig};
use ::burn::tensor::{Device, Int, Tensor, TensorData};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha20Rng;
use std::time::Instant;

/// A network a federation can train: any burn module with a forward pass from a batch of
/// examples' features to one row of outputs per example.
///
/// Features arrive flat, `[batch, values per example]`; a model of images reshapes them
/// (`[batch, channels, rows, cols]`). Outputs are `[batch, n_classes]` logits for a
/// classification and `[batch, 1]` for a regression.
pub trait Model: Module + 'static {
    /// The outputs for a batch of features.
    fn forward(&self, features: Tensor<2>) -> Tensor<2>;
}

/// Targets of a batch, on the device.
#[derive(Debug, Clone)]
pub enum BatchTargets {
    /// Class indices, `[batch]`.
    Classes(Tensor<1, Int>),
    /// Real values, `[batch, 1]`.
    Values(Tensor<2>),
}

/// A mini-batch of examples on the device.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Features, `[batch, values per example]`.
    pub features: Tensor<2>,
    /// Targets, one per example.
    pub targets: BatchTargets,
}

impl Batch {
    /// The examples at `indices`, copied to `device`.
    pub fn new(examples: &Examples, indices: &[usize], device: &Device) -> Batch {
        let size = examples.example_size();
        let features: Vec<f32> = indices
            .iter()
            .flat_map(|&i| examples.features_of(i).iter().copied())
            .collect();
        let targets = match &examples.targets {
            Targets::Classes { labels, .. } => {
                let labels: Vec<i64> = indices.iter().map(|&i| i64::from(labels[i])).collect();
                BatchTargets::Classes(Tensor::from_data(
                    TensorData::new(labels, [indices.len()]),
                    device,
                ))
            }
            Targets::Values(values) => {
                let values: Vec<f32> = indices.iter().map(|&i| values[i]).collect();
                BatchTargets::Values(Tensor::from_data(
                    TensorData::new(values, [indices.len(), 1]),
                    device,
                ))
            }
        };
        Batch {
            features: Tensor::from_data(TensorData::new(features, [indices.len(), size]), device),
            targets,
        }
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.features.dims()[0]
    }

    /// Whether the batch holds no example.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The task's data loss: cross-entropy of the logits for classes, mean squared error for
/// values. Also the `loss` metric of an evaluation.
pub fn default_loss(outputs: Tensor<2>, targets: &BatchTargets) -> Tensor<1> {
    match targets {
        BatchTargets::Classes(labels) => CrossEntropyLossConfig::new()
            .init(&outputs.device())
            .forward(outputs, labels.clone()),
        BatchTargets::Values(values) => {
            MseLoss::new().forward(outputs, values.clone(), Reduction::Mean)
        }
    }
}

/// How a site trains the global model in a round. Every method has a default; override
/// [`Training::loss`] to add a regularizer, [`Training::learning_rate`] for a schedule, or
/// [`Training::train`] to replace the loop (a frozen backbone needs none of these: build its
/// layers with `.no_grad()`, and the default loop leaves them as they are).
pub trait Training<M: Model>: Send + 'static {
    /// The loss to minimise on one batch; by default [`default_loss`] of the model's outputs.
    fn loss(&self, model: &M, batch: &Batch) -> Tensor<1> {
        default_loss(model.forward(batch.features.clone()), &batch.targets)
    }

    /// The step size of the `step`-th gradient step (0-based) of this round; by default the
    /// job's learning rate throughout.
    fn learning_rate(&self, config: &TrainingConfig, step: usize) -> f64 {
        let _ = step;
        config.learning_rate
    }

    /// One round of local training of `model` on `examples`, on `device`; calls `progress`
    /// after every epoch. By default: `local_epochs` passes of plain SGD over mini-batches in a
    /// seeded random order.
    fn train(
        &mut self,
        model: M,
        examples: &Examples,
        config: &TrainingConfig,
        device: &Device,
        progress: &mut dyn FnMut(EpochProgress),
    ) -> Result<(M, TrainingOutcome), Error> {
        sgd(self, model, examples, config, device, progress)
    }
}

/// The default: [`Training`]'s provided methods, unchanged.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultTraining;

impl<M: Model> Training<M> for DefaultTraining {}

/// Plain mini-batch SGD with `training`'s loss and step sizes.
fn sgd<M: Model, T: Training<M> + ?Sized>(
    training: &T,
    mut model: M,
    examples: &Examples,
    config: &TrainingConfig,
    device: &Device,
    progress: &mut dyn FnMut(EpochProgress),
) -> Result<(M, TrainingOutcome), Error> {
    let batch_size = config.batch_size as usize;
    if batch_size == 0 {
        return Err(Error::Model("batch size 0; expected at least 1".into()));
    }
    if examples.is_empty() {
        return Err(Error::Model("no training example to train on".into()));
    }
    let mut optimizer = SgdConfig::new().init();
    let mut proximal = (config.proximal_mu > 0.0).then(|| Proximal::around(&model));
    let mut rng = ChaCha20Rng::seed_from_u64(config.seed);
    let mut order: Vec<usize> = (0..examples.len()).collect();
    let mut mean_loss = f64::NAN;
    let mut step = 0;
    for epoch in 1..=config.local_epochs {
        let started = Instant::now();
        order.shuffle(&mut rng);
        let mut loss_sum = Tensor::<1>::zeros([1], &device.clone().inner());
        for indices in order.chunks(batch_size) {
            let batch = Batch::new(examples, indices, device);
            let loss = training.loss(&model, &batch);
            // Sum detached losses on the inner device; reading one scalar per epoch avoids a
            // device synchronisation per step.
            loss_sum = loss_sum + loss.clone().inner().mul_scalar(indices.len() as f64);
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            let learning_rate = training.learning_rate(config, step);
            model = optimizer.step(learning_rate, model, grads);
            if let Some(proximal) = proximal.as_mut() {
                model = proximal.step(model, learning_rate * config.proximal_mu);
            }
            step += 1;
        }
        mean_loss = f64::from(loss_sum.into_scalar::<f32>()) / examples.len() as f64;
        let seconds = started.elapsed().as_secs_f64().max(1e-9);
        progress(EpochProgress {
            epoch,
            epochs: config.local_epochs,
            mean_loss,
            examples_per_second: examples.len() as f64 / seconds,
        });
    }
    if !mean_loss.is_finite() && config.local_epochs > 0 {
        return Err(Error::Model(format!(
            "training diverged (mean loss {mean_loss}); lower the learning rate ({})",
            config.learning_rate
        )));
    }
    Ok((
        model,
        TrainingOutcome {
            n_examples: examples.len() as u64,
            mean_loss,
        },
    ))
}

/// FedProx (Li et al. 2020) as proximal gradient descent: after each SGD step on the data loss
/// with step size `η`, the proximal step of `μ/2 ‖w - w_global‖²`,
/// `w ← (w + ημ w_global) / (1 + ημ)`, which pulls every trainable parameter towards the
/// round's global model and is stable for any `μ ≥ 0` (an explicit gradient step on the term
/// would overshoot once `ημ > 1`). It maps the module's parameters by id, so it works for any
/// burn module; frozen parameters stay as they are.
struct Proximal {
    /// The global model's parameters, flattened, on the inner backend, by id.
    anchors: std::collections::HashMap<ParamId, Tensor<1>>,
    /// `ημ` of the step being applied.
    pull: f64,
}

impl Proximal {
    /// The proximal term around `model`'s current parameters (the round's global model).
    fn around<M: Module>(model: &M) -> Proximal {
        let mut proximal = Proximal {
            anchors: std::collections::HashMap::new(),
            pull: 0.0,
        };
        model.visit(&mut proximal);
        proximal
    }

    /// `model` after the proximal step with `ημ = pull`.
    fn step<M: Module>(&mut self, model: M, pull: f64) -> M {
        self.pull = pull;
        model.map(self)
    }
}

impl ModuleVisitor for Proximal {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        // On the inner (non-autodiff) backend: the anchor takes no part in any gradient.
        let anchor = param.val().inner().flatten::<1>(0, D - 1);
        self.anchors.insert(param.id, anchor);
    }
}

impl ModuleMapper for Proximal {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(anchor) = self.anchors.get(&param.id).cloned() else {
            return param;
        };
        let pull = self.pull;
        param.map(|tensor| {
            if !tensor.is_require_grad() {
                return tensor;
            }
            let anchor: Tensor<D> = anchor.reshape(tensor.dims());
            let pulled = (tensor.inner() + anchor.mul_scalar(pull)).div_scalar(1.0 + pull);
            Tensor::from_inner(pulled).require_grad()
        })
    }
}
