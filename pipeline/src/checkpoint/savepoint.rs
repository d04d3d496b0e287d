//! Savepoints: one consistent, portable file holding every partition's checkpoint.
//!
//! ```text
//! magic "TALLYSVP" (8) | format version u32 = 1 | body_len u64 | body | crc32c(body) u32
//! body = encoded Savepoint { created_at_ms, partition_count, partitions: [PartitionSavepoint] }
//! ```
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
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::store::{CheckpointStore, PartitionSavepoint};
use super::{CHECKPOINT_FORMAT_VERSION, CheckpointError};
use crate::clock::UnixMillis;
use crate::codec;
use crate::log::Offset;

const SAVEPOINT_MAGIC: [u8; 8] = *b"TALLYSVP";
const HEADER_BYTES: usize = 20;

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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Savepoint {
    pub created_at_ms: UnixMillis,
    pub partition_count: u32,
    /// One entry per partition; `None` for a partition that had no checkpoint.
    pub partitions: Vec<Option<PartitionSavepoint>>,
}

impl Savepoint {
    /// Each partition's offset, 0 where it had no checkpoint.
    pub fn offsets(&self) -> Vec<Offset> {
        self.partitions
            .iter()
            .map(|p| p.as_ref().map_or(0, |p| p.meta.scalars.next_offset))
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
    let partitions = (0..store.partition_count())
        .map(|partition| store.export(partition))
        .collect::<Result<Vec<_>, _>>()?;
    let savepoint = Savepoint {
        created_at_ms: now_ms,
        partition_count: store.partition_count(),
        partitions,
    };
    let body = codec::encode(&savepoint);
    let mut bytes = Vec::with_capacity(HEADER_BYTES + body.len() + 4);
    bytes.extend_from_slice(&SAVEPOINT_MAGIC);
    bytes.extend_from_slice(&CHECKPOINT_FORMAT_VERSION.to_le_bytes());
    bytes.extend_from_slice(&(body.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&body);
    bytes.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    write_new(path, &bytes)?;
    Ok(savepoint)
}

/// Reads and checks a savepoint file.
pub fn read(path: &Path) -> Result<Savepoint, CheckpointError> {
    let invalid = |reason: String| CheckpointError::Savepoint {
        path: path.to_owned(),
        reason,
    };
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut file| file.read_to_end(&mut bytes))
        .map_err(|e| CheckpointError::io(path, e))?;
    if bytes.len() < HEADER_BYTES + 4 || bytes[0..8] != SAVEPOINT_MAGIC {
        return Err(invalid("not a tally savepoint".into()));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != CHECKPOINT_FORMAT_VERSION {
        return Err(invalid(format!(
            "format version {version} is not known to this build"
        )));
    }
    let body_len = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes")) as usize;
    if bytes.len() != HEADER_BYTES + body_len + 4 {
        return Err(invalid("file is truncated or has trailing bytes".into()));
    }
    let body = &bytes[HEADER_BYTES..HEADER_BYTES + body_len];
    let stored_crc = u32::from_le_bytes(
        bytes[HEADER_BYTES + body_len..]
            .try_into()
            .expect("4 bytes"),
    );
    if crc32c::crc32c(body) != stored_crc {
        return Err(invalid("checksum mismatch".into()));
    }
    codec::decode(body).map_err(|e| invalid(e.to_string()))
}

/// Replaces the store's state with the savepoint's.
pub fn restore(store: &CheckpointStore, savepoint: &Savepoint) -> Result<(), CheckpointError> {
    assert_eq!(
        savepoint.partition_count,
        store.partition_count(),
        "caller checks the partition count"
    );
    for (partition, exported) in savepoint.partitions.iter().enumerate() {
        match exported {
            Some(exported) => store.install(exported)?,
            None => store.reset(partition as u32)?,
        }
    }
    Ok(())
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
/// unless something has it; the temporary file is removed on every failure (dropping it does).
fn write_new(path: &Path, bytes: &[u8]) -> Result<(), SavepointError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| SavepointError::Io { path, source }
    };
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let mut temporary = tempfile::Builder::new()
        .prefix(TEMPORARY_PREFIX)
        .suffix(TEMPORARY_SUFFIX)
        .tempfile_in(parent)
        .map_err(io(parent))?;
    temporary
        .write_all(bytes)
        .and_then(|()| temporary.as_file().sync_all())
        .map_err(io(temporary.path()))?;
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
