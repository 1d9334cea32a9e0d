//! The GitHub Actions runner: installed from a release tarball into
//! `/opt/actions-runner`, owned by the runner user.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::digest;
use super::rootpath;

/// Where the runner lives in the guest.
pub const INSTALL_DIR: &str = "opt/actions-runner";

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error(
        "cannot tell the runner version from {0}: name it actions-runner-linux-<arch>-<version>.tar.gz \
         or pass --runner-version too"
    )]
    UnknownVersion(PathBuf),
    #[error("--runner-version {given} does not match the tarball's name {path} (version {named})")]
    VersionMismatch {
        given: String,
        named: String,
        path: PathBuf,
    },
    #[error("{0:?} is not a runner version (expected digits and dots, e.g. 2.321.0)")]
    BadVersion(String),
    #[error(
        "cannot download the actions runner {version} from GitHub ({url}): {detail}. \
         This machine may have no network to GitHub: download \
         actions-runner-linux-{arch}-{version}.tar.gz where it does and pass --runner-tarball PATH"
    )]
    Download {
        version: String,
        arch: String,
        url: String,
        detail: String,
    },
    #[error("the release notes of runner {version} ({url}) publish no sha256 for linux-{arch}; refusing an unchecked download")]
    NoChecksum {
        version: String,
        arch: String,
        url: String,
    },
    #[error("downloaded runner {path} has sha256 {got}, but GitHub publishes {want}")]
    ChecksumMismatch {
        path: PathBuf,
        got: String,
        want: String,
    },
    #[error("extracting {tarball}: {detail}")]
    Extract { tarball: PathBuf, detail: String },
    #[error(
        "{tarball} is not an actions runner tarball: it has no bin/Runner.Listener and config.sh"
    )]
    NotARunner { tarball: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Digest(#[from] digest::DigestError),
    #[error(transparent)]
    Path(#[from] rootpath::RootPathError),
}

/// The runner's name for an architecture (`x64`, `arm64`).
pub fn runner_arch(debian_arch: &str) -> &'static str {
    match debian_arch {
        "arm64" => "arm64",
        _ => "x64",
    }
}

/// `actions-runner-linux-x64-2.321.0.tar.gz` -> `2.321.0`.
pub fn version_from_name(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let rest = name
        .strip_prefix("actions-runner-linux-")?
        .strip_suffix(".tar.gz")?;
    let (_, version) = rest.split_once('-')?;
    valid_version(version).then(|| version.to_owned())
}

pub fn valid_version(v: &str) -> bool {
    !v.is_empty()
        && v.split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// The version a local tarball carries, cross-checked with `--runner-version`.
pub fn tarball_version(path: &Path, given: Option<&str>) -> Result<String, RunnerError> {
    match (version_from_name(path), given) {
        (Some(named), Some(given)) if named != given => Err(RunnerError::VersionMismatch {
            given: given.to_owned(),
            named,
            path: path.to_owned(),
        }),
        (Some(named), _) => Ok(named),
        (None, Some(given)) if valid_version(given) => Ok(given.to_owned()),
        (None, Some(given)) => Err(RunnerError::BadVersion(given.to_owned())),
        (None, None) => Err(RunnerError::UnknownVersion(path.to_owned())),
    }
}

/// Downloads runner `version` into `cache` (once) and checks it against the
/// sha256 GitHub publishes in the release notes.
pub fn download(version: &str, debian_arch: &str, cache: &Path) -> Result<PathBuf, RunnerError> {
    if !valid_version(version) {
        return Err(RunnerError::BadVersion(version.to_owned()));
    }
    let arch = runner_arch(debian_arch);
    let name = format!("actions-runner-linux-{arch}-{version}.tar.gz");
    let dest = cache.join(&name);
    let api = format!("https://api.github.com/repos/actions/runner/releases/tags/v{version}");
    let fail = |url: &str, detail: String| RunnerError::Download {
        version: version.to_owned(),
        arch: arch.to_owned(),
        url: url.to_owned(),
        detail,
    };
    let release = curl(&api, None).map_err(|d| fail(&api, d))?;
    let want = published_sha256(&release, arch).ok_or_else(|| RunnerError::NoChecksum {
        version: version.to_owned(),
        arch: arch.to_owned(),
        url: api.clone(),
    })?;
    if dest.exists() && digest::sha256_file(&dest)? == want {
        return Ok(dest);
    }
    std::fs::create_dir_all(cache).map_err(|source| RunnerError::Io {
        path: cache.to_owned(),
        source,
    })?;
    let url = format!("https://github.com/actions/runner/releases/download/v{version}/{name}");
    let part = cache.join(format!("{name}.part"));
    curl(&url, Some(&part)).map_err(|d| fail(&url, d))?;
    let got = digest::sha256_file(&part)?;
    if got != want {
        let _ = std::fs::remove_file(&part);
        return Err(RunnerError::ChecksumMismatch {
            path: dest,
            got,
            want,
        });
    }
    std::fs::rename(&part, &dest).map_err(|source| RunnerError::Io {
        path: dest.clone(),
        source,
    })?;
    Ok(dest)
}

/// Release notes carry `<!-- BEGIN SHA linux-x64 -->HEX<!-- END SHA linux-x64 -->`.
/// The text may be JSON-escaped; the markers survive that.
pub fn published_sha256(release: &str, arch: &str) -> Option<String> {
    let begin = format!("<!-- BEGIN SHA linux-{arch} -->");
    let end = format!("<!-- END SHA linux-{arch} -->");
    let start = release.find(&begin)? + begin.len();
    let len = release[start..].find(&end)?;
    let hex = release[start..start + len].trim();
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| hex.to_ascii_lowercase())
}

/// GETs `url` into `out` (or returns the body). `curl` is used so the
/// xtask needs no TLS stack of its own.
fn curl(url: &str, out: Option<&Path>) -> Result<String, String> {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-fsSL",
        "--connect-timeout",
        "15",
        "--max-time",
        "900",
        "--retry",
        "2",
    ]);
    if let Some(out) = out {
        cmd.arg("-o").arg(out);
    }
    let res = cmd
        .arg(url)
        .output()
        .map_err(|e| format!("cannot run curl: {e}"))?;
    if !res.status.success() {
        // With --retry curl repeats its error; the last line says it all.
        let stderr = String::from_utf8_lossy(&res.stderr);
        let err = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim()
            .to_owned();
        return Err(if err.is_empty() {
            format!("curl {}", res.status)
        } else {
            err
        });
    }
    Ok(String::from_utf8_lossy(&res.stdout).into_owned())
}

/// Extracts the tarball into the root's [`INSTALL_DIR`] and gives it to
/// `uid:gid` (the runner writes its config and work dirs there).
pub fn install(root: &Path, tarball: &Path, uid: u32, gid: u32) -> Result<(), RunnerError> {
    let dir = rootpath::mkdir_p(root, Path::new(INSTALL_DIR))?;
    let res = Command::new("tar")
        .arg("-xzf")
        .arg(tarball)
        .arg("-C")
        .arg(&dir)
        .args([
            "--no-same-owner",
            "--no-same-permissions",
            "--delay-directory-restore",
        ])
        .output()
        .map_err(|e| RunnerError::Extract {
            tarball: tarball.to_owned(),
            detail: format!("cannot run tar: {e}"),
        })?;
    if !res.status.success() {
        return Err(RunnerError::Extract {
            tarball: tarball.to_owned(),
            detail: String::from_utf8_lossy(&res.stderr).trim().to_owned(),
        });
    }
    if !dir.join("bin/Runner.Listener").is_file() || !dir.join("config.sh").is_file() {
        return Err(RunnerError::NotARunner {
            tarball: tarball.to_owned(),
        });
    }
    chown_tree(&dir, uid, gid)
}

fn chown_tree(path: &Path, uid: u32, gid: u32) -> Result<(), RunnerError> {
    let io = |source| RunnerError::Io {
        path: path.to_owned(),
        source,
    };
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(io)?;
    let meta = std::fs::symlink_metadata(path).map_err(io)?;
    if meta.is_dir() {
        for e in std::fs::read_dir(path).map_err(io)? {
            chown_tree(&e.map_err(io)?.path(), uid, gid)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn version_comes_from_the_file_name() {
        let p = Path::new("/x/actions-runner-linux-x64-2.321.0.tar.gz");
        assert_eq!(version_from_name(p).as_deref(), Some("2.321.0"));
        assert_eq!(tarball_version(p, None).expect("v"), "2.321.0");
        assert!(tarball_version(p, Some("2.320.0")).is_err());
        let odd = Path::new("runner.tgz");
        assert!(matches!(
            tarball_version(odd, None),
            Err(RunnerError::UnknownVersion(_))
        ));
        assert_eq!(tarball_version(odd, Some("2.1.0")).expect("v"), "2.1.0");
        assert!(tarball_version(odd, Some("latest")).is_err());
    }

    #[test]
    fn sha_from_release_notes() {
        let hex = "a".repeat(64);
        let body = format!(
            "{{\"body\":\"- x\\r\\n<!-- BEGIN SHA linux-x64 -->{hex}<!-- END SHA linux-x64 -->\\r\\n\
             <!-- BEGIN SHA linux-arm64 -->zz<!-- END SHA linux-arm64 -->\"}}"
        );
        assert_eq!(published_sha256(&body, "x64"), Some(hex));
        assert_eq!(published_sha256(&body, "arm64"), None);
        assert_eq!(published_sha256("{}", "x64"), None);
    }

    /// A stand-in runner tarball: GitHub cannot be reached from here.
    fn fake_tarball(dir: &Path, with_listener: bool) -> PathBuf {
        let src = dir.join("src");
        std::fs::create_dir_all(src.join("bin")).expect("mkdir");
        std::fs::write(src.join("config.sh"), "#!/bin/sh\n").expect("w");
        if with_listener {
            std::fs::write(src.join("bin/Runner.Listener"), "x").expect("w");
        }
        let tarball = dir.join("actions-runner-linux-x64-2.999.0.tar.gz");
        let ok = Command::new("tar")
            .arg("-czf")
            .arg(&tarball)
            .arg("-C")
            .arg(&src)
            .arg(".")
            .status()
            .expect("tar");
        assert!(ok.success());
        tarball
    }

    #[test]
    fn installs_and_chowns() {
        let d = tempfile::tempdir().expect("tempdir");
        let tarball = fake_tarball(d.path(), true);
        let root = d.path().join("root");
        std::fs::create_dir(&root).expect("mkdir");
        install(&root, &tarball, 1001, 1001).expect("install");
        let listener = root.join("opt/actions-runner/bin/Runner.Listener");
        assert_eq!(std::fs::metadata(&listener).expect("m").uid(), 1001);
        assert_eq!(
            std::fs::metadata(root.join("opt/actions-runner"))
                .expect("m")
                .gid(),
            1001
        );
    }

    #[test]
    fn rejects_a_tarball_without_the_runner() {
        let d = tempfile::tempdir().expect("tempdir");
        let tarball = fake_tarball(d.path(), false);
        let root = d.path().join("root");
        std::fs::create_dir(&root).expect("mkdir");
        let e = install(&root, &tarball, 1001, 1001).expect_err("not a runner");
        assert!(e.to_string().contains("Runner.Listener"), "{e}");
    }
}
