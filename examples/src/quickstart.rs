//! The quickstart: provisions certificates into `./quickstart-run`, starts a coordinator and four
//! participants on loopback over mutual TLS, trains the MLP on the 8x8 digits committed under
//! `examples/data/digits`, prints the round table and the final test accuracy; in a terminal,
//! the dashboard then stays up until Ctrl-C.
//!
//! `cargo run -p cairn-examples --bin quickstart`

use cairn_coordinator::config::JobSpec;
use cairn_examples::{init_logging, print_round_table, run_local_federation};
use cairn_participant::data::partition::Scheme;
use cairn_participant::simulation::LocalFederation;
use cairn_participant::task::Backend;
use cairn_participant::task::presets::Preset;
use clap::Parser;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

/// Run a complete local Cairn federation on the digits data.
#[derive(Debug, Parser)]
#[command(about)]
struct Cli {
    /// Where certificates, checkpoints and the final model go (their folders are cleared first).
    #[arg(long, default_value = "quickstart-run")]
    dir: PathBuf,
    /// Job file (default: examples/jobs/quickstart.yaml).
    #[arg(long)]
    job: Option<PathBuf>,
    /// Log filter (tracing's syntax); by default the coordinator's round lines are shown and the
    /// participants' per-epoch progress is not (use `info` to see it).
    #[arg(long, default_value = "info,cairn_participant=warn")]
    log: String,
    /// Address of the monitoring API and its dashboard (another port is taken if it is busy).
    #[arg(long, default_value = "127.0.0.1:9464")]
    api_listen: std::net::SocketAddr,
    /// What to do when the job is done: keep the dashboard up until Ctrl-C (`stay`), end
    /// (`exit`), or stay when the output is a terminal and end under a script (`auto`).
    #[arg(long, value_enum, default_value_t = AfterJob::Auto)]
    after_job: AfterJob,
}

/// `--after-job`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum AfterJob {
    Auto,
    Stay,
    Exit,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(&cli.log);
    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let job = JobSpec::load(
        &cli.job
            .unwrap_or_else(|| examples.join("jobs/quickstart.yaml")),
    )?;
    // In a terminal the dashboard outlives the job, for a look at what happened; under a
    // script (stdout not a terminal) the quickstart ends with the job.
    let stay = match cli.after_job {
        AfterJob::Auto => std::io::stdout().is_terminal(),
        AfterJob::Stay => true,
        AfterJob::Exit => false,
    };
    let mut federation = LocalFederation::new(job, &cli.dir);
    federation.api_listen = Some(cli.api_listen);
    if stay {
        federation.api_linger = Duration::MAX;
    }
    let report = run_local_federation(
        federation,
        Preset::Mlp,
        Backend::Cpu,
        &examples.join("data/digits"),
        Scheme::Iid,
    )
    .await?;
    print_round_table(&report.rounds);
    anyhow::ensure!(
        report.succeeded,
        "the job did not complete: {}",
        report.reason
    );
    let accuracy = report
        .rounds
        .last()
        .and_then(|r| r.outcome.eval_metrics.get("accuracy").copied())
        .unwrap_or(f64::NAN);
    println!("\nfinal model: {}", report.model_path.display());
    println!("test accuracy: {accuracy:.4}");
    println!(
        "check its history, countersigned by the sites: cargo run -q -p cairn-coordinator -- audit --state-dir {} --ca {}",
        cli.dir.join("state").display(),
        cli.dir.join("federation/ca/ca.pem").display()
    );
    if stay {
        println!("\nthe job is done; the dashboard and API (URL above) keep serving until Ctrl-C");
        tokio::signal::ctrl_c().await?;
    }
    Ok(())
}
