//! The audit of a state directory: `cairn-coordinator audit --state-dir DIR`.
//!
//! What it proves, and against whom: the round records form a hash chain (each names the hash
//! of the line before it, the job definition's and the starting model's), every kept checkpoint
//! must hash to what its record says, and the final model and its provenance file must match
//! the chain's last record. So a record edited, dropped or reordered, a checkpoint swapped, or
//! a final model that did not come from these rounds is found and named by anyone who reads the
//! directory, with no key. It protects the history against accidents and against anyone who
//! changes part of it; it does not stop whoever controls the directory from writing a whole
//! new, consistent history. The participants' countersignatures are what would bind the host.

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
}

/// One round as audited.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditedRound {
    /// The record, as written.
    pub record: RoundRecord,
    /// Whether its checkpoint is still there (and then matched its hash).
    pub checkpoint: Kept,
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

/// Checks the state directory `dir`; the error names the first broken link.
pub fn audit(dir: &Path) -> Result<Audit, Error> {
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
        rounds.push(AuditedRound { record, checkpoint });
    }
    let final_model = audit_final_model(
        &store,
        &header.job.name,
        &job_digest,
        &previous_record,
        &rounds,
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
    })
}

/// Checks `model.safetensors` and its provenance against the chain's head.
fn audit_final_model(
    store: &Store,
    job: &str,
    job_digest: &str,
    head: &str,
    rounds: &[AuditedRound],
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
    };
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
