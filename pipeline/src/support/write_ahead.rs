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

/// The name a spare write-ahead file has until it is numbered: `<name>.spare`.
pub const SPARE_SUFFIX: &str = ".spare";

/// Where a spare is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SpareMaking {
    /// On a thread of its own, while the committer goes on.
    #[default]
    Background,
    /// On the committer's thread when it starts its next file, so that a simulated disk sees
    /// the same operations in the same order every run (crash simulations count them).
    Inline,
}

/// Bytes of zeros written per call while a spare is made.
const SPARE_FILL_CHUNK_BYTES: usize = 1024 * 1024;

/// A write-ahead file made ahead of need, on a thread of its own: zero-filled to its full size
/// and synced under a name replay does not read (`<name>.spare`), then numbered when the
/// committer starts its next file ([`SpareFile::install`]).
///
/// An entry appended to a file that grows changes the file's size (and on ext4 its block map),
/// so its `fdatasync` writes the inode as well as the entry's pages, one more request to the
/// disk per sync. In a file whose blocks were all written before, the sync writes the entry's
/// pages alone: measured on a virtual disk, about half the time and half the CPU per sync
/// (`docs/log-format.md`). PostgreSQL zero-fills its WAL segments ahead for the same reason.
/// What is written into a spare is exactly what would be written into a new file; the zeros
/// after the last entry end the file for replay as the end of a file does.
#[derive(Debug)]
pub struct SpareFile {
    storage: Arc<dyn Storage>,
    path: PathBuf,
    bytes: u64,
    making: SpareMaking,
    state: SpareState,
}

#[derive(Debug)]
enum SpareState {
    None,
    Making(std::thread::JoinHandle<Result<Arc<dyn StorageFile>, WriteAheadError>>),
    Ready(Arc<dyn StorageFile>),
    /// Making one failed (a full disk, say); not tried again until the committer's next file.
    Failed,
}

impl SpareFile {
    /// The spare `<name>.spare` of `dir`, `bytes` long once made. Nothing is made yet; a spare
    /// of that name left by an earlier process is removed.
    pub fn new(
        storage: Arc<dyn Storage>,
        dir: &Path,
        name: &str,
        bytes: u64,
        making: SpareMaking,
    ) -> Result<Self, WriteAheadError> {
        let path = dir.join(format!("{name}{SPARE_SUFFIX}"));
        if storage
            .exists(&path)
            .map_err(|e| WriteAheadError::io(&path, e))?
        {
            storage
                .remove_file(&path)
                .map_err(|e| WriteAheadError::io(&path, e))?;
        }
        Ok(Self {
            storage,
            path,
            bytes,
            making,
            state: SpareState::None,
        })
    }

    /// Starts making the spare, unless one is made, being made, or failed since the last
    /// [`take`](Self::take).
    pub fn start_making(&mut self) {
        if !matches!(self.state, SpareState::None) {
            return;
        }
        if self.making == SpareMaking::Inline {
            return; // made by `take`
        }
        let (storage, path, bytes) = (Arc::clone(&self.storage), self.path.clone(), self.bytes);
        let made = std::thread::Builder::new()
            .name("tally-wal-spare".into())
            .spawn(move || make_spare(&*storage, &path, bytes));
        self.state = match made {
            Ok(thread) => SpareState::Making(thread),
            Err(error) => {
                tracing::warn!(%error, "cannot start making a spare write-ahead file");
                SpareState::Failed
            }
        };
    }

    /// Whether a spare is made and waiting (a thread that finished is joined here).
    pub fn is_ready(&mut self) -> bool {
        if let SpareState::Making(thread) = &self.state
            && thread.is_finished()
        {
            let SpareState::Making(thread) = std::mem::replace(&mut self.state, SpareState::None)
            else {
                unreachable!("matched above");
            };
            self.state = match thread.join() {
                Ok(Ok(file)) => SpareState::Ready(file),
                Ok(Err(error)) => {
                    tracing::warn!(%error, "a spare write-ahead file could not be made; the next one grows as it is written");
                    SpareState::Failed
                }
                Err(_) => SpareState::Failed,
            };
        }
        matches!(self.state, SpareState::Ready(_))
    }

    /// The spare if it is made, to [`install`](Self::install); otherwise `None` (one being made
    /// goes on being made). Either way a failed one may be tried again after this.
    pub fn take(&mut self) -> Option<Arc<dyn StorageFile>> {
        if self.making == SpareMaking::Inline && matches!(self.state, SpareState::None) {
            return match make_spare(&*self.storage, &self.path, self.bytes) {
                Ok(file) => Some(file),
                Err(error) => {
                    tracing::warn!(%error, "a spare write-ahead file could not be made; the next one grows as it is written");
                    None
                }
            };
        }
        self.is_ready();
        match std::mem::replace(&mut self.state, SpareState::None) {
            SpareState::Ready(file) => Some(file),
            making @ SpareState::Making(_) => {
                self.state = making;
                None
            }
            SpareState::None | SpareState::Failed => None,
        }
    }

    /// Numbers a spare from [`take`](Self::take) as write-ahead file `sequence` of `dir`:
    /// renamed, its header written and synced, the directory synced, so an entry written to it
    /// is durable with one sync of the file, as with [`create_file`].
    pub fn install(
        &self,
        file: Arc<dyn StorageFile>,
        dir: &Path,
        sequence: u64,
    ) -> Result<(PathBuf, Arc<dyn StorageFile>), WriteAheadError> {
        let path = dir.join(file_name(sequence));
        self.storage
            .rename(&self.path, &path)
            .map_err(|e| WriteAheadError::io(&self.path, e))?;
        // Until the header is synced the file reads as one whose header never reached the disk:
        // replay finds nothing in it.
        file.write_all_at(&file_header(sequence), 0)
            .and_then(|()| file.sync_data())
            .map_err(|e| WriteAheadError::io(&path, e))?;
        self.storage
            .sync_dir(dir)
            .map_err(|e| WriteAheadError::io(dir, e))?;
        Ok((path, file))
    }

    /// Waits for a spare being made; whether one is made and waiting.
    pub fn wait_until_made(&mut self) -> bool {
        if let SpareState::Making(thread) = &self.state {
            while !thread.is_finished() {
                std::thread::yield_now();
            }
        }
        self.is_ready()
    }

    /// Waits for a spare being made and removes it: the committer is closing.
    pub fn discard(&mut self) {
        if let SpareState::Making(thread) = std::mem::replace(&mut self.state, SpareState::None) {
            let _ = thread.join();
        }
        match self.storage.exists(&self.path) {
            Ok(true) => {
                if let Err(error) = self.storage.remove_file(&self.path) {
                    tracing::warn!(%error, path = %self.path.display(), "cannot remove a spare write-ahead file");
                }
            }
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(%error, path = %self.path.display(), "cannot look for a spare write-ahead file");
            }
        }
    }
}

/// Writes `bytes` zeros to a new file at `path` and syncs it; a file that could not be made
/// whole is removed again.
fn make_spare(
    storage: &dyn Storage,
    path: &Path,
    bytes: u64,
) -> Result<Arc<dyn StorageFile>, WriteAheadError> {
    let file = storage
        .open(path, OpenMode::CreateTruncate)
        .map_err(|e| WriteAheadError::io(path, e))?;
    let zeros = vec![0u8; SPARE_FILL_CHUNK_BYTES];
    let mut position = 0;
    let mut filled = Ok(());
    while position < bytes && filled.is_ok() {
        let len = (bytes - position).min(SPARE_FILL_CHUNK_BYTES as u64) as usize;
        filled = file.write_all_at(&zeros[..len], position);
        position += len as u64;
    }
    match filled.and_then(|()| file.sync_data()) {
        Ok(()) => Ok(file),
        Err(error) => {
            drop(file);
            let _ = storage.remove_file(path);
            Err(WriteAheadError::io(path, error))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::support::storage::simulated::SimulatedDisk;

    #[test]
    fn a_spare_is_made_whole_numbered_and_read_back_like_a_new_file() {
        let disk = SimulatedDisk::new();
        let storage = disk.storage();
        let dir = Path::new("/data/write-ahead");
        storage.create_dir(Path::new("/data")).unwrap();
        storage.create_dir(dir).unwrap();
        storage.sync_dir(Path::new("/")).unwrap();
        storage.sync_dir(Path::new("/data")).unwrap();
        let mut spare = SpareFile::new(
            Arc::clone(&storage),
            dir,
            "log",
            64 * 1024,
            SpareMaking::Background,
        )
        .unwrap();
        assert!(
            spare.take().is_none(),
            "nothing is made before it is asked for"
        );
        spare.start_making();
        assert!(spare.wait_until_made(), "the spare is made");
        let made = spare.take().expect("made");
        assert_eq!(
            made.len().unwrap(),
            64 * 1024,
            "zero-filled at its full size"
        );
        assert!(storage.exists(&dir.join("log.spare")).unwrap());
        // Replay does not read a spare: it is not a numbered file.
        assert!(list_files(&*storage, dir).unwrap().is_empty());

        let (path, file) = spare.install(made, dir, 7).unwrap();
        assert_eq!(path, dir.join(file_name(7)));
        assert!(!storage.exists(&dir.join("log.spare")).unwrap());
        let first = entry(1, &[(0, b"first")]);
        let second = entry(2, &[(3, b"second")]);
        let header = WRITE_AHEAD_HEADER_BYTES;
        file.write_all_at(&first, header).unwrap();
        file.write_all_at(&second, header + first.len() as u64)
            .unwrap();
        file.sync_data().unwrap();
        // A crash keeps what was synced: the numbered name, the header and both entries; the
        // zeros after them end the file.
        let after = disk.crash(1);
        let storage = after.storage();
        let files = list_files(&*storage, dir).unwrap();
        assert_eq!(files, vec![(7, dir.join(file_name(7)))]);
        let reopened = storage.open(&files[0].1, OpenMode::Read).unwrap();
        let parts = read_file(&*reopened, &files[0].1).unwrap();
        let bytes: Vec<&[u8]> = parts.iter().map(|part| part.bytes.as_slice()).collect();
        assert_eq!(bytes, vec![&b"first"[..], &b"second"[..]]);
    }

    #[test]
    fn a_spare_numbered_but_without_its_header_holds_nothing_and_a_leftover_spare_is_removed() {
        let disk = SimulatedDisk::new();
        let storage = disk.storage();
        let dir = Path::new("/wal");
        storage.create_dir(dir).unwrap();
        let mut spare =
            SpareFile::new(Arc::clone(&storage), dir, "w", 4096, SpareMaking::Inline).unwrap();
        let made = spare.take().expect("made inline");
        // Renamed and the rename synced, but the header never written: a crash there.
        storage
            .rename(&dir.join("w.spare"), &dir.join(file_name(3)))
            .unwrap();
        storage.sync_dir(dir).unwrap();
        drop(made);
        let file = storage
            .open(&dir.join(file_name(3)), OpenMode::Read)
            .unwrap();
        assert!(
            read_file(&*file, &dir.join(file_name(3)))
                .unwrap()
                .is_empty()
        );

        // A spare left by an earlier process is removed when the next committer starts.
        let mut left =
            SpareFile::new(Arc::clone(&storage), dir, "w", 4096, SpareMaking::Inline).unwrap();
        let _ = left.take().expect("made inline");
        assert!(storage.exists(&dir.join("w.spare")).unwrap());
        let _next =
            SpareFile::new(Arc::clone(&storage), dir, "w", 4096, SpareMaking::Inline).unwrap();
        assert!(!storage.exists(&dir.join("w.spare")).unwrap());
    }

    #[test]
    fn a_spare_that_cannot_be_made_whole_is_removed_and_none_is_given() {
        let disk = SimulatedDisk::new();
        let storage = disk.storage();
        let dir = Path::new("/wal");
        storage.create_dir(dir).unwrap();
        disk.fail_next_syncs(1);
        let mut spare = SpareFile::new(
            Arc::clone(&storage),
            dir,
            "w",
            8192,
            SpareMaking::Background,
        )
        .unwrap();
        spare.start_making();
        assert!(!spare.wait_until_made());
        assert!(spare.take().is_none());
        assert!(!storage.exists(&dir.join("w.spare")).unwrap());
    }

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
