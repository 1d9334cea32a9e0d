//! Scratch disks copied from a template. The first disk of a given size
//! and skeleton is made with mkfs.ext4 (a process, and an fsync of what it
//! wrote: tens of ms); that disk is kept as a template, and every later
//! one is a sparse copy of it ([`super::clone`]: a reflink, or a few MiB
//! of metadata copied in the kernel). A template holds only what the image
//! put in its skeleton, never anything a job wrote.
//!
//! Templates live in their own directory, named by a digest of the size
//! and of the skeleton's every name, owner, mode and byte: a rebuilt image
//! gets new templates, and at most [`KEEP`] are kept. Every copy carries
//! the template's filesystem UUID, which is enough for kiln-init to find
//! it by ([`super::ident`]): a VM has one scratch disk, and the base
//! image's UUID differs.

use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use super::clone::{clone_sparse, Cloned};
use super::{check_request, create_scratch_from, ScratchError};

/// Templates kept at most; the oldest go first.
pub const KEEP: usize = 8;

/// A half-written template older than this was left by a process that
/// died: it is removed.
const STALE_PARTIAL: Duration = Duration::from_secs(3600);

/// Bumped whenever what mkfs is asked for changes, so old templates are
/// not reused.
const FORMAT: &str = "kiln-scratch-template-1";

/// A directory of scratch disk templates.
#[derive(Debug, Clone)]
pub struct Templates {
    dir: PathBuf,
}

/// How a scratch disk was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Made {
    /// Copied from an existing template.
    Copied(Cloned),
    /// No template yet: one was made, then copied.
    NewTemplate(Cloned),
    /// The template could not be made or copied (logged): mkfs made the
    /// disk itself.
    Mkfs,
}

impl Templates {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Templates { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Creates `path` (which must not exist) as a scratch disk of
    /// `size_bytes` holding `skeleton`, as [`create_scratch_from`] does,
    /// from a template when it can. On failure nothing is left at `path`.
    pub fn create(
        &self,
        path: &Path,
        size_bytes: u64,
        skeleton: Option<&Path>,
    ) -> Result<Made, ScratchError> {
        check_request(path, size_bytes, skeleton)?;
        match self.copy_of_template(path, size_bytes, skeleton) {
            Ok(made) => Ok(made),
            Err(Fallback::Caller(e)) => Err(e),
            Err(Fallback::Template(e)) => {
                tracing::warn!(
                    dir = %self.dir.display(),
                    error = %e,
                    "scratch disk template unusable; making the disk with mkfs"
                );
                create_scratch_from(path, size_bytes, skeleton).map(|()| Made::Mkfs)
            }
        }
    }

    fn copy_of_template(
        &self,
        path: &Path,
        size_bytes: u64,
        skeleton: Option<&Path>,
    ) -> Result<Made, Fallback> {
        let io = |source| {
            Fallback::Template(ScratchError::Io {
                path: self.dir.clone(),
                source,
            })
        };
        let key = key(size_bytes, skeleton).map_err(io)?;
        let template = self.dir.join(format!("{key}.ext4"));
        let (src, made_now) = match File::open(&template) {
            Ok(f) => (f, false),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.make(&template, size_bytes, skeleton)?;
                (File::open(&template).map_err(io)?, true)
            }
            Err(e) => return Err(io(e)),
        };
        let dst = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(super::DISK_MODE)
            .open(path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => Fallback::Caller(ScratchError::Exists {
                    path: path.to_owned(),
                }),
                _ => Fallback::Caller(ScratchError::Io {
                    path: path.to_owned(),
                    source: e,
                }),
            })?;
        match clone_sparse(&src, &dst) {
            Ok(how) if made_now => Ok(Made::NewTemplate(how)),
            Ok(how) => Ok(Made::Copied(how)),
            Err(e) => {
                drop(dst);
                let _ = std::fs::remove_file(path);
                Err(Fallback::Template(ScratchError::Io {
                    path: template,
                    source: e,
                }))
            }
        }
    }

    /// Makes the template at `template` with mkfs, under a temporary name
    /// renamed into place: a reader sees a whole template or none. Two
    /// VMs making the same one at once both succeed; one rename wins.
    fn make(&self, template: &Path, size: u64, skeleton: Option<&Path>) -> Result<(), Fallback> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|source| {
                Fallback::Template(ScratchError::Io {
                    path: self.dir.clone(),
                    source,
                })
            })?;
        let partial = self.dir.join(format!(
            ".{}.{}.{}.partial",
            template
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            std::process::id(),
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos()),
        ));
        create_scratch_from(&partial, size, skeleton).map_err(Fallback::Template)?;
        std::fs::rename(&partial, template).map_err(|source| {
            let _ = std::fs::remove_file(&partial);
            Fallback::Template(ScratchError::Io {
                path: template.to_owned(),
                source,
            })
        })?;
        tracing::info!(template = %template.display(), size, "scratch disk template made");
        self.prune(template);
        Ok(())
    }

    /// Removes all but the [`KEEP`] newest templates (never `keep`), and
    /// partial ones a dead process left behind.
    fn prune(&self, keep: &Path) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let now = SystemTime::now();
        let mut templates = Vec::new();
        for e in entries.flatten() {
            let path = e.path();
            let Ok(meta) = e.metadata() else { continue };
            let modified = meta.modified().unwrap_or(now);
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".partial") {
                if now.duration_since(modified).unwrap_or_default() > STALE_PARTIAL {
                    let _ = std::fs::remove_file(&path);
                }
            } else if name.ends_with(".ext4") && path != keep {
                templates.push((modified, path));
            }
        }
        // Newest first; `keep` takes one of the KEEP places.
        templates.sort_by_key(|t| std::cmp::Reverse(t.0));
        for (_, old) in templates.into_iter().skip(KEEP.saturating_sub(1)) {
            let _ = std::fs::remove_file(&old);
        }
    }
}

/// Why the template path did not give a disk: the caller's own mistake
/// (the disk exists), or something about the template, which mkfs alone
/// may still get past.
enum Fallback {
    Caller(ScratchError),
    Template(ScratchError),
}

/// Names a template: the format, the size, and everything of the skeleton
/// mkfs copies.
fn key(size: u64, skeleton: Option<&Path>) -> std::io::Result<String> {
    let mut h = Sha256::new();
    h.update(FORMAT.as_bytes());
    h.update(size.to_le_bytes());
    if let Some(dir) = skeleton {
        digest_tree(dir, Path::new(""), &mut h)?;
    }
    Ok(hex::encode(&h.finalize()[..16]))
}

fn digest_tree(root: &Path, rel: &Path, h: &mut Sha256) -> std::io::Result<()> {
    let mut names: Vec<_> = std::fs::read_dir(root.join(rel))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    names.sort();
    for name in names {
        let rel = rel.join(&name);
        let path = root.join(&rel);
        let m = std::fs::symlink_metadata(&path)?;
        h.update(rel.as_os_str().as_encoded_bytes());
        h.update([0]);
        h.update(m.mode().to_le_bytes());
        h.update(m.uid().to_le_bytes());
        h.update(m.gid().to_le_bytes());
        if m.is_dir() {
            digest_tree(root, &rel, h)?;
        } else if m.is_symlink() {
            h.update(std::fs::read_link(&path)?.as_os_str().as_encoded_bytes());
        } else if m.is_file() {
            h.update(m.len().to_le_bytes());
            let mut f = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)?;
            std::io::copy(&mut f, h)?;
        }
        h.update([0xff]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::MIN_SIZE;
    use std::process::Command;

    fn skeleton(root: &Path) -> PathBuf {
        let skel = root.join("skel");
        std::fs::create_dir_all(skel.join("home/runner")).expect("mkdir");
        std::fs::create_dir_all(skel.join("upper")).expect("mkdir");
        std::fs::write(skel.join("home/runner/.bashrc"), "export A=1\n").expect("write");
        skel
    }

    fn templates_in(t: &Templates) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(t.dir())
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    fn cat(disk: &Path, file: &str) -> String {
        crate::disk::tests::debugfs(disk, &format!("cat {file}"))
    }

    #[test]
    fn first_disk_makes_the_template_later_ones_copy_it() {
        let d = tempfile::tempdir().expect("tempdir");
        let skel = skeleton(d.path());
        let t = Templates::new(d.path().join("templates"));
        let size = 40u64 << 30;
        let a = d.path().join("a.ext4");
        let made = t.create(&a, size, Some(&skel)).expect("first");
        assert!(matches!(made, Made::NewTemplate(_)), "{made:?}");
        assert_eq!(templates_in(&t).len(), 1);
        let b = d.path().join("b.ext4");
        let made = t.create(&b, size, Some(&skel)).expect("second");
        assert!(matches!(made, Made::Copied(_)), "{made:?}");
        assert_eq!(templates_in(&t).len(), 1);
        // What jobs wrote is the owner's only: disks and templates alike.
        for file in [&a, &b, &templates_in(&t)[0]] {
            let mode = std::fs::metadata(file).expect("meta").mode() & 0o777;
            assert_eq!(mode, 0o600, "{}: {mode:o}", file.display());
        }
        for disk in [&a, &b] {
            let m = std::fs::metadata(disk).expect("meta");
            assert_eq!(m.len(), size);
            assert!(
                m.blocks() * 512 < 64 << 20,
                "{} allocated",
                m.blocks() * 512
            );
            assert_eq!(cat(disk, "/home/runner/.bashrc"), "export A=1\n");
            let fsck = Command::new("e2fsck")
                .args(["-n", "-f"])
                .arg(disk)
                .output()
                .expect("e2fsck");
            assert!(
                fsck.status.success(),
                "{}",
                String::from_utf8_lossy(&fsck.stdout)
            );
        }
        // A disk's writes stay in that disk.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&a)
            .and_then(|f| std::os::unix::fs::FileExt::write_all_at(&f, &[0xAB; 4096], 1 << 30))
            .expect("write a");
        let c = d.path().join("c.ext4");
        t.create(&c, size, Some(&skel)).expect("third");
        let mut buf = [0u8; 4096];
        let f = File::open(&c).expect("open c");
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, 1 << 30).expect("read c");
        assert_eq!(buf, [0u8; 4096]);
    }

    #[test]
    fn another_size_or_skeleton_gets_its_own_template() {
        let d = tempfile::tempdir().expect("tempdir");
        let skel = skeleton(d.path());
        let t = Templates::new(d.path().join("templates"));
        t.create(&d.path().join("1"), 1 << 30, Some(&skel))
            .expect("1");
        t.create(&d.path().join("2"), 2 << 30, Some(&skel))
            .expect("2");
        assert_eq!(templates_in(&t).len(), 2);
        // The image was rebuilt: one byte of the skeleton differs.
        std::fs::write(skel.join("home/runner/.bashrc"), "export A=2\n").expect("write");
        let made = t
            .create(&d.path().join("3"), 1 << 30, Some(&skel))
            .expect("3");
        assert!(matches!(made, Made::NewTemplate(_)), "{made:?}");
        assert_eq!(
            cat(&d.path().join("3"), "/home/runner/.bashrc"),
            "export A=2\n"
        );
        // A mode change counts too.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(skel.join("upper"), std::fs::Permissions::from_mode(0o700))
            .expect("chmod");
        let made = t
            .create(&d.path().join("4"), 1 << 30, Some(&skel))
            .expect("4");
        assert!(matches!(made, Made::NewTemplate(_)), "{made:?}");
        assert_eq!(templates_in(&t).len(), 4);
    }

    #[test]
    fn only_the_newest_templates_are_kept() {
        let d = tempfile::tempdir().expect("tempdir");
        let t = Templates::new(d.path().join("templates"));
        for i in 0..(KEEP as u64 + 3) {
            let disk = d.path().join(format!("d{i}"));
            t.create(&disk, MIN_SIZE + (i << 20), None).expect("create");
            std::fs::remove_file(&disk).expect("rm");
        }
        let left = templates_in(&t);
        assert_eq!(left.len(), KEEP, "{left:?}");
        // The last one made is among them: the next disk of that size copies.
        let made = t
            .create(
                &d.path().join("again"),
                MIN_SIZE + ((KEEP as u64 + 2) << 20),
                None,
            )
            .expect("again");
        assert!(matches!(made, Made::Copied(_)), "{made:?}");
    }

    #[test]
    fn bad_input_and_unusable_templates() {
        let d = tempfile::tempdir().expect("tempdir");
        let t = Templates::new(d.path().join("templates"));
        let p = d.path().join("exists");
        std::fs::write(&p, b"keep").expect("w");
        assert!(matches!(
            t.create(&p, 1 << 30, None),
            Err(ScratchError::Exists { .. })
        ));
        assert_eq!(std::fs::read(&p).expect("r"), b"keep");
        let tiny = d.path().join("tiny");
        assert!(matches!(
            t.create(&tiny, 1 << 20, None),
            Err(ScratchError::TooSmall { .. })
        ));
        assert!(!tiny.exists());
        let gone = d.path().join("gone");
        let err = t
            .create(&d.path().join("x"), 1 << 30, Some(&gone))
            .expect_err("missing skeleton");
        assert!(err.to_string().contains("cargo xtask image"), "{err}");
        assert!(!d.path().join("x").exists());

        // The templates' directory cannot be made (a file is in the way):
        // mkfs makes the disk, which still works.
        let blocked = Templates::new(d.path().join("exists/templates"));
        let q = d.path().join("q.ext4");
        assert_eq!(blocked.create(&q, 1 << 30, None).expect("mkfs"), Made::Mkfs);
        assert_eq!(std::fs::metadata(&q).expect("meta").len(), 1 << 30);
    }
}
