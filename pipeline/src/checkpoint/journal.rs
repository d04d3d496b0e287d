//! The checkpoint journal of one partition: a snapshot of its state, then every checkpoint
//! committed since, in order.
//!
//! A checkpoint is one frame (the log's frame format: length, CRC32C, commit flag) holding the
//! partition's next offset, counters, watermark and digest together with what changed since the
//! previous checkpoint: new index entries, changed campaign totals, each changed window bucket's
//! *delta* (the donations added since), the buckets rolled up, new conflicts. Appending that
//! frame and syncing it is the atomic step: a checkpoint whose frame is whole and checks out
//! counts, one that is not does not. A checkpoint's bytes follow what was applied since the one
//! before, never the size of what it touched.
//!
//! # Generations
//! The deltas pile up, so a journal is rewritten from time to time (see `compaction`): a new
//! *generation* opens with a snapshot of the whole state at a committed checkpoint — the index
//! packed, the buckets whole, totals and conflicts — and goes on with the checkpoints committed
//! since. It is written beside the journal, synced, and renamed over it (then the directory is
//! synced): the old generation is gone in the same atomic step that makes the new one the
//! journal, so a crash leaves one or the other, never neither.
//!
//! ```text
//! header, format 2 (32 bytes) = magic "TALLYCKJ" | format version u32 = 2 | partition u32
//!                     | recorded_hint u64 | generation u64
//! header, format 1 (24 bytes) = the same without the generation
//! frames            = frame base_offset = frame sequence number, one record whose value is an
//!                     encoded JournalEntry
//! ```
//! The `recorded_hint` (donations recorded as of a recent checkpoint) sizes the index before a
//! load; a hint only, never trusted for anything else.
//!
//! # Entries
//! [`JournalEntry`] is an enum whose variants are only ever added, never changed, so every
//! journal ever written stays readable. In format 2 the frames before the first committed one
//! are the snapshot's parts, written without the commit flag; they count once the `Snapshot`
//! frame after them is whole (a generation is complete before it gets its name, so only damage
//! can stop a load short of it, and then nothing of that generation counts). Format 1 journals
//! (absolute values in every checkpoint, index entries of a restored savepoint ahead of their
//! checkpoint) are read as they were written, and rewritten as format 2 by their first
//! compaction.

use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::CheckpointError;
use super::packed::{Malformed, PackedBuckets, pack_recorded, unpack_recorded};
use super::store::CheckpointMeta;
use crate::log::frame::{self, FRAME_HEADER_BYTES};
use crate::log::{KeyedRecord, Offset, PartitionId};
use crate::operators::campaign_totals::CampaignTotal;
use crate::operators::conflict_audit::Conflict;
use crate::operators::dedupe::{IndexChange, ShardImage, ShardImageRef};
use crate::operators::event_time_windows::{BucketKey, RolledUp, WindowBucket};
use crate::operators::retractions::RetractionChanges;
use crate::support::codec;
use crate::support::storage::{self, FileReader, OpenMode, Storage, StorageFile};

const JOURNAL_MAGIC: [u8; 8] = *b"TALLYCKJ";
/// The format this build writes.
pub const JOURNAL_FORMAT_VERSION: u32 = 2;
const FORMAT_1: u32 = 1;
const HEADER_BYTES_V1: u64 = 24;
pub const JOURNAL_HEADER_BYTES: u64 = 32;
const RECORDED_HINT_AT: u64 = 16;
/// Where a format 2 header keeps the generation.
pub const JOURNAL_GENERATION_AT: u64 = 24;

/// What a format 1 checkpoint committed: absolute values of what changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointContent {
    pub index: Vec<IndexChange>,
    pub totals: Vec<(String, CampaignTotal)>,
    pub buckets: Vec<(BucketKey, WindowBucket)>,
    pub conflicts: Vec<Conflict>,
}

/// What a format 2 checkpoint committed: what changed since the previous one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaContent {
    /// Donations recorded, packed (see `packed`).
    #[serde(with = "serde_bytes")]
    pub recorded: Vec<u8>,
    /// The other index changes: collisions, resend counts.
    pub index: Vec<IndexChange>,
    /// Changed campaign totals, absolute (a few per checkpoint).
    pub totals: Vec<(String, CampaignTotal)>,
    /// Per changed bucket, the donations added since the previous checkpoint.
    pub bucket_deltas: Vec<(BucketKey, WindowBucket)>,
    /// Buckets rolled up since the previous checkpoint.
    pub dropped: Vec<BucketKey>,
    pub rolled_up: RolledUp,
    pub conflicts: Vec<Conflict>,
}

/// The committing frame of a snapshot: what is not in its parts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotContent {
    pub rolled_up: RolledUp,
    pub totals: Vec<(String, CampaignTotal)>,
    pub conflicts: Vec<Conflict>,
}

/// One frame of the journal. Variants are only ever appended: their index is their encoding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JournalEntry {
    /// Index entries that count with the checkpoint or snapshot after them.
    IndexChanges(Vec<IndexChange>),
    /// A format 1 checkpoint.
    Checkpoint {
        meta: CheckpointMeta,
        content: Box<CheckpointContent>,
    },
    /// Part of a snapshot: recorded donations, packed (see `packed`).
    SnapshotRecorded(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Part of a snapshot: window buckets of one campaign and granularity, whole, packed.
    SnapshotBuckets(PackedBuckets),
    /// Commits a snapshot: the state as of `meta`, with the parts before it.
    Snapshot {
        meta: CheckpointMeta,
        content: Box<SnapshotContent>,
    },
    /// A format 2 checkpoint.
    Delta {
        meta: CheckpointMeta,
        content: Box<DeltaContent>,
    },
    /// Part of a snapshot: one shard of the recorded donations' table, slot by slot, for a
    /// load to take as it lies (instead of [`JournalEntry::SnapshotRecorded`]).
    SnapshotShard(ShardImage),
    /// Part of a snapshot: the refunds and chargebacks ledger, whole (absent without any).
    SnapshotRetractions(Box<RetractionChanges>),
    /// A format 2 checkpoint that also changed the refunds and chargebacks ledger (one that
    /// did not is a [`JournalEntry::Delta`], as before refunds existed).
    DeltaWithRetractions {
        meta: CheckpointMeta,
        content: Box<DeltaContent>,
        retractions: Box<RetractionChanges>,
    },
}

impl JournalEntry {
    /// The checkpoint a committing entry makes; `None` for a part.
    pub fn meta(&self) -> Option<&CheckpointMeta> {
        match self {
            JournalEntry::Checkpoint { meta, .. }
            | JournalEntry::Snapshot { meta, .. }
            | JournalEntry::Delta { meta, .. }
            | JournalEntry::DeltaWithRetractions { meta, .. } => Some(meta),
            JournalEntry::IndexChanges(_)
            | JournalEntry::SnapshotRecorded(_)
            | JournalEntry::SnapshotShard(_)
            | JournalEntry::SnapshotBuckets(_)
            | JournalEntry::SnapshotRetractions(_) => None,
        }
    }
}

/// What a committing frame brings, beside its meta.
#[derive(Debug)]
pub enum Committed {
    Absolute(CheckpointContent),
    Snapshot(SnapshotContent),
    Delta(DeltaContent),
}

/// Receives the committed content of a journal as it is replayed.
pub trait Replay {
    fn index_change(&mut self, change: IndexChange);
    fn recorded(&mut self, fingerprint: u64, offset: Offset);
    /// A shard of recorded donations, whole; its entries are valid
    /// ([`ShardImageRef::entries`]). By default, each entry as [`Replay::recorded`].
    fn recorded_shard(&mut self, image: ShardImageRef<'_>) {
        for (fingerprint, offset) in image.entries().unwrap_or_default() {
            self.recorded(fingerprint, offset);
        }
    }
    fn buckets(&mut self, buckets: Vec<(BucketKey, WindowBucket)>);
    /// A snapshot's buckets of one campaign and granularity; by default unpacked whole, as
    /// [`Replay::buckets`].
    fn packed_buckets(&mut self, packed: &PackedBuckets) -> Result<(), Malformed> {
        self.buckets(packed.unpack()?);
        Ok(())
    }
    /// Refunds and chargebacks a snapshot holds, or a checkpoint changed; delivered before
    /// the committing [`Replay::committed`] of their frame (or snapshot).
    fn retractions(&mut self, _changes: RetractionChanges) {}
    fn committed(&mut self, meta: CheckpointMeta, content: Committed);
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
    format_version: u32,
    generation: u64,
    /// Where the first checkpoint (the snapshot, in a compacted generation) ends: what is
    /// after it are deltas.
    snapshot_end: u64,
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

    /// A journal over an open file, positioned just after a format 2 header.
    fn over(storage: Arc<dyn Storage>, path: &Path, file: Arc<dyn StorageFile>) -> Self {
        Self {
            path: path.to_owned(),
            storage,
            file,
            format_version: JOURNAL_FORMAT_VERSION,
            generation: 0,
            snapshot_end: JOURNAL_HEADER_BYTES,
            end_position: JOURNAL_HEADER_BYTES,
            frames: 0,
            encode_buffer: Vec::new(),
            needs_cut: false,
        }
    }

    /// A journal over a generation just written by a [`SnapshotWriter`].
    pub(crate) fn adopt(
        storage: Arc<dyn Storage>,
        path: &Path,
        written: WrittenGeneration,
    ) -> Self {
        Self {
            generation: written.generation,
            snapshot_end: written.snapshot_end,
            end_position: written.end_position,
            frames: written.frames,
            ..Self::over(storage, path, written.file)
        }
    }

    /// Replays the whole checkpoints of a journal without changing the file, for reading a
    /// partition's checkpoint while its writer may be appending. With `until`, only the
    /// frames before that position are read.
    pub fn read(
        storage: Arc<dyn Storage>,
        path: &Path,
        partition: PartitionId,
        replay: &mut dyn Replay,
    ) -> Result<Option<Damage>, CheckpointError> {
        let file = storage
            .open(path, OpenMode::Read)
            .map_err(|e| CheckpointError::io(path, e))?;
        Self::read_file(storage, path, file, partition, None, replay)
    }

    /// [`read`](Self::read) over an open file, up to `until` (the end when `None`).
    pub(crate) fn read_file(
        storage: Arc<dyn Storage>,
        path: &Path,
        file: Arc<dyn StorageFile>,
        partition: PartitionId,
        until: Option<u64>,
        replay: &mut dyn Replay,
    ) -> Result<Option<Damage>, CheckpointError> {
        // An empty file is a journal whose creation a crash cut short before its header: no
        // checkpoint, as opening it would find (and then reset it).
        if file.len().map_err(|e| CheckpointError::io(path, e))? == 0 {
            return Ok(None);
        }
        let mut journal = Self::over(storage, path, file);
        journal.check_header(partition)?;
        journal.replay_until(until, replay)
    }

    /// Empties the journal (a partition starting from scratch): a format 2 header, no frames.
    pub fn reset(&mut self, partition: PartitionId) -> Result<(), CheckpointError> {
        self.reset_to(partition, self.generation + 1)
    }

    /// [`reset`](Self::reset), starting generation `generation`.
    pub fn reset_to(
        &mut self,
        partition: PartitionId,
        generation: u64,
    ) -> Result<(), CheckpointError> {
        let header = header_bytes(partition, 0, generation);
        let io = |e| CheckpointError::io(&self.path, e);
        self.file.set_len(0).map_err(io)?;
        self.file.write_all_at(&header, 0).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        self.storage
            .sync_dir(storage::parent_or_current(&self.path))
            .map_err(io)?;
        self.format_version = JOURNAL_FORMAT_VERSION;
        self.generation = generation;
        self.snapshot_end = JOURNAL_HEADER_BYTES;
        self.end_position = JOURNAL_HEADER_BYTES;
        self.frames = 0;
        self.needs_cut = false;
        Ok(())
    }

    fn check_header(&mut self, partition: PartitionId) -> Result<(), CheckpointError> {
        let mut header = [0u8; JOURNAL_HEADER_BYTES as usize];
        let file_len = self
            .file
            .len()
            .map_err(|e| CheckpointError::io(&self.path, e))?;
        let readable = (file_len.min(JOURNAL_HEADER_BYTES)) as usize;
        self.file
            .read_exact_at(&mut header[..readable], 0)
            .map_err(|e| self.corrupt(format!("unreadable header: {e}")))?;
        let version = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
        let owner = u32::from_le_bytes(header[12..16].try_into().expect("4 bytes"));
        let header_bytes = match version {
            FORMAT_1 => HEADER_BYTES_V1,
            JOURNAL_FORMAT_VERSION => JOURNAL_HEADER_BYTES,
            _ => 0,
        };
        if header[0..8] != JOURNAL_MAGIC
            || header_bytes == 0
            || (readable as u64) < header_bytes
            || owner != partition
        {
            return Err(self.corrupt(format!(
                "header is not a checkpoint journal (format 1 or {JOURNAL_FORMAT_VERSION}) of partition {partition}"
            )));
        }
        self.format_version = version;
        self.generation = if version == FORMAT_1 {
            0
        } else {
            u64::from_le_bytes(header[24..32].try_into().expect("8 bytes"))
        };
        self.snapshot_end = header_bytes;
        self.end_position = header_bytes;
        Ok(())
    }

    fn replay(&mut self, replay: &mut dyn Replay) -> Result<Option<Damage>, CheckpointError> {
        self.replay_until(None, replay)
    }

    /// Replays whole checkpoints before `until`; leaves `end_position` after the last one.
    fn replay_until(
        &mut self,
        until: Option<u64>,
        replay: &mut dyn Replay,
    ) -> Result<Option<Damage>, CheckpointError> {
        let file_len = self
            .file
            .len()
            .map_err(|e| CheckpointError::io(&self.path, e))?;
        let file_len = until.map_or(file_len, |until| until.min(file_len));
        let header_bytes = self.end_position;
        let mut reader = BufReader::with_capacity(1 << 20, FileReader::new(&*self.file, 0));
        reader
            .by_ref()
            .take(header_bytes)
            .read_to_end(&mut Vec::new())
            .map_err(|e| CheckpointError::io(&self.path, e))?;
        let mut position = header_bytes;
        // Format 1 holds index entries back until their checkpoint is whole.
        let mut held_back: Vec<IndexChange> = Vec::new();
        let mut frame_bytes = Vec::new();
        let mut frames = 0;
        let mut committed_any = false;
        let damage = loop {
            if position == file_len {
                break None;
            }
            let entry = match read_frame(&mut reader, &mut frame_bytes, frames)
                .and_then(|info| decode_frame(&frame_bytes, &info))
            {
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
            let at = position;
            position += frame_bytes.len() as u64;
            frames += 1;
            let commits = entry.meta().is_some();
            let is_snapshot = matches!(entry, FrameEntry::Owned(JournalEntry::Snapshot { .. }));
            let place = FramePlace {
                at,
                end: position,
                file_len,
                committed_any,
            };
            if let Some(damage) = self.misplaced(&entry, place) {
                break Some(damage);
            }
            let delivered = match entry {
                FrameEntry::Owned(entry) => self.deliver(entry, &mut held_back, replay),
                FrameEntry::Shard(image) => deliver_shard(image, replay),
            };
            if let Err(reason) = delivered {
                break Some(Damage {
                    position: at,
                    reason,
                    torn: false,
                });
            }
            if commits {
                if is_snapshot {
                    self.snapshot_end = position;
                }
                committed_any = true;
                self.end_position = position;
                self.frames = frames;
            }
        };
        Ok(damage)
    }

    /// The damage an entry is where it lies: a snapshot part or a snapshot after the first
    /// checkpoint, or the parts of a checkpoint that never completed at the end of the file.
    fn misplaced(&self, entry: &FrameEntry<'_>, place: FramePlace) -> Option<Damage> {
        let damage = |position, reason: &str, torn| {
            Some(Damage {
                position,
                reason: reason.into(),
                torn,
            })
        };
        if entry.meta().is_some() {
            let is_snapshot = matches!(entry, FrameEntry::Owned(JournalEntry::Snapshot { .. }));
            return if is_snapshot && place.committed_any {
                damage(
                    place.at,
                    "a snapshot after the journal's first checkpoint",
                    false,
                )
            } else {
                None
            };
        }
        let misplaced = if self.format_version == FORMAT_1 {
            !matches!(entry, FrameEntry::Owned(JournalEntry::IndexChanges(_)))
        } else {
            place.committed_any
        };
        if misplaced {
            damage(
                place.at,
                "a snapshot part after the journal's first checkpoint",
                false,
            )
        } else if place.end == place.file_len {
            damage(
                place.end,
                "index entries of a checkpoint that never completed",
                true,
            )
        } else {
            None
        }
    }

    /// Hands one entry to `replay`: parts of a format 2 snapshot at once, format 1 index
    /// entries once their checkpoint comes.
    fn deliver(
        &self,
        entry: JournalEntry,
        held_back: &mut Vec<IndexChange>,
        replay: &mut dyn Replay,
    ) -> Result<(), String> {
        match entry {
            JournalEntry::IndexChanges(changes) if self.format_version == FORMAT_1 => {
                held_back.extend(changes)
            }
            JournalEntry::IndexChanges(changes) => {
                changes
                    .into_iter()
                    .for_each(|change| replay.index_change(change));
            }
            JournalEntry::SnapshotRecorded(packed) => {
                unpack_recorded(&packed, |fingerprint, offset| {
                    replay.recorded(fingerprint, offset)
                })
                .map_err(str::to_owned)?;
            }
            JournalEntry::SnapshotShard(image) => deliver_shard(image.view(), replay)?,
            JournalEntry::SnapshotBuckets(packed) => {
                replay.packed_buckets(&packed).map_err(str::to_owned)?
            }
            JournalEntry::Checkpoint { meta, content } => {
                held_back
                    .drain(..)
                    .for_each(|change| replay.index_change(change));
                replay.committed(meta, Committed::Absolute(*content));
            }
            JournalEntry::Snapshot { meta, content } => {
                replay.committed(meta, Committed::Snapshot(*content))
            }
            JournalEntry::Delta { meta, content } => {
                Self::deliver_delta(meta, *content, None, held_back, replay)?
            }
            JournalEntry::DeltaWithRetractions {
                meta,
                content,
                retractions,
            } => Self::deliver_delta(meta, *content, Some(*retractions), held_back, replay)?,
            JournalEntry::SnapshotRetractions(changes) => replay.retractions(*changes),
        }
        Ok(())
    }

    fn deliver_delta(
        meta: CheckpointMeta,
        mut content: DeltaContent,
        retractions: Option<RetractionChanges>,
        held_back: &mut Vec<IndexChange>,
        replay: &mut dyn Replay,
    ) -> Result<(), String> {
        held_back
            .drain(..)
            .for_each(|change| replay.index_change(change));
        unpack_recorded(
            &std::mem::take(&mut content.recorded),
            |fingerprint, offset| replay.recorded(fingerprint, offset),
        )
        .map_err(str::to_owned)?;
        if let Some(retractions) = retractions {
            replay.retractions(retractions);
        }
        replay.committed(meta, Committed::Delta(content));
        Ok(())
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
        if file_len < HEADER_BYTES_V1 {
            return Ok(None);
        }
        Ok(Self::last_meta_between(&*file, 0, file_len)
            .map_err(io)?
            .map(|meta| meta.scalars.next_offset))
    }

    /// The meta of the last whole checkpoint of the journal that lies in `[start, end)` of a
    /// file (a journal file, or a savepoint's section), found by walking the frame headers and
    /// decoding only the last committing frames.
    pub fn last_meta_between(
        file: &dyn StorageFile,
        start: u64,
        end: u64,
    ) -> std::io::Result<Option<CheckpointMeta>> {
        let mut version = [0u8; 4];
        file.read_exact_at(&mut version, start + 8)?;
        let mut position = start
            + match u32::from_le_bytes(version) {
                FORMAT_1 => HEADER_BYTES_V1,
                _ => JOURNAL_HEADER_BYTES,
            };
        let mut starts = Vec::new();
        let mut header = [0u8; FRAME_HEADER_BYTES];
        while position + FRAME_HEADER_BYTES as u64 <= end {
            file.read_exact_at(&mut header, position)?;
            let Ok(body_len) = frame::body_len_from_header(&header) else {
                break;
            };
            let frame_end = position + (FRAME_HEADER_BYTES + body_len) as u64;
            if frame_end > end {
                break;
            }
            starts.push((position, frame_end));
            position = frame_end;
        }
        let mut frame_bytes = Vec::new();
        for &(start, end) in starts.iter().rev() {
            frame_bytes.resize((end - start) as usize, 0);
            file.read_exact_at(&mut frame_bytes, start)?;
            let Ok(info) = frame::check_frame(&frame_bytes) else {
                continue;
            };
            let mut records = Vec::with_capacity(1);
            frame::decode_records(&frame_bytes, &info, 0, 0, 1, &mut records);
            if let Some(record) = records.first()
                && let Ok(entry) = codec::decode::<JournalEntry>(&record.value)
                && let Some(meta) = entry.meta()
            {
                return Ok(Some(*meta));
            }
        }
        Ok(None)
    }

    /// Notes how many donations are recorded, for sizing the index when the journal is next
    /// loaded; made durable by the next append's sync.
    pub fn set_recorded_hint(&mut self, recorded: u64) -> Result<(), CheckpointError> {
        self.file
            .write_all_at(&recorded.to_le_bytes(), RECORDED_HINT_AT)
            .map_err(|e| CheckpointError::io(&self.path, e))
    }

    /// The recorded-donations hint of a journal file; 0 if there is none. Capped by what the
    /// file could hold (an index entry takes more than 8 bytes of journal), so a damaged hint
    /// cannot make a load allocate wildly.
    pub fn recorded_hint(storage: &dyn Storage, path: &Path) -> u64 {
        let Ok(file) = storage.open(path, OpenMode::Read) else {
            return 0;
        };
        let file_len = file.len().unwrap_or(0);
        let mut bytes = [0u8; 8];
        file.read_exact_at(&mut bytes, RECORDED_HINT_AT)
            .map_or(0, |()| u64::from_le_bytes(bytes))
            .min(file_len / 8)
    }

    /// Appends one encoded committing [`JournalEntry`] and syncs it; returns the journal's new
    /// end position.
    ///
    /// A failed append (a full disk, a failed sync) leaves the journal as it was before it: the
    /// next append first reopens the file — a handle whose sync failed is not trusted again —
    /// and cuts it back to the end of the last synced checkpoint, so a later checkpoint never
    /// lands after bytes of a failed one.
    pub fn append(&mut self, encoded_entry: &[u8]) -> Result<u64, CheckpointError> {
        if self.needs_cut {
            self.cut_back()?;
        }
        self.encode_buffer.clear();
        let info = encode_entry_frame(&mut self.encode_buffer, self.frames, encoded_entry, true);
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

    /// Writes one encoded committing [`JournalEntry`] after the journal's last checkpoint
    /// without syncing it: a commit round's write-ahead entry makes it durable, and then
    /// [`confirm_pending`](Self::confirm_pending) counts it. Until then the journal is as it
    /// was: a round that fails leaves the frame to be cut off before the next append. Returns
    /// where the frame starts; its bytes are [`pending_frame`](Self::pending_frame).
    pub fn write_pending(&mut self, encoded_entry: &[u8]) -> Result<u64, CheckpointError> {
        if self.needs_cut {
            self.cut_back()?;
        }
        self.encode_buffer.clear();
        encode_entry_frame(&mut self.encode_buffer, self.frames, encoded_entry, true);
        // Whatever happens next, bytes past the last counted checkpoint may be in the file.
        self.needs_cut = true;
        self.file
            .write_all_at(&self.encode_buffer, self.end_position)
            .map_err(|e| CheckpointError::io(&self.path, e))?;
        Ok(self.end_position)
    }

    /// The frame [`write_pending`](Self::write_pending) wrote last.
    pub fn pending_frame(&self) -> &[u8] {
        &self.encode_buffer
    }

    /// Counts the pending frame: its round's write-ahead entry is durable.
    pub fn confirm_pending(&mut self) {
        debug_assert!(self.needs_cut, "a frame is pending");
        self.end_position += self.encode_buffer.len() as u64;
        self.frames += 1;
        self.needs_cut = false;
    }

    /// What a write-ahead part written to this journal is tagged with: the generation, which
    /// every rewrite of the journal (compaction, reset, restore) raises, so a part of a
    /// generation that has since been replaced is never written into its successor.
    pub fn write_ahead_tag(&self) -> u64 {
        write_ahead_tag(self.format_version, self.generation)
    }

    /// The write-ahead tag of the journal file at `path` as it is on disk; `None` if it has no
    /// readable header.
    pub fn write_ahead_tag_of(storage: &dyn Storage, path: &Path) -> Option<u64> {
        let file = storage.open(path, OpenMode::Read).ok()?;
        let mut header = [0u8; JOURNAL_HEADER_BYTES as usize];
        let readable = file.len().ok()?.min(JOURNAL_HEADER_BYTES) as usize;
        file.read_exact_at(&mut header[..readable], 0).ok()?;
        if header[0..8] != JOURNAL_MAGIC {
            return None;
        }
        let version = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
        match version {
            FORMAT_1 if readable as u64 >= HEADER_BYTES_V1 => Some(write_ahead_tag(version, 0)),
            JOURNAL_FORMAT_VERSION if readable as u64 >= JOURNAL_HEADER_BYTES => {
                let generation = u64::from_le_bytes(header[24..32].try_into().expect("8 bytes"));
                Some(write_ahead_tag(version, generation))
            }
            _ => None,
        }
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

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&self) -> &Arc<dyn StorageFile> {
        &self.file
    }

    pub fn format_version(&self) -> u32 {
        self.format_version
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Bytes of the snapshot (or first checkpoint) and the header before it.
    pub fn snapshot_bytes(&self) -> u64 {
        self.snapshot_end
    }

    /// Bytes of the checkpoints after the snapshot.
    pub fn delta_bytes(&self) -> u64 {
        self.end_position - self.snapshot_end
    }

    pub fn end_position(&self) -> u64 {
        self.end_position
    }

    /// The encoded entries of the whole frames in `[from, to)` of a journal file, in order.
    pub(crate) fn entries_between(
        file: &dyn StorageFile,
        from: u64,
        to: u64,
    ) -> Result<Vec<Vec<u8>>, String> {
        let mut bytes = vec![0u8; (to - from) as usize];
        file.read_exact_at(&mut bytes, from)
            .map_err(|e| e.to_string())?;
        let mut entries = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let info = frame::check_frame(&bytes[at..]).map_err(|p| format!("{p:?}"))?;
            let mut records = Vec::with_capacity(1);
            frame::decode_records(&bytes[at..], &info, 0, 0, 1, &mut records);
            let record = records.pop().ok_or("a frame without its entry")?;
            entries.push(record.value);
            at += info.frame_bytes;
        }
        Ok(entries)
    }

    fn corrupt(&self, reason: String) -> CheckpointError {
        CheckpointError::Corrupt {
            what: format!("checkpoint journal {}", self.path.display()),
            reason,
        }
    }
}

/// See [`Journal::write_ahead_tag`]; a format 1 journal (no generation) is tagged apart.
fn write_ahead_tag(format_version: u32, generation: u64) -> u64 {
    if format_version == FORMAT_1 {
        u64::MAX
    } else {
        generation
    }
}

/// A format 2 header.
fn header_bytes(
    partition: PartitionId,
    recorded_hint: u64,
    generation: u64,
) -> [u8; JOURNAL_HEADER_BYTES as usize] {
    let mut header = [0u8; JOURNAL_HEADER_BYTES as usize];
    header[0..8].copy_from_slice(&JOURNAL_MAGIC);
    header[8..12].copy_from_slice(&JOURNAL_FORMAT_VERSION.to_le_bytes());
    header[12..16].copy_from_slice(&partition.to_le_bytes());
    header[16..24].copy_from_slice(&recorded_hint.to_le_bytes());
    header[24..32].copy_from_slice(&generation.to_le_bytes());
    header
}

/// Appends the frame of one encoded entry (frame sequence number `sequence`) to `buffer`.
fn encode_entry_frame(
    buffer: &mut Vec<u8>,
    sequence: u64,
    encoded_entry: &[u8],
    commit: bool,
) -> frame::FrameInfo {
    let record = KeyedRecord {
        key: Vec::new(),
        value: encoded_entry.to_vec(),
    };
    frame::encode_frame(buffer, sequence, 0, commit, [&record])
}

/// Bytes of packed recorded donations per snapshot frame: frames stay far below the frame size
/// limit, and a load checks and decodes one at a time.
const SNAPSHOT_RECORDED_FRAME_BYTES: usize = 1 << 20;
/// Index changes (collisions, resend counts) per snapshot frame: each encodes to at most a few
/// hundred bytes.
const SNAPSHOT_CHANGES_PER_FRAME: usize = 20_000;
/// Bytes of packed buckets per snapshot frame: one bucket packs to at most a few tens of KiB
/// (two varints per distinct amount bucket of its histogram).
const SNAPSHOT_BUCKETS_FRAME_BYTES: usize = 1 << 20;
/// Bytes gathered before a write.
const SNAPSHOT_WRITE_BYTES: usize = 4 << 20;

/// A generation once its snapshot (and any checkpoints after it) is written and synced.
#[derive(Debug)]
pub(crate) struct WrittenGeneration {
    pub file: Arc<dyn StorageFile>,
    pub generation: u64,
    pub snapshot_end: u64,
    pub end_position: u64,
    pub frames: u64,
}

/// Writes a new generation into an empty file: its header, its snapshot as a stream of
/// frames, then the checkpoints that came after the snapshot.
#[derive(Debug)]
pub(crate) struct SnapshotWriter {
    path: PathBuf,
    file: Arc<dyn StorageFile>,
    generation: u64,
    position: u64,
    frames: u64,
    buffer: Vec<u8>,
    recorded: Vec<u8>,
    changes: Vec<IndexChange>,
    buckets: Option<PackedBuckets>,
    snapshot_end: Option<u64>,
}

impl SnapshotWriter {
    pub fn new(
        path: &Path,
        file: Arc<dyn StorageFile>,
        partition: PartitionId,
        generation: u64,
        recorded_hint: u64,
    ) -> Self {
        Self::at(path, file, 0, partition, generation, recorded_hint)
    }

    /// A writer of a generation that starts at byte `base` of `file` (a savepoint's section).
    pub fn at(
        path: &Path,
        file: Arc<dyn StorageFile>,
        base: u64,
        partition: PartitionId,
        generation: u64,
        recorded_hint: u64,
    ) -> Self {
        Self {
            path: path.to_owned(),
            file,
            generation,
            position: base,
            frames: 0,
            buffer: header_bytes(partition, recorded_hint, generation).to_vec(),
            recorded: Vec::new(),
            changes: Vec::new(),
            buckets: None,
            snapshot_end: None,
        }
    }

    pub fn recorded(&mut self, fingerprint: u64, offset: Offset) -> Result<(), CheckpointError> {
        pack_recorded(&mut self.recorded, fingerprint, offset);
        if self.recorded.len() >= SNAPSHOT_RECORDED_FRAME_BYTES {
            self.flush_recorded()?;
        }
        Ok(())
    }

    /// A shard of the recorded donations' table, as it lies (see [`JournalEntry::SnapshotShard`]).
    pub fn shard(&mut self, image: ShardImage) -> Result<(), CheckpointError> {
        self.flush_recorded()?;
        self.frame(&codec::encode(&JournalEntry::SnapshotShard(image)), false)
    }

    pub fn index_change(&mut self, change: IndexChange) -> Result<(), CheckpointError> {
        self.changes.push(change);
        if self.changes.len() >= SNAPSHOT_CHANGES_PER_FRAME {
            self.flush_changes()?;
        }
        Ok(())
    }

    /// Adds a bucket; buckets come in key order.
    pub fn bucket(
        &mut self,
        key: &BucketKey,
        bucket: &WindowBucket,
    ) -> Result<(), CheckpointError> {
        let full = self
            .buckets
            .as_ref()
            .is_some_and(|packed| packed.bytes() >= SNAPSHOT_BUCKETS_FRAME_BYTES);
        if full
            || !self
                .buckets
                .as_ref()
                .is_some_and(|packed| packed.takes(key))
        {
            self.flush_buckets()?;
        }
        self.buckets
            .get_or_insert_with(|| PackedBuckets::new(key.campaign_id.clone(), key.granularity))
            .push(key.start_ms, bucket);
        Ok(())
    }

    /// Adds the refunds and chargebacks ledger (skipped when empty: a snapshot without it is
    /// read as one of an empty ledger).
    pub fn retractions(&mut self, image: RetractionChanges) -> Result<(), CheckpointError> {
        if image.is_empty() {
            return Ok(());
        }
        self.flush_recorded()?;
        self.flush_changes()?;
        self.flush_buckets()?;
        // A few MiB a frame: a campaign's worth of refunds is split, the counters in each part
        // and the conflicts in the last.
        let RetractionChanges {
            retractions,
            counters,
            conflicts,
        } = image;
        let mut chunks = retractions
            .chunks(SNAPSHOT_RETRACTIONS_PER_FRAME)
            .peekable();
        let mut conflicts = Some(conflicts);
        loop {
            let chunk = chunks.next().unwrap_or_default();
            let last = chunks.peek().is_none();
            let part = RetractionChanges {
                retractions: chunk.to_vec(),
                counters,
                conflicts: if last {
                    conflicts.take().unwrap_or_default()
                } else {
                    Vec::new()
                },
            };
            let entry = JournalEntry::SnapshotRetractions(Box::new(part));
            self.frame(&codec::encode(&entry), false)?;
            if last {
                return Ok(());
            }
        }
    }

    /// Commits the snapshot with its last frame.
    pub fn finish_snapshot(
        &mut self,
        meta: &CheckpointMeta,
        content: SnapshotContent,
    ) -> Result<(), CheckpointError> {
        self.flush_recorded()?;
        self.flush_changes()?;
        self.flush_buckets()?;
        let entry = JournalEntry::Snapshot {
            meta: *meta,
            content: Box::new(content),
        };
        self.frame(&codec::encode(&entry), true)?;
        self.write_out()?;
        self.snapshot_end = Some(self.position);
        Ok(())
    }

    /// Appends a checkpoint committed after the snapshot (an encoded committing entry).
    pub fn checkpoint(&mut self, encoded_entry: &[u8]) -> Result<(), CheckpointError> {
        assert!(
            self.snapshot_end.is_some(),
            "checkpoints follow the snapshot"
        );
        self.frame(encoded_entry, true)
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes bytes already encoded (a generation copied whole) at `at`, counted from where
    /// this writer starts; nothing else may be given to it.
    pub fn raw(&mut self, bytes: &[u8], at: u64) -> Result<(), CheckpointError> {
        self.buffer.clear();
        self.file
            .write_all_at(bytes, at)
            .map_err(|e| CheckpointError::io(&self.path, e))?;
        self.position = self.position.max(at + bytes.len() as u64);
        self.snapshot_end = Some(self.position);
        Ok(())
    }

    /// Writes out what was given so far; where it ends.
    pub fn write_all(&mut self) -> Result<u64, CheckpointError> {
        self.write_out()?;
        Ok(self.position)
    }

    /// Writes out and syncs what was given so far.
    pub fn sync(&mut self) -> Result<(), CheckpointError> {
        self.write_out()?;
        self.file
            .sync_data()
            .map_err(|e| CheckpointError::io(&self.path, e))
    }

    /// The generation, synced.
    pub fn finish(mut self) -> Result<WrittenGeneration, CheckpointError> {
        self.sync()?;
        Ok(WrittenGeneration {
            file: self.file,
            generation: self.generation,
            snapshot_end: self.snapshot_end.expect("a generation has its snapshot"),
            end_position: self.position,
            frames: self.frames,
        })
    }

    fn flush_recorded(&mut self) -> Result<(), CheckpointError> {
        if self.recorded.is_empty() {
            return Ok(());
        }
        let entry = JournalEntry::SnapshotRecorded(std::mem::take(&mut self.recorded));
        self.frame(&codec::encode(&entry), false)
    }

    fn flush_changes(&mut self) -> Result<(), CheckpointError> {
        if self.changes.is_empty() {
            return Ok(());
        }
        let entry = JournalEntry::IndexChanges(std::mem::take(&mut self.changes));
        self.frame(&codec::encode(&entry), false)
    }

    fn flush_buckets(&mut self) -> Result<(), CheckpointError> {
        match self.buckets.take() {
            Some(packed) if !packed.is_empty() => {
                let entry = JournalEntry::SnapshotBuckets(packed);
                self.frame(&codec::encode(&entry), false)
            }
            _ => Ok(()),
        }
    }

    fn frame(&mut self, encoded_entry: &[u8], commit: bool) -> Result<(), CheckpointError> {
        encode_entry_frame(&mut self.buffer, self.frames, encoded_entry, commit);
        self.frames += 1;
        if self.buffer.len() >= SNAPSHOT_WRITE_BYTES {
            self.write_out()?;
        }
        Ok(())
    }

    fn write_out(&mut self) -> Result<(), CheckpointError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        self.file
            .write_all_at(&self.buffer, self.position)
            .map_err(|e| CheckpointError::io(&self.path, e))?;
        self.position += self.buffer.len() as u64;
        self.buffer.clear();
        Ok(())
    }
}

/// Reads the next frame into `frame_bytes` and decodes its entry; the error says why it is not a
/// whole, valid frame (then `frame_bytes` holds what could be read).
/// A snapshot's table shard, whole, to `replay`.
fn deliver_shard(image: ShardImageRef<'_>, replay: &mut dyn Replay) -> Result<(), String> {
    if !image.is_whole() {
        return Err("a snapshot's table shard is not whole slots".into());
    }
    replay.recorded_shard(image);
    Ok(())
}

/// Where a frame lies in the journal being replayed.
#[derive(Debug, Clone, Copy)]
struct FramePlace {
    /// Where the frame starts.
    at: u64,
    /// Where it ends.
    end: u64,
    file_len: u64,
    /// Whether a checkpoint was committed before it.
    committed_any: bool,
}

/// A journal entry as read from its frame: a snapshot's table shard stays in the frame's bytes
/// (a MiB of slots each, copied once, into the table).
enum FrameEntry<'a> {
    Owned(JournalEntry),
    Shard(ShardImageRef<'a>),
}

impl FrameEntry<'_> {
    fn meta(&self) -> Option<&CheckpointMeta> {
        match self {
            FrameEntry::Owned(entry) => entry.meta(),
            FrameEntry::Shard(_) => None,
        }
    }
}

/// Retractions in one snapshot frame: about 100 bytes each.
const SNAPSHOT_RETRACTIONS_PER_FRAME: usize = 32 * 1024;

/// The variant index `JournalEntry::SnapshotShard` is encoded with (a little-endian `u32`).
const SNAPSHOT_SHARD_VARIANT: u32 = 6;

/// The entry of a frame read by [`read_frame`], which may borrow from its bytes.
fn decode_frame<'a>(
    frame_bytes: &'a [u8],
    info: &frame::FrameInfo,
) -> Result<FrameEntry<'a>, String> {
    // Decoded where it lies: a snapshot's frames are a MiB each.
    let value = frame::only_record_value(frame_bytes, info);
    match value.split_first_chunk::<4>() {
        Some((variant, image)) if u32::from_le_bytes(*variant) == SNAPSHOT_SHARD_VARIANT => {
            codec::decode_borrowed(image).map(FrameEntry::Shard)
        }
        _ => codec::decode(value).map(FrameEntry::Owned),
    }
    .map_err(|e| e.to_string())
}

/// Reads the next frame into `frame_bytes`, checked and in sequence.
fn read_frame(
    reader: &mut impl Read,
    frame_bytes: &mut Vec<u8>,
    sequence: u64,
) -> Result<frame::FrameInfo, String> {
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
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operators::dedupe::OrderedTable;

    #[test]
    fn a_shard_frame_decodes_borrowed_to_the_same_image() {
        let mut table = OrderedTable::default();
        for key in 1..200u64 {
            table.insert(key.wrapping_mul(0x9E37_79B9_7F4A_7C15), key);
        }
        table.insert(7, u64::from(u32::MAX) + 9);
        for image in table.shard_images() {
            let encoded = codec::encode(&JournalEntry::SnapshotShard(image.clone()));
            assert_eq!(
                encoded[..4],
                SNAPSHOT_SHARD_VARIANT.to_le_bytes(),
                "the variant"
            );
            let borrowed: ShardImageRef<'_> = codec::decode_borrowed(&encoded[4..]).unwrap();
            assert_eq!(borrowed, image.view());
        }
    }
}
