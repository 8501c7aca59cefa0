//! Runs every example program: each asserts its own outcome and exits non-zero otherwise.

use std::process::Command;

fn run(program: &str, expected: &str) {
    let output = Command::new(program).output().expect("the example starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{program} failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains(expected), "{program} printed:\n{stdout}");
}

#[test]
fn approval() {
    run(env!("CARGO_BIN_EXE_approval"), "lunch: Expired");
}

#[test]
fn fan_out() {
    run(env!("CARGO_BIN_EXE_fan_out"), "total: 15");
}

#[test]
fn saga() {
    run(env!("CARGO_BIN_EXE_saga"), "cancel_flight: flight for alan");
}
