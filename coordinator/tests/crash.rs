//! The coordinator as a separate process, killed with SIGKILL in the middle of a job and
//! restarted on the same state directory: the job completes, every round is committed exactly
//! once, and every kept checkpoint loads. The participants run in this process and reconnect by
//! themselves.

use cairn_coordinator::config::JobSpec;
use cairn_coordinator::model::{layout, load_safetensors};
use cairn_coordinator::pki::{self, ParticipantSpec, ProvisionRequest};
use cairn_coordinator::store::Store;
use cairn_participant::client::{ClientOptions, Kit, run_many};
use cairn_participant::data::partition::Scheme;
use cairn_participant::data::{LocalData, Partition};
use cairn_participant::task::{Backend, BurnTask, Task};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const IDS: [&str; 2] = ["alpha", "bravo"];
const ROUNDS: u64 = 6;

fn job_yaml() -> String {
    format!(
        "name: crash-test\nmodel: mlp\ndataset: digits\nrounds: {ROUNDS}\nmin_participants: 2\nlocal_epochs: 15\n\
         batch_size: 16\nlearning_rate: 0.05\nphase_deadline_s: 60\nseed: 3\nparticipants: [{}]\n\
         secure_aggregation: {{enabled: false}}\n",
        IDS.join(", ")
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("address")
        .port()
}

fn spawn_coordinator(dir: &Path, port: u16, log: &str) -> Child {
    let log = std::fs::File::create(dir.join(log)).expect("log file");
    Command::new(env!("CARGO_BIN_EXE_cairn-coordinator"))
        .args([
            "serve",
            "--heartbeat-s",
            "1",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .arg("--job")
        .arg(dir.join("job.yaml"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--tls")
        .arg(dir.join("federation/coordinator"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start cairn-coordinator")
}

fn committed_rounds(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("state/rounds.jsonl")).map_or(0, |text| text.lines().count())
}

fn digits_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/data/digits")
}

fn participants(dir: &Path, port: u16) -> Vec<(ClientOptions, Box<dyn Task>)> {
    let data = LocalData::load(&digits_dir()).expect("digits");
    IDS.iter()
        .enumerate()
        .map(|(index, id)| {
            let kit = Kit::load(&dir.join("federation/participants").join(id)).expect("kit");
            let mut options = ClientOptions::new(format!("https://127.0.0.1:{port}"), kit, *id);
            options.server_name = Some("localhost".into());
            options.initial_backoff = Duration::from_millis(100);
            options.max_backoff = Duration::from_secs(1);
            options.max_attempts = Some(60);
            let partition = Partition {
                scheme: Scheme::Iid,
                index,
                count: IDS.len(),
                seed: 1,
            };
            let task = BurnTask::new(
                "mlp",
                data.partition(&partition).expect("partition"),
                Backend::Cpu,
            )
            .expect("task");
            (options, Box::new(task) as Box<dyn Task>)
        })
        .collect()
}

async fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_killed_mid_job_resumes_and_loses_no_round() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    pki::provision(&ProvisionRequest {
        out_dir: dir.join("federation"),
        federation: "crash".into(),
        server_names: vec!["localhost".into()],
        participants: IDS
            .iter()
            .map(|id| ParticipantSpec::parse(id).expect("id"))
            .collect(),
        validity_days: 1,
    })
    .expect("provision");
    std::fs::write(dir.join("job.yaml"), job_yaml()).expect("job file");
    let port = free_port();

    let mut first = spawn_coordinator(dir, port, "first.log");
    let clients = tokio::spawn(run_many(participants(dir, port)));
    wait_for("two committed rounds", Duration::from_secs(120), || {
        committed_rounds(dir) >= 2
    })
    .await;
    // The next round starts as soon as one commits: the kill lands in the middle of a round.
    first.kill().expect("SIGKILL");
    first.wait().expect("reaped");
    let before_restart = committed_rounds(dir);
    assert!(
        before_restart < ROUNDS as usize,
        "the job ended before the kill"
    );

    let mut second = spawn_coordinator(dir, port, "second.log");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = second.try_wait().expect("poll") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(180) {
            let _ = second.kill();
            panic!("the restarted coordinator did not finish the job");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let log = std::fs::read_to_string(dir.join("second.log")).unwrap_or_default();
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
    let model_layout = layout(job.model, job.dataset);
    let (store, resume) =
        Store::open(&dir.join("state"), &job, &model_layout, 3).expect("state dir reopens");
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
    assert!(
        resume
            .rounds
            .last()
            .and_then(|r| r.outcome.eval_accuracy)
            .expect("evaluated")
            > 0.8
    );

    // A third start on the completed state dir runs nothing and succeeds.
    let mut third = spawn_coordinator(dir, port, "third.log");
    let status = third.wait().expect("third run");
    let log = std::fs::read_to_string(dir.join("third.log")).unwrap_or_default();
    assert!(status.success() && log.contains("nothing to run"), "{log}");
    assert_eq!(committed_rounds(dir), ROUNDS as usize);
}
