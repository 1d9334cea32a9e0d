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
use tracing_subscriber::util::SubscriberInitExt;

use crate::logs::{self, BadLogFormat, LogFormat, LogSettings};

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
/// the flag). Call before any secret is read; [`warn_dumpable`] says
/// when it failed, once the logs are set up.
fn not_dumpable() -> nix::Result<()> {
    nix::sys::prctl::set_dumpable(false)
}

fn warn_dumpable(made: nix::Result<()>) {
    if let Err(e) = made {
        tracing::warn!(error = %e, "could not make kiln non-dumpable (PR_SET_DUMPABLE 0): a core dump would hold its secrets");
    }
}

/// Logs go to stderr, filtered by `KILN_LOG` (default `warn` for `kiln
/// run`, whose stderr is the job's, and `info` otherwise), in the format
/// `KILN_LOG_FORMAT` names (text by default).
fn init_tracing(default: &str) -> Result<(), BadLogFormat> {
    let settings = log_settings(LogFormat::from_env()?);
    // Only fails when a subscriber is set already: the first one stays.
    let _ = logs::subscriber(settings, log_filter(default), std::io::stderr).try_init();
    Ok(())
}

/// [`init_tracing`] for the commands other than `kiln serve`, or the
/// exit code when `KILN_LOG_FORMAT` is bad.
fn init_tracing_or(command: &str, default: &str, failed: ExitCode) -> Result<(), ExitCode> {
    init_tracing(default).map_err(|e| {
        eprintln!("kiln {command}: {e}");
        failed
    })
}

/// The daemon's logs, in its config's format: the same, but written in
/// batches by a thread of their own (see [`log_writer`]), so a webhook
/// handler's line per queued job costs no system call. The guard writes
/// what is left when `kiln serve` exits.
fn init_daemon_tracing(default: &str, format: LogFormat) -> Option<log_writer::FlushGuard> {
    let settings = log_settings(format);
    let (logs, guard) = match log_writer::batched(std::io::stderr()) {
        Ok((writer, guard)) => (
            logs::subscriber(settings, log_filter(default), writer),
            Some(guard),
        ),
        // No thread for the logs: write them directly.
        Err(_) => (
            logs::subscriber(settings, log_filter(default), std::io::stderr),
            None,
        ),
    };
    let _ = logs.try_init();
    guard
}

/// Colour codes only for a person at a terminal, not for journald or a
/// log file; no timestamp of kiln's own under journald, which stamps
/// every line itself.
fn log_settings(format: LogFormat) -> LogSettings {
    LogSettings {
        format,
        timestamps: !stderr_is_the_journal(),
        ansi: std::io::stderr().is_terminal(),
    }
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
            let failed = ExitCode::from(run::EXIT_KILN_FAILED);
            if let Err(code) = init_tracing_or("run", "warn", failed) {
                return code;
            }
            warn_dumpable(not_dumpable());
            run::main(*args)
        }
        Command::Doctor(args) => {
            if let Err(code) = init_tracing_or("doctor", "info", ExitCode::FAILURE) {
                return code;
            }
            doctor::main(args)
        }
        // Its log format is in its config: it sets up its logs itself.
        Command::Serve(args) => serve::main(args),
        Command::Config(args) => {
            if let Err(code) = init_tracing_or("config", "warn", ExitCode::FAILURE) {
                return code;
            }
            warn_dumpable(not_dumpable());
            config::main(args)
        }
        Command::Ps(args) => {
            if let Err(code) = init_tracing_or("ps", "warn", ExitCode::FAILURE) {
                return code;
            }
            admin::ps(args)
        }
        Command::Logs(args) => {
            if let Err(code) = init_tracing_or("logs", "warn", ExitCode::FAILURE) {
                return code;
            }
            admin::logs(args)
        }
        Command::Cancel(args) => {
            if let Err(code) = init_tracing_or("cancel", "warn", ExitCode::FAILURE) {
                return code;
            }
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
