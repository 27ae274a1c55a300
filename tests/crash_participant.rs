//! A participant as a separate process, killed with SIGKILL while it trains and again while it
//! evaluates: the coordinator drops it in that phase, the rounds complete with the others, and
//! the restarted process rejoins, contributes again, and exits cleanly when the job ends.

use cairn_coordinator::config::JobSpec;
use cairn_coordinator::round::Phase;
use cairn_participant::client::run_many;
use cairn_tests::process::{Process, binary};
use cairn_tests::{Federation, digits_dir, digits_task, url};
use std::time::Duration;

const IDS: [&str; 3] = ["alpha", "bravo", "charlie"];

/// Starts `cairn-participant join` as charlie, on the last third of the data.
fn spawn_charlie(federation: &Federation, url: &str) -> Process {
    let mut command = tokio::process::Command::new(participant_binary());
    command
        .args(["join", "--coordinator", url, "--server-name", "localhost"])
        .args(["--partitions", "3", "--partition-index", "2"])
        .args(["--max-attempts", "50", "--allow-plaintext"])
        .arg("--kit")
        .arg(federation.kit_dir("charlie"))
        .arg("--data")
        .arg(digits_dir());
    Process::spawn("charlie", command)
}

fn participant_binary() -> std::path::PathBuf {
    binary("cairn-participant", "cairn-participant")
}

/// Waits for charlie to log a line containing `needle`, then kills it with SIGKILL; returns the
/// round the line names ("charlie: round 4: training ..." is round 4).
async fn kill_at(mut charlie: Process, needle: &str) -> u64 {
    let line = charlie
        .line_containing(needle, Duration::from_secs(60))
        .await;
    charlie.kill().await;
    line.split("round ")
        .nth(1)
        .and_then(|rest| rest.split(':').next())
        .and_then(|round| round.parse().ok())
        .unwrap_or_else(|| panic!("no round number in {line:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_participant_is_dropped_and_rejoins_after_restart() {
    // Built before the job starts, which would otherwise run on without charlie meanwhile.
    participant_binary();
    let federation = Federation::provision(&IDS);
    // Twenty local epochs, so that a participant killed on its "training" line is killed while
    // it trains, before its update is sent.
    let job = JobSpec::parse(&format!(
        "name: kill-test\nmodel: {{initial: {}}}\nrounds: 25\nmin_participants: 2\nlocal_epochs: 20\n\
         batch_size: 16\nlearning_rate: 0.05\nphase_deadline_s: 30\nparticipants: [{}]\n\
         secure_aggregation: {{enabled: false}}\n",
        cairn_tests::digits_model().display(),
        IDS.join(", ")
    ))
    .expect("job");
    let coordinator = federation
        .start_with_heartbeat(job, Duration::from_secs(1))
        .await;
    let url = url(&coordinator);
    let honest = IDS[..2]
        .iter()
        .enumerate()
        .map(|(index, id)| {
            (
                federation.client(&coordinator, id),
                digits_task(index, IDS.len()),
            )
        })
        .collect();
    let honest = tokio::spawn(run_many(honest));

    let killed_training = kill_at(spawn_charlie(&federation, &url), ": training (").await;
    let killed_evaluating = kill_at(
        spawn_charlie(&federation, &url),
        ": evaluating the new global model",
    )
    .await;
    let last = spawn_charlie(&federation, &url);

    let report = tokio::time::timeout(Duration::from_secs(240), coordinator.wait())
        .await
        .expect("the job finishes within 240 s")
        .expect("report");
    assert!(report.succeeded, "{}", report.reason);
    // The restarted charlie is in a session when the job ends (it contributed in a later round,
    // checked below), hears that the job ended, and exits cleanly.
    let (status, log) = last.exit(Duration::from_secs(120)).await;
    assert!(status.success(), "charlie exited with {status}:\n{log}");
    assert!(log.contains("charlie: job finished"), "{log}");
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
