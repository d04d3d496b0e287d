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
//! # Snapshots and retention
//! An owner also publishes a **snapshot** of each of its partitions — its whole view, split into
//! records like an update, parts `0..n` naming one snapshot — at least every
//! [`SNAPSHOT_INTERVAL`] (idle or not) and after [`SNAPSHOT_UPDATES_MAX`] updates. A snapshot
//! goes out only once the owner's read model reflects everything offered, so no update of the
//! partition that is newer than the snapshot sits before it on the topic. A node starting
//! without a cache (or with one older than the snapshots) finds each partition's latest
//! complete snapshot by reading the topic backwards from its end ([`snapshot_start`]) and
//! folds from the earliest of them: about one interval of updates per partition plus one
//! snapshot each, however old the topic. A snapshot missing parts (its owner stopped half-way)
//! is passed over. The topic is created with [`RESULTS_RETENTION`], many intervals, so the
//! latest snapshots are always kept (the argument is at the constant).
//!
//! A follower saves what it folded, with the topic offset it reached, to a [`ResultsCache`]
//! file in the node's data directory every few seconds; a restart loads it and folds the topic
//! from that offset instead of from its beginning. The cache is only a shortcut: its updates
//! are absolute values with their offsets like any other, and a cache that does not fit the
//! topic (an offset past its end) is ignored.
//!
//! # Formats
//! A results record is `[0xFF, version, bincode of ResultsRecordV1]`
//! ([`crate::support::codec::encode_versioned`]), an update or a snapshot's part; this build writes
//! version 1, or with an owner epoch (automatic assignment) version 2 — the epoch (u64) then
//! the version 1 record — and reads both and records
//! written before versions existed (a bare bincode enum whose only kind, `Update`, starts the
//! record with `00 00 00 00`; read as version 0). The cache file is the 8 bytes
//! `CACHE_MAGIC`, a version byte and bincode of `CachedResultsV1`; a file without the magic is
//! one written before versions existed (its first 8 bytes are the offset it reflects, see
//! `CACHE_MAGIC`). Both carry partition updates in the frozen layout `PartitionUpdateV1`,
//! not in [`PartitionUpdate`]'s own, so a field added to `PartitionUpdate` is a new version here
//! with the old one still decoded. A record or cache of a later version is a
//! [`FormatError::UnknownVersion`]: the record is skipped and logged, the cache ignored.
//! `tests/cluster_format_fixtures.rs` pins every version.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};

use crate::log::{FluvioLogOptions, KeyedRecord, Log, LogError, LogRecord, Offset, PartitionId};
use crate::operators::campaign_totals::CampaignTotal;
use crate::operators::event_time_windows::{BucketKey, RolledUp, SharedBucket, WindowBucket};
use crate::operators::retractions::{
    CampaignRetractions, RefundBucket, RefundBucketKey, RetractionCounters,
};
use crate::processor::PartitionCounters;
use crate::read_model::{PartitionUpdate, ReadModel};
use crate::runner::UpdateSink;
use crate::support::backoff::Backoff;
use crate::support::clock::UnixMillis;
use crate::support::codec::{self, FormatError};

use super::Fence;

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
    Snapshot(SnapshotPart),
}

/// Names one snapshot: a publisher and its count of snapshots so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
struct SnapshotId {
    publisher: u64,
    sequence: u64,
}

/// One record of a snapshot of a partition: its whole view at `update.next_offset`, spread
/// over parts `0..parts`, appended in order. The snapshot begins at part 0 and is complete once
/// every part is on the topic.
#[derive(Debug, Clone)]
struct SnapshotPart {
    id: SnapshotId,
    part: u32,
    parts: u32,
    update: PartitionUpdate,
}

/// The results record format this build writes without an owner epoch (fixed `--owns`).
const RESULTS_RECORD_VERSION: u8 = 1;
/// The format of a record stamped with its owner's epoch (automatic assignment): the owner
/// epoch, then a version 1 record.
const EPOCH_RECORD_VERSION: u8 = 2;
/// The format of a record that carries refunds and chargebacks: the owner epoch (0 without
/// one), a version 1 record, then the retractions. Written only for an update that has any, so
/// nodes of a build from before refunds read every other record as before.
const RETRACTIONS_RECORD_VERSION: u8 = 3;
const RESULTS_RECORD: &str = "results record";

/// A results record of version 1.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum ResultsRecordV1 {
    Update(PartitionUpdateV1),
    Snapshot {
        id: SnapshotId,
        part: u32,
        parts: u32,
        update: PartitionUpdateV1,
    },
}

/// What a version 3 record adds to its version 1 record. [`CampaignRetractions`],
/// [`RefundBucket`] and [`RetractionCounters`] are frozen in this layout: a change to any is a
/// new version here.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct RetractionsV1 {
    retractions: Vec<(String, CampaignRetractions)>,
    buckets: Vec<(RefundBucketKey, RefundBucket)>,
    counters: RetractionCounters,
}

impl RetractionsV1 {
    fn of(update: &PartitionUpdate) -> Self {
        Self {
            retractions: update.retractions.clone(),
            buckets: update.refund_buckets.clone(),
            counters: update.retraction_counters,
        }
    }

    fn is_empty(&self) -> bool {
        self.retractions.is_empty()
            && self.buckets.is_empty()
            && self.counters == RetractionCounters::default()
    }

    fn set_on(self, record: &mut ResultsRecord) {
        let update = match record {
            ResultsRecord::Update(update) => update,
            ResultsRecord::Snapshot(snapshot) => &mut snapshot.update,
        };
        update.retractions = self.retractions;
        update.refund_buckets = self.buckets;
        update.retraction_counters = self.counters;
    }
}

/// A results record written before versions existed. Its one kind makes every such record
/// start with `00 00 00 00`, never with [`codec::VERSION_MARKER`].
#[derive(Debug, Clone, Serialize, Deserialize)]
enum UnversionedResultsRecord {
    Update(PartitionUpdateV0),
}

impl ResultsRecord {
    /// The update it carries: a snapshot's part is an update like any other, of absolute values.
    fn into_update(self) -> PartitionUpdate {
        match self {
            ResultsRecord::Update(update) => update,
            ResultsRecord::Snapshot(snapshot) => snapshot.update,
        }
    }

    /// Version 3 when it carries refunds or chargebacks; else version 1 when `epoch` is 0 (no
    /// assignment epochs), or version 2 carrying it.
    fn encode(self, epoch: u64) -> Vec<u8> {
        let retractions = RetractionsV1::of(match &self {
            ResultsRecord::Update(update) => update,
            ResultsRecord::Snapshot(snapshot) => &snapshot.update,
        });
        let record = match self {
            ResultsRecord::Update(update) => ResultsRecordV1::Update(update.into()),
            ResultsRecord::Snapshot(snapshot) => ResultsRecordV1::Snapshot {
                id: snapshot.id,
                part: snapshot.part,
                parts: snapshot.parts,
                update: snapshot.update.into(),
            },
        };
        if !retractions.is_empty() {
            codec::encode_versioned(RETRACTIONS_RECORD_VERSION, &(epoch, record, retractions))
        } else if epoch == 0 {
            codec::encode_versioned(RESULTS_RECORD_VERSION, &record)
        } else {
            codec::encode_versioned(EPOCH_RECORD_VERSION, &(epoch, record))
        }
    }

    /// Decodes a results record of any version this build knows, with its owner epoch (0
    /// without one).
    fn decode_epoch(bytes: &[u8]) -> Result<(Self, u64), FormatError> {
        match codec::split_versioned(RESULTS_RECORD, bytes)? {
            (EPOCH_RECORD_VERSION, body) => {
                let (epoch, record): (u64, ResultsRecordV1) =
                    codec::decode_body(RESULTS_RECORD, EPOCH_RECORD_VERSION, body)?;
                Ok((Self::from_v1(record), epoch))
            }
            (RETRACTIONS_RECORD_VERSION, body) => {
                let (epoch, record, retractions): (u64, ResultsRecordV1, RetractionsV1) =
                    codec::decode_body(RESULTS_RECORD, RETRACTIONS_RECORD_VERSION, body)?;
                let mut record = Self::from_v1(record);
                retractions.set_on(&mut record);
                Ok((record, epoch))
            }
            _ => Ok((Self::decode(bytes)?, 0)),
        }
    }

    fn from_v1(record: ResultsRecordV1) -> Self {
        match record {
            ResultsRecordV1::Update(update) => ResultsRecord::Update(update.into()),
            ResultsRecordV1::Snapshot {
                id,
                part,
                parts,
                update,
            } => ResultsRecord::Snapshot(SnapshotPart {
                id,
                part,
                parts,
                update: update.into(),
            }),
        }
    }

    /// Decodes a results record of any version this build knows.
    fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        match codec::split_versioned(RESULTS_RECORD, bytes)? {
            (EPOCH_RECORD_VERSION | RETRACTIONS_RECORD_VERSION, _) => {
                Ok(Self::decode_epoch(bytes)?.0)
            }
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
                    ResultsRecordV1::Snapshot {
                        id,
                        part,
                        parts,
                        update,
                    } => Ok(ResultsRecord::Snapshot(SnapshotPart {
                        id,
                        part,
                        parts,
                        update: update.into(),
                    })),
                }
            }
            (version, _) => Err(FormatError::UnknownVersion {
                kind: RESULTS_RECORD,
                version,
                known: RETRACTIONS_RECORD_VERSION,
            }),
        }
    }
}

/// [`PartitionUpdate`]'s layout in version 1, frozen: a change to `PartitionUpdate` needs a
/// new version of the formats that carry it, with a `V2` beside this. The `From` conversions
/// list every field, so such a change does not compile until it is made.
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
    rolled_up: RolledUp,
}

/// [`PartitionUpdate`]'s layout in the unversioned formats, frozen: version 1 without the
/// roll-up cuts (nothing was rolled up then).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PartitionUpdateV0 {
    partition: PartitionId,
    next_offset: Offset,
    committed_at_ms: UnixMillis,
    checkpoint_duration_us: u64,
    watermark_ms: Option<UnixMillis>,
    counters: PartitionCountersV1,
    totals: Vec<(String, CampaignTotal)>,
    buckets: Vec<(BucketKey, WindowBucket)>,
}

impl From<PartitionUpdateV0> for PartitionUpdate {
    fn from(update: PartitionUpdateV0) -> Self {
        PartitionUpdateV1 {
            partition: update.partition,
            next_offset: update.next_offset,
            committed_at_ms: update.committed_at_ms,
            checkpoint_duration_us: update.checkpoint_duration_us,
            watermark_ms: update.watermark_ms,
            counters: update.counters,
            totals: update.totals,
            buckets: update.buckets,
            rolled_up: RolledUp::NONE,
        }
        .into()
    }
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
            buckets: update
                .buckets
                .into_iter()
                .map(|(key, bucket)| (key, Arc::unwrap_or_clone(bucket)))
                .collect(),
            rolled_up: update.rolled_up,
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
            buckets: update
                .buckets
                .into_iter()
                .map(|(key, bucket)| (key, Arc::new(bucket)))
                .collect(),
            rolled_up: update.rolled_up,
            retractions: Vec::new(),
            refund_buckets: Vec::new(),
            retraction_counters: RetractionCounters::default(),
        }
    }
}

/// A partition's updates not yet on the topic, merged.
#[derive(Debug)]
struct Pending {
    latest: PartitionUpdate,
    totals: BTreeMap<String, CampaignTotal>,
    buckets: BTreeMap<BucketKey, SharedBucket>,
    retractions: BTreeMap<String, CampaignRetractions>,
    refund_buckets: BTreeMap<RefundBucketKey, RefundBucket>,
}

impl Pending {
    fn new(update: &PartitionUpdate) -> Self {
        let mut pending = Self {
            latest: PartitionUpdate::default(),
            totals: BTreeMap::new(),
            buckets: BTreeMap::new(),
            retractions: BTreeMap::new(),
            refund_buckets: BTreeMap::new(),
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
        self.retractions.extend(update.retractions.iter().cloned());
        self.refund_buckets
            .extend(update.refund_buckets.iter().cloned());
    }

    /// Takes in an earlier, unpublished pending (its values yield to this one's).
    fn absorb_earlier(&mut self, earlier: Pending) {
        let mut totals = earlier.totals;
        totals.append(&mut self.totals);
        self.totals = totals;
        let mut buckets = earlier.buckets;
        buckets.append(&mut self.buckets);
        self.buckets = buckets;
        let mut retractions = earlier.retractions;
        retractions.append(&mut self.retractions);
        self.retractions = retractions;
        let mut refund_buckets = earlier.refund_buckets;
        refund_buckets.append(&mut self.refund_buckets);
        self.refund_buckets = refund_buckets;
    }

    /// The records that publish it, stamped with the owner `epoch`.
    fn records(&self, epoch: u64) -> Vec<KeyedRecord> {
        let mut header = self.latest.clone_header();
        header.retractions = self
            .retractions
            .iter()
            .map(|(c, r)| (c.clone(), *r))
            .collect();
        header.refund_buckets = self
            .refund_buckets
            .iter()
            .map(|(key, bucket)| (key.clone(), *bucket))
            .collect();
        split(&header, self.totals.iter(), self.buckets.iter())
            .into_iter()
            .map(|update| keyed(update.partition, ResultsRecord::Update(update), epoch))
            .collect()
    }
}

/// `header`'s header with the entries spread out over as many updates as it takes for each
/// record to stay near [`RECORD_FILL_BYTES`]; at least one.
fn split<'a>(
    header: &PartitionUpdate,
    totals: impl Iterator<Item = (&'a String, &'a CampaignTotal)>,
    buckets: impl Iterator<Item = (&'a BucketKey, &'a SharedBucket)>,
) -> Vec<PartitionUpdate> {
    let mut parts = Vec::new();
    let mut part = header.clone_header();
    // A campaign's retractions are a few dozen bytes: all of them go in the first record.
    part.retractions = header.retractions.clone();
    let mut bytes = 0;
    // The refund buckets are spread over the records like the window buckets.
    for (key, bucket) in &header.refund_buckets {
        let entry_bytes = key.0.len() + 48;
        if bytes > 0 && bytes + entry_bytes > RECORD_FILL_BYTES {
            parts.push(std::mem::replace(&mut part, header.clone_header()));
            bytes = 0;
        }
        bytes += entry_bytes;
        part.refund_buckets.push((key.clone(), *bucket));
    }
    for (campaign_id, total) in totals {
        let entry_bytes = campaign_id.len() + 32;
        if bytes > 0 && bytes + entry_bytes > RECORD_FILL_BYTES {
            parts.push(std::mem::replace(&mut part, header.clone_header()));
            bytes = 0;
        }
        bytes += entry_bytes;
        part.totals.push((campaign_id.clone(), *total));
    }
    for (bucket_key, bucket) in buckets {
        let entry_bytes = bucket_key.campaign_id.len() + 64 + 16 * bucket.histogram.len();
        if bytes > 0 && bytes + entry_bytes > RECORD_FILL_BYTES {
            parts.push(std::mem::replace(&mut part, header.clone_header()));
            bytes = 0;
        }
        bytes += entry_bytes;
        part.buckets.push((bucket_key.clone(), Arc::clone(bucket)));
    }
    parts.push(part);
    parts
}

fn keyed(partition: PartitionId, record: ResultsRecord, epoch: u64) -> KeyedRecord {
    let key = partition.to_be_bytes().to_vec();
    let value = record.encode(epoch);
    debug_assert!(key.len() + value.len() <= RESULTS_RECORD_BYTES_MAX);
    KeyedRecord { key, value }
}

/// The records of a snapshot of a partition's whole `view`: parts `0..parts`, in order, all
/// naming the snapshot.
fn snapshot_records(view: &PartitionUpdate, id: SnapshotId, epoch: u64) -> Vec<KeyedRecord> {
    let totals = view
        .totals
        .iter()
        .map(|(campaign_id, total)| (campaign_id, total));
    let buckets = view.buckets.iter().map(|(key, bucket)| (key, bucket));
    let updates = split(view, totals, buckets);
    let parts = u32::try_from(updates.len()).expect("a view splits into few records");
    updates
        .into_iter()
        .enumerate()
        .map(|(part, update)| {
            let record = ResultsRecord::Snapshot(SnapshotPart {
                id,
                part: part as u32,
                parts,
                update,
            });
            keyed(view.partition, record, epoch)
        })
        .collect()
}

/// How often an owner publishes a snapshot of each of its partitions: after `interval`, or
/// after `updates_max` updates of the partition, whichever comes first.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotPolicy {
    pub interval: Duration,
    pub updates_max: u32,
}

/// A partition's snapshots come at least this often, also when it is idle: a new node folds
/// at most this long of the topic (see the module's notes), and retention keeps many of them.
pub const SNAPSHOT_INTERVAL: Duration = Duration::from_secs(60);
/// ... or after this many updates of the partition: a busy partition publishes an update every
/// [`PUBLISH_INTERVAL`], so this bounds a new node's fold to 30 s of a busy partition, while a
/// snapshot (its whole state, all its buckets) costs no more than about that many updates (each
/// carries the buckets a checkpoint changed).
pub const SNAPSHOT_UPDATES_MAX: u32 = 300;

impl Default for SnapshotPolicy {
    fn default() -> Self {
        Self {
            interval: SNAPSHOT_INTERVAL,
            updates_max: SNAPSHOT_UPDATES_MAX,
        }
    }
}

/// What a publisher knows about each partition it publishes, for its snapshots.
#[derive(Debug, Default)]
struct Tracked {
    /// The highest offset offered: a snapshot must reflect at least this.
    offered_through: Offset,
    /// When its last snapshot went out; `None` before the first.
    snapshot_at: Option<Instant>,
    /// Updates published since.
    updates_since: u32,
}

impl Tracked {
    fn snapshot_due(&self, policy: &SnapshotPolicy, now: Instant) -> bool {
        match self.snapshot_at {
            None => true,
            Some(at) => {
                now.saturating_duration_since(at) >= policy.interval
                    || self.updates_since >= policy.updates_max
            }
        }
    }
}

/// Publishes an owner's committed updates, and snapshots of its partitions, to the results
/// topic.
#[derive(Debug)]
pub struct ResultsPublisher {
    log: Arc<dyn Log>,
    /// The owner's read model, which its runners publish to: snapshots are its views.
    read_model: Arc<ReadModel>,
    policy: SnapshotPolicy,
    /// Names this publisher's snapshots apart from other publishers' (a restarted owner, two
    /// owners of one partition at once): the time it started, in nanoseconds.
    publisher_id: u64,
    snapshots_published: std::sync::atomic::AtomicU64,
    pending: Mutex<BTreeMap<PartitionId, Pending>>,
    tracked: Mutex<BTreeMap<PartitionId, Tracked>>,
    wake: Notify,
    /// Set on a shared log with automatic assignment: nothing is appended while this node
    /// does not hold its lease (what waits is appended once it does again).
    fence: Option<Arc<dyn Fence>>,
    /// The owner epoch of each partition this node holds (automatic assignment).
    epochs: Mutex<BTreeMap<PartitionId, u64>>,
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
        let mut tracked = self.tracked_lock();
        let partition = tracked.entry(update.partition).or_default();
        partition.offered_through = partition.offered_through.max(update.next_offset);
        drop(tracked);
        self.wake.notify_one();
    }
}

impl ResultsPublisher {
    /// A publisher of the partitions whose runners publish to `read_model`.
    pub fn new(log: Arc<dyn Log>, read_model: Arc<ReadModel>) -> Self {
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Self {
            log,
            read_model,
            policy: SnapshotPolicy::default(),
            publisher_id: started.as_nanos() as u64,
            snapshots_published: std::sync::atomic::AtomicU64::new(0),
            pending: Mutex::new(BTreeMap::new()),
            tracked: Mutex::new(BTreeMap::new()),
            wake: Notify::new(),
            fence: None,
            epochs: Mutex::new(BTreeMap::new()),
        }
    }

    /// Appends nothing while `fence` does not hold.
    pub fn with_fence(mut self, fence: Arc<dyn Fence>) -> Self {
        self.fence = Some(fence);
        self
    }

    /// Stamps what is published of `partition` from now on with the owner `epoch` this node
    /// holds it at (automatic assignment).
    pub fn set_epoch(&self, partition: PartitionId, epoch: u64) {
        self.epochs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(partition, epoch);
    }

    fn epoch_of(&self, partition: PartitionId) -> u64 {
        self.epochs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&partition)
            .copied()
            .unwrap_or(0)
    }

    /// Stops publishing `partitions` (another node runs them now): their waiting updates and
    /// snapshot schedule are dropped.
    pub fn forget(&self, partitions: &[PartitionId]) {
        let mut pending = self.lock();
        let mut tracked = self.tracked_lock();
        for partition in partitions {
            pending.remove(partition);
            tracked.remove(partition);
        }
    }

    pub fn with_snapshot_policy(mut self, policy: SnapshotPolicy) -> Self {
        self.policy = policy;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<PartitionId, Pending>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn tracked_lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<PartitionId, Tracked>> {
        self.tracked.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends whatever is offered, and snapshots as they fall due, until `shutdown`; then
    /// makes one last attempt.
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Backoff::for_log();
        loop {
            let stopping = *shutdown.borrow();
            match self.publish_pending(Instant::now()).await {
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
                _ = tokio::time::sleep(self.next_snapshot_in(Instant::now())) => {}
            }
            tokio::select! {
                _ = tokio::time::sleep(PUBLISH_INTERVAL) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// How long until the next snapshot falls due by time.
    fn next_snapshot_in(&self, now: Instant) -> Duration {
        self.tracked_lock()
            .values()
            .map(|tracked| match tracked.snapshot_at {
                None => Duration::ZERO,
                Some(at) => self
                    .policy
                    .interval
                    .saturating_sub(now.saturating_duration_since(at)),
            })
            .min()
            .unwrap_or(self.policy.interval)
    }

    /// The partitions whose snapshot is due at `now` and whose view in the read model reflects
    /// everything offered (the runner offers an update just before it publishes it locally):
    /// then no update already on the topic, or waiting, is newer than the snapshot.
    fn snapshots_due(&self, now: Instant) -> Vec<(PartitionId, PartitionUpdate)> {
        let due: Vec<(PartitionId, Offset)> = self
            .tracked_lock()
            .iter()
            .filter(|(_, tracked)| tracked.snapshot_due(&self.policy, now))
            .map(|(&partition, tracked)| (partition, tracked.offered_through))
            .collect();
        due.into_iter()
            .filter(|&(partition, _)| partition < self.read_model.partition_count())
            .map(|(partition, offered_through)| {
                (
                    partition,
                    self.read_model.export_partition(partition),
                    offered_through,
                )
            })
            .filter(|(_, view, offered_through)| view.next_offset >= *offered_through)
            .map(|(partition, view, _)| (partition, view))
            .collect()
    }

    /// Appends every pending update, and the snapshots due at `now` (which replace the pending
    /// updates of their partitions: they reflect them); on failure puts the updates back under
    /// any newer ones, and the snapshots stay due.
    async fn publish_pending(&self, now: Instant) -> Result<(), LogError> {
        if self.fence.as_ref().is_some_and(|fence| !fence.holds()) {
            return Ok(());
        }
        let mut taken = std::mem::take(&mut *self.lock());
        let mut covered = BTreeMap::new();
        let mut records = Vec::new();
        let snapshots = self.snapshots_due(now);
        for (partition, view) in &snapshots {
            if let Some(pending) = taken.remove(partition) {
                covered.insert(*partition, pending);
            }
            let sequence = self
                .snapshots_published
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let id = SnapshotId {
                publisher: self.publisher_id,
                sequence,
            };
            records.extend(snapshot_records(view, id, self.epoch_of(*partition)));
        }
        if records.is_empty() && taken.is_empty() {
            return Ok(());
        }
        records.extend(
            taken
                .iter()
                .flat_map(|(partition, pending)| pending.records(self.epoch_of(*partition))),
        );
        match self.append_all(records).await {
            Ok(()) => {
                let mut tracked = self.tracked_lock();
                for partition in taken.keys() {
                    tracked.entry(*partition).or_default().updates_since += 1;
                }
                for (partition, _) in &snapshots {
                    let partition = tracked.entry(*partition).or_default();
                    partition.snapshot_at = Some(now);
                    partition.updates_since = 0;
                }
                Ok(())
            }
            Err(error) => {
                taken.append(&mut covered);
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
            match ResultsRecord::decode_epoch(&record.value) {
                Ok((record, epoch)) => {
                    let update = record.into_update();
                    if !owned.contains(&update.partition)
                        && update.partition < read_model.partition_count()
                    {
                        read_model.publish_at_epoch(update, epoch);
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

/// Records read per step while looking for snapshots, from the topic's end backwards.
const SCAN_STEP_RECORDS: u64 = READ_RECORDS as u64;

/// Where folding the results topic may start for every partition not in `owned` to end up as
/// if folded from `floor`: the start of the earliest of the partitions' latest complete
/// snapshots, found by reading the topic backwards from its end in steps.
///
/// Folding from there is enough: a complete snapshot is its partition's whole view at its
/// offset, and every update of the partition that is newer sits after its start (an owner
/// publishes a snapshot only once its view reflects everything it offered). A snapshot missing
/// a part (its owner stopped half-way) is passed over for an earlier complete one.
///
/// The search goes no lower than `floor` (the cache's offset, or 0), nor to records appended
/// before `oldest_ms`: those may be gone by retention ([`SNAPSHOT_LOOKBACK`]). A partition
/// whose latest snapshot lies beyond either (no live owner for a long while, or a topic written
/// before snapshots existed) is folded from where the search stopped.
///
/// The last step may read up to a step below the snapshot it finds: records a step older than
/// the latest snapshot, far younger than the retention.
pub async fn snapshot_start(
    log: &dyn Log,
    partition_count: u32,
    owned: &[PartitionId],
    floor: Offset,
    oldest_ms: UnixMillis,
) -> Result<Offset, LogError> {
    let wanted = (0..partition_count)
        .filter(|partition| !owned.contains(partition))
        .collect();
    search_snapshots(log, wanted, floor, oldest_ms, SCAN_STEP_RECORDS).await
}

/// [`snapshot_start`] for the partitions in `wanted`, reading `step_records` at a time.
async fn search_snapshots(
    log: &dyn Log,
    mut wanted: BTreeSet<PartitionId>,
    floor: Offset,
    oldest_ms: UnixMillis,
    step_records: u64,
) -> Result<Offset, LogError> {
    let mut found: Vec<Offset> = Vec::new();
    // Parts seen of snapshots whose part 0 is not yet seen (later parts come first).
    let mut parts_seen: BTreeMap<(PartitionId, SnapshotId), BTreeSet<u32>> = BTreeMap::new();
    let mut low = log.end_offset(0).await?;
    while !wanted.is_empty() && low > floor {
        let high = low;
        low = high.saturating_sub(step_records).max(floor);
        let records = read_range(log, low, high).await?;
        for record in records.iter().rev() {
            if record.append_time_ms < oldest_ms {
                return Ok(record.offset + 1);
            }
            let Ok(ResultsRecord::Snapshot(snapshot)) = ResultsRecord::decode(&record.value) else {
                continue;
            };
            let partition = snapshot.update.partition;
            if !wanted.contains(&partition) || snapshot.part >= snapshot.parts {
                continue;
            }
            let seen = parts_seen.entry((partition, snapshot.id)).or_default();
            seen.insert(snapshot.part);
            if snapshot.part == 0 && seen.len() == snapshot.parts as usize {
                wanted.remove(&partition);
                found.push(record.offset);
            }
        }
    }
    match (wanted.is_empty(), found.iter().min()) {
        (true, Some(&start)) => Ok(start),
        // Nothing to look for: this node owns every partition.
        (true, None) => log.end_offset(0).await,
        (false, _) => Ok(low),
    }
}

/// Records `from..to`, all of which exist.
async fn read_range(
    log: &dyn Log,
    mut from: Offset,
    to: Offset,
) -> Result<Vec<LogRecord>, LogError> {
    let mut records = Vec::with_capacity((to - from) as usize);
    while from < to {
        let read = log
            .read(0, from, (to - from).min(READ_RECORDS as u64) as usize)
            .await?;
        let Some(last) = read.last() else {
            return Err(LogError::OffsetOutOfRange {
                partition: 0,
                offset: from,
                end_offset: from,
            });
        };
        from = last.offset + 1;
        records.extend(read);
    }
    Ok(records)
}

/// How far back in time [`results_start`] looks for snapshots: half the retention, so what it
/// reads is never near deletion, and still many snapshot intervals.
pub const SNAPSHOT_LOOKBACK: Duration = Duration::from_secs(RESULTS_RETENTION.as_secs() / 2);
const _: () = assert!(SNAPSHOT_LOOKBACK.as_secs() >= 10 * SNAPSHOT_INTERVAL.as_secs());

/// How long the results topic keeps a closed segment after its last write. Fluvio deletes a
/// segment only when it is not the active one and its last write is older than this, so a
/// segment holding any record younger than the retention is kept. Every live owner publishes a
/// snapshot of each of its partitions at least every [`SNAPSHOT_INTERVAL`], so the latest
/// complete snapshot of such a partition, and everything after it, is younger than about one
/// interval and always kept; the margin of 60 intervals leaves a partition whose owner is away
/// (stopped, cut off from the cluster) its last snapshot for half an hour of
/// [`SNAPSHOT_LOOKBACK`] before new nodes stop finding it, and bounds the topic to an hour of
/// results.
pub const RESULTS_RETENTION: Duration = Duration::from_secs(60 * 60);
const _: () = assert!(RESULTS_RETENTION.as_secs() >= 4 * SNAPSHOT_INTERVAL.as_secs());

/// The options of the results topic: records as large as [`RESULTS_RECORD_BYTES_MAX`], and
/// [`RESULTS_RETENTION`] (on the log's usual 16 MiB segments: a segment is deleted whole, so
/// the topic holds at most the retention's records plus one segment).
pub fn results_topic_options(defaults: FluvioLogOptions) -> FluvioLogOptions {
    FluvioLogOptions {
        record_bytes_max: RESULTS_RECORD_BYTES_MAX,
        retention_seconds: RESULTS_RETENTION.as_secs() as u32,
        ..defaults
    }
}

/// Loads what `cache` holds and returns where to fold the results topic on from: past the
/// cache's offset, the start of the latest complete snapshots ([`snapshot_start`]), so a node
/// without a cache, or with an old one, folds about one snapshot interval of the topic.
pub async fn results_start(
    log: &dyn Log,
    read_model: &ReadModel,
    owned: &[PartitionId],
    cache: &ResultsCache,
    now_ms: UnixMillis,
) -> Result<Offset, LogError> {
    let end = log.end_offset(0).await?;
    let cached = cache.load(read_model, owned, end);
    let oldest_ms = now_ms.saturating_sub(SNAPSHOT_LOOKBACK.as_millis() as i64);
    snapshot_start(log, read_model.partition_count(), owned, cached, oldest_ms).await
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
/// The cache format this build writes once a view has refunds or chargebacks: version 1 with
/// each view's retractions (version 1 otherwise).
const CACHE_VERSION: u8 = 2;
const CACHE_VERSION_1: u8 = 1;
const RESULTS_CACHE: &str = "results cache";

/// The cache file of version 1.
#[derive(Debug, Serialize, Deserialize)]
struct CachedResultsV1 {
    next_offset: Offset,
    partition_count: u32,
    owned: Vec<PartitionId>,
    views: Vec<PartitionUpdateV1>,
}

/// The cache file of version 2: version 1's, and beside each view its retractions.
#[derive(Debug, Serialize, Deserialize)]
struct CachedResultsV2 {
    v1: CachedResultsV1,
    retractions: Vec<RetractionsV1>,
}

/// The cache file written before versions existed (no header).
#[derive(Debug, Serialize, Deserialize)]
struct CachedResultsV0 {
    next_offset: Offset,
    partition_count: u32,
    owned: Vec<PartitionId>,
    views: Vec<PartitionUpdateV0>,
}

impl CachedResults {
    fn encode(self) -> Vec<u8> {
        let retractions: Vec<RetractionsV1> = self.views.iter().map(RetractionsV1::of).collect();
        let v1 = CachedResultsV1 {
            next_offset: self.next_offset,
            partition_count: self.partition_count,
            owned: self.owned,
            views: self.views.into_iter().map(Into::into).collect(),
        };
        let mut bytes = CACHE_MAGIC.to_vec();
        // Version 1 while no view has a refund: what builds from before refunds read.
        if retractions.iter().all(RetractionsV1::is_empty) {
            bytes.push(CACHE_VERSION_1);
            bytes.extend_from_slice(&codec::encode(&v1));
        } else {
            bytes.push(CACHE_VERSION);
            bytes.extend_from_slice(&codec::encode(&CachedResultsV2 { v1, retractions }));
        }
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
        let mut retractions = Vec::new();
        let v1: CachedResultsV1 = match version {
            codec::UNVERSIONED => {
                let v0: CachedResultsV0 = codec::decode_body(RESULTS_CACHE, version, body)?;
                CachedResultsV1 {
                    next_offset: v0.next_offset,
                    partition_count: v0.partition_count,
                    owned: v0.owned,
                    views: v0.views.into_iter().map(v0_as_v1).collect(),
                }
            }
            CACHE_VERSION_1 => codec::decode_body(RESULTS_CACHE, version, body)?,
            CACHE_VERSION => {
                let v2: CachedResultsV2 = codec::decode_body(RESULTS_CACHE, version, body)?;
                retractions = v2.retractions;
                v2.v1
            }
            version => {
                return Err(FormatError::UnknownVersion {
                    kind: RESULTS_CACHE,
                    version,
                    known: CACHE_VERSION,
                });
            }
        };
        let mut views: Vec<PartitionUpdate> = v1.views.into_iter().map(Into::into).collect();
        for (view, retractions) in views.iter_mut().zip(retractions) {
            view.retractions = retractions.retractions;
            view.retraction_counters = retractions.counters;
        }
        Ok(Self {
            next_offset: v1.next_offset,
            partition_count: v1.partition_count,
            owned: v1.owned,
            views,
        })
    }
}

/// What an update looked like before versions (tests write old records with it).
#[cfg(test)]
impl From<PartitionUpdate> for PartitionUpdateV0 {
    fn from(update: PartitionUpdate) -> Self {
        let v1 = PartitionUpdateV1::from(update);
        Self {
            partition: v1.partition,
            next_offset: v1.next_offset,
            committed_at_ms: v1.committed_at_ms,
            checkpoint_duration_us: v1.checkpoint_duration_us,
            watermark_ms: v1.watermark_ms,
            counters: v1.counters,
            totals: v1.totals,
            buckets: v1.buckets,
        }
    }
}

fn v0_as_v1(update: PartitionUpdateV0) -> PartitionUpdateV1 {
    PartitionUpdate::from(update).into()
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
        campaign_update(partition, next_offset, "meals", total_cents)
    }

    fn campaign_update(
        partition: PartitionId,
        next_offset: Offset,
        campaign_id: &str,
        total_cents: u64,
    ) -> PartitionUpdate {
        let mut bucket = WindowBucket::default();
        bucket.add(total_cents);
        PartitionUpdate {
            partition,
            next_offset,
            totals: vec![(
                campaign_id.into(),
                CampaignTotal {
                    total_cents,
                    donations: next_offset,
                },
            )],
            buckets: vec![(
                BucketKey {
                    campaign_id: campaign_id.into(),
                    granularity: Granularity::Minute,
                    start_ms: 60_000,
                },
                Arc::new(bucket),
            )],
            ..PartitionUpdate::default()
        }
    }

    fn one_partition_log(dir: &std::path::Path) -> Arc<dyn Log> {
        let options = EmbeddedLogOptions {
            partition_count: 1,
            ..EmbeddedLogOptions::default()
        };
        Arc::new(EmbeddedLog::open(dir, options).unwrap())
    }

    /// A log whose records below `start` are gone, as retention leaves a Fluvio topic: reading
    /// them is an error.
    #[derive(Debug)]
    struct Retained {
        inner: Arc<dyn Log>,
        start: Offset,
    }

    #[async_trait::async_trait]
    impl Log for Retained {
        fn partition_count(&self) -> u32 {
            self.inner.partition_count()
        }

        async fn append(
            &self,
            partition: PartitionId,
            records: Vec<KeyedRecord>,
        ) -> Result<crate::log::AppendAck, LogError> {
            self.inner.append(partition, records).await
        }

        async fn read(
            &self,
            partition: PartitionId,
            from: Offset,
            records_max: usize,
        ) -> Result<Vec<LogRecord>, LogError> {
            if from < self.start {
                return Err(LogError::Unavailable {
                    reason: format!("offset {from} was deleted by retention"),
                });
            }
            self.inner.read(partition, from, records_max).await
        }

        async fn end_offset(&self, partition: PartitionId) -> Result<Offset, LogError> {
            self.inner.end_offset(partition).await
        }

        async fn wait_for_offset(
            &self,
            partition: PartitionId,
            offset: Offset,
        ) -> Result<(), LogError> {
            self.inner.wait_for_offset(partition, offset).await
        }
    }

    /// An owner of partitions 0 and 1: what its runners do (offer an update, then publish it
    /// locally), and its publisher.
    struct Owner {
        read_model: Arc<ReadModel>,
        publisher: ResultsPublisher,
    }

    impl Owner {
        fn new(log: &Arc<dyn Log>, updates_max: u32) -> Self {
            let read_model = Arc::new(ReadModel::new(2));
            let policy = SnapshotPolicy {
                interval: Duration::from_secs(3600),
                updates_max,
            };
            let publisher = ResultsPublisher::new(Arc::clone(log), Arc::clone(&read_model))
                .with_snapshot_policy(policy);
            Self {
                read_model,
                publisher,
            }
        }

        fn commit(&self, update: PartitionUpdate) {
            self.publisher.offer(&update);
            self.read_model.publish(update);
        }

        fn snapshots(&self) -> u64 {
            self.publisher
                .snapshots_published
                .load(std::sync::atomic::Ordering::Relaxed)
        }
    }

    /// Steps of the snapshot search in the tests: small, so that the search reads little below
    /// the snapshot it finds, and what lies further below can be made unreadable.
    const TEST_STEP_RECORDS: u64 = 4;

    async fn search(log: &dyn Log, floor: Offset, oldest_ms: UnixMillis) -> Offset {
        let wanted = BTreeSet::from([0, 1]);
        search_snapshots(log, wanted, floor, oldest_ms, TEST_STEP_RECORDS)
            .await
            .unwrap()
    }

    /// `log` with every record more than a search step below `start` gone.
    fn retained_from(log: &Arc<dyn Log>, start: Offset) -> Arc<dyn Log> {
        Arc::new(Retained {
            inner: Arc::clone(log),
            start: start.saturating_sub(TEST_STEP_RECORDS - 1),
        })
    }

    async fn folded_from(log: &dyn Log, from: Offset) -> ReadModel {
        let read_model = ReadModel::new(2);
        catch_up_results(log, &read_model, &[], from).await.unwrap();
        read_model
    }

    fn assert_same_views(a: &ReadModel, b: &ReadModel) {
        for partition in 0..2 {
            assert_eq!(
                format!("{:?}", a.export_partition(partition)),
                format!("{:?}", b.export_partition(partition)),
                "partition {partition}"
            );
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
        let publisher = ResultsPublisher::new(Arc::clone(&log), Arc::new(ReadModel::new(2)));
        publisher.offer(&update(1, 10, 500));
        publisher.offer(&update(1, 12, 700));
        publisher.offer(&update(0, 3, 100));
        publisher.publish_pending(Instant::now()).await.unwrap();
        // A stale update re-delivered after a newer one changes nothing.
        publisher.offer(&update(1, 11, 600));
        publisher.publish_pending(Instant::now()).await.unwrap();

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
        let publisher = ResultsPublisher::new(Arc::clone(&log), Arc::new(ReadModel::new(2)));
        publisher.offer(&update(1, 10, 500));
        publisher.offer(&update(0, 4, 100));
        publisher.publish_pending(Instant::now()).await.unwrap();

        let first = ReadModel::new(2);
        let next = catch_up_results(log.as_ref(), &first, &[0], 0)
            .await
            .unwrap();
        let cache = ResultsCache::new(dir.path().join("results-cache"));
        cache.save(&first, &[0], next).unwrap();
        publisher.offer(&update(1, 20, 900));
        publisher.publish_pending(Instant::now()).await.unwrap();

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
                (key, Arc::new(bucket))
            })
            .collect();
        let records = Pending::new(&big).records(0);
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
            let part = ResultsRecord::decode(&record.value).unwrap().into_update();
            assert_eq!((part.partition, part.next_offset), (2, 99));
            buckets += part.buckets.len();
        }
        assert_eq!(buckets, 2500);
    }

    #[test]
    fn unversioned_and_version_1_records_decode_and_cannot_be_confused() {
        let unversioned = codec::encode(&UnversionedResultsRecord::Update(update(1, 7, 3).into()));
        assert_eq!(unversioned[..4], [0, 0, 0, 0]);
        let decoded = ResultsRecord::decode(&unversioned).unwrap().into_update();
        assert_eq!(format!("{decoded:?}"), format!("{:?}", update(1, 7, 3)));
        let versioned = ResultsRecord::Update(update(1, 7, 3)).encode(0);
        assert_eq!(versioned[..2], [codec::VERSION_MARKER, 1]);
        let decoded = ResultsRecord::decode(&versioned).unwrap().into_update();
        assert_eq!(format!("{decoded:?}"), format!("{:?}", update(1, 7, 3)));

        let mut newer = versioned;
        newer[1] = RETRACTIONS_RECORD_VERSION + 1;
        assert!(matches!(
            ResultsRecord::decode(&newer),
            Err(FormatError::UnknownVersion { version: 4, .. })
        ));
    }

    #[test]
    fn an_update_with_refunds_is_version_3_and_keeps_them() {
        let mut with_refunds = update(1, 7, 300);
        with_refunds.retractions = vec![(
            "meals".into(),
            CampaignRetractions {
                refunded_cents: 40,
                refunds: 2,
                chargeback_cents: 10,
                chargebacks: 1,
            },
        )];
        with_refunds.retraction_counters.recorded = 3;
        for epoch in [0, 9] {
            let encoded = ResultsRecord::Update(with_refunds.clone()).encode(epoch);
            assert_eq!(
                encoded[..2],
                [codec::VERSION_MARKER, RETRACTIONS_RECORD_VERSION]
            );
            let (decoded, decoded_epoch) = ResultsRecord::decode_epoch(&encoded).unwrap();
            assert_eq!(decoded_epoch, epoch);
            assert_eq!(
                format!("{:?}", decoded.into_update()),
                format!("{with_refunds:?}")
            );
        }
        // Without refunds, the versions before them.
        let plain = ResultsRecord::Update(update(1, 7, 300)).encode(9);
        assert_eq!(plain[..2], [codec::VERSION_MARKER, EPOCH_RECORD_VERSION]);
        let cache = CachedResults {
            next_offset: 5,
            partition_count: 2,
            owned: vec![],
            views: vec![with_refunds.clone(), update(0, 3, 1)],
        };
        let decoded = CachedResults::decode(&cache.encode()).unwrap();
        assert_eq!(
            format!("{:?}", decoded.views[0]),
            format!("{with_refunds:?}")
        );
    }

    #[test]
    fn an_epoch_stamped_result_of_a_lower_epoch_is_ignored_whatever_its_offset() {
        let stamped = ResultsRecord::Update(update(1, 7, 3)).encode(40);
        assert_eq!(stamped[..2], [codec::VERSION_MARKER, EPOCH_RECORD_VERSION]);
        let (record, epoch) = ResultsRecord::decode_epoch(&stamped).unwrap();
        assert_eq!(epoch, 40);
        assert_eq!(record.into_update().next_offset, 7);
        let unstamped = ResultsRecord::Update(update(1, 7, 3)).encode(0);
        assert_eq!(
            unstamped[1], RESULTS_RECORD_VERSION,
            "no epoch: version 1 as before"
        );
        assert_eq!(ResultsRecord::decode_epoch(&unstamped).unwrap().1, 0);

        let read_model = ReadModel::new(2);
        read_model.publish_at_epoch(update(1, 10, 3), 40);
        // A fenced owner of epoch 12 publishing later and further on is not heard.
        read_model.publish_at_epoch(update(1, 50, 9), 12);
        assert_eq!(read_model.progress()[1].applied_offset, 10);
        read_model.publish_at_epoch(update(1, 20, 4), 40);
        assert_eq!(read_model.progress()[1].applied_offset, 20);
    }

    #[test]
    fn an_unversioned_cache_never_starts_with_the_magic_and_a_newer_one_is_refused() {
        let cached = || CachedResults {
            next_offset: i64::MAX as Offset,
            partition_count: 2,
            owned: vec![0],
            views: vec![update(1, 7, 3)],
        };
        let old = CachedResultsV0 {
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

    #[tokio::test]
    async fn a_late_follower_starts_at_the_latest_snapshots_and_ends_as_one_that_folded_all() {
        let dir = tempfile::tempdir().unwrap();
        let log = one_partition_log(dir.path());
        let owner = Owner::new(&log, 3);
        let now = Instant::now();
        let mut snapshot_round_begin = None;
        for round in 1..=10u64 {
            let begin = log.end_offset(0).await.unwrap();
            let snapshots = owner.snapshots();
            // A campaign per round: only the snapshots carry the early ones forward.
            for partition in 0..2 {
                owner.commit(campaign_update(
                    partition,
                    round * 10,
                    &format!("c{round}"),
                    100,
                ));
            }
            owner.publisher.publish_pending(now).await.unwrap();
            if owner.snapshots() > snapshots {
                snapshot_round_begin = Some(begin);
            }
        }
        // The first round, then after every 3 updates: rounds 1, 5 and 9, two partitions each.
        assert_eq!(owner.snapshots(), 6);
        let everything = folded_from(log.as_ref(), 0).await;
        assert_same_views(&everything, &owner.read_model);

        let no_cache = ResultsCache::new(dir.path().join("no-cache"));
        let now_ms = crate::support::clock::Clock::now_ms(&crate::support::clock::SystemClock);
        let start = results_start(log.as_ref(), &ReadModel::new(2), &[], &no_cache, now_ms)
            .await
            .unwrap();
        assert_eq!(Some(start), snapshot_round_begin, "round 9's snapshots");
        // Retention took everything before: a follower that reads below it fails.
        let retained = retained_from(&log, start);
        assert_eq!(search(retained.as_ref(), 0, UnixMillis::MIN).await, start);
        let late = folded_from(retained.as_ref(), start).await;
        assert_same_views(&late, &everything);
        assert_eq!(late.campaign_total("c1").total_cents, 200);

        // An idle partition gets a snapshot once the interval has passed.
        let begin = log.end_offset(0).await.unwrap();
        owner
            .publisher
            .publish_pending(now + Duration::from_secs(3600))
            .await
            .unwrap();
        assert_eq!(owner.snapshots(), 8);
        let start = search(log.as_ref(), 0, UnixMillis::MIN).await;
        assert_eq!(start, begin);
        // A node that owns partition 0 looks for partition 1's only.
        assert_eq!(
            snapshot_start(log.as_ref(), 2, &[0], 0, UnixMillis::MIN)
                .await
                .unwrap(),
            start + 1
        );
    }

    #[tokio::test]
    async fn a_snapshot_cut_short_is_passed_over_for_the_previous_complete_one() {
        let dir = tempfile::tempdir().unwrap();
        let log = one_partition_log(dir.path());
        let owner = Owner::new(&log, 100);
        let now = Instant::now();
        // Partition 0's view is large: its snapshots take several records.
        let mut large = campaign_update(0, 5, "meals", 1);
        large.buckets = (0..2500i64)
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
                (key, Arc::new(bucket))
            })
            .collect();
        let complete_begin = log.end_offset(0).await.unwrap();
        owner.commit(large);
        owner.commit(campaign_update(1, 5, "meals", 1));
        owner.publisher.publish_pending(now).await.unwrap();
        assert_eq!(owner.snapshots(), 2);
        owner.commit(campaign_update(0, 6, "shelter", 2));
        owner.commit(campaign_update(1, 6, "shelter", 2));
        owner.publisher.publish_pending(now).await.unwrap();

        // The owner stopped half-way through a later snapshot of partition 0...
        let id = SnapshotId {
            publisher: 7,
            sequence: 0,
        };
        let cut = snapshot_records(&owner.read_model.export_partition(0), id, 0);
        assert!(cut.len() > 2, "{} records", cut.len());
        log.append(0, cut[..cut.len() - 1].to_vec()).await.unwrap();
        // ... and, restarted, published partition 1's before partition 0's next update.
        let id = SnapshotId {
            publisher: 8,
            sequence: 0,
        };
        let partition_1 = snapshot_records(&owner.read_model.export_partition(1), id, 0);
        log.append(0, partition_1).await.unwrap();
        owner.commit(campaign_update(0, 7, "shelter", 3));
        owner.publisher.publish_pending(now).await.unwrap();

        let retained = retained_from(&log, complete_begin);
        let start = search(retained.as_ref(), 0, UnixMillis::MIN).await;
        assert_eq!(start, complete_begin, "partition 0's complete snapshot");
        let late = folded_from(retained.as_ref(), start).await;
        assert_same_views(&late, &folded_from(log.as_ref(), 0).await);
        assert_same_views(&late, &owner.read_model);
    }

    #[tokio::test]
    async fn the_search_stops_at_the_floor_and_at_records_older_than_it_may_read() {
        let dir = tempfile::tempdir().unwrap();
        let log = one_partition_log(dir.path());
        // Updates only, as written before snapshots existed.
        let publisher = ResultsPublisher::new(Arc::clone(&log), Arc::new(ReadModel::new(2)));
        for offset in 1..=5 {
            publisher.offer(&update(0, offset, 1));
            publisher.publish_pending(Instant::now()).await.unwrap();
        }
        assert_eq!(
            snapshot_start(log.as_ref(), 2, &[], 0, UnixMillis::MIN)
                .await
                .unwrap(),
            0
        );
        assert_eq!(
            snapshot_start(log.as_ref(), 2, &[], 3, UnixMillis::MIN)
                .await
                .unwrap(),
            3
        );
        // Every record is older than what may be read: nothing below the end is.
        assert_eq!(
            snapshot_start(log.as_ref(), 2, &[], 0, UnixMillis::MAX)
                .await
                .unwrap(),
            5
        );
    }
}
