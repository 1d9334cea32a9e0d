//! The `kiln` command line. `main.rs` only calls [`main`].
//!
//! - [`run`]: `kiln run` — one job in a fresh microVM, without GitHub.
//! - [`doctor`]: `kiln doctor` — what this host lacks.
//! - [`serve`]: `kiln serve` — the daemon: GitHub webhooks in, one microVM per job.

pub mod doctor;
pub mod duration;
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
    Run(run::RunArgs),
    /// Check this host for everything Kiln needs, and say what to do about what is missing.
    Doctor(doctor::DoctorArgs),
    /// The daemon: take GitHub's workflow_job webhooks and run each job in a fresh microVM.
    Serve(serve::ServeArgs),
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

/// The daemon's logs: the same, but written by a thread of their own, so
/// the webhook handlers (a line per queued job) never wait on stderr's
/// lock and write(2). That thread drains every waiting line into a buffer
/// and flushes once the queue is empty: one write(2) per burst, not per
/// line, and no delay when idle. Lines logged while [`LOG_QUEUE_LINES`]
/// wait block (nothing is dropped); the guard flushes what is left when
/// `kiln serve` exits.
fn init_daemon_tracing(default: &str) -> tracing_appender::non_blocking::WorkerGuard {
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        ));
    tracing_subscriber::fmt()
        .with_env_filter(log_filter(default))
        // Colour codes only for a person at a terminal, not for journald
        // or a log file.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer)
        .init();
    guard
}

/// Log lines waiting for the log thread. The queue is allocated up front:
/// the library's default (128k lines) costs ~4 MiB of RSS for bursts no
/// webhook rate produces.
const LOG_QUEUE_LINES: usize = 8192;

fn log_filter(default: &str) -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_env("KILN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default))
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            init_tracing("warn");
            run::main(args)
        }
        Command::Doctor(args) => {
            init_tracing("info");
            doctor::main(args)
        }
        Command::Serve(args) => {
            let _flush_on_exit = init_daemon_tracing("info");
            serve::main(args)
        }
    }
}
