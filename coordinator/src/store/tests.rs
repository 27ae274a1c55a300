//! Unit tests of the state directory: commit, resume, and every way it can be wrong.

use super::*;
use crate::model::testing::{tiny_layout, values};

fn job() -> JobSpec {
    JobSpec::parse(
        "name: t\nmodel: {initial: /models/t.safetensors}\nrounds: 5\nmin_participants: 1\n\
         participants: [a]\nsecure_aggregation: {enabled: false}\n",
    )
    .unwrap()
}

fn mlp() -> Vec<TensorShape> {
    tiny_layout()
}

/// The model after `round` in these tests.
fn initialize(layout: &[TensorShape], round: u64) -> Vec<f32> {
    values(crate::model::n_values(layout), round as f32)
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
            eval_metrics: [("accuracy".to_string(), 0.9), ("loss".to_string(), 0.4)].into(),
            epsilon: None,
        },
        duration_s: 1.5,
        bytes_in: 100,
        bytes_out: 200,
        committed_at: "2026-01-01T00:00:00Z".into(),
        checkpoint_sha256: String::new(),
        optimizer_state_sha256: String::new(),
        phase_durations: Vec::new(),
        previous_record_sha256: String::new(),
        job_sha256: String::new(),
        model_before_sha256: String::new(),
        model_sha256: String::new(),
    }
}

/// The state of an optimiser that keeps none (FedAvg).
const NO_STATE: OptimizerState<'static> = OptimizerState {
    layout: &[],
    values: &[],
};

fn committed(dir: &Path, rounds: u64) -> Store {
    let (store, resume) = Store::open(dir, &job(), &mlp(), &[], 2).unwrap();
    assert!(resume.rounds.is_empty() && resume.global.is_none());
    for round in 1..=rounds {
        store
            .commit(&record(round), &mlp(), &initialize(&mlp(), round), NO_STATE)
            .unwrap();
    }
    store
}

fn reopen_error(dir: &Path) -> String {
    Store::open(dir, &job(), &mlp(), &[], 2)
        .unwrap_err()
        .to_string()
}

#[test]
fn keeping_no_checkpoint_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let err = Store::open(dir.path(), &job(), &mlp(), &[], 0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("--keep-checkpoints"), "{err}");
}

#[test]
fn resume_returns_every_round_and_the_last_model() {
    let dir = tempfile::tempdir().unwrap();
    let store = committed(dir.path(), 4);
    assert!(
        !store.checkpoint_path(2).exists(),
        "only the last 2 checkpoints are kept"
    );
    let (_, resume) = Store::open(dir.path(), &job(), &mlp(), &[], 2).unwrap();
    assert_eq!(
        resume
            .rounds
            .iter()
            .map(|r| r.outcome.round)
            .collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    assert_eq!(resume.global.unwrap(), initialize(&mlp(), 4));
    assert_eq!(resume.rounds[3].checkpoint_sha256.len(), 64);
}

#[test]
fn a_resumed_job_keeps_the_time_it_first_started() {
    let dir = tempfile::tempdir().unwrap();
    let (_, first) = Store::open(dir.path(), &job(), &mlp(), &[], 2).unwrap();
    let started = first
        .started_at
        .expect("recorded when the directory is made");
    assert!(started.ends_with('Z') && started.contains('T'), "{started}");
    let (_, resumed) = Store::open(dir.path(), &job(), &mlp(), &[], 2).unwrap();
    assert_eq!(resumed.started_at, Some(started));
    // A directory made before the start was recorded resumes without one.
    let state = dir.path().join("state.json");
    let mut header: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    header.as_object_mut().unwrap().remove("started_at");
    std::fs::write(&state, serde_json::to_vec(&header).unwrap()).unwrap();
    let (_, old) = Store::open(dir.path(), &job(), &mlp(), &[], 2).unwrap();
    assert_eq!(old.started_at, None);
}

#[test]
fn another_job_or_schema_version_is_refused_and_nothing_is_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    committed(dir.path(), 1);
    let before = std::fs::read(dir.path().join("rounds.jsonl")).unwrap();
    let mut other = job();
    other.name = "other".into();
    let err = Store::open(dir.path(), &other, &mlp(), &[], 2)
        .unwrap_err()
        .to_string();
    assert!(err.contains("belongs to job \"t\", not \"other\""), "{err}");
    let mut changed = job();
    changed.rounds = 9;
    let err = Store::open(dir.path(), &changed, &mlp(), &[], 2)
        .unwrap_err()
        .to_string();
    assert!(err.contains("different definition"), "{err}");
    let header = dir.path().join("state.json");
    let text = std::fs::read_to_string(&header)
        .unwrap()
        .replace("\"schema_version\": 1", "\"schema_version\": 7");
    std::fs::write(&header, text).unwrap();
    assert!(
        reopen_error(dir.path()).contains("schema version 7, this coordinator reads version 1")
    );
    assert_eq!(
        std::fs::read(dir.path().join("rounds.jsonl")).unwrap(),
        before
    );
}

#[test]
fn a_corrupt_or_truncated_checkpoint_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let store = committed(dir.path(), 2);
    let path = store.checkpoint_path(2);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = reopen_error(dir.path());
    assert!(
        err.contains("checkpoint of committed round 2") && err.contains("is corrupt"),
        "{err}"
    );
    let mut flipped = bytes.clone();
    flipped[bytes.len() - 1] ^= 1;
    std::fs::write(&path, flipped).unwrap();
    assert!(reopen_error(dir.path()).contains("is corrupt"));
    std::fs::remove_file(&path).unwrap();
    assert!(reopen_error(dir.path()).contains("cannot be read"));
}

#[test]
fn a_corrupt_record_database_is_detected_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    committed(dir.path(), 3);
    let path = dir.path().join("rounds.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    std::fs::write(&path, format!("{}\nnot json\n{}\n", lines[0], lines[2])).unwrap();
    assert!(reopen_error(dir.path()).contains("rounds.jsonl line 2 is corrupt"));
    std::fs::write(&path, format!("{}\n{}\n", lines[0], lines[2])).unwrap();
    assert!(reopen_error(dir.path()).contains("line 2 holds round 3, expected round 2"));
    std::fs::write(dir.path().join("state.json"), "{ not json").unwrap();
    assert!(reopen_error(dir.path()).contains("state.json is corrupt"));
}

#[test]
fn a_record_cut_short_by_a_crash_is_dropped_and_its_round_reruns() {
    let dir = tempfile::tempdir().unwrap();
    committed(dir.path(), 2);
    let path = dir.path().join("rounds.jsonl");
    let mut text = std::fs::read(&path).unwrap();
    let full = text.len();
    text.extend_from_slice(b"{\"round\": 3, \"attem");
    std::fs::write(&path, &text).unwrap();
    let (_, resume) = Store::open(dir.path(), &job(), &mlp(), &[], 2).unwrap();
    assert_eq!(resume.rounds.len(), 2);
    assert_eq!(
        std::fs::read(&path).unwrap().len(),
        full,
        "the torn line is removed"
    );
}

#[test]
fn a_checkpoint_of_another_layout_than_the_model_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    committed(dir.path(), 1);
    let wider = vec![
        TensorShape::new("fc.bias", &[3]),
        TensorShape::new("fc.weight", &[3, 5]),
    ];
    let err = Store::open(dir.path(), &job(), &wider, &[], 2).unwrap_err();
    assert!(
        matches!(err, Error::CheckpointLayout { round: 1, .. }),
        "{err:?}"
    );
    let err = err.to_string();
    assert!(
        err.contains("/models/t.safetensors")
            && err.contains("the file changed")
            && err.contains("fc.weight"),
        "{err}"
    );
}

#[test]
fn a_record_written_before_metrics_were_named_still_loads() {
    let dir = tempfile::tempdir().unwrap();
    committed(dir.path(), 1);
    let path = dir.path().join("rounds.jsonl");
    let mut line: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&path).unwrap().trim()).unwrap();
    let fields = line.as_object_mut().unwrap();
    fields.remove("eval_metrics").unwrap();
    fields.insert("eval_loss".into(), 0.4.into());
    fields.insert("eval_accuracy".into(), 0.9.into());
    std::fs::write(&path, format!("{line}\n")).unwrap();
    let (_, resume) = Store::open(dir.path(), &job(), &mlp(), &[], 2).unwrap();
    assert_eq!(resume.rounds[0].outcome.round, 1);
    assert!(resume.rounds[0].outcome.eval_metrics.is_empty());
}

/// Committed rounds and the final model of [`committed`], audited.
fn audited(dir: &Path, rounds: u64) -> Store {
    let store = committed(dir, rounds);
    store
        .write_final_model(&mlp(), &initialize(&mlp(), rounds), Vec::new())
        .unwrap();
    let audit = audit::audit(dir, None).unwrap();
    assert_eq!(audit.rounds.len() as u64, rounds);
    assert_eq!(audit.final_model, audit::Kept::Verified);
    store
}

fn audit_error(dir: &Path) -> String {
    audit::audit(dir, None).unwrap_err().to_string()
}

/// Rewrites `rounds.jsonl` with `change` applied to its lines.
fn rewrite_rounds(dir: &Path, change: impl FnOnce(&mut Vec<String>)) {
    let path = dir.join("rounds.jsonl");
    let mut lines: Vec<String> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    change(&mut lines);
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
}

#[test]
fn the_records_form_a_chain_that_a_restart_continues() {
    let dir = tempfile::tempdir().unwrap();
    committed(dir.path(), 2);
    let (store, _) = Store::open(dir.path(), &job(), &mlp(), &[], 2).unwrap();
    store
        .commit(&record(3), &mlp(), &initialize(&mlp(), 3), NO_STATE)
        .unwrap();
    store
        .write_final_model(&mlp(), &initialize(&mlp(), 3), Vec::new())
        .unwrap();
    let audit = audit::audit(dir.path(), None).unwrap();
    let records: Vec<&RoundRecord> = audit.rounds.iter().map(|r| &r.record).collect();
    assert_eq!(records[0].previous_record_sha256, "");
    assert_eq!(records[2].model_before_sha256, records[1].checkpoint_sha256);
    assert!(records.iter().all(|r| r.job_sha256 == audit.job_sha256));
    let kept: Vec<audit::Kept> = audit.rounds.iter().map(|r| r.checkpoint).collect();
    assert_eq!(
        kept,
        [
            audit::Kept::Absent,
            audit::Kept::Verified,
            audit::Kept::Verified
        ]
    );
}

#[test]
fn the_audit_names_an_edited_record() {
    let dir = tempfile::tempdir().unwrap();
    audited(dir.path(), 3);
    rewrite_rounds(dir.path(), |lines| {
        lines[1] = lines[1].replace("\"train_examples\":10", "\"train_examples\":99");
    });
    let err = audit_error(dir.path());
    assert!(
        err.contains("round 3 follows a record that hashes to")
            && err.contains("round 2 was edited"),
        "{err}"
    );
}

#[test]
fn the_audit_names_an_edited_last_record_by_the_provenance_file() {
    let dir = tempfile::tempdir().unwrap();
    audited(dir.path(), 3);
    rewrite_rounds(dir.path(), |lines| {
        lines[2] = lines[2].replace("\"contributors\":[\"a\"]", "\"contributors\":[\"z\"]");
    });
    let err = audit_error(dir.path());
    assert!(
        err.contains("model.provenance.json does not describe this directory"),
        "{err}"
    );
}

#[test]
fn the_audit_names_a_dropped_or_reordered_round() {
    let dir = tempfile::tempdir().unwrap();
    audited(dir.path(), 3);
    rewrite_rounds(dir.path(), |lines| lines.swap(1, 2));
    let err = audit_error(dir.path());
    assert!(
        err.contains("line 2 holds round 3, expected round 2"),
        "{err}"
    );
    rewrite_rounds(dir.path(), |lines| {
        lines.swap(1, 2);
        lines.remove(1);
    });
    let err = audit_error(dir.path());
    assert!(
        err.contains("line 2 holds round 3, expected round 2"),
        "{err}"
    );
    // Dropped and renumbered: the link to the missing record is broken.
    rewrite_rounds(dir.path(), |lines| {
        lines[1] = lines[1].replace("\"round\":3", "\"round\":2");
    });
    let err = audit_error(dir.path());
    assert!(
        err.contains("round 2 follows a record that hashes to"),
        "{err}"
    );
}

#[test]
fn the_audit_names_a_swapped_checkpoint_or_final_model() {
    let dir = tempfile::tempdir().unwrap();
    let store = audited(dir.path(), 3);
    let (second, third) = (store.checkpoint_path(2), store.checkpoint_path(3));
    let kept = std::fs::read(&second).unwrap();
    std::fs::copy(&third, &second).unwrap();
    let err = audit_error(dir.path());
    assert!(
        err.contains("round 2's checkpoint") && err.contains("the file was replaced or altered"),
        "{err}"
    );
    std::fs::write(&second, kept).unwrap();
    std::fs::copy(&second, store.final_model_path()).unwrap();
    let err = audit_error(dir.path());
    assert!(
        err.contains("model.provenance.json does not describe"),
        "{err}"
    );
}

#[test]
fn the_audit_names_a_record_of_another_job_definition() {
    let dir = tempfile::tempdir().unwrap();
    audited(dir.path(), 2);
    let other = tempfile::tempdir().unwrap();
    let mut changed = job();
    changed.rounds = 9;
    let (store, _) = Store::open(other.path(), &changed, &mlp(), &[], 2).unwrap();
    store
        .commit(&record(1), &mlp(), &initialize(&mlp(), 1), NO_STATE)
        .unwrap();
    let foreign = std::fs::read_to_string(other.path().join("rounds.jsonl")).unwrap();
    rewrite_rounds(dir.path(), |lines| {
        lines[0] = foreign.trim_end().to_string()
    });
    let err = audit_error(dir.path());
    assert!(
        err.contains("round 1 was recorded under job definition"),
        "{err}"
    );
}

/// A federation CA and the kits of participants `a` and `b`: (CA PEM, [(id, cert DER, key)]).
fn federation() -> (
    String,
    Vec<(String, Vec<u8>, ring::signature::EcdsaKeyPair)>,
) {
    use rustls::pki_types::pem::PemObject;
    let ca = cairn_identity::Authority::generate("audit", 1).unwrap();
    let kits = ["a", "b"]
        .iter()
        .map(|id| {
            let issued = ca.issue_participant(id, "org", 1).unwrap();
            let der = cairn_identity::certificate_der(&issued.cert_pem, "cert").unwrap();
            let key =
                rustls::pki_types::PrivatePkcs8KeyDer::from_pem_slice(issued.key_pem.as_bytes())
                    .unwrap();
            let key = ring::signature::EcdsaKeyPair::from_pkcs8(
                &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
                key.secret_pkcs8_der(),
                &ring::rand::SystemRandom::new(),
            )
            .unwrap();
            (id.to_string(), der, key)
        })
        .collect();
    (ca.cert_pem().to_string(), kits)
}

/// `kit`'s countersignature of round `round` of `job` whose record hashes to `record` (hex).
fn countersign(
    job: &str,
    round: u64,
    record: &str,
    kit: &(String, Vec<u8>, ring::signature::EcdsaKeyPair),
) -> signatures::Countersignature {
    let message = cairn_identity::countersigned_message(job, round, &hex::decode(record).unwrap());
    let signature = kit
        .2
        .sign(&ring::rand::SystemRandom::new(), &message)
        .unwrap();
    signatures::Countersignature::new(round, &kit.0, record, &kit.1, signature.as_ref())
}

/// Three rounds countersigned by both kits, audited with the CA; the CA and the kits.
fn countersigned(
    dir: &Path,
) -> (
    String,
    Vec<(String, Vec<u8>, ring::signature::EcdsaKeyPair)>,
) {
    let (ca, kits) = federation();
    let store = committed(dir, 3);
    let lines = store.read_lines().unwrap();
    let kept = signatures::Countersignatures::open(dir).unwrap();
    for (line, record) in &lines {
        for kit in &kits {
            let hash = sha256_hex(line.as_bytes());
            kept.add(countersign("t", record.outcome.round, &hash, kit))
                .unwrap();
        }
    }
    store
        .write_final_model(&mlp(), &initialize(&mlp(), 3), kept.of_round(3))
        .unwrap();
    let audit = audit::audit(dir, Some(&ca)).unwrap();
    assert!(audit.signatures_verified);
    assert!(audit.rounds.iter().all(|r| r.signers == ["a", "b"]));
    (ca, kits)
}

/// Rewrites `signatures.jsonl` with `change` applied to its entries.
fn rewrite_signatures(dir: &Path, change: impl FnOnce(&mut Vec<signatures::Countersignature>)) {
    let mut kept = signatures::read(dir, false).unwrap();
    change(&mut kept);
    let text: String = kept
        .iter()
        .map(|s| serde_json::to_string(s).unwrap() + "\n")
        .collect();
    std::fs::write(dir.join(signatures::SIGNATURES_FILE), text).unwrap();
}

#[test]
fn the_audit_checks_every_countersignature_against_the_federation_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, _) = countersigned(dir.path());
    let provenance: Provenance =
        serde_json::from_slice(&std::fs::read(dir.path().join(PROVENANCE_FILE)).unwrap()).unwrap();
    let signers: Vec<&str> = provenance
        .signatures
        .iter()
        .map(|s| s.participant.as_str())
        .collect();
    assert_eq!(
        signers,
        ["a", "b"],
        "the provenance carries the head's signatures"
    );
    // Another federation's CA: no certificate chains to it.
    let (other_ca, _) = federation();
    let err = audit::audit(dir.path(), Some(&other_ca))
        .unwrap_err()
        .to_string();
    assert!(err.contains("is not from the federation CA"), "{err}");
    assert!(audit::audit(dir.path(), Some(&ca)).is_ok());
}

#[test]
fn the_audit_names_a_forged_countersignature() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, kits) = countersigned(dir.path());
    // b's signature of round 2 made with a's key, under b's certificate.
    rewrite_signatures(dir.path(), |kept| {
        let forged = kept
            .iter()
            .position(|s| s.round == 2 && s.participant == "b")
            .unwrap();
        let by_a = countersign("t", 2, &kept[forged].record_sha256, &kits[0]);
        kept[forged].signature = by_a.signature;
    });
    let err = audit::audit(dir.path(), Some(&ca)).unwrap_err().to_string();
    assert!(
        err.contains("b's countersignature of round 2 does not verify: it is forged"),
        "{err}"
    );
    // Without the CA the forgery goes unseen, and the audit says the signatures were not verified.
    assert!(!audit::audit(dir.path(), None).unwrap().signatures_verified);
}

#[test]
fn the_audit_names_a_countersignature_replayed_from_another_job() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, kits) = countersigned(dir.path());
    // a's signature over the same record hash, made for a job of another name.
    rewrite_signatures(dir.path(), |kept| {
        let replayed = kept
            .iter()
            .position(|s| s.round == 1 && s.participant == "a")
            .unwrap();
        kept[replayed] = countersign("other-job", 1, &kept[replayed].record_sha256, &kits[0]);
    });
    let err = audit::audit(dir.path(), Some(&ca)).unwrap_err().to_string();
    assert!(
        err.contains("a's countersignature of round 1 does not verify")
            && err.contains("made for another job or record"),
        "{err}"
    );
}

#[test]
fn the_audit_names_a_countersigned_record_that_was_edited_afterwards() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, _) = countersigned(dir.path());
    // The host rewrites round 1 and the whole chain after it consistently: the links hold, the
    // participants' signatures do not.
    let store = Store::of(dir.path(), &job(), 2).unwrap();
    let lines = store.read_lines().unwrap();
    let mut previous = String::new();
    let mut rewritten = Vec::new();
    for (index, (_, record)) in lines.into_iter().enumerate() {
        let mut record = record;
        if index == 0 {
            record.outcome.contributors = vec!["z".into()];
        }
        record.previous_record_sha256 = previous;
        let line = serde_json::to_string(&record).unwrap();
        previous = sha256_hex(line.as_bytes());
        rewritten.push(line);
    }
    std::fs::write(dir.path().join("rounds.jsonl"), rewritten.join("\n") + "\n").unwrap();
    let err = audit::audit(dir.path(), Some(&ca)).unwrap_err().to_string();
    assert!(
        err.contains("countersigned a record of round 1 that hashes to")
            && err.contains("the record was changed after it was signed"),
        "{err}"
    );
}
