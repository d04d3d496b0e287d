//! Write-ahead files: one `fdatasync` makes a round of appends to many files durable.
//!
//! The log's writer and each checkpoint worker commit in rounds: every partition's append of the
//! round (a log commit, a checkpoint frame) is written to its own file — a segment, a checkpoint
//! journal — without a sync, and one entry holding all of them is written to the committer's
//! write-ahead file, which alone is synced. One sync per round, however many partitions the round
//! touched: on the disks tally runs on a sync costs about the same for one byte as for a
//! megabyte, and one per partition is what made partitions expensive.
//!
//! ```text
//! <dir>/write-ahead/<sequence>.wal     20-digit sequence of the file, from 1
//!   header (24 bytes)  magic "TALLYWAL" | format version u32 = 1 | reserved u32 | sequence u64
//!   entries, back to back, each:
//!     magic "TLYW" | body_len u32 | crc32c(body) u32
//!     body: round u64 | part_count u32 | part_count × part
//!     part: partition u32 | file_tag u64 | position u64 | base_offset u64 | end_offset u64
//!           | bytes_len u32 | bytes (exactly as written at `position` of the partition's file)
//! ```
//! `file_tag` says which file of the partition a part went to — a log segment by its base
//! offset, a checkpoint journal by its generation — and `base_offset..end_offset` what the part
//! holds (a log commit's records; a checkpoint's next offset, twice).
//!
//! A write-ahead file is only needed until the files it covers are synced: once it reaches its
//! size bound the committer starts the next file, syncs the files written meanwhile and then
//! removes the old one. Opening replays what files are left — each part written again at its
//! place in its file, which changes nothing where the file already has it — syncs those files
//! and removes the write-ahead files, before anything reads them; so every acknowledged append
//! is in its own file again, and only the round in flight at a crash can be torn there. An entry
//! that fails its checks ends its write-ahead file: it is the round in flight at the crash,
//! never acknowledged. A part whose file is gone or replaced (a checkpoint journal rewritten by
//! a compaction, whose new generation holds the part already) is skipped, as its resolver says.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::log::{LogError, Offset, PartitionId};
use crate::support::storage::{OpenMode, Storage, StorageFile};

pub const WRITE_AHEAD_DIR: &str = "write-ahead";
pub const WRITE_AHEAD_MAGIC: [u8; 8] = *b"TALLYWAL";
pub const WRITE_AHEAD_FORMAT_VERSION: u32 = 1;
pub const WRITE_AHEAD_HEADER_BYTES: u64 = 24;
pub const ENTRY_MAGIC: [u8; 4] = *b"TLYW";
const ENTRY_HEADER_BYTES: usize = 12;
const PART_HEADER_BYTES: usize = 4 + 8 + 8 + 8 + 8 + 4;

/// The name of write-ahead file number `sequence`.
pub fn file_name(sequence: u64) -> String {
    format!("{sequence:020}.wal")
}

fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".wal")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// The directory of the write-ahead files of the log or state directory `dir`.
pub fn dir_of(dir: &Path) -> PathBuf {
    dir.join(WRITE_AHEAD_DIR)
}

/// Why write-ahead files could not be read, replayed or written.
#[derive(Debug, thiserror::Error)]
pub enum WriteAheadError {
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("write-ahead file {path} at byte {position}: {reason}")]
    Corrupt {
        path: PathBuf,
        position: u64,
        reason: String,
    },
}

impl WriteAheadError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        WriteAheadError::Io {
            path: path.into(),
            source,
        }
    }
}

impl From<WriteAheadError> for LogError {
    fn from(error: WriteAheadError) -> Self {
        match error {
            WriteAheadError::Io { path, source } => LogError::io(path, source),
            WriteAheadError::Corrupt {
                path,
                position,
                reason,
            } => LogError::Corruption {
                path,
                position,
                reason,
            },
        }
    }
}

/// The header of write-ahead file `sequence`.
pub fn file_header(sequence: u64) -> [u8; WRITE_AHEAD_HEADER_BYTES as usize] {
    let mut header = [0; WRITE_AHEAD_HEADER_BYTES as usize];
    header[..8].copy_from_slice(&WRITE_AHEAD_MAGIC);
    header[8..12].copy_from_slice(&WRITE_AHEAD_FORMAT_VERSION.to_le_bytes());
    header[16..24].copy_from_slice(&sequence.to_le_bytes());
    header
}

/// Where one partition's append of a round goes, and what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartPlace {
    pub partition: PartitionId,
    /// Which file of the partition: a log segment's base offset, a journal's generation.
    pub file_tag: u64,
    /// Where in that file the append starts.
    pub position: u64,
    pub base_offset: Offset,
    pub end_offset: Offset,
}

/// Builds one round's entry in place: the caller encodes each partition's append straight into
/// the entry ([`EntryBuilder::part`]) and writes the same bytes to the partition's file from
/// [`EntryBuilder::last_part_bytes`], so an append is encoded once.
#[derive(Debug, Default)]
pub struct EntryBuilder {
    buffer: Vec<u8>,
    /// Where each part's bytes lie in `buffer`, and where they go.
    parts: Vec<(PartPlace, std::ops::Range<usize>)>,
}

impl EntryBuilder {
    /// Starts the entry of round `round`, forgetting the last one (its allocation is kept).
    pub fn start(&mut self, round: u64) {
        self.buffer.clear();
        self.parts.clear();
        self.buffer.extend_from_slice(&ENTRY_MAGIC);
        self.buffer.extend_from_slice(&[0; 8]); // body_len and crc, filled in by `finish`
        self.buffer.extend_from_slice(&round.to_le_bytes());
        self.buffer.extend_from_slice(&0u32.to_le_bytes()); // part count, filled in by `finish`
    }

    /// Adds a part: `encode` appends the part's bytes to the buffer it is given and returns
    /// whatever it wants to with the part's end offset; `place` says where the bytes go.
    pub fn part<T>(
        &mut self,
        place: PartPlace,
        encode: impl FnOnce(&mut Vec<u8>) -> (T, Offset),
    ) -> T {
        let header_at = self.buffer.len();
        self.buffer.extend_from_slice(&[0; PART_HEADER_BYTES]);
        let start = self.buffer.len();
        let (value, end_offset) = encode(&mut self.buffer);
        let end = self.buffer.len();
        let place = PartPlace {
            end_offset,
            ..place
        };
        let header = &mut self.buffer[header_at..start];
        header[0..4].copy_from_slice(&place.partition.to_le_bytes());
        header[4..12].copy_from_slice(&place.file_tag.to_le_bytes());
        header[12..20].copy_from_slice(&place.position.to_le_bytes());
        header[20..28].copy_from_slice(&place.base_offset.to_le_bytes());
        header[28..36].copy_from_slice(&place.end_offset.to_le_bytes());
        header[36..40].copy_from_slice(&((end - start) as u32).to_le_bytes());
        self.parts.push((place, start..end));
        value
    }

    /// Drops the parts from `kept` on (a partition whose append could not be written).
    pub fn truncate_parts(&mut self, kept: usize) {
        if let Some((_, range)) = self.parts.get(kept) {
            self.buffer.truncate(range.start - PART_HEADER_BYTES);
            self.parts.truncate(kept);
        }
    }

    /// The bytes of the part added last.
    pub fn last_part_bytes(&self) -> Option<&[u8]> {
        let (_, range) = self.parts.last()?;
        Some(&self.buffer[range.clone()])
    }

    pub fn part_count(&self) -> usize {
        self.parts.len()
    }

    /// Fills in the entry's header; the bytes to append to the write-ahead file.
    pub fn finish(&mut self) -> &[u8] {
        let part_count = self.parts.len() as u32;
        self.buffer[20..24].copy_from_slice(&part_count.to_le_bytes());
        let body = &self.buffer[ENTRY_HEADER_BYTES..];
        let body_len = body.len() as u32;
        let crc = crc32c::crc32c(body);
        self.buffer[4..8].copy_from_slice(&body_len.to_le_bytes());
        self.buffer[8..12].copy_from_slice(&crc.to_le_bytes());
        &self.buffer
    }
}

/// One part read back from a write-ahead file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub place: PartPlace,
    pub bytes: Vec<u8>,
}

/// The entries of one write-ahead file that check out, in order, up to the first that does not
/// (the round in flight when the file was last written) or the end.
pub fn read_file(file: &dyn StorageFile, path: &Path) -> Result<Vec<Part>, WriteAheadError> {
    let length = file.len().map_err(|e| WriteAheadError::io(path, e))?;
    let mut bytes = vec![0; length as usize];
    file.read_exact_at(&mut bytes, 0)
        .map_err(|e| WriteAheadError::io(path, e))?;
    if bytes.len() < WRITE_AHEAD_HEADER_BYTES as usize || bytes[..8] != WRITE_AHEAD_MAGIC {
        // A file whose header never reached the disk was created at a crash: nothing in it
        // was acknowledged (its creation is synced before the first entry is written).
        return Ok(Vec::new());
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != WRITE_AHEAD_FORMAT_VERSION {
        return Err(WriteAheadError::Corrupt {
            path: path.to_owned(),
            position: 8,
            reason: format!("write-ahead format version {version} is not one this build reads"),
        });
    }
    Ok(parse_entries(&bytes))
}

/// The parts of the entries after a file's header, in order, up to the first entry that does
/// not check out.
fn parse_entries(bytes: &[u8]) -> Vec<Part> {
    let mut parts = Vec::new();
    let mut at = WRITE_AHEAD_HEADER_BYTES as usize;
    let mut last_round = None;
    while let Some((round, entry_parts, next)) = parse_entry(bytes, at) {
        if last_round.is_some_and(|last| round <= last) {
            break; // a stale entry from before a cut: rounds only go up
        }
        last_round = Some(round);
        parts.extend(entry_parts);
        at = next;
    }
    parts
}

/// The entry at `at`: its round, its parts and where the next entry starts; `None` if there is
/// no whole entry there whose checksum matches.
fn parse_entry(bytes: &[u8], at: usize) -> Option<(u64, Vec<Part>, usize)> {
    let header = bytes.get(at..at + ENTRY_HEADER_BYTES)?;
    if header[..4] != ENTRY_MAGIC {
        return None;
    }
    let body_len = u32::from_le_bytes(header[4..8].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[8..12].try_into().ok()?);
    let body_start = at + ENTRY_HEADER_BYTES;
    let body = bytes.get(body_start..body_start.checked_add(body_len)?)?;
    if crc32c::crc32c(body) != crc || body.len() < 12 {
        return None;
    }
    let round = u64::from_le_bytes(body[0..8].try_into().ok()?);
    let part_count = u32::from_le_bytes(body[8..12].try_into().ok()?);
    let mut parts = Vec::with_capacity(part_count.min(1024) as usize);
    let mut cursor = 12;
    for _ in 0..part_count {
        let header = body.get(cursor..cursor + PART_HEADER_BYTES)?;
        let field = |range: std::ops::Range<usize>| -> u64 {
            let mut le = [0u8; 8];
            le[..range.len()].copy_from_slice(&header[range]);
            u64::from_le_bytes(le)
        };
        let place = PartPlace {
            partition: field(0..4) as PartitionId,
            file_tag: field(4..12),
            position: field(12..20),
            base_offset: field(20..28),
            end_offset: field(28..36),
        };
        let bytes_len = field(36..40) as usize;
        cursor += PART_HEADER_BYTES;
        let part_bytes = body.get(cursor..cursor.checked_add(bytes_len)?)?;
        cursor += bytes_len;
        parts.push(Part {
            place,
            bytes: part_bytes.to_vec(),
        });
    }
    (cursor == body.len()).then_some((round, parts, body_start + body_len))
}

/// The write-ahead files in `dir`, by sequence, ascending.
pub fn list_files(
    storage: &dyn Storage,
    dir: &Path,
) -> Result<Vec<(u64, PathBuf)>, WriteAheadError> {
    if !storage
        .exists(dir)
        .map_err(|e| WriteAheadError::io(dir, e))?
    {
        return Ok(Vec::new());
    }
    let mut files: Vec<(u64, PathBuf)> = storage
        .list_dir(dir)
        .map_err(|e| WriteAheadError::io(dir, e))?
        .iter()
        .filter_map(|name| parse_file_name(name).map(|sequence| (sequence, dir.join(name))))
        .collect();
    files.sort_unstable();
    Ok(files)
}

/// What replaying write-ahead files did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Replayed {
    /// Files read (and removed).
    pub files: usize,
    /// Parts written again into their files.
    pub parts: usize,
    /// Parts whose file was gone or replaced, as the resolver said.
    pub skipped: usize,
    /// The highest sequence seen, so the next file gets a higher one.
    pub last_sequence: u64,
}

/// Where a part read back from a write-ahead file goes: the path of its file, or `None` to skip
/// it (its file was replaced by one that holds it already). A resolver that finds the part can
/// be neither written nor skipped (an acknowledged log commit whose segment is missing) says so
/// with an error.
pub type Resolved = Result<Option<PathBuf>, WriteAheadError>;

/// Writes every part of every write-ahead file in `dir` again at its place in the file
/// `resolve` names for it, syncs those files, then removes the write-ahead files (see the module
/// doc).
pub fn replay(
    storage: &dyn Storage,
    dir: &Path,
    mut resolve: impl FnMut(&PartPlace) -> Resolved,
) -> Result<Replayed, WriteAheadError> {
    let files = list_files(storage, dir)?;
    let mut replayed = Replayed {
        files: files.len(),
        last_sequence: files.last().map_or(0, |&(sequence, _)| sequence),
        ..Replayed::default()
    };
    type Target = Option<(PathBuf, Arc<dyn StorageFile>)>;
    let mut targets: BTreeMap<(PartitionId, u64), Target> = BTreeMap::new();
    for (_, path) in &files {
        let file = storage
            .open(path, OpenMode::Read)
            .map_err(|e| WriteAheadError::io(path, e))?;
        for part in read_file(&*file, path)? {
            let key = (part.place.partition, part.place.file_tag);
            let target = match targets.entry(key) {
                Entry::Occupied(known) => known.into_mut(),
                Entry::Vacant(unknown) => {
                    let target = match resolve(&part.place)? {
                        None => None,
                        Some(target_path) => {
                            let target = storage
                                .open(&target_path, OpenMode::ReadWrite)
                                .map_err(|e| WriteAheadError::io(&target_path, e))?;
                            Some((target_path, target))
                        }
                    };
                    unknown.insert(target)
                }
            };
            match target {
                None => replayed.skipped += 1,
                Some((target_path, target)) => {
                    target
                        .write_all_at(&part.bytes, part.place.position)
                        .map_err(|e| WriteAheadError::io(&*target_path, e))?;
                    replayed.parts += 1;
                }
            }
        }
    }
    for (target_path, target) in targets.values().flatten() {
        target
            .sync_data()
            .map_err(|e| WriteAheadError::io(target_path, e))?;
    }
    for (_, path) in &files {
        storage
            .remove_file(path)
            .map_err(|e| WriteAheadError::io(path, e))?;
    }
    if !files.is_empty() {
        storage
            .sync_dir(dir)
            .map_err(|e| WriteAheadError::io(dir, e))?;
    }
    Ok(replayed)
}

/// Creates write-ahead file `sequence` in `dir` (created if need be): header written and synced,
/// directory synced, so an entry written to it is durable with one sync of the file.
pub fn create_file(
    storage: &dyn Storage,
    dir: &Path,
    sequence: u64,
) -> Result<(PathBuf, Arc<dyn StorageFile>), WriteAheadError> {
    let io = |path: &Path, e| WriteAheadError::io(path, e);
    if !storage.exists(dir).map_err(|e| io(dir, e))? {
        // Two committers may get here at once: whichever creates it, it exists.
        match storage.create_dir(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(io(dir, e)),
            _ => {}
        }
        let parent = dir.parent().unwrap_or(dir);
        storage.sync_dir(parent).map_err(|e| io(parent, e))?;
    }
    let path = dir.join(file_name(sequence));
    let file = storage
        .open(&path, OpenMode::CreateTruncate)
        .map_err(|e| io(&path, e))?;
    file.write_all_at(&file_header(sequence), 0)
        .and_then(|()| file.sync_data())
        .map_err(|e| io(&path, e))?;
    storage.sync_dir(dir).map_err(|e| io(dir, e))?;
    Ok((path, file))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(round: u64, parts: &[(PartitionId, &[u8])]) -> Vec<u8> {
        let mut builder = EntryBuilder::default();
        builder.start(round);
        for (i, &(partition, bytes)) in parts.iter().enumerate() {
            let place = PartPlace {
                partition,
                file_tag: 0,
                position: 24 + i as u64,
                base_offset: round,
                end_offset: 0,
            };
            builder.part(place, |buffer| {
                buffer.extend_from_slice(bytes);
                ((), round + 1)
            });
        }
        builder.finish().to_vec()
    }

    fn file_of(entries: &[Vec<u8>]) -> Vec<u8> {
        let mut bytes = file_header(1).to_vec();
        for entry in entries {
            bytes.extend_from_slice(entry);
        }
        bytes
    }

    fn parse(bytes: &[u8]) -> Vec<Part> {
        parse_entries(bytes)
    }

    #[test]
    fn entries_read_back_as_written() {
        let bytes = file_of(&[
            entry(1, &[(0, b"abc"), (5, b"")]),
            entry(2, &[(7, b"xyz!")]),
        ]);
        let parts = parse(&bytes);
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0].place.partition, 0);
        assert_eq!(parts[0].bytes, b"abc");
        assert_eq!(parts[0].place.end_offset, 2);
        assert_eq!(parts[1].place.partition, 5);
        assert_eq!(parts[1].place.position, 25);
        assert_eq!(parts[2].bytes, b"xyz!");
        assert_eq!(parts[2].place.base_offset, 2);
    }

    #[test]
    fn a_torn_or_damaged_entry_ends_the_file() {
        let first = entry(1, &[(0, b"abc")]);
        let second = entry(2, &[(1, b"def")]);
        let whole = file_of(&[first.clone(), second.clone()]);
        for cut in 1..second.len() {
            let torn = &whole[..whole.len() - cut];
            assert_eq!(parse(torn).len(), 1, "cut {cut} bytes off the last entry");
        }
        let mut damaged = whole.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        assert_eq!(parse(&damaged).len(), 1);
    }

    #[test]
    fn a_stale_entry_after_a_cut_is_not_replayed() {
        let bytes = file_of(&[entry(5, &[(0, b"new")]), entry(3, &[(0, b"old")])]);
        let parts = parse(&bytes);
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].bytes, b"new");
    }

    #[test]
    fn dropped_parts_leave_a_well_formed_entry() {
        let mut builder = EntryBuilder::default();
        builder.start(9);
        for partition in 0..3 {
            let place = PartPlace {
                partition,
                file_tag: 0,
                position: 24,
                base_offset: 0,
                end_offset: 0,
            };
            builder.part(place, |buffer| {
                buffer.extend_from_slice(b"commit");
                ((), 1)
            });
        }
        builder.truncate_parts(1);
        let entry = builder.finish().to_vec();
        let parts = parse(&file_of(&[entry]));
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].place.partition, 0);
    }

    #[test]
    fn file_names_round_trip() {
        assert_eq!(parse_file_name(&file_name(42)), Some(42));
        assert_eq!(parse_file_name("00000000000000000042.seg"), None);
        assert_eq!(parse_file_name("42.wal"), None);
    }
}
