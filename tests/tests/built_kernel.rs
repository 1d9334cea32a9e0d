//! The slow suite: the production guest kernel that `cargo xtask kernel`
//! builds (everything built in, no modules, no initramfs) boots the baked
//! image the way Firecracker boots it — the kernel mounts the base image as
//! `/` read-only, kiln-init builds the overlay on the scratch disk with
//! pivot_root — and runs a job as `runner`.
//!
//! Ignored by default because the kernel takes about 10 minutes to build on
//! two cores. Run it with:
//!
//!     cargo xtask kernel
//!     cargo xtask image --no-runner
//!     cargo test -p kiln-vm-tests --test built_kernel -- --ignored
//!
//! The arm64 kernel (`cargo xtask kernel --arch arm64`: the `Image`
//! Firecracker boots on aarch64) boots the arm64 image the same way, in
//! `qemu-system-aarch64 -M virt` (emulated on an x86 host):
//!
//!     cargo xtask kernel --arch arm64
//!     cargo xtask image --arch arm64 --no-runner --out target/kiln-image-arm64
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use std::path::Path;

use kiln::vm::{stop_channel, BootImage, CollectSink, JobEnd, ModuleSet, VmRequest};
use kiln::vmm::Arch;
use kiln_protocol::ExitStatus;
use kiln_vm_tests::{layer, shell_job};

/// `$var`, or `target/<default>` in the workspace; it must exist.
fn input(var: &str, default: &str, make: &str) -> PathBuf {
    let path = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../target")
            .join(default)
    });
    assert!(
        path.exists(),
        "{} is missing: run `{make}` first (or set {var})",
        path.display()
    );
    path
}

#[test]
#[ignore = "slow suite: needs `cargo xtask kernel` (about 10 minutes); run with --ignored"]
fn built_kernel_boots_the_image_without_an_initramfs() {
    let image = layer::baked_image_dir().expect(
        "no baked image: run `cargo xtask image --no-runner` first (or set KILN_TEST_IMAGE)",
    );
    let kernel = input(
        "KILN_TEST_VMLINUX",
        "kiln-kernel/x86_64/vmlinux",
        "cargo xtask kernel",
    );
    boots_without_an_initramfs(&image, kernel, Arch::host());
}

#[test]
#[ignore = "slow suite: needs `cargo xtask kernel --arch arm64` and the arm64 image; run with --ignored"]
fn built_arm64_kernel_boots_the_arm64_image_without_an_initramfs() {
    let image = input(
        "KILN_TEST_IMAGE_ARM64",
        "kiln-image-arm64",
        "cargo xtask image --arch arm64 --no-runner --out target/kiln-image-arm64",
    );
    let kernel = input(
        "KILN_TEST_ARM64_KERNEL",
        "kiln-kernel/aarch64/Image",
        "cargo xtask kernel --arch arm64",
    );
    boots_without_an_initramfs(&image, kernel, Arch::Aarch64);
}

fn boots_without_an_initramfs(image: &Path, kernel: PathBuf, arch: Arch) {
    let base = image.join("rootfs.ext4");
    let before = std::fs::read(&base).unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let root = tempfile::tempdir().unwrap();
    let (launcher, _dirs) = layer::launcher(root.path()).unwrap();
    let boot = BootImage {
        kernel,
        arch,
        initrd: None,
        base_image: Some(base.clone()),
        // Everything is built in: kiln-init is asked to load nothing.
        modules: ModuleSet::Listed(Vec::new()),
        scratch_skeleton: None,
    };
    let mut req = VmRequest::new(
        boot,
        shell_job(
            "id -u; grep -c ' / overlay ' /proc/mounts; \
             echo from-the-job > /home/runner/marker && cat /home/runner/marker; \
             ls /lib/modules 2>/dev/null | wc -l",
        ),
    );
    req.memory_mib = 1024;
    req.scratch_bytes = Some(1 << 30);
    let (_stop_handle, stop) = stop_channel();
    let mut sink = CollectSink::default();
    let report = rt.block_on(launcher.run(req, &mut sink, stop, None));
    let stdout = String::from_utf8_lossy(&sink.stdout).into_owned();
    match &report.result {
        Ok(JobEnd::Exited(e)) => assert_eq!(
            e.status,
            ExitStatus::Code(0),
            "stdout: {stdout}\nstderr: {}\nconsole: {}",
            String::from_utf8_lossy(&sink.stderr),
            report.console_tail
        ),
        other => panic!("{other:?}\nconsole: {}", report.console_tail),
    }
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.first(), Some(&"1001"), "runs as runner: {stdout}");
    assert_eq!(lines.get(1), Some(&"1"), "the root is an overlay: {stdout}");
    assert_eq!(lines.get(2), Some(&"from-the-job"), "{stdout}");
    assert!(report.teardown.is_ok(), "{:?}", report.teardown);
    assert!(
        std::fs::read(&base).unwrap() == before,
        "the base image changed"
    );
}
