//! What the examples share: provision a federation into a directory, start a coordinator on
//! loopback, run simulated participants on a partitioned dataset, and print the round table.

use anyhow::Context;
use cairn_coordinator::api::{ApiOptions, ApiTokens};
use cairn_coordinator::config::JobSpec;
use cairn_coordinator::pki::{self, ParticipantSpec, ProvisionRequest};
use cairn_coordinator::store::RoundRecord;
use cairn_coordinator::{Coordinator, JobReport, ServeOptions, ServerTls};
use cairn_participant::client::{ClientOptions, Kit, run_many};
use cairn_participant::data::partition::Scheme;
use cairn_participant::data::{LocalData, Partition};
use cairn_participant::task::{Backend, BurnTask, Task};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// Runs `job` as a local federation: certificates under `run_dir`, coordinator on loopback over
/// mTLS, one simulated participant per job participant, each on its own IID share of `data`.
/// The monitoring API listens on `api_listen` (an ephemeral port if that one is taken), with a
/// fresh admin token; its dashboard URL is printed.
pub async fn run_local_federation(
    job: JobSpec,
    data_dir: &Path,
    run_dir: &Path,
    api_listen: SocketAddr,
) -> anyhow::Result<JobReport> {
    if run_dir.exists() {
        std::fs::remove_dir_all(run_dir)
            .with_context(|| format!("clearing {}", run_dir.display()))?;
    }
    let request = ProvisionRequest {
        out_dir: run_dir.join("federation"),
        federation: job.name.clone(),
        server_names: vec!["localhost".into(), "127.0.0.1".into()],
        participants: job
            .participants
            .iter()
            .map(|id| ParticipantSpec::parse(id))
            .collect::<Result<_, _>>()?,
        validity_days: 30,
    };
    pki::provision(&request)?;
    println!(
        "provisioned a federation CA and {} participant kits in {}",
        job.participants.len(),
        request.out_dir.display()
    );

    let api_listen = match std::net::TcpListener::bind(api_listen) {
        Ok(_) => api_listen,
        Err(_) => SocketAddr::new(api_listen.ip(), 0),
    };
    let (tokens, token) = ApiTokens::random_admin();
    let options = ServeOptions {
        job: job.clone(),
        tls: ServerTls::from_dir(&request.out_dir.join("coordinator"))?,
        state_dir: run_dir.join("state"),
        listen: "127.0.0.1:0".parse()?,
        heartbeat_interval: Duration::from_secs(5),
        keep_checkpoints: 3,
        api: Some(ApiOptions {
            listen: api_listen,
            tokens,
            linger: Duration::ZERO,
        }),
    };
    let coordinator = Coordinator::start(options).await?;
    if let Some(address) = coordinator.api_addr() {
        println!("dashboard: http://{address}/#token={token}");
        println!("API: curl -H 'Authorization: Bearer {token}' http://{address}/api/v1/job");
    }
    let url = format!("https://127.0.0.1:{}", coordinator.local_addr().port());

    let data = LocalData::load(data_dir)?;
    let n = job.participants.len();
    let mut clients: Vec<(ClientOptions, Box<dyn Task>)> = Vec::with_capacity(n);
    for (index, id) in job.participants.iter().enumerate() {
        let partition = Partition {
            scheme: Scheme::Iid,
            index,
            count: n,
            seed: job.seed,
        };
        let task = BurnTask::new(job.model.name(), data.partition(&partition)?, Backend::Cpu)?;
        let kit = Kit::load(&request.out_dir.join("participants").join(id))?;
        let mut options = ClientOptions::new(url.clone(), kit, id.clone());
        options.server_name = Some("localhost".into());
        clients.push((options, Box::new(task)));
    }
    for (id, result) in job.participants.iter().zip(run_many(clients).await) {
        result.with_context(|| format!("participant {id}"))?;
    }
    Ok(coordinator.wait().await?)
}

/// Prints one line per committed round.
pub fn print_round_table(rounds: &[RoundRecord]) {
    println!();
    println!("round  participants  train loss  eval loss  eval accuracy  duration");
    for record in rounds {
        let o = &record.outcome;
        println!(
            "{:>5}  {:>5}/{:<6}  {:>10.4}  {:>9}  {:>13}  {:>7.2}s",
            o.round,
            o.contributors.len(),
            o.selected.len(),
            o.train_loss,
            o.eval_loss.map_or("-".into(), |l| format!("{l:.4}")),
            o.eval_accuracy.map_or("-".into(), |a| format!("{a:.4}")),
            record.duration_s
        );
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
