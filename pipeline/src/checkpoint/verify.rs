//! Checking a committed checkpoint against the log: the partition's state rebuilt in memory from
//! the log alone, up to the checkpoint's offset, must have the checkpoint's digest. Nothing is
//! written; the running partition is not disturbed.

use super::CheckpointError;
use crate::log::{Offset, PartitionId};
use crate::runner::{Pipeline, PipelineError};

/// What checking one partition's checkpoint found.
#[derive(Debug)]
pub enum Verdict {
    /// The partition has committed nothing yet.
    NoCheckpoint,
    /// The checkpoint cannot be read back.
    Unreadable(CheckpointError),
    /// The state could not be rebuilt from the log up to the checkpoint's offset.
    RebuildFailed(PipelineError),
    /// Both digests, at the checkpoint's offset.
    Compared {
        offset: Offset,
        checkpoint_digest: u64,
        rebuilt_digest: u64,
    },
}

impl Verdict {
    /// Whether nothing is wrong: no checkpoint, or one whose digest the log reproduces.
    pub fn ok(&self) -> bool {
        match self {
            Verdict::NoCheckpoint => true,
            Verdict::Compared {
                checkpoint_digest,
                rebuilt_digest,
                ..
            } => checkpoint_digest == rebuilt_digest,
            Verdict::Unreadable(_) | Verdict::RebuildFailed(_) => false,
        }
    }
}

/// Rebuilds `partition`'s state from the log up to its committed offset and compares digests.
pub fn verify_partition(pipeline: &Pipeline, partition: PartitionId) -> Verdict {
    let stored = match pipeline.store().export(partition) {
        Ok(Some(exported)) => exported.meta,
        Ok(None) => return Verdict::NoCheckpoint,
        Err(error) => return Verdict::Unreadable(error),
    };
    let scalars = stored.scalars;
    let lateness_ms = scalars.watermark.allowed_lateness_ms();
    match pipeline.rebuild_in_memory(partition, scalars.next_offset, lateness_ms) {
        Ok(rebuilt) => Verdict::Compared {
            offset: scalars.next_offset,
            checkpoint_digest: stored.state_digest,
            rebuilt_digest: rebuilt.state_digest(),
        },
        Err(error) => Verdict::RebuildFailed(error),
    }
}
