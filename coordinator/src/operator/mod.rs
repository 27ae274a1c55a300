//! Kubernetes: the `FederatedJob` custom resource, whose spec is the job file's schema
//! ([`JobSpec`]), so one definition serves both, and the operator that runs such resources
//! (`cairn-coordinator serve --kubernetes`). This is the only module that imports kube.
//!
//! The operator: replicas elect a leader on a `Lease` ([`run`]); the leader runs kube's
//! `Controller` over the namespace's `FederatedJob`s ([`controller`]), one job at a time, and
//! writes each one's `.status` ([`status`]) and Events. Losing the lease stops the running job
//! at once (committed rounds stay in its state directory, from which the next leader resumes).
//! `cairn-coordinator crd` prints the CustomResourceDefinition; the coordinator chart ships a
//! copy that a test keeps equal to it.

pub mod controller;
pub mod status;

use crate::api::ApiOptions;
use crate::config::JobSpec;
use crate::{Error, ServerTls};
use futures_util::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::CustomResourceExt;
use kube::runtime::{Controller, watcher};
use kube::{Api, Client};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How `serve --kubernetes` runs.
#[derive(Debug, Clone)]
pub struct OperatorOptions {
    /// Namespace whose `FederatedJob`s it runs (and where its Lease and Events live).
    pub namespace: String,
    /// This replica's name in the Lease and in Events (its pod name).
    pub identity: String,
    /// Name of the Lease the replicas elect a leader on.
    pub lease_name: String,
    /// How long a lease lasts without renewal; a new leader takes over within about this long.
    pub lease_duration: Duration,
    /// Parent of the jobs' state directories (`<name>-<uid>` each).
    pub state_dir: PathBuf,
    /// The coordinator's TLS material, the same for every job.
    pub tls: ServerTls,
    /// gRPC address for participants, the same for every job.
    pub listen: SocketAddr,
    /// Heartbeat interval of every job.
    pub heartbeat_interval: Duration,
    /// Checkpoints to keep per job.
    pub keep_checkpoints: usize,
    /// The monitoring API of the running job.
    pub api: Option<ApiOptions>,
}

/// How leading ended.
enum Lead {
    Lost(String),
    Shutdown,
    WatchEnded,
    LeaseTaskEnded,
}

/// Whether `lease` is held by `identity` and not expired.
fn holds(lease: &Lease, identity: &str) -> bool {
    let Some(spec) = lease.spec.as_ref() else {
        return false;
    };
    let (Some(holder), Some(renewed), Some(seconds)) = (
        spec.holder_identity.as_deref(),
        spec.renew_time.as_ref(),
        spec.lease_duration_seconds,
    ) else {
        return false;
    };
    let expires = renewed.0 + k8s_openapi::jiff::SignedDuration::from_secs(i64::from(seconds));
    holder == identity && expires > k8s_openapi::jiff::Timestamp::now()
}

/// Completes when this replica can no longer be sure it leads: the Lease names another holder
/// or has expired, or it could not be read for longer than the time a renewal is allowed. The
/// lease manager alone keeps reporting leadership while renewals fail, which would let two
/// replicas run the same job.
async fn lease_lost(leases: Api<Lease>, options: &OperatorOptions) -> String {
    let check = (options.lease_duration / 4).max(Duration::from_millis(250));
    let tolerance = options.lease_duration - options.lease_duration / 3;
    let mut confirmed = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(check).await;
        match leases.get(&options.lease_name).await {
            Ok(lease) if holds(&lease, &options.identity) => {
                confirmed = tokio::time::Instant::now();
            }
            Ok(_) => {
                return format!(
                    "lease {} is held by another replica or expired",
                    options.lease_name
                );
            }
            Err(e) if confirmed.elapsed() >= tolerance => {
                return format!(
                    "lease {} could not be confirmed for {:.0?}: {e}",
                    options.lease_name,
                    confirmed.elapsed()
                );
            }
            Err(e) => tracing::warn!("reading lease {}: {e}", options.lease_name),
        }
    }
}

/// A client of the Kubernetes API: in-cluster (the pod's service account) or from the
/// kubeconfig. kube's TLS and tonic's share the process-wide rustls provider, so ring is
/// installed first: with none installed, rustls would pick one, and aws-lc-rs must stay out.
pub async fn connect() -> Result<Client, Error> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::try_default()
        .await
        .map_err(|source| Error::KubeConnect { source })
}

/// Runs the operator until `shutdown` completes: waits for the Lease, runs `FederatedJob`s while
/// it holds it, hands the running job over when it loses it (or cannot confirm it), and releases
/// the Lease on the way out.
pub async fn run(
    client: Client,
    options: OperatorOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    let seconds = options.lease_duration.as_secs();
    if seconds < 2 {
        return Err(Error::LeaseDuration { seconds });
    }
    let manager = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &options.lease_name)
        .with_namespace(&options.namespace)
        .with_identity(&options.identity)
        .with_duration(seconds)
        .with_grace((seconds / 3).max(1))
        .build()
        .await
        .map_err(|source| Error::Lease {
            lease: options.lease_name.clone(),
            source,
        })?;
    let (mut leading, lease_task) = manager.watch().await;
    tracing::info!(
        "operator {} watching FederatedJobs in namespace {}; waiting for lease {}",
        options.identity,
        options.namespace,
        options.lease_name
    );
    let leases: Api<Lease> = Api::namespaced(client.clone(), &options.namespace);
    tokio::pin!(shutdown);
    let result = loop {
        if !*leading.borrow_and_update() {
            tokio::select! {
                changed = leading.changed() => match changed {
                    Ok(()) => continue,
                    Err(_) => break Err(Error::LeaseLost { lease: options.lease_name.clone() }),
                },
                () = &mut shutdown => break Ok(()),
            }
        }
        // The manager says this replica leads; run jobs only once the Lease itself says so.
        match leases.get(&options.lease_name).await {
            Ok(lease) if holds(&lease, &options.identity) => {}
            _ => {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    () = &mut shutdown => break Ok(()),
                }
            }
        }
        tracing::info!(
            "{} leads (lease {}): running FederatedJobs in namespace {}",
            options.identity,
            options.lease_name,
            options.namespace
        );
        let ctx = Arc::new(controller::Context::new(client.clone(), options.clone()));
        let jobs: Api<FederatedJob> = Api::namespaced(client.clone(), &options.namespace);
        let controller = Controller::new(jobs, watcher::Config::default())
            .run(controller::reconcile, controller::error_policy, ctx.clone())
            .for_each(|result| async move {
                use kube::runtime::controller::Error as Failure;
                match result {
                    // Failed reconciles are logged by `error_policy`; a reconcile of an object
                    // deleted meanwhile is expected.
                    Ok(_) | Err(Failure::ReconcilerFailed(..) | Failure::ObjectNotFound(_)) => {}
                    // The watch itself failing (no RBAC, no CRD, no API server) is not.
                    Err(e) => tracing::warn!("watching FederatedJobs: {e}"),
                }
            });
        let lead = tokio::select! {
            () = controller => Lead::WatchEnded,
            still = leading.wait_for(|l| !*l) => match still {
                Ok(_) => Lead::Lost(format!("lease {} went to another replica", options.lease_name)),
                Err(_) => Lead::LeaseTaskEnded,
            },
            why = lease_lost(leases.clone(), &options) => Lead::Lost(why),
            () = &mut shutdown => Lead::Shutdown,
        };
        let hand_over = controller::StopHow::HandOver;
        match lead {
            Lead::Lost(why) => {
                ctx.stop_running(
                    &format!("this coordinator no longer leads ({why}); the next leader resumes the job from its last committed round"),
                    hand_over,
                )
                .await;
            }
            Lead::Shutdown => {
                ctx.stop_running(
                    "the coordinator is shutting down; the job resumes from its last committed round",
                    hand_over,
                )
                .await;
                break Ok(());
            }
            Lead::WatchEnded | Lead::LeaseTaskEnded => {
                ctx.stop_running("the operator's watch or lease task ended", hand_over)
                    .await;
                break Err(Error::WatchEnded {
                    lease: options.lease_name.clone(),
                });
            }
        }
    };
    // Dropping the receiver makes the lease task release the Lease.
    drop(leading);
    if let Ok(Err(e)) = lease_task.await {
        tracing::warn!("releasing lease {}: {e}", options.lease_name);
    }
    result
}

/// A federated training job as a Kubernetes resource: `spec` is a job file.
#[derive(CustomResource, KubeSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[x_kube(validation = Rule::new("self == oldSelf").message("the spec of a FederatedJob cannot change; create a new FederatedJob"))]
#[kube(
    group = "cairn.dev",
    version = "v1alpha1",
    kind = "FederatedJob",
    plural = "federatedjobs",
    shortname = "fj",
    namespaced,
    status = "FederatedJobStatus",
    printcolumn = r#"{"name": "Phase", "type": "string", "jsonPath": ".status.phase"}"#,
    printcolumn = r#"{"name": "Round", "type": "integer", "jsonPath": ".status.currentRound"}"#,
    printcolumn = r#"{"name": "Rounds", "type": "integer", "jsonPath": ".spec.rounds"}"#,
    printcolumn = r#"{"name": "Evaluation", "type": "string", "jsonPath": ".status.lastEvaluation"}"#,
    printcolumn = r#"{"name": "Connected", "type": "integer", "jsonPath": ".status.connectedParticipants"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
pub struct FederatedJobSpec {
    /// The job, exactly as in a job file.
    #[serde(flatten)]
    pub job: JobSpec,
}

/// What the coordinator reports about a `FederatedJob`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FederatedJobStatus {
    /// `Pending`, `Running`, `Succeeded` or `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Round running (or next to run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_round: Option<u64>,
    /// Rounds committed.
    #[serde(default)]
    pub rounds_completed: u64,
    /// The job's evaluation metrics of the last committed round, sorted by name (those
    /// undefined in that round left out). A list rather than a map because the status is
    /// written by merge patch, which replaces a list whole but would keep a map's stale keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub last_metrics: Vec<MetricValue>,
    /// The same as one line (`accuracy 0.9123, loss 0.2810`, or `not evaluated`), for
    /// `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_evaluation: Option<String>,
    /// Participants with a live session.
    #[serde(default)]
    pub connected_participants: u32,
    /// Standard conditions: `Ready` (the job succeeded) and `Progressing` (a coordinator runs it).
    #[serde(default)]
    pub conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
}

/// One evaluation metric's value in a `FederatedJob`'s status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MetricValue {
    /// The metric's name, as in the job (`accuracy`).
    pub name: String,
    /// Its value over every evaluator's test examples.
    pub value: f64,
}

/// The CustomResourceDefinition of `FederatedJob`, as YAML.
pub fn crd_yaml() -> String {
    let crd = FederatedJob::crd();
    // Invariant: a CRD built from derived types always serialises.
    serde_saphyr::to_string(&crd).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chart's CRD is the one the code defines. After changing the job's schema,
    /// regenerate it with `cargo run -p cairn-coordinator -- crd > charts/coordinator/crds/federatedjob.yaml`.
    #[test]
    fn the_charts_crd_is_the_generated_one() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../charts/coordinator/crds/federatedjob.yaml");
        let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            checked_in == crd_yaml(),
            "{} is out of date; run `cargo run -p cairn-coordinator -- crd > {}`",
            path.display(),
            path.display()
        );
    }

    #[test]
    fn a_federated_job_is_a_job_file_under_spec() {
        let job = JobSpec::parse(
            "name: mnist\nmodel: {initial: /models/mnist-mlp.safetensors}\nrounds: 3\nmin_participants: 3\nparticipants: [a, b, c]\n",
        )
        .unwrap();
        let resource: FederatedJob = serde_json::from_value(serde_json::json!({
            "apiVersion": "cairn.dev/v1alpha1",
            "kind": "FederatedJob",
            "metadata": {"name": "mnist", "namespace": "fl"},
            "spec": serde_json::to_value(&job).unwrap(),
        }))
        .unwrap();
        assert_eq!(resource.spec.job, job);
        let crd = FederatedJob::crd();
        assert_eq!(crd.spec.names.short_names, Some(vec!["fj".to_string()]));
        let version = &crd.spec.versions[0];
        let columns: Vec<&str> = version
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            columns,
            ["Phase", "Round", "Rounds", "Evaluation", "Connected", "Age"]
        );
        let schema = serde_json::to_value(version.schema.as_ref().unwrap()).unwrap();
        let spec = &schema["openAPIV3Schema"]["properties"]["spec"];
        // The API server refuses edits of a spec: a run keeps the job it started with.
        assert_eq!(
            spec["x-kubernetes-validations"][0]["rule"],
            "self == oldSelf"
        );
        assert!(
            spec["properties"]["model"]["properties"]["initial"].is_object(),
            "model.initial missing: {spec}"
        );
        for field in [
            "name",
            "model",
            "metrics",
            "standardize",
            "rounds",
            "participants",
            "secure_aggregation",
        ] {
            assert!(
                spec["properties"][field].is_object(),
                "{field} missing: {spec}"
            );
        }
    }
}
