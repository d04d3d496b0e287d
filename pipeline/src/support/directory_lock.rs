//! The one-process-per-directory lock that the log and the checkpoint store both take.

use std::fs::{File, OpenOptions};
use std::path::Path;

use crate::support::storage::DirectoryLockError;

/// Takes the `LOCK` file of `dir` (flock, released when the returned file is dropped or the
/// process ends, however it ends).
pub fn lock_directory(dir: &Path) -> Result<File, DirectoryLockError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("LOCK"))
        .map_err(DirectoryLockError::Io)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(DirectoryLockError::Held),
        Err(std::fs::TryLockError::Error(e)) => Err(DirectoryLockError::Io(e)),
    }
}
