//! Revocation at the door: with a revocation list (`serve --crl`), a session whose client
//! certificate the federation CA revoked is refused before it starts, with `UNAUTHENTICATED`
//! and a message saying the certificate is revoked. tonic's TLS configuration takes no
//! revocation list, so the check runs on the verified peer certificate right after the
//! handshake; the list itself was verified against the CA when it was loaded.

use cairn_identity::RevocationList;
use std::sync::Arc;
use tonic::{Request, Status};

/// The interceptor in front of the federation service.
#[derive(Clone)]
pub(super) struct RevocationCheck {
    /// The federation CA's list; `None`: nothing is revoked.
    pub(super) list: Option<Arc<RevocationList>>,
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
                    Some(peer) => tracing::warn!(%peer, "refused a session from {peer}: {revoked}"),
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
