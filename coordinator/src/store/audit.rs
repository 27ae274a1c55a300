//! The audit of a state directory: `cairn-coordinator audit --state-dir DIR`.
//!
//! What it proves, and against whom: the round records form a hash chain (each names the hash
//! of the line before it, the job definition's and the starting model's), every kept checkpoint
//! must hash to what its record says, and the final model and its provenance file must match
//! the chain's last record. So a record edited, dropped or reordered, a checkpoint swapped, or
//! a final model that did not come from these rounds is found and named by anyone who reads the
//! directory, with no key. It protects the history against accidents and against anyone who
//! changes part of it; it does not stop whoever controls the directory from writing a whole
//! new, consistent history: that is what the participants' countersignatures add. With the
//! federation CA (`--ca`), every countersignature is checked: its certificate chains to the CA
//! and names the participant, and its signature covers this job, this round and the record's
//! hash as written. A participant signs a record only when it extends the chain it signed
//! before and names the model it received, so a history rewritten after the fact lacks the
//! signatures of every participant that saw the original, and cannot be given new ones
//! without their keys.

use super::signatures::{self, Countersignature};
use super::{
    PROVENANCE_FILE, Provenance, RoundRecord, Store, file_sha256, parse_header, sha256_hex,
};
use crate::Error;
use std::path::Path;

/// What the audit found in a directory whose chain holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Audit {
    /// The job's name.
    pub job: String,
    /// SHA-256 (hex) of its definition.
    pub job_sha256: String,
    /// Each round, in order.
    pub rounds: Vec<AuditedRound>,
    /// SHA-256 (hex) of the last record's line: the head of the chain (empty without rounds).
    pub chain_head_sha256: String,
    /// How the initial model was checked.
    pub initial_model: Kept,
    /// How the final model and its provenance were checked.
    pub final_model: Kept,
    /// Whether the countersignatures were verified against the federation CA (given `--ca`);
    /// otherwise only their record hashes were compared with the chain.
    pub signatures_verified: bool,
}

/// One round as audited.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditedRound {
    /// The record, as written.
    pub record: RoundRecord,
    /// Whether its checkpoint is still there (and then matched its hash).
    pub checkpoint: Kept,
    /// The participants that countersigned its record, in name order.
    pub signers: Vec<String>,
}

/// Whether a file the chain names could be checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kept {
    /// Present, and its hash is the one the chain names.
    Verified,
    /// Not there (an old checkpoint pruned, a job still running, an initial model on
    /// another machine): nothing to check.
    Absent,
}

impl Kept {
    /// In a sentence's words.
    pub fn describe(self) -> &'static str {
        match self {
            Kept::Verified => "verified",
            Kept::Absent => "not kept",
        }
    }
}

/// Checks the state directory `dir`, and with `ca_pem` (the federation CA) every
/// countersignature; the error names the first broken link.
pub fn audit(dir: &Path, ca_pem: Option<&str>) -> Result<Audit, Error> {
    let broken = |link: String| Error::AuditFailed {
        dir: dir.to_path_buf(),
        link,
    };
    let header_path = dir.join("state.json");
    let bytes = std::fs::read(&header_path).map_err(|source| Error::Io {
        what: format!("reading {}", header_path.display()),
        source,
    })?;
    let header = parse_header(dir, &bytes)?;
    let store = Store::of(dir, &header.job, usize::MAX)?;
    let job_digest = store.job_sha256.clone();
    let lines = store.read_lines()?;
    let initial_model = present(&header.job.model.initial)?;
    let mut previous_record = String::new();
    let mut previous_model = initial_model.clone();
    let mut rounds = Vec::new();
    let mut record_hashes = Vec::new();
    for (line, record) in lines {
        let round = record.outcome.round;
        if record.job_sha256 != job_digest {
            return Err(broken(format!(
                "round {round} was recorded under job definition {}, state.json holds {job_digest}",
                or_none(&record.job_sha256)
            )));
        }
        if record.previous_record_sha256 != previous_record {
            return Err(broken(match round {
                1 => format!(
                    "round 1 names a previous record ({}), but nothing comes before it",
                    record.previous_record_sha256
                ),
                _ => format!(
                    "round {round} follows a record that hashes to {}, but round {}'s record as written hashes to {previous_record}: round {} was edited, or rounds were dropped or reordered",
                    or_none(&record.previous_record_sha256),
                    round - 1,
                    round - 1
                ),
            }));
        }
        if let Some(before) = &previous_model
            && record.model_before_sha256 != *before
        {
            return Err(broken(format!(
                "round {round} started from model {}, but {} is {before}",
                or_none(&record.model_before_sha256),
                match round {
                    1 => "the job's initial model".to_string(),
                    _ => format!("round {}'s checkpoint", round - 1),
                }
            )));
        }
        let path = store.checkpoint_path(round);
        let checkpoint = match present(&path)? {
            None => Kept::Absent,
            Some(found) if found == record.checkpoint_sha256 => Kept::Verified,
            Some(found) => {
                return Err(broken(format!(
                    "round {round}'s checkpoint {} hashes to {found}, its record says {}: the file was replaced or altered",
                    path.display(),
                    record.checkpoint_sha256
                )));
            }
        };
        previous_record = sha256_hex(line.as_bytes());
        previous_model = Some(record.checkpoint_sha256.clone());
        rounds.push(AuditedRound {
            record,
            checkpoint,
            signers: Vec::new(),
        });
        record_hashes.push(previous_record.clone());
    }
    let countersignatures = signatures::read(dir, false)?;
    for signature in &countersignatures {
        check_signature(&header.job.name, &record_hashes, signature, ca_pem).map_err(&broken)?;
        let signers = &mut rounds[signature.round as usize - 1].signers;
        if signers.contains(&signature.participant) {
            return Err(broken(format!(
                "{} countersigned round {} twice",
                signature.participant, signature.round
            )));
        }
        signers.push(signature.participant.clone());
    }
    for round in &mut rounds {
        round.signers.sort();
    }
    let final_model = audit_final_model(
        &store,
        &header.job.name,
        &job_digest,
        &previous_record,
        &rounds,
        &countersignatures,
    )
    .map_err(broken)?;
    Ok(Audit {
        job: header.job.name,
        job_sha256: job_digest,
        rounds,
        chain_head_sha256: previous_record,
        initial_model: match initial_model {
            Some(_) => Kept::Verified,
            None => Kept::Absent,
        },
        final_model,
        signatures_verified: ca_pem.is_some(),
    })
}

/// Checks one countersignature against the chain (`record_hashes[r - 1]`: round r's record's
/// hash) and, given the federation CA, its certificate and signature.
fn check_signature(
    job: &str,
    record_hashes: &[String],
    signature: &Countersignature,
    ca_pem: Option<&str>,
) -> Result<(), String> {
    let (round, who) = (signature.round, &signature.participant);
    let Some(record) = round
        .checked_sub(1)
        .and_then(|i| record_hashes.get(i as usize))
    else {
        return Err(format!(
            "{who} countersigned round {round}, which has no record (rounds 1..={})",
            record_hashes.len()
        ));
    };
    if signature.record_sha256 != *record {
        return Err(format!(
            "{who} countersigned a record of round {round} that hashes to {}, but round {round}'s record as written hashes to {record}: the record was changed after it was signed",
            or_none(&signature.record_sha256)
        ));
    }
    let Some(ca_pem) = ca_pem else {
        return Ok(());
    };
    let Some((certificate, bytes)) = signature.decoded() else {
        return Err(format!(
            "the countersignature of {who} on round {round} is not base64"
        ));
    };
    let at = std::time::Duration::from_secs(signature.received_at_unix_s);
    let identity = cairn_identity::verify_participant_certificate(ca_pem, &certificate, at)
        .map_err(|e| {
            format!("the certificate with {who}'s countersignature of round {round}: {e}")
        })?;
    if identity.id != *who {
        return Err(format!(
            "the countersignature of round {round} said to be {who}'s comes with the certificate of {:?}",
            identity.id
        ));
    }
    let hash = hex::decode(record).unwrap_or_default();
    let message = cairn_identity::countersigned_message(job, round, &hash);
    if !cairn_identity::verify_signature(&certificate, &message, &bytes) {
        return Err(format!(
            "{who}'s countersignature of round {round} does not verify: it is forged, or was made for another job or record"
        ));
    }
    Ok(())
}

/// Checks `model.safetensors` and its provenance against the chain's head.
fn audit_final_model(
    store: &Store,
    job: &str,
    job_digest: &str,
    head: &str,
    rounds: &[AuditedRound],
    countersignatures: &[Countersignature],
) -> Result<Kept, String> {
    let model = present(&store.final_model_path()).map_err(|e| e.to_string())?;
    let provenance_path = store.dir.join(PROVENANCE_FILE);
    let Some(model) = model else {
        return Ok(Kept::Absent);
    };
    let bytes = std::fs::read(&provenance_path)
        .map_err(|e| format!("model.safetensors has no {PROVENANCE_FILE} ({e})"))?;
    let provenance: Provenance = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{PROVENANCE_FILE} is not a provenance record: {e}"))?;
    let expected = Provenance {
        job: job.to_string(),
        job_sha256: job_digest.to_string(),
        rounds: rounds.len() as u64,
        chain_head_sha256: head.to_string(),
        model_sha256: model.clone(),
        signatures: provenance.signatures.clone(),
    };
    if let Some(stray) = provenance
        .signatures
        .iter()
        .find(|s| !countersignatures.contains(s) || s.record_sha256 != head)
    {
        return Err(format!(
            "{PROVENANCE_FILE} carries a countersignature of {} on round {} that is not one of the head record's in {}",
            stray.participant,
            stray.round,
            signatures::SIGNATURES_FILE
        ));
    }
    if provenance != expected {
        return Err(format!(
            "{PROVENANCE_FILE} does not describe this directory: it says {provenance:?}, the directory has {expected:?}"
        ));
    }
    if let Some(last) = rounds.last()
        && last.record.checkpoint_sha256 != model
    {
        return Err(format!(
            "model.safetensors hashes to {model}, but the last round's checkpoint is {}",
            last.record.checkpoint_sha256
        ));
    }
    Ok(Kept::Verified)
}

/// The SHA-256 of `path`, or `None` when there is no such file.
fn present(path: &Path) -> Result<Option<String>, Error> {
    match path.exists() {
        true => file_sha256(path).map(Some),
        false => Ok(None),
    }
}

fn or_none(hash: &str) -> &str {
    match hash {
        "" => "(none)",
        hash => hash,
    }
}
