//! The `kiln` command line. `main.rs` only calls [`main`].
//!
//! - [`run`]: `kiln run` — one job in a fresh microVM, without GitHub.
//! - [`doctor`]: `kiln doctor` — what this host lacks.
//! - [`serve`]: `kiln serve` — the daemon: GitHub webhooks in, one microVM per job.
//! - [`admin`]: `kiln ps`, `kiln logs`, `kiln cancel` — a running `kiln serve`'s jobs.
//! - [`config`]: `kiln config check` — is this config file one `kiln serve` takes?

pub mod admin;
pub mod config;
pub mod doctor;
mod log_writer;
pub mod run;
pub mod serve;
mod signals;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "kiln",
    version,
    about = "Every GitHub Actions job in a fresh microVM"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Boot a fresh microVM from the image, run CMD in it as the image's
    /// runner user, stream its output, and exit with its exit code.
    Run(Box<run::RunArgs>),
    /// Check this host for everything Kiln needs, and say what to do about what is missing.
    Doctor(doctor::DoctorArgs),
    /// The daemon: take GitHub's workflow_job webhooks and run each job in a fresh microVM.
    Serve(serve::ServeArgs),
    /// Check `kiln serve`'s config file.
    Config(config::ConfigArgs),
    /// The jobs a running kiln serve runs and has queued: id, pool, repository, state, age, VM, boot.
    Ps(admin::PsArgs),
    /// A job's log (by job or VM id), or with -f what it writes next, until it is over.
    Logs(admin::LogsArgs),
    /// Cancel a job: dequeue it, or stop its runner (SIGTERM, then SIGKILL after the grace).
    Cancel(admin::CancelArgs),
}

/// No core dump of kiln, and no ptrace or `/proc/<pid>/` reading by
/// its uid's other processes: its memory holds the App key, installation
/// tokens and JIT configs. The VMMs it starts are unaffected (exec resets
/// the flag).
fn not_dumpable() {
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!(error = %e, "could not make kiln non-dumpable (PR_SET_DUMPABLE 0): a core dump would hold its secrets");
    }
}

/// Logs go to stderr, filtered by `KILN_LOG` (default `warn` for `kiln
/// run`, whose stderr is the job's, and `info` otherwise).
fn init_tracing(default: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(log_filter(default))
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

/// The daemon's logs: the same, but written in batches by a thread of
/// their own (see [`log_writer`]), so a webhook handler's line per queued
/// job costs no system call. The guard writes what is left when `kiln
/// serve` exits.
fn init_daemon_tracing(default: &str) -> Option<log_writer::FlushGuard> {
    let Ok((writer, guard)) = log_writer::batched(std::io::stderr()) else {
        // No thread for the logs: write them directly.
        init_tracing(default);
        return None;
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(log_filter(default))
        // Colour codes only for a person at a terminal, not for journald
        // or a log file.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer);
    if stderr_is_the_journal() {
        // journald stamps every line itself.
        logs.without_time().init();
    } else {
        logs.init();
    }
    Some(guard)
}

/// Whether stderr is journald's stream: systemd sets `JOURNAL_STREAM` to
/// its `device:inode` for the service it starts.
fn stderr_is_the_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    is_stream(&stream.to_string_lossy(), meta.dev(), meta.ino())
}

/// `JOURNAL_STREAM`'s `device:inode` names the file with `dev` and `ino`.
fn is_stream(journal_stream: &str, dev: u64, ino: u64) -> bool {
    journal_stream
        .split_once(':')
        .and_then(|(d, i)| Some((d.parse::<u64>().ok()?, i.parse::<u64>().ok()?)))
        == Some((dev, ino))
}

fn log_filter(default: &str) -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_env("KILN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default))
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            init_tracing("warn");
            not_dumpable();
            run::main(*args)
        }
        Command::Doctor(args) => {
            init_tracing("info");
            doctor::main(args)
        }
        Command::Serve(args) => {
            let _flush_on_exit = init_daemon_tracing("info");
            not_dumpable();
            serve::main(args)
        }
        Command::Config(args) => {
            init_tracing("warn");
            not_dumpable();
            config::main(args)
        }
        Command::Ps(args) => {
            init_tracing("warn");
            admin::ps(args)
        }
        Command::Logs(args) => {
            init_tracing("warn");
            admin::logs(args)
        }
        Command::Cancel(args) => {
            init_tracing("warn");
            admin::cancel(args)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_journal_stream_is_recognised_by_device_and_inode() {
        assert!(is_stream("64769:123456", 64769, 123456));
        assert!(!is_stream("64769:123456", 64769, 123457));
        assert!(!is_stream("garbage", 1, 2));
        assert!(!is_stream("", 0, 0));
    }
}
