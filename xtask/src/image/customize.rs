//! What the build changes in the installed root: the recipe's files,
//! kiln-init as `/sbin/init`, per-host leftovers of mmdebstrap, and the
//! checks that the root is what the guest expects.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::accounts::Accounts;
use super::recipe::{Recipe, RecipeError};
use super::rootpath::{self, RootPathError};

#[derive(Debug, thiserror::Error)]
pub enum CustomizeError {
    #[error("cannot write {path} in the root: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Path(#[from] RootPathError),
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    #[error(
        "{0} is installed in the root: containers/storage would use it instead of native \
         overlay. Find what pulls it in (apt-cache rdepends fuse-overlayfs) and drop that from \
         rootfs/packages.txt"
    )]
    FuseOverlayfs(PathBuf),
    #[error("{what} is missing from the root ({path}); is {package} in rootfs/packages.txt?")]
    Missing {
        what: &'static str,
        path: PathBuf,
        package: &'static str,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CustomizeError + '_ {
    move |source| CustomizeError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes `data` at `rel` in the root with `mode`, owned by root.
pub fn write_file(root: &Path, rel: &Path, data: &[u8], mode: u32) -> Result<(), CustomizeError> {
    let path = rootpath::for_writing(root, rel)?;
    std::fs::write(&path, data).map_err(io(&path))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).map_err(io(&path))?;
    std::os::unix::fs::chown(&path, Some(0), Some(0)).map_err(io(&path))
}

/// Lays every file of the recipe's `files/` into the root.
pub fn lay_files(root: &Path, recipe: &Recipe) -> Result<usize, CustomizeError> {
    for (rel, src) in &recipe.files {
        let data = std::fs::read(src).map_err(io(src))?;
        write_file(root, rel, &data, recipe.mode_of(rel)?)?;
    }
    Ok(recipe.files.len())
}

/// Installs kiln-init as the guest's `/sbin/init`.
pub fn install_init(root: &Path, init: &Path) -> Result<(), CustomizeError> {
    let data = std::fs::read(init).map_err(io(init))?;
    write_file(root, Path::new("sbin/init"), &data, 0o755)
}

/// mmdebstrap copies the build host's resolv.conf in; the guest's comes from
/// the Job (kiln-init writes it), so the image carries an empty one.
pub fn clear_host_leftovers(root: &Path) -> Result<(), CustomizeError> {
    write_file(root, Path::new("etc/resolv.conf"), b"", 0o644)
}

/// `--sudo`: an image whose runner always has password-less sudo, whatever
/// the Job says (development images).
pub fn always_sudo(root: &Path, accounts: &Accounts) -> Result<(), CustomizeError> {
    let rule = format!(
        "# Built with `cargo xtask image --sudo`: sudo for {0} in every VM.\n{0} ALL=(ALL:ALL) NOPASSWD: ALL\n",
        accounts.user
    );
    write_file(
        root,
        Path::new("etc/sudoers.d/kiln-always"),
        rule.as_bytes(),
        0o440,
    )
}

/// The root must have what rootless podman needs and nothing that defeats
/// native overlay.
pub fn check(root: &Path) -> Result<(), CustomizeError> {
    for rel in ["usr/bin/fuse-overlayfs", "usr/local/bin/fuse-overlayfs"] {
        let p = rootpath::resolve(root, Path::new(rel))?;
        if p.exists() {
            return Err(CustomizeError::FuseOverlayfs(PathBuf::from("/").join(rel)));
        }
    }
    let setuid = [
        ("newuidmap", "usr/bin/newuidmap", "uidmap"),
        ("newgidmap", "usr/bin/newgidmap", "uidmap"),
        ("sudo", "usr/bin/sudo", "sudo"),
    ];
    for (what, rel, package) in setuid {
        let p = rootpath::resolve(root, Path::new(rel))?;
        let meta = std::fs::metadata(&p).map_err(|_| CustomizeError::Missing {
            what,
            path: p.clone(),
            package,
        })?;
        // Rootless user namespaces and sudo depend on these staying setuid
        // root; mkfs.ext4 -d copies the bit as it finds it.
        if meta.permissions().mode() & 0o4000 == 0 {
            return Err(CustomizeError::Io {
                path: p,
                source: std::io::Error::other("expected the setuid bit"),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_goes_through_the_sbin_symlink() {
        let d = tempfile::tempdir().expect("tempdir");
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("usr/sbin")).expect("mkdir");
        std::os::unix::fs::symlink("usr/sbin", root.join("sbin")).expect("link");
        let init = d.path().join("kiln-init");
        std::fs::write(&init, b"\x7fELF").expect("w");
        install_init(&root, &init).expect("install");
        let m = std::fs::metadata(root.join("usr/sbin/init")).expect("installed");
        assert_eq!(m.permissions().mode() & 0o7777, 0o755);
    }

    #[test]
    fn always_sudo_writes_a_strict_rule_for_the_runner() {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(d.path().join("etc/sudoers.d")).expect("mkdir");
        always_sudo(d.path(), &Accounts::default()).expect("write");
        let p = d.path().join("etc/sudoers.d/kiln-always");
        let text = std::fs::read_to_string(&p).expect("r");
        assert!(
            text.lines()
                .any(|l| l == "runner ALL=(ALL:ALL) NOPASSWD: ALL"),
            "{text}"
        );
        // sudo ignores sudoers files that others can write; 0440 is its norm.
        let mode = std::fs::metadata(&p).expect("m").permissions().mode() & 0o7777;
        assert_eq!(mode, 0o440);
    }

    #[test]
    fn fuse_overlayfs_is_refused() {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(d.path().join("usr/bin")).expect("mkdir");
        std::fs::write(d.path().join("usr/bin/fuse-overlayfs"), b"").expect("w");
        let e = check(d.path()).expect_err("refused");
        assert!(e.to_string().contains("fuse-overlayfs"), "{e}");
    }

    #[test]
    fn missing_setuid_helper_names_package() {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(d.path().join("usr/bin")).expect("mkdir");
        let e = check(d.path()).expect_err("missing");
        assert!(e.to_string().contains("uidmap"), "{e}");
    }
}
