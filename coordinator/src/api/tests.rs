//! Unit tests of the API's pieces that need no server: tokens, the OpenAPI document, the status
//! text. The server itself is tested end to end in `tests/api.rs`.

use super::*;

#[test]
fn token_files_are_parsed_and_bad_lines_named() {
    let tokens = ApiTokens::parse(
        "# operators\nadmin aaaaaaaaaaaaaaaaaaaa\n\nviewer bbbbbbbbbbbbbbbbbbbb\n",
    )
    .unwrap();
    assert_eq!(tokens.role_of("aaaaaaaaaaaaaaaaaaaa"), Some(Role::Admin));
    assert_eq!(tokens.role_of("bbbbbbbbbbbbbbbbbbbb"), Some(Role::Viewer));
    assert_eq!(tokens.role_of("bbbbbbbbbbbbbbbbbbb"), None);
    assert_eq!(tokens.role_of(""), None);
    let cases = [
        ("owner cccccccccccccccccccc", "line 1: role \"owner\""),
        (
            "admin short",
            "line 1: token has 5 characters; expected at least 16",
        ),
        (
            "\n\nadmin",
            "line 3: expected `<role> <token>`, found 1 fields",
        ),
        ("# nothing\n", "no tokens"),
    ];
    for (text, expected) in cases {
        let err = ApiTokens::parse(text).unwrap_err();
        let err = err.to_string();
        assert!(err.contains(expected), "{text:?}: {err}");
    }
    let (random, token) = ApiTokens::random_admin();
    assert_eq!(token.len(), 32);
    assert_eq!(random.role_of(&token), Some(Role::Admin));
}

/// The checked-in OpenAPI document is the one the server serves. After a change to the API,
/// regenerate it with `CAIRN_WRITE_OPENAPI=1 cargo test -p cairn-coordinator openapi`.
#[test]
fn the_checked_in_openapi_document_matches_the_code() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
    let generated = openapi_json() + "\n";
    if std::env::var_os("CAIRN_WRITE_OPENAPI").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "{} is out of date; run CAIRN_WRITE_OPENAPI=1 cargo test -p cairn-coordinator openapi",
        path.display()
    );
    for path in [
        "/api/v1/job",
        "/api/v1/rounds",
        "/api/v1/rounds/{round}",
        "/api/v1/participants",
        "/api/v1/model",
        "/api/v1/events",
        "/metrics",
        "/healthz",
        "/readyz",
    ] {
        assert!(generated.contains(&format!("\"{path}\"")), "{path} missing");
    }
}

/// Every metric the Grafana dashboard (`charts/coordinator/dashboards/cairn.json`) queries is one
/// the coordinator exports.
#[test]
fn the_grafana_dashboard_queries_exported_metrics_only() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../charts/coordinator/dashboards/cairn.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let metrics = metrics::Metrics::new();
    metrics
        .phase_duration
        .with_label_values(&["train"])
        .observe(1.0);
    metrics.dropouts.with_label_values(&["train"]).inc();
    metrics
        .eval_metric
        .with_label_values(&["accuracy"])
        .set(0.5);
    let exported: std::collections::BTreeSet<String> = metrics
        .render()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next().map(str::to_string))
        .collect();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 10);
    let mut queried = 0;
    for panel in panels {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for name in expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("cairn_") || w.starts_with("process_"))
            {
                queried += 1;
                assert!(
                    exported.contains(name),
                    "{name} (panel {}) is not exported",
                    panel["title"]
                );
            }
        }
    }
    assert!(queried >= 12);
}

#[test]
fn a_state_directorys_tokens_are_made_once_and_read_again() {
    let dir = tempfile::tempdir().unwrap();
    // A file of the older form, `admin <token>`, keeps its token.
    std::fs::write(
        dir.path().join(ADMIN_TOKEN_FILE),
        "admin aaaaaaaaaaaaaaaaaaaa\n",
    )
    .unwrap();
    let (tokens, admin) = ApiTokens::of_state_dir(dir.path()).unwrap();
    assert_eq!(admin, "aaaaaaaaaaaaaaaaaaaa");
    let viewer = std::fs::read_to_string(dir.path().join(VIEWER_TOKEN_FILE)).unwrap();
    let viewer = viewer.trim();
    assert_eq!(viewer.len(), 32, "a bare token and a newline");
    assert_eq!(tokens.role_of(viewer), Some(Role::Viewer));
    assert_eq!(tokens.role_of(&admin), Some(Role::Admin));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(VIEWER_TOKEN_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "readable by the owner only: {mode:o}");
    }
    let (again, _) = ApiTokens::of_state_dir(dir.path()).unwrap();
    assert_eq!(again.role_of(viewer), Some(Role::Viewer));
    std::fs::write(dir.path().join(VIEWER_TOKEN_FILE), "short\n").unwrap();
    let err = ApiTokens::of_state_dir(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains(VIEWER_TOKEN_FILE) && err.contains("at least 16"),
        "{err}"
    );
}
