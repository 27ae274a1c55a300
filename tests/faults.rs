//! Faults injected through the participant transport's filter, against a real coordinator over
//! loopback mTLS: a partitioned participant and a slow one miss the deadline and are dropped,
//! the round completes with the others and does not wait for them, and the partitioned one
//! rejoins once the partition heals.

use cairn_coordinator::round::Phase;
use cairn_participant::client::{Filter, Verdict, run_many};
use cairn_proto::v1::{
    CoordinatorMessage, ParticipantMessage, coordinator_message, participant_message,
};
use cairn_tests::{Federation, digits_job_with_deadline, digits_task, finish};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const IDS: [&str; 3] = ["alpha", "bravo", "charlie"];

/// The three participants, with `filter` in charlie's transport.
fn participants(
    federation: &Federation,
    coordinator: &cairn_coordinator::Coordinator,
    filter: Arc<dyn Filter>,
) -> Vec<(
    cairn_participant::client::ClientOptions,
    Box<dyn cairn_participant::task::Task>,
)> {
    IDS.iter()
        .enumerate()
        .map(|(index, id)| {
            let mut options = federation.client(coordinator, id);
            if *id == "charlie" {
                options.filter = Some(filter.clone());
            }
            (options, digits_task(index, IDS.len()))
        })
        .collect()
}

fn train_round(message: &CoordinatorMessage) -> Option<u64> {
    match &message.body {
        Some(coordinator_message::Body::Train(train)) => train.model.as_ref().map(|m| m.round),
        _ => None,
    }
}

/// Loses every message the participant sends from the first round it is asked to train in
/// until it is asked to train in a later round: the coordinator hears nothing from it (no
/// update, no heartbeat, no evaluation) for a whole round.
#[derive(Debug, Default)]
struct PartitionForOneRound {
    partitioned_round: Mutex<Option<u64>>,
    healed: Mutex<bool>,
}

impl Filter for PartitionForOneRound {
    fn outbound(&self, _message: &ParticipantMessage) -> Verdict {
        let partitioned = self.partitioned_round.lock().expect("lock").is_some();
        if partitioned && !*self.healed.lock().expect("lock") {
            Verdict::Drop
        } else {
            Verdict::Pass
        }
    }

    fn inbound(&self, message: &CoordinatorMessage) -> Verdict {
        if let Some(round) = train_round(message) {
            let mut partitioned = self.partitioned_round.lock().expect("lock");
            match *partitioned {
                None => *partitioned = Some(round),
                Some(first) if round > first => *self.healed.lock().expect("lock") = true,
                Some(_) => {}
            }
        }
        Verdict::Pass
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_participant_is_dropped_and_rejoins_when_the_partition_heals() {
    let federation = Federation::provision(&IDS);
    // Heartbeats every 10 s: the session outlives the partition, so the participant is still
    // connected (and selected) when it heals.
    let coordinator = federation
        .start_with_heartbeat(
            digits_job_with_deadline(&IDS, 4, 2, 2),
            Duration::from_secs(10),
        )
        .await;
    let partition = Arc::new(PartitionForOneRound::default());
    let clients = participants(&federation, &coordinator, partition.clone());
    let results = run_many(clients).await;
    let report = finish(coordinator).await.expect("report");
    assert!(report.succeeded, "{}", report.reason);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let partitioned_round = partition
        .partitioned_round
        .lock()
        .expect("lock")
        .expect("charlie was asked to train");
    let record = &report.rounds[partitioned_round as usize - 1];
    let dropout = record
        .outcome
        .dropouts
        .iter()
        .find(|d| d.id == "charlie" && d.phase == Phase::Train);
    let dropout = dropout
        .unwrap_or_else(|| panic!("charlie not dropped in round {partitioned_round}: {record:?}"));
    assert!(
        dropout.reason.contains("missed the 2 s deadline"),
        "{dropout:?}"
    );
    assert_eq!(record.outcome.contributors, vec!["alpha", "bravo"]);
    // Healed, charlie contributes again in a later round.
    assert!(
        report.rounds[partitioned_round as usize..]
            .iter()
            .any(|r| r.outcome.contributors.contains(&"charlie".to_string())),
        "charlie never rejoined: {:?}",
        report
            .rounds
            .iter()
            .map(|r| &r.outcome.contributors)
            .collect::<Vec<_>>()
    );
}

/// Holds back the participant's first update for `delay`.
#[derive(Debug)]
struct SlowFirstUpdate {
    delay: Duration,
    delayed_round: Mutex<Option<u64>>,
}

impl Filter for SlowFirstUpdate {
    fn outbound(&self, message: &ParticipantMessage) -> Verdict {
        if let Some(participant_message::Body::Update(update)) = &message.body {
            let mut delayed = self.delayed_round.lock().expect("lock");
            if delayed.is_none() {
                *delayed = update.transfer.as_ref().map(|t| t.round);
                return Verdict::Delay(self.delay);
            }
        }
        Verdict::Pass
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_participant_does_not_delay_the_round_past_its_deadline() {
    let federation = Federation::provision(&IDS);
    let coordinator = federation
        .start(digits_job_with_deadline(&IDS, 2, 2, 2))
        .await;
    // Held back for longer than `finish` waits for the whole job: the job can only end if the
    // round does not wait for this update.
    let slow = Arc::new(SlowFirstUpdate {
        delay: Duration::from_secs(600),
        delayed_round: Mutex::new(None),
    });
    let clients = participants(&federation, &coordinator, slow.clone());
    // A participant that was between sessions when the job ended never hears that it ended and
    // keeps retrying; only the coordinator's report matters here.
    let clients = tokio::spawn(run_many(clients));
    let report = finish(coordinator).await.expect("report");
    clients.abort();
    assert!(report.succeeded, "{}", report.reason);
    let slow_round = slow
        .delayed_round
        .lock()
        .expect("lock")
        .expect("charlie sent an update");
    assert_eq!(report.rounds.len(), 2);
    let record = &report.rounds[slow_round as usize - 1];
    // The round ended at its 2 s training deadline without charlie, whose update was still held
    // back when the whole job had ended.
    let dropout = record
        .outcome
        .dropouts
        .iter()
        .find(|d| d.id == "charlie" && d.phase == Phase::Train)
        .unwrap_or_else(|| panic!("charlie not dropped in round {slow_round}: {record:?}"));
    assert!(
        dropout.reason.contains("missed the 2 s deadline"),
        "{dropout:?}"
    );
    assert_eq!(record.outcome.contributors, vec!["alpha", "bravo"]);
}
