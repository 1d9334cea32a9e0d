//! What kiln does to protect its own secrets on the host: `kiln serve`
//! makes itself non-dumpable (no core dump, no ptrace or `/proc/<pid>/`
//! reading by its uid's other processes) before it reads anything.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use kiln_vm_tests::layer;

/// An unprivileged uid: its own processes' `/proc/<pid>/` files are its
/// own, unless the process made itself non-dumpable (then root owns them).
const NOBODY: u32 = 65534;

#[test]
fn kiln_serve_is_not_dumpable() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to run kiln as another uid");
        return;
    }
    let kiln = layer::kiln_binary().unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    // A FIFO as the config: kiln blocks reading it, alive for inspection.
    let config = dir.path().join("config.toml");
    nix::unistd::mkfifo(&config, nix::sys::stat::Mode::from_bits_truncate(0o666)).unwrap();
    let mut child = std::process::Command::new(&kiln)
        .args(["serve", "--config"])
        .arg(&config)
        .uid(NOBODY)
        .gid(NOBODY)
        .env("HOME", dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Between fork and exec the child is the test (and briefly not
    // dumpable from its setuid); once it is kiln, exec made it dumpable,
    // and only kiln itself can take that back.
    let until = Instant::now() + Duration::from_secs(20);
    let mut owner = None;
    while Instant::now() < until {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        if status.contains("Name:\tkiln") {
            owner = std::fs::metadata(format!("/proc/{pid}/environ"))
                .map(|m| m.uid())
                .ok();
            if owner == Some(0) {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        owner,
        Some(0),
        "kiln serve (uid {NOBODY}) is still dumpable: its /proc files are its own"
    );
}
