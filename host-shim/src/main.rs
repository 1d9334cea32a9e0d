//! The `kiln` command: host daemon and CLI.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "Every GitHub Actions job in a fresh microVM"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check this host for everything Kiln needs, and say what to do about what is missing.
    Doctor {
        /// The image directory `cargo xtask image` wrote.
        #[arg(long, default_value = "target/kiln-image")]
        image: PathBuf,
    },
}

fn main() -> Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KILN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Doctor { image } => {
            let cfg = kiln::doctor::DoctorConfig {
                image_dir: image,
                ..Default::default()
            };
            let report = kiln::doctor::diagnose(&cfg);
            print!("{}", report.render());
            Ok(if report.worst() == kiln::doctor::Level::Fail {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}
