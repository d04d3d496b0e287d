//! The checkpoint store: load, commit and list per-partition checkpoints, each partition's in
//! its own checkpoint journal (see `journal`), compacted in the background (see `compaction`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use super::compaction::{self, Compactor};
use super::journal::{Committed, Damage, JOURNAL_GENERATION_AT, Journal, Replay, SnapshotWriter};
use super::packed::{Malformed, PackedBuckets};
use super::{CHECKPOINT_FORMAT_VERSION, CheckpointError};
use crate::log::{Offset, PartitionId, Witness};
use crate::operators::campaign_totals::CampaignTotal;
use crate::operators::conflict_audit::Conflict;
use crate::operators::dedupe::{IndexChange, ShardImageRef};
use crate::operators::event_time_windows::{BucketKey, GroupedBuckets, RolledUp, WindowBucket};
use crate::operators::retractions::{
    RecordedRetraction, RetractionChanges, RetractionConflict, RetractionCounters, RetractionLedger,
};
use crate::processor::StateDigest;
use crate::processor::partition_state::{
    IndexRestorer, PartitionState, StateChanges, StateScalars,
};
use crate::support::clock::UnixMillis;
use crate::support::codec;
use crate::support::storage::{
    self, DirectoryLock, DirectoryLockError, OpenMode, OsStorage, Storage,
};
use crate::support::write_ahead::{self, PartPlace, Resolved, WriteAheadError};

/// A journal is compacted once its deltas weigh half its snapshot and are at least this many
/// bytes: small journals are cheap to load however they are made up, and compacting each one
/// at every few checkpoints would only add writes. A quarter MiB a partition keeps a young
/// data directory's state small beside its log (8 partitions: 2 MiB at most in deltas).
pub const COMPACTION_FLOOR_BYTES_DEFAULT: u64 = 256 * 1024;

/// What makes a checkpoint a checkpoint: where the partition is and what its state is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    pub format_version: u32,
    pub scalars: StateScalars,
    /// Checkpoints committed so far for this partition (this one included).
    pub sequence: u64,
    pub digest: StateDigest,
    pub state_digest: u64,
    pub committed_at_ms: UnixMillis,
}

/// A partition's checkpoint as operators see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CheckpointInfo {
    pub partition: PartitionId,
    pub next_offset: Offset,
    pub records_applied: u64,
    pub sequence: u64,
    pub committed_at_ms: UnixMillis,
    pub state_digest: u64,
}

impl From<&CheckpointMeta> for CheckpointInfo {
    fn from(meta: &CheckpointMeta) -> Self {
        Self {
            partition: meta.scalars.partition,
            next_offset: meta.scalars.next_offset,
            records_applied: meta.scalars.counters.applied,
            sequence: meta.sequence,
            committed_at_ms: meta.committed_at_ms,
            state_digest: meta.state_digest,
        }
    }
}

/// A partition's checkpoint in the portable form of format 1 savepoints (read, never written):
/// from before refunds existed, so it holds no retractions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionSavepoint {
    pub meta: CheckpointMeta,
    /// The index changes, in commit order.
    pub index_changes: Vec<IndexChange>,
    pub totals: Vec<(String, CampaignTotal)>,
    pub buckets: Vec<(BucketKey, WindowBucket)>,
    pub conflicts: Vec<Conflict>,
}

/// What loading a partition gave.
#[derive(Debug)]
pub enum LoadedPartition {
    /// A checkpoint that passed every check. `damage` reports anything found (and cut off)
    /// after an earlier whole checkpoint: the partition resumes from that one.
    Restored {
        state: Box<PartitionState>,
        meta: CheckpointMeta,
        damage: Option<Damage>,
    },
    /// No checkpoint: start from offset 0 (`damage` says if a journal was there but unusable).
    Empty { damage: Option<Damage> },
}

/// Collects a journal's committed content.
#[derive(Debug, Default)]
pub(crate) struct Collected {
    meta: Option<CheckpointMeta>,
    restorer: Option<IndexRestorer>,
    /// Kept only when exporting.
    raw_index: Option<Vec<IndexChange>>,
    totals: BTreeMap<String, CampaignTotal>,
    buckets: GroupedBuckets,
    rolled_up: RolledUp,
    conflicts: Vec<Conflict>,
    /// Each `refund_ref`'s latest status, in the order first committed.
    retractions: Vec<RecordedRetraction>,
    retraction_at: std::collections::HashMap<String, usize>,
    retraction_counters: RetractionCounters,
    retraction_conflicts: Vec<RetractionConflict>,
    /// Whether `into_state` also hands back the totals.
    keep_parts: bool,
    /// Whether `into_state` also hands back a copy of the buckets (a snapshot writes them from
    /// the state's windows instead: one copy in memory).
    keep_buckets: bool,
}

impl Collected {
    pub(crate) fn for_loading(recorded_hint: u64) -> Self {
        Self {
            restorer: Some(IndexRestorer::new(recorded_hint)),
            ..Self::default()
        }
    }

    /// For writing the state out again: the totals are kept (the buckets are the state's).
    pub(crate) fn for_snapshot(recorded_hint: u64) -> Self {
        Self {
            keep_parts: true,
            ..Self::for_loading(recorded_hint)
        }
    }

    fn for_exporting() -> Self {
        Self {
            restorer: Some(IndexRestorer::new(0)),
            raw_index: Some(Vec::new()),
            keep_parts: true,
            keep_buckets: true,
            ..Self::default()
        }
    }

    /// The state the collected checkpoints make, checked against the last one's digest.
    pub(crate) fn into_state(
        self,
        partition: PartitionId,
    ) -> Result<Option<LoadedCheckpoint>, CheckpointError> {
        let Some(meta) = self.meta else {
            return Ok(None);
        };
        if meta.format_version != CHECKPOINT_FORMAT_VERSION || meta.scalars.partition != partition {
            return Err(CheckpointError::Corrupt {
                what: format!("checkpoint of partition {partition}"),
                reason: format!(
                    "format version {} of partition {}",
                    meta.format_version, meta.scalars.partition
                ),
            });
        }
        let rolled_up = self.rolled_up;
        let totals: Vec<(String, CampaignTotal)> = self.totals.into_iter().collect();
        let mut buckets = self.buckets;
        buckets.retain_not_rolled_up(rolled_up);
        // The parts are kept only for writing them out again (exports, snapshots).
        let keep = self.keep_parts;
        let parts = Parts {
            totals: if keep { totals.clone() } else { Vec::new() },
            buckets: if self.keep_buckets {
                buckets.clone().into_vec()
            } else {
                Vec::new()
            },
            rolled_up,
            conflicts: self.conflicts,
        };
        let restorer = self.restorer.expect("collecting keeps a restorer");
        let retractions = RetractionLedger::restore(
            partition,
            self.retractions,
            self.retraction_counters,
            self.retraction_conflicts,
        );
        let state = PartitionState::restore(
            meta.scalars,
            restorer,
            totals,
            buckets,
            rolled_up,
            &parts.conflicts,
            retractions,
        );
        if state.digest() != meta.digest || state.state_digest() != meta.state_digest {
            return Err(CheckpointError::Corrupt {
                what: format!("checkpoint of partition {partition}"),
                reason: format!(
                    "state read back has digest {:016x}, the checkpoint recorded {:016x}",
                    state.state_digest(),
                    meta.state_digest
                ),
            });
        }
        Ok(Some((state, meta, self.raw_index, parts)))
    }
}

/// A loaded checkpoint: the state, its meta, the raw index changes (when exporting), the parts.
pub(crate) type LoadedCheckpoint = (
    PartitionState,
    CheckpointMeta,
    Option<Vec<IndexChange>>,
    Parts,
);

#[derive(Debug)]
pub(crate) struct Parts {
    pub totals: Vec<(String, CampaignTotal)>,
    pub buckets: Vec<(BucketKey, WindowBucket)>,
    pub rolled_up: RolledUp,
    pub conflicts: Vec<Conflict>,
}

impl Replay for Collected {
    fn index_change(&mut self, change: IndexChange) {
        if let Some(raw) = &mut self.raw_index {
            raw.push(change.clone());
        }
        if let Some(restorer) = &mut self.restorer {
            restorer.add(change);
        }
    }

    fn recorded(&mut self, fingerprint: u64, offset: Offset) {
        self.index_change(IndexChange::Recorded {
            fingerprint,
            offset,
        });
    }

    fn recorded_shard(&mut self, image: ShardImageRef<'_>) {
        match (&mut self.raw_index, &mut self.restorer) {
            (None, Some(restorer)) => restorer.add_shard(image),
            _ => {
                for (fingerprint, offset) in image.entries().unwrap_or_default() {
                    self.recorded(fingerprint, offset);
                }
            }
        }
    }

    fn buckets(&mut self, buckets: Vec<(BucketKey, WindowBucket)>) {
        for (key, bucket) in buckets {
            self.buckets.insert(&key, bucket);
        }
    }

    fn packed_buckets(&mut self, packed: &PackedBuckets) -> Result<(), Malformed> {
        let group = self
            .buckets
            .group_mut(&packed.campaign_id, packed.granularity);
        packed.unpack_each(|start_ms, bucket| {
            group.insert(start_ms, bucket);
        })
    }

    fn retractions(&mut self, changes: RetractionChanges) {
        for retraction in changes.retractions {
            match self.retraction_at.get(&retraction.event.refund_ref) {
                Some(&at) => self.retractions[at] = retraction,
                None => {
                    self.retraction_at
                        .insert(retraction.event.refund_ref.clone(), self.retractions.len());
                    self.retractions.push(retraction);
                }
            }
        }
        self.retraction_counters = changes.counters;
        self.retraction_conflicts.extend(changes.conflicts);
    }

    fn committed(&mut self, meta: CheckpointMeta, content: Committed) {
        match content {
            Committed::Absolute(content) => {
                for change in content.index {
                    self.index_change(change);
                }
                self.totals.extend(content.totals);
                self.buckets(content.buckets);
                self.conflicts.extend(content.conflicts);
            }
            Committed::Snapshot(content) => {
                self.totals.extend(content.totals);
                self.rolled_up = content.rolled_up;
                self.conflicts.extend(content.conflicts);
            }
            Committed::Delta(content) => {
                for change in content.index {
                    self.index_change(change);
                }
                self.totals.extend(content.totals);
                for (key, delta) in &content.bucket_deltas {
                    self.buckets.merge(key, delta);
                }
                for key in &content.dropped {
                    self.buckets.remove(key);
                }
                self.rolled_up = content.rolled_up;
                self.conflicts.extend(content.conflicts);
            }
        }
        self.meta = Some(meta);
    }
}

/// Collects only the last checkpoint's meta.
#[derive(Debug, Default)]
struct LastMeta(Option<CheckpointMeta>);

impl Replay for LastMeta {
    fn index_change(&mut self, _change: IndexChange) {}

    fn recorded(&mut self, _fingerprint: u64, _offset: Offset) {}

    fn buckets(&mut self, _buckets: Vec<(BucketKey, WindowBucket)>) {}

    fn committed(&mut self, meta: CheckpointMeta, _content: Committed) {
        self.0 = Some(meta);
    }
}

/// The borrowed form of a `JournalEntry::Delta`: the same encoding, without copying.
#[derive(Serialize)]
enum DeltaEntryRef<'a> {
    #[allow(dead_code)]
    IndexChanges(&'a [IndexChange]),
    #[allow(dead_code)]
    Checkpoint,
    #[allow(dead_code)]
    SnapshotRecorded,
    #[allow(dead_code)]
    SnapshotBuckets,
    #[allow(dead_code)]
    Snapshot,
    Delta {
        meta: &'a CheckpointMeta,
        content: DeltaContentRef<'a>,
    },
    #[allow(dead_code)]
    SnapshotShard,
    #[allow(dead_code)]
    SnapshotRetractions,
    DeltaWithRetractions {
        meta: &'a CheckpointMeta,
        content: DeltaContentRef<'a>,
        retractions: &'a RetractionChanges,
    },
}

#[derive(Serialize)]
struct DeltaContentRef<'a> {
    #[serde(with = "serde_bytes")]
    recorded: &'a [u8],
    index: &'a [IndexChange],
    totals: &'a [(String, CampaignTotal)],
    bucket_deltas: &'a [(BucketKey, WindowBucket)],
    dropped: &'a [BucketKey],
    rolled_up: RolledUp,
    conflicts: &'a [Conflict],
}

/// One process's handle on the state directory.
#[derive(Debug)]
pub struct CheckpointStore {
    pub(super) dir: PathBuf,
    partition_count: u32,
    /// Each partition's journal once loaded; holding the slot keeps its commits out.
    pub(super) journals: Arc<[Mutex<Option<Journal>>]>,
    /// Each partition's last committed checkpoint, once known.
    pub(super) latest: Vec<Mutex<Option<CheckpointMeta>>>,
    pub(super) storage: Arc<dyn Storage>,
    /// The sequence of the next write-ahead file a commit round starts (see `rounds`).
    pub(super) write_ahead_sequence: AtomicU64,
    pub(super) round_write_ahead_bytes_max: AtomicU64,
    compaction_floor_bytes: AtomicU64,
    /// Started by the first compaction due; stopped (and waited for) when the store drops,
    /// before the directory lock is released.
    compactor: Mutex<Option<Compactor>>,
    _lock: DirectoryLock,
}

impl CheckpointStore {
    /// Opens the state directory for `partition_count` partitions. The notes it returns are for
    /// the operator (none today; kept so callers report whatever a future version finds).
    pub fn open(dir: &Path, partition_count: u32) -> Result<(Self, Vec<String>), CheckpointError> {
        Self::open_on(OsStorage::shared(), dir, partition_count)
    }

    /// [`open`](Self::open) on a given storage (a simulated disk in tests).
    pub fn open_on(
        storage: Arc<dyn Storage>,
        dir: &Path,
        partition_count: u32,
    ) -> Result<(Self, Vec<String>), CheckpointError> {
        storage::create_dir_all(&*storage, dir).map_err(|e| CheckpointError::io(dir, e))?;
        let lock = lock_directory(&*storage, dir)?;
        let replayed = replay_write_ahead(&*storage, dir)?;
        if replayed.parts > 0 {
            tracing::info!(
                files = replayed.files,
                checkpoints = replayed.parts,
                of_replaced_generations = replayed.skipped,
                "replayed the state's write-ahead files into the checkpoint journals"
            );
        }
        compaction::remove_leftovers(&*storage, dir)?;
        let store = Self {
            dir: dir.to_owned(),
            partition_count,
            journals: (0..partition_count).map(|_| Mutex::new(None)).collect(),
            latest: (0..partition_count).map(|_| Mutex::new(None)).collect(),
            storage,
            compaction_floor_bytes: AtomicU64::new(COMPACTION_FLOOR_BYTES_DEFAULT),
            compactor: Mutex::new(None),
            write_ahead_sequence: AtomicU64::new(replayed.last_sequence + 1),
            round_write_ahead_bytes_max: AtomicU64::new(super::ROUND_WRITE_AHEAD_BYTES_MAX),
            _lock: lock,
        };
        Ok((store, Vec::new()))
    }

    pub fn partition_count(&self) -> u32 {
        self.partition_count
    }

    /// Compacts a journal only once its deltas are at least this many bytes (and outweigh its
    /// snapshot); [`COMPACTION_FLOOR_BYTES_DEFAULT`] unless set.
    pub fn set_compaction_floor(&self, bytes: u64) {
        self.compaction_floor_bytes.store(bytes, Ordering::Relaxed);
    }

    /// The floor [`set_compaction_floor`](Self::set_compaction_floor) set.
    pub fn compaction_floor(&self) -> u64 {
        self.compaction_floor_bytes.load(Ordering::Relaxed)
    }

    /// Bytes of every file in the state directory (journals, cursors), for operators.
    pub fn bytes_on_disk(&self) -> u64 {
        let Ok(names) = self.storage.list_dir(&self.dir) else {
            return 0;
        };
        names
            .iter()
            .filter_map(|name| {
                let file = self
                    .storage
                    .open(&self.dir.join(name), OpenMode::Read)
                    .ok()?;
                file.len().ok()
            })
            .sum()
    }

    /// Every partition's witness in the state directory `dir`: how far its last checkpoint
    /// applied the log. Reads the journals, and the checkpoints of commit rounds not yet
    /// replayed into them from the write-ahead files, without taking the directory or changing
    /// a file (the log is opened, with these witnesses, before the state is).
    pub fn witnesses(storage: &dyn Storage, dir: &Path) -> Result<Vec<Witness>, CheckpointError> {
        let mut witnesses = Self::journal_witnesses(storage, dir)?;
        for (partition, end_offset) in write_ahead_witnesses(storage, dir)? {
            match witnesses.iter_mut().find(|w| w.partition == partition) {
                Some(witness) if witness.end_offset >= end_offset => {}
                Some(witness) => witness.end_offset = end_offset,
                None => witnesses.push(Witness {
                    partition,
                    end_offset,
                    source: format!(
                        "the checkpoint journal {} (with its write-ahead file)",
                        journal_path(dir, partition).display()
                    ),
                }),
            }
        }
        Ok(witnesses)
    }

    fn journal_witnesses(
        storage: &dyn Storage,
        dir: &Path,
    ) -> Result<Vec<Witness>, CheckpointError> {
        let names = match storage.list_dir(dir) {
            Ok(names) => names,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(CheckpointError::io(dir, e)),
        };
        let mut witnesses = Vec::new();
        let partitions = names.iter().filter_map(|name| {
            let digits = name
                .strip_prefix("checkpoints-")?
                .strip_suffix(".journal")?;
            digits.parse::<PartitionId>().ok()
        });
        for partition in partitions {
            let path = journal_path(dir, partition);
            if let Some(end_offset) = Journal::last_next_offset(storage, &path)? {
                witnesses.push(Witness {
                    partition,
                    end_offset,
                    source: format!("the checkpoint journal {}", path.display()),
                });
            }
        }
        Ok(witnesses)
    }

    fn journal_path(&self, partition: PartitionId) -> PathBuf {
        journal_path(&self.dir, partition)
    }

    /// The last committed checkpoint meta of a partition, if any.
    pub fn meta(&self, partition: PartitionId) -> Result<Option<CheckpointMeta>, CheckpointError> {
        if let Some(meta) = *lock(&self.latest[partition as usize]) {
            return Ok(Some(meta));
        }
        let path = self.journal_path(partition);
        if !self.journal_exists(&path)? {
            return Ok(None);
        }
        let mut last = LastMeta::default();
        let _no_commit = lock(&self.journals[partition as usize]);
        Journal::read(Arc::clone(&self.storage), &path, partition, &mut last)?;
        Ok(last.0)
    }

    /// Every partition's checkpoint, for `checkpoint list`.
    pub fn list(&self) -> Result<Vec<Option<CheckpointInfo>>, CheckpointError> {
        (0..self.partition_count)
            .map(|partition| Ok(self.meta(partition)?.as_ref().map(CheckpointInfo::from)))
            .collect()
    }

    /// Loads and checks a partition's checkpoint. A `Corrupt` error means: reset it and rebuild
    /// from the log.
    pub fn load(&self, partition: PartitionId) -> Result<LoadedPartition, CheckpointError> {
        let path = self.journal_path(partition);
        // Held throughout: a compaction under way must not put its generation in place between
        // this open and this journal taking the slot.
        let mut journal_slot = lock(&self.journals[partition as usize]);
        // Sized up front, the index is built once instead of grown (and copied) step by step.
        let mut collected = Collected::for_loading(Journal::recorded_hint(&*self.storage, &path));
        let (journal, damage) =
            Journal::open(Arc::clone(&self.storage), &path, partition, &mut collected)?;
        *journal_slot = Some(journal);
        drop(journal_slot);
        let loaded = collected.into_state(partition)?;
        Ok(match loaded {
            Some((state, meta, _, _)) => {
                *lock(&self.latest[partition as usize]) = Some(meta);
                LoadedPartition::Restored {
                    state: Box::new(state),
                    meta,
                    damage,
                }
            }
            None => LoadedPartition::Empty { damage },
        })
    }

    /// A partition's whole checkpoint, checked against its digest; `None` without a checkpoint.
    /// Safe while the partition runs: its commits wait until this has read the journal.
    pub fn export(
        &self,
        partition: PartitionId,
    ) -> Result<Option<PartitionSavepoint>, CheckpointError> {
        let path = self.journal_path(partition);
        if !self.journal_exists(&path)? {
            return Ok(None);
        }
        let mut collected = Collected::for_exporting();
        {
            let _no_commit = lock(&self.journals[partition as usize]);
            Journal::read(Arc::clone(&self.storage), &path, partition, &mut collected)?;
        }
        Ok(collected
            .into_state(partition)?
            .map(|(_, meta, raw_index, parts)| PartitionSavepoint {
                meta,
                index_changes: raw_index.unwrap_or_default(),
                totals: parts.totals,
                buckets: parts.buckets,
                conflicts: parts.conflicts,
            }))
    }

    /// Replaces a partition's checkpoint with an exported one (from a savepoint): a new
    /// generation whose snapshot is the exported state, put in place in one rename.
    pub fn install(&self, exported: &PartitionSavepoint) -> Result<(), CheckpointError> {
        let partition = exported.meta.scalars.partition;
        let mut journal_slot = lock(&self.journals[partition as usize]);
        let generation = journal_slot.as_ref().map_or(0, Journal::generation) + 1;
        let mut writer = compaction::start_generation(
            &*self.storage,
            &self.dir,
            partition,
            generation,
            exported.meta.scalars.counters.recorded,
        )?;
        for change in &exported.index_changes {
            match change {
                IndexChange::Recorded {
                    fingerprint,
                    offset,
                } => writer.recorded(*fingerprint, *offset)?,
                other => writer.index_change(other.clone())?,
            }
        }
        for (key, bucket) in &exported.buckets {
            writer.bucket(key, bucket)?;
        }
        let content = super::journal::SnapshotContent {
            rolled_up: RolledUp::NONE,
            totals: exported.totals.clone(),
            conflicts: exported.conflicts.clone(),
        };
        writer.finish_snapshot(&exported.meta, content)?;
        let journal =
            compaction::put_in_place(Arc::clone(&self.storage), &self.dir, partition, writer)?;
        *journal_slot = Some(journal);
        *lock(&self.latest[partition as usize]) = Some(exported.meta);
        Ok(())
    }

    /// The state of a partition's last committed checkpoint, rebuilt from its journal and
    /// checked against that checkpoint's digest. Safe while the partition runs (the journal is
    /// held only to note where it ends); `None` without a checkpoint.
    fn committed_state(
        &self,
        partition: PartitionId,
    ) -> Result<Option<compaction::CommittedState>, CheckpointError> {
        let slot = &self.journals[partition as usize];
        let loaded = lock(slot).is_some();
        if loaded {
            return compaction::committed_state(&self.storage, &self.dir, slot, partition);
        }
        // Not loaded by this process: the file is read as it is, held against a load.
        let path = self.journal_path(partition);
        if !self.journal_exists(&path)? {
            return Ok(None);
        }
        let _no_load = lock(slot);
        let mut collected = Collected::for_snapshot(Journal::recorded_hint(&*self.storage, &path));
        Journal::read(Arc::clone(&self.storage), &path, partition, &mut collected)?;
        Ok(collected
            .into_state(partition)?
            .map(|(state, meta, _, parts)| compaction::CommittedState {
                state,
                meta,
                parts,
                until: 0,
                generation: 0,
            }))
    }

    /// Streams a partition's last committed checkpoint as a snapshot generation into `file`
    /// (at `path`) from byte `start`; its meta and where it ends, `None` without a checkpoint.
    pub(crate) fn write_snapshot_section(
        &self,
        partition: PartitionId,
        path: &Path,
        file: &Arc<dyn storage::StorageFile>,
        start: u64,
    ) -> Result<Option<(CheckpointMeta, u64)>, CheckpointError> {
        let Some(committed) = self.committed_state(partition)? else {
            return Ok(None);
        };
        let meta = committed.meta;
        let mut writer = SnapshotWriter::at(
            path,
            Arc::clone(file),
            start,
            partition,
            1,
            meta.scalars.counters.recorded,
        );
        let never = std::sync::atomic::AtomicBool::new(false);
        compaction::write_snapshot(&mut writer, committed, &never)?;
        Ok(Some((meta, writer.write_all()?)))
    }

    /// Replaces a partition's checkpoint with a savepoint's section (a snapshot generation at
    /// `[start, start + len)` of `savepoint`): copied beside the journal, loaded whole and
    /// checked against its digest, then renamed over the journal.
    pub(crate) fn install_section(
        &self,
        partition: PartitionId,
        savepoint: &Path,
        start: u64,
        len: u64,
    ) -> Result<(), CheckpointError> {
        let mut journal_slot = lock(&self.journals[partition as usize]);
        let source = OsStorage
            .open(savepoint, OpenMode::Read)
            .map_err(|e| CheckpointError::io(savepoint, e))?;
        // Above every generation the partition's journal has had, as every rewrite is.
        let generation = journal_slot
            .as_ref()
            .map(Journal::generation)
            .into_iter()
            .chain(
                Journal::write_ahead_tag_of(&*self.storage, &self.journal_path(partition))
                    .filter(|&g| g != u64::MAX),
            )
            .max()
            .unwrap_or(0)
            + 1;
        let mut writer = compaction::start_generation(&*self.storage, &self.dir, partition, 0, 0)?;
        let target = writer.path().to_owned();
        let copied = (|| {
            let mut buffer = vec![0u8; 1 << 20];
            let mut done = 0;
            while done < len {
                let chunk = (len - done).min(buffer.len() as u64) as usize;
                source
                    .read_exact_at(&mut buffer[..chunk], start + done)
                    .map_err(|e| CheckpointError::io(savepoint, e))?;
                writer.raw(&buffer[..chunk], done)?;
                done += chunk as u64;
            }
            writer.raw(&generation.to_le_bytes(), JOURNAL_GENERATION_AT)?;
            writer.sync()?;
            let mut collected = Collected::for_loading(0);
            let damage = Journal::read(
                Arc::clone(&self.storage),
                &target,
                partition,
                &mut collected,
            )?;
            let loaded = collected.into_state(partition)?;
            match (damage, loaded) {
                (None, Some((_, meta, _, _))) => Ok(meta),
                _ => Err(CheckpointError::Savepoint {
                    path: savepoint.to_owned(),
                    reason: format!(
                        "the section of partition {partition} is not a whole checkpoint"
                    ),
                }),
            }
        })();
        let meta = match copied {
            Ok(meta) => meta,
            Err(error) => {
                let _ = self.storage.remove_file(&target);
                return Err(error);
            }
        };
        let journal =
            compaction::put_in_place(Arc::clone(&self.storage), &self.dir, partition, writer)?;
        drop(journal);
        // Loaded again when the partition next runs (the copy's positions are the savepoint's).
        *journal_slot = None;
        *lock(&self.latest[partition as usize]) = Some(meta);
        Ok(())
    }

    /// Forgets a partition's checkpoint: it will be rebuilt from offset 0.
    pub fn reset(&self, partition: PartitionId) -> Result<(), CheckpointError> {
        let mut journal_slot = lock(&self.journals[partition as usize]);
        match journal_slot.as_mut() {
            Some(journal) => journal.reset(partition)?,
            None => {
                let path = self.journal_path(partition);
                let replaced = Journal::write_ahead_tag_of(&*self.storage, &path);
                let _ = self.storage.remove_file(&path);
                let (mut journal, _) = Journal::open(
                    Arc::clone(&self.storage),
                    &path,
                    partition,
                    &mut LastMeta::default(),
                )?;
                // Generations only rise, so no write-ahead part of the removed journal is ever
                // taken for one of this one (see `Journal::write_ahead_tag`).
                if let Some(generation) = replaced.filter(|&g| g != u64::MAX)
                    && generation >= journal.generation()
                {
                    journal.reset_to(partition, generation + 1)?;
                }
                *journal_slot = Some(journal);
            }
        }
        *lock(&self.latest[partition as usize]) = None;
        Ok(())
    }

    /// Commits `changes` (what changed in `state` since its last checkpoint, from
    /// `PartitionState::take_changes`) with the state's next offset: one synced journal frame.
    pub fn commit(
        &self,
        state: &PartitionState,
        changes: &StateChanges,
        now_ms: UnixMillis,
    ) -> Result<CheckpointMeta, CheckpointError> {
        let partition = state.partition();
        let mut journal_slot = lock(&self.journals[partition as usize]);
        let journal = journal_slot
            .as_mut()
            .expect("a partition is loaded or reset before it commits");
        let mut latest = lock(&self.latest[partition as usize]);
        let (meta, entry) = encode_checkpoint(state, changes, now_ms, latest.as_ref());
        journal.set_recorded_hint(meta.scalars.counters.recorded)?;
        journal.append(&entry)?;
        *latest = Some(meta);
        let due = compaction::is_due(journal, self.compaction_floor_bytes.load(Ordering::Relaxed));
        drop(latest);
        drop(journal_slot);
        if due {
            self.request_compaction(partition);
        }
        Ok(meta)
    }

    /// Asks the compactor (started if need be) to compact a partition's journal.
    pub(super) fn request_compaction(&self, partition: PartitionId) {
        let mut compactor = lock(&self.compactor);
        let compactor = compactor.get_or_insert_with(|| {
            Compactor::start(
                Arc::clone(&self.storage),
                self.dir.clone(),
                Arc::clone(&self.journals),
            )
        });
        compactor.request(partition);
    }

    /// Compacts a partition's journal now, on the calling thread (the compactor does it in the
    /// background when it is due). `false` if there was nothing to compact.
    pub fn compact(&self, partition: PartitionId) -> Result<bool, CheckpointError> {
        compaction::compact_partition(
            &self.storage,
            &self.dir,
            &self.journals,
            partition,
            &std::sync::atomic::AtomicBool::new(false),
        )
    }

    /// How a partition's journal is made up, once it is loaded: `(format version, generation,
    /// snapshot bytes, delta bytes)`.
    pub fn journal_shape(&self, partition: PartitionId) -> Option<(u32, u64, u64, u64)> {
        let slot = lock(&self.journals[partition as usize]);
        slot.as_ref().map(|journal| {
            (
                journal.format_version(),
                journal.generation(),
                journal.snapshot_bytes(),
                journal.delta_bytes(),
            )
        })
    }

    /// The conflicts a partition's checkpoint holds.
    pub fn conflicts(&self, partition: PartitionId) -> Result<Vec<Conflict>, CheckpointError> {
        let path = self.journal_path(partition);
        if !self.journal_exists(&path)? {
            return Ok(Vec::new());
        }
        let mut collected = Collected::default();
        let _no_commit = lock(&self.journals[partition as usize]);
        Journal::read(Arc::clone(&self.storage), &path, partition, &mut collected)?;
        Ok(collected.conflicts)
    }

    /// Where notification delivery of a partition has got to: every recorded donation below this
    /// offset has been delivered. Kept apart from the checkpoints (it is not derived from the
    /// log, and survives a rebuild of the partition).
    pub fn notification_cursor(&self, partition: PartitionId) -> Result<Offset, CheckpointError> {
        let path = self.cursor_path(partition);
        match storage::read_file(&*self.storage, &path) {
            Ok(bytes) => Ok(u64::from_le_bytes(bytes.as_slice().try_into().map_err(
                |_| CheckpointError::Corrupt {
                    what: path.display().to_string(),
                    reason: "not 8 bytes".into(),
                },
            )?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(CheckpointError::io(path, e)),
        }
    }

    /// Stores a notification cursor: a synced temporary file renamed into place, and the
    /// directory synced so the new name is durable.
    pub fn set_notification_cursor(
        &self,
        partition: PartitionId,
        next_offset: Offset,
    ) -> Result<(), CheckpointError> {
        let path = self.cursor_path(partition);
        storage::write_file_atomically(&*self.storage, &path, &next_offset.to_le_bytes())
            .map_err(|e| CheckpointError::io(&path, e))
    }

    fn journal_exists(&self, path: &Path) -> Result<bool, CheckpointError> {
        self.storage
            .exists(path)
            .map_err(|e| CheckpointError::io(path, e))
    }

    fn cursor_path(&self, partition: PartitionId) -> PathBuf {
        self.dir
            .join(format!("notifications-{partition:03}.cursor"))
    }
}

/// A checkpoint's index changes as its entry holds them: the recorded donations packed, the
/// rest (collisions, resend counts) as they are. Replay applies the recorded ones first, which
/// is safe: the rest only ever refer to donations recorded before them.
fn split_index_changes(changes: &[IndexChange]) -> (Vec<u8>, Vec<IndexChange>) {
    let mut recorded = Vec::with_capacity(changes.len() * 12);
    let mut others = Vec::new();
    for change in changes {
        match change {
            IndexChange::Recorded {
                fingerprint,
                offset,
            } => super::packed::pack_recorded(&mut recorded, *fingerprint, *offset),
            other => others.push(other.clone()),
        }
    }
    (recorded, others)
}

impl Drop for CheckpointStore {
    fn drop(&mut self) {
        if let Some(compactor) = lock(&self.compactor).take() {
            compactor.stop();
        }
    }
}

pub(crate) fn journal_path(dir: &Path, partition: PartitionId) -> PathBuf {
    dir.join(format!("checkpoints-{partition:03}.journal"))
}

/// Encodes a checkpoint of `state` with its `changes`, the one after `latest`: its meta, and
/// the journal entry that commits it.
pub(super) fn encode_checkpoint(
    state: &PartitionState,
    changes: &StateChanges,
    now_ms: UnixMillis,
    latest: Option<&CheckpointMeta>,
) -> (CheckpointMeta, Vec<u8>) {
    let meta = CheckpointMeta {
        format_version: CHECKPOINT_FORMAT_VERSION,
        scalars: state.scalars(),
        sequence: latest.map_or(0, |m| m.sequence) + 1,
        digest: state.digest(),
        state_digest: state.state_digest(),
        committed_at_ms: now_ms,
    };
    let (recorded, others) = split_index_changes(&changes.index);
    let content = DeltaContentRef {
        recorded: &recorded,
        index: &others,
        totals: &changes.totals,
        bucket_deltas: &changes.windows.deltas,
        dropped: &changes.windows.dropped,
        rolled_up: changes.windows.rolled_up,
        conflicts: &changes.conflicts,
    };
    let entry = if changes.retractions.is_empty() {
        DeltaEntryRef::Delta {
            meta: &meta,
            content,
        }
    } else {
        DeltaEntryRef::DeltaWithRetractions {
            meta: &meta,
            content,
            retractions: &changes.retractions,
        }
    };
    (meta, codec::encode(&entry))
}

/// Writes the checkpoints the state's write-ahead files hold into their journals (see
/// `support::write_ahead`), before any journal is read. A part for a journal that is gone or has
/// been rewritten since (a compaction, a reset, a restore: its generation is no longer the
/// part's) is skipped: the rewrite holds what the part did, or meant to drop it.
fn replay_write_ahead(
    storage: &dyn Storage,
    dir: &Path,
) -> Result<write_ahead::Replayed, CheckpointError> {
    let resolve = |place: &PartPlace| -> Resolved {
        let path = journal_path(dir, place.partition);
        Ok((Journal::write_ahead_tag_of(storage, &path) == Some(place.file_tag)).then_some(path))
    };
    write_ahead::replay(storage, &write_ahead::dir_of(dir), resolve).map_err(from_write_ahead)
}

/// The furthest checkpoint of each partition in the state's write-ahead files that its journal
/// would take (its generation is the journal's), read without changing anything.
fn write_ahead_witnesses(
    storage: &dyn Storage,
    dir: &Path,
) -> Result<BTreeMap<PartitionId, Offset>, CheckpointError> {
    let mut furthest = BTreeMap::new();
    let mut tags = BTreeMap::new();
    let files =
        write_ahead::list_files(storage, &write_ahead::dir_of(dir)).map_err(from_write_ahead)?;
    for (_, path) in files {
        let file = storage
            .open(&path, OpenMode::Read)
            .map_err(|e| CheckpointError::io(&path, e))?;
        for part in write_ahead::read_file(&*file, &path).map_err(from_write_ahead)? {
            let place = part.place;
            let tag = *tags.entry(place.partition).or_insert_with(|| {
                Journal::write_ahead_tag_of(storage, &journal_path(dir, place.partition))
            });
            if tag == Some(place.file_tag) {
                let end = furthest.entry(place.partition).or_insert(0);
                *end = (*end).max(place.end_offset);
            }
        }
    }
    Ok(furthest)
}

pub(super) fn from_write_ahead(error: WriteAheadError) -> CheckpointError {
    match error {
        WriteAheadError::Io { path, source } => CheckpointError::io(path, source),
        WriteAheadError::Corrupt {
            path,
            position,
            reason,
        } => CheckpointError::Corrupt {
            what: format!("write-ahead file {}", path.display()),
            reason: format!("at byte {position}: {reason}"),
        },
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn lock_directory(storage: &dyn Storage, dir: &Path) -> Result<DirectoryLock, CheckpointError> {
    storage.lock_directory(dir).map_err(|error| match error {
        DirectoryLockError::Held => CheckpointError::Locked {
            path: dir.to_owned(),
        },
        DirectoryLockError::Io(e) => CheckpointError::io(dir.join("LOCK"), e),
    })
}

#[cfg(test)]
mod tests {
    use super::super::journal::{DeltaContent, JournalEntry};
    use super::*;

    #[test]
    fn the_borrowed_entry_encodes_like_the_owned_one() {
        let changes = vec![IndexChange::Recorded {
            fingerprint: 7,
            offset: 9,
        }];
        let owned = JournalEntry::IndexChanges(changes.clone());
        assert_eq!(
            codec::encode(&owned),
            codec::encode(&DeltaEntryRef::IndexChanges(&changes))
        );
        let meta = CheckpointMeta {
            format_version: CHECKPOINT_FORMAT_VERSION,
            scalars: PartitionState::new(3, 0, Default::default()).scalars(),
            sequence: 4,
            digest: StateDigest::default(),
            state_digest: 5,
            committed_at_ms: 6,
        };
        let content = DeltaContent {
            recorded: vec![1, 2, 3],
            index: changes.clone(),
            totals: vec![("meals".into(), CampaignTotal::default())],
            bucket_deltas: Vec::new(),
            dropped: Vec::new(),
            rolled_up: RolledUp::NONE,
            conflicts: Vec::new(),
        };
        let owned = JournalEntry::Delta {
            meta,
            content: Box::new(content.clone()),
        };
        let borrowed = DeltaEntryRef::Delta {
            meta: &meta,
            content: DeltaContentRef {
                recorded: &content.recorded,
                index: &content.index,
                totals: &content.totals,
                bucket_deltas: &content.bucket_deltas,
                dropped: &content.dropped,
                rolled_up: content.rolled_up,
                conflicts: &content.conflicts,
            },
        };
        assert_eq!(codec::encode(&owned), codec::encode(&borrowed));
    }
}
