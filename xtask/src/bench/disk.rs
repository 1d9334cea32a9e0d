//! Benchmark 2, per-VM disk: what Kiln does for each VM (a fresh sparse
//! scratch disk with an empty ext4, copied from the template the first VM
//! of that image and size made with mkfs; the base image is attached
//! read-only and never copied) against copying an image per VM, the naive
//! way.
//!
//! Every figure is the wall time until the disk is ready; the copies are
//! also shown with the `fsync` that makes them durable (mkfs.ext4 syncs its
//! own writes before it exits; Kiln's copy of a template is not synced: the
//! disk lives for one job, and a crash ends the job anyway). The page cache holds the source image
//! (warm: the copy's best case), and the host's dirty pages are flushed
//! between measurements so one copy's write-back does not land on the next.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};

use kiln::disk::{Made, Templates};

use super::results::{DiskResults, Figure, Target};
use super::stats::Series;

const GIB: u64 = 1 << 30;
/// The image the naive way copies.
pub const IMAGE_BYTES: u64 = 2 * GIB;
/// Scratch disk sizes measured: 40 GiB (the brief's) beside each image,
/// the others to show what the scratch disk's own size costs.
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

/// What a VM's disk costs once its image and size have a template: the
/// VM layer's own call.
fn scratch_ms(
    templates: &Templates,
    path: &Path,
    bytes: u64,
    skeleton: &Path,
) -> anyhow::Result<f64> {
    let t = Instant::now();
    let made = templates.create(path, bytes, Some(skeleton))?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    if !matches!(made, Made::Copied(_)) {
        bail!("the scratch disk was not copied from its template: {made:?}");
    }
    Ok(ms)
}

/// What the first VM of an image and size costs: mkfs.ext4 -d, whose disk
/// becomes the template.
fn mkfs_ms(path: &Path, bytes: u64, skeleton: &Path) -> anyhow::Result<f64> {
    let t = Instant::now();
    kiln::disk::create_scratch_from(path, bytes, Some(skeleton))?;
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

fn remove(p: &Path) {
    let _ = std::fs::remove_file(p);
}

/// `skeleton`: the image's scratch skeleton, laid onto every scratch disk
/// as the VM layer does.
pub fn run(dir: &Path, rootfs: &Path, skeleton: &Path, runs: usize) -> anyhow::Result<DiskResults> {
    std::fs::create_dir_all(dir)?;
    let big = image_2g(dir, rootfs)?;
    let templates = Templates::new(dir.join("templates"));
    let out = dir.join("vm-disk");
    // Each size's first disk makes its template (not counted).
    for gib in SCRATCH_SIZES_GIB {
        remove(&out);
        templates.create(&out, gib * GIB, Some(skeleton))?;
    }
    let small_mib = std::fs::metadata(rootfs)?.len() >> 20;
    let images = [
        (
            format!("{small_mib} MiB image (the bench rootfs.ext4)"),
            rootfs.to_owned(),
        ),
        ("2 GiB image".to_owned(), big.clone()),
    ];
    // Warm the page cache with the source images: the copy's best case.
    for (_, p) in &images {
        let _ = std::fs::read(p)?;
    }
    let allocated = std::fs::metadata(&big)?.blocks() * 512;
    let mut kiln = Series::default();
    let mut naive = Series::default();
    let mut alt = Series::default();
    let fresh = |out: &Path| {
        sync_host();
        remove(out);
    };
    for i in 1..=runs {
        for (name, image) in &images {
            // Kiln's per-VM disk work is the same whatever the image: the
            // image is attached read-only, only the scratch disk is made.
            fresh(&out);
            kiln.push(
                &format!("40 GiB scratch disk, beside the {name}"),
                scratch_ms(&templates, &out, 40 * GIB, skeleton)?,
            );
            for (how, args) in [
                (
                    "cp --sparse=always",
                    &["--sparse=always", "--reflink=never"][..],
                ),
                ("plain cp", &["--sparse=never", "--reflink=never"][..]),
            ] {
                fresh(&out);
                let (c, s) = copy(image, &out, args)?;
                naive.push(&format!("{how} of the {name}"), c);
                naive.push(&format!("{how} of the {name}, + fsync"), c + s);
            }
        }
        for gib in SCRATCH_SIZES_GIB.iter().filter(|g| **g != 40) {
            fresh(&out);
            kiln.push(
                &format!("{gib} GiB scratch disk"),
                scratch_ms(&templates, &out, gib * GIB, skeleton)?,
            );
        }
        fresh(&out);
        alt.push(
            "40 GiB scratch disk made by mkfs.ext4 -d (it becomes the template)",
            mkfs_ms(&out, 40 * GIB, skeleton)?,
        );
        remove(&out);
        eprintln!(
            "disk {i}/{runs}: 40 GiB scratch {:.1} ms; plain cp of the 2 GiB image {:.0} ms",
            kiln.get("40 GiB scratch disk, beside the 2 GiB image")
                .map_or(0.0, |s| s.samples[i - 1]),
            naive
                .get("plain cp of the 2 GiB image")
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
    let until = |n: &str| {
        if n.contains("mkfs") {
            "kiln::disk::create_scratch_from: a sparse file, mkfs.ext4 -d with the image's scratch skeleton (mkfs syncs its writes)".to_owned()
        } else if n.ends_with("fsync") {
            "the copy, then fsync of the copy".to_owned()
        } else {
            "until cp exits (the data may still be in the page cache)".to_owned()
        }
    };
    let kiln_figs = figures(&kiln, &|_| {
        "kiln::disk::Templates::create, as the VM layer calls it: a sparse copy of the template \
         for this image's skeleton and this size (its data ranges only, or a reflink), no fsync"
            .to_owned()
    });
    let median = |name: &str| {
        kiln.get(name)
            .map(|s| s.median)
            .context("missing disk figure")
    };
    let with_small = median(&format!("40 GiB scratch disk, beside the {}", images[0].0))?;
    let with_big = median(&format!("40 GiB scratch disk, beside the {}", images[1].0))?;
    let k40 = kiln
        .get("40 GiB scratch disk, beside the 2 GiB image")
        .context("no 40 GiB scratch figures")?;
    let sizes: Vec<String> = [2, 40, 400]
        .iter()
        .filter_map(|g| {
            let name = if *g == 40 {
                "40 GiB scratch disk, beside the 2 GiB image".to_owned()
            } else {
                format!("{g} GiB scratch disk")
            };
            kiln.get(&name)
                .map(|s| format!("{g} GiB {} ms", super::render::ms(s.median)))
        })
        .collect();
    let targets = vec![
        Target {
            what: "per-VM disk cost independent of the image's size".into(),
            goal: "independent".into(),
            measured: format!(
                "{} ms beside the {small_mib} MiB image, {} ms beside the 2 GiB one (medians)",
                super::render::ms(with_small),
                super::render::ms(with_big)
            ),
            verdict: if (with_big - with_small).abs() <= 0.5 * with_small.max(with_big) + 2.0 {
                "met"
            } else {
                "not met"
            }
            .into(),
            note: format!(
                "by construction: the base image is never read or copied per VM (QEMU attaches \
                 it read-only). The scratch disk's own size does show, through the ext4 \
                 metadata copied from its template: {}",
                sizes.join(", ")
            ),
        },
        Target {
            what: "one VM's writable disk (40 GiB scratch)".into(),
            goal: "under 50 ms".into(),
            measured: format!(
                "{} ms median (max {} ms)",
                super::render::ms(k40.median),
                super::render::ms(k40.max)
            ),
            verdict: if k40.median < 50.0 { "met" } else { "not met" }.into(),
            note: "judged on the median".into(),
        },
    ];
    Ok(DiskResults {
        kiln: kiln_figs,
        naive: figures(&naive, &until),
        alternatives: figures(&alt, &until),
        image_bytes: IMAGE_BYTES,
        image_what: format!(
            "the bench rootfs.ext4 ({small_mib} MiB) and a 2 GiB raw image (that rootfs repeated, \
             {} MiB allocated), both in the page cache",
            allocated >> 20
        ),
        targets,
    })
}
