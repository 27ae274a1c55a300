//! The MNIST benchmark: ten participants with IID shares of MNIST train the 2NN (or, with
//! `--model cnn`, McMahan et al.'s CNN) over loopback mTLS, and report the round at which the
//! global model first reached a target test accuracy (97% by default) and how much wall time
//! that took. Not part of the test suite.
//!
//! `cargo run --release -p cairn-examples --bin mnist -- --data-dir ../shared/data/mnist`
//! `cargo run --release -p cairn-examples --bin mnist -- --model cnn --target 0.99`
//! (add `--features tch` and `--backend tch` for LibTorch's CPU kernels, about four times as
//! fast on the CNN)

use cairn_coordinator::config::JobSpec;
use cairn_examples::{init_logging, print_round_table, run_local_federation};
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
    let started = Instant::now();
    let report = run_local_federation(
        job,
        cli.model,
        cli.backend,
        &cli.data_dir,
        &cli.dir,
        cli.api_listen,
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
