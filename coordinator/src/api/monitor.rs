//! What operators can see of a running job: the [`Monitor`] is told by the round driver and the
//! participants' sessions what happens (round and phase changes, commits, failures,
//! connections), keeps the views the REST API serves, updates the Prometheus metrics, and
//! broadcasts every change as an [`ApiEvent`] to live-stream clients. It holds aggregates only:
//! no individual update ever reaches it.

use super::metrics::Metrics;
use crate::config::JobSpec;
use crate::round::{ParticipantId, Phase};
use crate::store::signatures::{Countersignature, Countersignatures};
use crate::store::{PhaseTiming, RoundRecord};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::broadcast;
use utoipa::ToSchema;

/// Where the job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for enough participants to start a round.
    Waiting,
    /// A round is running.
    Running,
    /// Every round completed.
    Finished,
    /// The job gave up (a round failed too often).
    Failed,
}

/// The job as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobView {
    /// The job's definition.
    pub spec: JobSpec,
    /// Where it is.
    pub state: JobState,
    /// Rounds committed.
    pub rounds_completed: u64,
    /// Round running (or about to), if the job is not over.
    pub current_round: Option<u64>,
    /// Attempt of the running round.
    pub current_attempt: Option<u32>,
    /// Phase of the running round.
    pub current_phase: Option<Phase>,
    /// When the current phase started (RFC 3339).
    pub phase_started_at: Option<String>,
    /// When this coordinator process started the job (RFC 3339).
    pub started_at: String,
    /// When the job ended (RFC 3339).
    pub finished_at: Option<String>,
    /// Why the job ended.
    pub finish_reason: Option<String>,
    /// SHA-256 (hex) of the last committed round's record in `rounds.jsonl`: the head of the
    /// state directory's hash chain, which `cairn-coordinator audit` prints too (empty before
    /// round 1).
    pub chain_head_sha256: String,
}

/// A committed round as the API shows it: its record and who countersigned it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RoundView {
    /// The record, as in `rounds.jsonl`.
    #[serde(flatten)]
    pub record: RoundRecord,
    /// Participants that countersigned the record, in name order.
    #[serde(default)]
    pub countersigned_by: Vec<String>,
}

/// A participant as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ParticipantView {
    /// Participant id (its certificate's common name).
    pub id: String,
    /// Organisation named in its certificate (empty until it first connects).
    pub organisation: String,
    /// Whether it has a live session.
    pub connected: bool,
    /// Last message received from it (RFC 3339).
    pub last_seen: Option<String>,
    /// Committed rounds whose aggregate holds its update.
    pub rounds_contributed: u64,
    /// Software version it reported.
    pub client_version: Option<String>,
}

/// A change, as the live stream sends it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ApiEvent {
    /// A round (or a retry of it) started.
    RoundStarted {
        /// Round.
        round: u64,
        /// Selected participants.
        selected: Vec<String>,
    },
    /// A phase of the running round started.
    PhaseStarted {
        /// Round.
        round: u64,
        /// Attempt.
        attempt: u32,
        /// Phase.
        phase: Phase,
    },
    /// A round was committed.
    RoundCommitted {
        /// Its record.
        record: Box<RoundRecord>,
    },
    /// An attempt of a round failed; it will be retried.
    RoundFailed {
        /// Round.
        round: u64,
        /// Attempt.
        attempt: u32,
        /// Why.
        reason: String,
    },
    /// A participant countersigned a committed round's record.
    Countersigned {
        /// Round.
        round: u64,
        /// Who.
        participant: String,
    },
    /// A participant opened a session.
    ParticipantConnected {
        /// Who.
        id: String,
    },
    /// A participant's session ended.
    ParticipantDisconnected {
        /// Who.
        id: String,
        /// Why.
        reason: String,
    },
    /// The job ended.
    JobFinished {
        /// Whether every round completed.
        succeeded: bool,
        /// Why it ended.
        reason: String,
    },
}

struct State {
    job: JobView,
    participants: BTreeMap<String, ParticipantView>,
    rounds: Vec<RoundRecord>,
    /// Phases of the running round so far, with when the current one started.
    phases: Vec<PhaseTiming>,
    phase_clock: Option<(Phase, u32, Instant)>,
    model: Option<Arc<Vec<f32>>>,
    /// Sequence number of the next change.
    next_change: u64,
    /// The last [`HISTORY`] changes, which a live stream that broke off resumes from.
    history: VecDeque<Sequenced>,
}

/// Changes kept for live streams that resume (`Last-Event-ID`).
pub const HISTORY: usize = 1024;

/// A change with its place in this monitor's sequence.
#[derive(Debug, Clone)]
pub struct Sequenced {
    /// Its id in the live stream: this monitor's epoch (its start, in milliseconds since the
    /// Unix epoch) and the change's number, `<epoch>-<number>`, so that an id from an earlier
    /// coordinator process is told apart from this one's.
    pub id: String,
    /// Its number in this monitor's sequence, from 1.
    pub number: u64,
    /// The change.
    pub event: ApiEvent,
}

/// The observable state of one job.
pub struct Monitor {
    state: Mutex<State>,
    events: broadcast::Sender<Sequenced>,
    /// Milliseconds since the Unix epoch when this monitor was made: the first part of every
    /// change's id.
    epoch: u64,
    /// The Prometheus metrics.
    pub metrics: Metrics,
    /// The participants' countersignatures of the round records (the state directory's).
    countersignatures: Arc<Countersignatures>,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor").finish_non_exhaustive()
    }
}

/// Now, RFC 3339.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl Monitor {
    /// A monitor for `job`, resuming after the `rounds` already committed of a job that started
    /// at `started_at` (RFC 3339; now when `None`), whose countersignatures are kept in
    /// `countersignatures`.
    pub fn new(
        job: JobSpec,
        rounds: Vec<RoundRecord>,
        started_at: Option<String>,
        countersignatures: Arc<Countersignatures>,
    ) -> Monitor {
        let mut participants: BTreeMap<String, ParticipantView> = job
            .participants
            .iter()
            .map(|id| {
                let view = ParticipantView {
                    id: id.clone(),
                    organisation: String::new(),
                    connected: false,
                    last_seen: None,
                    rounds_contributed: 0,
                    client_version: None,
                };
                (id.clone(), view)
            })
            .collect();
        for record in &rounds {
            for id in &record.outcome.contributors {
                if let Some(p) = participants.get_mut(id) {
                    p.rounds_contributed += 1;
                }
            }
        }
        let metrics = Metrics::new();
        metrics.rounds_completed.inc_by(rounds.len() as u64);
        // A resumed job shows its last committed evaluation until the next round commits.
        if let Some(last) = rounds.last() {
            metrics
                .privacy_epsilon
                .set(last.outcome.epsilon.unwrap_or(0.0));
            for (name, value) in &last.outcome.eval_metrics {
                metrics
                    .eval_metric
                    .with_label_values(&[name.as_str()])
                    .set(*value);
            }
        }
        let committed = rounds.len() as u64;
        let finished = committed >= job.rounds;
        let state = State {
            job: JobView {
                state: if finished {
                    JobState::Finished
                } else {
                    JobState::Waiting
                },
                rounds_completed: committed,
                current_round: (!finished).then_some(committed + 1),
                current_attempt: None,
                current_phase: None,
                phase_started_at: None,
                started_at: started_at.unwrap_or_else(now_rfc3339),
                finished_at: None,
                finish_reason: None,
                chain_head_sha256: String::new(),
                spec: job,
            },
            participants,
            rounds,
            phases: Vec::new(),
            phase_clock: None,
            model: None,
            next_change: 1,
            history: VecDeque::with_capacity(HISTORY),
        };
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Monitor {
            state: Mutex::new(state),
            events: broadcast::channel(HISTORY).0,
            epoch,
            metrics,
            countersignatures,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut state)
    }

    /// Numbers `event`, keeps it in the history and sends it to every subscriber, all under the
    /// state's lock, so that the history and the live changes are in one order.
    fn emit(&self, event: ApiEvent) {
        self.with(|state| {
            let number = state.next_change;
            state.next_change += 1;
            let sequenced = Sequenced {
                id: format!("{}-{number}", self.epoch),
                number,
                event,
            };
            if state.history.len() == HISTORY {
                state.history.pop_front();
            }
            state.history.push_back(sequenced.clone());
            // No subscriber is not an error.
            let _ = self.events.send(sequenced);
        });
    }

    /// A receiver of every change from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Sequenced> {
        self.events.subscribe()
    }

    /// The changes after the one whose id is `last_id` that the history still holds (all of
    /// them when the id is another monitor's, or unreadable), and a receiver of every change
    /// after those: a live stream that broke off resumes where it was.
    pub fn subscribe_after(
        &self,
        last_id: &str,
    ) -> (Vec<Sequenced>, broadcast::Receiver<Sequenced>) {
        let after = last_id
            .split_once('-')
            .filter(|(epoch, _)| *epoch == self.epoch.to_string())
            .and_then(|(_, number)| number.parse::<u64>().ok())
            .unwrap_or(0);
        self.with(|state| {
            let missed = state
                .history
                .iter()
                .filter(|change| change.number > after)
                .cloned()
                .collect();
            (missed, self.events.subscribe())
        })
    }

    /// The job's view.
    pub fn job(&self) -> JobView {
        self.with(|s| s.job.clone())
    }

    /// Committed rounds `offset..offset + limit`, and how many there are.
    pub fn rounds(&self, offset: usize, limit: usize) -> (Vec<RoundView>, usize) {
        self.with(|s| {
            let page = s
                .rounds
                .iter()
                .skip(offset)
                .take(limit)
                .map(|r| self.view(r))
                .collect();
            (page, s.rounds.len())
        })
    }

    /// One committed round.
    pub fn round(&self, round: u64) -> Option<RoundView> {
        self.with(|s| {
            s.rounds
                .iter()
                .find(|r| r.outcome.round == round)
                .map(|r| self.view(r))
        })
    }

    /// The countersignatures of a committed round, in signer order.
    pub fn countersignatures(&self, round: u64) -> Option<Vec<Countersignature>> {
        let committed = self.with(|s| s.rounds.iter().any(|r| r.outcome.round == round));
        committed.then(|| self.countersignatures.of_round(round))
    }

    /// `participant` countersigned the record of `round` (kept in the monitor's
    /// countersignatures already).
    pub fn countersigned(&self, round: u64, participant: &str) {
        self.emit(ApiEvent::Countersigned {
            round,
            participant: participant.to_string(),
        });
    }

    /// `record` with who countersigned it.
    fn view(&self, record: &RoundRecord) -> RoundView {
        RoundView {
            record: record.clone(),
            countersigned_by: self.countersignatures.signers(record.outcome.round),
        }
    }

    /// Every participant of the job.
    pub fn participants(&self) -> Vec<ParticipantView> {
        self.with(|s| s.participants.values().cloned().collect())
    }

    /// The latest global model, once one exists in this process.
    pub fn model(&self) -> Option<Arc<Vec<f32>>> {
        self.with(|s| s.model.clone())
    }

    /// Whether the job still accepts participants.
    pub fn is_ready(&self) -> bool {
        self.with(|s| matches!(s.job.state, JobState::Waiting | JobState::Running))
    }

    /// The driver's global model at start.
    pub fn set_model(&self, model: Arc<Vec<f32>>) {
        self.with(|s| s.model = Some(model));
    }

    /// A round (or a retry of it) started with `selected`.
    pub fn round_started(&self, round: u64, selected: &[ParticipantId]) {
        self.with(|s| {
            s.job.state = JobState::Running;
            s.job.current_round = Some(round);
        });
        self.metrics.current_round.set(round as i64);
        self.emit(ApiEvent::RoundStarted {
            round,
            selected: selected.to_vec(),
        });
    }

    /// A phase started (the driver starts its deadline at the same moment).
    pub fn phase_started(&self, round: u64, attempt: u32, phase: Phase) {
        self.with(|s| {
            self.close_phase(s);
            s.phase_clock = Some((phase, attempt, Instant::now()));
            s.job.current_attempt = Some(attempt);
            s.job.current_phase = Some(phase);
            s.job.phase_started_at = Some(now_rfc3339());
        });
        self.emit(ApiEvent::PhaseStarted {
            round,
            attempt,
            phase,
        });
    }

    fn close_phase(&self, s: &mut State) {
        if let Some((phase, attempt, started)) = s.phase_clock.take() {
            let seconds = started.elapsed().as_secs_f64();
            self.metrics
                .phase_duration
                .with_label_values(&[phase.name()])
                .observe(seconds);
            s.phases.push(PhaseTiming {
                phase,
                attempt,
                duration_s: seconds,
            });
        }
    }

    /// The phases the running round went through; called when it is committed.
    pub fn take_phase_timings(&self) -> Vec<PhaseTiming> {
        self.with(|s| {
            self.close_phase(s);
            std::mem::take(&mut s.phases)
        })
    }

    /// The head of the round records' hash chain is now `sha256` (hex).
    pub fn set_chain_head(&self, sha256: String) {
        self.with(|s| s.job.chain_head_sha256 = sha256);
    }

    /// A round was committed with `model` as the new global model.
    pub fn round_committed(&self, record: &RoundRecord, model: Arc<Vec<f32>>) {
        let m = &self.metrics;
        m.rounds_completed.inc();
        m.round_duration.observe(record.duration_s);
        for dropout in &record.outcome.dropouts {
            m.dropouts.with_label_values(&[dropout.phase.name()]).inc();
        }
        // A metric undefined in this round keeps no stale value from an earlier one.
        m.eval_metric.reset();
        for (name, value) in &record.outcome.eval_metrics {
            m.eval_metric
                .with_label_values(&[name.as_str()])
                .set(*value);
        }
        m.train_loss.set(record.outcome.train_loss);
        if let Some(epsilon) = record.outcome.epsilon {
            m.privacy_epsilon.set(epsilon);
        }
        self.with(|s| {
            for id in &record.outcome.contributors {
                if let Some(p) = s.participants.get_mut(id) {
                    p.rounds_contributed += 1;
                }
            }
            s.rounds.push(record.clone());
            s.job.rounds_completed = s.rounds.len() as u64;
            // After the job's last round there is no next one, even before the job is
            // reported finished.
            let next = record.outcome.round + 1;
            s.job.current_round = (next <= s.job.spec.rounds).then_some(next);
            s.job.current_phase = None;
            s.job.current_attempt = None;
            s.job.phase_started_at = None;
            s.job.state = JobState::Waiting;
            s.model = Some(model);
        });
        self.emit(ApiEvent::RoundCommitted {
            record: Box::new(record.clone()),
        });
    }

    /// An attempt failed and will be retried.
    pub fn round_failed(&self, round: u64, attempt: u32, reason: &str) {
        self.metrics.rounds_failed.inc();
        self.with(|s| {
            self.close_phase(s);
            s.job.current_phase = None;
            s.job.phase_started_at = None;
            s.job.state = JobState::Waiting;
        });
        self.emit(ApiEvent::RoundFailed {
            round,
            attempt,
            reason: reason.to_string(),
        });
    }

    /// The job ended.
    pub fn job_finished(&self, succeeded: bool, reason: &str) {
        self.with(|s| {
            s.phase_clock = None;
            s.job.state = if succeeded {
                JobState::Finished
            } else {
                JobState::Failed
            };
            s.job.current_round = None;
            s.job.current_attempt = None;
            s.job.current_phase = None;
            s.job.phase_started_at = None;
            s.job.finished_at = Some(now_rfc3339());
            s.job.finish_reason = Some(reason.to_string());
        });
        self.emit(ApiEvent::JobFinished {
            succeeded,
            reason: reason.to_string(),
        });
    }

    /// A participant opened a session.
    pub fn connected(&self, id: &str, organisation: &str, client_version: &str) {
        let count = self.with(|s| {
            if let Some(p) = s.participants.get_mut(id) {
                p.connected = true;
                p.organisation = organisation.to_string();
                p.client_version = Some(client_version.to_string());
                p.last_seen = Some(now_rfc3339());
            }
            s.participants.values().filter(|p| p.connected).count()
        });
        self.metrics.participants_connected.set(count as i64);
        self.emit(ApiEvent::ParticipantConnected { id: id.to_string() });
    }

    /// A participant's session ended.
    pub fn disconnected(&self, id: &str, reason: &str) {
        let count = self.with(|s| {
            if let Some(p) = s.participants.get_mut(id) {
                p.connected = false;
            }
            s.participants.values().filter(|p| p.connected).count()
        });
        self.metrics.participants_connected.set(count as i64);
        self.emit(ApiEvent::ParticipantDisconnected {
            id: id.to_string(),
            reason: reason.to_string(),
        });
    }

    /// A message arrived from a participant.
    pub fn seen(&self, id: &str) {
        self.with(|s| {
            if let Some(p) = s.participants.get_mut(id) {
                p.last_seen = Some(now_rfc3339());
            }
        });
    }
}
