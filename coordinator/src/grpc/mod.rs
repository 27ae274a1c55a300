//! The gRPC layer: the only module that touches wire types. It serves `cairn.v1.Federation` over
//! mutual TLS only (there is no plaintext mode), turns what each participant's session does into
//! [`round::Event`](crate::round::Event)s, and carries out the round machine's commands
//! (send models in chunks, start deadline timers, commit rounds).
//!
//! - `session`: one task per connected participant: identity from its verified certificate,
//!   the `Hello` handshake, heartbeats, reassembling and checking updates.
//! - `driver`: one task that owns the round machine and executes its commands.
//! - `secure`: secure-aggregation messages between the wire and the round machine.
//! - `countersign`: sends the round records to the participants and keeps their
//!   countersignatures.
//! - `revocation`: refuses a session whose certificate the federation CA revoked.

mod countersign;
mod driver;
mod events;
mod revocation;
mod secure;
mod session;
mod tls;

use crate::Error;
use crate::config::JobSpec;
use crate::model::{self, TensorShape};
use crate::store::{RoundRecord, Store};
use crate::strategy::ServerOptimizer;
use cairn_proto::metrics::Metric;
use cairn_proto::v1::federation_server::FederationServer;
use cairn_proto::v1::{CoordinatorMessage, TensorSpec};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::Status;
use tonic::transport::Server;

/// The coordinator's TLS material: its certificate and key, and the federation CA that every
/// client certificate must chain to.
#[derive(Clone)]
pub struct ServerTls {
    cert_pem: String,
    key_pem: String,
    ca_pem: String,
    /// The federation CA's revocation list, verified against `ca_pem`; `None`: none given.
    revocations: Option<Arc<cairn_identity::RevocationList>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerTls { .. }")
    }
}

impl ServerTls {
    /// Reads `cert.pem`, `key.pem` and `ca.pem` from a directory written by `provision`
    /// (`<out>/coordinator`).
    pub fn from_dir(dir: &Path) -> Result<ServerTls, Error> {
        let read = |name: &str, marker: &'static str| -> Result<String, Error> {
            let path = dir.join(name);
            let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
                what: format!("reading {}", path.display()),
                source,
            })?;
            if !text.contains(marker) {
                return Err(Error::NoPemBlock { path, marker });
            }
            Ok(text)
        };
        Ok(ServerTls {
            cert_pem: read("cert.pem", "BEGIN CERTIFICATE")?,
            key_pem: read("key.pem", "PRIVATE KEY")?,
            ca_pem: read("ca.pem", "BEGIN CERTIFICATE")?,
            revocations: None,
        })
    }

    /// The same TLS material with the federation CA's revocation list at `crl` (`ca/crl.pem`
    /// from `revoke`): sessions with a certificate on it are refused. The list must be signed by
    /// this directory's CA; otherwise, or when it is malformed, an error names the file.
    pub fn with_revocations(self, crl: &Path) -> Result<ServerTls, Error> {
        let list = crate::pki::load_revocations(crl, &self.ca_pem)?;
        tracing::info!(
            "revocation list {} (number {}): {} revoked certificate(s)",
            crl.display(),
            list.number(),
            list.serials().len()
        );
        Ok(ServerTls {
            revocations: Some(Arc::new(list)),
            ..self
        })
    }
}

/// How to serve one job.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The job.
    pub job: JobSpec,
    /// TLS material.
    pub tls: ServerTls,
    /// Durable state directory; a directory of the same job resumes after its last committed
    /// round.
    pub state_dir: PathBuf,
    /// Address to listen on (port 0 picks a free one).
    pub listen: SocketAddr,
    /// Interval at which both sides send heartbeats; a session silent for three intervals is
    /// considered gone.
    pub heartbeat_interval: Duration,
    /// Checkpoints to keep.
    pub keep_checkpoints: usize,
    /// The monitoring API, if it is to be served.
    pub api: Option<crate::api::ApiOptions>,
}

/// What a finished job leaves behind.
#[derive(Debug, Clone)]
pub struct JobReport {
    /// Every committed round, in order.
    pub rounds: Vec<RoundRecord>,
    /// Whether every round of the job completed.
    pub succeeded: bool,
    /// Why the job ended.
    pub reason: String,
    /// Where the final global model was written.
    pub model_path: PathBuf,
}

/// State shared by the sessions and the driver.
struct Shared {
    job: JobSpec,
    /// The job's evaluation metrics, in its order: what every evaluation report must carry.
    metrics: Vec<Metric>,
    layout: Vec<TensorShape>,
    /// The tensors the server optimiser's state is checkpointed as (none for FedAvg).
    optimizer_layout: Vec<TensorShape>,
    /// Values in the model, which every update must have.
    n_values: usize,
    wire_layout: Vec<TensorSpec>,
    heartbeat_interval: Duration,
    events: events::Events,
    connections: Mutex<HashMap<String, Connection>>,
    next_serial: AtomicU64,
    /// What the monitoring API shows; also holds the byte counters.
    monitor: Arc<crate::api::Monitor>,
    finished: AtomicBool,
    /// Set by [`Stopper::hand_over`]: the job ends here but not for the participants.
    hand_over: AtomicBool,
    /// The round records and their countersignatures.
    ledger: countersign::Ledger,
}

/// A live session's way back to its participant.
#[derive(Clone)]
struct Connection {
    serial: u64,
    outbox: mpsc::Sender<Result<CoordinatorMessage, Status>>,
    /// Ends the session with the reason given, through the session's own refusal path.
    expel: mpsc::Sender<String>,
}

/// A running coordinator.
pub struct Coordinator {
    local_addr: SocketAddr,
    api_addr: Option<SocketAddr>,
    monitor: Arc<crate::api::Monitor>,
    stopper: Stopper,
    /// The round driver; taken by [`Coordinator::wait`].
    driver: Option<tokio::task::JoinHandle<Result<JobReport, Error>>>,
}

/// A coordinator dropped before its job was waited for stops the job: its driver thread would
/// otherwise wait for events forever, and a runtime shutting down waits for it.
impl Drop for Coordinator {
    fn drop(&mut self) {
        if self.driver.is_some() {
            self.stopper.stop("the coordinator was dropped");
        }
    }
}

/// Ends a running job early; see [`Coordinator::stopper`].
#[derive(Clone)]
pub struct Stopper(Arc<Shared>);

impl Stopper {
    /// Ends the job now: the running round is abandoned (committed rounds stay in the state
    /// directory, so the job resumes from them if started again), participants are told `reason`
    /// and that the job is over, and the server stops. [`Coordinator::wait`] then reports the
    /// job as not succeeded.
    pub fn stop(&self, reason: &str) {
        self.0.events.send(crate::round::Event::Stop {
            reason: reason.to_string(),
        });
    }

    /// Like [`Stopper::stop`], but the job goes on elsewhere (another coordinator replica takes
    /// it over from the same state): participants are not told it is over; their sessions end
    /// with `UNAVAILABLE`, so they reconnect, and find whichever coordinator then runs it.
    pub fn hand_over(&self, reason: &str) {
        self.0.hand_over.store(true, Ordering::SeqCst);
        self.stop(reason);
    }
}

impl Coordinator {
    /// Binds the listen address, starts the mTLS gRPC server and the round driver.
    pub async fn start(options: ServeOptions) -> Result<Coordinator, Error> {
        // tonic builds its rustls configs with the process-wide provider; install ring's
        // explicitly so that nothing depends on which providers happen to be compiled in.
        let _ = rustls::crypto::ring::default_provider().install_default();
        options.job.validate()?;
        if options.heartbeat_interval.is_zero() {
            return Err(Error::ZeroHeartbeat);
        }
        // The job's model file is the only source of the layout; a checkpoint resumed below must
        // have the same.
        let (layout, initial) = model::read_model(&options.job.model.initial)?;
        tracing::info!(
            "initial model {}: {} tensors, {} values",
            options.job.model.initial.display(),
            layout.len(),
            model::n_values(&layout)
        );
        let wire_layout = layout
            .iter()
            .map(|t| TensorSpec::new(&*t.name, &t.shape))
            .collect();
        let optimizer_layout =
            ServerOptimizer::state_layout(&options.job.server_optimizer, model::n_values(&layout));
        let (store, mut resume) = Store::open(
            &options.state_dir,
            &options.job,
            &layout,
            &optimizer_layout,
            options.keep_checkpoints,
        )?;
        let signatures = Arc::new(crate::store::signatures::Countersignatures::open(
            &options.state_dir,
        )?);
        let monitor = Arc::new(crate::api::Monitor::new(
            options.job.clone(),
            resume.rounds.clone(),
            resume.started_at.clone(),
            signatures.clone(),
        ));
        monitor.set_chain_head(store.chain_head_sha256());
        let ledger = countersign::Ledger::new(std::mem::take(&mut resume.lines), signatures);
        let (stop_api, api_stopped) = tokio::sync::oneshot::channel::<()>();
        let api_addr = match &options.api {
            None => None,
            Some(api) => {
                let address = crate::api::serve(api, monitor.clone(), layout.clone(), async {
                    let _ = api_stopped.await;
                })
                .await?;
                tracing::info!(
                    "monitoring API on http://{address}/ (dashboard), /api/v1, /metrics, /healthz"
                );
                Some(address)
            }
        };
        let api_linger = options
            .api
            .as_ref()
            .map_or(Duration::ZERO, |api| api.linger);
        let (events, events_rx) = events::inbox();
        let shared = Arc::new(Shared {
            job: options.job.clone(),
            metrics: options.job.metrics(),
            n_values: model::n_values(&layout),
            layout,
            optimizer_layout,
            wire_layout,
            heartbeat_interval: options.heartbeat_interval,
            events,
            connections: Mutex::new(HashMap::new()),
            next_serial: AtomicU64::new(1),
            monitor: monitor.clone(),
            finished: AtomicBool::new(false),
            hand_over: AtomicBool::new(false),
            ledger,
        });
        let tls = tls::server_config(&options.tls)?;
        let (listener, local_addr) = crate::bind(options.listen, "the gRPC server").await?;
        // Sessions refused at the door (revoked) or by the service (not in the job) share one
        // rate-limited log.
        let refused_sessions = Arc::new(tls::Refusals::new("session"));
        let service = FederationServer::new(session::FederationService {
            shared: shared.clone(),
            refusals: refused_sessions.clone(),
        })
        .max_decoding_message_size(cairn_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(cairn_proto::MAX_MESSAGE_BYTES);
        let service = tonic::service::interceptor::InterceptedService::new(
            service,
            revocation::RevocationCheck {
                list: options.tls.revocations.clone(),
                refusals: refused_sessions,
            },
        );
        let router = Server::builder()
            .http2_keepalive_interval(Some(options.heartbeat_interval))
            .tcp_nodelay(true)
            .add_service(service);
        let (stop_server, stop_signal) = tokio::sync::oneshot::channel::<()>();
        let incoming = tls::incoming(listener, tls, monitor.clone());
        let server = tokio::spawn(async move {
            router
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stop_signal.await;
                })
                .await
        });
        // A job whose rounds are all committed waits for nobody (the driver says it is complete).
        let waiting = match (resume.rounds.len() as u64) < options.job.rounds {
            true => format!(
                "; waiting for {} participants",
                options.job.min_participants
            ),
            false => String::new(),
        };
        tracing::info!(
            job = %options.job.name,
            address = %local_addr,
            rounds = options.job.rounds,
            participants = options.job.participants.len(),
            "coordinator listening (mTLS only){waiting}"
        );
        let stopper = Stopper(shared.clone());
        let driver = tokio::spawn(async move {
            let running = tokio::task::spawn_blocking(move || {
                driver::run(shared, store, resume, initial, events_rx)
            });
            let report = running
                .await
                .unwrap_or_else(|source| Err(Error::DriverStopped { source }));
            // Give participants a moment to read `JobFinished` and hang up, then stop serving.
            let _ = stop_server.send(());
            let grace = tokio::time::timeout(Duration::from_secs(5), server);
            if let Ok(Ok(Err(e))) = grace.await {
                tracing::warn!("server ended with an error: {e}");
            }
            tokio::spawn(async move {
                tokio::time::sleep(api_linger).await;
                let _ = stop_api.send(());
            });
            report
        });
        Ok(Coordinator {
            local_addr,
            api_addr,
            monitor,
            stopper,
            driver: Some(driver),
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address the monitoring API listens on, when it is served.
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api_addr
    }

    /// What the monitoring API shows.
    pub fn monitor(&self) -> &Arc<crate::api::Monitor> {
        &self.monitor
    }

    /// A handle that ends the job early, usable while another task waits for it.
    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    /// Waits for the job to end.
    pub async fn wait(mut self) -> Result<JobReport, Error> {
        let Some(driver) = self.driver.as_mut() else {
            return Err(Error::EventsClosed);
        };
        // Taken only once it has ended: a wait given up on (a timeout) drops a coordinator
        // whose job then stops.
        let ended = driver.await;
        self.driver = None;
        ended.map_err(|source| Error::DriverStopped { source })?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(dir: &Path, model: &Path) -> ServeOptions {
        let job = JobSpec::parse(&format!(
            "name: t\nmodel: {{initial: {}}}\nrounds: 1\nmin_participants: 1\nparticipants: [a]\n\
             secure_aggregation: {{enabled: false}}\n",
            model.display()
        ))
        .unwrap();
        ServeOptions {
            job,
            // Never used: starting fails before the server is set up.
            tls: ServerTls {
                cert_pem: String::new(),
                key_pem: String::new(),
                ca_pem: String::new(),
                revocations: None,
            },
            state_dir: dir.join("state"),
            listen: "127.0.0.1:0".parse().unwrap(),
            heartbeat_interval: Duration::from_secs(1),
            keep_checkpoints: 1,
            api: None,
        }
    }

    #[tokio::test]
    async fn a_missing_or_unusable_model_file_stops_the_start_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nowhere.safetensors");
        let Err(err) = Coordinator::start(options(dir.path(), &missing)).await else {
            panic!("started without its model file");
        };
        let message = err.to_string();
        assert!(
            message.contains("reading model file") && message.contains("nowhere.safetensors"),
            "{message}"
        );
        assert!(
            !dir.path().join("state").exists(),
            "nothing is written before the model is read"
        );
        let garbage = dir.path().join("garbage.safetensors");
        std::fs::write(&garbage, b"not a model").unwrap();
        let Err(err) = Coordinator::start(options(dir.path(), &garbage)).await else {
            panic!("started with a file that is no model");
        };
        assert!(matches!(err, Error::NotSafetensors { .. }), "{err:?}");
    }
}
