//! What a `FederatedJob`'s `.status` says, computed from the job's [`Monitor`]: a pure function
//! of the monitor's view, so that it is tested without a cluster.

use super::{FederatedJobStatus, MetricValue};
use crate::api::{JobState, Monitor};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// The job's phase, as `.status.phase` spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobPhase {
    /// Accepted, waiting for its turn (another job is running) or not yet started.
    Pending,
    /// Its coordinator is running: waiting for participants or in a round.
    Running,
    /// Every round completed.
    Succeeded,
    /// It gave up, or its spec is invalid.
    Failed,
}

impl JobPhase {
    /// The name in `.status.phase`.
    pub fn name(self) -> &'static str {
        match self {
            JobPhase::Pending => "Pending",
            JobPhase::Running => "Running",
            JobPhase::Succeeded => "Succeeded",
            JobPhase::Failed => "Failed",
        }
    }

    /// The phase named `name`, if any.
    pub fn parse(name: &str) -> Option<JobPhase> {
        [
            JobPhase::Pending,
            JobPhase::Running,
            JobPhase::Succeeded,
            JobPhase::Failed,
        ]
        .into_iter()
        .find(|p| p.name() == name)
    }

    /// Whether the job is over and is never run again.
    pub fn is_final(self) -> bool {
        matches!(self, JobPhase::Succeeded | JobPhase::Failed)
    }
}

/// The status of a job whose coordinator is running (or has just ended), from its monitor.
pub fn observe(monitor: &Monitor) -> FederatedJobStatus {
    let view = monitor.job();
    let connected = monitor
        .participants()
        .iter()
        .filter(|p| p.connected)
        .count() as u32;
    let last = monitor.round(view.rounds_completed).map(|view| view.record);
    let last_metrics = last
        .as_ref()
        .map(|record| {
            record
                .outcome
                .eval_metrics
                .iter()
                .map(|(name, &value)| MetricValue {
                    name: name.clone(),
                    value,
                })
                .collect()
        })
        .unwrap_or_default();
    let last_evaluation = last.map(|record| record.outcome.metrics_text());
    let rounds = view.spec.rounds;
    let (phase, reason, message) = match view.state {
        JobState::Waiting => (
            JobPhase::Running,
            "WaitingForParticipants",
            format!(
                "{connected} of the {} participants needed are connected",
                view.spec.min_participants
            ),
        ),
        JobState::Running => (
            JobPhase::Running,
            "RoundRunning",
            format!(
                "round {} of {rounds} running; {connected} participants connected",
                view.current_round.unwrap_or(view.rounds_completed + 1)
            ),
        ),
        JobState::Finished => (
            JobPhase::Succeeded,
            "Completed",
            view.finish_reason.clone().unwrap_or_default(),
        ),
        JobState::Failed => (
            JobPhase::Failed,
            "GaveUp",
            view.finish_reason.clone().unwrap_or_default(),
        ),
    };
    FederatedJobStatus {
        phase: Some(phase.name().into()),
        current_round: view.current_round,
        rounds_completed: view.rounds_completed,
        last_metrics,
        last_evaluation,
        connected_participants: connected,
        conditions: conditions(phase, reason, &message),
    }
}

/// The status of a job that is not running here: queued, or refused before it started.
pub fn not_running(phase: JobPhase, reason: &str, message: &str) -> FederatedJobStatus {
    FederatedJobStatus {
        phase: Some(phase.name().into()),
        conditions: conditions(phase, reason, message),
        ..FederatedJobStatus::default()
    }
}

/// `Ready` (the job succeeded) and `Progressing` (its coordinator is running it), with `reason`
/// and `message` on both.
fn conditions(phase: JobPhase, reason: &str, message: &str) -> Vec<Condition> {
    let condition = |type_: &str, holds: bool| Condition {
        type_: type_.into(),
        status: if holds { "True" } else { "False" }.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
        observed_generation: None,
    };
    vec![
        condition("Ready", phase == JobPhase::Succeeded),
        condition("Progressing", phase == JobPhase::Running),
    ]
}

/// Whether `new` says something `old` does not: the same but for the conditions' transition
/// times is no change, so that the status is written only when it changed.
pub fn changed(old: Option<&FederatedJobStatus>, new: &FederatedJobStatus) -> bool {
    let Some(old) = old else { return true };
    let strip = |s: &FederatedJobStatus| {
        let mut s = s.clone();
        for c in &mut s.conditions {
            c.last_transition_time = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        }
        s
    };
    strip(old) != strip(new)
}

/// `new`, keeping the transition times of the conditions whose status did not change.
pub fn carry_transitions(
    old: Option<&FederatedJobStatus>,
    mut new: FederatedJobStatus,
) -> FederatedJobStatus {
    let Some(old) = old else { return new };
    for condition in &mut new.conditions {
        if let Some(before) = old
            .conditions
            .iter()
            .find(|c| c.type_ == condition.type_ && c.status == condition.status)
        {
            condition.last_transition_time = before.last_transition_time.clone();
        }
    }
    new
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::JobSpec;
    use crate::store::signatures::Countersignatures;

    fn monitor() -> Monitor {
        let job = JobSpec::parse(
            "name: t\nmodel: {initial: /models/t.safetensors}\nrounds: 3\nmin_participants: 2\nparticipants: [a, b]\nsecure_aggregation: {enabled: false}\n",
        )
        .unwrap();
        Monitor::new(job, Vec::new(), None, Countersignatures::none())
    }

    fn condition<'a>(status: &'a FederatedJobStatus, type_: &str) -> &'a Condition {
        status.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn a_waiting_job_is_running_and_says_how_many_participants_it_has() {
        let monitor = monitor();
        monitor.connected("a", "A", "1");
        let status = observe(&monitor);
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(status.current_round, Some(1));
        assert_eq!(status.connected_participants, 1);
        assert!(status.last_metrics.is_empty());
        assert_eq!(status.last_evaluation, None);
        let progressing = condition(&status, "Progressing");
        assert_eq!(progressing.status, "True");
        assert_eq!(progressing.reason, "WaitingForParticipants");
        assert_eq!(
            progressing.message,
            "1 of the 2 participants needed are connected"
        );
        assert_eq!(condition(&status, "Ready").status, "False");
    }

    #[test]
    fn the_last_committed_rounds_metrics_are_reported() {
        let monitor = monitor();
        let record = crate::store::RoundRecord {
            outcome: crate::round::RoundOutcome {
                round: 1,
                attempt: 1,
                selected: vec!["a".into(), "b".into()],
                contributors: vec!["a".into(), "b".into()],
                dropouts: vec![],
                train_examples: 20,
                train_loss: 0.5,
                evaluators: 2,
                eval_examples: 10,
                eval_metrics: [("loss".to_string(), 0.25), ("accuracy".to_string(), 0.875)].into(),
                epsilon: None,
            },
            duration_s: 1.0,
            bytes_in: 0,
            bytes_out: 0,
            committed_at: "2026-01-01T00:00:00Z".into(),
            checkpoint_sha256: String::new(),
            optimizer_state_sha256: String::new(),
            phase_durations: Vec::new(),
            previous_record_sha256: String::new(),
            job_sha256: String::new(),
            model_before_sha256: String::new(),
            model_sha256: String::new(),
        };
        monitor.round_committed(&record, std::sync::Arc::new(vec![0.0; 15]));
        let status = observe(&monitor);
        assert_eq!(
            status.last_metrics,
            [
                MetricValue {
                    name: "accuracy".into(),
                    value: 0.875
                },
                MetricValue {
                    name: "loss".into(),
                    value: 0.25
                }
            ]
        );
        assert_eq!(
            status.last_evaluation.as_deref(),
            Some("accuracy 0.8750, loss 0.2500")
        );
        let exported = monitor.metrics.render();
        assert!(
            exported.contains("cairn_eval_metric{metric=\"accuracy\"} 0.875"),
            "{exported}"
        );
    }

    #[test]
    fn finished_jobs_are_succeeded_or_failed_with_the_reason() {
        let monitor = monitor();
        monitor.job_finished(true, "all 3 rounds completed");
        let status = observe(&monitor);
        assert_eq!(status.phase.as_deref(), Some("Succeeded"));
        assert_eq!(status.current_round, None);
        assert_eq!(condition(&status, "Ready").status, "True");
        assert_eq!(
            condition(&status, "Ready").message,
            "all 3 rounds completed"
        );
        assert_eq!(condition(&status, "Progressing").status, "False");

        let monitor = super::tests::monitor();
        monitor.job_finished(false, "round 1 failed 3 times");
        let status = observe(&monitor);
        assert_eq!(status.phase.as_deref(), Some("Failed"));
        assert_eq!(condition(&status, "Ready").reason, "GaveUp");
        assert!(JobPhase::parse("Failed").unwrap().is_final());
        assert!(!JobPhase::parse("Running").unwrap().is_final());
        assert_eq!(JobPhase::parse("Done"), None);
    }

    #[test]
    fn transition_times_alone_are_no_change_and_are_kept() {
        let mut before = not_running(JobPhase::Pending, "Queued", "behind mnist");
        // Conditions written a second ago, so that a time kept and a time made new differ.
        for condition in before.conditions.iter_mut() {
            let earlier =
                condition.last_transition_time.0 - k8s_openapi::jiff::SignedDuration::from_secs(1);
            condition.last_transition_time = Time(earlier);
        }
        let again = not_running(JobPhase::Pending, "Queued", "behind mnist");
        assert!(!changed(Some(&before), &again));
        assert!(changed(None, &again));
        let other = not_running(JobPhase::Pending, "Queued", "behind digits");
        assert!(changed(Some(&before), &other));
        let kept = carry_transitions(Some(&before), again);
        assert_eq!(kept.conditions, before.conditions);
        let running = carry_transitions(
            Some(&before),
            not_running(JobPhase::Running, "RoundRunning", "round 1"),
        );
        // Ready stayed False: its time is kept; Progressing turned True: its time is new.
        assert_eq!(
            condition(&running, "Ready").last_transition_time,
            condition(&before, "Ready").last_transition_time
        );
        assert_ne!(
            condition(&running, "Progressing").last_transition_time,
            condition(&before, "Progressing").last_transition_time
        );
    }
}
