//! `kiln`: the host side of Kiln. Every GitHub Actions job in a fresh microVM.
//!
//! - [`admin`] — `kiln serve`'s operator side: the metrics listener and the admin socket
//!   (`kiln ps`, `kiln logs`, `kiln cancel`).
//! - [`cli`] — the `kiln` command line: `run`, `doctor`, `serve`.
//! - [`config`] — `kiln serve`'s config file: parse, validate, read the secrets.
//! - [`conversation`] — the exchange with one guest's kiln-init: Hello, Job, events, Cancel.
//! - [`disk`] — per-VM scratch disks.
//! - [`duration`] — durations as people write them (`90s`, `1h30m`), for the CLI and the config.
//! - [`doctor`] — `kiln doctor`: what this host lacks, and how to fix it.
//! - [`metrics`] — Prometheus metrics: what every layer counts, scraped on the admin listener.
//! - [`logs`] — kiln's own log lines: text or JSON, and the stable event names tools read.
//! - [`lease`] — numbered host resources (CIDs, address slots) leased across processes by lock files.
//! - [`random`] — random bytes from the kernel.
//! - [`recover`] — after a crash of `kiln serve`: find what dead Kiln processes left on the host and remove it.
//! - [`net`] — every VM's network: namespace, veth, tap, addresses, the nftables egress policy.
//! - [`github`] — GitHub: webhook verification and payloads, the App's REST calls.
//! - [`job`] — one job's lifecycle under `kiln serve`: runner name, still-queued check, JIT
//!   config, VM, job log, idle runners.
//! - [`scheduler`] — the job queue: capacity accounting and dispatch, FIFO per host.
//! - [`secret`] — [`secret::Secret`]: strings that print as `[redacted]`.
//! - [`store`] — `kiln serve`'s durable journal (SQLite): VMs, runners and jobs, for recovery after a restart.
//! - [`serve`] — `kiln serve`'s HTTP server: webhooks in, jobs to the scheduler.
//! - [`vm`] — one VM's life, the same for both backends: start, job, teardown.
//! - [`vmm`] — backends that boot one VM (QEMU, Firecracker through its jailer).
//! - [`vsock`] — Firecracker's hybrid vsock, host side: listeners and the CONNECT client.
//!
//! Layers point one way: `cli` → `serve` → `job`, `scheduler` → `vm` →
//! `vmm`, `vsock`, `disk`, `net`. Nothing lower `use`s anything above it:
//! `config` (which names `vm` and `net` types) is read by the layers above
//! `vm`, and the leaves `duration`, `lease`, `logs`, `random`, `secret` use
//! only each other.

pub mod admin;
pub mod cli;
pub mod config;
pub mod conversation;
pub mod disk;
pub mod doctor;
pub mod duration;
pub mod github;
pub mod job;
pub mod lease;
pub mod logs;
pub mod metrics;
pub mod net;
pub mod random;
pub mod recover;
pub mod scheduler;
pub mod secret;
pub mod serve;
pub mod store;
pub mod vm;
pub mod vmm;
pub mod vsock;
