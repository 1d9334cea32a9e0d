//! SIGINT, SIGTERM and SIGHUP during `kiln run`: the first cancels the job
//! (the guest gets its grace period), the next kills the VM. Either way the
//! VM is torn down before kiln exits.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};
use tokio::task::JoinHandle;

use crate::vm::{StopHandle, StopLevel};

/// Which signal arrived first (0: none), for the exit code.
#[derive(Debug, Clone, Default)]
pub struct FirstSignal(Arc<AtomicI32>);

impl FirstSignal {
    pub fn get(&self) -> Option<i32> {
        match self.0.load(Ordering::SeqCst) {
            0 => None,
            n => Some(n),
        }
    }
}

/// Installs the handlers (from now on these signals no longer end kiln by
/// themselves) and escalates `stop` on each.
pub fn watch(stop: StopHandle) -> std::io::Result<(JoinHandle<()>, FirstSignal)> {
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    let first = FirstSignal::default();
    let seen = first.clone();
    let task = tokio::spawn(async move {
        loop {
            let (name, number) = tokio::select! {
                _ = int.recv() => ("SIGINT", libc::SIGINT),
                _ = term.recv() => ("SIGTERM", libc::SIGTERM),
                _ = hup.recv() => ("SIGHUP", libc::SIGHUP),
            };
            let _ = seen
                .0
                .compare_exchange(0, number, Ordering::SeqCst, Ordering::SeqCst);
            match stop.escalate() {
                StopLevel::Cancel => eprintln!(
                    "kiln: {name}: cancelling the job (send it again to kill the VM at once)"
                ),
                _ => eprintln!("kiln: {name}: killing the VM"),
            }
        }
    });
    Ok((task, first))
}
