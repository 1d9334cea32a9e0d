//! Jobs for test payloads.

use std::io::Read;

use kiln_protocol::{
    CommandSpec, EnvVar, Job, UserSpec, WallClock, MIN_ENTROPY_BYTES, PROTOCOL_VERSION,
};

pub const RUNNER_UID: u32 = 1001;
pub const HOSTNAME: &str = "kiln-test-vm";

/// `/bin/sh -c <script>` as `runner` (uid 1001) in `/home/runner`, with a
/// 60 s deadline and a 5 s grace period.
pub fn shell_job(script: &str) -> Job {
    Job {
        protocol_version: PROTOCOL_VERSION,
        command: CommandSpec {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
        },
        env: Vec::new(),
        user: UserSpec {
            name: "runner".into(),
            uid: RUNNER_UID,
            gid: RUNNER_UID,
            groups: Vec::new(),
            home: "/home/runner".into(),
        },
        workdir: "/home/runner".into(),
        hostname: HOSTNAME.into(),
        dns: Vec::new(),
        network: None,
        clock: WallClock::now(),
        entropy: random_bytes(MIN_ENTROPY_BYTES),
        rlimits: Vec::new(),
        deadline_ms: 60_000,
        grace_ms: 5_000,
    }
}

pub fn with_env(mut job: Job, name: &str, value: &str) -> Job {
    job.env.push(EnvVar::new(name, value));
    job
}

pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    let ok = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf));
    assert!(ok.is_ok(), "reading /dev/urandom failed: {ok:?}");
    buf
}

/// A fresh token of hex digits, for secrets and markers.
pub fn random_token(bytes: usize) -> String {
    random_bytes(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
