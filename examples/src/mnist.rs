//! The MNIST benchmark: ten participants with IID shares of MNIST train the 2NN (or, with
//! `--model cnn`, McMahan et al.'s CNN) over loopback mTLS, and report the round at which the
//! global model first reached a target test accuracy (97% by default) and how much wall time
//! that took. Not part of the test suite.
//!
//! `cargo run --release -p cairn-examples --bin mnist -- --data-dir ../shared/data/mnist`
//! `cargo run --release -p cairn-examples --bin mnist -- --model cnn --target 0.99`
//! (add `--features tch` and `--backend tch` for LibTorch's CPU kernels, about four times as
//! fast on the CNN). The flags after `--target` change the job for the setups of McMahan et al.
//! 2017 and Reddi et al. 2021, e.g. their Table 2's 2NN, E=1, B=10, pathological non-IID:
//! `... --participants 100 --fraction 0.1 --partition shards:2 --local-epochs 1 --batch-size 10`.

use cairn_coordinator::config::{JobSpec, PrivacySpec, ServerAlgorithm};
use cairn_examples::{init_logging, print_round_table, run_local_federation};
use cairn_participant::data::Partition;
use cairn_participant::data::partition::Scheme;
use cairn_participant::simulation::LocalFederation;
use cairn_participant::task::Backend;
use cairn_participant::task::presets::Preset;
use clap::Parser;
use std::path::PathBuf;
use std::time::Instant;

/// Rounds of federated training to reach a target MNIST accuracy.
#[derive(Debug, Parser)]
#[command(about)]
struct Cli {
    /// Directory with MNIST's four gzip IDX files.
    #[arg(long, default_value = "../shared/data/mnist")]
    data_dir: PathBuf,
    /// Job file (default: examples/jobs/mnist.yaml).
    #[arg(long)]
    job: Option<PathBuf>,
    /// Network: mlp or cnn; its initial model is written into --dir with the job's seed.
    #[arg(long, default_value = "mlp", value_parser = Preset::parse)]
    model: Preset,
    /// Compute backend: cpu (burn's flex), or tch, wgpu or cuda when built with the feature of
    /// the same name (`tch` is the fast one for the CNN on a CPU; see README).
    #[arg(long, default_value = "cpu", value_parser = Backend::parse)]
    backend: Backend,
    /// Rounds to run (default: the job's).
    #[arg(long)]
    rounds: Option<u64>,
    /// Accuracy to report the first round reaching.
    #[arg(long, default_value_t = 0.97)]
    target: f64,
    /// Participants (default: the job's ten), named site-000, site-001, ...
    #[arg(long)]
    participants: Option<usize>,
    /// Fraction C of the participants selected per round (default: the job's); the job's
    /// min_participants becomes C times the participants, at least 3.
    #[arg(long)]
    fraction: Option<f64>,
    /// How MNIST is split among them: iid, shards:K (McMahan et al.'s pathological non-IID)
    /// or dirichlet:ALPHA.
    #[arg(long, default_value = "iid", value_parser = Partition::parse_scheme)]
    partition: Scheme,
    /// Local epochs E (default: the job's).
    #[arg(long)]
    local_epochs: Option<u32>,
    /// Local batch size B (default: the job's).
    #[arg(long)]
    batch_size: Option<u32>,
    /// Local learning rate (default: the job's).
    #[arg(long)]
    learning_rate: Option<f64>,
    /// Server optimiser: fedavg, fedavgm, fedadagrad, fedadam or fedyogi (default: the job's).
    #[arg(long, value_parser = server_algorithm)]
    server_optimizer: Option<ServerAlgorithm>,
    /// Server learning rate (default: the job's).
    #[arg(long)]
    server_learning_rate: Option<f64>,
    /// FedProx's mu (default: the job's).
    #[arg(long)]
    proximal_mu: Option<f64>,
    /// Train with distributed differential privacy spending this epsilon over the job's rounds
    /// (at --delta): the noise multiplier is the least that does, with the participants of
    /// each round as the sites whose noise every sum carries (default: no differential privacy).
    #[arg(long)]
    epsilon: Option<f64>,
    /// Delta of --epsilon.
    #[arg(long, default_value_t = 1e-5)]
    delta: f64,
    /// L2 norm each site's update is clipped to under --epsilon.
    #[arg(long, default_value_t = 1.0)]
    clip_norm: f32,
    /// Where certificates and checkpoints go (cleared first).
    #[arg(long, default_value = "mnist-run")]
    dir: PathBuf,
    /// Address of the monitoring API and its dashboard (another port is taken if it is busy).
    #[arg(long, default_value = "127.0.0.1:9464")]
    api_listen: std::net::SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging("warn");
    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut job = JobSpec::load(&cli.job.unwrap_or_else(|| examples.join("jobs/mnist.yaml")))?;
    // The job names where its initial model is; this example writes it there for the network
    // asked for, seeded by the job.
    std::fs::create_dir_all(&cli.dir)?;
    job.model.initial = cli
        .dir
        .join(format!("init-{}.safetensors", cli.model.name()));
    cli.model
        .save_initial([1, 28, 28], 10, job.seed, &job.model.initial)?;
    if let Some(rounds) = cli.rounds {
        job.rounds = rounds;
    }
    if let Some(n) = cli.participants {
        job.participants = (0..n).map(|i| format!("site-{i:03}")).collect();
    }
    if let Some(fraction) = cli.fraction {
        job.fraction = fraction;
    }
    let n = job.participants.len();
    job.min_participants = ((job.fraction * n as f64).ceil() as usize).clamp(3.min(n), n);
    job.local_epochs = cli.local_epochs.unwrap_or(job.local_epochs);
    job.batch_size = cli.batch_size.unwrap_or(job.batch_size);
    job.learning_rate = cli.learning_rate.unwrap_or(job.learning_rate);
    if let Some(algorithm) = cli.server_optimizer {
        job.server_optimizer.algorithm = algorithm;
    }
    if let Some(rate) = cli.server_learning_rate {
        job.server_optimizer.learning_rate = rate;
    }
    job.proximal_mu = cli.proximal_mu.unwrap_or(job.proximal_mu);
    if let Some(epsilon) = cli.epsilon {
        let dim = cairn_coordinator::model::read_model(&job.model.initial)?
            .0
            .iter()
            .map(|tensor| tensor.len())
            .sum();
        let m = job.min_participants as u32;
        let z =
            cairn_secagg::privacy::noise_multiplier_for(epsilon, cli.delta, job.rounds, m, dim)?;
        println!(
            "differential privacy: epsilon {epsilon} at delta {} over {} rounds of {m} sites: noise multiplier {z:.4}, clip norm {}",
            cli.delta, job.rounds, cli.clip_norm
        );
        job.privacy = Some(PrivacySpec {
            epsilon_budget: epsilon,
            delta: cli.delta,
            noise_multiplier: z,
            clip_norm: cli.clip_norm,
            min_contributors: None,
        });
    }
    job.validate()?;
    println!(
        "{n} participants, C = {}, {:?}, E = {}, B = {}, learning rate {}, server optimiser {}, FedProx mu {}",
        job.fraction,
        cli.partition,
        job.local_epochs,
        job.batch_size,
        job.learning_rate,
        job.server_optimizer.describe(),
        job.proximal_mu
    );
    let started = Instant::now();
    let mut federation = LocalFederation::new(job, &cli.dir);
    federation.api_listen = Some(cli.api_listen);
    let report = run_local_federation(
        federation,
        cli.model,
        cli.backend,
        &cli.data_dir,
        cli.partition,
    )
    .await?;
    let elapsed = started.elapsed().as_secs_f64();
    print_round_table(&report.rounds);
    let mut cumulative = 0.0;
    let reached = report.rounds.iter().find(|r| {
        cumulative += r.duration_s;
        r.outcome
            .eval_metrics
            .get("accuracy")
            .is_some_and(|&a| a >= cli.target)
    });
    match reached {
        Some(r) => println!(
            "\nreached {:.2}% test accuracy in round {} after {cumulative:.1} s of rounds ({elapsed:.1} s in all)",
            cli.target * 100.0,
            r.outcome.round
        ),
        None => println!(
            "\ndid not reach {:.2}% in {} rounds ({elapsed:.1} s)",
            cli.target * 100.0,
            report.rounds.len()
        ),
    }
    Ok(())
}

/// A server optimiser by its job-file name.
fn server_algorithm(name: &str) -> Result<ServerAlgorithm, String> {
    ServerAlgorithm::parse(name).ok_or_else(|| {
        let known: Vec<&str> = ServerAlgorithm::ALL.iter().map(|a| a.name()).collect();
        format!(
            "{name:?} is no server optimiser; expected one of {}",
            known.join(", ")
        )
    })
}
