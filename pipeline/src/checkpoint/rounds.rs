//! Commit rounds: the checkpoints of several partitions committed together, with one sync.
//!
//! A pipeline worker runs several partitions and commits the checkpoints that are due together.
//! Each checkpoint's frame is written to its partition's journal without a sync; one entry
//! holding all of the round's frames goes to the worker's write-ahead file, and syncing that file
//! is the round's atomic step (see `support::write_ahead`): after a crash the round's
//! checkpoints are all there, replayed into their journals when the state is opened, or none
//! is. A checkpoint is still one frame of its journal, so loading, compaction, savepoints and
//! verification read journals as before.
//!
//! Once its write-ahead file reaches its bound the committer syncs the journals it wrote to and
//! removes the file, and the next round starts another; so does closing the committer.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::CheckpointError;
use super::compaction;
use super::store::{CheckpointMeta, CheckpointStore, encode_checkpoint, from_write_ahead, lock};
use crate::log::PartitionId;
use crate::processor::{PartitionState, StateChanges};
use crate::support::clock::UnixMillis;
use crate::support::storage::StorageFile;
use crate::support::write_ahead::{self, EntryBuilder, PartPlace};

/// A committer starts a new write-ahead file once the current one holds this many bytes.
pub const ROUND_WRITE_AHEAD_BYTES_MAX: u64 = 16 * 1024 * 1024;

/// One worker's commit rounds: its write-ahead file, and the journals written since that file
/// was started. Close it ([`CheckpointCommitter::close`]) when the worker stops.
#[derive(Debug)]
pub struct CheckpointCommitter {
    /// The current write-ahead file; `None` until the next round starts one.
    file: Option<RoundFile>,
    entry: EntryBuilder,
    round: u64,
    write_ahead_bytes_max: u64,
}

#[derive(Debug)]
struct RoundFile {
    path: PathBuf,
    file: Arc<dyn StorageFile>,
    /// The end of the last entry that synced.
    position: u64,
    /// Each journal written while this file was current, by partition and generation.
    written: BTreeMap<(PartitionId, u64), (PathBuf, Arc<dyn StorageFile>)>,
}

/// One partition's checkpoint in a round: its state and what changed since its last one.
#[derive(Debug, Clone, Copy)]
pub struct RoundCheckpoint<'a> {
    pub state: &'a PartitionState,
    pub changes: &'a StateChanges,
}

impl CheckpointStore {
    /// A committer for one worker's rounds.
    pub fn committer(&self) -> CheckpointCommitter {
        CheckpointCommitter {
            file: None,
            entry: EntryBuilder::default(),
            round: 0,
            write_ahead_bytes_max: self.round_write_ahead_bytes_max.load(Ordering::Relaxed),
        }
    }

    /// Committers made from now on retire their write-ahead file once it holds this many bytes
    /// ([`ROUND_WRITE_AHEAD_BYTES_MAX`] unless set; small in tests, so crashes land in
    /// retirements).
    pub fn set_round_write_ahead_bytes_max(&self, bytes: u64) {
        self.round_write_ahead_bytes_max
            .store(bytes, Ordering::Relaxed);
    }

    /// Commits the checkpoints of a round (of distinct partitions, each loaded or reset), each
    /// exactly as [`commit`](Self::commit) would, with one sync for all of them. On failure
    /// none of them counts, and each journal is cut back before its next checkpoint.
    pub fn commit_round(
        &self,
        committer: &mut CheckpointCommitter,
        checkpoints: &[RoundCheckpoint<'_>],
        now_ms: UnixMillis,
    ) -> Result<Vec<CheckpointMeta>, CheckpointError> {
        if checkpoints.is_empty() {
            return Ok(Vec::new());
        }
        let mut partitions: Vec<PartitionId> =
            checkpoints.iter().map(|c| c.state.partition()).collect();
        partitions.sort_unstable();
        assert!(
            partitions.windows(2).all(|pair| pair[0] != pair[1]),
            "a round holds one checkpoint per partition"
        );
        self.ensure_round_file(committer)?;
        // Held through the sync: a compaction must not copy a frame whose round may still fail.
        // Taken in partition order, as no other holder takes more than one.
        let mut order: Vec<usize> = (0..checkpoints.len()).collect();
        order.sort_unstable_by_key(|&at| checkpoints[at].state.partition());
        let mut slots: Vec<_> = order
            .iter()
            .map(|&at| lock(&self.journals[checkpoints[at].state.partition() as usize]))
            .collect();
        committer.round += 1;
        committer.entry.start(committer.round);
        let mut metas = Vec::with_capacity(order.len());
        for (&at, slot) in order.iter().zip(slots.iter_mut()) {
            let RoundCheckpoint { state, changes } = checkpoints[at];
            let partition = state.partition();
            let journal = slot
                .as_mut()
                .expect("a partition is loaded or reset before it commits");
            let latest = *lock(&self.latest[partition as usize]);
            let (meta, entry) = encode_checkpoint(state, changes, now_ms, latest.as_ref());
            journal.set_recorded_hint(meta.scalars.counters.recorded)?;
            let position = journal.write_pending(&entry)?;
            let next_offset = meta.scalars.next_offset;
            let place = PartPlace {
                partition,
                file_tag: journal.write_ahead_tag(),
                position,
                base_offset: next_offset,
                end_offset: next_offset,
            };
            committer.entry.part(place, |buffer| {
                buffer.extend_from_slice(journal.pending_frame());
                ((), next_offset)
            });
            metas.push((at, meta));
        }
        self.write_round_entry(committer)?;
        let round_file = committer.file.as_mut().expect("a round has its file");
        let floor = self.compaction_floor();
        let mut due = Vec::new();
        for ((_, meta), slot) in metas.iter().zip(slots.iter_mut()) {
            let partition = meta.scalars.partition;
            let journal = slot.as_mut().expect("loaded");
            journal.confirm_pending();
            round_file
                .written
                .entry((partition, journal.write_ahead_tag()))
                .or_insert_with(|| (journal.path().to_owned(), Arc::clone(journal.file())));
            *lock(&self.latest[partition as usize]) = Some(*meta);
            if compaction::is_due(journal, floor) {
                due.push(partition);
            }
        }
        drop(slots);
        for partition in due {
            self.request_compaction(partition);
        }
        if round_file.position >= committer.write_ahead_bytes_max
            && let Err(error) = self.retire_round_file(committer)
        {
            tracing::warn!(%error, "a checkpoint write-ahead file could not be retired; it is replayed when the state next opens");
        }
        metas.sort_unstable_by_key(|&(at, _)| at);
        Ok(metas.into_iter().map(|(_, meta)| meta).collect())
    }

    fn ensure_round_file(
        &self,
        committer: &mut CheckpointCommitter,
    ) -> Result<(), CheckpointError> {
        if committer.file.is_some() {
            return Ok(());
        }
        let sequence = self.write_ahead_sequence.fetch_add(1, Ordering::Relaxed);
        let (path, file) =
            write_ahead::create_file(&*self.storage, &write_ahead::dir_of(&self.dir), sequence)
                .map_err(from_write_ahead)?;
        committer.file = Some(RoundFile {
            path,
            file,
            position: write_ahead::WRITE_AHEAD_HEADER_BYTES,
            written: BTreeMap::new(),
        });
        committer.round = 0;
        Ok(())
    }

    /// Appends the round's entry to the write-ahead file and syncs it. If that fails, whatever
    /// of it reached the file is cut off again and the cut synced; if even that fails, the file
    /// is given up (it stays for the next open to replay, up to its last whole entry) and the
    /// next round starts a new one.
    fn write_round_entry(
        &self,
        committer: &mut CheckpointCommitter,
    ) -> Result<(), CheckpointError> {
        let round_file = committer.file.as_mut().expect("a round has its file");
        let entry = committer.entry.finish();
        let written = round_file
            .file
            .write_all_at(entry, round_file.position)
            .and_then(|()| round_file.file.sync_data());
        match written {
            Ok(()) => {
                round_file.position += entry.len() as u64;
                Ok(())
            }
            Err(error) => {
                let error = CheckpointError::io(&round_file.path, error);
                let cut = round_file
                    .file
                    .set_len(round_file.position)
                    .and_then(|()| round_file.file.sync_data());
                if cut.is_err() {
                    committer.file = None;
                }
                Err(error)
            }
        }
    }

    /// Syncs the journals the committer's write-ahead file covers and removes the file; the next
    /// round starts a new one.
    fn retire_round_file(
        &self,
        committer: &mut CheckpointCommitter,
    ) -> Result<(), CheckpointError> {
        let Some(round_file) = committer.file.take() else {
            return Ok(());
        };
        for (path, file) in round_file.written.values() {
            file.sync_data().map_err(|e| CheckpointError::io(path, e))?;
        }
        self.storage
            .remove_file(&round_file.path)
            .map_err(|e| CheckpointError::io(&round_file.path, e))?;
        let dir = write_ahead::dir_of(&self.dir);
        self.storage
            .sync_dir(&dir)
            .map_err(|e| CheckpointError::io(&dir, e))
    }
}

impl CheckpointCommitter {
    /// Retires the write-ahead file: the journals synced, the file removed. A failure only
    /// leaves the file for the next open to replay.
    pub fn close(mut self, store: &CheckpointStore) {
        if let Err(error) = store.retire_round_file(&mut self) {
            tracing::warn!(%error, "closing a checkpoint committer: its write-ahead file is replayed when the state next opens");
        }
    }
}
