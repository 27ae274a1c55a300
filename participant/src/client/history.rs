//! This site's side of the countersigned round log. The coordinator sends each committed
//! round's record; the site signs it with its certificate's key only when it extends the
//! history it signed before (same job definition, linked to the last record it signed) and
//! names the global model that the site received after that round. What it signed last, per
//! job, is kept in a small file (`--history`), so that a coordinator restarted with a
//! rewritten or shortened log is caught on the first record or `Welcome` that shows it: the
//! site then refuses to go on, and says where the histories part.
//!
//! A record of a round whose model the site never received (it was away) is signed for its
//! link to the chain alone; the model it names is checked against the next model the site
//! receives.
//!
//! A countersignature can be lost on its way (the connection breaks while it is in flight), so
//! the coordinator may send records the site signed already, from the first whose signature it
//! lacks: the site signs them again once they have led, record by record, to the one it signed
//! last, which proves them to be its ancestors.

use crate::Error;
use cairn_proto::v1::{ChainHead, Countersignature, RoundRecord, SignedThrough};
use cairn_secagg::protocol::Signer;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What the site signed last in one job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Signed {
    round: u64,
    /// SHA-256 (hex) of the record signed.
    record_sha256: String,
    /// The job definition's digest that the record names.
    job_sha256: String,
    /// The model after the round that the record names.
    model_sha256: String,
}

/// The history file: the last record signed, by job name.
#[derive(Debug, Default, Serialize, Deserialize)]
struct HistoryFile {
    jobs: BTreeMap<String, Signed>,
}

/// The fields of a record the site checks (the record has more; they are signed as written).
#[derive(Debug, Deserialize)]
struct Fields {
    round: u64,
    previous_record_sha256: String,
    job_sha256: String,
    model_sha256: String,
}

/// Why a record is not signed.
#[derive(Debug)]
pub(super) enum Unsigned {
    /// The coordinator's history forks from the site's.
    Forked(Error),
    /// The record is not one the site can check now (malformed, or out of order): the session
    /// is worth starting again, which sends the records from the last one signed.
    Unusable(String),
}

/// Models received this many rounds back are remembered, to be checked against their records.
const MODELS_KEPT: usize = 8;

/// The site's history in one job.
#[derive(Debug)]
pub(super) struct History {
    path: PathBuf,
    job: String,
    signed: Option<Signed>,
    /// SHA-256 (hex) of the global model the site received after each recent round.
    models: BTreeMap<u64, String>,
    /// Records the site signed before, sent again, each linked to the one before it: signed
    /// again once they reach the last record signed. Round and SHA-256 (hex).
    again: Vec<(u64, String)>,
}

impl History {
    /// The history of `job` in the file at `path` (none yet: nothing signed).
    pub(super) fn open(path: &Path, job: &str) -> Result<History, Error> {
        let signed = read(path)?.jobs.remove(job);
        if let Some(signed) = &signed
            && hex::decode(&signed.record_sha256).map_or(true, |hash| hash.len() != 32)
        {
            return Err(Error::HistoryFile {
                path: path.to_path_buf(),
                reason: format!(
                    "names {:?} as the last record signed in job {job:?}; expected a SHA-256 in 64 hex digits",
                    signed.record_sha256
                ),
            });
        }
        Ok(History {
            path: path.to_path_buf(),
            job: job.to_string(),
            signed,
            models: BTreeMap::new(),
            again: Vec::new(),
        })
    }

    /// Where the site's signing stands, for the coordinator.
    pub(super) fn signed_through(&self) -> SignedThrough {
        match &self.signed {
            None => SignedThrough::default(),
            Some(signed) => SignedThrough {
                round: signed.round,
                record_sha256: hex::decode(&signed.record_sha256).unwrap_or_default(),
            },
        }
    }

    /// Checks the head of the coordinator's log (from `Welcome`) against what the site signed.
    pub(super) fn check_head(&self, head: Option<&ChainHead>) -> Result<(), Error> {
        let Some(signed) = &self.signed else {
            return Ok(());
        };
        let rounds = head.map_or(0, |h| h.rounds);
        if rounds < signed.round {
            return Err(self.forked(format!(
                "its log ends at round {rounds}, but this site countersigned round {}: rounds were lost or removed",
                signed.round
            )));
        }
        let head_sha256 = head
            .map(|h| hex::encode(&h.record_sha256))
            .unwrap_or_default();
        if rounds == signed.round && head_sha256 != signed.record_sha256 {
            return Err(self.forked(format!(
                "its record of round {rounds} hashes to {head_sha256}, but the one this site countersigned hashes to {}",
                signed.record_sha256
            )));
        }
        Ok(())
    }

    /// The site received `sha256` as the global model after round `round`: checked against
    /// the record of that round if the site signed it, and remembered for when it comes.
    pub(super) fn received_model(&mut self, round: u64, sha256: &[u8]) -> Result<(), Error> {
        let sha256 = hex::encode(sha256);
        if let Some(signed) = &self.signed
            && signed.round == round
            && signed.model_sha256 != sha256
        {
            return Err(self.forked(format!(
                "it sends {sha256} as the model after round {round}, but the record of round {round} this site countersigned names {}",
                signed.model_sha256
            )));
        }
        self.models.insert(round, sha256);
        while self.models.len() > MODELS_KEPT {
            self.models.pop_first();
        }
        Ok(())
    }

    /// Checks `record` and returns the countersignatures it calls for: of itself when it
    /// extends the history, or of the records sent again that it proves to be the history's
    /// (see the module's documentation); none while those are still on their way.
    pub(super) fn countersign(
        &mut self,
        record: &RoundRecord,
        signer: &dyn Signer,
    ) -> Result<Vec<Countersignature>, Unsigned> {
        let fields: Fields = serde_json::from_slice(&record.record).map_err(|e| {
            Unsigned::Unusable(format!(
                "the record of round {} is not a round record: {e}",
                record.round
            ))
        })?;
        let round = record.round;
        if fields.round != round {
            return Err(Unsigned::Unusable(format!(
                "a record of round {} was sent as round {round}",
                fields.round
            )));
        }
        let sha256 =
            hex::encode(ring::digest::digest(&ring::digest::SHA256, &record.record).as_ref());
        let (last_round, last_sha256) = match &self.signed {
            None => (0, String::new()),
            Some(signed) => (signed.round, signed.record_sha256.clone()),
        };
        if round <= last_round {
            return self.signed_again(round, sha256, &fields, &last_sha256, signer);
        }
        if !self.again.is_empty() {
            self.again.clear();
            return Err(Unsigned::Unusable(format!(
                "the records sent again stopped before round {last_round}, the last this site signed"
            )));
        }
        if round != last_round + 1 {
            return Err(Unsigned::Unusable(format!(
                "the record of round {round} came after round {last_round}'s; records come in order"
            )));
        }
        if fields.previous_record_sha256 != last_sha256 {
            return Err(Unsigned::Forked(self.forked(format!(
                "its record of round {round} follows a record that hashes to {}, but the record of round {last_round} this site countersigned hashes to {}",
                or_none(&fields.previous_record_sha256),
                or_none(&last_sha256)
            ))));
        }
        if let Some(signed) = &self.signed
            && signed.job_sha256 != fields.job_sha256
        {
            return Err(Unsigned::Forked(self.forked(format!(
                "its record of round {round} names job definition {}, the rounds this site countersigned name {}",
                fields.job_sha256, signed.job_sha256
            ))));
        }
        if let Some(received) = self.models.get(&round)
            && *received != fields.model_sha256
        {
            return Err(Unsigned::Forked(self.forked(format!(
                "its record of round {round} names model {}, but the model this site received after round {round} is {received}",
                fields.model_sha256
            ))));
        }
        let signature = self.sign(round, &sha256, signer);
        self.signed = Some(Signed {
            round,
            record_sha256: sha256,
            job_sha256: fields.job_sha256,
            model_sha256: fields.model_sha256,
        });
        self.save().map_err(Unsigned::Forked)?;
        Ok(vec![signature])
    }

    /// A record of a round the site signed already (`round` at most the last one's, whose hash
    /// is `last_sha256`), sent again: kept while the records sent again link up, and all of them
    /// signed once they reach the last one signed.
    fn signed_again(
        &mut self,
        round: u64,
        sha256: String,
        fields: &Fields,
        last_sha256: &str,
        signer: &dyn Signer,
    ) -> Result<Vec<Countersignature>, Unsigned> {
        if let Some((previous_round, previous_sha256)) = self.again.last()
            && (round != previous_round + 1 || fields.previous_record_sha256 != *previous_sha256)
        {
            let expected = previous_round + 1;
            self.again.clear();
            return Err(match round == expected {
                true => Unsigned::Forked(self.forked(format!(
                    "its record of round {round}, sent again, does not follow its record of round {expected} before it"
                ))),
                false => Unsigned::Unusable(format!(
                    "the record of round {round} came after round {expected}'s, both sent again; records come in order"
                )),
            });
        }
        let last_round = round_of(&self.signed);
        if round < last_round {
            self.again.push((round, sha256));
            return Ok(Vec::new());
        }
        if sha256 != last_sha256 {
            self.again.clear();
            return Err(Unsigned::Forked(self.forked(format!(
                "it sends a record of round {round} that hashes to {sha256}, but this site countersigned round {round} already with a record that hashes to {last_sha256}"
            ))));
        }
        self.again.push((round, sha256));
        let again = std::mem::take(&mut self.again);
        Ok(again
            .iter()
            .map(|(round, sha256)| self.sign(*round, sha256, signer))
            .collect())
    }

    /// The countersignature of the record of `round` whose SHA-256 is `sha256` (hex).
    fn sign(&self, round: u64, sha256: &str, signer: &dyn Signer) -> Countersignature {
        let hash = hex::decode(sha256).unwrap_or_default();
        let signature = signer.sign(&cairn_identity::countersigned_message(
            &self.job, round, &hash,
        ));
        Countersignature {
            round,
            record_sha256: hash,
            signature,
        }
    }

    /// Writes the last record signed into the file, beside the other jobs' (atomically: a
    /// temporary file renamed over it).
    fn save(&self) -> Result<(), Error> {
        let mut file = read(&self.path)?;
        match &self.signed {
            Some(signed) => file.jobs.insert(self.job.clone(), signed.clone()),
            None => file.jobs.remove(&self.job),
        };
        let failed = |reason: String| Error::HistoryFile {
            path: self.path.clone(),
            reason,
        };
        let bytes = serde_json::to_vec_pretty(&file).map_err(|e| failed(e.to_string()))?;
        let temp = self.path.with_extension("json.tmp");
        std::fs::write(&temp, bytes)
            .and_then(|()| std::fs::rename(&temp, &self.path))
            .map_err(|e| failed(format!("cannot be written: {e}")))
    }

    fn forked(&self, reason: String) -> Error {
        Error::HistoryForked {
            job: self.job.clone(),
            file: self.path.clone(),
            reason,
        }
    }
}

/// The history file at `path`; none yet is an empty one.
fn read(path: &Path) -> Result<HistoryFile, Error> {
    let failed = |reason: String| Error::HistoryFile {
        path: path.to_path_buf(),
        reason,
    };
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            failed(format!(
                "is not a history file ({e}); expected what this participant writes there"
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(HistoryFile::default()),
        Err(e) => Err(failed(format!("cannot be read: {e}"))),
    }
}

fn round_of(signed: &Option<Signed>) -> u64 {
    signed.as_ref().map_or(0, |s| s.round)
}

fn or_none(hash: &str) -> &str {
    match hash {
        "" => "(none)",
        hash => hash,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Signs with a fixed tag, for tests that check what is signed, not the key.
    struct Plain;

    impl Signer for Plain {
        fn sign(&self, message: &[u8]) -> Vec<u8> {
            message.to_vec()
        }
    }

    fn model(round: u64) -> Vec<u8> {
        vec![round as u8; 32]
    }

    /// The record of `round` after the one that hashes to `previous`.
    fn record(round: u64, previous: &str, job: &str) -> RoundRecord {
        let json = serde_json::json!({
            "round": round,
            "contributors": ["a"],
            "previous_record_sha256": previous,
            "job_sha256": job,
            "model_sha256": hex::encode(model(round)),
        });
        RoundRecord {
            round,
            record: serde_json::to_vec(&json).unwrap(),
        }
    }

    fn sha256(record: &RoundRecord) -> String {
        hex::encode(ring::digest::digest(&ring::digest::SHA256, &record.record).as_ref())
    }

    /// Rounds 1..=n of job `j1`, signed in a history at `path`; the records.
    fn signed(path: &Path, n: u64) -> Vec<RoundRecord> {
        let mut history = History::open(path, "job").unwrap();
        let mut records = Vec::new();
        let mut previous = String::new();
        for round in 1..=n {
            let record = record(round, &previous, "j1");
            history.received_model(round, &model(round)).unwrap();
            let mut signatures = history.countersign(&record, &Plain).unwrap();
            assert_eq!(signatures.len(), 1, "round {round} is signed once");
            let signature = signatures.remove(0);
            assert_eq!(
                signature.signature,
                cairn_identity::countersigned_message("job", round, &signature.record_sha256)
            );
            previous = sha256(&record);
            records.push(record);
        }
        records
    }

    fn forked(result: Result<Vec<Countersignature>, Unsigned>) -> String {
        match result {
            Err(Unsigned::Forked(e)) => e.to_string(),
            other => panic!("not refused as a fork: {other:?}"),
        }
    }

    #[test]
    fn a_site_signs_the_records_that_extend_its_history_and_remembers_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.json");
        let records = signed(&path, 3);
        let mut history = History::open(&path, "job").unwrap();
        let through = history.signed_through();
        assert_eq!(through.round, 3);
        assert_eq!(hex::encode(&through.record_sha256), sha256(&records[2]));
        // Records signed before, sent again from the first whose signature the coordinator
        // lacks: signed again once they lead to the last one signed.
        assert!(history.countersign(&records[1], &Plain).unwrap().is_empty());
        let again = history.countersign(&records[2], &Plain).unwrap();
        let rounds: Vec<u64> = again.iter().map(|s| s.round).collect();
        assert_eq!(rounds, [2, 3]);
        assert_eq!(hex::encode(&again[0].record_sha256), sha256(&records[1]));
        // Another job in the same file starts from nothing.
        assert_eq!(
            History::open(&path, "other")
                .unwrap()
                .signed_through()
                .round,
            0
        );
        let head = ChainHead {
            rounds: 3,
            record_sha256: through.record_sha256.clone(),
        };
        history.check_head(Some(&head)).unwrap();
    }

    #[test]
    fn a_rewritten_history_is_refused_and_the_refusal_says_where_it_forks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.json");
        let records = signed(&path, 2);
        let mut history = History::open(&path, "job").unwrap();
        // Round 2 rewritten.
        let rewritten = record(2, &sha256(&records[0]), "j1-edited");
        let err = forked(history.countersign(&rewritten, &Plain));
        assert!(
            err.contains("this site countersigned round 2 already with a record that hashes to"),
            "{err}"
        );
        // Round 3 linked to something else than the round 2 the site signed.
        let err = forked(history.countersign(&record(3, &sha256(&rewritten), "j1"), &Plain));
        assert!(
            err.contains("its record of round 3 follows a record that hashes to"),
            "{err}"
        );
        // Another job definition.
        let err = forked(history.countersign(&record(3, &sha256(&records[1]), "j2"), &Plain));
        assert!(err.contains("names job definition j2"), "{err}");
        // A head shorter than what the site signed, or another record at its round.
        let refused = |rounds| {
            let head = ChainHead {
                rounds,
                record_sha256: vec![0; 32],
            };
            history.check_head(Some(&head)).unwrap_err().to_string()
        };
        let err = refused(1);
        assert!(
            err.contains("its log ends at round 1, but this site countersigned round 2"),
            "{err}"
        );
        let err = refused(2);
        assert!(
            err.contains("its record of round 2 hashes to 0000"),
            "{err}"
        );
        // Nothing was kept from the refused records.
        assert_eq!(
            History::open(&path, "job").unwrap().signed_through().round,
            2
        );
    }

    #[test]
    fn records_sent_again_that_do_not_lead_to_the_last_one_signed_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.json");
        let records = signed(&path, 3);
        let mut history = History::open(&path, "job").unwrap();
        // Round 2 sent again as it was, then a round 3 other than the one the site signed.
        assert!(history.countersign(&records[1], &Plain).unwrap().is_empty());
        let other = record(3, &sha256(&records[1]), "j1-edited");
        let err = forked(history.countersign(&other, &Plain));
        assert!(
            err.contains("this site countersigned round 3 already"),
            "{err}"
        );
        // Round 1 sent again, then round 3: not in order, nothing signed.
        assert!(history.countersign(&records[0], &Plain).unwrap().is_empty());
        assert!(matches!(
            history.countersign(&records[2], &Plain),
            Err(Unsigned::Unusable(_))
        ));
    }

    #[test]
    fn a_record_naming_another_model_than_the_one_received_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.json");
        let records = signed(&path, 1);
        let mut history = History::open(&path, "job").unwrap();
        // The model for round 2's training (the model after round 1) is not round 1's.
        let err = history
            .received_model(1, &model(9))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("as the model after round 1, but the record of round 1 this site countersigned names"),
            "{err}"
        );
        // A record of round 2 naming another model than the one the site evaluated.
        history.received_model(2, &model(7)).unwrap();
        let err = forked(history.countersign(&record(2, &sha256(&records[0]), "j1"), &Plain));
        assert!(
            err.contains("but the model this site received after round 2 is"),
            "{err}"
        );
    }

    #[test]
    fn records_out_of_order_or_malformed_are_not_signed_and_not_taken_for_a_fork() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.json");
        let mut history = History::open(&path, "job").unwrap();
        for bad in [
            record(2, "", "j1"),
            RoundRecord {
                round: 1,
                record: b"not json".to_vec(),
            },
            RoundRecord {
                round: 2,
                ..record(1, "", "j1")
            },
        ] {
            assert!(matches!(
                history.countersign(&bad, &Plain),
                Err(Unsigned::Unusable(_))
            ));
        }
        assert!(!path.exists());
    }

    #[test]
    fn an_unreadable_history_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.json");
        std::fs::write(&path, "{").unwrap();
        let err = History::open(&path, "job").unwrap_err().to_string();
        assert!(
            err.contains("history.json") && err.contains("is not a history file"),
            "{err}"
        );
    }
}
