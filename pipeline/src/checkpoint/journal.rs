//! The checkpoint journal of one partition: every checkpoint it committed, in order.
//!
//! A checkpoint is one frame (the log's frame format: length, CRC32C, commit flag) holding the
//! partition's next offset, counters, watermark and digest together with everything that changed
//! since the previous checkpoint: new index entries, changed campaign totals and window buckets,
//! new conflicts. Appending that frame and syncing it is the atomic step: a checkpoint whose frame
//! is whole and checks out counts, one that is not does not. Loading replays the frames (later
//! values of a total or bucket replace earlier ones). A very large checkpoint (a restored
//! savepoint) sends its index entries ahead in `IndexChanges` frames, which count only once the
//! `Checkpoint` frame after them is whole.
//!
//! ```text
//! header (24 bytes) = magic "TALLYCKJ" | format version u32 = 1 | partition u32
//!                     | recorded_hint u64 (donations recorded as of a recent checkpoint: sizes
//!                       the index before a load; a hint only, never trusted for anything else)
//! frames            = frame base_offset = frame sequence number, one record whose value is an
//!                     encoded JournalEntry
//! ```

use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::CheckpointError;
use super::store::CheckpointMeta;
use crate::codec;
use crate::log::frame::{self, FRAME_HEADER_BYTES};
use crate::log::{KeyedRecord, PartitionId};
use crate::operators::campaign_totals::CampaignTotal;
use crate::operators::conflict_audit::Conflict;
use crate::operators::dedupe::IndexChange;
use crate::operators::event_time_windows::{BucketKey, WindowBucket};
use crate::storage::{self, FileReader, OpenMode, Storage, StorageFile};

const JOURNAL_MAGIC: [u8; 8] = *b"TALLYCKJ";
const JOURNAL_FORMAT_VERSION: u32 = 1;
pub const JOURNAL_HEADER_BYTES: u64 = 24;

/// What one checkpoint committed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointContent {
    pub index: Vec<IndexChange>,
    pub totals: Vec<(String, CampaignTotal)>,
    pub buckets: Vec<(BucketKey, WindowBucket)>,
    pub conflicts: Vec<Conflict>,
}

/// One frame of the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JournalEntry {
    /// Index entries of the checkpoint that follows; they count only once it is whole.
    IndexChanges(Vec<IndexChange>),
    Checkpoint {
        meta: CheckpointMeta,
        content: Box<CheckpointContent>,
    },
}

/// Receives the committed content of a journal as it is replayed.
pub trait Replay {
    fn index_change(&mut self, change: IndexChange);
    fn checkpoint(&mut self, meta: CheckpointMeta, content: CheckpointContent);
}

/// What replaying found beyond the last whole checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub position: u64,
    pub reason: String,
    /// The bad frame runs to the end of the file: a commit a crash cut short (or damage that
    /// looks just like one).
    pub torn: bool,
}

/// An open journal positioned after its last whole checkpoint.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    storage: Arc<dyn Storage>,
    file: Arc<dyn StorageFile>,
    end_position: u64,
    frames: u64,
    encode_buffer: Vec<u8>,
    /// Set by a failed append: bytes past `end_position` may be on disk.
    needs_cut: bool,
}

impl Journal {
    /// Opens (creating if needed) the journal and replays its whole checkpoints into `replay`.
    /// Anything after the last whole checkpoint — a torn frame, index entries whose checkpoint
    /// never came, damaged bytes — is cut off and reported as [`Damage`].
    pub fn open(
        storage: Arc<dyn Storage>,
        path: &Path,
        partition: PartitionId,
        replay: &mut dyn Replay,
    ) -> Result<(Self, Option<Damage>), CheckpointError> {
        let io = |e| CheckpointError::io(path, e);
        let file = storage.open(path, OpenMode::CreateOrOpen).map_err(io)?;
        let mut journal = Self::over(storage, path, file);
        let file_len = journal.file.len().map_err(io)?;
        if file_len == 0 {
            journal.reset(partition)?;
            return Ok((journal, None));
        }
        journal.check_header(partition)?;
        let damage = journal.replay(replay)?;
        if journal.end_position != file_len {
            // Not synced on its own: the next checkpoint's sync makes the cut durable with it,
            // and bytes that come back after a crash before then are cut again (a checkpoint
            // counts only once its frame is whole and the frames before it are).
            journal.file.set_len(journal.end_position).map_err(io)?;
        }
        Ok((journal, damage))
    }

    /// A journal over an open file, positioned just after the header.
    fn over(storage: Arc<dyn Storage>, path: &Path, file: Arc<dyn StorageFile>) -> Self {
        Self {
            path: path.to_owned(),
            storage,
            file,
            end_position: JOURNAL_HEADER_BYTES,
            frames: 0,
            encode_buffer: Vec::new(),
            needs_cut: false,
        }
    }

    /// Replays the whole checkpoints of a journal without changing the file, for reading a
    /// partition's checkpoint while its writer may be appending.
    pub fn read(
        storage: Arc<dyn Storage>,
        path: &Path,
        partition: PartitionId,
        replay: &mut dyn Replay,
    ) -> Result<Option<Damage>, CheckpointError> {
        let file = storage
            .open(path, OpenMode::Read)
            .map_err(|e| CheckpointError::io(path, e))?;
        let mut journal = Self::over(storage, path, file);
        journal.check_header(partition)?;
        journal.replay(replay)
    }

    /// Empties the journal (a partition starting from scratch).
    pub fn reset(&mut self, partition: PartitionId) -> Result<(), CheckpointError> {
        let mut header = [0u8; JOURNAL_HEADER_BYTES as usize];
        header[0..8].copy_from_slice(&JOURNAL_MAGIC);
        header[8..12].copy_from_slice(&JOURNAL_FORMAT_VERSION.to_le_bytes());
        header[12..16].copy_from_slice(&partition.to_le_bytes());
        let io = |e| CheckpointError::io(&self.path, e);
        self.file.set_len(0).map_err(io)?;
        self.file.write_all_at(&header, 0).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        self.storage
            .sync_dir(storage::parent_or_current(&self.path))
            .map_err(io)?;
        self.end_position = JOURNAL_HEADER_BYTES;
        self.frames = 0;
        Ok(())
    }

    fn check_header(&self, partition: PartitionId) -> Result<(), CheckpointError> {
        let mut header = [0u8; JOURNAL_HEADER_BYTES as usize];
        self.file
            .read_exact_at(&mut header, 0)
            .map_err(|e| self.corrupt(format!("unreadable header: {e}")))?;
        let version = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
        let owner = u32::from_le_bytes(header[12..16].try_into().expect("4 bytes"));
        if header[0..8] != JOURNAL_MAGIC || version != JOURNAL_FORMAT_VERSION || owner != partition
        {
            return Err(self.corrupt(format!(
                "header is not a version {JOURNAL_FORMAT_VERSION} checkpoint journal of partition {partition}"
            )));
        }
        Ok(())
    }

    /// Replays whole checkpoints; leaves `end_position` after the last one.
    fn replay(&mut self, replay: &mut dyn Replay) -> Result<Option<Damage>, CheckpointError> {
        let file_len = self
            .file
            .len()
            .map_err(|e| CheckpointError::io(&self.path, e))?;
        let mut reader = BufReader::with_capacity(1 << 20, FileReader::new(&*self.file, 0));
        reader
            .by_ref()
            .take(JOURNAL_HEADER_BYTES)
            .read_to_end(&mut Vec::new())
            .map_err(|e| CheckpointError::io(&self.path, e))?;
        let mut position = JOURNAL_HEADER_BYTES;
        let mut pending: Vec<IndexChange> = Vec::new();
        let mut frame_bytes = Vec::new();
        let mut frames = 0;
        let damage = loop {
            if position == file_len {
                break None;
            }
            let entry = match read_frame(&mut reader, &mut frame_bytes, frames) {
                Ok(entry) => entry,
                Err(reason) => {
                    let torn = position + frame_bytes.len() as u64 >= file_len;
                    break Some(Damage {
                        position,
                        reason,
                        torn,
                    });
                }
            };
            position += frame_bytes.len() as u64;
            frames += 1;
            if position == file_len && matches!(entry, JournalEntry::IndexChanges(_)) {
                break Some(Damage {
                    position,
                    reason: "index entries of a checkpoint that never completed".into(),
                    torn: true,
                });
            }
            match entry {
                JournalEntry::IndexChanges(changes) => pending.extend(changes),
                JournalEntry::Checkpoint { meta, content } => {
                    pending
                        .drain(..)
                        .for_each(|change| replay.index_change(change));
                    replay.checkpoint(meta, *content);
                    self.end_position = position;
                    self.frames = frames;
                }
            }
        };
        Ok(damage)
    }

    /// The next offset of the last whole checkpoint in a journal file, read without replaying
    /// it: the frame headers are walked to the end and only the last checkpoint frame is
    /// checked and decoded. `None` without a checkpoint (or without the file). What a
    /// checkpoint applied was durable in the log, so this is a witness of how far the log
    /// reached.
    pub fn last_next_offset(
        storage: &dyn Storage,
        path: &Path,
    ) -> Result<Option<u64>, CheckpointError> {
        let io = |e| CheckpointError::io(path, e);
        let file = match storage.open(path, OpenMode::Read) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        let file_len = file.len().map_err(io)?;
        let mut starts = Vec::new();
        let mut position = JOURNAL_HEADER_BYTES;
        let mut header = [0u8; FRAME_HEADER_BYTES];
        while position + FRAME_HEADER_BYTES as u64 <= file_len {
            file.read_exact_at(&mut header, position).map_err(io)?;
            let Ok(body_len) = frame::body_len_from_header(&header) else {
                break;
            };
            let frame_end = position + (FRAME_HEADER_BYTES + body_len) as u64;
            if frame_end > file_len {
                break;
            }
            starts.push((position, frame_end));
            position = frame_end;
        }
        let mut frame_bytes = Vec::new();
        for &(start, end) in starts.iter().rev() {
            frame_bytes.resize((end - start) as usize, 0);
            file.read_exact_at(&mut frame_bytes, start).map_err(io)?;
            let Ok(info) = frame::check_frame(&frame_bytes) else {
                continue;
            };
            let mut records = Vec::with_capacity(1);
            frame::decode_records(&frame_bytes, &info, 0, 0, 1, &mut records);
            if let Some(record) = records.first()
                && let Ok(JournalEntry::Checkpoint { meta, .. }) = codec::decode(&record.value)
            {
                return Ok(Some(meta.scalars.next_offset));
            }
        }
        Ok(None)
    }

    /// Notes how many donations are recorded, for sizing the index when the journal is next
    /// loaded; made durable by the next append's sync.
    pub fn set_recorded_hint(&mut self, recorded: u64) -> Result<(), CheckpointError> {
        self.file
            .write_all_at(&recorded.to_le_bytes(), 16)
            .map_err(|e| CheckpointError::io(&self.path, e))
    }

    /// The recorded-donations hint of a journal file; 0 if there is none. Capped by what the
    /// file could hold (an index entry takes more than 16 bytes of journal), so a damaged hint
    /// cannot make a load allocate wildly.
    pub fn recorded_hint(storage: &dyn Storage, path: &Path) -> u64 {
        let Ok(file) = storage.open(path, OpenMode::Read) else {
            return 0;
        };
        let file_len = file.len().unwrap_or(0);
        let mut bytes = [0u8; 8];
        file.read_exact_at(&mut bytes, 16)
            .map_or(0, |()| u64::from_le_bytes(bytes))
            .min(file_len / 16)
    }

    /// Appends one encoded [`JournalEntry`] and syncs it; returns the journal's new end position.
    ///
    /// A failed append (a full disk, a failed sync) leaves the journal as it was before it: the
    /// next append first reopens the file — a handle whose sync failed is not trusted again —
    /// and cuts it back to the end of the last synced checkpoint, so a later checkpoint never
    /// lands after bytes of a failed one.
    pub fn append(&mut self, encoded_entry: &[u8]) -> Result<u64, CheckpointError> {
        if self.needs_cut {
            self.cut_back()?;
        }
        let record = KeyedRecord {
            key: Vec::new(),
            value: encoded_entry.to_vec(),
        };
        self.encode_buffer.clear();
        let info = frame::encode_frame(&mut self.encode_buffer, self.frames, 0, true, [&record]);
        let io = |e| CheckpointError::io(&self.path, e);
        let written = self
            .file
            .write_all_at(&self.encode_buffer, self.end_position)
            .and_then(|()| self.file.sync_data());
        if let Err(error) = written {
            self.needs_cut = true;
            return Err(io(error));
        }
        self.end_position += info.frame_bytes as u64;
        self.frames += 1;
        Ok(self.end_position)
    }

    /// Reopens the journal and cuts it back to its last synced checkpoint. The cut is made
    /// durable by the sync of the append that follows; bytes that come back after a crash
    /// before then are a frame that is not whole, and are cut again on load.
    fn cut_back(&mut self) -> Result<(), CheckpointError> {
        let io = |e| CheckpointError::io(&self.path, e);
        let file = self
            .storage
            .open(&self.path, OpenMode::ReadWrite)
            .map_err(io)?;
        file.set_len(self.end_position).map_err(io)?;
        self.file = file;
        self.needs_cut = false;
        tracing::info!(journal = %self.path.display(), "checkpoint journal cut back to its last synced checkpoint after a failed append");
        Ok(())
    }

    fn corrupt(&self, reason: String) -> CheckpointError {
        CheckpointError::Corrupt {
            what: format!("checkpoint journal {}", self.path.display()),
            reason,
        }
    }
}

/// Reads the next frame into `frame_bytes` and decodes its entry; the error says why it is not a
/// whole, valid frame (then `frame_bytes` holds what could be read).
fn read_frame(
    reader: &mut impl Read,
    frame_bytes: &mut Vec<u8>,
    sequence: u64,
) -> Result<JournalEntry, String> {
    frame_bytes.clear();
    reader
        .by_ref()
        .take(FRAME_HEADER_BYTES as u64)
        .read_to_end(frame_bytes)
        .map_err(|e| e.to_string())?;
    let body_len =
        frame::body_len_from_header(frame_bytes).map_err(|problem| format!("{problem:?}"))?;
    reader
        .by_ref()
        .take(body_len as u64)
        .read_to_end(frame_bytes)
        .map_err(|e| e.to_string())?;
    let info = frame::check_frame(frame_bytes).map_err(|problem| format!("{problem:?}"))?;
    if info.base_offset != sequence || info.record_count != 1 {
        return Err(format!("frame out of sequence (expected {sequence})"));
    }
    let mut records = Vec::with_capacity(1);
    frame::decode_records(frame_bytes, &info, 0, 0, 1, &mut records);
    codec::decode(&records[0].value).map_err(|e| e.to_string())
}
