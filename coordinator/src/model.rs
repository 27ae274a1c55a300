//! The global model as the coordinator sees it: a flat `f32` vector plus its layout (named
//! tensors), and safetensors files that PyTorch and burn both read. The coordinator knows
//! tensors, not networks: it never links burn, and the job's initial model file
//! ([`read_model`]) is the only source of the layout. The participant checks that its network
//! has exactly this layout before it trains.
//!
//! Invariant: a layout lists its tensors sorted by name (byte-wise, as Rust orders `str`). That
//! is the canonical wire order: the flat vector holds the tensors' values one after another in
//! this order, each row-major, on the wire, in checkpoints and in updates.

use crate::Error;
#[cfg(test)]
use safetensors::tensor::TensorView;
use safetensors::tensor::{Dtype, Metadata, SafeTensors, TensorInfo};
use std::collections::HashMap;
use std::path::Path;

/// A named tensor's shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorShape {
    /// Dotted path, as in `fc1.weight`.
    pub name: String,
    /// Dimensions; a linear weight is `[out, in]`, a convolution kernel `[out, in, kh, kw]`.
    pub shape: Vec<usize>,
}

impl TensorShape {
    /// A tensor called `name` of `shape`.
    pub fn new(name: &str, shape: &[usize]) -> TensorShape {
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

/// Reads any safetensors file of `f32` tensors: its layout (the tensors sorted by name, the
/// canonical wire order) and its values in that order. Refuses a missing or unreadable file, one
/// that is not safetensors, one without tensors and one with a tensor of another type.
pub fn read_model(path: &Path) -> Result<(Vec<TensorShape>, Vec<f32>), Error> {
    let bytes = read(path)?;
    let file = deserialize(path, &bytes)?;
    let mut tensors = file.tensors();
    if tensors.is_empty() {
        return Err(Error::EmptyModel {
            path: path.to_path_buf(),
        });
    }
    tensors.sort_by(|(a, _), (b, _)| a.cmp(b));
    let mut layout = Vec::with_capacity(tensors.len());
    let mut values = Vec::new();
    for (name, view) in &tensors {
        if view.dtype() != Dtype::F32 {
            return Err(Error::TensorDtype {
                path: path.to_path_buf(),
                tensor: name.clone(),
                dtype: view.dtype(),
            });
        }
        layout.push(TensorShape::new(name, view.shape()));
        values.extend(f32s(view.data()));
    }
    Ok((layout, values))
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Io {
        what: format!("reading model file {}", path.display()),
        source,
    })
}

fn deserialize<'a>(path: &Path, bytes: &'a [u8]) -> Result<SafeTensors<'a>, Error> {
    SafeTensors::deserialize(bytes).map_err(|source| Error::NotSafetensors {
        path: path.to_path_buf(),
        source,
    })
}

fn f32s(data: &[u8]) -> impl Iterator<Item = f32> + '_ {
    data.chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Writes `values` laid out as `layout` to a safetensors file, atomically (a temporary file in
/// the same directory, fsync, rename, fsync of the directory: a crash leaves the old file or the
/// new one, never a torn one), and returns the file's SHA-256. The values go to the file
/// straight from `values`, a mebibyte at a time, and are hashed on the way: a checkpoint of a
/// model of gigabytes costs no copy of it in memory.
pub fn save_safetensors(
    path: &Path,
    layout: &[TensorShape],
    values: &[f32],
) -> Result<ring::digest::Digest, Error> {
    let header = header(layout, values.len())?;
    crate::store::write_atomically_with(path, |file| {
        file.write_all(&header)?;
        values
            .chunks(1 << 18)
            .try_for_each(|piece| file.write_all(&little_endian(piece)))
    })
}

/// Encodes `values` laid out as `layout` as safetensors bytes, in memory; [`read_model`] of them
/// gives back `layout` and `values`. `layout` must be in the canonical order (sorted by name, no
/// name twice) and `values` must have its size.
pub fn encode_safetensors(layout: &[TensorShape], values: &[f32]) -> Result<Vec<u8>, Error> {
    let mut bytes = header(layout, values.len())?;
    bytes.extend_from_slice(&little_endian(values));
    Ok(bytes)
}

/// What comes before the values in a safetensors file of `layout`: the header's length (u64,
/// little-endian), then the header, safetensors' own JSON of the tensors' types, shapes and
/// offsets (and `format: pt`, as PyTorch writes it), padded with spaces to 8 bytes, as the
/// format specifies. Tensors follow in name order, which is safetensors' order for one dtype.
fn header(layout: &[TensorShape], n_given: usize) -> Result<Vec<u8>, Error> {
    if let Some(pair) = layout.windows(2).find(|pair| pair[0].name >= pair[1].name) {
        return Err(Error::LayoutOrder {
            first: pair[0].name.clone(),
            second: pair[1].name.clone(),
        });
    }
    if n_given != n_values(layout) {
        return Err(Error::UpdateLength {
            what: "model to encode",
            values: n_given,
            expected: n_values(layout),
        });
    }
    let mut offset = 0;
    let tensors = layout
        .iter()
        .map(|tensor| {
            let end = offset + 4 * tensor.len();
            let info = TensorInfo {
                dtype: Dtype::F32,
                shape: tensor.shape.clone(),
                data_offsets: (offset, end),
            };
            offset = end;
            (tensor.name.clone(), info)
        })
        .collect();
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let encoding = |source| Error::ModelEncoding {
        what: "the model's header".into(),
        source,
    };
    let metadata = Metadata::new(Some(metadata), tensors).map_err(encoding)?;
    let json = serde_json::to_vec(&metadata)
        .map_err(|e| encoding(safetensors::SafeTensorError::JsonError(e)))?;
    let padded = json.len().next_multiple_of(8);
    let mut bytes = Vec::with_capacity(8 + padded);
    bytes.extend_from_slice(&(padded as u64).to_le_bytes());
    bytes.extend_from_slice(&json);
    bytes.resize(8 + padded, b' ');
    Ok(bytes)
}

/// `values` as little-endian bytes: on a little-endian machine their own memory, not a copy.
fn little_endian(values: &[f32]) -> std::borrow::Cow<'_, [u8]> {
    match cfg!(target_endian = "little") {
        true => std::borrow::Cow::Borrowed(bytemuck::cast_slice(values)),
        false => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

/// Reads a safetensors file and checks that it holds exactly `layout` as f32.
pub fn load_safetensors(path: &Path, layout: &[TensorShape]) -> Result<Vec<f32>, Error> {
    let bytes = read(path)?;
    let file = deserialize(path, &bytes)?;
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
        values.extend(f32s(view.data()));
    }
    Ok(values)
}

/// A small model file for tests: `fc.bias [3]` and `fc.weight [3, 4]`, values `0, 0.5, 1, ...`.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// The layout of [`write_model`]'s file.
    pub fn tiny_layout() -> Vec<TensorShape> {
        vec![
            TensorShape::new("fc.bias", &[3]),
            TensorShape::new("fc.weight", &[3, 4]),
        ]
    }

    /// `n` values `0, 0.5, 1, ...` shifted by `offset`.
    pub fn values(n: usize, offset: f32) -> Vec<f32> {
        (0..n).map(|i| i as f32 * 0.5 + offset).collect()
    }

    /// Writes the tiny model to `dir/init.safetensors` and returns its path.
    pub fn write_model(dir: &Path) -> std::path::PathBuf {
        let path = dir.join("init.safetensors");
        let layout = tiny_layout();
        save_safetensors(&path, &layout, &values(n_values(&layout), 0.0)).unwrap();
        path
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    #[test]
    fn a_written_model_reads_back_with_its_layout_and_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        let layout = tiny_layout();
        let values = values(15, 1.0);
        save_safetensors(&path, &layout, &values).unwrap();
        assert_eq!(read_model(&path).unwrap(), (layout.clone(), values.clone()));
        assert_eq!(load_safetensors(&path, &layout).unwrap(), values);
        assert_eq!(n_values(&layout), 15);
    }

    #[test]
    fn a_model_written_piece_by_piece_is_the_file_safetensors_itself_writes_and_its_hash_is_the_files()
     {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        let layout = vec![
            TensorShape::new("a.bias", &[3]),
            TensorShape::new("b.weight", &[300_000]),
        ];
        let values = values(300_003, -2.0);
        let digest = save_safetensors(&path, &layout, &values).unwrap();
        let written = std::fs::read(&path).unwrap();
        assert_eq!(
            digest.as_ref(),
            ring::digest::digest(&ring::digest::SHA256, &written).as_ref()
        );
        let data = encode_safetensors(&layout, &values).unwrap();
        assert_eq!(written, data);
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let views = vec![
            (
                "a.bias",
                TensorView::new(Dtype::F32, vec![3], &bytes[..12]).unwrap(),
            ),
            (
                "b.weight",
                TensorView::new(Dtype::F32, vec![300_000], &bytes[12..]).unwrap(),
            ),
        ];
        let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        assert_eq!(
            written,
            safetensors::serialize(views, Some(metadata)).unwrap()
        );
    }

    #[test]
    fn the_layout_is_sorted_by_name_whatever_the_file_order() {
        // Written by another tool: tensors in another order than their names'.
        let data: Vec<u8> = (0..6u8).flat_map(|i| f32::from(i).to_le_bytes()).collect();
        let views = vec![
            (
                "z.weight".to_string(),
                TensorView::new(Dtype::F32, vec![2, 2], &data[..16]).unwrap(),
            ),
            (
                "a.bias".to_string(),
                TensorView::new(Dtype::F32, vec![2], &data[16..]).unwrap(),
            ),
        ];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("other.safetensors");
        std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
        let (layout, values) = read_model(&path).unwrap();
        assert_eq!(
            layout,
            vec![
                TensorShape::new("a.bias", &[2]),
                TensorShape::new("z.weight", &[2, 2])
            ]
        );
        assert_eq!(values, vec![4.0, 5.0, 0.0, 1.0, 2.0, 3.0]);
    }

    #[test]
    fn files_that_are_no_f32_model_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.safetensors");
        let err = read_model(&missing).unwrap_err().to_string();
        assert!(err.contains("missing.safetensors"), "{err}");

        let garbage = dir.path().join("garbage.safetensors");
        std::fs::write(&garbage, b"garbage").unwrap();
        let err = read_model(&garbage).unwrap_err().to_string();
        assert!(
            err.contains("garbage.safetensors") && err.contains("not a safetensors file"),
            "{err}"
        );

        let empty = dir.path().join("empty.safetensors");
        let no_tensors: Vec<(String, TensorView)> = Vec::new();
        std::fs::write(&empty, safetensors::serialize(no_tensors, None).unwrap()).unwrap();
        let err = read_model(&empty).unwrap_err().to_string();
        assert!(
            err.contains("empty.safetensors") && err.contains("no tensors"),
            "{err}"
        );

        let half = dir.path().join("half.safetensors");
        let data = [0u8; 8];
        let views = vec![(
            "fc.weight".to_string(),
            TensorView::new(Dtype::F16, vec![2, 2], &data).unwrap(),
        )];
        std::fs::write(&half, safetensors::serialize(views, None).unwrap()).unwrap();
        let err = read_model(&half).unwrap_err().to_string();
        assert!(
            err.contains("fc.weight") && err.contains("F16") && err.contains("only F32"),
            "{err}"
        );
    }

    #[test]
    fn a_checkpoint_of_another_layout_or_a_layout_out_of_order_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_model(dir.path());
        let wider = vec![
            TensorShape::new("fc.bias", &[3]),
            TensorShape::new("fc.weight", &[3, 5]),
        ];
        let err = load_safetensors(&path, &wider).unwrap_err().to_string();
        assert!(err.contains("fc.weight") && err.contains("[3, 5]"), "{err}");
        let mut reversed = tiny_layout();
        reversed.reverse();
        let err = encode_safetensors(&reversed, &values(15, 0.0))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"fc.weight\"") && err.contains("\"fc.bias\""),
            "{err}"
        );
        let err = encode_safetensors(&tiny_layout(), &values(14, 0.0))
            .unwrap_err()
            .to_string();
        assert!(err.contains("14 values") && err.contains("15"), "{err}");
    }
}
