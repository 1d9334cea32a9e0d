//! `examples/systemd/kiln.service` is a unit systemd accepts:
//! `systemd-analyze verify` finds no error and no warning in it (an
//! unknown or misspelt key is only a warning there, so warnings fail too).

use std::path::Path;
use std::process::Command;

#[test]
fn the_example_unit_verifies_cleanly() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("systemd-analyze not found: apt-get install systemd (.ci/prereqs does)");
    }
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/systemd/kiln.service");
    let text = std::fs::read_to_string(&unit).expect("read the unit");
    assert!(
        text.contains("ExecStart=/usr/local/bin/kiln serve"),
        "{text}"
    );
    // verify wants ExecStart's program to exist: the one just built.
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = dir.path().join("kiln.service");
    let text = text.replace("/usr/local/bin/kiln", env!("CARGO_BIN_EXE_kiln"));
    std::fs::write(&copy, text).expect("write the unit");
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .expect("run systemd-analyze");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    let about_unit: Vec<&str> = said
        .lines()
        .filter(|l| l.contains("kiln.service"))
        .collect();
    assert!(about_unit.is_empty(), "systemd-analyze warns:\n{said}");
}
