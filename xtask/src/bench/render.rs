//! BENCHMARKS.md, rendered from [`Results`] alone (so the JSON file can be
//! rendered again).

use std::fmt::Write;

use super::results::{
    BootPath, Counts, Figure, NetBoot, NetworkResults, Ratio, Results, ScaleSetResults,
    ServeVmMemory, SourcePath, Target, Webhook, WebhookResults,
};
use super::stats::Stat;

/// Other work above this share of the host's CPUs makes the host "busy".
pub const BUSY_PCT: f64 = 10.0;

/// Milliseconds with the precision the size deserves.
pub fn ms(v: f64) -> String {
    let a = v.abs();
    if a < 10.0 {
        format!("{v:.2}")
    } else if a < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

/// KiB as KiB or MiB.
pub fn kib(v: f64) -> String {
    if v.abs() >= 10.0 * 1024.0 {
        format!("{:.1} MiB", v / 1024.0)
    } else {
        format!("{v:.0} KiB")
    }
}

fn ms_row(s: &Stat) -> String {
    format!("{} | {} | {}", ms(s.min), ms(s.median), ms(s.max))
}

fn kib_row(s: &Stat) -> String {
    format!("{} | {} | {}", kib(s.min), kib(s.median), kib(s.max))
}

/// `YYYY-MM-DD HH:MM UTC` from Unix seconds (Howard Hinnant's
/// days-to-civil algorithm; no date crate for one line).
pub fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        (rem % 3600) / 60
    )
}

fn targets_table(out: &mut String, targets: &[Target]) {
    let _ = writeln!(out, "| Target | Goal | Measured | Verdict | Note |");
    let _ = writeln!(out, "|---|---|---|---|---|");
    for t in targets {
        let _ = writeln!(
            out,
            "| {} | {} | {} | **{}** | {} |",
            t.what, t.goal, t.measured, t.verdict, t.note
        );
    }
    out.push('\n');
}

fn phase_table(out: &mut String, p: &BootPath, label: &str, modular: bool) {
    let _ = writeln!(
        out,
        "| {} phase ({label}) | covers | min ms | median ms | max ms |",
        p.name
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|");
    for Figure { name, what, stat } in &p.phases {
        let _ = writeln!(out, "| {name} | {what} | {} |", ms_row(stat));
    }
    let _ = writeln!(
        out,
        "| **VMM start to runner exec** | sum of the above, per run | {} |",
        ms_row(&p.total)
    );
    let _ = writeln!(
        out,
        "| PID 1's share | first userspace instruction to runner exec, without the wait for the host | {} |",
        ms_row(&p.init_share)
    );
    if modular {
        let _ = writeln!(
            out,
            "| PID 1's share without modules | the same, PID 1's waits for module loads taken out | {} |",
            ms_row(&p.init_share_without_modules)
        );
    }
    let _ = writeln!(
        out,
        "| (before VMM start) | VM directory, CID, scratch disk: not in the total | {} |",
        ms_row(&p.prepare)
    );
    out.push('\n');
}

/// One kernel's comparison: what each path does, their phases, the
/// ratios, and where kiln-init's path spends its time.
fn boot_comparison(
    o: &mut String,
    kernel: &str,
    modular: bool,
    kiln: &BootPath,
    systemd: &BootPath,
    ratios: &[Ratio],
    label: &str,
) {
    let _ = writeln!(o, "### On {kernel}\n");
    for p in [kiln, systemd] {
        let _ = writeln!(o, "**{}** path includes:\n", p.name);
        for i in &p.includes {
            let _ = writeln!(o, "- {i}");
        }
        o.push('\n');
    }
    phase_table(o, kiln, label, modular);
    phase_table(o, systemd, label, modular);
    let _ = writeln!(
        o,
        "| Comparison ({label}, medians) | kiln-init ms | systemd ms | systemd / kiln-init |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|");
    for ra in ratios {
        let _ = writeln!(
            o,
            "| {} | {} | {} | **{:.1}x** |",
            ra.what,
            ms(ra.kiln_ms),
            ms(ra.systemd_ms),
            ra.ratio
        );
    }
    o.push('\n');
    let kiln_total = kiln.total.median;
    // A phase that runs beside others is not a share of the total.
    let mut biggest: Vec<&Figure> = kiln
        .phases
        .iter()
        .filter(|f| !f.name.ends_with("(beside)"))
        .collect();
    biggest.sort_by(|a, b| b.stat.median.total_cmp(&a.stat.median));
    let top: Vec<String> = biggest
        .iter()
        .take(4)
        .map(|f| {
            format!(
                "{} {} ms ({:.0}%)",
                f.name,
                ms(f.stat.median),
                100.0 * f.stat.median / kiln_total
            )
        })
        .collect();
    let _ = writeln!(
        o,
        "Where kiln-init's path spends its time (medians, share of VMM start to runner exec): {}.\n",
        top.join("; ")
    );
}

fn incidents(out: &mut String, list: &[String]) {
    if list.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "Incidents in this benchmark (failed runs, retried or counted):\n"
    );
    for i in list {
        let _ = writeln!(out, "- {i}");
    }
    out.push('\n');
}

fn counts_row(out: &mut String, what: &str, c: &Counts) {
    let _ = writeln!(
        out,
        "| {what} | {} | {} | {} | {} | {} | {} |",
        c.fds, c.processes, c.mounts, c.taps, c.runtime_files, c.disk_files
    );
}

fn figure<'a>(list: &'a [Figure], name: &str) -> Option<&'a Figure> {
    list.iter().find(|f| f.name == name)
}

/// The headline figures (medians) and every target's verdict.
fn summary(o: &mut String, r: &Results) {
    let label = label(r);
    let _ = writeln!(o, "## Summary\n");
    let _ = writeln!(
        o,
        "| Figure (medians) | Kiln | Baseline | Baseline / Kiln |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|");
    if let Some(b) = &r.boot {
        let _ = writeln!(
            o,
            "| Boot: VMM start to runner exec, Debian's modular kernel ({label}) | {} ms | systemd {} ms | {:.1}x |",
            ms(b.kiln.total.median),
            ms(b.systemd.total.median),
            b.systemd.total.median / b.kiln.total.median
        );
        let _ = writeln!(
            o,
            "| Boot: PID 1's share, no host wait, Debian's modular kernel ({label}) | {} ms | systemd {} ms | {:.1}x |",
            ms(b.kiln.init_share.median),
            ms(b.systemd.init_share.median),
            b.systemd.init_share.median / b.kiln.init_share.median
        );
        if let Some(c) = &b.built_in {
            let _ = writeln!(
                o,
                "| Boot: PID 1's share on the production kernel, everything built in ({label}) | {} ms | systemd {} ms | {:.1}x |",
                ms(c.kiln.init_share.median),
                ms(c.systemd.init_share.median),
                c.systemd.init_share.median / c.kiln.init_share.median
            );
        }
    }
    if let Some(d) = &r.disk {
        let kiln = figure(&d.kiln, "40 GiB scratch disk, beside the 2 GiB image");
        let naive = figure(&d.naive, "plain cp of the 2 GiB image, + fsync");
        if let (Some(k), Some(n)) = (kiln, naive) {
            let _ = writeln!(
                o,
                "| Per-VM disk, 40 GiB scratch (host) | {} ms | copy of a 2 GiB image + fsync {} ms | {:.0}x |",
                ms(k.stat.median),
                ms(n.stat.median),
                n.stat.median / k.stat.median
            );
        }
    }
    if let Some(c) = &r.churn {
        let _ = writeln!(
            o,
            "| VM churn ({label}) | {:.1} VMs/min, leftovers: {} | — | — |",
            c.vms_per_minute,
            if c.before == c.after { "none" } else { "SOME" }
        );
    }
    if let Some(m) = &r.memory {
        let baseline = m
            .systemd_rss_kib
            .as_ref()
            .map(|s| {
                (
                    format!("systemd {}", kib(s.median)),
                    format!("{:.0}x", s.median / m.kiln_init_rss_kib.median),
                )
            })
            .unwrap_or_else(|| ("—".into(), "—".into()));
        let _ = writeln!(
            o,
            "| PID 1 RSS as the runner starts ({label}) | kiln-init {} | {} | {} |",
            kib(m.kiln_init_rss_kib.median),
            baseline.0,
            baseline.1
        );
        if let Some(k) = &m.kiln_run_rss_kib {
            let _ = writeln!(
                o,
                "| `kiln run` RSS with its VM running ({label}) | {} | — | — |",
                kib(k.median)
            );
        }
        if let Some(s) = &m.serve {
            let _ = writeln!(
                o,
                "| `kiln serve` RSS idle / added per running VM ({label}) | {} / {} | — | — |",
                kib(s.idle_rss_kib.median),
                kib(s.per_vm_kib.median)
            );
        }
    }
    match &r.webhook {
        Some(Webhook::Measured(w)) => webhook_summary(o, w),
        Some(Webhook::Pending(p)) => {
            let _ = writeln!(o, "| Webhook ingestion | {} | — | — |", p.status);
        }
        None => {}
    }
    if let Some(n) = &r.network {
        network_summary(o, n, label);
    }
    if let Some(s) = &r.scale_set {
        scale_set_summary(o, s, label);
    }
    o.push('\n');
    let measured = match &r.webhook {
        Some(Webhook::Measured(w)) => Some(w.targets.as_slice()),
        _ => None,
    };
    let targets: Vec<&Target> = [
        r.boot.as_ref().map(|b| b.targets.as_slice()),
        r.disk.as_ref().map(|d| d.targets.as_slice()),
        measured,
        r.network.as_ref().map(|n| n.targets.as_slice()),
    ]
    .into_iter()
    .flatten()
    .flatten()
    .collect();
    if !targets.is_empty() {
        let _ = writeln!(o, "Targets:\n");
        for t in targets {
            let _ = writeln!(
                o,
                "- {} — {}: **{}** ({})",
                t.what, t.goal, t.verdict, t.measured
            );
        }
        o.push('\n');
    }
}

/// What the VM figures are labelled with; "no VM" when none ran.
fn label(r: &Results) -> &str {
    r.backend.as_ref().map_or("no VM", |b| b.label.as_str())
}

pub fn render(r: &Results) -> String {
    let label = label(r);
    let mut o = String::new();
    let _ = writeln!(o, "# Kiln benchmarks\n");
    let _ = writeln!(
        o,
        "Generated by `{}` on {} from commit {} ({} mode, {} run{} per figure). \
         Regenerate with `cargo xtask bench`; the figures are also in `bench/results.json`.\n",
        r.command,
        utc(r.generated_unix),
        r.git.as_deref().unwrap_or("unknown"),
        r.mode,
        r.runs,
        if r.runs == 1 { "" } else { "s" }
    );
    if let Some(b) = &r.backend {
        let _ = writeln!(
            o,
            "**Every VM figure here is {label}** ({} {}, `-M {}`, {} vCPU, {} MiB guest): {}. \
             TCG emulates every guest instruction, so guest-side times are many times what \
             they are under KVM; read the ratios, not the absolute guest times, as the result. \
             Figures without a VM (the per-VM disk, webhook ingestion{}) are labelled as such.\n",
            b.vmm,
            b.accel,
            b.machine,
            b.vcpus,
            b.memory_mib,
            b.accel_reason,
            if r.network.is_some() {
                ", the VM network's set-up and teardown"
            } else {
                ""
            }
        );
    }

    summary(&mut o, r);
    let _ = writeln!(o, "## Method\n");
    let _ = writeln!(
        o,
        "- Each benchmark runs beside its baseline in the same invocation, {} run(s) each, \
         reported as min / median / max. VM benchmarks alternate the two paths run by run \
         after one discarded warm-up of each, so both see the same host.",
        r.runs
    );
    // The guest-side method only matters when guests ran.
    if r.backend.is_some() {
        let _ = writeln!(
            o,
            "- Guest phases come from `CLOCK_BOOTTIME` stamps (kiln-init's `BootPhase` stamps in \
             `Hello`/`RunnerStarted`; the probe's own clock read at its first instruction; the \
             systemd path's initramfs stamps with the same probe). Host phases come from the host's \
             monotonic clock. The time before the guest kernel's clock starts is estimated the same \
             way on both paths: host time from QEMU's start to the guest's vsock connection, minus \
             the guest clock at that connection."
        );
        let _ = writeln!(
            o,
            "- The \"runner\" is `kiln-probe` (xtask/src/bench/probe/kiln_probe.rs), a static musl \
             binary whose first act is to read `CLOCK_BOOTTIME`, then PID 1's `VmRSS`."
        );
    }
    let extra_args = r
        .backend
        .as_ref()
        .map(|b| b.extra_kernel_args.clone())
        .unwrap_or_default();
    if !extra_args.is_empty() {
        let _ = writeln!(
            o,
            "- Every guest, on every path, boots with `{}` added to the command line kiln \
             gives it: under TCG on `microvm` the kernel otherwise finds no clocksource but \
             jiffies (the TSC fails its stability check; there is no HPET, ACPI PM timer or \
             kvmclock) and every `CLOCK_BOOTTIME` stamp moves in 4 ms steps. TCG's TSC follows \
             the host's clock.",
            extra_args.join(" ")
        );
    }
    let m = &r.machine;
    let _ = writeln!(
        o,
        "- Machine: {} CPUs ({}), {:.1} GiB RAM, {}, host kernel {}; {}; vhost-device-vsock: {}; \
         disks on {}.",
        m.nproc, m.cpu_model, m.memory_gib, m.os, m.kernel, m.qemu, m.vhost_device_vsock, m.disk_fs
    );
    if let Some(b) = &r.backend {
        let built_in = r.boot.as_ref().is_some_and(|boot| boot.built_in.is_some());
        let _ = writeln!(
            o,
            "- Guest: Debian's cloud kernel {} (modular: virtio, vsock, virtio_blk, overlay \
             and tun load as modules in both paths){}, the bench image (the real recipe plus \
             systemd, rootfs/bench-systemd/).",
            b.guest_kernel,
            if built_in {
                "; for the boot benchmark also Kiln's production kernel (`cargo xtask kernel` \
                 from kernel/*.fragment: Debian's 6.1 sources, everything built in, no modules)"
            } else {
                ""
            }
        );
    }
    let busy = r.load.iter().any(|l| l.others_cpu_pct > BUSY_PCT);
    let loads: Vec<String> = r
        .load
        .iter()
        .map(|l| {
            format!(
                "{} {:.0}% (the bench itself {:.0}%; load average before it {:.2})",
                l.during, l.others_cpu_pct, l.bench_cpu_pct, l.load1_before
            )
        })
        .collect();
    let _ = writeln!(
        o,
        "- Other work on the host (CPU time of everything but the bench and its VMs, as a \
         share of all {} CPUs) during each benchmark: {}.{}\n",
        m.nproc,
        loads.join("; "),
        if busy {
            " **The host was busy** (other work ran beside the bench on these cores): \
             absolute figures are inflated and spread wider than on a quiet host; both \
             paths of each comparison shared that load."
        } else {
            " The host was otherwise quiet."
        }
    );

    if let Some(b) = &r.boot {
        let _ = writeln!(o, "## 1. Boot to runner ({label})\n");
        let _ = writeln!(
            o,
            "On each kernel below, both paths boot the same kernel, QEMU, kernel command line, \
             base image, fresh 20 GiB sparse scratch disk (with the image's scratch skeleton) \
             and module set; the same probe is the runner.\n"
        );
        let kernel = if b.kernel.is_empty() {
            "Debian's cloud kernel (modular)"
        } else {
            b.kernel.as_str()
        };
        if let Some(c) = &b.built_in {
            boot_comparison(
                &mut o, &c.kernel, c.modular, &c.kiln, &c.systemd, &c.ratios, label,
            );
        }
        boot_comparison(&mut o, kernel, true, &b.kiln, &b.systemd, &b.ratios, label);
        targets_table(&mut o, &b.targets);
        incidents(&mut o, &b.incidents);
    }

    if let Some(d) = &r.disk {
        let _ = writeln!(o, "## 2. Per-VM disk (host side)\n");
        let _ = writeln!(
            o,
            "Kiln gives each VM a fresh sparse scratch disk, an ext4 holding only the image's \
             scratch skeleton (the overlay's dirs and /home's few files), and attaches the \
             shared base image read-only; the naive way copies an image per VM. The first VM \
             of an image and disk size has its disk made by mkfs.ext4 -d, and that disk is kept \
             as the template every later VM's disk is copied from (`kiln::disk::Templates`: a \
             reflink where the filesystem can, else only the ext4 metadata's data ranges). \
             Images: {}. No VM runs here: these are the host's filesystem ({}) and the same for \
             every backend (the disks serve {label} here).\n",
            d.image_what, r.machine.disk_fs
        );
        let _ = writeln!(o, "| Per-VM disk | how | min ms | median ms | max ms |");
        let _ = writeln!(o, "|---|---|---:|---:|---:|");
        let groups = [
            ("Kiln", &d.kiln),
            ("naive", &d.naive),
            ("Kiln, once per image and size", &d.alternatives),
        ];
        for (group, figures) in groups {
            for f in figures {
                let _ = writeln!(
                    o,
                    "| {group}: {} | {} | {} |",
                    f.name,
                    f.what,
                    ms_row(&f.stat)
                );
            }
        }
        o.push('\n');
        targets_table(&mut o, &d.targets);
    }

    match &r.webhook {
        Some(Webhook::Measured(w)) => webhook_section(&mut o, w),
        Some(Webhook::Pending(p)) => {
            let _ = writeln!(o, "## 3. Webhook ingestion — {}\n", p.status);
            let _ = writeln!(o, "{}\n", p.reason);
        }
        None => {}
    }

    if let Some(c) = &r.churn {
        let _ = writeln!(o, "## 4. VM churn ({label})\n");
        let _ = writeln!(
            o,
            "{} VMs started and torn down back to back through the VM layer \
             (`kiln::vm::Launcher`, as `kiln run`), each running `{}` as the runner user on a \
             fresh scratch disk; {} failed.\n",
            c.vms, c.job, c.failures
        );
        let _ = writeln!(
            o,
            "| Churn ({label}) | value |\n|---|---:|\n| VMs per minute (successful VMs over the wall time) | **{:.1}** |\n| wall time | {:.1} s |\n| one VM, request to teardown: min / median / max | {} / {} / {} ms |\n",
            c.vms_per_minute,
            c.seconds,
            ms(c.per_vm.min),
            ms(c.per_vm.median),
            ms(c.per_vm.max)
        );
        let _ = writeln!(
            o,
            "| Host state | fds | processes | mounts | taps | runtime dir entries | scratch dir entries |"
        );
        let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---:|");
        counts_row(&mut o, "before", &c.before);
        counts_row(&mut o, "after", &c.after);
        let _ = writeln!(
            o,
            "\nAfter equals before: **{}**. fds and mounts are the bench process's (which runs \
             the VMs); processes are its live descendants (QEMU, vhost-device-vsock); taps are \
             the host's tun/tap devices (the churn's VMs run without a network, so 0 is expected; \
             VM networks are benchmark 6's); the runtime dir holds VM directories, sockets and CID leases.\n",
            if c.before == c.after { "yes" } else { "NO" }
        );
        incidents(&mut o, &c.incidents);
    }

    if let Some(mem) = &r.memory {
        let _ = writeln!(o, "## 5. Memory ({label})\n");
        let _ = writeln!(o, "| Memory | min | median | max |");
        let _ = writeln!(o, "|---|---:|---:|---:|");
        let _ = writeln!(
            o,
            "| kiln-init RSS as the runner starts (PID 1 `VmRSS`, read by the probe) | {} |",
            kib_row(&mem.kiln_init_rss_kib)
        );
        let _ = writeln!(
            o,
            "| kiln-init peak RSS by then (`VmHWM`) | {} |",
            kib_row(&mem.kiln_init_hwm_kib)
        );
        if let Some(s) = &mem.systemd_rss_kib {
            let _ = writeln!(
                o,
                "| baseline: systemd (PID 1) RSS at the same point | {} |",
                kib_row(s)
            );
        }
        if let Some(s) = &mem.kiln_run_rss_kib {
            let _ = writeln!(
                o,
                "| `kiln run` process RSS while its VM runs a job | {} |",
                kib_row(s)
            );
        }
        let _ = writeln!(
            o,
            "| VM layer in one process: idle | {} |",
            kib_row(&mem.in_process_idle_rss_kib)
        );
        let _ = writeln!(
            o,
            "| VM layer in one process: {} VMs running | {} |",
            mem.in_process_vms,
            kib_row(&mem.in_process_busy_rss_kib)
        );
        let _ = writeln!(
            o,
            "| VM layer in one process: added per running VM | {} |",
            kib_row(&mem.in_process_per_vm_kib)
        );
        let _ = writeln!(
            o,
            "| for scale: QEMU per VM ({} MiB guest, memory touched by the boot) | {} |",
            mem.guest_memory_mib,
            kib_row(&mem.qemu_rss_kib)
        );
        let _ = writeln!(
            o,
            "| for scale: vhost-device-vsock per VM | {} |",
            kib_row(&mem.vhost_rss_kib)
        );
        if let Some(s) = &mem.serve {
            serve_vm_rows(&mut o, s);
        }
        if let Some(w) = measured_webhook(r) {
            serve_memory_rows(&mut o, w);
        }
        let _ = writeln!(
            o,
            "\nkiln-init on disk: {} bytes ({:.0} KiB), {}. The host side per running VM is \
             measured as the `kiln run` process (one VM, whole process), as the VM layer \
             inside the bench process (what `kiln serve` embeds), idle and with {} VMs, and as \
             the real `kiln serve` running jobs in VMs. The in-process figure is this process's \
             RSS, so allocator slack counts.{}\n",
            mem.kiln_init_bytes,
            mem.kiln_init_bytes as f64 / 1024.0,
            if mem.kiln_init_stripped {
                "stripped (no symbol table)"
            } else {
                "NOT stripped"
            },
            mem.in_process_vms,
            if measured_webhook(r).is_some() {
                serve_queued_note(Some(mem.serve.is_some()))
            } else {
                String::new()
            }
        );
        if let Some(s) = &mem.serve {
            serve_vm_note(&mut o, s);
        }
        incidents(&mut o, &mem.incidents);
    } else if let Some(w) = measured_webhook(r) {
        let _ = writeln!(o, "## 5. Memory (`kiln serve`: host, no VM)\n");
        let _ = writeln!(o, "| Memory | min | median | max |");
        let _ = writeln!(o, "|---|---:|---:|---:|");
        serve_memory_rows(&mut o, w);
        let _ = writeln!(o, "\n{}\n", serve_queued_note(None).trim_start());
    }
    if let Some(n) = &r.network {
        network_section(&mut o, n, label);
    }
    if let Some(s) = &r.scale_set {
        scale_set_section(&mut o, s, label);
    }
    o
}

fn scale_set_summary(o: &mut String, s: &ScaleSetResults, label: &str) {
    let (w, ss) = (&s.webhook, &s.scale_set);
    let _ = writeln!(
        o,
        "| Job handed over → VM starting, scale-set queue (fake broker on loopback; webhook as baseline) | {} ms | webhook {} ms | {:.2}x |",
        ms(ss.before_vm.median),
        ms(w.before_vm.median),
        w.before_vm.median / ss.before_vm.median
    );
    let _ = writeln!(
        o,
        "| Job handed over → runner exec, scale-set queue ({label}) | {} ms | webhook {} ms | {:.2}x |",
        ms(ss.total.median),
        ms(w.total.median),
        w.total.median / ss.total.median
    );
}

fn source_table(o: &mut String, p: &SourcePath, label: &str) {
    let _ = writeln!(
        o,
        "| {} path ({label}) | covers | min ms | median ms | max ms |",
        p.name
    );
    let _ = writeln!(o, "|---|---|---:|---:|---:|");
    for Figure { name, what, stat } in &p.phases {
        let _ = writeln!(o, "| {name} | {what} | {} |", ms_row(stat));
    }
    let _ = writeln!(
        o,
        "| **handed over → VM starting** | Kiln's share before the VM, per run | {} |",
        ms_row(&p.before_vm)
    );
    let _ = writeln!(
        o,
        "| **handed over → runner exec** | the whole, per run | {} |\n",
        ms_row(&p.total)
    );
}

fn scale_set_section(o: &mut String, s: &ScaleSetResults, label: &str) {
    let _ = writeln!(
        o,
        "## 7. Job sources: scale-set queue beside webhooks ({label})\n"
    );
    if let Some(run) = &s.separate_run {
        let _ = writeln!(o, "Measured in a run of its own: {run}.\n");
    }
    let _ = writeln!(
        o,
        "A job handed over to `kiln serve` until its runner execs in the VM, through each job \
         source. Two release `kiln serve` processes run side by side against one fake GitHub \
         (tests/src/bin/fake-github `--broker`, a debug build on 127.0.0.1: the GitHub REST API \
         and the scale-set broker), each with one pool with room for one VM ({} vCPU, {} MiB, \
         no network) of the same image: the bench image with the memory benchmark's stand-in \
         `run.sh`, which reports whether its JIT config arrived and exits after a second. {} \
         job(s) per path, alternating between the paths run by run (which goes first \
         alternates too), after one discarded warm-up job each; one VM runs at a time.\n",
        s.vcpus, s.memory_mib, s.runs
    );
    for p in [&s.webhook, &s.scale_set] {
        let _ = writeln!(o, "**{}** path:\n", p.name);
        for l in &p.includes {
            let _ = writeln!(o, "- {l}");
        }
        o.push('\n');
    }
    let _ = writeln!(
        o,
        "Timing: the bench's wall clock when it handed the job over (just before the delivery's \
         request is written, or `queue` to the fake's stdin, once the fake reports the scale \
         set's poll held open with room), against the daemon's own JSON log events' timestamps \
         (µs; `kiln::logs::events`); from `vm_starting` to the runner's exec, the board's \
         `prepared` to `runner_started` milestones (ms, over the admin socket, as `kiln ps` \
         shows them): the guest reported the runner spawned. Kiln's own events rather than the \
         stand-in's output: no guest clock, no log polling, and the same instants on both paths. \
         The fake GitHub's answers (a debug build) are in both paths' figures.\n"
    );
    source_table(o, &s.webhook, label);
    source_table(o, &s.scale_set, label);
    let _ = writeln!(
        o,
        "| Comparison (medians) | webhook ms | scale set ms | scale set / webhook |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|");
    for r in &s.ratios {
        let _ = writeln!(
            o,
            "| {} | {} | {} | **{:.2}x** |",
            r.what,
            ms(r.webhook_ms),
            ms(r.scale_set_ms),
            r.ratio
        );
    }
    let c = &s.check;
    let left = if c.left_behind.is_empty() {
        "nothing".to_owned()
    } else {
        c.left_behind.join("; ")
    };
    let _ = writeln!(
        o,
        "\nCheck that the runs were real (warm-up included): {} jobs handed over; {} ended \
         `job done`; {} stand-ins reported a JIT config in their environment; the broker saw \
         each scale-set job started by one runner: {}; left behind once both daemons stopped \
         (VMM processes, VM directories, CID leases, scratch disks): {left}. Verified: **{}**.\n",
        c.jobs,
        c.jobs_done,
        c.ready_with_jit,
        if c.broker_ran_each_once { "yes" } else { "NO" },
        if c.verified { "yes" } else { "NO" }
    );
}

fn network_summary(o: &mut String, n: &NetworkResults, label: &str) {
    if let Some(t) = n
        .churn
        .phases
        .iter()
        .find(|p| p.name == "set-up + teardown")
    {
        let _ = writeln!(
            o,
            "| VM network set-up + teardown per VM, {} in a row (host, no VM) | {} ms (p90 {} ms) | — | — |",
            n.churn.vms,
            ms(t.stat.median),
            ms(t.p90)
        );
    }
    if let Some(b) = &n.boot {
        let (on, off) = (
            b.on_request_to_runner.median,
            b.off_request_to_runner.median,
        );
        let _ = writeln!(
            o,
            "| Boot: request to runner exec with the network on ({label}) | {} ms | network off {} ms | {:.2}x |",
            ms(on),
            ms(off),
            off / on
        );
    }
}

/// A row of the network boot comparison: off, on, and the difference of
/// the medians.
fn on_off_row(o: &mut String, what: &str, covers: &str, off: &Stat, on: &Stat) {
    let _ = writeln!(
        o,
        "| {what} | {covers} | {} | {} | {:+.1} |",
        ms(off.median),
        ms(on.median),
        on.median - off.median
    );
}

fn network_boot(o: &mut String, b: &NetBoot, label: &str) {
    let _ = writeln!(
        o,
        "### Boot to runner with the network on and off ({label})\n"
    );
    let _ = writeln!(
        o,
        "kiln-init's path of benchmark 1 on {}, {} run(s) each after a warm-up of each, \
         alternating: the same VM, once without a network and once with \
         `network: Some(NetRequest::default())` on a launcher with the bench namespace's \
         `Network`. With the network, the VM layer makes the VM's network before the VMM \
         starts (in \"before VMM start\"), QEMU joins the VM's namespace and gets the tap, \
         kiln-init also loads failover, net_failover and virtio_net (in the module phases) and \
         configures eth0 from the Job (in \"configure\"), and the teardown removes the \
         network.\n",
        b.kernel, b.on.total.n
    );
    let _ = writeln!(
        o,
        "| Phase ({label}) | covers | network off median ms | network on median ms | on - off ms |"
    );
    let _ = writeln!(o, "|---|---|---:|---:|---:|");
    on_off_row(
        o,
        "before VMM start",
        "VM directory, CID, scratch disk; with the network: its set-up",
        &b.off.prepare,
        &b.on.prepare,
    );
    for f in &b.off.phases {
        if let Some(on) = b.on.phases.iter().find(|p| p.name == f.name) {
            on_off_row(o, &f.name, &f.what, &f.stat, &on.stat);
        }
    }
    on_off_row(
        o,
        "**VMM start to runner exec**",
        "the phases above but \"before VMM start\" and the (beside) ones",
        &b.off.total,
        &b.on.total,
    );
    on_off_row(
        o,
        "**request to runner exec**",
        "before VMM start + VMM start to runner exec, per run",
        &b.off_request_to_runner,
        &b.on_request_to_runner,
    );
    on_off_row(
        o,
        "teardown",
        "the VMM's exit to the VM's files (and network) removed",
        &b.off_teardown,
        &b.on_teardown,
    );
    o.push('\n');
    incidents(o, &b.incidents);
}

fn network_section(o: &mut String, n: &NetworkResults, label: &str) {
    let c = &n.churn;
    let _ = writeln!(o, "## 6. VM network (host side; boots: {label})\n");
    let _ = writeln!(o, "Where it runs:\n");
    for l in &n.setup {
        let _ = writeln!(o, "- {l}");
    }
    o.push('\n');
    let _ = writeln!(
        o,
        "**Set-up and teardown per VM**: `net-churn` (tests/src/bin/net-churn.rs, release build) \
         makes and removes {} VM networks back to back without VMs, timing each call. Per VM:\n",
        c.vms
    );
    for l in &c.covers {
        let _ = writeln!(o, "- {l}");
    }
    o.push('\n');
    let _ = writeln!(
        o,
        "| Per VM, {} in a row (host, no VM) | covers | median ms | p90 ms | max ms | first {w} median ms | last {w} median ms |",
        c.vms,
        w = c.window
    );
    let _ = writeln!(o, "|---|---|---:|---:|---:|---:|---:|");
    for p in &c.phases {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} |",
            p.name,
            p.what,
            ms(p.stat.median),
            ms(p.p90),
            ms(p.stat.max),
            ms(p.first_median),
            ms(p.last_median)
        );
    }
    let left = if c.leftovers.is_empty() {
        "nothing".to_owned()
    } else {
        format!("{} item(s): {}", c.leftovers.len(), c.leftovers.join("; "))
    };
    let others = if c.others_ignored > 0 {
        format!(
            " ({} `kiln-` namespace(s) of other Kiln processes on this host were there too: \
             /run/netns is shared, and a namespace counts as the bench's only when its VM link \
             `kv-<id>` is in the bench's namespace)",
            c.others_ignored
        )
    } else {
        String::new()
    };
    let _ = writeln!(
        o,
        "\nLeft in the namespace afterwards (`kv-` links, `kiln-` namespaces in /run/netns, \
         per-VM elements of `table inet kiln`'s sets; the kernel frees a namespace's links in \
         the background, so net-churn waits up to 3 s for them): {left}{others}.\n"
    );
    if let Some(b) = &n.boot {
        network_boot(o, b, label);
    }
    targets_table(o, &n.targets);
}

/// Where the queued-job figures come from, and where the running-VM ones
/// are: `vms_measured` is whether this run's memory benchmark measured
/// `kiln serve` with VMs (`None`: the memory benchmark did not run).
fn serve_queued_note(vms_measured: Option<bool>) -> String {
    let queued = " `kiln serve`'s RSS idle and per queued job come from the webhook benchmark \
(host, no VM): its `kiln serve` has `max_vms = 0`, so no job starts and its queue ends up holding \
every job the benchmark queued.";
    let vms = match vms_measured {
        Some(true) => " Its RSS with VMs running is the `kiln serve` rows above.",
        Some(false) => {
            " Its RSS with VMs running was not measured in this run (`--no-kiln-run`, or \
results from before that figure)."
        }
        None => {
            " Its RSS with VMs running is measured by the memory benchmark, which did not run \
here."
        }
    };
    format!("{queued}{vms}")
}

/// `kiln serve` with VMs running: its own RSS at each step, and its VMMs'.
fn serve_vm_rows(o: &mut String, s: &ServeVmMemory) {
    let _ = writeln!(
        o,
        "| `kiln serve` RSS idle, before any job | {} |",
        kib_row(&s.idle_rss_kib)
    );
    let _ = writeln!(
        o,
        "| `kiln serve` RSS with 1 VM running a job | {} |",
        kib_row(&s.one_vm_rss_kib)
    );
    let _ = writeln!(
        o,
        "| `kiln serve` RSS with {} VMs running jobs | {} |",
        s.vms,
        kib_row(&s.vms_rss_kib)
    );
    let _ = writeln!(
        o,
        "| `kiln serve`: added per running VM (({} VMs - idle) / {}) | {} |",
        s.vms,
        s.vms,
        kib_row(&s.per_vm_kib)
    );
    let _ = writeln!(
        o,
        "| `kiln serve` RSS after the jobs ended | {} |",
        kib_row(&s.after_rss_kib)
    );
    let _ = writeln!(
        o,
        "| for scale: its {} QEMUs together ({} vCPU, {} MiB guest each) | {} |",
        s.vms,
        s.vcpus,
        s.memory_mib,
        kib_row(&s.qemu_rss_kib)
    );
    let _ = writeln!(
        o,
        "| for scale: its {} vhost-device-vsock together | {} |",
        s.vms,
        kib_row(&s.vhost_rss_kib)
    );
}

/// How `kiln serve` was run with VMs, and whether the runs were real.
fn serve_vm_note(o: &mut String, s: &ServeVmMemory) {
    let c = &s.check;
    let _ = writeln!(
        o,
        "`kiln serve` with VMs: the release build, with one pool for the bench image with room \
         for exactly {vms} VMs of {vcpus} vCPU and {mem} MiB, against a fake GitHub API on \
         127.0.0.1 (tests/src/bin/fake-github: App token, JIT configs, runner deletion) and fed \
         signed `workflow_job` webhooks. The bench image has no actions runner, so the pool's \
         image is the bench image (rootfs, kernel, initramfs, manifest) with a stand-in \
         `/opt/actions-runner/run.sh` in its scratch skeleton's overlay layer: it reports ready \
         (and whether its JIT config arrived, never the config) and holds the VM {hold} s. \
         `VmRSS` is read before any job, 1 s after the first VM's stand-in reported ready, 1 s \
         after the stand-ins of all {vms} had (the samples check that 1, then {vms} QEMUs run \
         and that no job ended yet), and once every job ended. The figures include what the first job loads once (the GitHub \
         client, the VM layer's code): the 1-VM row against the {vms}-VM row shows the \
         increment of one more VM.\n",
        vms = s.vms,
        vcpus = s.vcpus,
        mem = s.memory_mib,
        hold = s.hold_s,
    );
    let left = if c.left_behind.is_empty() {
        "nothing".to_owned()
    } else {
        let shown: Vec<&str> = c.left_behind.iter().take(5).map(String::as_str).collect();
        format!(
            "{} item(s): {}{}",
            c.left_behind.len(),
            shown.join("; "),
            if c.left_behind.len() > shown.len() {
                "; …"
            } else {
                ""
            }
        )
    };
    let _ = writeln!(
        o,
        "Check that the runs were real: {} jobs sent; {} stand-ins reported ready with a JIT \
         config; {} jobs ended `job done`, {} otherwise; the fake GitHub got {} JIT requests, \
         {} runners were deleted and {} left registered; left behind once `kiln serve` stopped \
         (VMM processes, VM directories, CID leases, scratch disks): {}. Verified: **{}**.\n",
        c.jobs,
        c.ready_with_jit,
        c.jobs_done,
        c.jobs_not_done,
        c.jit_requests,
        c.runners_deleted,
        c.runners_left,
        left,
        if c.verified { "yes" } else { "NO" }
    );
}

fn measured_webhook(r: &Results) -> Option<&WebhookResults> {
    match &r.webhook {
        Some(Webhook::Measured(w)) => Some(w),
        _ => None,
    }
}

/// One measurement (min = median = max).
fn kib_once(v: f64) -> String {
    let k = kib(v);
    format!("{k} | {k} | {k}")
}

fn serve_memory_rows(o: &mut String, w: &WebhookResults) {
    let m = &w.memory;
    let _ = writeln!(
        o,
        "| `kiln serve` RSS idle, after start-up (host, no VM) | {} |",
        kib_once(m.idle_rss_kib)
    );
    let _ = writeln!(
        o,
        "| `kiln serve` RSS with {} jobs queued (host, no VM) | {} |",
        m.queued_jobs,
        kib_once(m.queued_rss_kib)
    );
    let per = format!("{:.0} B", m.per_queued_job_bytes);
    let _ = writeln!(
        o,
        "| `kiln serve`: added per queued job (incl. its de-duplication entries) | {per} | {per} | {per} |"
    );
    let _ = writeln!(
        o,
        "| for scale: the ceiling server idle (host, no VM) | {} |",
        kib_once(m.ceiling_idle_rss_kib)
    );
}

/// Requests per second: whole numbers.
fn rps(v: f64) -> String {
    format!("{v:.0}")
}

fn rps_row(s: &Stat) -> String {
    format!("{} | {} | {}", rps(s.min), rps(s.median), rps(s.max))
}

fn webhook_summary(o: &mut String, w: &WebhookResults) {
    let (k, c) = (&w.kiln, &w.ceiling);
    let _ = writeln!(
        o,
        "| Webhook ingestion, {} connections (loopback, host, no VM) | {} req/s | ceiling {} req/s | {:.2}x |",
        w.connections,
        rps(k.throughput_rps.median),
        rps(c.throughput_rps.median),
        c.throughput_rps.median / k.throughput_rps.median
    );
    let _ = writeln!(
        o,
        "| Webhook p99 at {} req/s (loopback, host, no VM) | {} ms | ceiling {} ms | {:.2}x |",
        w.rate_per_s,
        ms(k.p99_ms.median),
        ms(c.p99_ms.median),
        c.p99_ms.median / k.p99_ms.median
    );
    let _ = writeln!(
        o,
        "| `kiln serve` RSS idle / per queued job (host, no VM) | {} / {:.0} B | — | — |",
        kib(w.memory.idle_rss_kib),
        w.memory.per_queued_job_bytes
    );
}

fn webhook_section(o: &mut String, w: &WebhookResults) {
    let (k, c) = (&w.kiln, &w.ceiling);
    let _ = writeln!(o, "## 3. Webhook ingestion (loopback, host, no VM)\n");
    let _ = writeln!(
        o,
        "Signed `workflow_job` `queued` deliveries (POST /webhook, {:.1} KiB JSON bodies shaped \
         like GitHub's, each with its own `X-GitHub-Delivery` GUID and job id, signed with \
         HMAC-SHA256 before the clock starts) against the real `kiln serve` (release build), \
         beside the ceiling: a minimal axum server that only answers 202. Over 127.0.0.1; no VM \
         is involved, and neither figure depends on the VM backend.\n",
        w.body_bytes / 1024.0
    );
    let _ = writeln!(o, "`kiln serve` set-up:\n");
    for l in &w.setup {
        let _ = writeln!(o, "- {l}");
    }
    o.push('\n');
    for side in [k, c] {
        let _ = writeln!(o, "**{}** does, per delivery:\n", side.name);
        for i in &side.includes {
            let _ = writeln!(o, "- {i}");
        }
        o.push('\n');
    }
    let _ = writeln!(
        o,
        "Load: `kiln-bench-http load` (xtask/src/bin/, release build, hyper's HTTP/1.1 client on \
         one Tokio thread, keep-alive connections opened before the clock), its own process per \
         run. Runs alternate between the servers (which goes first alternates too), after a \
         discarded warm-up of {} deliveries each. It shares the host's CPUs with the server \
         under test (the other server is idle meanwhile).\n",
        w.warmup_requests
    );
    let _ = writeln!(
        o,
        "**Throughput** (closed loop: {} connections, each sending its next delivery as soon as \
         the last is answered; {} deliveries per run; counted: answers as expected per second):\n",
        w.connections, w.requests_per_run
    );
    let _ = writeln!(
        o,
        "| Throughput (loopback, host, no VM) | min | median | max |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|");
    for side in [k, c] {
        let _ = writeln!(
            o,
            "| {}: requests/s | {} |",
            side.name,
            rps_row(&side.throughput_rps)
        );
    }
    for side in [k, c] {
        let _ = writeln!(
            o,
            "| {}: server CPU time per request, µs | {} |",
            side.name,
            ms_row(&side.cpu_us_per_request)
        );
    }
    for side in [k, c] {
        let _ = writeln!(
            o,
            "| load generator's CPU against {}, % of one core | {} |",
            side.name,
            ms_row(&side.client_cpu_pct)
        );
    }
    let _ = writeln!(
        o,
        "\nCeiling / `kiln serve` (medians): **{:.2}x** in requests/s, {:.2}x in server CPU per \
         request. The load generator and the server share the host's CPUs: against the ceiling \
         the client used {:.0}% of one core (median), so the ceiling's requests/s is partly the \
         client's limit and its true margin is larger; server CPU per request compares the two \
         servers' own work without that limit.\n",
        c.throughput_rps.median / k.throughput_rps.median,
        k.cpu_us_per_request.median / c.cpu_us_per_request.median,
        c.client_cpu_pct.median
    );
    let _ = writeln!(
        o,
        "**Latency** (open loop: {} deliveries at {} per second on a fixed schedule kept by a \
         thread of its own, sent on any idle connection of {}; each latency runs from the \
         request's *scheduled* time to its whole answer, so a stall counts against every request \
         it delays — no coordinated omission). Percentiles are per run (nearest rank); the \
         columns are over runs:\n",
        w.rate_requests, w.rate_per_s, w.connections
    );
    let _ = writeln!(
        o,
        "| Latency at {} req/s (loopback, host, no VM) | min | median | max |",
        w.rate_per_s
    );
    let _ = writeln!(o, "|---|---:|---:|---:|");
    for side in [k, c] {
        for (what, st) in [
            ("p50", &side.p50_ms),
            ("p90", &side.p90_ms),
            ("p99", &side.p99_ms),
            ("max", &side.max_ms),
        ] {
            let _ = writeln!(o, "| {}: {what} ms | {} |", side.name, ms_row(st));
        }
    }
    for side in [k, c] {
        let _ = writeln!(
            o,
            "| {}: answered per second over the run | {} |",
            side.name,
            rps_row(&side.achieved_rps)
        );
    }
    for side in [k, c] {
        let _ = writeln!(
            o,
            "| the client's own lateness against {} (p99 of scheduled time to send), ms | {} |",
            side.name,
            ms_row(&side.send_lateness_p99_ms)
        );
    }
    o.push('\n');
    let ch = &w.check;
    let other: Vec<String> = ch
        .other_answers
        .iter()
        .map(|(a, n)| format!("{n}x `{a}`"))
        .collect();
    let count = |v: Option<usize>| v.map_or_else(|| "unknown".to_owned(), |n| n.to_string());
    let _ = writeln!(
        o,
        "Check that the figures are of real enqueues: `kiln serve` got {} deliveries (warm-up \
         included); {} were answered 202 `queued`{}{}; its log has {} `job queued` lines, and its \
         SIGTERM summary dropped {} queued jobs. Verified: **{}**.\n",
        ch.sent,
        ch.queued_answers,
        if other.is_empty() {
            String::new()
        } else {
            format!(", others: {}", other.join(", "))
        },
        if ch.failed > 0 {
            format!(", {} got no answer", ch.failed)
        } else {
            String::new()
        },
        count(ch.log_job_queued),
        count(ch.dropped_at_shutdown),
        if ch.verified { "yes" } else { "NO" }
    );
    targets_table(o, &w.targets);
    incidents(o, &w.incidents);
}

#[cfg(test)]
mod tests {
    use super::super::results::*;
    use super::*;

    fn stat(v: &[f64]) -> Stat {
        Stat::of(v).expect("stat")
    }

    fn path(name: &str) -> BootPath {
        BootPath {
            name: name.into(),
            includes: vec!["x".into()],
            phases: vec![Figure {
                name: "kernel".into(),
                what: "kernel start".into(),
                stat: stat(&[1500.0, 1600.0]),
            }],
            total: stat(&[2500.0]),
            init_share: stat(&[40.0]),
            init_share_without_modules: stat(&[4.0]),
            prepare: stat(&[20.0]),
            pid1_rss_kib: stat(&[632.0]),
            pid1_hwm_kib: stat(&[700.0]),
            pid1: "kiln-init".into(),
        }
    }

    fn results() -> Results {
        Results {
            schema: SCHEMA,
            generated_unix: 1_700_000_000,
            command: "cargo xtask bench".into(),
            mode: "full".into(),
            runs: 2,
            git: Some("abc".into()),
            machine: MachineInfo {
                nproc: 2,
                cpu_model: "cpu".into(),
                memory_gib: 24.0,
                kernel: "6.1".into(),
                os: "Debian".into(),
                qemu: "QEMU emulator version 7.2".into(),
                vhost_device_vsock: "0.3".into(),
                disk_fs: "/dev/vda ext4".into(),
            },
            backend: Some(BackendInfo {
                label: "QEMU TCG".into(),
                vmm: "QEMU".into(),
                accel: "TCG".into(),
                machine: "microvm".into(),
                accel_reason: "KVM cannot run guests here".into(),
                vcpus: 2,
                memory_mib: 1024,
                guest_kernel: "6.1.0-56-cloud-amd64".into(),
                extra_kernel_args: vec!["tsc=reliable".into()],
            }),
            load: vec![LoadSample {
                during: "boot".into(),
                load1_before: 3.5,
                others_cpu_pct: 35.0,
                bench_cpu_pct: 60.0,
            }],
            boot: Some(BootResults {
                kernel: "Debian's cloud kernel 6.1.0-test (modular)".into(),
                built_in: Some(BootComparison {
                    kernel: "Kiln's production kernel".into(),
                    modular: false,
                    kiln: path("kiln-init"),
                    systemd: path("systemd"),
                    ratios: vec![Ratio {
                        what: "PID 1's share".into(),
                        kiln_ms: 250.0,
                        systemd_ms: 6000.0,
                        ratio: 24.0,
                    }],
                }),
                kiln: path("kiln-init"),
                systemd: path("systemd"),
                ratios: vec![Ratio {
                    what: "total".into(),
                    kiln_ms: 2500.0,
                    systemd_ms: 10000.0,
                    ratio: 4.0,
                }],
                targets: vec![Target {
                    what: "share".into(),
                    goal: "20x".into(),
                    measured: "4.0x".into(),
                    verdict: "not met".into(),
                    note: "n".into(),
                }],
                incidents: vec!["systemd boot 2: attempt 1 failed and was retried: hung".into()],
            }),
            disk: Some(DiskResults {
                kiln: vec![Figure {
                    name: "40 GiB scratch disk".into(),
                    what: "mkfs".into(),
                    stat: stat(&[11.0, 13.0, 12.0]),
                }],
                naive: vec![],
                alternatives: vec![Figure {
                    name: "template copy".into(),
                    what: "cp".into(),
                    stat: stat(&[4.0]),
                }],
                image_bytes: 2 << 30,
                image_what: "a 2 GiB image".into(),
                targets: vec![],
            }),
            churn: Some(ChurnResults {
                vms: 3,
                failures: 0,
                seconds: 12.0,
                vms_per_minute: 15.0,
                per_vm: stat(&[4000.0]),
                before: Counts {
                    fds: 10,
                    processes: 0,
                    mounts: 30,
                    taps: 0,
                    runtime_files: 2,
                    disk_files: 0,
                },
                after: Counts {
                    fds: 11,
                    processes: 0,
                    mounts: 30,
                    taps: 0,
                    runtime_files: 2,
                    disk_files: 0,
                },
                job: "/bin/true".into(),
                incidents: vec![],
            }),
            memory: None,
            webhook: Some(Webhook::Pending(Pending {
                status: "not yet: needs kiln serve".into(),
                reason: "no server".into(),
            })),
            network: None,
            scale_set: None,
        }
    }

    fn side(name: &str, rps: &[f64], p99: &[f64]) -> WebhookSide {
        WebhookSide {
            name: name.into(),
            includes: vec![format!("{name} things")],
            throughput_rps: stat(rps),
            cpu_us_per_request: stat(&[120.0, 130.0]),
            client_cpu_pct: stat(&[60.0, 70.0]),
            p50_ms: stat(&[0.3, 0.4]),
            p90_ms: stat(&[0.5, 0.6]),
            p99_ms: stat(p99),
            max_ms: stat(&[9.0, 12.0]),
            achieved_rps: stat(&[999.0, 1000.0]),
            send_lateness_p99_ms: stat(&[0.08, 0.09]),
        }
    }

    fn webhook(verified: bool) -> WebhookResults {
        let mut other = std::collections::BTreeMap::new();
        if !verified {
            other.insert("503 queue full".to_owned(), 3);
        }
        WebhookResults {
            kiln: side("kiln serve", &[9000.0, 11000.0], &[1.5, 2.5]),
            ceiling: side("ceiling", &[25000.0, 35000.0], &[0.5, 0.7]),
            connections: 32,
            requests_per_run: 20_000,
            warmup_requests: 2000,
            rate_per_s: 1000,
            rate_requests: 5000,
            body_bytes: 5120.0,
            setup: vec!["one pool, `max_vms = 0`".into()],
            targets: vec![Target {
                what: "kiln serve's throughput against the ceiling's".into(),
                goal: "within 2x".into(),
                measured: "3.00x".into(),
                verdict: "not met".into(),
                note: "loopback".into(),
            }],
            check: WebhookCheck {
                sent: 52_000,
                queued_answers: if verified { 52_000 } else { 51_997 },
                other_answers: other,
                failed: 0,
                log_job_queued: Some(if verified { 52_000 } else { 51_997 }),
                dropped_at_shutdown: Some(if verified { 52_000 } else { 51_997 }),
                verified,
            },
            memory: ServeMemory {
                idle_rss_kib: 6000.0,
                queued_rss_kib: 6000.0 + 52_000.0 * 0.5,
                queued_jobs: 52_000,
                per_queued_job_bytes: 512.0,
                ceiling_idle_rss_kib: 3000.0,
            },
            incidents: if verified {
                vec![]
            } else {
                vec!["run 1, Throughput, kiln serve: 3x 503 queue full".into()]
            },
        }
    }

    #[test]
    fn number_formats() {
        assert_eq!(ms(1.234), "1.23");
        assert_eq!(ms(12.34), "12.3");
        assert_eq!(ms(1234.5), "1234");
        assert_eq!(ms(-0.5), "-0.50");
        assert_eq!(kib(632.0), "632 KiB");
        assert_eq!(kib(20.0 * 1024.0), "20.0 MiB");
        assert_eq!(utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc(1_700_000_000), "2023-11-14 22:13 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00 UTC");
    }

    #[test]
    fn every_section_names_its_backend_and_verdicts_show() {
        let md = render(&results());
        for heading in [
            "## 1. Boot to runner (QEMU TCG)",
            "## 4. VM churn (QEMU TCG)",
        ] {
            assert!(md.contains(heading), "{heading} missing:\n{md}");
        }
        assert!(md.contains("| kiln-init phase (QEMU TCG) |"), "{md}");
        assert!(md.contains("| systemd phase (QEMU TCG) |"), "{md}");
        assert!(
            md.contains("| kernel | kernel start | 1500 | 1550 | 1600 |"),
            "{md}"
        );
        assert!(md.contains("**4.0x**"), "{md}");
        assert!(md.contains("**not met**"), "{md}");
        assert!(
            md.contains("## 3. Webhook ingestion — not yet: needs kiln serve"),
            "{md}"
        );
        // The busy host is called out, and the leak check reports honestly.
        assert!(md.contains("The host was busy"), "{md}");
        assert!(md.contains("After equals before: **NO**"), "{md}");
        assert!(
            md.contains("| Kiln: 40 GiB scratch disk | mkfs | 11.0 | 12.0 | 13.0 |"),
            "{md}"
        );
        assert!(
            md.contains("| Kiln, once per image and size: template copy | cp | 4.00 |"),
            "{md}"
        );
        assert!(!md.contains("## 5. Memory"), "{md}");
        assert!(
            md.contains(
                "| Boot: VMM start to runner exec, Debian's modular kernel (QEMU TCG) | 2500 ms | systemd 2500 ms | 1.0x |"
            ),
            "{md}"
        );
        // Both kernels' comparisons, the production kernel's first, and
        // only the modular one with a "without modules" row.
        let built_in = md
            .find("### On Kiln's production kernel")
            .expect("built-in section");
        let debian = md
            .find("### On Debian's cloud kernel 6.1.0-test (modular)")
            .expect("Debian section");
        assert!(built_in < debian, "{md}");
        assert_eq!(
            md.matches("| PID 1's share without modules |").count(),
            2,
            "{md}"
        );
        assert!(
            md.contains("| PID 1's share | 250 | 6000 | **24.0x** |"),
            "{md}"
        );
        assert!(
            md.contains(
                "| Boot: PID 1's share on the production kernel, everything built in (QEMU TCG) | "
            ),
            "{md}"
        );
        assert!(md.contains("- share — 20x: **not met** (4.0x)"), "{md}");
        assert!(
            md.contains("| VM churn (QEMU TCG) | 15.0 VMs/min, leftovers: SOME |"),
            "{md}"
        );
        assert!(md.contains("2023-11-14 22:13 UTC"), "{md}");
        assert!(md.contains("boots with `tsc=reliable` added"), "{md}");
        assert!(
            md.contains("- systemd boot 2: attempt 1 failed and was retried: hung"),
            "{md}"
        );
    }

    #[test]
    fn webhook_section_and_memory_lines_render() {
        let mut r = results();
        r.webhook = Some(Webhook::Measured(Box::new(webhook(true))));
        let md = render(&r);
        for want in [
            "## 3. Webhook ingestion (loopback, host, no VM)",
            "| kiln serve: requests/s | 9000 | 10000 | 11000 |",
            "| ceiling: requests/s | 25000 | 30000 | 35000 |",
            "| kiln serve: p99 ms | 1.50 | 2.00 | 2.50 |",
            "| ceiling: p99 ms | 0.50 | 0.60 | 0.70 |",
            "Ceiling / `kiln serve` (medians): **3.00x** in requests/s",
            "| Webhook ingestion, 32 connections (loopback, host, no VM) | 10000 req/s | ceiling 30000 req/s | 3.00x |",
            "| Webhook p99 at 1000 req/s (loopback, host, no VM) | 2.00 ms | ceiling 0.60 ms | 0.30x |",
            "- kiln serve's throughput against the ceiling's — within 2x: **not met** (3.00x)",
            "Verified: **yes**",
            "52000 `job queued` lines",
            "- kiln serve things",
            // No memory benchmark ran: kiln serve's memory gets a section of its own.
            "## 5. Memory (`kiln serve`: host, no VM)",
            "| `kiln serve` RSS idle, after start-up (host, no VM) | 6000 KiB | 6000 KiB | 6000 KiB |",
            "| `kiln serve`: added per queued job (incl. its de-duplication entries) | 512 B | 512 B | 512 B |",
        ] {
            assert!(md.contains(want), "{want} missing:\n{md}");
        }
        assert!(!md.contains("not yet: needs kiln serve"), "{md}");
        // Sections stay in order.
        let at = |h: &str| md.find(h).unwrap_or(usize::MAX);
        assert!(at("## 2. Per-VM disk") < at("## 3. Webhook"), "{md}");
        assert!(at("## 3. Webhook") < at("## 4. VM churn"), "{md}");
        assert!(at("## 4. VM churn") < at("## 5. Memory"), "{md}");

        // A failed check is called out, with what else came back.
        r.webhook = Some(Webhook::Measured(Box::new(webhook(false))));
        let md = render(&r);
        assert!(md.contains("Verified: **NO**"), "{md}");
        assert!(md.contains("others: 3x `503 queue full`"), "{md}");
        assert!(
            md.contains("- run 1, Throughput, kiln serve: 3x 503 queue full"),
            "{md}"
        );
    }

    fn memory(serve: Option<ServeVmMemory>) -> MemoryResults {
        MemoryResults {
            kiln_init_rss_kib: stat(&[600.0]),
            kiln_init_hwm_kib: stat(&[640.0]),
            kiln_init_bytes: 600_000,
            kiln_init_stripped: true,
            systemd_rss_kib: None,
            kiln_run_rss_kib: Some(stat(&[4300.0])),
            in_process_idle_rss_kib: stat(&[13_000.0]),
            in_process_busy_rss_kib: stat(&[13_100.0]),
            in_process_vms: 2,
            in_process_per_vm_kib: stat(&[50.0]),
            qemu_rss_kib: stat(&[250_000.0]),
            vhost_rss_kib: stat(&[3800.0]),
            guest_memory_mib: 1024,
            serve,
            incidents: vec![],
        }
    }

    fn serve_vms(verified: bool) -> ServeVmMemory {
        ServeVmMemory {
            vms: 2,
            vcpus: 1,
            memory_mib: 1024,
            hold_s: 20,
            idle_rss_kib: stat(&[9000.0, 9200.0, 9100.0]),
            one_vm_rss_kib: stat(&[12_000.0, 12_400.0, 12_200.0]),
            vms_rss_kib: stat(&[12_300.0, 12_700.0, 12_500.0]),
            per_vm_kib: stat(&[1650.0, 1750.0, 1700.0]),
            after_rss_kib: stat(&[12_100.0, 12_300.0, 12_200.0]),
            qemu_rss_kib: stat(&[500_000.0, 520_000.0, 510_000.0]),
            vhost_rss_kib: stat(&[7600.0, 7800.0, 7700.0]),
            check: ServeVmCheck {
                jobs: 6,
                ready_with_jit: 6,
                jobs_done: if verified { 6 } else { 5 },
                jobs_not_done: if verified { 0 } else { 1 },
                jit_requests: 6,
                runners_deleted: 6,
                runners_left: 0,
                left_behind: if verified {
                    vec![]
                } else {
                    vec!["file: /tmp/kiln-bench-1/serve/cids/7".into()]
                },
                verified,
            },
        }
    }

    #[test]
    fn serve_memory_joins_the_memory_section() {
        let mut r = results();
        r.webhook = Some(Webhook::Measured(Box::new(webhook(true))));
        r.memory = Some(memory(None));
        let md = render(&r);
        assert!(md.contains("## 5. Memory (QEMU TCG)"), "{md}");
        assert!(!md.contains("## 5. Memory (`kiln serve`"), "{md}");
        assert!(
            md.contains("| `kiln serve` RSS with 52000 jobs queued (host, no VM) | 31.2 MiB |"),
            "{md}"
        );
        // Without the running-VM figures (`--no-kiln-run`), the note says so.
        assert!(
            md.contains("Its RSS with VMs running was not measured in this run"),
            "{md}"
        );
        assert!(!md.contains("not measured as such"), "{md}");
        assert!(!md.contains("`kiln serve` RSS with 1 VM running"), "{md}");
        assert!(!md.contains("added per running VM ("), "{md}");
        assert!(
            md.contains("| VM layer in one process: added per running VM | 50 KiB |"),
            "{md}"
        );
        // `--only webhook`: the memory benchmark is named as where they are.
        r.memory = None;
        let md = render(&r);
        assert!(
            md.contains("## 5. Memory (`kiln serve`: host, no VM)"),
            "{md}"
        );
        assert!(
            md.contains("measured by the memory benchmark, which did not run here"),
            "{md}"
        );
    }

    #[test]
    fn serve_with_vms_renders_its_figures_and_check() {
        let mut r = results();
        r.webhook = Some(Webhook::Measured(Box::new(webhook(true))));
        r.memory = Some(memory(Some(serve_vms(true))));
        let md = render(&r);
        for want in [
            "| `kiln serve` RSS idle, before any job | 9000 KiB | 9100 KiB | 9200 KiB |",
            "| `kiln serve` RSS with 1 VM running a job | 11.7 MiB | 11.9 MiB | 12.1 MiB |",
            "| `kiln serve` RSS with 2 VMs running jobs | 12.0 MiB | 12.2 MiB | 12.4 MiB |",
            "| `kiln serve`: added per running VM ((2 VMs - idle) / 2) | 1650 KiB | 1700 KiB | 1750 KiB |",
            "| `kiln serve` RSS after the jobs ended | 11.8 MiB | 11.9 MiB | 12.0 MiB |",
            "| for scale: its 2 QEMUs together (1 vCPU, 1024 MiB guest each) | 488.3 MiB | 498.0 MiB | 507.8 MiB |",
            "| for scale: its 2 vhost-device-vsock together | 7600 KiB | 7700 KiB | 7800 KiB |",
            // The summary row.
            "| `kiln serve` RSS idle / added per running VM (QEMU TCG) | 9100 KiB / 1700 KiB | — | — |",
            "room for exactly 2 VMs of 1 vCPU and 1024 MiB",
            "holds the VM 20 s",
            "6 jobs sent; 6 stand-ins reported ready with a JIT config; 6 jobs ended `job done`, 0 otherwise; \
             the fake GitHub got 6 JIT requests, 6 runners were deleted and 0 left registered",
            "scratch disks): nothing. Verified: **yes**.",
            "Its RSS with VMs running is the `kiln serve` rows above.",
        ] {
            assert!(md.contains(want), "{want} missing:\n{md}");
        }
        assert!(!md.contains("not measured"), "{md}");
        // Its rows come before the webhook's queued-job rows, in one table.
        let at = |h: &str| md.find(h).unwrap_or(usize::MAX);
        assert!(
            at("| `kiln serve` RSS idle, before any job") < at("jobs queued (host, no VM)"),
            "{md}"
        );

        // A run that was not clean says so, and what was left.
        r.memory = Some(memory(Some(serve_vms(false))));
        let md = render(&r);
        assert!(md.contains("5 jobs ended `job done`, 1 otherwise"), "{md}");
        assert!(
            md.contains("scratch disks): 1 item(s): file: /tmp/kiln-bench-1/serve/cids/7. Verified: **NO**."),
            "{md}"
        );
    }

    #[test]
    fn memory_results_from_before_kiln_serve_with_vms_still_parse() {
        let mut r = results();
        r.memory = Some(memory(Some(serve_vms(true))));
        let text = serde_json::to_string(&r).expect("json");
        let back: Results = serde_json::from_str(&text).expect("parse");
        assert_eq!(render(&back), render(&r));
        let mut v = serde_json::to_value(&r).expect("json");
        if let Some(m) = v["memory"].as_object_mut() {
            m.remove("serve");
        }
        let old: Results = serde_json::from_value(v).expect("an older file parses");
        let old_memory = old.memory.expect("memory");
        assert!(old_memory.serve.is_none());
        assert_eq!(old_memory.in_process_vms, 2);
    }

    #[test]
    fn runs_without_vms_or_webhook_render() {
        // `--only webhook`: no backend, no VM sections.
        let mut r = results();
        r.backend = None;
        r.boot = None;
        r.disk = None;
        r.churn = None;
        r.webhook = Some(Webhook::Measured(Box::new(webhook(true))));
        let md = render(&r);
        assert!(!md.contains("Every VM figure here is"), "{md}");
        assert!(!md.contains("- Guest:"), "{md}");
        assert!(!md.contains("Guest phases come from"), "{md}");
        assert!(
            md.contains("## 3. Webhook ingestion (loopback, host, no VM)"),
            "{md}"
        );
        // `--only boot`: no webhook section at all.
        let mut r = results();
        r.webhook = None;
        let md = render(&r);
        assert!(!md.contains("## 3."), "{md}");
        assert!(!md.contains("Webhook"), "{md}");
        assert!(md.contains("Every VM figure here is QEMU TCG"), "{md}");
    }

    #[test]
    fn results_json_from_before_kiln_serve_still_renders() {
        // Schema 1: `backend` always there, `webhook` the pending note.
        let mut v = serde_json::to_value(results()).expect("json");
        v["schema"] = serde_json::json!(1);
        v["webhook"] = serde_json::json!({
            "status": "not yet: needs kiln serve",
            "reason": "**Not measured yet:** `kiln serve` has not landed."
        });
        let old: Results = serde_json::from_value(v.clone()).expect("old file parses");
        assert!(matches!(old.webhook, Some(Webhook::Pending(_))));
        assert!(old.backend.is_some());
        let md = render(&old);
        assert!(
            md.contains("## 3. Webhook ingestion — not yet: needs kiln serve"),
            "{md}"
        );
        assert!(md.contains("**Not measured yet:**"), "{md}");
        assert!(
            md.contains("| Webhook ingestion | not yet: needs kiln serve | — | — |"),
            "{md}"
        );
        // A file with neither key parses too.
        if let Some(o) = v.as_object_mut() {
            o.remove("webhook");
            o.remove("backend");
        }
        let bare: Results = serde_json::from_value(v).expect("parses");
        assert!(bare.webhook.is_none() && bare.backend.is_none());
    }

    #[test]
    fn measured_webhook_round_trips_through_json() {
        let mut r = results();
        r.webhook = Some(Webhook::Measured(Box::new(webhook(true))));
        let text = serde_json::to_string(&r).expect("json");
        let back: Results = serde_json::from_str(&text).expect("parse");
        assert!(matches!(back.webhook, Some(Webhook::Measured(_))));
        assert_eq!(render(&back), render(&r));
    }

    fn network() -> NetworkResults {
        let phase = |name: &str, v: &[f64]| NetPhase {
            name: name.into(),
            what: format!("{name} call"),
            stat: stat(v),
            p90: v.iter().copied().fold(0.0, f64::max),
            first_median: v[0],
            last_median: v[v.len() - 1],
        };
        let churn = NetChurn {
            vms: 200,
            window: 20,
            covers: vec!["set-up: a namespace".into()],
            phases: vec![
                phase("set-up", &[8.0, 9.0, 10.0]),
                phase("teardown", &[2.0, 2.5, 3.0]),
                phase("set-up + teardown", &[10.0, 11.5, 13.0]),
            ],
            leftovers: vec![],
            others_ignored: 2,
        };
        let mut on = path("network on");
        on.prepare = stat(&[45.0]);
        on.total = stat(&[2600.0]);
        let mut off = path("network off");
        off.prepare = stat(&[30.0]);
        NetworkResults {
            setup: vec!["a namespace standing in for the host".into()],
            targets: super::super::network::targets(&churn),
            churn,
            boot: Some(NetBoot {
                kernel: "Debian's cloud kernel 6.1.0-test (modular)".into(),
                off,
                on,
                off_request_to_runner: stat(&[2530.0]),
                on_request_to_runner: stat(&[2645.0]),
                off_teardown: stat(&[20.0]),
                on_teardown: stat(&[24.0]),
                incidents: vec![],
            }),
        }
    }

    #[test]
    fn network_section_renders_churn_boots_and_targets() {
        let mut r = results();
        r.network = Some(network());
        let md = render(&r);
        for want in [
            "## 6. VM network (host side; boots: QEMU TCG)",
            "- a namespace standing in for the host",
            "| Per VM, 200 in a row (host, no VM) | covers | median ms | p90 ms | max ms | first 20 median ms | last 20 median ms |",
            "| set-up + teardown | set-up + teardown call | 11.5 | 13.0 | 13.0 | 10.0 | 13.0 |",
            "(the per-VM disk, webhook ingestion, the VM network's set-up and teardown) are labelled",
            "Left in the namespace afterwards",
            "): nothing (2 `kiln-` namespace(s) of other Kiln processes",
            "### Boot to runner with the network on and off (QEMU TCG)",
            "| before VMM start | VM directory, CID, scratch disk; with the network: its set-up | 30.0 | 45.0 | +15.0 |",
            "| kernel | kernel start | 1550 | 1550 | +0.0 |",
            "| **VMM start to runner exec** |",
            "| **request to runner exec** | before VMM start + VMM start to runner exec, per run | 2530 | 2645 | +115.0 |",
            "| teardown | the VMM's exit to the VM's files (and network) removed | 20.0 | 24.0 | +4.0 |",
            // The summary's rows and targets.
            "| VM network set-up + teardown per VM, 200 in a row (host, no VM) | 11.5 ms (p90 13.0 ms) | — | — |",
            "| Boot: request to runner exec with the network on (QEMU TCG) | 2645 ms | network off 2530 ms | 0.96x |",
            "- VM network set-up + teardown per VM (host side, no VM) — under 20 ms on the 2-core machine: **met**",
            "- no growth over 200 VMs in a row — the last 20 VMs' median within 1.2x the first 20's, nothing left behind: **not met** (10.0 ms -> 13.0 ms (1.30x); left behind: nothing)",
        ] {
            assert!(md.contains(want), "{want} missing:\n{md}");
        }
        let at = |h: &str| md.find(h).unwrap_or(usize::MAX);
        assert!(at("## 4. VM churn") < at("## 6. VM network"), "{md}");
        // Round trip, and files from before the network benchmark.
        let text = serde_json::to_string(&r).expect("json");
        let back: Results = serde_json::from_str(&text).expect("parse");
        assert_eq!(render(&back), md);
        let mut v = serde_json::to_value(&r).expect("json");
        if let Some(o) = v.as_object_mut() {
            o.remove("network");
        }
        let old: Results = serde_json::from_value(v).expect("an older file parses");
        assert!(old.network.is_none());
        assert!(!render(&old).contains("## 6."));
        // Without boots (no VM), the churn alone.
        r.network.as_mut().expect("network").boot = None;
        let md = render(&r);
        assert!(!md.contains("### Boot to runner with the network"), "{md}");
        assert!(!md.contains("with the network on ("), "{md}");
    }

    #[test]
    fn results_round_trip_through_json() {
        let r = results();
        let text = serde_json::to_string_pretty(&r).expect("json");
        let back: Results = serde_json::from_str(&text).expect("parse");
        assert_eq!(render(&back), render(&r));
    }
    fn source(name: &str, before: &[f64], total: &[f64]) -> SourcePath {
        SourcePath {
            name: name.into(),
            includes: vec![format!("{name} does this")],
            phases: vec![Figure {
                name: "queued → VM starting".into(),
                what: "JIT config, VM directory".into(),
                stat: stat(before),
            }],
            before_vm: stat(before),
            boot: stat(&[4000.0]),
            total: stat(total),
        }
    }

    #[test]
    fn scale_set_section_renders_both_paths_ratios_and_check() {
        use super::super::results::ScaleSetCheck;
        let mut r = results();
        let webhook = source("webhook", &[30.0, 40.0, 50.0], &[4040.0]);
        let scale_set = source("scale set", &[10.0, 20.0, 90.0], &[4020.0]);
        r.scale_set = Some(ScaleSetResults {
            ratios: super::super::scaleset::ratios(&webhook, &scale_set),
            webhook,
            scale_set,
            runs: 3,
            vcpus: 1,
            memory_mib: 1024,
            check: ScaleSetCheck {
                jobs: 6,
                jobs_done: 6,
                ready_with_jit: 6,
                broker_ran_each_once: true,
                left_behind: vec![],
                verified: true,
            },
            separate_run: None,
        });
        let md = render(&r);
        for want in [
            "## 7. Job sources: scale-set queue beside webhooks (QEMU TCG)",
            "| webhook path (QEMU TCG) | covers | min ms | median ms | max ms |",
            "| queued → VM starting | JIT config, VM directory | 10.0 | 20.0 | 90.0 |",
            "| **handed over → VM starting** | Kiln's share before the VM, per run | 30.0 | 40.0 | 50.0 |",
            "| handed over → VM starting | 40.0 | 20.0 | **0.50x** |",
            "| Job handed over → VM starting, scale-set queue (fake broker on loopback; webhook as baseline) | 20.0 ms | webhook 40.0 ms | 2.00x |",
            "| Job handed over → runner exec, scale-set queue (QEMU TCG) | 4020 ms | webhook 4040 ms | 1.00x |",
            "- scale set does this",
            "3 job(s) per path, alternating",
            "Verified: **yes**",
        ] {
            assert!(md.contains(want), "{want} missing:\n{md}");
        }
        let at = |h: &str| md.find(h).unwrap_or(usize::MAX);
        assert!(at("## 4. VM churn") < at("## 7. Job sources"), "{md}");
        let text = serde_json::to_string(&r).expect("json");
        let back: Results = serde_json::from_str(&text).expect("parse");
        assert_eq!(render(&back), md);
        // Files from before it: no section.
        let mut v = serde_json::to_value(&r).expect("json");
        if let Some(o) = v.as_object_mut() {
            o.remove("scale_set");
        }
        let old: Results = serde_json::from_value(v).expect("an older file parses");
        assert!(!render(&old).contains("## 7."));
        assert!(!md.contains("Measured in a run of its own"), "{md}");
        r.scale_set.as_mut().expect("set").separate_run = Some("`x` on a date".into());
        assert!(render(&r).contains("Measured in a run of its own: `x` on a date."));
        // A failed check shows.
        let c = &mut r.scale_set.as_mut().expect("set").check;
        c.verified = false;
        c.left_behind = vec!["file: /tmp/x/disks/a.ext4".into()];
        let md = render(&r);
        assert!(md.contains("Verified: **NO**"), "{md}");
        assert!(md.contains("file: /tmp/x/disks/a.ext4"), "{md}");
    }
}
