//! Initramfs images: the newc cpio format, uncompressed (the kernel unpacks
//! it as is, which under TCG is faster than inflating gzip), written by hand
//! because the format is small: a 110-byte ASCII header, the NUL-terminated
//! name, the data, each padded to 4 bytes, and a `TRAILER!!!` entry.
//!
//! [`Initramfs`] holds entries in path order so parents come before their
//! children; [`guest`] lays out a Kiln test guest: kiln-init as `/init`,
//! `/dev/console`, kernel modules with a `modules.dep`, optionally busybox.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::kmod::{self, Module};

#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("initramfs path {path:?} must be relative, without '..', '.' or empty parts")]
    BadPath { path: String },
    #[error("{what} {path:?} is {size} bytes, over newc's 4 GiB limit")]
    TooLarge {
        what: &'static str,
        path: String,
        size: u64,
    },
    #[error("`{command}` failed: {detail}")]
    Command { command: String, detail: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    CharDev { major: u32, minor: u32 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    kind: Kind,
    /// Permission bits (including setuid/sticky), without the file type.
    perm: u32,
    uid: u32,
    gid: u32,
}

/// An initramfs being assembled in memory.
#[derive(Debug, Clone, Default)]
pub struct Initramfs {
    entries: BTreeMap<String, Entry>,
}

impl Initramfs {
    pub fn new() -> Self {
        Self::default()
    }

    /// A directory (and its missing parents, 0755).
    pub fn dir(&mut self, path: &str, perm: u32) -> Result<&mut Self, InitramfsError> {
        self.put(path, Kind::Dir, perm, 0, 0)
    }

    pub fn file(
        &mut self,
        path: &str,
        perm: u32,
        data: impl Into<Vec<u8>>,
    ) -> Result<&mut Self, InitramfsError> {
        let data = data.into();
        if u32::try_from(data.len()).is_err() {
            return Err(InitramfsError::TooLarge {
                what: "file",
                path: path.to_owned(),
                size: data.len() as u64,
            });
        }
        self.put(path, Kind::File(data), perm, 0, 0)
    }

    /// A file with the contents of `source` on the host.
    pub fn copy(
        &mut self,
        path: &str,
        perm: u32,
        source: &Path,
    ) -> Result<&mut Self, InitramfsError> {
        let data = std::fs::read(source).map_err(|e| InitramfsError::Io {
            path: source.to_owned(),
            source: e,
        })?;
        self.file(path, perm, data)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> Result<&mut Self, InitramfsError> {
        self.put(path, Kind::Symlink(target.to_owned()), 0o777, 0, 0)
    }

    pub fn char_dev(
        &mut self,
        path: &str,
        perm: u32,
        major: u32,
        minor: u32,
    ) -> Result<&mut Self, InitramfsError> {
        self.put(path, Kind::CharDev { major, minor }, perm, 0, 0)
    }

    /// Sets the owner of an existing entry.
    pub fn chown(&mut self, path: &str, uid: u32, gid: u32) -> Result<&mut Self, InitramfsError> {
        let key = clean(path)?;
        if let Some(e) = self.entries.get_mut(&key) {
            e.uid = uid;
            e.gid = gid;
        }
        Ok(self)
    }

    pub fn contains(&self, path: &str) -> bool {
        clean(path).is_ok_and(|k| self.entries.contains_key(&k))
    }

    fn put(
        &mut self,
        path: &str,
        kind: Kind,
        perm: u32,
        uid: u32,
        gid: u32,
    ) -> Result<&mut Self, InitramfsError> {
        let key = clean(path)?;
        let mut parent = Path::new(&key).parent();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            self.entries
                .entry(p.to_string_lossy().into_owned())
                .or_insert(Entry {
                    kind: Kind::Dir,
                    perm: 0o755,
                    uid: 0,
                    gid: 0,
                });
            parent = p.parent();
        }
        self.entries.insert(
            key,
            Entry {
                kind,
                perm: perm & 0o7777,
                uid,
                gid,
            },
        );
        Ok(self)
    }

    /// Writes the entries as a directory tree under `dir` (for `mkfs.ext4
    /// -d`, which builds a disk image from a directory). Device nodes are
    /// skipped; owners are set when the caller may set them.
    pub fn unpack_to(&self, dir: &Path) -> Result<(), InitramfsError> {
        use std::os::unix::fs::PermissionsExt;
        for (name, e) in &self.entries {
            let path = dir.join(name);
            let io = |source| InitramfsError::Io {
                path: path.clone(),
                source,
            };
            match &e.kind {
                Kind::Dir => std::fs::create_dir_all(&path).map_err(io)?,
                Kind::File(d) => std::fs::write(&path, d).map_err(io)?,
                Kind::Symlink(t) => std::os::unix::fs::symlink(t, &path).map_err(io)?,
                Kind::CharDev { .. } => continue,
            }
            if !matches!(e.kind, Kind::Symlink(_)) {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(e.perm))
                    .map_err(io)?;
            }
            if let Err(err) = std::os::unix::fs::lchown(&path, Some(e.uid), Some(e.gid)) {
                // Only root may give files away; then the tree is the caller's.
                if err.kind() != std::io::ErrorKind::PermissionDenied {
                    return Err(io(err));
                }
            }
        }
        Ok(())
    }

    /// The archive, ending with the trailer.
    pub fn write_to<W: Write>(&self, w: &mut W) -> std::io::Result<()> {
        for (ino, (name, e)) in (1u32..).zip(&self.entries) {
            let (mode, data, rdev): (u32, &[u8], (u32, u32)) = match &e.kind {
                Kind::Dir => (0o040000, &[], (0, 0)),
                Kind::File(d) => (0o100000, d, (0, 0)),
                Kind::Symlink(t) => (0o120000, t.as_bytes(), (0, 0)),
                Kind::CharDev { major, minor } => (0o020000, &[], (*major, *minor)),
            };
            let nlink = if e.kind == Kind::Dir { 2 } else { 1 };
            write_entry(w, ino, mode | e.perm, e.uid, e.gid, nlink, rdev, name, data)?;
        }
        write_entry(w, 0, 0, 0, 0, 1, (0, 0), "TRAILER!!!", &[])
    }

    /// Writes the archive to `path` atomically (aside, then renamed).
    pub fn write_file(&self, path: &Path) -> Result<(), InitramfsError> {
        let io = |p: &Path| {
            let p = p.to_owned();
            move |source| InitramfsError::Io { path: p, source }
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let result = (|| {
            let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
            self.write_to(&mut f)?;
            f.into_inner().map_err(|e| e.into_error())?.sync_all()
        })()
        .map_err(io(&tmp))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(io(path)));
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

#[allow(clippy::too_many_arguments)]
fn write_entry<W: Write>(
    w: &mut W,
    ino: u32,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u32,
    rdev: (u32, u32),
    name: &str,
    data: &[u8],
) -> std::io::Result<()> {
    let namesize = name.len() + 1;
    // Sizes fit: file() refuses data over u32::MAX, and names are short.
    let header = format!(
        "070701{ino:08x}{mode:08x}{uid:08x}{gid:08x}{nlink:08x}{mtime:08x}{size:08x}{:08x}{:08x}{:08x}{:08x}{namesize:08x}{:08x}",
        0, 0, rdev.0, rdev.1, 0,
        mtime = 0,
        size = data.len(),
    );
    w.write_all(header.as_bytes())?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    w.write_all(&[0; 3][..pad(header.len() + namesize)])?;
    w.write_all(data)?;
    w.write_all(&[0; 3][..pad(data.len())])
}

fn pad(n: usize) -> usize {
    (4 - n % 4) % 4
}

fn clean(path: &str) -> Result<String, InitramfsError> {
    let p = path.trim_start_matches('/');
    let ok = !p.is_empty()
        && !p.contains('\0')
        && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..");
    if ok {
        Ok(p.to_owned())
    } else {
        Err(InitramfsError::BadPath {
            path: path.to_owned(),
        })
    }
}

/// What goes into a test guest's initramfs.
#[derive(Debug, Clone)]
pub struct GuestContents {
    /// kiln-init, installed as `/init`.
    pub init: PathBuf,
    /// `uname -r` of the kernel the modules belong to.
    pub kernel_release: String,
    /// From [`kmod::resolve`]; copied to `lib/modules/<release>/` with a
    /// `modules.dep` for them.
    pub modules: Vec<Module>,
    /// The kernel's `modules.builtin`, so kiln-init knows what needs no file.
    pub modules_builtin: Option<PathBuf>,
    /// A static busybox, installed as `/bin/busybox` with a link per applet.
    pub busybox: Option<PathBuf>,
}

/// The directory skeleton every guest gets.
const DIRS: &[(&str, u32)] = &[
    ("bin", 0o755),
    ("sbin", 0o755),
    ("usr/bin", 0o755),
    ("usr/sbin", 0o755),
    ("etc", 0o755),
    ("dev", 0o755),
    ("proc", 0o555),
    ("sys", 0o555),
    ("run", 0o755),
    ("tmp", 0o1777),
    ("root", 0o700),
    ("var", 0o755),
    ("home", 0o755),
    ("mnt", 0o755),
];

/// Lays out a test guest. Add more with the returned [`Initramfs`]'s methods.
pub fn guest(c: &GuestContents) -> Result<Initramfs, InitramfsError> {
    let mut fs = Initramfs::new();
    for (d, perm) in DIRS {
        fs.dir(d, *perm)?;
    }
    // The kernel opens it for PID 1's stdio before devtmpfs is mounted.
    fs.char_dev("dev/console", 0o600, 5, 1)?;
    fs.copy("init", 0o755, &c.init)?;
    let mods = format!("lib/modules/{}", c.kernel_release);
    fs.dir(&mods, 0o755)?;
    for m in &c.modules {
        fs.copy(&format!("{mods}/{}", m.rel.display()), 0o644, &m.path)?;
    }
    fs.file(
        &format!("{mods}/modules.dep"),
        0o644,
        kmod::render_modules_dep(&c.modules),
    )?;
    if let Some(b) = &c.modules_builtin {
        fs.copy(&format!("{mods}/modules.builtin"), 0o644, b)?;
    }
    if let Some(busybox) = &c.busybox {
        add_busybox(&mut fs, busybox)?;
    }
    Ok(fs)
}

/// A static busybox as `/bin/busybox`, and a link to it for each applet
/// not already present.
pub fn add_busybox(fs: &mut Initramfs, busybox: &Path) -> Result<(), InitramfsError> {
    fs.copy("bin/busybox", 0o755, busybox)?;
    for applet in busybox_applets(busybox)? {
        if applet != "bin/busybox" && !fs.contains(&applet) {
            fs.symlink(&applet, "/bin/busybox")?;
        }
    }
    Ok(())
}

/// `busybox --list-full`: applet paths such as `bin/sh` and `usr/bin/env`.
fn busybox_applets(busybox: &Path) -> Result<Vec<String>, InitramfsError> {
    let out = std::process::Command::new(busybox)
        .arg("--list-full")
        .output()
        .map_err(|source| InitramfsError::Io {
            path: busybox.to_owned(),
            source,
        })?;
    if !out.status.success() {
        return Err(InitramfsError::Command {
            command: format!("{} --list-full", busybox.display()),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().trim_start_matches('/').to_owned())
        .filter(|l| clean(l).is_ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// name, mode, uid, rdev, data
    type Parsed = (String, u32, u32, (u32, u32), Vec<u8>);

    /// Parses a newc archive back.
    fn parse(mut b: &[u8]) -> Vec<Parsed> {
        let mut out = Vec::new();
        let hex = |s: &[u8]| {
            u32::from_str_radix(std::str::from_utf8(s).expect("ascii"), 16).expect("hex")
        };
        let total = b.len();
        loop {
            assert_eq!(&b[..6], b"070701");
            let f = |i: usize| hex(&b[6 + i * 8..14 + i * 8]);
            let (mode, uid, size, rmaj, rmin, namesize) = (f(1), f(2), f(6), f(9), f(10), f(11));
            let name_start = 110;
            let name =
                String::from_utf8(b[name_start..name_start + namesize as usize - 1].to_vec())
                    .expect("name");
            let mut off = name_start + namesize as usize;
            off += pad(off);
            let data = b[off..off + size as usize].to_vec();
            off += size as usize;
            off += pad(off);
            assert_eq!((total - b.len() + off) % 4, 0);
            b = &b[off..];
            if name == "TRAILER!!!" {
                assert!(b.is_empty());
                return out;
            }
            out.push((name, mode, uid, (rmaj, rmin), data));
        }
    }

    #[test]
    fn round_trips_every_kind_with_parents_first() {
        let mut fs = Initramfs::new();
        fs.file("/a/b/c.txt", 0o644, "hello").expect("file");
        fs.symlink("bin/sh", "/bin/busybox").expect("link");
        fs.char_dev("dev/console", 0o600, 5, 1).expect("dev");
        fs.dir("home/runner", 0o700).expect("dir");
        fs.chown("home/runner", 1001, 1001).expect("chown");
        let mut bytes = Vec::new();
        fs.write_to(&mut bytes).expect("write");
        let entries = parse(&bytes);
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "a",
                "a/b",
                "a/b/c.txt",
                "bin",
                "bin/sh",
                "dev",
                "dev/console",
                "home",
                "home/runner"
            ]
        );
        let get = |n: &str| entries.iter().find(|e| e.0 == n).expect(n);
        assert_eq!(get("a/b/c.txt").1, 0o100644);
        assert_eq!(get("a/b/c.txt").4, b"hello");
        assert_eq!(get("bin/sh").1, 0o120777);
        assert_eq!(get("bin/sh").4, b"/bin/busybox");
        assert_eq!(get("dev/console").1, 0o020600);
        assert_eq!(get("dev/console").3, (5, 1));
        assert_eq!(get("home/runner").1, 0o040700);
        assert_eq!(get("home/runner").2, 1001);
    }

    #[test]
    fn unpacks_to_a_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut fs = Initramfs::new();
        fs.file("etc/passwd", 0o600, "x").expect("file");
        fs.symlink("bin/sh", "busybox").expect("link");
        fs.char_dev("dev/console", 0o600, 5, 1).expect("dev");
        fs.unpack_to(dir.path()).expect("unpack");
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(dir.path().join("etc/passwd")).expect("passwd");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::read_link(dir.path().join("bin/sh")).expect("link"),
            Path::new("busybox")
        );
        assert!(dir.path().join("dev").is_dir());
        assert!(!dir.path().join("dev/console").exists());
    }

    #[test]
    fn bad_paths_are_refused() {
        let mut fs = Initramfs::new();
        for p in ["", "/", "a/../b", "a//b", "./a"] {
            let err = fs.file(p, 0o644, "x").expect_err(p);
            assert!(err.to_string().contains("must be relative"), "{err}");
        }
    }

    #[test]
    fn cpio_tool_reads_the_archive() {
        // The system's cpio is an independent reader of the format.
        if std::process::Command::new("cpio")
            .arg("--version")
            .output()
            .is_err()
        {
            panic!("cpio is needed for this test: apt-get install cpio");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let mut fs = Initramfs::new();
        fs.file("etc/passwd", 0o644, "root:x:0:0::/root:/bin/sh\n")
            .expect("file");
        fs.symlink("bin/sh", "busybox").expect("link");
        let archive = dir.path().join("x.cpio");
        fs.write_file(&archive).expect("write");
        let out = std::process::Command::new("cpio")
            .args(["-t", "-v", "-F"])
            .arg(&archive)
            .output()
            .expect("cpio");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(listing.contains("etc/passwd"), "{listing}");
        assert!(listing.contains("bin/sh -> busybox"), "{listing}");
    }

    #[test]
    fn guest_layout() {
        let dir = tempfile::tempdir().expect("tempdir");
        let init = dir.path().join("kiln-init");
        std::fs::write(&init, b"\x7fELF-init").expect("init");
        let ko = dir.path().join("vsock.ko");
        std::fs::write(&ko, b"ko").expect("ko");
        let fs = guest(&GuestContents {
            init,
            kernel_release: "6.1.0-test".into(),
            modules: vec![Module {
                name: "vsock".into(),
                path: ko,
                rel: "kernel/net/vsock.ko".into(),
                depends: vec![],
            }],
            modules_builtin: None,
            busybox: None,
        })
        .expect("guest");
        let mut bytes = Vec::new();
        fs.write_to(&mut bytes).expect("write");
        let entries = parse(&bytes);
        let get = |n: &str| {
            entries
                .iter()
                .find(|e| e.0 == n)
                .unwrap_or_else(|| panic!("{n} missing"))
        };
        assert_eq!(get("init").4, b"\x7fELF-init");
        assert_eq!(get("init").1, 0o100755);
        assert_eq!(get("dev/console").3, (5, 1));
        assert_eq!(get("tmp").1, 0o041777);
        assert_eq!(get("lib/modules/6.1.0-test/kernel/net/vsock.ko").4, b"ko");
        assert_eq!(
            get("lib/modules/6.1.0-test/modules.dep").4,
            b"kernel/net/vsock.ko:\n"
        );
    }
}
