//! BENCHMARKS.md, rendered from [`Results`] alone (so the JSON file can be
//! rendered again).

use std::fmt::Write;

use super::results::{BootPath, Counts, Figure, Results, Target};
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

fn phase_table(out: &mut String, p: &BootPath, label: &str) {
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
    let _ = writeln!(
        out,
        "| PID 1's share without modules | the same, module loading taken out | {} |",
        ms_row(&p.init_share_without_modules)
    );
    let _ = writeln!(
        out,
        "| (before VMM start) | VM directory, CID, scratch disk: not in the total | {} |",
        ms_row(&p.prepare)
    );
    out.push('\n');
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
    let label = &r.backend.label;
    let _ = writeln!(o, "## Summary\n");
    let _ = writeln!(
        o,
        "| Figure (medians) | Kiln | Baseline | Baseline / Kiln |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|");
    if let Some(b) = &r.boot {
        let _ = writeln!(
            o,
            "| Boot: VMM start to runner exec ({label}) | {} ms | systemd {} ms | {:.1}x |",
            ms(b.kiln.total.median),
            ms(b.systemd.total.median),
            b.systemd.total.median / b.kiln.total.median
        );
        let _ = writeln!(
            o,
            "| Boot: PID 1's share, no host wait ({label}) | {} ms | systemd {} ms | {:.1}x |",
            ms(b.kiln.init_share.median),
            ms(b.systemd.init_share.median),
            b.systemd.init_share.median / b.kiln.init_share.median
        );
        let _ = writeln!(
            o,
            "| Boot: the same without module loading ({label}) | {} ms | systemd {} ms | {:.1}x |",
            ms(b.kiln.init_share_without_modules.median),
            ms(b.systemd.init_share_without_modules.median),
            b.systemd.init_share_without_modules.median / b.kiln.init_share_without_modules.median
        );
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
    }
    let _ = writeln!(o, "| Webhook ingestion | {} | — | — |\n", r.webhook.status);
    let targets: Vec<&Target> = [
        r.boot.as_ref().map(|b| b.targets.as_slice()),
        r.disk.as_ref().map(|d| d.targets.as_slice()),
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

pub fn render(r: &Results) -> String {
    let label = &r.backend.label;
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
    let _ = writeln!(
        o,
        "**Every figure here is {label}** ({} {}, `-M {}`, {} vCPU, {} MiB guest): {}. \
         TCG emulates every guest instruction, so guest-side times are many times what \
         they are under KVM; read the ratios, not the absolute guest times, as the result.\n",
        r.backend.vmm,
        r.backend.accel,
        r.backend.machine,
        r.backend.vcpus,
        r.backend.memory_mib,
        r.backend.accel_reason
    );

    summary(&mut o, r);
    let _ = writeln!(o, "## Method\n");
    let _ = writeln!(
        o,
        "- Each benchmark runs beside its baseline in the same invocation, {} run(s) each, \
         reported as min / median / max. VM benchmarks alternate the two paths run by run \
         after one discarded warm-up of each, so both see the same host.",
        r.runs
    );
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
    if !r.backend.extra_kernel_args.is_empty() {
        let _ = writeln!(
            o,
            "- Every guest, on every path, boots with `{}` added to the command line kiln \
             gives it: under TCG on `microvm` the kernel otherwise finds no clocksource but \
             jiffies (the TSC fails its stability check; there is no HPET, ACPI PM timer or \
             kvmclock) and every `CLOCK_BOOTTIME` stamp moves in 4 ms steps. TCG's TSC follows \
             the host's clock.",
            r.backend.extra_kernel_args.join(" ")
        );
    }
    let m = &r.machine;
    let _ = writeln!(
        o,
        "- Machine: {} CPUs ({}), {:.1} GiB RAM, {}, host kernel {}; {}; vhost-device-vsock: {}; \
         disks on {}.",
        m.nproc, m.cpu_model, m.memory_gib, m.os, m.kernel, m.qemu, m.vhost_device_vsock, m.disk_fs
    );
    let _ = writeln!(
        o,
        "- Guest: Debian's cloud kernel {} (modular: virtio, vsock, virtio_blk and overlay load \
         as modules in both paths), the bench image (the real recipe plus systemd, \
         rootfs/bench-systemd/).",
        r.backend.guest_kernel
    );
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
            "Same kernel, QEMU, kernel command line, base image, fresh 20 GiB sparse scratch \
             disk and module set on both paths; the same probe as the runner.\n"
        );
        for p in [&b.kiln, &b.systemd] {
            let _ = writeln!(o, "**{}** path includes:\n", p.name);
            for i in &p.includes {
                let _ = writeln!(o, "- {i}");
            }
            o.push('\n');
        }
        phase_table(&mut o, &b.kiln, label);
        phase_table(&mut o, &b.systemd, label);
        let _ = writeln!(
            o,
            "| Comparison ({label}, medians) | kiln-init ms | systemd ms | systemd / kiln-init |"
        );
        let _ = writeln!(o, "|---|---:|---:|---:|");
        for ra in &b.ratios {
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
        let kiln_total = b.kiln.total.median;
        let mut biggest: Vec<&Figure> = b.kiln.phases.iter().collect();
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
        targets_table(&mut o, &b.targets);
        incidents(&mut o, &b.incidents);
    }

    if let Some(d) = &r.disk {
        let _ = writeln!(o, "## 2. Per-VM disk (host side)\n");
        let _ = writeln!(
            o,
            "Kiln gives each VM a fresh sparse scratch disk with an empty ext4 \
             (`kiln::disk::create_scratch`) and attaches the shared base image read-only; the \
             naive way copies an image per VM. Images: {}. No VM runs here: these are the \
             host's filesystem ({}) and the same for every backend (the disks serve {label} here).\n",
            d.image_what, r.machine.disk_fs
        );
        let _ = writeln!(o, "| Per-VM disk | how | min ms | median ms | max ms |");
        let _ = writeln!(o, "|---|---|---:|---:|---:|");
        let groups = [
            ("Kiln", &d.kiln),
            ("naive", &d.naive),
            ("alternative", &d.alternatives),
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

    let _ = writeln!(o, "## 3. Webhook ingestion — {}\n", r.webhook.status);
    let _ = writeln!(o, "{}\n", r.webhook.reason);

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
             the host's tun/tap devices (the VM layer attaches no network yet, so 0 is expected \
             until `net` lands); the runtime dir holds VM directories, sockets and CID leases.\n",
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
        let _ = writeln!(
            o,
            "\nkiln-init on disk: {} bytes ({:.0} KiB), {}. `kiln serve` does not exist yet: the \
             host side is measured as the `kiln run` process (one VM, whole process) and as the \
             VM layer inside the bench process, idle and with {} VMs (what a daemon embedding it \
             adds per VM). The in-process figure is this process's RSS, so allocator slack counts.\n",
            mem.kiln_init_bytes,
            mem.kiln_init_bytes as f64 / 1024.0,
            if mem.kiln_init_stripped {
                "stripped (no symbol table)"
            } else {
                "NOT stripped"
            },
            mem.in_process_vms
        );
        incidents(&mut o, &mem.incidents);
    }
    o
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
            backend: BackendInfo {
                label: "QEMU TCG".into(),
                vmm: "QEMU".into(),
                accel: "TCG".into(),
                machine: "microvm".into(),
                accel_reason: "KVM cannot run guests here".into(),
                vcpus: 2,
                memory_mib: 1024,
                guest_kernel: "6.1.0-56-cloud-amd64".into(),
                extra_kernel_args: vec!["tsc=reliable".into()],
            },
            load: vec![LoadSample {
                during: "boot".into(),
                load1_before: 3.5,
                others_cpu_pct: 35.0,
                bench_cpu_pct: 60.0,
            }],
            boot: Some(BootResults {
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
            webhook: Pending {
                status: "not yet: needs kiln serve".into(),
                reason: "no server".into(),
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
            md.contains("| alternative: template copy | cp | 4.00 |"),
            "{md}"
        );
        assert!(!md.contains("## 5. Memory"), "{md}");
        assert!(
            md.contains(
                "| Boot: VMM start to runner exec (QEMU TCG) | 2500 ms | systemd 2500 ms | 1.0x |"
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
    fn results_round_trip_through_json() {
        let r = results();
        let text = serde_json::to_string_pretty(&r).expect("json");
        let back: Results = serde_json::from_str(&text).expect("parse");
        assert_eq!(render(&back), render(&r));
    }
}
