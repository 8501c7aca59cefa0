//! The binary as users meet it: help texts, logging flags, a closed pipe.

mod common;

use common::{show, sluice};
use std::io::Read as _;
use std::process::Stdio;

/// Every command's help documents its exit codes and cites no issue numbers.
#[test]
fn every_help_names_its_exit_codes() {
    let commands: &[&[&str]] = &[
        &[],
        &["demo"],
        &["ingest"],
        &["worker"],
        &["migrate"],
        &["store", "copy"],
        &["inspect"],
        &["instances", "list"],
        &["instances", "show"],
        &["instances", "history"],
        &["instances", "counts"],
        &["instances", "terminate"],
        &["instances", "suspend"],
        &["instances", "resume"],
        &["instances", "retry"],
        &["instances", "discard"],
        &["instances", "purge"],
        &["completions"],
        &["man"],
        &["bench", "orchestrations"],
        &["bench", "sink"],
        &["bench", "ingest"],
    ];
    for command in commands {
        let output = sluice().args(*command).arg("--help").output().unwrap();
        let help = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{command:?} --help: {output:?}");
        assert!(
            help.contains("Exit codes: 0"),
            "{command:?} --help:\n{help}"
        );
        assert!(!help.contains("issue "), "{command:?} --help:\n{help}");
    }
    let output = sluice().args(["bench", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(
        help.starts_with("Benchmarks;"),
        "bench's help begins with its own text:\n{help}"
    );
}

/// `--log-format json` writes one JSON object per log line; `-q` leaves only errors; the
/// filter of `RUST_LOG` wins over -v.
#[test]
fn logging_flags_and_rust_log() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.db");
    let missing = missing.to_str().unwrap();
    // The command fails (its error is printed, not logged); what matters is that every log
    // line there is, at debug level, is JSON.
    let output = sluice()
        .args([
            "-vv",
            "--log-format",
            "json",
            "inspect",
            "--db",
            missing,
            "x",
        ])
        .env_remove("RUST_LOG")
        .env_remove("SLUICE_LOG")
        .output()
        .unwrap();
    show("inspect a missing file", &output);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("does not exist"), "{stderr}");
    for line in stderr.lines().filter(|line| line.starts_with('{')) {
        serde_json::from_str::<serde_json::Value>(line).expect("a JSON log line");
    }
    let output = sluice()
        .args(["-q", "-v", "inspect", "x"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "-q and -v conflict");
}

/// `sluice inspect ID | head`: the reader leaving ends the output quietly.
#[test]
fn a_closed_pipe_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("demo.db");
    let db = db.to_str().unwrap();
    let output = sluice()
        .args([
            "demo",
            "--db",
            db,
            "--orders",
            "3",
            "--approval-timeout-ms",
            "50",
        ])
        .output()
        .unwrap();
    show("demo", &output);
    assert!(output.status.success());
    let mut child = sluice()
        .args(["inspect", "--db", db, "order-0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Close the pipe before the child has opened the store, so its first write meets it
    // closed (the JSON is a few KiB: read partly, it would fit the pipe's buffer).
    drop(child.stdout.take());
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Completions and manual pages come from the parser's own definitions: every command and
/// flag is in them.
#[test]
fn completions_and_manual_pages_follow_the_commands() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let output = sluice().args(["completions", shell]).output().unwrap();
        assert!(output.status.success(), "{shell}: {output:?}");
        let script = String::from_utf8(output.stdout).unwrap();
        for word in ["ingest", "dry-run", "infer-rows-max", "log-format"] {
            assert!(script.contains(word), "{shell} completions lack {word}");
        }
    }
    let output = sluice().arg("man").output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let page = String::from_utf8(output.stdout).unwrap();
    assert!(page.contains(".TH sluice 1"), "{page}");
    assert!(
        page.contains("sluice\\-ingest(1)"),
        "the page lists its commands: {page}"
    );

    let dir = tempfile::tempdir().unwrap();
    let output = sluice()
        .args(["man", "--out-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let ingest = std::fs::read_to_string(dir.path().join("sluice-ingest.1")).unwrap();
    assert!(ingest.contains("\\-\\-null"), "{ingest}");
    for page in ["sluice.1", "sluice-bench-sink.1", "sluice-store-copy.1"] {
        assert!(dir.path().join(page).exists(), "{page}");
    }
    let missing = dir.path().join("missing");
    let output = sluice()
        .args(["man", "--out-dir"])
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("is not a directory"));
}
