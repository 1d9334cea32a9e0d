//! Scratch disks are sparse, so the scheduler's vCPUs and memory say
//! nothing about the host's disk: the VM layer holds room for each disk's
//! whole size. With the disk directory on a small filesystem of the test's
//! own (a 300 MiB tmpfs), a second VM whose disk would not fit beside the
//! first one's is refused before anything is made, with what to do.
#![allow(clippy::unwrap_used)]

use kiln::disk::budget::BudgetError;
use kiln::vm::{CollectSink, JobEnd, Launcher, RunError, RuntimeDirs, StopSignal, VmRequest};
use kiln_vm_tests::job::shell_job;
use kiln_vm_tests::{assets, layer};
use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// A tmpfs mounted for the test, unmounted when dropped.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    fn new(size: &str) -> SmallFs {
        let dir = tempfile::tempdir().unwrap();
        mount(
            Some("tmpfs"),
            dir.path(),
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(format!("size={size},mode=0700").as_str()),
        )
        .unwrap();
        SmallFs { dir }
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = umount2(self.dir.path(), MntFlags::MNT_DETACH);
    }
}

#[test]
fn a_disk_that_would_not_fit_beside_the_others_is_refused() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let small = SmallFs::new("300m");
    let root = tempfile::tempdir().unwrap();
    let assets = assets::get().unwrap_or_else(|e| panic!("{e:#}"));
    let dirs = RuntimeDirs::new(root.path().join("run"), small.dir.path().join("disks"));
    let launcher = Launcher::new(
        kiln::vm::Backend::Qemu(layer::qemu_config(assets).unwrap()),
        dirs,
    )
    .unwrap();
    let request = |script: &str, mib: u64| {
        let mut r = VmRequest::new(layer::boot_image(assets), shell_job(script));
        r.scratch_bytes = Some(mib << 20);
        r
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (first_started, started) = tokio::sync::oneshot::channel();
        let l1: Launcher = launcher.clone();
        let first = tokio::spawn(async move {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let mut sink = CollectSink::default();
            let run = l1.run(
                request("sleep 8", 160),
                &mut sink,
                StopSignal::never(),
                Some(tx),
            );
            tokio::pin!(run);
            let mut started = Some(first_started);
            loop {
                tokio::select! {
                    r = &mut run => return r,
                    Some(p) = rx.recv() => {
                        if matches!(p, kiln::vm::Progress::JobSent) {
                            if let Some(s) = started.take() { let _ = s.send(()); }
                        }
                    }
                }
            }
        });
        started.await.unwrap();
        // 160 MiB held by the first, 15 MiB of reserve: 160 more do not fit.
        let second = launcher
            .run(
                request("true", 160),
                &mut CollectSink::default(),
                StopSignal::never(),
                None,
            )
            .await;
        match &second.result {
            Err(RunError::NoDiskSpace(BudgetError::NoRoom { disks: 1, .. })) => {}
            other => panic!("{other:?}"),
        }
        let msg = second.result.as_ref().unwrap_err().to_string();
        assert!(msg.contains("scratch_gib"), "{msg}");
        assert!(second.teardown.is_ok());
        let first = first.await.unwrap();
        assert!(
            matches!(first.result, Ok(JobEnd::Exited(_))),
            "{:?}",
            first.result
        );
        // Its room is given back with its disk.
        let third = launcher
            .run(
                request("true", 160),
                &mut CollectSink::default(),
                StopSignal::never(),
                None,
            )
            .await;
        assert!(
            matches!(third.result, Ok(JobEnd::Exited(_))),
            "{:?}",
            third.result
        );
    });
}
