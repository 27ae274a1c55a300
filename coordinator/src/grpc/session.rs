//! One participant's session: who it is (from its verified client certificate, never from a
//! message), the `Hello`/`Welcome` handshake, then every message it sends, checked before it
//! becomes a round event. A participant that breaks the protocol is refused with a clear status
//! and dropped; nobody else's round is affected.

use super::{Connection, Shared};
use super::{countersign, secure};
use crate::round::{Event, Resume, ResumedTransfer, SecureMessage};
use crate::strategy::check_weight_and_loss;
use cairn_identity::{PARTICIPANT_UNIT, identity_of};
use cairn_proto::metrics::{EvaluationEncoding, Metric, Totals};
use cairn_proto::transfer::Assembler;
use cairn_proto::v1::federation_server::Federation;
use cairn_proto::v1::participant_message::Body as Inbound;
use cairn_proto::v1::{
    CoordinatorMessage, EvaluationReport, JobFinished, ParticipantMessage, SignedThrough,
    UpdateHeader, Welcome, coordinator_message::Body as Outbound,
};
use prost::Message;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// How long a new session has to send `Hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);
/// Messages queued towards one participant before senders wait.
const OUTBOX_CAPACITY: usize = 16;

/// Why a session was refused or cut; becomes a `tonic::Status` in [`Refusal::into_status`] only.
#[derive(Debug)]
enum Refusal {
    /// No usable client certificate.
    Unauthenticated(String),
    /// A valid certificate whose identity may not take part.
    PermissionDenied(String),
    /// A participant the current job does not list (another job may).
    NotInJob(String),
    /// A malformed or inconsistent message.
    InvalidArgument(String),
    /// A message that is well formed but not allowed at this point.
    FailedPrecondition(String),
    /// A message larger than a message may be.
    ResourceExhausted(String),
}

impl Refusal {
    fn into_status(self) -> Status {
        match self {
            Refusal::Unauthenticated(m) => Status::unauthenticated(m),
            Refusal::PermissionDenied(m) => Status::permission_denied(m),
            Refusal::NotInJob(m) => {
                let mut status = Status::permission_denied(m);
                let (key, value) = cairn_proto::NOT_IN_JOB;
                status
                    .metadata_mut()
                    .insert(key, tonic::metadata::MetadataValue::from_static(value));
                status
            }
            Refusal::InvalidArgument(m) => Status::invalid_argument(m),
            Refusal::FailedPrecondition(m) => Status::failed_precondition(m),
            Refusal::ResourceExhausted(m) => Status::resource_exhausted(m),
        }
    }

    fn message(&self) -> &str {
        match self {
            Refusal::Unauthenticated(m)
            | Refusal::PermissionDenied(m)
            | Refusal::NotInJob(m)
            | Refusal::InvalidArgument(m)
            | Refusal::FailedPrecondition(m)
            | Refusal::ResourceExhausted(m) => m,
        }
    }
}

/// How a session ended when nobody was refused.
enum Ended {
    Refused(Refusal),
    Gone(String),
}

pub(super) struct FederationService {
    pub(super) shared: Arc<Shared>,
    /// Sessions refused before their stream starts, logged by peer address.
    pub(super) refusals: Arc<super::tls::Refusals>,
}

#[tonic::async_trait]
impl Federation for FederationService {
    type SessionStream = ReceiverStream<Result<CoordinatorMessage, Status>>;

    async fn session(
        &self,
        request: Request<Streaming<ParticipantMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let peer = self.identify(&request).map_err(|refusal| {
            // The operator's log names the address and the job; the caller learns nothing about
            // the job (its name, who else takes part) beyond its own refusal.
            if let Some(address) = request.remote_addr() {
                let job = &self.shared.job.name;
                let reason = format!("{} (job {job:?})", refusal.message());
                self.refusals.warn(address, &reason);
            }
            refusal.into_status()
        })?;
        let inbound = request.into_inner();
        let (outbox, receiver) = mpsc::channel(OUTBOX_CAPACITY);
        tokio::spawn(run(self.shared.clone(), peer, inbound, outbox));
        Ok(Response::new(ReceiverStream::new(receiver)))
    }
}

impl FederationService {
    /// Who is at the other end, from its verified client certificate, if the job allows it.
    fn identify<T>(&self, request: &Request<T>) -> Result<Peer, Refusal> {
        let certificates = request.peer_certs().ok_or_else(|| {
            Refusal::Unauthenticated("no client certificate; Cairn requires mutual TLS".into())
        })?;
        let leaf = certificates
            .first()
            .ok_or_else(|| Refusal::Unauthenticated("empty client certificate chain".into()))?;
        let identity = identity_of(leaf).map_err(|e| Refusal::Unauthenticated(e.to_string()))?;
        if identity.unit != PARTICIPANT_UNIT {
            return Err(Refusal::PermissionDenied(format!(
                "certificate of {:?} is not a participant certificate (organisational unit {:?}, expected {PARTICIPANT_UNIT:?})",
                identity.id, identity.unit
            )));
        }
        if !self.shared.job.participants.contains(&identity.id) {
            return Err(Refusal::NotInJob(format!(
                "participant {:?} is not in the job this coordinator runs; the federation's host adds participants to a job",
                identity.id
            )));
        }
        Ok(Peer {
            id: identity.id,
            organisation: identity.organisation,
            certificate: leaf.to_vec(),
        })
    }
}

/// A participant as its session authenticated it.
struct Peer {
    /// Participant id (the certificate's common name).
    id: String,
    /// Organisation in the certificate.
    organisation: String,
    /// The certificate (DER) it authenticated with; the only one it may advertise in secure
    /// aggregation.
    certificate: Vec<u8>,
}

fn message(body: Outbound) -> Result<CoordinatorMessage, Status> {
    Ok(CoordinatorMessage { body: Some(body) })
}

async fn run(
    shared: Arc<Shared>,
    peer: Peer,
    mut inbound: Streaming<ParticipantMessage>,
    outbox: mpsc::Sender<Result<CoordinatorMessage, Status>>,
) {
    let id = peer.id.clone();
    let (client_version, resume) = match handshake(&shared, &id, &mut inbound, &outbox).await {
        Ok(hello) => hello,
        Err(refusal) => {
            tracing::warn!(participant = %id, "refused {id}: {}", refusal.message());
            let _ = outbox.send(Err(refusal.into_status())).await;
            return;
        }
    };
    if shared.finished.load(Ordering::SeqCst) {
        let finished = JobFinished {
            rounds_completed: shared.job.rounds,
            reason: "the job is over".into(),
        };
        let _ = outbox.send(message(Outbound::Finished(finished))).await;
        return;
    }
    let serial = shared.next_serial.fetch_add(1, Ordering::Relaxed);
    let (expel, mut expelled) = mpsc::channel(1);
    {
        let mut connections = shared.connections.lock().unwrap_or_else(|p| p.into_inner());
        let previous = connections.insert(
            id.clone(),
            Connection {
                serial,
                outbox: outbox.clone(),
                expel,
            },
        );
        // Events are sent under the lock so that the machine sees them in connection order.
        if let Some(previous) = previous {
            // The old session stops reading, so nothing more of it reaches the round after the
            // machine has heard that it ended.
            let _ = previous.expel.try_send("replaced by a new session".into());
            shared.events.send(Event::Disconnected {
                id: id.clone(),
                reason: "replaced by a new session".into(),
            });
        }
        shared.events.send(Event::Connected {
            id: id.clone(),
            resume,
        });
        shared
            .monitor
            .connected(&id, &peer.organisation, &client_version);
    }
    tracing::info!(participant = %id, "{id} connected ({client_version})");

    let heartbeats = tokio::spawn(send_heartbeats(outbox.clone(), shared.heartbeat_interval));
    let mut session = Session {
        shared: &shared,
        peer: &peer,
        serial,
        outbox: &outbox,
        records: None,
    };
    let ended = session.read(&mut inbound, &mut expelled).await;
    heartbeats.abort();
    if let Some(records) = session.records.take() {
        records.abort();
        shared.ledger.session_ended(&id, serial);
    }
    let reason = match ended {
        Ended::Refused(refusal) => {
            tracing::warn!(participant = %id, "dropped {id}: {}", refusal.message());
            let reason = format!("refused: {}", refusal.message());
            let _ = outbox.send(Err(refusal.into_status())).await;
            reason
        }
        Ended::Gone(reason) => {
            tracing::info!(participant = %id, "{id} left: {reason}");
            reason
        }
    };
    let mut connections = shared.connections.lock().unwrap_or_else(|p| p.into_inner());
    if connections.get(&id).is_some_and(|c| c.serial == serial) {
        connections.remove(&id);
        shared.monitor.disconnected(&id, &reason);
        shared.events.send(Event::Disconnected { id, reason });
    }
}

/// Reads `Hello` and answers `Welcome`: the participant's software version and the transfer it
/// asks to resume.
async fn handshake(
    shared: &Shared,
    id: &str,
    inbound: &mut Streaming<ParticipantMessage>,
    outbox: &mpsc::Sender<Result<CoordinatorMessage, Status>>,
) -> Result<(String, Option<Resume>), Refusal> {
    let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await;
    let hello = match first {
        Ok(Ok(Some(ParticipantMessage {
            body: Some(Inbound::Hello(hello)),
        }))) => hello,
        Ok(Ok(Some(_))) => {
            return Err(Refusal::FailedPrecondition(
                "the first message of a session must be Hello".into(),
            ));
        }
        Ok(Err(status)) => {
            return Err(unreadable(&status).unwrap_or_else(|| {
                Refusal::FailedPrecondition("session closed before Hello".into())
            }));
        }
        Ok(Ok(None)) => {
            return Err(Refusal::FailedPrecondition(
                "session closed before Hello".into(),
            ));
        }
        Err(_) => {
            return Err(Refusal::FailedPrecondition(format!(
                "no Hello within {} s",
                HELLO_TIMEOUT.as_secs()
            )));
        }
    };
    if hello.protocol_version != cairn_proto::PROTOCOL_VERSION {
        return Err(Refusal::FailedPrecondition(format!(
            "protocol version {} is not supported; this coordinator speaks version {}",
            hello.protocol_version,
            cairn_proto::PROTOCOL_VERSION
        )));
    }
    let resume = hello.resume.map(resume_of).transpose()?;
    tracing::debug!(participant = %id, client_version = %hello.client_version, ?resume, "hello");
    let welcome = Welcome {
        protocol_version: cairn_proto::PROTOCOL_VERSION,
        job_name: shared.job.name.clone(),
        participant_id: id.to_string(),
        heartbeat_interval_s: shared.heartbeat_interval.as_secs().max(1) as u32,
        task: Some(shared.job.task_spec()),
        chain: Some(shared.ledger.head()),
    };
    outbox
        .send(message(Outbound::Welcome(welcome)))
        .await
        .map_err(|_| Refusal::FailedPrecondition("session closed during the handshake".into()))?;
    Ok((hello.client_version.chars().take(200).collect(), resume))
}

/// A message the transport could not take in, as the refusal the participant is answered with,
/// so that it learns why instead of seeing its stream end as if all were well; `None` when the
/// connection itself failed.
fn unreadable(status: &Status) -> Option<Refusal> {
    match status.code() {
        // tonic's decoder refuses a message past the server's limit with OUT_OF_RANGE.
        tonic::Code::OutOfRange => Some(Refusal::ResourceExhausted(format!(
            "message too large ({}); a message may have at most {} bytes, and models and updates travel in chunks of {} bytes",
            status.message(),
            cairn_proto::MAX_MESSAGE_BYTES,
            cairn_proto::MAX_CHUNK_BYTES
        ))),
        // And bytes that are not protobuf, with INTERNAL and prost's decode error.
        tonic::Code::Internal if status.message().contains("failed to decode") => {
            Some(Refusal::InvalidArgument(format!(
                "message is not a cairn.v1.ParticipantMessage ({}); expected protobuf of the schema in cairn-proto",
                status.message()
            )))
        }
        _ => None,
    }
}

/// Reads a `Hello`'s request to resume a transfer.
fn resume_of(resume: cairn_proto::v1::ResumeTransfer) -> Result<Resume, Refusal> {
    use cairn_proto::v1::resume_transfer::Kind;
    if resume.sha256.len() != 32 {
        return Err(Refusal::InvalidArgument(format!(
            "Hello.resume.sha256 has {} bytes, expected 32",
            resume.sha256.len()
        )));
    }
    let transfer = match Kind::try_from(resume.kind) {
        Ok(Kind::GlobalModel) => ResumedTransfer::GlobalModel {
            next_chunk: resume.next_chunk,
        },
        Ok(Kind::Update) => ResumedTransfer::Update,
        _ => {
            return Err(Refusal::InvalidArgument(format!(
                "Hello.resume.kind is {}, expected GLOBAL_MODEL (1) or UPDATE (2)",
                resume.kind
            )));
        }
    };
    Ok(Resume {
        round: resume.round,
        sha256: resume.sha256,
        transfer,
    })
}

async fn send_heartbeats(
    outbox: mpsc::Sender<Result<CoordinatorMessage, Status>>,
    interval: Duration,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let heartbeat = cairn_proto::v1::Heartbeat {
            sent_at_unix_ms: unix_ms(),
        };
        if outbox
            .send(message(Outbound::Heartbeat(heartbeat)))
            .await
            .is_err()
        {
            return;
        }
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A transfer being received: a plaintext update or a masked input.
enum Incoming {
    Update(PendingUpdate),
    Masked(super::secure::PendingMasked),
}

impl Incoming {
    fn round(&self) -> u64 {
        match self {
            Incoming::Update(u) => u.round,
            Incoming::Masked(m) => m.round,
        }
    }
}

/// An update being received: its header; its chunks go to the round machine as they arrive.
struct PendingUpdate {
    round: u64,
    assembler: Assembler,
}

/// A live session past its handshake.
struct Session<'a> {
    shared: &'a Arc<Shared>,
    peer: &'a Peer,
    serial: u64,
    outbox: &'a mpsc::Sender<Result<CoordinatorMessage, Status>>,
    /// Sends the round records once the participant said where its countersigning stands.
    records: Option<tokio::task::JoinHandle<()>>,
}

impl Session<'_> {
    /// Reads the session's messages until it ends.
    async fn read(
        &mut self,
        inbound: &mut Streaming<ParticipantMessage>,
        expelled: &mut mpsc::Receiver<String>,
    ) -> Ended {
        let (shared, peer) = (self.shared, self.peer);
        let id = peer.id.as_str();
        let silence = shared.heartbeat_interval * 3;
        let mut pending: Option<Incoming> = None;
        let budget = super::events::session_budget();
        loop {
            let received = tokio::select! {
                biased;
                Some(reason) = expelled.recv() => {
                    return Ended::Refused(Refusal::FailedPrecondition(reason));
                }
                received = tokio::time::timeout(silence, inbound.message()) => received,
            };
            let next = match received {
                Err(_) => {
                    return Ended::Gone(format!(
                        "silent for {} s (no heartbeat)",
                        silence.as_secs()
                    ));
                }
                Ok(Err(status)) => {
                    return match unreadable(&status) {
                        Some(refusal) => Ended::Refused(refusal),
                        None => Ended::Gone(format!("connection lost: {}", status.message())),
                    };
                }
                Ok(Ok(None)) => return Ended::Gone("closed the session".into()),
                Ok(Ok(Some(message))) => message,
            };
            shared
                .monitor
                .metrics
                .bytes_received
                .inc_by(next.encoded_len() as u64);
            shared.monitor.seen(id);
            let body = match next.body {
                // The round log's messages are the session's own; the round machine never
                // sees them.
                Some(Inbound::SignedThrough(position)) => {
                    if let Err(refusal) = self.signed_through(position) {
                        return Ended::Refused(refusal);
                    }
                    continue;
                }
                Some(Inbound::Countersignature(signature)) => {
                    if let Err(reason) =
                        countersign::accept(shared, id, &peer.certificate, signature)
                    {
                        return Ended::Refused(Refusal::InvalidArgument(reason));
                    }
                    continue;
                }
                body => body,
            };
            // Waits while this session's earlier events fill its share of the machine's queue.
            let Ok(permit) = budget.clone().acquire_owned().await else {
                return Ended::Gone("the job is over".into());
            };
            if let Err(refusal) = on_message(shared, peer, &mut pending, body, permit) {
                return Ended::Refused(refusal);
            }
        }
    }

    /// The participant says which record it countersigned last: the records after it are
    /// sent from now on. Said once per session.
    fn signed_through(&mut self, position: SignedThrough) -> Result<(), Refusal> {
        if self.records.is_some() {
            return Err(Refusal::FailedPrecondition(
                "SignedThrough sent twice; it is said once per session".into(),
            ));
        }
        let expected = match position.round {
            0 => 0,
            _ => 32,
        };
        if position.record_sha256.len() != expected {
            return Err(Refusal::InvalidArgument(format!(
                "SignedThrough of round {} carries a record hash of {} bytes, expected {expected}",
                position.round,
                position.record_sha256.len()
            )));
        }
        self.records = Some(countersign::start(
            self.shared,
            &self.peer.id,
            self.serial,
            position.round,
            self.outbox.clone(),
        ));
        Ok(())
    }
}

/// Checks one message of the session and turns it into a round event that holds `permit` (or
/// into the next part of a transfer); a refusal ends the session.
fn on_message(
    shared: &Shared,
    peer: &Peer,
    pending: &mut Option<Incoming>,
    body: Option<Inbound>,
    permit: OwnedSemaphorePermit,
) -> Result<(), Refusal> {
    let id = peer.id.as_str();
    match body {
        None => Err(Refusal::InvalidArgument("message has no body".into())),
        Some(Inbound::Heartbeat(_)) => Ok(()),
        // Handled by the session before it comes here.
        Some(Inbound::SignedThrough(_) | Inbound::Countersignature(_)) => Ok(()),
        Some(Inbound::Hello(_)) => Err(Refusal::FailedPrecondition(
            "Hello sent twice; it is only the first message".into(),
        )),
        Some(Inbound::Update(header)) => no_transfer_pending(pending)
            .and_then(|()| start_update(shared, header))
            .map(|(update, weight, weighted_train_loss)| {
                let event = Event::UpdateStarted {
                    id: id.to_string(),
                    round: update.round,
                    weight,
                    weighted_train_loss,
                    sha256: update.assembler.header().sha256.clone(),
                    first_chunk: update.assembler.next_index(),
                };
                shared.events.send_held(event, permit);
                *pending = Some(Incoming::Update(update));
            }),
        Some(Inbound::MaskedInput(header)) => no_transfer_pending(pending)
            .and_then(|()| {
                // A masked update, or a masked evaluation when the round's evaluation is
                // aggregated; which one the round is running, its protocol machine checks.
                let update = cairn_secagg::quantize::UpdateEncoding::vector_len(shared.n_values);
                let evaluation = EvaluationEncoding::vector_len(&shared.metrics);
                let announced = header.transfer.as_ref().map(|t| t.total_bytes / 4);
                let len = match announced == Some(evaluation as u64) {
                    true => evaluation,
                    false => update,
                };
                secure::start_masked(header, len)
                    .map_err(|e| Refusal::InvalidArgument(e.to_string()))
            })
            .map(|p| *pending = Some(Incoming::Masked(p))),
        Some(Inbound::Chunk(chunk)) => on_chunk(shared, id, pending, chunk, permit),
        // Its neighbours verify the advertised certificate; advertising another one than it
        // authenticated with could only make them abort the round for everyone.
        Some(Inbound::Advertisement(ad)) if ad.certificate != peer.certificate => {
            Err(Refusal::InvalidArgument(
                "the advertised certificate is not the one this session authenticated with".into(),
            ))
        }
        Some(Inbound::Advertisement(ad)) => forward(shared, id, secure::advertisement(ad), permit),
        Some(Inbound::GraphNonce(nonce)) => forward(shared, id, secure::graph_nonce(nonce), permit),
        Some(Inbound::Shares(shares)) => {
            forward(shared, id, secure::encrypted_shares(shares), permit)
        }
        Some(Inbound::SurvivorSignature(signature)) => {
            forward(shared, id, secure::survivor_signature(signature), permit)
        }
        Some(Inbound::Reveal(reveal)) => forward(shared, id, secure::reveal(reveal), permit),
        Some(Inbound::Evaluation(report)) => {
            check_evaluation(&report, &shared.metrics).map(|totals| {
                let event = Event::EvaluationReceived {
                    id: id.to_string(),
                    round: report.round,
                    totals,
                };
                shared.events.send_held(event, permit);
            })
        }
    }
}

/// Checks a chunk of the transfer being received and passes it on to the round machine, which
/// adds it into the round's sum.
fn on_chunk(
    shared: &Shared,
    id: &str,
    pending: &mut Option<Incoming>,
    chunk: cairn_proto::v1::Chunk,
    permit: OwnedSemaphorePermit,
) -> Result<(), Refusal> {
    match pending.take() {
        None => Err(Refusal::FailedPrecondition(format!(
            "chunk {} of round {} arrived without an update or masked input header",
            chunk.index, chunk.round
        ))),
        Some(Incoming::Update(mut update)) => {
            let piece = update.assembler.accept_floats(chunk).map_err(|e| {
                Refusal::InvalidArgument(format!("update for round {}: {e}", update.round))
            })?;
            let round = update.round;
            if !piece.last {
                *pending = Some(Incoming::Update(update));
            }
            let event = Event::UpdatePiece {
                id: id.to_string(),
                round,
                piece,
            };
            shared.events.send_held(event, permit);
            Ok(())
        }
        Some(Incoming::Masked(mut masked)) => {
            let piece = masked.assembler.accept_words(chunk).map_err(|e| {
                Refusal::InvalidArgument(format!("masked input for round {}: {e}", masked.round))
            })?;
            let (round, attempt) = (masked.round, masked.attempt);
            if !piece.last {
                *pending = Some(Incoming::Masked(masked));
            }
            let event = Event::Secure {
                id: id.to_string(),
                round,
                attempt,
                message: SecureMessage::MaskedInput(piece),
            };
            shared.events.send_held(event, permit);
            Ok(())
        }
    }
}

/// Refuses a new transfer while another one is still arriving.
fn no_transfer_pending(pending: &Option<Incoming>) -> Result<(), Refusal> {
    match pending {
        None => Ok(()),
        Some(previous) => Err(Refusal::FailedPrecondition(format!(
            "a new transfer header arrived before the transfer for round {} was complete",
            previous.round()
        ))),
    }
}

/// Passes a well-formed secure-aggregation message to the round machine.
fn forward(
    shared: &Shared,
    id: &str,
    parsed: Result<(u64, u32, SecureMessage), secure::Malformed>,
    permit: OwnedSemaphorePermit,
) -> Result<(), Refusal> {
    let (round, attempt, message) = parsed.map_err(|e| Refusal::InvalidArgument(e.to_string()))?;
    let event = Event::Secure {
        id: id.to_string(),
        round,
        attempt,
        message,
    };
    shared.events.send_held(event, permit);
    Ok(())
}

/// Checks an update's header against the model: the transfer to receive, the weight and the
/// weighted loss.
fn start_update(
    shared: &Shared,
    header: UpdateHeader,
) -> Result<(PendingUpdate, u64, f64), Refusal> {
    let transfer = header
        .transfer
        .ok_or_else(|| Refusal::InvalidArgument("update header has no transfer header".into()))?;
    let round = transfer.round;
    let expected = shared.n_values as u64;
    let what = format!("model update for round {round}");
    let tensors = transfer.tensors.clone();
    let mut assembler = Assembler::new(transfer, what, Some(expected))
        .map_err(|e| Refusal::InvalidArgument(e.to_string()))?;
    // A resumed update: its chunks before `first_chunk` are in the round's sum already, from
    // the participant's previous session; the round machine checks that they are.
    if header.first_chunk > 0 {
        assembler.resume_at(header.first_chunk).map_err(|_| {
            Refusal::InvalidArgument(format!(
                "update for round {round} resumes at chunk {} of {}",
                header.first_chunk,
                assembler.header().n_chunks
            ))
        })?;
    }
    if tensors != shared.wire_layout {
        let describe = |t: &[cairn_proto::v1::TensorSpec]| {
            t.iter()
                .map(|s| format!("{} {:?}", s.name, s.shape))
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(Refusal::InvalidArgument(format!(
            "update tensors [{}] differ from the model's [{}]",
            describe(&tensors),
            describe(&shared.wire_layout)
        )));
    }
    check_weight_and_loss(header.weight, header.weighted_train_loss)
        .map_err(|e| Refusal::InvalidArgument(e.to_string()))?;
    Ok((
        PendingUpdate { round, assembler },
        header.weight,
        header.weighted_train_loss,
    ))
}

/// Reads an evaluation report: at least one example, and exactly the job's metrics in its order
/// with sums that are possible for its example count.
fn check_evaluation(report: &EvaluationReport, metrics: &[Metric]) -> Result<Totals, Refusal> {
    if report.n_examples == 0 {
        return Err(Refusal::InvalidArgument(format!(
            "evaluation for round {} of 0 examples; expected at least 1",
            report.round
        )));
    }
    Totals::from_wire(report, metrics).map_err(|e| {
        Refusal::InvalidArgument(format!("evaluation for round {}: {e}", report.round))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(n_examples: u64, loss_sum: f64, correct: f64) -> EvaluationReport {
        let mut totals = Totals::new(&[Metric::Loss, Metric::Accuracy]);
        totals.n_examples = n_examples;
        totals.metrics[0].1[0] = loss_sum;
        totals.metrics[1].1[0] = correct;
        totals.to_wire(3)
    }

    fn refusal(result: Result<Totals, Refusal>) -> String {
        match result {
            Err(Refusal::InvalidArgument(message)) => message,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn a_message_the_transport_cannot_read_is_refused_with_the_reason() {
        let too_large = Status::out_of_range(
            "Error, decoded message length too large: found 5242885 bytes, the limit is: 4194304 bytes",
        );
        let refusal = unreadable(&too_large).expect("a refusal");
        assert!(
            matches!(&refusal, Refusal::ResourceExhausted(m) if m.contains("5242885 bytes")),
            "{refusal:?}"
        );
        let not_protobuf = Status::internal("failed to decode Protobuf message: invalid wire type");
        let refusal = unreadable(&not_protobuf).expect("a refusal");
        assert_eq!(refusal.into_status().code(), tonic::Code::InvalidArgument);
        // A connection that broke is not the participant's fault.
        assert!(unreadable(&Status::unknown("h2 protocol error: connection reset")).is_none());
    }

    #[test]
    fn evaluation_reports_must_carry_the_jobs_metrics() {
        let job = [Metric::Loss, Metric::Accuracy];
        let totals = check_evaluation(&report(10, 4.0, 9.0), &job).unwrap();
        assert_eq!(totals.n_examples, 10);
        assert_eq!(totals.metrics[1], (Metric::Accuracy, vec![9.0]));

        let err = refusal(check_evaluation(&report(0, 0.0, 0.0), &job));
        assert!(err.contains("round 3 of 0 examples"), "{err}");
        let err = refusal(check_evaluation(&report(10, 4.0, 11.0), &job));
        assert!(
            err.contains("round 3") && err.contains("accuracy") && err.contains("11"),
            "{err}"
        );
        let err = refusal(check_evaluation(&report(10, 4.0, 9.0), &[Metric::RocAuc]));
        assert!(err.contains("roc_auc") && err.contains("loss"), "{err}");
        let mut negative = report(10, -1.0, 9.0);
        negative.metrics.swap(0, 1);
        let err = refusal(check_evaluation(&negative, &job));
        assert!(err.contains("the job asks for"), "{err}");
    }
}
