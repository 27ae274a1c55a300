//! Three hospitals federate a small network on their breast-cancer tables, and the result is set
//! beside the same network trained on the pooled table: what federation costs.
//!
//! The Breast Cancer Wisconsin table (569 patients, 30 features) is split, seeded, into a
//! held-out test set (20%, never seen by anyone) and three hospitals with different case mixes:
//! of the malignant cases A gets 60%, B 30%, C 10%; of the benign ones A 20%, B 35%, C 45%. Each
//! hospital keeps a fifth of its rows for its own evaluations. The federation runs over mutual
//! TLS with secure aggregation; then both models are scored on the held-out set.
//!
//! `cargo run --release -p cairn-tabular-example`

use anyhow::Context;
use cairn_participant::burn::{self, module::Module, nn, tensor::Device, tensor::Tensor};
use cairn_participant::data::{Examples, LocalData, TableOptions, read_csv};
use cairn_participant::simulation::{JobSpec, LocalFederation, job_task};
use cairn_participant::task::{JobTask, Task};
use cairn_participant::{Backend, Model, Site, TrainingConfig, load_model, save_model};
use clap::Parser;
use std::path::{Path, PathBuf};

/// The network every hospital trains: 30 standardised features, 16 hidden units, 2 classes.
#[derive(Module, Debug)]
struct Net {
    hidden: nn::Linear,
    output: nn::Linear,
}

impl Net {
    fn new(device: &Device) -> Net {
        Net {
            hidden: nn::LinearConfig::new(30, 16).init(device),
            output: nn::LinearConfig::new(16, 2).init(device),
        }
    }
}

impl Model for Net {
    fn forward(&self, features: Tensor<2>) -> Tensor<2> {
        self.output.forward(burn::tensor::activation::relu(
            self.hidden.forward(features),
        ))
    }
}

/// Federated vs pooled training on the Breast Cancer Wisconsin table.
#[derive(Debug, Parser)]
#[command(about)]
struct Cli {
    /// Where the initial model, certificates and checkpoints go.
    #[arg(long, default_value = "tabular-run")]
    dir: PathBuf,
    /// Seed of the held-out set and of the hospitals' split.
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let table = read_csv(
        &here.join("data/wdbc.csv"),
        &TableOptions::classification("diagnosis"),
    )?;
    let (rest, held_out) = table.split(0.2, cli.seed);
    let hospitals = by_case_mix(&rest, [[0.2, 0.35, 0.45], [0.6, 0.3, 0.1]], cli.seed);

    // The job's initial model: the network's seeded initial values, written once.
    let mut job = JobSpec::load(&here.join("job.yaml"))?;
    let device = Backend::Cpu.device()?;
    device.seed(job.seed);
    std::fs::create_dir_all(&cli.dir).with_context(|| format!("creating {}", cli.dir.display()))?;
    job.model.initial = cli.dir.join("init.safetensors");
    save_model(&Net::new(&device), &job.model.initial)?;

    let mut sites: Vec<Box<dyn Task>> = Vec::new();
    for (name, rows) in job.participants.iter().zip(&hospitals) {
        let (train, test) = rows.split(0.2, cli.seed);
        println!(
            "{name}: {} patients ({} malignant)",
            rows.len(),
            malignant(rows)
        );
        sites.push(Box::new(Site::new(
            Net::new(&device),
            LocalData { train, test },
        )));
    }
    let report = LocalFederation::new(job.clone(), &cli.dir)
        .run(sites)
        .await?;
    anyhow::ensure!(
        report.succeeded,
        "the federation did not complete: {}",
        report.reason
    );

    // Both models scored on the held-out patients, with the job's metrics and standardisation.
    let scoring = job_task(&job)?;
    let federated = load_model(Net::new(&device), &report.model_path)?;
    let federated = score(
        Site::new(
            federated,
            LocalData {
                train: held_out.clone(),
                test: held_out.clone(),
            },
        ),
        &scoring,
    )?;

    // The same network from the same initial values on the pooled training rows, for as many
    // epochs as each hospital trained.
    let trains: Vec<Examples> = hospitals
        .iter()
        .map(|rows| rows.split(0.2, cli.seed).0)
        .collect();
    let pooled_train = Examples::concat(&trains)?;
    let initial = load_model(Net::new(&device), &job.model.initial)?;
    let mut pooled = Site::new(
        initial,
        LocalData {
            train: pooled_train,
            test: held_out.clone(),
        },
    );
    pooled.prepare(&scoring)?;
    for round in 1..=job.rounds {
        let config = TrainingConfig {
            round,
            local_epochs: job.local_epochs,
            batch_size: job.batch_size,
            learning_rate: job.learning_rate,
            seed: job.seed + round,
            proximal_mu: job.proximal_mu,
        };
        pooled.train(&config, &mut |_| {})?;
    }
    let pooled = score(pooled, &scoring)?;

    println!(
        "\n{} held-out patients ({} malignant)",
        held_out.len(),
        malignant(&held_out)
    );
    print!("model    ");
    for metric in &scoring.metrics {
        print!("  {:>8}", metric.name());
    }
    for (model, values) in [("federated", federated), ("pooled", pooled)] {
        print!("\n{model:<9}");
        for value in values {
            print!("  {value:>8.4}");
        }
    }
    println!();
    Ok(())
}

/// Each of the job's metrics for a site's model on its test rows (NaN where undefined).
fn score<T: Task>(mut site: T, scoring: &JobTask) -> anyhow::Result<Vec<f64>> {
    site.prepare(scoring)?;
    let totals = site.evaluate()?;
    Ok(totals
        .finish()
        .into_iter()
        .map(|(_, value)| value.unwrap_or(f64::NAN))
        .collect())
}

/// Splits `rows` among the hospitals: shuffled by `seed`, class `c`'s rows in the proportions
/// `shares[c]`.
fn by_case_mix(rows: &Examples, shares: [[f64; 3]; 2], seed: u64) -> Vec<Examples> {
    let rows = rows.shuffled(seed);
    let labels = rows.targets.labels().unwrap_or_default();
    let mut hospitals = vec![Vec::new(); 3];
    for (class, shares) in shares.iter().enumerate() {
        let of_class: Vec<usize> = (0..rows.len())
            .filter(|&i| labels[i] as usize == class)
            .collect();
        let mut start = 0;
        for (hospital, share) in shares.iter().enumerate() {
            let end = match hospital {
                2 => of_class.len(),
                _ => start + (share * of_class.len() as f64).round() as usize,
            };
            hospitals[hospital].extend_from_slice(&of_class[start..end]);
            start = end;
        }
    }
    hospitals
        .iter()
        .map(|indices| rows.select(indices))
        .collect()
}

/// Malignant cases among `rows` (class 1: the classes are sorted, benign before malignant).
fn malignant(rows: &Examples) -> usize {
    rows.targets
        .labels()
        .unwrap_or_default()
        .iter()
        .filter(|&&label| label == 1)
        .count()
}
