//! The round state machine: events in, commands out, no I/O and no clock. The gRPC layer feeds it
//! what participants do ([`Event`]) and carries out what it asks ([`Command`]): send the global
//! model, start a deadline timer, commit a round. Time reaches it only as
//! [`Event::DeadlineExpired`], which it asked for with [`Command::StartDeadline`]; tests drive it
//! by hand.
//!
//! A round: select participants (a `fraction` of those connected, at least `min_participants`),
//! send them the global model, add each answer into the running sum piece by piece as it
//! arrives ([`plain`]), and once every selected participant answered or the deadline passed,
//! let the server optimiser make the next global model if at least `min_participants`
//! contributed; otherwise the round is retried with the same global model. Then every connected participant evaluates the new model on its local
//! test data, and the round is committed.
//!
//! With secure aggregation ([`secure`]), training is followed by the SecAgg+ phases and the sum
//! comes out of the protocol, unmasked, instead of being added up from plaintext updates. The
//! evaluation then runs the same phases again among the connected participants, under the
//! round's next attempt number, with each one's metric sums as its input: the coordinator learns
//! only their totals. If that secure evaluation fails, the round is committed unevaluated.

mod inflight;
mod plain;
mod secure;

pub use secure::{
    PrivacySettings, SecureError, SecureMessage, SecureOutbound, SecureSettings, SecureSetup,
};

use crate::strategy::{EvaluationSum, ServerOptimizer, UpdateSum};
use cairn_proto::metrics::EvaluationEncoding;
use cairn_proto::metrics::{Metric, Totals};
use cairn_proto::transfer::Piece;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha20Rng;
use secure::{Securing, Step};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

/// A participant's identity: the name in its verified client certificate.
pub type ParticipantId = String;

/// The phases of a round in which a participant can be waited for.
/// Ordered as a round runs through them.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Local training; the participant answers with its update in the clear.
    Train,
    /// Local training, then secure aggregation's first step: the participant answers with its
    /// signed public keys and a commitment to a graph nonce.
    AdvertiseKeys,
    /// Participants reveal their graph nonces, which draw the neighbourhood graph.
    DrawGraph,
    /// Participants send their neighbours encrypted shares of their secrets.
    ShareKeys,
    /// Participants send their masked inputs.
    CollectMasked,
    /// Survivors sign the survivor set they were shown.
    ConsistencyCheck,
    /// Survivors reveal the shares that remove the masks.
    Unmask,
    /// Federated evaluation of the new global model.
    Evaluate,
}

impl Phase {
    /// Every phase, in the order a round runs through them.
    pub const ALL: [Phase; 8] = [
        Phase::Train,
        Phase::AdvertiseKeys,
        Phase::DrawGraph,
        Phase::ShareKeys,
        Phase::CollectMasked,
        Phase::ConsistencyCheck,
        Phase::Unmask,
        Phase::Evaluate,
    ];

    /// The phase's name in logs and records.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Train => "train",
            Phase::AdvertiseKeys => "advertise_keys",
            Phase::DrawGraph => "draw_graph",
            Phase::ShareKeys => "share_keys",
            Phase::CollectMasked => "collect_masked",
            Phase::ConsistencyCheck => "consistency_check",
            Phase::Unmask => "unmask",
            Phase::Evaluate => "evaluate",
        }
    }
}

/// What the round machine needs to know about the job.
#[derive(Debug, Clone)]
pub struct RoundSettings {
    /// Rounds to run.
    pub rounds: u64,
    /// Fewest participants a round starts and completes with.
    pub min_participants: usize,
    /// Fraction of connected participants selected per round.
    pub fraction: f64,
    /// Time each participant has per phase.
    pub phase_deadline: Duration,
    /// Attempts of one round before the job gives up.
    pub max_round_attempts: u32,
    /// Seed of participant selection.
    pub seed: u64,
    /// Metrics of the evaluation, in the job's order.
    pub metrics: Vec<Metric>,
    /// Secure aggregation, when the job has it on.
    pub secure: Option<SecureSettings>,
    /// An update's weight is its example count, capped at this (updates in the clear; secure
    /// aggregation caps in its encoding, with the same value).
    pub max_weight: u32,
    /// An update in the clear has its delta clipped to this L2 norm, if set.
    pub clip_norm: Option<f32>,
}

/// Something that happened, fed to the machine.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A participant opened a session (or re-opened one).
    Connected {
        /// Who.
        id: ParticipantId,
        /// The transfer its previous session left unfinished, which it asks to resume.
        resume: Option<Resume>,
    },
    /// A participant's session ended.
    Disconnected {
        /// Who.
        id: ParticipantId,
        /// Why, for the round record.
        reason: String,
    },
    /// A participant's plaintext update begins: its header, checked against the model.
    UpdateStarted {
        /// Who.
        id: ParticipantId,
        /// Round it is for.
        round: u64,
        /// Examples it trained on.
        weight: u64,
        /// Its weight times its mean training loss.
        weighted_train_loss: f64,
        /// SHA-256 of its payload, from its header: what a resumed update must be.
        sha256: Vec<u8>,
        /// The chunk its pieces start at: 0, or where a resumed update goes on.
        first_chunk: u32,
    },
    /// The next piece of a participant's plaintext update, `weight * (local - global)`,
    /// checked against its header's hashes; the machine adds it into the sum and drops it.
    UpdatePiece {
        /// Who.
        id: ParticipantId,
        /// Round it is for.
        round: u64,
        /// The values and where they start.
        piece: Piece<f32>,
    },
    /// A participant's secure-aggregation message.
    Secure {
        /// Who.
        id: ParticipantId,
        /// Round it is for.
        round: u64,
        /// Attempt it is for.
        attempt: u32,
        /// The message.
        message: SecureMessage,
    },
    /// A participant's evaluation of the new global model.
    EvaluationReceived {
        /// Who.
        id: ParticipantId,
        /// Round it is for.
        round: u64,
        /// Its sums of the job's metrics, checked against them (`Totals::from_wire`).
        totals: Totals,
    },
    /// A deadline the machine asked for has passed.
    DeadlineExpired {
        /// Round the deadline was for.
        round: u64,
        /// Attempt of that round.
        attempt: u32,
        /// Phase the deadline was for.
        phase: Phase,
    },
    /// The grace the machine gave a phase's unproven participants has passed.
    GraceExpired {
        /// Round the grace was for.
        round: u64,
        /// Attempt of that round.
        attempt: u32,
        /// Phase the grace was for.
        phase: Phase,
    },
    /// The job is to end now (its resource was deleted, or this coordinator lost leadership):
    /// the running round is abandoned, committed rounds stay.
    Stop {
        /// Why, for the log and the participants.
        reason: String,
    },
}

impl Event {
    /// The participant whose message this event is, if it is one (not a session opening or
    /// ending, a deadline or a stop).
    fn sender(&self) -> Option<&ParticipantId> {
        match self {
            Event::UpdateStarted { id, .. }
            | Event::UpdatePiece { id, .. }
            | Event::Secure { id, .. }
            | Event::EvaluationReceived { id, .. } => Some(id),
            Event::Connected { .. }
            | Event::Disconnected { .. }
            | Event::Stop { .. }
            | Event::DeadlineExpired { .. }
            | Event::GraceExpired { .. } => None,
        }
    }
}

/// A transfer of a plaintext round that a reconnecting participant asks to resume: its previous
/// session broke while the transfer was under way.
#[derive(Debug, Clone, PartialEq)]
pub struct Resume {
    /// Round of the transfer.
    pub round: u64,
    /// SHA-256 of its payload.
    pub sha256: Vec<u8>,
    /// Which transfer.
    pub transfer: ResumedTransfer,
}

/// Which of a round's transfers a participant resumes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ResumedTransfer {
    /// The global model it was receiving, of which it holds the chunks before `next_chunk`.
    GlobalModel {
        /// First chunk it does not hold.
        next_chunk: u32,
    },
    /// The update it was sending, or had trained and was about to send.
    Update,
}

/// A participant that left a round before answering, and why.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Dropout {
    /// Who.
    pub id: ParticipantId,
    /// In which phase.
    pub phase: Phase,
    /// Why ("missed the 60 s deadline", "disconnected: ...").
    pub reason: String,
}

/// What the round logic knows about a completed round.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct RoundOutcome {
    /// 1-based round number.
    pub round: u64,
    /// Attempt that completed (1 unless earlier attempts failed).
    pub attempt: u32,
    /// Participants selected for training.
    pub selected: Vec<ParticipantId>,
    /// Participants whose update is in the aggregate.
    pub contributors: Vec<ParticipantId>,
    /// Participants that dropped out, and in which phase.
    pub dropouts: Vec<Dropout>,
    /// Sum of the contributors' training examples (under differential privacy, where each
    /// site counts as one, the number of contributors).
    pub train_examples: u64,
    /// Training loss, mean over contributors weighted by examples (0 under differential
    /// privacy, where no loss is reported).
    pub train_loss: f64,
    /// Participants that reported an evaluation.
    pub evaluators: usize,
    /// Test examples in the evaluation.
    pub eval_examples: u64,
    /// The job's metrics of the new model over every evaluator's test examples, by name; a
    /// metric is left out when undefined (nobody reported, or for ROC AUC one class missing).
    /// Records written before metrics were named load with none.
    #[serde(default)]
    pub eval_metrics: BTreeMap<String, f64>,
    /// Under differential privacy, the job's `ε` (at its `δ`) once this round is released:
    /// every round so far composed. Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epsilon: Option<f64>,
}

impl RoundOutcome {
    /// The evaluation as `accuracy 0.9123, loss 0.2810` for logs and events (`not evaluated`
    /// when no metric is defined).
    pub fn metrics_text(&self) -> String {
        if self.eval_metrics.is_empty() {
            return "not evaluated".into();
        }
        self.eval_metrics
            .iter()
            .map(|(name, value)| format!("{name} {value:.4}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// What the machine asks its driver to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Send the global model to `to` for training in `round`.
    SendTrain {
        /// Round number.
        round: u64,
        /// Selected participants.
        to: Vec<ParticipantId>,
        /// The global model.
        model: Arc<Vec<f32>>,
        /// Secure aggregation's setup, when the job has it on.
        secure: Option<SecureSetup>,
    },
    /// Send the global model to `to` again, from chunk `first_chunk`: its session broke while
    /// the model arrived, and it holds the chunks before.
    ResumeTrain {
        /// Round number.
        round: u64,
        /// Who.
        to: ParticipantId,
        /// The global model.
        model: Arc<Vec<f32>>,
        /// First chunk to send.
        first_chunk: u32,
    },
    /// Ask `to` to send its update again from chunk `next_chunk`, the first the sum does not
    /// hold.
    ResumeUpdate {
        /// Round number.
        round: u64,
        /// Who.
        to: ParticipantId,
        /// SHA-256 of the update's payload, as the participant named it.
        sha256: Vec<u8>,
        /// First chunk to send.
        next_chunk: u32,
    },
    /// Send secure-aggregation messages.
    SendSecure {
        /// Round number.
        round: u64,
        /// Attempt.
        attempt: u32,
        /// Each recipient's message.
        messages: Vec<(ParticipantId, SecureOutbound)>,
    },
    /// Send the new global model to `to` for evaluation.
    SendEvaluate {
        /// Round number.
        round: u64,
        /// The attempt that trained the model (a secure evaluation runs under the next one).
        trained: u32,
        /// Participants to evaluate.
        to: Vec<ParticipantId>,
        /// The new global model.
        model: Arc<Vec<f32>>,
        /// Secure aggregation's setup for the evaluation, when the job has it on.
        secure: Option<SecureSetup>,
    },
    /// Feed back [`Event::DeadlineExpired`] with these values after `after`.
    StartDeadline {
        /// Round.
        round: u64,
        /// Attempt.
        attempt: u32,
        /// Phase.
        phase: Phase,
        /// Delay.
        after: Duration,
    },
    /// Feed back [`Event::GraceExpired`] with these values after as long again as the phase
    /// has run so far: the time left to its [unproven](RoundMachine::unproven) participants.
    StartGrace {
        /// Round.
        round: u64,
        /// Attempt.
        attempt: u32,
        /// Phase.
        phase: Phase,
    },
    /// Persist the round and its model; the machine moves on without waiting.
    Commit {
        /// The round's record.
        outcome: RoundOutcome,
        /// The new global model.
        model: Arc<Vec<f32>>,
        /// The server optimiser's state after the round (empty for FedAvg), checkpointed with
        /// the model.
        optimizer_state: Arc<Vec<f32>>,
    },
    /// An attempt of a round failed; it is retried with the global model unchanged.
    RoundFailed {
        /// Round.
        round: u64,
        /// Attempt that failed.
        attempt: u32,
        /// Why.
        reason: String,
    },
    /// A message was ignored (late, duplicate, from a participant not selected).
    Ignored {
        /// From whom.
        id: ParticipantId,
        /// Why.
        reason: String,
    },
    /// The job is over.
    Finish {
        /// Rounds committed.
        rounds_completed: u64,
        /// Whether all rounds completed.
        succeeded: bool,
        /// Why it ended.
        reason: String,
    },
}

/// What of a plaintext update an event brings.
enum Arriving {
    /// Its header.
    Header(plain::UpdateHeader),
    /// A piece of its values.
    Piece(Piece<f32>),
}

/// Where the machine is.
#[derive(Debug)]
enum State {
    /// Fewer than `min_participants` connected; the next round starts when enough are.
    AwaitingParticipants,
    /// Selected participants are training.
    AwaitingUpdates(Training),
    /// Selected participants are training, then aggregating securely.
    Securing(Box<Securing>),
    /// Participants are evaluating the new model.
    AwaitingEvaluations(Evaluating),
    /// Participants are evaluating the new model and aggregating their evaluations securely.
    SecureEvaluation(Box<SecureEvaluating>),
    /// All rounds done, or the job gave up.
    Finished,
}

#[derive(Debug)]
struct Training {
    selected: Vec<ParticipantId>,
    pending: BTreeSet<ParticipantId>,
    /// Pending participants whose session broke, with why: they stay selected until the
    /// deadline, and resume their transfer if they reconnect in time.
    away: BTreeMap<ParticipantId, String>,
    contributors: Vec<ParticipantId>,
    dropouts: Vec<Dropout>,
    updates: plain::PlainUpdates,
}

#[derive(Debug)]
struct Evaluating {
    outcome: RoundOutcome,
    model: Arc<Vec<f32>>,
    pending: BTreeSet<ParticipantId>,
    sum: EvaluationSum,
}

#[derive(Debug)]
struct SecureEvaluating {
    securing: Securing,
    outcome: RoundOutcome,
    model: Arc<Vec<f32>>,
}

/// The round state machine of one job.
#[derive(Debug)]
pub struct RoundMachine {
    settings: RoundSettings,
    optimizer: ServerOptimizer,
    /// The optimiser's state after the round being evaluated, adopted when it commits.
    pending_state: Option<Vec<f32>>,
    global: Arc<Vec<f32>>,
    connected: BTreeSet<ParticipantId>,
    /// Participants not waited for to the deadline: each missed a phase's deadline and has sent
    /// nothing since. They are still selected and sent work, and what they send is taken while
    /// its phase is open, but once only they are left to answer in a phase, and enough others
    /// did, they get as long again as the phase has taken (the grace), not the whole deadline.
    /// Anything they send (even too late to count) puts them back among those waited for.
    unproven: BTreeSet<ParticipantId>,
    /// The phase whose unproven participants were given their grace, once per phase.
    grace: Option<(u64, u32, Phase)>,
    /// Round being run (1-based); rounds before it are committed.
    round: u64,
    attempt: u32,
    state: State,
}

impl RoundMachine {
    /// A machine that starts at round `first_round` from `global`.
    pub fn new(
        settings: RoundSettings,
        optimizer: ServerOptimizer,
        global: Vec<f32>,
        first_round: u64,
    ) -> RoundMachine {
        let mut machine = RoundMachine {
            settings,
            optimizer,
            pending_state: None,
            global: Arc::new(global),
            connected: BTreeSet::new(),
            unproven: BTreeSet::new(),
            grace: None,
            round: first_round,
            attempt: 1,
            state: State::AwaitingParticipants,
        };
        if first_round > machine.settings.rounds || machine.budget_spent().is_some() {
            machine.state = State::Finished;
        }
        machine
    }

    /// Why a machine is finished before its first round: all rounds done, or the privacy budget
    /// spent.
    pub fn finished_because(&self) -> Option<String> {
        if !self.is_finished() {
            return None;
        }
        if self.round > self.settings.rounds {
            return Some(format!("all {} rounds completed", self.settings.rounds));
        }
        self.budget_spent()
    }

    /// Round currently running (or next to run).
    pub fn round(&self) -> u64 {
        self.round
    }

    /// The phase being waited for, if a round is running.
    pub fn phase(&self) -> Option<Phase> {
        match self.state {
            State::AwaitingUpdates(_) => Some(Phase::Train),
            State::Securing(ref s) => Some(s.phase),
            State::SecureEvaluation(ref e) => Some(e.securing.phase),
            State::AwaitingEvaluations(_) => Some(Phase::Evaluate),
            _ => None,
        }
    }

    /// Whether the job is over.
    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Finished)
    }

    /// The current global model.
    pub fn global(&self) -> &Arc<Vec<f32>> {
        &self.global
    }

    /// Feeds one event and returns what to do about it, in order.
    pub fn handle(&mut self, event: Event) -> Vec<Command> {
        let mut commands = Vec::new();
        if let Some(id) = event.sender() {
            self.unproven.remove(id);
        }
        match event {
            Event::Connected { id, resume } => {
                self.connected.insert(id.clone());
                self.on_reconnected(id, resume, &mut commands);
            }
            Event::Disconnected { id, reason } => {
                self.connected.remove(&id);
                match &mut self.state {
                    // A plaintext round's transfers resume: the participant stays selected
                    // until the deadline, and what arrives of its update meanwhile (through a
                    // session already replaced) is left out until it resumes.
                    State::AwaitingUpdates(training) if training.pending.contains(&id) => {
                        training.updates.interrupt(&id);
                        training.away.insert(id, reason);
                    }
                    _ => self.drop_pending(&id, format!("disconnected: {reason}")),
                }
            }
            Event::UpdateStarted {
                id,
                round,
                weight,
                weighted_train_loss,
                sha256,
                first_chunk,
            } => self.on_update(
                id,
                round,
                Arriving::Header(plain::UpdateHeader {
                    weight,
                    weighted_train_loss,
                    sha256,
                    first_chunk,
                }),
                &mut commands,
            ),
            Event::UpdatePiece { id, round, piece } => {
                self.on_update(id, round, Arriving::Piece(piece), &mut commands)
            }
            Event::Secure {
                id,
                round,
                attempt,
                message,
            } => self.on_secure(id, round, attempt, message, &mut commands),
            Event::EvaluationReceived { id, round, totals } => {
                let current = round == self.round;
                let accepted = match &mut self.state {
                    State::AwaitingEvaluations(eval) if current => {
                        let pending = eval.pending.remove(&id);
                        if pending {
                            eval.sum.add(&totals);
                        }
                        pending
                    }
                    _ => false,
                };
                if !accepted {
                    commands.push(Command::Ignored {
                        id,
                        reason: format!(
                            "evaluation for round {round} was not asked for or came twice"
                        ),
                    });
                }
            }
            Event::Stop { reason } => {
                if !self.is_finished() {
                    self.state = State::Finished;
                    commands.push(Command::Finish {
                        rounds_completed: self.round - 1,
                        succeeded: false,
                        reason,
                    });
                }
            }
            Event::GraceExpired {
                round,
                attempt,
                phase,
            } => {
                if (round, attempt) == (self.round, self.attempt) && self.phase() == Some(phase) {
                    self.stop_waiting_for_the_unproven();
                }
            }
            Event::DeadlineExpired {
                round,
                attempt,
                phase,
            } => {
                if round == self.round && attempt == self.attempt && self.phase() == Some(phase) {
                    let seconds = self.settings.phase_deadline.as_secs_f64();
                    let pending = match &mut self.state {
                        State::AwaitingUpdates(t) => std::mem::take(&mut t.pending),
                        State::AwaitingEvaluations(e) => std::mem::take(&mut e.pending),
                        _ => self
                            .securing_mut()
                            .map(|s| std::mem::take(&mut s.pending))
                            .unwrap_or_default(),
                    };
                    let away = match &mut self.state {
                        State::AwaitingUpdates(t) => std::mem::take(&mut t.away),
                        _ => BTreeMap::new(),
                    };
                    for id in pending {
                        let reason = match away.get(&id) {
                            Some(why) => format!(
                                "disconnected ({why}) and did not resume within the {seconds} s deadline"
                            ),
                            None => format!(
                                "missed the {seconds} s deadline (until it answers, later phases wait for it only briefly)"
                            ),
                        };
                        self.unproven.insert(id.clone());
                        self.record_dropout(id, phase, reason);
                    }
                }
            }
        }
        self.advance(&mut commands);
        commands
    }

    fn on_update(
        &mut self,
        id: ParticipantId,
        round: u64,
        arriving: Arriving,
        commands: &mut Vec<Command>,
    ) {
        // One refusal per update: the pieces after its first are dropped without a word.
        let quiet = matches!(&arriving, Arriving::Piece(piece) if piece.offset > 0);
        let State::AwaitingUpdates(training) = &mut self.state else {
            if !quiet {
                commands.push(Command::Ignored {
                    id,
                    reason: format!("update for round {round} arrived outside training"),
                });
            }
            return;
        };
        let started = training.updates.has_started(&id);
        let refusal = if round != self.round {
            Some(format!(
                "update is for round {round}, the current round is {}",
                self.round
            ))
        } else if training.contributors.contains(&id) {
            Some(format!("second update for round {round}"))
        } else if !training.pending.contains(&id) {
            Some(format!(
                "not selected for round {round}, or dropped from it"
            ))
        } else if training.away.contains_key(&id) {
            Some(format!(
                "update for round {round} through a session that has ended"
            ))
        } else {
            match (&arriving, started) {
                (Arriving::Header(header), true) if !training.updates.is_interrupted(&id) => {
                    Some(format!(
                        "second update header for round {round} (chunk {})",
                        header.first_chunk
                    ))
                }
                (Arriving::Header(header), false) if header.first_chunk > 0 => Some(format!(
                    "update for round {round} resumed at chunk {} before any of it arrived",
                    header.first_chunk
                )),
                (Arriving::Piece(_), false) => {
                    Some(format!("update values for round {round} before its header"))
                }
                _ => None,
            }
        };
        if let Some(reason) = refusal {
            if !quiet {
                commands.push(Command::Ignored { id, reason });
            }
            return;
        }
        // Pieces sent before the session broke, which arrive after it: the update goes on only
        // from where it resumes.
        if matches!(arriving, Arriving::Piece(_)) && training.updates.is_interrupted(&id) {
            return;
        }
        let added = match arriving {
            Arriving::Header(header) => match started {
                true => training.updates.resume(&id, &header).map(|()| false),
                false => training.updates.start(&id, header).map(|()| false),
            },
            Arriving::Piece(piece) => training.updates.add(&id, piece),
        };
        match added {
            Ok(false) => {}
            Ok(true) => {
                training.pending.remove(&id);
                training.contributors.push(id);
            }
            // What it added so far is taken out when training ends.
            Err(e) => {
                training.pending.remove(&id);
                training.dropouts.push(Dropout {
                    id: id.clone(),
                    phase: Phase::Train,
                    reason: e.to_string(),
                });
                commands.push(Command::Ignored {
                    id,
                    reason: e.to_string(),
                });
            }
        }
    }

    fn on_secure(
        &mut self,
        id: ParticipantId,
        round: u64,
        attempt: u32,
        message: SecureMessage,
        commands: &mut Vec<Command>,
    ) {
        let current = round == self.round && attempt == self.attempt;
        let (this_round, this_attempt) = (self.round, self.attempt);
        // One refusal per masked input: the pieces after its first go without a word.
        let quiet = matches!(&message, SecureMessage::MaskedInput(piece) if piece.offset > 0);
        let Some(securing) = self.securing_mut() else {
            if quiet {
                return;
            }
            commands.push(Command::Ignored {
                id,
                reason: format!(
                    "secure aggregation message for round {round} attempt {attempt} arrived outside secure aggregation"
                ),
            });
            return;
        };
        if !current || !securing.pending.contains(&id) {
            if quiet {
                return;
            }
            let reason = if current {
                format!(
                    "secure aggregation message during {} from a participant not expected in it",
                    securing.phase.name()
                )
            } else {
                format!(
                    "secure aggregation message for round {round} attempt {attempt}, the current one is round {this_round} attempt {this_attempt}"
                )
            };
            commands.push(Command::Ignored { id, reason });
            return;
        }
        if let Err(error) = securing.on_message(&id, message) {
            securing.pending.remove(&id);
            securing.dropouts.push(Dropout {
                id: id.clone(),
                phase: securing.phase,
                reason: format!("broke the protocol: {error}"),
            });
            commands.push(Command::Ignored {
                id,
                reason: error.to_string(),
            });
        }
    }

    /// The secure aggregation running, of updates or of evaluations.
    fn securing_mut(&mut self) -> Option<&mut Securing> {
        match &mut self.state {
            State::Securing(s) => Some(s),
            State::SecureEvaluation(e) => Some(&mut e.securing),
            _ => None,
        }
    }

    /// A participant opened a session while the round holds its place: in a plaintext round's
    /// training, one whose session broke resumes the transfer it had under way, or is dropped.
    fn on_reconnected(
        &mut self,
        id: ParticipantId,
        resume: Option<Resume>,
        commands: &mut Vec<Command>,
    ) {
        let round = self.round;
        let State::AwaitingUpdates(training) = &mut self.state else {
            return;
        };
        let Some(why) = training.away.remove(&id) else {
            return;
        };
        let resumed = match resume {
            Some(Resume {
                round: asked,
                sha256,
                transfer: ResumedTransfer::Update,
            }) if asked == round => match training.updates.resume_point(&id) {
                None => Ok(Command::ResumeUpdate {
                    round,
                    to: id.clone(),
                    sha256,
                    next_chunk: 0,
                }),
                Some((started, next_chunk)) if started == sha256.as_slice() => {
                    Ok(Command::ResumeUpdate {
                        round,
                        to: id.clone(),
                        sha256,
                        next_chunk,
                    })
                }
                Some(_) => Err(format!(
                    "reconnected asking to resume another update for round {round} than the one it had started"
                )),
            },
            Some(Resume {
                round: asked,
                transfer: ResumedTransfer::GlobalModel { next_chunk },
                ..
            }) if asked == round && !training.updates.has_started(&id) => {
                Ok(Command::ResumeTrain {
                    round,
                    to: id.clone(),
                    model: self.global.clone(),
                    first_chunk: next_chunk,
                })
            }
            Some(Resume { round: asked, .. }) => Err(format!(
                "reconnected asking to resume a transfer of round {asked}, which round {round} cannot resume"
            )),
            None => Err(format!(
                "reconnected without resuming its transfer (its session had ended: {why})"
            )),
        };
        match resumed {
            Ok(command) => commands.push(command),
            Err(reason) => self.drop_pending(&id, reason),
        }
    }

    fn drop_pending(&mut self, id: &ParticipantId, reason: String) {
        let phase = match &mut self.state {
            State::Securing(s) => {
                if !s.pending.remove(id) {
                    return;
                }
                s.phase
            }
            State::SecureEvaluation(e) => {
                if !e.securing.pending.remove(id) {
                    return;
                }
                e.securing.phase
            }
            State::AwaitingUpdates(t) => {
                if !t.pending.remove(id) {
                    return;
                }
                Phase::Train
            }
            State::AwaitingEvaluations(e) => {
                if !e.pending.remove(id) {
                    return;
                }
                Phase::Evaluate
            }
            _ => return,
        };
        self.record_dropout(id.clone(), phase, reason);
    }

    fn record_dropout(&mut self, id: ParticipantId, phase: Phase, reason: String) {
        let dropout = Dropout { id, phase, reason };
        match &mut self.state {
            State::AwaitingUpdates(t) => t.dropouts.push(dropout),
            State::Securing(s) => s.dropouts.push(dropout),
            State::SecureEvaluation(e) => e.securing.dropouts.push(dropout),
            State::AwaitingEvaluations(e) => e.outcome.dropouts.push(dropout),
            _ => {}
        }
    }

    /// The participants left in the current phase, when every one of them is
    /// [unproven](RoundMachine::unproven) and enough others answered for the round to go on
    /// (`min_participants`; one evaluation), with the phase; `None` while the phase waits for
    /// anyone else.
    fn only_unproven_left(&mut self) -> Option<(&mut BTreeSet<ParticipantId>, Phase)> {
        let min = self.settings.min_participants;
        let (pending, answered, enough, phase) = match &mut self.state {
            State::AwaitingUpdates(t) => (&mut t.pending, t.contributors.len(), min, Phase::Train),
            State::Securing(s) => {
                let (answered, phase) = (s.answered(), s.phase);
                (&mut s.pending, answered, min, phase)
            }
            State::SecureEvaluation(e) => {
                let (answered, phase) = (e.securing.answered(), e.securing.phase);
                (&mut e.securing.pending, answered, min, phase)
            }
            State::AwaitingEvaluations(e) => {
                (&mut e.pending, e.sum.n_reports(), 1, Phase::Evaluate)
            }
            State::AwaitingParticipants | State::Finished => return None,
        };
        let waiting = !pending.is_empty() && answered >= enough;
        (waiting && pending.is_subset(&self.unproven)).then_some((pending, phase))
    }

    /// Gives the unproven participants left in the current phase their grace, once per phase.
    fn start_grace(&mut self, commands: &mut Vec<Command>) {
        let (round, attempt) = (self.round, self.attempt);
        let Some((_, phase)) = self.only_unproven_left() else {
            return;
        };
        if self.grace != Some((round, attempt, phase)) {
            self.grace = Some((round, attempt, phase));
            commands.push(Command::StartGrace {
                round,
                attempt,
                phase,
            });
        }
    }

    /// At the end of their grace, drops the unproven participants still left in the phase, as
    /// at its deadline.
    fn stop_waiting_for_the_unproven(&mut self) {
        let Some((pending, phase)) = self.only_unproven_left() else {
            return;
        };
        let left = std::mem::take(pending);
        if let State::AwaitingUpdates(t) = &mut self.state {
            t.away.clear();
        }
        for id in left {
            let reason = "not waited for past its grace: it missed an earlier deadline and has sent nothing since"
                .to_string();
            self.record_dropout(id, phase, reason);
        }
    }

    /// Moves to the next state as long as the current one is complete.
    fn advance(&mut self, commands: &mut Vec<Command>) {
        loop {
            self.start_grace(commands);
            let progressed = match &self.state {
                State::Finished => false,
                State::AwaitingParticipants => self.try_start_round(commands),
                State::AwaitingUpdates(t) if t.pending.is_empty() => {
                    self.finish_training(commands);
                    true
                }
                State::Securing(s) if s.pending.is_empty() => {
                    self.close_secure_phase(commands);
                    true
                }
                State::SecureEvaluation(e) if e.securing.pending.is_empty() => {
                    self.close_secure_phase(commands);
                    true
                }
                State::AwaitingEvaluations(e) if e.pending.is_empty() => {
                    let State::AwaitingEvaluations(eval) =
                        std::mem::replace(&mut self.state, State::AwaitingParticipants)
                    else {
                        return;
                    };
                    self.commit(eval.outcome, eval.model, &eval.sum, commands);
                    true
                }
                _ => false,
            };
            if !progressed {
                return;
            }
        }
    }

    fn try_start_round(&mut self, commands: &mut Vec<Command>) -> bool {
        if let Some(reason) = self.budget_spent() {
            self.state = State::Finished;
            commands.push(Command::Finish {
                rounds_completed: self.round - 1,
                succeeded: true,
                reason,
            });
            return true;
        }
        if self.connected.len() < self.settings.min_participants {
            return false;
        }
        let mut candidates: Vec<ParticipantId> = self.connected.iter().cloned().collect();
        let wanted = ((self.settings.fraction * candidates.len() as f64).ceil() as usize)
            .max(self.settings.min_participants)
            .min(candidates.len());
        let mut rng = ChaCha20Rng::seed_from_u64(
            self.settings.seed ^ self.round.rotate_left(32) ^ u64::from(self.attempt),
        );
        candidates.shuffle(&mut rng);
        candidates.truncate(wanted);
        candidates.sort();
        if let Some(settings) = &self.settings.secure {
            let started = Securing::start(
                settings,
                self.round,
                self.attempt,
                candidates.clone(),
                cairn_secagg::quantize::UpdateEncoding::vector_len(self.global.len()),
                settings.privacy.map(|privacy| privacy.mechanism),
            );
            match started {
                Ok((securing, setup)) => {
                    commands.push(Command::SendTrain {
                        round: self.round,
                        to: candidates,
                        model: self.global.clone(),
                        secure: Some(setup),
                    });
                    commands.push(self.deadline(Phase::AdvertiseKeys));
                    self.state = State::Securing(Box::new(securing));
                }
                Err(error) => self.fail_attempt(error.to_string(), commands),
            }
            return true;
        }
        commands.push(Command::SendTrain {
            round: self.round,
            to: candidates.clone(),
            model: self.global.clone(),
            secure: None,
        });
        commands.push(self.deadline(Phase::Train));
        self.state = State::AwaitingUpdates(Training {
            pending: candidates.iter().cloned().collect(),
            away: BTreeMap::new(),
            selected: candidates,
            contributors: Vec::new(),
            dropouts: Vec::new(),
            updates: plain::PlainUpdates::new(
                self.global.len(),
                self.settings.max_weight,
                self.settings.clip_norm,
            ),
        });
        true
    }

    /// The job's differential privacy, if it has it.
    fn privacy(&self) -> Option<PrivacySettings> {
        self.settings.secure.as_ref()?.privacy
    }

    /// Why the round to run cannot: it would take the job's `ε` past its budget.
    fn budget_spent(&self) -> Option<String> {
        let privacy = self.privacy()?;
        let next = privacy.epsilon_after(self.round);
        (next > privacy.epsilon_budget).then(|| {
            format!(
                "privacy budget spent: round {} would take epsilon from {:.3} to {next:.3}, past the budget of {} (delta {})",
                self.round,
                privacy.epsilon_after(self.round - 1),
                privacy.epsilon_budget,
                privacy.delta
            )
        })
    }

    fn deadline(&self, phase: Phase) -> Command {
        Command::StartDeadline {
            round: self.round,
            attempt: self.attempt,
            phase,
            after: self.settings.phase_deadline,
        }
    }

    fn finish_training(&mut self, commands: &mut Vec<Command>) {
        let State::AwaitingUpdates(mut training) =
            std::mem::replace(&mut self.state, State::AwaitingParticipants)
        else {
            return;
        };
        // Sorted, so that records do not depend on who answered first.
        training.contributors.sort();
        let sum = match training.updates.finish() {
            Ok(sum) => sum,
            Err(e) => return self.fail_attempt(e.to_string(), commands),
        };
        self.aggregate(
            training.selected,
            training.contributors,
            training.dropouts,
            &sum,
            commands,
        );
    }

    fn close_secure_phase(&mut self, commands: &mut Vec<Command>) {
        let securing = match &mut self.state {
            State::Securing(s) => &mut **s,
            State::SecureEvaluation(e) => &mut e.securing,
            _ => return,
        };
        let phase = securing.phase;
        let step = securing.close(&self.connected);
        let next_phase = securing.phase;
        let done = match step {
            Ok(Step::Next(messages)) => {
                commands.push(Command::SendSecure {
                    round: self.round,
                    attempt: self.attempt,
                    messages,
                });
                commands.push(self.deadline(next_phase));
                return;
            }
            Ok(Step::Done { sum, contributors }) => Ok((sum, contributors)),
            Err(error) => Err(error),
        };
        match std::mem::replace(&mut self.state, State::AwaitingParticipants) {
            State::Securing(securing) => {
                let aggregated = done.and_then(|(sum, contributors)| {
                    Ok((securing.updates(&sum, contributors.len())?, contributors))
                });
                match aggregated {
                    Ok((sum, contributors)) => {
                        let Securing {
                            selected, dropouts, ..
                        } = *securing;
                        self.aggregate(selected, contributors, dropouts, &sum, commands);
                    }
                    Err(error) => self.fail_attempt(
                        format!("secure aggregation failed in {}: {error}", phase.name()),
                        commands,
                    ),
                }
            }
            State::SecureEvaluation(evaluating) => {
                let SecureEvaluating {
                    securing,
                    mut outcome,
                    model,
                } = *evaluating;
                let evaluated = done.and_then(|(sum, contributors)| {
                    let n = contributors.len();
                    Ok((securing.evaluations(&sum, n, &self.settings.metrics)?, n))
                });
                // Who left the secure evaluation left the round's evaluation.
                outcome
                    .dropouts
                    .extend(securing.dropouts.into_iter().map(|dropout| Dropout {
                        phase: Phase::Evaluate,
                        ..dropout
                    }));
                let mut sum = EvaluationSum::new(&self.settings.metrics);
                match evaluated {
                    Ok((totals, n)) => sum = EvaluationSum::from_secure(totals, n),
                    Err(error) => tracing::warn!(
                        round = self.round,
                        "round {}: secure evaluation failed in {}: {error}; the round is committed unevaluated",
                        self.round,
                        phase.name()
                    ),
                }
                self.commit(outcome, model, &sum, commands);
            }
            other => self.state = other,
        }
    }

    /// Makes the next global model from `sum` if enough participants contributed, and starts
    /// its evaluation; otherwise fails the attempt.
    fn aggregate(
        &mut self,
        selected: Vec<ParticipantId>,
        contributors: Vec<ParticipantId>,
        dropouts: Vec<Dropout>,
        sum: &UpdateSum,
        commands: &mut Vec<Command>,
    ) {
        let n = contributors.len();
        if n < self.settings.min_participants {
            let reason = format!(
                "only {n} of {} selected participants contributed an update, the job needs {}",
                selected.len(),
                self.settings.min_participants
            );
            return self.fail_attempt(reason, commands);
        }
        let next = match self.optimizer.step(&self.global, sum) {
            Ok((next, state)) => {
                self.pending_state = Some(state);
                Arc::new(next)
            }
            Err(e) => return self.fail_attempt(format!("aggregation failed: {e}"), commands),
        };
        let outcome = RoundOutcome {
            round: self.round,
            attempt: self.attempt,
            selected,
            contributors,
            dropouts,
            train_examples: sum.weight(),
            train_loss: sum.mean_train_loss(),
            evaluators: 0,
            eval_examples: 0,
            eval_metrics: BTreeMap::new(),
            epsilon: None,
        };
        let evaluators: Vec<ParticipantId> = self.connected.iter().cloned().collect();
        if let Some(settings) = &self.settings.secure {
            return self.evaluate_securely(settings.clone(), evaluators, outcome, next, commands);
        }
        commands.push(Command::SendEvaluate {
            round: self.round,
            trained: self.attempt,
            to: evaluators.clone(),
            model: next.clone(),
            secure: None,
        });
        commands.push(self.deadline(Phase::Evaluate));
        self.state = State::AwaitingEvaluations(Evaluating {
            outcome,
            model: next,
            pending: evaluators.into_iter().collect(),
            sum: EvaluationSum::new(&self.settings.metrics),
        });
    }

    /// Starts the new model's evaluation as a secure aggregation among `evaluators` (sorted),
    /// under the round's next attempt number, so that none of its messages can be taken for the
    /// training's; a roster too small for the protocol commits the round unevaluated.
    fn evaluate_securely(
        &mut self,
        settings: SecureSettings,
        evaluators: Vec<ParticipantId>,
        outcome: RoundOutcome,
        model: Arc<Vec<f32>>,
        commands: &mut Vec<Command>,
    ) {
        self.attempt += 1;
        let started = Securing::start(
            &settings,
            self.round,
            self.attempt,
            evaluators.clone(),
            EvaluationEncoding::vector_len(&self.settings.metrics),
            None,
        );
        match started {
            Ok((securing, setup)) => {
                commands.push(Command::SendEvaluate {
                    round: self.round,
                    trained: self.attempt - 1,
                    to: evaluators,
                    model: model.clone(),
                    secure: Some(setup),
                });
                commands.push(self.deadline(Phase::AdvertiseKeys));
                self.state = State::SecureEvaluation(Box::new(SecureEvaluating {
                    securing,
                    outcome,
                    model,
                }));
            }
            Err(error) => {
                tracing::warn!(
                    round = self.round,
                    "round {}: the new model cannot be evaluated securely: {error}; the round is committed unevaluated",
                    self.round
                );
                let sum = EvaluationSum::new(&self.settings.metrics);
                self.commit(outcome, model, &sum, commands);
            }
        }
    }

    fn fail_attempt(&mut self, reason: String, commands: &mut Vec<Command>) {
        commands.push(Command::RoundFailed {
            round: self.round,
            attempt: self.attempt,
            reason: reason.clone(),
        });
        if self.attempt >= self.settings.max_round_attempts {
            self.state = State::Finished;
            commands.push(Command::Finish {
                rounds_completed: self.round - 1,
                succeeded: false,
                reason: format!(
                    "round {} failed {} times (last: {reason}); giving up",
                    self.round, self.attempt
                ),
            });
            return;
        }
        self.attempt += 1;
        self.state = State::AwaitingParticipants;
    }

    /// Commits the round: its outcome with the evaluation `sum`, and `model` as the global.
    fn commit(
        &mut self,
        mut outcome: RoundOutcome,
        model: Arc<Vec<f32>>,
        sum: &EvaluationSum,
        commands: &mut Vec<Command>,
    ) {
        outcome.evaluators = sum.n_reports();
        outcome.eval_examples = sum.n_examples();
        outcome.eval_metrics = sum.finish();
        outcome.epsilon = self
            .privacy()
            .map(|privacy| privacy.epsilon_after(self.round));
        self.global = model.clone();
        if let Some(state) = self.pending_state.take() {
            self.optimizer.adopt(state);
        }
        commands.push(Command::Commit {
            outcome,
            model,
            optimizer_state: Arc::new(self.optimizer.state().to_vec()),
        });
        if self.round == self.settings.rounds {
            self.state = State::Finished;
            commands.push(Command::Finish {
                rounds_completed: self.round,
                succeeded: true,
                reason: format!("all {} rounds completed", self.settings.rounds),
            });
        } else {
            self.round += 1;
            self.attempt = 1;
        }
    }
}

#[cfg(test)]
mod tests;
