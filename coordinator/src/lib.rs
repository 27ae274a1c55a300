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

/// Everything that can go wrong in the coordinator.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The job file is invalid; the message names the field, the value and what is allowed.
    #[error("job: {0}")]
    Job(String),
    /// A participant's update cannot be used.
    #[error("invalid update: {0}")]
    InvalidUpdate(String),
    /// Certificates could not be created.
    #[error("provision: {0}")]
    Provision(String),
    /// A certificate or key given to the server is unusable.
    #[error("TLS: {0}")]
    Tls(String),
    /// A certificate, key or signing request cannot be made or used.
    #[error(transparent)]
    Identity(#[from] cairn_identity::Error),
    /// A checkpoint cannot be written or read.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// The state directory cannot be used.
    #[error("state dir: {0}")]
    StateDir(String),
    /// The Kubernetes API or the operator's lease failed.
    #[error("Kubernetes: {0}")]
    Kubernetes(String),
    /// The gRPC server failed.
    #[error("server: {0}")]
    Server(String),
    /// A file system operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
}
