//! A participant as a separate process, killed with SIGKILL while it trains and again while it
//! evaluates: the coordinator drops it in that phase, the rounds complete with the others, and
//! the restarted process rejoins and contributes again.

use cairn_coordinator::config::JobSpec;
use cairn_coordinator::pki::{self, ParticipantSpec, ProvisionRequest};
use cairn_coordinator::round::Phase;
use cairn_coordinator::{Coordinator, ServeOptions, ServerTls};
use cairn_participant::client::{ClientOptions, Kit, run_many};
use cairn_participant::data::partition::Scheme;
use cairn_participant::data::{LocalData, Partition};
use cairn_participant::task::{Backend, BurnTask, Task};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const IDS: [&str; 3] = ["alpha", "bravo", "charlie"];

fn digits_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/data/digits")
}

/// Starts `cairn-participant join` as charlie; its log lines arrive on the returned channel.
fn spawn_charlie(dir: &Path, url: &str) -> (Child, mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairn-participant"))
        .args(["join", "--coordinator", url, "--server-name", "localhost"])
        .args([
            "--partitions",
            "3",
            "--partition-index",
            "2",
            "--max-attempts",
            "50",
        ])
        .arg("--kit")
        .arg(dir.join("federation/participants/charlie"))
        .arg("--data")
        .arg(digits_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start cairn-participant");
    let stderr = child.stderr.take().expect("piped stderr");
    let (lines, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    (child, receiver)
}

/// Waits for a log line containing `needle`, then kills the process with SIGKILL.
fn kill_at(mut child: Child, lines: &mpsc::Receiver<String>, needle: &str) -> u64 {
    loop {
        let line = lines
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no {needle:?} line"));
        if line.contains(needle) {
            child.kill().expect("SIGKILL");
            child.wait().expect("reaped");
            // "charlie: round 4: training ..." -> 4
            let round = line
                .split("round ")
                .nth(1)
                .and_then(|r| r.split(':').next())
                .and_then(|r| r.parse().ok());
            return round.expect("round number in the log line");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_participant_is_dropped_and_rejoins_after_restart() {
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
    let job = JobSpec::parse(&format!(
        "name: kill-test\nmodel: mlp\ndataset: digits\nrounds: 25\nmin_participants: 2\nlocal_epochs: 20\n\
         batch_size: 16\nlearning_rate: 0.05\nphase_deadline_s: 30\nparticipants: [{}]\n\
         secure_aggregation: {{enabled: false}}\n",
        IDS.join(", ")
    ))
    .expect("job");
    let coordinator = Coordinator::start(ServeOptions {
        job,
        tls: ServerTls::from_dir(&dir.join("federation/coordinator")).expect("tls"),
        state_dir: dir.join("state"),
        listen: "127.0.0.1:0".parse().expect("address"),
        heartbeat_interval: Duration::from_secs(1),
        keep_checkpoints: 2,
        api: None,
    })
    .await
    .expect("coordinator");
    let url = format!("https://127.0.0.1:{}", coordinator.local_addr().port());

    let data = LocalData::load(&digits_dir()).expect("digits");
    let honest: Vec<(ClientOptions, Box<dyn Task>)> = IDS[..2]
        .iter()
        .enumerate()
        .map(|(index, id)| {
            let kit = Kit::load(&dir.join("federation/participants").join(id)).expect("kit");
            let mut options = ClientOptions::new(url.clone(), kit, *id);
            options.server_name = Some("localhost".into());
            let partition = Partition {
                scheme: Scheme::Iid,
                index,
                count: 3,
                seed: 0,
            };
            let task = BurnTask::new(
                "mlp",
                data.partition(&partition).expect("partition"),
                Backend::Cpu,
            )
            .expect("task");
            (options, Box::new(task) as Box<dyn Task>)
        })
        .collect();
    let honest = tokio::spawn(run_many(honest));

    let (child, lines) = spawn_charlie(dir, &url);
    let killed_training = kill_at(child, &lines, ": training (");
    let (child, lines) = spawn_charlie(dir, &url);
    let killed_evaluating = kill_at(child, &lines, ": evaluating the new global model");
    let (mut last, _lines) = spawn_charlie(dir, &url);

    let report = tokio::time::timeout(Duration::from_secs(240), coordinator.wait())
        .await
        .expect("job finishes")
        .expect("report");
    assert!(report.succeeded, "{}", report.reason);
    // The restarted charlie hears that the job ended and exits cleanly (unless it happened to be
    // between sessions at that moment, which only costs it retries).
    for _ in 0..300 {
        if let Some(status) = last.try_wait().expect("poll charlie") {
            assert!(status.success(), "charlie exited with {status}");
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = last.kill();
    for result in honest.await.expect("honest participants") {
        result.expect("honest participant finished");
    }
    let record = |round: u64| &report.rounds[round as usize - 1].outcome;
    // Killed while training: dropped in the training phase, the round completed without it.
    let first = record(killed_training);
    assert!(
        first
            .dropouts
            .iter()
            .any(|d| d.id == "charlie" && d.phase == Phase::Train),
        "round {killed_training}: {first:?}"
    );
    assert_eq!(first.contributors, vec!["alpha", "bravo"]);
    // Killed while evaluating: dropped in the evaluation phase, the round is committed with the
    // others' evaluations.
    let second = record(killed_evaluating);
    assert!(
        second
            .dropouts
            .iter()
            .any(|d| d.id == "charlie" && d.phase == Phase::Evaluate),
        "round {killed_evaluating}: {second:?}"
    );
    assert_eq!(second.evaluators, 2);
    // Restarted, it rejoins and contributes again.
    assert!(
        report.rounds[killed_evaluating as usize..]
            .iter()
            .any(|r| r.outcome.contributors.contains(&"charlie".to_string())),
        "charlie never rejoined"
    );
    assert_eq!(report.rounds.len(), 25);
}
