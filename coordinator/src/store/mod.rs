//! Durable state under `--state-dir`: the job definition, one record per committed round
//! (`rounds.jsonl`), a safetensors checkpoint of the global model after each committed round
//! (the last few kept), and the final model (`model.safetensors`). Every file is replaced
//! atomically (temporary file, fsync, rename, fsync of the directory), and a round is committed
//! only once its checkpoint and its record are on disk.

use crate::Error;
use crate::config::JobSpec;
use crate::model::{TensorShape, save_safetensors};
use crate::round::RoundOutcome;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// A committed round: what the round logic decided plus what the driver measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
}

/// The state directory of one job.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    keep_checkpoints: usize,
}

impl Store {
    /// Opens `dir` for `job`, creating it. A directory that already holds committed rounds is
    /// refused rather than overwritten.
    pub fn open(dir: &Path, job: &JobSpec, keep_checkpoints: usize) -> Result<Store, Error> {
        std::fs::create_dir_all(dir.join("checkpoints")).map_err(|source| Error::Io {
            what: format!("creating state dir {}", dir.display()),
            source,
        })?;
        let store = Store {
            dir: dir.to_path_buf(),
            keep_checkpoints: keep_checkpoints.max(1),
        };
        let rounds = store.rounds_path();
        if rounds.exists()
            && std::fs::metadata(&rounds)
                .map(|m| m.len() > 0)
                .unwrap_or(true)
        {
            return Err(Error::StateDir(format!(
                "{} already holds committed rounds of a job; use an empty --state-dir for a new run",
                dir.display()
            )));
        }
        let job_json =
            serde_json::to_vec_pretty(job).map_err(|e| Error::StateDir(e.to_string()))?;
        write_atomically(&dir.join("job.json"), &job_json)?;
        Ok(store)
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

    /// Path of the final model.
    pub fn final_model_path(&self) -> PathBuf {
        self.dir.join("model.safetensors")
    }

    /// Makes a round durable: its checkpoint first, then its record; older checkpoints beyond
    /// the configured number are removed afterwards.
    pub fn commit(
        &self,
        record: &RoundRecord,
        layout: &[TensorShape],
        model: &[f32],
    ) -> Result<(), Error> {
        let round = record.outcome.round;
        save_safetensors(&self.checkpoint_path(round), layout, model)?;
        let mut line = serde_json::to_vec(record).map_err(|e| Error::StateDir(e.to_string()))?;
        line.push(b'\n');
        let path = self.rounds_path();
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut file| file.write_all(&line).and_then(|()| file.sync_all()))
            .map_err(|source| Error::Io {
                what: format!("appending to {}", path.display()),
                source,
            })?;
        if round > self.keep_checkpoints as u64 {
            let old = self.checkpoint_path(round - self.keep_checkpoints as u64);
            // A checkpoint that is already gone (or never existed after a failed round) is fine.
            let _ = std::fs::remove_file(old);
        }
        Ok(())
    }

    /// Reads every committed round record.
    pub fn rounds(&self) -> Result<Vec<RoundRecord>, Error> {
        let path = self.rounds_path();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(Error::Io {
                    what: format!("reading {}", path.display()),
                    source,
                });
            }
        };
        text.lines()
            .enumerate()
            .map(|(i, line)| {
                serde_json::from_str(line).map_err(|e| {
                    Error::StateDir(format!("{} line {} is corrupt: {e}", path.display(), i + 1))
                })
            })
            .collect()
    }
}

/// Replaces `path` with `bytes` atomically: write a temporary file beside it, fsync it, rename it
/// over `path`, fsync the directory.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), Error> {
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
    std::fs::File::create(&temp)
        .and_then(|mut file| file.write_all(bytes).and_then(|()| file.sync_all()))
        .map_err(|e| io("writing a temporary file for", e))?;
    std::fs::rename(&temp, path).map_err(|e| io("renaming into place", e))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("syncing the directory of", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DatasetKind, ModelKind};
    use crate::model::{initialize, layout, load_safetensors};

    fn job() -> JobSpec {
        JobSpec::parse("name: t\nmodel: mlp\ndataset: digits\nrounds: 5\nmin_participants: 1\nparticipants: [a]\n")
            .unwrap()
    }

    fn record(round: u64) -> RoundRecord {
        RoundRecord {
            outcome: RoundOutcome {
                round,
                attempt: 1,
                selected: vec!["a".into()],
                contributors: vec!["a".into()],
                dropouts: vec![],
                train_examples: 10,
                train_loss: 0.5,
                evaluators: 1,
                eval_examples: 5,
                eval_loss: Some(0.4),
                eval_accuracy: Some(0.9),
            },
            duration_s: 1.5,
            bytes_in: 100,
            bytes_out: 200,
            committed_at: "2026-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn commits_keep_the_last_checkpoints_and_every_record() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &job(), 2).unwrap();
        let layout = layout(ModelKind::Mlp, DatasetKind::Digits);
        for round in 1..=4 {
            store
                .commit(&record(round), &layout, &initialize(&layout, round))
                .unwrap();
        }
        assert_eq!(
            store
                .rounds()
                .unwrap()
                .iter()
                .map(|r| r.outcome.round)
                .collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
        assert!(!store.checkpoint_path(2).exists());
        assert_eq!(
            load_safetensors(&store.checkpoint_path(4), &layout).unwrap(),
            initialize(&layout, 4)
        );
        assert_eq!(
            load_safetensors(&store.checkpoint_path(3), &layout).unwrap(),
            initialize(&layout, 3)
        );
    }

    #[test]
    fn a_state_dir_with_committed_rounds_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &job(), 2).unwrap();
        let layout = layout(ModelKind::Mlp, DatasetKind::Digits);
        store
            .commit(&record(1), &layout, &initialize(&layout, 1))
            .unwrap();
        let err = Store::open(dir.path(), &job(), 2).unwrap_err().to_string();
        assert!(err.contains("already holds committed rounds"), "{err}");
        assert_eq!(store.rounds().unwrap().len(), 1);
    }

    #[test]
    fn a_corrupt_record_is_reported_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &job(), 2).unwrap();
        std::fs::write(
            dir.path().join("rounds.jsonl"),
            "{\"round\": 1}\nnot json\n",
        )
        .unwrap();
        let err = store.rounds().unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
    }
}
