//! Kubernetes: the `FederatedJob` custom resource, whose spec is the job file's schema
//! ([`JobSpec`]), so one definition serves both. This is the only module that imports kube.
//! `cairn-coordinator crd` prints the CustomResourceDefinition; the coordinator chart ships a
//! copy that a test keeps equal to it.

use crate::config::JobSpec;
use kube::CustomResource;
use kube::CustomResourceExt;
use serde::{Deserialize, Serialize};

/// A federated training job as a Kubernetes resource: `spec` is a job file.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
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
    printcolumn = r#"{"name": "Accuracy", "type": "number", "jsonPath": ".status.lastAccuracy"}"#,
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
    /// Evaluation accuracy of the last committed round.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_accuracy: Option<f64>,
    /// Participants with a live session.
    #[serde(default)]
    pub connected_participants: u32,
    /// Standard conditions (`Ready`, `Progressing`, `Failed`).
    #[serde(default)]
    pub conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
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
            "name: mnist\nmodel: mlp\ndataset: mnist\nrounds: 3\nmin_participants: 3\nparticipants: [a, b, c]\n",
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
            ["Phase", "Round", "Rounds", "Accuracy", "Connected", "Age"]
        );
        let schema = serde_json::to_value(version.schema.as_ref().unwrap()).unwrap();
        let spec = &schema["openAPIV3Schema"]["properties"]["spec"];
        for field in [
            "name",
            "model",
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
