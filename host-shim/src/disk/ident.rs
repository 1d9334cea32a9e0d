//! How kiln-init finds each disk the VMM attaches: by the UUID of the ext4
//! filesystem on it (`kiln.root=UUID=…`), read here from the file's
//! superblock, never by the name the guest kernel gives it (virtio_blk
//! may probe the disks in either order). Scratch disks copied from one
//! template share their UUID, but a VM has one scratch disk, and the base
//! image's UUID is its own.

use std::os::unix::fs::FileExt;
use std::path::Path;

/// Where the ext4 superblock starts, and its fields read here.
const SUPERBLOCK_OFFSET: u64 = 1024;
const MAGIC_AT: usize = 0x38;
const EXT4_MAGIC: u16 = 0xEF53;
const UUID_AT: usize = 0x68;

/// The ext2/3/4 filesystem UUID of the image at `path`; `None` when it
/// cannot be read or holds no ext filesystem.
pub fn ext4_uuid(path: &Path) -> Option<[u8; 16]> {
    let f = std::fs::File::open(path).ok()?;
    let mut sb = [0u8; UUID_AT + 16];
    f.read_exact_at(&mut sb, SUPERBLOCK_OFFSET).ok()?;
    let magic = u16::from_le_bytes([sb[MAGIC_AT], sb[MAGIC_AT + 1]]);
    if magic != EXT4_MAGIC {
        return None;
    }
    sb[UUID_AT..].try_into().ok()
}

/// `UUID=0b6f1f4e-6a1d-4c55-9c1a-2f6e8d7b1a90`.
fn uuid_arg(u: &[u8; 16]) -> String {
    let h = hex::encode(u);
    format!(
        "UUID={}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// What to tell kiln-init for each of a VM's disks (`(file, device
/// name)` in attach order): `UUID=` of its filesystem, or the device
/// name (order-dependent, logged) for a disk whose UUID is unreadable or
/// shared with another of the VM's disks.
pub fn guest_refs(disks: &[(&Path, String)]) -> Vec<String> {
    let uuids: Vec<Option<[u8; 16]>> = disks.iter().map(|(p, _)| ext4_uuid(p)).collect();
    disks
        .iter()
        .zip(&uuids)
        .map(|((path, dev), uuid)| match uuid {
            Some(u) if uuids.iter().filter(|o| o.as_ref() == Some(u)).count() == 1 => uuid_arg(u),
            _ => {
                tracing::warn!(
                    disk = %path.display(),
                    device = %dev,
                    "no ext4 UUID of its own on this disk: the guest finds it by device name, \
                     which depends on probe order"
                );
                dev.clone()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mkfs(path: &Path, uuid: &str) {
        let f = std::fs::File::create(path).expect("create");
        f.set_len(64 << 20).expect("size");
        let out = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F", "-U", uuid])
            .arg(path)
            .output()
            .or_else(|_| {
                std::process::Command::new("/sbin/mkfs.ext4")
                    .args(["-q", "-F", "-U", uuid])
                    .arg(path)
                    .output()
            })
            .expect("mkfs.ext4");
        assert!(out.status.success(), "{out:?}");
    }

    #[test]
    fn disks_are_named_by_uuid_unless_they_share_one() {
        let d = tempfile::tempdir().expect("tempdir");
        let (a, b, c) = (d.path().join("a"), d.path().join("b"), d.path().join("c"));
        mkfs(&a, "0b6f1f4e-6a1d-4c55-9c1a-2f6e8d7b1a90");
        mkfs(&b, "11111111-2222-3333-4444-555555555555");
        std::fs::write(&c, vec![0u8; 8192]).expect("write");
        let refs = guest_refs(&[(&a, "/dev/vda".into()), (&b, "/dev/vdb".into())]);
        assert_eq!(
            refs,
            [
                "UUID=0b6f1f4e-6a1d-4c55-9c1a-2f6e8d7b1a90",
                "UUID=11111111-2222-3333-4444-555555555555"
            ]
        );
        // Not ext4, missing, or one UUID on two disks: the device name.
        let refs = guest_refs(&[
            (&c, "/dev/vda".into()),
            (&d.path().join("gone"), "/dev/vdb".into()),
        ]);
        assert_eq!(refs, ["/dev/vda", "/dev/vdb"]);
        let refs = guest_refs(&[(&a, "/dev/vda".into()), (&a, "/dev/vdb".into())]);
        assert_eq!(refs, ["/dev/vda", "/dev/vdb"]);
    }
}
