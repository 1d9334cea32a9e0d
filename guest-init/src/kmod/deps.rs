//! What depmod knows about modules (`modules.dep`), and the load plan it
//! gives: each module after its dependencies, each once.

use std::collections::HashMap;

use super::ModuleError;

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
