//! The log on a Fluvio cluster: one topic, one Fluvio partition per log partition.
//!
//! [`FluvioLog`] owns a connection to the cluster (the SC at an explicit endpoint, no profile
//! file), the topic (created with the log's partition count if missing; refused if it exists
//! with another count), one producer per partition, the open consumer streams, and a socket per
//! leader SPU for asking a partition's offsets.
//!
//! # Durability: not the embedded log's
//! The embedded log acknowledges an append after `fdatasync`. A Fluvio SPU acknowledges once
//! the records are in its log **without syncing them to disk**; durability comes from
//! replication instead. The producer asks for `Isolation::ReadCommitted`, so an acknowledgement
//! means the records reached every in-sync replica (the partition's high watermark passed
//! them), and consumers read committed records only. With a replication factor of 1 (the
//! default here, for a one-SPU development cluster) an SPU crash or power loss can lose
//! acknowledged records. Production needs a replication factor of at least 2 on SPUs that do
//! not fail together.
//!
//! Lost records show up as a partition end below an offset already seen: [`FluvioLog`] reports
//! [`LogError::RecordsLost`] when the end it fetches is below one this process saw, and the
//! pipeline refuses a checkpoint whose offset is beyond the partition's end. Records are never
//! silently skipped or their offsets reused.
//!
//! # Partitioning
//! Callers choose the partition with the same [`Partitioner`](super::Partitioner) (xxh64 of the
//! key) as the embedded log, and each partition has its own producer pinned to that partition,
//! so Fluvio's own partitioner never places a record.
//!
//! # Offsets and reads
//! Fluvio gives each record its own offset; records other producers append at the same time
//! may sit between one append's records, so an [`AppendAck`] lists every offset. A partition's
//! end is its high watermark, fetched from the leader SPU (`FetchOffsets`, one round trip) —
//! exact when it is asked, stale by whatever is appended after. Reads go through continuous,
//! read-committed consumer streams, at most two per partition, reused while reads
//! continue where the last one ended, and reopened from the requested offset otherwise. The
//! client's automatic consumer retry is off: it could skip records the cluster evicted and
//! resume at an offset of its own choosing, where this log reconnects itself from the offset
//! the caller asked for. Topics the log creates have 16 MiB segments and streams fetch a whole
//! segment, because the client mishandles a fetch that ends inside a batch (see `reader`); a
//! read of one record where no stream waits uses a one-shot stream with a small fetch instead.
//!
//! # Limits
//! Every wait on the cluster is bounded by [`FluvioLogOptions::request_timeout`] (the client
//! itself retries a lost connection forever); a timeout or a connection error is
//! [`LogError::Unavailable`], which callers answer with "retry later". Records waiting for the
//! cluster are bounded per partition (`producer`'s `IN_FLIGHT_BYTES_MAX`).

mod connect;
mod offsets;
mod producer;
mod reader;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use fluvio::Fluvio;

use super::manifest::PARTITION_COUNT_MAX;
use super::{AppendAck, KeyedRecord, Log, LogError, LogRecord, Offset, PartitionId};
use offsets::OffsetClient;
use producer::PartitionProducer;
use reader::PartitionReader;

/// Records one read returns at most, whatever the caller asks for: a read is held to the
/// request timeout, and this many donation-sized records take milliseconds on a healthy
/// cluster. (The pipeline reads 4,096 at a time.)
const READ_RECORDS_MAX: u64 = 65_536;

/// How to connect to a cluster and use its topic.
#[derive(Debug, Clone)]
pub struct FluvioLogOptions {
    /// Replicas of each partition when the topic is created: 1 for a one-SPU development
    /// cluster; at least 2 in production, where durability comes from replication.
    pub replication_factor: u32,
    /// Bound on connecting to the SC.
    pub connect_timeout: Duration,
    /// Bound on each operation's waits on the cluster: an append, a read, asking an end
    /// offset. (A read that fails spends at most as long again telling records the cluster
    /// lost from a cluster that is away.)
    pub request_timeout: Duration,
    /// Bound on waiting for a created topic's partitions to come online.
    pub topic_ready_timeout: Duration,
    /// How long the producer waits for more records before sending a batch.
    pub linger: Duration,
    /// Segment size of a topic the log creates (16 MiB); no effect on a topic that exists.
    /// Streams fetch a whole segment, so it must stay within 64 MiB, and the SPU refuses a batch
    /// larger than a segment, so it must stay well above the producer's 64 KiB batches. Tests
    /// use a small one (a few hundred KiB) to cross segment boundaries cheaply.
    pub segment_bytes: u32,
    /// A record's key and value at most (the producer's batches hold at least four).
    pub record_bytes_max: usize,
    /// How long a topic the log creates keeps a closed segment after its last write; no effect
    /// on a topic that exists (a shorter retention there is warned of). The default keeps
    /// everything, as a record of truth must; the results topic, which holds snapshots, keeps
    /// a bounded time (`crate::control::cluster::results::results_topic_options`).
    pub retention_seconds: u32,
}

impl Default for FluvioLogOptions {
    fn default() -> Self {
        Self {
            replication_factor: 1,
            connect_timeout: Duration::from_secs(10),
            // Well above a replicated produce on a healthy cluster (milliseconds), well below
            // what a payment system waits for a callback's answer.
            request_timeout: Duration::from_secs(5),
            topic_ready_timeout: Duration::from_secs(60),
            // Long enough to gather concurrent appends into one produce request, short enough
            // not to show in the latency of an acknowledgement.
            linger: Duration::from_millis(1),
            segment_bytes: connect::SEGMENT_BYTES,
            record_bytes_max: producer::RECORD_BYTES_MAX,
            retention_seconds: connect::RETENTION_SECONDS_MAX,
        }
    }
}

/// A log on a Fluvio topic.
pub struct FluvioLog {
    endpoint: String,
    topic: String,
    options: FluvioLogOptions,
    client: Arc<Fluvio>,
    offsets: OffsetClient,
    partitions: Vec<FluvioPartition>,
}

/// What the log keeps per partition.
#[derive(Debug)]
struct FluvioPartition {
    producer: PartitionProducer,
    reader: PartitionReader,
    ends: PartitionEnds,
}

impl FluvioLog {
    /// Connects to the SC at `endpoint` (`HOST:PORT`), creates `topic` with `partition_count`
    /// partitions if it is missing and waits until they are online. Refuses a topic that exists
    /// with another partition count.
    pub async fn connect(
        endpoint: &str,
        topic: &str,
        partition_count: u32,
        options: FluvioLogOptions,
    ) -> Result<Self, LogError> {
        if !(1..=PARTITION_COUNT_MAX).contains(&partition_count) {
            return Err(LogError::TopicMismatch {
                topic: topic.to_owned(),
                reason: format!(
                    "a log has 1 to {PARTITION_COUNT_MAX} partitions, not {partition_count}"
                ),
            });
        }
        let client = Arc::new(connect::connect(endpoint, options.connect_timeout).await?);
        let segment_bytes =
            connect::ensure_topic(&client, topic, partition_count, &options).await?;
        if reader::fetches_may_cut_batches(segment_bytes) {
            tracing::warn!(
                topic,
                ?segment_bytes,
                "the topic's segments are larger than a stream's fetch: reads may need to \
                 reopen their stream, and may stall until their timeout"
            );
        }
        let fetch_bytes = reader::fetch_bytes(segment_bytes);
        let offsets = OffsetClient::new(Arc::clone(&client), topic, options.request_timeout);
        let partitions = (0..partition_count)
            .map(|partition| FluvioPartition {
                producer: PartitionProducer::new(partition),
                reader: PartitionReader::new(partition, fetch_bytes),
                ends: PartitionEnds::default(),
            })
            .collect();
        Ok(Self {
            endpoint: endpoint.to_owned(),
            topic: topic.to_owned(),
            options,
            client,
            offsets,
            partitions,
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn partition(&self, partition: PartitionId) -> Result<&FluvioPartition, LogError> {
        self.partitions
            .get(partition as usize)
            .ok_or(LogError::NoSuchPartition {
                partition,
                partition_count: self.partitions.len() as u32,
            })
    }

    /// The partition's committed end, asked of its leader now; checked against what this
    /// process already saw.
    async fn fetch_end(&self, partition: PartitionId) -> Result<Offset, LogError> {
        let ends = &self.partition(partition)?.ends;
        let floor = ends.seen();
        let what = format!("asking the end of partition {partition}");
        let fetched = self.within(&what, self.offsets.fetch(partition)).await?;
        ends.check_fetched(partition, floor, fetched.end)
    }

    /// Records `from..` as far as they are known to be committed, at most `records_max`.
    async fn read_committed(
        &self,
        partition: PartitionId,
        from: Offset,
        records_max: usize,
    ) -> Result<Vec<LogRecord>, LogError> {
        let state = self.partition(partition)?;
        let mut end = state.ends.seen();
        if from >= end {
            end = self.fetch_end(partition).await?;
        }
        if from > end {
            return Err(LogError::OffsetOutOfRange {
                partition,
                offset: from,
                end_offset: end,
            });
        }
        let count = (end - from).min(records_max as u64).min(READ_RECORDS_MAX);
        if count == 0 {
            return Ok(Vec::new());
        }
        let records = state
            .reader
            .read(&self.client, &self.topic, &self.options, from, count)
            .await?;
        state.ends.note(from + count);
        Ok(records)
    }

    /// Runs one operation within the request timeout, whatever waits it holds.
    async fn within<T>(
        &self,
        what: &str,
        operation: impl Future<Output = Result<T, LogError>>,
    ) -> Result<T, LogError> {
        let timeout = self.options.request_timeout;
        tokio::time::timeout(timeout, operation)
            .await
            .unwrap_or_else(|_| {
                Err(LogError::Unavailable {
                    reason: format!("{what}: no answer within {timeout:?}"),
                })
            })
    }
}

#[async_trait]
impl Log for FluvioLog {
    fn partition_count(&self) -> u32 {
        self.partitions.len() as u32
    }

    async fn append(
        &self,
        partition: PartitionId,
        records: Vec<KeyedRecord>,
    ) -> Result<AppendAck, LogError> {
        let state = self.partition(partition)?;
        let offsets = state
            .producer
            .append(&self.client, &self.topic, &self.options, records)
            .await?;
        // The acknowledgement is read-committed: the end is at least past the last record.
        if let Some(&last) = offsets.last() {
            state.ends.note(last + 1);
        }
        Ok(AppendAck { partition, offsets })
    }

    /// Waits at most the request timeout for the records, and when that fails, at most once
    /// more to tell records the cluster lost from a cluster that is away.
    async fn read(
        &self,
        partition: PartitionId,
        from: Offset,
        records_max: usize,
    ) -> Result<Vec<LogRecord>, LogError> {
        if records_max == 0 {
            self.partition(partition)?;
            return Ok(Vec::new());
        }
        let what = format!("reading partition {partition} from offset {from}");
        let read = self.within(&what, self.read_committed(partition, from, records_max));
        match read.await {
            // A stream that broke may have met records the cluster lost: say so if it did.
            Err(LogError::Unavailable { reason }) => match self.fetch_end(partition).await {
                Err(lost @ LogError::RecordsLost { .. }) => Err(lost),
                _ => Err(LogError::Unavailable { reason }),
            },
            other => other,
        }
    }

    async fn end_offset(&self, partition: PartitionId) -> Result<Offset, LogError> {
        self.fetch_end(partition).await
    }

    async fn wait_for_offset(
        &self,
        partition: PartitionId,
        offset: Offset,
    ) -> Result<(), LogError> {
        let state = self.partition(partition)?;
        let mut poll = reader::PollDelay::default();
        loop {
            if state.ends.seen() > offset {
                return Ok(());
            }
            match self.fetch_end(partition).await {
                Ok(end) if end > offset => return Ok(()),
                Ok(end) if end == offset => {
                    let woken = state
                        .reader
                        .wait_for_record(&self.client, &self.topic, &self.options, offset)
                        .await;
                    match woken {
                        Ok(()) => {
                            state.ends.note(offset + 1);
                            return Ok(());
                        }
                        Err(error) => tracing::debug!(partition, %error, "waiting on a stream"),
                    }
                }
                Ok(_) => {} // more than one record away: poll until the end reaches it
                Err(error @ LogError::RecordsLost { .. }) => return Err(error),
                Err(error) => tracing::debug!(partition, %error, "waiting for an offset"),
            }
            poll.wait().await;
        }
    }
}

impl std::fmt::Debug for FluvioLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FluvioLog")
            .field("endpoint", &self.endpoint)
            .field("topic", &self.topic)
            .field("partition_count", &self.partitions.len())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// The highest end of one partition this process has seen: from acknowledgements (which are
/// read-committed), records read, and ends fetched. A lower bound of the real end, unless the
/// cluster lost records — which is how a loss is noticed.
#[derive(Debug, Default)]
struct PartitionEnds {
    seen: AtomicU64,
}

impl PartitionEnds {
    fn seen(&self) -> Offset {
        self.seen.load(Ordering::Acquire)
    }

    fn note(&self, end: Offset) {
        self.seen.fetch_max(end, Ordering::AcqRel);
    }

    /// `floor` is what was seen before the end was asked for: the cluster had committed that
    /// much before it answered, so an answer below it means committed records are gone.
    fn check_fetched(
        &self,
        partition: PartitionId,
        floor: Offset,
        fetched: Offset,
    ) -> Result<Offset, LogError> {
        if fetched < floor {
            return Err(LogError::RecordsLost {
                partition,
                offset: fetched,
                reason: format!(
                    "the cluster says the partition ends at offset {fetched}, but records up to \
                     offset {floor} were acknowledged or read before; an SPU lost them (a crash \
                     without replication?)"
                ),
            });
        }
        self.note(fetched);
        Ok(fetched)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unreachable_cluster_is_unavailable_not_a_hang() {
        // A port nothing listens on: bound, then released.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let options = FluvioLogOptions {
            connect_timeout: Duration::from_secs(2),
            ..FluvioLogOptions::default()
        };
        let started = std::time::Instant::now();
        let endpoint = format!("127.0.0.1:{port}");
        let error = FluvioLog::connect(&endpoint, "donations", 8, options)
            .await
            .unwrap_err();
        assert!(matches!(error, LogError::Unavailable { .. }), "{error}");
        assert!(error.is_retryable());
        assert!(error.to_string().contains(&endpoint), "{error}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[tokio::test]
    async fn a_partition_count_out_of_range_is_refused_before_connecting() {
        for partition_count in [0, PARTITION_COUNT_MAX + 1] {
            let options = FluvioLogOptions::default();
            let connected =
                FluvioLog::connect("127.0.0.1:9", "donations", partition_count, options);
            let error = connected.await.unwrap_err();
            assert!(matches!(error, LogError::TopicMismatch { .. }), "{error}");
        }
    }

    #[test]
    fn an_end_below_what_was_seen_is_a_loss() {
        let ends = PartitionEnds::default();
        ends.note(10);
        assert_eq!(ends.check_fetched(3, ends.seen(), 12).unwrap(), 12);
        assert_eq!(ends.seen(), 12);
        let error = ends.check_fetched(3, ends.seen(), 7).unwrap_err();
        assert!(
            matches!(
                error,
                LogError::RecordsLost {
                    partition: 3,
                    offset: 7,
                    ..
                }
            ),
            "{error}"
        );
        assert!(!error.is_retryable());
    }

    #[test]
    fn an_end_fetched_before_an_acknowledgement_is_not_a_loss() {
        // The fetch was asked when 10 records were known; an append acknowledged meanwhile
        // raised what was seen to 15, and the older answer (12) arrives after it.
        let ends = PartitionEnds::default();
        ends.note(10);
        let floor = ends.seen();
        ends.note(15);
        assert_eq!(ends.check_fetched(0, floor, 12).unwrap(), 12);
        assert_eq!(ends.seen(), 15);
    }
}
