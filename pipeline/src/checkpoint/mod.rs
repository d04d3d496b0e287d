//! Checkpoints: each partition's state and its next log offset, committed together, atomically.
//!
//! # Layout (`<data-dir>/state/`)
//! ```text
//! LOCK                       held (flock) by the one process using the state
//! sled/                      one sled tree per partition, "partition-NNN":
//!   meta                     CheckpointMeta + crc32c: format version, next offset, counters,
//!                            watermark, journal end position, digest, commit time
//!   t/<campaign>             CampaignTotal
//!   w/<campaign>\0<g><start> WindowBucket (g: 0 minute, 1 hour, 2 day; start: i64 as
//!                            order-preserving big-endian u64)
//!   c/<payment_ref>\0<off>   Conflict (off: conflicting offset, big-endian)
//! journal-NNN                the partition's index journal (see `journal`)
//! ```
//!
//! # The atomic step
//! A checkpoint first appends the partition's new index changes to its journal and syncs it,
//! then applies one sled batch on the partition's tree holding the changed totals, buckets and
//! conflicts **and** the meta record with the next offset and the journal's new end. A sled
//! batch on one tree is atomic, so after a crash a partition has either all of a checkpoint or
//! none of it, and resumes from the offset that matches its state.
//!
//! # sled is derived state
//! The log is the record of truth. sled 0.34's `flush` is not a guaranteed fsync, writes that
//! were not flushed can vanish in a crash, and a killed process has occasionally left a tree that
//! fails to reopen. None of that can make tally count wrong: losing recent checkpoints only means
//! replaying more of the log, and every load recomputes the state's digest from what it read and
//! compares it with the digest the checkpoint recorded. If sled does not open, or a checkpoint
//! fails its checks, that state is rebuilt from the log, and the log output says so.
//!
//! One failure cannot be designed around from outside: sled 0.34.7 can deadlock. A writer that
//! needs a new segment waits, holding sled's segment accountant, for a file truncation queued in
//! sled's I/O pool, whose workers wait for that accountant (sled issues #804, #1412). It shows
//! when pages are rewritten fast and the CPU is saturated; it was seen under HTTP load with
//! commits every 50 ms. Writes go through one lock (`sled_writes`) and commits default to every
//! 250 ms, which makes it rarer, not impossible.

mod journal;
pub mod savepoint;
mod store;

use std::path::PathBuf;

pub use store::{
    CheckpointInfo, CheckpointMeta, CheckpointStore, LoadedPartition, PartitionSavepoint,
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
    #[error("sled error: {0}")]
    Sled(#[from] sled::Error),
    /// Stored state that fails its checks: rebuild it from the log.
    #[error("{what} is damaged: {reason}")]
    Corrupt { what: String, reason: String },
    #[error("state directory {path} is in use by another process")]
    Locked { path: PathBuf },
    #[error("savepoint {path}: {reason}")]
    Savepoint { path: PathBuf, reason: String },
}

impl CheckpointError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CheckpointError::Io {
            path: path.into(),
            source,
        }
    }
}
