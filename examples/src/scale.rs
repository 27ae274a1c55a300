//! The coordinator measured alone: a synthetic model of `--parameters` values, and for each
//! `--participants` count a federation whose sites train nothing (`Synthetic`: a seeded random
//! step per parameter), with secure aggregation unless `--plain`. The coordinator runs in a
//! process of its own (this binary again, as `--serve DIR`), so that its peak resident memory
//! (`VmHWM`) and CPU time are its own; the sites run here. Prints, per count, the coordinator's
//! peak RSS beside `d x 8` bytes, its CPU per round, each round's wall time as the sum of its
//! phases, and the sites' process's peak RSS (cumulative over the counts run).
//!
//! While the job runs, a probe on a thread of its own asks the monitoring API for the job's state
//! (`GET /api/v1/job`) every 20 ms, and the benchmark prints the API's latency in each phase
//! beside its latency before the job starts (25 requests while no site is connected): the heavy
//! phases (adding masked inputs, unmasking, the commit) run off the async runtime, so the API
//! should answer about as fast during them.
//!
//! With `--cut-at-chunk K` (plaintext updates), the first site's connection is cut once while
//! the round-1 global model arrives, at its chunk K, and once while its round-1 update leaves,
//! before its chunk K; both transfers resume, and the benchmark prints the bytes each moved
//! against the transfer's size: what was sent again.
//!
//! `cargo run --release -p cairn-examples --bin scale -- --parameters 1000000 --participants 10,100`
//! `cargo run --release -p cairn-examples --bin scale -- --plain --parameters 600000000 --participants 1 --rounds 1 --cut-at-chunk 5000`

use anyhow::Context;
use cairn_coordinator::api::{ApiOptions, ApiTokens};
use cairn_coordinator::config::JobSpec;
use cairn_coordinator::pki::{self, ParticipantSpec, ProvisionRequest};
use cairn_coordinator::{Coordinator, ServeOptions, ServerTls};
use cairn_participant::client::{self, ClientOptions, Filter, Kit, Verdict};
use cairn_participant::task::{Synthetic, Task};
use cairn_proto::v1::{
    CoordinatorMessage, ParticipantMessage, coordinator_message, participant_message,
};
use clap::Parser;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
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
    /// Cut the first site's connection once in each of its round-1 transfers (plaintext only):
    /// at chunk K of the global model, and before chunk K of its update.
    #[arg(long, value_name = "K", requires = "plain")]
    cut_at_chunk: Option<u32>,
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
    let least = if cli.plain { 1 } else { 3 };
    for &n in &cli.participants {
        anyhow::ensure!(
            n >= least,
            "--participants {n}: a federation needs at least {least}{}",
            if cli.plain {
                ""
            } else {
                " with secure aggregation"
            }
        );
        let dir = cli.dir.join(format!("n{n}"));
        prepare(&dir, d, n, cli.rounds, cli.plain)?;
        measure(&dir, n, d, cli.cut_at_chunk).await?;
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
/// what the coordinator measured; with `cut_at_chunk`, what the cut transfers moved.
async fn measure(dir: &Path, n: usize, d: usize, cut_at_chunk: Option<u32>) -> anyhow::Result<()> {
    let cut = cut_at_chunk.map(|at| Arc::new(CutOnce::at(at)));
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
        if i == 0
            && let Some(cut) = &cut
        {
            options.filter = Some(cut.clone());
        }
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
    if let Some(cut) = cut {
        let size = 4 * d as u64;
        let moved = cut.moved.lock().expect("lock");
        anyhow::ensure!(
            moved.cuts == 2,
            "only {} of the 2 cuts happened: is chunk {} past the model's end?",
            moved.cuts,
            cut.at
        );
        for (what, bytes) in [("global model", moved.received), ("update", moved.sent)] {
            println!(
                "  site-0000's round-1 {what}: {size} bytes, cut at chunk {}, moved {bytes} bytes: {} bytes sent again",
                cut.at,
                bytes.saturating_sub(size)
            );
        }
    }
    Ok(())
}

/// Cuts a site's connection once in each direction of round 1, at chunk `at`, and counts the
/// bytes of the round-1 model and update that went through.
#[derive(Debug)]
struct CutOnce {
    at: u32,
    moved: Mutex<Moved>,
}

/// What a [`CutOnce`] saw.
#[derive(Debug, Default)]
struct Moved {
    /// Whether the model arriving now is the round-1 model to train on.
    training: bool,
    /// Bytes of the round-1 model that arrived, and of the update that left.
    received: u64,
    sent: u64,
    /// Cuts made (one per direction).
    cuts: u32,
    cut_in: bool,
    cut_out: bool,
}

impl CutOnce {
    fn at(at: u32) -> CutOnce {
        CutOnce {
            at,
            moved: Mutex::default(),
        }
    }
}

impl Filter for CutOnce {
    fn inbound(&self, message: &CoordinatorMessage) -> Verdict {
        let mut moved = self.moved.lock().expect("lock");
        match &message.body {
            Some(coordinator_message::Body::Train(train)) => {
                moved.training = train.model.as_ref().is_some_and(|m| m.round == 1);
            }
            Some(coordinator_message::Body::Evaluate(_)) => moved.training = false,
            Some(coordinator_message::Body::Chunk(chunk)) if moved.training => {
                if chunk.index == self.at && !moved.cut_in {
                    moved.cut_in = true;
                    moved.cuts += 1;
                    return Verdict::Cut;
                }
                moved.received += chunk.data.len() as u64;
            }
            _ => {}
        }
        Verdict::Pass
    }

    fn outbound(&self, message: &ParticipantMessage) -> Verdict {
        let mut moved = self.moved.lock().expect("lock");
        if let Some(participant_message::Body::Chunk(chunk)) = &message.body
            && chunk.round == 1
        {
            if chunk.index == self.at && !moved.cut_out {
                moved.cut_out = true;
                moved.cuts += 1;
                return Verdict::Cut;
            }
            moved.sent += chunk.data.len() as u64;
        }
        Verdict::Pass
    }
}

/// The coordinator's side: serves the job of `dir`, then reports its peak memory, its CPU time
/// and each round's phases.
async fn serve(dir: &Path) -> anyhow::Result<()> {
    let job = JobSpec::load(&dir.join("job.yaml"))?;
    let rounds = job.rounds;
    let (tokens, token) = ApiTokens::random_admin();
    let options = ServeOptions {
        job,
        tls: ServerTls::from_dir(&dir.join("federation/coordinator"))?,
        state_dir: dir.join("state"),
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        heartbeat_interval: Duration::from_secs(30),
        keep_checkpoints: 1,
        api: Some(ApiOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            tokens,
            linger: Duration::ZERO,
        }),
    };
    let coordinator = Coordinator::start(options).await?;
    let api = coordinator.api_addr().context("the API's address")?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (baseline_taken, baseline) = std::sync::mpsc::channel();
    let probe = {
        let stop = stop.clone();
        std::thread::spawn(move || probe_api(api, &token, &stop, baseline_taken))
    };
    // The sites start once the parent reads the port: the baseline is taken before that.
    let _ = baseline.recv();
    println!("port {}", coordinator.local_addr().port());
    let started = cpu_seconds()?;
    let report = coordinator.wait().await?;
    let cpu = cpu_seconds()? - started;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let latencies = probe
        .join()
        .map_err(|_| anyhow::anyhow!("the API probe panicked"))??;
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
    print_latencies(latencies);
    Ok(())
}

/// Milliseconds each `GET /api/v1/job` took, by the phase it reported ("between rounds" when it
/// reported none, [`BASELINE`] before the job started).
type Latencies = std::collections::BTreeMap<String, Vec<f64>>;

/// The probe's label for its requests before any site connected.
const BASELINE: &str = "before the job";

/// Asks the API at `api` for the job's state every 20 ms until `stop`, on a runtime of its own,
/// so that the probe's own timing does not depend on the coordinator's runtime; the first 25
/// are the [`BASELINE`], after which it says so on `baseline_taken`.
fn probe_api(
    api: SocketAddr,
    token: &str,
    stop: &std::sync::atomic::AtomicBool,
    baseline_taken: std::sync::mpsc::Sender<()>,
) -> anyhow::Result<Latencies> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = reqwest::Client::new();
    let url = format!("http://{api}/api/v1/job");
    let mut latencies = Latencies::new();
    runtime.block_on(async {
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            let asked = std::time::Instant::now();
            let answer = client.get(&url).bearer_auth(token).send().await;
            // The API closes with the job's end, which the probe hears of only afterwards.
            let Ok(answer) = answer else {
                break;
            };
            let job: serde_json::Value = answer.error_for_status()?.json().await?;
            let took = asked.elapsed().as_secs_f64() * 1e3;
            let taken = latencies.get(BASELINE).map_or(0, Vec::len);
            let phase = match job["current_phase"].as_str() {
                _ if taken < 25 => BASELINE,
                Some(phase) => phase,
                None => "between rounds",
            };
            latencies.entry(phase.to_string()).or_default().push(took);
            if taken + 1 == 25 {
                let _ = baseline_taken.send(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(latencies)
    })
}

/// The API's latency per phase: median and largest, and the median as a ratio to the
/// baseline's.
fn print_latencies(latencies: Latencies) {
    let median = |values: &[f64]| {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        sorted[sorted.len() / 2]
    };
    let idle = latencies.get(BASELINE).map(|v| median(v));
    println!("API latency (GET /api/v1/job every 20 ms), by the phase it reported:");
    for (phase, values) in &latencies {
        let ratio = idle.map_or(String::new(), |idle| {
            format!(", median {:.1}x the baseline's", median(values) / idle)
        });
        println!(
            "  {phase}: {} requests, median {:.2} ms, max {:.2} ms{ratio}",
            values.len(),
            median(values),
            values.iter().copied().fold(0.0, f64::max)
        );
    }
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
