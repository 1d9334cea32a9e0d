//! Which kernel module files a guest needs, dependencies first.
//!
//! Debian's kernel package ships no `modules.dep` (depmod runs at install
//! time), so dependencies are read from each `.ko`'s ELF `.modinfo` section
//! (`depends=a,b`), and a `modules.dep` for just the chosen modules is
//! rendered for kiln-init.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use object::{Object, ObjectSection};

#[derive(Debug, thiserror::Error)]
pub enum KmodError {
    #[error("module {name:?} is neither a .ko file under {dir} nor listed in its modules.builtin")]
    NotFound { name: String, dir: PathBuf },
    #[error("module {name:?} is needed by {by:?} but is not under {dir}")]
    MissingDependency {
        name: String,
        by: String,
        dir: PathBuf,
    },
    #[error("module dependency cycle: {}", .0.join(" -> "))]
    Cycle(Vec<String>),
    #[error("{path} is compressed; only uncompressed .ko files are supported")]
    Compressed { path: PathBuf },
    #[error("{path}: not a readable kernel module: {detail}")]
    BadModule { path: PathBuf, detail: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One module file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// Underscored, as the kernel names it (`virtio_mmio`).
    pub name: String,
    pub path: PathBuf,
    /// Relative to the modules directory (`kernel/drivers/...ko`).
    pub rel: PathBuf,
    /// Names from `.modinfo`'s `depends=`.
    pub depends: Vec<String>,
}

/// The outcome of [`resolve`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Resolved {
    /// Every module to ship, each after all of its dependencies.
    pub modules: Vec<Module>,
    /// Requested names the kernel has built in: nothing to ship or load.
    pub builtin: Vec<String>,
}

/// `virtio-mmio` and `virtio_mmio` are the same module.
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// Resolves `names` under `modules_dir` (`lib/modules/<release>`).
pub fn resolve(modules_dir: &Path, names: &[&str]) -> Result<Resolved, KmodError> {
    let files = index(modules_dir)?;
    let builtin = builtin_names(modules_dir);
    let mut out = Resolved::default();
    let mut done: HashSet<String> = HashSet::new();
    let mut cache: HashMap<String, Module> = HashMap::new();
    for name in names {
        let name = normalize(name);
        if !files.contains_key(&name) {
            if builtin.contains(&name) {
                out.builtin.push(name);
                continue;
            }
            return Err(KmodError::NotFound {
                name,
                dir: modules_dir.to_owned(),
            });
        }
        let mut stack = Vec::new();
        visit(
            &name,
            &files,
            &builtin,
            modules_dir,
            &mut cache,
            &mut stack,
            &mut done,
            &mut out.modules,
        )?;
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn visit(
    name: &str,
    files: &HashMap<String, PathBuf>,
    builtin: &HashSet<String>,
    dir: &Path,
    cache: &mut HashMap<String, Module>,
    stack: &mut Vec<String>,
    done: &mut HashSet<String>,
    order: &mut Vec<Module>,
) -> Result<(), KmodError> {
    if done.contains(name) {
        return Ok(());
    }
    if let Some(at) = stack.iter().position(|n| n == name) {
        let mut cycle = stack[at..].to_vec();
        cycle.push(name.to_owned());
        return Err(KmodError::Cycle(cycle));
    }
    let module = match cache.get(name) {
        Some(m) => m.clone(),
        None => {
            let path = files
                .get(name)
                .cloned()
                .ok_or_else(|| KmodError::NotFound {
                    name: name.to_owned(),
                    dir: dir.to_owned(),
                })?;
            let m = Module {
                name: name.to_owned(),
                rel: path.strip_prefix(dir).unwrap_or(&path).to_owned(),
                depends: read_depends(&path)?,
                path,
            };
            cache.insert(name.to_owned(), m.clone());
            m
        }
    };
    stack.push(name.to_owned());
    for dep in &module.depends {
        if !files.contains_key(dep) {
            if builtin.contains(dep) {
                continue;
            }
            return Err(KmodError::MissingDependency {
                name: dep.clone(),
                by: name.to_owned(),
                dir: dir.to_owned(),
            });
        }
        visit(dep, files, builtin, dir, cache, stack, done, order)?;
    }
    stack.pop();
    done.insert(name.to_owned());
    order.push(module);
    Ok(())
}

/// Every `.ko` under `dir`, by module name.
fn index(dir: &Path) -> Result<HashMap<String, PathBuf>, KmodError> {
    let mut files = HashMap::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(d) = pending.pop() {
        let entries = std::fs::read_dir(&d).map_err(|source| KmodError::Io {
            path: d.clone(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| KmodError::Io {
                path: d.clone(),
                source,
            })?;
            let path = entry.path();
            let ft = entry.file_type().map_err(|source| KmodError::Io {
                path: path.clone(),
                source,
            })?;
            if ft.is_dir() {
                pending.push(path);
                continue;
            }
            let file = entry.file_name().to_string_lossy().into_owned();
            if let Some(stem) = file.strip_suffix(".ko") {
                files.insert(normalize(stem), path);
            } else if [".ko.xz", ".ko.zst", ".ko.gz"]
                .iter()
                .any(|s| file.ends_with(s))
            {
                if let Some(stem) = file.split(".ko").next() {
                    // Recorded so that asking for it gives a clear error.
                    files.entry(normalize(stem)).or_insert(path);
                }
            }
        }
    }
    Ok(files)
}

fn builtin_names(dir: &Path) -> HashSet<String> {
    std::fs::read_to_string(dir.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.rsplit('/').next())
        .filter_map(|f| f.strip_suffix(".ko"))
        .map(normalize)
        .collect()
}

/// The `depends=` entry of a module's `.modinfo` section.
pub fn read_depends(path: &Path) -> Result<Vec<String>, KmodError> {
    if path.extension().is_some_and(|e| e != "ko") {
        return Err(KmodError::Compressed {
            path: path.to_owned(),
        });
    }
    let data = std::fs::read(path).map_err(|source| KmodError::Io {
        path: path.to_owned(),
        source,
    })?;
    let bad = |detail: String| KmodError::BadModule {
        path: path.to_owned(),
        detail,
    };
    let elf = object::File::parse(&*data).map_err(|e| bad(e.to_string()))?;
    let section = elf
        .section_by_name(".modinfo")
        .ok_or_else(|| bad("no .modinfo section".into()))?;
    let info = section.data().map_err(|e| bad(e.to_string()))?;
    Ok(parse_modinfo_depends(info))
}

/// `.modinfo` is NUL-separated `key=value` strings.
fn parse_modinfo_depends(info: &[u8]) -> Vec<String> {
    info.split(|&b| b == 0)
        .filter_map(|kv| kv.strip_prefix(b"depends="))
        .flat_map(|v| {
            String::from_utf8_lossy(v)
                .split(',')
                .map(|d| normalize(d.trim()))
                .collect::<Vec<_>>()
        })
        .filter(|d| !d.is_empty())
        .collect()
}

/// A `modules.dep` (depmod's format) for `modules`, which must be in
/// [`resolve`] order. Each line lists all of a module's dependencies, the
/// deepest last, as modprobe expects (it loads from the end of the list).
pub fn render_modules_dep(modules: &[Module]) -> String {
    let by_name: HashMap<&str, &Module> = modules.iter().map(|m| (m.name.as_str(), m)).collect();
    let position: HashMap<&str, usize> = modules
        .iter()
        .enumerate()
        .map(|(i, m)| (m.name.as_str(), i))
        .collect();
    let mut out = String::new();
    for m in modules {
        let mut all: HashSet<&str> = HashSet::new();
        let mut pending: Vec<&str> = m.depends.iter().map(String::as_str).collect();
        while let Some(d) = pending.pop() {
            if let Some(dm) = by_name.get(d) {
                if all.insert(dm.name.as_str()) {
                    pending.extend(dm.depends.iter().map(String::as_str));
                }
            }
        }
        let mut deps: Vec<&str> = all.into_iter().collect();
        // Latest-loaded first, so loading from the end of the list works.
        deps.sort_by_key(|d| std::cmp::Reverse(position[d]));
        out.push_str(&rel_str(&m.rel));
        out.push(':');
        for d in deps {
            out.push(' ');
            out.push_str(&rel_str(&by_name[d].rel));
        }
        out.push('\n');
    }
    out
}

fn rel_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 relocatable file with one `.modinfo` section, enough
    /// for the `object` crate to parse.
    fn fake_ko(modinfo: &[u8]) -> Vec<u8> {
        let shstrtab = b"\0.modinfo\0.shstrtab\0";
        let mut f = vec![0u8; 64];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2; // 64-bit
        f[5] = 1; // little-endian
        f[6] = 1; // version
        f[16..18].copy_from_slice(&1u16.to_le_bytes()); // ET_REL
        f[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64
        f[20..24].copy_from_slice(&1u32.to_le_bytes());
        let modinfo_off = f.len();
        f.extend_from_slice(modinfo);
        let shstr_off = f.len();
        f.extend_from_slice(shstrtab);
        while !f.len().is_multiple_of(8) {
            f.push(0);
        }
        let sh_off = f.len();
        let section = |name: u32, ty: u32, off: usize, size: usize| {
            let mut s = vec![0u8; 64];
            s[0..4].copy_from_slice(&name.to_le_bytes());
            s[4..8].copy_from_slice(&ty.to_le_bytes());
            s[24..32].copy_from_slice(&(off as u64).to_le_bytes());
            s[32..40].copy_from_slice(&(size as u64).to_le_bytes());
            s[48..56].copy_from_slice(&1u64.to_le_bytes());
            s
        };
        f.extend(vec![0u8; 64]); // the null section
        f.extend(section(1, 1, modinfo_off, modinfo.len())); // PROGBITS
        f.extend(section(10, 3, shstr_off, shstrtab.len())); // STRTAB
        f[40..48].copy_from_slice(&(sh_off as u64).to_le_bytes());
        f[52..54].copy_from_slice(&64u16.to_le_bytes()); // ehsize
        f[58..60].copy_from_slice(&64u16.to_le_bytes()); // shentsize
        f[60..62].copy_from_slice(&3u16.to_le_bytes()); // shnum
        f[62..64].copy_from_slice(&2u16.to_le_bytes()); // shstrndx
        f
    }

    fn tree(mods: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for (rel, deps) in mods {
            let p = dir.path().join(rel);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            let info = format!("license=GPL\0depends={deps}\0name=x\0");
            std::fs::write(&p, fake_ko(info.as_bytes())).expect("write");
        }
        std::fs::write(dir.path().join("modules.builtin"), "kernel/lib/crc32c.ko\n")
            .expect("builtin");
        dir
    }

    fn names(r: &Resolved) -> Vec<&str> {
        r.modules.iter().map(|m| m.name.as_str()).collect()
    }

    #[test]
    fn dependencies_come_first_each_once() {
        let t = tree(&[
            ("kernel/virtio/virtio_ring.ko", ""),
            ("kernel/virtio/virtio.ko", "virtio_ring"),
            ("kernel/virtio/virtio-mmio.ko", "virtio,virtio_ring"),
            ("kernel/vsock/vsock.ko", ""),
            (
                "kernel/vsock/vmw_vsock_virtio_transport_common.ko",
                "vsock,virtio",
            ),
            (
                "kernel/vsock/vmw_vsock_virtio_transport.ko",
                "vmw_vsock_virtio_transport_common,virtio,vsock,virtio_ring",
            ),
            ("kernel/fs/ext4.ko", "crc32c"),
        ]);
        let r = resolve(
            t.path(),
            &[
                "vmw_vsock_virtio_transport",
                "virtio_mmio",
                "crc32c",
                "ext4",
            ],
        )
        .expect("resolve");
        let order = names(&r);
        assert_eq!(order.len(), 7, "{order:?}");
        let at = |n: &str| order.iter().position(|o| *o == n).expect(n);
        for m in &r.modules {
            for d in &m.depends {
                if d != "crc32c" {
                    assert!(at(d) < at(&m.name), "{d} after {}: {order:?}", m.name);
                }
            }
        }
        assert_eq!(r.builtin, ["crc32c"]);
        let mmio = &r.modules[at("virtio_mmio")];
        assert_eq!(mmio.rel, Path::new("kernel/virtio/virtio-mmio.ko"));
    }

    #[test]
    fn modules_dep_lists_all_dependencies_deepest_last() {
        let t = tree(&[
            ("kernel/a.ko", "b"),
            ("kernel/b.ko", "c"),
            ("kernel/c.ko", ""),
        ]);
        let r = resolve(t.path(), &["a"]).expect("resolve");
        assert_eq!(names(&r), ["c", "b", "a"]);
        assert_eq!(
            render_modules_dep(&r.modules),
            "kernel/c.ko:\nkernel/b.ko: kernel/c.ko\nkernel/a.ko: kernel/b.ko kernel/c.ko\n"
        );
    }

    #[test]
    fn errors_name_the_module_and_the_cycle() {
        let t = tree(&[
            ("kernel/a.ko", "b"),
            ("kernel/b.ko", "a"),
            ("kernel/d.ko", "zz"),
        ]);
        let err = resolve(t.path(), &["nope"]).expect_err("missing");
        assert!(err.to_string().contains("\"nope\""), "{err}");
        let err = resolve(t.path(), &["a"]).expect_err("cycle");
        assert!(err.to_string().contains("a -> b -> a"), "{err}");
        let err = resolve(t.path(), &["d"]).expect_err("missing dep");
        assert!(
            err.to_string().contains("\"zz\" is needed by \"d\""),
            "{err}"
        );
    }

    #[test]
    fn modinfo_parsing() {
        assert_eq!(
            parse_modinfo_depends(b"alias=x\0depends=virtio,virtio-ring\0intree=Y\0"),
            ["virtio", "virtio_ring"]
        );
        assert!(parse_modinfo_depends(b"depends=\0").is_empty());
    }
}
