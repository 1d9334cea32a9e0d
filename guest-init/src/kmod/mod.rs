//! Loads the kernel modules named by `kiln.modules=`, each after its
//! dependencies, so a stock distribution kernel can boot a Kiln VM.
//!
//! The loads run in the background ([`Loading`]) while PID 1 goes on with
//! the boot, and it waits only where it needs a module's work: the root
//! waits until its disks and overlayfs are there, the host channel and the
//! job until every load has ended. Most of a module's load time is the
//! kernel's own work (relocation, then its init probing devices: vsock's
//! handshake with the VMM, virtio_blk reading its disks), so the vsock
//! chain and tun load while the root's disks are mounted.
//!
//! - [`deps`] — `modules.dep` and the load plan.
//! - [`order`] — jobs on a few threads, each after its dependencies.

mod deps;
mod order;

use std::ffi::CStr;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use nix::errno::Errno;
use nix::kmod::{finit_module, ModuleInitFlags};

pub use deps::{module_name, DepIndex};
pub use order::run_in_order;

/// More threads than this buys nothing for the handful of modules a VM
/// needs.
const MAX_THREADS: usize = 4;

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
    #[error("the module loading thread could not start or died: {0}")]
    Thread(String),
}

/// Module loads running in the background.
pub struct Loading {
    progress: Arc<Progress>,
    thread: Option<JoinHandle<Result<(), ModuleError>>>,
    /// Planning failed: no load started.
    error: Option<ModuleError>,
    ended_at: u64,
}

/// How far the loads are: a count of ended loads (each wakes the waiters
/// to check their condition again) and when the last one ended
/// (`CLOCK_BOOTTIME`), once all have.
#[derive(Default)]
struct Progress {
    state: Mutex<(u64, Option<u64>)>,
    changed: Condvar,
}

impl Progress {
    fn advance(&self, all_ended: bool) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.0 += 1;
        if all_ended && st.1.is_none() {
            st.1 = Some(crate::timing::boottime_ns());
        }
        self.changed.notify_all();
    }
}

impl Loading {
    /// Plans the loads of `names` from `/lib/modules/<release>` and opens
    /// every file here, then loads them on threads of their own and
    /// returns. Opened first, because PID 1 may switch to another root
    /// (without `/lib/modules`) while the loads still run.
    pub fn start(names: &[String], release: &str) -> Loading {
        let progress = Arc::new(Progress::default());
        let ended = |progress: Arc<Progress>, error: Option<ModuleError>| {
            progress.advance(true);
            Loading {
                progress,
                thread: None,
                error,
                ended_at: crate::timing::boottime_ns(),
            }
        };
        let plan = match plan(names, release) {
            Ok(plan) => plan,
            Err(e) => return ended(progress, Some(e)),
        };
        if plan.files.is_empty() {
            // Nothing listed, or all built in: no thread to start.
            return ended(progress, None);
        }
        let p = Arc::clone(&progress);
        let thread = std::thread::Builder::new()
            .name("kmod".into())
            .spawn(move || {
                let result = plan.load(&|| p.advance(false));
                p.advance(true);
                result
            });
        match thread {
            Ok(handle) => Loading {
                progress,
                thread: Some(handle),
                error: None,
                ended_at: 0,
            },
            Err(e) => ended(progress, Some(ModuleError::Thread(e.to_string()))),
        }
    }

    /// Blocks until `ready()` holds, checked now and after each load
    /// ends, or until every load has ended. Returns whether it holds.
    pub fn wait_until(&self, ready: impl Fn() -> bool) -> bool {
        loop {
            let (seen, ended_at) = *self.lock();
            if ready() {
                return true;
            }
            if ended_at.is_some() {
                return false;
            }
            let st = self.lock();
            // Only sleep if nothing ended while `ready` was being checked.
            drop(
                self.progress
                    .changed
                    .wait_while(st, |s| s.0 == seen)
                    .unwrap_or_else(|p| p.into_inner()),
            );
        }
    }

    /// Waits for every load to end and returns when the last one did
    /// (`CLOCK_BOOTTIME`), or what went wrong. Only the first call can
    /// fail: an error ends the boot.
    pub fn finish(&mut self) -> Result<u64, ModuleError> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        if let Some(thread) = self.thread.take() {
            match thread.join() {
                Ok(result) => result?,
                Err(_) => return Err(ModuleError::Thread("it panicked".into())),
            }
            let ended_at = self.lock().1;
            self.ended_at = ended_at.unwrap_or_else(crate::timing::boottime_ns);
        }
        Ok(self.ended_at)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, Option<u64>)> {
        self.progress
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

/// The modules to load, each file open, and for each the ones it waits for.
pub struct Plan {
    /// The file's path (for messages) and the open file.
    files: Vec<(String, File)>,
    waits: Vec<Vec<usize>>,
}

/// Plans the loads of `names` from `/lib/modules/<release>`: each after
/// its dependencies (from `modules.dep`, else in the given order), each
/// once, built-in ones skipped, every file opened.
pub fn plan(names: &[String], release: &str) -> Result<Plan, ModuleError> {
    plan_in(&PathBuf::from("/lib/modules").join(release), names)
}

/// [`plan`] from the modules below `dir`.
fn plan_in(dir: &Path, names: &[String]) -> Result<Plan, ModuleError> {
    if names.is_empty() {
        return Ok(Plan {
            files: Vec::new(),
            waits: Vec::new(),
        });
    }
    let dir_s = dir.display().to_string();
    let dep_path = dir.join("modules.dep");
    let (index, known) = match std::fs::read_to_string(&dep_path) {
        Ok(text) => (DepIndex::parse(&text)?, true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut found = Vec::new();
            find_modules(dir, dir, &mut found);
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
    let order = index.plan(names, present, &dir_s)?;
    let waits = index.schedule(&order, known);
    let files = order
        .iter()
        .map(|rel| {
            let path = dir.join(rel);
            let shown = path.display().to_string();
            File::open(&path)
                .map(|f| (shown.clone(), f))
                .map_err(|source| ModuleError::Read {
                    path: shown,
                    source,
                })
        })
        .collect::<Result<_, _>>()?;
    Ok(Plan { files, waits })
}

impl Plan {
    /// Loads every file on up to `MAX_THREADS` threads (no more than the
    /// VM has vCPUs), each once its dependencies are in, calling `ended`
    /// after each load, whether it worked or not.
    pub fn load(&self, ended: &(dyn Fn() + Sync)) -> Result<(), ModuleError> {
        let threads = std::thread::available_parallelism()
            .map_or(1, usize::from)
            .clamp(1, MAX_THREADS);
        run_in_order(&self.waits, threads, |i| {
            let (path, file) = &self.files[i];
            let result = insert(path, file);
            ended();
            result
        })
    }
}

fn insert(path: &str, file: &File) -> Result<(), ModuleError> {
    let compressed = [".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .any(|s| path.ends_with(s));
    let flags = if compressed {
        ModuleInitFlags::from_bits_retain(MODULE_INIT_COMPRESSED_FILE)
    } else {
        ModuleInitFlags::empty()
    };
    match finit_module(file, c"" as &CStr, flags) {
        Ok(()) | Err(Errno::EEXIST) => Ok(()),
        Err(source) => Err(ModuleError::Load {
            path: path.to_owned(),
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

    #[test]
    fn waiters_wake_on_each_load_and_when_all_have_ended() {
        use std::sync::atomic::{AtomicU64, Ordering};
        let progress = Arc::new(Progress::default());
        let p = Arc::clone(&progress);
        let steps = Arc::new(AtomicU64::new(0));
        let s = Arc::clone(&steps);
        // Three "loads", then the end, on another thread.
        let thread = std::thread::spawn(move || {
            for _ in 0..3 {
                std::thread::sleep(std::time::Duration::from_millis(20));
                s.fetch_add(1, Ordering::SeqCst);
                p.advance(false);
            }
            p.advance(true);
            Ok(())
        });
        let mut loading = Loading {
            progress,
            thread: Some(thread),
            error: None,
            ended_at: 0,
        };
        // Holds after the second load: returns then, not at the end.
        assert!(loading.wait_until(|| steps.load(Ordering::SeqCst) >= 2));
        assert!(steps.load(Ordering::SeqCst) < 4);
        // Never holds: returns false once all have ended.
        assert!(!loading.wait_until(|| false));
        assert_eq!(steps.load(Ordering::SeqCst), 3);
        let ended = loading.finish().unwrap();
        assert!(ended > 0);
        assert_eq!(loading.finish().unwrap(), ended);
    }

    #[test]
    fn finish_reports_the_error_once() {
        let progress = Arc::new(Progress::default());
        progress.advance(true);
        let mut loading = Loading {
            progress,
            thread: Some(std::thread::spawn(|| {
                Err(ModuleError::Load {
                    path: "/lib/modules/x/virtio_blk.ko".into(),
                    source: Errno::ENOEXEC,
                })
            })),
            error: None,
            ended_at: 0,
        };
        assert!(!loading.wait_until(|| false));
        let err = loading.finish().unwrap_err().to_string();
        assert!(err.contains("virtio_blk.ko"), "{err}");
        loading.finish().unwrap();
    }

    #[test]
    fn a_plan_that_fails_starts_nothing_and_says_why() {
        let names = vec!["kiln_test_module".to_owned()];
        let mut loading = Loading::start(&names, "kiln-test-no-such-release");
        assert!(loading.thread.is_none());
        assert!(!loading.wait_until(|| false));
        let err = loading.finish().unwrap_err().to_string();
        assert!(
            err.contains("kiln_test_module") && err.contains("kiln-test-no-such-release"),
            "{err}"
        );
        assert!(loading.finish().is_ok());
    }

    #[test]
    fn planned_files_are_open_before_any_load() {
        let dir = std::env::temp_dir().join(format!("kiln-init-kmod-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("kernel")).unwrap();
        std::fs::write(dir.join("kernel/a.ko"), b"not a module").unwrap();
        std::fs::write(dir.join("kernel/b.ko"), b"not a module").unwrap();
        std::fs::write(
            dir.join("modules.dep"),
            "kernel/b.ko: kernel/a.ko\nkernel/a.ko:\n",
        )
        .unwrap();
        let p = plan_in(&dir, &["b".to_owned()]).unwrap();
        // The files stay readable through the plan after they are gone.
        std::fs::remove_dir_all(&dir).unwrap();
        let names: Vec<String> = p.files.iter().map(|(path, _)| module_name(path)).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(p.waits, vec![vec![], vec![0]]);
        for (_, f) in &p.files {
            assert_eq!(f.metadata().unwrap().len(), 12);
        }
    }

    #[test]
    fn nothing_to_load_ends_at_once() {
        let mut loading = Loading::start(&[], "none");
        assert!(loading.thread.is_none(), "no thread for nothing");
        assert!(!loading.wait_until(|| false));
        assert!(loading.wait_until(|| true));
        assert!(loading.finish().unwrap() > 0);
    }
}
