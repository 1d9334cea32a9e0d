//! Processes by identity: a pid together with its start time, so that a
//! pid the kernel has since given to another process is never killed.
//!
//! The start time is field 22 of `/proc/<pid>/stat` (clock ticks after
//! boot), as the journal records it ([`crate::store::VmRecord`]). A kill
//! opens a pidfd first, checks the start time, then signals through the
//! pidfd: the pid cannot be reused between the check and the signal.
//!
//! [`processes_using`] finds the processes of a VM the journal does not
//! name (QEMU's helpers, a VMM whose pid was never recorded): those working
//! in one of the VM's directories, rooted in it (a jail), or naming it on
//! their command line.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A process: its pid and when it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProcessId {
    pub pid: u32,
    /// Field 22 of `/proc/<pid>/stat`.
    pub start_ticks: u64,
}

impl ProcessId {
    /// The process `pid` is now, if there is one (a zombie counts as gone).
    pub fn of(pid: u32) -> Option<ProcessId> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let stat = parse_stat(&text)?;
        (stat.state != 'Z' && stat.state != 'X').then_some(ProcessId {
            pid,
            start_ticks: stat.start_ticks,
        })
    }

    /// Whether this very process still runs: the pid exists, is no zombie,
    /// and started when this one did.
    pub fn is_same_alive(&self) -> bool {
        ProcessId::of(self.pid).is_some_and(|now| now.start_ticks == self.start_ticks)
    }

    /// SIGKILLs this process if it is still the same one; returns whether
    /// a signal was sent. A pid now used by another process is left alone.
    pub fn kill(&self) -> bool {
        let Ok(pid) = i32::try_from(self.pid) else {
            return false;
        };
        match pidfd_open(pid) {
            // The pidfd pins this pid: checked now, it cannot change.
            Some(fd) => self.is_same_alive() && pidfd_kill(&fd),
            // No pidfd (a kernel before 5.3): check, then signal by pid.
            None => {
                self.is_same_alive()
                    && nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    )
                    .is_ok()
            }
        }
    }
}

/// Waits until none of `procs` is alive, at most `limit`; returns those
/// still alive then.
pub fn wait_gone(procs: &[ProcessId], limit: Duration) -> Vec<ProcessId> {
    let started = Instant::now();
    loop {
        let alive: Vec<ProcessId> = procs
            .iter()
            .copied()
            .filter(ProcessId::is_same_alive)
            .collect();
        if alive.is_empty() || started.elapsed() >= limit {
            return alive;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The fields of `/proc/<pid>/stat` used here.
#[derive(Debug, PartialEq, Eq)]
struct Stat {
    state: char,
    start_ticks: u64,
}

/// Parses a `/proc/<pid>/stat` line. The command name (field 2) is in
/// parentheses and may hold spaces and parentheses itself, so the fields
/// are counted from the last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let after = &text[text.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    // Field 3 is the first after the name.
    let state = fields.next()?.chars().next()?;
    // Field 22 is the 19th after field 3.
    let start_ticks = fields.nth(18)?.parse().ok()?;
    Some(Stat { state, start_ticks })
}

/// Every other process whose working directory or root is `dirs` or below
/// one of them, or whose command line names one of them.
pub fn processes_using(dirs: &[PathBuf]) -> Vec<ProcessId> {
    if dirs.is_empty() {
        return Vec::new();
    }
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me && uses_any(pid, dirs))
        .filter_map(ProcessId::of)
        .collect()
}

fn uses_any(pid: u32, dirs: &[PathBuf]) -> bool {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let below = |link: &str| {
        std::fs::read_link(proc_dir.join(link)).is_ok_and(|p| dirs.iter().any(|d| p.starts_with(d)))
    };
    if below("cwd") || below("root") {
        return true;
    }
    let cmdline = std::fs::read(proc_dir.join("cmdline")).unwrap_or_default();
    dirs.iter().any(|d| names(&cmdline, d))
}

/// Whether a NUL-separated command line mentions `dir` as a path: `dir`
/// itself or something below it (`path=/run/kiln/vms/<id>/vsock.sock`).
fn names(cmdline: &[u8], dir: &Path) -> bool {
    let dir = dir.as_os_str().as_encoded_bytes();
    if dir.is_empty() {
        return false;
    }
    cmdline.windows(dir.len()).enumerate().any(|(i, w)| {
        w == dir
            && cmdline
                .get(i + dir.len())
                .is_none_or(|&next| matches!(next, b'/' | 0 | b',' | b'"' | b'\''))
    })
}

fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn pidfd_kill(fd: &OwnedFd) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: signals the process `fd` refers to; no pointers but a null
    // siginfo, which the call allows.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    r == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_last_paren() {
        let line =
            "1234 (a (b) c) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                state: 'S',
                start_ticks: 987654
            })
        );
        assert_eq!(parse_stat("1 (x) S 1 2"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_is_alive_and_a_wrong_start_time_is_not_it() {
        let me = ProcessId::of(std::process::id()).expect("me");
        assert!(me.is_same_alive());
        let other = ProcessId {
            start_ticks: me.start_ticks + 1,
            ..me
        };
        assert!(!other.is_same_alive());
        assert!(
            !other.kill(),
            "a pid with another start time is never signalled"
        );
    }

    #[test]
    fn command_lines_name_a_dir_only_as_a_path() {
        let dir = Path::new("/run/kiln/vms/kiln-0123456789ab");
        let hit = b"qemu\0-chardev\0socket,path=/run/kiln/vms/kiln-0123456789ab/q.sock\0";
        assert!(names(hit, dir));
        assert!(names(b"x\0/run/kiln/vms/kiln-0123456789ab\0", dir));
        assert!(names(b"x\0/run/kiln/vms/kiln-0123456789ab", dir));
        assert!(!names(b"x\0/run/kiln/vms/kiln-0123456789abc\0", dir));
        assert!(!names(b"x\0/other\0", dir));
    }

    #[test]
    fn a_process_working_in_a_dir_is_found_and_killed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = std::process::Command::new("sleep")
            .arg("300")
            .current_dir(dir.path())
            .spawn()
            .expect("spawn sleep");
        let found = processes_using(&[dir.path().to_owned()]);
        let id = ProcessId::of(child.id()).expect("child");
        assert!(found.contains(&id), "{found:?}");
        assert!(id.kill());
        let status = child.wait().expect("wait");
        assert!(!status.success());
        assert!(!id.is_same_alive());
    }
}
