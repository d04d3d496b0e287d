//! Reading request bodies under two bounds: how many are read at once, and how long one may take.
//!
//! A body has to be read whole before its signature can be checked, so anyone who can open a
//! connection can make the server read one, as slowly as they like. Reading therefore holds a
//! slot of its own, never the permit of admitted work (which is taken only once the body is
//! read and authenticated). Slots come in two classes so that batches cannot crowd out
//! callbacks: bodies of at most [`CALLBACK_BODY_BYTES_MAX`] (a donation, an admin request), and
//! larger ones (a batch). The memory held by bodies being read is at most, per class, its slots
//! times its body limit.
//!
//! When every slot of its class is taken a request is refused at once (503
//! `too_many_body_reads`, `Retry-After`) rather than queued, and a body that has not arrived
//! within the read timeout is answered 408 `body_timeout`. Both answers close the connection:
//! the unread rest of the body is not worth draining.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::StatusCode;
use tokio::sync::Semaphore;

use crate::error::ApiError;

/// The largest body read in the callback class: a donation callback's limit (16 KiB), which
/// admin requests share. Anything larger (a batch, up to 1 MiB) is read in the batch class.
pub const CALLBACK_BODY_BYTES_MAX: usize = 16 * 1024;

/// Callback-sized bodies read at once, by default. The payment system sends a few hundred
/// callbacks a second, each read in well under a millisecond, so a handful of slots is busy in
/// normal traffic; 8,192 leaves room for thousands of slow or stalled clients besides, and holds
/// at most 8,192 × 16 KiB = 128 MiB.
pub const CALLBACK_BODY_READS_MAX_DEFAULT: usize = 8192;

/// Batch bodies read at once. Batches come from a few backfilling senders; 64 × 1 MiB = 64 MiB
/// at most.
pub const BATCH_BODY_READS_MAX: usize = 64;

/// How long a body may take to arrive, by default. A callback arrives in one TCP segment; a
/// 1 MiB batch over a 1 Mbit/s link takes 8 s.
pub const BODY_READ_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);

/// How long a client refused for want of a slot is told to wait: slots free up as bodies finish
/// or time out, so one second is the shortest useful retry.
const BUSY_RETRY_AFTER_S: u64 = 1;

/// Configuration of [`BodyReads`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyReadLimits {
    pub callback_reads_max: usize,
    pub batch_reads_max: usize,
    pub read_timeout: Duration,
}

impl Default for BodyReadLimits {
    fn default() -> Self {
        Self {
            callback_reads_max: CALLBACK_BODY_READS_MAX_DEFAULT,
            batch_reads_max: BATCH_BODY_READS_MAX,
            read_timeout: BODY_READ_TIMEOUT_DEFAULT,
        }
    }
}

/// The slots for bodies being read, and what happened to reads, for `/metrics`.
#[derive(Debug)]
pub struct BodyReads {
    limits: BodyReadLimits,
    callback: Arc<Semaphore>,
    batch: Arc<Semaphore>,
    refused: AtomicU64,
    timed_out: AtomicU64,
}

/// A snapshot of [`BodyReads`] for `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyReadCounts {
    pub in_progress: u64,
    pub refused: u64,
    pub timed_out: u64,
}

impl BodyReads {
    pub fn new(limits: BodyReadLimits) -> Self {
        assert!(limits.callback_reads_max > 0 && limits.batch_reads_max > 0);
        Self {
            limits,
            callback: Arc::new(Semaphore::new(limits.callback_reads_max)),
            batch: Arc::new(Semaphore::new(limits.batch_reads_max)),
            refused: AtomicU64::new(0),
            timed_out: AtomicU64::new(0),
        }
    }

    pub fn limits(&self) -> BodyReadLimits {
        self.limits
    }

    /// Reads a body of at most `bytes_max` bytes in a slot of its class, within the read
    /// timeout.
    pub async fn read(&self, body: Body, bytes_max: usize) -> Result<Bytes, ApiError> {
        let (slots, class) = if bytes_max <= CALLBACK_BODY_BYTES_MAX {
            (&self.callback, "callback")
        } else {
            (&self.batch, "batch")
        };
        let Ok(_slot) = slots.try_acquire() else {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_body_reads",
                format!("the server is reading as many {class} bodies as it may at once; retry"),
            )
            .with_retry_after(BUSY_RETRY_AFTER_S)
            .closing_connection());
        };
        let timeout = self.limits.read_timeout;
        match tokio::time::timeout(timeout, read_whole(body, bytes_max)).await {
            Ok(read) => read,
            Err(_) => {
                self.timed_out.fetch_add(1, Ordering::Relaxed);
                Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "body_timeout",
                    format!("the body did not arrive within {} ms", timeout.as_millis()),
                )
                .closing_connection())
            }
        }
    }

    pub fn counts(&self) -> BodyReadCounts {
        let busy = |slots: &Semaphore, max: usize| (max - slots.available_permits()) as u64;
        BodyReadCounts {
            in_progress: busy(&self.callback, self.limits.callback_reads_max)
                + busy(&self.batch, self.limits.batch_reads_max),
            refused: self.refused.load(Ordering::Relaxed),
            timed_out: self.timed_out.load(Ordering::Relaxed),
        }
    }
}

/// Reads a whole body of at most `bytes_max` bytes.
async fn read_whole(body: Body, bytes_max: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, bytes_max)
        .await
        .map_err(|error| {
            let too_large =
                std::iter::successors(Some(&error as &dyn std::error::Error), |e| e.source())
                    .any(|e| e.is::<http_body_util::LengthLimitError>());
            if too_large {
                ApiError::body_too_large(bytes_max)
            } else {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "unreadable_body",
                    format!("the body could not be read: {error}"),
                )
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Channel;

    fn one_slot_each(read_timeout: Duration) -> BodyReads {
        BodyReads::new(BodyReadLimits {
            callback_reads_max: 1,
            batch_reads_max: 1,
            read_timeout,
        })
    }

    /// A body whose bytes never come while its sender is kept.
    fn stalled() -> (Body, http_body_util::channel::Sender<Bytes, std::io::Error>) {
        let (sender, body) = Channel::<Bytes, std::io::Error>::new(1);
        (Body::new(body), sender)
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_does_not_arrive_in_time_is_answered_408_and_frees_its_slot() {
        let reads = one_slot_each(Duration::from_secs(10));
        let (body, _sender) = stalled();
        let error = reads.read(body, CALLBACK_BODY_BYTES_MAX).await.unwrap_err();
        assert_eq!(
            (error.status, error.code),
            (StatusCode::REQUEST_TIMEOUT, "body_timeout")
        );
        assert!(error.close_connection);
        assert_eq!(reads.counts().in_progress, 0);
        assert_eq!(reads.counts().timed_out, 1);
        let bytes = reads.read(Body::from("{}"), CALLBACK_BODY_BYTES_MAX).await;
        assert_eq!(bytes.unwrap(), Bytes::from_static(b"{}"));
    }

    #[tokio::test]
    async fn a_read_beyond_the_slots_of_its_class_is_refused_at_once_and_the_other_class_reads() {
        let reads = std::sync::Arc::new(one_slot_each(Duration::from_secs(3600)));
        let (body, _sender) = stalled();
        let holder = tokio::spawn({
            let reads = std::sync::Arc::clone(&reads);
            async move { reads.read(body, CALLBACK_BODY_BYTES_MAX).await }
        });
        while reads.counts().in_progress == 0 {
            tokio::task::yield_now().await;
        }
        let error = reads
            .read(Body::from("{}"), CALLBACK_BODY_BYTES_MAX)
            .await
            .unwrap_err();
        assert_eq!(
            (error.status, error.code, error.retry_after_s),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_body_reads",
                Some(1)
            )
        );
        assert!(error.close_connection);
        assert_eq!(reads.counts().refused, 1);
        let batch = reads.read(Body::from("[]"), 1024 * 1024).await;
        assert_eq!(batch.unwrap(), Bytes::from_static(b"[]"));
        holder.abort();
    }

    #[tokio::test]
    async fn a_body_over_its_limit_is_413_and_a_broken_one_400() {
        let reads = one_slot_each(Duration::from_secs(10));
        let error = reads.read(Body::from("12345"), 4).await.unwrap_err();
        assert_eq!(error.code, "body_too_large");
        let (body, sender) = stalled();
        sender.abort(std::io::Error::other("connection cut"));
        let error = reads.read(body, 4).await.unwrap_err();
        assert_eq!(error.code, "unreadable_body");
    }
}
