//! The deadlines of one connection that hyper does not keep apart: how long it may wait for the
//! next request (idle), how long a request head may take (header read), and how long a response
//! may sit unread by its client.
//!
//! hyper's own `header_read_timeout` counts from the moment it waits for a request, so on a
//! kept-alive connection it is the idle limit and the header limit at once. Here they are apart,
//! as Go's net/http has them (`IdleTimeout`, `ReadHeaderTimeout`): a new connection must complete
//! its first request head within the header-read timeout of being accepted; between requests a
//! connection may stay silent for the idle timeout, and once the first byte of the next request
//! arrives its head must be complete within the header-read timeout. While a request is served
//! nothing here times it (the body read has its own timeout, the handlers their own bounds),
//! except a response write that makes no progress for the idle timeout: a client that does not
//! read what it asked for.
//!
//! [`WatchedIo`] sees bytes move, a [`RequestGuard`] lives from the moment hyper hands a request
//! to the router until its response body is sent or dropped, and [`expired`] returns once the
//! nearest deadline has passed.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

/// The timeouts a connection is watched with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchLimits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
}

/// Why a connection was closed by its watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// A request head did not arrive whole in time.
    HeaderRead,
    /// No request came for the idle timeout.
    Idle,
    /// The client did not read a response for the idle timeout.
    WriteStalled,
}

/// What the watch knows of one connection, shared by its IO, its requests and its watchdog.
#[derive(Debug)]
pub struct Activity {
    limits: WatchLimits,
    state: Mutex<State>,
    /// Woken when a deadline appears or moves earlier; the one waiter is the watchdog, and
    /// `notify_one` keeps a permit for it if it is not waiting yet.
    changed: Notify,
}

#[derive(Debug)]
struct State {
    requests_in_flight: usize,
    /// When the connection last began to wait for a request: accepted, or a response sent.
    idle_since: Instant,
    /// When the head being waited for began: at accept for the first request, at the first
    /// byte read while idle for the later ones.
    head_started: Option<Instant>,
    /// Since when a write has been waiting for the client to read.
    write_blocked_since: Option<Instant>,
}

impl Activity {
    /// A connection accepted `now`: its first request head is due within the header timeout.
    pub fn new(limits: WatchLimits, now: Instant) -> Arc<Self> {
        Arc::new(Self {
            limits,
            state: Mutex::new(State {
                requests_in_flight: 0,
                idle_since: now,
                head_started: Some(now),
                write_blocked_since: None,
            }),
            changed: Notify::new(),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The nearest deadline and what it is, if the connection has one now.
    fn deadline(&self) -> Option<(Instant, Expiry)> {
        let state = self.state();
        let stalled = state
            .write_blocked_since
            .map(|since| (since + self.limits.idle_timeout, Expiry::WriteStalled));
        let waiting = (state.requests_in_flight == 0).then(|| match state.head_started {
            Some(started) => (
                started + self.limits.header_read_timeout,
                Expiry::HeaderRead,
            ),
            None => (state.idle_since + self.limits.idle_timeout, Expiry::Idle),
        });
        match (stalled, waiting) {
            (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
            (a, b) => a.or(b),
        }
    }

    fn bytes_read(&self) {
        let mut state = self.state();
        if state.requests_in_flight == 0 && state.head_started.is_none() {
            state.head_started = Some(Instant::now());
            drop(state);
            self.changed.notify_one();
        }
    }

    fn write_blocked(&self) {
        let mut state = self.state();
        if state.write_blocked_since.is_none() {
            state.write_blocked_since = Some(Instant::now());
            drop(state);
            self.changed.notify_one();
        }
    }

    fn write_progressed(&self) {
        let mut state = self.state();
        // Only moves a deadline later: the watchdog finds out when it wakes.
        state.write_blocked_since = None;
    }
}

/// Marks a request in flight on its connection until dropped.
#[derive(Debug)]
pub struct RequestGuard(Arc<Activity>);

impl RequestGuard {
    pub fn new(activity: &Arc<Activity>) -> Self {
        let mut state = activity.state();
        state.requests_in_flight += 1;
        state.head_started = None;
        drop(state);
        Self(Arc::clone(activity))
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.requests_in_flight -= 1;
        if state.requests_in_flight == 0 {
            state.idle_since = Instant::now();
            state.head_started = None;
            drop(state);
            self.0.changed.notify_one();
        }
    }
}

/// Resolves once a deadline of the connection has passed, with which one.
pub async fn expired(activity: &Activity) -> Expiry {
    loop {
        let changed = activity.changed.notified();
        match activity.deadline() {
            None => changed.await,
            Some((at, _)) => {
                tokio::select! {
                    () = tokio::time::sleep_until(at) => {
                        if let Some((at, expiry)) = activity.deadline()
                            && at <= Instant::now()
                        {
                            return expiry;
                        }
                    }
                    () = changed => {}
                }
            }
        }
    }
}

/// A connection's byte stream, telling its [`Activity`] when bytes arrive and when writes stall.
#[derive(Debug)]
pub struct WatchedIo<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> WatchedIo<T> {
    pub fn new(inner: T, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }

    fn after_write<R>(&self, poll: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        match &poll {
            Poll::Pending => self.activity.write_blocked(),
            Poll::Ready(_) => self.activity.write_progressed(),
        }
        poll
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WatchedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let filled = buf.filled().len();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(poll, Poll::Ready(Ok(()))) && buf.filled().len() > filled {
            this.activity.bytes_read();
        }
        poll
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WatchedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.after_write(poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.after_write(poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_flush(cx);
        this.after_write(poll)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const LIMITS: WatchLimits = WatchLimits {
        header_read_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
    };

    /// How long after `start` the watch of `activity` expires, and why.
    async fn expiry_after(activity: &Activity, start: Instant) -> (Duration, Expiry) {
        let expiry = expired(activity).await;
        (Instant::now() - start, expiry)
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_connection_has_the_header_timeout_for_its_first_head() {
        let start = Instant::now();
        let activity = Activity::new(LIMITS, start);
        assert_eq!(
            expiry_after(&activity, start).await,
            (LIMITS.header_read_timeout, Expiry::HeaderRead)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_flight_has_no_deadline_and_its_end_starts_the_idle_one() {
        let start = Instant::now();
        let activity = Activity::new(LIMITS, start);
        let guard = RequestGuard::new(&activity);
        let waited = tokio::time::timeout(Duration::from_secs(3600), expired(&activity)).await;
        assert!(waited.is_err(), "expired while a request was in flight");
        let ended = Instant::now();
        drop(guard);
        assert_eq!(
            expiry_after(&activity, ended).await,
            (LIMITS.idle_timeout, Expiry::Idle)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_byte_of_the_next_request_starts_the_header_timeout() {
        let (client, server) = tokio::io::duplex(64);
        let activity = Activity::new(LIMITS, Instant::now());
        drop(RequestGuard::new(&activity));
        let mut io = WatchedIo::new(server, Arc::clone(&activity));
        let mut client = client;
        tokio::time::sleep(Duration::from_secs(30)).await;
        client.write_all(b"G").await.unwrap();
        let mut byte = [0; 1];
        io.read_exact(&mut byte).await.unwrap();
        let first_byte = Instant::now();
        assert_eq!(
            expiry_after(&activity, first_byte).await,
            (LIMITS.header_read_timeout, Expiry::HeaderRead)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_response_the_client_does_not_read_expires_after_the_idle_timeout() {
        let (_client, server) = tokio::io::duplex(16);
        let activity = Activity::new(LIMITS, Instant::now());
        let _guard = RequestGuard::new(&activity);
        let mut io = WatchedIo::new(server, Arc::clone(&activity));
        let writer = tokio::spawn(async move { io.write_all(&[0; 1024]).await });
        tokio::task::yield_now().await;
        let blocked = Instant::now();
        assert_eq!(
            expiry_after(&activity, blocked).await,
            (LIMITS.idle_timeout, Expiry::WriteStalled)
        );
        writer.abort();
    }
}
