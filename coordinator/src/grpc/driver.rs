//! The round driver: one thread that owns the round machine, feeds it events from the sessions and
//! deadline timers, and carries out its commands. It runs on tokio's blocking pool, not on the
//! async runtime: adding chunks into the sum, unmasking (spread over rayon's pool) and the
//! commit's fsyncs take as long as the model is large, and the runtime's workers stay free for
//! the sessions, their heartbeats and the monitoring API meanwhile. Sending a model to many
//! participants happens in one task per recipient, so a slow reader never stalls the driver.

use super::{Connection, Shared};
use crate::Error;
use crate::config::JobSpec;
use crate::round::{
    Command, Event, ParticipantId, Phase, PrivacySettings, RoundMachine, RoundOutcome,
    RoundSettings, SecureOutbound, SecureSettings, SecureSetup,
};
use crate::store::{OptimizerState, Resume, RoundRecord, Store};
use crate::strategy::ServerOptimizer;
use cairn_proto::v1::coordinator_message::Body;
use cairn_proto::v1::{
    CoordinatorMessage, EvaluateInstruction, JobFinished, TrainInstruction, TrainingConfig,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// When the running round started and the byte counters at that moment.
struct RoundClock {
    round: u64,
    started: Instant,
    bytes_in: u64,
    bytes_out: u64,
}

/// Runs the job to its end; blocks, so it is called through `spawn_blocking` (where
/// `tokio::spawn` still reaches the runtime, for sending and for deadlines).
pub(super) fn run(
    shared: Arc<Shared>,
    store: Store,
    resume: Resume,
    initial: Vec<f32>,
    mut events: mpsc::UnboundedReceiver<super::events::Queued>,
) -> Result<super::JobReport, Error> {
    let mut driver = match Driver::start(shared, store, resume, initial)? {
        Started::Running(driver) => driver,
        Started::AlreadyComplete(report) => return Ok(report),
    };
    // The permit an event holds is released once the machine has handled it.
    while let Some((event, _permit)) = events.blocking_recv() {
        for command in driver.machine.handle(event) {
            if let Some(report) = driver.execute(command)? {
                return Ok(report);
            }
        }
    }
    Err(Error::EventsClosed)
}

/// What starting the driver found.
enum Started {
    /// Rounds remain to be run.
    Running(Box<Driver>),
    /// Every round was already committed in the state directory.
    AlreadyComplete(super::JobReport),
}

/// The round machine and what carrying out its commands needs; one method per command.
struct Driver {
    shared: Arc<Shared>,
    store: Store,
    machine: RoundMachine,
    /// Every committed round, the resumed ones first.
    rounds: Vec<RoundRecord>,
    clock: Option<RoundClock>,
    /// How many of each participant's messages the round machine ignored this round.
    ignored: HashMap<ParticipantId, u32>,
    /// The secure evaluation running, if one is.
    secure_evaluation: Option<SecureEvaluation>,
    /// When the current phase started (its deadline was set), which a grace is measured from.
    phase_started: Instant,
}

/// A secure evaluation: operators see it as the `evaluate` phase of the attempt that trained
/// the model, though the round machine runs it under the next attempt number.
#[derive(Debug, Clone, Copy)]
struct SecureEvaluation {
    round: u64,
    /// The attempt its messages carry.
    attempt: u32,
    /// The attempt that trained the model it evaluates.
    trained: u32,
}

/// The job's differential privacy for a model of `dim` parameters, checked to fit the 2^32
/// modulus with every listed participant; logged, with what one round and the budget allow.
fn privacy_settings(job: &JobSpec, dim: usize) -> Result<Option<PrivacySettings>, Error> {
    let Some(spec) = &job.privacy else {
        return Ok(None);
    };
    let refused = |source| Error::JobEncoding {
        n_participants: job.participants.len(),
        source,
    };
    let mechanism = spec.mechanism(job.min_participants, dim).map_err(refused)?;
    mechanism
        .check_capacity(job.participants.len() as u64)
        .map_err(refused)?;
    let privacy = PrivacySettings {
        mechanism,
        delta: spec.delta,
        epsilon_budget: spec.epsilon_budget,
    };
    // ε grows with the rounds: the most that fit is found by bisection.
    let (mut affordable, mut unaffordable) = (0, job.rounds + 1);
    while unaffordable - affordable > 1 {
        let mid = affordable + (unaffordable - affordable) / 2;
        match privacy.epsilon_after(mid) <= spec.epsilon_budget {
            true => affordable = mid,
            false => unaffordable = mid,
        }
    }
    tracing::info!(
        "differential privacy: distributed discrete Gaussian, clip norm {}, noise multiplier {}, at least {} sites' noise per sum; one round costs epsilon {:.3} at delta {}; the budget {} allows {affordable} of the job's {} rounds",
        spec.clip_norm,
        spec.noise_multiplier,
        mechanism.min_contributors(),
        privacy.epsilon_after(1),
        spec.delta,
        spec.epsilon_budget,
        job.rounds
    );
    Ok(Some(privacy))
}

/// How long the end of a job waits for the last record's countersignatures: a participant
/// signs as soon as its session has read what came before, so this is for a slow link.
const COUNTERSIGN_WAIT: Duration = Duration::from_secs(10);

/// Ignored messages of one participant logged per round; the rest are counted.
const LOGGED_IGNORED: u32 = 3;
/// Ignored messages after which a participant's session is ended: a participant that keeps
/// sending what the protocol does not allow is broken or hostile, and costs the others work.
const MAX_IGNORED: u32 = 32;

impl Driver {
    /// Builds the round machine from the job and what the state directory holds; `initial` is
    /// the job's model file, the global model until a round is committed.
    fn start(
        shared: Arc<Shared>,
        store: Store,
        resume: Resume,
        initial: Vec<f32>,
    ) -> Result<Started, Error> {
        let job = &shared.job;
        let settings = RoundSettings {
            rounds: job.rounds,
            min_participants: job.min_participants,
            fraction: job.fraction,
            phase_deadline: job.phase_deadline(),
            max_round_attempts: job.max_round_attempts,
            seed: job.seed,
            metrics: shared.metrics.clone(),
            max_weight: job.secure_aggregation.max_weight,
            clip_norm: job.secure_aggregation.clip_norm,
            secure: match job.secure_aggregation.enabled {
                false => None,
                true => Some(SecureSettings {
                    job: job.name.clone(),
                    spec: job.secure_aggregation.clone(),
                    encoding: job.secure_aggregation.encoding(job.participants.len())?,
                    privacy: privacy_settings(job, initial.len())?,
                }),
            },
        };
        let rounds = resume.rounds;
        let committed = rounds.len() as u64;
        let global = resume.global.unwrap_or(initial);
        let optimizer = match resume.optimizer_state {
            Some(state) => ServerOptimizer::resumed(&job.server_optimizer, global.len(), state)?,
            None => ServerOptimizer::new(&job.server_optimizer, global.len()),
        };
        tracing::info!(
            "server optimiser: {}; FedProx mu {}",
            job.server_optimizer.describe(),
            job.proximal_mu
        );
        let machine = RoundMachine::new(settings, optimizer, global, committed + 1);
        shared.monitor.set_model(machine.global().clone());
        if let Some(finished) = machine.finished_because() {
            shared.finished.store(true, Ordering::SeqCst);
            let model_path = store.final_model_path();
            let signatures = shared.ledger.signatures.of_round(committed);
            store.write_final_model(&shared.layout, machine.global(), signatures)?;
            let reason = format!(
                "{finished} with the {committed} rounds committed in {}",
                store.dir().display()
            );
            tracing::info!("job {} is complete: {reason}; nothing to run", job.name);
            return Ok(Started::AlreadyComplete(super::JobReport {
                rounds,
                succeeded: true,
                reason,
                model_path,
            }));
        }
        if committed > 0 {
            tracing::info!(
                "resuming job {} at round {} of {} ({committed} rounds committed in {})",
                job.name,
                committed + 1,
                job.rounds,
                store.dir().display()
            );
        }
        Ok(Started::Running(Box::new(Driver {
            shared,
            store,
            machine,
            rounds,
            clock: None,
            ignored: HashMap::new(),
            secure_evaluation: None,
            phase_started: Instant::now(),
        })))
    }

    /// Carries out one command; the job's report once the machine has finished it.
    fn execute(&mut self, command: Command) -> Result<Option<super::JobReport>, Error> {
        match command {
            Command::SendTrain {
                round,
                to,
                model,
                secure,
            } => self.send_train(round, &to, &model, secure.as_ref()),
            Command::ResumeTrain {
                round,
                to,
                model,
                first_chunk,
            } => {
                tracing::info!(participant = %to, round, "round {round}: {to} reconnected and resumes receiving the global model at chunk {first_chunk}");
                let config = self.training_config(round);
                send_model(&self.shared, &[to], round, &model, first_chunk, |header| {
                    Body::Train(TrainInstruction {
                        config: Some(config),
                        model: Some(header),
                        secure_aggregation: None,
                        first_chunk,
                    })
                });
            }
            Command::ResumeUpdate {
                round,
                to,
                sha256,
                next_chunk,
            } => {
                tracing::info!(participant = %to, round, "round {round}: {to} reconnected and resumes its update at chunk {next_chunk}");
                let message = CoordinatorMessage {
                    body: Some(Body::ResumeUpdate(cairn_proto::v1::ResumeUpdate {
                        round,
                        sha256,
                        next_chunk,
                    })),
                };
                let connections = self
                    .shared
                    .connections
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                if let Some(connection) = connections.get(&to).cloned() {
                    tokio::spawn(async move {
                        let _ = connection.outbox.send(Ok(message)).await;
                    });
                }
            }
            Command::SendSecure {
                round,
                attempt,
                messages,
            } => send_secure(&self.shared, round, attempt, messages),
            Command::SendEvaluate {
                round,
                trained,
                to,
                model,
                secure,
            } => {
                self.secure_evaluation = secure.as_ref().map(|setup| SecureEvaluation {
                    round,
                    attempt: setup.attempt,
                    trained,
                });
                self.send_evaluate(round, &to, &model, secure.as_ref())
            }
            Command::StartDeadline {
                round,
                attempt,
                phase,
                after,
            } => self.start_deadline(round, attempt, phase, after),
            Command::StartGrace {
                round,
                attempt,
                phase,
            } => self.start_grace(round, attempt, phase),
            Command::Commit {
                outcome,
                model,
                optimizer_state,
            } => self.commit(outcome, model, &optimizer_state)?,
            Command::RoundFailed {
                round,
                attempt,
                reason,
            } => {
                tracing::warn!(
                    round,
                    attempt,
                    "round {round} attempt {attempt} failed: {reason}; global model unchanged, retrying"
                );
                self.shared.monitor.round_failed(round, attempt, &reason);
            }
            Command::Ignored { id, reason } => self.ignored(id, reason),
            Command::Finish {
                rounds_completed,
                succeeded,
                reason,
            } => return self.finish(rounds_completed, succeeded, reason).map(Some),
        }
        Ok(None)
    }

    /// How participants train in `round`.
    fn training_config(&self, round: u64) -> TrainingConfig {
        let job = &self.shared.job;
        TrainingConfig {
            local_epochs: job.local_epochs,
            batch_size: job.batch_size,
            learning_rate: job.learning_rate,
            seed: job.seed ^ round.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            proximal_mu: job.proximal_mu,
        }
    }

    /// Starts the round's clock (on its first attempt) and sends the training instruction with
    /// the global model to the selected participants.
    fn send_train(
        &mut self,
        round: u64,
        to: &[ParticipantId],
        model: &Arc<Vec<f32>>,
        secure: Option<&SecureSetup>,
    ) {
        let config = self.training_config(round);
        let shared = &self.shared;
        if self.clock.as_ref().is_none_or(|c| c.round != round) {
            self.clock = Some(RoundClock {
                round,
                started: Instant::now(),
                bytes_in: shared.monitor.metrics.bytes_received.get(),
                bytes_out: shared.monitor.metrics.bytes_sent.get(),
            });
        }
        let how = if secure.is_some() {
            "secure aggregation"
        } else {
            "plaintext updates"
        };
        tracing::info!(round, participants = ?to, "round {round}: training on {} participants ({how})", to.len());
        let secure_aggregation = secure.map(super::secure::setup);
        shared.monitor.round_started(round, to);
        send_model(shared, to, round, model, 0, |header| {
            Body::Train(TrainInstruction {
                config: Some(config),
                model: Some(header),
                secure_aggregation: secure_aggregation.clone(),
                first_chunk: 0,
            })
        });
    }

    /// Sends the new global model to the participants that evaluate it, with the secure
    /// aggregation their evaluations go through when the job has it on.
    fn send_evaluate(
        &self,
        round: u64,
        to: &[ParticipantId],
        model: &Arc<Vec<f32>>,
        secure: Option<&SecureSetup>,
    ) {
        if secure.is_some() {
            tracing::info!(round, participants = ?to, "round {round}: evaluating the new model on {} participants (secure aggregation)", to.len());
        }
        let secure_aggregation = secure.map(super::secure::setup);
        send_model(&self.shared, to, round, model, 0, |header| {
            Body::Evaluate(EvaluateInstruction {
                model: Some(header),
                secure_aggregation: secure_aggregation.clone(),
            })
        });
    }

    /// Starts a phase's deadline: its expiry arrives at the machine as an event.
    fn start_deadline(&mut self, round: u64, attempt: u32, phase: Phase, after: Duration) {
        match self.secure_evaluation {
            Some(running) if (running.round, running.attempt) == (round, attempt) => {
                if phase == Phase::AdvertiseKeys {
                    self.shared
                        .monitor
                        .phase_started(round, running.trained, Phase::Evaluate);
                }
            }
            _ => self.shared.monitor.phase_started(round, attempt, phase),
        }
        self.phase_started = Instant::now();
        let expired = Event::DeadlineExpired {
            round,
            attempt,
            phase,
        };
        self.feed_back_after(after, expired);
    }

    /// Feeds back the end of a phase's grace after as long again as the phase has run.
    fn start_grace(&self, round: u64, attempt: u32, phase: Phase) {
        let expired = Event::GraceExpired {
            round,
            attempt,
            phase,
        };
        self.feed_back_after(self.phase_started.elapsed(), expired);
    }

    /// Hands `event` to the round machine after `after`.
    fn feed_back_after(&self, after: Duration, event: Event) {
        let events = self.shared.events.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            events.send(event);
        });
    }

    /// Makes the round durable with what it cost (time, bytes), then shows it.
    /// Logs a message the round machine ignored, the first few per participant and round; ends
    /// the session of a participant that sends [`MAX_IGNORED`] of them in one round.
    fn ignored(&mut self, id: ParticipantId, reason: String) {
        let count = self.ignored.entry(id.clone()).or_default();
        *count += 1;
        match *count {
            n if n <= LOGGED_IGNORED => {
                tracing::warn!(participant = %id, "ignored a message from {id}: {reason}");
            }
            n if n == LOGGED_IGNORED + 1 => tracing::warn!(
                participant = %id,
                "ignored another message from {id} ({reason}); further ones this round are counted, not logged"
            ),
            n if n >= MAX_IGNORED => {
                self.ignored.remove(&id);
                let reason = format!(
                    "{MAX_IGNORED} messages this round that the protocol does not allow (the last: {reason}); the session is ended"
                );
                tracing::warn!(participant = %id, "dropping {id}: {reason}");
                let connections = self
                    .shared
                    .connections
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                if let Some(connection) = connections.get(&id) {
                    let _ = connection.expel.try_send(reason);
                }
            }
            _ => {}
        }
    }

    fn commit(
        &mut self,
        outcome: RoundOutcome,
        model: Arc<Vec<f32>>,
        optimizer_state: &[f32],
    ) -> Result<(), Error> {
        self.ignored.clear();
        let shared = &self.shared;
        let (duration_s, bytes_in, bytes_out) = match &self.clock {
            Some(c) => (
                c.started.elapsed().as_secs_f64(),
                shared.monitor.metrics.bytes_received.get() - c.bytes_in,
                shared.monitor.metrics.bytes_sent.get() - c.bytes_out,
            ),
            None => (0.0, 0, 0),
        };
        let record = RoundRecord {
            outcome,
            duration_s,
            bytes_in,
            bytes_out,
            committed_at: now_rfc3339(),
            checkpoint_sha256: String::new(),
            optimizer_state_sha256: String::new(),
            phase_durations: shared.monitor.take_phase_timings(),
            previous_record_sha256: String::new(),
            job_sha256: String::new(),
            model_before_sha256: String::new(),
            model_sha256: String::new(),
        };
        let optimizer = OptimizerState {
            layout: &shared.optimizer_layout,
            values: optimizer_state,
        };
        let (record, line) = self
            .store
            .commit(&record, &shared.layout, &model, optimizer)?;
        log_round(&record, shared.job.rounds);
        shared
            .monitor
            .set_chain_head(self.store.chain_head_sha256());
        shared.ledger.committed(line);
        shared.monitor.round_committed(&record, model);
        self.rounds.push(record);
        Ok(())
    }

    /// Waits, before the job's end is announced, for the participants that countersign to
    /// sign the last record, so that the final model's provenance carries their signatures; a
    /// participant that takes longer than [`COUNTERSIGN_WAIT`] is logged and not waited for.
    fn await_countersignatures(&self, head: u64) {
        let signing = self.shared.ledger.signing();
        let missing = self
            .shared
            .ledger
            .signatures
            .wait_for(head, &signing, COUNTERSIGN_WAIT);
        if !missing.is_empty() {
            tracing::warn!(
                "round {head}'s record was not countersigned by {} within {} s; the final model's provenance goes without their signatures",
                missing.join(", "),
                COUNTERSIGN_WAIT.as_secs()
            );
        }
    }

    /// Writes the final model and tells every connected participant that the job is over (or,
    /// when it is handed over, to reconnect).
    fn finish(
        &mut self,
        rounds_completed: u64,
        succeeded: bool,
        reason: String,
    ) -> Result<super::JobReport, Error> {
        let shared = &self.shared;
        let job = &shared.job;
        shared.finished.store(true, Ordering::SeqCst);
        let model_path = self.store.final_model_path();
        let hand_over = shared.hand_over.load(Ordering::SeqCst);
        let head = self.rounds.last().map_or(0, |r| r.outcome.round);
        if !hand_over && head > 0 {
            self.await_countersignatures(head);
        }
        let signatures = shared.ledger.signatures.of_round(head);
        self.store
            .write_final_model(&shared.layout, self.machine.global(), signatures)?;
        shared.monitor.job_finished(succeeded, &reason);
        let connections: Vec<Connection> = {
            let mut map = shared.connections.lock().unwrap_or_else(|p| p.into_inner());
            map.drain().map(|(_, c)| c).collect()
        };
        for connection in connections {
            let message = match hand_over {
                // The job goes on under another coordinator: participants reconnect.
                true => Err(tonic::Status::unavailable(format!("{reason}; reconnect"))),
                false => Ok(CoordinatorMessage {
                    body: Some(Body::Finished(JobFinished {
                        rounds_completed,
                        reason: reason.clone(),
                    })),
                }),
            };
            tokio::spawn(async move {
                let _ = connection.outbox.send(message).await;
            });
        }
        if succeeded {
            tracing::info!(
                "job {} finished: {reason}; final model at {}",
                job.name,
                model_path.display()
            );
        } else {
            tracing::error!("job {} stopped: {reason}", job.name);
        }
        Ok(super::JobReport {
            rounds: std::mem::take(&mut self.rounds),
            succeeded,
            reason,
            model_path,
        })
    }
}

/// The global model as the floats a transfer views without copying them.
struct SharedModel(Arc<Vec<f32>>);

impl AsRef<[f32]> for SharedModel {
    fn as_ref(&self) -> &[f32] {
        &self.0
    }
}

/// Sends `model` to each of `to`: the instruction `make` builds around the transfer header,
/// then the chunks from `first_chunk`. Recipients without a live session are skipped; their
/// disconnection event is already on its way to the machine.
fn send_model(
    shared: &Arc<Shared>,
    to: &[String],
    round: u64,
    model: &Arc<Vec<f32>>,
    first_chunk: u32,
    make: impl Fn(cairn_proto::v1::TransferHeader) -> Body,
) {
    // The chunks are views of the model the machine holds anyway: no copy of it per round.
    let (header, chunks) =
        cairn_proto::transfer::split_owned(round, &shared.wire_layout, SharedModel(model.clone()));
    let chunks = Arc::new(chunks);
    let connections = shared.connections.lock().unwrap_or_else(|p| p.into_inner());
    for id in to {
        let Some(connection) = connections.get(id).cloned() else {
            continue;
        };
        let instruction = CoordinatorMessage {
            body: Some(make(header.clone())),
        };
        let chunks = chunks.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            if connection.outbox.send(Ok(instruction)).await.is_err() {
                return;
            }
            for chunk in chunks.iter().skip(first_chunk as usize) {
                let size = chunk.data.len() as u64;
                let message = CoordinatorMessage {
                    body: Some(Body::Chunk(chunk.clone())),
                };
                if connection.outbox.send(Ok(message)).await.is_err() {
                    return;
                }
                shared.monitor.metrics.bytes_sent.inc_by(size);
            }
        });
    }
}

/// Sends each recipient its secure-aggregation message, one task per recipient as for models.
fn send_secure(
    shared: &Arc<Shared>,
    round: u64,
    attempt: u32,
    messages: Vec<(ParticipantId, SecureOutbound)>,
) {
    let connections = shared.connections.lock().unwrap_or_else(|p| p.into_inner());
    for (id, message) in messages {
        let Some(connection) = connections.get(&id).cloned() else {
            continue;
        };
        let message = CoordinatorMessage {
            body: Some(super::secure::outbound(round, attempt, &message)),
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let size = prost::Message::encoded_len(&message) as u64;
            if connection.outbox.send(Ok(message)).await.is_ok() {
                shared.monitor.metrics.bytes_sent.inc_by(size);
            }
        });
    }
}

fn log_round(record: &RoundRecord, rounds: u64) {
    let o = &record.outcome;
    let metrics = o.metrics_text();
    tracing::info!(
        round = o.round,
        "round {:>3}/{rounds} | participants {}/{} | train loss {:.4} | eval {metrics} | {:.2} s | in {} out {}",
        o.round,
        o.contributors.len(),
        o.selected.len(),
        o.train_loss,
        record.duration_s,
        human_bytes(record.bytes_in),
        human_bytes(record.bytes_out),
    );
}

/// `1.2 MB`-style byte counts for logs.
pub fn human_bytes(bytes: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < units.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", units[unit])
    }
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
