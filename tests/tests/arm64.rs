//! arm64 guests, proven on any host: the image baked with `cargo xtask image
//! --arch arm64 --no-runner` boots in `qemu-system-aarch64 -M virt` — under
//! TCG on an x86 host (emulated, logged as such), under KVM on an arm64 one
//! — and runs jobs through the same host-shim code as x86 guests. The
//! guest-side checks that do not depend on the architecture (the job's
//! cgroup, reaping, the deadline, the JIT config in no command line) run
//! here too, with the image's Debian tools instead of the test initramfs's
//! busybox (which is x86).
//!
//! The image is built (or found up to date) once per test process under a
//! lock on `target/kiln-image-arm64.lock`; `KILN_TEST_IMAGE_ARM64=DIR` uses
//! an existing image directory as it is.
#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use kiln::vmm::qemu::Accel;
use kiln::vmm::Arch;
use kiln_protocol::{ExitStatus, StopCause, JIT_CONFIG_ENV};
use kiln_vm_tests::job::{random_token, with_env};
use kiln_vm_tests::payload;
use kiln_vm_tests::{shell_job, BakedImage, BootOptions, Outcome, TestVm};
use nix::fcntl::{Flock, FlockArg};

struct Image {
    dir: PathBuf,
    _lock: Option<Flock<File>>,
}

fn image() -> &'static Image {
    static IMAGE: OnceLock<Result<Image, String>> = OnceLock::new();
    match IMAGE.get_or_init(|| prepare_image().map_err(|e| format!("{e:#}"))) {
        Ok(img) => img,
        Err(e) => panic!("the arm64 image is not available: {e}"),
    }
}

fn prepare_image() -> anyhow::Result<Image> {
    if let Some(dir) = std::env::var_os("KILN_TEST_IMAGE_ARM64") {
        return Ok(Image {
            dir: PathBuf::from(dir),
            _lock: None,
        });
    }
    let workspace = kiln_vm_tests::assets::workspace();
    let dir = workspace.join("target/kiln-image-arm64");
    std::fs::create_dir_all(workspace.join("target"))?;
    let lock_path = workspace.join("target/kiln-image-arm64.lock");
    let lock = Flock::lock(File::create(&lock_path)?, FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow::anyhow!("locking {}: {e}", lock_path.display()))?;
    let started = Instant::now();
    let mut args = xtask::image::Args::test_image(dir.clone());
    args.arch = Some("arm64".into());
    xtask::image::run(args).map_err(|e| {
        anyhow::anyhow!(
            "building the arm64 image failed ({e:#}); \
             try `cargo xtask image --arch arm64 --no-runner` to see the whole build"
        )
    })?;
    eprintln!(
        "arm64: image {} ready in {:.1} s",
        dir.display(),
        started.elapsed().as_secs_f64()
    );
    lock.relock(FlockArg::LockShared)?;
    Ok(Image {
        dir,
        _lock: Some(lock),
    })
}

fn options() -> BootOptions {
    let img = image();
    BootOptions {
        arch: Arch::Aarch64,
        memory_mib: 1024,
        // An emulated boot takes tens of seconds on a loaded host.
        boot_timeout: Duration::from_secs(300),
        image: Some(BakedImage {
            kernel: img.dir.join(xtask::image::KERNEL),
            initrd: img.dir.join(xtask::image::INITRD),
            rootfs: img.dir.join(xtask::image::ROOTFS),
            scratch_bytes: 1 << 30,
            extra_modules: Vec::new(),
        }),
        ..BootOptions::default()
    }
}

/// No process on the host still names the VM's directory (QEMU and
/// vhost-device-vsock have it in their argv).
fn assert_nothing_left(dir: &Path) {
    let needle = dir.to_string_lossy().into_owned();
    let left: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&needle))
        .collect();
    assert!(left.is_empty(), "still running: {left:?}");
}

/// Runs `job` on the arm64 image and checks what every run must show: the
/// guest is aarch64, emulated where the host is not, and gone afterwards.
async fn run(job: kiln_protocol::Job) -> Outcome {
    let o = TestVm::run(job, options()).await;
    if !Arch::Aarch64.is_native() {
        assert_eq!(o.accel.accel, Accel::Tcg, "{o}");
        assert!(o.accel.reason.contains("emulated"), "{}", o.accel.reason);
    }
    assert_nothing_left(o.dir.path());
    o
}

#[tokio::test]
async fn a1_a_job_runs_as_runner_on_aarch64_and_its_end_comes_back() {
    let o = run(shell_job(
        "echo \"arch=$(uname -m)\"; echo \"uid=$(id -u)\"; echo to-stderr >&2; exit 7",
    ))
    .await;
    o.assert_clean();
    assert_eq!(o.field("arch"), "aarch64", "{o}");
    assert_eq!(o.field("uid"), "1001", "{o}");
    assert_eq!(o.stderr_str(), "to-stderr\n", "{o}");
    assert_eq!(o.status(), ExitStatus::Code(7), "{o}");
    let hello = o.hello.as_ref().unwrap();
    let booted_ms = hello.boot.last().map_or(0, |p| p.at_ns / 1_000_000);
    eprintln!(
        "arm64: guest connected after {booted_ms} ms of guest boot; whole VM {:.1} s ({})",
        o.wall.as_secs_f64(),
        o.accel.reason
    );
    let dir = o.dir.path().to_owned();
    drop(o);
    assert!(
        !dir.exists(),
        "the VM directory was left: {}",
        dir.display()
    );
}

#[tokio::test]
async fn a2_the_job_is_in_its_cgroup_and_may_make_children() {
    let script = r#"
set -e
echo "cgroup=$(cat /proc/self/cgroup)"
mkdir /sys/fs/cgroup/runner/kiln-probe
echo $$ > /sys/fs/cgroup/runner/kiln-probe/cgroup.procs
echo "moved=$(cat /proc/self/cgroup)"
echo "fs=$(stat -f -c %T /sys/fs/cgroup)"
"#;
    let o = run(shell_job(script)).await;
    o.assert_clean();
    assert_eq!(o.status(), ExitStatus::Code(0), "{o}");
    assert!(o.field("cgroup").starts_with("0::/runner"), "{o}");
    assert_eq!(o.field("moved"), "0::/runner/kiln-probe", "{o}");
    assert_eq!(o.field("fs"), "cgroup2fs", "{o}");
}

#[tokio::test]
async fn a3_orphans_are_reaped() {
    let script = r#"
i=0
while [ $i -lt 20 ]; do (sleep 8 &); i=$((i+1)); done
awk '/^Name:/{n=$2} /^PPid:/{if (n == "sleep" && $2 == 1) c++} END{print "orphans=" c+0}' /proc/[0-9]*/status 2>/dev/null
sleep 12
awk '/^State:/{if ($2 == "Z") c++} END{print "zombies=" c+0}' /proc/[0-9]*/status 2>/dev/null
"#;
    let o = run(shell_job(script)).await;
    o.assert_clean();
    assert_eq!(o.field("orphans"), "20", "{o}");
    assert_eq!(o.field("zombies"), "0", "{o}");
}

#[tokio::test]
async fn a4_the_deadline_stops_the_job_and_the_vm() {
    let mut job = shell_job("echo started; while :; do sleep 1; done");
    job.deadline_ms = 5_000;
    job.grace_ms = 1_000;
    let o = run(job).await;
    o.assert_clean();
    assert_eq!(
        o.exit().unwrap().stopped_by,
        Some(StopCause::Deadline),
        "{o}"
    );
    assert_eq!(o.stdout_str(), "started\n");
}

#[tokio::test]
async fn a5_the_jit_config_is_in_no_command_line() {
    let secret = format!("kiln-jit-{}", random_token(16));
    let script = r#"
printf '%s\n' "$ACTIONS_RUNNER_INPUT_JITCONFIG" > /tmp/secret
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
    let o = run(with_env(shell_job(script), JIT_CONFIG_ENV, &secret)).await;
    o.assert_clean();
    assert_eq!(o.field("marker_hits"), "1", "the scan does not work\n{o}");
    assert_eq!(o.field("secret_hits"), "0", "{o}");
    assert!(
        !o.console.contains(&secret),
        "the secret reached the console"
    );
}

/// buildah builds an image from scratch around a static aarch64 payload
/// and rootless podman runs it, as the x86 image's test does.
#[tokio::test]
async fn a6_buildah_from_scratch_and_rootless_podman_run() {
    let message = format!("kiln arm64 payload {}\n", random_token(8));
    let payload = payload::static_hello(Arch::Aarch64, &message);
    let script = format!(
        r#"
cd "$HOME" || exit 90
printf '{payload}' > kiln-hello && chmod 0755 kiln-hello || exit 91
./kiln-hello || exit 92
c=$(buildah from scratch) &&
buildah copy "$c" kiln-hello /kiln-hello >/dev/null &&
buildah config --entrypoint '["/kiln-hello"]' "$c" &&
buildah commit -q "$c" localhost/kiln-hello:test >/dev/null || exit 93
echo "== podman"
podman run --rm localhost/kiln-hello:test
"#,
        payload = payload::printf_octal(&payload),
    );
    let mut job = shell_job(&script);
    job.deadline_ms = 900_000;
    let mut opts = options();
    opts.memory_mib = 1536;
    opts.exit_timeout = Duration::from_secs(120);
    if let Some(img) = &mut opts.image {
        // slirp4netns (podman's rootless network) needs /dev/net/tun.
        img.extra_modules = vec!["tun".into()];
        img.scratch_bytes = 8 << 30;
    }
    let o = TestVm::run(job, opts).await;
    eprintln!(
        "arm64: buildah + podman VM ran {:.1} s",
        o.wall.as_secs_f64()
    );
    assert_nothing_left(o.dir.path());
    o.assert_clean();
    assert_eq!(o.status(), ExitStatus::Code(0), "{o}");
    assert_eq!(
        o.stdout_str(),
        format!("{message}== podman\n{message}"),
        "{o}"
    );
}

/// `kiln run`, the binary, with the arm64 image: the job's output and exit
/// code come back, the log says the VM is emulated, and nothing is left.
#[tokio::test]
async fn a7_kiln_run_says_the_vm_is_emulated() {
    let root = tempfile::Builder::new()
        .prefix("kiln-run-")
        .tempdir_in("/tmp")
        .unwrap();
    let kiln = kiln_vm_tests::layer::kiln_binary().unwrap();
    let run = tokio::process::Command::new(kiln)
        .arg("run")
        .arg("--image")
        .arg(&image().dir)
        .args(["--backend", "qemu", "--network", "none"])
        .args(["--cpus", "1", "--memory", "1024", "--disk", "1"])
        .args(["--", "sh", "-c", "uname -m; exit 3"])
        .env("KILN_RUNTIME_DIR", root.path().join("run"))
        .env("KILN_DISK_DIR", root.path().join("disks"))
        .env_remove("KILN_IMAGE")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(600), run)
        .await
        .expect("kiln run took over 10 minutes")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert_eq!(out.stdout, b"aarch64\n", "{stderr}");
    if !Arch::Aarch64.is_native() {
        assert!(stderr.contains("VM emulated"), "{stderr}");
    }
    kiln_vm_tests::layer::assert_no_vm_left(root.path());
}
