//! The participant's connection to the coordinator: mutual-TLS gRPC with the participant's kit,
//! one long-lived session, heartbeats, and reconnection with exponential backoff and jitter when
//! the coordinator is away. It drives a [`Task`]: receive the global model, train, send back the
//! weighted update, evaluate new models, until the coordinator says the job is finished.

pub mod identity;
mod secure;

use crate::Error;
use crate::task::{EpochProgress, Evaluation, Task, TensorShape, TrainingConfig};
use cairn_proto::transfer::{Assembler, split};
use cairn_proto::v1::coordinator_message::Body as Inbound;
use cairn_proto::v1::federation_client::FederationClient;
use cairn_proto::v1::participant_message::Body as Outbound;
use cairn_proto::v1::{
    CoordinatorMessage, EvaluationReport, Heartbeat, Hello, ParticipantMessage, TensorSpec,
    TransferHeader, UpdateHeader, Welcome,
};
use rand::Rng;
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
        let certificate_der =
            cairn_identity::certificate_der(&cert, "cert.pem").map_err(|e| kit_error("cert.pem", e.to_string()))?;
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
    pub filter: Option<Arc<dyn Filter>>,
    /// After a job ends, wait for the coordinator's next one instead of returning, and wait
    /// out a job that does not list this participant: for a coordinator that runs job after
    /// job (the FederatedJob operator).
    pub keep_going: bool,
}

/// What a [`Filter`] does with one message.
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
/// participants: it sees every message in both directions and decides its fate.
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
    /// Options with default backoff (0.5 s doubling to 30 s, retrying forever).
    pub fn new(
        coordinator: impl Into<String>,
        kit: Kit,
        label: impl Into<String>,
    ) -> ClientOptions {
        ClientOptions {
            coordinator: coordinator.into(),
            server_name: None,
            kit,
            label: label.into(),
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            max_attempts: None,
            filter: None,
            keep_going: false,
        }
    }
}

/// What a participant did over a whole job.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunSummary {
    /// Rounds this participant trained in.
    pub rounds_trained: u64,
    /// Evaluations it reported.
    pub evaluations: u64,
    /// Its last evaluation of a global model.
    pub last_evaluation: Option<Evaluation>,
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

/// Runs one participant until the coordinator says the job is finished.
pub async fn run(options: ClientOptions, task: Box<dyn Task>) -> Result<RunSummary, Error> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let label = options.label.clone();
    let mut task = Some(task);
    let mut summary = RunSummary::default();
    let mut backoff = options.initial_backoff;
    let mut failures = 0u32;
    loop {
        match session(&options, &mut task, &mut summary).await? {
            SessionEnd::Finished(reason) => {
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

fn retry(reason: String, welcomed: bool) -> Result<SessionEnd, Error> {
    Ok(SessionEnd::Retry { reason, welcomed })
}

/// Connects with the kit's identity; the coordinator's certificate must chain to the kit's CA
/// and name `server_name`.
pub async fn connect(options: &ClientOptions) -> Result<Channel, String> {
    let endpoint = Endpoint::from_shared(options.coordinator.clone())
        .map_err(|e| format!("coordinator URL {:?} is invalid: {e}", options.coordinator))?;
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
        .map_err(|e| format!("TLS configuration: {e}"))?
        .connect_timeout(Duration::from_secs(10))
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_while_idle(true)
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| {
            format!(
                "cannot connect to {}: {}",
                options.coordinator,
                error_chain(&e)
            )
        })
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
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
) -> Result<SessionEnd, Error> {
    let label = &options.label;
    let channel = match connect(options).await {
        Ok(channel) => channel,
        Err(reason) => return retry(reason, false),
    };
    let mut client = FederationClient::new(channel)
        .max_decoding_message_size(2 * cairn_proto::MAX_CHUNK_BYTES)
        .max_encoding_message_size(2 * cairn_proto::MAX_CHUNK_BYTES);
    let (outbox, receiver) = mpsc::channel::<ParticipantMessage>(16);
    let receiver = match &options.filter {
        None => receiver,
        Some(filter) => filtered(receiver, filter.clone()),
    };
    let hello = Hello {
        protocol_version: cairn_proto::PROTOCOL_VERSION,
        client_version: format!("cairn-participant {}", env!("CARGO_PKG_VERSION")),
    };
    // The channel has room: nothing else has been queued yet.
    let _ = outbox.try_send(outbound(Outbound::Hello(hello)));
    let mut inbound = match client.session(ReceiverStream::new(receiver)).await {
        Ok(response) => Inbox {
            stream: response.into_inner(),
            filter: options.filter.clone(),
        },
        Err(status) if is_refusal(status.code()) => {
            let (key, value) = cairn_proto::NOT_IN_JOB;
            let not_in_job = status.metadata().get(key).is_some_and(|v| v == value);
            if options.keep_going && not_in_job {
                return retry(
                    format!(
                        "{}; waiting for a job that lists this participant",
                        status.message()
                    ),
                    false,
                );
            }
            return Err(Error::Refused(status.message().to_string()));
        }
        Err(status) => return retry(format!("session refused: {}", status.message()), false),
    };
    let welcome = match inbound.next().await {
        Ok(Some(Inbound::Welcome(welcome))) => welcome,
        Ok(Some(Inbound::Finished(finished))) => return Ok(SessionEnd::Finished(finished.reason)),
        Ok(Some(_)) => return retry("the coordinator did not start with Welcome".into(), false),
        Ok(None) => return retry("the coordinator closed the session".into(), false),
        Err(end) => return end,
    };
    tracing::info!(
        participant = %label,
        "{label}: joined job {:?} as {:?}",
        welcome.job_name,
        welcome.participant_id
    );
    let interval = Duration::from_secs(u64::from(welcome.heartbeat_interval_s.max(1)));
    let heartbeats = tokio::spawn(send_heartbeats(outbox.clone(), interval));
    let result = serve(options, &welcome, &mut inbound, &outbox, task, summary).await;
    heartbeats.abort();
    result
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
    filter: Option<Arc<dyn Filter>>,
}

impl Inbox {
    /// The next message that is not a heartbeat; `Err` carries how the session ends.
    async fn next(&mut self) -> Result<Option<Inbound>, Result<SessionEnd, Error>> {
        loop {
            let message = match self.stream.message().await {
                Ok(Some(message)) => message,
                Ok(None) => return Ok(None),
                Err(status) if is_refusal(status.code()) => {
                    return Err(Err(Error::Refused(status.message().to_string())));
                }
                Err(status) => {
                    return Err(retry(
                        format!("connection lost: {}", status.message()),
                        true,
                    ));
                }
            };
            match self
                .filter
                .as_ref()
                .map_or(Verdict::Pass, |f| f.inbound(&message))
            {
                Verdict::Pass => {}
                Verdict::Drop => continue,
                Verdict::Delay(delay) => tokio::time::sleep(delay).await,
                Verdict::Cut => {
                    return Err(retry(
                        "connection cut by the fault-injection filter".into(),
                        true,
                    ));
                }
            }
            match message.body {
                Some(Inbound::Heartbeat(_)) => continue,
                body => return Ok(body),
            }
        }
    }
}

/// Reads the chunks of a transfer that `header` announced.
async fn receive(
    inbound: &mut Inbox,
    header: TransferHeader,
    what: String,
) -> Result<Vec<f32>, Result<SessionEnd, Error>> {
    let mut assembler = Assembler::new(header, what.clone(), None)
        .map_err(|e| retry(format!("{what}: {e}"), true))?;
    loop {
        match inbound.next().await? {
            Some(Inbound::Chunk(chunk)) => match assembler.push(chunk) {
                Ok(Some(values)) => return Ok(values),
                Ok(None) => continue,
                Err(e) => return Err(retry(format!("{what}: {e}"), true)),
            },
            Some(Inbound::Finished(finished)) => {
                return Err(Ok(SessionEnd::Finished(finished.reason)));
            }
            _ => return Err(retry(format!("{what}: transfer interrupted"), true)),
        }
    }
}

/// Checks that the coordinator's model has exactly this participant's layout.
fn check_layout(header: &TransferHeader, layout: &[TensorShape]) -> Result<(), Error> {
    let theirs: Vec<(String, Vec<u64>)> = header
        .tensors
        .iter()
        .map(|t| (t.name.clone(), t.shape.clone()))
        .collect();
    let ours: Vec<(String, Vec<u64>)> = layout
        .iter()
        .map(|t| (t.name.clone(), t.shape.iter().map(|&d| d as u64).collect()))
        .collect();
    if theirs != ours {
        let first = theirs.iter().zip(&ours).find(|(a, b)| a != b);
        let detail = match first {
            Some((a, b)) => format!(
                "the job's {} is {:?}, this participant's network has {} {:?}",
                a.0, a.1, b.0, b.1
            ),
            None => format!(
                "the job's model has {} tensors, this participant's {}",
                theirs.len(),
                ours.len()
            ),
        };
        return Err(Error::Model(format!(
            "global model does not match the local network: {detail}; does --data hold the job's dataset?"
        )));
    }
    Ok(())
}

/// Runs a blocking task method off the async runtime, handing the task back afterwards.
async fn with_task<T: Send + 'static>(
    task: &mut Option<Box<dyn Task>>,
    work: impl FnOnce(&mut Box<dyn Task>) -> T + Send + 'static,
) -> Result<T, Error> {
    let mut owned = task
        .take()
        .ok_or_else(|| Error::Model("task lost after a failed training run".into()))?;
    let (owned, result) = tokio::task::spawn_blocking(move || {
        let result = work(&mut owned);
        (owned, result)
    })
    .await
    .map_err(|e| Error::Model(format!("training thread failed: {e}")))?;
    *task = Some(owned);
    Ok(result)
}

async fn serve(
    options: &ClientOptions,
    welcome: &Welcome,
    inbound: &mut Inbox,
    outbox: &mpsc::Sender<ParticipantMessage>,
    task: &mut Option<Box<dyn Task>>,
    summary: &mut RunSummary,
) -> Result<SessionEnd, Error> {
    let label = options.label.clone();
    let closed = || retry("the coordinator closed the session".into(), true);
    let mut secure: Option<secure::SecureRound> = None;
    loop {
        let message = match inbound.next().await {
            Ok(Some(message)) => message,
            Ok(None) => return closed(),
            Err(end) => return end,
        };
        match message {
            Inbound::Train(instruction) => {
                let (Some(config), Some(header)) = (instruction.config, instruction.model) else {
                    return retry("train instruction without config or model".into(), true);
                };
                let round = header.round;
                if let Some(task) = task.as_ref() {
                    check_layout(&header, &task.layout())?;
                }
                let specs = header.tensors.clone();
                let global =
                    match receive(inbound, header, format!("global model for round {round}")).await
                    {
                        Ok(values) => values,
                        Err(end) => return end,
                    };
                let training = TrainingConfig {
                    local_epochs: config.local_epochs,
                    batch_size: config.batch_size,
                    learning_rate: config.learning_rate,
                    seed: config.seed,
                };
                tracing::info!(participant = %label, "{label}: round {round}: training ({} epochs)", training.local_epochs);
                let progress_label = label.clone();
                let update = with_task(task, move |task| -> Result<(Vec<f32>, u64, f64), Error> {
                    task.set_parameters(&global)?;
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
                    let delta: Vec<f32> =
                        task.parameters().iter().zip(&global).map(|(local, global)| local - global).collect();
                    Ok((delta, outcome.n_examples, outcome.mean_loss))
                })
                .await??;
                let (delta, weight, mean_loss) = update;
                if let Some(setup) = &instruction.secure_aggregation {
                    secure = None;
                    match secure::SecureRound::start(
                        &options.kit,
                        &welcome.job_name,
                        &welcome.participant_id,
                        round,
                        setup,
                        &delta,
                        weight,
                        mean_loss,
                    ) {
                        Ok((started, advertisement)) => {
                            if outbox.send(advertisement).await.is_err() {
                                return closed();
                            }
                            tracing::info!(participant = %label, roster = ?setup.participants, "{label}: round {round}: trained (weight {weight}, train loss {mean_loss:.4}); secure aggregation with {} participants, threshold {}", setup.participants.len(), setup.threshold);
                            secure = Some(started);
                        }
                        Err(reason) => {
                            tracing::error!(participant = %label, "{label}: round {round}: not taking part in secure aggregation: {reason}");
                        }
                    }
                    summary.rounds_trained += 1;
                    continue;
                }
                let weighted_delta: Vec<f32> = delta.iter().map(|d| weight as f32 * d).collect();
                if send_update(outbox, round, &specs, &weighted_delta, weight, mean_loss)
                    .await
                    .is_err()
                {
                    return closed();
                }
                tracing::info!(
                    participant = %label,
                    "{label}: round {round}: update sent ({} values, weight {weight}, train loss {mean_loss:.4})",
                    weighted_delta.len()
                );
                summary.rounds_trained += 1;
            }
            Inbound::Evaluate(instruction) => {
                let Some(header) = instruction.model else {
                    return retry("evaluate instruction without model".into(), true);
                };
                let round = header.round;
                tracing::info!(participant = %label, "{label}: round {round}: evaluating the new global model");
                if let Some(task) = task.as_ref() {
                    check_layout(&header, &task.layout())?;
                }
                let model = match receive(
                    inbound,
                    header,
                    format!("model to evaluate for round {round}"),
                )
                .await
                {
                    Ok(values) => values,
                    Err(end) => return end,
                };
                let evaluation = with_task(task, move |task| {
                    task.set_parameters(&model)?;
                    task.evaluate()
                })
                .await??;
                tracing::info!(
                    participant = %label,
                    "{label}: round {round}: global model accuracy {:.4}, loss {:.4} on {} local test examples",
                    evaluation.accuracy,
                    evaluation.loss,
                    evaluation.n_examples
                );
                let report = EvaluationReport {
                    round,
                    n_examples: evaluation.n_examples,
                    loss: evaluation.loss,
                    accuracy: evaluation.accuracy,
                };
                if outbox
                    .send(outbound(Outbound::Evaluation(report)))
                    .await
                    .is_err()
                {
                    return closed();
                }
                summary.evaluations += 1;
                summary.last_evaluation = Some(evaluation);
            }
            Inbound::Finished(finished) => return Ok(SessionEnd::Finished(finished.reason)),
            Inbound::Welcome(_) => return retry("Welcome received twice".into(), true),
            Inbound::Chunk(chunk) => {
                return retry(
                    format!(
                        "chunk {} of round {} arrived without a transfer",
                        chunk.index, chunk.round
                    ),
                    true,
                );
            }
            Inbound::Heartbeat(_) => {}
            body @ (Inbound::Advertisements(_)
            | Inbound::Shares(_)
            | Inbound::Survivors(_)
            | Inbound::SurvivorSignatures(_)) => {
                let (round, attempt) = secure::round_of(&body).unwrap_or_default();
                let Some(current) = secure.as_mut().filter(|s| s.is_for(round, attempt)) else {
                    tracing::warn!(participant = %label, "{label}: ignored a secure aggregation message for round {round} attempt {attempt}, which this participant is not running");
                    continue;
                };
                match current.on_message(body) {
                    Ok((messages, done)) => {
                        for message in messages {
                            if outbox.send(message).await.is_err() {
                                return closed();
                            }
                        }
                        if done {
                            tracing::info!(participant = %label, "{label}: round {round}: secure aggregation done (shares revealed)");
                            secure = None;
                        }
                    }
                    Err(reason) => {
                        let (round, attempt) = current.round();
                        tracing::error!(participant = %label, "{label}: round {round} attempt {attempt}: aborting secure aggregation, nothing more is revealed: {reason}");
                        secure = None;
                    }
                }
            }
        }
    }
}

/// Sends an update: its header, then its chunks.
async fn send_update(
    outbox: &mpsc::Sender<ParticipantMessage>,
    round: u64,
    specs: &[TensorSpec],
    weighted_delta: &[f32],
    weight: u64,
    mean_loss: f64,
) -> Result<(), mpsc::error::SendError<ParticipantMessage>> {
    let (transfer, chunks) = split(round, specs, weighted_delta);
    let header = UpdateHeader {
        transfer: Some(transfer),
        weight,
        weighted_train_loss: weight as f64 * mean_loss,
    };
    outbox.send(outbound(Outbound::Update(header))).await?;
    for chunk in chunks {
        outbox.send(outbound(Outbound::Chunk(chunk))).await?;
    }
    Ok(())
}
