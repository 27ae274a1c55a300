//! Revocation at the door: with a revocation list (`serve --crl`), a session whose client
//! certificate the federation CA revoked is refused before it starts, with `UNAUTHENTICATED`
//! and a message saying the certificate is revoked and how to get a new one. The check runs on
//! the verified peer certificate right after the handshake rather than in it (`grpc/tls`), where
//! the participant would only read a TLS alert without the remedy; the list itself was verified
//! against the CA when it was loaded.

use cairn_identity::RevocationList;
use std::sync::Arc;
use tonic::{Request, Status};

/// The interceptor in front of the federation service.
#[derive(Clone)]
pub(super) struct RevocationCheck {
    /// The federation CA's list; `None`: nothing is revoked.
    pub(super) list: Option<Arc<RevocationList>>,
    /// Where refused sessions are logged.
    pub(super) refusals: Arc<super::tls::Refusals>,
}

impl tonic::service::Interceptor for RevocationCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(list) = &self.list else {
            return Ok(request);
        };
        // A missing or unreadable certificate is the session's to refuse, with its own reason.
        let Some(leaf) = request
            .peer_certs()
            .and_then(|certs| certs.first().cloned())
        else {
            return Ok(request);
        };
        match list.check(&leaf) {
            Err(revoked @ cairn_identity::Error::Revoked { .. }) => {
                match request.remote_addr() {
                    Some(peer) => self.refusals.warn(peer, &revoked.to_string()),
                    None => tracing::warn!("refused a session: {revoked}"),
                }
                Err(Status::unauthenticated(format!(
                    "{revoked}; the federation's host must issue a new one (cairn-participant request, cairn-coordinator sign)"
                )))
            }
            _ => Ok(request),
        }
    }
}
