//! The results topic: every owner's committed per-partition results, folded by every node.
//!
//! After each checkpoint commit an owner offers the [`PartitionUpdate`] it published locally —
//! campaign totals and window buckets **as absolute values, with the offset they reflect** — to
//! its [`ResultsPublisher`], which appends it to the results topic. An owner that starts
//! offers its whole loaded state once, which covers anything committed but not published
//! before a crash. Every node folds the topic into its read model for the partitions it does
//! not own ([`follow_results`]); applying an update for an offset below what a partition
//! already shows is ignored, so re-delivery, reordering and two owners publishing the same
//! partition are harmless.
//!
//! Updates waiting for the cluster are merged per partition (later absolute values replace
//! earlier ones), so a cluster away for a while costs memory for the changed keys only.
//!
//! A follower saves what it folded, with the topic offset it reached, to a [`ResultsCache`]
//! file in the node's data directory every few seconds; a restart loads it and folds the topic
//! from that offset instead of from its beginning. The cache is only a shortcut: its updates
//! are absolute values with their offsets like any other, and a cache that does not fit the
//! topic (an offset past its end) is ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};

use crate::backoff::Backoff;
use crate::codec;
use crate::log::{KeyedRecord, Log, LogError, Offset, PartitionId};
use crate::operators::campaign_totals::CampaignTotal;
use crate::operators::event_time_windows::{BucketKey, WindowBucket};
use crate::read_model::{PartitionUpdate, ReadModel};
use crate::runner::UpdateSink;

/// The largest record of the results topic, key and value: the topic is opened with it. A
/// window bucket's histogram is at most a few tens of KiB (one pair per distinct amount bucket).
pub const RESULTS_RECORD_BYTES_MAX: usize = 192 * 1024;
/// Records are filled up to this much; a larger update is split into several records for the
/// same offset.
const RECORD_FILL_BYTES: usize = 64 * 1024;
/// One append carries at most this much (the log bounds what waits for the cluster).
const APPEND_FILL_BYTES: usize = 512 * 1024;
/// Updates are gathered this long after a publish before the next one: a few checkpoints of a
/// busy partition go out as one update, which halves the topic's volume at the cost of as much
/// freshness on other nodes.
const PUBLISH_INTERVAL: Duration = Duration::from_millis(100);
/// Records read per step while folding.
const READ_RECORDS: usize = 1024;

/// One record of the results topic.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum ResultsRecord {
    Update(PartitionUpdate),
}

/// A partition's updates not yet on the topic, merged.
#[derive(Debug)]
struct Pending {
    latest: PartitionUpdate,
    totals: BTreeMap<String, CampaignTotal>,
    buckets: BTreeMap<BucketKey, WindowBucket>,
}

impl Pending {
    fn new(update: &PartitionUpdate) -> Self {
        let mut pending = Self {
            latest: PartitionUpdate::default(),
            totals: BTreeMap::new(),
            buckets: BTreeMap::new(),
        };
        pending.absorb(update);
        pending
    }

    /// Takes in a later update.
    fn absorb(&mut self, update: &PartitionUpdate) {
        debug_assert!(update.next_offset >= self.latest.next_offset);
        self.latest = PartitionUpdate {
            totals: Vec::new(),
            buckets: Vec::new(),
            ..update.clone_header()
        };
        self.totals.extend(update.totals.iter().cloned());
        self.buckets.extend(update.buckets.iter().cloned());
    }

    /// Takes in an earlier, unpublished pending (its values yield to this one's).
    fn absorb_earlier(&mut self, earlier: Pending) {
        let mut totals = earlier.totals;
        totals.append(&mut self.totals);
        self.totals = totals;
        let mut buckets = earlier.buckets;
        buckets.append(&mut self.buckets);
        self.buckets = buckets;
    }

    /// The records that publish it: every one carries the header, the entries are spread out
    /// so that each record stays near [`RECORD_FILL_BYTES`].
    fn records(&self) -> Vec<KeyedRecord> {
        let key = self.latest.partition.to_be_bytes().to_vec();
        let mut records = Vec::new();
        let mut update = self.latest.clone_header();
        let mut bytes = 0;
        let mut seal = |update: &mut PartitionUpdate, bytes: &mut usize| {
            let full = std::mem::replace(update, self.latest.clone_header());
            let value = codec::encode(&ResultsRecord::Update(full));
            debug_assert!(key.len() + value.len() <= RESULTS_RECORD_BYTES_MAX);
            records.push(KeyedRecord {
                key: key.clone(),
                value,
            });
            *bytes = 0;
        };
        for (campaign_id, total) in &self.totals {
            let entry_bytes = campaign_id.len() + 32;
            if bytes > 0 && bytes + entry_bytes > RECORD_FILL_BYTES {
                seal(&mut update, &mut bytes);
            }
            bytes += entry_bytes;
            update.totals.push((campaign_id.clone(), *total));
        }
        for (bucket_key, bucket) in &self.buckets {
            let entry_bytes = bucket_key.campaign_id.len() + 64 + 16 * bucket.histogram.len();
            if bytes > 0 && bytes + entry_bytes > RECORD_FILL_BYTES {
                seal(&mut update, &mut bytes);
            }
            bytes += entry_bytes;
            update.buckets.push((bucket_key.clone(), bucket.clone()));
        }
        seal(&mut update, &mut bytes);
        records
    }
}

/// Publishes an owner's committed updates to the results topic.
#[derive(Debug)]
pub struct ResultsPublisher {
    log: Arc<dyn Log>,
    pending: Mutex<BTreeMap<PartitionId, Pending>>,
    wake: Notify,
}

impl UpdateSink for ResultsPublisher {
    fn offer(&self, update: &PartitionUpdate) {
        let mut pending = self.lock();
        match pending.get_mut(&update.partition) {
            Some(waiting) => waiting.absorb(update),
            None => {
                pending.insert(update.partition, Pending::new(update));
            }
        }
        drop(pending);
        self.wake.notify_one();
    }
}

impl ResultsPublisher {
    pub fn new(log: Arc<dyn Log>) -> Self {
        Self {
            log,
            pending: Mutex::new(BTreeMap::new()),
            wake: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<PartitionId, Pending>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends whatever is offered until `shutdown`, then makes one last attempt.
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Backoff::for_log();
        loop {
            let stopping = *shutdown.borrow();
            match self.publish_pending().await {
                Ok(()) => backoff.reset(),
                Err(error) if !stopping => {
                    tracing::warn!(%error, "cannot publish results; retrying in {:?}", backoff.next());
                    backoff.pause(&mut shutdown).await;
                    continue;
                }
                Err(error) => {
                    tracing::warn!(%error, "results not published at shutdown; the next start publishes them");
                }
            }
            if stopping {
                return;
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = shutdown.changed() => continue,
            }
            tokio::select! {
                _ = tokio::time::sleep(PUBLISH_INTERVAL) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// Appends every pending update; on failure puts them back under any newer ones.
    async fn publish_pending(&self) -> Result<(), LogError> {
        let taken = std::mem::take(&mut *self.lock());
        if taken.is_empty() {
            return Ok(());
        }
        let records: Vec<KeyedRecord> = taken.values().flat_map(Pending::records).collect();
        match self.append_all(records).await {
            Ok(()) => Ok(()),
            Err(error) => {
                let mut pending = self.lock();
                for (partition, earlier) in taken {
                    match pending.get_mut(&partition) {
                        Some(later) => later.absorb_earlier(earlier),
                        None => {
                            pending.insert(partition, earlier);
                        }
                    }
                }
                Err(error)
            }
        }
    }
}

impl ResultsPublisher {
    /// Appends the records in order, in appends of at most [`APPEND_FILL_BYTES`].
    async fn append_all(&self, records: Vec<KeyedRecord>) -> Result<(), LogError> {
        let mut append = Vec::new();
        let mut bytes = 0;
        for record in records {
            let record_bytes = record.key.len() + record.value.len();
            if !append.is_empty() && bytes + record_bytes > APPEND_FILL_BYTES {
                self.log.append(0, std::mem::take(&mut append)).await?;
                bytes = 0;
            }
            bytes += record_bytes;
            append.push(record);
        }
        if !append.is_empty() {
            self.log.append(0, append).await?;
        }
        Ok(())
    }
}

/// Folds the results topic from `from` up to its end into `read_model`, skipping the partitions
/// this node owns (their runners publish locally). Returns where to go on from.
pub async fn catch_up_results(
    log: &dyn Log,
    read_model: &ReadModel,
    owned: &[PartitionId],
    mut from: Offset,
) -> Result<Offset, LogError> {
    loop {
        let records = log.read(0, from, READ_RECORDS).await?;
        let Some(last) = records.last() else {
            return Ok(from);
        };
        from = last.offset + 1;
        for record in records {
            match codec::decode::<ResultsRecord>(&record.value) {
                Ok(ResultsRecord::Update(update)) => {
                    if !owned.contains(&update.partition)
                        && update.partition < read_model.partition_count()
                    {
                        read_model.publish(update);
                    }
                }
                Err(error) => tracing::error!(
                    offset = record.offset,
                    %error,
                    "skipping a results record this build cannot read"
                ),
            }
        }
    }
}

/// Follows the results topic from `from` until `shutdown`, waiting out an unavailable cluster,
/// and saves what it folded to `cache` now and then (and when it stops).
pub async fn follow_results(
    log: Arc<dyn Log>,
    read_model: Arc<ReadModel>,
    owned: Vec<PartitionId>,
    mut from: Offset,
    cache: Option<ResultsCache>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::for_log();
    let mut saved_at = Instant::now();
    let mut saved_offset = from;
    while !*shutdown.borrow() {
        match catch_up_results(log.as_ref(), &read_model, &owned, from).await {
            Ok(next) => {
                from = next;
                backoff.reset();
                if let Some(cache) = &cache
                    && from > saved_offset
                    && saved_at.elapsed() >= CACHE_SAVE_INTERVAL
                {
                    cache.save_logged(&read_model, &owned, from);
                    (saved_at, saved_offset) = (Instant::now(), from);
                }
                tokio::select! {
                    _ = log.wait_for_offset(0, from) => {}
                    _ = shutdown.changed() => {}
                    _ = tokio::time::sleep(CACHE_SAVE_INTERVAL) => {}
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot read the results topic; retrying in {:?}", backoff.next());
                backoff.pause(&mut shutdown).await;
            }
        }
    }
    if let Some(cache) = &cache
        && from > saved_offset
    {
        cache.save_logged(&read_model, &owned, from);
    }
}

/// How often a follower saves what it folded.
const CACHE_SAVE_INTERVAL: Duration = Duration::from_secs(5);

/// What a node folded from the results topic, saved in its data directory.
#[derive(Debug, Clone)]
pub struct ResultsCache {
    path: PathBuf,
}

/// The cache file's contents.
#[derive(Debug, Serialize, Deserialize)]
struct CachedResults {
    /// The results topic's offset the views reflect (fold on from here).
    next_offset: Offset,
    partition_count: u32,
    /// The partitions the node owned (and so left out); a node that owns others since must
    /// fold the topic from its beginning for them.
    owned: Vec<PartitionId>,
    views: Vec<PartitionUpdate>,
}

#[derive(Debug, thiserror::Error)]
pub enum ResultsCacheError {
    #[error("results cache {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ResultsCache {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// Saves every partition not in `owned` and the offset they reflect: written beside, synced,
    /// renamed over the old file.
    pub fn save(
        &self,
        read_model: &ReadModel,
        owned: &[PartitionId],
        next_offset: Offset,
    ) -> Result<(), ResultsCacheError> {
        let cached = CachedResults {
            next_offset,
            partition_count: read_model.partition_count(),
            owned: owned.to_vec(),
            views: (0..read_model.partition_count())
                .filter(|p| !owned.contains(p))
                .map(|p| read_model.export_partition(p))
                .collect(),
        };
        let io = |source| ResultsCacheError::Io {
            path: self.path.clone(),
            source,
        };
        let bytes = codec::encode(&cached);
        let temporary = self.path.with_extension("tmp");
        {
            use std::io::Write;
            let mut file = std::fs::File::create(&temporary).map_err(io)?;
            file.write_all(&bytes).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        std::fs::rename(&temporary, &self.path).map_err(io)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io)?;
        }
        Ok(())
    }

    fn save_logged(&self, read_model: &ReadModel, owned: &[PartitionId], next_offset: Offset) {
        if let Err(error) = self.save(read_model, owned, next_offset) {
            tracing::warn!(%error, "cannot save the results cache; a restart folds more of the topic");
        }
    }

    /// Publishes the saved views of partitions not in `owned` and returns the results topic
    /// offset to fold on from — 0 without a usable cache. `topic_end` is the topic's end now: a
    /// cache beyond it does not belong to this topic and is ignored.
    pub fn load(&self, read_model: &ReadModel, owned: &[PartitionId], topic_end: Offset) -> Offset {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return 0,
            Err(error) => {
                tracing::warn!(path = %self.path.display(), %error, "ignoring the results cache");
                return 0;
            }
        };
        let cached: CachedResults = match codec::decode(&bytes) {
            Ok(cached) => cached,
            Err(error) => {
                tracing::warn!(path = %self.path.display(), %error, "ignoring a damaged results cache");
                return 0;
            }
        };
        let fits = cached.next_offset <= topic_end
            && cached.partition_count == read_model.partition_count()
            && cached.owned == owned;
        if !fits {
            tracing::warn!(
                path = %self.path.display(),
                "ignoring a results cache that does not fit the results topic"
            );
            return 0;
        }
        for view in cached.views {
            if !owned.contains(&view.partition) {
                read_model.publish(view);
            }
        }
        cached.next_offset
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{EmbeddedLog, EmbeddedLogOptions};
    use crate::operators::event_time_windows::Granularity;

    fn update(partition: PartitionId, next_offset: Offset, total_cents: u64) -> PartitionUpdate {
        let mut bucket = WindowBucket::default();
        bucket.add(total_cents);
        PartitionUpdate {
            partition,
            next_offset,
            totals: vec![(
                "meals".into(),
                CampaignTotal {
                    total_cents,
                    donations: next_offset,
                },
            )],
            buckets: vec![(
                BucketKey {
                    campaign_id: "meals".into(),
                    granularity: Granularity::Minute,
                    start_ms: 60_000,
                },
                bucket,
            )],
            ..PartitionUpdate::default()
        }
    }

    #[tokio::test]
    async fn published_updates_reach_another_nodes_read_model_once_and_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let options = EmbeddedLogOptions {
            partition_count: 1,
            ..EmbeddedLogOptions::default()
        };
        let log: Arc<dyn Log> = Arc::new(EmbeddedLog::open(dir.path(), options).unwrap());
        let publisher = ResultsPublisher::new(Arc::clone(&log));
        publisher.offer(&update(1, 10, 500));
        publisher.offer(&update(1, 12, 700));
        publisher.offer(&update(0, 3, 100));
        publisher.publish_pending().await.unwrap();
        // A stale update re-delivered after a newer one changes nothing.
        publisher.offer(&update(1, 11, 600));
        publisher.publish_pending().await.unwrap();

        let reader = ReadModel::new(2);
        let next = catch_up_results(log.as_ref(), &reader, &[], 0)
            .await
            .unwrap();
        assert_eq!(reader.campaign_total("meals").total_cents, 800);
        assert_eq!(reader.progress()[1].applied_offset, 12);
        let stats = reader.stats("meals", 0, 120_000, None).unwrap();
        assert_eq!(stats.sum_cents, 800);

        // A node that owns partition 0 leaves it to its own runner.
        let owner = ReadModel::new(2);
        catch_up_results(log.as_ref(), &owner, &[0], 0)
            .await
            .unwrap();
        assert_eq!(owner.campaign_total("meals").total_cents, 700);
        assert_eq!(
            catch_up_results(log.as_ref(), &reader, &[], next)
                .await
                .unwrap(),
            next
        );
    }

    #[tokio::test]
    async fn a_restart_resumes_from_the_cache_and_ignores_one_that_does_not_fit() {
        let dir = tempfile::tempdir().unwrap();
        let options = EmbeddedLogOptions {
            partition_count: 1,
            ..EmbeddedLogOptions::default()
        };
        let log: Arc<dyn Log> =
            Arc::new(EmbeddedLog::open(&dir.path().join("topic"), options).unwrap());
        let publisher = ResultsPublisher::new(Arc::clone(&log));
        publisher.offer(&update(1, 10, 500));
        publisher.offer(&update(0, 4, 100));
        publisher.publish_pending().await.unwrap();

        let first = ReadModel::new(2);
        let next = catch_up_results(log.as_ref(), &first, &[0], 0)
            .await
            .unwrap();
        let cache = ResultsCache::new(dir.path().join("results-cache"));
        cache.save(&first, &[0], next).unwrap();
        publisher.offer(&update(1, 20, 900));
        publisher.publish_pending().await.unwrap();

        // Restarted: the cache gives partition 1 at offset 10, the topic the rest.
        let restarted = ReadModel::new(2);
        let end = log.end_offset(0).await.unwrap();
        let from = cache.load(&restarted, &[0], end);
        assert_eq!(from, next);
        assert_eq!(restarted.campaign_total("meals").total_cents, 500);
        catch_up_results(log.as_ref(), &restarted, &[0], from)
            .await
            .unwrap();
        assert_eq!(restarted.campaign_total("meals").total_cents, 900);
        assert_eq!(
            restarted.progress()[0].applied_offset,
            0,
            "owned: left to the runner"
        );

        // A cache past the topic's end belongs to another topic; one saved while the node owned
        // other partitions lacks some.
        let other = ReadModel::new(2);
        assert_eq!(cache.load(&other, &[0], next - 1), 0);
        assert_eq!(cache.load(&other, &[1], end), 0);
        assert_eq!(other.campaign_total("meals").total_cents, 0);
    }

    #[test]
    fn a_large_update_is_split_into_records_for_one_offset() {
        let mut big = update(2, 99, 1);
        big.buckets = (0..2500i64)
            .map(|minute| {
                let key = BucketKey {
                    campaign_id: "meals".into(),
                    granularity: Granularity::Minute,
                    start_ms: minute * 60_000,
                };
                let mut bucket = WindowBucket::default();
                for amount in 1..=20 {
                    bucket.add(amount * 1000 + minute as u64);
                }
                (key, bucket)
            })
            .collect();
        let records = Pending::new(&big).records();
        assert!(records.len() > 5, "{} records", records.len());
        for record in &records {
            assert!(
                record.value.len() <= RECORD_FILL_BYTES * 2,
                "{}",
                record.value.len()
            );
        }
        let mut buckets = 0;
        for record in records {
            let ResultsRecord::Update(part) = codec::decode(&record.value).unwrap();
            assert_eq!((part.partition, part.next_offset), (2, 99));
            buckets += part.buckets.len();
        }
        assert_eq!(buckets, 2500);
    }
}
