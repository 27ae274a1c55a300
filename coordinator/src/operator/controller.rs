//! The reconciler: kube's `Controller` calls [`reconcile`] for every change to a
//! `FederatedJob` in the namespace. A job runs in this process as a [`Coordinator`], one at a
//! time (every job listens on the same gRPC address, the one participants' kits point at); the
//! others wait as `Pending`. A task per running job follows its monitor and writes `.status` and
//! Kubernetes Events; deletion goes through a finalizer that stops the job first.

use super::status::{self, JobPhase};
use super::{FederatedJob, FederatedJobStatus, OperatorOptions};
use crate::{Coordinator, ServeOptions, Stopper};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{self, finalizer};
use kube::{Client, Resource, ResourceExt};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The finalizer that keeps a deleted `FederatedJob` until its run has stopped.
pub const FINALIZER: &str = "cairn.dev/stop-job";

/// How often a job waiting for its turn checks again.
const QUEUED_RECHECK: Duration = Duration::from_secs(3);

/// Why a reconcile failed; the controller retries it.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The API server refused or failed a request.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The job's coordinator could not start (its address is taken, its state directory is
    /// unusable, ...).
    #[error("starting the job: {0}")]
    Start(#[source] Box<crate::Error>),
}

/// How a job is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopHow {
    /// It is over (deleted): participants are told so.
    End,
    /// It goes on under another coordinator (this one lost its lease or is shutting down):
    /// participants reconnect.
    HandOver,
}

/// The job running in this process.
struct Running {
    uid: String,
    name: String,
    stopper: Stopper,
    /// Set when the job is stopped for a reason that must not be written to its status (it is
    /// being deleted, or another replica now leads).
    quiet: Arc<AtomicBool>,
    done: tokio::sync::watch::Receiver<bool>,
}

/// What every reconcile shares: the client, the options, and the job running here.
pub struct Context {
    client: Client,
    options: OperatorOptions,
    recorder: Recorder,
    running: Mutex<Option<Running>>,
    /// Held from checking that no job runs to having started one, so that two reconciles never
    /// both start.
    starting: tokio::sync::Mutex<()>,
    /// Jobs that ended in this process (their final status may not have reached the
    /// controller's cache yet); never started again.
    ended: Mutex<HashSet<String>>,
}

impl Context {
    /// A context for the controller of `options.namespace`.
    pub fn new(client: Client, options: OperatorOptions) -> Context {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "cairn-coordinator".into(),
                instance: Some(options.identity.clone()),
            },
        );
        Context {
            client,
            options,
            recorder,
            running: Mutex::new(None),
            starting: tokio::sync::Mutex::new(()),
            ended: Mutex::new(HashSet::new()),
        }
    }

    fn api(&self) -> Api<FederatedJob> {
        Api::namespaced(self.client.clone(), &self.options.namespace)
    }

    fn has_ended(&self, uid: &str) -> bool {
        self.ended
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(uid)
    }

    fn running(&self) -> std::sync::MutexGuard<'_, Option<Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stops the running job, if any, without writing its status, and waits until it stopped.
    /// `how` says whether the job is over for its participants or goes on under another
    /// coordinator.
    pub async fn stop_running(&self, reason: &str, how: StopHow) {
        let done = {
            let running = self.running();
            let Some(job) = running.as_ref() else { return };
            tracing::warn!("stopping FederatedJob {}: {reason}", job.name);
            job.quiet.store(true, Ordering::SeqCst);
            match how {
                StopHow::End => job.stopper.stop(reason),
                StopHow::HandOver => job.stopper.hand_over(reason),
            }
            job.done.clone()
        };
        wait_done(done).await;
    }

    async fn publish(&self, job: &FederatedJob, type_: EventType, reason: &str, mut note: String) {
        // The API server refuses an Event whose note exceeds 1 KiB.
        if note.len() > 1024 {
            let mut end = 1021;
            while !note.is_char_boundary(end) {
                end -= 1;
            }
            note.truncate(end);
            note.push_str("...");
        }
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: "Run".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &job.object_ref(&())).await {
            tracing::warn!("could not record event {reason} on {}: {e}", job.name_any());
        }
    }

    async fn write_status(
        &self,
        name: &str,
        status: &FederatedJobStatus,
    ) -> Result<(), kube::Error> {
        // A merge patch leaves out what it does not name: name the emptied fields as null.
        let mut status = serde_json::to_value(status).unwrap_or_default();
        if let Some(fields) = status.as_object_mut() {
            for field in ["phase", "currentRound", "lastMetrics", "lastEvaluation"] {
                fields.entry(field).or_insert(serde_json::Value::Null);
            }
        }
        let patch = serde_json::json!({ "status": status });
        self.api()
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(|_| ())
    }
}

async fn wait_done(mut done: tokio::sync::watch::Receiver<bool>) {
    let _ = done.wait_for(|d| *d).await;
}

/// Reconciles one `FederatedJob`: adds the finalizer, then runs, queues or cleans it up.
pub async fn reconcile(
    job: Arc<FederatedJob>,
    ctx: Arc<Context>,
) -> Result<Action, finalizer::Error<ReconcileError>> {
    let api = ctx.api();
    finalizer(&api, FINALIZER, job, |event| async {
        match event {
            finalizer::Event::Apply(job) => apply(job, &ctx).await,
            finalizer::Event::Cleanup(job) => cleanup(job, &ctx).await,
        }
    })
    .await
}

/// What the controller does after a failed reconcile: log it and retry soon.
pub fn error_policy(
    job: Arc<FederatedJob>,
    error: &finalizer::Error<ReconcileError>,
    _ctx: Arc<Context>,
) -> Action {
    tracing::warn!("FederatedJob {}: {error}; retrying in 10 s", job.name_any());
    Action::requeue(Duration::from_secs(10))
}

async fn apply(job: Arc<FederatedJob>, ctx: &Arc<Context>) -> Result<Action, ReconcileError> {
    let name = job.name_any();
    let uid = job.uid().unwrap_or_default();
    let current = job.status.as_ref();
    let phase = current
        .and_then(|s| s.phase.as_deref())
        .and_then(JobPhase::parse);
    let runs_here = ctx.running().as_ref().is_some_and(|r| r.uid == uid);
    // A running job keeps the spec it started with (the CRD refuses edits anyway).
    if phase.is_some_and(JobPhase::is_final) || ctx.has_ended(&uid) || runs_here {
        return Ok(Action::await_change());
    }
    if let Err(e) = job.spec.job.validate() {
        let message = e.to_string();
        tracing::error!("FederatedJob {name} is invalid: {message}");
        ctx.write_status(
            &name,
            &status::not_running(JobPhase::Failed, "InvalidSpec", &message),
        )
        .await?;
        ctx.publish(&job, EventType::Warning, "InvalidSpec", message)
            .await;
        return Ok(Action::await_change());
    }
    let _starting = ctx.starting.lock().await;
    // It may have ended while this waited for the lock, its final status not yet seen here.
    if ctx.has_ended(&uid) {
        return Ok(Action::await_change());
    }
    let busy = ctx
        .running()
        .as_ref()
        .map(|r| (r.uid.clone(), r.name.clone()));
    match busy {
        Some((running, _)) if running == uid => Ok(Action::await_change()),
        Some((_, other)) => {
            let queued = status::not_running(
                JobPhase::Pending,
                "Queued",
                &format!(
                    "waiting for FederatedJob {other} to end; this coordinator runs one job at a time"
                ),
            );
            if status::changed(current, &queued) {
                ctx.write_status(&name, &status::carry_transitions(current, queued))
                    .await?;
            }
            Ok(Action::requeue(QUEUED_RECHECK))
        }
        None => {
            start(job, ctx).await?;
            Ok(Action::await_change())
        }
    }
}

/// Starts `job`'s coordinator and the task that follows it.
async fn start(job: Arc<FederatedJob>, ctx: &Arc<Context>) -> Result<(), ReconcileError> {
    let name = job.name_any();
    let uid = job.uid().unwrap_or_default();
    let options = &ctx.options;
    // One directory per object: a job deleted and created again under the same name starts
    // afresh, while the same object resumes after a restart or a change of leader.
    let state_dir = options.state_dir.join(format!("{name}-{uid}"));
    let serve = ServeOptions {
        job: job.spec.job.clone(),
        tls: options.tls.clone(),
        state_dir: state_dir.clone(),
        listen: options.listen,
        heartbeat_interval: options.heartbeat_interval,
        keep_checkpoints: options.keep_checkpoints,
        api: options.api.clone(),
    };
    let coordinator = match Coordinator::start(serve).await {
        Ok(c) => c,
        Err(e) => {
            ctx.publish(&job, EventType::Warning, "StartFailed", e.to_string())
                .await;
            return Err(ReconcileError::Start(Box::new(e)));
        }
    };
    tracing::info!(
        "running FederatedJob {name} (state in {}, participants dial {})",
        state_dir.display(),
        coordinator.local_addr()
    );
    let quiet = Arc::new(AtomicBool::new(false));
    let (done_tx, done) = tokio::sync::watch::channel(false);
    *ctx.running() = Some(Running {
        uid: uid.clone(),
        name: name.clone(),
        stopper: coordinator.stopper(),
        quiet: quiet.clone(),
        done,
    });
    // At once, with nothing awaited before: a reconcile can be dropped at any await (when the
    // lease is lost), and the running job must never be left without its follower.
    tokio::spawn(follow(ctx.clone(), job, coordinator, quiet, done_tx));
    Ok(())
}

/// Follows a running job: writes `.status` whenever what it shows changes, records an Event
/// per round, and, when the job ends, its final status.
async fn follow(
    ctx: Arc<Context>,
    job: Arc<FederatedJob>,
    coordinator: Coordinator,
    quiet: Arc<AtomicBool>,
    done: tokio::sync::watch::Sender<bool>,
) {
    let name = job.name_any();
    let monitor = coordinator.monitor().clone();
    let mut events = monitor.subscribe();
    let committed = monitor.job().rounds_completed;
    ctx.publish(
        &job,
        EventType::Normal,
        "Started",
        match committed {
            0 => format!("waiting for {} participants", job.spec.job.min_participants),
            n => format!("resuming after {n} committed rounds"),
        },
    )
    .await;
    let mut written: Option<FederatedJobStatus> = job.status.clone();
    let wait = coordinator.wait();
    tokio::pin!(wait);
    // No event yet on the first pass, which writes the status the job starts with.
    let mut event = None;
    let report = loop {
        if quiet.load(Ordering::SeqCst) {
            tokio::select! {
                report = &mut wait => break report,
                next = events.recv() => event = Some(next),
            }
            continue;
        }
        match event.take() {
            Some(Ok(crate::api::Sequenced {
                event: crate::api::ApiEvent::RoundCommitted { record },
                ..
            })) => {
                let note = format!(
                    "round {} of {} committed: {} contributors, {}",
                    record.outcome.round,
                    job.spec.job.rounds,
                    record.outcome.contributors.len(),
                    record.outcome.metrics_text()
                );
                ctx.publish(&job, EventType::Normal, "RoundCommitted", note)
                    .await;
            }
            Some(Ok(crate::api::Sequenced {
                event:
                    crate::api::ApiEvent::RoundFailed {
                        round,
                        attempt,
                        reason,
                    },
                ..
            })) => {
                let note = format!("round {round} attempt {attempt} failed: {reason}");
                ctx.publish(&job, EventType::Warning, "RoundFailed", note)
                    .await;
            }
            _ => {}
        }
        let now = status::observe(&monitor);
        // The final status is written once the job has fully ended, below.
        if !now
            .phase
            .as_deref()
            .and_then(JobPhase::parse)
            .is_some_and(JobPhase::is_final)
            && status::changed(written.as_ref(), &now)
        {
            let now = status::carry_transitions(written.as_ref(), now);
            match ctx.write_status(&name, &now).await {
                Ok(()) => written = Some(now),
                Err(e) => tracing::warn!("could not write the status of {name}: {e}"),
            }
        }
        tokio::select! {
            report = &mut wait => break report,
            next = events.recv() => event = Some(next),
        }
    };
    let stopped_quietly = quiet.load(Ordering::SeqCst);
    if !stopped_quietly {
        ctx.ended
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(job.uid().unwrap_or_default());
        let last = match &report {
            Ok(_) => status::observe(&monitor),
            // The coordinator itself failed (its state directory, say): the job did not end
            // by its own rules, so the monitor cannot say how it ended.
            Err(e) => status::not_running(JobPhase::Failed, "CoordinatorFailed", &e.to_string()),
        };
        let last = status::carry_transitions(written.as_ref(), last);
        if let Err(e) = ctx.write_status(&name, &last).await {
            tracing::warn!("could not write the final status of {name}: {e}");
        }
        let (type_, reason, note) = match &report {
            Ok(r) if r.succeeded => (
                EventType::Normal,
                "Succeeded",
                format!("{}; final model at {}", r.reason, r.model_path.display()),
            ),
            Ok(r) => (EventType::Warning, "Failed", r.reason.clone()),
            Err(e) => (EventType::Warning, "Failed", e.to_string()),
        };
        ctx.publish(&job, type_, reason, note).await;
    }
    *ctx.running() = None;
    let _ = done.send(true);
}

/// A deleted job: stops it if it runs here, so that the finalizer is removed only once it has
/// stopped. Its state directory (checkpoints, round records, final model) stays on disk.
async fn cleanup(job: Arc<FederatedJob>, ctx: &Arc<Context>) -> Result<Action, ReconcileError> {
    let uid = job.uid().unwrap_or_default();
    let runs_here = ctx.running().as_ref().is_some_and(|r| r.uid == uid);
    if runs_here {
        ctx.stop_running(
            &format!("FederatedJob {} was deleted", job.name_any()),
            StopHow::End,
        )
        .await;
        ctx.publish(
            &job,
            EventType::Normal,
            "Stopped",
            "the job was deleted; its coordinator stopped and told the participants".into(),
        )
        .await;
    }
    Ok(Action::await_change())
}
