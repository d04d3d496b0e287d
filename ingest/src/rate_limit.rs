//! Abuse limits on ingest: one token bucket per key (the `user_id`), in bounded memory.
//!
//! A limited request is answered `429 Too Many Requests` with `Retry-After`, and the payment
//! system retries later, so a refusal loses nothing; the limiter therefore always says how long
//! to wait. Ingest owns this because it is the first place a request is attributed to a user,
//! and limiting there keeps a misbehaving caller from filling the donation log. Time comes from
//! an injected [`Clock`] so that tests and replays control it.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tally_pipeline::clock::{Clock, UnixMillis};
use thiserror::Error;

/// Number of independently locked shards. 16 is several times the core count of the machines
/// ingest runs on, so two requests rarely wait on the same lock, while each shard stays large
/// enough for its share of `keys_max` to be meaningful.
const SHARD_COUNT: usize = 16;

/// A diner checks out a few times an hour; 20 in a row covers double clicks and a provider
/// retrying a burst of callbacks. What this limit is for is a script hammering one user id.
const BURST_DEFAULT: u32 = 20;

/// 10 per second is far above any human pace, so only automated abuse ever waits.
const REFILL_PER_SECOND_DEFAULT: f64 = 10.0;

/// Bounds memory: a bucket costs roughly 100 bytes with its key, so 100 000 keys is ~10 MB, and
/// far more users than are active within one refill period (`burst / refill` = 2 s).
const KEYS_MAX_DEFAULT: usize = 100_000;

/// When a shard is full, eviction frees at least 1/8 of it at once, so that the O(n) sweep is
/// paid once per n/8 new keys rather than on every new key.
const EVICTION_FRACTION_DIVISOR: usize = 8;

const MILLIS_PER_SECOND: f64 = 1_000.0;

/// Limits per key.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimitConfig {
    /// Tokens a bucket holds when full: the most requests allowed at once.
    pub burst: u32,
    /// Tokens added per second, up to `burst`.
    pub refill_per_second: f64,
    /// The most keys tracked at once, across all shards.
    pub keys_max: usize,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            burst: BURST_DEFAULT,
            refill_per_second: REFILL_PER_SECOND_DEFAULT,
            keys_max: KEYS_MAX_DEFAULT,
        }
    }
}

/// A configuration that could never allow requests, or never forget keys.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum RateLimitConfigError {
    #[error("rate limit burst must be at least 1")]
    BurstZero,
    #[error("rate limit refill_per_second must be positive, got {0}")]
    RefillNotPositive(f64),
    #[error("rate limit keys_max must be at least 1")]
    KeysMaxZero,
}

/// A refusal: the request may be retried after `seconds` (the `Retry-After` header value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("rate limited; retry after {seconds} s")]
pub struct RetryAfter {
    /// Whole seconds until enough tokens are available; at least 1.
    pub seconds: u64,
}

/// Per-key token buckets, safe to share between threads.
pub struct RateLimiter {
    /// The configured policy, whole.
    configured: Policy,
    /// The nodes sharing it: this node admits the configured policy divided by them.
    shares: AtomicU32,
    clock: Arc<dyn Clock>,
    shard_hasher: RandomState,
    shards: Vec<Mutex<Shard>>,
}

impl RateLimiter {
    pub fn new(
        config: RateLimitConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, RateLimitConfigError> {
        let policy = Policy::from_config(&config)?;
        let shards = (0..SHARD_COUNT)
            .map(|_| Mutex::new(Shard::default()))
            .collect();
        Ok(Self {
            configured: policy,
            shares: AtomicU32::new(1),
            clock,
            // Its own random seed, independent of the shards' maps, so the keys in one shard
            // are still spread evenly over that shard's hash table.
            shard_hasher: RandomState::new(),
            shards,
        })
    }

    /// Splits the configured allowance between `nodes` nodes that each see part of the
    /// traffic (the live members of a cluster): each admits `burst / nodes` (at least one) and
    /// refills at `refill / nodes`, so one key spread over the nodes gets at most the configured
    /// allowance in all, and one that reaches a single node gets its share.
    pub fn share_between(&self, nodes: u32) {
        self.shares.store(nodes.max(1), Ordering::Relaxed);
    }

    fn policy(&self) -> Policy {
        match self.shares.load(Ordering::Relaxed) {
            1 => self.configured,
            nodes => self.configured.divided(nodes),
        }
    }

    /// Takes one token for `key`, or says how long to wait.
    pub fn check(&self, key: &str) -> Result<(), RetryAfter> {
        self.check_n(key, 1)
    }

    /// Takes `count` tokens for `key` at once (a batch), or says how long to wait; nothing is
    /// taken when refused. A batch larger than `burst` needs a full bucket rather than more
    /// tokens than a bucket can hold, so no request is ever impossible.
    pub fn check_n(&self, key: &str, count: u32) -> Result<(), RetryAfter> {
        if count == 0 {
            return Ok(());
        }
        let policy = self.policy();
        let needed = f64::from(count.min(policy.burst));
        let now_ms = self.clock.now_ms();
        self.shard_for(key).take(key, needed, now_ms, &policy)
    }

    /// Number of keys currently tracked.
    pub fn len(&self) -> usize {
        (0..SHARD_COUNT).map(|index| self.lock(index).len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard_for(&self, key: &str) -> MutexGuard<'_, Shard> {
        let hash = self.shard_hasher.hash_one(key);
        // The remainder is below SHARD_COUNT, so it fits in usize.
        self.lock((hash % SHARD_COUNT as u64) as usize)
    }

    /// A shard's buckets are valid after every statement, so a panic elsewhere while the lock
    /// was held leaves nothing half-done: poisoning is ignored.
    fn lock(&self, index: usize) -> MutexGuard<'_, Shard> {
        self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("RateLimiter")
            .field("policy", &self.policy())
            .field("clock", &self.clock)
            .field("keys", &self.len())
            .finish_non_exhaustive()
    }
}

/// The configuration in the units the buckets compute with.
#[derive(Debug, Clone, Copy)]
struct Policy {
    burst: u32,
    capacity: f64,
    refill_per_second: f64,
    shard_keys_max: usize,
    /// After an eviction a shard holds at most this many keys.
    shard_keys_after_eviction: usize,
}

impl Policy {
    /// This policy's share for one of `nodes` nodes.
    fn divided(&self, nodes: u32) -> Self {
        let burst = (self.burst / nodes).max(1);
        Self {
            burst,
            capacity: f64::from(burst),
            refill_per_second: self.refill_per_second / f64::from(nodes),
            ..*self
        }
    }

    fn from_config(config: &RateLimitConfig) -> Result<Self, RateLimitConfigError> {
        if config.burst == 0 {
            return Err(RateLimitConfigError::BurstZero);
        }
        // NaN is refused too; infinity is allowed and means "always full".
        if config.refill_per_second.is_nan() || config.refill_per_second <= 0.0 {
            return Err(RateLimitConfigError::RefillNotPositive(
                config.refill_per_second,
            ));
        }
        if config.keys_max == 0 {
            return Err(RateLimitConfigError::KeysMaxZero);
        }
        let shard_keys_max = (config.keys_max / SHARD_COUNT).max(1);
        let eviction_count = (shard_keys_max / EVICTION_FRACTION_DIVISOR).max(1);
        Ok(Self {
            burst: config.burst,
            capacity: f64::from(config.burst),
            refill_per_second: config.refill_per_second,
            shard_keys_max,
            shard_keys_after_eviction: shard_keys_max - eviction_count,
        })
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    /// When the bucket was last used and refilled; never moves backwards.
    last_seen_ms: UnixMillis,
}

impl Bucket {
    fn full(policy: &Policy, now_ms: UnixMillis) -> Self {
        Self {
            tokens: policy.capacity,
            last_seen_ms: now_ms,
        }
    }

    fn tokens_at(&self, now_ms: UnixMillis, policy: &Policy) -> f64 {
        let elapsed_ms = now_ms.saturating_sub(self.last_seen_ms);
        if elapsed_ms <= 0 {
            // Also guards a clock that stepped backwards, and 0 × infinite refill (NaN).
            return self.tokens;
        }
        // Multiply before dividing: whole milliseconds at a whole rate then refill exactly.
        let refilled_tokens = elapsed_ms as f64 * policy.refill_per_second / MILLIS_PER_SECOND;
        let refilled = self.tokens + refilled_tokens;
        refilled.min(policy.capacity)
    }

    fn is_full_at(&self, now_ms: UnixMillis, policy: &Policy) -> bool {
        self.tokens_at(now_ms, policy) >= policy.capacity
    }

    fn take(&mut self, needed: f64, now_ms: UnixMillis, policy: &Policy) -> Result<(), RetryAfter> {
        self.tokens = self.tokens_at(now_ms, policy);
        self.last_seen_ms = self.last_seen_ms.max(now_ms);
        if self.tokens >= needed {
            self.tokens -= needed;
            return Ok(());
        }
        Err(retry_after(needed - self.tokens, policy))
    }
}

/// Whole seconds until `missing_tokens` have refilled, rounded up so that a retry at that time
/// succeeds, and at least 1 as `Retry-After: 0` would invite an immediate retry.
fn retry_after(missing_tokens: f64, policy: &Policy) -> RetryAfter {
    let wait_s = (missing_tokens / policy.refill_per_second).ceil();
    // A float-to-int `as` saturates, and the wait is finite and non-negative here.
    RetryAfter {
        seconds: (wait_s as u64).max(1),
    }
}

#[derive(Debug, Default)]
struct Shard {
    buckets: HashMap<String, Bucket>,
}

impl Shard {
    fn len(&self) -> usize {
        self.buckets.len()
    }

    fn take(
        &mut self,
        key: &str,
        needed: f64,
        now_ms: UnixMillis,
        policy: &Policy,
    ) -> Result<(), RetryAfter> {
        if let Some(bucket) = self.buckets.get_mut(key) {
            return bucket.take(needed, now_ms, policy);
        }
        if self.buckets.len() >= policy.shard_keys_max {
            self.evict(now_ms, policy);
        }
        let mut bucket = Bucket::full(policy, now_ms);
        let outcome = bucket.take(needed, now_ms, policy);
        self.buckets.insert(key.to_owned(), bucket);
        outcome
    }

    /// Makes room for new keys. Full buckets go first: a full bucket is the same as no bucket,
    /// so forgetting it changes no answer. Only if that frees too little are the least recently
    /// seen buckets dropped. Trade-off: a dropped bucket that was still limiting comes back full,
    /// so a caller spraying more distinct keys than `keys_max` within one refill period
    /// (`burst / refill_per_second`) can reset other keys' limits. Memory stays bounded, which
    /// matters more, and that many distinct users in so short a time is itself an incident.
    fn evict(&mut self, now_ms: UnixMillis, policy: &Policy) {
        self.buckets
            .retain(|_, bucket| !bucket.is_full_at(now_ms, policy));
        let target = policy.shard_keys_after_eviction;
        if self.buckets.len() > target {
            self.evict_least_recently_seen(self.buckets.len() - target);
        }
    }

    fn evict_least_recently_seen(&mut self, count: usize) {
        if count >= self.buckets.len() {
            self.buckets.clear();
            return;
        }
        let mut by_age: Vec<(UnixMillis, &String)> = self
            .buckets
            .iter()
            .map(|(key, bucket)| (bucket.last_seen_ms, key))
            .collect();
        by_age.select_nth_unstable_by_key(count, |(last_seen_ms, _)| *last_seen_ms);
        let oldest: Vec<String> = by_age[..count]
            .iter()
            .map(|(_, key)| (*key).clone())
            .collect();
        for key in oldest {
            self.buckets.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_pipeline::clock::ManualClock;

    const START_MS: UnixMillis = 1_700_000_000_000;

    fn manual_limiter(config: RateLimitConfig) -> (RateLimiter, ManualClock) {
        let clock = ManualClock::new(START_MS);
        let limiter = RateLimiter::new(config, Arc::new(clock.clone())).unwrap();
        (limiter, clock)
    }

    fn small_config() -> RateLimitConfig {
        RateLimitConfig {
            burst: 3,
            refill_per_second: 0.5,
            keys_max: 1_000,
        }
    }

    #[test]
    fn a_shared_allowance_admits_each_nodes_share() {
        let clock = Arc::new(ManualClock::new(1_000_000));
        let config = RateLimitConfig {
            burst: 20,
            refill_per_second: 10.0,
            ..RateLimitConfig::default()
        };
        let limiter = RateLimiter::new(config, clock.clone()).unwrap();
        limiter.share_between(2);
        for _ in 0..10 {
            assert!(limiter.check("u").is_ok());
        }
        assert!(
            limiter.check("u").is_err(),
            "half of the burst on each of two nodes"
        );
        clock.advance(1_000);
        for _ in 0..5 {
            assert!(limiter.check("u").is_ok(), "half of the refill");
        }
        assert!(limiter.check("u").is_err());
        limiter.share_between(1);
        clock.advance(2_000);
        for _ in 0..20 {
            assert!(limiter.check("u").is_ok(), "alone again: the whole burst");
        }
    }

    #[test]
    fn burst_is_allowed_then_limited_with_retry_after() {
        let (limiter, _clock) = manual_limiter(RateLimitConfig::default());
        for _ in 0..BURST_DEFAULT {
            assert_eq!(limiter.check("user-1"), Ok(()));
        }
        assert_eq!(limiter.check("user-1"), Err(RetryAfter { seconds: 1 }));

        let (slow, _clock) = manual_limiter(small_config());
        for _ in 0..3 {
            assert_eq!(slow.check("user-1"), Ok(()));
        }
        // One token at 0.5 per second takes 2 s.
        assert_eq!(slow.check("user-1"), Err(RetryAfter { seconds: 2 }));
    }

    #[test]
    fn refills_as_the_clock_advances() {
        let (limiter, clock) = manual_limiter(small_config());
        for _ in 0..3 {
            assert_eq!(limiter.check("user-1"), Ok(()));
        }
        clock.advance(1_000);
        // Half a token: one more second to go.
        assert_eq!(limiter.check("user-1"), Err(RetryAfter { seconds: 1 }));
        clock.advance(1_000);
        assert_eq!(limiter.check("user-1"), Ok(()));
        assert!(limiter.check("user-1").is_err());

        clock.advance(60_000);
        for _ in 0..3 {
            assert_eq!(limiter.check("user-1"), Ok(()));
        }
        assert!(
            limiter.check("user-1").is_err(),
            "refill is capped at burst"
        );
    }

    #[test]
    fn refused_requests_take_nothing() {
        let (limiter, clock) = manual_limiter(small_config());
        for _ in 0..3 {
            assert_eq!(limiter.check("user-1"), Ok(()));
        }
        for _ in 0..10 {
            assert_eq!(limiter.check("user-1"), Err(RetryAfter { seconds: 2 }));
        }
        clock.advance(2_000);
        assert_eq!(limiter.check("user-1"), Ok(()));
    }

    #[test]
    fn keys_are_independent() {
        let (limiter, _clock) = manual_limiter(small_config());
        for _ in 0..3 {
            assert_eq!(limiter.check("user-1"), Ok(()));
        }
        assert!(limiter.check("user-1").is_err());
        for _ in 0..3 {
            assert_eq!(limiter.check("user-2"), Ok(()));
        }
        assert_eq!(limiter.len(), 2);
    }

    #[test]
    fn check_n_takes_a_batch_and_caps_it_at_burst() {
        let (limiter, clock) = manual_limiter(small_config());
        assert_eq!(limiter.check_n("user-1", 2), Ok(()));
        // 1 token left, 3 needed: 2 missing at 0.5 per second.
        assert_eq!(limiter.check_n("user-1", 3), Err(RetryAfter { seconds: 4 }));
        assert_eq!(limiter.check_n("user-1", 0), Ok(()));
        assert_eq!(limiter.check_n("user-1", 1), Ok(()));

        // Larger than the bucket: needs a full bucket, never impossible.
        assert_eq!(
            limiter.check_n("user-2", 1_000),
            Ok(()),
            "a fresh bucket is full"
        );
        assert_eq!(
            limiter.check_n("user-2", 1_000),
            Err(RetryAfter { seconds: 6 })
        );
        clock.advance(6_000);
        assert_eq!(limiter.check_n("user-2", 1_000), Ok(()));
    }

    #[test]
    fn map_stays_bounded() {
        let config = RateLimitConfig {
            keys_max: 64,
            ..small_config()
        };
        let (limiter, clock) = manual_limiter(config);
        for index in 0..5_000 {
            assert_eq!(limiter.check(&format!("user-{index}")), Ok(()));
            if index % 100 == 0 {
                clock.advance(1);
            }
            assert!(limiter.len() <= 64, "{} keys", limiter.len());
        }
        assert!(!limiter.is_empty());
    }

    fn shard_policy(keys_max_per_shard: usize) -> Policy {
        let config = RateLimitConfig {
            keys_max: keys_max_per_shard * SHARD_COUNT,
            ..small_config()
        };
        Policy::from_config(&config).unwrap()
    }

    #[test]
    fn eviction_drops_full_buckets_before_limited_ones() {
        let policy = shard_policy(16);
        let mut shard = Shard::default();
        // The oldest key is drained, so it is still limiting when the shard fills up.
        for _ in 0..3 {
            assert_eq!(shard.take("abuser", 1.0, START_MS, &policy), Ok(()));
        }
        for index in 0..15 {
            assert_eq!(
                shard.take(&format!("idle-{index}"), 1.0, START_MS + 1, &policy),
                Ok(())
            );
        }
        // 2.1 s later the idle keys have refilled; the abuser has only 1.05 of 3 tokens back.
        let later_ms = START_MS + 2_100;
        assert_eq!(shard.take("newcomer", 1.0, later_ms, &policy), Ok(()));
        assert_eq!(shard.len(), 2);
        assert_eq!(
            shard.take("abuser", 2.0, later_ms, &policy),
            Err(RetryAfter { seconds: 2 }),
            "the abuser's limit survived eviction"
        );
    }

    #[test]
    fn eviction_falls_back_to_least_recently_seen() {
        let policy = shard_policy(16);
        let mut shard = Shard::default();
        for index in 0..16 {
            let key = format!("user-{index}");
            for _ in 0..3 {
                assert_eq!(shard.take(&key, 1.0, START_MS + index, &policy), Ok(()));
            }
        }
        assert_eq!(shard.take("newcomer", 1.0, START_MS + 16, &policy), Ok(()));
        // 16 / 8 = 2 evicted: the two seen longest ago.
        assert_eq!(shard.len(), 15);
        assert!(!shard.buckets.contains_key("user-0"));
        assert!(!shard.buckets.contains_key("user-1"));
        assert!(shard.buckets.contains_key("user-2"));
        assert!(shard.buckets.contains_key("newcomer"));
    }

    #[test]
    fn a_shard_of_one_key_still_works() {
        let policy = shard_policy(1);
        let mut shard = Shard::default();
        assert_eq!(shard.take("user-1", 1.0, START_MS, &policy), Ok(()));
        assert_eq!(shard.take("user-2", 1.0, START_MS, &policy), Ok(()));
        assert_eq!(shard.len(), 1);
    }

    #[test]
    fn a_disabled_limit_never_limits() {
        let config = RateLimitConfig {
            burst: u32::MAX,
            refill_per_second: f64::INFINITY,
            keys_max: KEYS_MAX_DEFAULT,
        };
        let (limiter, clock) = manual_limiter(config);
        for index in 0..10_000 {
            assert_eq!(limiter.check("user-1"), Ok(()));
            assert_eq!(limiter.check_n("user-1", 100), Ok(()));
            if index % 1_000 == 0 {
                clock.advance(1);
            }
        }
    }

    #[test]
    fn a_clock_stepping_back_refills_nothing() {
        let (limiter, clock) = manual_limiter(small_config());
        for _ in 0..3 {
            assert_eq!(limiter.check("user-1"), Ok(()));
        }
        clock.advance(-60_000);
        assert!(limiter.check("user-1").is_err());
        clock.advance(60_000 + 2_000);
        assert_eq!(limiter.check("user-1"), Ok(()));
    }

    #[test]
    fn impossible_configs_are_refused() {
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(START_MS));
        let refused = |config: RateLimitConfig| RateLimiter::new(config, clock.clone()).err();
        assert_eq!(
            refused(RateLimitConfig {
                burst: 0,
                ..small_config()
            }),
            Some(RateLimitConfigError::BurstZero)
        );
        assert!(matches!(
            refused(RateLimitConfig {
                refill_per_second: f64::NAN,
                ..small_config()
            }),
            Some(RateLimitConfigError::RefillNotPositive(_))
        ));
        assert_eq!(
            refused(RateLimitConfig {
                refill_per_second: 0.0,
                ..small_config()
            }),
            Some(RateLimitConfigError::RefillNotPositive(0.0))
        );
        assert_eq!(
            refused(RateLimitConfig {
                keys_max: 0,
                ..small_config()
            }),
            Some(RateLimitConfigError::KeysMaxZero)
        );
    }

    #[test]
    fn limiter_is_shared_between_threads() {
        let (limiter, _clock) = manual_limiter(small_config());
        let allowed: usize = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| (0..10).filter(|_| limiter.check("user-1").is_ok()).count())
                })
                .collect();
            handles
                .into_iter()
                .map(|handle| handle.join().unwrap())
                .sum()
        });
        assert_eq!(allowed, 3);
    }
}
