//! `kiln serve [--config PATH]`: the daemon. Takes GitHub's `workflow_job`
//! webhooks and runs each queued job in a fresh microVM (see
//! [`crate::serve::run`]).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::config::{Config, DEFAULT_CONFIG_PATH};
use crate::serve;

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
    runtime.block_on(serve::run(config, serve::dispatch::Unwired))?;
    Ok(())
}
