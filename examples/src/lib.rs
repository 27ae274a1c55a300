//! What the examples share: run a job as a local federation of simulated participants, each on
//! its own share of an IDX dataset with a built-in network, and print the round table.

use cairn_coordinator::config::JobSpec;
use cairn_coordinator::store::RoundRecord;
use cairn_participant::data::partition::Scheme;
use cairn_participant::data::{LocalData, Partition};
use cairn_participant::simulation::{JobReport, LocalFederation};
use cairn_participant::task::presets::Preset;
use cairn_participant::task::{Backend, Task};
use std::path::Path;

/// Runs `federation` (its job, run directory and monitoring API): one simulated participant per
/// job participant, each training `preset` on its own share (cut by `scheme`) of the IDX data in
/// `data_dir`, on `backend`.
pub async fn run_local_federation(
    federation: LocalFederation,
    preset: Preset,
    backend: Backend,
    data_dir: &Path,
    scheme: Scheme,
) -> anyhow::Result<JobReport> {
    let tasks = site_tasks(&federation.job, preset, data_dir, scheme, backend)?;
    Ok(federation.run(tasks).await?)
}

/// One task per participant of `job`, in order: `preset` on `backend`, each with its own share
/// (cut by `scheme`, seeded by the job) of the IDX data in `data_dir`.
pub fn site_tasks(
    job: &JobSpec,
    preset: Preset,
    data_dir: &Path,
    scheme: Scheme,
    backend: Backend,
) -> anyhow::Result<Vec<Box<dyn Task>>> {
    let data = LocalData::load_idx(data_dir)?;
    let n = job.participants.len();
    (0..n)
        .map(|index| {
            let partition = Partition {
                scheme,
                index,
                count: n,
                seed: job.seed,
            };
            Ok(preset.site(data.partition(&partition)?, backend)?)
        })
        .collect()
}

/// Prints one line per committed round, with every metric the job reports.
pub fn print_round_table(rounds: &[RoundRecord]) {
    let metrics: Vec<&String> = rounds
        .iter()
        .flat_map(|r| r.outcome.eval_metrics.keys())
        .fold(Vec::new(), |mut names, name| {
            if !names.contains(&name) {
                names.push(name);
            }
            names
        });
    println!();
    print!("round  participants  train loss");
    for name in &metrics {
        print!(
            "  {:>10}",
            format!("eval {name}").chars().take(10).collect::<String>()
        );
    }
    let private = rounds.iter().any(|r| r.outcome.epsilon.is_some());
    if private {
        print!("     epsilon");
    }
    println!("  duration");
    for record in rounds {
        let o = &record.outcome;
        print!(
            "{:>5}  {:>5}/{:<6}",
            o.round,
            o.contributors.len(),
            o.selected.len()
        );
        // No training loss is reported under differential privacy.
        match o.epsilon {
            Some(_) => print!("  {:>10}", "-"),
            None => print!("  {:>10.4}", o.train_loss),
        }
        for name in &metrics {
            match o.eval_metrics.get(*name) {
                Some(value) => print!("  {value:>10.4}"),
                None => print!("  {:>10}", "-"),
            }
        }
        if private {
            match o.epsilon {
                Some(epsilon) => print!("  {epsilon:>10.4}"),
                None => print!("  {:>10}", "-"),
            }
        }
        println!("  {:>7.2}s", record.duration_s);
    }
}

/// Installs a log subscriber at `level` unless `RUST_LOG` says otherwise.
pub fn init_logging(level: &str) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| level.into()),
        )
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
