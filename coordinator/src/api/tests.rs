//! Unit tests of the API's pieces that need no server: tokens, the OpenAPI document, the status
//! text, the dashboard's Content-Security-Policy; and the security headers of a served response.
//! The server itself is tested end to end in `tests/api.rs`, where Chromium renders the dashboard
//! under its policy.

use super::*;
use crate::store::signatures::Countersignatures;

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

/// The hashes are the ones Chromium asks for: it names the hash a blocked inline block would
/// need ("Either the 'unsafe-inline' keyword, a hash ('sha256-...') ..."), and these two are
/// what Chromium 156 printed for this page.
#[test]
fn the_policy_hashes_inline_blocks_as_chromium_does() {
    let page = "<!doctype html><html><head><style>body{color:red}</style></head><body>\
                <p id=x>static</p><script>document.getElementById('x').textContent='ran';\
                console.log('hello console')</script></body></html>";
    let policy = dashboard_policy(page);
    assert!(
        policy.contains("script-src 'sha256-sdob1QbELT9k2OpBzLiWUyB4QeFML1y5/U6tzDrt5Pc=';"),
        "{policy}"
    );
    assert!(
        policy.contains("style-src 'sha256-FcQqt3aNlV7AZnGV4zkQRVeCeJOxbMPnQSx258L803E=';"),
        "{policy}"
    );
    // A page without inline blocks may run no script and no style.
    let bare = dashboard_policy("<p>nothing</p>");
    assert!(
        bare.contains("script-src 'none';") && bare.contains("style-src 'none';"),
        "{bare}"
    );
}

/// The dashboard runs under its policy only if every script and style it has is one of the
/// hashed inline blocks, and it uses nothing a hash cannot allow: a `<script src>` or a
/// `<style media>` (not hashed: only bare tags are), a style or event-handler attribute, a
/// `javascript:` URL, markup parsed from strings (refused under Trusted Types), anything from
/// another origin. An edit that adds any of them fails here, before a browser refuses it.
#[test]
fn the_dashboard_runs_under_its_policy() {
    let policy = dashboard_policy(DASHBOARD);
    for tag in ["script", "style"] {
        let blocks = inline_blocks(DASHBOARD, tag);
        assert_eq!(blocks.len(), 1, "one inline <{tag}> block");
        assert_eq!(
            DASHBOARD.matches(&format!("<{tag}")).count(),
            blocks.len(),
            "every <{tag}> is a bare tag, hashed"
        );
        for block in blocks {
            let digest = ring::digest::digest(&ring::digest::SHA256, block.as_bytes());
            let source = format!("'sha256-{}'", base64(digest.as_ref()));
            assert!(
                policy.contains(&format!("{tag}-src {source};")),
                "{source} of <{tag}> not in {policy}"
            );
        }
    }
    let lower = DASHBOARD.to_lowercase();
    for forbidden in [
        " style=",
        "javascript:",
        ".innerhtml",
        ".outerhtml",
        "insertadjacenthtml",
        "document.write",
        "eval(",
        "new function",
        "http://",
        "https://",
        "@import",
        "url(",
    ] {
        // The SVG namespace is a name, not something loaded.
        let found = lower
            .match_indices(forbidden)
            .any(|(at, _)| !lower[at..].starts_with("http://www.w3.org/2000/svg"));
        assert!(!found, "the dashboard uses {forbidden:?}");
    }
    // An inline event handler: ` on<letters>=` in a tag.
    let handlers: Vec<&str> = lower
        .match_indices(" on")
        .map(|(at, _)| {
            let name = &lower[at + 3..];
            let letters = name.len()
                - name
                    .trim_start_matches(|c: char| c.is_ascii_lowercase())
                    .len();
            &lower[at + 1..at + 3 + letters + 1]
        })
        .filter(|attribute| attribute.len() > 3 && attribute.ends_with('='))
        .collect();
    assert!(handlers.is_empty(), "inline event handlers: {handlers:?}");
    for directive in [
        "default-src 'none'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "require-trusted-types-for 'script'",
    ] {
        assert!(
            policy.contains(directive),
            "{directive} missing from {policy}"
        );
    }
    assert!(!policy.contains("unsafe"), "{policy}");
}

/// `GET path` on a live server, as a raw HTTP/1.1 exchange: the status line and the headers,
/// lowercased names.
fn raw_get(address: SocketAddr, path: &str) -> (String, Vec<(String, String)>) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let head = response.split("\r\n\r\n").next().unwrap_or_default();
    let mut lines = head.lines();
    let status = lines.next().unwrap_or_default().to_string();
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_lowercase(), value.trim().to_string()))
        .collect();
    (status, headers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_the_api_send_security_headers() {
    let job = crate::config::JobSpec::parse(
        "name: t\nmodel: {initial: /models/t.safetensors}\nrounds: 2\nmin_participants: 1\n\
         participants: [a]\nsecure_aggregation: {enabled: false}\n",
    )
    .unwrap();
    let options = ApiOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        tokens: ApiTokens::admin("aaaaaaaaaaaaaaaaaaaa"),
        linger: std::time::Duration::ZERO,
    };
    let monitor = Arc::new(Monitor::new(
        job,
        Vec::new(),
        None,
        Countersignatures::none(),
    ));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let address = serve(&options, monitor, Vec::new(), async {
        let _ = stopped.await;
    })
    .await
    .unwrap();
    let exchanges = tokio::task::spawn_blocking(move || {
        ["/", "/api/v1/job", "/healthz", "/nowhere"].map(|path| (path, raw_get(address, path)))
    })
    .await
    .unwrap();
    let _ = stop.send(());
    let header = |headers: &[(String, String)], name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    for (path, (status, headers)) in &exchanges {
        for (name, value) in [
            ("x-frame-options", "DENY"),
            ("x-content-type-options", "nosniff"),
            ("referrer-policy", "no-referrer"),
        ] {
            assert_eq!(
                header(headers, name).as_deref(),
                Some(value),
                "{path} ({status})"
            );
        }
        let policy = header(headers, "content-security-policy");
        if *path == "/" {
            assert!(status.contains("200"), "{status}");
            // The policy served is the one made from the page served.
            assert_eq!(policy, Some(dashboard_policy(DASHBOARD)), "{path}");
        } else {
            assert_eq!(
                policy.as_deref(),
                Some(RESTRICTIVE_POLICY),
                "{path} ({status})"
            );
        }
    }
}
