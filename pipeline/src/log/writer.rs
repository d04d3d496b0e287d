//! The embedded log's one writer: every partition's appends, committed together in rounds.
//!
//! Appends of all partitions go through one bounded queue to one writer thread. A round takes
//! every request waiting (up to a byte bound), encodes each partition's share as one commit
//! (frames and seal), writes each commit to its partition's segment with one `pwrite`, writes
//! one entry holding all of them to the write-ahead file and syncs that file — one `fdatasync`
//! for the round, whatever the number of partitions (see `write_ahead`) — then publishes the
//! commits to readers and acknowledges every request. A thread and a sync per partition cost
//! each partition a wake-up and a disk flush per commit; here they are paid once per round.
//!
//! Once the write-ahead file reaches its bound the writer starts the next one and hands the old
//! one, with the segments written meanwhile, to a flusher thread, which syncs those segments and
//! then removes the file. Only one flush is in flight: the next rotation waits for it. The next
//! file is made ahead, zero-filled at its full size by a thread of its own
//! ([`write_ahead::SpareFile`]), so a round's sync writes the entry's pages and no inode; the
//! first file of a run grows as it is written, and is left for a spare as soon as one is made.
//!
//! A full disk is an operating condition: what the round wrote is cut off again, its appends get
//! a retryable error, and the next round simply tries again. Any other failed write, and any
//! failed sync, is fatal for the files (the "fsyncgate" lesson: after a failed `fsync` the kernel
//! may have dropped the dirty pages, so retrying the sync and reporting success would lie): the
//! log refuses appends and, before its next round, recovers itself from disk in the process —
//! cuts every segment back to its last acknowledged commit, writes the write-ahead files' commits
//! into the segments again and syncs them, and re-runs each partition's recovery — trying again
//! after a doubling pause while the disk keeps failing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use super::frame::{self, FRAME_BODY_BYTES_MAX};
use super::partition::{Partition, PartitionConfig, PartitionSegments, sync_directory, write_lock};
use super::recovery::{self, Opening, RecoveryMode};
use super::seal::{SEAL_BYTES, Seal};
use super::segment::{self, SealedIndex, index_file_name};
use super::{AppendAck, KeyedRecord, LogError, Offset, PartitionId, Witness};
use crate::support::clock::Clock;
use crate::support::storage::{self, OpenMode, Storage, StorageFile};
use crate::support::write_ahead::{self, EntryBuilder, PartPlace};

/// The most record bytes one partition's commit in a round takes: a commit's frames leave room
/// for their fixed fields under the frame body bound.
const PARTITION_ROUND_BYTES_MAX: usize = FRAME_BODY_BYTES_MAX - 64;

/// The first pause between attempts to recover a failed log, and the longest: short enough that
/// appends resume within a few seconds of the disk answering again, long enough not to spin on a
/// disk that keeps failing.
const RECOVERY_PAUSE_MIN: Duration = Duration::from_millis(100);
const RECOVERY_PAUSE_MAX: Duration = Duration::from_secs(2);

/// The log's spare write-ahead file is `log.spare` in its write-ahead directory.
const SPARE_NAME: &str = "log";

/// A spare is started once the current write-ahead file holds this fraction of its bound.
const SPARE_AFTER_FRACTION: u64 = 64;

struct AppendRequest {
    partition: PartitionId,
    records: Vec<KeyedRecord>,
    bytes: usize,
    reply: oneshot::Sender<Result<AppendAck, LogError>>,
}

impl std::fmt::Debug for AppendRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppendRequest")
            .field("partition", &self.partition)
            .field("records", &self.records.len())
            .field("bytes", &self.bytes)
            .finish()
    }
}

/// The handle on the writer thread. Dropping it stops the writer after the queued appends are
/// done, syncs the segments and removes the write-ahead file.
#[derive(Debug)]
pub struct LogWriter {
    requests: Option<mpsc::Sender<AppendRequest>>,
    thread: Option<JoinHandle<()>>,
}

/// What the writer needs to start.
pub(super) struct WriterSetup<'a> {
    pub log_dir: &'a Path,
    pub partitions: &'a [Partition],
    pub config: PartitionConfig,
    pub clock: Arc<dyn Clock>,
    pub storage: Arc<dyn Storage>,
    /// The sequence of the write-ahead file to start with.
    pub write_ahead_sequence: u64,
}

impl LogWriter {
    /// Creates the first write-ahead file and starts the writer thread.
    pub(super) fn start(setup: WriterSetup<'_>) -> Result<Self, LogError> {
        let write_ahead_dir = write_ahead::dir_of(setup.log_dir);
        let (path, file) = write_ahead::create_file(
            &*setup.storage,
            &write_ahead_dir,
            setup.write_ahead_sequence,
        )?;
        let slots = setup
            .partitions
            .iter()
            .map(|partition| {
                let (state, end_offset_tx) = partition.shared();
                PartitionSlot {
                    id: partition.id(),
                    dir: partition.dir().to_owned(),
                    state,
                    end_offset_tx,
                }
            })
            .collect();
        let spare = write_ahead::SpareFile::new(
            Arc::clone(&setup.storage),
            &write_ahead_dir,
            SPARE_NAME,
            setup.config.write_ahead_file_bytes_max,
            setup.config.spare_making,
        )?;
        let (requests, receiver) = mpsc::channel(setup.config.queued_requests_max);
        let writer = Writer {
            write_ahead_dir,
            log_dir: setup.log_dir.to_owned(),
            storage: setup.storage,
            config: setup.config,
            clock: setup.clock,
            partitions: slots,
            write_ahead: WriteAheadFile {
                sequence: setup.write_ahead_sequence,
                path,
                file,
                position: write_ahead::WRITE_AHEAD_HEADER_BYTES,
                written: BTreeMap::new(),
                preallocated: false,
            },
            flush_in_flight: None,
            spare,
            round: 0,
            entry: EntryBuilder::default(),
            failure: None,
            recovery_due: Instant::now(),
            recovery_backoff: RECOVERY_PAUSE_MIN,
        };
        let thread = std::thread::Builder::new()
            .name("tally-log-writer".into())
            .spawn(move || writer.run(receiver))
            .map_err(|e| LogError::io(setup.log_dir, e))?;
        Ok(Self {
            requests: Some(requests),
            thread: Some(thread),
        })
    }

    /// Appends records to a partition in order; resolves once they are durable.
    pub async fn append(
        &self,
        partition: PartitionId,
        records: Vec<KeyedRecord>,
    ) -> Result<AppendAck, LogError> {
        let (request, reply) = request(partition, records)?;
        let sender = self.requests.as_ref().ok_or(LogError::Closed)?;
        sender.send(request).await.map_err(|_| LogError::Closed)?;
        reply.await.map_err(|_| LogError::Closed)?
    }

    /// Like [`append`](Self::append), for callers outside an async runtime (it blocks).
    pub fn append_blocking(
        &self,
        partition: PartitionId,
        records: Vec<KeyedRecord>,
    ) -> Result<AppendAck, LogError> {
        let (request, reply) = request(partition, records)?;
        let sender = self.requests.as_ref().ok_or(LogError::Closed)?;
        sender
            .blocking_send(request)
            .map_err(|_| LogError::Closed)?;
        reply.blocking_recv().map_err(|_| LogError::Closed)?
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        drop(self.requests.take());
        if let Some(thread) = self.thread.take() {
            // A panicking writer has already failed its requests; nothing more to report here.
            let _ = thread.join();
        }
    }
}

type AppendReply = oneshot::Receiver<Result<AppendAck, LogError>>;

fn request(
    partition: PartitionId,
    records: Vec<KeyedRecord>,
) -> Result<(AppendRequest, AppendReply), LogError> {
    assert!(!records.is_empty(), "an append holds at least one record");
    let bytes: usize = records.iter().map(frame::record_encoded_bytes).sum();
    if bytes > PARTITION_ROUND_BYTES_MAX {
        return Err(LogError::AppendTooLarge {
            bytes: bytes as u64,
            bytes_max: PARTITION_ROUND_BYTES_MAX as u64,
        });
    }
    let (reply, receiver) = oneshot::channel();
    Ok((
        AppendRequest {
            partition,
            records,
            bytes,
            reply,
        },
        receiver,
    ))
}

/// A partition as the writer sees it.
struct PartitionSlot {
    id: PartitionId,
    dir: PathBuf,
    state: Arc<RwLock<PartitionSegments>>,
    end_offset_tx: watch::Sender<Offset>,
}

/// The write-ahead file rounds are appended to, and the segments written since it was started.
struct WriteAheadFile {
    sequence: u64,
    path: PathBuf,
    file: Arc<dyn StorageFile>,
    /// Where the next entry goes: the end of the last entry that synced.
    position: u64,
    /// Each segment a round wrote to while this file was current, by path.
    written: BTreeMap<PathBuf, Arc<dyn StorageFile>>,
    /// Made ahead at its full size (a spare), so a sync writes the entry's pages alone.
    preallocated: bool,
}

/// Why a round failed.
enum RoundFailure {
    /// The disk is full: nothing of the round remains, the log carries on.
    OutOfSpace(LogError),
    /// A write or sync failed otherwise: the log must be recovered from disk.
    Fatal(LogError),
}

impl RoundFailure {
    fn classify(error: LogError) -> Self {
        if is_out_of_space(&error) {
            RoundFailure::OutOfSpace(error)
        } else {
            RoundFailure::Fatal(error)
        }
    }
}

fn is_out_of_space(error: &LogError) -> bool {
    matches!(error, LogError::Io { source, .. } if storage::is_out_of_space(source))
}

/// One partition's commit in a round, once it is in its segment: where, and its frames.
struct WrittenCommit {
    slot: usize,
    file: Arc<dyn StorageFile>,
    path: PathBuf,
    /// The segment's end before the commit: where a failed round cuts it back to.
    position: u64,
    base_offset: Offset,
    frames: Vec<frame::FrameInfo>,
    /// How many of the round's requests (the next ones, in order) this commit holds.
    request_count: usize,
}

/// The thread that writes every partition.
struct Writer {
    write_ahead_dir: PathBuf,
    log_dir: PathBuf,
    storage: Arc<dyn Storage>,
    config: PartitionConfig,
    clock: Arc<dyn Clock>,
    partitions: Vec<PartitionSlot>,
    write_ahead: WriteAheadFile,
    /// The flusher of the last write-ahead file, while it runs.
    flush_in_flight: Option<JoinHandle<Result<(), LogError>>>,
    /// The next write-ahead file, made ahead at its full size.
    spare: write_ahead::SpareFile,
    round: u64,
    entry: EntryBuilder,
    /// Set once a write or sync failed, until the log is recovered from disk.
    failure: Option<String>,
    /// When a failed log may next try to recover, and the pause after that attempt.
    recovery_due: Instant,
    recovery_backoff: Duration,
}

impl Writer {
    fn run(mut self, mut requests: mpsc::Receiver<AppendRequest>) {
        let mut carried: Option<AppendRequest> = None;
        let mut partition_bytes = vec![0usize; self.partitions.len()];
        loop {
            let first = match carried.take() {
                Some(request) => request,
                None => match requests.blocking_recv() {
                    Some(request) => request,
                    None => break,
                },
            };
            partition_bytes.fill(0);
            let mut round_bytes = first.bytes;
            partition_bytes[first.partition as usize] = first.bytes;
            let mut round = vec![first];
            while round_bytes < self.config.commit_bytes_max {
                let Ok(next) = requests.try_recv() else { break };
                let bytes = &mut partition_bytes[next.partition as usize];
                if *bytes + next.bytes > PARTITION_ROUND_BYTES_MAX {
                    carried = Some(next);
                    break;
                }
                *bytes += next.bytes;
                round_bytes += next.bytes;
                round.push(next);
            }
            self.commit(round);
        }
        self.close();
    }

    /// Commits one round and answers its requests.
    fn commit(&mut self, mut round: Vec<AppendRequest>) {
        // Each partition's requests together, in the order they came.
        round.sort_by_key(|request| request.partition);
        // Before the round rather than after the last: nothing of the writer's runs on between
        // an acknowledgement and the next round.
        if self.failure.is_none()
            && self.rotation_due()
            && let Err(error) = self.rotate()
        {
            self.failed(RoundFailure::Fatal(error));
        }
        let result = match self.recover_if_failed() {
            Err(error) => Err(error),
            Ok(()) => self
                .write_round(&round)
                .map_err(|failure| self.failed(failure)),
        };
        match result {
            Ok(commits) => self.acknowledge(round, &commits),
            Err(error) => {
                for request in round {
                    let _ = request
                        .reply
                        .send(Err(reply_error(&error, request.partition)));
                }
            }
        }
    }

    /// Whether the next round should go to a new write-ahead file: this one is full, or it grows
    /// as it is written while a spare is made and the last flush is done. Past a sixty-fourth of
    /// its bound, the spare that follows it is started.
    fn rotation_due(&mut self) -> bool {
        let bound = self.config.write_ahead_file_bytes_max;
        let position = self.write_ahead.position;
        if position >= bound {
            return true;
        }
        if position >= bound / SPARE_AFTER_FRACTION {
            self.spare.start_making();
        }
        let flushed = self
            .flush_in_flight
            .as_ref()
            .is_none_or(JoinHandle::is_finished);
        !self.write_ahead.preallocated && flushed && self.spare.is_ready()
    }

    /// What a failed round's requests are told; a fatal failure also fails the log.
    fn failed(&mut self, failure: RoundFailure) -> LogError {
        match failure {
            RoundFailure::OutOfSpace(error) => {
                tracing::warn!(%error, "the log is out of disk space; appends are refused until there is room");
                LogError::Unavailable {
                    reason: format!("the log is out of disk space: {error}"),
                }
            }
            RoundFailure::Fatal(error) => {
                let reason = error.to_string();
                tracing::error!(%reason, "the log failed; it is recovered from disk before the next append");
                self.failure = Some(reason.clone());
                self.recovery_backoff = RECOVERY_PAUSE_MIN;
                self.recovery_due = Instant::now();
                LogError::Failed {
                    partition: 0,
                    reason,
                }
            }
        }
    }

    fn acknowledge(&self, round: Vec<AppendRequest>, commits: &[WrittenCommit]) {
        // The round is sorted by partition and each commit holds the next run of requests.
        let mut requests = round.into_iter();
        for commit in commits {
            let mut base_offset = commit.base_offset;
            for request in requests.by_ref().take(commit.request_count) {
                debug_assert_eq!(request.partition, self.partitions[commit.slot].id);
                let end_offset = base_offset + request.records.len() as u64;
                // The requester may have given up waiting; the records are durable regardless.
                let _ = request.reply.send(Ok(AppendAck {
                    partition: request.partition,
                    offsets: (base_offset..end_offset).collect(),
                }));
                base_offset = end_offset;
            }
        }
    }

    /// Writes each partition's commit to its segment and the round's entry to the write-ahead
    /// file, syncs that file, and publishes the commits to readers. Running out of space is
    /// survivable: what the round wrote is cut off again and nothing changes. A failed sync is
    /// not (see the module doc).
    fn write_round(&mut self, round: &[AppendRequest]) -> Result<Vec<WrittenCommit>, RoundFailure> {
        self.round += 1;
        self.entry.start(self.round);
        let append_time_ms = self.clock.now_ms();
        let mut commits: Vec<WrittenCommit> = Vec::new();
        let mut first = 0;
        while first < round.len() {
            let slot = round[first].partition as usize;
            let end = first
                + round[first..]
                    .iter()
                    .take_while(|request| request.partition as usize == slot)
                    .count();
            match self.write_commit(slot, first..end, round, append_time_ms) {
                Ok(commit) => commits.push(commit),
                Err(error) => {
                    self.cut_back(&commits)?;
                    return Err(RoundFailure::classify(error));
                }
            }
            first = end;
        }
        let entry = self.entry.finish();
        let wal = &mut self.write_ahead;
        if let Err(error) = wal.file.write_all_at(entry, wal.position) {
            let error = LogError::io(&wal.path, error);
            if !is_out_of_space(&error) {
                return Err(RoundFailure::Fatal(error));
            }
            wal.preallocated = false;
            wal.file
                .set_len(wal.position)
                .and_then(|()| wal.file.sync_data())
                .map_err(|e| RoundFailure::Fatal(LogError::io(&wal.path, e)))?;
            self.cut_back(&commits)?;
            return Err(RoundFailure::OutOfSpace(error));
        }
        wal.file
            .sync_data()
            .map_err(|e| RoundFailure::Fatal(LogError::io(&wal.path, e)))?;
        wal.position += entry.len() as u64;
        for commit in &commits {
            if !wal.written.contains_key(&commit.path) {
                wal.written
                    .insert(commit.path.clone(), Arc::clone(&commit.file));
            }
        }
        self.publish(&commits);
        Ok(commits)
    }

    /// Encodes the requests `range` of the round (all of one partition) as one commit in the
    /// round's entry and writes it to the partition's segment (rolling to a new segment first if
    /// the active one is full).
    fn write_commit(
        &mut self,
        slot: usize,
        range: std::ops::Range<usize>,
        round: &[AppendRequest],
        append_time_ms: i64,
    ) -> Result<WrittenCommit, LogError> {
        let segment_full = {
            let mut state = write_lock(&self.partitions[slot].state);
            state.active().end_position >= self.config.segment_bytes_max
        };
        if segment_full {
            self.roll(slot)?;
        }
        let (file, path, position, base_offset, segment_base) = {
            let mut state = write_lock(&self.partitions[slot].state);
            let active = state.active();
            (
                Arc::clone(&active.file),
                active.path.clone(),
                active.end_position,
                active.end_offset,
                active.base_offset,
            )
        };
        let place = PartPlace {
            partition: self.partitions[slot].id,
            file_tag: segment_base,
            position,
            base_offset,
            end_offset: base_offset,
        };
        let frame_bytes_target = self.config.frame_bytes_target;
        let records = round[range.clone()]
            .iter()
            .flat_map(|request| request.records.iter());
        let frames = self.entry.part(place, |buffer| {
            let frames = encode_commit(
                buffer,
                records,
                base_offset,
                append_time_ms,
                frame_bytes_target,
            );
            let end_offset = frames.last().expect("a commit has a frame").end_offset();
            (frames, end_offset)
        });
        let bytes = self.entry.last_part_bytes().expect("the part just added");
        if let Err(error) = file.write_all_at(bytes, position) {
            self.entry.truncate_parts(self.entry.part_count() - 1);
            let error = LogError::io(&path, error);
            // Whatever of it reached the file is cut off, and the cut synced (see `cut_back`);
            // a cut that fails makes the failure fatal.
            return match file.set_len(position).and_then(|()| file.sync_data()) {
                Ok(()) => Err(error),
                Err(cut) => Err(LogError::Failed {
                    partition: place.partition,
                    reason: format!("{error}; cutting it off failed too: {cut}"),
                }),
            };
        }
        Ok(WrittenCommit {
            slot,
            file,
            path,
            position,
            base_offset,
            frames,
            request_count: range.len(),
        })
    }

    /// Cuts the segments a failed round wrote back to where they ended before it. Each cut is
    /// synced before anything is written there again: otherwise a crash could let sectors of
    /// the cut commit show through a later commit torn at the same place, and recovery would
    /// take that for damage.
    fn cut_back(&self, commits: &[WrittenCommit]) -> Result<(), RoundFailure> {
        for commit in commits {
            commit
                .file
                .set_len(commit.position)
                .and_then(|()| commit.file.sync_data())
                .map_err(|e| RoundFailure::Fatal(LogError::io(&commit.path, e)))?;
        }
        Ok(())
    }

    /// Makes a durable round's commits readable.
    fn publish(&self, commits: &[WrittenCommit]) {
        for commit in commits {
            let slot = &self.partitions[commit.slot];
            let end_offset = commit
                .frames
                .last()
                .expect("a commit has a frame")
                .end_offset();
            {
                let mut state = write_lock(&slot.state);
                let active = state.active();
                debug_assert_eq!(active.end_position, commit.position);
                let mut frame_position = commit.position;
                for info in &commit.frames {
                    active.index.note_frame(info.base_offset, frame_position);
                    frame_position += info.frame_bytes as u64;
                }
                active.end_position = frame_position + SEAL_BYTES as u64;
                active.end_offset = end_offset;
            }
            slot.end_offset_tx.send_replace(end_offset);
        }
    }

    /// Seals a partition's active segment — synced, since the write-ahead file no longer
    /// covers it once that file is flushed, and its index written — and starts a new one.
    fn roll(&mut self, slot: usize) -> Result<(), LogError> {
        let partition = &self.partitions[slot];
        let (base_offset, sealed, file, path) = {
            let mut state = write_lock(&partition.state);
            let active = state.active();
            let sealed = SealedIndex {
                index: active.index.clone(),
                end_offset: active.end_offset,
                end_position: active.end_position,
            };
            (
                active.base_offset,
                sealed,
                Arc::clone(&active.file),
                active.path.clone(),
            )
        };
        file.sync_data().map_err(|e| LogError::io(&path, e))?;
        segment::write_index_file(
            &*self.storage,
            &partition.dir.join(index_file_name(base_offset)),
            base_offset,
            &sealed,
        )?;
        let next = recovery::create_segment(
            &*self.storage,
            &partition.dir,
            sealed.end_offset,
            &self.config,
        )?;
        write_lock(&partition.state).segments.push(next);
        Ok(())
    }

    /// Starts the next write-ahead file (the spare, if it is made) and hands the current one to
    /// a flusher, after the one before it is done.
    fn rotate(&mut self) -> Result<(), LogError> {
        self.wait_for_flush()?;
        let sequence = self.write_ahead.sequence + 1;
        let (path, file, preallocated) = match self.spare.take() {
            Some(spare) => {
                let (path, file) = self.spare.install(spare, &self.write_ahead_dir, sequence)?;
                (path, file, true)
            }
            None => {
                let (path, file) =
                    write_ahead::create_file(&*self.storage, &self.write_ahead_dir, sequence)?;
                (path, file, false)
            }
        };
        let done = std::mem::replace(
            &mut self.write_ahead,
            WriteAheadFile {
                sequence,
                path,
                file,
                position: write_ahead::WRITE_AHEAD_HEADER_BYTES,
                written: BTreeMap::new(),
                preallocated,
            },
        );
        let storage = Arc::clone(&self.storage);
        let dir = self.write_ahead_dir.clone();
        let flusher = std::thread::Builder::new()
            .name("tally-log-flush".into())
            .spawn(move || flush(&*storage, &dir, &done))
            .map_err(|e| LogError::io(&self.write_ahead_dir, e))?;
        self.flush_in_flight = Some(flusher);
        Ok(())
    }

    /// Waits for the flusher in flight, if any; its failure is the log's.
    fn wait_for_flush(&mut self) -> Result<(), LogError> {
        match self.flush_in_flight.take() {
            None => Ok(()),
            Some(flusher) => flusher.join().unwrap_or_else(|_| {
                Err(LogError::Unavailable {
                    reason: "the write-ahead flusher panicked".into(),
                })
            }),
        }
    }

    /// Before a failed log writes again, recovers it from disk (see the module doc); tried
    /// again after a doubling pause while it fails.
    fn recover_if_failed(&mut self) -> Result<(), LogError> {
        let Some(reason) = self.failure.clone() else {
            return Ok(());
        };
        let failed = LogError::Failed {
            partition: 0,
            reason,
        };
        if Instant::now() < self.recovery_due {
            return Err(failed);
        }
        match self.recover() {
            Ok(()) => {
                self.failure = None;
                tracing::warn!("the log recovered from disk after a failed write or sync");
                Ok(())
            }
            Err(error) => {
                tracing::error!(%error, "recovering the log from disk failed; trying again in {:?}", self.recovery_backoff);
                self.recovery_due = Instant::now() + self.recovery_backoff;
                self.recovery_backoff = (self.recovery_backoff * 2).min(RECOVERY_PAUSE_MAX);
                Err(failed)
            }
        }
    }

    fn recover(&mut self) -> Result<(), LogError> {
        // The flusher's outcome does not matter: its file is replayed below if it is still there.
        let _ = self.wait_for_flush();
        let durable: Vec<(PathBuf, u64, Offset)> = self
            .partitions
            .iter()
            .map(|slot| {
                let mut state = write_lock(&slot.state);
                let active = state.active();
                (active.path.clone(), active.end_position, active.end_offset)
            })
            .collect();
        for (path, position, _) in &durable {
            let file = self
                .storage
                .open(path, OpenMode::ReadWrite)
                .map_err(|e| LogError::io(path, e))?;
            file.set_len(*position)
                .and_then(|()| file.sync_data())
                .map_err(|e| LogError::io(path, e))?;
        }
        // The failed round's entry may be whole in the file though it was never acknowledged.
        let wal = &self.write_ahead;
        if self
            .storage
            .exists(&wal.path)
            .map_err(|e| LogError::io(&wal.path, e))?
        {
            let file = self
                .storage
                .open(&wal.path, OpenMode::ReadWrite)
                .map_err(|e| LogError::io(&wal.path, e))?;
            file.set_len(wal.position)
                .and_then(|()| file.sync_data())
                .map_err(|e| LogError::io(&wal.path, e))?;
        }
        let replayed = super::embedded::replay_write_ahead(&*self.storage, &self.log_dir)?;
        for (slot, (_, _, durable_end_offset)) in self.partitions.iter().zip(durable) {
            // Every acknowledged commit is in the segments and synced; each partition opens as
            // on start, and must end where its last acknowledged commit did.
            let witness = Witness {
                partition: slot.id,
                end_offset: durable_end_offset,
                source: "this process's last acknowledged commit".into(),
            };
            let (segments, _) = Opening {
                storage: &*self.storage,
                dir: &slot.dir,
                partition: slot.id,
                config: &self.config,
                witness: Some(&witness),
                mode: RecoveryMode::Strict,
            }
            .open()?;
            let end_offset = segments.last().map_or(0, |segment| segment.end_offset);
            if end_offset != durable_end_offset {
                return Err(LogError::RecordsLost {
                    partition: slot.id,
                    offset: end_offset,
                    reason: format!(
                        "recovering from disk found the partition ending at {end_offset}, not \
                         at its last acknowledged commit's end {durable_end_offset}"
                    ),
                });
            }
            write_lock(&slot.state).segments = segments;
        }
        let sequence = replayed.last_sequence.max(self.write_ahead.sequence) + 1;
        let (path, file) =
            write_ahead::create_file(&*self.storage, &self.write_ahead_dir, sequence)?;
        self.write_ahead = WriteAheadFile {
            sequence,
            path,
            file,
            position: write_ahead::WRITE_AHEAD_HEADER_BYTES,
            written: BTreeMap::new(),
            preallocated: false,
        };
        Ok(())
    }

    /// After the last round: the segments synced and the write-ahead files removed, so a log
    /// closed cleanly has nothing to replay. A failure here only leaves the files for the next
    /// open to replay.
    fn close(mut self) {
        self.spare.discard();
        let flushed = self.wait_for_flush();
        if self.failure.is_some() || flushed.is_err() {
            return;
        }
        if let Err(error) = flush(&*self.storage, &self.write_ahead_dir, &self.write_ahead) {
            tracing::warn!(%error, "closing the log: the write-ahead file is kept and replayed at the next open");
        }
    }
}

/// Syncs the segments a write-ahead file covers, then removes the file.
fn flush(storage: &dyn Storage, dir: &Path, done: &WriteAheadFile) -> Result<(), LogError> {
    for (path, file) in &done.written {
        file.sync_data().map_err(|e| LogError::io(path, e))?;
    }
    storage
        .remove_file(&done.path)
        .map_err(|e| LogError::io(&done.path, e))?;
    sync_directory(storage, dir)
}

/// Encodes records into `buffer` as frames of about `frame_bytes_target` body bytes, the last
/// one flagged as the end of the commit, followed by the commit's seal; returns the frames.
fn encode_commit<'a>(
    buffer: &mut Vec<u8>,
    records: impl Iterator<Item = &'a KeyedRecord>,
    base_offset: Offset,
    append_time_ms: i64,
    frame_bytes_target: usize,
) -> Vec<frame::FrameInfo> {
    let commit_start = buffer.len();
    let records: Vec<&KeyedRecord> = records.collect();
    let mut frames = Vec::new();
    let mut first = 0;
    let mut next_offset = base_offset;
    while first < records.len() {
        let mut last = first + 1;
        let mut bytes = frame::record_encoded_bytes(records[first]);
        while last < records.len()
            && bytes + frame::record_encoded_bytes(records[last]) <= frame_bytes_target
        {
            bytes += frame::record_encoded_bytes(records[last]);
            last += 1;
        }
        let commit_end = last == records.len();
        let info = frame::encode_frame(
            buffer,
            next_offset,
            append_time_ms,
            commit_end,
            records[first..last].iter().copied(),
        );
        next_offset = info.end_offset();
        frames.push(info);
        first = last;
    }
    Seal::of_commit(&buffer[commit_start..], base_offset, next_offset).encode(buffer);
    frames
}

/// The error each request of a failed round gets (the round produces only these kinds).
fn reply_error(error: &LogError, partition: PartitionId) -> LogError {
    match error {
        LogError::Unavailable { reason } => LogError::Unavailable {
            reason: reason.clone(),
        },
        LogError::Failed { reason, .. } => LogError::Failed {
            partition,
            reason: reason.clone(),
        },
        other => LogError::Unavailable {
            reason: other.to_string(),
        },
    }
}
