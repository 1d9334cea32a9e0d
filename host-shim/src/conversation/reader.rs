//! Reads the guest's messages after the job was sent and checks each one
//! against what may come next: `RunnerStarted` once, then `Output` (never
//! empty), then `RunnerExited`; `Error` at any time. Frames are read at
//! most [`Limits::max_frames_per_sec`] a second ([`Pace`]). Stops at the
//! last event, at the first violation, or when the consumer goes away.

use kiln_protocol::tokio_codec::read_message;
use kiln_protocol::{FrameError, GuestError, GuestMessage, MAX_OUTPUT_CHUNK};
use tokio::io::AsyncRead;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::pace::Pace;
use super::summary::{bound_phases, bound_text};
use super::{ConversationError, Event, Limits};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Job sent; the runner has not started.
    Sent,
    Running,
}

pub(super) async fn run<R: AsyncRead + Unpin>(
    mut read: R,
    tx: mpsc::Sender<Result<Event, ConversationError>>,
    limits: Limits,
) {
    let mut pace = Pace::new(limits.max_frames_per_sec, Instant::now());
    let mut check = Checker::new(limits);
    loop {
        // Waiting here leaves the guest's frames in the socket: it is
        // slowed down, not refused.
        tokio::time::sleep_until(pace.admit(Instant::now())).await;
        let msg = match read_message::<_, GuestMessage>(&mut read).await {
            Ok(m) => m,
            Err(FrameError::Closed) => {
                let _ = tx.send(Err(ConversationError::Closed)).await;
                return;
            }
            Err(e) => {
                let _ = tx.send(Err(ConversationError::Frame(e))).await;
                return;
            }
        };
        let checked = check.next(msg);
        let stop = match &checked {
            Ok(ev) => ev.is_last(),
            Err(_) => true,
        };
        if tx.send(checked).await.is_err() || stop {
            return;
        }
    }
}

struct Checker {
    state: State,
    output: u64,
    limits: Limits,
}

impl Checker {
    fn new(limits: Limits) -> Checker {
        Checker {
            state: State::Sent,
            output: 0,
            limits,
        }
    }

    fn next(&mut self, msg: GuestMessage) -> Result<Event, ConversationError> {
        let violation = |what: &str| Err(ConversationError::Protocol(what.to_owned()));
        match (self.state, msg) {
            (_, GuestMessage::Hello(_)) => violation("a second Hello"),
            (_, GuestMessage::Error(e)) => Ok(Event::GuestError(GuestError {
                what: bound_text(e.what, self.limits.max_text),
                detail: bound_text(e.detail, self.limits.max_text),
            })),
            (State::Sent, GuestMessage::RunnerStarted(mut s)) => {
                self.state = State::Running;
                s.phases = bound_phases(s.phases);
                Ok(Event::RunnerStarted(s))
            }
            (State::Running, GuestMessage::RunnerStarted(_)) => violation("RunnerStarted twice"),
            (State::Sent, GuestMessage::Output(_)) => violation("Output before RunnerStarted"),
            (State::Sent, GuestMessage::RunnerExited(_)) => {
                violation("RunnerExited before RunnerStarted")
            }
            (State::Running, GuestMessage::Output(o)) => {
                // An empty chunk carries nothing and costs the host a
                // frame's work: kiln-init never sends one.
                if o.data.is_empty() {
                    return violation("an empty Output chunk");
                }
                if o.data.len() > MAX_OUTPUT_CHUNK {
                    return Err(ConversationError::Protocol(format!(
                        "an Output chunk of {} bytes, over the {MAX_OUTPUT_CHUNK}-byte limit",
                        o.data.len()
                    )));
                }
                self.output = self.output.saturating_add(o.data.len() as u64);
                if self.output > self.limits.max_output_bytes {
                    return Err(ConversationError::OutputLimit {
                        limit: self.limits.max_output_bytes,
                    });
                }
                Ok(Event::Output(o))
            }
            (State::Running, GuestMessage::RunnerExited(e)) => Ok(Event::RunnerExited(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_protocol::tokio_codec::write_message;
    use kiln_protocol::{ExitStatus, Hello, Output, RunnerExited, RunnerStarted, Stream};
    use std::time::Duration;

    fn started() -> GuestMessage {
        GuestMessage::RunnerStarted(RunnerStarted {
            pid: 42,
            phases: vec![],
        })
    }

    fn out(n: usize) -> GuestMessage {
        GuestMessage::Output(Output {
            stream: Stream::Stdout,
            data: vec![b'x'; n],
        })
    }

    fn exited() -> GuestMessage {
        GuestMessage::RunnerExited(RunnerExited {
            status: ExitStatus::Code(0),
            duration_ms: 1,
            stopped_by: None,
        })
    }

    fn protocol_error(r: Result<Event, ConversationError>) -> String {
        match r {
            Err(ConversationError::Protocol(s)) => s,
            other => panic!("expected a protocol error, got {other:?}"),
        }
    }

    #[test]
    fn accepts_the_normal_sequence() {
        let mut c = Checker::new(Limits::default());
        assert!(matches!(c.next(started()), Ok(Event::RunnerStarted(_))));
        assert!(matches!(c.next(out(10)), Ok(Event::Output(_))));
        assert!(matches!(c.next(exited()), Ok(Event::RunnerExited(_))));
    }

    #[test]
    fn rejects_out_of_order_messages() {
        let mut c = Checker::new(Limits::default());
        assert!(protocol_error(c.next(out(1))).contains("before RunnerStarted"));
        let mut c = Checker::new(Limits::default());
        assert!(protocol_error(c.next(exited())).contains("before RunnerStarted"));
        let mut c = Checker::new(Limits::default());
        c.next(started()).expect("start");
        assert!(protocol_error(c.next(started())).contains("twice"));
        let hello = GuestMessage::Hello(Hello {
            protocol_version: 1,
            init_version: "x".into(),
            kernel_release: "y".into(),
            boot: vec![],
        });
        assert!(protocol_error(c.next(hello)).contains("second Hello"));
    }

    #[test]
    fn bounds_chunks_and_total_output() {
        let mut c = Checker::new(Limits {
            max_output_bytes: 100,
            ..Limits::default()
        });
        c.next(started()).expect("start");
        assert!(protocol_error(c.next(out(MAX_OUTPUT_CHUNK + 1))).contains("over the"));
        c.next(out(60)).expect("60");
        c.next(out(40)).expect("100");
        assert!(matches!(
            c.next(out(1)),
            Err(ConversationError::OutputLimit { limit: 100 })
        ));
    }

    #[test]
    fn an_empty_output_chunk_is_refused() {
        let mut c = Checker::new(Limits::default());
        c.next(started()).expect("start");
        assert!(protocol_error(c.next(out(0))).contains("empty Output"));
    }

    /// Virtual time: the pacing is measured exactly, not raced.
    #[tokio::test(start_paused = true)]
    async fn frames_beyond_the_rate_wait_for_their_slot() {
        let (mut guest, host) = tokio::io::duplex(1 << 16);
        let limits = Limits {
            max_frames_per_sec: 100,
            ..Limits::default()
        };
        let (tx, mut rx) = mpsc::channel(16);
        tokio::spawn(run(host, tx, limits));
        tokio::spawn(async move {
            let mut frames = vec![started()];
            frames.extend((0..300).map(|_| out(1)));
            frames.push(exited());
            for f in &frames {
                write_message(&mut guest, f).await.expect("write");
            }
            // Keep the channel open until the host has read everything.
            tokio::time::sleep(Duration::from_secs(3600)).await;
        });
        let t0 = tokio::time::Instant::now();
        let mut events = 0;
        while let Some(ev) = rx.recv().await {
            ev.expect("no violation");
            events += 1;
        }
        assert_eq!(events, 302);
        // The first 100 frames come at once, the other 202 at 100 a second.
        let took = t0.elapsed();
        assert!(
            (Duration::from_millis(2010)..Duration::from_millis(2030)).contains(&took),
            "{took:?}"
        );
    }

    #[test]
    fn guest_error_text_is_bounded() {
        let mut c = Checker::new(Limits {
            max_text: 16,
            ..Limits::default()
        });
        let ev = c
            .next(GuestMessage::Error(GuestError {
                what: "decode job".into(),
                detail: "z".repeat(1000),
            }))
            .expect("error event");
        let Event::GuestError(e) = ev else {
            panic!("{ev:?}")
        };
        assert_eq!(e.what, "decode job");
        assert!(e.detail.len() <= 16 + "…".len(), "{}", e.detail);
    }
}
