//! The Helm charts, tested with Helm's own library and the Kubernetes schemas
//! (`charts/tests/test_charts.py`, pytest in the venv `.ci/run` prepares), including a kit's
//! values file written by `cairn-coordinator provision`: installing that file is the whole
//! installation at a partner site. Without the venv the check is skipped, except in CI, where it
//! fails.

use cairn_tests::process::{binary, stdout_of};
use std::path::Path;
use std::process::Command;

#[test]
fn the_charts_render_validate_and_refuse_bad_values() {
    let venv = std::env::var("CAIRN_VENV")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv").into());
    let python = Path::new(&venv).join("bin/python");
    let has_tools = Command::new(&python)
        .args(["-c", "import helm_python, kubernetes_validate, pytest"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_tools {
        cairn_tests::missing(
            &format!("a venv at {venv} with helm-python-sdk, kubernetes-validate and pytest"),
            ".ci/run prepares it; CAIRN_VENV names it",
        );
        return;
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    stdout_of(
        Command::new(binary("cairn-coordinator", "cairn-coordinator"))
            .args([
                "provision",
                "--with-keys",
                "--server-name",
                "fl.example.org",
            ])
            .args(["--participant", "st-marys=St Mary's Hospital", "--out"])
            .arg(dir.path()),
        "cairn-coordinator provision",
    );
    let charts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts");
    let output = Command::new(&python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .arg(charts.join("tests"))
        .env(
            "CAIRN_KIT_VALUES",
            dir.path().join("participants/st-marys/values.yaml"),
        )
        .output()
        .expect("pytest runs");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{report}");
    assert!(
        report.contains("passed") && !report.contains("skipped"),
        "{report}"
    );
}
