//! SIGINT and SIGTERM for `kiln serve`: the first stops taking webhooks and
//! starting jobs, and waits for the running ones; the next cancels those
//! (their VMs are torn down) so kiln can exit.

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// How many shutdown signals have arrived.
#[derive(Debug, Clone)]
pub struct Signals(watch::Receiver<u32>);

impl Signals {
    /// Installs the handlers; from now on these signals no longer end kiln
    /// by themselves.
    pub fn install() -> std::io::Result<Self> {
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        let (tx, rx) = watch::channel(0u32);
        tokio::spawn(async move {
            loop {
                let name = tokio::select! {
                    _ = int.recv() => "SIGINT",
                    _ = term.recv() => "SIGTERM",
                };
                tracing::info!(signal = name, "shutdown signal");
                tx.send_modify(|n| *n += 1);
            }
        });
        Ok(Self(rx))
    }

    /// Resolves once `n` signals have arrived in total.
    pub async fn count(mut self, n: u32) {
        // An Err means the watcher task is gone (runtime shutting down):
        // then nothing more will arrive; stop waiting.
        let _ = self.0.wait_for(|&seen| seen >= n).await;
    }
}
