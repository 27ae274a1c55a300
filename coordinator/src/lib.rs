//! `cairn-coordinator`: the hosting organisation's side of a Cairn federation. It provisions the
//! federation's identities ([`pki`]), reads the job ([`config`]), runs rounds through a pure state
//! machine ([`round`]) driven by the gRPC layer ([`grpc`]), obtains the sum of the updates by
//! secure aggregation (`cairn_secagg`), turns it into the next global model ([`strategy`]), and
//! makes every completed round durable ([`store`]).

#![cfg_attr(test, allow(clippy::unwrap_used))] // Tests fail loudly by design.

pub mod api;
pub mod config;
pub mod grpc;
pub mod model;
#[cfg(feature = "kubernetes")]
pub mod operator;
pub mod pki;
pub mod round;
pub mod store;
pub mod strategy;

pub use grpc::{Coordinator, JobReport, ServeOptions, ServerTls, Stopper};

use std::path::PathBuf;

/// Binds a TCP listener on `address` for `what` ("the API", ...), returning it with the
/// address it got (the port, when `address` asks for any).
pub(crate) async fn bind(
    address: std::net::SocketAddr,
    what: &str,
) -> Result<(tokio::net::TcpListener, std::net::SocketAddr), Error> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| Error::Io {
            what: format!("binding {what} to {address}"),
            source,
        })?;
    let bound = listener.local_addr().map_err(|source| Error::Io {
        what: format!("reading the address {what} is bound to"),
        source,
    })?;
    Ok((listener, bound))
}

/// How to convert a job of the old form (`model: mlp`, `dataset: digits`).
fn legacy_job_message(model: Option<&str>, dataset: Option<&str>) -> String {
    let dataset_value = dataset.unwrap_or("DATASET");
    let how = |network: &str| {
        format!(
            "a job now names its initial model file: run `cairn-participant init-model --model {network} \
             --dataset {dataset_value} --out init.safetensors` and write `model: {{initial: init.safetensors}}`"
        )
    };
    let placeholder = match dataset {
        Some(_) => "",
        None => " (DATASET: the data the network was built for, digits or mnist)",
    };
    let remove_dataset = match dataset {
        Some(dataset) => format!(
            "; remove `dataset: {dataset}` (the model file fixes the input, each participant names its data)"
        ),
        None => String::new(),
    };
    match model {
        Some(network) => format!(
            "model: {network:?} names a built-in network; {}{placeholder}{remove_dataset}",
            how(network)
        ),
        None => format!(
            "field `dataset` is gone{remove_dataset}; if the job's model is still a built-in network, {}",
            how("MODEL")
        ),
    }
}

/// Everything that can go wrong in the coordinator. Each variant is one thing that happened,
/// with the thing, the value and what was expected as fields, and the underlying error (when
/// there is one) as its source, so that `std::error::Error::source` walks the whole chain.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The job text is not a job: not YAML, an unknown field, a value of the wrong type.
    #[error("job: {source}")]
    JobSyntax {
        /// The YAML decoder's error, naming the field or line.
        source: serde_saphyr::Error,
    },
    /// A job in the old form, which named a built-in network (`model: mlp`) and a dataset.
    #[error("job: {}", legacy_job_message(model.as_deref(), dataset.as_deref()))]
    LegacyJob {
        /// The `model:` string, when the job has one.
        model: Option<String>,
        /// The `dataset:` value, when the job has one.
        dataset: Option<String>,
    },
    /// A job field holds a value it does not allow.
    #[error("job: field `{field}` is {value}; {expected}")]
    JobField {
        /// The field, dotted for nested ones (`secure_aggregation.threshold`).
        field: &'static str,
        /// Its value, as the job file would write it.
        value: String,
        /// What the field allows.
        expected: String,
    },
    /// The job's secure-aggregation encoding cannot sum updates of all its participants.
    #[error("job: field `secure_aggregation` is set for {n_participants} participants; {source}")]
    JobEncoding {
        /// Participants the job lists.
        n_participants: usize,
        /// Why the encoding cannot hold their sum.
        source: cairn_secagg::Error,
    },
    /// A job file is invalid.
    #[error("{}: {source}", path.display())]
    JobFile {
        /// The job file.
        path: PathBuf,
        /// What is wrong with it ([`Error::JobSyntax`], [`Error::JobField`], ...).
        source: Box<Error>,
    },
    /// An update (or a sum of updates) has another number of values than the model.
    #[error("invalid update: {what} has {values} values, job expects {expected}")]
    UpdateLength {
        /// What was checked ("model update", "sum").
        what: &'static str,
        /// Values it has.
        values: usize,
        /// Values the job's model has.
        expected: usize,
    },
    /// A piece of a plaintext update does not start where the previous one ended.
    #[error("invalid update: a piece starts at value {offset}, expected {expected}")]
    UpdatePieceOrder {
        /// Where the piece starts.
        offset: usize,
        /// Where it must start.
        expected: usize,
    },
    /// A resumed update is not the one that started, or does not go on where the sum stopped.
    #[error(
        "invalid resumed update: {} it resumes at chunk {first_chunk}, expected chunk {expected}",
        if *same_update { "the same update as started, but" } else { "another update (payload hash, weight or loss) than the one that started;" }
    )]
    UpdateResume {
        /// The chunk it resumes at.
        first_chunk: u32,
        /// The first chunk the sum does not hold.
        expected: u32,
        /// Whether its payload hash, weight and loss are those of the update that started.
        same_update: bool,
    },
    /// The pieces of an arriving update could not be set aside on disk (or read back), so it
    /// could not be taken back out if it broke off.
    #[error("update pieces could not be kept on disk: {0}")]
    Spill(#[source] std::io::Error),
    /// The round's sum of plaintext updates is no longer exact; the attempt fails.
    #[error("the round's sum is unusable: {0}")]
    BrokenSum(String),
    /// A plaintext update carries a weighted value too large to be a trained delta.
    #[error(
        "invalid update: weighted value {value} at position {position} is outside +-2^50, more than any update of capped examples gives"
    )]
    UpdateValue {
        /// Index of the value in the model's vector.
        position: usize,
        /// The value.
        value: f32,
    },
    /// An update (or a sum of updates) was computed on no training example.
    #[error("invalid update: {what} has weight 0; expected at least 1 example")]
    ZeroWeight {
        /// What was checked ("model update", "sum of updates").
        what: &'static str,
    },
    /// The weights of a round's updates add up past what a `u64` holds.
    #[error("invalid update: the round's weights overflow when adding {weight}")]
    WeightOverflow {
        /// The weight that did not fit.
        weight: u64,
    },
    /// The next global model holds a value that is not finite: the round is not committed.
    #[error(
        "the new global model holds a non-finite value at position {position}; the round is not committed"
    )]
    NonFiniteModel {
        /// Index of the first non-finite value.
        position: usize,
    },
    /// A server optimiser's moment overflowed.
    #[error(
        "the server optimiser's state holds a non-finite value at position {position}; the round is not committed"
    )]
    NonFiniteOptimizerState {
        /// Index of the first non-finite value.
        position: usize,
    },
    /// An update's weighted training loss is negative or not finite.
    #[error("invalid update: weighted training loss is {value}; expected a finite number >= 0")]
    TrainLoss {
        /// The loss.
        value: f64,
    },
    /// The securely aggregated sum holds a NaN or an infinity.
    #[error(
        "invalid update: securely aggregated sum holds a non-finite value at position {position}"
    )]
    NonFiniteSum {
        /// Index of the first non-finite value.
        position: usize,
    },
    /// A participant given to `provision` has no organisation.
    #[error("provision: participant {id:?} has an empty organisation")]
    EmptyOrganisation {
        /// The participant.
        id: String,
    },
    /// Certificates were asked for with a validity of 0 days.
    #[error("provision: validity of {days} days; expected at least 1")]
    Validity {
        /// The validity asked for.
        days: u32,
    },
    /// A participant's kit already holds a certificate, which signing would replace.
    #[error(
        "sign: {} already holds a certificate for {id}; pass --replace to issue a new one (the old one keeps working until `revoke` revokes it)",
        dir.display()
    )]
    KitExists {
        /// The kit directory.
        dir: PathBuf,
        /// The participant.
        id: String,
    },
    /// `sign` was given no participant it may sign for.
    #[error(
        "sign: no participant is allowed; name the ids to sign for with --participant ID (repeatable) or --job FILE (the job's participants)"
    )]
    NothingAllowed,
    /// A signing request names a participant that `sign` was not allowed to sign for.
    #[error("sign: the request is for participant {id:?}; allowed: {}", allowed.join(", "))]
    NotAllowed {
        /// The id in the request.
        id: String,
        /// The ids `sign` was allowed to sign for.
        allowed: Vec<String>,
    },
    /// `revoke` was asked for a participant that has no kit with a certificate.
    #[error(
        "revoke: {} holds no certificate of participant {id:?}; expected a kit from `provision` or `sign` (or pass --cert FILE)",
        path.display()
    )]
    NoCertificate {
        /// The certificate file looked for.
        path: PathBuf,
        /// The participant.
        id: String,
    },
    /// `revoke --renew` found no list to sign again.
    #[error(
        "revoke --renew: there is no revocation list at {} to sign again; expected one made by revoking a certificate (--participant ID or --cert FILE)",
        path.display()
    )]
    NoRevocationList {
        /// Where the list was looked for.
        path: PathBuf,
    },
    /// A revocation list file is malformed or not the federation CA's.
    #[error("revocation list {}: {source}", path.display())]
    RevocationList {
        /// The file.
        path: PathBuf,
        /// What is wrong with it, and what was expected.
        source: cairn_identity::Error,
    },
    /// A participant's Helm values cannot be written as YAML.
    #[error("provision: writing the Helm values of {id}: {source}")]
    HelmValues {
        /// The participant.
        id: String,
        /// The YAML encoder's error.
        source: serde_saphyr::SerializeError,
    },
    /// A file of the server's TLS directory holds no PEM block of the kind it should.
    #[error("TLS: {} holds no PEM block with {marker:?}", path.display())]
    NoPemBlock {
        /// The file.
        path: PathBuf,
        /// The PEM header line expected in it.
        marker: &'static str,
    },
    /// The server's certificate, key or CA is refused by the TLS layer.
    #[error("TLS: the coordinator's {what} is unusable: {reason}")]
    ServerTlsConfig {
        /// Which file (`cert.pem`, `key.pem`, `ca.pem`).
        what: String,
        /// What the TLS layer said.
        reason: String,
    },
    /// A certificate, key or signing request cannot be made or used.
    #[error(transparent)]
    Identity(#[from] cairn_identity::Error),
    /// A model cannot be encoded as safetensors.
    #[error("model: encoding {what} as safetensors: {source}")]
    ModelEncoding {
        /// What was being encoded ("tensor fc1.weight", "the model").
        what: String,
        /// The safetensors error.
        source: safetensors::SafeTensorError,
    },
    /// A layout is not in the canonical order (tensors sorted by name, each name once).
    #[error(
        "model: tensor {second:?} comes after {first:?}; a layout lists its tensors sorted by name, each once"
    )]
    LayoutOrder {
        /// The earlier tensor's name.
        first: String,
        /// The later tensor's name, which sorts before it or equals it.
        second: String,
    },
    /// A model file holds no tensor.
    #[error("model file {}: holds no tensors; expected the model's F32 tensors", path.display())]
    EmptyModel {
        /// The file.
        path: PathBuf,
    },
    /// A tensor of a model file is not F32.
    #[error(
        "model file {}: tensor {tensor} is {dtype:?}; only F32 is supported (convert the model to float32)",
        path.display()
    )]
    TensorDtype {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// Its element type in the file.
        dtype: safetensors::Dtype,
    },
    /// A model file is not in the safetensors format.
    #[error("model file {}: not a safetensors file: {source}", path.display())]
    NotSafetensors {
        /// The file.
        path: PathBuf,
        /// The safetensors error.
        source: safetensors::SafeTensorError,
    },
    /// A model file holds another number of tensors than the model.
    #[error("model file {}: holds {found} tensors, the model has {expected}", path.display())]
    TensorCount {
        /// The file.
        path: PathBuf,
        /// Tensors in the file.
        found: usize,
        /// Tensors in the model.
        expected: usize,
    },
    /// A model file lacks one of the model's tensors.
    #[error("model file {}: has no tensor {tensor:?}", path.display())]
    MissingTensor {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
    },
    /// A tensor of a model file has another type or shape than the model's.
    #[error(
        "model file {}: tensor {tensor} is {dtype:?} {shape:?}, expected F32 {expected:?}",
        path.display()
    )]
    TensorShape {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// Its element type in the file.
        dtype: safetensors::Dtype,
        /// Its shape in the file.
        shape: Vec<usize>,
        /// Its shape in the model.
        expected: Vec<usize>,
    },
    /// The state directory was asked to keep no checkpoint, so no round could be resumed.
    #[error(
        "state dir: {value} checkpoints to keep; expected at least 1 (--keep-checkpoints), or no round could be resumed"
    )]
    KeepCheckpoints {
        /// Checkpoints asked for.
        value: usize,
    },
    /// A state directory holds round records but no `state.json`.
    #[error(
        "state dir: {}: holds round records but no state.json; it was not written by this coordinator",
        dir.display()
    )]
    StateWithoutHeader {
        /// The state directory.
        dir: PathBuf,
    },
    /// Something to be written to the state directory cannot be encoded as JSON.
    #[error("state dir: {}: encoding {what}: {source}", dir.display())]
    StateEncoding {
        /// The state directory.
        dir: PathBuf,
        /// What was being encoded ("state.json", "the record of round 3").
        what: String,
        /// The JSON encoder's error.
        source: serde_json::Error,
    },
    /// A file of the state directory is not valid JSON of what it should hold.
    #[error("state dir: {}: {file} is corrupt ({source})", dir.display())]
    StateCorrupt {
        /// The state directory.
        dir: PathBuf,
        /// The file, and the line where it has lines ("state.json", "rounds.jsonl line 2").
        file: String,
        /// The JSON decoder's error.
        source: serde_json::Error,
    },
    /// A state directory was written in another state schema version.
    #[error(
        "state dir: {}: written with state schema version {}, this coordinator reads version {expected}",
        dir.display(),
        found.map_or("(none)".to_string(), |v| v.to_string())
    )]
    StateSchema {
        /// The state directory.
        dir: PathBuf,
        /// The version in its `state.json`, if it has one.
        found: Option<u64>,
        /// The version this coordinator reads.
        expected: u32,
    },
    /// A state directory belongs to another job.
    #[error(
        "state dir: {}: belongs to job {found:?}, not {expected:?}; use another --state-dir for a different job",
        dir.display()
    )]
    StateOfOtherJob {
        /// The state directory.
        dir: PathBuf,
        /// The job it belongs to.
        found: String,
        /// The job being started.
        expected: String,
    },
    /// A state directory belongs to this job's name with another definition.
    #[error(
        "state dir: {}: belongs to job {job:?} with a different definition; a job cannot change while it runs \
         (state.json holds the definition it started with)",
        dir.display()
    )]
    JobChanged {
        /// The state directory.
        dir: PathBuf,
        /// The job's name.
        job: String,
    },
    /// `rounds.jsonl` ends with a complete record but no newline: a crash cannot do that.
    #[error(
        "state dir: {}: rounds.jsonl ends without a newline; it was edited by hand",
        dir.display()
    )]
    RoundsEdited {
        /// The state directory.
        dir: PathBuf,
    },
    /// The audit of a state directory found a broken link.
    #[error("audit of {}: {link}", dir.display())]
    AuditFailed {
        /// The state directory.
        dir: PathBuf,
        /// The first link that does not hold, and what that means.
        link: String,
    },
    /// A line of `rounds.jsonl` holds another round than its position says.
    #[error(
        "state dir: {}: rounds.jsonl line {line} holds round {round}, expected round {expected}",
        dir.display()
    )]
    RoundOutOfOrder {
        /// The state directory.
        dir: PathBuf,
        /// The line (from 1).
        line: usize,
        /// The round it holds.
        round: u64,
        /// The round it should hold.
        expected: u64,
    },
    /// The checkpoint of a committed round cannot be read.
    #[error(
        "state dir: {}: checkpoint of committed round {round} ({}) cannot be read: {source}",
        dir.display(),
        path.display()
    )]
    CheckpointUnreadable {
        /// The state directory.
        dir: PathBuf,
        /// The round.
        round: u64,
        /// The checkpoint file.
        path: PathBuf,
        /// The file system's error.
        source: std::io::Error,
    },
    /// The checkpoint of a committed round has another layout than the job's model file.
    #[error(
        "state dir: {}: checkpoint of committed round {round} does not have the layout of the job's model file {} \
         (the file changed since the job started; restore it or use another --state-dir): {source}",
        dir.display(),
        model.display()
    )]
    CheckpointLayout {
        /// The state directory.
        dir: PathBuf,
        /// The round.
        round: u64,
        /// The job's initial model file.
        model: PathBuf,
        /// How the checkpoint differs ([`Error::TensorShape`], ...).
        source: Box<Error>,
    },
    /// The checkpoint of a committed round does not have the hash its record holds.
    #[error(
        "state dir: {}: checkpoint of committed round {round} ({}) is corrupt: sha256 {found}, the round record says {expected}",
        dir.display(),
        path.display()
    )]
    CheckpointCorrupt {
        /// The state directory.
        dir: PathBuf,
        /// The round.
        round: u64,
        /// The checkpoint file.
        path: PathBuf,
        /// The checkpoint's SHA-256 (hex).
        found: String,
        /// The SHA-256 in the round's record (hex).
        expected: String,
    },
    /// No Kubernetes API client could be made (in-cluster or from the kubeconfig).
    #[cfg(feature = "kubernetes")]
    #[error("Kubernetes: connecting to the Kubernetes API (in-cluster or kubeconfig): {source}")]
    KubeConnect {
        /// kube's error.
        source: kube::Error,
    },
    /// The operator's lease duration is too short to renew it in time.
    #[error("Kubernetes: lease duration is {seconds} s; expected at least 2 s")]
    LeaseDuration {
        /// The lease duration asked for.
        seconds: u64,
    },
    /// The operator's lease manager cannot be set up.
    #[cfg(feature = "kubernetes")]
    #[error("Kubernetes: lease {lease}: {source}")]
    Lease {
        /// The Lease's name.
        lease: String,
        /// The lease manager's error.
        source: kube_lease_manager::LeaseManagerError,
    },
    /// The lease manager stopped renewing the operator's lease.
    #[error("Kubernetes: lease {lease} is no longer renewed")]
    LeaseLost {
        /// The Lease's name.
        lease: String,
    },
    /// The operator's FederatedJob watch or its lease task ended, which they never should.
    #[error("Kubernetes: the FederatedJob watch or the lease task for {lease} ended")]
    WatchEnded {
        /// The Lease's name.
        lease: String,
    },
    /// The heartbeat interval is zero.
    #[error("server: heartbeat interval is 0; expected at least 1 second")]
    ZeroHeartbeat,
    /// The round driver's task panicked or was cancelled.
    #[error("server: round driver stopped: {source}")]
    DriverStopped {
        /// The task's error.
        source: tokio::task::JoinError,
    },
    /// The round driver's event channel closed while the job was still running.
    #[error("server: event channel closed before the job finished")]
    EventsClosed,
    /// A line of an API token file has another number of fields than a role and a token.
    #[error("line {line}: expected `<role> <token>`, found {fields} fields")]
    TokenFields {
        /// The line (from 1).
        line: usize,
        /// Fields on it.
        fields: usize,
    },
    /// A line of an API token file names an unknown role.
    #[error("line {line}: role {role:?}; expected \"admin\" or \"viewer\"")]
    TokenRole {
        /// The line (from 1).
        line: usize,
        /// The role it names.
        role: String,
    },
    /// A token of an API token file is short enough to be guessed.
    #[error("line {line}: token has {length} characters; expected at least {minimum}")]
    TokenTooShort {
        /// The line (from 1).
        line: usize,
        /// Characters in the token.
        length: usize,
        /// The fewest characters a token may have.
        minimum: usize,
    },
    /// An API token file holds no token.
    #[error("no tokens; expected at least one `<role> <token>` line")]
    NoTokens,
    /// An API token file is invalid.
    #[error("API token file {}: {source}", path.display())]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it ([`Error::TokenRole`], ...).
        source: Box<Error>,
    },
    /// The monitoring API could not be reached or answered what the client cannot use; the
    /// message names the URL.
    #[cfg(feature = "api-client")]
    #[error("API client: {0}")]
    ApiClient(#[from] api::client::ApiClientError),
    /// A file system or socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

#[cfg(test)]
mod tests {
    /// The coordinator knows tensors, not networks: neither burn nor the participant crate (which
    /// links it) may enter its dependency tree, whatever feature is on.
    #[test]
    fn the_coordinator_depends_on_neither_burn_nor_the_participant() {
        let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let output = std::process::Command::new(env!("CARGO"))
            .current_dir(&workspace)
            .args([
                "tree",
                "-p",
                "cairn-coordinator",
                "--all-features",
                "-e",
                "normal",
                "--prefix",
                "none",
                "--offline",
            ])
            .output()
            .unwrap();
        let tree = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "cargo tree failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            tree.lines().any(|l| l.starts_with("cairn-proto")),
            "the tree should list the coordinator's dependencies: {tree}"
        );
        let banned: Vec<&str> = tree
            .lines()
            .filter(|l| l.starts_with("burn") || l.starts_with("cairn-participant"))
            .collect();
        assert!(banned.is_empty(), "the coordinator depends on {banned:?}");
    }
}
