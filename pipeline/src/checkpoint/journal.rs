//! The index journal of one partition: the donation index changes of every checkpoint, in
//! commit order.
//!
//! The index grows by one entry per recorded donation — far too many small writes for sled, which
//! handles tens of thousands of inserts a second. So each checkpoint appends its index changes to
//! this file as one frame (the log's frame format: length, CRC32C, records), syncs it, and only
//! then commits the sled batch that records the journal's new end position. The sled commit is
//! the atomic step: bytes past the committed position belong to a checkpoint that never
//! committed, and are cut off when the journal is opened.
//!
//! ```text
//! header (24 bytes) = magic "TALLYJNL" | format version u32 = 1 | partition u32 | reserved u64
//! frames            = one per checkpoint; frame base_offset = checkpoint sequence number,
//!                     one record whose value is the encoded Vec<IndexChange>
//! ```

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::CheckpointError;
use crate::codec;
use crate::log::frame::{self, FRAME_HEADER_BYTES};
use crate::log::{KeyedRecord, PartitionId};
use crate::operators::dedupe::IndexChange;

const JOURNAL_MAGIC: [u8; 8] = *b"TALLYJNL";
const JOURNAL_FORMAT_VERSION: u32 = 1;
pub const JOURNAL_HEADER_BYTES: u64 = 24;

/// An open index journal positioned at its committed end.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
    end_position: u64,
    frames: u64,
    encode_buffer: Vec<u8>,
}

impl Journal {
    /// Opens the journal, reads the changes up to `committed_position` (calling `apply` for each)
    /// and cuts off anything after it. `None` as position means "no checkpoint": start empty.
    pub fn open(
        path: &Path,
        partition: PartitionId,
        committed_position: Option<u64>,
        mut apply: impl FnMut(IndexChange),
    ) -> Result<Self, CheckpointError> {
        let io = |e| CheckpointError::io(path, e);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        let mut journal = Self {
            path: path.to_owned(),
            file,
            end_position: JOURNAL_HEADER_BYTES,
            frames: 0,
            encode_buffer: Vec::new(),
        };
        match committed_position {
            None => journal.reset(partition)?,
            Some(position) => {
                journal.check_header(partition)?;
                journal.replay(position, &mut apply)?;
                journal.file.set_len(position).map_err(io)?;
                journal.file.sync_all().map_err(io)?;
            }
        }
        Ok(journal)
    }

    /// Reads the changes up to `committed_position` without changing the file: for reading a
    /// partition's checkpoint while its writer may append after that position.
    pub fn read_committed(
        path: &Path,
        partition: PartitionId,
        committed_position: u64,
        mut apply: impl FnMut(IndexChange),
    ) -> Result<(), CheckpointError> {
        let file = File::open(path).map_err(|e| CheckpointError::io(path, e))?;
        let mut journal = Self {
            path: path.to_owned(),
            file,
            end_position: JOURNAL_HEADER_BYTES,
            frames: 0,
            encode_buffer: Vec::new(),
        };
        journal.check_header(partition)?;
        journal.replay(committed_position, &mut apply)
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
        self.file.sync_all().map_err(io)?;
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
                "header is not a version {JOURNAL_FORMAT_VERSION} journal of partition {partition}"
            )));
        }
        Ok(())
    }

    fn replay(
        &mut self,
        committed_position: u64,
        apply: &mut impl FnMut(IndexChange),
    ) -> Result<(), CheckpointError> {
        let file_len = self
            .file
            .metadata()
            .map_err(|e| CheckpointError::io(&self.path, e))?
            .len();
        if committed_position < JOURNAL_HEADER_BYTES || committed_position > file_len {
            return Err(self.corrupt(format!(
                "checkpoint says the journal ends at byte {committed_position}, the file has {file_len}"
            )));
        }
        let mut reader = BufReader::with_capacity(1 << 20, &self.file);
        reader
            .by_ref()
            .take(JOURNAL_HEADER_BYTES)
            .read_to_end(&mut Vec::new())
            .map_err(|e| CheckpointError::io(&self.path, e))?;
        let mut position = JOURNAL_HEADER_BYTES;
        let mut frame_bytes = Vec::new();
        while position < committed_position {
            frame_bytes.resize(FRAME_HEADER_BYTES, 0);
            reader
                .read_exact(&mut frame_bytes)
                .map_err(|e| self.corrupt(format!("at byte {position}: {e}")))?;
            let body_len = frame::body_len_from_header(&frame_bytes)
                .map_err(|problem| self.corrupt(format!("at byte {position}: {problem:?}")))?;
            frame_bytes.resize(FRAME_HEADER_BYTES + body_len, 0);
            reader
                .read_exact(&mut frame_bytes[FRAME_HEADER_BYTES..])
                .map_err(|e| self.corrupt(format!("at byte {position}: {e}")))?;
            let info = frame::check_frame(&frame_bytes)
                .map_err(|problem| self.corrupt(format!("at byte {position}: {problem:?}")))?;
            if info.base_offset != self.frames || info.record_count != 1 {
                return Err(self.corrupt(format!("frame at byte {position} is out of sequence")));
            }
            let mut records = Vec::with_capacity(1);
            frame::decode_records(&frame_bytes, &info, 0, 0, 1, &mut records);
            let changes: Vec<IndexChange> = codec::decode(&records[0].value)
                .map_err(|e| self.corrupt(format!("frame at byte {position}: {e}")))?;
            changes.into_iter().for_each(&mut *apply);
            position += info.frame_bytes as u64;
            self.frames += 1;
        }
        if position != committed_position {
            return Err(self.corrupt(format!(
                "no frame boundary at the committed byte {committed_position}"
            )));
        }
        self.end_position = position;
        Ok(())
    }

    /// Appends one checkpoint's changes and syncs them; returns the new end position, which the
    /// checkpoint must record to make them count.
    pub fn append(&mut self, changes: &[IndexChange]) -> Result<u64, CheckpointError> {
        let record = KeyedRecord {
            key: Vec::new(),
            value: codec::encode(changes),
        };
        self.encode_buffer.clear();
        let info = frame::encode_frame(&mut self.encode_buffer, self.frames, 0, true, [&record]);
        let io = |e| CheckpointError::io(&self.path, e);
        self.file
            .write_all_at(&self.encode_buffer, self.end_position)
            .map_err(io)?;
        self.file.sync_data().map_err(io)?;
        self.end_position += info.frame_bytes as u64;
        self.frames += 1;
        Ok(self.end_position)
    }

    pub fn end_position(&self) -> u64 {
        self.end_position
    }

    fn corrupt(&self, reason: String) -> CheckpointError {
        CheckpointError::Corrupt {
            what: format!("index journal {}", self.path.display()),
            reason,
        }
    }
}
