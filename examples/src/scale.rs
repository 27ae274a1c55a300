//! The coordinator measured alone: a synthetic model of `--parameters` values, and for each
//! `--participants` count a federation whose sites train nothing (`Synthetic`: a seeded random
//! step per parameter), with secure aggregation unless `--plain`. The coordinator runs in a
//! process of its own (this binary again, as `--serve DIR`), so that its peak resident memory
//! (`VmHWM`) and CPU time are its own; the sites run here. Prints, per count, the coordinator's
//! peak RSS beside `d x 8` bytes, its CPU per round, each round's wall time as the sum of its
//! phases, and the sites' process's peak RSS (cumulative over the counts run).
//!
//! `cargo run --release -p cairn-examples --bin scale -- --parameters 1000000 --participants 10,100`

use anyhow::Context;
use cairn_coordinator::config::JobSpec;
use cairn_coordinator::pki::{self, ParticipantSpec, ProvisionRequest};
use cairn_coordinator::{Coordinator, ServeOptions, ServerTls};
use cairn_participant::client::{self, ClientOptions, Kit};
use cairn_participant::task::{Synthetic, Task};
use clap::Parser;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Coordinator memory and CPU against the number of participants, with a synthetic model.
#[derive(Debug, Parser)]
struct Cli {
    /// Parameters of the synthetic model (d).
    #[arg(long, default_value_t = 1_000_000)]
    parameters: usize,
    /// Participant counts to measure, one federation each (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "10,100")]
    participants: Vec<usize>,
    /// Rounds per federation.
    #[arg(long, default_value_t = 2)]
    rounds: u64,
    /// Plaintext updates instead of secure aggregation.
    #[arg(long)]
    plain: bool,
    /// Where each federation's certificates and state go (`<dir>/n<N>/`, cleared first).
    #[arg(long, default_value = "scale-run")]
    dir: PathBuf,
    /// Run as the coordinator of the federation prepared in this directory (used by this
    /// binary itself).
    #[arg(long, hide = true)]
    serve: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Some(dir) = &cli.serve {
        return serve(dir).await;
    }
    anyhow::ensure!(
        cli.parameters >= 1,
        "--parameters is 0; expected at least 1"
    );
    let d = cli.parameters;
    println!(
        "coordinator alone, synthetic model of d = {d} parameters, {} rounds, {}",
        cli.rounds,
        if cli.plain {
            "plaintext updates"
        } else {
            "secure aggregation"
        }
    );
    println!("  d x 8 bytes = {:.1} MB", (d * 8) as f64 / 1e6);
    for &n in &cli.participants {
        anyhow::ensure!(n >= 3, "--participants {n}: a federation needs at least 3");
        let dir = cli.dir.join(format!("n{n}"));
        prepare(&dir, d, n, cli.rounds, cli.plain)?;
        measure(&dir, n).await?;
    }
    Ok(())
}

/// Writes the model, the job and the certificates of a federation of `n` synthetic sites.
fn prepare(dir: &Path, d: usize, n: usize, rounds: u64, plain: bool) -> anyhow::Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir)?;
    cairn_participant::task::save_synthetic_model(d, &dir.join("model.safetensors"))?;
    let participants: Vec<String> = (0..n).map(|i| format!("site-{i:04}")).collect();
    let job = format!(
        "name: scale\nmodel: {{initial: model.safetensors}}\nmetrics: [loss]\nrounds: {rounds}\n\
         min_participants: {n}\nphase_deadline_s: 3600\nsecure_aggregation: {{enabled: {}}}\n\
         participants: [{}]\n",
        !plain,
        participants.join(", ")
    );
    std::fs::write(dir.join("job.yaml"), job)?;
    let request = ProvisionRequest {
        out_dir: dir.join("federation"),
        federation: "scale".into(),
        server_names: vec!["localhost".into()],
        participants: participants
            .iter()
            .map(|id| ParticipantSpec::parse(id))
            .collect::<Result<_, _>>()?,
        with_keys: true,
        validity_days: 1,
    };
    pki::provision(&request)?;
    Ok(())
}

/// Starts the coordinator of `dir` in a process of its own, runs its `n` sites here, and prints
/// what the coordinator measured.
async fn measure(dir: &Path, n: usize) -> anyhow::Result<()> {
    let mut child = Command::new(std::env::current_exe()?)
        .arg("--serve")
        .arg(dir)
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the coordinator's process")?;
    let mut lines = BufReader::new(child.stdout.take().context("its stdout")?).lines();
    let port: u16 = lines
        .next()
        .context("the coordinator ended before saying its port")??
        .strip_prefix("port ")
        .context("the coordinator's first line names its port")?
        .parse()?;
    let url = format!("https://127.0.0.1:{port}");
    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("site-{i:04}");
        let kit = Kit::load(&dir.join("federation/participants").join(&id))?;
        let mut options = ClientOptions::new(url.clone(), kit, id);
        options.server_name = Some("localhost".into());
        options.policy.allow_plaintext = true;
        let task: Box<dyn Task> = Box::new(Synthetic::new(i as u64));
        clients.push((options, task));
    }
    for result in client::run_many(clients).await {
        result?;
    }
    let report: Vec<String> = lines.collect::<Result<_, _>>()?;
    anyhow::ensure!(child.wait()?.success(), "the coordinator failed");
    println!("n = {n}:");
    for line in report {
        println!("  {line}");
    }
    println!(
        "  the {n} sites' process (this one) peak RSS {:.1} MB",
        peak_rss_bytes()? as f64 / 1e6
    );
    Ok(())
}

/// The coordinator's side: serves the job of `dir`, then reports its peak memory, its CPU time
/// and each round's phases.
async fn serve(dir: &Path) -> anyhow::Result<()> {
    let job = JobSpec::load(&dir.join("job.yaml"))?;
    let rounds = job.rounds;
    let options = ServeOptions {
        job,
        tls: ServerTls::from_dir(&dir.join("federation/coordinator"))?,
        state_dir: dir.join("state"),
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        heartbeat_interval: Duration::from_secs(30),
        keep_checkpoints: 1,
        api: None,
    };
    let coordinator = Coordinator::start(options).await?;
    println!("port {}", coordinator.local_addr().port());
    let started = cpu_seconds()?;
    let report = coordinator.wait().await?;
    let cpu = cpu_seconds()? - started;
    anyhow::ensure!(report.succeeded, "the job stopped: {}", report.reason);
    println!(
        "coordinator peak RSS {:.1} MB, CPU {:.2} s per round",
        peak_rss_bytes()? as f64 / 1e6,
        cpu / rounds as f64
    );
    for record in &report.rounds {
        let phases: Vec<String> = record
            .phase_durations
            .iter()
            .map(|p| format!("{} {:.2}", p.phase.name(), p.duration_s))
            .collect();
        let sum: f64 = record.phase_durations.iter().map(|p| p.duration_s).sum();
        println!(
            "round {}: {:.2} s = {} (sum {sum:.2} s; the sites' synthetic training included)",
            record.outcome.round,
            record.duration_s,
            phases.join(" + ")
        );
    }
    Ok(())
}

/// This process's peak resident set (`VmHWM` in `/proc/self/status`).
fn peak_rss_bytes() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .context("/proc/self/status has no VmHWM")?;
    let kb: u64 = line.trim().trim_end_matches("kB").trim().parse()?;
    Ok(kb * 1024)
}

/// This process's user and system CPU time so far (`/proc/self/stat`, in clock ticks of 1/100 s,
/// Linux's `USER_HZ`).
fn cpu_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("/proc/self/stat")?
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    Ok(ticks as f64 / 100.0)
}
