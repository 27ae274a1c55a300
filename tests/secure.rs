//! Secure aggregation end to end over loopback mTLS: four participants, one of them cut off in
//! each phase of SecAgg+ (the coordinator sees its session end, as if it were killed). The round
//! completes, and the change it makes to the model equals, within the quantisation bound, the
//! change a plaintext run of the participants whose updates are in the sum makes. The
//! participants' updates are fixed functions of their index, so that both runs see exactly the
//! same updates. Faults are injected in round 2, when every participant has long connected.

use cairn_coordinator::config::JobSpec;
use cairn_coordinator::model::load_safetensors;
use cairn_coordinator::round::Phase;
use cairn_coordinator::store::RoundRecord;
use cairn_participant::Error;
use cairn_participant::client::{Filter, run_many};
use cairn_participant::task::{
    EpochProgress, JobTask, Metric, Task, TensorShape, Totals, TrainingConfig, TrainingOutcome,
};
use cairn_tests::{CutIn, Federation, finish};
use std::sync::Arc;

const IDS: [&str; 4] = ["alpha", "bravo", "charlie", "delta"];

/// Adds a fixed delta to the model: participant `i` moves value `j` by
/// `(i + 1) / 1000 * ((j mod 97) - 48) / 48`, with `100 (i + 1)` examples and loss `(i + 1) / 2`.
struct FixedUpdate {
    index: usize,
    metrics: Vec<Metric>,
    parameters: Vec<f32>,
}

impl FixedUpdate {
    fn boxed(index: usize) -> Box<dyn Task> {
        Box::new(FixedUpdate {
            index,
            metrics: Vec::new(),
            parameters: Vec::new(),
        })
    }
}

impl Task for FixedUpdate {
    fn prepare(&mut self, job: &JobTask) -> Result<(), Error> {
        self.metrics = job.metrics.clone();
        Ok(())
    }
    fn check_layout(&self, _layout: &[TensorShape]) -> Result<(), Error> {
        Ok(())
    }
    fn parameters(&self, _layout: &[TensorShape]) -> Result<Vec<f32>, Error> {
        Ok(self.parameters.clone())
    }
    fn set_parameters(&mut self, _layout: &[TensorShape], values: &[f32]) -> Result<(), Error> {
        self.parameters = values.to_vec();
        Ok(())
    }
    fn train(
        &mut self,
        _config: &TrainingConfig,
        _progress: &mut dyn FnMut(EpochProgress),
    ) -> Result<TrainingOutcome, Error> {
        let scale = (self.index + 1) as f32 / 1000.0;
        for (j, value) in self.parameters.iter_mut().enumerate() {
            *value += scale * ((j % 97) as f32 - 48.0) / 48.0;
        }
        Ok(TrainingOutcome {
            n_examples: 100 * (self.index as u64 + 1),
            mean_loss: (self.index + 1) as f64 / 2.0,
        })
    }
    fn evaluate(&self) -> Result<Totals, Error> {
        // Ten examples with loss 1 each, half of them right.
        let mut totals = Totals::new(&self.metrics);
        totals.n_examples = 10;
        for (metric, sums) in &mut totals.metrics {
            sums[0] = if *metric == Metric::Accuracy {
                5.0
            } else {
                10.0
            };
        }
        Ok(totals)
    }
}

fn job(ids: &[&str], secure: bool) -> JobSpec {
    JobSpec::parse(&format!(
        "name: secure-test\nmodel: {{initial: {}}}\nrounds: 2\nmin_participants: 3\n\
         phase_deadline_s: 30\nseed: 9\nparticipants: [{}]\nsecure_aggregation: {{enabled: {secure}}}\n",
        cairn_tests::digits_model().display(),
        ids.join(", ")
    ))
    .expect("job")
}

/// Runs a two-round job among `ids`, with `filters` in some participants' transports; returns
/// round 2's record and the change it made to the model.
async fn run(
    ids: &[&str],
    secure: bool,
    filters: &[(&str, Arc<dyn Filter>)],
) -> (RoundRecord, Vec<f32>) {
    let federation = Federation::provision(ids);
    let job = job(ids, secure);
    let coordinator = federation.start(job.clone()).await;
    let clients = ids
        .iter()
        .map(|id| {
            let mut options = federation.client(&coordinator, id);
            options.filter = filters
                .iter()
                .find(|(filtered, _)| filtered == id)
                .map(|(_, filter)| filter.clone());
            if options.filter.is_some() {
                // It may come back after the job ended; do not wait long for it to give up.
                options.max_attempts = Some(3);
            }
            let index = IDS.iter().position(|known| known == id).expect("known id");
            (options, FixedUpdate::boxed(index))
        })
        .collect();
    let (results, report) = tokio::join!(run_many(clients), finish(coordinator));
    // A participant cut off near the end of the job may miss the job's end and give up
    // reconnecting; the others must finish.
    for (id, result) in ids.iter().zip(results) {
        if filters.iter().all(|(filtered, _)| filtered != id) {
            result.expect("participant finishes");
        }
    }
    let report = report.expect("report");
    assert!(report.succeeded, "{}", report.reason);
    let layout = cairn_tests::digits_layout();
    let checkpoints = federation.dir.path().join("state/checkpoints");
    let model = |round: u32| {
        load_safetensors(
            &checkpoints.join(format!("round-{round:06}.safetensors")),
            &layout,
        )
        .expect("checkpoint")
    };
    let change = model(2).iter().zip(model(1)).map(|(b, a)| b - a).collect();
    let record = report.rounds.into_iter().nth(1).expect("two rounds");
    (record, change)
}

/// Largest element-wise difference.
fn max_difference(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_cut_off_in_any_phase_leaves_the_sum_of_the_others() {
    let phases = [
        Phase::AdvertiseKeys,
        Phase::ShareKeys,
        Phase::CollectMasked,
        Phase::ConsistencyCheck,
        Phase::Unmask,
    ];
    let survivors = ["alpha", "bravo", "charlie"];
    let (_, plaintext_without_delta) = run(&survivors, false, &[]).await;
    let (plaintext_record, plaintext_all) = run(&IDS, false, &[]).await;
    assert_eq!(plaintext_record.outcome.train_examples, 1000);
    let (secure_record, secure_all) = run(&IDS, true, &[]).await;
    assert_eq!(secure_record.outcome.contributors, IDS);
    assert_eq!(
        secure_record.outcome.train_examples, 1000,
        "weights are summed exactly"
    );
    assert!((secure_record.outcome.train_loss - plaintext_record.outcome.train_loss).abs() < 1e-4);
    let gap = max_difference(&secure_all, &plaintext_all);
    assert!(gap < 1e-5, "secure and plaintext models differ by {gap}");

    for phase in phases {
        let cut: Arc<dyn Filter> = CutIn::round_2(phase);
        let (record, model) = run(&IDS, true, &[("delta", cut)]).await;
        let outcome = &record.outcome;
        let dropout = outcome
            .dropouts
            .iter()
            .find(|d| d.id == "delta")
            .unwrap_or_else(|| panic!("delta not recorded as dropped in {phase:?}: {outcome:?}"));
        assert_eq!(dropout.phase, phase, "{outcome:?}");
        // Until its masked input is in the sum, a dropped participant's update is not: its masks
        // are removed with its reconstructed key. After that, its update stays in.
        let (contributors, expected): (&[&str], &[f32]) =
            if matches!(phase, Phase::ConsistencyCheck | Phase::Unmask) {
                (&IDS, &plaintext_all)
            } else {
                (&survivors, &plaintext_without_delta)
            };
        assert_eq!(outcome.contributors, contributors, "{phase:?}");
        let gap = max_difference(&model, expected);
        assert!(
            gap < 1e-5,
            "{phase:?}: model differs from the plaintext run by {gap}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_few_survivors_fail_the_attempt_and_the_retry_uses_fresh_keys() {
    // Two of four cut before sending their masked inputs: two survivors, fewer than the job's
    // three. The attempt fails, the model is unchanged, and the second attempt (new keys, new
    // session) completes with everyone.
    let bravo: Arc<dyn Filter> = CutIn::round_2(Phase::CollectMasked);
    let charlie: Arc<dyn Filter> = CutIn::round_2(Phase::CollectMasked);
    let (record, model) = run(&IDS, true, &[("bravo", bravo), ("charlie", charlie)]).await;
    assert_eq!(record.outcome.attempt, 2, "{:?}", record.outcome);
    // The retry starts once three are connected again; the cut ones rejoin within moments.
    let contributors: Vec<&str> = record
        .outcome
        .contributors
        .iter()
        .map(String::as_str)
        .collect();
    assert!(contributors.len() >= 3, "{contributors:?}");
    let (_, plaintext) = run(&contributors, false, &[]).await;
    let gap = max_difference(&model, &plaintext);
    assert!(gap < 1e-5, "model differs from the plaintext run by {gap}");
}
