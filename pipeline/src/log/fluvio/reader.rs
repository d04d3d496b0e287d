//! Reading one partition through continuous consumer streams ("cursors").
//!
//! A cursor is a read-committed stream opened at an absolute offset, with the client's retry
//! off. Between reads it waits in a small per-partition pool, keyed by the offset it will yield
//! next: the pipeline reading a partition in order finds its cursor at every read, while
//! occasional reads elsewhere (dedupe reading a recorded donation back) open a second one
//! instead of moving it. A read takes only records the caller knows are committed, so it never
//! waits on new appends; waiting for the next record peeks at a cursor without consuming it.
//! A cursor that fails, or a read that is cancelled half-way, is dropped, never reused: the
//! next read reopens a stream at the offset it asks for.
//!
//! # Reading one record elsewhere
//! A stream's first fetch sends everything from the asked offset to the end of its segment, up
//! to the fetch size. For a read of a single record where no cursor waits (dedupe reading a
//! recorded donation back, often far behind the end) a whole-segment fetch would move and decode
//! up to a whole segment (16 MiB) for one record, and, pooled, the stream would push the in-order
//! cursor out of the pool. Such a read opens a one-shot stream with a small fetch
//! ([`LOOKUP_FETCH_BYTES`], several of the log's largest batches): the SPU starts a fetch at the
//! batch holding the offset, so that batch arrives whole and the record is in it. The stream is
//! dropped after the read, never pooled.
//!
//! # Fetches that end inside a batch
//! A stream fetches at most a fetch size of bytes at a time, and the SPU cuts the fetch at
//! that size even inside a batch. The Fluvio 0.50 client then hands out the cut batch's first
//! records and carries on after the batch: the rest of the batch is skipped, or, when the batch
//! was the last one committed, the stream waits forever. A fetch never crosses a segment, so
//! streams here fetch up to a whole segment (`fetch_bytes`; the log creates its topics with
//! 16 MiB segments). On a topic with larger segments a stream may still skip or stall: a read
//! that meets a skipped offset reopens the stream there (once per offset, and only a second
//! skip means the records are gone), and a stalled read times out and is retried from its
//! offset by the next read.

use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use fluvio::consumer::{ConsumerConfigExtBuilder, Record, RetryMode};
use fluvio::{Fluvio, Isolation};
use fluvio_spu_schema::errors::ErrorCode;
use futures_util::stream::{Peekable, Stream, StreamExt};

use super::FluvioLogOptions;
use super::connect::bounded;
use crate::log::{LogError, LogRecord, Offset, PartitionId};

/// Idle cursors kept per partition: the in-order reader's and one for reads elsewhere.
const CURSORS_PER_PARTITION_MAX: usize = 2;
/// The largest fetch a stream asks for, whatever the topic's segments: a fetch is buffered
/// whole by the client.
pub(super) const FETCH_BYTES_MAX: u32 = 64 * 1024 * 1024;
/// The fetch size for segments of unknown size (the SPU's default is 1 GiB).
const FETCH_BYTES_DEFAULT: u32 = FETCH_BYTES_MAX;
const _: () = assert!(FETCH_BYTES_MAX <= i32::MAX as u32);
/// The fetch size of a one-shot stream reading a single record: several times the largest batch
/// the log's producer writes, so the batch holding the record always arrives whole.
pub(super) const LOOKUP_FETCH_BYTES: u32 = 1024 * 1024;
const _: () = assert!(
    LOOKUP_FETCH_BYTES as usize
        >= 4 * (super::producer::BATCH_BYTES + super::producer::RECORD_BYTES_MAX)
);
const _: () = assert!(LOOKUP_FETCH_BYTES <= FETCH_BYTES_MAX);

/// The fetch size for a topic's segment size: a whole segment, so no fetch ends inside a batch,
/// as long as that stays within [`FETCH_BYTES_MAX`].
pub(super) fn fetch_bytes(segment_bytes: Option<u32>) -> u32 {
    segment_bytes.map_or(FETCH_BYTES_DEFAULT, |bytes| bytes.min(FETCH_BYTES_MAX))
}

/// Whether streams on segments of this size can meet fetches that end inside a batch.
pub(super) fn fetches_may_cut_batches(segment_bytes: Option<u32>) -> bool {
    segment_bytes.is_none_or(|bytes| bytes > FETCH_BYTES_MAX)
}

type RecordStream = Pin<Box<dyn Stream<Item = Result<Record, ErrorCode>> + Send>>;

/// An open stream and the offset it yields next.
struct Cursor {
    next_offset: Offset,
    stream: Peekable<RecordStream>,
}

/// One partition's idle cursors, least recently used first.
#[derive(Debug)]
pub(super) struct PartitionReader {
    partition: PartitionId,
    fetch_bytes: u32,
    idle: Mutex<Vec<Cursor>>,
}

impl std::fmt::Debug for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cursor")
            .field("next_offset", &self.next_offset)
            .finish_non_exhaustive()
    }
}

impl PartitionReader {
    pub fn new(partition: PartitionId, fetch_bytes: u32) -> Self {
        Self {
            partition,
            fetch_bytes,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Records `from..from + count`, all of which the caller knows are committed.
    pub async fn read(
        &self,
        client: &Fluvio,
        topic: &str,
        options: &FluvioLogOptions,
        from: Offset,
        count: u64,
    ) -> Result<Vec<LogRecord>, LogError> {
        let (mut cursor, one_shot) = match self.take(from) {
            Some(cursor) => (cursor, false),
            // A single record where no cursor waits: most likely a read far from the in-order
            // cursor. A small fetch holds its batch whole; the stream is not kept.
            None if count == 1 => {
                let cursor = self
                    .open(client, topic, options, from, LOOKUP_FETCH_BYTES)
                    .await?;
                (cursor, true)
            }
            None => {
                let cursor = self
                    .open(client, topic, options, from, self.fetch_bytes)
                    .await?;
                (cursor, false)
            }
        };
        let pulled = self.pull(client, topic, options, &mut cursor, count);
        let records = match tokio::time::timeout(options.request_timeout, pulled).await {
            Ok(records) => records?,
            Err(_) => {
                return Err(LogError::Unavailable {
                    reason: format!(
                        "reading partition {} from offset {from}: the cluster said {count} \
                         records were committed but did not send them within {:?}",
                        self.partition, options.request_timeout
                    ),
                });
            }
        };
        if !one_shot {
            self.put_back(cursor);
        }
        Ok(records)
    }

    /// Returns once the record at `offset` (the partition's end when called) is committed.
    /// Not bounded: the caller bounds it.
    pub async fn wait_for_record(
        &self,
        client: &Fluvio,
        topic: &str,
        options: &FluvioLogOptions,
        offset: Offset,
    ) -> Result<(), LogError> {
        let cursor = match self.take(offset) {
            Some(cursor) => cursor,
            None => {
                self.open(client, topic, options, offset, self.fetch_bytes)
                    .await?
            }
        };
        // If the wait is cancelled, the cursor goes back to the pool: peeking consumes nothing.
        let mut lease = Lease {
            reader: self,
            cursor: Some(cursor),
        };
        let stream = &mut lease.cursor_mut().stream;
        match Pin::new(stream).peek().await {
            Some(Ok(_)) => Ok(()),
            Some(Err(code)) => {
                let error = stream_error(self.partition, offset, code);
                lease.discard();
                Err(error)
            }
            None => {
                lease.discard();
                Err(ended(self.partition, offset))
            }
        }
    }

    /// Pulls the next `count` records, checking that each continues from the one before.
    ///
    /// A stream can skip records the cluster still has (a fetch that ended inside a batch, see
    /// the module doc), so a stream that skips, fails or ends is replaced by one opened at the
    /// offset due with the whole-segment fetch size, once per offset; only if that one skips too
    /// are the records lost.
    async fn pull(
        &self,
        client: &Fluvio,
        topic: &str,
        options: &FluvioLogOptions,
        cursor: &mut Cursor,
        count: u64,
    ) -> Result<Vec<LogRecord>, LogError> {
        let mut records = Vec::with_capacity(count as usize);
        let mut reopened_at = None;
        while (records.len() as u64) < count {
            let expected = cursor.next_offset;
            let next = cursor.stream.next().await;
            match next {
                Some(Ok(record)) if u64::try_from(record.offset).ok() == Some(expected) => {
                    records.push(log_record(self.partition, expected, record));
                    cursor.next_offset = expected + 1;
                    continue;
                }
                _ if reopened_at != Some(expected) => {
                    tracing::debug!(partition = self.partition, expected, "reopening a stream");
                    reopened_at = Some(expected);
                    *cursor = self
                        .open(client, topic, options, expected, self.fetch_bytes)
                        .await?;
                }
                Some(Ok(record)) => return Err(skipped(self.partition, expected, &record)),
                Some(Err(code)) => return Err(stream_error(self.partition, expected, &code)),
                None => return Err(ended(self.partition, expected)),
            }
        }
        Ok(records)
    }

    async fn open(
        &self,
        client: &Fluvio,
        topic: &str,
        options: &FluvioLogOptions,
        offset: Offset,
        fetch_bytes: u32,
    ) -> Result<Cursor, LogError> {
        let what = format!(
            "opening a stream on partition {} at offset {offset}",
            self.partition
        );
        let invalid = |reason: String| LogError::Unavailable {
            reason: format!("{what}: {reason}"),
        };
        // The fetch size is at most FETCH_BYTES_MAX, well within an i32.
        let fetch_bytes_wire = i32::try_from(fetch_bytes).unwrap_or(i32::MAX);
        // Offsets stay far below i64::MAX: a partition would need 2^63 records.
        let start = i64::try_from(offset).map_err(|error| invalid(error.to_string()))?;
        let start = fluvio::Offset::absolute(start).map_err(|error| invalid(error.to_string()))?;
        let config = ConsumerConfigExtBuilder::default()
            .topic(topic)
            .partition(self.partition)
            .offset_start(start)
            .isolation(Isolation::ReadCommitted)
            .retry_mode(RetryMode::Disabled)
            .disable_continuous(false)
            .max_bytes(fetch_bytes_wire)
            .build()
            .map_err(|error| invalid(format!("{error:#}")))?;
        let stream = bounded(
            &what,
            options.request_timeout,
            client.consumer_with_config(config),
        )
        .await?;
        let stream: RecordStream = Box::pin(stream);
        Ok(Cursor {
            next_offset: offset,
            stream: stream.peekable(),
        })
    }

    /// Takes the idle cursor positioned at `offset`, if there is one.
    fn take(&self, offset: Offset) -> Option<Cursor> {
        let mut idle = self.idle_lock();
        let position = idle
            .iter()
            .position(|cursor| cursor.next_offset == offset)?;
        Some(idle.remove(position))
    }

    /// Keeps a cursor for later, dropping the least recently used one beyond the limit.
    fn put_back(&self, cursor: Cursor) {
        let mut idle = self.idle_lock();
        idle.retain(|other| other.next_offset != cursor.next_offset);
        idle.push(cursor);
        if idle.len() > CURSORS_PER_PARTITION_MAX {
            idle.remove(0);
        }
    }

    fn idle_lock(&self) -> std::sync::MutexGuard<'_, Vec<Cursor>> {
        // A list of idle streams: a panic elsewhere cannot leave it inconsistent.
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A cursor on loan that goes back to the pool when dropped, unless discarded.
struct Lease<'a> {
    reader: &'a PartitionReader,
    cursor: Option<Cursor>,
}

impl Lease<'_> {
    fn cursor_mut(&mut self) -> &mut Cursor {
        self.cursor
            .as_mut()
            .expect("a lease holds its cursor until dropped")
    }

    fn discard(mut self) {
        self.cursor = None;
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(cursor) = self.cursor.take() {
            self.reader.put_back(cursor);
        }
    }
}

fn log_record(partition: PartitionId, offset: Offset, record: Record) -> LogRecord {
    // The timestamp is the producer's clock when the record's batch was made; Fluvio marks a
    // missing one with a negative value.
    let append_time_ms = record.timestamp().max(0);
    let record = record.into_inner();
    LogRecord {
        partition,
        offset,
        append_time_ms,
        key: record.key.map(|key| key.into_vec()).unwrap_or_default(),
        value: record.value.into_vec(),
    }
}

fn skipped(partition: PartitionId, offset: Offset, record: &Record) -> LogError {
    LogError::RecordsLost {
        partition,
        offset,
        reason: format!(
            "the cluster sent offset {} where {offset} was due, also on a new stream",
            record.offset
        ),
    }
}

fn stream_error(partition: PartitionId, offset: Offset, code: &ErrorCode) -> LogError {
    match code {
        ErrorCode::OffsetEvicted { next_available, .. } => LogError::RecordsLost {
            partition,
            offset,
            reason: format!(
                "the cluster deleted records before offset {next_available} (the topic's \
                 retention or size limit)"
            ),
        },
        other => LogError::Unavailable {
            reason: format!("reading partition {partition} at offset {offset}: {other}"),
        },
    }
}

fn ended(partition: PartitionId, offset: Offset) -> LogError {
    LogError::Unavailable {
        reason: format!("the stream of partition {partition} ended at offset {offset}"),
    }
}

/// Sleeps between polls: a few milliseconds at first, then longer, up to a fraction of a
/// second so a partition that comes back is noticed quickly.
#[derive(Debug)]
pub(super) struct PollDelay {
    next: Duration,
}

const POLL_DELAY_MIN: Duration = Duration::from_millis(5);
const POLL_DELAY_MAX: Duration = Duration::from_millis(500);

impl Default for PollDelay {
    fn default() -> Self {
        Self {
            next: POLL_DELAY_MIN,
        }
    }
}

impl PollDelay {
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(POLL_DELAY_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetches_take_a_whole_segment_within_the_limit() {
        let sixteen_mebibytes = 16 * 1024 * 1024;
        assert_eq!(fetch_bytes(Some(sixteen_mebibytes)), sixteen_mebibytes);
        assert!(!fetches_may_cut_batches(Some(sixteen_mebibytes)));
        assert_eq!(fetch_bytes(Some(u32::MAX)), FETCH_BYTES_MAX);
        assert!(fetches_may_cut_batches(Some(u32::MAX)));
        assert_eq!(fetch_bytes(None), FETCH_BYTES_MAX);
        assert!(fetches_may_cut_batches(None));
    }
}
