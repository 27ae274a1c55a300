//! A whole federation in one process, for trying a model before the sites deploy it: a
//! federation CA and one kit per participant of the job in a directory, a real coordinator on
//! loopback with mutual TLS and (unless the job turns it off) secure aggregation, and one
//! [`Task`] per participant, each with its own certificate, connection and data. Nothing is
//! simulated but the network distance. Behind the `simulation` feature, the only part of the
//! participant that links the coordinator.

use crate::Error;
use crate::client::{ClientOptions, Kit};
use crate::task::{JobTask, Task};
use cairn_coordinator::api::{ApiOptions, ApiTokens};
use cairn_coordinator::pki::{self, ParticipantSpec, ProvisionRequest};
use cairn_coordinator::{Coordinator, ServeOptions, ServerTls};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use cairn_coordinator::JobReport;
pub use cairn_coordinator::config::JobSpec;
pub use cairn_coordinator::store::RoundRecord;

/// What every site of `job` is told when it joins (its metrics and standardisation), checked as
/// a participant checks it: for scoring a model outside the federation the way its sites do.
pub fn job_task(job: &JobSpec) -> Result<JobTask, Error> {
    crate::client::job_task(Some(&job.task_spec()))
}

/// Where a local federation runs and what it shows.
#[derive(Debug, Clone)]
pub struct LocalFederation {
    /// The job; its `participants` are the sites, in the order of the tasks.
    pub job: JobSpec,
    /// Certificates (`federation/`) and the coordinator's state (`state/`, with the final
    /// model) go here; those two are cleared first, anything else in it is left alone.
    pub run_dir: PathBuf,
    /// Where the monitoring API and dashboard listen (another port if that one is busy), with a
    /// fresh admin token whose URL is printed; `None`: no API.
    pub api_listen: Option<SocketAddr>,
    /// How long the API keeps serving after the job ended (`Duration::MAX`: as long as the
    /// process runs).
    pub api_linger: Duration,
}

impl LocalFederation {
    /// `job` in `run_dir`, without the monitoring API.
    pub fn new(job: JobSpec, run_dir: impl Into<PathBuf>) -> LocalFederation {
        LocalFederation {
            job,
            run_dir: run_dir.into(),
            api_listen: None,
            api_linger: Duration::ZERO,
        }
    }

    /// Runs the job to its end with one task per participant of the job, in order; returns the
    /// coordinator's report (every committed round and the final model's path).
    pub async fn run(self, tasks: Vec<Box<dyn Task>>) -> Result<JobReport, Error> {
        let LocalFederation {
            job,
            run_dir,
            api_listen,
            api_linger,
        } = self;
        if tasks.len() != job.participants.len() {
            return Err(Error::Simulation(format!(
                "the job lists {} participants, {} tasks were given",
                job.participants.len(),
                tasks.len()
            )));
        }
        for dir in [run_dir.join("federation"), run_dir.join("state")] {
            if dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(|source| Error::Io {
                    what: format!("clearing {}", dir.display()),
                    source,
                })?;
            }
        }
        let coordinator_error = |e: cairn_coordinator::Error| Error::Simulation(e.to_string());
        let request = ProvisionRequest {
            out_dir: run_dir.join("federation"),
            federation: job.name.clone(),
            server_names: vec!["localhost".into(), "127.0.0.1".into()],
            participants: job
                .participants
                .iter()
                .map(|id| ParticipantSpec::parse(id))
                .collect::<Result<_, _>>()
                .map_err(coordinator_error)?,
            // Every participant runs in this process, so its key is made here too.
            with_keys: true,
            validity_days: 30,
        };
        pki::provision(&request).map_err(coordinator_error)?;
        println!(
            "provisioned a federation CA and {} participant kits in {}",
            job.participants.len(),
            request.out_dir.display()
        );
        let api = match api_listen {
            None => None,
            Some(listen) => {
                let listen = match std::net::TcpListener::bind(listen) {
                    Ok(_) => listen,
                    Err(_) => SocketAddr::new(listen.ip(), 0),
                };
                let (tokens, token) =
                    ApiTokens::of_state_dir(&run_dir.join("state")).map_err(coordinator_error)?;
                Some((
                    ApiOptions {
                        listen,
                        tokens,
                        linger: api_linger,
                    },
                    token,
                ))
            }
        };
        let token = api.as_ref().map(|(_, token)| token.clone());
        let options = ServeOptions {
            job: job.clone(),
            tls: ServerTls::from_dir(&request.out_dir.join("coordinator"))
                .map_err(coordinator_error)?,
            state_dir: run_dir.join("state"),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            heartbeat_interval: Duration::from_secs(5),
            keep_checkpoints: 3,
            api: api.map(|(options, _)| options),
        };
        let coordinator = Coordinator::start(options)
            .await
            .map_err(coordinator_error)?;
        if let (Some(address), Some(token)) = (coordinator.api_addr(), token) {
            println!("dashboard: http://{address}/#token={token}");
            println!("API: curl -H 'Authorization: Bearer {token}' http://{address}/api/v1/job");
        }
        let url = format!("https://127.0.0.1:{}", coordinator.local_addr().port());
        let mut sites = tokio::task::JoinSet::new();
        for (id, task) in job.participants.iter().zip(tasks) {
            let kit = Kit::load(&request.out_dir.join("participants").join(id))?;
            let mut options = ClientOptions::new(url.clone(), kit, id.clone());
            options.server_name = Some("localhost".into());
            // Whoever runs the simulation wrote the job: its sites take its choice of secure
            // aggregation instead of refusing a job in the clear.
            options.policy.allow_plaintext = !job.secure_aggregation.enabled;
            let id = id.clone();
            sites.spawn(async move { (crate::client::run(options, task).await, id) });
        }
        // A site that stops with an error stops the simulation at once, with that error: the
        // job could otherwise wait for it forever (dropping the set stops the other sites).
        while let Some(joined) = sites.join_next().await {
            let (result, id) =
                joined.map_err(|e| Error::Simulation(format!("a participant's task: {e}")))?;
            result.map_err(|e| Error::Simulation(format!("participant {id}: {e}")))?;
        }
        coordinator.wait().await.map_err(coordinator_error)
    }
}
