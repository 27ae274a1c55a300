//! The global model as the coordinator sees it: a flat `f32` vector plus its layout (named
//! tensors in PyTorch's convention), its seeded initialisation, and safetensors files that
//! PyTorch and burn both read. The coordinator never links burn; the participant checks that its
//! burn network has exactly this layout before it trains.

use crate::Error;
use crate::config::{DatasetKind, ModelKind};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::HashMap;
use std::path::Path;

/// Number of output classes.
const N_CLASSES: usize = 10;

/// A named tensor's shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorShape {
    /// Dotted path, as in `fc1.weight`.
    pub name: String,
    /// Dimensions; a linear weight is `[out, in]`, a convolution kernel `[out, in, kh, kw]`.
    pub shape: Vec<usize>,
}

impl TensorShape {
    fn new(name: &str, shape: &[usize]) -> TensorShape {
        TensorShape {
            name: name.to_string(),
            shape: shape.to_vec(),
        }
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the tensor holds no value.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Total number of values of a layout.
pub fn n_values(layout: &[TensorShape]) -> usize {
    layout.iter().map(TensorShape::len).sum()
}

/// The tensors of `model` for images of `dataset`'s size, in wire order.
pub fn layout(model: ModelKind, dataset: DatasetKind) -> Vec<TensorShape> {
    let (rows, cols) = dataset.image_size();
    match model {
        ModelKind::Mlp => vec![
            TensorShape::new("fc1.weight", &[200, rows * cols]),
            TensorShape::new("fc1.bias", &[200]),
            TensorShape::new("fc2.weight", &[200, 200]),
            TensorShape::new("fc2.bias", &[200]),
            TensorShape::new("fc3.weight", &[N_CLASSES, 200]),
            TensorShape::new("fc3.bias", &[N_CLASSES]),
        ],
        ModelKind::Cnn => vec![
            TensorShape::new("conv1.weight", &[32, 1, 5, 5]),
            TensorShape::new("conv1.bias", &[32]),
            TensorShape::new("conv2.weight", &[64, 32, 5, 5]),
            TensorShape::new("conv2.bias", &[64]),
            TensorShape::new("fc1.weight", &[512, 64 * (rows / 4) * (cols / 4)]),
            TensorShape::new("fc1.bias", &[512]),
            TensorShape::new("fc2.weight", &[N_CLASSES, 512]),
            TensorShape::new("fc2.bias", &[N_CLASSES]),
        ],
    }
}

/// Initial values for `layout`: every tensor uniform in `±1/sqrt(fan_in)` (PyTorch's and burn's
/// default for linear and convolution layers), where a bias takes the fan-in of the weight before
/// it. Deterministic in `seed`.
pub fn initialize(layout: &[TensorShape], seed: u64) -> Vec<f32> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut values = Vec::with_capacity(n_values(layout));
    let mut fan_in = 1usize;
    for tensor in layout {
        if tensor.shape.len() >= 2 {
            fan_in = tensor.shape[1..].iter().product();
        }
        let bound = 1.0 / (fan_in as f32).sqrt();
        values.extend((0..tensor.len()).map(|_| rng.random_range(-bound..bound)));
    }
    values
}

/// Writes `values` laid out as `layout` to a safetensors file, atomically: a temporary file in the
/// same directory, fsync, rename, fsync of the directory. A crash leaves the old file or the new
/// one, never a torn one.
pub fn save_safetensors(path: &Path, layout: &[TensorShape], values: &[f32]) -> Result<(), Error> {
    let bytes = encode_safetensors(layout, values)?;
    crate::store::write_atomically(path, &bytes)
}

/// Encodes `values` laid out as `layout` as safetensors bytes.
pub fn encode_safetensors(layout: &[TensorShape], values: &[f32]) -> Result<Vec<u8>, Error> {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut offset = 0;
    let mut views = Vec::with_capacity(layout.len());
    for tensor in layout {
        let end = offset + 4 * tensor.len();
        let view = TensorView::new(Dtype::F32, tensor.shape.clone(), &bytes[offset..end]).map_err(
            |source| Error::ModelEncoding {
                what: format!("tensor {}", tensor.name),
                source,
            },
        )?;
        views.push((tensor.name.clone(), view));
        offset = end;
    }
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(views, Some(metadata)).map_err(|source| Error::ModelEncoding {
        what: "the model".into(),
        source,
    })
}

/// Reads a safetensors file and checks that it holds exactly `layout` as f32.
pub fn load_safetensors(path: &Path, layout: &[TensorShape]) -> Result<Vec<f32>, Error> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        what: format!("reading model {}", path.display()),
        source,
    })?;
    let file = SafeTensors::deserialize(&bytes).map_err(|source| Error::NotSafetensors {
        path: path.to_path_buf(),
        source,
    })?;
    if file.len() != layout.len() {
        return Err(Error::TensorCount {
            path: path.to_path_buf(),
            found: file.len(),
            expected: layout.len(),
        });
    }
    let mut values = Vec::with_capacity(n_values(layout));
    for tensor in layout {
        let view = file
            .tensor(&tensor.name)
            .map_err(|_| Error::MissingTensor {
                path: path.to_path_buf(),
                tensor: tensor.name.clone(),
            })?;
        if view.dtype() != Dtype::F32 || view.shape() != tensor.shape.as_slice() {
            return Err(Error::TensorShape {
                path: path.to_path_buf(),
                tensor: tensor.name.clone(),
                dtype: view.dtype(),
                shape: view.shape().to_vec(),
                expected: tensor.shape.clone(),
            });
        }
        values.extend(
            view.data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        );
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_have_the_published_sizes() {
        // McMahan et al. 2017: the 2NN has 199,210 parameters on MNIST.
        assert_eq!(
            n_values(&layout(ModelKind::Mlp, DatasetKind::Mnist)),
            199_210
        );
        // Their CNN has 1,663,370 parameters on MNIST.
        assert_eq!(
            n_values(&layout(ModelKind::Cnn, DatasetKind::Mnist)),
            1_663_370
        );
        assert_eq!(
            layout(ModelKind::Mlp, DatasetKind::Digits)[0].shape,
            vec![200, 64]
        );
    }

    #[test]
    fn initialization_is_seeded_and_bounded() {
        let layout = layout(ModelKind::Mlp, DatasetKind::Digits);
        let a = initialize(&layout, 1);
        assert_eq!(a, initialize(&layout, 1));
        assert_ne!(a, initialize(&layout, 2));
        let bound = 1.0 / 64f32.sqrt();
        assert!(a[..200 * 64].iter().all(|v| v.abs() <= bound));
        assert!(a[..200 * 64].iter().any(|v| v.abs() > bound * 0.9));
    }

    #[test]
    fn safetensors_round_trip_and_mismatches_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        let mlp = layout(ModelKind::Mlp, DatasetKind::Digits);
        let values = initialize(&mlp, 3);
        save_safetensors(&path, &mlp, &values).unwrap();
        assert_eq!(load_safetensors(&path, &mlp).unwrap(), values);
        let err = load_safetensors(&path, &layout(ModelKind::Mlp, DatasetKind::Mnist)).unwrap_err();
        assert!(err.to_string().contains("fc1.weight"), "{err}");
        std::fs::write(&path, b"garbage").unwrap();
        assert!(
            load_safetensors(&path, &mlp)
                .unwrap_err()
                .to_string()
                .contains("not a safetensors file")
        );
    }
}
