//! The local-training benchmark: how fast one site trains McMahan et al.'s 2NN and CNN on MNIST,
//! per backend and batch size, and where a step's time goes (batching, forward, backward,
//! optimiser step). Each result is printed beside a floor measured in the same run: the
//! backend's own throughput on a square matrix product, so that a model's arithmetic rate reads
//! as a fraction of what the machine's best kernel reaches. `--federation` also runs one round
//! of the MNIST job (ten sites, secure aggregation, over loopback mTLS) and splits its wall time
//! into local training, evaluation and the protocol. Not part of the test suite.
//!
//! `cargo run --release -p cairn-examples --bin train-bench -- --data-dir ../shared/data/mnist`
//! `cargo run --release -p cairn-examples --bin train-bench -- --models cnn --batch-sizes 50 --breakdown`
//! `cargo run --release -p cairn-examples --bin train-bench -- --models mlp --federation`

use cairn_coordinator::config::JobSpec;
use cairn_examples::{init_logging, site_tasks};
use cairn_participant::burn::optim::{GradientsParams, SgdConfig};
use cairn_participant::burn::tensor::{Device, Distribution, Tensor};
use cairn_participant::data::{LocalData, Partition, partition::Scheme};
use cairn_participant::simulation::LocalFederation;
use cairn_participant::task::presets::{Cnn, Mlp, Preset};
use cairn_participant::task::{EpochProgress, JobTask, TensorShape, Totals, TrainingOutcome};
use cairn_participant::{Backend, Batch, Error, Model, Task, TrainingConfig, default_loss};
use clap::Parser;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Examples per second of local training, per network, backend and batch size.
#[derive(Debug, Parser)]
#[command(about)]
struct Cli {
    /// Directory with MNIST's four gzip IDX files.
    #[arg(long, default_value = "../shared/data/mnist")]
    data_dir: PathBuf,
    /// Training examples per measured epoch (one IID share, as one of ten sites has).
    #[arg(long, default_value_t = 6000)]
    examples: usize,
    /// Networks to train: mlp, cnn.
    #[arg(long, value_delimiter = ',', default_value = "mlp,cnn", value_parser = Preset::parse)]
    models: Vec<Preset>,
    /// Batch sizes.
    #[arg(long, value_delimiter = ',', default_value = "10,32,50")]
    batch_sizes: Vec<u32>,
    /// Backends: cpu, and tch, wgpu or cuda when compiled in.
    #[arg(long, value_delimiter = ',', default_value = "cpu", value_parser = Backend::parse)]
    backends: Vec<Backend>,
    /// CPU threads to train with (default: one per core this process may use).
    #[arg(long)]
    threads: Option<usize>,
    /// Also time each part of a training step (batching, forward, backward, optimiser).
    #[arg(long)]
    breakdown: bool,
    /// Then run one round of examples/jobs/mnist.yaml with each network on the first backend,
    /// and split its wall time into training, evaluation and protocol.
    #[arg(long)]
    federation: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging("warn");
    if let Some(threads) = cli.threads {
        cairn_participant::task::set_threads(threads)?;
    }
    let all = LocalData::load_idx(&cli.data_dir)?;
    let share = all.partition(&Partition {
        scheme: Scheme::Iid,
        index: 0,
        count: (all.train.len() / cli.examples.max(1)).max(1),
        seed: 7,
    })?;
    let largest = cli.batch_sizes.iter().copied().max().unwrap_or(0) as usize;
    if cli.batch_sizes.contains(&0) || largest > share.train.len() {
        anyhow::bail!(
            "batch sizes {:?} for {} training examples; expected each between 1 and the number of examples",
            cli.batch_sizes,
            share.train.len()
        );
    }
    println!(
        "{} training examples, {} threads",
        share.train.len(),
        cairn_participant::task::threads()
    );
    for &backend in &cli.backends {
        let floor = matmul_gflops(backend)?;
        println!(
            "\nbackend {}: floor {floor:.1} GFLOP/s (1024x1024 matrix product)",
            backend.name()
        );
        println!(
            "{:>6} {:>6} {:>12} {:>9} {:>9}",
            "model", "batch", "examples/s", "GFLOP/s", "of floor"
        );
        for &model in &cli.models {
            for &batch_size in &cli.batch_sizes {
                let rate = examples_per_second(model, backend, &share, batch_size)?;
                let gflops = rate * training_flops(model) / 1e9;
                println!(
                    "{:>6} {:>6} {rate:>12.0} {gflops:>9.1} {:>8.0}%",
                    model.name(),
                    batch_size,
                    100.0 * gflops / floor
                );
                if cli.breakdown {
                    breakdown(model, backend, &share, batch_size as usize)?;
                }
            }
        }
    }
    if cli.federation {
        for &model in &cli.models {
            one_round(model, cli.backends[0], &cli.data_dir).await?;
        }
    }
    Ok(())
}

/// One epoch of the participant's own training loop over `data`, after a short warm-up, as its
/// progress line reports it.
fn examples_per_second(
    model: Preset,
    backend: Backend,
    data: &LocalData,
    batch_size: u32,
) -> anyhow::Result<f64> {
    let warm_up = data
        .train
        .select(&(0..500.min(data.train.len())).collect::<Vec<_>>());
    let config = TrainingConfig {
        round: 1,
        local_epochs: 1,
        batch_size,
        learning_rate: 0.05,
        seed: 7,
        proximal_mu: 0.0,
    };
    let mut rate = 0.0;
    for (i, train) in [warm_up, data.train.clone()].into_iter().enumerate() {
        let mut task = model.site(
            LocalData {
                train,
                test: data.test.clone(),
            },
            backend,
        )?;
        task.train(&config, &mut |progress| {
            if i == 1 {
                rate = progress.examples_per_second;
            }
        })?;
    }
    Ok(rate)
}

/// Multiply-adds of one training example's forward and backward pass (3x the forward's), as
/// floating-point operations.
fn training_flops(model: Preset) -> f64 {
    let forward_macs = match model {
        Preset::Mlp => 784.0 * 200.0 + 200.0 * 200.0 + 200.0 * 10.0,
        // Two 5x5 convolutions at 28x28 and 14x14 ("same" padding), then the two dense layers.
        Preset::Cnn => {
            28.0 * 28.0 * 32.0 * 25.0
                + 14.0 * 14.0 * 64.0 * 32.0 * 25.0
                + 3136.0 * 512.0
                + 512.0 * 10.0
        }
    };
    3.0 * 2.0 * forward_macs
}

/// The backend's rate on a 1024x1024 by 1024x1024 product, best of five.
fn matmul_gflops(backend: Backend) -> anyhow::Result<f64> {
    let device = backend.device()?.inner();
    let n = 1024;
    let a = Tensor::<2>::random([n, n], Distribution::Default, &device);
    let b = Tensor::<2>::random([n, n], Distribution::Default, &device);
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let started = Instant::now();
        let product = a.clone().matmul(b.clone());
        let _ = product.into_data();
        best = best.min(started.elapsed().as_secs_f64());
    }
    Ok(2.0 * (n as f64).powi(3) / best / 1e9)
}

/// Prints where a training step's time goes, over 50 steps after 5 of warm-up.
fn breakdown(
    model: Preset,
    backend: Backend,
    data: &LocalData,
    batch_size: usize,
) -> anyhow::Result<()> {
    let device = backend.device()?;
    match model {
        Preset::Mlp => time_steps(Mlp::new(784, 10, &device), data, batch_size, &device),
        Preset::Cnn => time_steps(
            Cnn::new([1, 28, 28], 10, &device)?,
            data,
            batch_size,
            &device,
        ),
    }
}

fn time_steps<M: Model>(
    mut model: M,
    data: &LocalData,
    batch_size: usize,
    device: &Device,
) -> anyhow::Result<()> {
    let mut optimizer = SgdConfig::new().init();
    // Seconds spent in each part: batching, forward (with the loss), backward, optimiser step.
    let mut parts = [0.0f64; 4];
    let steps = 55;
    for step in 0..steps {
        let start = (step * batch_size) % (data.train.len() - batch_size + 1);
        let indices: Vec<usize> = (start..start + batch_size).collect();
        let mut clock = Instant::now();
        let mut lap = |part: usize, clock: &mut Instant| {
            if step >= 5 {
                parts[part] += clock.elapsed().as_secs_f64();
            }
            *clock = Instant::now();
        };
        let batch = Batch::new(&data.train, &indices, device);
        lap(0, &mut clock);
        let loss = default_loss(model.forward(batch.features.clone()), &batch.targets);
        let _ = loss.clone().inner().into_data();
        lap(1, &mut clock);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        lap(2, &mut clock);
        model = optimizer.step(0.05, model, grads);
        lap(3, &mut clock);
    }
    let total: f64 = parts.iter().sum();
    let names = ["batching", "forward", "backward", "optimiser"];
    let shares: Vec<String> = names
        .iter()
        .zip(parts)
        .map(|(name, seconds)| format!("{name} {:.0}%", 100.0 * seconds / total))
        .collect();
    println!(
        "{:>15} {:.2} ms per step: {}",
        "",
        1e3 * total / (steps - 5) as f64,
        shares.join(", ")
    );
    Ok(())
}

/// One round of the MNIST job with `model`: its wall time, and the parts of it during which
/// some site was training or evaluating.
async fn one_round(model: Preset, backend: Backend, data_dir: &Path) -> anyhow::Result<()> {
    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut job = JobSpec::load(&examples.join("jobs/mnist.yaml"))?;
    let run_dir = std::env::temp_dir().join(format!("cairn-train-bench-{}", std::process::id()));
    std::fs::create_dir_all(&run_dir)?;
    job.model.initial = run_dir.join("init.safetensors");
    model.save_initial([1, 28, 28], 10, job.seed, &job.model.initial)?;
    job.rounds = 1;
    let spans = Arc::new(Mutex::new(Vec::new()));
    let tasks = site_tasks(&job, model, data_dir, Scheme::Iid, backend)?
        .into_iter()
        .map(|inner| {
            Box::new(Timed {
                inner,
                spans: spans.clone(),
            }) as Box<dyn Task>
        })
        .collect();
    let secure = job.secure_aggregation.enabled;
    let n = job.participants.len();
    let report = LocalFederation::new(job, &run_dir).run(tasks).await;
    let _ = std::fs::remove_dir_all(&run_dir);
    let report = report?;
    let round = report
        .rounds
        .first()
        .ok_or_else(|| anyhow::anyhow!("the round did not commit"))?;
    let spans = spans
        .lock()
        .map_err(|_| anyhow::anyhow!("a site panicked"))?;
    // From the first site starting the part to the last one finishing it.
    let wall = |part: Part| {
        let of_part = spans.iter().filter(|(p, ..)| *p == part);
        let start = of_part.clone().map(|(_, start, _)| *start).min();
        let end = of_part.map(|(_, _, end)| *end).max();
        start
            .zip(end)
            .map_or(0.0, |(start, end)| (end - start).as_secs_f64())
    };
    let (training, evaluation) = (wall(Part::Training), wall(Part::Evaluation));
    println!(
        "\none round of {n} {} sites ({}secure aggregation): {:.1} s = training {training:.1} s + evaluation {evaluation:.1} s + protocol {:.1} s",
        model.name(),
        if secure { "" } else { "no " },
        round.duration_s,
        (round.duration_s - training - evaluation).max(0.0)
    );
    Ok(())
}

/// What a site was doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Training,
    Evaluation,
}

/// A site's task that notes when it trains and evaluates.
struct Timed {
    inner: Box<dyn Task>,
    spans: Arc<Mutex<Vec<(Part, Instant, Instant)>>>,
}

impl Timed {
    fn note(&self, part: Part, start: Instant) {
        if let Ok(mut spans) = self.spans.lock() {
            spans.push((part, start, Instant::now()));
        }
    }
}

impl Task for Timed {
    fn prepare(&mut self, job: &JobTask) -> Result<(), Error> {
        self.inner.prepare(job)
    }

    fn check_layout(&self, layout: &[TensorShape]) -> Result<(), Error> {
        self.inner.check_layout(layout)
    }

    fn set_parameters(&mut self, layout: &[TensorShape], values: &[f32]) -> Result<(), Error> {
        self.inner.set_parameters(layout, values)
    }

    fn parameters(&self, layout: &[TensorShape]) -> Result<Vec<f32>, Error> {
        self.inner.parameters(layout)
    }

    fn train(
        &mut self,
        config: &TrainingConfig,
        progress: &mut dyn FnMut(EpochProgress),
    ) -> Result<TrainingOutcome, Error> {
        let start = Instant::now();
        let outcome = self.inner.train(config, progress);
        self.note(Part::Training, start);
        outcome
    }

    fn evaluate(&self) -> Result<Totals, Error> {
        let start = Instant::now();
        let totals = self.inner.evaluate();
        self.note(Part::Evaluation, start);
        totals
    }
}
