//! End to end over loopback mTLS: a real coordinator and three real participants (separate
//! tasks, each with its own certificate and connection) train the MLP on the digits data with
//! secure aggregation; one participant's certificate comes from the certificate-request flow.
//! Also with a server optimiser and FedProx, which work from the secure sum alike, and with
//! distributed differential privacy, which stops the job at its budget.

use cairn_coordinator::config::{JobSpec, PrivacySpec, ServerAlgorithm, ServerOptimizerSpec};
use cairn_coordinator::grpc::JobReport;
use cairn_coordinator::model::load_safetensors;
use cairn_participant::client::run_many;
use cairn_tests::{Federation, digits_job};

/// Runs `job` with `ids` on their shares of the digits; every participant must finish.
async fn run(federation: &Federation, ids: &[&str], job: JobSpec) -> JobReport {
    let coordinator = federation.start(job).await;
    let address = coordinator.local_addr();
    let clients = federation.clients(&coordinator, ids);
    let results = run_many(clients).await;
    let report = cairn_tests::finish(coordinator).await.expect("job report");
    // The federation port is free once the job ended: the next job (under `--kubernetes`, the
    // next FederatedJob) listens on it.
    let released = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while std::net::TcpListener::bind(address).is_err() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    });
    released.await.expect("the federation port is released");
    for result in &results {
        let summary = result.as_ref().expect("participant finished");
        assert_eq!(summary.rounds_trained, report.rounds.len() as u64);
        assert_eq!(summary.evaluations, report.rounds.len() as u64);
    }
    assert!(report.succeeded, "{}", report.reason);
    report
}

fn accuracies(report: &JobReport) -> Vec<f64> {
    report
        .rounds
        .iter()
        .map(|r| r.outcome.eval_metrics["accuracy"])
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fedadam_and_fedprox_train_digits_under_secure_aggregation() {
    let ids = ["alpha", "bravo", "charlie"];
    let federation = Federation::provision(&ids);
    let mut job = digits_job(&ids, 3, 3);
    assert!(job.secure_aggregation.enabled);
    job.server_optimizer = ServerOptimizerSpec {
        algorithm: ServerAlgorithm::FedAdam,
        learning_rate: 0.05,
        ..ServerOptimizerSpec::default()
    };
    job.proximal_mu = 0.01;
    let report = run(&federation, &ids, job).await;
    let accuracies = accuracies(&report);
    assert!(
        accuracies[2] > accuracies[0] && accuracies[2] > 0.75,
        "accuracy by round: {accuracies:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_participants_train_digits_and_accuracy_improves() {
    let ids = ["alpha", "bravo", "charlie"];
    let federation = Federation::provision(&ids);
    // charlie's key was made at its site and only its certificate request was signed.
    federation.reissue_by_request("charlie");
    let report = run(&federation, &ids, digits_job(&ids, 3, 3)).await;
    assert_eq!(
        report
            .rounds
            .iter()
            .map(|r| r.outcome.round)
            .collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    let accuracies = accuracies(&report);
    assert!(
        accuracies[2] > accuracies[0],
        "accuracy did not improve: {accuracies:?}"
    );
    assert!(accuracies[2] > 0.85, "final accuracy {accuracies:?}");
    for record in &report.rounds {
        assert_eq!(record.outcome.contributors, ids);
        assert!(
            record.outcome.dropouts.is_empty(),
            "{:?}",
            record.outcome.dropouts
        );
        // Every participant evaluated on its share of the 359 test images.
        assert_eq!(record.outcome.eval_examples, 359);
        assert!(record.bytes_out > 0 && record.bytes_in > 0);
    }
    // The final model is a safetensors file with the job's layout.
    let model = load_safetensors(&report.model_path, &cairn_tests::digits_layout())
        .expect("final model loads");
    assert!(model.iter().all(|v| v.is_finite()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differential_privacy_records_epsilon_and_stops_the_job_at_its_budget() {
    let ids = ["alpha", "bravo", "charlie"];
    let federation = Federation::provision(&ids);
    let mut job = digits_job(&ids, 5, 3);
    let mut privacy = PrivacySpec {
        epsilon_budget: f64::MAX,
        delta: 1e-5,
        // Little noise: three sites cannot hide much, and the test is of the mechanics.
        noise_multiplier: 0.05,
        clip_norm: 1.0,
        min_contributors: None,
    };
    let n_values: usize = cairn_tests::digits_layout().iter().map(|t| t.len()).sum();
    let mechanism = privacy.mechanism(3, n_values).expect("mechanism");
    let delta = privacy.delta;
    let epsilon = |rounds| cairn_secagg::privacy::Ledger::after(&mechanism, rounds).epsilon(delta);
    // Room for two of the job's five rounds.
    privacy.epsilon_budget = (epsilon(2) + epsilon(3)) / 2.0;
    job.privacy = Some(privacy);
    let report = run(&federation, &ids, job).await;
    assert_eq!(report.rounds.len(), 2, "{}", report.reason);
    assert!(
        report
            .reason
            .starts_with("privacy budget spent: round 3 would take epsilon from"),
        "{}",
        report.reason
    );
    let spent: Vec<f64> = report
        .rounds
        .iter()
        .map(|r| r.outcome.epsilon.expect("epsilon recorded"))
        .collect();
    assert_eq!(spent, vec![epsilon(1), epsilon(2)]);
    for record in &report.rounds {
        assert_eq!(record.outcome.contributors, ids);
        // Each site counts as one under differential privacy.
        assert_eq!(record.outcome.train_examples, 3);
    }
    let accuracies = accuracies(&report);
    assert!(
        accuracies[1] > 0.5,
        "the noised rounds still train: {accuracies:?}"
    );
}

#[tokio::test]
async fn a_coordinator_dropped_before_its_job_ends_stops_the_job() {
    // Nobody connects, so the job would wait for its participants forever; dropping the
    // coordinator (a test that fails, a caller that gives up) stops it, and the runtime can
    // shut down instead of waiting for the driver's thread.
    let federation = Federation::provision(&["alpha", "bravo"]);
    let coordinator = federation
        .start(digits_job(&["alpha", "bravo"], 1, 2))
        .await;
    let monitor = coordinator.monitor().clone();
    drop(coordinator);
    let stopped = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while monitor.job().finish_reason.is_none() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(stopped.is_ok(), "the job did not stop");
    let reason = monitor.job().finish_reason.unwrap_or_default();
    assert!(reason.contains("the coordinator was dropped"), "{reason}");
}
