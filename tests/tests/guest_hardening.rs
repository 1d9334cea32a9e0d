//! Issue 13's guest items, each with real VMs (see tests/README.md).
//!
//! - 1: the disks are found by their filesystems' UUIDs, so a VM whose
//!   disks the kernel names the other way round (`vda` the scratch disk)
//!   still builds its root and runs the job.
#![allow(clippy::unwrap_used)]

use kiln::vmm::qemu::DiskOrder;
use kiln_protocol::ExitStatus;
use kiln_vm_tests::job::{random_token, with_env};
use kiln_vm_tests::{disk, shell_job, BootOptions, Outcome, TestVm};

/// 512-byte sectors of the test images (tests/src/disk.rs): 64 MiB base,
/// 256 MiB scratch.
const BASE_SECTORS: &str = "131072";
const SCRATCH_SECTORS: &str = "524288";

async fn boot_with(order: DiskOrder, token: &str) -> Outcome {
    let script = format!(
        "cat /etc/kiln-base; echo vda_sectors=$(cat /sys/block/vda/size); \
         echo vdb_sectors=$(cat /sys/block/vdb/size); \
         for w in $(cat /proc/cmdline); do case $w in kiln.root=*|kiln.scratch=*) echo \"$w\";; esac; done; \
         echo {token} > \"$HOME/kiln-order-proof\"; sync"
    );
    let opts = BootOptions {
        scratch: true,
        disk_order: order,
        ..BootOptions::default()
    };
    TestVm::run(shell_job(&script), opts).await
}

fn check(o: &Outcome, order: DiskOrder, token: &str) {
    o.assert_clean();
    assert_eq!(o.status(), ExitStatus::Code(0), "{order:?}\n{o}");
    assert!(
        o.stdout_str().starts_with("the base image\n"),
        "{order:?}: the root is not the base image\n{o}"
    );
    // The order really was as asked: otherwise this test proves nothing.
    let (vda, vdb) = match order {
        DiskOrder::BaseFirst => (BASE_SECTORS, SCRATCH_SECTORS),
        DiskOrder::ScratchFirst => (SCRATCH_SECTORS, BASE_SECTORS),
    };
    assert_eq!(o.field("vda_sectors"), vda, "{order:?}\n{o}");
    assert_eq!(o.field("vdb_sectors"), vdb, "{order:?}\n{o}");
    assert!(o.field("kiln.root").starts_with("UUID="), "{o}");
    assert!(o.field("kiln.scratch").starts_with("UUID="), "{o}");
    let scratch = o.scratch_disk.as_deref().unwrap();
    let found = disk::find_files(scratch, "kiln-order-proof").unwrap();
    assert_eq!(
        found.len(),
        1,
        "{order:?}: on the scratch disk: {found:?}\n{o}"
    );
    let content = disk::read_file(scratch, &found[0]).unwrap();
    assert_eq!(String::from_utf8_lossy(&content), format!("{token}\n"));
    let base = o.base_image.as_deref().unwrap();
    assert_eq!(
        disk::sha256(base).unwrap(),
        *o.base_sha256_before.as_ref().unwrap(),
        "{order:?}: the base image changed"
    );
}

// 1. Either probe order reaches the job, with the base image as the lower
//    layer and the writes on the scratch disk.
#[tokio::test]
async fn i1_disks_are_found_whichever_order_they_are_attached_in() {
    let (t1, t2) = (random_token(8), random_token(8));
    let (a, b) = tokio::join!(
        boot_with(DiskOrder::BaseFirst, &t1),
        boot_with(DiskOrder::ScratchFirst, &t2)
    );
    check(&a, DiskOrder::BaseFirst, &t1);
    check(&b, DiskOrder::ScratchFirst, &t2);
}

/// A stand-in for `run.sh`: writes the three files as the runner does
/// from its JIT config, reads them back, and reports how they are mounted.
const STAND_IN_RUNNER: &str = r#"#!/bin/sh
set -e
cd /opt/actions-runner
for f in .runner .credentials .credentials_rsaparams; do
  printf '%s%s' "$SECRET" "$f" > "$f"
done
for f in .runner .credentials .credentials_rsaparams; do
  echo "read$f=$(cat "$f")"
  echo "fs$f=$(awk -v p="/opt/actions-runner/$f" '$2 == p {print $3}' /proc/mounts)"
done
echo "$CONTROL" > "$HOME/control"
sync
"#;

/// Whether `needle` occurs anywhere in the file's bytes.
fn file_contains(path: &std::path::Path, needle: &[u8]) -> bool {
    use std::io::Read;
    let mut f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; 4 << 20];
    let mut carry: Vec<u8> = Vec::new();
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            return false;
        }
        carry.extend_from_slice(&buf[..n]);
        if carry.windows(needle.len()).any(|w| w == needle) {
            return true;
        }
        let keep = carry.len().saturating_sub(needle.len());
        carry.drain(..keep);
    }
}

// 15. The credentials the runner writes never reach the scratch disk; a
//     file the job writes does (so the scan would see them).
#[tokio::test]
async fn i15_runner_credentials_stay_in_ram() {
    let (secret, control) = (random_token(16), random_token(16));
    let job = with_env(
        with_env(
            shell_job("sh /opt/actions-runner/run.sh"),
            "SECRET",
            &secret,
        ),
        "CONTROL",
        &control,
    );
    let opts = BootOptions {
        scratch: true,
        base_files: vec![(
            "opt/actions-runner/run.sh".into(),
            0o755,
            STAND_IN_RUNNER.into(),
        )],
        ..BootOptions::default()
    };
    let o = TestVm::run(job, opts).await;
    o.assert_clean();
    assert_eq!(o.status(), ExitStatus::Code(0), "{o}");
    for f in [".runner", ".credentials", ".credentials_rsaparams"] {
        assert_eq!(o.field(&format!("read{f}")), format!("{secret}{f}"), "{o}");
        assert_eq!(o.field(&format!("fs{f}")), "tmpfs", "{o}");
    }
    let scratch = o.scratch_disk.as_deref().unwrap();
    assert!(
        file_contains(scratch, control.as_bytes()),
        "the job's own file is not on the scratch disk: the scan sees nothing\n{o}"
    );
    assert!(
        !file_contains(scratch, secret.as_bytes()),
        "the runner's credentials reached the scratch disk\n{o}"
    );
    let base = o.base_image.as_deref().unwrap();
    assert!(!file_contains(base, secret.as_bytes()));
}
