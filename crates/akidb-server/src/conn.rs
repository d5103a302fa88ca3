//! Connections: a cap on how many are open, and the timeouts that keep slow or idle clients from
//! holding them. hyper's own header timeout also runs while a kept-alive connection sits idle, so
//! the two are told apart here, from what the connection is doing:
//!
//! - **head**: from accept, or from the first byte of the next request, until its handler starts
//!   → `header_read_timeout` (a client that sends half a header and stops is dropped);
//! - **busy**: a handler is running → no limit here (the body-read and request timeouts apply);
//! - **idle**: between a response and the next request's first byte → `keep_alive_timeout`.
//!
//! A connection past its deadline fails its next read, and hyper closes it.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::{Instant, Sleep},
};

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub header_read: Duration,
    pub keep_alive: Duration,
}

/// Requests of one connection whose handlers are running, and the connection's task to wake when
/// the last one ends: hyper may have polled the read side while the handler ran, and would not
/// poll it again (to start the idle timer) until the client sends something.
#[derive(Debug, Default)]
pub struct InFlight {
    count: AtomicUsize,
    waker: parking_lot::Mutex<Option<std::task::Waker>>,
}

/// Held while a handler runs; dropped with it, also when the client hangs up.
pub struct Busy(Arc<InFlight>);

impl InFlight {
    pub fn enter(self: &Arc<Self>) -> Busy {
        self.count.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }

    fn busy(&self) -> bool {
        self.count.load(Ordering::Acquire) > 0
    }

    fn wake_when_idle(&self, waker: &std::task::Waker) {
        let mut slot = self.waker.lock();
        if !slot.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *slot = Some(waker.clone());
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            if let Some(waker) = self.0.waker.lock().take() {
                waker.wake();
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Head,
    Busy,
    Idle,
}

/// A stream that fails its reads once the connection has been in one phase for too long.
pub struct Guarded<S> {
    inner: S,
    in_flight: Arc<InFlight>,
    timeouts: Timeouts,
    phase: Phase,
    since: Instant,
    timer: Pin<Box<Sleep>>,
}

impl<S> Guarded<S> {
    pub fn new(inner: S, in_flight: Arc<InFlight>, timeouts: Timeouts) -> Self {
        let now = Instant::now();
        Self {
            inner,
            in_flight,
            timeouts,
            phase: Phase::Head,
            since: now,
            timer: Box::pin(tokio::time::sleep_until(now + timeouts.header_read)),
        }
    }

    fn enter(&mut self, phase: Phase) {
        if self.phase != phase {
            self.phase = phase;
            self.since = Instant::now();
        }
    }

    /// Follows the handlers: busy while one runs, idle once the last one is done.
    fn track(&mut self) {
        if self.in_flight.busy() {
            self.enter(Phase::Busy);
        } else if self.phase == Phase::Busy {
            self.enter(Phase::Idle);
        }
    }

    fn deadline(&self) -> Option<(Instant, &'static str)> {
        match self.phase {
            Phase::Head => Some((self.since + self.timeouts.header_read, "request headers not received in time")),
            Phase::Idle => Some((self.since + self.timeouts.keep_alive, "idle keep-alive connection")),
            Phase::Busy => None,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.track();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before && this.phase == Phase::Idle {
                    this.enter(Phase::Head);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                let Some((deadline, why)) = this.deadline() else {
                    this.in_flight.wake_when_idle(cx.waker());
                    // The handler may have ended just before the waker was stored.
                    if !this.in_flight.busy() {
                        cx.waker().wake_by_ref();
                    }
                    return Poll::Pending;
                };
                if this.timer.deadline() != deadline {
                    this.timer.as_mut().reset(deadline);
                }
                match this.timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, why))),
                    Poll::Pending => Poll::Pending,
                }
            }
            ready => ready,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Logs a recurring condition at most once per interval, saying how often it happened meanwhile.
pub struct Throttled {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttled {
    pub fn new(every: Duration) -> Self {
        Self { every, last: None, suppressed: 0 }
    }

    /// Returns how many times it happened since the last log line, when one is due now.
    pub fn due(&mut self) -> Option<u64> {
        let now = Instant::now();
        self.suppressed += 1;
        if self.last.is_some_and(|t| now < t + self.every) {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// What the accept loop enforces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub timeouts: Timeouts,
}

/// Accepts connections until `stop` resolves, then closes them gracefully (requests in flight
/// finish; idle connections close) and returns once every connection is gone. At the cap, it
/// stops accepting: new clients wait in the kernel's listen backlog and are served as soon as a
/// connection closes, instead of being refused.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    limits: Limits,
    stop: impl std::future::Future<Output = ()>,
) {
    use tower::ServiceExt as _;

    let max = limits.max_connections.clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
    let slots = Arc::new(tokio::sync::Semaphore::new(max));
    let (closing, closing_rx) = tokio::sync::watch::channel(false);
    let mut at_cap = Throttled::new(Duration::from_secs(10));
    let mut accept_errors = Throttled::new(Duration::from_secs(10));
    tokio::pin!(stop);
    loop {
        let permit = match slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if let Some(times) = at_cap.due() {
                    tracing::warn!(
                        "{max} connections open (--max-connections): new ones wait until one closes \
                         ({times} time(s) since the last report)"
                    );
                }
                tokio::select! {
                    permit = slots.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break,
                    },
                    () = &mut stop => break,
                }
            }
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, usually: back off rather than spin.
                    if let Some(times) = accept_errors.due() {
                        tracing::warn!("accepting a connection failed: {e} ({times} time(s) since the last report)");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let _ = stream.set_nodelay(true);
        let (app, mut closing) = (app.clone(), closing_rx.clone());
        tokio::spawn(async move {
            let in_flight = Arc::new(InFlight::default());
            let io = hyper_util::rt::TokioIo::new(Guarded::new(stream, in_flight.clone(), limits.timeouts));
            let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let busy = in_flight.enter();
                let call = app.clone().oneshot(request.map(axum::body::Body::new));
                async move {
                    let response = call.await;
                    drop(busy);
                    response
                }
            });
            let connection = hyper::server::conn::http1::Builder::new().keep_alive(true).serve_connection(io, service);
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = async { let _ = closing.wait_for(|&c| c).await; } => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = result {
                tracing::debug!("connection closed: {e}");
            }
            drop(permit);
        });
    }
    drop(listener);
    let _ = closing.send(true);
    // Every connection holds a slot until it is gone.
    let _ = slots.acquire_many(u32::try_from(max).unwrap_or(u32::MAX)).await;
}
