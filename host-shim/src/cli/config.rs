//! `kiln config check FILE`: reads a config the way `kiln serve` does
//! (every key, every secret file's mode, every value) without starting
//! anything. Exit 0 with a one-line summary when it is valid; exit 1 when
//! it is not, with every problem on a line of its own, like a compiler's:
//! `FILE:LINE:COL: KEY: what is wrong: what to write instead`, and a count.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::{Config, ConfigError, DEFAULT_CONFIG_PATH};

#[derive(clap::Args, Debug)]
pub struct ConfigArgs {
    #[command(subcommand)]
    pub command: ConfigCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum ConfigCommand {
    /// Check a config file as `kiln serve` reads it; start nothing.
    Check {
        /// The config file (TOML; every key: examples/config.toml).
        #[arg(value_name = "FILE", default_value = DEFAULT_CONFIG_PATH)]
        file: PathBuf,
    },
}

pub fn main(args: ConfigArgs) -> ExitCode {
    match args.command {
        ConfigCommand::Check { file } => match Config::load(&file) {
            Ok(config) => {
                println!("{}", summary(&config));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                eprintln!("kiln config check: {}", count(&e));
                ExitCode::FAILURE
            }
        },
    }
}

/// `3 problems in FILE`.
fn count(e: &ConfigError) -> String {
    let n = e.count();
    let noun = if n == 1 { "problem" } else { "problems" };
    format!("{n} {noun} in {}", e.path.display())
}

/// One line: the file, the scope, the backend, the pools.
fn summary(c: &Config) -> String {
    let pools: Vec<String> = c
        .pools
        .iter()
        .map(|p| format!("{} ({} vCPU, {} MiB)", p.name, p.vcpus, p.memory_mib))
        .collect();
    format!(
        "{}: valid; listen {}, runners in {}, backend {:?}, {} pool(s): {}",
        c.source.display(),
        c.listen,
        c.github.scope,
        c.backend,
        pools.len(),
        pools.join(", ")
    )
}
