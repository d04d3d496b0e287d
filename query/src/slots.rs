//! Query slots: statistics are computed on tokio's blocking pool, a bounded number at once, and a
//! query that finds every slot taken is refused (`503 queries_busy`, `Retry-After: 1`) rather
//! than queued.
//!
//! The runtime's workers serve every route, donations included: a statistics query computed on a
//! worker holds it for as long as the query runs, so clients looping on queries could take the
//! cores ingest needs. On the blocking pool a query holds a slot instead, and at most
//! [`QuerySlots::count`] threads do query work whatever the number of clients. A slot is held
//! until its work ends, also when the client goes away meanwhile.

use std::sync::Arc;

use axum::http::StatusCode;
use tally_ingest::error::ApiError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Cores per query slot: statistics keep at most half the cores busy, so the workers that take
/// donations keep the other half however many clients ask (one slot on two cores).
pub const CORES_PER_QUERY_SLOT: usize = 2;

/// Seconds a refused query is told to wait: a query takes well under a millisecond (at most
/// five runs of existing buckets per partition), so a slot frees up within one.
pub const QUERIES_BUSY_RETRY_AFTER_S: u64 = 1;

/// The bounded set of slots queries run in.
#[derive(Debug, Clone)]
pub struct QuerySlots {
    semaphore: Arc<Semaphore>,
    count: usize,
}

/// A slot taken for one query; given back when the query's work ends.
#[derive(Debug)]
pub struct QuerySlot {
    /// Dropped, and so given back, with the slot.
    _permit: OwnedSemaphorePermit,
}

impl QuerySlots {
    /// `count` slots (at least one).
    pub fn new(count: usize) -> Self {
        let count = count.max(1);
        Self {
            semaphore: Arc::new(Semaphore::new(count)),
            count,
        }
    }

    /// One slot per [`CORES_PER_QUERY_SLOT`] cores of this machine, at least one.
    pub fn for_this_machine() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::new(cores / CORES_PER_QUERY_SLOT)
    }

    pub fn count(&self) -> usize {
        self.count
    }

    /// A free slot, or `503 queries_busy` when every one is taken.
    pub fn try_take(&self) -> Result<QuerySlot, ApiError> {
        Arc::clone(&self.semaphore)
            .try_acquire_owned()
            .map(|permit| QuerySlot { _permit: permit })
            .map_err(|_| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "queries_busy",
                    format!(
                        "all {} query slots are busy; retry after the time in Retry-After",
                        self.count
                    ),
                )
                .with_retry_after(QUERIES_BUSY_RETRY_AFTER_S)
            })
    }

    /// Runs `work` in a free slot on the blocking pool, or refuses at once when none is free.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        self.try_take()?.run(work).await
    }
}

impl QuerySlot {
    /// Runs `work` on the blocking pool, holding the slot until it returns.
    pub async fn run<T: Send + 'static>(
        self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        tokio::task::spawn_blocking(move || {
            let _slot = self;
            work()
        })
        .await
        .map_err(|error| ApiError::internal(format!("a query failed: {error}")))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    #[tokio::test]
    async fn a_query_finding_every_slot_taken_is_refused_with_retry_after() {
        let slots = QuerySlots::new(2);
        let (first, second) = (slots.try_take().unwrap(), slots.try_take().unwrap());
        let refused = slots.try_take().unwrap_err();
        assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.code, "queries_busy");
        assert_eq!(refused.retry_after_s, Some(QUERIES_BUSY_RETRY_AFTER_S));
        assert_eq!(slots.run(|| 1).await.unwrap_err().code, "queries_busy");
        drop(first);
        assert_eq!(slots.run(|| 2).await.unwrap(), 2);
        drop(second);
        assert_eq!(slots.semaphore.available_permits(), 2);
    }

    #[tokio::test]
    async fn a_slot_is_held_until_its_work_ends_even_if_the_client_went_away() {
        let slots = QuerySlots::new(1);
        let (started_tx, started_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let query = tokio::spawn({
            let slots = slots.clone();
            async move {
                slots
                    .run(move || {
                        started_tx.send(()).unwrap();
                        release_rx.recv().unwrap();
                    })
                    .await
            }
        });
        tokio::task::spawn_blocking(move || started_rx.recv().unwrap())
            .await
            .unwrap();
        query.abort();
        let _ = query.await;
        assert_eq!(slots.try_take().unwrap_err().code, "queries_busy");
        release_tx.send(()).unwrap();
        // The work returns and gives its slot back.
        drop(slots.semaphore.acquire().await.unwrap());
        assert!(slots.try_take().is_ok());
    }

    #[test]
    fn there_is_always_at_least_one_slot() {
        assert_eq!(QuerySlots::new(0).count(), 1);
        assert!(QuerySlots::for_this_machine().count() >= 1);
    }
}
