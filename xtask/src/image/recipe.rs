//! The image recipe in `rootfs/`: the package list, the files laid on top of
//! the installed root, and the modes those files need.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// A loaded recipe. Paths in `files` and `modes` are relative to the root of
/// the guest (`etc/containers/storage.conf`).
#[derive(Debug, Clone)]
pub struct Recipe {
    pub dir: PathBuf,
    pub packages: Vec<String>,
    /// Relative path -> source file in the recipe.
    pub files: BTreeMap<PathBuf, PathBuf>,
    /// Relative path -> mode, from `modes.txt`; files not listed get 0644,
    /// or 0755 when executable in the recipe.
    pub modes: BTreeMap<PathBuf, u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    #[error("cannot read recipe file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {problem}")]
    Syntax {
        path: PathBuf,
        line: usize,
        problem: String,
    },
    #[error("{path} sets a mode for {rel}, which is not a file under files/")]
    ModeForMissing { path: PathBuf, rel: PathBuf },
    #[error("{path}: the package list is empty")]
    NoPackages { path: PathBuf },
    #[error("recipe file {path} is a symlink or special file; only regular files and directories are laid into the image")]
    NotRegular { path: PathBuf },
}

impl Recipe {
    pub fn load(dir: &Path) -> Result<Self, RecipeError> {
        let packages_path = dir.join("packages.txt");
        let packages = parse_packages(&packages_path, &read(&packages_path)?)?;
        let modes_path = dir.join("modes.txt");
        let modes = if modes_path.exists() {
            parse_modes(&modes_path, &read(&modes_path)?)?
        } else {
            BTreeMap::new()
        };
        let mut files = BTreeMap::new();
        let files_dir = dir.join("files");
        if files_dir.is_dir() {
            walk(&files_dir, Path::new(""), &mut files)?;
        }
        if let Some(rel) = modes.keys().find(|rel| !files.contains_key(*rel)) {
            return Err(RecipeError::ModeForMissing {
                path: modes_path,
                rel: rel.clone(),
            });
        }
        Ok(Recipe {
            dir: dir.to_owned(),
            packages,
            files,
            modes,
        })
    }

    /// The mode a recipe file gets in the image.
    pub fn mode_of(&self, rel: &Path) -> Result<u32, RecipeError> {
        if let Some(m) = self.modes.get(rel) {
            return Ok(*m);
        }
        let src = &self.files[rel];
        let meta = std::fs::metadata(src).map_err(|source| RecipeError::Read {
            path: src.clone(),
            source,
        })?;
        Ok(if meta.permissions().mode() & 0o111 != 0 {
            0o755
        } else {
            0o644
        })
    }

    /// Feeds everything that shapes the image into `h`: package list, every
    /// file's path, content and mode.
    pub fn hash_into(&self, h: &mut Sha256) -> Result<(), RecipeError> {
        h.update(b"packages\0");
        for p in &self.packages {
            h.update(p.as_bytes());
            h.update(b"\0");
        }
        for (rel, src) in &self.files {
            h.update(b"file\0");
            h.update(rel.as_os_str().as_encoded_bytes());
            h.update(b"\0");
            h.update(self.mode_of(rel)?.to_le_bytes());
            h.update(read_bytes(src)?);
        }
        Ok(())
    }
}

fn read(path: &Path) -> Result<String, RecipeError> {
    std::fs::read_to_string(path).map_err(|source| RecipeError::Read {
        path: path.to_owned(),
        source,
    })
}

fn read_bytes(path: &Path) -> Result<Vec<u8>, RecipeError> {
    std::fs::read(path).map_err(|source| RecipeError::Read {
        path: path.to_owned(),
        source,
    })
}

/// One Debian package name per line, `#` comments.
pub fn parse_packages(path: &Path, text: &str) -> Result<Vec<String>, RecipeError> {
    let mut out: Vec<String> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let name = line.split('#').next().unwrap_or("").trim();
        if name.is_empty() {
            continue;
        }
        // Debian policy 5.6.1: lower case, digits, + - . ; at least two
        // characters, starting alphanumeric.
        let valid = name.len() >= 2
            && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
        if !valid {
            return Err(RecipeError::Syntax {
                path: path.to_owned(),
                line: i + 1,
                problem: format!("{name:?} is not a Debian package name"),
            });
        }
        if !out.iter().any(|p| p == name) {
            out.push(name.to_owned());
        }
    }
    if out.is_empty() {
        return Err(RecipeError::NoPackages {
            path: path.to_owned(),
        });
    }
    Ok(out)
}

/// `MODE PATH` per line (octal mode, path relative to the guest root).
pub fn parse_modes(path: &Path, text: &str) -> Result<BTreeMap<PathBuf, u32>, RecipeError> {
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let err = |problem: String| RecipeError::Syntax {
            path: path.to_owned(),
            line: i + 1,
            problem,
        };
        let (mode, rel) = line
            .split_once(char::is_whitespace)
            .ok_or_else(|| err(format!("expected `MODE PATH`, got {line:?}")))?;
        let mode = u32::from_str_radix(mode, 8)
            .ok()
            .filter(|m| *m <= 0o7777)
            .ok_or_else(|| err(format!("{mode:?} is not an octal file mode")))?;
        let rel = rel.trim().trim_start_matches('/');
        out.insert(PathBuf::from(rel), mode);
    }
    Ok(out)
}

fn walk(dir: &Path, rel: &Path, out: &mut BTreeMap<PathBuf, PathBuf>) -> Result<(), RecipeError> {
    let entries = std::fs::read_dir(dir).map_err(|source| RecipeError::Read {
        path: dir.to_owned(),
        source,
    })?;
    for entry in entries {
        let entry = entry.map_err(|source| RecipeError::Read {
            path: dir.to_owned(),
            source,
        })?;
        let path = entry.path();
        let ty = entry.file_type().map_err(|source| RecipeError::Read {
            path: path.clone(),
            source,
        })?;
        let child = rel.join(entry.file_name());
        if ty.is_dir() {
            walk(&path, &child, out)?;
        } else if ty.is_file() {
            out.insert(child, path);
        } else {
            return Err(RecipeError::NotRegular { path });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packages_skip_comments_and_duplicates() {
        let p =
            parse_packages(Path::new("p"), "# c\npodman\n\nbuildah # why\npodman\n").expect("ok");
        assert_eq!(p, ["podman", "buildah"]);
    }

    #[test]
    fn bad_package_name_names_line() {
        let e = parse_packages(Path::new("p.txt"), "podman\nPod Man\n").expect_err("bad");
        assert!(e.to_string().contains("p.txt:2"), "{e}");
        assert!(parse_packages(Path::new("p"), "# nothing\n").is_err());
    }

    #[test]
    fn modes_parse_and_reject_garbage() {
        let m = parse_modes(Path::new("m"), "0440 /etc/sudoers.d/x\n").expect("ok");
        assert_eq!(m[Path::new("etc/sudoers.d/x")], 0o440);
        assert!(parse_modes(Path::new("m"), "999 etc/x\n").is_err());
        assert!(parse_modes(Path::new("m"), "0644\n").is_err());
    }

    #[test]
    fn loads_tree_and_hash_follows_content() {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::write(d.path().join("packages.txt"), "podman\n").expect("w");
        std::fs::create_dir_all(d.path().join("files/etc/sudoers.d")).expect("mkdir");
        std::fs::write(d.path().join("files/etc/sudoers.d/x"), "a\n").expect("w");
        std::fs::write(d.path().join("modes.txt"), "0440 etc/sudoers.d/x\n").expect("w");
        let r = Recipe::load(d.path()).expect("load");
        assert_eq!(
            r.mode_of(Path::new("etc/sudoers.d/x")).expect("mode"),
            0o440
        );
        let hash = |r: &Recipe| {
            let mut h = Sha256::new();
            r.hash_into(&mut h).expect("hash");
            h.finalize()
        };
        let before = hash(&r);
        std::fs::write(d.path().join("files/etc/sudoers.d/x"), "b\n").expect("w");
        assert_ne!(before, hash(&Recipe::load(d.path()).expect("load")));

        std::fs::write(d.path().join("modes.txt"), "0440 etc/missing\n").expect("w");
        let e = Recipe::load(d.path()).expect_err("mode for missing file");
        assert!(e.to_string().contains("etc/missing"), "{e}");
    }
}
