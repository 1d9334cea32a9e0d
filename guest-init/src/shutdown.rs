//! The end of every VM, orderly or not: stop what runs, flush the disks,
//! reboot (which with `reboot=k` and `-no-reboot` ends the VMM).

use std::time::{Duration, Instant};

use kiln_protocol::{GuestError, GuestMessage};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::reboot::{reboot, set_cad_enabled, RebootMode};
use nix::sys::signal::{kill, Signal};
use nix::unistd::{sync, Pid};

use crate::channel::Channel;
use crate::console::say;
use crate::error::Fatal;
use crate::mounts::unescape;
use crate::reaper;

/// For processes still running after the runner exited.
pub const LEFTOVER_GRACE: Duration = Duration::from_secs(2);
const AFTER_SIGKILL: Duration = Duration::from_secs(5);

/// Ctrl-Alt-Del then sends SIGINT to PID 1 instead of rebooting at once:
/// the host's way to ask for a graceful stop.
pub fn disable_ctrl_alt_del() {
    if let Err(e) = set_cad_enabled(false) {
        say!("reboot(RB_DISABLE_CAD): {e}");
    }
}

/// SIGTERM to every process but PID 1, up to `grace` for them to go,
/// then SIGKILL; reaps them all.
pub fn end_processes(grace: Duration) {
    if !reaper::reap(None).children_left {
        return;
    }
    let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
    if wait_for_none(grace) {
        return;
    }
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    if !wait_for_none(AFTER_SIGKILL) {
        say!("some processes survived SIGKILL");
    }
}

fn wait_for_none(limit: Duration) -> bool {
    let until = Instant::now() + limit;
    loop {
        if !reaper::reap(None).children_left {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Flushes, unmounts what holds data, reboots. Never returns.
pub fn power_off() -> ! {
    sync();
    unmount_disks();
    sync();
    let err = match reboot(RebootMode::RB_AUTOBOOT) {
        Err(e) => e,
        Ok(never) => match never {},
    };
    // Only reached without CAP_SYS_BOOT. PID 1 exiting panics the kernel,
    // which with panic=1 ends the VM too.
    say!("reboot failed: {err}; exiting so the kernel panics");
    std::process::exit(1)
}

/// Reports `err` to the console and, if it is up, to the host; then ends
/// every process and the VM.
pub fn fatal(err: &Fatal, chan: Option<&mut Channel>) -> ! {
    say!("fatal: {err}");
    if let Some(chan) = chan {
        let msg = GuestMessage::Error(GuestError {
            what: err.what.clone(),
            detail: err.detail.clone(),
        });
        if let Err(e) = chan.send_last(&msg, crate::channel::LAST_MESSAGE_LINGER) {
            say!("could not report the error to the host: {e}");
        }
    }
    end_processes(LEFTOVER_GRACE);
    power_off()
}

/// A panic is a bug; still, end the VM cleanly rather than leave it to the
/// kernel's panic on PID 1's death.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        say!("panic: {info}");
        sync();
        let _ = reboot(RebootMode::RB_AUTOBOOT);
    }));
}

/// Disk-backed mounts, innermost first: unmounted, or made read-only if
/// busy; then the root read-only. Best effort: sync() already ran.
fn unmount_disks() {
    let table = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    for (point, _) in disk_mounts(&table).into_iter().rev() {
        if point == "/" {
            continue;
        }
        if umount2(point.as_str(), MntFlags::empty()).is_err() {
            let _ = remount_ro(&point);
        }
    }
    let _ = remount_ro("/");
}

/// Mount points of filesystems that keep data: not proc, sysfs, tmpfs...
pub fn disk_mounts(table: &str) -> Vec<(String, String)> {
    const VIRTUAL: &[&str] = &[
        "proc",
        "sysfs",
        "devtmpfs",
        "devpts",
        "tmpfs",
        "mqueue",
        "cgroup2",
        "cgroup",
        "rootfs",
        "ramfs",
        "securityfs",
        "debugfs",
        "tracefs",
        "configfs",
        "fusectl",
        "bpf",
        "pstore",
        "hugetlbfs",
        "binfmt_misc",
        "autofs",
    ];
    table
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, point, fstype) = (f.next()?, f.next()?, f.next()?);
            (!VIRTUAL.contains(&fstype)).then(|| (unescape(point), fstype.to_owned()))
        })
        .collect()
}

fn remount_ro(point: &str) -> nix::Result<()> {
    mount(
        None::<&str>,
        point,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_disk_mounts_in_mount_order() {
        let table = "\
overlay / overlay rw 0 0
proc /proc proc rw 0 0
/dev/vdb /home ext4 rw 0 0
tmpfs /tmp tmpfs rw 0 0
/dev/vdb /var/lib/containers ext4 rw 0 0
cgroup2 /sys/fs/cgroup cgroup2 rw 0 0
";
        let got: Vec<String> = disk_mounts(table).into_iter().map(|(p, _)| p).collect();
        assert_eq!(got, vec!["/", "/home", "/var/lib/containers"]);
    }
}
