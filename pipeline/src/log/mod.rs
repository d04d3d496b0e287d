//! The partitioned, keyed, append-only log: tally's record of truth.
//!
//! A topic has a fixed number of partitions; a record's partition is chosen from its key by the
//! [`Partitioner`] (the key of a donation is its `payment_ref`, so every retry of one payment
//! lands in one partition and is seen in order by one operator). Within a partition, records
//! get consecutive offsets from 0.
//!
//! [`Log`] is the interface every backend follows. Its shape follows what a Fluvio cluster
//! offers too — produce keyed records to a partition and learn their offsets once the write is
//! acknowledged; consume a partition from an absolute offset; ask a partition's end offset — so
//! the pipeline does not care which backend it runs on.
//!
//! - [`embedded`]: the default backend, segment files in one directory ([`EmbeddedLog`]).
//! - [`frame`], [`seal`] and [`segment`]: its on-disk format; `recovery`: how it is opened
//!   after a crash, what counts as torn and what as corruption, and `tally log repair`.
//! - [`partition`]: one partition's segments and reads; `writer`: the one thread that commits
//!   every partition's appends in rounds, each made durable by one sync of a shared
//!   write-ahead file (`support::write_ahead`).
//! - [`fluvio`]: the backend on a Fluvio cluster ([`FluvioLog`]).
//! - [`location`]: where a log lives, as the command line names it ([`LogLocation`]).

pub mod embedded;
pub mod fluvio;
pub mod frame;
pub mod location;
mod manifest;
pub mod partition;
mod partitioner;
mod recovery;
pub mod seal;
pub mod segment;
mod writer;

use std::path::PathBuf;

use async_trait::async_trait;

pub use embedded::{EmbeddedLog, EmbeddedLogOptions};
pub use fluvio::{FluvioLog, FluvioLogOptions};
pub use location::{LogLocation, LogLocationError};
pub use partitioner::Partitioner;
pub use recovery::RepairAction;

use crate::support::clock::UnixMillis;

/// A partition's number, `0..partition_count`.
pub type PartitionId = u32;
/// A record's position within its partition, from 0.
pub type Offset = u64;

/// Something durable outside the log that has seen a partition reach `end_offset` — a
/// checkpoint that applied the log up to there. Recovery never cuts the partition below it: a
/// record a witness saw was acknowledged, so damage below it is corruption, never a torn write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Witness {
    pub partition: PartitionId,
    pub end_offset: Offset,
    /// What saw it, for the operator (e.g. the checkpoint journal's path).
    pub source: String,
}

/// A record to append: a key (which chose its partition) and an opaque value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyedRecord {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// A record as read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    pub partition: PartitionId,
    pub offset: Offset,
    /// When the log accepted the record (the commit time of its batch).
    pub append_time_ms: UnixMillis,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// Where an acknowledged append landed: the offset of every record, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendAck {
    pub partition: PartitionId,
    /// One offset per record, strictly increasing. Consecutive on the embedded log; on a Fluvio
    /// cluster, records that other producers appended at the same time may sit between them.
    pub offsets: Vec<Offset>,
}

impl AppendAck {
    /// The offset of the append's first record.
    pub fn first_offset(&self) -> Offset {
        // An append holds at least one record: every backend rejects an empty one.
        self.offsets[0]
    }

    /// How many records the append held.
    pub fn count(&self) -> usize {
        self.offsets.len()
    }
}

/// Everything that can go wrong with a log, with whether the caller may retry.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("log I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("log corruption in {path} at byte {position}: {reason}")]
    Corruption {
        path: PathBuf,
        position: u64,
        reason: String,
    },
    #[error(
        "partition {partition} stopped accepting appends after a failed write or sync \
         (it is recovered from disk before it takes the next one): {reason}"
    )]
    Failed {
        partition: PartitionId,
        reason: String,
    },
    #[error("partition {partition} does not exist; the topic has {partition_count}")]
    NoSuchPartition {
        partition: PartitionId,
        partition_count: u32,
    },
    #[error("offset {offset} is past the end {end_offset} of partition {partition}")]
    OffsetOutOfRange {
        partition: PartitionId,
        offset: Offset,
        end_offset: Offset,
    },
    #[error("append of {bytes} bytes is larger than the limit of {bytes_max} bytes")]
    AppendTooLarge { bytes: u64, bytes_max: u64 },
    #[error("invalid log directory {path}: {reason}")]
    InvalidDirectory { path: PathBuf, reason: String },
    #[error("log directory {path} is in use by another process")]
    Locked { path: PathBuf },
    #[error("the log is unavailable: {reason}")]
    Unavailable { reason: String },
    #[error("topic {topic} cannot hold this log: {reason}")]
    TopicMismatch { topic: String, reason: String },
    #[error(
        "partition {partition} lost acknowledged records at offset {offset} \
         (stopping rather than reusing offsets): {reason}"
    )]
    RecordsLost {
        partition: PartitionId,
        offset: Offset,
        reason: String,
    },
    #[error("the log is closed")]
    Closed,
}

impl LogError {
    /// Whether the same request may succeed later without anyone fixing anything: the caller
    /// should answer "retry later" (HTTP 503) rather than "rejected".
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            LogError::Unavailable { .. } | LogError::Failed { .. } | LogError::Closed
        )
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        LogError::Io {
            path: path.into(),
            source,
        }
    }
}

/// A partitioned, keyed, append-only log.
///
/// Contract for every implementation:
/// - `append` returns `Ok` only once the records are durable by the backend's standard, with
///   their offsets strictly increasing in the order given (consecutive on the embedded log). An
///   append that fails may have stored some of its records on a backend without atomic
///   appends (Fluvio): callers retry, and dedupe by key keeps the retry from counting twice.
/// - `read` returns only acknowledged records, in offset order, never skipping one: a record
///   that cannot be read is an error, not a gap.
/// - `end_offset` is the offset the next appended record will get. An end below an offset a
///   checkpoint already consumed means the backend lost records: the pipeline stops that
///   partition ([`crate::runner`]'s `CheckpointBeyondLog`) instead of reusing offsets.
#[async_trait]
pub trait Log: Send + Sync + std::fmt::Debug {
    fn partition_count(&self) -> u32;

    /// The partition a key belongs to.
    fn partition_for_key(&self, key: &[u8]) -> PartitionId {
        Partitioner::new(self.partition_count()).partition_for_key(key)
    }

    /// Appends records to one partition, in order; returns once they are durable.
    async fn append(
        &self,
        partition: PartitionId,
        records: Vec<KeyedRecord>,
    ) -> Result<AppendAck, LogError>;

    /// Up to `records_max` records of `partition` from offset `from` on. Empty when `from` is the
    /// end offset; an error when it is past it.
    async fn read(
        &self,
        partition: PartitionId,
        from: Offset,
        records_max: usize,
    ) -> Result<Vec<LogRecord>, LogError>;

    /// The offset the next record appended to `partition` will get.
    async fn end_offset(&self, partition: PartitionId) -> Result<Offset, LogError>;

    /// Returns once `partition`'s end offset is greater than `offset`, i.e. once the record at
    /// `offset` can be read. Waits without polling.
    async fn wait_for_offset(&self, partition: PartitionId, offset: Offset)
    -> Result<(), LogError>;
}

/// Appends keyed records to whichever partitions their keys choose, all partitions at once.
/// Returns each record's `(partition, offset)` in input order, once every one is durable.
pub async fn append_keyed(
    log: &dyn Log,
    records: Vec<KeyedRecord>,
) -> Result<Vec<(PartitionId, Offset)>, LogError> {
    let partition_count = log.partition_count() as usize;
    let mut by_partition: Vec<Vec<KeyedRecord>> = vec![Vec::new(); partition_count];
    let mut placement = Vec::with_capacity(records.len());
    for record in records {
        let partition = log.partition_for_key(&record.key);
        let slot = &mut by_partition[partition as usize];
        placement.push((partition, slot.len()));
        slot.push(record);
    }
    let appends = by_partition
        .into_iter()
        .enumerate()
        .filter(|(_, records)| !records.is_empty())
        .map(|(partition, records)| log.append(partition as PartitionId, records));
    let acks = futures_join_all(appends).await?;
    let mut offsets: Vec<Vec<Offset>> = vec![Vec::new(); partition_count];
    for ack in acks {
        offsets[ack.partition as usize] = ack.offsets;
    }
    Ok(placement
        .into_iter()
        .map(|(partition, index)| (partition, offsets[partition as usize][index]))
        .collect())
}

/// Every partition's end offset, in partition order.
pub async fn end_offsets(log: &dyn Log) -> Result<Vec<Offset>, LogError> {
    let mut ends = Vec::with_capacity(log.partition_count() as usize);
    for partition in 0..log.partition_count() {
        ends.push(log.end_offset(partition).await?);
    }
    Ok(ends)
}

/// Awaits every append, all at once, so that one commit round of the log can take them all (a
/// batch spread over partitions costs a round, not a round per partition); the first error
/// wins, but all are driven to completion so no append is left half-observed.
async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Result<Vec<AppendAck>, LogError>
where
    F: std::future::Future<Output = Result<AppendAck, LogError>>,
{
    futures_util::future::join_all(futures)
        .await
        .into_iter()
        .collect()
}
