//! Kconfig fragments and the check that a merged `.config` kept every
//! option a fragment asked for.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One option a fragment sets: `Some(value)` for `CONFIG_X=value`, `None`
/// for `# CONFIG_X is not set`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    pub name: String,
    pub value: Option<String>,
    /// Where it was asked for, for messages.
    pub origin: String,
}

#[derive(Debug, thiserror::Error)]
pub enum KconfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{origin}: {line:?} is neither CONFIG_X=value, `# CONFIG_X is not set`, nor a comment"
    )]
    Syntax { origin: String, line: String },
    #[error(
        "{} option(s) did not survive `make olddefconfig` (a dependency is off, or the \
         option does not exist for this architecture/version):\n{}",
        lost.len(),
        lost.iter().map(|l| format!("  {l}")).collect::<Vec<_>>().join("\n")
    )]
    Lost { lost: Vec<String> },
}

/// Reads the requirements of a fragment file.
pub fn read_fragment(path: &Path) -> Result<Vec<Requirement>, KconfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| KconfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    parse_fragment(&name, &text)
}

pub fn parse_fragment(file: &str, text: &str) -> Result<Vec<Requirement>, KconfigError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let origin = format!("{file}:{}", i + 1);
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(name) = unset_name(line) {
            out.push(Requirement {
                name: name.to_owned(),
                value: None,
                origin,
            });
        } else if line.starts_with('#') {
            continue;
        } else if let Some((name, value)) = line
            .split_once('=')
            .filter(|(n, _)| n.starts_with("CONFIG_"))
        {
            out.push(Requirement {
                name: name.to_owned(),
                value: Some(value.to_owned()),
                origin,
            });
        } else {
            return Err(KconfigError::Syntax {
                origin,
                line: line.to_owned(),
            });
        }
    }
    Ok(out)
}

fn unset_name(line: &str) -> Option<&str> {
    let name = line.strip_prefix("# ")?.strip_suffix(" is not set")?;
    name.starts_with("CONFIG_").then_some(name)
}

/// The options of a `.config`: name -> value (`n` for `is not set`).
pub fn parse_config(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if let Some(name) = unset_name(line.trim()) {
            out.insert(name.to_owned(), "n".to_owned());
        } else if let Some((n, v)) = line
            .split_once('=')
            .filter(|(n, _)| n.starts_with("CONFIG_"))
        {
            out.insert(n.to_owned(), v.to_owned());
        }
    }
    out
}

/// Every requirement whose option ended up different: the last fragment to
/// mention an option wins, as in merge_config.sh.
pub fn verify(reqs: &[Requirement], config: &BTreeMap<String, String>) -> Result<(), KconfigError> {
    let mut last: BTreeMap<&str, &Requirement> = BTreeMap::new();
    for r in reqs {
        last.insert(&r.name, r);
    }
    let mut lost = Vec::new();
    for r in last.values() {
        let got = config.get(&r.name).map(String::as_str);
        let ok = match &r.value {
            // Absent means the option cannot be enabled here: as good as off.
            None => matches!(got, None | Some("n")),
            Some(want) => got == Some(want.as_str()),
        };
        if !ok {
            let want = r.value.as_deref().unwrap_or("n");
            lost.push(format!(
                "{}={want} ({}) is {}",
                r.name,
                r.origin,
                got.map_or("absent".to_owned(), str::to_owned)
            ));
        }
    }
    if lost.is_empty() {
        Ok(())
    } else {
        Err(KconfigError::Lost { lost })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragments_parse_with_comments_and_unset() {
        let r = parse_fragment(
            "k.fragment",
            "# why: containers\nCONFIG_TUN=y\n\n# CONFIG_MODULES is not set\nCONFIG_LOCALVERSION=\"-kiln\"\n",
        )
        .expect("parse");
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].origin, "k.fragment:2");
        assert_eq!(r[1].value, None);
        assert_eq!(r[2].value.as_deref(), Some("\"-kiln\""));
        assert!(parse_fragment("f", "TUN=y\n").is_err());
    }

    #[test]
    fn verify_names_what_was_lost() {
        let reqs = parse_fragment(
            "k.fragment",
            "CONFIG_TUN=y\nCONFIG_NFT_MASQ=y\n# CONFIG_MODULES is not set\nCONFIG_GONE=y\n",
        )
        .expect("parse");
        let config = parse_config("CONFIG_TUN=y\n# CONFIG_NFT_MASQ is not set\nCONFIG_MODULES=y\n");
        let e = verify(&reqs, &config)
            .expect_err("lost options")
            .to_string();
        assert!(e.contains("3 option(s)"), "{e}");
        assert!(e.contains("CONFIG_NFT_MASQ=y (k.fragment:2) is n"), "{e}");
        assert!(e.contains("CONFIG_MODULES=n (k.fragment:3) is y"), "{e}");
        assert!(e.contains("CONFIG_GONE=y (k.fragment:4) is absent"), "{e}");
        assert!(!e.contains("CONFIG_TUN"), "{e}");
    }

    #[test]
    fn later_fragment_wins_and_absent_counts_as_unset() {
        let mut reqs = parse_fragment("a", "CONFIG_X=y\n").expect("parse");
        reqs.extend(
            parse_fragment("b", "# CONFIG_X is not set\n# CONFIG_Y is not set\n").expect("parse"),
        );
        verify(&reqs, &parse_config("# CONFIG_X is not set\n")).expect("ok");
    }

    #[test]
    fn shipped_fragments_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kernel");
        for f in [
            "microvm.fragment",
            "kiln.fragment",
            "x86_64.fragment",
            "aarch64.fragment",
        ] {
            let reqs = read_fragment(&dir.join(f)).expect(f);
            assert!(!reqs.is_empty(), "{f}");
            // Each option carries its reason on the line above.
            let text = std::fs::read_to_string(dir.join(f)).expect(f);
            let lines: Vec<&str> = text.lines().collect();
            for (i, l) in lines.iter().enumerate() {
                if l.starts_with("CONFIG_") || unset_name(l).is_some() {
                    let above = if i > 0 { lines[i - 1] } else { "" };
                    assert!(
                        above.starts_with("# ") && unset_name(above).is_none(),
                        "{f}:{}: {l} has no `# why` comment above it",
                        i + 1
                    );
                }
            }
        }
    }
}
