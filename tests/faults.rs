//! Faults injected through the participant transport's filter, against a real coordinator over
//! loopback mTLS: a partitioned participant and a slow one miss the deadline and are dropped,
//! the round completes with the others and does not wait for them, and the partitioned one
//! rejoins once the partition heals; a participant whose connection is cut in the middle of a
//! transfer resumes it where it broke off, and the job's model is the one an uncut run makes;
//! one cut off halfway through its update for good leaves the model as if it had sent nothing.

use cairn_coordinator::api::ApiEvent;
use cairn_coordinator::round::Phase;
use cairn_participant::client::{Filter, Verdict, run_many};
use cairn_participant::task::{Synthetic, Task, save_synthetic_model};
use cairn_proto::v1::{
    CoordinatorMessage, ParticipantMessage, coordinator_message, participant_message,
};
use cairn_tests::{Federation, digits_job_with_deadline, digits_task, finish, job_with_model};
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
    // Missed the deadline, or, when it had already missed one (its evaluation of the round
    // it joined in, on a slow machine), its grace.
    assert!(
        dropout.reason.contains("missed the 2 s deadline")
            || dropout.reason.starts_with("not waited for past its grace"),
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
    // Missed the deadline, or, when it had already missed one (its evaluation of the round
    // it joined in, on a slow machine), its grace.
    assert!(
        dropout.reason.contains("missed the 2 s deadline")
            || dropout.reason.starts_with("not waited for past its grace"),
        "{dropout:?}"
    );
    assert_eq!(record.outcome.contributors, vec!["alpha", "bravo"]);
}

/// Cuts the connection the first time chunk `index` of a transfer of `round` goes by, and
/// records the indices of that round's chunks that went through.
#[derive(Debug)]
struct CutOnce {
    round: u64,
    index: u32,
    cut: bool,
    passed: Vec<u32>,
}

impl CutOnce {
    fn at(round: u64, index: u32) -> Mutex<CutOnce> {
        Mutex::new(CutOnce {
            round,
            index,
            cut: false,
            passed: Vec::new(),
        })
    }

    fn see(&mut self, chunk: &cairn_proto::v1::Chunk) -> Verdict {
        if chunk.round != self.round {
            return Verdict::Pass;
        }
        if chunk.index == self.index && !self.cut {
            self.cut = true;
            return Verdict::Cut;
        }
        self.passed.push(chunk.index);
        Verdict::Pass
    }
}

/// Cuts the connection once in each direction in the middle of a transfer: while the
/// participant sends its round-1 update (before its chunk 2), and while the round-2 global model
/// arrives (at its chunk 2).
#[derive(Debug)]
struct CutMidTransfer {
    update: Mutex<CutOnce>,
    model: Mutex<CutOnce>,
    /// The round whose model to train on is arriving; `None` while a model to evaluate is.
    training: Mutex<Option<u64>>,
}

impl Filter for CutMidTransfer {
    fn outbound(&self, message: &ParticipantMessage) -> Verdict {
        match &message.body {
            Some(participant_message::Body::Chunk(chunk)) => {
                self.update.lock().expect("lock").see(chunk)
            }
            _ => Verdict::Pass,
        }
    }

    fn inbound(&self, message: &CoordinatorMessage) -> Verdict {
        let mut training = self.training.lock().expect("lock");
        match &message.body {
            Some(coordinator_message::Body::Train(_)) => *training = train_round(message),
            Some(coordinator_message::Body::Evaluate(_)) => *training = None,
            // Only the model to train on: the evaluations' models are not resumed.
            Some(coordinator_message::Body::Chunk(chunk)) if *training == Some(chunk.round) => {
                return self.model.lock().expect("lock").see(chunk);
            }
            _ => {}
        }
        Verdict::Pass
    }
}

/// A plaintext job of synthetic sites `ids`, needing two of them, on a model of five chunks:
/// `rounds` rounds whose phases last at most `deadline_s`, `filter` in the last site's transport.
/// With `late`, the last site starts only once round 1 has started without it, so that it is
/// selected from round 2 on together with all the others. Returns the report and the final
/// model; a site still trying to reconnect when the job ends is stopped.
async fn synthetic_run(
    ids: &[&str],
    rounds: u64,
    deadline_s: u64,
    filter: Arc<dyn Filter>,
    late: bool,
) -> (cairn_coordinator::JobReport, Vec<f32>) {
    // Four whole chunks of 256 KiB and a part of one.
    let n_parameters = 4 * (cairn_proto::MAX_CHUNK_BYTES / 4) + 1000;
    let federation = Federation::provision(ids);
    let model = tempfile::tempdir().expect("tempdir");
    let model_path = model.path().join("synthetic.safetensors");
    save_synthetic_model(n_parameters, &model_path).expect("model");
    let coordinator = federation
        .start(job_with_model(&model_path, ids, rounds, 2, deadline_s))
        .await;
    let mut events = coordinator.monitor().subscribe();
    let mut clients: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(site, id)| {
            let mut options = federation.client(&coordinator, id);
            if site + 1 == ids.len() {
                options.filter = Some(filter.clone());
            }
            let task = Box::new(Synthetic::new(site as u64)) as Box<dyn Task>;
            (options, task)
        })
        .collect();
    let last = clients.split_off(ids.len() - 1);
    let first = tokio::spawn(run_many(clients));
    if late {
        loop {
            let change = events.recv().await.expect("the monitor's events");
            if let ApiEvent::RoundStarted { round: 1, .. } = change.event {
                break;
            }
        }
    }
    let last = tokio::spawn(run_many(last));
    let report = finish(coordinator).await.expect("report");
    first.abort();
    last.abort();
    assert!(report.succeeded, "{}", report.reason);
    let layout = cairn_coordinator::model::read_model(&model_path)
        .expect("layout")
        .0;
    let final_model =
        cairn_coordinator::model::load_safetensors(&report.model_path, &layout).expect("model");
    (report, final_model)
}

/// The bits of a model's values, to compare models exactly.
fn bits(model: &[f32]) -> Vec<u32> {
    model.iter().map(|v| v.to_bits()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_cut_midway_resume_where_they_broke_off_and_send_nothing_twice() {
    let cuts = Arc::new(CutMidTransfer {
        update: CutOnce::at(1, 2),
        model: CutOnce::at(2, 2),
        training: Mutex::new(None),
    });
    // Deadlines far beyond the test: the rounds can only complete by resuming.
    let (report, cut_model) = synthetic_run(&["alpha", "bravo"], 2, 300, cuts.clone(), false).await;
    for (what, cut) in [
        ("update of round 1", &cuts.update),
        ("model of round 2", &cuts.model),
    ] {
        let cut = cut.lock().expect("lock");
        assert!(cut.cut, "the {what} was not cut");
        // Every chunk went through once: the transfer resumed at the chunk it was cut at.
        assert_eq!(
            cut.passed,
            (0..5).collect::<Vec<u32>>(),
            "chunks of the {what}"
        );
    }
    for record in &report.rounds {
        assert_eq!(
            record.outcome.contributors,
            vec!["alpha", "bravo"],
            "round {}: {:?}",
            record.outcome.round,
            record.outcome.dropouts
        );
    }
    // Exactly the model of a run where nothing was cut: every value was counted once.
    let (_, uncut_model) =
        synthetic_run(&["alpha", "bravo"], 2, 300, Arc::new(PassAll), false).await;
    assert!(bits(&cut_model) == bits(&uncut_model), "the models differ");
}

/// Lets everything through.
#[derive(Debug)]
struct PassAll;

impl Filter for PassAll {}

/// Cuts the connection before chunk 2 of the site's first update, then loses everything it
/// sends, its next sessions' `Hello` included: it never comes back.
#[derive(Debug, Default)]
struct CutForGood {
    gone: std::sync::atomic::AtomicBool,
}

impl Filter for CutForGood {
    fn outbound(&self, message: &ParticipantMessage) -> Verdict {
        use std::sync::atomic::Ordering::SeqCst;
        if self.gone.load(SeqCst) {
            return Verdict::Drop;
        }
        match &message.body {
            Some(participant_message::Body::Chunk(chunk)) if chunk.index == 2 => {
                self.gone.store(true, SeqCst);
                Verdict::Cut
            }
            _ => Verdict::Pass,
        }
    }
}

/// Loses the site's update, header and chunks: it stays connected and sends none of it.
#[derive(Debug)]
struct WithholdUpdate;

impl Filter for WithholdUpdate {
    fn outbound(&self, message: &ParticipantMessage) -> Verdict {
        match &message.body {
            Some(participant_message::Body::Update(_) | participant_message::Body::Chunk(_)) => {
                Verdict::Drop
            }
            _ => Verdict::Pass,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_cut_off_halfway_for_good_leaves_the_model_as_if_it_had_never_been_sent() {
    const IDS: [&str; 3] = ["alpha", "bravo", "charlie"];
    // charlie joins as round 1 starts, is selected from round 2 on (round 3 if it connected
    // late), and contributes to no round in either run; the sites' steps depend only on the site and the round, so both runs must make
    // the same model.
    let (cut, cut_model) = synthetic_run(&IDS, 3, 2, Arc::new(CutForGood::default()), true).await;
    let (withheld, withheld_model) =
        synthetic_run(&IDS, 3, 2, Arc::new(WithholdUpdate), true).await;
    for (report, why) in [
        (&cut, "did not resume within the 2 s deadline"),
        (&withheld, "missed the 2 s deadline"),
    ] {
        let outcomes: Vec<_> = report.rounds.iter().map(|r| &r.outcome).collect();
        assert!(
            outcomes
                .iter()
                .all(|o| o.contributors == ["alpha", "bravo"]),
            "{outcomes:?}"
        );
        let dropped = outcomes
            .iter()
            .flat_map(|o| &o.dropouts)
            .any(|d| d.id == "charlie" && d.phase == Phase::Train && d.reason.contains(why));
        assert!(dropped, "charlie not dropped ({why}): {outcomes:?}");
    }
    // Two of charlie's five chunks were in the sum when it was cut off; taken back out, they
    // leave exactly the model of the run where it sent none.
    assert!(
        bits(&cut_model) == bits(&withheld_model),
        "the models differ"
    );
}
