//! Savepoints: one consistent, portable file holding every partition's checkpoint.
//!
//! ```text
//! format 2 (written):
//!   magic "TALLYSVP" (8) | format version u32 = 2 | partition_count u32 | created_at_ms i64
//!   per partition, in order: partition u32 | section_len u64 | section
//!       section = a checkpoint journal generation (see `journal`): header, the snapshot of the
//!                 partition's state, its `Snapshot` frame; empty without a checkpoint
//!   end magic "TALLYSVE" (8)
//! format 1 (read):
//!   magic "TALLYSVP" (8) | format version u32 = 1 | body_len u64 | body | crc32c(body) u32
//!   body = encoded { created_at_ms, partition_count, partitions: [PartitionSavepoint] }
//! ```
//!
//! A savepoint is written as a stream, a partition at a time: each partition's state is rebuilt
//! from its journal up to its last committed checkpoint, checked against that checkpoint's
//! digest, and streamed out as a snapshot, so memory holds one partition's state, never the
//! whole savepoint. Every frame of a section carries its CRC32C, and restoring a section loads it
//! whole and checks its digest before it replaces the partition's journal (one rename).
//!
//! Restoring a savepoint replaces the state; processing then continues from the savepoint's
//! offsets, so every record after them is applied again, exactly once.
//!
//! A savepoint is written to a temporary file beside its final name, synced, and moved to that
//! name only if nothing is there (`renameat2(RENAME_NOREPLACE)`, or a hard link where the file
//! system lacks it): an existing file is never replaced, and a failed write leaves nothing
//! behind. A running server writes savepoints only by [name](check_name) into
//! [`SAVEPOINTS_DIR`] under its data directory, never to a path its client chose.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::CheckpointError;
use super::store::{CheckpointMeta, CheckpointStore, PartitionSavepoint};
use crate::log::Offset;
use crate::support::clock::UnixMillis;
use crate::support::codec;
use crate::support::storage::{OpenMode, OsStorage, Storage, StorageFile};

const SAVEPOINT_MAGIC: [u8; 8] = *b"TALLYSVP";
const END_MAGIC: [u8; 8] = *b"TALLYSVE";
const FORMAT_1: u32 = 1;
/// The savepoint format this build writes.
pub const SAVEPOINT_FORMAT_VERSION: u32 = 2;
const HEADER_BYTES_V1: usize = 20;
const HEADER_BYTES: u64 = 24;
const SECTION_HEADER_BYTES: u64 = 12;

/// The directory under the data directory that named savepoints are written to.
pub const SAVEPOINTS_DIR: &str = "savepoints";
/// The longest savepoint name: room for a date and a label, well under the 255 bytes a file
/// name may have on common file systems.
pub const SAVEPOINT_NAME_CHARS_MAX: usize = 128;
/// Temporary files start with a dot, which no savepoint name may: they never meet.
const TEMPORARY_PREFIX: &str = ".savepoint-";
const TEMPORARY_SUFFIX: &str = ".partial";

/// Why a savepoint was not written.
#[derive(Debug, thiserror::Error)]
pub enum SavepointError {
    #[error("savepoint name {name:?} is not valid: {reason}")]
    InvalidName { name: String, reason: String },
    #[error("{} already exists; a savepoint never replaces a file", path.display())]
    Exists { path: PathBuf },
    #[error("cannot write the savepoint {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A checkpoint could not be read or failed its check.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
}

/// A savepoint file as read: what it holds, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Savepoint {
    pub created_at_ms: UnixMillis,
    pub partition_count: u32,
    /// Each partition's checkpoint; `None` for a partition that had none.
    pub checkpoints: Vec<Option<CheckpointMeta>>,
    contents: Contents,
}

/// Where a savepoint's partitions are.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Contents {
    /// Format 1: read whole.
    Whole(Vec<Option<PartitionSavepoint>>),
    /// Format 2: each partition's section of the file, `(start, length)`.
    Sections {
        path: PathBuf,
        sections: Vec<Option<(u64, u64)>>,
    },
}

/// The body of a format 1 savepoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SavepointV1 {
    created_at_ms: UnixMillis,
    partition_count: u32,
    partitions: Vec<Option<PartitionSavepoint>>,
}

impl Savepoint {
    /// Each partition's offset, 0 where it had no checkpoint.
    pub fn offsets(&self) -> Vec<Offset> {
        self.checkpoints
            .iter()
            .map(|c| c.as_ref().map_or(0, |meta| meta.scalars.next_offset))
            .collect()
    }
}

/// A savepoint name: 1 to [`SAVEPOINT_NAME_CHARS_MAX`] characters of `[A-Za-z0-9._-]`, not
/// starting with a dot — a file name, never a path (no `/`, no `..`, nothing hidden).
pub fn check_name(name: &str) -> Result<&str, SavepointError> {
    let invalid = |reason: String| SavepointError::InvalidName {
        name: name.chars().take(SAVEPOINT_NAME_CHARS_MAX + 1).collect(),
        reason,
    };
    let chars = name.chars().count();
    if chars == 0 || chars > SAVEPOINT_NAME_CHARS_MAX {
        return Err(invalid(format!(
            "must be 1 to {SAVEPOINT_NAME_CHARS_MAX} characters"
        )));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(invalid(format!(
            "may hold only [A-Za-z0-9._-], not {bad:?}"
        )));
    }
    if name.starts_with('.') {
        return Err(invalid("must not start with a dot".into()));
    }
    Ok(name)
}

/// Where the savepoint `name` lives in a data directory.
pub fn named_path(data_dir: &Path, name: &str) -> Result<PathBuf, SavepointError> {
    Ok(data_dir.join(SAVEPOINTS_DIR).join(check_name(name)?))
}

/// Writes the savepoint `name` into the data directory's [`SAVEPOINTS_DIR`] (created if
/// missing); its path with it.
pub fn create_named(
    store: &CheckpointStore,
    data_dir: &Path,
    name: &str,
    now_ms: UnixMillis,
) -> Result<(Savepoint, PathBuf), SavepointError> {
    let path = named_path(data_dir, name)?;
    let dir = data_dir.join(SAVEPOINTS_DIR);
    std::fs::create_dir_all(&dir).map_err(|source| SavepointError::Io {
        path: dir.clone(),
        source,
    })?;
    let savepoint = create(store, &path, now_ms)?;
    Ok((savepoint, path))
}

/// Reads every partition's checkpoint (each checked against its digest) into a new savepoint
/// file at `path`, as the module doc says: never over an existing file.
pub fn create(
    store: &CheckpointStore,
    path: &Path,
    now_ms: UnixMillis,
) -> Result<Savepoint, SavepointError> {
    refuse_existing(path)?;
    let partition_count = store.partition_count();
    let mut checkpoints = Vec::new();
    let mut sections = Vec::new();
    write_new_streamed(path, |file, temporary| {
        let io = |source| SavepointError::Io {
            path: temporary.to_owned(),
            source,
        };
        let mut header = Vec::with_capacity(HEADER_BYTES as usize);
        header.extend_from_slice(&SAVEPOINT_MAGIC);
        header.extend_from_slice(&SAVEPOINT_FORMAT_VERSION.to_le_bytes());
        header.extend_from_slice(&partition_count.to_le_bytes());
        header.extend_from_slice(&now_ms.to_le_bytes());
        file.write_all_at(&header, 0).map_err(io)?;
        let mut position = HEADER_BYTES;
        for partition in 0..partition_count {
            let start = position + SECTION_HEADER_BYTES;
            let written = store.write_snapshot_section(partition, temporary, file, start)?;
            let (meta, end) = match written {
                Some((meta, end)) => (Some(meta), end),
                None => (None, start),
            };
            let mut section_header = partition.to_le_bytes().to_vec();
            section_header.extend_from_slice(&(end - start).to_le_bytes());
            file.write_all_at(&section_header, position).map_err(io)?;
            checkpoints.push(meta);
            sections.push(meta.map(|_| (start, end - start)));
            position = end;
        }
        file.write_all_at(&END_MAGIC, position).map_err(io)
    })?;
    Ok(Savepoint {
        created_at_ms: now_ms,
        partition_count,
        checkpoints,
        contents: Contents::Sections {
            path: path.to_owned(),
            sections,
        },
    })
}

/// Reads and checks a savepoint file's layout and each partition's checkpoint (the sections
/// themselves are checked whole when they are restored).
pub fn read(path: &Path) -> Result<Savepoint, CheckpointError> {
    let invalid = |reason: String| CheckpointError::Savepoint {
        path: path.to_owned(),
        reason,
    };
    let io = |e| CheckpointError::io(path, e);
    let file = OsStorage.open(path, OpenMode::Read).map_err(io)?;
    let file_len = file.len().map_err(io)?;
    let mut header = [0u8; HEADER_BYTES as usize];
    if file_len < HEADER_BYTES {
        return Err(invalid("not a tally savepoint".into()));
    }
    file.read_exact_at(&mut header, 0).map_err(io)?;
    if header[0..8] != SAVEPOINT_MAGIC {
        return Err(invalid("not a tally savepoint".into()));
    }
    match u32::from_le_bytes(header[8..12].try_into().expect("4 bytes")) {
        FORMAT_1 => read_format_1(path),
        SAVEPOINT_FORMAT_VERSION => read_sections(path, &*file, file_len, &header),
        version => Err(invalid(format!(
            "format version {version} is not known to this build"
        ))),
    }
}

/// The sections of a format 2 savepoint, walked by their headers.
fn read_sections(
    path: &Path,
    file: &dyn StorageFile,
    file_len: u64,
    header: &[u8],
) -> Result<Savepoint, CheckpointError> {
    let invalid = |reason: String| CheckpointError::Savepoint {
        path: path.to_owned(),
        reason,
    };
    let io = |e| CheckpointError::io(path, e);
    let partition_count = u32::from_le_bytes(header[12..16].try_into().expect("4 bytes"));
    let created_at_ms = i64::from_le_bytes(header[16..24].try_into().expect("8 bytes"));
    let mut position = HEADER_BYTES;
    let mut checkpoints = Vec::new();
    let mut sections = Vec::new();
    for partition in 0..partition_count {
        if position + SECTION_HEADER_BYTES > file_len {
            return Err(invalid("file is truncated".into()));
        }
        let mut section_header = [0u8; SECTION_HEADER_BYTES as usize];
        file.read_exact_at(&mut section_header, position)
            .map_err(io)?;
        let owner = u32::from_le_bytes(section_header[0..4].try_into().expect("4 bytes"));
        let len = u64::from_le_bytes(section_header[4..12].try_into().expect("8 bytes"));
        let start = position + SECTION_HEADER_BYTES;
        if owner != partition || start.saturating_add(len) > file_len {
            return Err(invalid(format!(
                "the section of partition {partition} is damaged or truncated"
            )));
        }
        let meta = if len == 0 {
            None
        } else {
            let meta = super::journal::Journal::last_meta_between(file, start, start + len)
                .map_err(io)?
                .ok_or_else(|| invalid(format!("partition {partition} has no whole checkpoint")))?;
            Some(meta)
        };
        checkpoints.push(meta);
        sections.push(meta.map(|_| (start, len)));
        position = start + len;
    }
    let mut end = [0u8; 8];
    if position + 8 != file_len
        || file.read_exact_at(&mut end, position).is_err()
        || end != END_MAGIC
    {
        return Err(invalid("file is truncated or has trailing bytes".into()));
    }
    Ok(Savepoint {
        created_at_ms,
        partition_count,
        checkpoints,
        contents: Contents::Sections {
            path: path.to_owned(),
            sections,
        },
    })
}

/// A format 1 savepoint, read whole.
fn read_format_1(path: &Path) -> Result<Savepoint, CheckpointError> {
    let invalid = |reason: String| CheckpointError::Savepoint {
        path: path.to_owned(),
        reason,
    };
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut file| file.read_to_end(&mut bytes))
        .map_err(|e| CheckpointError::io(path, e))?;
    if bytes.len() < HEADER_BYTES_V1 + 4 {
        return Err(invalid("not a tally savepoint".into()));
    }
    let body_len = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes")) as usize;
    if bytes.len() != HEADER_BYTES_V1 + body_len + 4 {
        return Err(invalid("file is truncated or has trailing bytes".into()));
    }
    let body = &bytes[HEADER_BYTES_V1..HEADER_BYTES_V1 + body_len];
    let stored_crc = u32::from_le_bytes(
        bytes[HEADER_BYTES_V1 + body_len..]
            .try_into()
            .expect("4 bytes"),
    );
    if crc32c::crc32c(body) != stored_crc {
        return Err(invalid("checksum mismatch".into()));
    }
    let v1: SavepointV1 = codec::decode(body).map_err(|e| invalid(e.to_string()))?;
    Ok(Savepoint {
        created_at_ms: v1.created_at_ms,
        partition_count: v1.partition_count,
        checkpoints: v1
            .partitions
            .iter()
            .map(|p| p.as_ref().map(|p| p.meta))
            .collect(),
        contents: Contents::Whole(v1.partitions),
    })
}

/// Replaces the store's state with the savepoint's.
pub fn restore(store: &CheckpointStore, savepoint: &Savepoint) -> Result<(), CheckpointError> {
    assert_eq!(
        savepoint.partition_count,
        store.partition_count(),
        "caller checks the partition count"
    );
    match &savepoint.contents {
        Contents::Whole(partitions) => {
            for (partition, exported) in partitions.iter().enumerate() {
                match exported {
                    Some(exported) => store.install(exported)?,
                    None => store.reset(partition as u32)?,
                }
            }
        }
        Contents::Sections { path, sections } => {
            for (partition, section) in sections.iter().enumerate() {
                match section {
                    Some((start, len)) => {
                        store.install_section(partition as u32, path, *start, *len)?
                    }
                    None => store.reset(partition as u32)?,
                }
            }
        }
    }
    Ok(())
}

/// One partition's last committed checkpoint as the section a savepoint holds for it, in
/// memory, with its meta; `None` without a checkpoint. Safe while the partition runs. The
/// section goes through a scratch file in `scratch_dir` (removed on return).
pub fn export_partition(
    store: &CheckpointStore,
    partition: crate::log::PartitionId,
    scratch_dir: &Path,
) -> Result<Option<(CheckpointMeta, Vec<u8>)>, CheckpointError> {
    let scratch = scratch_file(scratch_dir)?;
    let path = scratch.path();
    let io = |e| CheckpointError::io(path, e);
    let file = OsStorage.open(path, OpenMode::ReadWrite).map_err(io)?;
    let Some((meta, end)) = store.write_snapshot_section(partition, path, &file, 0)? else {
        return Ok(None);
    };
    let mut bytes = vec![0u8; end as usize];
    file.read_exact_at(&mut bytes, 0).map_err(io)?;
    Ok(Some((meta, bytes)))
}

/// Replaces a partition's checkpoint with a section [`export_partition`] made (on this node or
/// another): loaded whole and checked against its digest before it replaces the journal.
pub fn install_partition(
    store: &CheckpointStore,
    partition: crate::log::PartitionId,
    section: &[u8],
    scratch_dir: &Path,
) -> Result<(), CheckpointError> {
    let scratch = scratch_file(scratch_dir)?;
    let path = scratch.path();
    let io = |e| CheckpointError::io(path, e);
    let file = OsStorage.open(path, OpenMode::ReadWrite).map_err(io)?;
    file.write_all_at(section, 0).map_err(io)?;
    drop(file);
    store.install_section(partition, path, 0, section.len() as u64)
}

fn scratch_file(dir: &Path) -> Result<tempfile::NamedTempFile, CheckpointError> {
    tempfile::Builder::new()
        .prefix(TEMPORARY_PREFIX)
        .suffix(TEMPORARY_SUFFIX)
        .tempfile_in(dir)
        .map_err(|e| CheckpointError::io(dir, e))
}

fn refuse_existing(path: &Path) -> Result<(), SavepointError> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => Err(SavepointError::Exists {
            path: path.to_owned(),
        }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(SavepointError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Writes `bytes` to a temporary file beside `path`, syncs it, and gives it the name `path`
/// unless something has it; the temporary file is removed on every failure.
#[cfg(test)]
fn write_new(path: &Path, bytes: &[u8]) -> Result<(), SavepointError> {
    write_new_streamed(path, |file, temporary| {
        file.write_all_at(bytes, 0)
            .map_err(|source| SavepointError::Io {
                path: temporary.to_owned(),
                source,
            })
    })
}

/// Has `fill` write a temporary file beside `path` (positioned writes), syncs it, and gives it
/// the name `path` unless something has it; the temporary file is removed on every failure
/// (dropping it does).
fn write_new_streamed(
    path: &Path,
    fill: impl FnOnce(&Arc<dyn StorageFile>, &Path) -> Result<(), SavepointError>,
) -> Result<(), SavepointError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| SavepointError::Io { path, source }
    };
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let temporary = tempfile::Builder::new()
        .prefix(TEMPORARY_PREFIX)
        .suffix(TEMPORARY_SUFFIX)
        .tempfile_in(parent)
        .map_err(io(parent))?;
    let file = OsStorage
        .open(temporary.path(), OpenMode::ReadWrite)
        .map_err(io(temporary.path()))?;
    fill(&file, temporary.path())?;
    file.sync_data().map_err(io(temporary.path()))?;
    drop(file);
    temporary.persist_noclobber(path).map_err(|error| {
        if error.error.kind() == std::io::ErrorKind::AlreadyExists {
            SavepointError::Exists {
                path: path.to_owned(),
            }
        } else {
            SavepointError::Io {
                path: path.to_owned(),
                source: error.error,
            }
        }
    })?;
    File::open(parent)
        .and_then(|dir| dir.sync_all())
        .map_err(io(parent))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path) -> CheckpointStore {
        CheckpointStore::open(&dir.join("state"), 2).unwrap().0
    }

    /// The names in `dir`, sorted.
    fn listing(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_name_is_a_file_name_never_a_path() {
        let longest = "a".repeat(SAVEPOINT_NAME_CHARS_MAX);
        for good in [
            "nightly",
            "2026-11-24T18.30_before-close",
            "a",
            "a..b",
            &longest,
        ] {
            assert_eq!(check_name(good).unwrap(), good);
        }
        let too_long = "a".repeat(SAVEPOINT_NAME_CHARS_MAX + 1);
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "/etc/passwd",
            ".hidden",
            "a b",
            "a\\b",
            "é",
            "a\0b",
            &too_long,
        ] {
            assert!(
                matches!(check_name(bad), Err(SavepointError::InvalidName { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_named_savepoint_lands_in_the_savepoints_directory_and_is_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let (written, path) = create_named(&store, dir.path(), "first", 7).unwrap();
        assert_eq!(path, dir.path().join(SAVEPOINTS_DIR).join("first"));
        assert_eq!(read(&path).unwrap(), written);
        let before = std::fs::read(&path).unwrap();

        let again = create_named(&store, dir.path(), "first", 8).unwrap_err();
        assert!(matches!(again, SavepointError::Exists { .. }), "{again}");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            before,
            "the first one is intact"
        );
        let escape = create_named(&store, dir.path(), "../state", 8).unwrap_err();
        assert!(
            matches!(escape, SavepointError::InvalidName { .. }),
            "{escape}"
        );
        assert_eq!(listing(&dir.path().join(SAVEPOINTS_DIR)), ["first"]);
    }

    #[test]
    fn a_failed_write_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let out = dir.path().join("out");
        // A directory where the file would go: renaming onto it fails.
        std::fs::create_dir(&out).unwrap();
        let error = create(&store, &out, 1).unwrap_err();
        assert!(matches!(error, SavepointError::Exists { .. }), "{error}");
        assert_eq!(listing(dir.path()), ["out", "state"]);

        // A file that appears between the check and the move: the move refuses, and the
        // temporary file is gone.
        let raced = dir.path().join("raced");
        std::fs::write(&raced, b"not ours").unwrap();
        let error = write_new(&raced, b"savepoint bytes").unwrap_err();
        assert!(matches!(error, SavepointError::Exists { .. }), "{error}");
        assert_eq!(std::fs::read(&raced).unwrap(), b"not ours");
        assert_eq!(listing(dir.path()), ["out", "raced", "state"]);

        // A directory that does not exist: nothing is created.
        let nowhere = dir.path().join("missing").join("savepoint");
        let error = create(&store, &nowhere, 1).unwrap_err();
        assert!(matches!(error, SavepointError::Io { .. }), "{error}");
        assert_eq!(listing(dir.path()), ["out", "raced", "state"]);
    }
}
