//! The FederatedJob operator against a stateful fake Kubernetes API server (`kube_fake`): the
//! real operator (kube's Controller, the lease manager, finalizers, status and Events) runs real
//! coordinators that real participants join over loopback mTLS.

use cairn_coordinator::ServerTls;
use cairn_coordinator::config::JobSpec;
use cairn_coordinator::operator::{self, OperatorOptions};
use cairn_participant::client::run_many;
use cairn_tests::kube_fake::{self, FakeApiServer};
use cairn_tests::{Federation, digits_job, digits_task};
use serde_json::{Value, json};
use std::time::Duration;

const NAMESPACE: &str = "fl";
const IDENTITY: &str = "coordinator-0";
const LEASE: &str = "cairn-coordinator";
const IDS: [&str; 3] = ["alpha", "bravo", "charlie"];

/// A federation, a fake API server and the operator running against it on a free port.
struct Cluster {
    federation: Federation,
    api: FakeApiServer,
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    operator: tokio::task::JoinHandle<Result<(), cairn_coordinator::Error>>,
}

impl Cluster {
    fn start() -> Cluster {
        let federation = Federation::provision(&IDS);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let options = OperatorOptions {
            namespace: NAMESPACE.into(),
            identity: IDENTITY.into(),
            lease_name: LEASE.into(),
            lease_duration: Duration::from_secs(3),
            state_dir: federation.dir.path().join("state"),
            tls: ServerTls::from_dir(&federation.dir.path().join("coordinator")).expect("TLS"),
            listen: format!("127.0.0.1:{port}").parse().expect("address"),
            heartbeat_interval: Duration::from_secs(2),
            keep_checkpoints: 3,
            api: None,
        };
        let api = FakeApiServer::default();
        let client = api.client(NAMESPACE);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let operator = tokio::spawn(operator::run(client, options, async {
            let _ = stopped.await;
        }));
        Cluster {
            federation,
            api,
            url: format!("https://127.0.0.1:{port}"),
            stop: Some(stop),
            operator,
        }
    }

    /// The operator running a 200-round job `name` that three participants train, once it has
    /// committed `rounds` rounds.
    async fn running(
        name: &str,
        rounds: u64,
    ) -> (Cluster, tokio::task::JoinHandle<Vec<Result<u64, String>>>) {
        let cluster = Cluster::start();
        cluster.create_job(name, &digits_job(&IDS, 200, 3));
        let participants = cluster.participants(false);
        cluster
            .wait_for(name, 120, |j| rounds_completed(j) >= rounds)
            .await;
        (cluster, participants)
    }

    /// Creates FederatedJob `name` running `job` under the same name: each run of a job is a
    /// history of its own, which the sites countersign by the job's name.
    fn create_job(&self, name: &str, job: &JobSpec) {
        let job = JobSpec {
            name: name.to_string(),
            ..job.clone()
        };
        self.api.create(
            &kube_fake::jobs(NAMESPACE),
            json!({
                "apiVersion": "cairn.dev/v1alpha1",
                "kind": "FederatedJob",
                "metadata": {"name": name, "namespace": NAMESPACE},
                "spec": job,
            }),
        );
    }

    fn job(&self, name: &str) -> Option<Value> {
        self.api.get(&kube_fake::jobs(NAMESPACE), name)
    }

    /// The round records of job `name`, from its own state directory.
    fn round_records(&self, name: &str) -> String {
        let job = self.job(name).expect("the job exists");
        let uid = job["metadata"]["uid"].as_str().expect("uid");
        let path = self
            .federation
            .dir
            .path()
            .join(format!("state/{name}-{uid}/rounds.jsonl"));
        std::fs::read_to_string(&path).expect("round records")
    }

    /// Waits until `name` satisfies `test`, failing after `seconds`.
    async fn wait_for(&self, name: &str, seconds: u64, test: impl Fn(Option<&Value>) -> bool) {
        for _ in 0..seconds * 10 {
            if test(self.job(name).as_ref()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "FederatedJob {name} did not get there in {seconds} s; now: {:#}",
            self.job(name).unwrap_or_default()
        );
    }

    /// The reasons of the Events recorded about `name`, oldest first.
    fn event_reasons(&self, name: &str) -> Vec<String> {
        self.api
            .list(&kube_fake::events(NAMESPACE))
            .iter()
            .filter(|e| e["regarding"]["name"] == name)
            .map(|e| e["reason"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// How often the Event `reason` was recorded about `name` (repeats are counted in one
    /// Event's series, as `kubectl describe` shows them).
    fn event_count(&self, name: &str, reason: &str) -> u64 {
        self.api
            .list(&kube_fake::events(NAMESPACE))
            .iter()
            .filter(|e| e["regarding"]["name"] == name && e["reason"] == reason)
            .map(|e| e["series"]["count"].as_u64().unwrap_or(1))
            .sum()
    }

    /// Waits until the job `name` stopped here without ending (its gRPC port closed); returns it
    /// as it was left. That nothing more is written about it is checked once it has resumed
    /// ([`Cluster::resumed`]).
    async fn handed_over(&self, name: &str, seconds: u64) -> Value {
        let address = self.url.trim_start_matches("https://").to_string();
        let mut closed = false;
        for _ in 0..seconds * 10 {
            if std::net::TcpStream::connect(&address).is_err() {
                closed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(closed, "the job still listens after {seconds} s");
        let left = self
            .api
            .get(&kube_fake::jobs(NAMESPACE), name)
            .unwrap_or_default();
        assert_eq!(phase(Some(&left)), "Running");
        left
    }

    /// Waits until the job `name`, handed over as `left`, runs here again and commits rounds
    /// with the same participants, which were never told it ended.
    async fn resumed(
        &self,
        name: &str,
        left: &Value,
        participants: tokio::task::JoinHandle<Vec<Result<u64, String>>>,
    ) {
        assert!(
            !participants.is_finished(),
            "participants were told the job ended"
        );
        let committed = rounds_completed(Some(left));
        self.wait_for(name, 60, |j| rounds_completed(j) > committed + 1)
            .await;
        assert_eq!(self.event_count(name, "Started"), 2);
        assert!(!participants.is_finished());
        participants.abort();
        // The job runs here again only after the follower of its handed-over run has finished
        // (the operator waits for it to finish before it leads again), so by now anything that
        // follower wrote is in the history. A replica that no longer leads writes no final
        // phase and records no final Event.
        let history = self.api.history(&kube_fake::jobs(NAMESPACE), name);
        let phases: Vec<&str> = history.iter().map(|j| phase(Some(j))).collect();
        assert!(
            phases
                .iter()
                .all(|p| ["", "Pending", "Running"].contains(p)),
            "phases written: {phases:?}"
        );
        let reasons = self.event_reasons(name);
        assert!(
            !reasons.iter().any(|r| r == "Succeeded" || r == "Failed"),
            "{reasons:?}"
        );
    }

    /// Runs the three participants against the operator's address until their job ends (with
    /// `keep_going`, for every job to come).
    fn participants(&self, keep_going: bool) -> tokio::task::JoinHandle<Vec<Result<u64, String>>> {
        let clients = IDS
            .iter()
            .enumerate()
            .map(|(index, id)| {
                let mut options = self.federation.client_at(&self.url, id);
                options.max_attempts = Some(60);
                options.keep_going = keep_going;
                (options, digits_task(index, IDS.len()))
            })
            .collect();
        tokio::spawn(async move {
            run_many(clients)
                .await
                .into_iter()
                .map(|r| r.map(|s| s.rounds_trained).map_err(|e| e.to_string()))
                .collect()
        })
    }

    async fn shut_down(mut self) -> FakeApiServer {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(20), &mut self.operator)
            .await
            .expect("the operator stops within 20 s")
            .expect("operator task")
            .expect("operator ends cleanly");
        self.api
    }
}

fn phase(job: Option<&Value>) -> &str {
    job.and_then(|j| j["status"]["phase"].as_str())
        .unwrap_or_default()
}

fn rounds_completed(job: Option<&Value>) -> u64 {
    job.and_then(|j| j["status"]["roundsCompleted"].as_u64())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_federated_job_runs_with_status_per_round_and_events_until_it_succeeds() {
    let cluster = Cluster::start();
    // A job the CRD's schema admits but the job's own rules refuse fails with the reason, and
    // takes nothing from the valid one.
    let mut broken = digits_job(&IDS, 3, 3);
    broken.min_participants = 5;
    cluster.create_job("broken", &broken);
    cluster.create_job("digits", &digits_job(&IDS, 3, 3));
    let participants = cluster.participants(false);
    cluster
        .wait_for("digits", 120, |j| phase(j) == "Succeeded")
        .await;
    let refused = cluster.job("broken").expect("kept");
    assert_eq!(phase(Some(&refused)), "Failed");
    let condition = &refused["status"]["conditions"][0];
    assert_eq!(condition["reason"], "InvalidSpec");
    let message = condition["message"].as_str().unwrap_or_default();
    assert!(message.contains("min_participants"), "{message}");
    assert_eq!(cluster.event_count("broken", "InvalidSpec"), 1);
    for trained in participants.await.expect("participants") {
        assert_eq!(trained, Ok(3));
    }

    let job = cluster.job("digits").expect("the job is kept");
    let status = &job["status"];
    assert_eq!(status["roundsCompleted"], 3);
    assert!(status["currentRound"].is_null(), "{status}");
    let accuracy = status["lastMetrics"]
        .as_array()
        .and_then(|metrics| metrics.iter().find(|m| m["name"] == "accuracy"))
        .and_then(|m| m["value"].as_f64())
        .expect("an accuracy");
    assert!(accuracy > 0.8, "accuracy {accuracy}");
    let ready = status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .expect("a Ready condition");
    assert_eq!(ready["status"], "True");
    assert_eq!(ready["reason"], "Completed");
    assert_eq!(job["metadata"]["finalizers"], json!(["cairn.dev/stop-job"]));
    // The status went through every round on the way.
    let history = cluster.api.history(&kube_fake::jobs(NAMESPACE), "digits");
    let mut rounds: Vec<u64> = history
        .iter()
        .filter_map(|j| j["status"]["currentRound"].as_u64())
        .collect();
    rounds.dedup();
    assert_eq!(rounds, [1, 2, 3], "currentRound as written");
    let mut completed: Vec<u64> = history.iter().map(|j| rounds_completed(Some(j))).collect();
    completed.dedup();
    assert_eq!(completed, [0, 1, 2, 3], "roundsCompleted as written");
    let reasons = cluster.event_reasons("digits");
    assert_eq!(
        reasons.first().map(String::as_str),
        Some("Started"),
        "{reasons:?}"
    );
    assert!(
        reasons.contains(&"RoundCommitted".to_string()),
        "{reasons:?}"
    );
    assert_eq!(
        reasons.last().map(String::as_str),
        Some("Succeeded"),
        "{reasons:?}"
    );
    // The round records are on disk under the job's own state directory.
    assert_eq!(cluster.round_records("digits").lines().count(), 3);
    let lease = cluster
        .api
        .get(&kube_fake::leases(NAMESPACE), LEASE)
        .expect("lease");
    assert_eq!(lease["spec"]["holderIdentity"], IDENTITY);

    let api = cluster.shut_down().await;
    let lease = api
        .get(&kube_fake::leases(NAMESPACE), LEASE)
        .expect("lease");
    assert!(
        lease["spec"]["holderIdentity"].is_null(),
        "the lease is released on shutdown: {lease}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participants_that_keep_going_train_one_federated_job_after_another_even_when_not_listed() {
    let cluster = Cluster::start();
    let participants = cluster.participants(true);
    // The first job does not list charlie: it is refused, and waits for one that does.
    let jobs = [
        ("first", digits_job(&IDS[..2], 2, 2)),
        ("second", digits_job(&IDS, 2, 3)),
    ];
    for (name, job) in &jobs {
        cluster.create_job(name, job);
        cluster
            .wait_for(name, 60, |j| phase(j) == "Succeeded")
            .await;
        assert_eq!(rounds_completed(cluster.job(name).as_ref()), 2);
    }
    assert!(!participants.is_finished(), "they wait for the next job");
    let records = cluster.round_records("second");
    assert!(
        records.lines().all(|r| r.contains("\"charlie\"")),
        "charlie took part in every round of the second job: {records}"
    );
    participants.abort();
    cluster.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_running_job_stops_it_and_the_queued_one_starts() {
    let (cluster, participants) = Cluster::running("long", 2).await;
    // A second job waits for its turn.
    cluster.create_job("next", &digits_job(&IDS, 1, 3));
    cluster
        .wait_for("next", 20, |j| {
            phase(j) == "Pending"
                && j.is_some_and(|j| j["status"]["conditions"][0]["reason"] == "Queued")
        })
        .await;

    cluster.api.delete(&kube_fake::jobs(NAMESPACE), "long");
    // The finalizer holds the object until the job stopped; then it is gone.
    cluster.wait_for("long", 30, |j| j.is_none()).await;
    let trained = tokio::time::timeout(Duration::from_secs(30), participants)
        .await
        .expect("participants are told the job ended")
        .expect("participants");
    for rounds in trained {
        let rounds = rounds.expect("a participant ends cleanly");
        assert!((2..200).contains(&rounds), "trained {rounds} rounds");
    }
    let reasons = cluster.event_reasons("long");
    assert_eq!(
        reasons.last().map(String::as_str),
        Some("Stopped"),
        "{reasons:?}"
    );
    assert!(!reasons.contains(&"Failed".to_string()), "{reasons:?}");
    // Deleting never wrote a final phase: the last status was a running one.
    let history = cluster.api.history(&kube_fake::jobs(NAMESPACE), "long");
    assert!(history.iter().all(|j| phase(Some(j)) != "Failed"));
    // The freed coordinator takes the queued job.
    cluster
        .wait_for("next", 30, |j| phase(j) == "Running")
        .await;
    cluster.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_lease_hands_the_job_over_and_regaining_it_resumes_it() {
    let (cluster, participants) = Cluster::running("leased", 1).await;

    // Another replica takes the lease for 8 s (as after a network partition), then goes away
    // without renewing it.
    let now = serde_json::to_value(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
        k8s_openapi::jiff::Timestamp::now(),
    ))
    .expect("time");
    cluster
        .api
        .update(&kube_fake::leases(NAMESPACE), LEASE, |lease| {
            lease["spec"]["holderIdentity"] = json!("coordinator-1");
            lease["spec"]["renewTime"] = now.clone();
            lease["spec"]["acquireTime"] = now.clone();
            lease["spec"]["leaseDurationSeconds"] = json!(8);
        });
    let stopped_at = cluster.handed_over("leased", 6).await;
    // When that lease has expired, this replica leads again, resumes the job from its state
    // directory, and the same participants, which kept reconnecting, go on training.
    cluster.resumed("leased", &stopped_at, participants).await;
    cluster.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_outage_hands_the_job_over_until_the_lease_is_confirmed_again() {
    let (cluster, participants) = Cluster::running("outage", 1).await;
    // The lease cannot be renewed or read: within its duration the leader stops running jobs,
    // since another replica may take the lease once it expires.
    cluster.api.set_unavailable(true);
    let stopped_at = cluster.handed_over("outage", 6).await;
    cluster.api.set_unavailable(false);
    cluster.resumed("outage", &stopped_at, participants).await;
    cluster.shut_down().await;
}
