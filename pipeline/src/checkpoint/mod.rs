//! Checkpoints: each partition's state and its next log offset, committed together, atomically.
//!
//! # Layout (`<data-dir>/state/`)
//! ```text
//! LOCK                            held (flock) by the one process using the state
//! checkpoints-NNN.journal         partition NNN's checkpoint journal (see `journal`)
//! notifications-NNN.cursor        how far donor notifications of partition NNN were delivered
//! write-ahead/<sequence>.wal      commit rounds not yet synced in their journals (see `rounds`)
//! ```
//!
//! # The atomic step
//! A checkpoint is one frame appended to the partition's journal and synced: the next offset,
//! counters, watermark and state digest together with everything that changed since the last
//! checkpoint (new index entries, changed totals and buckets, new conflicts). The frame's
//! checksum makes it all or nothing, so after a crash a partition has either all of a checkpoint
//! or none of it, and resumes from the offset that matches its state.
//!
//! # The state is derived
//! The log is the record of truth. Every load replays the journal, recomputes the state's digest
//! from what it read and compares it with the digest the last checkpoint recorded. A torn last
//! frame is cut off (that checkpoint never completed); damage further back cuts the journal at
//! the damage, and a digest that does not match resets the partition: either way the state is
//! rebuilt from the log from the last good checkpoint (or from offset 0), and the log output
//! says so. Nothing is served from state that failed its check.
//!
//! # Why not sled
//! The checkpoints lived in sled 0.34.7 first. Under HTTP load with the CPU saturated it
//! deadlocked, twice in a minute: a writer that needs a new segment waits, holding sled's segment
//! accountant, for a file truncation queued in sled's I/O pool, whose workers all wait for that
//! accountant (sled issues #804, #1412; 0.34 is the last release). Serializing writes and
//! committing less often did not prevent it. A checkpoint here is one append and one
//! `fdatasync` to a file of our own format, which needs none of sled's machinery.

mod compaction;
mod journal;
mod packed;
mod rounds;
pub mod savepoint;
mod store;
pub mod verify;

use std::path::PathBuf;

pub use journal::Damage;
pub use rounds::{CheckpointCommitter, ROUND_WRITE_AHEAD_BYTES_MAX, RoundCheckpoint};
pub use store::{
    COMPACTION_FLOOR_BYTES_DEFAULT, CheckpointInfo, CheckpointMeta, CheckpointStore,
    LoadedPartition, PartitionSavepoint,
};

/// Format version of checkpoint meta records and savepoints written by this build.
pub const CHECKPOINT_FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("state I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Stored state that fails its checks: rebuild it from the log.
    #[error("{what} is damaged: {reason}")]
    Corrupt { what: String, reason: String },
    #[error("state directory {path} is in use by another process")]
    Locked { path: PathBuf },
    #[error("savepoint {path}: {reason}")]
    Savepoint { path: PathBuf, reason: String },
}

impl CheckpointError {
    /// The same error again, for each of several checkpoints one failure ended (a commit round).
    pub(crate) fn copied(&self) -> Self {
        match self {
            CheckpointError::Io { path, source } => CheckpointError::Io {
                path: path.clone(),
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
            CheckpointError::Corrupt { what, reason } => CheckpointError::Corrupt {
                what: what.clone(),
                reason: reason.clone(),
            },
            CheckpointError::Locked { path } => CheckpointError::Locked { path: path.clone() },
            CheckpointError::Savepoint { path, reason } => CheckpointError::Savepoint {
                path: path.clone(),
                reason: reason.clone(),
            },
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CheckpointError::Io {
            path: path.into(),
            source,
        }
    }
}
