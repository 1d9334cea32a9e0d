//! `KILN_LOG_FORMAT`, the log format of the commands without a config:
//! a bad value stops the command at once, saying what to write, before
//! it does anything else.

use std::process::Command;

fn kiln(args: &[&str], format: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .env("KILN_LOG_FORMAT", format)
        .output()
        .expect("run kiln")
}

const WHAT_TO_WRITE: &str =
    "KILN_LOG_FORMAT = \"xml\" is not a log format: use \"text\" (the default) or \"json\"";

#[test]
fn kiln_run_refuses_a_bad_log_format_with_its_own_exit_code() {
    // Refused before any VM: `true` never runs.
    let out = kiln(&["run", "--", "true"], "xml");
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim_end(), format!("kiln run: {WHAT_TO_WRITE}"));
}

#[test]
fn kiln_config_check_refuses_a_bad_log_format() {
    let out = kiln(&["config", "check", "/nonexistent"], "xml");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim_end(), format!("kiln config: {WHAT_TO_WRITE}"));
}

#[test]
fn an_empty_log_format_is_the_default() {
    // The config check then runs, and fails on the missing file alone.
    let out = kiln(&["config", "check", "/nonexistent"], "");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("KILN_LOG_FORMAT"), "{stderr}");
    assert!(stderr.contains("/nonexistent"), "{stderr}");
}
