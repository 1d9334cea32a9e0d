//! The probe that stands in for the actions runner (source in
//! `probe/kiln_probe.rs`): built here with `rustc` alone as a static musl
//! binary, and its output parsed back.
//!
//! It has no dependencies, so it needs no Cargo project; the binary is
//! cached under the hash of its source, and the build is reproducible, so
//! the bench image that carries it is not rebuilt needlessly.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};

const SOURCE: &str = include_str!("probe/kiln_probe.rs");

/// Where the probe goes in the bench image, and in the systemd path's
/// initramfs (at the root).
pub const GUEST_PATH: &str = "/usr/local/bin/kiln-probe";

/// Builds the probe for `target` into `cache` (unless there already) and
/// returns its path.
pub fn build(cache: &Path, target: &str) -> anyhow::Result<PathBuf> {
    let mut h = Sha256::new();
    h.update(SOURCE.as_bytes());
    h.update(target.as_bytes());
    let hash: String = h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let out = cache.join(format!("kiln-probe-{hash}"));
    if out.is_file() {
        return Ok(out);
    }
    std::fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    let src = cache.join("kiln_probe.rs");
    std::fs::write(&src, SOURCE).with_context(|| format!("writing {}", src.display()))?;
    let tmp = cache.join(format!("kiln-probe.tmp{}", std::process::id()));
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let result = Command::new(&rustc)
        .args(["--edition", "2021", "-O", "--target", target])
        .args(["-C", "panic=abort", "-C", "strip=symbols"])
        .args(["-C", "target-feature=+crt-static", "-C", "codegen-units=1"])
        .arg(&src)
        .arg("-o")
        .arg(&tmp)
        .output()
        .with_context(|| format!("running {rustc}"))?;
    if !result.status.success() {
        let _ = std::fs::remove_file(&tmp);
        let stderr = String::from_utf8_lossy(&result.stderr);
        if stderr.contains("can't find crate for `std`") {
            bail!("the Rust target {target} is not installed: run `rustup target add {target}`");
        }
        bail!("building the bench probe failed:\n{stderr}");
    }
    std::fs::rename(&tmp, &out).with_context(|| format!("placing {}", out.display()))?;
    Ok(out)
}

/// The probe's report line: when it ran and PID 1's memory then.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Guest `CLOCK_BOOTTIME` at the probe's first instruction.
    pub at_ns: u64,
    pub pid1: String,
    pub pid1_rss_kib: u64,
    pub pid1_hwm_kib: u64,
    /// Over vsock only: the clock just before the probe connected.
    pub sent_ns: Option<u64>,
}

/// The first report line in `text` (the job's stdout, or what the probe
/// sent over vsock).
pub fn parse_report(text: &str) -> Option<Report> {
    let line = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("kiln-probe "))?;
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
    };
    Some(Report {
        at_ns: field("at_ns")?.parse().ok()?,
        pid1: field("pid1")?.to_owned(),
        pid1_rss_kib: field("pid1_rss_kib")?.parse().ok()?,
        pid1_hwm_kib: field("pid1_hwm_kib")?.parse().ok()?,
        sent_ns: field("sent_ns").and_then(|v| v.parse().ok()),
    })
}

/// Every `kiln-stamp NAME at_ns=N` in a console log, in order. Console
/// lines may carry other output before the stamp (the kernel's messages
/// interleave), so the stamp is looked for anywhere on a line.
pub fn parse_stamps(console: &str) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for line in console.lines() {
        let Some(i) = line.find("kiln-stamp ") else {
            continue;
        };
        let mut parts = line[i + "kiln-stamp ".len()..].split_whitespace();
        let (Some(name), Some(at)) = (parts.next(), parts.next()) else {
            continue;
        };
        if let Some(ns) = at.strip_prefix("at_ns=").and_then(|v| v.parse().ok()) {
            out.push((name.to_owned(), ns));
        }
    }
    out
}

// The probe's own unit tests, run on the host.
#[cfg(test)]
#[allow(dead_code)]
#[path = "probe/kiln_probe.rs"]
mod source;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_report_line() {
        let out = "noise\nkiln-probe at_ns=2200131072 pid=412 pid1=kiln-init pid1_rss_kib=632 pid1_hwm_kib=700\n";
        assert_eq!(
            parse_report(out),
            Some(Report {
                at_ns: 2_200_131_072,
                pid1: "kiln-init".into(),
                pid1_rss_kib: 632,
                pid1_hwm_kib: 700,
                sent_ns: None,
            })
        );
        let vsock =
            "kiln-probe at_ns=5 pid=9 pid1=systemd pid1_rss_kib=1 pid1_hwm_kib=2 sent_ns=7\n";
        assert_eq!(parse_report(vsock).and_then(|r| r.sent_ns), Some(7));
        assert_eq!(parse_report("kiln-probe at_ns=x pid1=a"), None);
        assert_eq!(parse_report(""), None);
    }

    #[test]
    fn finds_stamps_amid_console_noise() {
        let log = "[    1.2] virtio_blk virtio1: [vda]\r\nkiln-stamp init-start at_ns=1500000000\r\n\
                   [    1.3] foo kiln-stamp modules-loaded at_ns=1700000000\r\nkiln-stamp broken at_ns=zz\n";
        assert_eq!(
            parse_stamps(log),
            vec![
                ("init-start".to_owned(), 1_500_000_000),
                ("modules-loaded".to_owned(), 1_700_000_000)
            ]
        );
    }
}
