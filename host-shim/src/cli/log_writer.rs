//! The daemon's log writer: log lines are appended to a shared buffer
//! (no system call on the logging thread), and a thread of its own writes
//! them out in batches.
//!
//! A webhook handler logs a line per queued job. Handing each line to a
//! writer thread that sleeps between lines costs a wake-up (a futex call
//! and two context switches) and a write(2) per line: about a fifth of
//! `kiln serve`'s CPU per delivery under load. Here the writer thread is
//! woken only when the buffer goes from empty to not empty, then lets a
//! burst gather for [`BATCH_WINDOW`] before one write(2). Nothing is
//! dropped: a logging thread waits while [`MAX_BUFFERED`] bytes are
//! pending, and the [`FlushGuard`] writes what is left at exit.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// How long a burst of lines may gather before it is written: short
/// enough that a person tailing the log sees no delay.
pub const BATCH_WINDOW: Duration = Duration::from_millis(5);

/// Pending bytes beyond which logging threads wait for the writer.
pub const MAX_BUFFERED: usize = 1 << 20;

/// The [`MakeWriter`] the fmt layer logs through.
#[derive(Clone)]
pub struct BatchedWriter {
    shared: Arc<Shared>,
}

/// Ends the writer thread when dropped, after it has written every line.
pub struct FlushGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    /// The buffer is no longer empty, or the guard was dropped.
    filled: Condvar,
    /// The buffer was taken: logging threads may append again.
    drained: Condvar,
}

#[derive(Default)]
struct State {
    pending: Vec<u8>,
    closed: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A thread that panicked while appending leaves whole lines or a
        // cut one; the log is still worth writing.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Starts the writer thread, writing to `out`.
pub fn batched<W: Write + Send + 'static>(out: W) -> std::io::Result<(BatchedWriter, FlushGuard)> {
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        filled: Condvar::new(),
        drained: Condvar::new(),
    });
    let s = Arc::clone(&shared);
    let thread = std::thread::Builder::new()
        .name("kiln-log".into())
        .spawn(move || write_batches(&s, out))?;
    Ok((
        BatchedWriter {
            shared: Arc::clone(&shared),
        },
        FlushGuard {
            shared,
            thread: Some(thread),
        },
    ))
}

fn write_batches<W: Write>(shared: &Shared, mut out: W) {
    let mut batch = Vec::new();
    loop {
        let mut st = shared.lock();
        while st.pending.is_empty() && !st.closed {
            st = shared.filled.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        if !st.closed {
            // Let the rest of the burst arrive: it will not wake us.
            drop(st);
            std::thread::sleep(BATCH_WINDOW);
            st = shared.lock();
        }
        let closed = st.closed;
        std::mem::swap(&mut batch, &mut st.pending);
        drop(st);
        shared.drained.notify_all();
        // Nowhere to report a failed log write: it is dropped, as stderr
        // writes are elsewhere.
        let _ = out.write_all(&batch).and_then(|()| out.flush());
        batch.clear();
        if closed && shared.lock().pending.is_empty() {
            return;
        }
    }
}

impl Write for BatchedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let shared = &self.shared;
        let mut st = shared.lock();
        while st.pending.len() >= MAX_BUFFERED && !st.closed {
            st = shared.drained.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        let was_empty = st.pending.is_empty();
        st.pending.extend_from_slice(buf);
        drop(st);
        if was_empty {
            shared.filled.notify_one();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BatchedWriter {
    type Writer = BatchedWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.filled.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// Records every write(2)-like call it gets.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_arrives_in_order_in_few_writes() {
        let sink = Sink::default();
        let (writer, guard) = batched(sink.clone()).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let mut w = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..2000 {
                        w.write_all(format!("t{t} line {i}\n").as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(guard);
        let writes = sink.0.lock().unwrap();
        let text = String::from_utf8(writes.concat()).unwrap();
        assert_eq!(text.lines().count(), 8000);
        for t in 0..4 {
            let mine: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with(&format!("t{t} ")))
                .collect();
            let want: Vec<String> = (0..2000).map(|i| format!("t{t} line {i}")).collect();
            assert_eq!(mine, want, "thread {t}'s lines out of order or lost");
        }
        assert!(
            writes.len() < 800,
            "{} writes for 8000 lines: not batched",
            writes.len()
        );
    }

    #[test]
    fn a_lone_line_is_written_within_the_window_and_at_exit() {
        let sink = Sink::default();
        let (mut writer, guard) = batched(sink.clone()).unwrap();
        writer.write_all(b"one\n").unwrap();
        let until = Instant::now() + Duration::from_secs(5);
        while sink.0.lock().unwrap().is_empty() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(sink.0.lock().unwrap().concat(), b"one\n");
        // Written just before the guard goes: still written.
        writer.write_all(b"two\n").unwrap();
        drop(guard);
        assert_eq!(sink.0.lock().unwrap().concat(), b"one\ntwo\n");
    }

    #[test]
    fn a_full_buffer_makes_loggers_wait_not_drop() {
        /// Slow to write, so the buffer fills up.
        struct Slow(Sink);
        impl Write for Slow {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                std::thread::sleep(Duration::from_millis(20));
                self.0.write(buf)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::default();
        let (mut writer, guard) = batched(Slow(sink.clone())).unwrap();
        let line = vec![b'x'; 64 * 1024];
        for _ in 0..40 {
            writer.write_all(&line).unwrap();
        }
        drop(guard);
        let total: usize = sink.0.lock().unwrap().iter().map(Vec::len).sum();
        assert_eq!(total, 40 * 64 * 1024);
    }
}
