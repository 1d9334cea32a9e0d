//! `kiln serve [--config PATH]`: the daemon. Takes GitHub's `workflow_job`
//! webhooks and runs each queued job in a fresh microVM (see
//! [`crate::serve::run`]).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use crate::config::{Config, DEFAULT_CONFIG_PATH};
use crate::job::Jobs;
use crate::logs::{events, LogFormat};
use crate::serve;

/// How long, after the server stopped, cancelled jobs may take to tear
/// down their VMs and delete their runner registrations.
const SHUTDOWN_CLEANUP: Duration = Duration::from_secs(60);

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// The config file (TOML; see host-shim/README.md).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
}

pub fn main(args: ServeArgs) -> ExitCode {
    // Before the config's secrets are read.
    let dumpable = super::not_dumpable();
    // The logs' format is the config's: a bad config goes to stderr as is.
    let config = match Config::load(&args.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("kiln serve: {e}");
            return ExitCode::FAILURE;
        }
    };
    let format = config.log_format;
    let _flush_on_exit = super::init_daemon_tracing("info", format);
    super::warn_dumpable(dumpable);
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            failed(format, &e);
            ExitCode::FAILURE
        }
    }
}

/// Why `kiln serve` stops: as a plain line, or a JSON one where a reader
/// expects nothing else.
fn failed(format: LogFormat, e: &anyhow::Error) {
    match format {
        LogFormat::Text => eprintln!("kiln serve: {e:#}"),
        LogFormat::Json => tracing::error!(
            event = %events::SERVE_FAILED,
            error = %format!("{e:#}"),
            "kiln serve failed"
        ),
    }
}

fn run(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let jobs = Jobs::start(&config)
            .await
            .with_context(|| format!("cannot run jobs with {}", config.source.display()))?;
        let cleanup = jobs.clone();
        serve::run(config, jobs).await?;
        // Jobs cancelled by a second signal are still killing their VMs and
        // deleting their runners.
        let left = cleanup.finish(SHUTDOWN_CLEANUP).await;
        if left > 0 {
            tracing::error!(
                jobs = left,
                "jobs still cleaning up {SHUTDOWN_CLEANUP:?} after shutdown: their runners may stay registered"
            );
        } else {
            // With VMs still running the table stays: they keep their policy.
            cleanup.stop_network().await;
        }
        anyhow::Ok(())
    })
}
