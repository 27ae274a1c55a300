//! `cairn-participant`: one organisation's side of a Cairn federation. It loads the
//! organisation's private data ([`data`]), trains the global model on it with burn ([`task`]),
//! and talks to the coordinator over mutual-TLS gRPC ([`client`]), sending back only its update,
//! masked by secure aggregation unless the job turns it off.
//! The participant only dials out: a partner site opens no inbound port.

#![cfg_attr(test, allow(clippy::unwrap_used))] // Tests fail loudly by design.

pub mod client;
pub mod data;
pub mod task;

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
    /// The partitioning flags cannot be satisfied.
    #[error("partition: {0}")]
    Partition(String),
    /// The model cannot be built, loaded or trained.
    #[error("model: {0}")]
    Model(String),
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
    /// The coordinator refused this participant for good (wrong identity, wrong protocol, bad
    /// update); retrying would not help.
    #[error("the coordinator refused this participant: {0}")]
    Refused(String),
    /// The coordinator sent something this participant cannot accept.
    #[error("protocol: {0}")]
    Protocol(String),
    /// A file system operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
}
