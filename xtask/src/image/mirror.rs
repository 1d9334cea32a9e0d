//! Which Debian mirror to build from: the one the host's own apt
//! configuration names, so the build works wherever `apt-get` works and no
//! registry host is baked into the code.

use std::path::{Path, PathBuf};

/// One `deb` entry of the host's apt configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AptSource {
    pub uri: String,
    pub suites: Vec<String>,
}

/// The archives the guest is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirrors {
    /// The main archive (serves `<suite>` and `<suite>-updates`).
    pub main: String,
    /// The security archive, when the host has one configured.
    pub security: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("cannot read apt configuration {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the host's apt configuration ({searched}) names no `deb` mirror; \
         pass --mirror URL"
    )]
    NoneConfigured { searched: String },
    #[error("--mirror {0:?} is not an http://, https:// or file:// URL")]
    BadUrl(String),
}

impl Mirrors {
    /// `--mirror URL`: that archive only (no separate security archive).
    pub fn from_url(url: &str) -> Result<Self, MirrorError> {
        let ok = ["http://", "https://", "file://"]
            .iter()
            .any(|p| url.starts_with(p) && url.len() > p.len());
        if !ok {
            return Err(MirrorError::BadUrl(url.to_owned()));
        }
        Ok(Mirrors {
            main: url.to_owned(),
            security: None,
        })
    }

    /// The mirrors the apt configuration under `etc_apt` (normally
    /// `/etc/apt`) names. Suites there may be another release than the one
    /// we build: only the archive URIs are taken, and a URI whose suites end
    /// in `-security` is taken as the security archive.
    pub fn from_host(etc_apt: &Path) -> Result<Self, MirrorError> {
        let sources = read_host_sources(etc_apt)?;
        choose(&sources).ok_or_else(|| MirrorError::NoneConfigured {
            searched: format!(
                "{0}/sources.list, {0}/sources.list.d/*.list, *.sources",
                etc_apt.display()
            ),
        })
    }

    /// Every mirror URL, for messages.
    pub fn urls(&self) -> Vec<&str> {
        std::iter::once(self.main.as_str())
            .chain(self.security.as_deref())
            .collect()
    }

    /// One-line sources.list entries for mmdebstrap.
    pub fn apt_lines(&self, suite: &str) -> Vec<String> {
        let mut lines = vec![format!("deb {} {suite} {suite}-updates main", self.main)];
        if let Some(sec) = &self.security {
            lines.push(format!("deb {sec} {suite}-security main"));
        }
        lines
    }
}

fn choose(sources: &[AptSource]) -> Option<Mirrors> {
    let is_security = |s: &AptSource| s.suites.iter().any(|x| x.ends_with("-security"));
    let main = sources.iter().find(|s| !is_security(s))?;
    let security = sources.iter().find(|s| is_security(s));
    Some(Mirrors {
        main: main.uri.trim_end_matches('/').to_owned(),
        security: security.map(|s| s.uri.trim_end_matches('/').to_owned()),
    })
}

/// All enabled `deb` entries, in apt's own order: `sources.list`, then
/// `sources.list.d/` sorted by name.
pub fn read_host_sources(etc_apt: &Path) -> Result<Vec<AptSource>, MirrorError> {
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|source| MirrorError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let mut out = Vec::new();
    let list = etc_apt.join("sources.list");
    if list.exists() {
        out.extend(parse_one_line(&read(&list)?));
    }
    let dir = etc_apt.join("sources.list.d");
    if dir.is_dir() {
        let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(|source| MirrorError::Read {
                path: dir.clone(),
                source,
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        names.sort();
        for path in names {
            match path.extension().and_then(|e| e.to_str()) {
                Some("list") => out.extend(parse_one_line(&read(&path)?)),
                Some("sources") => out.extend(parse_deb822(&read(&path)?)),
                _ => {}
            }
        }
    }
    Ok(out)
}

/// `deb [opts] uri suite [components...]` lines.
pub fn parse_one_line(text: &str) -> Vec<AptSource> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some(rest) = line
            .strip_prefix("deb ")
            .or_else(|| line.strip_prefix("deb\t"))
        else {
            continue;
        };
        let mut rest = rest.trim_start();
        if rest.starts_with('[') {
            match rest.find(']') {
                Some(end) => rest = rest[end + 1..].trim_start(),
                None => continue,
            }
        }
        let mut words = rest.split_whitespace();
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
            continue;
        };
        out.push(AptSource {
            uri: uri.to_owned(),
            suites: vec![suite.to_owned()],
        });
    }
    out
}

/// deb822 stanzas (`Types:`, `URIs:`, `Suites:`, `Enabled:`), one
/// [`AptSource`] per URI of each enabled stanza whose types include `deb`.
pub fn parse_deb822(text: &str) -> Vec<AptSource> {
    let mut out = Vec::new();
    for stanza in stanzas(text) {
        let field = |name: &str| {
            stanza
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        let enabled = field("Enabled").is_none_or(|v| !v.trim().eq_ignore_ascii_case("no"));
        let is_deb = field("Types").is_some_and(|t| t.split_whitespace().any(|t| t == "deb"));
        if !enabled || !is_deb {
            continue;
        }
        let suites: Vec<String> = field("Suites")
            .unwrap_or("")
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        for uri in field("URIs").unwrap_or("").split_whitespace() {
            out.push(AptSource {
                uri: uri.to_owned(),
                suites: suites.clone(),
            });
        }
    }
    out
}

/// Splits deb822 text into stanzas of (field, value) with continuation
/// lines folded in and comments dropped.
fn stanzas(text: &str) -> Vec<Vec<(String, String)>> {
    let mut all = Vec::new();
    let mut cur: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        if line.trim().is_empty() {
            if !cur.is_empty() {
                all.push(std::mem::take(&mut cur));
            }
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = cur.last_mut() {
                v.push(' ');
                v.push_str(line.trim());
            }
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            cur.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    if !cur.is_empty() {
        all.push(cur);
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEB822: &str = "\
Types: deb
# http://snapshot.example/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://src.example/debian
Suites: bookworm

Types: deb
URIs: http://mirror.example/debian-security/
Suites: bookworm-security
Components: main

Types: deb
Enabled: no
URIs: http://disabled.example/debian
Suites: trixie
";

    #[test]
    fn deb822_takes_enabled_deb_stanzas_only() {
        let s = parse_deb822(DEB822);
        let uris: Vec<&str> = s.iter().map(|s| s.uri.as_str()).collect();
        assert_eq!(
            uris,
            [
                "http://mirror.example/debian",
                "http://mirror.example/debian-security/"
            ]
        );
        assert_eq!(s[0].suites, ["bookworm", "bookworm-updates"]);
    }

    #[test]
    fn deb822_continuation_lines_add_uris() {
        let s =
            parse_deb822("Types: deb\nURIs: http://a.example/d\n http://b.example/d\nSuites: x\n");
        assert_eq!(s.len(), 2);
        assert_eq!(s[1].uri, "http://b.example/d");
    }

    #[test]
    fn one_line_format_with_options_and_comments() {
        let s = parse_one_line(
            "# comment\ndeb [arch=amd64 signed-by=/k.gpg] http://m.example/debian bookworm main\n\
             deb-src http://m.example/debian bookworm main\n\
             deb http://s.example/debian-security bookworm-security main # trailing\n",
        );
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].uri, "http://m.example/debian");
        assert_eq!(s[1].suites, ["bookworm-security"]);
    }

    #[test]
    fn chooses_main_and_security_and_builds_lines() {
        let m = choose(&parse_deb822(DEB822)).expect("mirrors");
        assert_eq!(m.main, "http://mirror.example/debian");
        assert_eq!(
            m.security.as_deref(),
            Some("http://mirror.example/debian-security")
        );
        assert_eq!(
            m.apt_lines("bookworm"),
            [
                "deb http://mirror.example/debian bookworm bookworm-updates main",
                "deb http://mirror.example/debian-security bookworm-security main"
            ]
        );
    }

    #[test]
    fn reads_a_host_tree_and_reports_an_empty_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = Mirrors::from_host(dir.path()).expect_err("no sources");
        assert!(err.to_string().contains("--mirror"), "{err}");
        std::fs::create_dir(dir.path().join("sources.list.d")).expect("mkdir");
        std::fs::write(dir.path().join("sources.list.d/debian.sources"), DEB822).expect("write");
        let m = Mirrors::from_host(dir.path()).expect("mirrors");
        assert_eq!(m.main, "http://mirror.example/debian");
    }

    #[test]
    fn mirror_flag_must_be_a_url() {
        assert!(Mirrors::from_url("http://127.0.0.1:9/").is_ok());
        assert!(Mirrors::from_url("mirror.example/debian").is_err());
        assert!(Mirrors::from_url("http://").is_err());
    }
}
