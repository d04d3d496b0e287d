//! The HTTP listener: accepts connections up to a cap, serves each with hyper under the deadlines
//! of [`connection_watch`](super::connection_watch), answers the ones above the cap with a 503,
//! backs off when accepting fails (`EMFILE` and the like), and drains connections on shutdown.
//!
//! A connection holds a slot of the cap from accept to close. One accepted while every slot is
//! taken gets a slot among the refusals instead: it is answered `503 too_many_connections` with
//! `Retry-After` and closed, within [`REFUSAL_TIME_MAX`]; when the refusals are full too, it is
//! closed at once without an answer. Both leave the server's files alone: the cap and the
//! refusals together fit under the open-file limit with room to spare (see
//! [`open_files`](super::open_files)).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use axum::response::IntoResponse;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tally_api::ApiError;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tower::ServiceExt;

use super::connection_watch::{self, Activity, Expiry, RequestGuard, WatchLimits, WatchedIo};
use super::lingering_close::Lingering;

/// Client connections served at once, by default (fewer where the open-file limit leaves less
/// room). Each costs a descriptor, a task and a read buffer of at most
/// [`REQUEST_HEAD_BYTES_MAX`]: 16,384 connections are 256 MiB of buffers at worst, and several
/// times what a payment system and the campaign pages keep open.
pub const CONNECTIONS_MAX_DEFAULT: u64 = 16_384;

/// How long a request head may take to arrive whole, by default: from accept for the first
/// request of a connection, from its first byte for the next ones. A head is a few hundred bytes
/// sent at once; 10 s covers a slow link many times over and stops a client trickling one.
pub const HEADER_READ_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);

/// How long a connection may wait for its next request, or leave a response unread, by default.
/// Longer than the 60 s idle timeout of common load balancers, as those ask of their backends,
/// so the balancer, not tally, closes an idle pooled connection (nginx keeps 75 s too).
pub const IDLE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(75);

/// The largest request head, and the read buffer of a connection: a callback's head is under
/// 2 KiB; 16 KiB is the limit Node.js and many proxies apply. A larger head is answered 431 by
/// hyper.
pub const REQUEST_HEAD_BYTES_MAX: usize = 16 * 1024;
/// hyper's smallest buffer.
const _: () = assert!(REQUEST_HEAD_BYTES_MAX >= 8192);

/// Connections above the cap being answered 503 at once. A refusal lasts at most
/// [`REFUSAL_TIME_MAX`], so 256 answer over a hundred refusals a second; beyond them a
/// connection is closed without an answer.
pub const REFUSALS_MAX: u64 = 256;

/// How long answering a refused connection may take: its head arrives at once from a real
/// client; a client that sends nothing is closed when this runs out.
const REFUSAL_TIME_MAX: Duration = Duration::from_secs(2);

/// How long a refused client is told to wait: connections free up as requests finish or time
/// out, so one second is the shortest useful retry.
const REFUSAL_RETRY_AFTER_S: u64 = 1;

/// The first pause after an accept error other than a connection's own (`EMFILE`, `ENFILE`,
/// `ENOBUFS`): a descriptor may be free again soon. It doubles on every error in a row up to
/// [`ACCEPT_BACKOFF_MAX`], so a lasting shortage costs one attempt a second, not a spinning core.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// How long shutdown waits for connections to finish their requests before closing them: an
/// append takes milliseconds, and a live stream would otherwise hold the stop forever. Half the
/// 30 s an orchestrator usually grants a stop, leaving the rest to commit the checkpoints.
const SHUTDOWN_DRAIN_MAX: Duration = Duration::from_secs(15);

/// Connections the kernel queues for `accept`. Bursts of thousands of connections arrive while
/// the accept loop is busy for a moment; a full queue drops the SYN and the client retries only a
/// second later. The kernel caps it at `net.core.somaxconn` (4,096 by default since Linux 5.4);
/// the standard library's 128 overflows under such bursts.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds the listener for [`serve`].
pub fn bind(address: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As the standard library does: a restart can bind while old connections are in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The listener's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub connections_max: u64,
    pub refusals_max: u64,
    pub watch: WatchLimits,
}

/// What the listener counts, for `/metrics`.
#[derive(Debug, Default)]
pub struct ConnectionMetrics {
    pub open: AtomicU64,
    pub refused: AtomicU64,
    pub dropped: AtomicU64,
    pub header_read_timeouts: AtomicU64,
    pub idle_timeouts: AtomicU64,
    pub write_stalls: AtomicU64,
    pub accept_errors: AtomicU64,
}

impl ConnectionMetrics {
    fn expired(&self, expiry: Expiry) {
        let counter = match expiry {
            Expiry::HeaderRead => &self.header_read_timeouts,
            Expiry::Idle => &self.idle_timeouts,
            Expiry::WriteStalled => &self.write_stalls,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then drains the connections.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    metrics: Arc<ConnectionMetrics>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(to_permits(limits.connections_max)));
    let refusals = Arc::new(Semaphore::new(to_permits(limits.refusals_max)));
    let (draining_tx, draining) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut backoff = ACCEPT_BACKOFF_MIN;
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            Some(finished) = connections.join_next(), if !connections.is_empty() => {
                if let Err(error) = finished {
                    tracing::error!(%error, "a connection task failed");
                }
                continue;
            }
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => {
                backoff = ACCEPT_BACKOFF_MIN;
                stream
            }
            Err(error) if is_connection_error(&error) => continue,
            Err(error) => {
                metrics.accept_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(%error, pause_ms = backoff.as_millis() as u64, "accept error; pausing");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        if let Ok(slot) = Arc::clone(&slots).try_acquire_owned() {
            let (router, metrics, draining) =
                (router.clone(), Arc::clone(&metrics), draining.clone());
            connections.spawn(async move {
                metrics.open.fetch_add(1, Ordering::Relaxed);
                serve_connection(stream, router, limits.watch, &metrics, draining).await;
                metrics.open.fetch_sub(1, Ordering::Relaxed);
                drop(slot);
            });
        } else if let Ok(refusal) = Arc::clone(&refusals).try_acquire_owned() {
            metrics.refused.fetch_add(1, Ordering::Relaxed);
            connections.spawn(async move {
                let _ = tokio::time::timeout(REFUSAL_TIME_MAX, refuse(stream)).await;
                drop(refusal);
            });
        } else {
            metrics.dropped.fetch_add(1, Ordering::Relaxed);
            drop(stream);
        }
    }
    drop(listener);
    drain(connections, draining_tx).await;
}

fn to_permits(count: u64) -> usize {
    usize::try_from(count)
        .unwrap_or(usize::MAX)
        .min(Semaphore::MAX_PERMITS)
}

/// Errors of one connection that came and went before it was accepted: accept the next.
fn is_connection_error(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::ConnectionRefused
            | ErrorKind::ConnectionAborted
            | ErrorKind::ConnectionReset
            | ErrorKind::Interrupted
    )
}

/// Tells every connection to finish its request and close, and waits for them a while.
async fn drain(mut connections: JoinSet<()>, draining: watch::Sender<bool>) {
    let _ = draining.send(true);
    let finished = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_DRAIN_MAX, finished)
        .await
        .is_err()
    {
        tracing::warn!(
            connections = connections.len(),
            "connections still busy after the drain time; closing them"
        );
        connections.shutdown().await;
    }
}

/// Serves one connection until it closes, a deadline of its watch passes, or the drain ends it.
async fn serve_connection(
    stream: TcpStream,
    router: Router,
    limits: WatchLimits,
    metrics: &ConnectionMetrics,
    mut draining: watch::Receiver<bool>,
) {
    let activity = Activity::new(limits, tokio::time::Instant::now());
    let io = TokioIo::new(Lingering::new(WatchedIo::new(
        stream,
        Arc::clone(&activity),
    )));
    let service = hyper::service::service_fn({
        let activity = Arc::clone(&activity);
        move |request: Request<Incoming>| {
            let guard = RequestGuard::new(&activity);
            let router = router.clone();
            async move {
                let response = router.oneshot(request.map(Body::new)).await?;
                // The request stays in flight until its response body is sent or dropped.
                Ok::<_, std::convert::Infallible>(response.map(|body| {
                    Body::new(body.map_frame(move |frame| {
                        let _in_flight = &guard;
                        frame
                    }))
                }))
            }
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        // The watch keeps the header deadline, apart from the idle one.
        .header_read_timeout(None)
        .max_buf_size(REQUEST_HEAD_BYTES_MAX)
        .serve_connection(io, service);
    tokio::pin!(connection);
    let mut draining_seen = *draining.borrow();
    if draining_seen {
        connection.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, "connection ended with an error");
                }
                return;
            }
            expiry = connection_watch::expired(&activity) => {
                metrics.expired(expiry);
                tracing::debug!(?expiry, "closing a connection past its deadline");
                return;
            }
            _ = draining.changed(), if !draining_seen => {
                draining_seen = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Answers one connection above the cap: 503 to its request, then closes it.
async fn refuse(stream: TcpStream) {
    let service = hyper::service::service_fn(|_request: Request<Incoming>| async {
        let refusal = ApiError::too_many_connections(REFUSAL_RETRY_AFTER_S);
        Ok::<_, std::convert::Infallible>(refusal.into_response())
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .max_buf_size(REQUEST_HEAD_BYTES_MAX)
        .serve_connection(TokioIo::new(Lingering::new(stream)), service);
    if let Err(error) = connection.await {
        tracing::debug!(%error, "a refused connection ended with an error");
    }
}
