//! `kiln serve [--config PATH]`: the daemon. Takes GitHub's `workflow_job`
//! webhooks and runs each queued job in a fresh microVM (see
//! [`crate::serve::run`]).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use crate::config::{Config, DEFAULT_CONFIG_PATH};
use crate::job::Jobs;
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
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kiln serve: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
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
