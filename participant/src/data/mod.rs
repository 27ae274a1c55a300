//! Local data: [`Examples`] (what every loader produces and every model trains on), the loaders
//! (CSV tables, image folders with one sub-folder per class, and the gzip IDX reader, MNIST's
//! format, also used for the 8x8 digits), the fixed standardisation a job asks for, and the
//! partitioners that let several participants on one machine split one dataset.

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

/// Reads `{prefix}-images-idx3-ubyte.gz` and `{prefix}-labels-idx1-ubyte.gz` from `dir` (`prefix`
/// is `train` or `t10k`) and checks that they agree: images of one channel with pixels scaled to
/// `[0, 1]`, and the ten digit classes `0`..`9`.
pub fn read_idx(dir: &Path, prefix: &str) -> Result<Examples, Error> {
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
    Ok(Examples {
        feature_shape: vec![1, images.rows, images.cols],
        feature_names: Vec::new(),
        features: images
            .pixels
            .iter()
            .map(|&p| f32::from(p) / 255.0)
            .collect(),
        targets: Targets::Classes {
            labels: labels.into_iter().map(u32::from).collect(),
            classes: (0..10).map(|digit| digit.to_string()).collect(),
        },
    })
}

/// A participant's local data: its training split and its test split.
#[derive(Debug, Clone)]
pub struct LocalData {
    /// Examples to train on.
    pub train: Examples,
    /// Examples to evaluate the global model on.
    pub test: Examples,
}

impl LocalData {
    /// Loads both splits (`train-*` and `t10k-*`) from an IDX directory, whole.
    pub fn load_idx(dir: &Path) -> Result<LocalData, Error> {
        let train = read_idx(dir, "train")?;
        let test = read_idx(dir, "t10k")?;
        if train.feature_shape != test.feature_shape {
            return Err(Error::Data {
                path: dir.to_path_buf(),
                reason: format!(
                    "training images are {:?} but test images are {:?}",
                    train.feature_shape, test.feature_shape
                ),
            });
        }
        Ok(LocalData { train, test })
    }

    /// This participant's `partition` of each split. Label skew needs class labels; a
    /// regression can only be cut IID.
    pub fn partition(&self, partition: &Partition) -> Result<LocalData, Error> {
        let cut = |examples: &Examples, split| -> Result<Examples, Error> {
            let labels = match examples.targets.labels() {
                Some(labels) => labels.to_vec(),
                None if matches!(partition.scheme, partition::Scheme::Dirichlet { .. }) => {
                    return Err(Error::Partition(
                        "Dirichlet label skew needs class labels, and these examples have real-valued targets; use iid".into(),
                    ));
                }
                None => vec![0; examples.len()],
            };
            Ok(examples.select(&partition.indices(&labels, split)?))
        };
        Ok(LocalData {
            train: cut(&self.train, 0)?,
            test: cut(&self.test, 1)?,
        })
    }
}
