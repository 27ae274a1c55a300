//! Shared helpers of the end-to-end tests: a federation provisioned by the project's own `pki`
//! code in a temporary directory, a real coordinator on `127.0.0.1:0`, and real participants
//! training on the digits data committed under `examples/data/digits`.

pub mod kube_fake;
pub mod logs;
pub mod process;

use cairn_coordinator::api::{ApiOptions, ApiTokens};
use cairn_coordinator::config::JobSpec;
use cairn_coordinator::pki::{self, ParticipantSpec, ProvisionRequest};
use cairn_coordinator::round::Phase;
use cairn_coordinator::{Coordinator, JobReport, ServeOptions, ServerTls};
use cairn_participant::client::{ClientOptions, Kit};
use cairn_participant::client::{Filter, Verdict};
use cairn_participant::data::partition::Scheme;
use cairn_participant::data::{LocalData, Partition};
use cairn_participant::task::presets::Preset;
use cairn_participant::task::{Backend, Task};
use cairn_proto::v1::{
    CoordinatorMessage, ParticipantMessage, coordinator_message, participant_message::Body,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// The monitoring API's admin token in tests.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
/// The monitoring API's viewer token in tests.
pub const VIEWER_TOKEN: &str = "test-viewer-token-0123456789";

/// The digits dataset committed with the examples.
pub fn digits_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/data/digits")
}

/// Whether this is a CI run: the environment variable `CI` is set to something other than empty,
/// `false` or `0` (`.ci/run` sets it, as CI services do).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| !matches!(value.trim(), "" | "false" | "0"))
}

/// Says that a check cannot run because `what` is missing. In CI (see [`in_ci`]) that fails the
/// test, since CI installs every tool and a skipped check would pass unseen; elsewhere the
/// caller skips the check, and the note says how to get the tool.
pub fn missing(what: &str, how_to_get_it: &str) {
    assert!(
        !in_ci(),
        "{what} is missing ({how_to_get_it}); CI=true makes that a failure"
    );
    eprintln!("skipping a check: {what} is missing ({how_to_get_it})");
}

/// The test venv's Python (`$CAIRN_VENV`, by default `.venv` at the workspace root), if it can
/// import every one of `modules`; otherwise says so through [`missing`] (a failure in CI).
pub fn venv_python(modules: &[&str]) -> Option<PathBuf> {
    let venv = std::env::var("CAIRN_VENV")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv").into());
    let python = Path::new(&venv).join("bin/python");
    let imports = std::process::Command::new(&python)
        .args(["-c", &format!("import {}", modules.join(", "))])
        .status()
        .is_ok_and(|status| status.success());
    if imports {
        Some(python)
    } else {
        missing(
            &format!("a venv at {venv} with {}", modules.join(" and ")),
            "bash .ci/run makes it",
        );
        None
    }
}

/// What `python -c script args…` prints on stdout; panics with its stderr when it fails.
pub fn python_output(python: &Path, script: &str, args: &[&std::ffi::OsStr]) -> String {
    process::stdout_of(
        std::process::Command::new(python)
            .args(["-c", script])
            .args(args),
        "python",
    )
}

/// The workspace's root directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A provisioned federation in a temporary directory.
pub struct Federation {
    /// Holds every file; removed on drop.
    pub dir: tempfile::TempDir,
}

impl Federation {
    /// Provisions a CA, a server certificate for `localhost`/`127.0.0.1`, and kits for `ids`.
    pub fn provision(ids: &[&str]) -> Federation {
        let dir = tempfile::tempdir().expect("temporary directory");
        let request = ProvisionRequest {
            out_dir: dir.path().to_path_buf(),
            federation: "test".into(),
            server_names: vec!["localhost".into(), "127.0.0.1".into()],
            participants: ids
                .iter()
                .map(|id| ParticipantSpec::parse(id).expect("valid id"))
                .collect(),
            // The tests play every site, so the keys are made here.
            with_keys: true,
            validity_days: 2,
        };
        pki::provision(&request).expect("provisioning");
        Federation { dir }
    }

    /// Replaces `id`'s kit with one made by the certificate-request flow: a key generated "at the
    /// participant's site" and a request signed by the federation CA.
    pub fn reissue_by_request(&self, id: &str) {
        let kit = self.kit_dir(id);
        std::fs::remove_dir_all(&kit).expect("remove the provisioned kit");
        let (key, csr_pem) =
            cairn_identity::certificate_request(id, id).expect("certificate request");
        pki::sign_request(&pki::SignRequest {
            out_dir: self.dir.path().to_path_buf(),
            csr_pem,
            server_name: "localhost".into(),
            validity_days: 2,
            allowed: vec![id.to_string()],
            replace: false,
        })
        .expect("request signed");
        std::fs::write(kit.join("key.pem"), key).expect("key written");
    }

    /// The kit directory of `id`.
    pub fn kit_dir(&self, id: &str) -> PathBuf {
        self.dir.path().join("participants").join(id)
    }

    /// Starts a coordinator for `job` on an ephemeral loopback port.
    pub async fn start(&self, job: JobSpec) -> Coordinator {
        self.start_with_heartbeat(job, Duration::from_secs(2)).await
    }

    /// Starts a coordinator for `job` with the given heartbeat interval (a session silent for
    /// three intervals is dropped).
    pub async fn start_with_heartbeat(
        &self,
        job: JobSpec,
        heartbeat_interval: Duration,
    ) -> Coordinator {
        self.start_with_tls(job, heartbeat_interval, self.server_tls())
            .await
    }

    /// The coordinator's TLS material as `provision` wrote it.
    pub fn server_tls(&self) -> ServerTls {
        ServerTls::from_dir(&self.dir.path().join("coordinator")).expect("server TLS")
    }

    /// Revokes `id`'s certificate with the federation CA and returns the revocation list's path.
    pub fn revoke(&self, id: &str) -> PathBuf {
        let revocation = pki::Revocation::Participant(id.to_string());
        pki::revoke(self.dir.path(), &revocation, 2)
            .expect("certificate revoked")
            .crl
    }

    /// Starts a coordinator for `job` with the TLS material `tls` (say, with a revocation list).
    pub async fn start_with_tls(
        &self,
        job: JobSpec,
        heartbeat_interval: Duration,
        tls: ServerTls,
    ) -> Coordinator {
        let options = ServeOptions {
            job,
            tls,
            state_dir: self.dir.path().join("state"),
            listen: "127.0.0.1:0".parse().expect("address"),
            heartbeat_interval,
            keep_checkpoints: 3,
            api: Some(ApiOptions {
                listen: "127.0.0.1:0".parse().expect("address"),
                tokens: ApiTokens::parse(&format!("admin {ADMIN_TOKEN}\nviewer {VIEWER_TOKEN}"))
                    .expect("tokens"),
                // Long enough for a test to query the API after the job ended.
                linger: Duration::from_secs(300),
            }),
        };
        Coordinator::start(options)
            .await
            .expect("coordinator starts")
    }

    /// Client options for `id` against `coordinator`.
    pub fn client(&self, coordinator: &Coordinator, id: &str) -> ClientOptions {
        self.client_at(&url(coordinator), id)
    }

    /// Client options and a digits task for each of `ids` against `coordinator`, participant `i`
    /// training on partition `i` of `ids.len()`.
    pub fn clients(
        &self,
        coordinator: &Coordinator,
        ids: &[&str],
    ) -> Vec<(ClientOptions, Box<dyn Task>)> {
        ids.iter()
            .enumerate()
            .map(|(index, id)| (self.client(coordinator, id), digits_task(index, ids.len())))
            .collect()
    }

    /// Client options for `id` against the coordinator at `url`.
    pub fn client_at(&self, url: &str, id: &str) -> ClientOptions {
        let kit = Kit::load(&self.kit_dir(id)).expect("kit");
        let mut options = ClientOptions::new(url.to_string(), kit, id);
        options.server_name = Some("localhost".into());
        options.initial_backoff = Duration::from_millis(100);
        options.max_backoff = Duration::from_secs(1);
        options.max_attempts = Some(20);
        // These tests run jobs in the clear as well as secure ones; the policy's own tests
        // (`rogue.rs`) start from the default.
        options.policy.allow_plaintext = true;
        options
    }
}

/// `https://127.0.0.1:PORT` of a running coordinator.
pub fn url(coordinator: &Coordinator) -> String {
    format!("https://127.0.0.1:{}", coordinator.local_addr().port())
}

/// A digits job for `ids`.
pub fn digits_job(ids: &[&str], rounds: u64, min_participants: usize) -> JobSpec {
    digits_job_with_deadline(ids, rounds, min_participants, 60)
}

/// A digits job for `ids` whose phases last at most `phase_deadline_s`. Secure aggregation is on
/// when `min_participants` allows it (three or more), off otherwise.
pub fn digits_job_with_deadline(
    ids: &[&str],
    rounds: u64,
    min_participants: usize,
    phase_deadline_s: u64,
) -> JobSpec {
    job_with_model(
        &digits_model(),
        ids,
        rounds,
        min_participants,
        phase_deadline_s,
    )
}

/// A job training the initial model in `model` with `ids`, reporting loss and accuracy; secure
/// aggregation is on when `min_participants` allows it (three or more), off otherwise.
pub fn job_with_model(
    model: &Path,
    ids: &[&str],
    rounds: u64,
    min_participants: usize,
    phase_deadline_s: u64,
) -> JobSpec {
    let secure = min_participants >= 3;
    let yaml = format!(
        "name: test-job\nmodel: {{initial: {}}}\nrounds: {rounds}\nmin_participants: {min_participants}\n\
         local_epochs: 2\nbatch_size: 16\nlearning_rate: 0.1\nphase_deadline_s: {phase_deadline_s}\nseed: 1\n\
         participants: [{}]\nsecure_aggregation: {{enabled: {secure}}}\n",
        model.display(),
        ids.join(", ")
    );
    JobSpec::parse(&yaml).expect("valid job")
}

/// The quickstart's initial model: the MLP for 8x8 digits, as `init-model` writes it.
pub fn digits_model() -> PathBuf {
    workspace_root().join("examples/jobs/digits-mlp.safetensors")
}

/// The layout of [`digits_model`], as the coordinator reads it.
pub fn digits_layout() -> Vec<cairn_coordinator::model::TensorShape> {
    cairn_coordinator::model::read_model(&digits_model())
        .expect("the digits model")
        .0
}

/// A burn MLP task on partition `index` of `count` of the digits data.
pub fn digits_task(index: usize, count: usize) -> Box<dyn Task> {
    let data = LocalData::load_idx(&digits_dir()).expect("digits data");
    let partition = Partition {
        scheme: Scheme::Iid,
        index,
        count,
        seed: 5,
    };
    Preset::Mlp
        .site(data.partition(&partition).expect("partition"), Backend::Cpu)
        .expect("task")
}

/// Waits for the coordinator's job to end, failing the test instead of hanging if it does not end
/// within two minutes.
pub async fn finish(coordinator: Coordinator) -> Result<JobReport, String> {
    match tokio::time::timeout(Duration::from_secs(120), coordinator.wait()).await {
        Ok(report) => report.map_err(|e| e.to_string()),
        Err(_) => Err("the job did not finish within 120 s".into()),
    }
}

/// Cuts the connection the first time the participant is about to send a message of
/// secure-aggregation phase `phase` in round 2.
#[derive(Debug)]
pub struct CutIn {
    phase: Phase,
    times: AtomicU32,
    round: AtomicU64,
}

impl CutIn {
    /// A filter that cuts in `phase` of round 2.
    pub fn round_2(phase: Phase) -> Arc<CutIn> {
        Arc::new(CutIn {
            phase,
            times: AtomicU32::new(1),
            round: AtomicU64::new(0),
        })
    }
}

impl Filter for CutIn {
    fn inbound(&self, message: &CoordinatorMessage) -> Verdict {
        if let Some(coordinator_message::Body::Train(train)) = &message.body
            && let Some(model) = &train.model
        {
            self.round.store(model.round, Ordering::SeqCst);
        }
        Verdict::Pass
    }

    fn outbound(&self, message: &ParticipantMessage) -> Verdict {
        let phase = match message.body {
            Some(Body::Advertisement(_)) => Phase::AdvertiseKeys,
            Some(Body::GraphNonce(_)) => Phase::DrawGraph,
            Some(Body::Shares(_)) => Phase::ShareKeys,
            Some(Body::MaskedInput(_)) => Phase::CollectMasked,
            Some(Body::SurvivorSignature(_)) => Phase::ConsistencyCheck,
            Some(Body::Reveal(_)) => Phase::Unmask,
            _ => return Verdict::Pass,
        };
        let cut = phase == self.phase
            && self.round.load(Ordering::SeqCst) == 2
            && self
                .times
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| t.checked_sub(1))
                .is_ok();
        if cut { Verdict::Cut } else { Verdict::Pass }
    }
}
