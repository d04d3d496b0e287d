//! Savepoints: one consistent, portable file holding every partition's checkpoint.
//!
//! ```text
//! magic "TALLYSVP" (8) | format version u32 = 1 | body_len u64 | body | crc32c(body) u32
//! body = encoded Savepoint { created_at_ms, partition_count, partitions: [PartitionSavepoint] }
//! ```
//!
//! Restoring a savepoint replaces the state; processing then continues from the savepoint's
//! offsets, so every record after them is applied again, exactly once.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::store::{CheckpointStore, PartitionSavepoint};
use super::{CHECKPOINT_FORMAT_VERSION, CheckpointError};
use crate::clock::UnixMillis;
use crate::codec;
use crate::log::Offset;

const SAVEPOINT_MAGIC: [u8; 8] = *b"TALLYSVP";
const HEADER_BYTES: usize = 20;

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

/// Reads every partition's checkpoint (each checked against its digest) into a savepoint file,
/// written to a temporary name, synced and renamed into place.
pub fn create(
    store: &CheckpointStore,
    path: &Path,
    now_ms: UnixMillis,
) -> Result<Savepoint, CheckpointError> {
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
    write_atomically(path, &bytes)?;
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

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    let temporary = path.with_extension("partial");
    let mut file = File::create(&temporary).map_err(|e| CheckpointError::io(&temporary, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| CheckpointError::io(&temporary, e))?;
    std::fs::rename(&temporary, path).map_err(|e| CheckpointError::io(path, e))?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        File::open(parent)
            .and_then(|dir| dir.sync_all())
            .map_err(|e| CheckpointError::io(parent, e))?;
    }
    Ok(())
}
