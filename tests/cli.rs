//! The command line as a user meets it: exit codes, messages, redaction.

mod common;

use std::process::Command;

use common::bin;

fn check_config(text: &str) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gapwatch.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(bin())
        .args(["check-config", "--config"])
        .arg(&path)
        .env("GAPWATCH_ADMIN_TOKEN", "adm1n-secret")
        .env("VENDOR_TOKEN", "v3ndor-secret")
        .env("GAPWATCH_PORT", "19464")
        .env("GAPWATCH_STATE_DIR", dir.path())
        .env("MOTO_ENDPOINT", "http://127.0.0.1:5000")
        .env("VENDOR_URL", "http://127.0.0.1:8080")
        .env(
            "VENDOR_QUEUE_URL",
            "http://127.0.0.1:5000/123456789012/vendor-orders",
        )
        .env(
            "APP_QUEUE_URL",
            "http://127.0.0.1:5000/123456789012/app-orders",
        )
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const BASE: &str = include_str!("../deploy/kustomize/base/gapwatch.toml");

#[test]
fn shipped_configs_are_valid_and_print_redacted() {
    for text in [
        BASE,
        include_str!("../deploy/kustomize/overlays/example/gapwatch.toml"),
        include_str!("../config/demo.toml"),
        include_str!("../config/example.toml"),
    ] {
        let (ok, stdout, stderr) = check_config(text);
        assert!(ok, "{stderr}");
        assert!(stdout.contains("is valid"));
        assert!(
            !stdout.contains("adm1n-secret") && !stdout.contains("v3ndor-secret"),
            "{stdout}"
        );
    }
    let (_, stdout, _) = check_config(BASE);
    assert!(stdout.contains("admin_token = \"<redacted>\""), "{stdout}");
    assert!(
        stdout.contains("Authorization = \"<redacted>\""),
        "{stdout}"
    );
}

#[test]
fn invalid_configs_exit_non_zero_naming_the_key() {
    let cases = [
        (
            "max_silence = \"5m\"",
            "max_silence = \"0s\"",
            "feeds[0].freshness.max_silence",
        ),
        (
            "mode = \"relay\"",
            "mode = \"mirror\"",
            "feeds[0].watch.mode",
        ),
        (
            "chunk = \"1h\"",
            "chunk = \"1 fortnight\"",
            "feeds[0].backfill.chunk",
        ),
        (
            "[feeds.watch]",
            "[feeds.watch]\nfoward_to = \"x\"",
            "unknown field `foward_to`",
        ),
        (
            "Bearer ${VENDOR_TOKEN}",
            "Bearer ${NOT_SET_ANYWHERE}",
            "NOT_SET_ANYWHERE is not set",
        ),
    ];
    for (from, to, want) in cases {
        assert!(BASE.contains(from), "{from}");
        let (ok, _, stderr) = check_config(&BASE.replacen(from, to, 1));
        assert!(!ok, "{to} accepted");
        assert!(stderr.contains(want), "{to}: wanted {want:?} in {stderr}");
        assert!(!stderr.contains("v3ndor-secret") && !stderr.contains("adm1n-secret"));
    }
}

#[test]
fn a_missing_file_is_a_clear_error() {
    let out = Command::new(bin())
        .args(["check-config", "--config", "/nonexistent/gapwatch.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot read /nonexistent/gapwatch.toml"),
        "{stderr}"
    );
}

#[test]
fn version_is_printed() {
    let out = Command::new(bin()).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("gapwatch {}", env!("CARGO_PKG_VERSION"))
    );
}
