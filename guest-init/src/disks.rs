//! Finds the root's disks by what is on them, never by the order the kernel
//! probed them in. The host names each disk `UUID=<uuid>` (it reads the
//! ext4 superblock of the file it attaches) or `LABEL=<label>`; kiln-init
//! reads the superblock of every block device in `/sys/block` and takes the
//! one that matches. With virtio_blk loading beside other modules the
//! kernel may name the disks the other way round (`vda` the scratch disk),
//! which a device path such as `/dev/vda` (still accepted, for older hosts)
//! would get wrong.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Where the ext4 superblock starts on the device.
const SUPERBLOCK_OFFSET: u64 = 1024;
/// Bytes of the superblock read: through the volume name.
const SUPERBLOCK_READ: usize = 0x88;
const MAGIC_AT: usize = 0x38;
const EXT4_MAGIC: u16 = 0xEF53;
const UUID_AT: usize = 0x68;
const LABEL_AT: usize = 0x78;
const LABEL_LEN: usize = 16;

/// How the command line names a disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskRef {
    /// A device node, e.g. `/dev/vda`: depends on probe order.
    Path(PathBuf),
    /// `UUID=`: the ext4 filesystem's UUID.
    Uuid([u8; 16]),
    /// `LABEL=`: the ext4 volume name (at most 16 bytes).
    Label(String),
}

impl std::fmt::Display for DiskRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DiskRef::Path(p) => write!(f, "{}", p.display()),
            DiskRef::Uuid(u) => write!(f, "UUID={}", format_uuid(u)),
            DiskRef::Label(l) => write!(f, "LABEL={l}"),
        }
    }
}

/// Why a `kiln.root=` / `kiln.scratch=` value names no disk.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefError {
    #[error("{0:?} is not a device path (/dev/vda), UUID=<uuid> or LABEL=<label>")]
    Form(String),
    #[error("UUID {0:?} is not 32 hex digits (dashes allowed)")]
    Uuid(String),
    #[error("LABEL {0:?} must be 1 to 16 bytes")]
    Label(String),
}

/// Why a disk named on the command line cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiskError {
    #[error("no block device holds {wanted}; seen: {seen}")]
    Missing { wanted: String, seen: String },
    #[error("{wanted} matches more than one block device: {devices}")]
    Ambiguous { wanted: String, devices: String },
}

impl DiskRef {
    /// Parses a command-line value: `/dev/...`, `UUID=...` or `LABEL=...`.
    pub fn parse(value: &str) -> Result<DiskRef, RefError> {
        if let Some(u) = value.strip_prefix("UUID=") {
            return parse_uuid(u).map(DiskRef::Uuid);
        }
        if let Some(l) = value.strip_prefix("LABEL=") {
            if l.is_empty() || l.len() > LABEL_LEN {
                return Err(RefError::Label(l.to_owned()));
            }
            return Ok(DiskRef::Label(l.to_owned()));
        }
        if value.starts_with('/') && !value.contains("..") {
            return Ok(DiskRef::Path(PathBuf::from(value)));
        }
        Err(RefError::Form(value.to_owned()))
    }

    fn matches(&self, sb: &Superblock) -> bool {
        match self {
            DiskRef::Path(_) => false,
            DiskRef::Uuid(u) => &sb.uuid == u,
            DiskRef::Label(l) => sb.label == *l,
        }
    }
}

fn parse_uuid(text: &str) -> Result<[u8; 16], RefError> {
    let bad = || RefError::Uuid(text.to_owned());
    let hex: Vec<u8> = text.bytes().filter(|b| *b != b'-').collect();
    if hex.len() != 32 {
        return Err(bad());
    }
    let mut out = [0u8; 16];
    for (i, pair) in hex.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).map_err(|_| bad())?;
        out[i] = u8::from_str_radix(s, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

fn format_uuid(u: &[u8; 16]) -> String {
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// What identifies an ext4 filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    pub uuid: [u8; 16],
    pub label: String,
}

impl Superblock {
    /// Parses the first [`SUPERBLOCK_READ`] bytes of an ext4 superblock;
    /// `None` when the magic is not ext2/3/4's.
    pub fn parse(bytes: &[u8]) -> Option<Superblock> {
        let magic = u16::from_le_bytes([*bytes.get(MAGIC_AT)?, *bytes.get(MAGIC_AT + 1)?]);
        if magic != EXT4_MAGIC {
            return None;
        }
        let uuid: [u8; 16] = bytes.get(UUID_AT..UUID_AT + 16)?.try_into().ok()?;
        let raw = bytes.get(LABEL_AT..LABEL_AT + LABEL_LEN)?;
        let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
        let label = String::from_utf8_lossy(&raw[..end]).into_owned();
        Some(Superblock { uuid, label })
    }

    /// Reads the superblock of the device (or image) at `path`.
    pub fn read(path: &Path) -> Option<Superblock> {
        let f = std::fs::File::open(path).ok()?;
        let mut buf = [0u8; SUPERBLOCK_READ];
        f.read_exact_at(&mut buf, SUPERBLOCK_OFFSET).ok()?;
        Superblock::parse(&buf)
    }
}

/// Every block device the kernel has made so far, with its superblock if
/// it holds an ext filesystem.
pub fn scan() -> Vec<(PathBuf, Option<Superblock>)> {
    scan_in(Path::new("/sys/block"), Path::new("/dev"))
}

fn scan_in(sys_block: &Path, dev: &Path) -> Vec<(PathBuf, Option<Superblock>)> {
    let Ok(entries) = std::fs::read_dir(sys_block) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        // Loop and RAM disks are never the VM's attached disks.
        .filter(|n| !n.starts_with("loop") && !n.starts_with("ram") && !n.starts_with("zram"))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let path = dev.join(&n);
            let sb = Superblock::read(&path);
            (path, sb)
        })
        .collect()
}

/// The device `wanted` names among `devices` (from [`scan`]): `Ok(None)`
/// while it has not appeared.
pub fn find(
    wanted: &DiskRef,
    devices: &[(PathBuf, Option<Superblock>)],
) -> Result<Option<PathBuf>, DiskError> {
    if let DiskRef::Path(p) = wanted {
        return Ok(p.exists().then(|| p.clone()));
    }
    let hits: Vec<&PathBuf> = devices
        .iter()
        .filter(|(_, sb)| sb.as_ref().is_some_and(|sb| wanted.matches(sb)))
        .map(|(p, _)| p)
        .collect();
    match hits.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some((*one).clone())),
        many => Err(DiskError::Ambiguous {
            wanted: wanted.to_string(),
            devices: many
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// [`find`], where not finding it is an error naming what was seen.
pub fn require(
    wanted: &DiskRef,
    devices: &[(PathBuf, Option<Superblock>)],
) -> Result<PathBuf, DiskError> {
    find(wanted, devices)?.ok_or_else(|| DiskError::Missing {
        wanted: wanted.to_string(),
        seen: describe(devices),
    })
}

fn describe(devices: &[(PathBuf, Option<Superblock>)]) -> String {
    if devices.is_empty() {
        return "no block devices".to_owned();
    }
    devices
        .iter()
        .map(|(p, sb)| match sb {
            Some(sb) => format!(
                "{} (UUID={} LABEL={:?})",
                p.display(),
                format_uuid(&sb.uuid),
                sb.label
            ),
            None => format!("{} (not ext4)", p.display()),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID: &str = "0b6f1f4e-6a1d-4c55-9c1a-2f6e8d7b1a90";

    fn superblock(uuid: [u8; 16], label: &str) -> Vec<u8> {
        let mut b = vec![0u8; 1024 + SUPERBLOCK_READ];
        let sb = &mut b[1024..];
        sb[MAGIC_AT..MAGIC_AT + 2].copy_from_slice(&EXT4_MAGIC.to_le_bytes());
        sb[UUID_AT..UUID_AT + 16].copy_from_slice(&uuid);
        sb[LABEL_AT..LABEL_AT + label.len()].copy_from_slice(label.as_bytes());
        b
    }

    #[test]
    fn refs_parse_and_print() {
        let u = DiskRef::parse(&format!("UUID={UUID}")).unwrap();
        assert_eq!(u.to_string(), format!("UUID={UUID}"));
        assert_eq!(
            DiskRef::parse(&format!("UUID={}", UUID.to_uppercase().replace('-', ""))).unwrap(),
            u
        );
        assert_eq!(
            DiskRef::parse("LABEL=kiln-scratch").unwrap(),
            DiskRef::Label("kiln-scratch".into())
        );
        assert_eq!(
            DiskRef::parse("/dev/vda").unwrap(),
            DiskRef::Path("/dev/vda".into())
        );
        assert!(matches!(DiskRef::parse("UUID=12"), Err(RefError::Uuid(_))));
        assert!(matches!(
            DiskRef::parse("UUID=zz6f1f4e6a1d4c559c1a2f6e8d7b1a90"),
            Err(RefError::Uuid(_))
        ));
        assert!(matches!(
            DiskRef::parse("LABEL=seventeen-bytes!!"),
            Err(RefError::Label(_))
        ));
        assert!(matches!(DiskRef::parse("vda"), Err(RefError::Form(_))));
        assert!(matches!(
            DiskRef::parse("/dev/../etc"),
            Err(RefError::Form(_))
        ));
    }

    #[test]
    fn superblock_fields() {
        let uuid = parse_uuid(UUID).unwrap();
        let b = superblock(uuid, "kiln-root");
        let sb = Superblock::parse(&b[1024..]).unwrap();
        assert_eq!(sb.uuid, uuid);
        assert_eq!(sb.label, "kiln-root");
        let mut bad = b.clone();
        bad[1024 + MAGIC_AT] = 0;
        assert_eq!(Superblock::parse(&bad[1024..]), None);
        assert_eq!(Superblock::parse(&b[1024..1050]), None);
    }

    #[test]
    fn finds_disks_whatever_their_names() {
        let tmp = std::env::temp_dir().join(format!("kiln-init-disks-{}", std::process::id()));
        let (sys, dev) = (tmp.join("sys/block"), tmp.join("dev"));
        std::fs::create_dir_all(&sys).unwrap();
        std::fs::create_dir_all(&dev).unwrap();
        let root = parse_uuid(UUID).unwrap();
        let scratch = [7u8; 16];
        // Probed the "wrong" way round: the scratch disk is vda.
        for (name, image) in [
            ("vda", superblock(scratch, "kiln-scratch")),
            ("vdb", superblock(root, "kiln-root")),
            ("vdc", vec![0u8; 4096]),
            ("loop0", superblock(root, "kiln-root")),
        ] {
            std::fs::create_dir_all(sys.join(name)).unwrap();
            std::fs::write(dev.join(name), image).unwrap();
        }
        let seen = scan_in(&sys, &dev);
        assert_eq!(seen.len(), 3, "loop devices are skipped: {seen:?}");
        assert_eq!(
            require(&DiskRef::Uuid(root), &seen).unwrap(),
            dev.join("vdb")
        );
        assert_eq!(
            require(&DiskRef::Label("kiln-scratch".into()), &seen).unwrap(),
            dev.join("vda")
        );
        assert_eq!(find(&DiskRef::Uuid([9; 16]), &seen), Ok(None));
        let missing = require(&DiskRef::Uuid([9; 16]), &seen)
            .unwrap_err()
            .to_string();
        assert!(missing.contains("UUID=09090909-"), "{missing}");
        assert!(
            missing.contains("vdc") && missing.contains("not ext4"),
            "{missing}"
        );
        assert!(missing.contains("LABEL=\"kiln-root\""), "{missing}");

        // Two disks with one UUID: refused, not a guess.
        std::fs::create_dir_all(sys.join("vdd")).unwrap();
        std::fs::write(dev.join("vdd"), superblock(root, "other")).unwrap();
        let seen = scan_in(&sys, &dev);
        let err = find(&DiskRef::Uuid(root), &seen).unwrap_err();
        assert!(matches!(err, DiskError::Ambiguous { .. }), "{err}");
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
