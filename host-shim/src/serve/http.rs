//! The HTTP/1 server under the router: the accept loop, the connection cap
//! and every connection's timers.
//!
//! axum's `serve` set no timer, so hyper applied no header timeout, and it
//! knew no cap: about a thousand idle connections used up the default
//! file limit, after which neither GitHub's deliveries nor the jobs' own
//! files could be opened. Here every connection has
//!
//! - hyper's header timeout ([`HttpLimits::header_timeout`]), which runs
//!   from the accept and again after each answer, so it ends idle
//!   keep-alive connections too;
//! - an idle timeout ([`HttpLimits::idle_timeout`]): no byte either way
//!   for that long closes it, whatever it was doing;
//! - bounded buffers ([`HttpLimits::max_head_bytes`],
//!   [`HttpLimits::read_buffer_bytes`]);
//! - a place in the register ([`Connections`]): past the cap, the oldest
//!   connection that never sent a signed delivery is closed to make room.
//!   When accepting fails for want of file descriptors, one is closed too.
//!
//! With TLS ([`super::tls`]) the handshake runs inside the connection's
//! task, after its registration: it counts against the cap like any
//! connection, must finish within the header timeout (a client that sends
//! nothing, or dribbles its ClientHello, is closed then), and its bytes
//! keep the idle timer running. The header timeout starts again for the
//! request head once the handshake is done. A handshake that was an ACME
//! CA's TLS-ALPN-01 validation is closed right after it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::{service_fn, Service as _};
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::conns::{Conn, Connections, Registration};
use super::limits::HttpLimits;

/// After a failed accept (out of file descriptors, say), the pause before
/// the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Failed accepts are logged at most this often.
const ACCEPT_WARN_EVERY: Duration = Duration::from_secs(10);

/// The connection a request came on: in each request's extensions, for
/// the handlers that mark it trusted or charge its body.
#[derive(Clone)]
pub(crate) struct ConnHandle(pub Arc<Conn>);

/// Serves `router` on `listener` until `shutdown` resolves, then asks every
/// connection to finish its request and waits until all are closed.
pub(super) async fn serve(
    listener: TcpListener,
    router: Router,
    conns: Arc<Connections>,
    limits: HttpLimits,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let builder = builder(&limits);
    // Dropping the sender tells every connection to finish.
    let (stop_tx, stop_rx) = watch::channel(());
    let mut tasks = JoinSet::new();
    let mut warned: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        reap(&mut tasks);
        match accepted {
            Ok((stream, _peer)) => {
                let registration = conns.admit();
                let served = Served {
                    registration,
                    router: router.clone(),
                    builder: builder.clone(),
                    idle_timeout: limits.idle_timeout,
                    stop: stop_rx.clone(),
                };
                tasks.spawn(connection(
                    stream,
                    tls.clone(),
                    limits.header_timeout,
                    served,
                ));
            }
            Err(e) => accept_failed(e, &conns, &mut warned).await,
        }
    }
    drop(listener);
    drop(stop_tx);
    while tasks.join_next().await.is_some() {}
    Ok(())
}

fn builder(limits: &HttpLimits) -> http1::Builder {
    let mut b = http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_header_size(limits.max_head_bytes)
        // hyper refuses less than 8 KiB.
        .max_buf_size(limits.read_buffer_bytes.max(8192));
    b
}

/// Collects the connections' tasks that have ended.
fn reap(tasks: &mut JoinSet<()>) {
    while let Some(done) = tasks.try_join_next() {
        if let Err(e) = done {
            if e.is_panic() {
                tracing::error!("a webhook connection's task panicked");
            }
        }
    }
}

/// A failed accept: per-connection failures are skipped; a lack of file
/// descriptors or memory closes a connection (the oldest untrusted one
/// first) and pauses, so the loop does not spin.
async fn accept_failed(e: io::Error, conns: &Connections, warned: &mut Option<Instant>) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset, Interrupted};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted
    ) {
        return;
    }
    let closed_one = conns.evict_any();
    if warned.is_none_or(|at| at.elapsed() >= ACCEPT_WARN_EVERY) {
        tracing::warn!(
            error = %e,
            connections = conns.len(),
            closed_one,
            "cannot accept webhook connections (out of file descriptors? see RLIMIT_NOFILE)"
        );
        *warned = Some(Instant::now());
    }
    tokio::time::sleep(ACCEPT_BACKOFF).await;
}

/// What serving one connection needs besides its stream.
struct Served {
    registration: Registration,
    router: Router,
    builder: http1::Builder,
    idle_timeout: Duration,
    stop: watch::Receiver<()>,
}

/// One accepted connection: the TLS handshake first if `tls`, then HTTP.
async fn connection(
    stream: TcpStream,
    tls: Option<TlsAcceptor>,
    handshake_timeout: Duration,
    served: Served,
) {
    let conn = Arc::clone(served.registration.conn());
    let metered = Metered {
        inner: stream,
        conn: Arc::clone(&conn),
    };
    let Some(acceptor) = tls else {
        return serve_http(metered, served).await;
    };
    let handshake = tokio::time::timeout(handshake_timeout, acceptor.accept(metered));
    let stream = tokio::select! {
        done = handshake => match done {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "webhook connection: TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(?handshake_timeout, "webhook connection closed: no TLS handshake in time");
                return;
            }
        },
        () = conn.evicted() => {
            tracing::debug!("webhook connection closed to make room (during its TLS handshake)");
            return;
        }
    };
    if super::tls::is_validation(stream.get_ref().1) {
        tracing::debug!("answered an ACME TLS-ALPN-01 validation");
        return;
    }
    serve_http(stream, served).await;
}

/// Serves HTTP on one connection until it ends, is told to close, or
/// stays idle too long; asked to stop, it finishes its request first.
async fn serve_http<S>(io: S, served: Served)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Served {
        registration,
        router,
        builder,
        idle_timeout,
        mut stop,
    } = served;
    let conn = Arc::clone(registration.conn());
    let io = TokioIo::new(io);
    let handle = ConnHandle(Arc::clone(&conn));
    let router = TowerToHyperService::new(router);
    let service = service_fn(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(handle.clone());
        router.call(request)
    });
    let served = builder.serve_connection(io, service);
    tokio::pin!(served);
    let mut finishing = false;
    loop {
        tokio::select! {
            ended = served.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(error = %e, "webhook connection ended");
                }
                break;
            }
            () = conn.evicted() => {
                tracing::debug!("webhook connection closed to make room");
                break;
            }
            () = idle(&conn, idle_timeout) => {
                tracing::debug!(?idle_timeout, "webhook connection closed: idle");
                break;
            }
            _ = stop.changed(), if !finishing => {
                finishing = true;
                served.as_mut().graceful_shutdown();
            }
        }
    }
    drop(registration);
}

/// Resolves once no byte moved on `conn` for `timeout`.
async fn idle(conn: &Conn, timeout: Duration) {
    loop {
        let due = conn.last_moved() + timeout;
        if Instant::now() >= due {
            return;
        }
        tokio::time::sleep_until(due.into()).await;
    }
}

/// A stream that notes on its connection when bytes move.
struct Metered {
    inner: TcpStream,
    conn: Arc<Conn>,
}

impl AsyncRead for Metered {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.conn.moved();
        }
        polled
    }
}

impl AsyncWrite for Metered {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.conn.moved();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.conn.moved();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
