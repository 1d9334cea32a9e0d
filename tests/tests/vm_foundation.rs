//! The foundation's integration tests (issue 2, tests 1 to 8). Each boots a
//! real VM: QEMU (KVM where it can run the guest, TCG otherwise), Debian's
//! cloud kernel, kiln-init as PID 1 from an initramfs with busybox, and the
//! job as `runner` (uid 1001).

use std::time::{Duration, UNIX_EPOCH};

use kiln::conversation::Event;
use kiln_protocol::{frame, ExitStatus, HostMessage, StopCause, JIT_CONFIG_ENV};
use kiln_vm_tests::job::{random_token, with_env, HOSTNAME, RUNNER_UID};
use kiln_vm_tests::{disk, shell_job, BootOptions, CancelWhen, Opening, Outcome, TestVm};

async fn run(script: &str) -> Outcome {
    TestVm::run(shell_job(script), BootOptions::default()).await
}

// 1. The job runs as runner; stdout, stderr and the exit status reach the
//    host; QEMU then exits by itself.

#[tokio::test]
async fn t1_exit_zero_with_stdout_and_stderr_as_runner() {
    let o = run("echo \"uid=$(id -u) user=$(id -un)\"; echo to-stderr >&2; echo done").await;
    o.assert_clean();
    assert_eq!(o.status(), ExitStatus::Code(0), "{o}");
    assert_eq!(
        o.stdout_str(),
        format!("uid={RUNNER_UID} user=runner\ndone\n"),
        "{o}"
    );
    assert_eq!(o.stderr_str(), "to-stderr\n", "{o}");
    assert_eq!(o.exit().unwrap().stopped_by, None);
    let s = o.summary.as_ref().unwrap();
    assert_eq!(
        (s.stdout_bytes, s.stderr_bytes),
        (o.stdout.len() as u64, 10)
    );
    assert!(o.summary.as_ref().unwrap().runner.is_some());
    assert!(!s.phases().is_empty(), "no boot phases reported\n{o}");
}

#[tokio::test]
async fn t1_nonzero_exit_code() {
    let o = run("echo partial; echo oops >&2; exit 7").await;
    o.assert_clean();
    assert_eq!(o.status(), ExitStatus::Code(7), "{o}");
    assert_eq!(o.stdout_str(), "partial\n");
    assert_eq!(o.stderr_str(), "oops\n");
}

#[tokio::test]
async fn t1_killed_by_a_signal() {
    let o = run("echo before; kill -KILL $$; echo after").await;
    o.assert_clean();
    assert_eq!(o.status(), ExitStatus::Signal(9), "{o}");
    assert_eq!(o.stdout_str(), "before\n");
}

// 2. Cgroup delegation, mounts, clock, hostname.

#[tokio::test]
async fn t2_cgroup_mounts_clock_hostname() {
    let script = r#"
set -e
echo "cgroup=$(cat /proc/self/cgroup)"
mkdir /sys/fs/cgroup/runner/kiln-probe
echo $$ > /sys/fs/cgroup/runner/kiln-probe/cgroup.procs
echo "moved=$(cat /proc/self/cgroup)"
echo "hostname=$(hostname)"
adjtimex | awk '/time.tv_sec/{s=$2} /time.tv_usec/{u=$2} END{printf "clock=%d.%06d\n", s, u}'
awk '{print "mount=" $2 " " $3}' /proc/mounts
"#;
    let o = run(script).await;
    o.assert_clean();
    assert_eq!(o.status(), ExitStatus::Code(0), "{o}");

    let cg = o.field("cgroup");
    assert!(
        cg.starts_with("0::/runner"),
        "job not in the runner's cgroup: {cg}\n{o}"
    );
    assert_eq!(o.field("moved"), "0::/runner/kiln-probe", "{o}");
    assert_eq!(o.field("hostname"), HOSTNAME);

    let mounts: Vec<String> = o
        .stdout_str()
        .lines()
        .filter_map(|l| l.strip_prefix("mount=").map(str::to_owned))
        .collect();
    for (point, fstype) in [
        ("/proc", "proc"),
        ("/sys", "sysfs"),
        ("/dev/pts", "devpts"),
        ("/dev/shm", "tmpfs"),
        ("/tmp", "tmpfs"),
        ("/run", "tmpfs"),
        ("/sys/fs/cgroup", "cgroup2"),
    ] {
        assert!(
            mounts.iter().any(|m| *m == format!("{point} {fstype}")),
            "{point} ({fstype}) is not mounted: {mounts:?}"
        );
    }

    // The guest read its clock just before the output left; the host notes
    // when the output arrived.
    let guest: f64 = o.field("clock").parse().unwrap();
    let received = o
        .events
        .iter()
        .find_map(|(at, ev)| match ev {
            Event::Output(out) if String::from_utf8_lossy(&out.data).contains("clock=") => {
                Some(*at)
            }
            _ => None,
        })
        .unwrap();
    let host = received.duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    assert!(
        (host - guest).abs() < 2.0,
        "guest clock {guest} vs host {host}: off by {:.3} s",
        host - guest
    );
}

// 3. Orphans are reaped.

#[tokio::test]
async fn t3_orphans_are_reaped() {
    let script = r#"
i=0
while [ $i -lt 100 ]; do (sleep 6 &); i=$((i+1)); done
awk '/^Name:/{n=$2} /^PPid:/{if (n == "sleep" && $2 == 1) c++} END{print "orphans=" c+0}' /proc/[0-9]*/status 2>/dev/null
sleep 9
awk '/^State:/{if ($2 == "Z") c++} END{print "zombies=" c+0}' /proc/[0-9]*/status 2>/dev/null
ps -o pid,ppid,stat,comm 2>/dev/null | awk '$3 ~ /Z/' >&2
"#;
    let o = run(script).await;
    o.assert_clean();
    assert_eq!(o.status(), ExitStatus::Code(0), "{o}");
    assert_eq!(
        o.field("orphans"),
        "100",
        "the orphans were not reparented to PID 1\n{o}"
    );
    assert_eq!(o.field("zombies"), "0", "{o}");
}

// 4. The deadline stops a job that would run forever, and the VM powers off.

#[tokio::test]
async fn t4_deadline_stops_the_job_and_the_vm() {
    let mut job = shell_job("echo started; while :; do sleep 1; done");
    job.deadline_ms = 3_000;
    job.grace_ms = 1_000;
    let o = TestVm::run(job, BootOptions::default()).await;
    o.assert_clean();
    let exit = o.exit().unwrap();
    assert_eq!(exit.stopped_by, Some(StopCause::Deadline), "{o}");
    // The deadline counts from the job's arrival, a little before the spawn.
    assert!(
        (2_000..20_000).contains(&exit.duration_ms),
        "stopped after {} ms\n{o}",
        exit.duration_ms
    );
    assert_eq!(o.stdout_str(), "started\n");
}

// 5. Cancel from the host runs the job's SIGTERM trap.

#[tokio::test]
async fn t5_cancel_runs_the_sigterm_trap() {
    let script = "trap 'echo trapped; exit 3' TERM; echo ready; while :; do sleep 1; done";
    let opts = BootOptions {
        cancel: Some(CancelWhen::StdoutContains {
            marker: "ready".into(),
            grace: Duration::from_secs(10),
        }),
        ..BootOptions::default()
    };
    let o = TestVm::run(shell_job(script), opts).await;
    o.assert_clean();
    let exit = o.exit().unwrap();
    assert_eq!(exit.stopped_by, Some(StopCause::Cancelled), "{o}");
    assert_eq!(
        exit.status,
        ExitStatus::Code(3),
        "the trap did not run\n{o}"
    );
    assert_eq!(o.stdout_str(), "ready\ntrapped\n", "{o}");
}

// 6. A garbage frame or a wrong protocol version from the host: the guest
//    reports an error and powers off.

async fn bad_opening(bytes: Vec<u8>) -> Outcome {
    let opts = BootOptions {
        opening: Opening::Raw(bytes),
        ..BootOptions::default()
    };
    let o = TestVm::run(shell_job("echo must-not-run"), opts).await;
    assert!(o.conversation_error.is_none(), "{o}");
    assert!(
        o.guest_error().is_some(),
        "the guest reported no error\n{o}"
    );
    assert!(o.exit().is_none(), "{o}");
    assert!(o.stdout.is_empty(), "{o}");
    o.assert_powered_off();
    o
}

#[tokio::test]
async fn t6_garbage_frame_from_the_host() {
    // A well-formed length, then a body that is no HostMessage.
    let o = bad_opening(vec![0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0xff]).await;
    let e = o.guest_error().unwrap();
    assert!(!e.detail.is_empty(), "{e:?}");
}

#[tokio::test]
async fn t6_wrong_protocol_version_from_the_host() {
    let mut job = shell_job("echo must-not-run");
    job.protocol_version = 99;
    let bytes = frame::encode(&HostMessage::Job(Box::new(job))).unwrap();
    let o = bad_opening(bytes).await;
    let e = o.guest_error().unwrap();
    let text = format!("{} {}", e.what, e.detail);
    assert!(
        text.contains("99") && text.contains(&kiln_protocol::PROTOCOL_VERSION.to_string()),
        "the error should name both versions: {e:?}"
    );
}

// 7. The JIT config reaches the job's environment but no command line.

#[tokio::test]
async fn t7_jit_config_is_in_no_command_line() {
    let secret = format!("kiln-jit-{}", random_token(16));
    // Patterns are read from files so that no grep's argv holds them, the
    // marker is computed so that the script's text does not, and NULs are
    // turned into spaces because busybox's grep -F stops at a NUL.
    let script = r#"
echo "$ACTIONS_RUNNER_INPUT_JITCONFIG" > /tmp/secret
echo "secret_len=$(($(wc -c < /tmp/secret) - 1))"
m="kiln-marker-$((6 * 7))"
echo "$m" > /tmp/marker
sh -c 'sleep 30; :' "$m" &
sleep 1
hits() {
    n=0
    for f in /proc/[0-9]*/cmdline /proc/cmdline; do
        if tr '\0' ' ' 2>/dev/null < "$f" | grep -q -F -f "$1"; then n=$((n + 1)); fi
    done
    echo "$n"
}
echo "marker_hits=$(hits /tmp/marker)"
echo "secret_hits=$(hits /tmp/secret)"
kill $! 2>/dev/null
true
"#;
    let job = with_env(shell_job(script), JIT_CONFIG_ENV, &secret);
    let o = TestVm::run(job, BootOptions::default()).await;
    o.assert_clean();
    assert_eq!(o.field("secret_len"), secret.len().to_string(), "{o}");
    assert_eq!(
        o.field("marker_hits"),
        "1",
        "the cmdline scan itself does not work\n{o}"
    );
    assert_eq!(o.field("secret_hits"), "0", "{o}");
    assert!(
        !o.console.contains(&secret),
        "the secret reached the console log"
    );
    assert!(!o.stdout_str().contains(&secret) && !o.stderr_str().contains(&secret));
}

// 8. With a scratch disk, what the job writes lands on it; the base image
//    is unchanged.

#[tokio::test]
async fn t8_scratch_disk_takes_the_writes_and_the_base_stays_intact() {
    let token = random_token(12);
    let script = format!(
        "cat /etc/kiln-base; echo {token} > \"$HOME/kiln-proof-file\"; sync; \
         awk '$2 == \"/\" || $2 == \"/home\" {{print \"mount=\" $2 \" \" $3}}' /proc/mounts"
    );
    let opts = BootOptions {
        scratch: true,
        ..BootOptions::default()
    };
    let o = TestVm::run(shell_job(&script), opts).await;
    o.assert_clean();
    assert_eq!(o.status(), ExitStatus::Code(0), "{o}");
    assert!(o.stdout_str().starts_with("the base image\n"), "{o}");
    let mounts = o.stdout_str();
    assert!(
        mounts.contains("mount=/ overlay"),
        "root is not the overlay\n{o}"
    );
    assert!(
        mounts.contains("mount=/home ext4"),
        "/home is not on the scratch ext4\n{o}"
    );

    let scratch = o.scratch_disk.as_deref().unwrap();
    let found = disk::find_files(scratch, "kiln-proof-file").unwrap();
    assert_eq!(found.len(), 1, "on the scratch disk: {found:?}\n{o}");
    let content = disk::read_file(scratch, &found[0]).unwrap();
    assert_eq!(String::from_utf8_lossy(&content), format!("{token}\n"));

    let base = o.base_image.as_deref().unwrap();
    assert!(disk::find_files(base, "kiln-proof-file")
        .unwrap()
        .is_empty());
    assert_eq!(
        disk::sha256(base).unwrap(),
        *o.base_sha256_before.as_ref().unwrap(),
        "the base image changed"
    );
}
