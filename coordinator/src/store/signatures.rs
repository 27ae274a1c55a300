//! `signatures.jsonl`: the participants' countersignatures of the round records, one line per
//! participant and round, appended and fsynced as they arrive. The coordinator checks each
//! signature against the session's certificate before it keeps it; the file holds the
//! certificate with it, so that [`super::audit`] checks them again with public material only.

use crate::Error;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// The file in the state directory.
pub const SIGNATURES_FILE: &str = "signatures.jsonl";

/// One participant's countersignature of one round's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Countersignature {
    /// The round whose record was signed.
    pub round: u64,
    /// Who signed (the certificate's participant id).
    pub participant: String,
    /// SHA-256 (hex) of the record's line in `rounds.jsonl`.
    pub record_sha256: String,
    /// When the coordinator received it, in seconds since the Unix epoch: the moment at which
    /// the certificate is checked to have been valid.
    pub received_at_unix_s: u64,
    /// The participant's certificate (DER, base64), which the signature verifies with.
    pub certificate: String,
    /// ECDSA P-256 signature (ASN.1, base64) over
    /// `cairn_identity::countersigned_message(job, round, record_sha256)`.
    pub signature: String,
}

impl Countersignature {
    /// The certificate's and the signature's bytes; `None` when either is not base64.
    pub fn decoded(&self) -> Option<(Vec<u8>, Vec<u8>)> {
        Some((
            STANDARD.decode(&self.certificate).ok()?,
            STANDARD.decode(&self.signature).ok()?,
        ))
    }

    /// A countersignature with `certificate` and `signature` as bytes.
    pub fn new(
        round: u64,
        participant: &str,
        record_sha256: &str,
        certificate: &[u8],
        signature: &[u8],
    ) -> Countersignature {
        Countersignature {
            round,
            participant: participant.to_string(),
            record_sha256: record_sha256.to_string(),
            received_at_unix_s: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            certificate: STANDARD.encode(certificate),
            signature: STANDARD.encode(signature),
        }
    }
}

/// The countersignatures of one job, on disk and in memory, by round and participant.
#[derive(Debug)]
pub struct Countersignatures {
    path: PathBuf,
    by_round: Mutex<BTreeMap<u64, BTreeMap<String, Countersignature>>>,
    /// Signalled on every signature kept, for [`Countersignatures::wait_for`].
    added: Condvar,
}

impl Countersignatures {
    /// Opens `signatures.jsonl` in the state directory `dir` (none yet: empty). A last line cut
    /// short by a crash is a signature that was not kept: it is removed.
    pub fn open(dir: &Path) -> Result<Countersignatures, Error> {
        let path = dir.join(SIGNATURES_FILE);
        let mut by_round: BTreeMap<u64, BTreeMap<String, Countersignature>> = BTreeMap::new();
        for signature in read(dir, true)? {
            by_round
                .entry(signature.round)
                .or_default()
                .insert(signature.participant.clone(), signature);
        }
        Ok(Countersignatures {
            path,
            by_round: Mutex::new(by_round),
            added: Condvar::new(),
        })
    }

    /// None, and nowhere to keep any: for tests of what shows them.
    #[cfg(test)]
    pub fn none() -> std::sync::Arc<Countersignatures> {
        std::sync::Arc::new(Countersignatures {
            path: PathBuf::new(),
            by_round: Mutex::default(),
            added: Condvar::new(),
        })
    }

    /// Keeps `signature` (checked by the caller) unless its participant already signed that
    /// round; whether it was new.
    pub fn add(&self, signature: Countersignature) -> Result<bool, Error> {
        let mut by_round = self.by_round.lock().unwrap_or_else(|p| p.into_inner());
        let signers = by_round.entry(signature.round).or_default();
        if signers.contains_key(&signature.participant) {
            return Ok(false);
        }
        let mut line = serde_json::to_vec(&signature).map_err(|source| Error::StateEncoding {
            dir: self.path.clone(),
            what: format!("the countersignature of round {}", signature.round),
            source,
        })?;
        line.push(b'\n');
        super::append_line(&self.path, &line)?;
        signers.insert(signature.participant.clone(), signature);
        self.added.notify_all();
        Ok(true)
    }

    /// Who countersigned `round`, in name order.
    pub fn signers(&self, round: u64) -> Vec<String> {
        let by_round = self.by_round.lock().unwrap_or_else(|p| p.into_inner());
        by_round
            .get(&round)
            .map(|s| s.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The first of rounds `1..=through` that `participant` has no countersignature of here.
    pub fn first_unsigned(&self, participant: &str, through: u64) -> Option<u64> {
        let by_round = self.by_round.lock().unwrap_or_else(|p| p.into_inner());
        (1..=through).find(|round| {
            !by_round
                .get(round)
                .is_some_and(|signers| signers.contains_key(participant))
        })
    }

    /// The countersignatures of `round`, in signer order.
    pub fn of_round(&self, round: u64) -> Vec<Countersignature> {
        let by_round = self.by_round.lock().unwrap_or_else(|p| p.into_inner());
        by_round
            .get(&round)
            .map(|s| s.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Waits until each of `who` has countersigned `round`, at most `timeout`; those that have
    /// not by then.
    pub fn wait_for(&self, round: u64, who: &[String], timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut by_round = self.by_round.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let missing: Vec<String> = who
                .iter()
                .filter(|id| !by_round.get(&round).is_some_and(|s| s.contains_key(*id)))
                .cloned()
                .collect();
            let left = deadline.saturating_duration_since(Instant::now());
            if missing.is_empty() || left.is_zero() {
                return missing;
            }
            by_round = self
                .added
                .wait_timeout(by_round, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// Every countersignature in the state directory `dir`, in file order. `repair`: a torn last
/// line is removed (the coordinator, before it appends); otherwise it is an error (the audit,
/// which changes nothing).
pub fn read(dir: &Path, repair: bool) -> Result<Vec<Countersignature>, Error> {
    let path = dir.join(SIGNATURES_FILE);
    let (mut text, torn) = super::read_appended(&path)?;
    if !torn.is_empty() {
        match repair {
            true => super::remove_torn_line(&path, text.len(), "a countersignature")?,
            false => text.push_str(&String::from_utf8_lossy(&torn)),
        }
    }
    text.lines()
        .enumerate()
        .map(|(index, line)| {
            serde_json::from_str(line).map_err(|source| Error::StateCorrupt {
                dir: dir.to_path_buf(),
                file: format!("{SIGNATURES_FILE} line {}", index + 1),
                source,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn signature(round: u64, participant: &str) -> Countersignature {
        Countersignature::new(round, participant, "ab", b"cert", b"sig")
    }

    #[test]
    fn signatures_are_kept_once_per_participant_and_round_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let kept = Countersignatures::open(dir.path()).unwrap();
        assert!(kept.add(signature(1, "bravo")).unwrap());
        assert!(kept.add(signature(1, "alpha")).unwrap());
        assert!(
            !kept.add(signature(1, "alpha")).unwrap(),
            "a second one is not kept"
        );
        assert!(kept.add(signature(2, "alpha")).unwrap());
        let reopened = Countersignatures::open(dir.path()).unwrap();
        assert_eq!(reopened.signers(1), ["alpha", "bravo"]);
        assert_eq!(reopened.signers(2), ["alpha"]);
        assert_eq!(reopened.first_unsigned("alpha", 2), None);
        assert_eq!(reopened.first_unsigned("bravo", 2), Some(2));
        assert_eq!(reopened.first_unsigned("charlie", 2), Some(1));
        assert_eq!(reopened.of_round(1)[0].decoded().unwrap().1, b"sig");
        assert_eq!(read(dir.path(), false).unwrap().len(), 3);
    }

    #[test]
    fn a_torn_last_line_is_removed_before_appending_and_refused_by_a_reader_that_repairs_nothing() {
        let dir = tempfile::tempdir().unwrap();
        Countersignatures::open(dir.path())
            .unwrap()
            .add(signature(1, "alpha"))
            .unwrap();
        let path = dir.path().join(SIGNATURES_FILE);
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all(b"{\"round\":1,\"partic").unwrap();
        assert!(matches!(
            read(dir.path(), false),
            Err(Error::StateCorrupt { .. })
        ));
        let kept = Countersignatures::open(dir.path()).unwrap();
        assert!(kept.add(signature(1, "bravo")).unwrap());
        assert_eq!(read(dir.path(), false).unwrap().len(), 2);
    }

    #[test]
    fn waiting_ends_when_everyone_named_has_signed_or_at_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let kept = std::sync::Arc::new(Countersignatures::open(dir.path()).unwrap());
        let who = ["alpha".to_string(), "bravo".to_string()];
        let signer = {
            let kept = kept.clone();
            std::thread::spawn(move || {
                kept.add(signature(1, "alpha")).unwrap();
                kept.add(signature(1, "bravo")).unwrap();
            })
        };
        assert!(kept.wait_for(1, &who, Duration::from_secs(60)).is_empty());
        signer.join().unwrap();
        assert_eq!(
            kept.wait_for(2, &who, Duration::from_millis(10)),
            who.to_vec()
        );
    }
}
