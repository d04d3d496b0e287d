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
//!
//! # Formats
//! A results record is `[0xFF, version, bincode of ResultsRecordV1]`
//! ([`crate::codec::encode_versioned`]); this build writes version 1 and reads it and records
//! written before versions existed (a bare bincode enum whose only kind, `Update`, starts the
//! record with `00 00 00 00`; read as version 0). The cache file is the 8 bytes
//! `CACHE_MAGIC`, a version byte and bincode of `CachedResultsV1`; a file without the magic is
//! one written before versions existed (its first 8 bytes are the offset it reflects, see
//! `CACHE_MAGIC`). Both carry partition updates in the frozen layout `PartitionUpdateV1`,
//! not in [`PartitionUpdate`]'s own, so a field added to `PartitionUpdate` is a new version here
//! with the old one still decoded. A record or cache of a later version is a
//! [`FormatError::UnknownVersion`]: the record is skipped and logged, the cache ignored.
//! `tests/cluster_format_fixtures.rs` pins every version.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};

use crate::backoff::Backoff;
use crate::clock::UnixMillis;
use crate::codec::{self, FormatError};
use crate::log::{KeyedRecord, Log, LogError, Offset, PartitionId};
use crate::operators::campaign_totals::CampaignTotal;
use crate::operators::event_time_windows::{BucketKey, WindowBucket};
use crate::processor::PartitionCounters;
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

/// One record of the results topic, as this build works with it.
#[derive(Debug, Clone)]
enum ResultsRecord {
    Update(PartitionUpdate),
}

/// The results record format this build writes.
const RESULTS_RECORD_VERSION: u8 = 1;
const RESULTS_RECORD: &str = "results record";

/// A results record of version 1.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum ResultsRecordV1 {
    Update(PartitionUpdateV1),
}

/// A results record written before versions existed. Its one kind makes every such record
/// start with `00 00 00 00`, never with [`codec::VERSION_MARKER`].
#[derive(Debug, Clone, Serialize, Deserialize)]
enum UnversionedResultsRecord {
    Update(PartitionUpdateV1),
}

impl ResultsRecord {
    fn encode(self) -> Vec<u8> {
        let record = match self {
            ResultsRecord::Update(update) => ResultsRecordV1::Update(update.into()),
        };
        codec::encode_versioned(RESULTS_RECORD_VERSION, &record)
    }

    /// Decodes a results record of any version this build knows.
    fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        match codec::split_versioned(RESULTS_RECORD, bytes)? {
            (version @ codec::UNVERSIONED, body) => {
                match codec::decode_body(RESULTS_RECORD, version, body)? {
                    UnversionedResultsRecord::Update(update) => {
                        Ok(ResultsRecord::Update(update.into()))
                    }
                }
            }
            (version @ RESULTS_RECORD_VERSION, body) => {
                match codec::decode_body(RESULTS_RECORD, version, body)? {
                    ResultsRecordV1::Update(update) => Ok(ResultsRecord::Update(update.into())),
                }
            }
            (version, _) => Err(FormatError::UnknownVersion {
                kind: RESULTS_RECORD,
                version,
                known: RESULTS_RECORD_VERSION,
            }),
        }
    }
}

/// [`PartitionUpdate`]'s layout in the unversioned formats and in version 1, frozen: a change to
/// `PartitionUpdate` needs a new version of the formats that carry it, with a `V2` beside this.
/// The `From` conversions list every field, so such a change does not compile until it is made.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PartitionUpdateV1 {
    partition: PartitionId,
    next_offset: Offset,
    committed_at_ms: UnixMillis,
    checkpoint_duration_us: u64,
    watermark_ms: Option<UnixMillis>,
    counters: PartitionCountersV1,
    totals: Vec<(String, CampaignTotal)>,
    buckets: Vec<(BucketKey, WindowBucket)>,
}

/// [`PartitionCounters`]' layout in [`PartitionUpdateV1`], frozen likewise.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct PartitionCountersV1 {
    applied: u64,
    recorded: u64,
    duplicates: u64,
    conflicts: u64,
    late: u64,
}

impl From<PartitionUpdate> for PartitionUpdateV1 {
    fn from(update: PartitionUpdate) -> Self {
        let counters = update.counters;
        Self {
            partition: update.partition,
            next_offset: update.next_offset,
            committed_at_ms: update.committed_at_ms,
            checkpoint_duration_us: update.checkpoint_duration_us,
            watermark_ms: update.watermark_ms,
            counters: PartitionCountersV1 {
                applied: counters.applied,
                recorded: counters.recorded,
                duplicates: counters.duplicates,
                conflicts: counters.conflicts,
                late: counters.late,
            },
            totals: update.totals,
            buckets: update.buckets,
        }
    }
}

impl From<PartitionUpdateV1> for PartitionUpdate {
    fn from(update: PartitionUpdateV1) -> Self {
        let counters = update.counters;
        Self {
            partition: update.partition,
            next_offset: update.next_offset,
            committed_at_ms: update.committed_at_ms,
            checkpoint_duration_us: update.checkpoint_duration_us,
            watermark_ms: update.watermark_ms,
            counters: PartitionCounters {
                applied: counters.applied,
                recorded: counters.recorded,
                duplicates: counters.duplicates,
                conflicts: counters.conflicts,
                late: counters.late,
            },
            totals: update.totals,
            buckets: update.buckets,
        }
    }
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
            let value = ResultsRecord::Update(full).encode();
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
            match ResultsRecord::decode(&record.value) {
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

/// The cache file's contents, as this build works with them.
#[derive(Debug)]
struct CachedResults {
    /// The results topic's offset the views reflect (fold on from here).
    next_offset: Offset,
    partition_count: u32,
    /// The partitions the node owned (and so left out); a node that owns others since must
    /// fold the topic from its beginning for them.
    owned: Vec<PartitionId>,
    views: Vec<PartitionUpdate>,
}

/// The first 8 bytes of a versioned cache file, then a version byte.
///
/// A cache written before versions existed starts with its `next_offset`, a little-endian
/// `u64`. Offsets are below 2^63 (Fluvio's are `i64`; the embedded log's count records), so that
/// file's eighth byte is below 0x80, while this magic's is 0xFF: no unversioned cache starts
/// with it.
const CACHE_MAGIC: [u8; 8] = *b"tallyrc\xFF";
const _: () = assert!(CACHE_MAGIC[7] >= 0x80);
/// The cache format this build writes.
const CACHE_VERSION: u8 = 1;
const RESULTS_CACHE: &str = "results cache";

/// The cache file of version 1, and (the same layout without the header) of unversioned ones.
#[derive(Debug, Serialize, Deserialize)]
struct CachedResultsV1 {
    next_offset: Offset,
    partition_count: u32,
    owned: Vec<PartitionId>,
    views: Vec<PartitionUpdateV1>,
}

impl CachedResults {
    fn encode(self) -> Vec<u8> {
        let v1 = CachedResultsV1 {
            next_offset: self.next_offset,
            partition_count: self.partition_count,
            owned: self.owned,
            views: self.views.into_iter().map(Into::into).collect(),
        };
        let mut bytes = CACHE_MAGIC.to_vec();
        bytes.push(CACHE_VERSION);
        bytes.extend_from_slice(&codec::encode(&v1));
        bytes
    }

    /// Decodes a cache file of any version this build knows.
    fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let (version, body) = match bytes.strip_prefix(&CACHE_MAGIC) {
            None => (codec::UNVERSIONED, bytes),
            Some([version, body @ ..]) => (*version, body),
            Some([]) => {
                return Err(FormatError::Malformed {
                    kind: RESULTS_CACHE,
                    version: codec::UNVERSIONED,
                    reason: "the header ends before its version".into(),
                });
            }
        };
        let v1: CachedResultsV1 = match version {
            codec::UNVERSIONED | CACHE_VERSION => codec::decode_body(RESULTS_CACHE, version, body)?,
            version => {
                return Err(FormatError::UnknownVersion {
                    kind: RESULTS_CACHE,
                    version,
                    known: CACHE_VERSION,
                });
            }
        };
        Ok(Self {
            next_offset: v1.next_offset,
            partition_count: v1.partition_count,
            owned: v1.owned,
            views: v1.views.into_iter().map(Into::into).collect(),
        })
    }
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
        let bytes = cached.encode();
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
        let cached = match CachedResults::decode(&bytes) {
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
            let ResultsRecord::Update(part) = ResultsRecord::decode(&record.value).unwrap();
            assert_eq!((part.partition, part.next_offset), (2, 99));
            buckets += part.buckets.len();
        }
        assert_eq!(buckets, 2500);
    }

    #[test]
    fn unversioned_and_version_1_records_decode_and_cannot_be_confused() {
        let unversioned = codec::encode(&UnversionedResultsRecord::Update(update(1, 7, 3).into()));
        assert_eq!(unversioned[..4], [0, 0, 0, 0]);
        let ResultsRecord::Update(decoded) = ResultsRecord::decode(&unversioned).unwrap();
        assert_eq!(format!("{decoded:?}"), format!("{:?}", update(1, 7, 3)));
        let versioned = ResultsRecord::Update(update(1, 7, 3)).encode();
        assert_eq!(versioned[..2], [codec::VERSION_MARKER, 1]);
        let ResultsRecord::Update(decoded) = ResultsRecord::decode(&versioned).unwrap();
        assert_eq!(format!("{decoded:?}"), format!("{:?}", update(1, 7, 3)));

        let mut newer = versioned;
        newer[1] = 2;
        assert!(matches!(
            ResultsRecord::decode(&newer),
            Err(FormatError::UnknownVersion { version: 2, .. })
        ));
    }

    #[test]
    fn an_unversioned_cache_never_starts_with_the_magic_and_a_newer_one_is_refused() {
        let cached = || CachedResults {
            next_offset: i64::MAX as Offset,
            partition_count: 2,
            owned: vec![0],
            views: vec![update(1, 7, 3)],
        };
        let old = CachedResultsV1 {
            next_offset: i64::MAX as Offset,
            partition_count: 2,
            owned: vec![0],
            views: vec![update(1, 7, 3).into()],
        };
        let unversioned = codec::encode(&old);
        assert!(unversioned[7] < CACHE_MAGIC[7], "the largest offset");
        let decoded = CachedResults::decode(&unversioned).unwrap();
        assert_eq!(format!("{decoded:?}"), format!("{:?}", cached()));

        let mut versioned = cached().encode();
        assert_eq!(versioned[..9], *b"tallyrc\xFF\x01");
        let decoded = CachedResults::decode(&versioned).unwrap();
        assert_eq!(format!("{decoded:?}"), format!("{:?}", cached()));
        versioned[8] = 7;
        assert!(matches!(
            CachedResults::decode(&versioned),
            Err(FormatError::UnknownVersion { version: 7, .. })
        ));
        assert!(matches!(
            CachedResults::decode(&CACHE_MAGIC),
            Err(FormatError::Malformed { .. })
        ));
    }
}
