//! The image's in-VM tests (issue 3, tests 1 to 4). Each boots the baked
//! image (`cargo xtask image --no-runner`): its kernel and initramfs, its
//! `rootfs.ext4` attached read-only and shared by every VM, and a fresh
//! sparse scratch disk per VM. Jobs run as `runner` (uid 1001).
//!
//! The image is built (or found up to date) once per test process under a
//! lock on `target/kiln-image.lock`, which stays shared while the tests run
//! so no other test process rebuilds it under them. `KILN_TEST_IMAGE=DIR`
//! uses an existing image directory as it is.
#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use kiln_protocol::{ExitStatus, Job};
use kiln_vm_tests::job::{random_token, with_env};
use kiln_vm_tests::{disk, shell_job, BakedImage, BootOptions, Outcome, TestVm};
use nix::fcntl::{Flock, FlockArg};
use xtask::image::manifest::Manifest;

// ---------------------------------------------------------------------------
// The image.

struct Image {
    dir: PathBuf,
    manifest: Manifest,
    /// Held shared for the whole process once the image is ready.
    _lock: Option<Flock<File>>,
}

impl Image {
    fn rootfs(&self) -> PathBuf {
        self.dir.join(xtask::image::ROOTFS)
    }

    fn boot_options(&self, memory_mib: u32, scratch_bytes: u64) -> BootOptions {
        BootOptions {
            memory_mib,
            image: Some(BakedImage {
                kernel: self.dir.join(xtask::image::KERNEL),
                initrd: self.dir.join(xtask::image::INITRD),
                rootfs: self.rootfs(),
                scratch_bytes,
                // slirp4netns (podman's rootless network) needs /dev/net/tun.
                extra_modules: vec!["tun".into()],
            }),
            ..BootOptions::default()
        }
    }
}

fn image() -> &'static Image {
    static IMAGE: OnceLock<Result<Image, String>> = OnceLock::new();
    match IMAGE.get_or_init(|| prepare_image().map_err(|e| format!("{e:#}"))) {
        Ok(img) => img,
        Err(e) => panic!("the baked image is not available: {e}"),
    }
}

fn prepare_image() -> anyhow::Result<Image> {
    if let Some(dir) = std::env::var_os("KILN_TEST_IMAGE") {
        let dir = PathBuf::from(dir);
        let manifest = read_manifest(&dir)?;
        return Ok(Image {
            dir,
            manifest,
            _lock: None,
        });
    }
    let workspace = kiln_vm_tests::assets::workspace();
    let dir = workspace.join("target/kiln-image");
    std::fs::create_dir_all(workspace.join("target"))?;
    let lock_path = workspace.join("target/kiln-image.lock");
    let file = File::create(&lock_path)?;
    let lock = Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow::anyhow!("locking {}: {e}", lock_path.display()))?;
    let started = Instant::now();
    // Exactly `cargo xtask image --no-runner`: the build is keyed on the
    // recipe and every input (kiln-init among them), so an up-to-date image
    // costs a few hashes and a stale or missing one is rebuilt.
    let args = xtask::image::Args::test_image(dir.clone());
    xtask::image::run(args).map_err(|e| {
        anyhow::anyhow!(
            "building the image failed ({e:#}); \
             try `cargo xtask image --no-runner` to see the whole build"
        )
    })?;
    eprintln!(
        "image_vm: image {} ready in {:.1} s",
        dir.display(),
        started.elapsed().as_secs_f64()
    );
    lock.relock(FlockArg::LockShared)?;
    let manifest = read_manifest(&dir)?;
    Ok(Image {
        dir,
        manifest,
        _lock: Some(lock),
    })
}

fn read_manifest(dir: &Path) -> anyhow::Result<Manifest> {
    let path = dir.join(xtask::image::manifest::FILE_NAME);
    Manifest::read(&path)
        .map_err(|e| anyhow::anyhow!("{e} (build the image with `cargo xtask image --no-runner`)"))
}

// ---------------------------------------------------------------------------
// The payload: a static ELF for this host (kiln_vm_tests::payload).

fn static_hello(message: &str) -> Vec<u8> {
    kiln_vm_tests::payload::static_hello(kiln::vmm::Arch::host(), message)
}

use kiln_vm_tests::payload::printf_octal;

// ---------------------------------------------------------------------------
// Helpers.

/// What a `step NAME cmd...` of the job's script printed to stdout, and its
/// exit code.
fn step(o: &Outcome, name: &str) -> (String, i32) {
    let out = o.stdout_str();
    let begin = format!("== {name}\n");
    let end = format!("\nrc:{name}=");
    let start = out
        .find(&begin)
        .unwrap_or_else(|| panic!("step {name} did not run\n{o}"))
        + begin.len();
    let rest = &out[start..];
    // The step function ends the output with a newline of its own.
    let at = rest
        .find(&end)
        .unwrap_or_else(|| panic!("step {name} did not finish\n{o}"));
    let (body, tail) = (&rest[..at], &rest[at + end.len()..]);
    let rc = tail
        .lines()
        .next()
        .and_then(|l| l.parse().ok())
        .unwrap_or_else(|| panic!("step {name}: no exit code\n{o}"));
    (body.to_owned(), rc)
}

const STEP_FN: &str = r#"step() { n=$1; shift; echo "== $n"; "$@"; r=$?; echo; echo "rc:$n=$r"; }"#;

fn wall(o: &Outcome, what: &str) {
    eprintln!("image_vm: {what}: VM ran {:.1} s", o.wall.as_secs_f64());
}

// ---------------------------------------------------------------------------
// 1 and 2. buildah from scratch + the static payload, podman run, docker
// run, podman info — all in one VM (each step's output and exit code are
// asserted by their own test).

struct ContainerVm {
    outcome: Outcome,
    message: String,
}

fn container_vm() -> &'static ContainerVm {
    static VM: OnceLock<ContainerVm> = OnceLock::new();
    VM.get_or_init(|| {
        let img = image();
        // Its own thread and runtime: the tests that share this VM each run
        // on a runtime of their own.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(run_container_vm(img))
        })
        .join()
        .unwrap()
    })
}

async fn run_container_vm(img: &Image) -> ContainerVm {
    let message = format!(
        "kiln payload {}: hello from a static binary\n",
        random_token(8)
    );
    let script = format!(
        r#"{STEP_FN}
cd "$HOME" || exit 90
printf '{payload}' > kiln-hello && chmod 0755 kiln-hello || exit 91
step native ./kiln-hello
step info podman info --format json
build() {{
    c=$(buildah from scratch) &&
    buildah copy "$c" kiln-hello /kiln-hello &&
    buildah config --entrypoint '["/kiln-hello"]' "$c" &&
    buildah commit "$c" localhost/kiln-hello:test
}}
step build build
step podman-run podman run --rm localhost/kiln-hello:test
step low-port podman run --rm -p 80:8080 localhost/kiln-hello:test
step sysctl cat /proc/sys/net/ipv4/ping_group_range /proc/sys/net/ipv4/ip_unprivileged_port_start
step docker-version docker --version
step docker-run docker run --rm localhost/kiln-hello:test
"#,
        payload = printf_octal(&static_hello(&message)),
    );
    let mut job = shell_job(&script);
    job.deadline_ms = 360_000;
    let mut opts = img.boot_options(1536, 8 << 30);
    opts.exit_timeout = Duration::from_secs(90);
    let outcome = TestVm::run(job, opts).await;
    wall(&outcome, "podman/buildah/docker VM");
    ContainerVm { outcome, message }
}

#[test]
fn t1_buildah_from_scratch_and_podman_run_print_the_payload() {
    let vm = container_vm();
    let o = &vm.outcome;
    o.assert_clean();
    assert_eq!(o.status(), ExitStatus::Code(0), "{o}");
    assert_eq!(
        step(o, "native"),
        (vm.message.clone(), 0),
        "the payload does not run in the guest\n{o}"
    );
    let (build, rc) = step(o, "build");
    assert_eq!(rc, 0, "buildah failed\n{o}");
    assert!(
        !build.trim().is_empty(),
        "buildah commit printed no id\n{o}"
    );
    assert_eq!(
        step(o, "podman-run"),
        (vm.message.clone(), 0),
        "podman run did not print the payload's output\n{o}"
    );
}

#[test]
fn t1_podman_info_native_overlay_cgroup_v2_cgroupfs() {
    let vm = container_vm();
    let o = &vm.outcome;
    let (json, rc) = step(o, "info");
    assert_eq!(rc, 0, "podman info failed\n{o}");
    let info: serde_json::Value = serde_json::from_str(&json)
        .unwrap_or_else(|e| panic!("podman info is not JSON ({e}): {json}\n{o}"));
    let s = |p: &str| info.pointer(p).and_then(|v| v.as_str()).unwrap_or("");
    assert_eq!(s("/store/graphDriverName"), "overlay", "{json}");
    let options = info.pointer("/store/graphOptions").cloned();
    assert!(
        !format!("{options:?}").contains("mount_program"),
        "overlay goes through a mount program (fuse-overlayfs), not the kernel: {options:?}"
    );
    assert_eq!(
        s("/store/graphStatus/Native Overlay Diff"),
        "true",
        "{json}"
    );
    assert_eq!(
        s("/store/graphStatus/Backing Filesystem"),
        "extfs",
        "podman's storage is not on the ext4 scratch disk: {json}"
    );
    assert_eq!(s("/host/cgroupVersion"), "v2", "{json}");
    assert_eq!(s("/host/cgroupManager"), "cgroupfs", "{json}");
    assert_eq!(
        info.pointer("/host/security/rootless"),
        Some(&serde_json::Value::Bool(true)),
        "{json}"
    );
}

/// kiln-init's sysctls: rootless podman publishes a port below 1024 (as
/// `services:` do), and every group may ping.
#[test]
fn t1_rootless_podman_publishes_a_low_port() {
    let vm = container_vm();
    let o = &vm.outcome;
    assert_eq!(
        step(o, "low-port"),
        (vm.message.clone(), 0),
        "podman run -p 80:8080 failed\n{o}"
    );
    assert_eq!(
        step(o, "sysctl"),
        ("0\t2147483647\n0\n".to_owned(), 0),
        "{o}"
    );
}

#[test]
fn t2_docker_run_prints_the_payload() {
    let vm = container_vm();
    let o = &vm.outcome;
    let (version, rc) = step(o, "docker-version");
    assert_eq!(rc, 0, "no docker command\n{o}");
    assert!(
        version.contains("podman"),
        "docker is not podman-docker: {version}"
    );
    assert_eq!(
        step(o, "docker-run"),
        (vm.message.clone(), 0),
        "docker run did not print the payload's output\n{o}"
    );
    assert!(
        !o.stderr_str().contains("Emulate Docker CLI"),
        "podman-docker's notice is not silenced\n{o}"
    );
}

// ---------------------------------------------------------------------------
// 3. Writes land on the VM's own scratch disk; the shared base is untouched;
//    two VMs at once do not see each other's files.

/// Writes a marker in $HOME (the scratch ext4) and /var/tmp (the overlay's
/// upper layer), then looks for the other VM's markers for a while.
fn isolation_job(mine: &str, theirs: &str) -> Job {
    let script = r#"
ms() { echo $(( $(date +%s%N) / 1000000 )); }
echo "$MINE" > "$HOME/kiln-marker-$MINE" && echo "$MINE" > "/var/tmp/kiln-marker-$MINE" && sync || exit 90
echo "wrote=$(ms)"
seen=0
end=$(( $(date +%s) + 15 ))
while [ "$(date +%s)" -lt "$end" ]; do
    for d in "$HOME" /var/tmp /tmp /; do
        if ls -a "$d" | grep -q -F "$THEIRS"; then seen=1; fi
    done
    sleep 1
done
echo "looked=$(ms)"
if find / -xdev -name "kiln-marker-$THEIRS" 2>/dev/null | grep -q .; then seen=1; fi
echo "seen=$seen"
echo "mine=$(ls "$HOME" /var/tmp | grep -c -F "kiln-marker-$MINE")"
awk '$2 == "/" || $2 == "/home" {print "mount=" $2 " " $3}' /proc/mounts
"#;
    let job = with_env(shell_job(script), "MINE", mine);
    with_env(job, "THEIRS", theirs)
}

#[tokio::test]
async fn t3_two_vms_write_to_their_own_scratch_and_not_the_base() {
    let img = image();
    let base = img.rootfs();
    let before = disk::sha256(&base).unwrap();
    assert_eq!(
        Some(&before),
        img.manifest
            .artifacts
            .get(xtask::image::ROOTFS)
            .map(|a| &a.sha256),
        "the base image already differs from its manifest"
    );
    let (a, b) = (random_token(8), random_token(8));
    let (oa, ob) = tokio::join!(
        TestVm::run(isolation_job(&a, &b), img.boot_options(512, 1 << 30)),
        TestVm::run(isolation_job(&b, &a), img.boot_options(512, 1 << 30)),
    );
    wall(&oa, "isolation VM a");
    wall(&ob, "isolation VM b");
    for (o, mine, theirs) in [(&oa, &a, &b), (&ob, &b, &a)] {
        o.assert_clean();
        assert_eq!(o.status(), ExitStatus::Code(0), "{o}");
        assert_eq!(o.field("mine"), "2", "own markers not visible\n{o}");
        assert_eq!(o.field("seen"), "0", "saw the other VM's marker\n{o}");
        let out = o.stdout_str();
        assert!(out.contains("mount=/ overlay"), "{o}");
        assert!(out.contains("mount=/home ext4"), "{o}");

        let scratch = o.scratch_disk.as_deref().unwrap();
        let name = format!("kiln-marker-{mine}");
        let mut found = disk::find_files(scratch, &name).unwrap();
        found.sort();
        assert_eq!(
            found,
            vec![
                format!("/home/runner/{name}"),
                format!("/upper/var/tmp/{name}")
            ],
            "the job's writes are not on its scratch disk\n{o}"
        );
        for path in &found {
            let content = disk::read_file(scratch, path).unwrap();
            assert_eq!(String::from_utf8_lossy(&content), format!("{mine}\n"));
        }
        let other = disk::find_files(scratch, &format!("kiln-marker-{theirs}")).unwrap();
        assert!(other.is_empty(), "the other VM's file is here: {other:?}");
    }
    // Each VM looked after the other had written: the look was meaningful.
    let t = |o: &Outcome, k: &str| o.field(k).parse::<u64>().unwrap();
    assert!(
        t(&oa, "looked") > t(&ob, "wrote") && t(&ob, "looked") > t(&oa, "wrote"),
        "the two VMs did not run at the same time (a: {}..{}, b: {}..{}); the test proves nothing",
        t(&oa, "wrote"),
        t(&oa, "looked"),
        t(&ob, "wrote"),
        t(&ob, "looked")
    );
    assert_eq!(
        disk::sha256(&base).unwrap(),
        before,
        "the base image changed"
    );
}

// ---------------------------------------------------------------------------
// 4. sudo: allowed when the Job lists the image's sudo group, refused
//    otherwise. One base image serves both.

fn sudo_job(groups: Vec<u32>) -> Job {
    let script = r#"
echo "groups=$(id -G)"
sudo -n true; echo "rc=$?"
echo "root=$(sudo -n id -u 2>/dev/null)"
"#;
    let mut job = shell_job(script);
    job.user.groups = groups;
    job
}

#[tokio::test]
async fn t4_sudo_follows_the_pool() {
    let img = image();
    let gid = img.manifest.accounts.sudo_gid;
    assert_eq!(
        img.manifest.sudo, "group",
        "the image grants sudo to everyone (built with --sudo)"
    );
    let (allowed, denied) = tokio::join!(
        TestVm::run(sudo_job(vec![gid]), img.boot_options(512, 256 << 20)),
        TestVm::run(sudo_job(Vec::new()), img.boot_options(512, 256 << 20)),
    );
    wall(&allowed, "sudo allowed VM");
    wall(&denied, "sudo denied VM");
    for o in [&allowed, &denied] {
        o.assert_clean();
        assert_eq!(o.status(), ExitStatus::Code(0), "{o}");
    }
    assert!(
        allowed
            .field("groups")
            .split_whitespace()
            .any(|g| g == gid.to_string()),
        "{allowed}"
    );
    assert_eq!(allowed.field("rc"), "0", "sudo refused\n{allowed}");
    assert_eq!(allowed.field("root"), "0", "{allowed}");

    assert!(
        !denied
            .field("groups")
            .split_whitespace()
            .any(|g| g == gid.to_string()),
        "{denied}"
    );
    assert_eq!(denied.field("rc"), "1", "sudo was not refused\n{denied}");
    assert_eq!(denied.field("root"), "", "{denied}");
    assert!(
        denied.stderr_str().contains("sudo: a password is required"),
        "{denied}"
    );
}
