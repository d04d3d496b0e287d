//! Journal compaction: a partition's journal rewritten as a new generation that opens with a
//! snapshot of its state, in the background, without holding the partition up.
//!
//! # The steps
//! 1. Note where the journal ends (a committed checkpoint) — nothing is held while the rest of
//!    steps 2 and 3 run, so the partition goes on committing to the old generation.
//! 2. Rebuild the state as of that checkpoint from the journal's bytes up to there, and check it
//!    against the checkpoint's digest (what is written is what a load would have given).
//! 3. Stream it into `checkpoints-NNN.journal.compacting`: header, snapshot parts, the
//!    `Snapshot` frame; then copy over the checkpoints the partition committed meanwhile, and
//!    sync.
//! 4. Holding the journal (the partition's commits wait, for about one checkpoint's worth):
//!    copy the last checkpoints committed since step 3, sync, rename the new generation over
//!    the journal, sync the directory, and go on appending to it.
//!
//! A crash before the rename leaves the old generation, whole, and a `.compacting` file that
//! the next open removes; after it, the new generation, whole. Never neither, never a mix: the
//! rename replaces one complete file with another.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::CheckpointError;
use super::journal::{Journal, SnapshotContent, SnapshotWriter};
use super::store::{CheckpointMeta, Collected, Parts, journal_path, lock};
use crate::log::PartitionId;
use crate::operators::event_time_windows::{BucketKey, SharedBucket};
use crate::processor::PartitionState;
use crate::support::storage::{self, OpenMode, Storage, StorageFile};

const COMPACTING_SUFFIX: &str = ".compacting";
/// Checkpoints committed during a compaction are copied without holding the journal while
/// there are more than this many bytes of them; the last copy, under the journal, is then at
/// most about one round of checkpoints.
const CATCH_UP_UNLOCKED_BYTES: u64 = 256 * 1024;
/// After a failed compaction (a full disk, damage) the partition is not compacted again for
/// this long: the journal goes on working as it is, and retrying at every checkpoint would only
/// add load to a disk in trouble.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);

/// Whether a journal is due: its deltas weigh half its snapshot (and the floor), or it is of
/// an older format. Half, not all: a journal then stays within 1.5× its snapshot, and 2.5×
/// while a compaction writes the next generation beside it.
pub(crate) fn is_due(journal: &Journal, floor_bytes: u64) -> bool {
    let deltas = journal.delta_bytes();
    journal.format_version() < super::journal::JOURNAL_FORMAT_VERSION
        || (deltas >= floor_bytes && deltas.saturating_mul(2) >= journal.snapshot_bytes())
}

fn compacting_path(dir: &Path, partition: PartitionId) -> PathBuf {
    let mut name = journal_path(dir, partition).into_os_string();
    name.push(COMPACTING_SUFFIX);
    PathBuf::from(name)
}

/// Removes what compactions a crash interrupted left behind.
pub(crate) fn remove_leftovers(storage: &dyn Storage, dir: &Path) -> Result<(), CheckpointError> {
    let names = storage
        .list_dir(dir)
        .map_err(|e| CheckpointError::io(dir, e))?;
    for name in names
        .iter()
        .filter(|name| name.ends_with(COMPACTING_SUFFIX))
    {
        let path = dir.join(name);
        storage
            .remove_file(&path)
            .map_err(|e| CheckpointError::io(&path, e))?;
    }
    Ok(())
}

/// Starts writing a new generation of a partition's journal beside the journal.
pub(crate) fn start_generation(
    storage: &dyn Storage,
    dir: &Path,
    partition: PartitionId,
    generation: u64,
    recorded_hint: u64,
) -> Result<SnapshotWriter, CheckpointError> {
    let path = compacting_path(dir, partition);
    let file = storage
        .open(&path, OpenMode::CreateTruncate)
        .map_err(|e| CheckpointError::io(&path, e))?;
    Ok(SnapshotWriter::new(
        &path,
        file,
        partition,
        generation,
        recorded_hint,
    ))
}

/// Syncs a new generation, renames it over the journal and syncs the directory; the journal
/// that appends to it.
pub(crate) fn put_in_place(
    storage: Arc<dyn Storage>,
    dir: &Path,
    partition: PartitionId,
    writer: SnapshotWriter,
) -> Result<Journal, CheckpointError> {
    let from = compacting_path(dir, partition);
    let to = journal_path(dir, partition);
    let written = writer.finish()?;
    storage
        .rename(&from, &to)
        .map_err(|e| CheckpointError::io(&to, e))?;
    storage
        .sync_dir(storage::parent_or_current(&to))
        .map_err(|e| CheckpointError::io(dir, e))?;
    Ok(Journal::adopt(storage, &to, written))
}

/// A partition's state as of a committed checkpoint, rebuilt from its journal's bytes and
/// checked against that checkpoint's digest.
pub(crate) struct CommittedState {
    pub state: PartitionState,
    pub meta: CheckpointMeta,
    pub parts: Parts,
    /// Where the checkpoint ends in the journal.
    pub until: u64,
    pub generation: u64,
}

/// Rebuilds the state of the partition's last committed checkpoint from its journal, holding
/// the journal only to note where it ends. `None` without a loaded journal or a checkpoint.
pub(crate) fn committed_state(
    storage: &Arc<dyn Storage>,
    dir: &Path,
    slot: &Mutex<Option<Journal>>,
    partition: PartitionId,
) -> Result<Option<CommittedState>, CheckpointError> {
    let (file, until, generation) = {
        let journal = lock(slot);
        let Some(journal) = journal.as_ref() else {
            return Ok(None);
        };
        (
            Arc::clone(journal.file()),
            journal.end_position(),
            journal.generation(),
        )
    };
    let path = journal_path(dir, partition);
    let mut collected = Collected::for_snapshot(Journal::recorded_hint(&**storage, &path));
    let damage = Journal::read_file(
        Arc::clone(storage),
        &path,
        file,
        partition,
        Some(until),
        &mut collected,
    )?;
    if let Some(damage) = damage {
        return Err(CheckpointError::Corrupt {
            what: format!("checkpoint journal {}", path.display()),
            reason: format!("damaged at byte {} ({})", damage.position, damage.reason),
        });
    }
    Ok(collected
        .into_state(partition)?
        .map(|(state, meta, _, parts)| CommittedState {
            state,
            meta,
            parts,
            until,
            generation,
        }))
}

/// A table shard goes into a snapshot as it lies (a load copies it back instead of inserting
/// each donation) when it holds at least this many donations in at most twice as many slots,
/// and up to this many bytes (a frame holds 64 MiB): about 3.5 million donations in one shard,
/// 220 million in one partition. Other shards go as packed entries, which are smaller for a
/// small shard.
const SHARD_IMAGE_ENTRIES_MIN: usize = 32;
const SHARD_IMAGE_BYTES_MAX: usize = 40 << 20;

/// Streams a committed state into `writer` as a snapshot. `false` if `stop` was raised.
pub(crate) fn write_snapshot(
    writer: &mut SnapshotWriter,
    committed: CommittedState,
    stop: &AtomicBool,
) -> Result<bool, CheckpointError> {
    {
        let index = committed.state.shared_index();
        let index = index
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for image in index.fingerprint_shards() {
            if stop.load(Ordering::Relaxed) {
                return Ok(false);
            }
            let entries = image.entry_count();
            let dense = entries >= SHARD_IMAGE_ENTRIES_MIN && image.slot_count() <= 2 * entries;
            if dense && image.slots.len() + image.wide.len() * 16 <= SHARD_IMAGE_BYTES_MAX {
                writer.shard(image)?;
            } else {
                // Small (its empty slots would outweigh it) or too large for one frame: its
                // entries, packed.
                for (fingerprint, offset) in image.entries().expect("a table's own shard") {
                    writer.recorded(fingerprint, offset)?;
                }
            }
        }
        for change in index.other_entries() {
            writer.index_change(change)?;
        }
    }
    // The buckets are shared with the state, which goes first: its table is the bulk of it.
    let buckets: Vec<(BucketKey, SharedBucket)> = committed
        .state
        .windows()
        .iter()
        .map(|(key, bucket)| (key, Arc::clone(bucket)))
        .collect();
    let retractions = committed.state.retractions().image();
    drop(committed.state);
    for (key, bucket) in &buckets {
        writer.bucket(key, bucket)?;
    }
    writer.retractions(retractions)?;
    let content = SnapshotContent {
        rolled_up: committed.parts.rolled_up,
        totals: committed.parts.totals,
        conflicts: committed.parts.conflicts,
    };
    writer.finish_snapshot(&committed.meta, content)?;
    Ok(true)
}

/// Compacts one partition's journal (the steps above). `false` if there was nothing to
/// compact (no journal loaded, or no checkpoint), or `stop` was raised meanwhile.
pub(crate) fn compact_partition(
    storage_arc: &Arc<dyn Storage>,
    dir: &Path,
    journals: &[Mutex<Option<Journal>>],
    partition: PartitionId,
    stop: &AtomicBool,
) -> Result<bool, CheckpointError> {
    let slot = &journals[partition as usize];
    let Some(committed) = committed_state(storage_arc, dir, slot, partition)? else {
        return Ok(false);
    };
    let storage = &**storage_arc;
    let (until, generation) = (committed.until, committed.generation);
    let mut writer = start_generation(
        storage,
        dir,
        partition,
        generation + 1,
        committed.meta.scalars.counters.recorded,
    )?;
    let written = write_snapshot(&mut writer, committed, stop).and_then(|written| {
        writer.sync()?;
        Ok(written)
    });
    match written {
        Ok(true) => {}
        Ok(false) => {
            abandon(storage, dir, partition);
            return Ok(false);
        }
        Err(error) => {
            abandon(storage, dir, partition);
            return Err(error);
        }
    }
    match catch_up_and_switch(
        Arc::clone(storage_arc),
        dir,
        slot,
        partition,
        writer,
        until,
        generation,
    ) {
        Ok(switched) => {
            if !switched {
                abandon(storage, dir, partition);
            }
            Ok(switched)
        }
        Err(error) => {
            abandon(storage, dir, partition);
            Err(error)
        }
    }
}

/// Copies the checkpoints committed since `copied_to` into the new generation and, once what
/// is left is small, puts the new generation in place holding the journal. `false` if the
/// journal was reset or replaced meanwhile (the new generation is then of no use).
fn catch_up_and_switch(
    storage: Arc<dyn Storage>,
    dir: &Path,
    slot: &Mutex<Option<Journal>>,
    partition: PartitionId,
    mut writer: SnapshotWriter,
    mut copied_to: u64,
    generation: u64,
) -> Result<bool, CheckpointError> {
    loop {
        let mut journal_slot = lock(slot);
        let Some(journal) = journal_slot.as_mut() else {
            return Ok(false);
        };
        let end = journal.end_position();
        if journal.generation() != generation || end < copied_to {
            return Ok(false);
        }
        if end - copied_to > CATCH_UP_UNLOCKED_BYTES {
            // Bytes below the journal's end never change: read them without holding it.
            let file = Arc::clone(journal.file());
            let path = journal.path().to_owned();
            drop(journal_slot);
            for entry in &read_entries(&path, &*file, copied_to, end)? {
                writer.checkpoint(entry)?;
            }
            writer.sync()?;
            copied_to = end;
            continue;
        }
        for entry in &read_entries(journal.path(), &**journal.file(), copied_to, end)? {
            writer.checkpoint(entry)?;
        }
        let new_journal = put_in_place(Arc::clone(&storage), dir, partition, writer)?;
        tracing::info!(
            partition,
            generation = new_journal.generation(),
            snapshot_bytes = new_journal.snapshot_bytes(),
            bytes_before = end,
            bytes_after = new_journal.end_position(),
            "checkpoint journal compacted"
        );
        *journal = new_journal;
        return Ok(true);
    }
}

/// The encoded entries of a journal's whole frames in `[from, to)`.
fn read_entries(
    path: &Path,
    file: &dyn StorageFile,
    from: u64,
    to: u64,
) -> Result<Vec<Vec<u8>>, CheckpointError> {
    Journal::entries_between(file, from, to).map_err(|reason| CheckpointError::Corrupt {
        what: format!("checkpoint journal {}", path.display()),
        reason,
    })
}

fn abandon(storage: &dyn Storage, dir: &Path, partition: PartitionId) {
    let _ = storage.remove_file(&compacting_path(dir, partition));
}

/// The background compactor of a store: one thread, compacting one partition at a time as
/// commits find them due.
#[derive(Debug)]
pub(crate) struct Compactor {
    requests: Option<mpsc::Sender<PartitionId>>,
    queued: Arc<[AtomicBool]>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Compactor {
    pub fn start(
        storage: Arc<dyn Storage>,
        dir: PathBuf,
        journals: Arc<[Mutex<Option<Journal>>]>,
    ) -> Self {
        let (requests, received) = mpsc::channel::<PartitionId>();
        let queued: Arc<[AtomicBool]> = (0..journals.len())
            .map(|_| AtomicBool::new(false))
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (queued, stop) = (Arc::clone(&queued), Arc::clone(&stop));
            std::thread::Builder::new()
                .name("tally-compactor".into())
                .spawn(move || {
                    let mut retry_at: Vec<Option<Instant>> = vec![None; journals.len()];
                    while let Ok(partition) = received.recv() {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let index = partition as usize;
                        if retry_at[index].is_some_and(|at| Instant::now() < at) {
                            queued[index].store(false, Ordering::Release);
                            continue;
                        }
                        match compact_partition(&storage, &dir, &journals, partition, &stop) {
                            Ok(_) => retry_at[index] = None,
                            Err(error) => {
                                tracing::warn!(partition, %error, "checkpoint journal compaction failed; the journal stays as it is, compacting again in {RETRY_AFTER_FAILURE:?} at the earliest");
                                retry_at[index] = Some(Instant::now() + RETRY_AFTER_FAILURE);
                            }
                        }
                        queued[index].store(false, Ordering::Release);
                    }
                })
                .ok()
        };
        if thread.is_none() {
            tracing::warn!("could not start the checkpoint compactor; journals are not compacted");
        }
        Self {
            requests: Some(requests),
            queued,
            stop,
            thread,
        }
    }

    /// Queues a partition unless it is already queued or being compacted.
    pub fn request(&self, partition: PartitionId) {
        if self.queued[partition as usize].swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(requests) = &self.requests {
            let _ = requests.send(partition);
        }
    }

    /// Stops the compactor: a compaction under way is abandoned at its next step, and the
    /// thread is waited for.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.requests = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
