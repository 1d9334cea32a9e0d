//! Expedited RCU grace periods while PID 1 boots the VM.
//!
//! The kernel expedites grace periods during its own boot and stops just
//! before it runs init. kiln-init's boot then waits for several normal
//! ones — moving PID 1 into its cgroup, switching cgroup2 to favour
//! dynamic moves, bringing `lo` up, module registrations — each costing a
//! few scheduler ticks (tens of ms under emulation). kiln-init keeps them
//! expedited until the runner has started, then gives the job the
//! kernel's normal mode, as the kernel does for its own boot.

const KNOB: &str = "/sys/kernel/rcu_expedited";

/// Best effort: a kernel without the knob (Tiny RCU) just boots slower.
pub fn expedite(on: bool) {
    let _ = std::fs::write(KNOB, if on { "1" } else { "0" });
}
