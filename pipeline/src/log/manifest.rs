//! The log directory's manifest: what is fixed when the directory is created.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::LogError;
use super::partitioner::PARTITIONER_NAME;
use crate::support::storage::{self, Storage};

pub const MANIFEST_FILE_NAME: &str = "manifest.json";
pub const MANIFEST_FORMAT_VERSION: u32 = 1;
/// More partitions than this would mean thousands of writer threads and open files.
pub const PARTITION_COUNT_MAX: u32 = 1024;

/// `manifest.json` in a log directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u32,
    pub partition_count: u32,
    /// How keys map to partitions; see `Partitioner`.
    pub partitioner: String,
}

impl Manifest {
    pub fn new(partition_count: u32) -> Self {
        Self {
            format_version: MANIFEST_FORMAT_VERSION,
            partition_count,
            partitioner: PARTITIONER_NAME.to_owned(),
        }
    }

    /// Reads the manifest of `dir`, or `None` if the directory has none yet.
    pub fn read(storage: &dyn Storage, dir: &Path) -> Result<Option<Self>, LogError> {
        let path = dir.join(MANIFEST_FILE_NAME);
        let text = match storage::read_file(storage, &path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(LogError::io(path, e)),
        };
        let invalid = |reason: String| LogError::InvalidDirectory {
            path: path.clone(),
            reason,
        };
        let manifest: Manifest = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        if manifest.format_version != MANIFEST_FORMAT_VERSION {
            return Err(invalid(format!(
                "manifest format version {} is not known to this build",
                manifest.format_version
            )));
        }
        if manifest.partitioner != PARTITIONER_NAME {
            return Err(invalid(format!(
                "unknown partitioner {:?}",
                manifest.partitioner
            )));
        }
        if !(1..=PARTITION_COUNT_MAX).contains(&manifest.partition_count) {
            return Err(invalid(format!(
                "partition count {} out of range",
                manifest.partition_count
            )));
        }
        Ok(Some(manifest))
    }

    /// Writes the manifest atomically: a synced temporary file renamed into place.
    pub fn write(&self, storage: &dyn Storage, dir: &Path) -> Result<(), LogError> {
        let path = dir.join(MANIFEST_FILE_NAME);
        let text = serde_json::to_string_pretty(self).expect("a manifest always serializes");
        storage::write_file_atomically(storage, &path, text.as_bytes())
            .map_err(|e| LogError::io(&path, e))
    }
}
