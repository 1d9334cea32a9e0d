//! The `kiln` command line. `main.rs` only calls [`main`].
//!
//! - [`run`]: `kiln run` — one job in a fresh microVM, without GitHub.
//! - [`doctor`]: `kiln doctor` — what this host lacks.
//! - [`serve`]: `kiln serve` — the daemon: GitHub webhooks in, one microVM per job.

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
    tracing_subscriber::fmt()
        .with_env_filter(log_filter(default))
        // Colour codes only for a person at a terminal, not for journald
        // or a log file.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer)
        .init();
    Some(guard)
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
    }
}
