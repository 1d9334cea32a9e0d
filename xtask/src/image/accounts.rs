//! The guest's user `runner` and the `kiln-sudo` group, written straight into
//! the root's passwd/group/shadow/gshadow (no chroot, no useradd).

use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::rootpath;

/// The account jobs run as, and the group that grants sudo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accounts {
    pub user: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    /// Put this gid in the runner's supplementary groups to allow sudo.
    pub sudo_group: String,
    pub sudo_gid: u32,
}

impl Default for Accounts {
    fn default() -> Self {
        Accounts {
            user: "runner".into(),
            uid: 1001,
            gid: 1001,
            home: "/home/runner".into(),
            sudo_group: "kiln-sudo".into(),
            sudo_gid: 1100,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AccountsError {
    #[error("{file} in the root already has {what}; the recipe's accounts would clash")]
    Clash { file: PathBuf, what: String },
    #[error("cannot update {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Path(#[from] rootpath::RootPathError),
}

impl Accounts {
    pub fn create(&self, root: &Path) -> Result<(), AccountsError> {
        let Accounts {
            user,
            uid,
            gid,
            home,
            sudo_group,
            sudo_gid,
        } = self;
        append_unique(
            root,
            "etc/passwd",
            &[(user, *uid)],
            &format!("{user}:x:{uid}:{gid}::{home}:/bin/bash\n"),
        )?;
        append_unique(
            root,
            "etc/group",
            &[(user, *gid), (sudo_group, *sudo_gid)],
            &format!("{user}:x:{gid}:\n{sudo_group}:x:{sudo_gid}:\n"),
        )?;
        // Locked password: sudo without the group asks for one and `-n` fails.
        append_unique(
            root,
            "etc/shadow",
            &[],
            &format!("{user}:!::0:99999:7:::\n"),
        )?;
        append_unique(
            root,
            "etc/gshadow",
            &[],
            &format!("{user}:!::\n{sudo_group}:!::\n"),
        )?;
        self.make_home(root)
    }

    fn make_home(&self, root: &Path) -> Result<(), AccountsError> {
        let rel = Path::new(self.home.trim_start_matches('/'));
        let home = rootpath::mkdir_p(root, rel)?;
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| AccountsError::Io { path, source }
        };
        let skel = rootpath::resolve(root, Path::new("etc/skel"))?;
        if let Ok(entries) = std::fs::read_dir(&skel) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_file()) {
                    let dst = home.join(e.file_name());
                    std::fs::copy(e.path(), &dst).map_err(io(&dst))?;
                    chown(&dst, Some(self.uid), Some(self.gid)).map_err(io(&dst))?;
                }
            }
        }
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o755))
            .map_err(io(&home))?;
        chown(&home, Some(self.uid), Some(self.gid)).map_err(io(&home))
    }
}

/// Appends `lines` to a colon-separated database after checking that none of
/// `ids` (name, id) is taken by name (field 1) or id (field 3).
fn append_unique(
    root: &Path,
    rel: &str,
    ids: &[(&String, u32)],
    lines: &str,
) -> Result<(), AccountsError> {
    let path = rootpath::resolve(root, Path::new(rel))?;
    let io = |source| AccountsError::Io {
        path: path.clone(),
        source,
    };
    let text = std::fs::read_to_string(&path).map_err(io)?;
    let new_names: Vec<&str> = lines.lines().filter_map(|l| l.split(':').next()).collect();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        let name = fields.first().copied().unwrap_or("");
        if new_names.contains(&name) {
            return Err(AccountsError::Clash {
                file: path.clone(),
                what: format!("an entry named {name:?}"),
            });
        }
        if let Some(id) = fields.get(2).and_then(|f| f.parse::<u32>().ok()) {
            if let Some((n, _)) = ids.iter().find(|(_, want)| *want == id) {
                return Err(AccountsError::Clash {
                    file: path.clone(),
                    what: format!("id {id} (wanted for {n:?}) taken by {name:?}"),
                });
            }
        }
    }
    let mut text = text;
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(lines);
    std::fs::write(&path, text).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn fake_root() -> tempfile::TempDir {
        let d = tempfile::tempdir().expect("tempdir");
        let etc = d.path().join("etc");
        std::fs::create_dir_all(etc.join("skel")).expect("mkdir");
        std::fs::write(etc.join("passwd"), "root:x:0:0:root:/root:/bin/bash\n").expect("w");
        std::fs::write(etc.join("group"), "root:x:0:\nsudo:x:27:\n").expect("w");
        std::fs::write(etc.join("shadow"), "root:*:19000:0:99999:7:::\n").expect("w");
        std::fs::write(etc.join("gshadow"), "root:*::\n").expect("w");
        std::fs::write(etc.join("skel/.profile"), "# profile\n").expect("w");
        d
    }

    #[test]
    fn creates_runner_and_sudo_group() {
        let d = fake_root();
        Accounts::default().create(d.path()).expect("create");
        let passwd = std::fs::read_to_string(d.path().join("etc/passwd")).expect("r");
        assert!(
            passwd.ends_with("runner:x:1001:1001::/home/runner:/bin/bash\n"),
            "{passwd}"
        );
        let group = std::fs::read_to_string(d.path().join("etc/group")).expect("r");
        assert!(
            group.contains("runner:x:1001:\n") && group.contains("kiln-sudo:x:1100:\n"),
            "{group}"
        );
        let shadow = std::fs::read_to_string(d.path().join("etc/shadow")).expect("r");
        assert!(shadow.contains("runner:!:"), "{shadow}");
        let profile = d.path().join("home/runner/.profile");
        assert_eq!(std::fs::metadata(&profile).expect("m").uid(), 1001);
        assert_eq!(
            std::fs::metadata(d.path().join("home/runner"))
                .expect("m")
                .gid(),
            1001
        );
    }

    #[test]
    fn clashing_name_or_id_is_refused() {
        let d = fake_root();
        std::fs::write(d.path().join("etc/group"), "root:x:0:\nother:x:1100:\n").expect("w");
        let e = Accounts::default().create(d.path()).expect_err("gid clash");
        assert!(e.to_string().contains("1100"), "{e}");
        let d = fake_root();
        std::fs::write(d.path().join("etc/passwd"), "runner:x:5:5::/:/bin/sh\n").expect("w");
        let e = Accounts::default()
            .create(d.path())
            .expect_err("name clash");
        assert!(e.to_string().contains("\"runner\""), "{e}");
    }
}
