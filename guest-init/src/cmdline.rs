//! The `kiln.*` keys of the kernel command line: which modules to load, and
//! which disks make up the root. Other keys belong to the kernel and are
//! ignored; an unknown `kiln.*` key is an error, so a typo cannot silently
//! change how a VM boots. Disks are named by their filesystem
//! (`UUID=`, `LABEL=`) or, from older hosts, by device path: see
//! [`crate::disks`].

use crate::disks::{DiskRef, RefError};

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BootConfig {
    /// `kiln.modules=a,b,c`, names normalised to underscores.
    pub modules: Vec<String>,
    /// `kiln.root=`: the base rootfs, mounted read-only.
    pub root: Option<DiskRef>,
    /// `kiln.scratch=`: the ext4 scratch disk for the overlay's upper layer.
    pub scratch: Option<DiskRef>,
    /// `kiln.debug`: echo the job's output to the console.
    pub debug: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CmdlineError {
    #[error(
        "unknown kernel parameter {0:?}: kiln-init knows kiln.modules, kiln.root, kiln.scratch and kiln.debug"
    )]
    Unknown(String),
    #[error("{0} is given more than once")]
    Duplicate(&'static str),
    #[error("{0}= needs a value")]
    Empty(&'static str),
    #[error("kiln.modules: {0:?} is not a module name (letters, digits, '_' and '-')")]
    ModuleName(String),
    #[error("{key}: {source}")]
    Device {
        key: &'static str,
        #[source]
        source: RefError,
    },
    #[error("kiln.root and kiln.scratch both name {0:?}")]
    SameDevice(String),
    #[error("kiln.debug takes no value, or 1 or 0; got {0:?}")]
    Flag(String),
    #[error("unbalanced double quote in the kernel command line")]
    Quote,
}

/// Reads and parses `/proc/cmdline`.
pub fn read() -> Result<BootConfig, String> {
    let text =
        std::fs::read_to_string("/proc/cmdline").map_err(|e| format!("read /proc/cmdline: {e}"))?;
    parse(&text).map_err(|e| e.to_string())
}

pub fn parse(cmdline: &str) -> Result<BootConfig, CmdlineError> {
    let mut cfg = BootConfig::default();
    let mut seen: Vec<&'static str> = Vec::new();
    for word in split(cmdline)? {
        let (key, value) = match word.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (word.as_str(), None),
        };
        // The kernel treats '-' and '_' in parameter names alike.
        let key = key.replace('-', "_");
        let Some(name) = key.strip_prefix("kiln.") else {
            continue;
        };
        let key: &'static str = match name {
            "modules" => "kiln.modules",
            "root" => "kiln.root",
            "scratch" => "kiln.scratch",
            "debug" => "kiln.debug",
            _ => return Err(CmdlineError::Unknown(word.clone())),
        };
        if seen.contains(&key) {
            return Err(CmdlineError::Duplicate(key));
        }
        seen.push(key);
        match key {
            "kiln.debug" => {
                cfg.debug = match value {
                    None | Some("1") => true,
                    Some("0") => false,
                    Some(v) => return Err(CmdlineError::Flag(v.to_owned())),
                }
            }
            "kiln.modules" => {
                let v = value
                    .filter(|v| !v.is_empty())
                    .ok_or(CmdlineError::Empty(key))?;
                cfg.modules = v.split(',').map(module_name).collect::<Result<_, _>>()?;
            }
            _ => {
                let v = value
                    .filter(|v| !v.is_empty())
                    .ok_or(CmdlineError::Empty(key))?;
                let dev =
                    Some(DiskRef::parse(v).map_err(|source| CmdlineError::Device { key, source })?);
                if key == "kiln.root" {
                    cfg.root = dev;
                } else {
                    cfg.scratch = dev;
                }
            }
        }
    }
    if let (Some(r), Some(s)) = (&cfg.root, &cfg.scratch) {
        if r == s {
            return Err(CmdlineError::SameDevice(r.to_string()));
        }
    }
    Ok(cfg)
}

/// A module name as the kernel knows it: dashes become underscores.
fn module_name(raw: &str) -> Result<String, CmdlineError> {
    let ok = !raw.is_empty()
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(raw.replace('-', "_"))
    } else {
        Err(CmdlineError::ModuleName(raw.to_owned()))
    }
}

/// Splits like the kernel does: on whitespace, except inside double quotes,
/// which are removed.
fn split(cmdline: &str) -> Result<Vec<String>, CmdlineError> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    words.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if quoted {
        return Err(CmdlineError::Quote);
    }
    if any {
        words.push(cur);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_line() {
        let cfg = parse(
            "console=ttyS0 reboot=k panic=1 kiln.modules=virtio_ring,virtio-mmio,vsock \
             kiln.root=/dev/vda kiln.scratch=LABEL=kiln-scratch kiln.debug\n",
        )
        .unwrap();
        assert_eq!(
            cfg,
            BootConfig {
                modules: vec!["virtio_ring".into(), "virtio_mmio".into(), "vsock".into()],
                root: Some(DiskRef::Path("/dev/vda".into())),
                scratch: Some(DiskRef::Label("kiln-scratch".into())),
                debug: true,
            }
        );
    }

    #[test]
    fn defaults_when_absent() {
        assert_eq!(
            parse("console=ttyS0 root=/dev/vda rw").unwrap(),
            BootConfig::default()
        );
        assert!(!parse("kiln.debug=0").unwrap().debug);
        assert!(parse("kiln.debug=1").unwrap().debug);
    }

    #[test]
    fn quotes_are_stripped() {
        let cfg = parse(r#"foo="a b" kiln.root="/dev/vda""#).unwrap();
        assert_eq!(cfg.root, Some(DiskRef::Path("/dev/vda".into())));
        let cfg = parse("kiln.root=UUID=0b6f1f4e-6a1d-4c55-9c1a-2f6e8d7b1a90").unwrap();
        assert!(matches!(cfg.root, Some(DiskRef::Uuid(u)) if u[0] == 0x0b && u[15] == 0x90));
        assert_eq!(parse(r#"kiln.root="/dev/vda"#), Err(CmdlineError::Quote));
    }

    #[test]
    fn errors_name_the_problem() {
        let cases = [
            ("kiln.modlues=a", "\"kiln.modlues=a\""),
            (
                "kiln.root=/dev/a kiln.root=/dev/b",
                "kiln.root is given more than once",
            ),
            ("kiln.modules=", "kiln.modules= needs a value"),
            ("kiln.modules=a,,b", "\"\" is not a module name"),
            ("kiln.modules=a/b", "\"a/b\""),
            (
                "kiln.scratch=vdb",
                "kiln.scratch: \"vdb\" is not a device path",
            ),
            ("kiln.root=/dev/../etc", "is not a device path"),
            ("kiln.root=UUID=abc", "\"abc\" is not 32 hex digits"),
            ("kiln.root", "kiln.root= needs a value"),
            ("kiln.root=/dev/vda kiln.scratch=/dev/vda", "both name"),
            (
                "kiln.root=LABEL=a kiln.scratch=LABEL=a",
                "both name \"LABEL=a\"",
            ),
            ("kiln.debug=yes", "got \"yes\""),
        ];
        for (line, needle) in cases {
            let err = parse(line).expect_err(line).to_string();
            assert!(err.contains(needle), "{line}: {err:?} lacks {needle:?}");
        }
    }
}
