//! Segment files and their sparse offset indexes: the embedded log's on-disk format.
//!
//! A partition directory holds segments named by the offset of their first record,
//! `<base_offset:020>.seg`, each with a sparse index `<base_offset:020>.idx` once sealed.
//!
//! ```text
//! segment file  = header, then commits back to back: each commit's batch frames (see
//!                 `frame`), and from format version 2 on its seal (see `seal`)
//! header        = magic "TALLYSEG" (8) | format version u32 = 2 (1: no seals)
//!                 | reserved u32 = 0 | base_offset u64                 (24 bytes)
//! index file    = magic "TALLYIDX" (8) | format version u32 = 1 | entry_count u32
//!                 | base_offset u64 | end_offset u64 | end_position u64
//!                 | entry_count × { offset u64, position u64 } | crc32c u32 of all before
//! ```
//!
//! Invariants: frames in a segment have consecutive offsets starting at its base offset; the
//! next segment's base offset is this segment's end offset; only the last segment is written
//! to, so only it can end in a torn frame. The index of the last segment lives in memory and is
//! rebuilt by scanning it on open; a sealed segment's index is written when it is sealed (not
//! synced: it is a cache), and rebuilt by a scan whenever it is missing or fails its checksum.

use std::path::Path;

use super::frame::{self, FRAME_HEADER_BYTES, FRAME_MAGIC, FrameInfo, FrameProblem};
use super::seal::{SEAL_BYTES, Seal};
use super::{LogError, LogRecord, Offset, PartitionId};
use crate::support::storage::{self, OpenMode, Storage, StorageFile};

pub const SEGMENT_MAGIC: [u8; 8] = *b"TALLYSEG";
pub const INDEX_MAGIC: [u8; 8] = *b"TALLYIDX";
/// The format this build writes: commits carry seals.
pub const SEGMENT_FORMAT_VERSION: u32 = 2;
/// The first format, read but no longer written: commits without seals.
pub const SEGMENT_FORMAT_VERSION_UNSEALED: u32 = 1;
const INDEX_FORMAT_VERSION: u32 = 1;
pub const SEGMENT_HEADER_BYTES: u64 = 24;
/// A read fetches at least this much of a segment per system call.
const READ_CHUNK_BYTES: usize = 64 * 1024;

pub fn segment_file_name(base_offset: Offset) -> String {
    format!("{base_offset:020}.seg")
}

pub fn index_file_name(base_offset: Offset) -> String {
    format!("{base_offset:020}.idx")
}

/// The base offset a segment file name stands for, if it is one.
pub fn parse_segment_file_name(name: &str) -> Option<Offset> {
    let digits = name.strip_suffix(".seg")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// The 24-byte header every segment file starts with.
pub fn segment_header(base_offset: Offset) -> [u8; SEGMENT_HEADER_BYTES as usize] {
    let mut header = [0u8; SEGMENT_HEADER_BYTES as usize];
    header[0..8].copy_from_slice(&SEGMENT_MAGIC);
    header[8..12].copy_from_slice(&SEGMENT_FORMAT_VERSION.to_le_bytes());
    header[16..24].copy_from_slice(&base_offset.to_le_bytes());
    header
}

/// Whether commits of a segment of this format version end with a seal.
pub fn has_seals(format_version: u32) -> bool {
    format_version >= SEGMENT_FORMAT_VERSION
}

/// Checks a segment's header against the base offset its name promises; returns its format
/// version.
pub fn check_segment_header(
    file: &dyn StorageFile,
    path: &Path,
    base_offset: Offset,
) -> Result<u32, LogError> {
    let mut header = [0u8; SEGMENT_HEADER_BYTES as usize];
    file.read_exact_at(&mut header, 0)
        .map_err(|e| LogError::Corruption {
            path: path.to_owned(),
            position: 0,
            reason: format!("segment header unreadable: {e}"),
        })?;
    let version = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    let stored_base = u64::from_le_bytes(header[16..24].try_into().expect("8 bytes"));
    let problem = if header[0..8] != SEGMENT_MAGIC {
        Some("not a tally segment (bad magic)".to_owned())
    } else if version != SEGMENT_FORMAT_VERSION && version != SEGMENT_FORMAT_VERSION_UNSEALED {
        Some(format!(
            "segment format version {version} is not known to this build"
        ))
    } else if stored_base != base_offset {
        Some(format!(
            "header says base offset {stored_base}, file name says {base_offset}"
        ))
    } else {
        None
    };
    match problem {
        Some(reason) => Err(LogError::Corruption {
            path: path.to_owned(),
            position: 0,
            reason,
        }),
        None => Ok(version),
    }
}

/// One entry of a sparse index: the frame holding `offset` starts at byte `position`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    pub offset: Offset,
    pub position: u64,
}

/// Offsets → byte positions for every frame that starts at least `interval_bytes` after the
/// previous entry, so a read seeks close to its offset instead of scanning from the start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SparseIndex {
    entries: Vec<IndexEntry>,
    interval_bytes: u64,
}

impl SparseIndex {
    pub fn new(interval_bytes: u64) -> Self {
        Self {
            entries: Vec::new(),
            interval_bytes,
        }
    }

    /// Notes a frame starting at `position` whose first record is `offset`.
    pub fn note_frame(&mut self, offset: Offset, position: u64) {
        let due = match self.entries.last() {
            None => true,
            Some(last) => position >= last.position.saturating_add(self.interval_bytes),
        };
        if due {
            debug_assert!(self.entries.last().is_none_or(|last| last.offset < offset));
            self.entries.push(IndexEntry { offset, position });
        }
    }

    /// Where to start scanning for `offset` in a segment starting at `base_offset`: the last
    /// indexed frame at or before it, else the first frame.
    pub fn seek(&self, base_offset: Offset, offset: Offset) -> IndexEntry {
        let after = self.entries.partition_point(|entry| entry.offset <= offset);
        match after.checked_sub(1) {
            Some(at) => self.entries[at],
            None => IndexEntry {
                offset: base_offset,
                position: SEGMENT_HEADER_BYTES,
            },
        }
    }

    /// Drops entries at or after `position` (frames cut off by recovery).
    pub fn truncate(&mut self, position: u64) {
        self.entries.retain(|entry| entry.position < position);
    }

    pub fn last(&self) -> Option<IndexEntry> {
        self.entries.last().copied()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The extent of a sealed segment as its index file records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedIndex {
    pub index: SparseIndex,
    pub end_offset: Offset,
    pub end_position: u64,
}

/// Writes a sealed segment's index file. It is not synced: the index is a cache of its segment,
/// checked by its checksum and rebuilt by a scan whenever it is missing or damaged, so a crash
/// that tears it costs a scan, never a record.
pub fn write_index_file(
    storage: &dyn Storage,
    path: &Path,
    base_offset: Offset,
    sealed: &SealedIndex,
) -> Result<(), LogError> {
    let mut bytes = Vec::with_capacity(40 + sealed.index.entries.len() * 16 + 4);
    bytes.extend_from_slice(&INDEX_MAGIC);
    bytes.extend_from_slice(&INDEX_FORMAT_VERSION.to_le_bytes());
    bytes.extend_from_slice(&(sealed.index.entries.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&base_offset.to_le_bytes());
    bytes.extend_from_slice(&sealed.end_offset.to_le_bytes());
    bytes.extend_from_slice(&sealed.end_position.to_le_bytes());
    for entry in &sealed.index.entries {
        bytes.extend_from_slice(&entry.offset.to_le_bytes());
        bytes.extend_from_slice(&entry.position.to_le_bytes());
    }
    let crc = crc32c::crc32c(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    let file = storage
        .open(path, OpenMode::CreateTruncate)
        .map_err(|e| LogError::io(path, e))?;
    file.write_all_at(&bytes, 0)
        .map_err(|e| LogError::io(path, e))
}

/// Reads a sealed segment's index file; `None` if it is missing or damaged (then the caller
/// rebuilds it by scanning the segment).
pub fn read_index_file(
    storage: &dyn Storage,
    path: &Path,
    base_offset: Offset,
    interval_bytes: u64,
) -> Option<SealedIndex> {
    let bytes = storage::read_file(storage, path).ok()?;
    let (body, crc_bytes) = bytes.split_at_checked(bytes.len().checked_sub(4)?)?;
    if crc32c::crc32c(body) != u32::from_le_bytes(crc_bytes.try_into().ok()?) {
        return None;
    }
    let u32_at = |at: usize| {
        body.get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4")))
    };
    let u64_at = |at: usize| {
        body.get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8")))
    };
    if body.get(0..8)? != INDEX_MAGIC || u32_at(8)? != INDEX_FORMAT_VERSION {
        return None;
    }
    let entry_count = u32_at(12)? as usize;
    if u64_at(16)? != base_offset || body.len() != 40 + entry_count * 16 {
        return None;
    }
    let mut index = SparseIndex::new(interval_bytes);
    index.entries = (0..entry_count)
        .map(|i| {
            Some(IndexEntry {
                offset: u64_at(40 + i * 16)?,
                position: u64_at(48 + i * 16)?,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(SealedIndex {
        index,
        end_offset: u64_at(24)?,
        end_position: u64_at(32)?,
    })
}

/// What a scan of a segment found.
#[derive(Debug)]
pub struct ScanOutcome {
    pub index: SparseIndex,
    /// Position just after the last whole, valid frame.
    pub end_position: u64,
    pub end_offset: Offset,
    /// Position and offset just after the last whole commit (its `COMMIT_END` frame), or the
    /// scan's start if no commit ended.
    pub commit_end_position: u64,
    pub commit_end_offset: Offset,
    /// The first position at which no valid frame could be read, and why; `None` if the scan
    /// reached the end of the file exactly at a frame boundary.
    pub stopped_at: Option<(u64, FrameProblem)>,
    /// Positions of seals of which one copy was damaged (the other one vouched for the commit).
    pub damaged_seal_copies: Vec<u64>,
}

/// Scans commits from `start` (a commit boundary holding `start.offset`) to the end of the
/// file, checking each frame's checksum, that offsets continue without gaps, and (format
/// version 2) each commit's seal.
pub fn scan_segment(
    file: &dyn StorageFile,
    path: &Path,
    start: IndexEntry,
    mut index: SparseIndex,
    format_version: u32,
) -> Result<ScanOutcome, LogError> {
    let file_len = file.len().map_err(|e| LogError::io(path, e))?;
    let mut position = start.position;
    let mut expected_offset = start.offset;
    let (mut commit_end_position, mut commit_end_offset) = (position, expected_offset);
    let mut commit_crc = 0u32;
    let mut damaged_seal_copies = Vec::new();
    let mut reader = ChunkReader::new(file, path, file_len);
    let stopped_at = loop {
        if position == file_len {
            break None;
        }
        match reader.frame_at(position)? {
            Ok((info, _)) if info.base_offset != expected_offset => {
                break Some((
                    position,
                    FrameProblem::Invalid(format!(
                        "frame starts at offset {}, expected {expected_offset}",
                        info.base_offset
                    )),
                ));
            }
            Ok((info, bytes)) => {
                commit_crc = crc32c::crc32c_append(commit_crc, bytes);
                index.note_frame(info.base_offset, position);
                position += info.frame_bytes as u64;
                expected_offset = info.end_offset();
                if !info.commit_end {
                    continue;
                }
                if has_seals(format_version) {
                    let seal = Seal {
                        commit_bytes: (position - commit_end_position) as u32,
                        base_offset: commit_end_offset,
                        end_offset: expected_offset,
                        commit_crc,
                    };
                    if position + SEAL_BYTES as u64 > file_len {
                        break Some((position, FrameProblem::Truncated));
                    }
                    reader.ensure(position, SEAL_BYTES)?;
                    match seal.copies_matching(reader.slice(position, SEAL_BYTES)) {
                        0 => break Some((position, FrameProblem::Unsealed)),
                        1 => damaged_seal_copies.push(position),
                        _ => {}
                    }
                    position += SEAL_BYTES as u64;
                }
                (commit_end_position, commit_end_offset) = (position, expected_offset);
                commit_crc = 0;
            }
            Err(problem) => break Some((position, problem)),
        }
    };
    Ok(ScanOutcome {
        index,
        end_position: position,
        end_offset: expected_offset,
        commit_end_position,
        commit_end_offset,
        stopped_at,
        damaged_seal_copies,
    })
}

/// Whether a later commit follows damage at `position`: a valid frame (holding offsets at or
/// after `offset_min`) after a valid `COMMIT_END` frame, both after `position`.
///
/// Tells a torn tail from corruption in the middle. A crash can only tear the last commit, so
/// every valid frame after torn bytes belongs to that same commit, and nothing valid follows its
/// end. Anything after a commit that ended is a later commit, which was acknowledged only if the
/// damaged one was: then the damage is corruption of acknowledged records.
pub fn later_commit_follows(
    file: &dyn StorageFile,
    path: &Path,
    position: u64,
    offset_min: Offset,
) -> Result<bool, LogError> {
    let file_len = file.len().map_err(|e| LogError::io(path, e))?;
    let Some(rest_len) = file_len.checked_sub(position + 1) else {
        return Ok(false);
    };
    let mut rest = vec![0u8; rest_len as usize];
    file.read_exact_at(&mut rest, position + 1)
        .map_err(|e| LogError::io(path, e))?;
    let mut commit_ended = false;
    for (at, _) in rest
        .windows(FRAME_MAGIC.len())
        .enumerate()
        .filter(|(_, window)| *window == FRAME_MAGIC)
    {
        let Ok(info) = frame::check_frame(&rest[at..]) else {
            continue;
        };
        if info.base_offset < offset_min {
            continue;
        }
        if commit_ended {
            return Ok(true);
        }
        commit_ended = info.commit_end;
    }
    Ok(false)
}

/// Where a segment's durable commits end, and its format.
#[derive(Debug, Clone, Copy)]
pub struct SegmentExtent {
    pub end_position: u64,
    pub format_version: u32,
}

/// Reads up to `records_max` records from `from` on, from a segment whose durable commits end
/// at `extent.end_position`, starting the scan at `start` (from the sparse index).
pub fn read_records(
    file: &dyn StorageFile,
    path: &Path,
    partition: PartitionId,
    start: IndexEntry,
    extent: SegmentExtent,
    from: Offset,
    records_max: usize,
) -> Result<Vec<LogRecord>, LogError> {
    let end_position = extent.end_position;
    let mut records = Vec::new();
    let mut reader = ChunkReader::new(file, path, end_position);
    let mut position = start.position;
    while position < end_position && records.len() < records_max {
        let (info, bytes) = match reader.frame_at(position)? {
            Ok(found) => found,
            Err(problem) => {
                return Err(LogError::Corruption {
                    path: path.to_owned(),
                    position,
                    reason: describe(&problem),
                });
            }
        };
        if info.end_offset() > from {
            frame::decode_records(bytes, &info, partition, from, records_max, &mut records);
        }
        position += info.frame_bytes as u64;
        if info.commit_end && has_seals(extent.format_version) {
            position += SEAL_BYTES as u64;
        }
    }
    Ok(records)
}

fn describe(problem: &FrameProblem) -> String {
    match problem {
        FrameProblem::Truncated => "frame cut short inside durable data".into(),
        FrameProblem::Invalid(reason) => reason.clone(),
        FrameProblem::Unsealed => "commit seal missing or damaged".into(),
    }
}

/// Reads a segment in large chunks and hands out whole frames.
struct ChunkReader<'a> {
    file: &'a dyn StorageFile,
    path: &'a Path,
    limit: u64,
    buffer: Vec<u8>,
    buffer_position: u64,
}

impl<'a> ChunkReader<'a> {
    fn new(file: &'a dyn StorageFile, path: &'a Path, limit: u64) -> Self {
        Self {
            file,
            path,
            limit,
            buffer: Vec::new(),
            buffer_position: 0,
        }
    }

    /// The frame at `position`: its info and its bytes, or why there is no valid frame there.
    /// The outer error is an I/O failure; the inner one is about the bytes.
    #[allow(clippy::type_complexity)]
    fn frame_at(
        &mut self,
        position: u64,
    ) -> Result<Result<(FrameInfo, &[u8]), FrameProblem>, LogError> {
        self.ensure(position, FRAME_HEADER_BYTES)?;
        let header = self.slice(position, FRAME_HEADER_BYTES);
        let body_len = match frame::body_len_from_header(header) {
            Ok(body_len) => body_len,
            Err(problem) => return Ok(Err(problem)),
        };
        let frame_bytes = FRAME_HEADER_BYTES + body_len;
        self.ensure(position, frame_bytes)?;
        let bytes = self.slice(position, frame_bytes);
        Ok(frame::check_frame(bytes).map(|info| (info, bytes)))
    }

    /// Makes `[position, position + len)` available in the buffer, as far as the limit allows.
    fn ensure(&mut self, position: u64, len: usize) -> Result<(), LogError> {
        let buffer_end = self.buffer_position + self.buffer.len() as u64;
        if position >= self.buffer_position && position + len as u64 <= buffer_end {
            return Ok(());
        }
        let available = self.limit.saturating_sub(position);
        let want = (len.max(READ_CHUNK_BYTES) as u64).min(available) as usize;
        self.buffer.resize(want, 0);
        self.file
            .read_exact_at(&mut self.buffer, position)
            .map_err(|e| LogError::io(self.path, e))?;
        self.buffer_position = position;
        Ok(())
    }

    /// Up to `len` bytes from `position` (fewer at the limit).
    fn slice(&self, position: u64, len: usize) -> &[u8] {
        let start = (position - self.buffer_position) as usize;
        let end = (start + len).min(self.buffer.len());
        &self.buffer[start..end]
    }
}
