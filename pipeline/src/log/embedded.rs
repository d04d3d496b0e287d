//! The embedded log: a topic of partitions stored in one directory, nothing to install.
//!
//! ```text
//! <dir>/manifest.json          partition count and partitioner, fixed at creation
//! <dir>/LOCK                   held (flock) by the one process that has the log open
//! <dir>/partition-NNN/         segments of partition NNN (see `segment`)
//! <dir>/write-ahead/           the rounds of commits not yet synced in their segments
//! ```
//!
//! Durability: an append is acknowledged once its round's entry in the write-ahead file is
//! synced (see `writer` and `write_ahead`); files and directories are synced when created.
//! Opening replays the write-ahead files into the segments, then truncates a torn tail of each
//! partition's last segment and reports any other damage as corruption. Records are kept
//! forever: the log is the record of truth that state is rebuilt from.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;

use super::manifest::{Manifest, PARTITION_COUNT_MAX};
use super::partition::{Partition, PartitionConfig, PartitionStats, sync_directory};
use super::recovery::{Opening, RecoveryMode, RepairAction};
use super::segment::segment_file_name;
use super::writer::{LogWriter, WriterSetup};
use super::{AppendAck, KeyedRecord, Log, LogError, LogRecord, Offset, PartitionId, Witness};
use crate::support::clock::{Clock, SystemClock};
use crate::support::storage::{self, DirectoryLock, DirectoryLockError, OsStorage, Storage};
use crate::support::write_ahead::{self, PartPlace, Resolved, WriteAheadError};

/// How to open (or create) an embedded log.
#[derive(Debug, Clone)]
pub struct EmbeddedLogOptions {
    /// Partitions of a newly created log; an existing log keeps the count in its manifest.
    pub partition_count: u32,
    pub partition: PartitionConfig,
    pub clock: Arc<dyn Clock>,
    /// Where the files live: the real file system, or a simulated disk in tests.
    pub storage: Arc<dyn Storage>,
    /// How far durable state outside the log has seen each partition reach; recovery never
    /// cuts a partition below its witness (see `recovery`).
    pub witnesses: Vec<Witness>,
}

impl Default for EmbeddedLogOptions {
    fn default() -> Self {
        Self {
            partition_count: 8,
            partition: PartitionConfig::default(),
            clock: Arc::new(SystemClock),
            storage: OsStorage::shared(),
            witnesses: Vec::new(),
        }
    }
}

/// An open embedded log. Dropping it finishes queued appends and closes the files.
#[derive(Debug)]
pub struct EmbeddedLog {
    /// Dropped first: the writer finishes before the directory is released.
    writer: LogWriter,
    dir: PathBuf,
    partitions: Vec<Partition>,
    /// Held for the lifetime of the log so no second process opens the same directory.
    _lock: DirectoryLock,
}

impl EmbeddedLog {
    /// Opens the log in `dir`, creating it with `options.partition_count` partitions if empty.
    pub fn open(dir: &Path, options: EmbeddedLogOptions) -> Result<Self, LogError> {
        let storage = &*options.storage;
        storage::create_dir_all(storage, dir).map_err(|e| LogError::io(dir, e))?;
        let lock = lock_directory(storage, dir)?;
        let manifest = match Manifest::read(storage, dir)? {
            Some(manifest) => manifest,
            None => create_manifest(storage, dir, options.partition_count)?,
        };
        let replayed = replay_write_ahead(storage, dir)?;
        if replayed.parts > 0 {
            tracing::info!(
                files = replayed.files,
                commits = replayed.parts,
                "replayed the log's write-ahead files into its segments"
            );
        }
        let partitions = (0..manifest.partition_count)
            .map(|id| {
                let partition_dir = partition_dir(dir, id);
                let exists = storage
                    .exists(&partition_dir)
                    .map_err(|e| LogError::io(&partition_dir, e))?;
                if !exists {
                    storage
                        .create_dir(&partition_dir)
                        .map_err(|e| LogError::io(&partition_dir, e))?;
                    sync_directory(storage, dir)?;
                }
                Partition::open(
                    id,
                    &partition_dir,
                    options.partition,
                    storage,
                    witness_of(&options.witnesses, id),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let writer = LogWriter::start(WriterSetup {
            log_dir: dir,
            partitions: &partitions,
            config: options.partition,
            clock: Arc::clone(&options.clock),
            storage: Arc::clone(&options.storage),
            write_ahead_sequence: replayed.last_sequence + 1,
        })?;
        Ok(Self {
            writer,
            dir: dir.to_owned(),
            partitions,
            _lock: lock,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn partition(&self, partition: PartitionId) -> Result<&Partition, LogError> {
        self.partitions
            .get(partition as usize)
            .ok_or(LogError::NoSuchPartition {
                partition,
                partition_count: self.partitions.len() as u32,
            })
    }

    /// Appends to one partition from outside an async runtime (blocks until durable).
    pub fn append_blocking(
        &self,
        partition: PartitionId,
        records: Vec<KeyedRecord>,
    ) -> Result<AppendAck, LogError> {
        self.partition(partition)?;
        self.writer.append_blocking(partition, records)
    }

    pub fn stats(&self) -> Vec<PartitionStats> {
        self.partitions.iter().map(Partition::stats).collect()
    }

    /// Reads and checks every frame of every partition; returns each partition's end offset.
    pub fn verify(&self) -> Result<Vec<Offset>, LogError> {
        self.partitions.iter().map(Partition::verify).collect()
    }
}

#[async_trait]
impl Log for EmbeddedLog {
    fn partition_count(&self) -> u32 {
        self.partitions.len() as u32
    }

    async fn append(
        &self,
        partition: PartitionId,
        records: Vec<KeyedRecord>,
    ) -> Result<AppendAck, LogError> {
        self.partition(partition)?;
        self.writer.append(partition, records).await
    }

    /// Reads with positioned reads on the calling thread: bounded, and served from the page
    /// cache for a consumer that keeps up, so not worth a hop to a blocking pool.
    async fn read(
        &self,
        partition: PartitionId,
        from: Offset,
        records_max: usize,
    ) -> Result<Vec<LogRecord>, LogError> {
        self.partition(partition)?.read(from, records_max)
    }

    async fn end_offset(&self, partition: PartitionId) -> Result<Offset, LogError> {
        Ok(self.partition(partition)?.end_offset())
    }

    async fn wait_for_offset(
        &self,
        partition: PartitionId,
        offset: Offset,
    ) -> Result<(), LogError> {
        self.partition(partition)?.wait_for_offset(offset).await
    }
}

/// Cuts every damaged partition of the log in `dir` back to its last whole commit before the
/// damage, whatever its witnesses saw, and returns what was cut (nothing for a sound log). The
/// log must not be open elsewhere; the caller records the actions and resets state that saw
/// beyond the new ends.
pub fn repair(dir: &Path, options: &EmbeddedLogOptions) -> Result<Vec<RepairAction>, LogError> {
    let storage = &*options.storage;
    let _lock = lock_directory(storage, dir)?;
    let manifest = Manifest::read(storage, dir)?.ok_or_else(|| LogError::InvalidDirectory {
        path: dir.to_owned(),
        reason: "no log here (no manifest.json)".into(),
    })?;
    replay_write_ahead(storage, dir)?;
    let mut actions = Vec::new();
    for id in 0..manifest.partition_count {
        let partition_dir = partition_dir(dir, id);
        let exists = storage
            .exists(&partition_dir)
            .map_err(|e| LogError::io(&partition_dir, e))?;
        if !exists {
            continue;
        }
        let (_, action) = Opening {
            storage,
            dir: &partition_dir,
            partition: id,
            config: &options.partition,
            witness: witness_of(&options.witnesses, id),
            mode: RecoveryMode::Repair,
        }
        .open()?;
        actions.extend(action);
    }
    Ok(actions)
}

/// Writes the commits the log's write-ahead files hold into their segments (see
/// `support::write_ahead`): before the partitions open, so their segments hold every
/// acknowledged commit again.
pub(super) fn replay_write_ahead(
    storage: &dyn Storage,
    log_dir: &Path,
) -> Result<write_ahead::Replayed, LogError> {
    let dir = write_ahead::dir_of(log_dir);
    let resolve = |place: &PartPlace| -> Resolved {
        let path = partition_dir(log_dir, place.partition).join(segment_file_name(place.file_tag));
        if storage
            .exists(&path)
            .map_err(|e| WriteAheadError::io(&path, e))?
        {
            return Ok(Some(path));
        }
        Err(WriteAheadError::Corrupt {
            path: dir.clone(),
            position: 0,
            reason: format!(
                "it holds acknowledged records {}..{} of partition {} for segment {}, which is \
                 missing",
                place.base_offset,
                place.end_offset,
                place.partition,
                path.display()
            ),
        })
    };
    Ok(write_ahead::replay(storage, &dir, resolve)?)
}

pub(super) fn partition_dir(log_dir: &Path, partition: PartitionId) -> PathBuf {
    log_dir.join(format!("partition-{partition:03}"))
}

fn witness_of(witnesses: &[Witness], partition: PartitionId) -> Option<&Witness> {
    witnesses
        .iter()
        .filter(|witness| witness.partition == partition)
        .max_by_key(|witness| witness.end_offset)
}

fn create_manifest(
    storage: &dyn Storage,
    dir: &Path,
    partition_count: u32,
) -> Result<Manifest, LogError> {
    if !(1..=PARTITION_COUNT_MAX).contains(&partition_count) {
        return Err(LogError::InvalidDirectory {
            path: dir.to_owned(),
            reason: format!(
                "partition count must be 1 to {PARTITION_COUNT_MAX}, got {partition_count}"
            ),
        });
    }
    let manifest = Manifest::new(partition_count);
    manifest.write(storage, dir)?;
    Ok(manifest)
}

fn lock_directory(storage: &dyn Storage, dir: &Path) -> Result<DirectoryLock, LogError> {
    storage.lock_directory(dir).map_err(|error| match error {
        DirectoryLockError::Held => LogError::Locked {
            path: dir.to_owned(),
        },
        DirectoryLockError::Io(e) => LogError::io(dir.join("LOCK"), e),
    })
}
