//! One partition of the embedded log: its segments and its readers.
//!
//! A partition's appends are committed by the log's one writer (see `writer`), which shares
//! the segments with the readers here; readers see a record only once its commit is durable.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use tokio::sync::watch;

use super::recovery::{Opening, RecoveryMode};
use super::segment::{
    self, IndexEntry, SEGMENT_HEADER_BYTES, SegmentExtent, SparseIndex, scan_segment,
};
use super::{LogError, LogRecord, Offset, PartitionId, Witness};
use crate::support::storage::{Storage, StorageFile};
pub use crate::support::write_ahead::SpareMaking;

/// Tunables of one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionConfig {
    /// A segment is sealed and a new one started once it reaches this size.
    pub segment_bytes_max: u64,
    /// Bytes of segment between two sparse index entries.
    pub index_interval_bytes: u64,
    /// A group commit stops taking queued requests once it holds this many bytes.
    pub commit_bytes_max: usize,
    /// A commit is cut into frames of about this many body bytes (a larger record gets a frame
    /// of its own); a read of one record checks at most one frame.
    pub frame_bytes_target: usize,
    /// Append requests waiting for the writer; senders wait when it is full (back-pressure).
    pub queued_requests_max: usize,
    /// The writer starts a new write-ahead file once the current one holds this many bytes
    /// (see `write_ahead`); the old one is removed once the segments it covers are synced.
    pub write_ahead_file_bytes_max: u64,
    /// Where the next write-ahead file is made ahead of need (see `write_ahead::SpareFile`).
    pub spare_making: SpareMaking,
}

impl Default for PartitionConfig {
    fn default() -> Self {
        Self {
            segment_bytes_max: 128 * 1024 * 1024,
            index_interval_bytes: 4096,
            // Large enough to amortise one fdatasync (~0.5 ms) over thousands of records.
            commit_bytes_max: 4 * 1024 * 1024,
            frame_bytes_target: 64 * 1024,
            queued_requests_max: 4096,
            write_ahead_file_bytes_max: 64 * 1024 * 1024,
            spare_making: SpareMaking::Background,
        }
    }
}

/// One segment as readers see it.
#[derive(Debug, Clone)]
pub(super) struct SegmentView {
    pub base_offset: Offset,
    pub path: PathBuf,
    pub file: Arc<dyn StorageFile>,
    /// Format version of the segment's header: whether its commits carry seals.
    pub format_version: u32,
    pub index: SparseIndex,
    /// Bytes of durable commits (plus the header).
    pub end_position: u64,
    pub end_offset: Offset,
}

impl SegmentView {
    fn extent(&self) -> SegmentExtent {
        SegmentExtent {
            end_position: self.end_position,
            format_version: self.format_version,
        }
    }
}

/// A partition's segments: what its readers and the log's writer share.
#[derive(Debug)]
pub(super) struct PartitionSegments {
    pub segments: Vec<SegmentView>,
}

impl PartitionSegments {
    pub fn end_offset(&self) -> Offset {
        self.segments.last().map_or(0, |segment| segment.end_offset)
    }

    pub fn active(&mut self) -> &mut SegmentView {
        self.segments
            .last_mut()
            .expect("a partition always has a segment")
    }
}

/// Counts and sizes of one partition, for operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionStats {
    pub partition: PartitionId,
    pub end_offset: Offset,
    pub segments: usize,
    pub bytes: u64,
}

/// An open partition: its segments as readers see them, and its end offset as it moves.
#[derive(Debug)]
pub struct Partition {
    id: PartitionId,
    dir: PathBuf,
    state: Arc<RwLock<PartitionSegments>>,
    end_offset_tx: watch::Sender<Offset>,
}

impl Partition {
    /// Opens (creating if needed) the partition stored in `dir`, recovering its last segment
    /// without cutting below `witness` (see `recovery`).
    pub fn open(
        id: PartitionId,
        dir: &Path,
        config: PartitionConfig,
        storage: &dyn Storage,
        witness: Option<&Witness>,
    ) -> Result<Self, LogError> {
        let (segments, _) = Opening {
            storage,
            dir,
            partition: id,
            config: &config,
            witness,
            mode: RecoveryMode::Strict,
        }
        .open()?;
        let state = Arc::new(RwLock::new(PartitionSegments { segments }));
        let end_offset = read_lock(&state).end_offset();
        let (end_offset_tx, _) = watch::channel(end_offset);
        Ok(Self {
            id,
            dir: dir.to_owned(),
            state,
            end_offset_tx,
        })
    }

    pub fn id(&self) -> PartitionId {
        self.id
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What the writer shares with the readers: the segments, and the end offset's sender.
    pub(super) fn shared(&self) -> (Arc<RwLock<PartitionSegments>>, watch::Sender<Offset>) {
        (Arc::clone(&self.state), self.end_offset_tx.clone())
    }

    pub fn end_offset(&self) -> Offset {
        read_lock(&self.state).end_offset()
    }

    /// A receiver of the end offset, updated after every durable commit.
    pub fn watch_end_offset(&self) -> watch::Receiver<Offset> {
        self.end_offset_tx.subscribe()
    }

    /// Waits until the record at `offset` is durable and readable.
    pub async fn wait_for_offset(&self, offset: Offset) -> Result<(), LogError> {
        let mut end_offset = self.watch_end_offset();
        end_offset
            .wait_for(|&end| end > offset)
            .await
            .map(|_| ())
            .map_err(|_| LogError::Closed)
    }

    /// Up to `records_max` durable records from `from` on, possibly spanning segments.
    pub fn read(&self, from: Offset, records_max: usize) -> Result<Vec<LogRecord>, LogError> {
        let mut records = Vec::new();
        let mut next = from;
        while records.len() < records_max {
            let Some((segment, start)) = self.locate(next)? else {
                break;
            };
            let mut batch = segment::read_records(
                &*segment.file,
                &segment.path,
                self.id,
                start,
                segment.extent(),
                next,
                records_max - records.len(),
            )?;
            let Some(last) = batch.last() else { break };
            next = last.offset + 1;
            records.append(&mut batch);
        }
        debug_assert!(
            records
                .windows(2)
                .all(|pair| pair[0].offset + 1 == pair[1].offset)
        );
        debug_assert!(records.first().is_none_or(|first| first.offset == from));
        Ok(records)
    }

    /// The segment holding `offset` and where to start scanning in it; `None` at the end.
    fn locate(&self, offset: Offset) -> Result<Option<(SegmentView, IndexEntry)>, LogError> {
        let state = read_lock(&self.state);
        let end_offset = state.end_offset();
        if offset > end_offset {
            return Err(LogError::OffsetOutOfRange {
                partition: self.id,
                offset,
                end_offset,
            });
        }
        if offset == end_offset {
            return Ok(None);
        }
        let at = state
            .segments
            .partition_point(|segment| segment.base_offset <= offset)
            - 1;
        let segment = &state.segments[at];
        let start = segment.index.seek(segment.base_offset, offset);
        // Cloning the view copies the index; only the fields below are needed, so build a view
        // without it.
        let view = SegmentView {
            base_offset: segment.base_offset,
            path: segment.path.clone(),
            file: Arc::clone(&segment.file),
            format_version: segment.format_version,
            index: SparseIndex::new(0),
            end_position: segment.end_position,
            end_offset: segment.end_offset,
        };
        Ok(Some((view, start)))
    }

    pub fn stats(&self) -> PartitionStats {
        let state = read_lock(&self.state);
        PartitionStats {
            partition: self.id,
            end_offset: state.end_offset(),
            segments: state.segments.len(),
            bytes: state.segments.iter().map(|s| s.end_position).sum(),
        }
    }

    /// Reads every frame of every segment, checking checksums and offset continuity.
    pub fn verify(&self) -> Result<Offset, LogError> {
        let segments: Vec<SegmentView> = read_lock(&self.state).segments.clone();
        let mut expected = 0;
        for view in segments {
            let start = IndexEntry {
                offset: view.base_offset,
                position: SEGMENT_HEADER_BYTES,
            };
            let outcome = scan_segment(
                &*view.file,
                &view.path,
                start,
                SparseIndex::new(u64::MAX),
                view.format_version,
            )?;
            let damaged = outcome.end_position < view.end_position
                || outcome.commit_end_position != view.end_position;
            if view.base_offset != expected || damaged {
                let (position, reason) = match outcome.stopped_at {
                    Some((position, problem)) => (position, format!("{problem:?}")),
                    None => (0, format!("segment does not start at offset {expected}")),
                };
                return Err(LogError::Corruption {
                    path: view.path.clone(),
                    position,
                    reason,
                });
            }
            expected = view.end_offset;
        }
        Ok(expected)
    }
}

pub(super) fn read_lock(
    state: &RwLock<PartitionSegments>,
) -> RwLockReadGuard<'_, PartitionSegments> {
    // Poisoning only means another thread panicked mid-update of plain counters; a writer that
    // panicked has already failed its requests.
    state.read().unwrap_or_else(PoisonError::into_inner)
}

pub(super) fn write_lock(
    state: &RwLock<PartitionSegments>,
) -> RwLockWriteGuard<'_, PartitionSegments> {
    state.write().unwrap_or_else(PoisonError::into_inner)
}

/// Makes a directory's entries (created or removed files) durable.
pub fn sync_directory(storage: &dyn Storage, dir: &Path) -> Result<(), LogError> {
    storage.sync_dir(dir).map_err(|e| LogError::io(dir, e))
}
