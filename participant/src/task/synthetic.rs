//! A task with neither a network nor data, for measuring the coordinator alone (`simulate
//! --synthetic`): it takes the job's model whatever its layout, and each round's "training"
//! moves every parameter by a small seeded random step, so that its update has the model's full
//! size and, to the coordinator, looks like any other (masked, noised, clipped as the job says).
//! Its evaluation counts one example with every sum zero.

use super::{EpochProgress, JobTask, Task, TensorShape, TrainingConfig, TrainingOutcome};
use crate::Error;
use cairn_proto::metrics::{Metric, Totals};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Examples a synthetic site claims per round.
const EXAMPLES: u64 = 100;

/// A site that trains nothing; see the module's documentation.
#[derive(Debug, Clone)]
pub struct Synthetic {
    site: u64,
    parameters: Vec<f32>,
    metrics: Vec<Metric>,
}

/// Name of the one tensor of a synthetic model.
pub const SYNTHETIC_TENSOR: &str = "synthetic.weight";

/// Writes a model of `n_parameters` zeros as one tensor [`SYNTHETIC_TENSOR`] to `path`, for a job
/// whose sites are [`Synthetic`].
pub fn save_synthetic_model(n_parameters: usize, path: &std::path::Path) -> Result<(), Error> {
    let bytes = vec![0u8; 4 * n_parameters];
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![n_parameters], &bytes)
            .map_err(|e| {
            Error::Model(format!(
                "a synthetic model of {n_parameters} parameters: {e}"
            ))
        })?;
    safetensors::serialize_to_file([(SYNTHETIC_TENSOR, view)], None, path).map_err(|e| {
        Error::Model(format!(
            "writing the synthetic model to {}: {e}",
            path.display()
        ))
    })
}

impl Synthetic {
    /// Site number `site` of a simulation: its steps differ from every other site's.
    pub fn new(site: u64) -> Synthetic {
        Synthetic {
            site,
            parameters: Vec::new(),
            metrics: Vec::new(),
        }
    }
}

impl Task for Synthetic {
    fn prepare(&mut self, job: &JobTask) -> Result<(), Error> {
        self.metrics = job.metrics.clone();
        Ok(())
    }

    fn check_layout(&self, _layout: &[TensorShape]) -> Result<(), Error> {
        Ok(())
    }

    fn set_parameters(&mut self, _layout: &[TensorShape], values: &[f32]) -> Result<(), Error> {
        self.parameters.clear();
        self.parameters.extend_from_slice(values);
        Ok(())
    }

    fn parameters(&self, _layout: &[TensorShape]) -> Result<Vec<f32>, Error> {
        Ok(self.parameters.clone())
    }

    fn train(
        &mut self,
        config: &TrainingConfig,
        progress: &mut dyn FnMut(EpochProgress),
    ) -> Result<TrainingOutcome, Error> {
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed ^ self.site.rotate_left(17));
        // Steps of about the size of one SGD epoch's on a trained network.
        let step = (config.learning_rate * 0.01) as f32;
        for value in &mut self.parameters {
            *value += rng.random_range(-step..=step);
        }
        progress(EpochProgress {
            epoch: 1,
            epochs: 1,
            mean_loss: 1.0,
            examples_per_second: f64::INFINITY,
        });
        Ok(TrainingOutcome {
            n_examples: EXAMPLES,
            mean_loss: 1.0,
        })
    }

    fn evaluate(&self) -> Result<Totals, Error> {
        let mut totals = Totals::new(&self.metrics);
        totals.n_examples = 1;
        Ok(totals)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(seed: u64) -> TrainingConfig {
        TrainingConfig {
            round: 1,
            local_epochs: 1,
            batch_size: 1,
            learning_rate: 0.1,
            seed,
            proximal_mu: 0.0,
        }
    }

    #[test]
    fn each_site_steps_every_parameter_differently_and_reproducibly() {
        let layout = [TensorShape {
            name: "w".into(),
            shape: vec![1000],
        }];
        let step = |site: u64| {
            let mut task = Synthetic::new(site);
            task.set_parameters(&layout, &[0.5; 1000]).unwrap();
            let outcome = task.train(&config(7), &mut |_| {}).unwrap();
            assert_eq!(outcome.n_examples, EXAMPLES);
            task.parameters(&layout).unwrap()
        };
        let (a, b) = (step(0), step(1));
        assert_eq!(a, step(0));
        assert_ne!(a, b);
        assert!(a.iter().all(|v| (v - 0.5).abs() <= 0.001));
        assert!(
            a.iter().filter(|&&v| v != 0.5).count() > 900,
            "nearly every value moves"
        );
    }
}
