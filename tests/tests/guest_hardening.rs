//! Issue 13's guest items, each with real VMs (see tests/README.md).
//!
//! - 1: the disks are found by their filesystems' UUIDs, so a VM whose
//!   disks the kernel names the other way round (`vda` the scratch disk)
//!   still builds its root and runs the job.
#![allow(clippy::unwrap_used)]

use kiln::vmm::qemu::DiskOrder;
use kiln_protocol::ExitStatus;
use kiln_vm_tests::job::random_token;
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
