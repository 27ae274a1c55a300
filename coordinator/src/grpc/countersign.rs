//! The countersigned round log on the wire: every session that announces where its
//! participant's signing stands (`SignedThrough`) is sent each committed record after that
//! one, in order, and each record committed while it lasts; each `Countersignature` that
//! comes back is checked against the record and the session's certificate, then kept in
//! `signatures.jsonl` (see [`crate::store::signatures`]). What a participant checks before it
//! signs is its own business (`cairn-participant`'s `history`): the coordinator cannot make it
//! sign a history that forks from the one it signed.

use super::Shared;
use crate::store::signatures::{Countersignature, Countersignatures};
use cairn_proto::v1::coordinator_message::Body as Outbound;
use cairn_proto::v1::{ChainHead, CoordinatorMessage, RoundRecord};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, watch};
use tonic::Status;

/// A committed record as sessions send it.
#[derive(Debug, Clone)]
struct Entry {
    /// Its line in `rounds.jsonl`, without the newline.
    line: Arc<str>,
    /// SHA-256 of the line.
    sha256: [u8; 32],
}

impl Entry {
    fn new(line: String) -> Entry {
        let mut sha256 = [0; 32];
        sha256
            .copy_from_slice(ring::digest::digest(&ring::digest::SHA256, line.as_bytes()).as_ref());
        Entry {
            line: line.into(),
            sha256,
        }
    }
}

/// The committed records, the countersignatures kept, and which sessions countersign.
#[derive(Debug)]
pub(super) struct Ledger {
    /// Record `r` at index `r - 1`; every change wakes the sessions' senders.
    chain: watch::Sender<Vec<Entry>>,
    /// What participants signed.
    pub(super) signatures: Arc<Countersignatures>,
    /// Participants whose live session countersigns, with that session's serial.
    signing: Mutex<HashMap<String, u64>>,
}

impl Ledger {
    /// The ledger of a job whose state directory holds `lines` and `signatures`.
    pub(super) fn new(lines: Vec<String>, signatures: Arc<Countersignatures>) -> Ledger {
        Ledger {
            chain: watch::Sender::new(lines.into_iter().map(Entry::new).collect()),
            signatures,
            signing: Mutex::default(),
        }
    }

    /// The head of the chain, as `Welcome` tells it.
    pub(super) fn head(&self) -> ChainHead {
        let chain = self.chain.borrow();
        ChainHead {
            rounds: chain.len() as u64,
            record_sha256: chain.last().map(|e| e.sha256.to_vec()).unwrap_or_default(),
        }
    }

    /// A round was committed with the record `line`: every countersigning session sends it.
    pub(super) fn committed(&self, line: String) {
        self.chain.send_modify(|chain| chain.push(Entry::new(line)));
    }

    /// The participants whose live session countersigns, in name order.
    pub(super) fn signing(&self) -> Vec<String> {
        let signing = self.signing.lock().unwrap_or_else(|p| p.into_inner());
        let mut ids: Vec<String> = signing.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// The session `serial` of `id` ended.
    pub(super) fn session_ended(&self, id: &str, serial: u64) {
        let mut signing = self.signing.lock().unwrap_or_else(|p| p.into_inner());
        if signing.get(id) == Some(&serial) {
            signing.remove(id);
        }
    }
}

/// Starts sending the records after round `signed_through` to session `serial` of `id`, now and
/// as rounds are committed; the task ends with the session's outbox. A countersignature of
/// those rounds that never arrived (lost with a broken connection, or with the file it was
/// kept in) is asked for again: the records are sent from the first round that lacks `id`'s,
/// which the participant signs again once they lead to the last one it signed.
pub(super) fn start(
    shared: &Arc<Shared>,
    id: &str,
    serial: u64,
    signed_through: u64,
    outbox: mpsc::Sender<Result<CoordinatorMessage, Status>>,
) -> tokio::task::JoinHandle<()> {
    let ledger = &shared.ledger;
    ledger
        .signing
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id.to_string(), serial);
    let mut chain = ledger.chain.subscribe();
    let through = signed_through.min(chain.borrow().len() as u64);
    let mut next = match ledger.signatures.first_unsigned(id, through) {
        Some(round) => round,
        None => signed_through.saturating_add(1),
    };
    let shared = shared.clone();
    tokio::spawn(async move {
        loop {
            // Copied out, so that no lock is held while the outbox waits.
            let due: Vec<Entry> = chain
                .borrow_and_update()
                .iter()
                .skip(usize::try_from(next - 1).unwrap_or(usize::MAX))
                .cloned()
                .collect();
            for entry in due {
                let message = CoordinatorMessage {
                    body: Some(Outbound::Record(RoundRecord {
                        round: next,
                        record: entry.line.as_bytes().to_vec(),
                    })),
                };
                let size = prost::Message::encoded_len(&message) as u64;
                if outbox.send(Ok(message)).await.is_err() {
                    return;
                }
                shared.monitor.metrics.bytes_sent.inc_by(size);
                next += 1;
            }
            if chain.changed().await.is_err() {
                return;
            }
        }
    })
}

/// Checks `id`'s countersignature against the record it names and `certificate` (the session's,
/// DER), and keeps it; a reason to end the session otherwise.
pub(super) fn accept(
    shared: &Shared,
    id: &str,
    certificate: &[u8],
    signature: cairn_proto::v1::Countersignature,
) -> Result<(), String> {
    let round = signature.round;
    let record = {
        let chain = shared.ledger.chain.borrow();
        let found = round
            .checked_sub(1)
            .and_then(|i| chain.get(i as usize))
            .map(|e| e.sha256);
        found.ok_or_else(|| {
            format!(
                "countersignature of round {round}, which is not committed (rounds 1..={})",
                chain.len()
            )
        })?
    };
    if signature.record_sha256 != record {
        return Err(format!(
            "countersignature of round {round} names a record other than the one this coordinator sent"
        ));
    }
    let message = cairn_identity::countersigned_message(&shared.job.name, round, &record);
    if !cairn_identity::verify_signature(certificate, &message, &signature.signature) {
        return Err(format!(
            "countersignature of round {round} does not verify with this session's certificate"
        ));
    }
    let kept = Countersignature::new(
        round,
        id,
        &hex::encode(record),
        certificate,
        &signature.signature,
    );
    match shared.ledger.signatures.add(kept) {
        Ok(true) => {
            tracing::debug!(participant = %id, round, "{id} countersigned round {round}");
            shared.monitor.countersigned(round, id);
        }
        Ok(false) => {}
        // The participant did its part; the operator learns that the disk did not.
        Err(e) => {
            tracing::error!(participant = %id, round, "keeping {id}'s countersignature of round {round}: {e}")
        }
    }
    Ok(())
}
