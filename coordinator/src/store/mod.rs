//! Durable state under `--state-dir`, so that a restarted coordinator loses nothing it committed:
//!
//! - `state.json`: the schema version and the job this directory belongs to;
//! - `rounds.jsonl`: one record per committed round (participants, dropouts, metrics, and the
//!   SHA-256 of the round's checkpoint), appended and fsynced;
//! - `checkpoints/round-NNNNNN.safetensors`: the global model after each committed round, the
//!   last few kept;
//! - `checkpoints/round-NNNNNN.optimizer.safetensors`: beside it, the server optimiser's
//!   moments after that round (`m`, `v`), for the optimisers that keep any, so that a resumed
//!   job steps exactly as one that never stopped;
//! - `signatures.jsonl`: the participants' countersignatures of the round records
//!   ([`signatures`]);
//! - `model.safetensors`: the final model, and `model.provenance.json` beside it (the job's
//!   digest, the rounds, the head of the chain below and its countersignatures), so a model
//!   handed on can be traced.
//!
//! The records form a hash chain: each names the SHA-256 of the previous record's line, of the
//! job definition and of the model the round started from, so that [`audit`] finds any record
//! edited, dropped or reordered and any checkpoint swapped (see `audit`'s documentation for what
//! that proves, and against whom).
//!
//! Files are replaced atomically (temporary file, fsync, rename, fsync of the directory). A
//! round is committed once its checkpoint and then its record are on disk; a crash between the
//! two leaves an unreferenced checkpoint that the rerun of that round overwrites. The format is
//! JSON lines rather than an embedded database because the access pattern is append-only and
//! tiny (one line per round), and an operator can read it with any tool.
//!
//! [`Store::open`] resumes: it refuses a directory of another job or an unknown schema version,
//! detects a corrupt record or checkpoint, and hands back the committed rounds and the global
//! model of the last one.

pub mod audit;
pub mod signatures;

use crate::Error;
use crate::config::JobSpec;
use crate::model::{TensorShape, load_safetensors, save_safetensors};
use crate::round::RoundOutcome;
use ring::digest::{Context, SHA256, digest};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Version of the state directory's layout; bumped on any incompatible change.
pub const SCHEMA_VERSION: u32 = 1;

/// How long one phase of a round took.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PhaseTiming {
    /// The phase.
    pub phase: crate::round::Phase,
    /// Attempt of the round it belonged to.
    pub attempt: u32,
    /// Wall time, in seconds.
    pub duration_s: f64,
}

/// A committed round: what the round logic decided plus what the driver measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RoundRecord {
    /// The round logic's outcome.
    #[serde(flatten)]
    pub outcome: RoundOutcome,
    /// Wall time from the round's first attempt starting to its commit, in seconds.
    pub duration_s: f64,
    /// Bytes received from participants during the round (updates, evaluations).
    pub bytes_in: u64,
    /// Bytes sent to participants during the round (models).
    pub bytes_out: u64,
    /// Commit time, RFC 3339.
    pub committed_at: String,
    /// SHA-256 (hex) of the round's checkpoint file.
    #[serde(default)]
    pub checkpoint_sha256: String,
    /// SHA-256 (hex) of the server optimiser's state file of the round; empty when the
    /// optimiser keeps no state (FedAvg).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub optimizer_state_sha256: String,
    /// The phases the round went through, in order (failed attempts included).
    #[serde(default)]
    pub phase_durations: Vec<PhaseTiming>,
    /// SHA-256 (hex) of the previous round's line in `rounds.jsonl`, without its newline; empty
    /// for round 1. A record edited, dropped or moved breaks the link of the one after it.
    #[serde(default)]
    pub previous_record_sha256: String,
    /// SHA-256 (hex) of the job definition in force (`state.json`'s job as compact JSON): the
    /// model, the metrics, secure aggregation's and differential privacy's parameters.
    #[serde(default)]
    pub job_sha256: String,
    /// SHA-256 (hex) of the global model the round started from: the previous round's
    /// checkpoint, for round 1 the job's initial model file.
    #[serde(default)]
    pub model_before_sha256: String,
    /// SHA-256 (hex) of the global model's values after the round, as a transfer carries them
    /// (little-endian f32; the `sha256` of the header the next round sends it with): what a
    /// participant compares with the model it received before it countersigns the record.
    #[serde(default)]
    pub model_sha256: String,
}

/// What travels with the final model: enough to find the rounds it came from and check them
/// (`model.provenance.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// The job's name.
    pub job: String,
    /// SHA-256 (hex) of its definition, as in every round record.
    pub job_sha256: String,
    /// Rounds committed.
    pub rounds: u64,
    /// SHA-256 (hex) of the last round's line in `rounds.jsonl`: the head of the chain.
    pub chain_head_sha256: String,
    /// SHA-256 (hex) of `model.safetensors`.
    pub model_sha256: String,
    /// The participants' countersignatures of the head record.
    pub signatures: Vec<signatures::Countersignature>,
}

/// The end of the chain that the next record links to.
#[derive(Debug, Clone, Default)]
struct ChainHead {
    /// SHA-256 (hex) of the last record's line; empty before round 1.
    record_sha256: String,
    /// SHA-256 (hex) of the global model after the last round (before round 1: the initial
    /// model file).
    model_sha256: String,
    /// Rounds committed.
    rounds: u64,
}

/// The first line of defence against running a state directory with the wrong job or code.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct StateHeader {
    schema_version: u32,
    job: JobSpec,
    /// When the job first started (RFC 3339); a resumed job keeps it. Absent in directories made
    /// before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    started_at: Option<String>,
}

/// What a state directory already holds.
#[derive(Debug, Clone, Default)]
pub struct Resume {
    /// Committed rounds, in order (1, 2, ...).
    pub rounds: Vec<RoundRecord>,
    /// Their lines in `rounds.jsonl`, as the chain hashes them.
    pub lines: Vec<String>,
    /// The global model after the last committed round, if any round was committed.
    pub global: Option<Vec<f32>>,
    /// The server optimiser's state after the last committed round, when it keeps one.
    pub optimizer_state: Option<Vec<f32>>,
    /// When the job first started (RFC 3339), if the directory recorded it.
    pub started_at: Option<String>,
}

/// A server optimiser's state as checkpointed: its tensors and their values.
#[derive(Debug, Clone, Copy)]
pub struct OptimizerState<'a> {
    /// The tensors (`m`, `v`); empty when the optimiser keeps no state.
    pub layout: &'a [TensorShape],
    /// Their values, one after the other.
    pub values: &'a [f32],
}

/// The state directory of one job.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    keep_checkpoints: usize,
    /// The job's name.
    job: String,
    /// SHA-256 (hex) of the job definition.
    job_sha256: String,
    head: Mutex<ChainHead>,
}

impl Store {
    /// Opens (or creates) `dir` for `job` and reads what it already holds; `layout` is the
    /// model's (from the job's model file), which the last checkpoint must have.
    pub fn open(
        dir: &Path,
        job: &JobSpec,
        layout: &[TensorShape],
        optimizer_layout: &[TensorShape],
        keep_checkpoints: usize,
    ) -> Result<(Store, Resume), Error> {
        if keep_checkpoints == 0 {
            return Err(Error::KeepCheckpoints {
                value: keep_checkpoints,
            });
        }
        std::fs::create_dir_all(dir.join("checkpoints")).map_err(|source| Error::Io {
            what: format!("creating state dir {}", dir.display()),
            source,
        })?;
        let mut store = Store::of(dir, job, keep_checkpoints)?;
        let header_path = dir.join("state.json");
        let started_at = match std::fs::read(&header_path) {
            Ok(bytes) => store.check_header(&bytes, job)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if store.rounds_path().exists() {
                    return Err(Error::StateWithoutHeader {
                        dir: dir.to_path_buf(),
                    });
                }
                let header = StateHeader {
                    schema_version: SCHEMA_VERSION,
                    job: job.clone(),
                    started_at: Some(crate::api::monitor::now_rfc3339()),
                };
                let bytes =
                    serde_json::to_vec_pretty(&header).map_err(|source| Error::StateEncoding {
                        dir: dir.to_path_buf(),
                        what: "state.json".into(),
                        source,
                    })?;
                write_atomically(&header_path, &bytes)?;
                header.started_at
            }
            Err(source) => {
                return Err(Error::Io {
                    what: format!("reading {}", header_path.display()),
                    source,
                });
            }
        };
        let lines = store.read_lines()?;
        let head = match lines.last() {
            Some((line, last)) => ChainHead {
                record_sha256: sha256_hex(line.as_bytes()),
                model_sha256: last.checkpoint_sha256.clone(),
                rounds: last.outcome.round,
            },
            // The initial model file was read before; only a test's job names none.
            None => ChainHead {
                model_sha256: match job.model.initial.exists() {
                    true => file_sha256(&job.model.initial)?,
                    false => String::new(),
                },
                ..ChainHead::default()
            },
        };
        *store.head.get_mut().unwrap_or_else(|p| p.into_inner()) = head;
        let (lines, rounds): (Vec<String>, Vec<RoundRecord>) = lines.into_iter().unzip();
        let global = match rounds.last() {
            None => None,
            Some(last) => Some(store.load_checkpoint(last, layout).map_err(|e| match e {
                // Its hash matched, so the checkpoint is what was committed: it is the model
                // file that no longer has the layout the job started with.
                Error::TensorCount { .. }
                | Error::MissingTensor { .. }
                | Error::TensorShape { .. } => Error::CheckpointLayout {
                    dir: dir.to_path_buf(),
                    round: last.outcome.round,
                    model: job.model.initial.clone(),
                    source: Box::new(e),
                },
                other => other,
            })?),
        };
        let optimizer_state = match rounds.last() {
            // Checked against the hash in the record, like the model.
            Some(last) if !optimizer_layout.is_empty() => Some(store.load_verified(
                last.outcome.round,
                &store.optimizer_state_path(last.outcome.round),
                &last.optimizer_state_sha256,
                optimizer_layout,
            )?),
            _ => None,
        };
        Ok((
            store,
            Resume {
                rounds,
                lines,
                global,
                optimizer_state,
                started_at,
            },
        ))
    }

    /// The store of `job` in `dir`, before its chain's head is known.
    fn of(dir: &Path, job: &JobSpec, keep_checkpoints: usize) -> Result<Store, Error> {
        Ok(Store {
            dir: dir.to_path_buf(),
            keep_checkpoints,
            job: job.name.clone(),
            job_sha256: job_sha256(job)?,
            head: Mutex::default(),
        })
    }

    /// Checks `state.json` against `job` and returns when the job first started, if recorded.
    fn check_header(&self, bytes: &[u8], job: &JobSpec) -> Result<Option<String>, Error> {
        let header = parse_header(&self.dir, bytes)?;
        if header.job.name != job.name {
            return Err(Error::StateOfOtherJob {
                dir: self.dir.clone(),
                found: header.job.name,
                expected: job.name.clone(),
            });
        }
        if header.job != *job {
            return Err(Error::JobChanged {
                dir: self.dir.clone(),
                job: job.name.clone(),
            });
        }
        Ok(header.started_at)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn rounds_path(&self) -> PathBuf {
        self.dir.join("rounds.jsonl")
    }

    /// Path of the checkpoint written after `round`.
    pub fn checkpoint_path(&self, round: u64) -> PathBuf {
        self.dir
            .join("checkpoints")
            .join(format!("round-{round:06}.safetensors"))
    }

    /// Path of the server optimiser's state after `round`.
    pub fn optimizer_state_path(&self, round: u64) -> PathBuf {
        self.dir
            .join("checkpoints")
            .join(format!("round-{round:06}.optimizer.safetensors"))
    }

    /// SHA-256 (hex) of the last committed record's line: the head of the chain (empty before
    /// round 1).
    pub fn chain_head_sha256(&self) -> String {
        let head = self.head.lock().unwrap_or_else(|p| p.into_inner());
        head.record_sha256.clone()
    }

    /// Path of the final model.
    pub fn final_model_path(&self) -> PathBuf {
        self.dir.join("model.safetensors")
    }

    /// Writes the final model and its provenance beside it (`model.provenance.json`), with
    /// `signatures`, the countersignatures of the head record.
    pub fn write_final_model(
        &self,
        layout: &[TensorShape],
        model: &[f32],
        signatures: Vec<signatures::Countersignature>,
    ) -> Result<(), Error> {
        let path = self.final_model_path();
        let model_sha256 = hex::encode(save_safetensors(&path, layout, model)?.as_ref());
        let head = self.head.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let provenance = Provenance {
            job: self.job.clone(),
            job_sha256: self.job_sha256.clone(),
            rounds: head.rounds,
            chain_head_sha256: head.record_sha256,
            model_sha256,
            signatures,
        };
        let bytes =
            serde_json::to_vec_pretty(&provenance).map_err(|source| Error::StateEncoding {
                dir: self.dir.clone(),
                what: PROVENANCE_FILE.into(),
                source,
            })?;
        write_atomically(&self.dir.join(PROVENANCE_FILE), &bytes)
    }

    /// Makes a round durable: its checkpoint first, then its record (which carries the
    /// checkpoint's hash, and is returned with its line); older checkpoints beyond the
    /// configured number are removed afterwards.
    pub fn commit(
        &self,
        record: &RoundRecord,
        layout: &[TensorShape],
        model: &[f32],
        optimizer: OptimizerState<'_>,
    ) -> Result<(RoundRecord, String), Error> {
        let round = record.outcome.round;
        let optimizer_state_sha256 = match optimizer.layout.is_empty() {
            true => String::new(),
            false => {
                let path = self.optimizer_state_path(round);
                hex::encode(save_safetensors(&path, optimizer.layout, optimizer.values)?.as_ref())
            }
        };
        let checkpoint = save_safetensors(&self.checkpoint_path(round), layout, model)?;
        let mut head = self.head.lock().unwrap_or_else(|p| p.into_inner());
        let record = RoundRecord {
            checkpoint_sha256: hex::encode(checkpoint.as_ref()),
            optimizer_state_sha256,
            previous_record_sha256: head.record_sha256.clone(),
            job_sha256: self.job_sha256.clone(),
            model_before_sha256: head.model_sha256.clone(),
            model_sha256: hex::encode(cairn_proto::transfer::payload_sha256(model)),
            ..record.clone()
        };
        let mut line = serde_json::to_vec(&record).map_err(|source| Error::StateEncoding {
            dir: self.dir.clone(),
            what: format!("the record of round {round}"),
            source,
        })?;
        let record_sha256 = sha256_hex(&line);
        let text = String::from_utf8_lossy(&line).into_owned();
        line.push(b'\n');
        append_line(&self.rounds_path(), &line)?;
        *head = ChainHead {
            record_sha256,
            model_sha256: record.checkpoint_sha256.clone(),
            rounds: round,
        };
        drop(head);
        if round > self.keep_checkpoints as u64 {
            let old = round - self.keep_checkpoints as u64;
            // A checkpoint that is already gone is fine: pruning is best effort.
            let _ = std::fs::remove_file(self.checkpoint_path(old));
            let _ = std::fs::remove_file(self.optimizer_state_path(old));
        }
        Ok((record, text))
    }

    /// Reads every committed round record, checking that they are rounds 1, 2, ... without gap
    /// or duplicate. A last line cut short by a crash during its append is a round that was not
    /// committed: it is removed, and the round runs again.
    pub fn read_rounds(&self) -> Result<Vec<RoundRecord>, Error> {
        Ok(self
            .read_lines()?
            .into_iter()
            .map(|(_, record)| record)
            .collect())
    }

    /// [`Store::read_rounds`], with each record's line as written (which the chain hashes).
    fn read_lines(&self) -> Result<Vec<(String, RoundRecord)>, Error> {
        let path = self.rounds_path();
        let (text, torn) = read_appended(&path)?;
        if !torn.is_empty() {
            if serde_json::from_slice::<RoundRecord>(&torn).is_ok() {
                return Err(Error::RoundsEdited {
                    dir: self.dir.clone(),
                });
            }
            remove_torn_line(&path, text.len(), "a round record; that round runs again")?;
        }
        let mut rounds = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let record: RoundRecord =
                serde_json::from_str(line).map_err(|source| Error::StateCorrupt {
                    dir: self.dir.clone(),
                    file: format!("rounds.jsonl line {}", index + 1),
                    source,
                })?;
            let expected = index as u64 + 1;
            if record.outcome.round != expected {
                return Err(Error::RoundOutOfOrder {
                    dir: self.dir.clone(),
                    line: index + 1,
                    round: record.outcome.round,
                    expected,
                });
            }
            rounds.push((line.to_string(), record));
        }
        Ok(rounds)
    }

    /// Loads the checkpoint of a committed round, checking it against the hash in its record.
    pub fn load_checkpoint(
        &self,
        record: &RoundRecord,
        layout: &[TensorShape],
    ) -> Result<Vec<f32>, Error> {
        let round = record.outcome.round;
        self.load_verified(
            round,
            &self.checkpoint_path(round),
            &record.checkpoint_sha256,
            layout,
        )
    }

    /// Loads a safetensors file of `round` whose SHA-256 must be `expected`, with `layout`.
    fn load_verified(
        &self,
        round: u64,
        path: &Path,
        expected: &str,
        layout: &[TensorShape],
    ) -> Result<Vec<f32>, Error> {
        let bytes = std::fs::read(path).map_err(|source| Error::CheckpointUnreadable {
            dir: self.dir.clone(),
            round,
            path: path.to_path_buf(),
            source,
        })?;
        let actual = sha256_hex(&bytes);
        if actual != expected {
            return Err(Error::CheckpointCorrupt {
                dir: self.dir.clone(),
                round,
                path: path.to_path_buf(),
                found: actual,
                expected: expected.to_string(),
            });
        }
        load_safetensors(path, layout)
    }
}

/// The complete lines of the append-only file `path` (no file yet: none), and the bytes of a
/// last line that a crash cut short (empty when there is none).
fn read_appended(path: &Path) -> Result<(String, Vec<u8>), Error> {
    let mut bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(source) => {
            return Err(Error::Io {
                what: format!("reading {}", path.display()),
                source,
            });
        }
    };
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let torn = bytes.split_off(complete);
    Ok((String::from_utf8_lossy(&bytes).into_owned(), torn))
}

/// Appends `line` (newline included) to the append-only file `path` and makes it durable.
fn append_line(path: &Path, line: &[u8]) -> Result<(), Error> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut file| file.write_all(line).and_then(|()| file.sync_all()))
        .map_err(|source| Error::Io {
            what: format!("appending to {}", path.display()),
            source,
        })
}

/// Cuts the append-only file `path` back to its first `complete` bytes, removing `what` that a
/// crash cut short, before anything is appended after it.
fn remove_torn_line(path: &Path, complete: usize, what: &str) -> Result<(), Error> {
    let len = std::fs::metadata(path).map_or(0, |m| m.len());
    tracing::warn!(
        "{}: removing {what} cut short by a crash ({} bytes)",
        path.display(),
        len.saturating_sub(complete as u64)
    );
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|file| file.set_len(complete as u64).and_then(|()| file.sync_all()))
        .map_err(|source| Error::Io {
            what: format!("truncating {}", path.display()),
            source,
        })
}

/// `state.json` of the state directory `dir`, in this coordinator's schema version.
fn parse_header(dir: &Path, bytes: &[u8]) -> Result<StateHeader, Error> {
    let corrupt = |source| Error::StateCorrupt {
        dir: dir.to_path_buf(),
        file: "state.json".into(),
        source,
    };
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(corrupt)?;
    let version = value.get("schema_version").and_then(|v| v.as_u64());
    if version != Some(u64::from(SCHEMA_VERSION)) {
        return Err(Error::StateSchema {
            dir: dir.to_path_buf(),
            found: version,
            expected: SCHEMA_VERSION,
        });
    }
    serde_json::from_value(value).map_err(corrupt)
}

/// The provenance file beside the final model.
pub const PROVENANCE_FILE: &str = "model.provenance.json";

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(digest(&SHA256, bytes).as_ref())
}

/// SHA-256 (hex) of `job`'s definition: its compact JSON, as `state.json` holds it.
pub fn job_sha256(job: &JobSpec) -> Result<String, Error> {
    let bytes = serde_json::to_vec(job).map_err(|source| Error::StateEncoding {
        dir: PathBuf::new(),
        what: format!("job {:?}", job.name),
        source,
    })?;
    Ok(sha256_hex(&bytes))
}

/// SHA-256 (hex) of a file, read in pieces (an initial model may be gigabytes).
fn file_sha256(path: &Path) -> Result<String, Error> {
    let io = |source| Error::Io {
        what: format!("reading {}", path.display()),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut context = Context::new(&SHA256);
    let mut buffer = vec![0; 1 << 20];
    loop {
        let n = std::io::Read::read(&mut file, &mut buffer).map_err(io)?;
        if n == 0 {
            return Ok(hex::encode(context.finish().as_ref()));
        }
        context.update(&buffer[..n]);
    }
}

/// Replaces `path` with `bytes` atomically: write a temporary file beside it, fsync it, rename it
/// over `path`, fsync the directory.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    write_atomically_with(path, |file| file.write_all(bytes)).map(drop)
}

/// As [`write_atomically`], with what `write` writes (through a buffer), whose SHA-256 it
/// returns: computed on the way to the file, so the bytes need never be in memory at once.
pub fn write_atomically_with(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<ring::digest::Digest, Error> {
    let io = |what: &str, source| Error::Io {
        what: format!("{what} {}", path.display()),
        source,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let digest = std::fs::File::create(&temp)
        .and_then(|file| {
            let mut hashing = Hashing {
                inner: std::io::BufWriter::with_capacity(1 << 20, file),
                hash: Context::new(&SHA256),
            };
            write(&mut hashing)?;
            let file = hashing.inner.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            Ok(hashing.hash.finish())
        })
        .map_err(|e| io("writing a temporary file for", e))?;
    std::fs::rename(&temp, path).map_err(|e| io("renaming into place", e))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("syncing the directory of", e))?;
    Ok(digest)
}

/// A writer that hashes what passes through it.
struct Hashing<W> {
    inner: W,
    hash: Context,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let written = self.inner.write(bytes)?;
        self.hash.update(&bytes[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests;
