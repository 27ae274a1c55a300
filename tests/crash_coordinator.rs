//! The coordinator as a separate process, killed with SIGKILL in the middle of a job and
//! restarted on the same state directory: the job completes, every round is committed exactly
//! once, and every kept checkpoint loads. The participants run in this process and reconnect by
//! themselves. SIGTERM stops a coordinator cleanly, saying how to resume.

use cairn_coordinator::config::JobSpec;
use cairn_coordinator::model::{load_safetensors, n_values};
use cairn_coordinator::store::Store;
use cairn_coordinator::strategy::ServerOptimizer;
use cairn_participant::client::{ClientOptions, run_many};
use cairn_participant::task::Task;
use cairn_tests::process::{Process, binary};
use cairn_tests::{Federation, digits_task};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

const IDS: [&str; 2] = ["alpha", "bravo"];
const ROUNDS: u64 = 6;

fn job_yaml() -> String {
    format!(
        "name: crash-test\nmodel: {{initial: {}}}\nrounds: {ROUNDS}\nmin_participants: 2\nlocal_epochs: 15\n\
         batch_size: 16\nlearning_rate: 0.05\nphase_deadline_s: 60\nseed: 3\nparticipants: [{}]\n\
         secure_aggregation: {{enabled: false}}\n\
         server_optimizer: {{algorithm: fedavgm, learning_rate: 1.0, momentum: 0.5}}\n",
        cairn_tests::digits_model().display(),
        IDS.join(", ")
    )
}

fn coordinator_binary() -> PathBuf {
    binary("cairn-coordinator", "cairn-coordinator")
}

/// A coordinator process on the job in `dir`, on a port of its own choosing.
struct CoordinatorProcess {
    process: Process,
    address: SocketAddr,
}

impl CoordinatorProcess {
    /// Starts `cairn-coordinator serve` on `dir`'s job and state directory, listening on port 0,
    /// and waits for the line that says which address it got.
    async fn start(dir: &Path, name: &str) -> CoordinatorProcess {
        let mut command = tokio::process::Command::new(coordinator_binary());
        command
            .args(["serve", "--heartbeat-s", "1", "--listen", "127.0.0.1:0"])
            // Tests run side by side: no fixed port for the API either.
            .args(["--api-listen", "127.0.0.1:0"])
            .arg("--job")
            .arg(dir.join("job.yaml"))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--tls")
            .arg(dir.join("coordinator"));
        let mut process = Process::spawn(name, command);
        // "... coordinator listening (mTLS only); ... address=127.0.0.1:40123 rounds=6 ..."
        let line = process
            .line_containing("coordinator listening", Duration::from_secs(60))
            .await;
        let address = line
            .split_whitespace()
            .find_map(|field| field.strip_prefix("address="))
            .and_then(|address| address.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        CoordinatorProcess { process, address }
    }
}

/// A TCP relay on a loopback port that this test holds from start to end, to the coordinator
/// process of the moment. Each coordinator binds port 0, so no port is picked, released and
/// hoped to stay free for a restart; the participants dial one fixed address and reach the
/// restarted coordinator there, as they would behind a Service or a DNS name.
struct Relay {
    address: SocketAddr,
    upstream: Arc<Mutex<Option<SocketAddr>>>,
    accepting: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start() -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("the relay binds");
        let address = listener.local_addr().expect("the relay's address");
        let upstream = Arc::new(Mutex::new(None::<SocketAddr>));
        let current = upstream.clone();
        let accepting = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = *current.lock().unwrap_or_else(|p| p.into_inner());
                tokio::spawn(async move {
                    // With no coordinator up, the connection just closes: to the participant
                    // that is a failed attempt, as a refused connection would be.
                    let Some(target) = target else { return };
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Relay {
            address,
            upstream,
            accepting,
        }
    }

    /// Sends new connections to `target` (none: closes them).
    fn point_to(&self, target: Option<SocketAddr>) {
        *self.upstream.lock().unwrap_or_else(|p| p.into_inner()) = target;
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

fn committed_rounds(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("state/rounds.jsonl")).map_or(0, |text| text.lines().count())
}

fn participants(federation: &Federation, url: &str) -> Vec<(ClientOptions, Box<dyn Task>)> {
    IDS.iter()
        .enumerate()
        .map(|(index, id)| {
            let mut options = federation.client_at(url, id);
            options.max_attempts = Some(60);
            (options, digits_task(index, IDS.len()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_killed_mid_job_resumes_and_loses_no_round() {
    coordinator_binary();
    let federation = Federation::provision(&IDS);
    let dir = federation.dir.path();
    std::fs::write(dir.join("job.yaml"), job_yaml()).expect("job file");
    let relay = Relay::start().await;

    let mut first = CoordinatorProcess::start(dir, "the first coordinator").await;
    relay.point_to(Some(first.address));
    let clients = tokio::spawn(run_many(participants(
        &federation,
        &format!("https://{}", relay.address),
    )));
    // Round 3 starts once round 2 is committed: the kill lands in the middle of a round.
    first
        .process
        .line_containing("round 3: training on", Duration::from_secs(120))
        .await;
    relay.point_to(None);
    first.process.kill().await;
    let before_restart = committed_rounds(dir);
    assert!(
        (2..ROUNDS as usize).contains(&before_restart),
        "{before_restart} rounds committed at the kill; expected at least 2 and not all {ROUNDS}"
    );

    let second = CoordinatorProcess::start(dir, "the restarted coordinator").await;
    relay.point_to(Some(second.address));
    let (status, log) = second.process.exit(Duration::from_secs(180)).await;
    assert!(status.success(), "restarted coordinator failed: {log}");
    assert!(
        log.contains(&format!(
            "resuming job crash-test at round {}",
            before_restart + 1
        )),
        "{log}"
    );
    let results = tokio::time::timeout(Duration::from_secs(90), clients)
        .await
        .expect("participants end");
    for result in results.expect("participants") {
        assert_eq!(
            result.expect("participant finished").finish_reason,
            format!("all {ROUNDS} rounds completed")
        );
    }

    // Every round exactly once, in order (the store refuses gaps and duplicates), and every
    // kept checkpoint matches its recorded hash and loads.
    let job = JobSpec::parse(&job_yaml()).expect("job");
    let model_layout = cairn_tests::digits_layout();
    // The server momentum is checkpointed with every round and resumed with the model.
    let optimizer_layout =
        ServerOptimizer::state_layout(&job.server_optimizer, n_values(&model_layout));
    let (store, resume) = Store::open(
        &dir.join("state"),
        &job,
        &model_layout,
        &optimizer_layout,
        3,
    )
    .expect("state dir reopens");
    let momentum = resume
        .optimizer_state
        .as_ref()
        .expect("momentum checkpointed");
    assert_eq!(momentum.len(), n_values(&model_layout));
    assert!(momentum.iter().any(|m| *m != 0.0), "the momentum moved");
    let rounds: Vec<u64> = resume.rounds.iter().map(|r| r.outcome.round).collect();
    assert_eq!(rounds, (1..=ROUNDS).collect::<Vec<_>>());
    let mut kept = 0;
    for record in &resume.rounds {
        if store.checkpoint_path(record.outcome.round).exists() {
            store
                .load_checkpoint(record, &model_layout)
                .expect("checkpoint loads");
            kept += 1;
        }
    }
    assert_eq!(kept, 3);
    let final_model =
        load_safetensors(&store.final_model_path(), &model_layout).expect("final model");
    assert_eq!(Some(final_model), resume.global);
    let accuracy = resume
        .rounds
        .last()
        .and_then(|r| r.outcome.eval_metrics.get("accuracy").copied())
        .expect("evaluated");
    assert!(accuracy > 0.8, "final accuracy {accuracy}");

    // A third start on the completed state dir runs nothing and succeeds.
    let third = CoordinatorProcess::start(dir, "the third coordinator").await;
    let (status, log) = third.process.exit(Duration::from_secs(60)).await;
    assert!(status.success() && log.contains("nothing to run"), "{log}");
    assert!(!log.contains("waiting for"), "{log}");
    assert_eq!(committed_rounds(dir), ROUNDS as usize);

    // The restarted coordinator continued the same chain, and the sites countersigned every
    // record, those committed before the kill included (a site reconnecting is sent the records
    // after the last one it signed).
    let ca = std::fs::read_to_string(federation.kit_dir(IDS[0]).join("ca.pem")).expect("CA");
    let audit = cairn_coordinator::store::audit::audit(&dir.join("state"), Some(&ca))
        .expect("the state directory audits clean");
    let mut everyone: Vec<&str> = IDS.to_vec();
    everyone.sort();
    for round in &audit.rounds {
        assert_eq!(
            round.signers, everyone,
            "signers of round {}",
            round.record.outcome.round
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_the_job_over_and_says_how_to_resume_and_a_refused_handshake_is_logged() {
    coordinator_binary();
    let federation = Federation::provision(&IDS);
    let dir = federation.dir.path();
    std::fs::write(dir.join("job.yaml"), job_yaml()).expect("job file");
    let mut coordinator = CoordinatorProcess::start(dir, "the coordinator").await;
    // A partner that cannot connect leaves a line naming it and what was wrong.
    let mut plaintext = tokio::net::TcpStream::connect(coordinator.address)
        .await
        .expect("connect");
    tokio::io::AsyncWriteExt::write_all(&mut plaintext, b"GET / HTTP/1.1\r\n\r\n")
        .await
        .expect("write");
    let refused = coordinator
        .process
        .line_containing(
            "refused a connection from 127.0.0.1",
            Duration::from_secs(30),
        )
        .await;
    assert!(refused.contains("does not speak TLS"), "{refused}");
    coordinator.process.terminate();
    let (status, log) = coordinator.process.exit(Duration::from_secs(60)).await;
    assert!(status.success(), "{status}: {log}");
    assert!(
        log.contains("received SIGTERM; shutting down")
            && log.contains("start `serve` again with the same --state-dir to resume"),
        "{log}"
    );
}
