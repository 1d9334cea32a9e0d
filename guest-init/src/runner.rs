//! Starts the job's command: as its user, in the delegated cgroup leaf, in
//! a session of its own, with stdin from /dev/null and stdout/stderr on
//! pipes to PID 1. The actions runner's config files go on a tmpfs first
//! ([`crate::runner_config`]).

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use kiln_protocol::Job;
use nix::unistd::{chown, Gid, Pid, Uid};

use crate::cgroup::Delegation;
use crate::error::{OrSys, SysError};

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error(transparent)]
    Prepare(#[from] SysError),
    #[error("start {program:?} as uid {uid} in {workdir}: {source}")]
    Spawn {
        program: String,
        uid: u32,
        workdir: String,
        source: std::io::Error,
    },
}

pub struct Runner {
    pub pid: Pid,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    pub started: Instant,
}

pub fn spawn(job: &Job, cgroup: &Delegation) -> Result<Runner, RunnerError> {
    let (uid, gid) = (job.user.uid, job.user.gid);
    make_owned_dirs(Path::new(&job.user.home), uid, gid)?;
    make_owned_dirs(Path::new(&job.workdir), uid, gid)?;
    let runtime = runtime_dir(uid);
    make_owned_dirs(Path::new("/run/user"), 0, 0)?;
    make_private_dir(Path::new(&runtime), uid, gid)?;
    crate::runner_config::protect(uid, gid)?;

    let mut cmd = Command::new(&job.command.program);
    cmd.args(&job.command.args)
        .env_clear()
        .envs(environment(job))
        .current_dir(&job.workdir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());

    let procs = cgroup.procs.as_raw_fd();
    let groups: Vec<libc::gid_t> = job.user.groups.clone();
    // std's Command::uid/gid would drop privileges before this closure
    // runs, and an unprivileged process cannot move itself out of PID 1's
    // cgroup. So: cgroup first, then session, then the user. Only
    // async-signal-safe calls in here (it runs between fork and exec).
    let pre_exec = move || -> std::io::Result<()> {
        // SAFETY: plain syscalls on memory owned by the closure.
        unsafe {
            // PID 1 blocks SIGCHLD, SIGINT and SIGTERM for its signalfd, and
            // std leaves the mask as it is: without this, the job could
            // never see the SIGTERM of a graceful stop.
            let mut none = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
            libc::sigemptyset(none.as_mut_ptr());
            if libc::sigprocmask(libc::SIG_SETMASK, none.as_ptr(), std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::write(procs, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::setgroups(groups.len() as _, groups.as_ptr()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    };
    // SAFETY: the closure only makes async-signal-safe system calls.
    unsafe { cmd.pre_exec(pre_exec) };

    let started = Instant::now();
    let mut child = cmd.spawn().map_err(|source| RunnerError::Spawn {
        program: job.command.program.clone(),
        uid,
        workdir: job.workdir.clone(),
        source,
    })?;
    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    // Both are Some: they were asked for as pipes just above.
    let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(RunnerError::Spawn {
            program: job.command.program.clone(),
            uid,
            workdir: job.workdir.clone(),
            source: std::io::Error::other("no stdout/stderr pipe"),
        });
    };
    // `child` is dropped without waiting: the supervisor's reaper owns the
    // exit status.
    Ok(Runner {
        pid,
        stdout: out.into(),
        stderr: err.into(),
        started,
    })
}

/// Starts reading the job's program into the page cache on a thread of
/// its own. Its first exec would otherwise look it up and read it cold
/// from the base image, one disk read after another; configuring the VM
/// meanwhile takes about as long. Best effort: what fails here the exec
/// reports.
pub fn prefetch(job: &Job) {
    let Some(path) = program_path(job) else {
        return;
    };
    let _ = std::thread::Builder::new()
        .name("prefetch".into())
        .spawn(move || {
            if let Ok(file) = std::fs::File::open(&path) {
                let _ = nix::fcntl::posix_fadvise(
                    &file,
                    0,
                    0,
                    nix::fcntl::PosixFadviseAdvice::POSIX_FADV_WILLNEED,
                );
            }
        });
}

/// The file `execvp` would run: the program itself if it has a slash,
/// else the first match in the job's `PATH`.
fn program_path(job: &Job) -> Option<std::path::PathBuf> {
    let program = &job.command.program;
    if program.contains('/') {
        return Some(program.into());
    }
    let env = environment(job);
    let path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map_or(DEFAULT_PATH, |(_, v)| v.as_str());
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

pub fn runtime_dir(uid: u32) -> String {
    format!("/run/user/{uid}")
}

/// The command's environment: what the guest derives from the user, then
/// the job's own variables, which win.
pub fn environment(job: &Job) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        ("HOME".into(), job.user.home.clone()),
        ("USER".into(), job.user.name.clone()),
        ("LOGNAME".into(), job.user.name.clone()),
        ("PATH".into(), DEFAULT_PATH.into()),
        ("XDG_RUNTIME_DIR".into(), runtime_dir(job.user.uid)),
    ];
    for v in &job.env {
        match env.iter_mut().find(|(k, _)| *k == v.name) {
            Some(slot) => slot.1 = v.value.clone(),
            None => env.push((v.name.clone(), v.value.clone())),
        }
    }
    env
}

/// Creates `path` and its missing parents, each new one owned by uid:gid.
fn make_owned_dirs(path: &Path, uid: u32, gid: u32) -> Result<(), SysError> {
    if path.is_dir() {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        make_owned_dirs(parent, uid, gid)?;
    }
    match std::fs::DirBuilder::new().mode(0o755).create(path) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        r => r.or_sys(|| format!("create directory {}", path.display()))?,
    }
    chown(path, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
        .or_sys(|| format!("chown {uid}:{gid} {}", path.display()))
}

fn make_private_dir(path: &Path, uid: u32, gid: u32) -> Result<(), SysError> {
    match std::fs::DirBuilder::new().mode(0o700).create(path) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            Err(e).or_sys(|| format!("create directory {}", path.display()))?
        }
        _ => {}
    }
    chown(path, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
        .or_sys(|| format!("chown {uid}:{gid} {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_protocol::{CommandSpec, EnvVar, UserSpec, WallClock, JIT_CONFIG_ENV};

    fn job() -> Job {
        Job {
            protocol_version: kiln_protocol::PROTOCOL_VERSION,
            command: CommandSpec {
                program: "/bin/sh".into(),
                args: vec![],
            },
            env: vec![
                EnvVar::new(JIT_CONFIG_ENV, "secret"),
                EnvVar::new("PATH", "/opt/bin:/usr/bin"),
            ],
            user: UserSpec {
                name: "runner".into(),
                uid: 1001,
                gid: 1001,
                groups: vec![],
                home: "/home/runner".into(),
            },
            workdir: "/home/runner".into(),
            hostname: "vm".into(),
            dns: vec![],
            network: None,
            clock: WallClock::now(),
            entropy: vec![0; 32],
            rlimits: vec![],
            deadline_ms: 1,
            grace_ms: 1,
        }
    }

    #[test]
    fn environment_derives_user_vars_and_lets_the_job_override() {
        let env = environment(&job());
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("HOME"), Some("/home/runner"));
        assert_eq!(get("USER"), Some("runner"));
        assert_eq!(get("LOGNAME"), Some("runner"));
        assert_eq!(get("XDG_RUNTIME_DIR"), Some("/run/user/1001"));
        assert_eq!(get("PATH"), Some("/opt/bin:/usr/bin"));
        assert_eq!(get(JIT_CONFIG_ENV), Some("secret"));
        assert_eq!(env.iter().filter(|(n, _)| n == "PATH").count(), 1);
    }

    #[test]
    fn the_program_is_found_as_exec_would_find_it() {
        let mut j = job();
        assert_eq!(program_path(&j), Some("/bin/sh".into()));
        // A bare name: the first directory of the job's PATH that has it.
        let dir = std::env::temp_dir().join(format!("kiln-init-path-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("b")).unwrap();
        std::fs::write(dir.join("b/tool"), "").unwrap();
        j.command.program = "tool".into();
        j.env = vec![EnvVar::new(
            "PATH",
            format!("{0}/a:{0}/b:/usr/bin", dir.display()),
        )];
        assert_eq!(program_path(&j), Some(dir.join("b/tool")));
        j.command.program = "no-such-tool".into();
        assert_eq!(program_path(&j), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn owned_dirs_are_created_with_parents() {
        let base = std::env::temp_dir().join(format!("kiln-init-dirs-{}", std::process::id()));
        let deep = base.join("a/b/c");
        let (uid, gid) = (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        );
        make_owned_dirs(&deep, uid, gid).unwrap();
        assert!(deep.is_dir());
        make_owned_dirs(&deep, uid, gid).unwrap();
        std::fs::remove_dir_all(&base).unwrap();
    }
}
