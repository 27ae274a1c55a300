//! [`Site`]: a user's [`Model`] and [`Training`] with this site's data, as a [`Task`] the client
//! drives. Parameters move between the burn module and the wire through burn-store's
//! `SafetensorsStore` with its PyTorch adapters, so the names and layouts on the wire and in every
//! file are PyTorch's `state_dict` ones (a linear weight is `[out, in]`); nothing here flattens a
//! network by hand. Evaluation turns the model's outputs into the sums of
//! [`cairn_proto::metrics`].

use super::model::Batch;
use super::{
    DefaultTraining, EpochProgress, JobTask, LayoutDiff, Model, Task, TensorShape, Training,
    TrainingConfig, TrainingOutcome,
};
use crate::Error;
use crate::data::{Examples, LocalData, Targets};
use ::burn::module::Module;
use ::burn::store::{BurnToPyTorchAdapter, ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore};
use ::burn::tensor::Device;
use cairn_proto::metrics::{Metric, Totals};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::path::Path;

/// Examples per forward pass during evaluation.
const EVAL_BATCH: usize = 1024;

/// A user's model and training with this site's data: what joins a federation.
pub struct Site<M: Model, T: Training<M> = DefaultTraining> {
    model: M,
    training: T,
    device: Device,
    /// The data as loaded.
    data: LocalData,
    /// The data standardised by the job's statistics, when the job gives some.
    prepared: Option<LocalData>,
    metrics: Vec<Metric>,
}

impl<M: Model, T: Training<M>> std::fmt::Debug for Site<M, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Site")
            .field("n_parameters", &self.model.num_params())
            .field("train_examples", &self.data.train.len())
            .field("test_examples", &self.data.test.len())
            .finish()
    }
}

impl<M: Model> Site<M, DefaultTraining> {
    /// `model` (built on a device from [`super::Backend::device`]) with this site's `data`,
    /// trained by the default loop.
    pub fn new(model: M, data: LocalData) -> Site<M, DefaultTraining> {
        let device = model
            .devices()
            .into_iter()
            .next()
            .unwrap_or_else(Device::flex)
            .autodiff();
        Site {
            model,
            training: DefaultTraining,
            device,
            prepared: None,
            data,
            metrics: vec![Metric::Loss],
        }
    }
}

impl<M: Model, T: Training<M>> Site<M, T> {
    /// The same site, trained by `training` instead.
    pub fn with_training<U: Training<M>>(self, training: U) -> Site<M, U> {
        Site {
            model: self.model,
            training,
            device: self.device,
            data: self.data,
            prepared: self.prepared,
            metrics: self.metrics,
        }
    }

    /// The model as it is now (after the last round's training or evaluation).
    pub fn model(&self) -> &M {
        &self.model
    }

    /// Names and shapes of the model's tensors in the wire layout, sorted by name.
    pub fn layout(&self) -> Vec<TensorShape> {
        layout_of(&self.model)
    }

    /// The data as the job wants it.
    fn examples(&self) -> &LocalData {
        self.prepared.as_ref().unwrap_or(&self.data)
    }

    fn check_outputs(&self, outputs: usize, examples: &Examples) -> Result<(), Error> {
        let expected = examples.targets.n_classes().unwrap_or(1);
        if outputs != expected {
            return Err(Error::Model(match examples.targets.n_classes() {
                Some(n) => format!(
                    "the model gives {outputs} outputs per example, the data has {n} classes; expected one logit per class"
                ),
                None => {
                    format!("the model gives {outputs} outputs per example; a regression expects 1")
                }
            }));
        }
        Ok(())
    }
}

/// The tensors of `model` in PyTorch's names and layout, sorted by name (the wire order).
fn layout_of<M: Module>(model: &M) -> Vec<TensorShape> {
    let mut layout: Vec<TensorShape> = model
        .collect(None, Some(Box::new(BurnToPyTorchAdapter)), true)
        .into_iter()
        .map(|tensor| TensorShape {
            name: tensor.name.clone(),
            shape: tensor.shape.to_vec(),
        })
        .collect();
    layout.sort_by(|a, b| a.name.cmp(&b.name));
    layout
}

/// The store that writes `model`'s tensors as PyTorch names them.
fn pytorch_store(store: SafetensorsStore) -> SafetensorsStore {
    store
        .with_to_adapter(BurnToPyTorchAdapter)
        .with_from_adapter(PyTorchToBurnAdapter)
        .skip_enum_variants(true)
}

/// Loads safetensors into `model`, requiring every tensor of the model and no other.
fn apply<M: Module>(model: &mut M, store: SafetensorsStore, what: &str) -> Result<(), Error> {
    let mut store = pytorch_store(store);
    let result = model
        .load_from(&mut store)
        .map_err(|e| Error::Model(format!("{what}: {e}")))?;
    let mut problems: Vec<String> = result.errors.iter().map(|e| e.to_string()).collect();
    problems.extend(
        result
            .missing
            .iter()
            .map(|(name, _)| format!("{name} is missing")),
    );
    problems.extend(
        result
            .unused
            .iter()
            .map(|name| format!("{name} is not in the model")),
    );
    if !problems.is_empty() {
        return Err(Error::Model(format!("{what}: {}", problems.join("; "))));
    }
    Ok(())
}

/// Writes `model`'s parameters to a safetensors file, with PyTorch's names and layouts: a job's
/// initial model (`model: {initial: ...}`), or a checkpoint for PyTorch.
pub fn save_model<M: Module>(model: &M, path: &Path) -> Result<(), Error> {
    let mut store =
        pytorch_store(SafetensorsStore::from_file(path).overwrite(true)).metadata("format", "pt");
    model
        .save_into(&mut store)
        .map_err(|e| Error::Model(format!("writing {}: {e}", path.display())))
}

/// Loads a safetensors file (the coordinator's `global.safetensors`, or a PyTorch export) into
/// `model`, which must have exactly its tensors.
pub fn load_model<M: Module>(mut model: M, path: &Path) -> Result<M, Error> {
    apply(
        &mut model,
        SafetensorsStore::from_file(path),
        &format!("loading {}", path.display()),
    )?;
    Ok(model)
}

impl<M: Model, T: Training<M>> Task for Site<M, T> {
    fn prepare(&mut self, job: &JobTask) -> Result<(), Error> {
        let targets = &self.data.test.targets;
        for &metric in &job.metrics {
            let fits = match metric {
                Metric::Loss => true,
                Metric::Accuracy => targets.n_classes().is_some(),
                Metric::RocAuc => targets.n_classes() == Some(2),
                Metric::Mse | Metric::Mae => targets.n_classes().is_none(),
            };
            if !fits {
                return Err(Error::Model(format!(
                    "the job asks for metric {}, which does not apply to this site's data ({})",
                    metric.name(),
                    match targets.n_classes() {
                        Some(n) => format!("a classification into {n} classes"),
                        None => "a regression".into(),
                    }
                )));
            }
        }
        self.prepared = None;
        if !job.standardize.is_empty() {
            let mut prepared = self.data.clone();
            let source = Path::new("the local data");
            prepared.train.standardize(&job.standardize, source)?;
            prepared.test.standardize(&job.standardize, source)?;
            self.prepared = Some(prepared);
        }
        self.metrics = job.metrics.clone();
        Ok(())
    }

    fn check_layout(&self, layout: &[TensorShape]) -> Result<(), Error> {
        let diff = LayoutDiff::between(layout, &self.layout());
        if diff.is_empty() {
            Ok(())
        } else {
            Err(Error::Layout(diff))
        }
    }

    fn set_parameters(&mut self, layout: &[TensorShape], values: &[f32]) -> Result<(), Error> {
        self.check_layout(layout)?;
        let expected: usize = layout
            .iter()
            .map(|t| t.shape.iter().product::<usize>())
            .sum();
        if values.len() != expected {
            return Err(Error::Model(format!(
                "the global model has {} values, its layout {expected}",
                values.len()
            )));
        }
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut views = Vec::with_capacity(layout.len());
        let mut offset = 0;
        for tensor in layout {
            let end = offset + 4 * tensor.shape.iter().product::<usize>();
            let view = TensorView::new(Dtype::F32, tensor.shape.clone(), &bytes[offset..end])
                .map_err(|e| Error::Model(format!("tensor {}: {e}", tensor.name)))?;
            views.push((tensor.name.clone(), view));
            offset = end;
        }
        let encoded = safetensors::serialize(views, None)
            .map_err(|e| Error::Model(format!("encoding the global model: {e}")))?;
        apply(
            &mut self.model,
            SafetensorsStore::from_bytes(Some(encoded)),
            "loading the global model",
        )
    }

    fn parameters(&self, layout: &[TensorShape]) -> Result<Vec<f32>, Error> {
        let mut store = pytorch_store(SafetensorsStore::from_bytes(None));
        self.model
            .save_into(&mut store)
            .map_err(|e| Error::Model(format!("reading the model's parameters: {e}")))?;
        let bytes = store
            .get_bytes()
            .map_err(|e| Error::Model(format!("reading the model's parameters: {e}")))?;
        let file = SafeTensors::deserialize(&bytes)
            .map_err(|e| Error::Model(format!("reading the model's parameters: {e}")))?;
        let mut values = Vec::new();
        for tensor in layout {
            let view = file
                .tensor(&tensor.name)
                .map_err(|_| Error::Model(format!("the model has no tensor {}", tensor.name)))?;
            if view.dtype() != Dtype::F32 {
                return Err(Error::Model(format!(
                    "tensor {} is {:?}; only F32 parameters can be federated",
                    tensor.name,
                    view.dtype()
                )));
            }
            values.extend(
                view.data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            );
        }
        Ok(values)
    }

    fn train(
        &mut self,
        config: &TrainingConfig,
        progress: &mut dyn FnMut(EpochProgress),
    ) -> Result<TrainingOutcome, Error> {
        // The fields, not `examples()`, so that the borrow is disjoint from `self.training`.
        let examples = &self.prepared.as_ref().unwrap_or(&self.data).train;
        if !examples.is_empty() {
            // One example through the model first, so that a model whose outputs do not fit
            // the data is refused with a message rather than a shape panic inside the loss.
            let probe = Batch::new(examples, &[0], &self.device.clone().inner());
            let outputs = self.model.valid().forward(probe.features).dims()[1];
            self.check_outputs(outputs, examples)?;
        }
        // A module clone shares its tensors, so this copies no parameter data.
        let (model, outcome) =
            self.training
                .train(self.model.clone(), examples, config, &self.device, progress)?;
        self.model = model;
        Ok(outcome)
    }

    fn evaluate(&self) -> Result<Totals, Error> {
        let examples = &self.examples().test;
        let device = self.device.clone().inner();
        let model = self.model.valid();
        let mut totals = Totals::new(&self.metrics);
        totals.n_examples = examples.len() as u64;
        let indices: Vec<usize> = (0..examples.len()).collect();
        for chunk in indices.chunks(EVAL_BATCH) {
            let batch = Batch::new(examples, chunk, &device);
            let outputs = model.forward(batch.features);
            let [_, width] = outputs.dims();
            self.check_outputs(width, examples)?;
            let outputs = outputs
                .into_data()
                .try_into_vec_as::<f32>()
                .map_err(|e| Error::Model(format!("reading the model's outputs: {e:?}")))?;
            for (row, &index) in outputs.chunks_exact(width).zip(chunk) {
                add_example(&mut totals, row, &examples.targets, index);
            }
        }
        Ok(totals)
    }
}

/// Adds one example's outputs to the sums of every metric in `totals`.
fn add_example(totals: &mut Totals, outputs: &[f32], targets: &Targets, index: usize) {
    let mut add = |metric, position: usize, value: f64| {
        if let Some(sums) = totals.sums_mut(metric) {
            sums[position] += value;
        }
    };
    match targets {
        Targets::Classes { labels, .. } => {
            let label = labels[index] as usize;
            // Cross-entropy from the logits, in f64 and shifted by the largest for stability.
            let largest = outputs.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let log_sum: f64 = outputs
                .iter()
                .map(|&o| (o as f64 - largest).exp())
                .sum::<f64>()
                .ln()
                + largest;
            add(Metric::Loss, 0, log_sum - outputs[label] as f64);
            let predicted = outputs
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map_or(0, |(class, _)| class);
            add(Metric::Accuracy, 0, f64::from(u8::from(predicted == label)));
            if outputs.len() == 2 {
                let positive = (outputs[1] as f64 - log_sum).exp() as f32;
                let offset = if label == 1 {
                    0
                } else {
                    cairn_proto::metrics::AUC_BINS
                };
                add(Metric::RocAuc, offset + Metric::auc_bin(positive), 1.0);
            }
        }
        Targets::Values(values) => {
            let error = f64::from(outputs[0] - values[index]);
            add(Metric::Loss, 0, error * error);
            add(Metric::Mse, 0, error * error);
            add(Metric::Mae, 0, error.abs());
        }
    }
}
