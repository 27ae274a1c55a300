//! The built-in networks, written as any user would write a [`Model`]: McMahan et al. 2017's
//! "2NN" MLP and CNN, for images of any size and any number of classes. `cairn-participant
//! init-model` turns one into a job's initial model file; `join --model` trains one.

use super::{Backend, Model, Site, Task, save_model};
use crate::Error;
use crate::data::LocalData;
use ::burn::module::Module;
use ::burn::nn::conv::{Conv2d, Conv2dConfig};
use ::burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use ::burn::nn::{Linear, LinearConfig, PaddingConfig2d, Relu};
use ::burn::tensor::{Device, Tensor};
use std::path::Path;

/// McMahan et al. 2017's "2NN": two hidden layers of 200 units with ReLU.
#[derive(Module, Debug)]
pub struct Mlp {
    fc1: Linear,
    fc2: Linear,
    fc3: Linear,
    relu: Relu,
}

impl Mlp {
    /// For examples of `n_inputs` values and `n_classes` classes, on `device`.
    pub fn new(n_inputs: usize, n_classes: usize, device: &Device) -> Mlp {
        Mlp {
            fc1: LinearConfig::new(n_inputs, 200).init(device),
            fc2: LinearConfig::new(200, 200).init(device),
            fc3: LinearConfig::new(200, n_classes).init(device),
            relu: Relu::new(),
        }
    }
}

impl Model for Mlp {
    fn forward(&self, features: Tensor<2>) -> Tensor<2> {
        let x = self.relu.forward(self.fc1.forward(features));
        let x = self.relu.forward(self.fc2.forward(x));
        self.fc3.forward(x)
    }
}

/// McMahan et al. 2017's CNN: two 5x5 convolutions (32 and 64 channels, "same" padding), each
/// followed by 2x2 max pooling, a 512-unit fully connected layer with ReLU, and the output layer.
#[derive(Module, Debug)]
pub struct Cnn {
    conv1: Conv2d,
    conv2: Conv2d,
    pool: MaxPool2d,
    fc1: Linear,
    fc2: Linear,
    relu: Relu,
    /// The input images' `[channels, rows, cols]`.
    image: [usize; 3],
}

impl Cnn {
    /// For images of `[channels, rows, cols]` (at least 4x4) and `n_classes` classes.
    pub fn new(image: [usize; 3], n_classes: usize, device: &Device) -> Result<Cnn, Error> {
        let [channels, rows, cols] = image;
        if rows < 4 || cols < 4 {
            return Err(Error::Model(format!(
                "the cnn model needs images of at least 4x4 pixels, the data has {rows}x{cols}"
            )));
        }
        let conv = |channels| {
            Conv2dConfig::new(channels, [5, 5]).with_padding(PaddingConfig2d::Explicit(2, 2, 2, 2))
        };
        Ok(Cnn {
            conv1: conv([channels, 32]).init(device),
            conv2: conv([32, 64]).init(device),
            pool: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
            fc1: LinearConfig::new(64 * (rows / 4) * (cols / 4), 512).init(device),
            fc2: LinearConfig::new(512, n_classes).init(device),
            relu: Relu::new(),
            image,
        })
    }
}

impl Model for Cnn {
    fn forward(&self, features: Tensor<2>) -> Tensor<2> {
        let [batch, _] = features.dims();
        let [channels, rows, cols] = self.image;
        let x = features.reshape([batch, channels, rows, cols]);
        let x = self.pool.forward(self.relu.forward(self.conv1.forward(x)));
        let x = self.pool.forward(self.relu.forward(self.conv2.forward(x)));
        let [batch, channels, height, width] = x.dims();
        let x = x.reshape([batch, channels * height * width]);
        self.fc2.forward(self.relu.forward(self.fc1.forward(x)))
    }
}

/// A built-in network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// [`Mlp`].
    Mlp,
    /// [`Cnn`].
    Cnn,
}

impl Preset {
    /// Parses a command-line name: `mlp` or `cnn`.
    pub fn parse(name: &str) -> Result<Preset, Error> {
        match name {
            "mlp" => Ok(Preset::Mlp),
            "cnn" => Ok(Preset::Cnn),
            other => Err(Error::Model(format!(
                "model {other:?} is unknown; expected mlp or cnn"
            ))),
        }
    }

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Preset::Mlp => "mlp",
            Preset::Cnn => "cnn",
        }
    }

    /// This network for images of `[channels, rows, cols]` and `n_classes` classes, trained on
    /// `data` on `backend`. The initial values do not matter: every round starts from the
    /// global model.
    pub fn site(self, data: LocalData, backend: Backend) -> Result<Box<dyn Task>, Error> {
        let device = backend.device()?;
        let image = image_of(&data)?;
        let n_classes = data.train.targets.n_classes().ok_or_else(|| {
            Error::Model(format!(
                "the {} model classifies; the data has real-valued targets",
                self.name()
            ))
        })?;
        Ok(match self {
            Preset::Mlp => Box::new(Site::new(
                Mlp::new(image.iter().product(), n_classes, &device),
                data,
            )),
            Preset::Cnn => Box::new(Site::new(Cnn::new(image, n_classes, &device)?, data)),
        })
    }

    /// Writes this network's initial parameters for images of `[channels, rows, cols]` and
    /// `n_classes` classes to a safetensors file, seeded: a job's `model.initial`.
    pub fn save_initial(
        self,
        image: [usize; 3],
        n_classes: usize,
        seed: u64,
        path: &Path,
    ) -> Result<(), Error> {
        let device = Backend::Cpu.device()?;
        device.seed(seed);
        match self {
            Preset::Mlp => save_model(&Mlp::new(image.iter().product(), n_classes, &device), path),
            Preset::Cnn => save_model(&Cnn::new(image, n_classes, &device)?, path),
        }
    }
}

/// The image shape of a dataset a job can name: `mnist` (28x28) or `digits` (8x8), one channel.
pub fn dataset_image(dataset: &str) -> Result<[usize; 3], Error> {
    match dataset {
        "mnist" => Ok([1, 28, 28]),
        "digits" => Ok([1, 8, 8]),
        other => Err(Error::Model(format!(
            "dataset {other:?} is unknown; expected mnist or digits"
        ))),
    }
}

/// The `[channels, rows, cols]` of image examples.
fn image_of(data: &LocalData) -> Result<[usize; 3], Error> {
    match data.train.feature_shape.as_slice() {
        &[channels, rows, cols] => Ok([channels, rows, cols]),
        other => Err(Error::Model(format!(
            "the built-in networks take images of [channels, rows, cols]; the data's examples are {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Examples, Targets};
    use crate::task::{JobTask, TensorShape, TrainingConfig};
    use cairn_proto::metrics::Metric;

    /// A tiny separable problem: label = which quarter of the 8x8 image is bright.
    fn toy_data(n: usize) -> LocalData {
        let (rows, cols) = (8, 8);
        let mut features = Vec::new();
        let mut labels = Vec::new();
        for i in 0..n {
            let label = (i % 4) as u32;
            for r in 0..rows {
                for c in 0..cols {
                    let quarter = (r / 4) * 2 + c / 4;
                    features.push(if quarter == label as usize {
                        1.0
                    } else {
                        0.1 * ((i * 7 + r + c) % 3) as f32
                    });
                }
            }
            labels.push(label);
        }
        let set = Examples {
            feature_shape: vec![1, rows, cols],
            feature_names: Vec::new(),
            features,
            targets: Targets::Classes {
                labels,
                classes: (0..4).map(|c| c.to_string()).collect(),
            },
        };
        LocalData {
            train: set.clone(),
            test: set,
        }
    }

    fn config(epochs: u32, learning_rate: f64) -> TrainingConfig {
        TrainingConfig {
            round: 1,
            local_epochs: epochs,
            batch_size: 16,
            learning_rate,
            seed: 1,
            proximal_mu: 0.0,
        }
    }

    fn mlp_layout() -> Vec<TensorShape> {
        [
            ("fc1.bias", vec![200]),
            ("fc1.weight", vec![200, 64]),
            ("fc2.bias", vec![200]),
            ("fc2.weight", vec![200, 200]),
            ("fc3.bias", vec![4]),
            ("fc3.weight", vec![4, 200]),
        ]
        .map(|(name, shape)| TensorShape {
            name: name.into(),
            shape,
        })
        .to_vec()
    }

    #[test]
    fn layouts_follow_pytorch_conventions_in_name_order() {
        let task = Preset::Mlp.site(toy_data(8), Backend::Cpu).unwrap();
        let ours = mlp_layout();
        task.check_layout(&ours).unwrap();
        let mut wrong = ours.to_vec();
        wrong[1].shape = vec![200, 784];
        wrong.pop();
        let err = task.check_layout(&wrong).unwrap_err().to_string();
        assert!(
            err.contains("fc1.weight is [200, 784] in the job's model, [200, 64]"),
            "{err}"
        );
        assert!(err.contains("fc3.weight [4, 200] is missing"), "{err}");
    }

    #[test]
    fn the_initial_model_file_has_pytorch_names_and_shapes() {
        // That a seed fixes the file is checked through the binary, one process per file
        // (tests/models.rs): burn's generator is shared by the threads of this test binary.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("init.safetensors");
        Preset::Cnn.save_initial([1, 8, 8], 4, 1, &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut names = file.names();
        names.sort();
        assert_eq!(
            names,
            [
                "conv1.bias",
                "conv1.weight",
                "conv2.bias",
                "conv2.weight",
                "fc1.bias",
                "fc1.weight",
                "fc2.bias",
                "fc2.weight"
            ]
        );
        assert_eq!(
            file.tensor("fc1.weight").unwrap().shape(),
            &[512, 64 * 2 * 2]
        );
        assert_eq!(file.tensor("conv1.weight").unwrap().shape(), &[32, 1, 5, 5]);
    }

    #[test]
    fn parameters_round_trip_through_the_wire_layout() {
        for preset in [Preset::Mlp, Preset::Cnn] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("init.safetensors");
            preset.save_initial([1, 8, 8], 4, 3, &path).unwrap();
            let bytes = std::fs::read(&path).unwrap();
            let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            let mut layout: Vec<TensorShape> = file
                .tensors()
                .into_iter()
                .map(|(name, view)| TensorShape {
                    name,
                    shape: view.shape().to_vec(),
                })
                .collect();
            layout.sort_by(|a, b| a.name.cmp(&b.name));
            let n: usize = layout
                .iter()
                .map(|t| t.shape.iter().product::<usize>())
                .sum();
            let values: Vec<f32> = (0..n).map(|i| (i % 1000) as f32 * 1e-3).collect();
            let mut task = preset.site(toy_data(8), Backend::Cpu).unwrap();
            task.set_parameters(&layout, &values).unwrap();
            assert_eq!(task.parameters(&layout).unwrap(), values, "{preset:?}");
            let err = task
                .set_parameters(&layout, &values[1..])
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("{} values", n - 1)), "{err}");
        }
    }

    #[test]
    fn training_lowers_the_loss_and_raises_accuracy() {
        let mut task = Preset::Mlp.site(toy_data(256), Backend::Cpu).unwrap();
        task.prepare(&JobTask {
            metrics: vec![Metric::Loss, Metric::Accuracy],
            standardize: Vec::new(),
        })
        .unwrap();
        let before = task.evaluate().unwrap().finish();
        let mut epochs = Vec::new();
        let outcome = task
            .train(&config(5, 0.1), &mut |p| epochs.push(p))
            .unwrap();
        let after = task.evaluate().unwrap().finish();
        assert_eq!(epochs.len(), 5);
        assert_eq!(outcome.n_examples, 256);
        let (loss_before, loss_after) = (before[0].1.unwrap(), after[0].1.unwrap());
        assert!(loss_after < loss_before, "{before:?} -> {after:?}");
        assert!(after[1].1.unwrap() > 0.9, "{after:?}");
    }

    #[test]
    fn the_proximal_term_keeps_the_local_model_near_the_global_one() {
        // The same start, data and seed; only mu differs. The distance the local model moves
        // from the global one shrinks as mu grows, and a huge mu leaves it nearly in place.
        let layout = mlp_layout();
        let distance = |mu: f64| {
            let mut task = Preset::Mlp.site(toy_data(128), Backend::Cpu).unwrap();
            let global = task.parameters(&layout).unwrap();
            let training = TrainingConfig {
                proximal_mu: mu,
                ..config(3, 0.1)
            };
            task.train(&training, &mut |_| {}).unwrap();
            let local = task.parameters(&layout).unwrap();
            local
                .iter()
                .zip(&global)
                .map(|(l, g)| f64::from(l - g).powi(2))
                .sum::<f64>()
                .sqrt()
        };
        let (free, held, pinned) = (distance(0.0), distance(1.0), distance(1e6));
        assert!(
            free > 0.1 && held < 0.9 * free && pinned < 1e-3 * free,
            "distances from the global model: mu 0 {free}, mu 1 {held}, mu 1e6 {pinned}"
        );
    }

    #[test]
    fn the_cnn_trains() {
        let mut task = Preset::Cnn.site(toy_data(64), Backend::Cpu).unwrap();
        let outcome = task.train(&config(1, 0.05), &mut |_| {}).unwrap();
        assert!(outcome.mean_loss.is_finite());
    }

    #[test]
    fn metrics_that_do_not_fit_the_data_are_refused() {
        let mut task = Preset::Mlp.site(toy_data(8), Backend::Cpu).unwrap();
        for metric in [Metric::RocAuc, Metric::Mse] {
            let err = task
                .prepare(&JobTask {
                    metrics: vec![metric],
                    standardize: Vec::new(),
                })
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(metric.name()) && err.contains("4 classes"),
                "{err}"
            );
        }
    }

    #[test]
    fn unknown_models_datasets_and_backends_are_refused() {
        let err = Preset::parse("resnet").unwrap_err().to_string();
        assert!(err.contains("expected mlp or cnn"), "{err}");
        assert!(
            dataset_image("cifar")
                .unwrap_err()
                .to_string()
                .contains("mnist or digits")
        );
        assert!(
            Backend::parse("tpu")
                .unwrap_err()
                .to_string()
                .contains("cpu, tch, wgpu or cuda")
        );
        #[cfg(not(feature = "tch"))]
        {
            let err = Backend::Tch.device().unwrap_err().to_string();
            assert!(err.contains("rebuild with `--features tch`"), "{err}");
        }
        let err = crate::task::set_threads(0).unwrap_err().to_string();
        assert!(err.contains("expected at least 1"), "{err}");
    }
}
