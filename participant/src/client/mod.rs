//! The participant's connection to the coordinator: mutual-TLS gRPC with the participant's kit,
//! one long-lived session, heartbeats, and reconnection with exponential backoff and jitter when
//! the coordinator is away. It drives a [`Task`]: receive the global model, train, send back the
//! weighted update, evaluate new models, until the coordinator says the job is finished.

mod history;
pub mod identity;
mod resume;
mod secure;

use crate::Error;
use crate::data::FeatureStatistics;
use crate::policy::{Policy, Refusal, Started};
use crate::task::{EpochProgress, JobTask, Task, TensorShape, TrainingConfig};
use cairn_proto::metrics::{Metric, Totals};
use cairn_proto::transfer::{Assembler, split_owned};
use cairn_proto::v1::coordinator_message::Body as Inbound;
use cairn_proto::v1::federation_client::FederationClient;
use cairn_proto::v1::participant_message::Body as Outbound;
use cairn_proto::v1::{
    CoordinatorMessage, EvaluateInstruction, Heartbeat, Hello, ParticipantMessage, ResumeUpdate,
    TensorSpec, TrainInstruction, TransferHeader, UpdateHeader, Welcome,
};
use cairn_secagg::privacy::DistributedDp;
use rand::Rng;
use resume::Unfinished;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Streaming};

/// A participant's kit from `cairn-coordinator provision`: its certificate and key, and the
/// federation CA.
#[derive(Clone)]
pub struct Kit {
    dir: PathBuf,
    identity: Identity,
    ca: Certificate,
    /// The CA (PEM), against which neighbours' certificates are verified in secure aggregation.
    ca_pem: String,
    /// This participant's certificate (DER), advertised to its neighbours.
    certificate_der: Vec<u8>,
    /// Signs with the certificate's key.
    signer: Arc<identity::KitSigner>,
}

impl std::fmt::Debug for Kit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kit")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Kit {
    /// Reads `cert.pem`, `key.pem` and `ca.pem` from `dir`.
    pub fn load(dir: &Path) -> Result<Kit, Error> {
        let read = |name: &str, marker: &str| -> Result<String, Error> {
            let path = dir.join(name);
            let text = std::fs::read_to_string(&path).map_err(|e| Error::Kit {
                path: path.clone(),
                reason: format!("cannot read: {e}"),
            })?;
            if !text.contains(marker) {
                return Err(Error::Kit {
                    path,
                    reason: format!("holds no PEM block with {marker:?}"),
                });
            }
            Ok(text)
        };
        let cert = read("cert.pem", "BEGIN CERTIFICATE")?;
        let key = read("key.pem", "PRIVATE KEY")?;
        let ca = read("ca.pem", "BEGIN CERTIFICATE")?;
        let kit_error = |name: &str, reason: String| Error::Kit {
            path: dir.join(name),
            reason,
        };
        let signer =
            identity::KitSigner::from_pem(&key).map_err(|e| kit_error("key.pem", e.to_string()))?;
        let certificate_der = cairn_identity::certificate_der(&cert, "cert.pem")
            .map_err(|e| kit_error("cert.pem", e.to_string()))?;
        Ok(Kit {
            dir: dir.to_path_buf(),
            identity: Identity::from_pem(cert, key),
            ca: Certificate::from_pem(&ca),
            ca_pem: ca,
            certificate_der,
            signer: Arc::new(signer),
        })
    }
}

impl Kit {
    /// The federation CA's revocation list at `path` (`ca/crl.pem` from `cairn-coordinator
    /// revoke`), verified against this kit's CA and current: a list signed by another CA,
    /// malformed, or past its next update is refused with an error naming the file.
    pub fn revocations(&self, path: &Path) -> Result<cairn_identity::RevocationList, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Kit {
            path: path.to_path_buf(),
            reason: format!("cannot read: {e}"),
        })?;
        cairn_identity::RevocationList::from_pem(&text, &self.ca_pem)
            .and_then(cairn_identity::RevocationList::current)
            .map_err(|source| Error::RevocationList {
                path: path.to_path_buf(),
                source,
            })
    }
}

/// How to reach the coordinator and how hard to try.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// `https://host:port` of the coordinator.
    pub coordinator: String,
    /// Name to verify the coordinator's certificate against; defaults to the URL's host.
    pub server_name: Option<String>,
    /// This participant's kit.
    pub kit: Kit,
    /// Name used in log lines (the participant id).
    pub label: String,
    /// First reconnection delay; doubles up to `max_backoff`.
    pub initial_backoff: Duration,
    /// Longest reconnection delay.
    pub max_backoff: Duration,
    /// Give up after this many failed connection attempts in a row (`None`: never).
    pub max_attempts: Option<u32>,
    /// Fault injection: a filter that may drop, delay or cut messages in either direction.
    #[cfg(feature = "fault-injection")]
    pub filter: Option<Arc<dyn Filter>>,
    /// After a job ends, wait for the coordinator's next one instead of returning, and wait
    /// out a job that does not list this participant: for a coordinator that runs job after
    /// job (the FederatedJob operator).
    pub keep_going: bool,
    /// What this site accepts from the coordinator (secure aggregation required, the least
    /// roster, its partners); nothing the coordinator sends changes it.
    pub policy: Policy,
    /// The file where this site keeps the last round record it countersigned in each job.
    pub history: PathBuf,
}

/// What a [`Filter`] does with one message.
#[cfg(feature = "fault-injection")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Deliver it.
    Pass,
    /// Lose it silently, as a network partition would.
    Drop,
    /// Deliver it after this long (later messages wait behind it).
    Delay(Duration),
    /// Cut the connection, as a crash or a reset would.
    Cut,
}

/// Fault injection in the participant's transport, for tests of dropouts, partitions and slow
/// participants: it sees every message in both directions and decides its fate. Only in builds
/// with the `fault-injection` feature (the tests').
#[cfg(feature = "fault-injection")]
pub trait Filter: Send + Sync + std::fmt::Debug {
    /// A message about to be sent to the coordinator.
    fn outbound(&self, _message: &ParticipantMessage) -> Verdict {
        Verdict::Pass
    }
    /// A message just received from the coordinator.
    fn inbound(&self, _message: &CoordinatorMessage) -> Verdict {
        Verdict::Pass
    }
}

impl ClientOptions {
    /// Options with default backoff (0.5 s doubling to 30 s, retrying forever) and the
    /// history file in the kit's directory.
    pub fn new(
        coordinator: impl Into<String>,
        kit: Kit,
        label: impl Into<String>,
    ) -> ClientOptions {
        ClientOptions {
            coordinator: coordinator.into(),
            server_name: None,
            history: kit.dir.join(HISTORY_FILE),
            kit,
            label: label.into(),
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            max_attempts: None,
            #[cfg(feature = "fault-injection")]
            filter: None,
            keep_going: false,
            policy: Policy::default(),
        }
    }
}

/// The history file's name in the kit directory, unless `--history` says otherwise.
pub const HISTORY_FILE: &str = "history.json";

/// What a participant did over a whole job.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunSummary {
    /// Rounds this participant trained in.
    pub rounds_trained: u64,
    /// Evaluations it reported.
    pub evaluations: u64,
    /// Its last evaluation of a global model: the metrics' sums over its test examples.
    pub last_evaluation: Option<Totals>,
    /// The coordinator's reason for finishing (the last job's, with `keep_going`).
    pub finish_reason: String,
    /// Jobs that ended while it took part.
    pub jobs_finished: u64,
}

/// Why a session ended.
enum SessionEnd {
    /// The job is finished.
    Finished(String),
    /// Connection trouble; worth reconnecting. `welcomed` tells whether the session got as far
    /// as the coordinator's `Welcome` (then the backoff starts over).
    Retry { reason: String, welcomed: bool },
}

/// What stops a session before its loop is done: the session ended (the job finished, or the
/// connection is worth retrying), or this participant cannot go on at all.
enum Interrupt {
    /// The session is over; [`run`] decides whether to reconnect.
    End(SessionEnd),
    /// An error that no reconnection cures (a refusal, a model that does not fit).
    Failed(Error),
}

impl From<Error> for Interrupt {
    fn from(error: Error) -> Interrupt {
        Interrupt::Failed(error)
    }
}

impl Interrupt {
    /// A session to retry after the coordinator's `Welcome`, with the reason for the logs.
    fn retry(reason: impl Into<String>) -> Interrupt {
        Interrupt::End(SessionEnd::Retry {
            reason: reason.into(),
            welcomed: true,
        })
    }

    /// The session's outcome for [`run`].
    fn outcome(self) -> Result<SessionEnd, Error> {
        match self {
            Interrupt::End(end) => Ok(end),
            Interrupt::Failed(error) => Err(error),
        }
    }
}

/// Runs one participant until the coordinator says the job is finished.
pub async fn run(options: ClientOptions, task: Box<dyn Task>) -> Result<RunSummary, Error> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let label = options.label.clone();
    let mut task = Some(task);
    let mut summary = RunSummary::default();
    let mut backoff = options.initial_backoff;
    let mut failures = 0u32;
    let mut started = Started::default();
    let mut unfinished = None;
    loop {
        let ended = match session(
            &options,
            &mut task,
            &mut summary,
            &mut started,
            &mut unfinished,
        )
        .await
        {
            // A site that follows job after job refuses this one and waits for the next.
            Err(error @ Error::HistoryForked { .. }) if options.keep_going => {
                tracing::error!(participant = %label, "{label}: {error}");
                SessionEnd::Retry {
                    reason:
                        "waiting for a job whose history does not fork from what this site signed"
                            .into(),
                    welcomed: false,
                }
            }
            ended => ended?,
        };
        match ended {
            SessionEnd::Finished(reason) => {
                started = Started::default();
                unfinished = None;
                tracing::info!(participant = %label, "{label}: job finished ({reason})");
                summary.finish_reason = reason;
                summary.jobs_finished += 1;
                if !options.keep_going {
                    return Ok(summary);
                }
                tracing::info!(participant = %label, "{label}: waiting for the coordinator's next job");
                backoff = options.initial_backoff;
                failures = 0;
                tokio::time::sleep(backoff).await;
            }
            SessionEnd::Retry { reason, welcomed } => {
                if welcomed {
                    backoff = options.initial_backoff;
                    failures = 0;
                }
                failures += 1;
                if options.max_attempts.is_some_and(|max| failures >= max) {
                    return Err(Error::Protocol(format!(
                        "cannot reach the coordinator at {} after {failures} attempts: {reason}",
                        options.coordinator
                    )));
                }
                // Full jitter (between half and all of the backoff) so that many participants
                // that lost the coordinator together do not return in lockstep.
                let delay = backoff.mul_f64(rand::rng().random_range(0.5..=1.0));
                tracing::warn!(participant = %label, "{label}: {reason}; reconnecting in {:.1} s", delay.as_secs_f64());
                tokio::time::sleep(delay).await;
                backoff = (backoff * 2).min(options.max_backoff);
            }
        }
    }
}

/// Runs several participants concurrently, each with its own connection and task, and returns
/// each one's result in the same order.
pub async fn run_many(
    participants: Vec<(ClientOptions, Box<dyn Task>)>,
) -> Vec<Result<RunSummary, Error>> {
    let handles: Vec<_> = participants
        .into_iter()
        .map(|(options, task)| tokio::spawn(run(options, task)))
        .collect();
    let mut results = Vec::with_capacity(handles.len());
    for handle in handles {
        results.push(
            handle
                .await
                .unwrap_or_else(|e| Err(Error::Protocol(format!("participant task failed: {e}")))),
        );
    }
    results
}

/// Whether a status from the coordinator means "don't come back".
fn is_refusal(code: Code) -> bool {
    matches!(
        code,
        Code::PermissionDenied
            | Code::Unauthenticated
            | Code::InvalidArgument
            | Code::FailedPrecondition
    )
}

/// A session that ends before the coordinator's `Welcome`, to be retried.
fn retry_unwelcomed(reason: String) -> Result<SessionEnd, Error> {
    Ok(SessionEnd::Retry {
        reason,
        welcomed: false,
    })
}

/// Connects with the kit's identity; the coordinator's certificate must chain to the kit's CA
/// and name `server_name`.
pub async fn connect(options: &ClientOptions) -> Result<Channel, Error> {
    let coordinator = &options.coordinator;
    let endpoint =
        Endpoint::from_shared(coordinator.clone()).map_err(|source| Error::CoordinatorUrl {
            url: coordinator.clone(),
            source,
        })?;
    let server_name = match &options.server_name {
        Some(name) => name.clone(),
        None => endpoint
            .uri()
            .host()
            .unwrap_or("localhost")
            .trim_matches(['[', ']'])
            .to_string(),
    };
    let tls = ClientTlsConfig::new()
        .ca_certificate(options.kit.ca.clone())
        .identity(options.kit.identity.clone())
        .domain_name(server_name);
    endpoint
        .tls_config(tls)
        .map_err(|source| Error::Tls {
            coordinator: coordinator.clone(),
            source,
        })?
        .connect_timeout(Duration::from_secs(10))
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_while_idle(true)
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|source| Error::Unreachable {
            coordinator: coordinator.clone(),
            source,
        })
}

/// `error` and its causes, outermost first: the transport's own message alone ("transport
/// error") does not say what failed.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        // Some errors already print their source's message (hyper's "tcp connect error"): it
        // is said once.
        let said = inner.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = inner.source();
    }
    text
}

fn outbound(body: Outbound) -> ParticipantMessage {
    ParticipantMessage { body: Some(body) }
}

async fn session(
    options: &ClientOptions,
    task: &mut Option<Box<dyn Task>>,
    summary: &mut RunSummary,
    started: &mut Started,
    unfinished: &mut Option<Unfinished>,
) -> Result<SessionEnd, Error> {
    let label = &options.label;
    let channel = match connect(options).await {
        Ok(channel) => channel,
        Err(error) => return retry_unwelcomed(error_chain(&error)),
    };
    let mut client = FederationClient::new(channel)
        .max_decoding_message_size(cairn_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(cairn_proto::MAX_MESSAGE_BYTES);
    let (outbox, receiver) = mpsc::channel::<ParticipantMessage>(16);
    #[cfg(feature = "fault-injection")]
    let receiver = match &options.filter {
        None => receiver,
        Some(filter) => filtered(receiver, filter.clone()),
    };
    let hello = Hello {
        protocol_version: cairn_proto::PROTOCOL_VERSION,
        client_version: format!("cairn-participant {}", env!("CARGO_PKG_VERSION")),
        resume: unfinished.as_ref().map(Unfinished::request),
    };
    // The channel has room: nothing else has been queued yet.
    let _ = outbox.try_send(outbound(Outbound::Hello(hello)));
    let mut inbound = match client.session(ReceiverStream::new(receiver)).await {
        Ok(response) => Inbox {
            stream: response.into_inner(),
            #[cfg(feature = "fault-injection")]
            filter: options.filter.clone(),
        },
        Err(status) if is_refusal(status.code()) => {
            let (key, value) = cairn_proto::NOT_IN_JOB;
            let not_in_job = status.metadata().get(key).is_some_and(|v| v == value);
            if options.keep_going && not_in_job {
                return retry_unwelcomed(format!(
                    "{}; waiting for a job that lists this participant",
                    status.message()
                ));
            }
            return Err(Error::Refused(status.message().to_string()));
        }
        Err(status) => return retry_unwelcomed(format!("session refused: {}", status.message())),
    };
    let welcome = match inbound.next().await {
        Ok(Some(Inbound::Welcome(welcome))) => welcome,
        Ok(Some(Inbound::Finished(finished))) => return Ok(SessionEnd::Finished(finished.reason)),
        Ok(Some(_)) => {
            return retry_unwelcomed("the coordinator did not start with Welcome".into());
        }
        Ok(None) => return retry_unwelcomed("the coordinator closed the session".into()),
        Err(interrupt) => return interrupt.outcome(),
    };
    tracing::info!(
        participant = %label,
        "{label}: joined job {:?} as {:?}",
        welcome.job_name,
        welcome.participant_id
    );
    let job = job_task(welcome.task.as_ref())?;
    if let Some(task) = task.as_mut() {
        task.prepare(&job)?;
    }
    let history = history::History::open(&options.history, &welcome.job_name)?;
    history.check_head(welcome.chain.as_ref())?;
    if send(
        &outbox,
        outbound(Outbound::SignedThrough(history.signed_through())),
    )
    .await
    .is_err()
    {
        return retry_unwelcomed("the session closed after Welcome".into());
    }
    let interval = Duration::from_secs(u64::from(welcome.heartbeat_interval_s.max(1)));
    let heartbeats = tokio::spawn(send_heartbeats(outbox.clone(), interval));
    let mut serving = Serving {
        options,
        welcome,
        inbound,
        outbox,
        task,
        summary,
        started,
        unfinished,
        secure: None,
        history,
    };
    let interrupt = serving.serve().await;
    heartbeats.abort();
    interrupt.outcome()
}

async fn send_heartbeats(outbox: mpsc::Sender<ParticipantMessage>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    loop {
        ticker.tick().await;
        let sent_at_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        if outbox
            .send(outbound(Outbound::Heartbeat(Heartbeat { sent_at_unix_ms })))
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Forwards outbound messages through `filter`, returning the receiving end for the gRPC stream.
#[cfg(feature = "fault-injection")]
fn filtered(
    mut receiver: mpsc::Receiver<ParticipantMessage>,
    filter: Arc<dyn Filter>,
) -> mpsc::Receiver<ParticipantMessage> {
    let (sender, filtered) = mpsc::channel(16);
    tokio::spawn(async move {
        while let Some(message) = receiver.recv().await {
            match filter.outbound(&message) {
                Verdict::Pass => {}
                Verdict::Drop => continue,
                Verdict::Delay(delay) => tokio::time::sleep(delay).await,
                // Dropping both ends closes the request stream: the coordinator sees the session end.
                Verdict::Cut => return,
            }
            if sender.send(message).await.is_err() {
                return;
            }
        }
    });
    filtered
}

/// The coordinator's messages, through the fault-injection filter when there is one.
struct Inbox {
    stream: Streaming<CoordinatorMessage>,
    #[cfg(feature = "fault-injection")]
    filter: Option<Arc<dyn Filter>>,
}

impl Inbox {
    /// The next message that is not a heartbeat; `Ok(None)` when the coordinator closed the
    /// stream.
    async fn next(&mut self) -> Result<Option<Inbound>, Interrupt> {
        loop {
            let message = match self.stream.message().await {
                Ok(Some(message)) => message,
                Ok(None) => return Ok(None),
                Err(status) if is_refusal(status.code()) => {
                    return Err(Error::Refused(status.message().to_string()).into());
                }
                Err(status) => {
                    return Err(Interrupt::retry(format!(
                        "connection lost: {}",
                        status.message()
                    )));
                }
            };
            #[cfg(feature = "fault-injection")]
            match self
                .filter
                .as_ref()
                .map_or(Verdict::Pass, |f| f.inbound(&message))
            {
                Verdict::Pass => {}
                Verdict::Drop => continue,
                Verdict::Delay(delay) => tokio::time::sleep(delay).await,
                Verdict::Cut => {
                    return Err(Interrupt::retry(
                        "connection cut by the fault-injection filter",
                    ));
                }
            }
            match message.body {
                Some(Inbound::Heartbeat(_)) => continue,
                Some(body) => return Ok(Some(body)),
                // A message of a kind this build does not know decodes without a body.
                None => {
                    return Err(Interrupt::retry(format!(
                        "the coordinator sent a message of no kind this participant knows; expected one of protocol version {}",
                        cairn_proto::PROTOCOL_VERSION
                    )));
                }
            }
        }
    }

    /// Reads the chunks of a transfer that `header` announced.
    async fn receive(
        &mut self,
        header: TransferHeader,
        what: String,
    ) -> Result<Vec<f32>, Interrupt> {
        let mut assembler = Assembler::new(header, what.clone(), None)
            .map_err(|e| Interrupt::retry(format!("{what}: {e}")))?;
        self.receive_into(&mut assembler, &what).await
    }

    /// Reads the chunks still due for `assembler`'s transfer (`what`, for errors).
    async fn receive_into(
        &mut self,
        assembler: &mut Assembler,
        what: &str,
    ) -> Result<Vec<f32>, Interrupt> {
        loop {
            match self.next().await? {
                Some(Inbound::Chunk(chunk)) => match assembler.push(chunk) {
                    Ok(Some(values)) => return Ok(values),
                    Ok(None) => continue,
                    Err(e) => return Err(Interrupt::retry(format!("{what}: {e}"))),
                },
                Some(Inbound::Finished(finished)) => {
                    return Err(Interrupt::End(SessionEnd::Finished(finished.reason)));
                }
                _ => return Err(Interrupt::retry(format!("{what}: transfer interrupted"))),
            }
        }
    }
}

/// The job's instructions from its `Welcome`, checked: known metrics, usable statistics.
pub(crate) fn job_task(spec: Option<&cairn_proto::v1::TaskSpec>) -> Result<JobTask, Error> {
    let Some(spec) = spec else {
        return Err(Error::Protocol(
            "the coordinator's Welcome carries no task (metrics, standardisation)".into(),
        ));
    };
    let metrics = spec
        .metrics
        .iter()
        .map(|name| Metric::parse(name))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Protocol(format!("the job's metrics: {e}")))?;
    let mut standardize = Vec::with_capacity(spec.standardize.len());
    for statistic in &spec.standardize {
        if !(statistic.mean.is_finite() && statistic.std.is_finite() && statistic.std > 0.0) {
            return Err(Error::Protocol(format!(
                "the job standardises feature {:?} with mean {} and std {}; expected a finite mean and a positive std",
                statistic.feature, statistic.mean, statistic.std
            )));
        }
        standardize.push(FeatureStatistics {
            feature: statistic.feature.clone(),
            mean: statistic.mean,
            std: statistic.std,
        });
    }
    Ok(JobTask {
        metrics,
        standardize,
    })
}

/// The wire layout of a transfer.
fn layout_of(header: &TransferHeader) -> Vec<TensorShape> {
    header
        .tensors
        .iter()
        .map(|spec| TensorShape {
            name: spec.name.clone(),
            shape: spec.shape.iter().map(|&d| d as usize).collect(),
        })
        .collect()
}

/// Runs a blocking task method off the async runtime, handing the task back afterwards. The
/// work runs on rayon's global pool, where burn's CPU kernels run too: however many sites
/// train at once in this process, they compute on that pool's threads (`--threads`) and no
/// more, instead of each bringing a thread of its own on top.
async fn with_task<T: Send + 'static>(
    task: &mut Option<Box<dyn Task>>,
    work: impl FnOnce(&mut Box<dyn Task>) -> T + Send + 'static,
) -> Result<T, Error> {
    let mut owned = task
        .take()
        .ok_or_else(|| Error::Model("task lost after a failed training run".into()))?;
    let (done, result) = tokio::sync::oneshot::channel();
    rayon::spawn(move || {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let result = work(&mut owned);
            (owned, result)
        }));
        let _ = done.send(outcome);
    });
    let (owned, result) = result
        .await
        .map_err(|_| Error::Model("training thread ended without an answer".into()))?
        .map_err(|panic| {
            let reason = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            Error::Model(format!("training failed: {reason}"))
        })?;
    *task = Some(owned);
    Ok(result)
}

/// An update clipped and noised by the round's differential privacy, and the mechanism.
type Noised = (DistributedDp, Vec<u32>);

/// A trained update: `delta` is `local - global`, over `weight` examples with mean training
/// loss `mean_loss`.
#[derive(Clone, Copy)]
pub(super) struct Trained<'a> {
    pub(super) delta: &'a [f32],
    pub(super) weight: u64,
    pub(super) mean_loss: f64,
}

/// A session past the coordinator's `Welcome`: it carries out the coordinator's instructions,
/// one method per kind of message, until the session ends.
struct Serving<'a> {
    options: &'a ClientOptions,
    welcome: Welcome,
    inbound: Inbox,
    outbox: mpsc::Sender<ParticipantMessage>,
    task: &'a mut Option<Box<dyn Task>>,
    summary: &'a mut RunSummary,
    /// The rounds this participant started in this job, across sessions.
    started: &'a mut Started,
    /// A plaintext round's transfer that a broken session left unfinished, across sessions.
    unfinished: &'a mut Option<Unfinished>,
    /// This round's secure aggregation, from training until this participant's part is over.
    secure: Option<secure::SecureRound>,
    /// What this site countersigned in the job.
    history: history::History,
}

impl Serving<'_> {
    async fn serve(&mut self) -> Interrupt {
        loop {
            let message = match self.inbound.next().await {
                Ok(Some(message)) => message,
                Ok(None) => return closed(),
                Err(interrupt) => return interrupt,
            };
            if let Err(interrupt) = self.on_message(message).await {
                return interrupt;
            }
        }
    }

    async fn on_message(&mut self, message: Inbound) -> Result<(), Interrupt> {
        match message {
            Inbound::Train(instruction) => self.on_train(instruction).await,
            Inbound::Evaluate(instruction) => self.on_evaluate(instruction).await,
            Inbound::Finished(finished) => {
                Err(Interrupt::End(SessionEnd::Finished(finished.reason)))
            }
            Inbound::Welcome(_) => Err(Interrupt::retry("Welcome received twice")),
            Inbound::Chunk(chunk) => Err(Interrupt::retry(format!(
                "chunk {} of round {} arrived without a transfer",
                chunk.index, chunk.round
            ))),
            Inbound::Heartbeat(_) => Ok(()),
            Inbound::ResumeUpdate(resume) => self.on_resume_update(resume).await,
            Inbound::Record(record) => self.on_record(record).await,
            body @ (Inbound::Advertisements(_)
            | Inbound::GraphNonces(_)
            | Inbound::Shares(_)
            | Inbound::Survivors(_)
            | Inbound::SurvivorSignatures(_)) => self.on_secure(body).await,
        }
    }

    /// Countersigns a committed round's record when it extends the history this site signed;
    /// a history that forks from it ends this participant's part in the job.
    async fn on_record(&mut self, record: cairn_proto::v1::RoundRecord) -> Result<(), Interrupt> {
        let label = &self.options.label;
        match self.history.countersign(&record, &*self.options.kit.signer) {
            Ok(signatures) => {
                for signature in signatures {
                    tracing::debug!(participant = %label, "{label}: countersigned round {}'s record", signature.round);
                    send(
                        &self.outbox,
                        outbound(Outbound::Countersignature(signature)),
                    )
                    .await?;
                }
                Ok(())
            }
            Err(history::Unsigned::Forked(error)) => Err(Interrupt::Failed(error)),
            Err(history::Unsigned::Unusable(reason)) => Err(Interrupt::retry(reason)),
        }
    }

    /// Receives the global model, trains on it, and sends the update: in the clear, or as the
    /// first message of secure aggregation.
    async fn on_train(&mut self, instruction: TrainInstruction) -> Result<(), Interrupt> {
        let label = self.options.label.clone();
        let (Some(config), Some(header)) = (instruction.config, instruction.model) else {
            return Err(Interrupt::retry(
                "train instruction without config or model",
            ));
        };
        let round = header.round;
        let setup = instruction.secure_aggregation.as_ref();
        // A new round's instruction supersedes what the last one left unfinished.
        let resumed = match instruction.first_chunk {
            0 => {
                *self.unfinished = None;
                None
            }
            first_chunk => Some(self.resumed_model(&header, first_chunk, setup.is_some())?),
        };
        // A resumed instruction was admitted when it first came; it is not another attempt.
        let admitted = self
            .options
            .policy
            .check_round(&self.welcome.participant_id, setup)
            .and_then(|()| self.started.continues(round, &header.sha256))
            .and_then(|()| match resumed {
                Some(_) => Ok(()),
                None => {
                    let max = self.options.policy.max_round_attempts;
                    self.started.admit(round, max)
                }
            });
        if let Err(refusal) = admitted {
            return self.refuse(header, "training", refusal).await;
        }
        let layout = layout_of(&header);
        if let Some(task) = self.task.as_ref() {
            task.check_layout(&layout)?;
        }
        let specs = header.tensors.clone();
        let model_sha256 = header.sha256.clone();
        let what = format!("global model for round {round}");
        let mut assembler = match resumed {
            Some(assembler) => assembler,
            None => Assembler::new(header, what.clone(), None)
                .map_err(|e| Interrupt::retry(format!("{what}: {e}")))?,
        };
        let global = match self.inbound.receive_into(&mut assembler, &what).await {
            Ok(global) => global,
            Err(interrupt) => {
                // In the clear, the next session picks the model up where this one broke off.
                if setup.is_none() && matches!(interrupt, Interrupt::End(SessionEnd::Retry { .. }))
                {
                    *self.unfinished = Some(Unfinished::GlobalModel(Box::new(assembler)));
                }
                return Err(interrupt);
            }
        };
        // The model a round trains on is the one the last round ended with.
        if round > 1 {
            self.history.received_model(round - 1, &model_sha256)?;
        }
        let privacy = match self.options.policy.check_privacy(
            setup,
            global.len(),
            &self.started.privacy,
        ) {
            Ok(privacy) => privacy,
            Err(refusal) => {
                tracing::error!(participant = %label, "{label}: round {round}: training refused, nothing is sent for it: {refusal}");
                return Ok(());
            }
        };
        if !(config.proximal_mu.is_finite() && config.proximal_mu >= 0.0) {
            return Err(Interrupt::retry(format!(
                "the coordinator asks for proximal_mu {}; expected a finite number >= 0",
                config.proximal_mu
            )));
        }
        let training = TrainingConfig {
            round,
            local_epochs: config.local_epochs,
            batch_size: config.batch_size,
            learning_rate: config.learning_rate,
            seed: config.seed,
            proximal_mu: config.proximal_mu,
        };
        tracing::info!(participant = %label, "{label}: round {round}: training ({} epochs)", training.local_epochs);
        let progress_label = label.clone();
        let (delta, weight, mean_loss, noised) = with_task(
            self.task,
            move |task| -> Result<(Vec<f32>, u64, f64, Option<Noised>), Error> {
                task.set_parameters(&layout, &global)?;
                let mut report = |p: EpochProgress| {
                    tracing::info!(
                        participant = %progress_label,
                        "{progress_label}: round {round} epoch {}/{} loss {:.4} ({:.0} examples/s)",
                        p.epoch,
                        p.epochs,
                        p.mean_loss,
                        p.examples_per_second
                    );
                };
                let outcome = task.train(&training, &mut report)?;
                // The delta is made in the buffer the local parameters come in, and the global
                // model dropped: besides the task's own, two copies of the model at most.
                let mut delta = task.parameters(&layout)?;
                for (local, global) in delta.iter_mut().zip(&global) {
                    *local -= global;
                }
                drop(global);
                // Noise is drawn here, off the async runtime, like the training.
                let noised = privacy
                    .map(|mechanism| {
                        mechanism
                            .encode(&delta)
                            .map(|input| (mechanism, input))
                            .map_err(|e| Error::Model(format!("noising the update: {e}")))
                    })
                    .transpose()?;
                Ok((delta, outcome.n_examples, outcome.mean_loss, noised))
            },
        )
        .await??;
        match &instruction.secure_aggregation {
            Some(setup) => {
                let trained = Trained {
                    delta: &delta,
                    weight,
                    mean_loss,
                };
                let contribution = match noised {
                    Some((mechanism, input)) => secure::Contribution::Noised(mechanism, input),
                    None => secure::Contribution::Update(trained),
                };
                self.start_secure(round, setup, trained, contribution)
                    .await?
            }
            None => {
                self.send_update(round, &specs, delta, weight, mean_loss)
                    .await?
            }
        }
        self.summary.rounds_trained += 1;
        Ok(())
    }

    /// Refuses an instruction (`what`: training or evaluation) for the rule it breaks: logs
    /// the rule, then reads the model that still arrives and drops it, so the session goes on
    /// and nothing is sent for it.
    async fn refuse(
        &mut self,
        header: TransferHeader,
        what: &str,
        refusal: Refusal,
    ) -> Result<(), Interrupt> {
        let label = &self.options.label;
        let round = header.round;
        tracing::error!(participant = %label, "{label}: round {round}: {what} refused, nothing is sent for it: {refusal}");
        self.inbound
            .receive(header, format!("model for {what} in round {round}"))
            .await?;
        Ok(())
    }

    /// Starts this round's secure aggregation with the trained update; a setup this participant
    /// refuses leaves it out of the round, not out of the session.
    async fn start_secure(
        &mut self,
        round: u64,
        setup: &cairn_proto::v1::SecureAggregation,
        trained: Trained<'_>,
        contribution: secure::Contribution<'_>,
    ) -> Result<(), Interrupt> {
        let label = &self.options.label;
        let Trained {
            weight, mean_loss, ..
        } = trained;
        let privacy = contribution.privacy();
        self.secure = None;
        match secure::SecureRound::for_update(self.site(round), setup, contribution) {
            Ok((started, advertisement)) => {
                if let Some(mechanism) = privacy {
                    self.started.privacy.add(&mechanism.round_rdp_curve(), 1);
                    let delta = self.options.policy.privacy_delta;
                    tracing::info!(participant = %label, "{label}: round {round}: the update carries differential privacy's noise (noise multiplier {}, at least {} sites); this site's epsilon in the job is now {:.3} at delta {delta}", mechanism.noise_multiplier(), mechanism.min_contributors(), self.started.privacy.epsilon(delta));
                }
                send(&self.outbox, advertisement).await?;
                tracing::info!(participant = %label, roster = ?setup.participants, "{label}: round {round}: trained (weight {weight}, train loss {mean_loss:.4}); secure aggregation with {} participants, threshold {}", setup.participants.len(), setup.threshold);
                self.secure = Some(started);
            }
            Err(reason) => {
                tracing::error!(participant = %label, "{label}: round {round}: not taking part in secure aggregation: {reason}");
            }
        }
        Ok(())
    }

    /// Who this participant is in `round`'s secure aggregation.
    fn site(&self, round: u64) -> secure::Site<'_> {
        secure::Site {
            kit: &self.options.kit,
            policy: &self.options.policy,
            job: &self.welcome.job_name,
            me: &self.welcome.participant_id,
            round,
        }
    }

    /// Sends an update in the clear: its header, then its chunks. It is kept until the round's
    /// next instruction, so that a session that breaks before the coordinator holds all of it
    /// is followed by one that resumes it.
    async fn send_update(
        &mut self,
        round: u64,
        specs: &[TensorSpec],
        mut delta: Vec<f32>,
        weight: u64,
        mean_loss: f64,
    ) -> Result<(), Interrupt> {
        let label = &self.options.label;
        let n_values = delta.len();
        for value in &mut delta {
            *value *= weight as f32;
        }
        let (transfer, chunks) = split_owned(round, specs, delta);
        let header = UpdateHeader {
            transfer: Some(transfer),
            weight,
            weighted_train_loss: weight as f64 * mean_loss,
            first_chunk: 0,
        };
        *self.unfinished = Some(Unfinished::Update {
            header: header.clone(),
            chunks: chunks.clone(),
        });
        send(&self.outbox, outbound(Outbound::Update(header))).await?;
        for chunk in chunks {
            send(&self.outbox, outbound(Outbound::Chunk(chunk))).await?;
        }
        tracing::info!(
            participant = %label,
            "{label}: round {round}: update sent ({n_values} values, weight {weight}, train loss {mean_loss:.4})",
        );
        Ok(())
    }

    /// The global model this participant held part of when its last session broke, which the
    /// coordinator resumes at `first_chunk`.
    fn resumed_model(
        &mut self,
        header: &TransferHeader,
        first_chunk: u32,
        secure: bool,
    ) -> Result<Assembler, Interrupt> {
        match self.unfinished.take() {
            Some(Unfinished::GlobalModel(assembler))
                if !secure
                    && assembler.header() == header
                    && assembler.next_index() == first_chunk =>
            {
                let label = &self.options.label;
                tracing::info!(participant = %label, "{label}: round {}: the global model resumes at chunk {first_chunk} of {}", header.round, header.n_chunks);
                Ok(*assembler)
            }
            kept => {
                let held = match &kept {
                    Some(Unfinished::GlobalModel(assembler)) => format!(
                        "it holds {} chunks of a model of round {}",
                        assembler.next_index(),
                        assembler.header().round
                    ),
                    _ => "it holds none".into(),
                };
                *self.unfinished = kept;
                Err(Interrupt::retry(format!(
                    "the coordinator resumes the global model of round {} at chunk {first_chunk}{}, but {held}",
                    header.round,
                    if secure {
                        " with secure aggregation"
                    } else {
                        ""
                    }
                )))
            }
        }
    }

    /// Sends the kept update again from the chunk the coordinator asks for: the first one it
    /// does not hold.
    async fn on_resume_update(&mut self, resume: ResumeUpdate) -> Result<(), Interrupt> {
        let label = &self.options.label;
        let round = resume.round;
        let Some(Unfinished::Update { header, chunks }) = self.unfinished.as_ref() else {
            tracing::warn!(participant = %label, "{label}: the coordinator asks to resume an update for round {round}, and this participant holds none");
            return Ok(());
        };
        let next = resume.next_chunk as usize;
        let matches = header
            .transfer
            .as_ref()
            .is_some_and(|t| t.round == round && t.sha256 == resume.sha256);
        if !matches || next > chunks.len() {
            tracing::warn!(participant = %label, "{label}: the coordinator asks to resume an update for round {round} at chunk {next}, which is not the one this participant holds");
            return Ok(());
        }
        let (header, chunks) = (
            UpdateHeader {
                first_chunk: resume.next_chunk,
                ..header.clone()
            },
            chunks[next..].to_vec(),
        );
        let resent: usize = chunks.iter().map(|c| c.data.len()).sum();
        tracing::info!(participant = %label, "{label}: round {round}: resuming the update at chunk {next} of {} ({} bytes to send)", next + chunks.len(), resent);
        send(&self.outbox, outbound(Outbound::Update(header))).await?;
        for chunk in chunks {
            send(&self.outbox, outbound(Outbound::Chunk(chunk))).await?;
        }
        Ok(())
    }

    /// Receives a model, evaluates it on the local test split and reports the sums: as this
    /// participant's input to a secure aggregation, or in the clear where the site allows it.
    async fn on_evaluate(&mut self, instruction: EvaluateInstruction) -> Result<(), Interrupt> {
        let label = self.options.label.clone();
        let Some(header) = instruction.model else {
            return Err(Interrupt::retry("evaluate instruction without model"));
        };
        let round = header.round;
        let setup = instruction.secure_aggregation.as_ref();
        // Training is over: the coordinator holds every update it will take.
        *self.unfinished = None;
        let admitted = self
            .options
            .policy
            .check_evaluation(&self.welcome.participant_id, setup)
            .and_then(|()| {
                let max = self.options.policy.max_round_attempts;
                self.started.admit(round, max)
            });
        if let Err(refusal) = admitted {
            return self.refuse(header, "evaluation", refusal).await;
        }
        tracing::info!(participant = %label, "{label}: round {round}: evaluating the new global model");
        let layout = layout_of(&header);
        if let Some(task) = self.task.as_ref() {
            task.check_layout(&layout)?;
        }
        let digest = header.sha256.clone();
        let model = self
            .inbound
            .receive(header, format!("model to evaluate for round {round}"))
            .await?;
        self.history.received_model(round, &digest)?;
        let evaluation = with_task(self.task, move |task| {
            task.set_parameters(&layout, &model)?;
            task.evaluate()
        })
        .await??;
        self.started.evaluated(round, digest);
        let metrics: Vec<String> = evaluation
            .finish()
            .into_iter()
            .map(|(metric, value)| match value {
                Some(value) => format!("{} {value:.4}", metric.name()),
                None => format!("{} undefined", metric.name()),
            })
            .collect();
        tracing::info!(
            participant = %label,
            "{label}: round {round}: global model {} on {} local test examples",
            metrics.join(", "),
            evaluation.n_examples
        );
        match setup {
            Some(setup) => {
                self.secure = None;
                match secure::SecureRound::for_evaluation(self.site(round), setup, &evaluation) {
                    Ok((started, advertisement)) => {
                        send(&self.outbox, advertisement).await?;
                        tracing::info!(participant = %label, "{label}: round {round}: evaluation goes into secure aggregation with {} participants", setup.participants.len());
                        self.secure = Some(started);
                    }
                    Err(reason) => {
                        tracing::error!(participant = %label, "{label}: round {round}: not taking part in the secure evaluation: {reason}");
                    }
                }
            }
            None => {
                let report = evaluation.to_wire(round);
                send(&self.outbox, outbound(Outbound::Evaluation(report))).await?;
            }
        }
        self.summary.evaluations += 1;
        self.summary.last_evaluation = Some(evaluation);
        Ok(())
    }

    /// Hands a secure-aggregation message to this round's [`secure::SecureRound`]; one for a
    /// round or attempt this participant is not running is ignored, and an abort ends only its
    /// part in the round.
    async fn on_secure(&mut self, body: Inbound) -> Result<(), Interrupt> {
        let label = &self.options.label;
        let (round, attempt) = cairn_proto::secagg::round_of(&body).unwrap_or_default();
        let Some(mut current) = self.secure.take_if(|s| s.is_for(round, attempt)) else {
            tracing::warn!(participant = %label, "{label}: ignored a secure aggregation message for round {round} attempt {attempt}, which this participant is not running");
            return Ok(());
        };
        // Masking a large model's input takes seconds of CPU: off the async runtime, like the
        // training, so that this session (and every other one of a simulation) keeps answering
        // its heartbeats and pings meanwhile; and one at a time per compute thread, so that a
        // simulation's sessions do not all hold their masking buffers at once.
        let _turn = secure_work().acquire().await.map_err(|_| closed())?;
        let (current, answer) = tokio::task::spawn_blocking(move || {
            let answer = current.on_message(body);
            (current, answer)
        })
        .await
        .map_err(|e| Interrupt::retry(format!("secure aggregation's work stopped: {e}")))?;
        match answer {
            Ok((messages, done)) => {
                for message in messages {
                    send(&self.outbox, message).await?;
                }
                match done {
                    true => {
                        tracing::info!(participant = %label, "{label}: round {round}: secure aggregation done (shares revealed)")
                    }
                    false => self.secure = Some(current),
                }
            }
            Err(reason) => {
                let (round, attempt) = current.round();
                tracing::error!(participant = %label, "{label}: round {round} attempt {attempt}: aborting secure aggregation, nothing more is revealed: {reason}");
            }
        }
        Ok(())
    }
}

/// Turns at secure aggregation's CPU-bound steps, shared by every session of this process: one
/// per compute thread (`--threads`).
fn secure_work() -> &'static tokio::sync::Semaphore {
    static TURNS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    TURNS.get_or_init(|| tokio::sync::Semaphore::new(crate::task::threads().max(1)))
}

/// Queues `message` for the coordinator. Takes the outbox rather than the session, since a
/// reference to the session held across the await would need the task to be `Sync`.
async fn send(
    outbox: &mpsc::Sender<ParticipantMessage>,
    message: ParticipantMessage,
) -> Result<(), Interrupt> {
    outbox.send(message).await.map_err(|_| closed())
}

/// The coordinator closed the session (or its stream is gone).
fn closed() -> Interrupt {
    Interrupt::retry("the coordinator closed the session")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error with a message and an optional cause.
    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn an_error_chain_says_each_cause_once() {
        // As tonic and hyper nest a refused connection.
        let refused = Layer("Connection refused (os error 111)", None);
        let inner = Layer("tcp connect error", Some(Box::new(refused)));
        let outer = Layer("tcp connect error", Some(Box::new(inner)));
        let transport = Layer("transport error", Some(Box::new(outer)));
        assert_eq!(
            error_chain(&transport),
            "transport error: tcp connect error: Connection refused (os error 111)"
        );
    }
}
