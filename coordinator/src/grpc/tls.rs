//! The federation port's TLS: mutual TLS 1.3 only (every party runs Cairn, so nothing needs
//! 1.2), with the handshakes made here rather than inside tonic, so that a refused one leaves a
//! trace. An operator whose partner "cannot connect" finds one warning per peer address and
//! minute naming the peer and what was wrong (no client certificate, one from another CA, not
//! TLS at all, an older TLS), and the count in `cairn_tls_handshakes_refused_total`.
//! Connections that complete are handed to tonic, which reads the client certificate from them
//! as from its own (`Request::peer_certs`).
//!
//! Sessions refused for their certificate (not a participant's, not in the job) are logged the
//! same way ([`Refusals`]).
//!
//! Hand-written because tonic's TLS server neither reports a refused handshake nor takes a
//! protocol version; rustls and tokio-rustls do the TLS itself.

use super::ServerTls;
use crate::Error;
use crate::api::Monitor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

/// How long a client has to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A peer address's refusals are logged at most once per this long; the others are counted.
const WARN_EVERY: Duration = Duration::from_secs(60);
/// Peer addresses remembered for that; past this, those not heard from in a minute are forgotten.
const REMEMBERED_PEERS: usize = 1024;

/// The server's TLS configuration: TLS 1.3 only, the client's certificate required and chained
/// to the federation CA, HTTP/2.
pub(super) fn server_config(tls: &ServerTls) -> Result<Arc<ServerConfig>, Error> {
    let unusable = |what: &str, reason: String| Error::ServerTlsConfig {
        what: what.to_string(),
        reason,
    };
    let mut roots = RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(tls.ca_pem.as_bytes()) {
        let certificate = certificate.map_err(|e| unusable("ca.pem", e.to_string()))?;
        roots
            .add(certificate)
            .map_err(|e| unusable("ca.pem", e.to_string()))?;
    }
    let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
        .build()
        .map_err(|e| unusable("ca.pem", e.to_string()))?;
    let chain = CertificateDer::pem_slice_iter(tls.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unusable("cert.pem", e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(tls.key_pem.as_bytes())
        .map_err(|e| unusable("key.pem", e.to_string()))?;
    let mut config = ServerConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| unusable("cert.pem and key.pem", e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The connections that completed a handshake on `listener`, for tonic to serve; refused ones
/// are logged and counted in `monitor`'s metrics.
pub(super) fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    monitor: Arc<Monitor>,
) -> ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (accepted, incoming) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(config);
    let refusals = Arc::new(Refusals::new("connection"));
    tokio::spawn(async move {
        loop {
            // When the server stops it drops its end: the listener goes with this task, so the
            // port is free for the next job at once.
            let accepted_or_closed = tokio::select! {
                accepted = listener.accept() => accepted,
                () = accepted.closed() => return,
            };
            let (tcp, peer) = match accepted_or_closed {
                Ok(connection) => connection,
                // Out of file descriptors, say: the next accept may work; a pause spares the log.
                Err(error) => {
                    tracing::warn!("accepting a connection failed: {error}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, accepted) = (acceptor.clone(), accepted.clone());
            let (refusals, monitor) = (refusals.clone(), monitor.clone());
            tokio::spawn(async move {
                let reason = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
                    .await
                {
                    Ok(Ok(tls)) => {
                        let _ = accepted.send(Ok(tls)).await;
                        return;
                    }
                    Ok(Err(error)) => describe(&error),
                    Err(_) => format!("no TLS handshake within {} s", HANDSHAKE_TIMEOUT.as_secs()),
                };
                monitor.metrics.tls_refused.inc();
                refusals.warn(peer, &reason);
            });
        }
    });
    ReceiverStream::new(incoming)
}

/// What was wrong with a refused handshake, in an operator's words with rustls' beside them.
fn describe(error: &std::io::Error) -> String {
    let detail = error.to_string();
    let what = match error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::NoCertificatesPresented) => {
            "the client presented no certificate (Cairn requires mutual TLS)"
        }
        Some(rustls::Error::InvalidCertificate(_)) => {
            "the client's certificate does not chain to the federation CA, or is not valid now"
        }
        Some(rustls::Error::InvalidMessage(_)) => "the client does not speak TLS (plaintext?)",
        Some(rustls::Error::PeerIncompatible(_)) => {
            "the client does not offer TLS 1.3 with a cipher suite and key exchange this server takes"
        }
        _ => "TLS handshake failed",
    };
    format!("{what}: {detail}")
}

/// When each peer address's refusals were last logged, and how many were not since: the
/// warnings of one kind of refusal (a TLS connection, a gRPC session).
#[derive(Debug)]
pub(super) struct Refusals {
    /// What is refused, for the log line: "connection", "session".
    what: &'static str,
    peers: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl Refusals {
    pub(super) fn new(what: &'static str) -> Refusals {
        Refusals {
            what,
            peers: Mutex::default(),
        }
    }

    /// Logs the refusal of `peer`, unless its address was logged less than [`WARN_EVERY`] ago;
    /// then it is counted and its number given with the next line.
    pub(super) fn warn(&self, peer: SocketAddr, reason: &str) {
        let now = Instant::now();
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if peers.len() >= REMEMBERED_PEERS {
            peers.retain(|_, (logged, _)| now.duration_since(*logged) < WARN_EVERY);
            // More addresses refused within a minute than are remembered (a scan, a flood):
            // the others are only counted in the metric, so that the log and this map stay
            // bounded.
            if peers.len() >= REMEMBERED_PEERS && !peers.contains_key(&peer.ip()) {
                return;
            }
        }
        match peers.get_mut(&peer.ip()) {
            Some((logged, quiet)) if now.duration_since(*logged) < WARN_EVERY => *quiet += 1,
            entry => {
                let earlier = entry.map_or(0, |(_, quiet)| *quiet);
                let more = match earlier {
                    0 => String::new(),
                    n => format!(" ({n} more from this address since the last warning)"),
                };
                tracing::warn!(%peer, "refused a {} from {peer}: {reason}{more}", self.what);
                peers.insert(peer.ip(), (now, 0));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_refused_again_within_the_minute_is_counted_not_logged() {
        let refusals = Refusals::new("connection");
        let peer: SocketAddr = "192.0.2.7:50000".parse().expect("address");
        let other: SocketAddr = "192.0.2.8:50000".parse().expect("address");
        for _ in 0..3 {
            refusals.warn(peer, "no certificate");
        }
        refusals.warn(other, "no certificate");
        let peers = refusals.peers.lock().expect("lock");
        assert_eq!(peers[&peer.ip()].1, 2, "two refusals after the logged one");
        assert_eq!(
            peers[&other.ip()].1,
            0,
            "another address is logged on its own"
        );
    }

    #[test]
    fn a_flood_from_many_addresses_keeps_the_memory_of_them_bounded() {
        let refusals = Refusals::new("connection");
        for n in 0..(REMEMBERED_PEERS as u32 + 100) {
            let peer = SocketAddr::from((std::net::Ipv4Addr::from(0x0a00_0000 + n), 50000));
            refusals.warn(peer, "no certificate");
        }
        assert_eq!(refusals.peers.lock().expect("lock").len(), REMEMBERED_PEERS);
    }
}
