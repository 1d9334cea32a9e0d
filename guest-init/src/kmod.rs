//! Loads the kernel modules named by `kiln.modules=`, each after its
//! dependencies, so a stock distribution kernel can boot a Kiln VM.
//!
//! Modules load on several threads at once, each as soon as its
//! dependencies are in: most of a module's load time is the kernel's own
//! work (relocation, then its init probing devices, e.g. virtio_blk
//! reading its disks), and independent chains (virtio and its drivers,
//! vsock, overlay, tun) overlap on the VM's other vCPUs.

use std::collections::HashMap;
use std::ffi::CStr;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};

/// More threads than this buys nothing for the handful of modules a VM
/// needs.
const MAX_THREADS: usize = 4;

use nix::errno::Errno;
use nix::kmod::{finit_module, ModuleInitFlags};

/// `MODULE_INIT_COMPRESSED_FILE` (Linux 5.17+): the kernel decompresses.
const MODULE_INIT_COMPRESSED_FILE: u32 = 4;

#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("module {name:?} is not in {dir} and not built into the kernel")]
    NotFound { name: String, dir: String },
    #[error("modules.dep has a dependency cycle: {}", .0.join(" -> "))]
    Cycle(Vec<String>),
    #[error("modules.dep line {line}: expected \"path.ko: dependencies\", got {text:?}")]
    Syntax { line: usize, text: String },
    #[error("read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("load module {path}: {source}")]
    Load { path: String, source: Errno },
}

/// What depmod knows: each module's file and its dependencies' files,
/// all relative to `/lib/modules/<release>`.
#[derive(Debug, Default)]
pub struct DepIndex {
    by_name: HashMap<String, Entry>,
}

#[derive(Debug, Clone)]
struct Entry {
    path: String,
    deps: Vec<String>,
}

impl DepIndex {
    /// Parses `modules.dep` (`kernel/a.ko: kernel/b.ko kernel/c.ko`).
    pub fn parse(text: &str) -> Result<Self, ModuleError> {
        let mut by_name = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((path, deps)) = line.split_once(':') else {
                return Err(ModuleError::Syntax {
                    line: i + 1,
                    text: raw.to_owned(),
                });
            };
            let path = path.trim();
            if path.is_empty() || path.contains(char::is_whitespace) {
                return Err(ModuleError::Syntax {
                    line: i + 1,
                    text: raw.to_owned(),
                });
            }
            by_name.insert(
                module_name(path),
                Entry {
                    path: path.to_owned(),
                    deps: deps.split_whitespace().map(str::to_owned).collect(),
                },
            );
        }
        Ok(DepIndex { by_name })
    }

    /// Without modules.dep: every module file found, with no known
    /// dependencies (so the requested order is the load order).
    pub fn from_paths<I: IntoIterator<Item = String>>(paths: I) -> Self {
        let by_name = paths
            .into_iter()
            .map(|p| {
                (
                    module_name(&p),
                    Entry {
                        path: p,
                        deps: Vec::new(),
                    },
                )
            })
            .collect();
        DepIndex { by_name }
    }

    /// The files to load, dependencies first, each once. `present(name)`
    /// says whether a module missing from the index is built in or loaded.
    pub fn plan(
        &self,
        requested: &[String],
        present: impl Fn(&str) -> bool,
        dir: &str,
    ) -> Result<Vec<String>, ModuleError> {
        let mut order = Vec::new();
        let mut stack = Vec::new();
        for name in requested {
            let name = name.replace('-', "_");
            match self.by_name.get(&name) {
                Some(e) => self.visit(e.path.clone(), &mut stack, &mut order)?,
                None if present(&name) => {}
                None => {
                    return Err(ModuleError::NotFound {
                        name,
                        dir: dir.to_owned(),
                    })
                }
            }
        }
        Ok(order)
    }

    /// The dependencies of `path` (a file from [`DepIndex::plan`]) that
    /// `plan` also loads.
    fn deps_within(&self, path: &str, plan: &[String]) -> Vec<usize> {
        self.by_name
            .get(&module_name(path))
            .filter(|e| e.path == path)
            .map(|e| {
                e.deps
                    .iter()
                    .filter_map(|d| plan.iter().position(|p| p == d))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// For each file of `plan`, the indices of the files it must wait for.
    /// Without modules.dep nothing is known about dependencies, so each
    /// file waits for the one before it: the requested order holds.
    pub fn schedule(&self, plan: &[String], known: bool) -> Vec<Vec<usize>> {
        (0..plan.len())
            .map(|i| {
                if known {
                    self.deps_within(&plan[i], plan)
                } else {
                    i.checked_sub(1).into_iter().collect()
                }
            })
            .collect()
    }

    fn visit(
        &self,
        path: String,
        stack: &mut Vec<String>,
        order: &mut Vec<String>,
    ) -> Result<(), ModuleError> {
        if order.contains(&path) {
            return Ok(());
        }
        if let Some(at) = stack.iter().position(|p| *p == path) {
            let mut cycle: Vec<String> = stack[at..].iter().map(|p| module_name(p)).collect();
            cycle.push(module_name(&path));
            return Err(ModuleError::Cycle(cycle));
        }
        stack.push(path.clone());
        // depmod lists the deepest dependency last; modprobe loads from the
        // end. A dependency without its own line is loaded as listed.
        let deps = self
            .by_name
            .get(&module_name(&path))
            .filter(|e| e.path == path)
            .map(|e| e.deps.clone())
            .unwrap_or_default();
        for dep in deps.into_iter().rev() {
            self.visit(dep, stack, order)?;
        }
        stack.pop();
        order.push(path);
        Ok(())
    }
}

/// `kernel/drivers/virtio/virtio-mmio.ko.xz` -> `virtio_mmio`.
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// Loads `names` from `/lib/modules/<release>`.
pub fn load(names: &[String], release: &str) -> Result<Vec<String>, ModuleError> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let dir = PathBuf::from("/lib/modules").join(release);
    let dir_s = dir.display().to_string();
    let dep_path = dir.join("modules.dep");
    let (index, known) = match std::fs::read_to_string(&dep_path) {
        Ok(text) => (DepIndex::parse(&text)?, true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut found = Vec::new();
            find_modules(&dir, &dir, &mut found);
            (DepIndex::from_paths(found), false)
        }
        Err(source) => {
            return Err(ModuleError::Read {
                path: dep_path.display().to_string(),
                source,
            })
        }
    };
    let builtin = std::fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default();
    let present = |name: &str| {
        Path::new("/sys/module").join(name).exists()
            || builtin.lines().any(|l| module_name(l) == name)
    };
    let plan = index.plan(names, present, &dir_s)?;
    let waits = index.schedule(&plan, known);
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .clamp(1, MAX_THREADS);
    run_in_order(&waits, threads, |i| insert(&dir.join(&plan[i])))?;
    Ok(plan)
}

/// Runs `job(i)` for every `i` once all of `waits[i]` have succeeded, on
/// up to `threads` threads. The first error stops new jobs from starting
/// and is returned once the running ones are done.
pub fn run_in_order<E: Send>(
    waits: &[Vec<usize>],
    threads: usize,
    job: impl Fn(usize) -> Result<(), E> + Sync,
) -> Result<(), E> {
    struct State<E> {
        started: Vec<bool>,
        done: Vec<bool>,
        running: usize,
        error: Option<E>,
    }
    let n = waits.len();
    let state = Mutex::new(State {
        started: vec![false; n],
        done: vec![false; n],
        running: 0,
        error: None,
    });
    let changed = Condvar::new();
    let worker = || loop {
        // A poisoned lock means a job panicked, and panic=abort already
        // ended PID 1 (and the VM): recovering the guard is fine here.
        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
        let next = loop {
            if st.error.is_some() {
                break None;
            }
            let ready = (0..n).find(|&i| !st.started[i] && waits[i].iter().all(|&d| st.done[d]));
            if let Some(i) = ready {
                break Some(i);
            }
            if st.started.iter().all(|s| *s) || st.running == 0 {
                // All handed out, or nothing running could ever make the
                // rest ready (a dependency index that never completes).
                break None;
            }
            st = changed.wait(st).unwrap_or_else(|p| p.into_inner());
        };
        let Some(i) = next else {
            changed.notify_all();
            return;
        };
        st.started[i] = true;
        st.running += 1;
        drop(st);
        let result = job(i);
        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
        st.running -= 1;
        match result {
            Ok(()) => st.done[i] = true,
            Err(e) => {
                if st.error.is_none() {
                    st.error = Some(e);
                }
            }
        }
        changed.notify_all();
    };
    std::thread::scope(|s| {
        for _ in 1..threads.min(n) {
            s.spawn(worker);
        }
        worker();
    });
    let st = state.into_inner().unwrap_or_else(|p| p.into_inner());
    match st.error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn insert(path: &Path) -> Result<(), ModuleError> {
    let file = File::open(path).map_err(|source| ModuleError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let compressed = [".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .any(|s| path.to_string_lossy().ends_with(s));
    let flags = if compressed {
        ModuleInitFlags::from_bits_retain(MODULE_INIT_COMPRESSED_FILE)
    } else {
        ModuleInitFlags::empty()
    };
    match finit_module(&file, c"" as &CStr, flags) {
        Ok(()) | Err(Errno::EEXIST) => Ok(()),
        Err(source) => Err(ModuleError::Load {
            path: path.display().to_string(),
            source,
        }),
    }
}

/// Every `*.ko*` file below `dir`, relative to `base`.
fn find_modules(base: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => find_modules(base, &path, out),
            Ok(t) if t.is_file() && entry.file_name().to_string_lossy().contains(".ko") => {
                if let Ok(rel) = path.strip_prefix(base) {
                    out.push(rel.to_string_lossy().into_owned());
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko: kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko kernel/net/vmw_vsock/vsock.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko: kernel/net/vmw_vsock/vsock.ko
kernel/net/vmw_vsock/vsock.ko:
kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/fs/overlayfs/overlay.ko:
";

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn short(plan: Vec<String>) -> Vec<String> {
        plan.iter().map(|p| module_name(p)).collect()
    }

    #[test]
    fn dependencies_come_first_and_once() {
        let idx = DepIndex::parse(DEP).unwrap();
        let plan = idx
            .plan(
                &names(&["vmw_vsock_virtio_transport", "virtio-mmio", "overlay"]),
                |_| false,
                "d",
            )
            .unwrap();
        assert_eq!(
            short(plan),
            names(&[
                "virtio_ring",
                "virtio",
                "vsock",
                "vmw_vsock_virtio_transport_common",
                "vmw_vsock_virtio_transport",
                "virtio_mmio",
                "overlay"
            ])
        );
    }

    #[test]
    fn order_holds_even_if_listed_deps_are_shuffled() {
        // Each dependency's own line decides its order, not its position.
        let dep = "a.ko: b.ko c.ko\nb.ko: c.ko\nc.ko:\n";
        let idx = DepIndex::parse(dep).unwrap();
        assert_eq!(
            short(idx.plan(&names(&["a"]), |_| false, "d").unwrap()),
            names(&["c", "b", "a"])
        );
    }

    #[test]
    fn cycle_is_an_error_naming_it() {
        let idx = DepIndex::parse("a.ko: b.ko\nb.ko: c.ko\nc.ko: a.ko\n").unwrap();
        let err = idx.plan(&names(&["a"]), |_| false, "d").unwrap_err();
        assert_eq!(
            err.to_string(),
            "modules.dep has a dependency cycle: a -> b -> c -> a"
        );
    }

    #[test]
    fn missing_entries() {
        let idx = DepIndex::parse("a.ko: gone.ko\n").unwrap();
        // A dependency without a line of its own is still loaded, first.
        assert_eq!(
            idx.plan(&names(&["a"]), |_| false, "d").unwrap(),
            names(&["gone.ko", "a.ko"])
        );
        // A requested module that is built in is skipped; otherwise an error.
        assert!(idx
            .plan(&names(&["ext4"]), |n| n == "ext4", "d")
            .unwrap()
            .is_empty());
        let err = idx
            .plan(&names(&["nope"]), |_| false, "/lib/modules/x")
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("\"nope\" is not in /lib/modules/x"),
            "{err}"
        );
    }

    #[test]
    fn without_modules_dep_the_given_order_is_kept() {
        let idx = DepIndex::from_paths(names(&["kernel/b/vsock.ko", "kernel/a/virtio.ko.xz"]));
        assert_eq!(
            idx.plan(&names(&["vsock", "virtio"]), |_| false, "d")
                .unwrap(),
            names(&["kernel/b/vsock.ko", "kernel/a/virtio.ko.xz"])
        );
    }

    #[test]
    fn schedule_waits_for_dependencies_or_the_previous_file() {
        let idx = DepIndex::parse(DEP).unwrap();
        let plan = idx
            .plan(&names(&["virtio_mmio", "overlay"]), |_| false, "d")
            .unwrap();
        // virtio_ring, virtio, virtio_mmio, overlay
        assert_eq!(
            idx.schedule(&plan, true),
            vec![vec![], vec![0], vec![1, 0], vec![]]
        );
        assert_eq!(
            idx.schedule(&plan, false),
            vec![vec![], vec![0], vec![1], vec![2]]
        );
    }

    #[test]
    fn jobs_run_after_their_dependencies_and_independent_ones_overlap() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::time::{Duration, Instant};
        // 0 <- 1 <- 3, and 2 on its own; 2 and 0 must run at the same time.
        let waits = vec![vec![], vec![0], vec![], vec![1]];
        let done: Vec<AtomicBool> = (0..4).map(|_| AtomicBool::new(false)).collect();
        let running: Vec<AtomicBool> = (0..4).map(|_| AtomicBool::new(false)).collect();
        let overlapped = AtomicBool::new(false);
        run_in_order(&waits, 2, |i| -> Result<(), String> {
            running[i].store(true, Ordering::SeqCst);
            for &d in &waits[i] {
                assert!(done[d].load(Ordering::SeqCst), "{i} ran before {d}");
            }
            if i == 0 || i == 2 {
                let other = if i == 0 { 2 } else { 0 };
                let until = Instant::now() + Duration::from_secs(10);
                while Instant::now() < until {
                    if running[other].load(Ordering::SeqCst) {
                        overlapped.store(true, Ordering::SeqCst);
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            done[i].store(true, Ordering::SeqCst);
            Ok(())
        })
        .unwrap();
        assert!(done.iter().all(|d| d.load(Ordering::SeqCst)));
        assert!(
            overlapped.load(Ordering::SeqCst),
            "independent jobs ran one after the other"
        );
    }

    #[test]
    fn a_failure_stops_what_depends_on_it() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let waits = vec![vec![], vec![0], vec![1]];
        let ran = AtomicUsize::new(0);
        let err = run_in_order(&waits, 4, |i| {
            ran.fetch_add(1, Ordering::SeqCst);
            if i == 1 {
                Err(format!("job {i} failed"))
            } else {
                Ok(())
            }
        })
        .unwrap_err();
        assert_eq!(err, "job 1 failed");
        assert_eq!(ran.load(Ordering::SeqCst), 2, "job 2 must not start");
        // One thread, nothing to do, and no dependencies at all.
        run_in_order(&[], 1, |_| Err("never")).unwrap();
        run_in_order(&[vec![], vec![]], 1, |_| Ok::<(), ()>(())).unwrap();
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let err = DepIndex::parse("a.ko:\nno colon here\n").unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
    }

    #[test]
    fn names_from_paths() {
        assert_eq!(module_name("kernel/x/virtio-mmio.ko.zst"), "virtio_mmio");
        assert_eq!(module_name("vsock.ko"), "vsock");
    }
}
