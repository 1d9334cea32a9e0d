//! Benchmark 2, per-VM disk: what Kiln does for each VM (a fresh sparse
//! scratch disk with an empty ext4; the base image is attached read-only
//! and never copied) against copying an image per VM, the naive way.
//!
//! Every figure is the wall time until the disk is ready; the copies are
//! also shown with the `fsync` that makes them durable (mkfs.ext4 syncs its
//! own writes before it exits). The page cache holds the source image
//! (warm: the copy's best case), and the host's dirty pages are flushed
//! between measurements so one copy's write-back does not land on the next.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};

use super::results::{DiskResults, Figure, Target};
use super::stats::{Series, Stat};

const GIB: u64 = 1 << 30;
/// The image the naive way copies.
pub const IMAGE_BYTES: u64 = 2 * GIB;
/// The scratch disk the brief names; the others show the size does not matter.
pub const SCRATCH_SIZES_GIB: &[u64] = &[40, 2, 400];

/// A 2 GiB image file: the bench rootfs repeated until 2 GiB, so it holds
/// what an image holds (file data and ext4's zeroed regions), fully written.
/// Kept between bench runs.
fn image_2g(dir: &Path, rootfs: &Path) -> anyhow::Result<PathBuf> {
    let path = dir.join("image-2g.raw");
    if std::fs::metadata(&path).is_ok_and(|m| m.len() == IMAGE_BYTES) {
        return Ok(path);
    }
    eprintln!("disk: writing the 2 GiB test image (once)");
    let src = std::fs::read(rootfs).with_context(|| format!("reading {}", rootfs.display()))?;
    if src.is_empty() {
        bail!("{} is empty", rootfs.display());
    }
    let tmp = dir.join("image-2g.tmp");
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        let mut left = IMAGE_BYTES;
        while left > 0 {
            let n = left.min(src.len() as u64) as usize;
            f.write_all(&src[..n])?;
            left -= n as u64;
        }
        f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// An empty ext4 of `bytes`, made by Kiln's own code once, as the template
/// a naive setup would copy for each VM's scratch disk.
fn template(dir: &Path, bytes: u64) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("template-{}g.ext4", bytes / GIB));
    if std::fs::metadata(&path).is_ok_and(|m| m.len() == bytes) {
        return Ok(path);
    }
    let _ = std::fs::remove_file(&path);
    kiln::disk::create_scratch(&path, bytes)?;
    Ok(path)
}

fn sync_host() {
    let _ = Command::new("sync").status();
}

/// Milliseconds for `cp ARGS src dst`, and for the fsync after it.
fn copy(src: &Path, dst: &Path, args: &[&str]) -> anyhow::Result<(f64, f64)> {
    let t = Instant::now();
    let status = Command::new("cp")
        .args(args)
        .arg(src)
        .arg(dst)
        .status()
        .context("running cp")?;
    let copied = t.elapsed();
    if !status.success() {
        bail!("cp {args:?} {} {} failed", src.display(), dst.display());
    }
    let t = Instant::now();
    std::fs::File::open(dst)?.sync_all()?;
    let synced = t.elapsed();
    Ok((copied.as_secs_f64() * 1e3, synced.as_secs_f64() * 1e3))
}

fn scratch_ms(path: &Path, bytes: u64) -> anyhow::Result<f64> {
    let t = Instant::now();
    kiln::disk::create_scratch(path, bytes)?;
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

fn remove(p: &Path) {
    let _ = std::fs::remove_file(p);
}

pub fn run(dir: &Path, rootfs: &Path, runs: usize) -> anyhow::Result<DiskResults> {
    std::fs::create_dir_all(dir)?;
    let image = image_2g(dir, rootfs)?;
    let tmpl = template(dir, 40 * GIB)?;
    // Warm the page cache with the source image: the copy's best case.
    let _ = std::fs::read(&image)?;
    let allocated = std::fs::metadata(&image)?.blocks() * 512;
    let out = dir.join("vm-disk");
    let mut kiln = Series::default();
    let mut naive = Series::default();
    for i in 1..=runs {
        for gib in SCRATCH_SIZES_GIB {
            sync_host();
            remove(&out);
            let v = scratch_ms(&out, gib * GIB)?;
            kiln.push(&format!("scratch {gib} GiB"), v);
        }
        remove(&out);
        for (name, args) in [
            (
                "cp --sparse=always, 2 GiB image",
                &["--sparse=always", "--reflink=never"][..],
            ),
            (
                "cp (plain copy), 2 GiB image",
                &["--sparse=never", "--reflink=never"][..],
            ),
            (
                "cp --sparse=always, empty 40 GiB ext4",
                &["--sparse=always", "--reflink=never"][..],
            ),
        ] {
            let src = if name.contains("40 GiB") {
                &tmpl
            } else {
                &image
            };
            sync_host();
            remove(&out);
            let (c, s) = copy(src, &out, args)?;
            naive.push(name, c);
            naive.push(&format!("{name} + fsync"), c + s);
        }
        remove(&out);
        eprintln!(
            "disk {i}/{runs}: scratch 40 GiB {:.1} ms; plain copy of 2 GiB {:.0} ms",
            kiln.get("scratch 40 GiB").map_or(0.0, |s| s.samples[i - 1]),
            naive
                .get("cp (plain copy), 2 GiB image")
                .map_or(0.0, |s| s.samples[i - 1]),
        );
    }
    remove(&out);
    let figures = |s: &Series, what: &dyn Fn(&str) -> String| -> Vec<Figure> {
        s.stats()
            .into_iter()
            .map(|(name, stat)| Figure {
                what: what(&name),
                name,
                stat,
            })
            .collect()
    };
    let kiln_figs = figures(&kiln, &|n| {
        format!("kiln::disk::create_scratch: sparse file + mkfs.ext4 ({n}); the base image is not touched")
    });
    let naive_figs = figures(&naive, &|n| {
        if n.ends_with("fsync") {
            "the copy, then fsync of the copy".to_owned()
        } else {
            "until cp exits (data may still be in the page cache)".to_owned()
        }
    });
    let k40 = kiln
        .get("scratch 40 GiB")
        .context("no 40 GiB scratch figures")?;
    let sizes: Vec<Stat> = SCRATCH_SIZES_GIB
        .iter()
        .filter_map(|g| kiln.get(&format!("scratch {g} GiB")))
        .collect();
    let (lo, hi) = sizes.iter().fold((f64::MAX, 0.0f64), |(lo, hi), s| {
        (lo.min(s.median), hi.max(s.median))
    });
    let targets = vec![
        Target {
            what: "per-VM disk cost independent of the image's size".into(),
            goal: "independent".into(),
            measured: format!(
                "the base image is never read or copied per VM (QEMU attaches it read-only); \
                 scratch disks of 2 to 400 GiB take {lo:.1} to {hi:.1} ms (medians)"
            ),
            verdict: if hi <= 2.0 * lo + 10.0 {
                "met"
            } else {
                "not met"
            }
            .into(),
            note:
                "met when the largest scratch disk's median is within 2x (+10 ms) of the smallest's"
                    .into(),
        },
        Target {
            what: "one VM's writable disk (40 GiB scratch)".into(),
            goal: "under 50 ms".into(),
            measured: format!("{:.1} ms median (max {:.1} ms)", k40.median, k40.max),
            verdict: if k40.median < 50.0 { "met" } else { "not met" }.into(),
            note: "judged on the median".into(),
        },
    ];
    Ok(DiskResults {
        kiln: kiln_figs,
        naive: naive_figs,
        image_bytes: IMAGE_BYTES,
        image_what: format!(
            "a 2 GiB raw image (the bench rootfs.ext4 repeated; {} MiB allocated), in the page cache",
            allocated >> 20
        ),
        targets,
    })
}
