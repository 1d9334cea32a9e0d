//! One VM's life on the host, the same for both VMM backends.
//!
//! [`Launcher::run`] takes a [`VmRequest`] (what to boot, the job) and
//! does everything in order: a VM directory and id ([`dirs`]), a guest CID
//! unique on the host ([`cid`]), a fresh scratch disk ([`crate::disk`]),
//! the VMM started with the guest's vsock listener already bound
//! ([`backend`]), the guest's `Hello` within a timeout, the `Job`, the job's
//! output streamed to an [`OutputSink`] as it arrives, then the guest's
//! power-off. A [`StopSignal`] cancels the job gracefully, then kills.
//! Whatever happens, a guard ([`guard`]) removes every process, file,
//! socket, jail and cgroup the VM had, and the [`VmReport`] says how the job
//! ended and where the time went ([`timing`]).
//!
//! - [`image`]: the image directory `cargo xtask image` writes.
//! - [`select`]: Firecracker or QEMU.
//! - [`console`]: following a console log for `--console`.

pub mod backend;
pub mod cid;
mod console;
pub mod dirs;
mod guard;
pub mod image;
pub mod output;
pub mod owner;
pub use crate::random;
pub mod request;
mod run;
pub mod select;
pub mod stop;
pub mod timing;

pub use backend::{Backend, BackendChoice, BackendError, ConsoleMode, RunningVm, VmmExit};
pub use dirs::{RuntimeDirs, TEMPLATES_DIR};
pub use guard::TeardownError;
pub use image::{Image, ImageError, ImageUser};
pub use output::{CollectSink, DiscardSink, OutputSink, StdioSink};
pub use request::{BootImage, ModuleSet, Timeouts, VmRequest};
pub use run::{JobEnd, Launcher, Progress, RunError, VmReport};
pub use select::{select_backend, BackendOptions, Selected};
pub use stop::{stop_channel, StopHandle, StopLevel, StopSignal};
pub use timing::Timing;
