//! Query slots: statistics are computed on tokio's blocking pool, a bounded number at once and
//! within a bounded share of the machine's time; a query waits its turn for a while, and is
//! refused (`503 queries_busy`, `Retry-After: 1`) when too many wait or its wait is too long.
//!
//! The runtime's workers serve every route, donations included. A query computed on a worker
//! holds it for as long as the query runs, so clients looping on queries could take the cores
//! ingest needs; on the blocking pool a query holds a slot instead, and at most
//! [`QueryLimits::slots`] threads do query work whatever the number of clients. Slots alone do
//! not bound how much of the time queries take — a slot given back is taken again at once by the
//! next looping client — so query work also draws on a budget that refills at
//! [`QueryLimits::work_share_cores`] seconds a second; a query waits until the budget is not in
//! debt, and its work, with what serving it costs around the work ([`QUERY_SERVING_CHARGE`]),
//! is charged when it ends. A waiting query is an idle future: looping
//! clients made to wait cost next to nothing, where clients answered `503` at once would loop
//! on refusals as fast as the workers can answer them. A slot is held, and the work charged,
//! until the work ends, also when the client went away meanwhile.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use tally_api::ApiError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Cores per query slot: statistics run on at most half the cores at once (one slot on two).
pub const CORES_PER_QUERY_SLOT: usize = 2;

/// Share of the cores query work may take over time: an eighth, a quarter of one core on two.
/// With 32 clients looping on the widest statistics query, single donations keep their p99
/// within 2× of what it is without them (`cargo bench --bench serve`, benches/README.md).
pub const QUERY_WORK_SHARE_OF_CORES: f64 = 0.125;

/// What serving one query costs besides its work, charged to the budget with the work: the
/// request and response on a worker, the hand-offs to the blocking pool and back, the wake-ups
/// of waiting in line. The serve bench's contention table measures the server's CPU time per
/// answer with 32 clients looping on the widest query, whose own work is a few microseconds:
/// 140–210 µs on two shared cores (a `GET /healthz` costs about 20 µs).
pub const QUERY_SERVING_CHARGE: Duration = Duration::from_micros(200);

/// Query work done at once before the share applies: a dashboard's burst of ordinary queries
/// (tens of microseconds each) or one costly one (a range over years of days with donations, a
/// few milliseconds) never waits for the budget.
pub const QUERY_WORK_BURST: Duration = Duration::from_millis(100);

/// Queries waiting for a slot or the budget, at most; more are refused at once. A waiting query
/// holds one of the server's 4096 request slots, so this leaves nearly all of them to ingest.
pub const QUERIES_WAITING_MAX: usize = 256;

/// Longest a query waits before it is refused: as long as the `Retry-After` it is then given,
/// so a client that waited is not worse off than one told to come back.
pub const QUERY_WAIT_MAX: Duration = Duration::from_secs(QUERIES_BUSY_RETRY_AFTER_S);

/// Seconds a refused query is told to wait.
pub const QUERIES_BUSY_RETRY_AFTER_S: u64 = 1;

/// The limits of [`QuerySlots`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QueryLimits {
    /// Queries computed at once.
    pub slots: usize,
    /// Seconds of query work the budget refills by per second.
    pub work_share_cores: f64,
    /// Work the budget holds when full.
    pub work_burst: Duration,
    pub waiting_max: usize,
    pub wait_max: Duration,
}

impl QueryLimits {
    /// The limits for a machine of `cores` cores.
    pub fn for_cores(cores: usize) -> Self {
        let cores = cores.max(1);
        Self {
            slots: (cores / CORES_PER_QUERY_SLOT).max(1),
            work_share_cores: cores as f64 * QUERY_WORK_SHARE_OF_CORES,
            work_burst: QUERY_WORK_BURST,
            waiting_max: QUERIES_WAITING_MAX,
            wait_max: QUERY_WAIT_MAX,
        }
    }

    /// The limits for this machine.
    pub fn for_this_machine() -> Self {
        Self::for_cores(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }
}

/// The bounded slots, budget and waiting line queries run through.
#[derive(Debug)]
pub struct QuerySlots {
    limits: QueryLimits,
    slots: Arc<Semaphore>,
    budget: Arc<Mutex<WorkBudget>>,
    waiting: AtomicUsize,
}

impl QuerySlots {
    pub fn new(limits: QueryLimits) -> Self {
        assert!(
            limits.slots >= 1 && limits.work_share_cores > 0.0,
            "queries need a slot and a share of time: {limits:?}"
        );
        let budget = WorkBudget::new(limits.work_share_cores, limits.work_burst, Instant::now());
        Self {
            limits,
            slots: Arc::new(Semaphore::new(limits.slots)),
            budget: Arc::new(Mutex::new(budget)),
            waiting: AtomicUsize::new(0),
        }
    }

    pub fn limits(&self) -> QueryLimits {
        self.limits
    }

    /// Runs `work` in a slot on the blocking pool once one is free and the budget allows,
    /// or refuses with `503 queries_busy`.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let slot = self.admit().await?;
        let budget = Arc::clone(&self.budget);
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            let started = Instant::now();
            let value = work();
            lock(&budget).charge(Instant::now(), started.elapsed() + QUERY_SERVING_CHARGE);
            value
        })
        .await
        .map_err(|error| ApiError::internal(format!("a query failed: {error}")))
    }

    /// Waits, in line, for a slot and for the budget to be out of debt.
    async fn admit(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.limits.waiting_max {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(self.busy("too many queries are waiting"));
        }
        let admitted = tokio::time::timeout(self.limits.wait_max, async {
            let slot = Arc::clone(&self.slots).acquire_owned().await;
            loop {
                let wait = lock(&self.budget).wait_needed(Instant::now());
                if wait.is_zero() {
                    return slot;
                }
                tokio::time::sleep(wait).await;
            }
        })
        .await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        match admitted {
            Ok(Ok(slot)) => Ok(slot),
            Ok(Err(_closed)) => Err(ApiError::internal("the query slots are closed")),
            Err(_elapsed) => Err(self.busy("no query slot came free in time")),
        }
    }

    fn busy(&self, why: &str) -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "queries_busy",
            format!("{why}; retry after the time in Retry-After"),
        )
        .with_retry_after(QUERIES_BUSY_RETRY_AFTER_S)
    }
}

fn lock(budget: &Mutex<WorkBudget>) -> std::sync::MutexGuard<'_, WorkBudget> {
    budget.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Seconds of work queries may still do: refills at `rate` seconds a second up to `capacity`,
/// and goes into debt by what a query did beyond it.
#[derive(Debug)]
struct WorkBudget {
    rate: f64,
    capacity_s: f64,
    available_s: f64,
    refilled_at: Instant,
}

impl WorkBudget {
    fn new(rate: f64, capacity: Duration, now: Instant) -> Self {
        Self {
            rate,
            capacity_s: capacity.as_secs_f64(),
            available_s: capacity.as_secs_f64(),
            refilled_at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed_s = now
            .saturating_duration_since(self.refilled_at)
            .as_secs_f64();
        self.available_s = (self.available_s + elapsed_s * self.rate).min(self.capacity_s);
        self.refilled_at = self.refilled_at.max(now);
    }

    /// How long until the budget is out of debt (zero: a query may start now).
    fn wait_needed(&mut self, now: Instant) -> Duration {
        self.refill(now);
        if self.available_s >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.available_s / self.rate)
        }
    }

    fn charge(&mut self, now: Instant, work: Duration) {
        self.refill(now);
        self.available_s -= work.as_secs_f64();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    fn limits(slots: usize, waiting_max: usize, wait_max: Duration) -> QueryLimits {
        QueryLimits {
            slots,
            work_share_cores: 1.0,
            work_burst: Duration::from_secs(60),
            waiting_max,
            wait_max,
        }
    }

    /// Starts a query whose work runs until `release` is sent; returns once it is running.
    async fn blocked_query(
        slots: &Arc<QuerySlots>,
    ) -> (
        tokio::task::JoinHandle<Result<(), ApiError>>,
        mpsc::Sender<()>,
    ) {
        let (started_tx, started_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let slots = Arc::clone(slots);
        let query = tokio::spawn(async move {
            slots
                .run(move || {
                    started_tx.send(()).unwrap();
                    release_rx.recv().unwrap();
                })
                .await
        });
        tokio::task::spawn_blocking(move || started_rx.recv().unwrap())
            .await
            .unwrap();
        (query, release_tx)
    }

    fn assert_busy(error: ApiError) {
        assert_eq!(error.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(error.code, "queries_busy");
        assert_eq!(error.retry_after_s, Some(QUERIES_BUSY_RETRY_AFTER_S));
    }

    #[tokio::test]
    async fn a_query_waits_in_line_for_a_busy_slot_and_then_runs() {
        let slots = Arc::new(QuerySlots::new(limits(1, 8, Duration::from_secs(60))));
        let (first, release) = blocked_query(&slots).await;
        let second = tokio::spawn({
            let slots = Arc::clone(&slots);
            async move { slots.run(|| 2).await }
        });
        for _ in 0..100 {
            if slots.waiting.load(Ordering::Acquire) == 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(slots.waiting.load(Ordering::Acquire), 1);
        assert!(!second.is_finished());
        release.send(()).unwrap();
        first.await.unwrap().unwrap();
        assert_eq!(second.await.unwrap().unwrap(), 2);
        assert_eq!(slots.waiting.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn queries_beyond_the_waiting_line_or_waiting_too_long_are_refused() {
        let slots = Arc::new(QuerySlots::new(limits(1, 1, Duration::from_millis(20))));
        let (first, release) = blocked_query(&slots).await;
        // The slot stays taken, so this one waits its longest and is refused.
        assert_busy(slots.run(|| ()).await.unwrap_err());
        let full = Arc::new(QuerySlots::new(limits(1, 0, Duration::from_secs(60))));
        assert_busy(full.run(|| ()).await.unwrap_err());
        release.send(()).unwrap();
        first.await.unwrap().unwrap();
        assert_eq!(slots.run(|| 3).await.unwrap(), 3);
    }

    #[tokio::test]
    async fn a_slot_is_held_until_its_work_ends_even_if_the_client_went_away() {
        let slots = Arc::new(QuerySlots::new(limits(1, 8, Duration::from_millis(20))));
        let (query, release) = blocked_query(&slots).await;
        query.abort();
        let _ = query.await;
        assert_busy(slots.run(|| ()).await.unwrap_err());
        release.send(()).unwrap();
        // The work returns and gives its slot back.
        drop(slots.slots.acquire().await.unwrap());
        assert_eq!(slots.run(|| 4).await.unwrap(), 4);
    }

    #[track_caller]
    fn assert_about(actual: Duration, expected_ms: u64) {
        let expected = Duration::from_millis(expected_ms);
        let off = actual.abs_diff(expected);
        assert!(
            off < Duration::from_micros(1),
            "{actual:?}, not {expected:?}"
        );
    }

    #[test]
    fn the_budget_lets_a_burst_through_then_holds_work_to_its_rate() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        // A quarter of a second of work per second, 100 ms of it at once.
        let mut budget = WorkBudget::new(0.25, Duration::from_millis(100), start);
        assert_eq!(budget.wait_needed(start), Duration::ZERO);
        budget.charge(start, Duration::from_millis(90));
        assert_eq!(budget.wait_needed(start), Duration::ZERO);
        budget.charge(start, Duration::from_millis(30));
        // 20 ms in debt: 80 ms to earn it back.
        assert_about(budget.wait_needed(start), 80);
        assert_about(budget.wait_needed(at(40)), 40);
        assert_about(budget.wait_needed(at(81)), 0);
        // Idle time fills it no further than its capacity.
        budget.wait_needed(at(100_000));
        budget.charge(at(100_000), Duration::from_millis(101));
        assert_about(budget.wait_needed(at(100_000)), 4);
        // A clock read out of order does not refill it.
        assert_about(budget.wait_needed(at(50)), 4);
    }

    #[test]
    fn limits_follow_the_cores() {
        let two = QueryLimits::for_cores(2);
        assert_eq!((two.slots, two.work_share_cores), (1, 0.25));
        assert_eq!(QueryLimits::for_cores(16).slots, 8);
        assert_eq!(QueryLimits::for_cores(0).slots, 1);
        assert!(QueryLimits::for_this_machine().slots >= 1);
    }
}
