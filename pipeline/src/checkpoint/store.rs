//! The sled-backed checkpoint store: load, commit and list per-partition checkpoints.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use super::journal::Journal;
use super::{CHECKPOINT_FORMAT_VERSION, CheckpointError};
use crate::clock::UnixMillis;
use crate::codec;
use crate::log::{Offset, PartitionId};
use crate::operators::campaign_totals::CampaignTotal;
use crate::operators::conflict_audit::Conflict;
use crate::operators::dedupe::IndexChange;
use crate::operators::event_time_windows::{BucketKey, Granularity, WindowBucket};
use crate::processor::StateDigest;
use crate::processor::partition_state::{
    IndexRestorer, PartitionState, StateChanges, StateScalars,
};

const META_KEY: &[u8] = b"meta";
const NOTIFICATIONS_TREE: &str = "notifications";
const TOTAL_PREFIX: &[u8] = b"t/";
const BUCKET_PREFIX: &[u8] = b"w/";
const CONFLICT_PREFIX: &[u8] = b"c/";
/// Index changes per journal frame when installing a savepoint (frames stay well under the
/// frame size limit: a change encodes to at most a few hundred bytes).
const INSTALL_CHANGES_PER_FRAME: usize = 100_000;
/// sled's page cache: the trees hold only totals, buckets and conflicts, so a small cache does.
const SLED_CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// The record that makes a checkpoint count: where the partition is and what its state is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    pub format_version: u32,
    pub scalars: StateScalars,
    /// Checkpoints committed so far for this partition (this one included).
    pub sequence: u64,
    pub journal_end_position: u64,
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

/// Everything a partition's checkpoint holds, in portable form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionSavepoint {
    pub meta: CheckpointMeta,
    /// The index journal's changes, in commit order.
    pub index_changes: Vec<IndexChange>,
    pub totals: Vec<(String, CampaignTotal)>,
    pub buckets: Vec<(BucketKey, WindowBucket)>,
    pub conflicts: Vec<Conflict>,
}

/// What loading a partition gave.
#[derive(Debug)]
pub enum LoadedPartition {
    /// A checkpoint that passed every check.
    Restored {
        state: Box<PartitionState>,
        meta: CheckpointMeta,
    },
    /// No checkpoint yet: start from offset 0.
    Empty,
}

/// One process's handle on the state directory.
#[derive(Debug)]
pub struct CheckpointStore {
    dir: PathBuf,
    db: sled::Db,
    trees: Vec<sled::Tree>,
    journals: Vec<Mutex<Option<Journal>>>,
    sequences: Vec<Mutex<u64>>,
    notifications: sled::Tree,
    /// Every write to sled goes through this one at a time. sled 0.34 can deadlock when several
    /// threads write at once (its segment accountant waits on a file truncation queued behind
    /// I/O tasks that wait for the accountant; sled issues #804, #1412): seen here with eight
    /// partitions committing under load. One writer at a time costs little — a commit is a
    /// small batch — and keeps sled's I/O pool from filling up.
    sled_writes: Mutex<()>,
    _lock: File,
}

impl CheckpointStore {
    /// Opens the state directory for `partition_count` partitions. If sled cannot open its
    /// files, they are moved aside and an empty store is created (every partition then rebuilds
    /// from the log); the returned notes say so.
    pub fn open(dir: &Path, partition_count: u32) -> Result<(Self, Vec<String>), CheckpointError> {
        std::fs::create_dir_all(dir).map_err(|e| CheckpointError::io(dir, e))?;
        let lock = lock_directory(dir)?;
        let mut notes = Vec::new();
        let sled_dir = dir.join("sled");
        let db = match open_sled(&sled_dir) {
            Ok(db) => db,
            Err(error) => {
                let aside = dir.join(format!("sled.unreadable-{}", std::process::id()));
                std::fs::rename(&sled_dir, &aside)
                    .map_err(|e| CheckpointError::io(&sled_dir, e))?;
                notes.push(format!(
                    "sled state failed to open ({error}); moved it to {} and rebuilding all partitions from the log",
                    aside.display()
                ));
                open_sled(&sled_dir)?
            }
        };
        let trees = (0..partition_count)
            .map(|partition| db.open_tree(format!("partition-{partition:03}")))
            .collect::<Result<Vec<_>, _>>()?;
        let notifications = db.open_tree(NOTIFICATIONS_TREE)?;
        let store = Self {
            dir: dir.to_owned(),
            db,
            trees,
            notifications,
            sled_writes: Mutex::new(()),
            journals: (0..partition_count).map(|_| Mutex::new(None)).collect(),
            sequences: (0..partition_count).map(|_| Mutex::new(0)).collect(),
            _lock: lock,
        };
        Ok((store, notes))
    }

    pub fn partition_count(&self) -> u32 {
        self.trees.len() as u32
    }

    fn tree(&self, partition: PartitionId) -> &sled::Tree {
        &self.trees[partition as usize]
    }

    fn journal_path(&self, partition: PartitionId) -> PathBuf {
        self.dir.join(format!("journal-{partition:03}"))
    }

    /// The committed checkpoint meta of a partition, if any.
    pub fn meta(&self, partition: PartitionId) -> Result<Option<CheckpointMeta>, CheckpointError> {
        let Some(bytes) = self.tree(partition).get(META_KEY)? else {
            return Ok(None);
        };
        decode_meta(partition, &bytes).map(Some)
    }

    /// Every partition's checkpoint, for `checkpoint list`.
    pub fn list(&self) -> Result<Vec<Option<CheckpointInfo>>, CheckpointError> {
        (0..self.partition_count())
            .map(|partition| Ok(self.meta(partition)?.as_ref().map(CheckpointInfo::from)))
            .collect()
    }

    /// Loads and checks a partition's checkpoint. A `Corrupt` error means: reset it and rebuild
    /// from the log.
    pub fn load(&self, partition: PartitionId) -> Result<LoadedPartition, CheckpointError> {
        let Some(meta) = self.meta(partition)? else {
            self.reset(partition)?;
            return Ok(LoadedPartition::Empty);
        };
        let mut restorer = IndexRestorer::new(meta.scalars.counters.recorded);
        let journal = Journal::open(
            &self.journal_path(partition),
            partition,
            Some(meta.journal_end_position),
            |change| restorer.add(change),
        )?;
        let totals = self.totals(partition)?;
        let buckets = self.buckets(partition)?;
        let conflicts = self.conflicts(partition)?;
        let state = PartitionState::restore(meta.scalars, restorer, totals, buckets, &conflicts);
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
        *lock(&self.journals[partition as usize]) = Some(journal);
        *lock(&self.sequences[partition as usize]) = meta.sequence;
        Ok(LoadedPartition::Restored {
            state: Box::new(state),
            meta,
        })
    }

    /// A partition's whole checkpoint, checked against its digest; `None` without a checkpoint.
    pub fn export(
        &self,
        partition: PartitionId,
    ) -> Result<Option<PartitionSavepoint>, CheckpointError> {
        // Holding the journal slot keeps the partition's commits out until the export has read
        // the meta, the journal and the trees: one consistent checkpoint, even while it runs.
        let _no_commit = lock(&self.journals[partition as usize]);
        let Some(meta) = self.meta(partition)? else {
            return Ok(None);
        };
        let mut index_changes = Vec::with_capacity(meta.scalars.counters.recorded as usize);
        Journal::read_committed(
            &self.journal_path(partition),
            partition,
            meta.journal_end_position,
            |change| index_changes.push(change),
        )?;
        let exported = PartitionSavepoint {
            meta,
            index_changes,
            totals: self.totals(partition)?,
            buckets: self.buckets(partition)?,
            conflicts: self.conflicts(partition)?,
        };
        let mut restorer = IndexRestorer::new(meta.scalars.counters.recorded);
        exported
            .index_changes
            .iter()
            .cloned()
            .for_each(|change| restorer.add(change));
        let state = PartitionState::restore(
            meta.scalars,
            restorer,
            exported.totals.clone(),
            exported.buckets.clone(),
            &exported.conflicts,
        );
        if state.state_digest() != meta.state_digest {
            return Err(CheckpointError::Corrupt {
                what: format!("checkpoint of partition {partition}"),
                reason: "state read back does not match its digest".into(),
            });
        }
        Ok(Some(exported))
    }

    /// Replaces a partition's checkpoint with an exported one (from a savepoint).
    pub fn install(&self, exported: &PartitionSavepoint) -> Result<(), CheckpointError> {
        let partition = exported.meta.scalars.partition;
        self.reset(partition)?;
        let mut journal_slot = lock(&self.journals[partition as usize]);
        let journal = journal_slot.as_mut().expect("reset opens the journal");
        for chunk in exported.index_changes.chunks(INSTALL_CHANGES_PER_FRAME) {
            journal.append(chunk)?;
        }
        let mut meta = exported.meta;
        meta.journal_end_position = journal.end_position();
        let mut batch = sled::Batch::default();
        for (campaign_id, total) in &exported.totals {
            batch.insert(total_key(campaign_id), codec::encode(total));
        }
        for (key, bucket) in &exported.buckets {
            batch.insert(bucket_key(key), codec::encode(bucket));
        }
        for conflict in &exported.conflicts {
            batch.insert(
                conflict_key(&conflict.payment_ref, conflict.conflicting_offset),
                codec::encode(conflict),
            );
        }
        batch.insert(META_KEY, encode_meta(&meta));
        self.sled_write(|| self.tree(partition).apply_batch(batch))?;
        *lock(&self.sequences[partition as usize]) = meta.sequence;
        self.flush()
    }

    /// Forgets a partition's checkpoint: it will be rebuilt from offset 0.
    pub fn reset(&self, partition: PartitionId) -> Result<(), CheckpointError> {
        self.sled_write(|| self.tree(partition).clear())?;
        let journal = Journal::open(&self.journal_path(partition), partition, None, |_| {})?;
        *lock(&self.journals[partition as usize]) = Some(journal);
        *lock(&self.sequences[partition as usize]) = 0;
        Ok(())
    }

    /// Commits `changes` (what changed in `state` since its last checkpoint, from
    /// `PartitionState::take_changes`) with the state's next offset, in one atomic step.
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
        let journal_end_position = if changes.index.is_empty() {
            journal.end_position()
        } else {
            journal.append(&changes.index)?
        };
        let mut sequence = lock(&self.sequences[partition as usize]);
        *sequence += 1;
        let meta = CheckpointMeta {
            format_version: CHECKPOINT_FORMAT_VERSION,
            scalars: state.scalars(),
            sequence: *sequence,
            journal_end_position,
            digest: state.digest(),
            state_digest: state.state_digest(),
            committed_at_ms: now_ms,
        };
        let mut batch = sled::Batch::default();
        for (campaign_id, total) in &changes.totals {
            batch.insert(total_key(campaign_id), codec::encode(total));
        }
        for (key, bucket) in &changes.buckets {
            batch.insert(bucket_key(key), codec::encode(bucket));
        }
        for conflict in &changes.conflicts {
            batch.insert(
                conflict_key(&conflict.payment_ref, conflict.conflicting_offset),
                codec::encode(conflict),
            );
        }
        batch.insert(META_KEY, encode_meta(&meta));
        self.sled_write(|| self.tree(partition).apply_batch(batch))?;
        Ok(meta)
    }

    /// Where notification delivery of a partition has got to: every recorded donation below this
    /// offset has been delivered. Kept apart from the checkpointed state (it is not derived from
    /// the log, and survives a rebuild of the partition).
    pub fn notification_cursor(&self, partition: PartitionId) -> Result<Offset, CheckpointError> {
        Ok(match self.notifications.get(partition.to_be_bytes())? {
            Some(bytes) => u64::from_be_bytes(bytes.as_ref().try_into().map_err(|_| {
                CheckpointError::Corrupt {
                    what: format!("notification cursor of partition {partition}"),
                    reason: "not 8 bytes".into(),
                }
            })?),
            None => 0,
        })
    }

    pub fn set_notification_cursor(
        &self,
        partition: PartitionId,
        next_offset: Offset,
    ) -> Result<(), CheckpointError> {
        self.sled_write(|| self.notifications.insert(partition.to_be_bytes(), &next_offset.to_be_bytes()))?;
        Ok(())
    }

    /// Asks sled to write its buffers out (best effort: see the module documentation).
    pub fn flush(&self) -> Result<(), CheckpointError> {
        self.sled_write(|| self.db.flush())?;
        Ok(())
    }

    fn sled_write<T>(&self, write: impl FnOnce() -> sled::Result<T>) -> sled::Result<T> {
        let _one_writer = lock(&self.sled_writes);
        write()
    }

    pub fn totals(
        &self,
        partition: PartitionId,
    ) -> Result<Vec<(String, CampaignTotal)>, CheckpointError> {
        self.scan(partition, TOTAL_PREFIX, |key| {
            String::from_utf8(key.to_vec()).map_err(|e| e.to_string())
        })
    }

    pub fn buckets(
        &self,
        partition: PartitionId,
    ) -> Result<Vec<(BucketKey, WindowBucket)>, CheckpointError> {
        self.scan(partition, BUCKET_PREFIX, parse_bucket_key)
    }

    pub fn conflicts(&self, partition: PartitionId) -> Result<Vec<Conflict>, CheckpointError> {
        let pairs: Vec<((), Conflict)> = self.scan(partition, CONFLICT_PREFIX, |_| Ok(()))?;
        Ok(pairs.into_iter().map(|(_, conflict)| conflict).collect())
    }

    fn scan<K, V: serde::de::DeserializeOwned>(
        &self,
        partition: PartitionId,
        prefix: &[u8],
        parse_key: impl Fn(&[u8]) -> Result<K, String>,
    ) -> Result<Vec<(K, V)>, CheckpointError> {
        let corrupt = |reason: String| CheckpointError::Corrupt {
            what: format!("state of partition {partition}"),
            reason,
        };
        self.tree(partition)
            .scan_prefix(prefix)
            .map(|entry| {
                let (key, value) = entry?;
                let parsed = parse_key(&key[prefix.len()..]).map_err(&corrupt)?;
                let value = codec::decode(&value).map_err(|e| corrupt(e.to_string()))?;
                Ok((parsed, value))
            })
            .collect()
    }
}

/// Opens sled, turning a panic during recovery (seen with damaged files) into an error so the
/// caller can move the files aside and rebuild.
fn open_sled(dir: &Path) -> Result<sled::Db, sled::Error> {
    let config = sled::Config::new()
        .path(dir)
        .cache_capacity(SLED_CACHE_BYTES)
        .flush_every_ms(Some(500));
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || config.open())).unwrap_or_else(
        |_| {
            Err(sled::Error::Unsupported(
                "sled panicked while opening its files".into(),
            ))
        },
    )
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn lock_directory(dir: &Path) -> Result<File, CheckpointError> {
    let path = dir.join("LOCK");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| CheckpointError::io(&path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(CheckpointError::Locked {
            path: dir.to_owned(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(CheckpointError::io(&path, e)),
    }
}

fn encode_meta(meta: &CheckpointMeta) -> Vec<u8> {
    let mut bytes = codec::encode(meta);
    let crc = crc32c::crc32c(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes
}

fn decode_meta(partition: PartitionId, bytes: &[u8]) -> Result<CheckpointMeta, CheckpointError> {
    let corrupt = |reason: String| CheckpointError::Corrupt {
        what: format!("checkpoint meta of partition {partition}"),
        reason,
    };
    let (body, crc) = bytes
        .split_at_checked(bytes.len().saturating_sub(4))
        .ok_or_else(|| corrupt("too short".into()))?;
    let stored_crc = u32::from_le_bytes(crc.try_into().map_err(|_| corrupt("too short".into()))?);
    if crc32c::crc32c(body) != stored_crc {
        return Err(corrupt("checksum mismatch".into()));
    }
    let meta: CheckpointMeta = codec::decode(body).map_err(|e| corrupt(e.to_string()))?;
    if meta.format_version != CHECKPOINT_FORMAT_VERSION {
        return Err(corrupt(format!(
            "format version {} is not known to this build",
            meta.format_version
        )));
    }
    if meta.scalars.partition != partition {
        return Err(corrupt(format!(
            "it belongs to partition {}",
            meta.scalars.partition
        )));
    }
    Ok(meta)
}

fn total_key(campaign_id: &str) -> Vec<u8> {
    [TOTAL_PREFIX, campaign_id.as_bytes()].concat()
}

/// `i64` → `u64` that sorts the same way as big-endian bytes.
fn ordered_start(start_ms: UnixMillis) -> [u8; 8] {
    ((start_ms as u64) ^ (1 << 63)).to_be_bytes()
}

fn bucket_key(key: &BucketKey) -> Vec<u8> {
    let mut bytes = [BUCKET_PREFIX, key.campaign_id.as_bytes(), b"\0"].concat();
    bytes.push(key.granularity as u8);
    bytes.extend_from_slice(&ordered_start(key.start_ms));
    bytes
}

fn parse_bucket_key(bytes: &[u8]) -> Result<BucketKey, String> {
    let separator = bytes
        .len()
        .checked_sub(10)
        .filter(|&at| bytes[at] == 0)
        .ok_or("bad bucket key")?;
    let campaign_id = std::str::from_utf8(&bytes[..separator])
        .map_err(|e| e.to_string())?
        .to_owned();
    let granularity = match bytes[separator + 1] {
        0 => Granularity::Minute,
        1 => Granularity::Hour,
        2 => Granularity::Day,
        other => return Err(format!("bad granularity {other}")),
    };
    let ordered = u64::from_be_bytes(
        bytes[separator + 2..]
            .try_into()
            .map_err(|_| "bad bucket start")?,
    );
    Ok(BucketKey {
        campaign_id,
        granularity,
        start_ms: (ordered ^ (1 << 63)) as i64,
    })
}

fn conflict_key(payment_ref: &str, conflicting_offset: Offset) -> Vec<u8> {
    [
        CONFLICT_PREFIX,
        payment_ref.as_bytes(),
        b"\0",
        &conflicting_offset.to_be_bytes(),
    ]
    .concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_keys_roundtrip_and_sort_by_start() {
        let keys: Vec<BucketKey> = [-120_000i64, -60_000, 0, 60_000, 1_795_546_800_000]
            .iter()
            .map(|&start_ms| BucketKey {
                campaign_id: "meals".into(),
                granularity: Granularity::Hour,
                start_ms,
            })
            .collect();
        let encoded: Vec<Vec<u8>> = keys.iter().map(bucket_key).collect();
        assert!(encoded.windows(2).all(|pair| pair[0] < pair[1]));
        for (key, bytes) in keys.iter().zip(&encoded) {
            assert_eq!(
                &parse_bucket_key(&bytes[BUCKET_PREFIX.len()..]).unwrap(),
                key
            );
        }
    }
}
