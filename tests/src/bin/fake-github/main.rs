//! The fake GitHub API (`kiln_vm_tests::fake_github`) as a process of its
//! own, for `cargo xtask bench`'s `kiln serve` memory figures: the bench
//! cannot link this crate (it depends on xtask), and GitHub cannot be
//! reached from the machines the bench runs on. Test-only.
//!
//!     fake-github --key-file PATH
//!
//! - Writes the App private key the fake accepts (PKCS#1 PEM, made for
//!   this process only) to PATH, created new with mode 0600, for `kiln
//!   serve`'s `private_key_file`.
//! - Serves the fake on 127.0.0.1 and prints one JSON line on stdout:
//!   `{"url": ..., "app_id": ...}`.
//! - For each `state` line on stdin, prints one JSON line of what it has
//!   seen ([`State`]): counts and runner ids only, never a token or a JIT
//!   config.
//! - Exits when stdin closes, so it never outlives the bench that started it.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use axum::http::Method;
use kiln_vm_tests::fake_github::{test_key, FakeGithub, APP_ID};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, BufReader};

/// What the fake has seen, for the bench to check its runs were real.
#[derive(Debug, Serialize)]
struct State {
    /// `generate-jitconfig` requests, answered or not.
    jit_requests: usize,
    /// Runner deletion requests, answered or not.
    delete_requests: usize,
    /// Installation tokens issued.
    token_requests: u32,
    /// Runner ids registered through `generate-jitconfig`, in order.
    registered: Vec<u64>,
    /// Runner ids deleted, in order.
    deleted: Vec<u64>,
    /// Runner ids still registered.
    live: Vec<u64>,
}

fn state(fake: &FakeGithub) -> State {
    State {
        jit_requests: fake.count(Method::POST, "/actions/runners/generate-jitconfig"),
        delete_requests: fake
            .seen()
            .iter()
            .filter(|s| s.method == Method::DELETE && s.path.contains("/actions/runners/"))
            .count(),
        token_requests: fake.token_requests(),
        registered: fake.registered().iter().map(|r| r.id).collect(),
        deleted: fake.deleted(),
        live: fake.live_runners(),
    }
}

fn key_file_arg() -> Result<PathBuf> {
    let mut args = std::env::args_os().skip(1);
    match (args.next(), args.next(), args.next()) {
        (Some(flag), Some(path), None) if flag == "--key-file" => Ok(PathBuf::from(path)),
        _ => bail!("usage: fake-github --key-file PATH"),
    }
}

/// Writes `pem` to `path`, which must not exist: created 0600, so the key
/// is never readable by others, not even for a moment.
fn write_key(path: &std::path::Path, pem: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(pem.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

fn print_line(value: &impl Serialize) -> Result<()> {
    let line = serde_json::to_string(value).context("encoding")?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").context("writing to stdout")?;
    out.flush().context("writing to stdout")
}

async fn run() -> Result<()> {
    let key_file = key_file_arg()?;
    write_key(&key_file, &test_key().private_pkcs1)?;
    let fake = FakeGithub::start().await;
    print_line(&serde_json::json!({ "url": fake.url, "app_id": APP_ID }))?;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await.context("reading stdin")? {
        match line.trim() {
            "state" => print_line(&state(&fake))?,
            "" => {}
            other => bail!("unknown command {other:?} (the only one is `state`)"),
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fake-github: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fake-github: {e:#}");
            ExitCode::FAILURE
        }
    }
}
