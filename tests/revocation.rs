//! Revocation against a real coordinator and real participants over loopback mTLS: a
//! participant whose certificate the federation CA revoked is refused by a coordinator that has
//! the revocation list, while the others' job goes on without it; and a site that has the list
//! refuses to share keys with a revoked neighbour even when the coordinator lets it in.

use cairn_coordinator::round::Phase;
use cairn_participant::client::run_many;
use cairn_tests::{Federation, digits_job, digits_job_with_deadline, finish};
use std::time::Duration;

const IDS: [&str; 4] = ["alpha", "bravo", "charlie", "mallory"];
const HONEST: [&str; 3] = ["alpha", "bravo", "charlie"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_participant_is_refused_and_the_job_goes_on_without_it() {
    let federation = Federation::provision(&IDS);
    let serial = {
        let pem = std::fs::read_to_string(federation.kit_dir("mallory").join("cert.pem"))
            .expect("mallory's certificate");
        let der = cairn_identity::certificate_der(&pem, "cert.pem").expect("certificate");
        cairn_identity::serial_of(&der).expect("serial")
    };
    let crl = federation.revoke("mallory");
    let tls = federation
        .server_tls()
        .with_revocations(&crl)
        .expect("the CA's own list is accepted");
    // The job lists mallory: only the revocation keeps it out.
    let coordinator = federation
        .start_with_tls(digits_job(&IDS, 1, 3), Duration::from_secs(2), tls)
        .await;
    let clients = federation.clients(&coordinator, &IDS);
    let (results, report) = tokio::join!(run_many(clients), finish(coordinator));
    let mut results = results.into_iter();
    for id in HONEST {
        let summary = results.next().expect("a result per participant");
        assert_eq!(summary.expect(id).rounds_trained, 1, "{id}");
    }
    let refusal = results
        .next()
        .expect("mallory's result")
        .expect_err("mallory is refused")
        .to_string();
    assert!(
        refusal.contains(&format!(
            "certificate of \"mallory\" (serial {serial}) is revoked"
        )),
        "{refusal}"
    );
    let report = report.expect("report");
    assert!(report.succeeded, "{}", report.reason);
    let outcome = &report.rounds[0].outcome;
    assert_eq!(outcome.contributors, HONEST);
    assert!(!outcome.selected.iter().any(|id| id == "mallory"));
}

#[tokio::test]
async fn a_list_signed_by_another_ca_is_refused_at_start() {
    let (ours, theirs) = (Federation::provision(&IDS), Federation::provision(&IDS));
    let foreign = theirs.revoke("mallory");
    let err = ours
        .server_tls()
        .with_revocations(&foreign)
        .map(|_| ())
        .expect_err("another CA's list")
        .to_string();
    assert!(
        err.starts_with(&format!("revocation list {}", foreign.display()))
            && err.contains("is not signed by the federation CA"),
        "{err}"
    );
    let kit = cairn_participant::client::Kit::load(&ours.kit_dir("alpha")).expect("kit");
    let err = kit
        .revocations(&foreign)
        .expect_err("another CA's list")
        .to_string();
    assert!(
        err.starts_with(&format!("revocation list {}", foreign.display())),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_with_the_list_refuses_to_share_keys_with_a_revoked_neighbour() {
    let federation = Federation::provision(&IDS);
    let crl = federation.revoke("mallory");
    // A coordinator without the list (not yet deployed there, or a host that lets mallory in).
    // Alpha sends no shares, so the round waits out the phase deadline before going on without it.
    let coordinator = federation
        .start(digits_job_with_deadline(&IDS, 2, 3, 10))
        .await;
    let mut clients = federation.clients(&coordinator, &IDS);
    let (alpha, _) = &mut clients[0];
    alpha.policy.revocations = Some(alpha.kit.revocations(&crl).expect("the CA's own list"));
    let (results, report) = tokio::join!(run_many(clients), finish(coordinator));
    for (id, result) in IDS.iter().zip(results) {
        result.unwrap_or_else(|e| panic!("{id} finishes: {e}"));
    }
    let report = report.expect("report");
    assert!(report.succeeded, "{}", report.reason);
    // Every round gives each of the four all three others as neighbours (the complete graph),
    // so alpha, given mallory's advertisement, sends no shares in any round mallory is in.
    let together: Vec<_> = report
        .rounds
        .iter()
        .map(|record| &record.outcome)
        .filter(|outcome| {
            ["alpha", "mallory"]
                .iter()
                .all(|id| outcome.selected.iter().any(|s| s == id))
        })
        .collect();
    assert!(
        !together.is_empty(),
        "alpha and mallory were never selected together"
    );
    for outcome in together {
        assert!(
            !outcome.contributors.iter().any(|id| id == "alpha"),
            "{outcome:?}"
        );
        let dropout = outcome
            .dropouts
            .iter()
            .find(|dropout| dropout.id == "alpha")
            .unwrap_or_else(|| panic!("alpha is not among the dropouts: {outcome:?}"));
        assert_eq!(dropout.phase, Phase::ShareKeys, "{dropout:?}");
    }
}
