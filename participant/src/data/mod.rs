//! Local data: the loaders (CSV tables, image folders with one sub-folder per class, and the gzip
//! IDX reader, MNIST's format, also used for the 8x8 digits) and the partitioners that let several
//! participants on one machine split one dataset.

mod examples;
mod idx;
pub mod images;
pub mod partition;
pub mod table;

pub use examples::{Examples, FeatureStatistics, Targets};

pub use idx::{read_images, read_labels};
pub use images::{ImageFolderOptions, read_image_folder};
pub use partition::Partition;
pub use table::{TableOptions, TargetKind, read_csv};

use crate::Error;
use std::path::Path;

/// A labelled image dataset held in memory: pixels scaled to `[0, 1]`, row-major, one image after
/// the other.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Image height in pixels.
    pub rows: usize,
    /// Image width in pixels.
    pub cols: usize,
    /// `len() * rows * cols` pixel values in `[0, 1]`.
    pub pixels: Vec<f32>,
    /// One label in `0..10` per image.
    pub labels: Vec<u8>,
}

impl Dataset {
    /// Number of examples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the dataset holds no example.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Pixels of one image.
    pub fn image(&self, index: usize) -> &[f32] {
        let size = self.rows * self.cols;
        &self.pixels[index * size..(index + 1) * size]
    }

    /// The examples at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Dataset {
        Dataset {
            rows: self.rows,
            cols: self.cols,
            pixels: indices
                .iter()
                .flat_map(|&i| self.image(i).iter().copied())
                .collect(),
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
        }
    }

    /// Reads `{prefix}-images-idx3-ubyte.gz` and `{prefix}-labels-idx1-ubyte.gz` from `dir`
    /// (`prefix` is `train` or `t10k`) and checks that they agree.
    pub fn load(dir: &Path, prefix: &str) -> Result<Dataset, Error> {
        let images_path = dir.join(format!("{prefix}-images-idx3-ubyte.gz"));
        let labels_path = dir.join(format!("{prefix}-labels-idx1-ubyte.gz"));
        let images = read_images(&images_path)?;
        let labels = read_labels(&labels_path)?;
        if images.count != labels.len() {
            return Err(Error::Data {
                path: labels_path,
                reason: format!(
                    "holds {} labels, but {} holds {} images",
                    labels.len(),
                    images_path.display(),
                    images.count
                ),
            });
        }
        if let Some((index, label)) = labels.iter().enumerate().find(|(_, l)| **l > 9) {
            return Err(Error::Data {
                path: labels_path,
                reason: format!("label {index} is {label}, expected a digit 0..=9"),
            });
        }
        Ok(Dataset {
            rows: images.rows,
            cols: images.cols,
            pixels: images
                .pixels
                .iter()
                .map(|&p| f32::from(p) / 255.0)
                .collect(),
            labels,
        })
    }
}

/// A participant's local data: its training split and its test split.
#[derive(Debug, Clone)]
pub struct LocalData {
    /// Examples to train on.
    pub train: Dataset,
    /// Examples to evaluate the global model on.
    pub test: Dataset,
}

impl LocalData {
    /// Loads both splits (`train-*` and `t10k-*`) from an IDX directory, whole.
    pub fn load(dir: &Path) -> Result<LocalData, Error> {
        let train = Dataset::load(dir, "train")?;
        let test = Dataset::load(dir, "t10k")?;
        if (train.rows, train.cols) != (test.rows, test.cols) {
            return Err(Error::Data {
                path: dir.to_path_buf(),
                reason: format!(
                    "training images are {}x{} but test images are {}x{}",
                    train.rows, train.cols, test.rows, test.cols
                ),
            });
        }
        Ok(LocalData { train, test })
    }

    /// This participant's `partition` of each split.
    pub fn partition(&self, partition: &Partition) -> Result<LocalData, Error> {
        let train_indices = partition.indices(&self.train.labels, 0)?;
        let test_indices = partition.indices(&self.test.labels, 1)?;
        Ok(LocalData {
            train: self.train.select(&train_indices),
            test: self.test.select(&test_indices),
        })
    }
}
