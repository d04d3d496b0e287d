//! One partition of the embedded log: its segments, its readers and its group-commit writer.
//!
//! Appends go through a bounded queue to one writer thread per partition. The writer takes
//! every request waiting in the queue (up to a byte bound), encodes them as one frame, writes it
//! with one `pwrite` and makes it durable with one `fdatasync`, then acknowledges every request
//! in the group. Readers see a record only once its frame is durable.
//!
//! A full disk is an operating condition: the partial write is cut off again, the appends get a
//! retryable error, and the next commit simply tries again. Any other failed write, and any
//! failed sync, is fatal for the file (the "fsyncgate" lesson: after a failed `fsync` the kernel
//! may have dropped the dirty pages, so retrying the sync and reporting success would lie): the
//! partition refuses appends and, before its next commit, recovers itself from disk in the
//! process — reopens the segment, cuts it back to the last commit that synced, and re-runs
//! recovery — trying again after a doubling pause while the disk keeps failing.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use super::frame::{self, FRAME_BODY_BYTES_MAX};
use super::recovery::{self, Opening, RecoveryMode};
use super::seal::{SEAL_BYTES, Seal};
use super::segment::{
    self, IndexEntry, SEGMENT_HEADER_BYTES, SealedIndex, SegmentExtent, SparseIndex,
    index_file_name, scan_segment,
};
use super::{AppendAck, KeyedRecord, LogError, LogRecord, Offset, PartitionId, Witness};
use crate::support::clock::Clock;
use crate::support::storage::{self, OpenMode, Storage, StorageFile};

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

/// A partition's segments and whether it failed: what its readers and its writer share.
#[derive(Debug)]
struct PartitionSegments {
    segments: Vec<SegmentView>,
    /// Set once a write or sync failed.
    failure: Option<String>,
}

impl PartitionSegments {
    fn end_offset(&self) -> Offset {
        self.segments.last().map_or(0, |segment| segment.end_offset)
    }

    fn active(&mut self) -> &mut SegmentView {
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

struct AppendRequest {
    records: Vec<KeyedRecord>,
    bytes: usize,
    reply: oneshot::Sender<Result<AppendAck, LogError>>,
}

/// An open partition. Dropping it stops its writer after the queued appends are done.
#[derive(Debug)]
pub struct Partition {
    id: PartitionId,
    state: Arc<RwLock<PartitionSegments>>,
    end_offset_tx: watch::Sender<Offset>,
    requests: Option<mpsc::Sender<AppendRequest>>,
    writer: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for AppendRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppendRequest")
            .field("records", &self.records.len())
            .field("bytes", &self.bytes)
            .finish()
    }
}

impl Partition {
    /// Opens (creating if needed) the partition stored in `dir`, recovering its last segment
    /// without cutting below `witness` (see `recovery`).
    pub fn open(
        id: PartitionId,
        dir: &Path,
        config: PartitionConfig,
        clock: Arc<dyn Clock>,
        storage: Arc<dyn Storage>,
        witness: Option<&Witness>,
    ) -> Result<Self, LogError> {
        let (segments, _) = Opening {
            storage: &*storage,
            dir,
            partition: id,
            config: &config,
            witness,
            mode: RecoveryMode::Strict,
        }
        .open()?;
        let state = Arc::new(RwLock::new(PartitionSegments {
            segments,
            failure: None,
        }));
        let end_offset = read_lock(&state).end_offset();
        let (end_offset_tx, _) = watch::channel(end_offset);
        let (requests, receiver) = mpsc::channel(config.queued_requests_max);
        let writer = Writer {
            partition: id,
            dir: dir.to_owned(),
            storage,
            config,
            clock,
            state: Arc::clone(&state),
            end_offset_tx: end_offset_tx.clone(),
            encode_buffer: Vec::new(),
            recovery_due: Instant::now(),
            recovery_backoff: RECOVERY_PAUSE_MIN,
        };
        let handle = std::thread::Builder::new()
            .name(format!("tally-log-p{id}"))
            .spawn(move || writer.run(receiver))
            .map_err(|e| LogError::io(dir, e))?;
        Ok(Self {
            id,
            state,
            end_offset_tx,
            requests: Some(requests),
            writer: Some(handle),
        })
    }

    pub fn id(&self) -> PartitionId {
        self.id
    }

    /// Appends records in order; resolves once they are durable.
    pub async fn append(&self, records: Vec<KeyedRecord>) -> Result<AppendAck, LogError> {
        let (request, reply) = self.request(records)?;
        let sender = self.requests.as_ref().ok_or(LogError::Closed)?;
        sender.send(request).await.map_err(|_| LogError::Closed)?;
        reply.await.map_err(|_| LogError::Closed)?
    }

    /// Like [`append`](Self::append), for callers outside an async runtime (it blocks).
    pub fn append_blocking(&self, records: Vec<KeyedRecord>) -> Result<AppendAck, LogError> {
        let (request, reply) = self.request(records)?;
        let sender = self.requests.as_ref().ok_or(LogError::Closed)?;
        sender
            .blocking_send(request)
            .map_err(|_| LogError::Closed)?;
        reply.blocking_recv().map_err(|_| LogError::Closed)?
    }

    #[allow(clippy::type_complexity)]
    fn request(
        &self,
        records: Vec<KeyedRecord>,
    ) -> Result<
        (
            AppendRequest,
            oneshot::Receiver<Result<AppendAck, LogError>>,
        ),
        LogError,
    > {
        assert!(!records.is_empty(), "an append holds at least one record");
        let bytes: usize = records.iter().map(frame::record_encoded_bytes).sum();
        // The frame's fixed fields are few; leave them room under the body bound.
        let bytes_max = FRAME_BODY_BYTES_MAX - 64;
        if bytes > bytes_max {
            return Err(LogError::AppendTooLarge {
                bytes: bytes as u64,
                bytes_max: bytes_max as u64,
            });
        }
        let (reply, receiver) = oneshot::channel();
        Ok((
            AppendRequest {
                records,
                bytes,
                reply,
            },
            receiver,
        ))
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

impl Drop for Partition {
    fn drop(&mut self) {
        drop(self.requests.take());
        if let Some(writer) = self.writer.take() {
            // A panicking writer has already failed its requests; nothing more to report here.
            let _ = writer.join();
        }
    }
}

/// The single thread that writes a partition.
struct Writer {
    partition: PartitionId,
    dir: PathBuf,
    storage: Arc<dyn Storage>,
    config: PartitionConfig,
    clock: Arc<dyn Clock>,
    state: Arc<RwLock<PartitionSegments>>,
    end_offset_tx: watch::Sender<Offset>,
    encode_buffer: Vec<u8>,
    /// When a failed partition may next try to recover, and the pause after that attempt.
    recovery_due: Instant,
    recovery_backoff: Duration,
}

/// The first pause between attempts to recover a failed partition from disk, and the longest:
/// short enough that appends resume within a few seconds of the disk answering again, long
/// enough not to spin on a disk that keeps failing.
const RECOVERY_PAUSE_MIN: Duration = Duration::from_millis(100);
const RECOVERY_PAUSE_MAX: Duration = Duration::from_secs(2);

/// Why a commit failed.
enum CommitFailure {
    /// The disk is full: nothing of the commit remains, the partition carries on.
    OutOfSpace(LogError),
    /// A write or sync failed otherwise: the partition must be recovered from disk.
    Fatal(LogError),
}

impl CommitFailure {
    fn classify(error: LogError) -> Self {
        if is_out_of_space(&error) {
            CommitFailure::OutOfSpace(error)
        } else {
            CommitFailure::Fatal(error)
        }
    }
}

fn is_out_of_space(error: &LogError) -> bool {
    matches!(error, LogError::Io { source, .. } if storage::is_out_of_space(source))
}

/// The error each request of a failed commit gets (the commit produces only these kinds).
fn reply_error(error: &LogError) -> LogError {
    match error {
        LogError::Unavailable { reason } => LogError::Unavailable {
            reason: reason.clone(),
        },
        LogError::Failed { partition, reason } => LogError::Failed {
            partition: *partition,
            reason: reason.clone(),
        },
        other => LogError::Unavailable {
            reason: other.to_string(),
        },
    }
}

impl Writer {
    fn run(mut self, mut requests: mpsc::Receiver<AppendRequest>) {
        let mut carried: Option<AppendRequest> = None;
        loop {
            let first = match carried.take() {
                Some(request) => request,
                None => match requests.blocking_recv() {
                    Some(request) => request,
                    None => return,
                },
            };
            let mut group_bytes = first.bytes;
            let mut group = vec![first];
            while group_bytes < self.config.commit_bytes_max {
                let Ok(next) = requests.try_recv() else { break };
                if group_bytes + next.bytes > FRAME_BODY_BYTES_MAX - 64 {
                    carried = Some(next);
                    break;
                }
                group_bytes += next.bytes;
                group.push(next);
            }
            self.commit(group);
        }
    }

    fn commit(&mut self, group: Vec<AppendRequest>) {
        let result = match self.recover_if_failed() {
            Err(error) => Err(error),
            Ok(()) => self.write_group(&group).map_err(|failure| match failure {
                CommitFailure::OutOfSpace(error) => {
                    tracing::warn!(partition = self.partition, %error, "log partition is out of disk space; appends are refused until there is room");
                    LogError::Unavailable {
                        reason: format!("partition {} is out of disk space: {error}", self.partition),
                    }
                }
                CommitFailure::Fatal(error) => {
                    let reason = error.to_string();
                    tracing::error!(partition = self.partition, %reason, "log partition failed; it is recovered from disk before the next append");
                    write_lock(&self.state).failure = Some(reason.clone());
                    self.recovery_backoff = RECOVERY_PAUSE_MIN;
                    self.recovery_due = Instant::now();
                    LogError::Failed {
                        partition: self.partition,
                        reason,
                    }
                }
            }),
        };
        let mut base_offset = match result {
            Ok(base_offset) => base_offset,
            Err(error) => {
                for request in group {
                    let _ = request.reply.send(Err(reply_error(&error)));
                }
                return;
            }
        };
        for request in group {
            let end_offset = base_offset + request.records.len() as u64;
            // The requester may have given up waiting; the records are durable regardless.
            let _ = request.reply.send(Ok(AppendAck {
                partition: self.partition,
                offsets: (base_offset..end_offset).collect(),
            }));
            base_offset = end_offset;
        }
    }

    /// After a failed write or sync, recovers the partition from disk before anything else is
    /// written: the active segment is reopened, cut back to the end of its last commit that
    /// synced (what followed may be gone from the disk even if the page cache still shows it),
    /// synced, and the partition's segments opened again as on start. Tried again after a
    /// doubling pause while it fails.
    fn recover_if_failed(&mut self) -> Result<(), LogError> {
        let Some(reason) = read_lock(&self.state).failure.clone() else {
            return Ok(());
        };
        let failed = LogError::Failed {
            partition: self.partition,
            reason,
        };
        if Instant::now() < self.recovery_due {
            return Err(failed);
        }
        match self.recover() {
            Ok(end_offset) => {
                write_lock(&self.state).failure = None;
                tracing::warn!(
                    partition = self.partition,
                    end_offset,
                    "log partition recovered from disk after a failed write or sync"
                );
                Ok(())
            }
            Err(error) => {
                tracing::error!(partition = self.partition, %error, "recovering the log partition from disk failed; trying again in {:?}", self.recovery_backoff);
                self.recovery_due = Instant::now() + self.recovery_backoff;
                self.recovery_backoff = (self.recovery_backoff * 2).min(RECOVERY_PAUSE_MAX);
                Err(failed)
            }
        }
    }

    fn recover(&mut self) -> Result<Offset, LogError> {
        let (path, durable_position, durable_end_offset) = {
            let mut state = write_lock(&self.state);
            let active = state.active();
            (active.path.clone(), active.end_position, active.end_offset)
        };
        let file = self
            .storage
            .open(&path, OpenMode::ReadWrite)
            .map_err(|e| LogError::io(&path, e))?;
        file.set_len(durable_position)
            .and_then(|()| file.sync_data())
            .map_err(|e| LogError::io(&path, e))?;
        drop(file);
        let witness = Witness {
            partition: self.partition,
            end_offset: durable_end_offset,
            source: "this process's last synced commit".into(),
        };
        let (segments, _) = Opening {
            storage: &*self.storage,
            dir: &self.dir,
            partition: self.partition,
            config: &self.config,
            witness: Some(&witness),
            mode: RecoveryMode::Strict,
        }
        .open()?;
        let end_offset = segments.last().map_or(0, |segment| segment.end_offset);
        if end_offset != durable_end_offset {
            return Err(LogError::RecordsLost {
                partition: self.partition,
                offset: end_offset,
                reason: format!(
                    "recovering from disk found the partition ending at {end_offset}, not at its \
                     last synced commit's end {durable_end_offset}"
                ),
            });
        }
        write_lock(&self.state).segments = segments;
        Ok(end_offset)
    }

    /// Writes the group as one commit, syncs it, publishes it to readers; returns its base
    /// offset. Running out of space while writing is survivable: the partial write is cut off
    /// again (and the cut synced) and nothing changes. A failed sync is not (see the module doc).
    fn write_group(&mut self, group: &[AppendRequest]) -> Result<Offset, CommitFailure> {
        let segment_full = {
            let mut state = write_lock(&self.state);
            state.active().end_position >= self.config.segment_bytes_max
        };
        if segment_full {
            self.roll().map_err(CommitFailure::classify)?;
        }
        let (file, path, position, base_offset) = {
            let mut state = write_lock(&self.state);
            let active = state.active();
            (
                Arc::clone(&active.file),
                active.path.clone(),
                active.end_position,
                active.end_offset,
            )
        };
        let frames = self.encode_commit(group, base_offset);
        if let Err(error) = file.write_all_at(&self.encode_buffer, position) {
            let error = LogError::io(&path, error);
            if !is_out_of_space(&error) {
                return Err(CommitFailure::Fatal(error));
            }
            file.set_len(position)
                .and_then(|()| file.sync_data())
                .map_err(|e| CommitFailure::Fatal(LogError::io(&path, e)))?;
            return Err(CommitFailure::OutOfSpace(error));
        }
        file.sync_data()
            .map_err(|e| CommitFailure::Fatal(LogError::io(&path, e)))?;
        let end_offset = frames.last().expect("a commit has a frame").end_offset();
        {
            let mut state = write_lock(&self.state);
            let active = state.active();
            let mut frame_position = position;
            for info in &frames {
                active.index.note_frame(info.base_offset, frame_position);
                frame_position += info.frame_bytes as u64;
            }
            active.end_position = frame_position + SEAL_BYTES as u64;
            debug_assert_eq!(
                active.end_position,
                position + self.encode_buffer.len() as u64
            );
            active.end_offset = end_offset;
        }
        self.end_offset_tx.send_replace(end_offset);
        Ok(base_offset)
    }

    /// Encodes the group's records into `encode_buffer` as frames of about
    /// `frame_bytes_target` body bytes, the last one flagged as the end of the commit, followed
    /// by the commit's seal.
    fn encode_commit(
        &mut self,
        group: &[AppendRequest],
        base_offset: Offset,
    ) -> Vec<frame::FrameInfo> {
        self.encode_buffer.clear();
        let append_time_ms = self.clock.now_ms();
        let records: Vec<&KeyedRecord> = group
            .iter()
            .flat_map(|request| request.records.iter())
            .collect();
        let mut frames = Vec::new();
        let mut first = 0;
        let mut next_offset = base_offset;
        while first < records.len() {
            let mut last = first + 1;
            let mut bytes = frame::record_encoded_bytes(records[first]);
            while last < records.len()
                && bytes + frame::record_encoded_bytes(records[last])
                    <= self.config.frame_bytes_target
            {
                bytes += frame::record_encoded_bytes(records[last]);
                last += 1;
            }
            let commit_end = last == records.len();
            let info = frame::encode_frame(
                &mut self.encode_buffer,
                next_offset,
                append_time_ms,
                commit_end,
                records[first..last].iter().copied(),
            );
            next_offset = info.end_offset();
            frames.push(info);
            first = last;
        }
        Seal::of_commit(&self.encode_buffer, base_offset, next_offset)
            .encode(&mut self.encode_buffer);
        frames
    }

    /// Seals the active segment (writes its index) and starts a new one.
    fn roll(&mut self) -> Result<(), LogError> {
        let sealed = {
            let mut state = write_lock(&self.state);
            let active = state.active();
            let sealed = SealedIndex {
                index: active.index.clone(),
                end_offset: active.end_offset,
                end_position: active.end_position,
            };
            (active.base_offset, sealed)
        };
        let (base_offset, sealed) = sealed;
        segment::write_index_file(
            &*self.storage,
            &self.dir.join(index_file_name(base_offset)),
            base_offset,
            &sealed,
        )?;
        let next =
            recovery::create_segment(&*self.storage, &self.dir, sealed.end_offset, &self.config)?;
        write_lock(&self.state).segments.push(next);
        Ok(())
    }
}

fn read_lock(state: &RwLock<PartitionSegments>) -> RwLockReadGuard<'_, PartitionSegments> {
    // Poisoning only means another thread panicked mid-update of plain counters; the failure
    // flag still stops appends if the writer was the one that panicked.
    state.read().unwrap_or_else(PoisonError::into_inner)
}

fn write_lock(state: &RwLock<PartitionSegments>) -> RwLockWriteGuard<'_, PartitionSegments> {
    state.write().unwrap_or_else(PoisonError::into_inner)
}

/// Makes a directory's entries (created or removed files) durable.
pub fn sync_directory(storage: &dyn Storage, dir: &Path) -> Result<(), LogError> {
    storage.sync_dir(dir).map_err(|e| LogError::io(dir, e))
}
