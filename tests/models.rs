//! Models a user brings. A network defined only in this file trains through a local federation
//! (real coordinator, mutual TLS, secure aggregation) and its accuracy rises; a participant whose
//! model has other tensors than the job's is refused before it trains, with the tensors named;
//! `init-model` writes the same file in two processes, and the quickstart's committed model is
//! that file; the final model reads in Python's `safetensors` with PyTorch's names and scores
//! there exactly what it scores in Cairn.

use cairn_participant::burn::{self, module::Module, nn, tensor::Device, tensor::Tensor};
use cairn_participant::data::{LocalData, Partition, partition::Scheme};
use cairn_participant::simulation::{JobReport, JobSpec, LocalFederation};
use cairn_participant::task::presets::Preset;
use cairn_participant::task::{JobTask, Metric, Task};
use cairn_participant::{Backend, Error, Model, Site, load_model, save_model};
use cairn_tests::{Federation, digits_dir, digits_job, digits_model, job_with_model};
use std::path::Path;
use std::process::Command;

/// Multinomial logistic regression on the 8x8 digits: a model no part of Cairn knows.
#[derive(Module, Debug)]
struct Softmax {
    linear: nn::Linear,
}

impl Softmax {
    fn new(device: &Device) -> Softmax {
        Softmax {
            linear: nn::LinearConfig::new(64, 10).init(device),
        }
    }
}

impl Model for Softmax {
    fn forward(&self, features: Tensor<2>) -> Tensor<2> {
        self.linear.forward(features)
    }
}

fn share(index: usize, count: usize) -> LocalData {
    let data = LocalData::load_idx(&digits_dir()).expect("digits data");
    let partition = Partition {
        scheme: Scheme::Iid,
        index,
        count,
        seed: 3,
    };
    data.partition(&partition).expect("partition")
}

/// Cairn's accuracy of the model in `path` on the whole digits test set.
fn cairn_accuracy(path: &Path) -> f64 {
    let device = Backend::Cpu.device().expect("device");
    let model = load_model(Softmax::new(&device), path).expect("model loads");
    let mut site = Site::new(model, LocalData::load_idx(&digits_dir()).expect("digits"));
    site.prepare(&JobTask {
        metrics: vec![Metric::Accuracy],
        standardize: Vec::new(),
    })
    .expect("prepared");
    site.evaluate().expect("evaluated").finish()[0]
        .1
        .expect("accuracy")
}

/// Runs `job` to its end with `sites` in `run_dir`, requiring success; the report and each
/// round's federated accuracy.
async fn federate(
    job: JobSpec,
    run_dir: &Path,
    sites: Vec<Box<dyn Task>>,
) -> (JobReport, Vec<f64>) {
    let report = LocalFederation::new(job, run_dir)
        .run(sites)
        .await
        .expect("the federation runs");
    assert!(report.succeeded, "{}", report.reason);
    let accuracies = report
        .rounds
        .iter()
        .map(|r| r.outcome.eval_metrics["accuracy"])
        .collect();
    (report, accuracies)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_defined_here_trains_through_a_secure_federation() {
    let run = tempfile::tempdir().expect("temporary directory");
    let device = Backend::Cpu.device().expect("device");
    let initial = run.path().join("init.safetensors");
    // A seeded initial model, so that the accuracy reached does not depend on the draw.
    device.seed(7);
    save_model(&Softmax::new(&device), &initial).expect("initial model");
    let ids = ["north", "south", "west"];
    let job = job_with_model(&initial, &ids, 4, 3, 60);
    assert!(job.secure_aggregation.enabled);
    let sites: Vec<Box<dyn Task>> = (0..ids.len())
        .map(|index| Box::new(Site::new(Softmax::new(&device), share(index, ids.len()))) as _)
        .collect();
    let (report, accuracies) = federate(job, run.path(), sites).await;
    assert_eq!(accuracies.len(), 4);
    assert!(accuracies[3] > accuracies[0], "{accuracies:?}");
    // Logistic regression reaches about 0.95 on the digits; 0.85 leaves room for the few rounds.
    assert!(accuracies[3] > 0.85, "{accuracies:?}");
    for record in &report.rounds {
        assert_eq!(record.outcome.contributors, ids);
    }

    // The final model, read by Python's safetensors: PyTorch's names and layouts, and the same
    // accuracy on the test set as Cairn's.
    let Some(python) = cairn_tests::venv_python(&["safetensors", "numpy"]) else {
        return;
    };
    let script = r#"
import gzip, sys
import numpy as np
from safetensors.numpy import load_file
model = load_file(sys.argv[1])
assert sorted(model) == ["linear.bias", "linear.weight"], sorted(model)
assert model["linear.weight"].shape == (10, 64), model["linear.weight"].shape
def idx(path, offset):
    with gzip.open(path) as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=offset)
images = idx(sys.argv[2] + "/t10k-images-idx3-ubyte.gz", 16).reshape(-1, 64) / np.float32(255)
labels = idx(sys.argv[2] + "/t10k-labels-idx1-ubyte.gz", 8)
logits = images.astype(np.float32) @ model["linear.weight"].T + model["linear.bias"]
print((logits.argmax(axis=1) == labels).mean())
"#;
    let numpy: f64 = cairn_tests::python_output(
        &python,
        script,
        &[report.model_path.as_os_str(), digits_dir().as_os_str()],
    )
    .trim()
    .parse()
    .expect("an accuracy");
    let ours = cairn_accuracy(&report.model_path);
    assert!((numpy - ours).abs() < 1e-9, "numpy {numpy}, Cairn {ours}");
    assert!(ours > 0.85, "{ours}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cnn_preset_trains_through_a_federation() {
    let run = tempfile::tempdir().expect("temporary directory");
    let initial = run.path().join("init-cnn.safetensors");
    Preset::Cnn
        .save_initial([1, 8, 8], 10, 7, &initial)
        .expect("initial model");
    let ids = ["east", "west"];
    let job = job_with_model(&initial, &ids, 3, 2, 120);
    let sites: Vec<Box<dyn Task>> = (0..ids.len())
        .map(|index| {
            Preset::Cnn
                .site(share(index, ids.len()), Backend::Cpu)
                .expect("task")
        })
        .collect();
    let (_, accuracies) = federate(job, run.path(), sites).await;
    assert_eq!(accuracies.len(), 3);
    assert!(accuracies[2] > accuracies[0], "{accuracies:?}");
    // Chance is 0.1; 0.5 is far above it and leaves room for three short rounds.
    assert!(accuracies[2] > 0.5, "{accuracies:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_with_other_tensors_is_refused_before_training() {
    let ids = ["alpha", "bravo"];
    let federation = Federation::provision(&ids);
    // One participant is enough to start the round: the refusal comes from the participant.
    let coordinator = federation.start(digits_job(&ids, 1, 1)).await;
    let device = Backend::Cpu.device().expect("device");
    let mut options = federation.client(&coordinator, "alpha");
    options.max_attempts = Some(2);
    let site = Site::new(Softmax::new(&device), share(0, 2));
    let error = cairn_participant::client::run(options, Box::new(site))
        .await
        .expect_err("refused");
    let Error::Layout(diff) = &error else {
        panic!("not a layout error: {error}");
    };
    let message = error.to_string();
    assert!(
        message.contains("linear.weight [10, 64] is missing from the job's model"),
        "{message}"
    );
    assert!(
        message
            .contains("fc1.weight [200, 64] is in the job's model but not in this participant's"),
        "{message}"
    );
    assert_eq!(diff.extra.len(), 6, "{message}");
    assert!(diff.reshaped.is_empty());
    coordinator.stopper().stop("the test is over");
}

#[test]
fn init_model_is_the_same_file_in_two_processes_and_the_quickstart_uses_it() {
    let binary = cairn_tests::process::binary("cairn-participant", "cairn-participant");
    let dir = tempfile::tempdir().expect("temporary directory");
    let values = |path: &Path| -> Vec<(String, Vec<usize>, Vec<u8>)> {
        let bytes = std::fs::read(path).expect("model file");
        let file = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
        let mut tensors: Vec<_> = file
            .tensors()
            .into_iter()
            .map(|(name, view)| (name, view.shape().to_vec(), view.data().to_vec()))
            .collect();
        tensors.sort();
        tensors
    };
    let mut written = Vec::new();
    for name in ["a", "b"] {
        let out = dir.path().join(name);
        let status = Command::new(&binary)
            .args([
                "init-model",
                "--model",
                "mlp",
                "--dataset",
                "digits",
                "--seed",
                "42",
            ])
            .arg("--out")
            .arg(&out)
            .status()
            .expect("init-model runs");
        assert!(status.success());
        written.push(values(&out));
    }
    assert!(written[0] == written[1], "one seed gave two models");
    assert!(
        written[0] == values(&digits_model()),
        "examples/jobs/digits-mlp.safetensors is not what init-model writes; regenerate it"
    );
    let names: Vec<&str> = written[0].iter().map(|(name, ..)| name.as_str()).collect();
    assert_eq!(
        names,
        [
            "fc1.bias",
            "fc1.weight",
            "fc2.bias",
            "fc2.weight",
            "fc3.bias",
            "fc3.weight"
        ]
    );
    assert_eq!(written[0][1].1, vec![200, 64]);
}
