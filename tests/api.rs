//! The monitoring API against a real coordinator and real participants over loopback mTLS: four
//! participants train two rounds with secure aggregation and differential privacy, one is cut
//! off in round 2, and what the API says (REST, live stream, metrics) must match what the
//! federation did. Then the access rules and the bad requests. Then `promtool` checks the metrics, schemathesis checks the live
//! server against the OpenAPI document, and headless Chromium renders the dashboard; `.ci/run`
//! installs them, and in CI a missing one fails the test (elsewhere its check is skipped).

use cairn_coordinator::Coordinator;
use cairn_coordinator::api::client::{ApiClient, Shown};
use cairn_coordinator::api::{ApiEvent, JobState, JobView, ParticipantView, RoundPage};
use cairn_coordinator::config::PrivacySpec;
use cairn_coordinator::model::load_safetensors;
use cairn_coordinator::round::Phase;
use cairn_coordinator::store::RoundRecord;
use cairn_coordinator::store::signatures::Countersignature;
use cairn_participant::client::{Filter, run_many};
use cairn_tests::{ADMIN_TOKEN, CutIn, Federation, VIEWER_TOKEN, digits_job, digits_task, finish};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

const IDS: [&str; 4] = ["alpha", "bravo", "charlie", "delta"];

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    fn of(coordinator: &Coordinator) -> Api {
        Api::at(format!(
            "http://{}",
            coordinator.api_addr().expect("API served")
        ))
    }

    fn at(base: String) -> Api {
        Api {
            base,
            http: reqwest::Client::new(),
        }
    }

    async fn get(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut request = self.http.get(format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("request")
    }

    /// A viewer's `GET path` as text.
    async fn text(&self, path: &str) -> String {
        let response = self.get(path, Some(VIEWER_TOKEN)).await;
        assert_eq!(response.status(), 200, "{path}");
        response.text().await.expect("text body")
    }

    async fn json<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        let response = self.get(path, Some(VIEWER_TOKEN)).await;
        assert_eq!(response.status(), 200, "{path}");
        response.json().await.expect("JSON body")
    }

    /// The live stream's changes after `last_id` (`Last-Event-ID`) as (id, event name), read
    /// until the stream ends with the job's end.
    async fn changes_after(&self, last_id: &str) -> Vec<(String, String)> {
        let response = self
            .http
            .get(format!("{}/api/v1/events", self.base))
            .bearer_auth(VIEWER_TOKEN)
            .header("last-event-id", last_id)
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 200);
        let body = tokio::time::timeout(Duration::from_secs(60), response.text())
            .await
            .expect("the stream ends with the job's end")
            .expect("the stream");
        body.split("\n\n")
            .filter_map(|event| {
                let field = |name: &str| {
                    event
                        .lines()
                        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                        .map(|value| value.trim().to_string())
                };
                Some((field("id")?, field("event")?))
            })
            .collect()
    }

    /// Status and error message of a request expected to fail.
    async fn refused(&self, path: &str, token: Option<&str>) -> (u16, String) {
        let response = self.get(path, token).await;
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().await.expect("JSON error body");
        (
            status,
            body["error"].as_str().unwrap_or_default().to_string(),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_reports_what_the_federation_did() {
    let federation = Federation::provision(&IDS);
    let mut job = digits_job(&IDS, 2, 3);
    // Under differential privacy, so that epsilon shows wherever the rounds do. Little noise:
    // four sites cannot hide much, and the test is of what the operator sees.
    job.privacy = Some(PrivacySpec {
        epsilon_budget: 10_000.0,
        delta: 1e-5,
        noise_multiplier: 0.05,
        clip_norm: 1.0,
        min_contributors: None,
    });
    let coordinator = federation.start(job.clone()).await;
    let api = Api::of(&coordinator);
    // Health needs no token; readiness holds while the job runs.
    assert_eq!(api.get("/healthz", None).await.status(), 200);
    assert_eq!(api.get("/readyz", None).await.status(), 200);
    let waiting: JobView = api.json("/api/v1/job").await;
    assert_eq!(waiting.state, JobState::Waiting);
    assert_eq!(waiting.current_round, Some(1));
    assert_eq!(waiting.chain_head_sha256, "", "no round, no chain yet");

    // Subscribed before anything happens: every change from here on is delivered.
    let live = ApiClient::new(&api.base, VIEWER_TOKEN)
        .subscribe()
        .await
        .expect("live stream");
    let stream = tokio::spawn(async move {
        let mut events = Vec::new();
        live.follow(|event| events.push(event))
            .await
            .expect("live stream");
        events
    });
    // `cairn-coordinator status --watch` follows the same stream. It subscribes before it
    // prints the status, so once the status is printed it misses nothing.
    let watcher = ApiClient::new(&api.base, VIEWER_TOKEN);
    let (printed, status_printed) = tokio::sync::oneshot::channel();
    let watched = tokio::spawn(async move {
        let mut lines = Vec::new();
        let mut printed = Some(printed);
        watcher
            .watch(Shown::All, |line| {
                lines.push(line.to_string());
                if let Some(printed) = printed.take() {
                    let _ = printed.send(());
                }
            })
            .await
            .expect("watch");
        lines
    });
    tokio::time::timeout(Duration::from_secs(30), status_printed)
        .await
        .expect("the watcher prints the status within 30 s")
        .expect("the watcher printed the status");
    let cut: Arc<dyn Filter> = CutIn::round_2(Phase::AdvertiseKeys);
    let clients = IDS
        .iter()
        .enumerate()
        .map(|(index, id)| {
            let mut options = federation.client(&coordinator, id);
            if *id == "delta" {
                options.filter = Some(cut.clone());
                options.max_attempts = Some(3);
            }
            (options, digits_task(index, IDS.len()))
        })
        .collect();
    let (results, report) = tokio::join!(run_many(clients), finish(coordinator));
    for (id, result) in IDS.iter().zip(results) {
        if *id != "delta" {
            result.expect("participant finishes");
        }
    }
    let report = report.expect("report");
    assert!(report.succeeded, "{}", report.reason);
    let events = stream.await.expect("stream task");
    let watched = watched.await.expect("watch task");
    assert!(watched[0].contains("0/2 rounds committed"), "{watched:?}");
    for expected in [
        "round 2 attempt 1: unmask",
        // The evaluation's secure aggregation shows as the attempt's one evaluate phase.
        "round 2 attempt 1: evaluate",
        "round 2 committed: 3/4 participants",
        "job finished",
    ] {
        assert!(
            watched.iter().any(|l| l.contains(expected)),
            "{expected} not in {watched:?}"
        );
    }

    // The job.
    let job_view: JobView = api.json("/api/v1/job").await;
    assert_eq!(job_view.state, JobState::Finished);
    assert_eq!(job_view.rounds_completed, 2);
    assert_eq!(job_view.current_round, None);
    assert_eq!(job_view.spec, job);
    assert!(job_view.finished_at.is_some());
    assert_eq!(api.get("/readyz", None).await.status(), 503);
    // The chain head is the one the audit of the state directory finds, and every
    // countersignature verifies against the federation CA.
    let ca = std::fs::read_to_string(federation.kit_dir("alpha").join("ca.pem")).expect("CA");
    let audit =
        cairn_coordinator::store::audit::audit(&federation.dir.path().join("state"), Some(&ca))
            .expect("the state directory audits clean");
    assert_eq!(job_view.chain_head_sha256, audit.chain_head_sha256);
    assert_eq!(audit.chain_head_sha256.len(), 64);

    // The rounds, as recorded, with delta dropped in round 2's first phase; every contributor
    // countersigned the record of its round, as the audit found.
    let page: RoundPage = api.json("/api/v1/rounds").await;
    assert_eq!(page.total, 2);
    let records: Vec<RoundRecord> = page.rounds.iter().map(|r| r.record.clone()).collect();
    assert_eq!(records, report.rounds);
    for (view, audited) in page.rounds.iter().zip(&audit.rounds) {
        assert_eq!(view.countersigned_by, audited.signers);
        for id in &view.record.outcome.contributors {
            assert!(
                view.countersigned_by.contains(id),
                "{id} contributed to round {} but did not countersign it: {:?}",
                view.record.outcome.round,
                view.countersigned_by
            );
        }
    }
    // Each round's countersignatures, with the certificates they verify with.
    let signatures: Vec<Countersignature> = api.json("/api/v1/rounds/2/countersignatures").await;
    let signers: Vec<&str> = signatures.iter().map(|s| s.participant.as_str()).collect();
    assert_eq!(signers, page.rounds[1].countersigned_by);
    assert!(
        signatures
            .iter()
            .all(|s| s.record_sha256 == audit.chain_head_sha256)
    );
    assert_eq!(
        api.get("/api/v1/rounds/3/countersignatures", Some(VIEWER_TOKEN))
            .await
            .status(),
        404
    );
    let provenance: serde_json::Value = serde_json::from_slice(
        &std::fs::read(federation.dir.path().join("state/model.provenance.json"))
            .expect("provenance"),
    )
    .expect("JSON");
    let signed: Vec<&str> = provenance["signatures"]
        .as_array()
        .expect("signatures")
        .iter()
        .map(|s| s["participant"].as_str().expect("participant"))
        .collect();
    // Those that had signed the last record when the final model was written: every contributor
    // (delta may have come back in time, or not).
    for id in &page.rounds[1].record.outcome.contributors {
        assert!(
            signed.contains(&id.as_str()),
            "{id} not in the provenance's {signed:?}"
        );
    }
    assert!(
        signed
            .iter()
            .all(|id| page.rounds[1].countersigned_by.iter().any(|s| s == id))
    );
    let second: RoundRecord = api.json("/api/v1/rounds/2").await;
    assert_eq!(second.outcome.contributors, ["alpha", "bravo", "charlie"]);
    assert!(
        second
            .outcome
            .dropouts
            .iter()
            .any(|d| d.id == "delta" && d.phase == Phase::AdvertiseKeys),
        "{:?}",
        second.outcome.dropouts
    );
    let phases: Vec<Phase> = second.phase_durations.iter().map(|p| p.phase).collect();
    // Every phase but `train`: a secure round waits for its participants' training in its
    // first phase, advertise_keys.
    assert_eq!(phases, Phase::ALL[1..]);
    let page: RoundPage = api.json("/api/v1/rounds?offset=1&limit=1").await;
    assert_eq!((page.total, page.rounds.len()), (2, 1));
    assert_eq!(page.rounds[0].record.outcome.round, 2);

    // The participants.
    let participants: Vec<ParticipantView> = api.json("/api/v1/participants").await;
    assert_eq!(participants.len(), 4);
    for p in &participants {
        // Round 1 starts as soon as three are connected, so count from the records.
        let expected = report
            .rounds
            .iter()
            .filter(|r| r.outcome.contributors.contains(&p.id))
            .count() as u64;
        assert_eq!(p.rounds_contributed, expected, "{p:?}");
        assert!(!p.organisation.is_empty(), "{p:?}");
        assert!(p.last_seen.is_some());
        assert!(
            p.client_version
                .as_deref()
                .is_some_and(|v| v.starts_with("cairn-participant")),
            "{p:?}"
        );
    }

    // The live stream saw every phase and both commits, in order.
    let kinds: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            ApiEvent::PhaseStarted { round, phase, .. } => {
                Some(format!("{round}:{}", phase.name()))
            }
            ApiEvent::RoundCommitted { record } => Some(format!("{}:commit", record.outcome.round)),
            ApiEvent::JobFinished { .. } => Some("finished".into()),
            _ => None,
        })
        .collect();
    let expected: Vec<String> = [1, 2]
        .iter()
        .flat_map(|r| {
            [
                "advertise_keys",
                "draw_graph",
                "share_keys",
                "collect_masked",
                "consistency_check",
                "unmask",
                "evaluate",
                "commit",
            ]
            .iter()
            .map(move |p| format!("{r}:{p}"))
        })
        .chain(["finished".to_string()])
        .collect();
    assert_eq!(kinds, expected);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, ApiEvent::ParticipantDisconnected { id, .. } if id == "delta"))
    );

    // Metrics agree.
    let metrics = api.text("/metrics").await;
    for line in [
        "cairn_rounds_completed_total 2",
        "cairn_dropouts_total{phase=\"advertise_keys\"} 1",
        "cairn_phase_duration_seconds_count{phase=\"unmask\"} 2",
        "cairn_round 2",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} missing from\n{metrics}"
        );
    }
    assert!(metrics.contains("process_resident_memory_bytes"));
    let epsilon: Vec<f64> = report
        .rounds
        .iter()
        .map(|r| r.outcome.epsilon.expect("epsilon recorded"))
        .collect();
    assert!(epsilon[0] > 0.0 && epsilon[1] > epsilon[0], "{epsilon:?}");
    let gauge: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("cairn_privacy_epsilon "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("cairn_privacy_epsilon missing from\n{metrics}"));
    assert!(
        (gauge - epsilon[1]).abs() <= 1e-9 * epsilon[1],
        "{gauge} against {epsilon:?}"
    );

    // The model: admins only, and it is the final model.
    let (status, message) = api.refused("/api/v1/model", Some(VIEWER_TOKEN)).await;
    assert_eq!(status, 403);
    assert!(message.contains("needs an admin token"), "{message}");
    let response = api.get("/api/v1/model", Some(ADMIN_TOKEN)).await;
    assert_eq!(response.status(), 200);
    let bytes = response.bytes().await.expect("model bytes");
    let downloaded = federation.dir.path().join("downloaded.safetensors");
    std::fs::write(&downloaded, &bytes).expect("write");
    let model_layout = cairn_tests::digits_layout();
    assert_eq!(
        load_safetensors(&downloaded, &model_layout).expect("a safetensors model"),
        load_safetensors(&report.model_path, &model_layout).expect("final model")
    );

    // The status command's view: every round, or the last ones and how many were left out.
    let client = ApiClient::new(&api.base, VIEWER_TOKEN);
    let rows = |status: &str| -> Vec<String> {
        status
            .lines()
            .filter(|l| {
                l.split_whitespace()
                    .next()
                    .is_some_and(|w| w.parse::<u64>().is_ok())
            })
            .map(|l| l.split_whitespace().next().unwrap_or_default().to_string())
            .collect()
    };
    let status = client.status(Shown::All).await.expect("status");
    assert!(
        status.contains("finished, 2/2 rounds committed"),
        "{status}"
    );
    assert_eq!(rows(&status), ["1", "2"], "{status}");
    let status = client.status(Shown::Last(1)).await.expect("status");
    assert_eq!(rows(&status), ["2"], "{status}");
    assert!(
        status.contains("... 1 earlier round (--limit or --all"),
        "{status}"
    );

    // Access and bad requests.
    for (path, token, code, expected) in [
        ("/api/v1/job", None, 401, "missing Authorization header"),
        ("/metrics", None, 401, "missing Authorization header"),
        (
            "/api/v1/job",
            Some("not-a-known-token-at-all"),
            401,
            "unknown bearer token",
        ),
        (
            "/api/v1/rounds?limit=0",
            Some(VIEWER_TOKEN),
            400,
            "limit is 0; expected 1..=1000",
        ),
        (
            "/api/v1/rounds?offset=-1",
            Some(VIEWER_TOKEN),
            400,
            "offset",
        ),
        (
            "/api/v1/rounds?page=2",
            Some(VIEWER_TOKEN),
            400,
            "unknown field `page`",
        ),
        (
            "/api/v1/rounds/abc",
            Some(VIEWER_TOKEN),
            400,
            "expected a round number",
        ),
        (
            "/api/v1/rounds/99",
            Some(VIEWER_TOKEN),
            404,
            "round 99 is not committed",
        ),
        ("/api/v2/job", Some(VIEWER_TOKEN), 404, "no such endpoint"),
    ] {
        let (status, message) = api.refused(path, token).await;
        assert_eq!(status, code, "{path}: {message}");
        assert!(message.contains(expected), "{path}: {message}");
    }
    // Another method: a JSON error too, and the methods allowed.
    let response = api
        .http
        .post(format!("{}/api/v1/job", api.base))
        .bearer_auth(VIEWER_TOKEN)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 405);
    let allow = response
        .headers()
        .get("allow")
        .map(|v| v.to_str().unwrap_or_default().to_string());
    assert!(
        allow.as_deref().is_some_and(|a| a.contains("GET")),
        "{allow:?}"
    );
    let body: serde_json::Value = response.json().await.expect("JSON error body");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("POST is not allowed")),
        "{body}"
    );
    let served = api.text("/api/v1/openapi.json").await;
    assert_eq!(served, cairn_coordinator::api::openapi_json());

    // A live stream that broke off resumes: every change has an id, and `Last-Event-ID` gets
    // the changes after it (an id of no known run, all of them), up to the job's end.
    let replayed = api.changes_after("none").await;
    assert_eq!(
        replayed.last().map(|(_, name)| name.as_str()),
        Some("job_finished")
    );
    let epoch = replayed[0].0.split_once('-').expect("<epoch>-<number>").0;
    let numbered: Vec<String> = (1..=replayed.len())
        .map(|n| format!("{epoch}-{n}"))
        .collect();
    let ids: Vec<String> = replayed.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(ids, numbered, "every change, numbered from 1");
    let resumed = api.changes_after(&ids[4]).await;
    assert_eq!(resumed, replayed[5..], "the changes after the fifth");

    external_checks(&api, &federation, &report.rounds, epsilon[1]).await;
}

/// The first of `candidates` that runs, if any: a missing tool fails the test in CI and skips
/// its check elsewhere ([`cairn_tests::missing`]).
fn tool(name: &str, candidates: &[&str]) -> Option<String> {
    let found = candidates.iter().find(|c| {
        Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if found.is_none() {
        cairn_tests::missing(name, ".ci/run installs it");
    }
    found.map(|path| path.to_string())
}

/// The live server checked by other people's tools; `rounds` are the job's records and
/// `epsilon` is what it spent.
async fn external_checks(api: &Api, federation: &Federation, rounds: &[RoundRecord], epsilon: f64) {
    let dir = federation.dir.path();
    if let Some(promtool) = tool("promtool", &["promtool"]) {
        let metrics = api.text("/metrics").await;
        let mut child = Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("promtool starts");
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(metrics.as_bytes())
            .expect("write metrics");
        let output = child.wait_with_output().expect("promtool runs");
        assert!(
            output.status.success(),
            "promtool check metrics: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let venv = std::env::var("CAIRN_VENV")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv").into());
    let schemathesis = format!("{venv}/bin/schemathesis");
    if let Some(schemathesis) = tool("schemathesis", &[&schemathesis, "schemathesis"]) {
        let schema = dir.join("openapi.json");
        std::fs::write(&schema, cairn_coordinator::api::openapi_json()).expect("schema");
        let output = Command::new(schemathesis)
            // The event stream never ends while a job runs, and readiness answers 503 by design
            // once the job is over; everything else is exercised with every check.
            .args([
                "run",
                "--checks",
                "all",
                "--max-examples",
                "20",
                // Reproducible: the same cases on every run.
                "--seed",
                "1",
                "--exclude-path",
                "/api/v1/events",
                "--exclude-path",
                "/readyz",
            ])
            .arg("--url")
            .arg(&api.base)
            .arg("--header")
            .arg(format!("Authorization: Bearer {ADMIN_TOKEN}"))
            .arg(&schema)
            .env("SCHEMATHESIS_HOOKS", "")
            .output()
            .expect("schemathesis runs");
        assert!(
            output.status.success(),
            "schemathesis: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    if let Some(chromium) = tool(
        "chromium",
        &["chromium", "chromium-browser", "google-chrome"],
    ) {
        let url = format!("{}/#token={VIEWER_TOKEN}", api.base);
        let artifacts = std::env::var("CAIRN_ARTIFACTS").unwrap_or_else(|_| {
            concat!(env!("CARGO_MANIFEST_DIR"), "/../target/test-artifacts").into()
        });
        let _ = std::fs::create_dir_all(&artifacts);
        let headless = |size: &str, extra: &[&str]| {
            Command::new(&chromium)
                .args([
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--hide-scrollbars",
                    "--virtual-time-budget=5000",
                ])
                .arg(format!("--window-size={size}"))
                .args(extra)
                .arg(&url)
                .output()
                .expect("chromium runs")
        };
        // A desktop's window and a phone's: the same page, its charts drawn to each width.
        // Headless Chromium lays a page out at least 500 pixels wide and narrows it to the
        // window's size for a screenshot only, so the phone's DOM is that of a 500-pixel window
        // and its screenshot is 390 pixels wide (the page draws its charts again on the resize).
        let mut chart_widths = Vec::new();
        for (name, size) in [("desktop", "1440,900"), ("phone", "390,844")] {
            let run = headless(size, &["--dump-dom", "--enable-logging=stderr", "--v=0"]);
            let dom = String::from_utf8_lossy(&run.stdout).into_owned();
            // Chromium logs every refusal of the page's Content-Security-Policy (its script or
            // style not allowed, a Trusted Types sink) and every uncaught error: a policy that
            // blocks the page's own script fails here, not only by what is missing below.
            let log = String::from_utf8_lossy(&run.stderr);
            let refused: Vec<&str> = log
                .lines()
                .filter(|line| {
                    [
                        "Content Security Policy",
                        "Refused to",
                        "Trusted Type",
                        "TrustedHTML",
                        "Uncaught",
                    ]
                    .iter()
                    .any(|what| line.contains(what))
                })
                .collect();
            assert!(refused.is_empty(), "{name}: {refused:#?}");
            check_dashboard(&dom, rounds, epsilon, name);
            chart_widths.push(view_box_width(&dom, "metrics-chart"));
            let screenshot = std::path::Path::new(&artifacts).join(format!("dashboard-{name}.png"));
            let shot = format!("--screenshot={}", screenshot.display());
            let taken = headless(size, &[&shot]);
            assert!(
                taken.status.success() && screenshot.exists(),
                "{name} screenshot: {}",
                String::from_utf8_lossy(&taken.stderr)
            );
        }
        // Charts follow their container: wide on the desktop, within the narrow window.
        assert!(
            chart_widths[0] > 600 && chart_widths[1] < 500,
            "chart widths (desktop, phone): {chart_widths:?}"
        );
    }
}

/// What the dashboard shows of the finished job, in Chromium's DOM (`name`: the window): the
/// rounds by number on every chart's x axis, each round's phases, dropouts by phase and bytes as
/// recorded, the privacy budget spent, every participant's health, and times for people to read.
fn check_dashboard(dom: &str, rounds: &[RoundRecord], epsilon: f64, name: &str) {
    let context = format!("{name} window:\n{dom}");
    // Accuracy and evaluation loss; no training loss is reported under differential privacy.
    assert_eq!(
        dom.matches("data-series=").count(),
        2,
        "chart series missing, {context}"
    );
    assert!(
        dom.contains("<b>2 / 2</b>"),
        "round count missing, {context}"
    );
    let privacy = element(dom, "card-privacy");
    let spent = format!("<b>{epsilon:.3}</b>");
    assert!(
        privacy.contains(&spent) && privacy.contains("of 10000"),
        "{spent} of 10000 missing, {context}"
    );
    assert!(
        dom.contains("class=\"badge finished\""),
        "job state missing, {context}"
    );
    let countersigned = element(dom, "card-countersigned");
    assert!(
        countersigned.contains("by every contributor"),
        "countersignatures card, {context}"
    );
    // The rounds table, newest first: every contributor countersigned its round.
    let signed: Vec<usize> = element(dom, "rounds")
        .split("data-countersigned=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next()?.parse().ok())
        .collect();
    assert_eq!(signed.len(), rounds.len(), "countersignatures, {context}");
    for (count, record) in signed.iter().zip(rounds.iter().rev()) {
        assert!(
            *count >= record.outcome.contributors.len(),
            "round {}: {count} countersignatures, {context}",
            record.outcome.round
        );
    }
    let numbers: Vec<String> = rounds.iter().map(|r| r.outcome.round.to_string()).collect();
    for chart in [
        "metrics-chart",
        "duration-chart",
        "dropout-chart",
        "bytes-chart",
    ] {
        let svg = element(dom, chart);
        let labels: Vec<&str> = svg
            .split("class=\"tick x-tick\"")
            .skip(1)
            .filter_map(|rest| rest.split_once('>')?.1.split('<').next())
            .collect();
        assert_eq!(labels, numbers, "{chart}'s x axis, {context}");
    }
    let durations = element(dom, "duration-chart");
    let dropouts = element(dom, "dropout-chart");
    let traffic = element(dom, "bytes-chart");
    let mut dropout_bars = 0;
    for record in rounds {
        let round = record.outcome.round;
        // One bar per round, a segment per phase it went through.
        let bar = durations
            .split_once(&format!("data-round=\"{round}\""))
            .and_then(|(_, rest)| rest.split("</g>").next())
            .unwrap_or_else(|| panic!("round {round}'s duration bar missing, {context}"));
        for timing in &record.phase_durations {
            let phase = format!("data-phase=\"{}\"", timing.phase.name());
            assert!(
                bar.contains(&phase),
                "round {round}: {phase} missing, {context}"
            );
        }
        for phase in Phase::ALL {
            let count = record
                .outcome
                .dropouts
                .iter()
                .filter(|d| d.phase == phase)
                .count();
            if count > 0 {
                dropout_bars += 1;
                let segment = format!("data-phase=\"{}\" data-count=\"{count}\"", phase.name());
                assert!(
                    dropouts.contains(&segment),
                    "round {round}: {segment} missing, {context}"
                );
            }
        }
        for value in [record.bytes_in, record.bytes_out] {
            let bar = format!("data-bytes=\"{value}\"");
            assert!(
                traffic.contains(&bar),
                "round {round}: {bar} missing, {context}"
            );
        }
    }
    // Delta dropped out of round 2 in its first phase.
    assert!(dropout_bars >= 1, "no dropout recorded");
    assert_eq!(
        dropouts.matches("class=\"bar dropout").count(),
        dropout_bars,
        "dropout segments, {context}"
    );
    let participants = element(dom, "participants");
    for id in IDS {
        let row = participants
            .split_once(&format!("data-participant=\"{id}\""))
            .and_then(|(_, rest)| rest.split("</tr>").next())
            .unwrap_or_else(|| panic!("{id} missing from the table, {context}"));
        assert!(
            row.contains(&format!(">{id}</span>")),
            "{id}'s id, {context}"
        );
        // Every participant connected at some time; the job is over, so its session may be too.
        assert!(
            row.contains(">connected</td>") || row.contains(">disconnected</td>"),
            "{id}'s health, {context}"
        );
        // Last seen as a relative time, with the local time as its title.
        let seen = row
            .split_once("class=\"ago\"")
            .and_then(|(_, rest)| rest.split_once('>'))
            .and_then(|(_, rest)| rest.split('<').next())
            .unwrap_or_else(|| panic!("{id}'s last seen missing, {context}"));
        assert!(
            seen.ends_with(" ago") || seen == "just now",
            "{id} last seen {seen:?}"
        );
        let last_round = if id == "delta" {
            ">dropped in advertise_keys</td>"
        } else {
            ">contributed</td>"
        };
        assert!(row.contains(last_round), "{id}: {last_round}, {context}");
    }
    // Times as people read them: no RFC 3339 with its nanoseconds anywhere.
    if let Some(raw) = raw_timestamp(dom) {
        panic!("raw timestamp {raw:?}, {context}");
    }
}

/// The element of `dom` with `id`, from its id to its closing tag (the elements asked for hold
/// no element of the same name).
fn element<'a>(dom: &'a str, id: &str) -> &'a str {
    let (_, rest) = dom
        .split_once(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in\n{dom}"));
    let close = if id.ends_with("chart") {
        "</svg>"
    } else if id.starts_with("card") {
        "</div>"
    } else {
        "</table>"
    };
    rest.split(close).next().unwrap_or_default()
}

/// The width of the `viewBox` of the element with `id`.
fn view_box_width(dom: &str, id: &str) -> u32 {
    let svg = element(dom, id);
    svg.split_once("viewBox=\"0 0 ")
        .and_then(|(_, rest)| rest.split(' ').next())
        .and_then(|width| width.parse().ok())
        .unwrap_or_else(|| panic!("#{id} has no viewBox: {svg}"))
}

/// The first time in `text` that is written as the API writes it: `HH:MM:SS` followed by six or
/// more fractional digits, or a date with RFC 3339's `T`.
fn raw_timestamp(text: &str) -> Option<&str> {
    static RAW: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"\d{2}:\d{2}:\d{2}\.\d{6}|\d{4}-\d{2}-\d{2}T\d{2}").expect("pattern")
    });
    RAW.find(text).map(|found| found.as_str())
}

/// A real Prometheus scrapes `/metrics` with the state directory's viewer token file as its
/// `credentials_file`, as it is; the tokens are the same after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_with_the_state_directorys_token_file_as_it_is() {
    use cairn_coordinator::api::{ApiOptions, ApiTokens, VIEWER_TOKEN_FILE};
    let federation = Federation::provision(&IDS);
    let state = federation.dir.path().join("state");
    let (tokens, admin) = ApiTokens::of_state_dir(&state).expect("tokens");
    let viewer = std::fs::read_to_string(state.join(VIEWER_TOKEN_FILE)).expect("viewer token");
    // Made once: a restart reads the same tokens.
    let (_, again) = ApiTokens::of_state_dir(&state).expect("tokens again");
    assert_eq!(admin, again);
    assert_eq!(
        std::fs::read_to_string(state.join(VIEWER_TOKEN_FILE)).expect("viewer token"),
        viewer
    );
    let Some(prometheus) = tool("prometheus", &["prometheus"]) else {
        return;
    };
    let coordinator = cairn_coordinator::Coordinator::start(cairn_coordinator::ServeOptions {
        job: digits_job(&IDS, 1, 3),
        tls: federation.server_tls(),
        state_dir: state.clone(),
        listen: "127.0.0.1:0".parse().expect("address"),
        heartbeat_interval: Duration::from_secs(2),
        keep_checkpoints: 1,
        api: Some(ApiOptions {
            listen: "127.0.0.1:0".parse().expect("address"),
            tokens,
            linger: Duration::ZERO,
        }),
    })
    .await
    .expect("coordinator starts");
    let target = coordinator.api_addr().expect("API served");
    let dir = federation.dir.path();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s}}\nscrape_configs:\n  - job_name: cairn\n    \
             static_configs: [{{targets: ['{target}']}}]\n    \
             authorization: {{credentials_file: '{}'}}\n",
            state.join(VIEWER_TOKEN_FILE).display()
        ),
    )
    .expect("prometheus.yml");
    // A port for Prometheus' own web server: bound, released, handed over.
    let web = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let mut server = tokio::process::Command::new(prometheus)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("prometheus starts");
    // Waits for Prometheus to have scraped the coordinator: `up` is 1 only after a scrape that
    // the API answered with metrics, so a refused token would show as 0.
    let http = reqwest::Client::new();
    let query = |q: &'static str| {
        let http = http.clone();
        async move {
            let answer: serde_json::Value = http
                .get(format!("http://{web}/api/v1/query"))
                .query(&[("query", q)])
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            answer["data"]["result"][0]["value"][1]
                .as_str()
                .map(str::to_string)
        }
    };
    let scraped = tokio::time::timeout(Duration::from_secs(90), async {
        loop {
            if let Some(up) = query("up{job=\"cairn\"}").await
                && up == "1"
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await;
    assert!(scraped.is_ok(), "Prometheus never scraped the API");
    assert_eq!(
        query("cairn_rounds_completed_total").await.as_deref(),
        Some("0")
    );
    assert_eq!(
        query("cairn_dropouts_total{phase=\"unmask\"}")
            .await
            .as_deref(),
        Some("0"),
        "every phase's dropout series exists from the start"
    );
    let _ = server.kill().await;
    coordinator.stopper().stop("the test is over");
    let _ = finish(coordinator).await;
}
