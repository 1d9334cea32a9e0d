//! The webhook benchmark's release-built helpers (`cargo xtask bench` runs
//! them; see xtask/src/bench/webhook.rs): the ceiling server, and the load
//! generator, so that neither side of the comparison is a debug build.

use anyhow::Context;
use clap::{Parser, Subcommand};
use xtask::bench::webhook::{ceiling, load};

#[derive(Parser)]
#[command(name = "kiln-bench-http")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A minimal axum server that answers POST /webhook with 202.
    Ceiling {
        #[arg(long)]
        listen: std::net::SocketAddr,
    },
    /// One load run against a server; prints its report as JSON.
    Load(load::Spec),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Ceiling { listen } => ceiling::serve(listen),
        Command::Load(spec) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            let report = rt.block_on(load::run(&spec))?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
    }
}
