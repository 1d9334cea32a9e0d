//! The conversation with one guest's kiln-init over vsock.
//!
//! [`greet`] accepts the guest's connection and reads its `Hello`;
//! [`Greeting::send_job`] validates and sends the `Job`; then
//! [`Conversation::next_event`] yields what the guest reports until the job
//! ends, and a [`Canceller`] can ask the guest to stop the job at any time.
//!
//! The guest is hostile. Every wait has a limit; frames are checked by the
//! protocol crate before anything is allocated; [`reader`] checks each
//! message against what may come next, refuses empty output chunks, bounds
//! the total output and paces the frames ([`pace`]: at most
//! [`Limits::max_frames_per_sec`]). What the guest sizes (boot stamps,
//! texts) is cut to a bound and its memory given back. Any violation ends
//! the conversation with an error saying what was wrong, and the caller
//! ends the VM.

mod pace;
mod reader;
mod summary;

use std::sync::Arc;
use std::time::Duration;

use kiln_protocol::tokio_codec::{read_opening, write_message};
use kiln_protocol::{
    FrameError, GuestError, GuestMessage, Hello, HostMessage, Job, JobError, Output, RunnerExited,
    RunnerStarted, WallClock,
};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use summary::{HostStamps, Summary};

use crate::vsock::{HybridListener, ListenerError};

/// Bounds on one conversation.
#[derive(Debug, Clone)]
pub struct Limits {
    /// From binding the listener (VM start) to the guest's connection: covers
    /// the whole boot.
    pub accept_timeout: Duration,
    /// From the connection to a complete `Hello`.
    pub hello_timeout: Duration,
    /// For writing one host message.
    pub write_timeout: Duration,
    /// Added to the job's deadline and grace period: how long after sending
    /// the job the guest may take to report its end.
    pub end_slack: Duration,
    /// Total job output (stdout and stderr) accepted from the guest
    /// (`u64::MAX`: no cap).
    pub max_output_bytes: u64,
    /// Longest guest-supplied text kept (error details, versions).
    pub max_text: usize,
    /// Frames read from the guest a second, on average, after bursts of up
    /// to one second's worth. A faster guest waits (its writes block); the
    /// host's work per VM stays bounded whatever the guest sends.
    pub max_frames_per_sec: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            accept_timeout: Duration::from_secs(120),
            hello_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            end_slack: Duration::from_secs(30),
            max_output_bytes: 256 << 20,
            max_text: 4096,
            // Full 32 KiB chunks at this rate are 128 MiB/s.
            max_frames_per_sec: 4096,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConversationError {
    #[error(transparent)]
    Listen(#[from] ListenerError),
    #[error("the guest connected but sent no Hello within {timeout:?}")]
    HelloTimeout { timeout: Duration },
    #[error("bad Hello from the guest: {0}")]
    Hello(#[source] FrameError),
    #[error("refusing to send an invalid job: {0}")]
    InvalidJob(#[from] JobError),
    #[error("sending {what} to the guest failed: {source}")]
    Send {
        what: &'static str,
        #[source]
        source: FrameError,
    },
    #[error("sending {what} to the guest did not finish within {timeout:?}")]
    SendTimeout {
        what: &'static str,
        timeout: Duration,
    },
    #[error("malformed frame from the guest: {0}")]
    Frame(#[source] FrameError),
    #[error("the guest broke the protocol: {0}")]
    Protocol(String),
    #[error("the guest sent more than {limit} bytes of job output")]
    OutputLimit { limit: u64 },
    #[error("the guest closed the channel before reporting the job's end")]
    Closed,
    #[error(
        "the guest did not report the job's end by its deadline ({after:?} after the job was sent)"
    )]
    Deadline { after: Duration },
}

/// What the guest reports after the job was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    RunnerStarted(RunnerStarted),
    Output(Output),
    /// The last event: the guest powers off next.
    RunnerExited(RunnerExited),
    /// The last event: the guest failed and powers off next.
    GuestError(GuestError),
}

impl Event {
    fn is_last(&self) -> bool {
        matches!(self, Event::RunnerExited(_) | Event::GuestError(_))
    }
}

/// The guest connected and said `Hello`; no job sent yet.
#[derive(Debug)]
pub struct Greeting {
    stream: UnixStream,
    hello: Hello,
    stamps: HostStamps,
}

/// Accepts the guest's connection and reads its `Hello`.
pub async fn greet(
    listener: &HybridListener,
    limits: &Limits,
) -> Result<Greeting, ConversationError> {
    let mut stamps = HostStamps::default();
    let mut stream = listener.accept(limits.accept_timeout).await?;
    stamps.accepted = Some(Instant::now());
    let msg: GuestMessage = tokio::time::timeout(limits.hello_timeout, read_opening(&mut stream))
        .await
        .map_err(|_| ConversationError::HelloTimeout {
            timeout: limits.hello_timeout,
        })?
        .map_err(ConversationError::Hello)?;
    stamps.hello = Some(Instant::now());
    let GuestMessage::Hello(hello) = msg else {
        // read_opening only returns the opening message.
        return Err(ConversationError::Protocol(
            "the first message was not Hello".into(),
        ));
    };
    let hello = summary::bound_hello(hello, limits.max_text);
    tracing::debug!(
        init_version = %hello.init_version,
        kernel = %hello.kernel_release,
        phases = hello.boot.len(),
        "guest said hello"
    );
    Ok(Greeting {
        stream,
        hello,
        stamps,
    })
}

impl Greeting {
    pub fn hello(&self) -> &Hello {
        &self.hello
    }

    /// Validates `job`, sends it, and starts listening for events. The
    /// job's `clock` is set to the host's time right before sending: the
    /// guest sets its clock from it, so it must not age while the VM boots.
    /// The conversation must end within the job's deadline, its grace period
    /// and `limits.end_slack`.
    pub async fn send_job(
        mut self,
        job: &Job,
        limits: Limits,
    ) -> Result<Conversation, ConversationError> {
        job.validate()?;
        let mut job = job.clone();
        job.clock = WallClock::now();
        let msg = HostMessage::Job(Box::new(job.clone()));
        send(&mut self.stream, &msg, "the job", limits.write_timeout).await?;
        let budget = Duration::from_millis(job.deadline_ms.saturating_add(job.grace_ms))
            .saturating_add(limits.end_slack);
        Ok(Conversation::start(self.into_parts(), budget, limits))
    }

    /// The raw stream, for callers (tests of the guest's error handling)
    /// that must send something other than a valid job. Continue with
    /// [`Conversation::start`].
    pub fn into_parts(self) -> GreetingParts {
        GreetingParts {
            stream: self.stream,
            hello: self.hello,
            stamps: self.stamps,
        }
    }
}

/// A [`Greeting`] taken apart.
#[derive(Debug)]
pub struct GreetingParts {
    pub stream: UnixStream,
    pub hello: Hello,
    pub stamps: HostStamps,
}

async fn send<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    msg: &HostMessage,
    what: &'static str,
    timeout: Duration,
) -> Result<(), ConversationError> {
    tokio::time::timeout(timeout, write_message(w, msg))
        .await
        .map_err(|_| ConversationError::SendTimeout { what, timeout })?
        .map_err(|source| ConversationError::Send { what, source })
}

/// Sends `Cancel` to the guest; cheap to clone, usable while another task
/// waits for events.
#[derive(Clone)]
pub struct Canceller {
    writer: Arc<Mutex<OwnedWriteHalf>>,
    timeout: Duration,
}

impl Canceller {
    /// Asks the guest to stop the job: SIGTERM, `grace`, then SIGKILL.
    pub async fn cancel(&self, grace: Duration) -> Result<(), ConversationError> {
        let grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
        let msg = HostMessage::Cancel(kiln_protocol::Cancel { grace_ms });
        let mut w = self.writer.lock().await;
        send(&mut *w, &msg, "Cancel", self.timeout).await
    }
}

/// The job is in the guest's hands; events flow back.
pub struct Conversation {
    events: mpsc::Receiver<Result<Event, ConversationError>>,
    writer: Arc<Mutex<OwnedWriteHalf>>,
    reader: JoinHandle<()>,
    summary: Summary,
    ends_by: Instant,
    budget: Duration,
    write_timeout: Duration,
    done: bool,
}

/// Events buffered between the reader and the consumer. Small on purpose:
/// when the consumer is slow, the guest waits.
const EVENT_QUEUE: usize = 16;

impl Conversation {
    /// Starts reading events on a stream whose opening messages are done.
    /// `budget` bounds the rest of the conversation.
    pub fn start(parts: GreetingParts, budget: Duration, limits: Limits) -> Conversation {
        let (read, write) = parts.stream.into_split();
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let reader = tokio::spawn(reader::run(read, tx, limits.clone()));
        let mut stamps = parts.stamps;
        stamps.job_sent = Some(Instant::now());
        Conversation {
            events: rx,
            writer: Arc::new(Mutex::new(write)),
            reader,
            summary: Summary::new(parts.hello, stamps),
            ends_by: Instant::now() + budget,
            budget,
            write_timeout: limits.write_timeout,
            done: false,
        }
    }

    pub fn canceller(&self) -> Canceller {
        Canceller {
            writer: self.writer.clone(),
            timeout: self.write_timeout,
        }
    }

    /// The next event, or `None` after the last one. No limit per message
    /// (a job may be silent for long), but nothing waits past the
    /// conversation's deadline. Cancel-safe.
    pub async fn next_event(&mut self) -> Result<Option<Event>, ConversationError> {
        if self.done {
            return Ok(None);
        }
        let next = tokio::time::timeout_at(self.ends_by, self.events.recv()).await;
        let result = match next {
            Err(_) => Err(ConversationError::Deadline { after: self.budget }),
            // The reader always sends an error or a last event before it stops.
            Ok(None) => Err(ConversationError::Closed),
            Ok(Some(r)) => r,
        };
        match result {
            Ok(event) => {
                self.summary.record(&event);
                if event.is_last() {
                    self.done = true;
                }
                Ok(Some(event))
            }
            Err(e) => {
                self.done = true;
                self.reader.abort();
                Err(e)
            }
        }
    }

    pub fn summary(&self) -> &Summary {
        &self.summary
    }

    pub fn into_summary(self) -> Summary {
        self.summary.clone()
    }
}

impl Drop for Conversation {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

#[cfg(test)]
mod tests;
