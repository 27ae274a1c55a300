//! The burn implementation of [`Task`]: McMahan et al. 2017's "2NN" MLP and CNN, trained with
//! plain SGD (stateless, so a fresh optimizer each round loses nothing), on burn's pure-Rust
//! `flex` CPU backend by default or a GPU through `wgpu`/`cuda` when compiled in.
//!
//! Parameters cross the wire in PyTorch's layout so that checkpoints load in PyTorch too; burn
//! keeps a linear layer's weight as `[in, out]`, so those are transposed on the way in and out.

use super::{EpochProgress, Evaluation, Task, TensorShape, TrainingConfig, TrainingOutcome};
use crate::Error;
use crate::data::{Dataset, LocalData};
use ::burn::module::{Module, Param};
use ::burn::nn::conv::{Conv2d, Conv2dConfig};
use ::burn::nn::loss::CrossEntropyLossConfig;
use ::burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use ::burn::nn::{Linear, LinearConfig, PaddingConfig2d, Relu};
use ::burn::optim::{GradientsParams, SgdConfig};
use ::burn::tensor::{Device, Int, Tensor, TensorData};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha20Rng;
use std::time::Instant;

/// Number of classes (digits).
const N_CLASSES: usize = 10;
/// Examples per forward pass during evaluation.
const EVAL_BATCH: usize = 1024;

/// Where training runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// burn's pure-Rust CPU backend (`flex`).
    #[default]
    Cpu,
    /// The first GPU, through wgpu (Vulkan, Metal or DX12); needs the `wgpu` feature.
    Wgpu,
    /// The first CUDA GPU; needs the `cuda` feature.
    Cuda,
}

impl Backend {
    /// Parses a command-line name: `cpu`, `wgpu` or `cuda`.
    pub fn parse(text: &str) -> Result<Backend, Error> {
        match text {
            "cpu" => Ok(Backend::Cpu),
            "wgpu" => Ok(Backend::Wgpu),
            "cuda" => Ok(Backend::Cuda),
            _ => Err(Error::UnknownBackend { name: text.into() }),
        }
    }

    fn device(self) -> Result<Device, Error> {
        match self {
            Backend::Cpu => Ok(Device::flex()),
            #[cfg(feature = "wgpu")]
            Backend::Wgpu => Ok(Device::wgpu(::burn::tensor::DeviceKind::DefaultDevice)),
            #[cfg(feature = "cuda")]
            Backend::Cuda => Ok(Device::cuda(0)),
            #[allow(unreachable_patterns)] // Reached only when a GPU feature is not compiled in.
            other => Err(Error::Backend(format!(
                "backend {other:?} is not compiled into this binary; rebuild with `--features {}`",
                if other == Backend::Cuda {
                    "cuda"
                } else {
                    "wgpu"
                }
            ))),
        }
    }
}

/// The networks a job can name.
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)] // One network per task: its size on the stack is irrelevant.
enum Network {
    Mlp(Mlp),
    Cnn(Cnn),
}

/// McMahan et al. 2017's "2NN": two hidden layers of 200 units with ReLU.
#[derive(Module, Debug)]
struct Mlp {
    fc1: Linear,
    fc2: Linear,
    fc3: Linear,
    relu: Relu,
}

/// McMahan et al. 2017's CNN: two 5x5 convolutions (32 and 64 channels, "same" padding), each
/// followed by 2x2 max pooling, a 512-unit fully connected layer with ReLU, and the output layer.
#[derive(Module, Debug)]
struct Cnn {
    conv1: Conv2d,
    conv2: Conv2d,
    pool: MaxPool2d,
    fc1: Linear,
    fc2: Linear,
    relu: Relu,
}

impl Network {
    fn new(model: &str, rows: usize, cols: usize, device: &Device) -> Result<Network, Error> {
        match model {
            "mlp" => Ok(Network::Mlp(Mlp {
                fc1: LinearConfig::new(rows * cols, 200).init(device),
                fc2: LinearConfig::new(200, 200).init(device),
                fc3: LinearConfig::new(200, N_CLASSES).init(device),
                relu: Relu::new(),
            })),
            "cnn" => {
                if rows < 4 || cols < 4 {
                    return Err(Error::Model(format!(
                        "the cnn model needs images of at least 4x4 pixels, the data has {rows}x{cols}"
                    )));
                }
                let conv = |channels| {
                    Conv2dConfig::new(channels, [5, 5])
                        .with_padding(PaddingConfig2d::Explicit(2, 2, 2, 2))
                };
                Ok(Network::Cnn(Cnn {
                    conv1: conv([1, 32]).init(device),
                    conv2: conv([32, 64]).init(device),
                    pool: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
                    fc1: LinearConfig::new(64 * (rows / 4) * (cols / 4), 512).init(device),
                    fc2: LinearConfig::new(512, N_CLASSES).init(device),
                    relu: Relu::new(),
                }))
            }
            other => Err(Error::Model(format!(
                "model {other:?} is unknown; expected mlp or cnn"
            ))),
        }
    }

    /// Logits `[batch, 10]` for images `[batch, rows * cols]`.
    fn forward(&self, images: Tensor<2>, rows: usize, cols: usize) -> Tensor<2> {
        match self {
            Network::Mlp(m) => {
                let x = m.relu.forward(m.fc1.forward(images));
                let x = m.relu.forward(m.fc2.forward(x));
                m.fc3.forward(x)
            }
            Network::Cnn(m) => {
                let [batch, _] = images.dims();
                let x = images.reshape([batch, 1, rows, cols]);
                let x = m.pool.forward(m.relu.forward(m.conv1.forward(x)));
                let x = m.pool.forward(m.relu.forward(m.conv2.forward(x)));
                let [batch, channels, height, width] = x.dims();
                let x = x.reshape([batch, channels * height * width]);
                m.fc2.forward(m.relu.forward(m.fc1.forward(x)))
            }
        }
    }

    /// Every parameter, in wire order and layout, with its name.
    fn named_parameters(&self) -> Vec<(String, WireTensor)> {
        fn linear(out: &mut Vec<(String, WireTensor)>, name: &str, layer: &Linear) {
            out.push((
                format!("{name}.weight"),
                WireTensor::Linear(layer.weight.val()),
            ));
            if let Some(bias) = &layer.bias {
                out.push((format!("{name}.bias"), WireTensor::Vector(bias.val())));
            }
        }
        let mut out = Vec::new();
        match self {
            Network::Mlp(m) => {
                linear(&mut out, "fc1", &m.fc1);
                linear(&mut out, "fc2", &m.fc2);
                linear(&mut out, "fc3", &m.fc3);
            }
            Network::Cnn(m) => {
                for (name, conv) in [("conv1", &m.conv1), ("conv2", &m.conv2)] {
                    out.push((
                        format!("{name}.weight"),
                        WireTensor::Kernel(conv.weight.val()),
                    ));
                    if let Some(bias) = &conv.bias {
                        out.push((format!("{name}.bias"), WireTensor::Vector(bias.val())));
                    }
                }
                linear(&mut out, "fc1", &m.fc1);
                linear(&mut out, "fc2", &m.fc2);
            }
        }
        out
    }

    /// Replaces every parameter with the next values of `values`, in wire order.
    fn load(self, values: &[f32]) -> Network {
        let mut cursor = Values { values, offset: 0 };
        let linear = |layer: Linear, cursor: &mut Values| Linear {
            weight: cursor.linear(layer.weight),
            bias: layer.bias.map(|b| cursor.vector(b)),
        };
        match self {
            Network::Mlp(m) => Network::Mlp(Mlp {
                fc1: linear(m.fc1, &mut cursor),
                fc2: linear(m.fc2, &mut cursor),
                fc3: linear(m.fc3, &mut cursor),
                relu: m.relu,
            }),
            Network::Cnn(m) => {
                let conv = |layer: Conv2d, cursor: &mut Values| Conv2d {
                    weight: cursor.kernel(layer.weight),
                    bias: layer.bias.map(|b| cursor.vector(b)),
                    ..layer
                };
                Network::Cnn(Cnn {
                    conv1: conv(m.conv1, &mut cursor),
                    conv2: conv(m.conv2, &mut cursor),
                    pool: m.pool,
                    fc1: linear(m.fc1, &mut cursor),
                    fc2: linear(m.fc2, &mut cursor),
                    relu: m.relu,
                })
            }
        }
    }
}

/// A parameter tensor and how it maps to the wire layout.
enum WireTensor {
    /// A linear weight, `[in, out]` in burn, `[out, in]` on the wire.
    Linear(Tensor<2>),
    /// A convolution kernel, the same in both layouts.
    Kernel(Tensor<4>),
    /// A bias.
    Vector(Tensor<1>),
}

impl WireTensor {
    fn shape(&self) -> Vec<usize> {
        match self {
            WireTensor::Linear(t) => t.dims().iter().rev().copied().collect(),
            WireTensor::Kernel(t) => t.dims().to_vec(),
            WireTensor::Vector(t) => t.dims().to_vec(),
        }
    }

    fn values(self) -> Vec<f32> {
        let data = match self {
            WireTensor::Linear(t) => t.transpose().into_data(),
            WireTensor::Kernel(t) => t.into_data(),
            WireTensor::Vector(t) => t.into_data(),
        };
        // Invariant: parameters are created as f32 by this module, so the conversion cannot fail.
        data.try_into_vec_as::<f32>().expect("parameters are f32")
    }
}

/// Reads consecutive parameter values out of a flat vector into tensors of the right shape. New
/// tensors keep the gradient tracking of the ones they replace, or training could not follow.
struct Values<'a> {
    values: &'a [f32],
    offset: usize,
}

impl Values<'_> {
    fn take(&mut self, n: usize) -> Vec<f32> {
        let taken = self.values[self.offset..self.offset + n].to_vec();
        self.offset += n;
        taken
    }

    fn linear(&mut self, param: Param<Tensor<2>>) -> Param<Tensor<2>> {
        param.map(|t| {
            let [d_in, d_out] = t.dims();
            let wire = TensorData::new(self.take(d_in * d_out), [d_out, d_in]);
            let tracked = t.is_require_grad();
            Tensor::<2>::from_data(wire, &t.device())
                .transpose()
                .set_require_grad(tracked)
        })
    }

    fn kernel(&mut self, param: Param<Tensor<4>>) -> Param<Tensor<4>> {
        param.map(|t| {
            let dims = t.dims();
            let tracked = t.is_require_grad();
            Tensor::from_data(
                TensorData::new(self.take(dims.iter().product()), dims),
                &t.device(),
            )
            .set_require_grad(tracked)
        })
    }

    fn vector(&mut self, param: Param<Tensor<1>>) -> Param<Tensor<1>> {
        param.map(|t| {
            let dims = t.dims();
            let tracked = t.is_require_grad();
            Tensor::from_data(TensorData::new(self.take(dims[0]), dims), &t.device())
                .set_require_grad(tracked)
        })
    }
}

/// A burn network together with this participant's local data.
pub struct BurnTask {
    network: Network,
    device: Device,
    data: LocalData,
    n_parameters: usize,
}

impl std::fmt::Debug for BurnTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BurnTask")
            .field("n_parameters", &self.n_parameters)
            .field("train_examples", &self.data.train.len())
            .field("test_examples", &self.data.test.len())
            .finish()
    }
}

impl BurnTask {
    /// Builds `model` (`mlp` or `cnn`) for the images in `data`, on `backend`.
    pub fn new(model: &str, data: LocalData, backend: Backend) -> Result<BurnTask, Error> {
        let device = backend.device()?.autodiff();
        device.seed(0);
        let network = Network::new(model, data.train.rows, data.train.cols, &device)?;
        let n_parameters = network.num_params();
        Ok(BurnTask {
            network,
            device,
            data,
            n_parameters,
        })
    }

    fn batch(
        &self,
        dataset: &Dataset,
        indices: &[usize],
        device: &Device,
    ) -> (Tensor<2>, Tensor<1, Int>) {
        let size = dataset.rows * dataset.cols;
        let pixels: Vec<f32> = indices
            .iter()
            .flat_map(|&i| dataset.image(i).iter().copied())
            .collect();
        let labels: Vec<i64> = indices
            .iter()
            .map(|&i| i64::from(dataset.labels[i]))
            .collect();
        (
            Tensor::from_data(TensorData::new(pixels, [indices.len(), size]), device),
            Tensor::from_data(TensorData::new(labels, [indices.len()]), device),
        )
    }
}

impl Task for BurnTask {
    fn layout(&self) -> Vec<TensorShape> {
        self.network
            .named_parameters()
            .into_iter()
            .map(|(name, tensor)| TensorShape {
                name,
                shape: tensor.shape(),
            })
            .collect()
    }

    fn parameters(&self) -> Vec<f32> {
        let mut values = Vec::with_capacity(self.n_parameters);
        for (_, tensor) in self.network.named_parameters() {
            values.extend(tensor.values());
        }
        values
    }

    fn set_parameters(&mut self, values: &[f32]) -> Result<(), Error> {
        if values.len() != self.n_parameters {
            return Err(Error::Model(format!(
                "model has {} values, this participant's network expects {}",
                values.len(),
                self.n_parameters
            )));
        }
        // A module clone shares its tensors, so this copies no parameter data.
        self.network = self.network.clone().load(values);
        Ok(())
    }

    fn train(
        &mut self,
        config: &TrainingConfig,
        progress: &mut dyn FnMut(EpochProgress),
    ) -> Result<TrainingOutcome, Error> {
        let dataset = &self.data.train;
        let batch_size = config.batch_size as usize;
        if batch_size == 0 {
            return Err(Error::Model("batch size 0; expected at least 1".into()));
        }
        let (rows, cols) = (dataset.rows, dataset.cols);
        let loss_fn = CrossEntropyLossConfig::new().init(&self.device);
        let mut optimizer = SgdConfig::new().init();
        let mut rng = ChaCha20Rng::seed_from_u64(config.seed);
        let mut order: Vec<usize> = (0..dataset.len()).collect();
        let mut network = self.network.clone();
        let mut mean_loss = f64::NAN;
        for epoch in 1..=config.local_epochs {
            let started = Instant::now();
            order.shuffle(&mut rng);
            let mut loss_sum = Tensor::<1>::zeros([1], &self.device.clone().inner());
            for batch in order.chunks(batch_size) {
                let (images, labels) = self.batch(dataset, batch, &self.device);
                let logits = network.forward(images, rows, cols);
                let loss = loss_fn.forward(logits, labels);
                // Sum detached losses on the inner device; reading one scalar per epoch avoids a
                // device synchronisation per step.
                loss_sum = loss_sum + loss.clone().inner().mul_scalar(batch.len() as f64);
                let grads = GradientsParams::from_grads(loss.backward(), &network);
                network = optimizer.step(config.learning_rate, network, grads);
            }
            mean_loss = f64::from(loss_sum.into_scalar::<f32>()) / dataset.len() as f64;
            let seconds = started.elapsed().as_secs_f64().max(1e-9);
            progress(EpochProgress {
                epoch,
                epochs: config.local_epochs,
                mean_loss,
                examples_per_second: dataset.len() as f64 / seconds,
            });
        }
        self.network = network;
        if !mean_loss.is_finite() && config.local_epochs > 0 {
            return Err(Error::Model(format!(
                "training diverged (mean loss {mean_loss}); lower the learning rate ({})",
                config.learning_rate
            )));
        }
        Ok(TrainingOutcome {
            n_examples: dataset.len() as u64,
            mean_loss,
        })
    }

    fn evaluate(&self) -> Result<Evaluation, Error> {
        let dataset = &self.data.test;
        let device = self.device.clone().inner();
        let network = self.network.valid();
        let loss_fn = CrossEntropyLossConfig::new().init(&device);
        let indices: Vec<usize> = (0..dataset.len()).collect();
        let (mut loss_sum, mut correct) = (0.0f64, 0u64);
        for batch in indices.chunks(EVAL_BATCH) {
            let (images, labels) = self.batch(dataset, batch, &device);
            let logits = network.forward(images, dataset.rows, dataset.cols);
            let loss = loss_fn.forward(logits.clone(), labels.clone());
            loss_sum += f64::from(loss.into_scalar::<f32>()) * batch.len() as f64;
            let hits = logits
                .argmax(1)
                .squeeze_dim::<1>(1)
                .equal(labels)
                .int()
                .sum();
            correct += hits.into_scalar::<i64>() as u64;
        }
        let n = dataset.len().max(1) as f64;
        Ok(Evaluation {
            n_examples: dataset.len() as u64,
            loss: loss_sum / n,
            accuracy: correct as f64 / n,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Dataset;

    /// A tiny separable problem: label = which quarter of the image is bright.
    fn toy_data(n: usize) -> LocalData {
        let (rows, cols) = (8, 8);
        let mut pixels = Vec::new();
        let mut labels = Vec::new();
        for i in 0..n {
            let label = (i % 4) as u8;
            for r in 0..rows {
                for c in 0..cols {
                    let quarter = (r / 4) * 2 + c / 4;
                    pixels.push(if quarter == label as usize {
                        1.0
                    } else {
                        0.1 * ((i * 7 + r + c) % 3) as f32
                    });
                }
            }
            labels.push(label);
        }
        let set = Dataset {
            rows,
            cols,
            pixels,
            labels,
        };
        LocalData {
            train: set.clone(),
            test: set,
        }
    }

    #[test]
    fn layouts_follow_pytorch_conventions() {
        let task = BurnTask::new("mlp", toy_data(8), Backend::Cpu).unwrap();
        let layout = task.layout();
        assert_eq!(
            layout[0],
            TensorShape {
                name: "fc1.weight".into(),
                shape: vec![200, 64]
            }
        );
        assert_eq!(
            layout[5],
            TensorShape {
                name: "fc3.bias".into(),
                shape: vec![10]
            }
        );
        let n: usize = layout
            .iter()
            .map(|t| t.shape.iter().product::<usize>())
            .sum();
        assert_eq!(n, 64 * 200 + 200 + 200 * 200 + 200 + 200 * 10 + 10);
        let cnn = BurnTask::new("cnn", toy_data(8), Backend::Cpu).unwrap();
        let shapes: Vec<Vec<usize>> = cnn.layout().into_iter().map(|t| t.shape).collect();
        assert_eq!(shapes[0], vec![32, 1, 5, 5]);
        assert_eq!(shapes[4], vec![512, 64 * 2 * 2]);
    }

    #[test]
    fn parameters_round_trip_through_the_wire_layout() {
        for model in ["mlp", "cnn"] {
            let mut task = BurnTask::new(model, toy_data(8), Backend::Cpu).unwrap();
            let values: Vec<f32> = (0..task.parameters().len())
                .map(|i| (i % 1000) as f32 * 1e-3)
                .collect();
            task.set_parameters(&values).unwrap();
            assert_eq!(task.parameters(), values, "{model}");
        }
        let mut task = BurnTask::new("mlp", toy_data(8), Backend::Cpu).unwrap();
        let err = task.set_parameters(&[0.0; 7850]).unwrap_err().to_string();
        assert!(err.contains("7850 values"), "{err}");
    }

    #[test]
    fn training_lowers_the_loss_and_raises_accuracy() {
        let mut task = BurnTask::new("mlp", toy_data(256), Backend::Cpu).unwrap();
        // As in a round: the global model is loaded first, then trained.
        let global = task.parameters();
        task.set_parameters(&global).unwrap();
        let before = task.evaluate().unwrap();
        let config = TrainingConfig {
            local_epochs: 5,
            batch_size: 16,
            learning_rate: 0.1,
            seed: 1,
        };
        let mut epochs = Vec::new();
        let outcome = task.train(&config, &mut |p| epochs.push(p)).unwrap();
        let after = task.evaluate().unwrap();
        assert_eq!(epochs.len(), 5);
        assert_eq!(outcome.n_examples, 256);
        assert!(after.loss < before.loss, "{before:?} -> {after:?}");
        assert!(after.accuracy > 0.9, "{after:?}");
        assert_ne!(task.parameters(), global);
    }

    #[test]
    fn the_cnn_trains_after_loading_parameters() {
        let mut task = BurnTask::new("cnn", toy_data(64), Backend::Cpu).unwrap();
        let global = task.parameters();
        task.set_parameters(&global).unwrap();
        let config = TrainingConfig {
            local_epochs: 1,
            batch_size: 16,
            learning_rate: 0.05,
            seed: 1,
        };
        let outcome = task.train(&config, &mut |_| {}).unwrap();
        assert!(outcome.mean_loss.is_finite());
        assert_ne!(task.parameters(), global);
    }

    #[test]
    fn unknown_models_and_backends_are_refused() {
        let err = BurnTask::new("resnet", toy_data(4), Backend::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected mlp or cnn"), "{err}");
        assert!(
            Backend::parse("tpu")
                .unwrap_err()
                .to_string()
                .contains("cpu, wgpu or cuda")
        );
    }
}
