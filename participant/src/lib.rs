//! `cairn-participant`: one organisation's side of a Cairn federation, as a library and as the
//! `cairn-participant` binary. It loads the organisation's private data ([`data`]), trains the
//! global model on it with burn ([`task`]), and talks to the coordinator over mutual-TLS gRPC
//! ([`client`]), sending back only its update, masked by secure aggregation: a round in the
//! clear, or one that breaks another rule of the site's [`Policy`], is refused. The participant
//! only dials out: a partner site opens no inbound port.
//!
//! # Train your own model
//!
//! A site brings a burn module that implements [`Model`], its data as [`data::Examples`] (from
//! [`data::read_csv`], [`data::read_image_folder`], [`data::read_idx`] or its own code), and
//! joins with the kit the federation's host gave it. The job's initial model is the module's
//! parameters, written once with [`save_model`]; the coordinator only ever sees those tensors.
//!
//! ```no_run
//! use cairn_participant::burn::{self, module::Module, nn, tensor::Tensor};
//! use cairn_participant::data::{LocalData, TableOptions, read_csv};
//! use cairn_participant::{Backend, Model, Site};
//!
//! #[derive(Module, Debug)]
//! struct Net {
//!     hidden: nn::Linear,
//!     output: nn::Linear,
//! }
//!
//! impl Model for Net {
//!     fn forward(&self, features: Tensor<2>) -> Tensor<2> {
//!         self.output.forward(burn::tensor::activation::relu(self.hidden.forward(features)))
//!     }
//! }
//!
//! # async fn run() -> Result<(), cairn_participant::Error> {
//! let table = read_csv("patients.csv".as_ref(), &TableOptions::classification("diagnosis"))?;
//! let (train, test) = table.split(0.2, 7);
//! let device = Backend::Cpu.device()?;
//! let net = Net {
//!     hidden: nn::LinearConfig::new(train.example_size(), 16).init(&device),
//!     output: nn::LinearConfig::new(16, 2).init(&device),
//! };
//! let site = Site::new(net, LocalData { train, test });
//! let summary = cairn_participant::join("kit".as_ref(), "https://fl.example.org:7443", site).await?;
//! println!("trained in {} rounds", summary.rounds_trained);
//! # Ok(())
//! # }
//! ```
//!
//! [`Training`] replaces parts of the default loop (a regularizer, a learning-rate schedule, or
//! the whole round); with the `simulation` feature, [`simulation::LocalFederation`] runs a
//! coordinator and several sites in one process to try a model before deploying it.

#![cfg_attr(test, allow(clippy::unwrap_used))] // Tests fail loudly by design.

pub mod client;
pub mod data;
pub mod policy;
#[cfg(feature = "simulation")]
pub mod simulation;
pub mod task;

/// The README's programs compile as doctests, so "Train your own model" stays a working
/// program.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

/// The burn this crate is built with: a user's model must be built with the same.
pub use ::burn;
pub use client::{ClientOptions, Kit, RunSummary};
pub use policy::{Partners, Policy};
pub use task::{
    Backend, Batch, BatchTargets, DefaultTraining, JobTask, Metric, Model, Site, Task, Training,
    TrainingConfig, default_loss, load_model, save_model,
};

/// Joins a federation as one site: connects to `coordinator` (`https://host:port`) with the kit
/// in `kit_dir` (cert.pem, key.pem, ca.pem), trains `task` in every round it is selected for and
/// evaluates each new global model, until the coordinator says the job is over. Reconnects after
/// network trouble; gives up only when refused for good. It takes part under
/// [`Policy::default`]; [`client::run`] with [`ClientOptions::policy`] sets another.
pub async fn join(
    kit_dir: &std::path::Path,
    coordinator: &str,
    task: impl Task + 'static,
) -> Result<RunSummary, Error> {
    let kit = Kit::load(kit_dir)?;
    let label = kit_dir.file_name().map_or("participant".into(), |name| {
        name.to_string_lossy().into_owned()
    });
    client::run(
        ClientOptions::new(coordinator.to_string(), kit, label),
        Box::new(task),
    )
    .await
}

use std::path::PathBuf;

/// Everything that can go wrong in a participant.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A data file is missing, truncated or not what it claims to be.
    #[error("data file {}: {reason}", path.display())]
    Data {
        /// The offending file or directory.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A cell of a data table is missing or unusable.
    #[error("{}, line {line}, column {column:?}: {reason}", path.display())]
    Cell {
        /// The table's file.
        path: PathBuf,
        /// 1-based line of the file (the header is line 1).
        line: u64,
        /// The column's name.
        column: String,
        /// What is wrong with the cell.
        reason: String,
    },
    /// The partitioning flags cannot be satisfied.
    #[error("partition: {0}")]
    Partition(String),
    /// The model cannot be built, loaded or trained.
    #[error("model: {0}")]
    Model(String),
    /// The job's model does not have this participant's tensors; nothing was trained.
    #[error("the job's model does not match this participant's: {0}")]
    Layout(task::LayoutDiff),
    /// The requested compute backend is not available.
    #[error("backend: {0}")]
    Backend(String),
    /// The participant's kit (certificate, key, CA) is missing or unusable.
    #[error("kit {}: {reason}", path.display())]
    Kit {
        /// The kit directory or file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A revocation list file is malformed or not signed by the kit's federation CA.
    #[error("revocation list {}: {source}", path.display())]
    RevocationList {
        /// The file.
        path: PathBuf,
        /// What is wrong with it, and what was expected.
        source: cairn_identity::Error,
    },
    /// A certificate or key used to sign or check secure-aggregation messages is unusable, or
    /// a neighbour's certificate is not what the federation CA issued for it.
    #[error("{subject} {reason}")]
    Identity {
        /// What was checked ("key.pem", "CA certificate", "certificate of participant 3").
        subject: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `--backend` names no backend.
    #[error("backend {name:?} is unknown; expected cpu, tch, wgpu or cuda")]
    UnknownBackend {
        /// The name given.
        name: String,
    },
    /// `--partition` names no partitioning scheme.
    #[error(
        "partition scheme {scheme:?} is unknown; expected iid, dirichlet:ALPHA, shards:K or none"
    )]
    UnknownPartitionScheme {
        /// The scheme given.
        scheme: String,
    },
    /// `--partition dirichlet:ALPHA` with an ALPHA that is not a positive number.
    #[error("Dirichlet concentration {alpha:?} must be a positive number, as in dirichlet:0.5")]
    DirichletConcentration {
        /// The ALPHA given.
        alpha: String,
    },
    /// `--partition shards:K` with a K that is not a whole number in 1..=1000.
    #[error("shards per participant {k:?} must be a whole number from 1 to 1000, as in shards:2")]
    ShardsPerParticipant {
        /// The K given.
        k: String,
    },
    /// The coordinator's URL cannot be parsed.
    #[error("coordinator URL {url:?} is invalid")]
    CoordinatorUrl {
        /// The URL given.
        url: String,
        /// Why it is refused.
        #[source]
        source: tonic::transport::Error,
    },
    /// The kit cannot be made into a TLS configuration.
    #[error("TLS configuration for {coordinator} is unusable")]
    Tls {
        /// The coordinator's URL.
        coordinator: String,
        /// Why it is refused.
        #[source]
        source: tonic::transport::Error,
    },
    /// The coordinator cannot be reached, or its certificate is not the federation's.
    #[error("cannot connect to {coordinator}")]
    Unreachable {
        /// The coordinator's URL.
        coordinator: String,
        /// The transport's error (its causes name the TLS or network failure).
        #[source]
        source: tonic::transport::Error,
    },
    /// The coordinator refused this participant for good (wrong identity, wrong protocol, bad
    /// update); retrying would not help.
    #[error("the coordinator refused this participant: {0}")]
    Refused(String),
    /// The coordinator sent something this participant cannot accept.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The coordinator shows a history of the job that forks from the one this site
    /// countersigned: this participant does not go on with it.
    #[error(
        "job {job:?}: the coordinator's round log forks from the one this site countersigned (kept in {}): {reason}; this site takes no further part in the job (if the job was started again from the beginning on purpose, run it under a new name, or remove its entry from that file)",
        file.display()
    )]
    HistoryForked {
        /// The job.
        job: String,
        /// The site's history file.
        file: PathBuf,
        /// Where the histories part.
        reason: String,
    },
    /// The site's history file (what it countersigned) cannot be read or written.
    #[error("history file {}: {reason}", path.display())]
    HistoryFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A local federation (the `simulation` feature) could not be set up or run.
    #[error("local federation: {0}")]
    Simulation(String),
    /// A file system operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}
