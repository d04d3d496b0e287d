//! Appending to one partition: a Fluvio producer pinned to it, and a bound on what waits.
//!
//! Each record is handed to the producer, which gathers records into batches and sends one
//! produce request at a time per partition (so concurrent appends share requests, the way the
//! embedded log group-commits). The append waits for every record's acknowledgement, which
//! carries the record's offset.
//!
//! The producer's batch queue must never fill: a full queue makes the client spin without
//! yielding until the cluster answers, which no timeout can interrupt. So the bytes handed to
//! the producer are bounded per partition by a semaphore whose permits are held until the
//! cluster answered for those records — even if the append that sent them has given up
//! waiting — by a task on the client's executor.

use std::sync::Arc;
use std::time::Duration;

use fluvio::{
    DeliverySemantic, Fluvio, Isolation, ProduceOutput, RetryPolicy, RetryStrategy,
    TopicProducerConfigBuilder, TopicProducerPool,
};
use tokio::sync::{OnceCell, OwnedSemaphorePermit, Semaphore, oneshot};
use tokio::time::Instant;

use super::FluvioLogOptions;
use super::connect::bounded;
use crate::log::{KeyedRecord, LogError, Offset, PartitionId};

/// The producer's batch size: large enough that a busy partition sends few requests.
pub(super) const BATCH_BYTES: usize = 64 * 1024;
/// A record's key and value at most, by default. A donation is a few hundred bytes.
pub(super) const RECORD_BYTES_MAX: usize = 16 * 1024;
/// Bytes handed to one partition's producer and not yet answered for, at most.
const IN_FLIGHT_BYTES_MAX: usize = 2 * 1024 * 1024;
/// Batches the producer queues per partition (Fluvio's default, set explicitly).
const QUEUED_BATCHES_MAX: usize = 100;
/// What Fluvio adds to a record in a batch (length, attributes, timestamp and offset deltas,
/// key and value lengths, header count: varints, 28 bytes at most).
const RECORD_OVERHEAD_BYTES: usize = 32;

// Once the cluster stops answering, batches fill up to at least `BATCH_BYTES -
// RECORD_BYTES_MAX` before the next one starts, so the in-flight bound keeps the queue short of
// its limit.
const _: () =
    assert!(IN_FLIGHT_BYTES_MAX / (BATCH_BYTES - RECORD_BYTES_MAX) + 2 < QUEUED_BATCHES_MAX);
const _: () = assert!(IN_FLIGHT_BYTES_MAX <= u32::MAX as usize);

/// One partition's producer, created on first append.
#[derive(Debug)]
pub(super) struct PartitionProducer {
    partition: PartitionId,
    producer: OnceCell<ProducerHandle>,
    in_flight: Arc<Semaphore>,
}

/// The Fluvio producer (which has no `Debug`).
struct ProducerHandle(TopicProducerPool);

impl std::fmt::Debug for ProducerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProducerHandle")
            .field("topic", &self.0.topic())
            .finish_non_exhaustive()
    }
}

impl PartitionProducer {
    pub fn new(partition: PartitionId) -> Self {
        Self {
            partition,
            producer: OnceCell::new(),
            in_flight: Arc::new(Semaphore::new(IN_FLIGHT_BYTES_MAX)),
        }
    }

    /// Appends the records in order; returns their offsets once the cluster acknowledged all,
    /// or `Unavailable` when that takes longer than the request timeout.
    pub async fn append(
        &self,
        client: &Fluvio,
        topic: &str,
        options: &FluvioLogOptions,
        records: Vec<KeyedRecord>,
    ) -> Result<Vec<Offset>, LogError> {
        assert!(!records.is_empty(), "an append holds at least one record");
        let bytes = check_size(&records, options.record_bytes_max)?;
        let deadline = Instant::now() + options.request_timeout;
        let producer = self.producer(client, topic, options, deadline).await?;
        let permit = self.reserve(bytes, deadline).await?;
        let what = format!("producing to partition {} of topic {topic}", self.partition);
        let acknowledged = produce_in_background(producer.0.clone(), records, permit);
        let remaining = deadline.saturating_duration_since(Instant::now());
        let error = match bounded(&what, remaining, acknowledged).await {
            Ok(Ok(offsets)) => return Ok(offsets),
            Ok(Err(reason)) => LogError::Unavailable {
                reason: format!("{what}: {reason}"),
            },
            Err(error) => error,
        };
        // Some records may still be written: the caller's retry and dedupe cover them. The
        // producer keeps an error until it is cleared; clear it so later appends try again.
        producer.0.clear_errors().await;
        Err(error)
    }

    /// The partition's producer, started on first use.
    async fn producer(
        &self,
        client: &Fluvio,
        topic: &str,
        options: &FluvioLogOptions,
        deadline: Instant,
    ) -> Result<&ProducerHandle, LogError> {
        self.producer
            .get_or_try_init(|| async {
                let config = producer_config(self.partition, options)?;
                let what = format!("starting a producer for partition {}", self.partition);
                let remaining = deadline.saturating_duration_since(Instant::now());
                let producer = bounded(
                    &what,
                    remaining,
                    client.topic_producer_with_config(topic, config),
                )
                .await?;
                Ok(ProducerHandle(producer))
            })
            .await
    }

    /// Waits for room for `bytes` more bytes in the producer's queue, until `deadline`.
    async fn reserve(
        &self,
        bytes: usize,
        deadline: Instant,
    ) -> Result<OwnedSemaphorePermit, LogError> {
        // `check_size` keeps `bytes` within the bound, which fits a u32.
        let permits = bytes as u32;
        let acquire = Arc::clone(&self.in_flight).acquire_many_owned(permits);
        match tokio::time::timeout_at(deadline, acquire).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_closed)) => Err(LogError::Closed),
            Err(_) => Err(LogError::Unavailable {
                reason: format!(
                    "partition {} has {IN_FLIGHT_BYTES_MAX} bytes waiting for the cluster's \
                     acknowledgement and no room freed in time",
                    self.partition
                ),
            }),
        }
    }
}

/// The producer's settings: pinned to the partition, read-committed acknowledgements,
/// at-least-once delivery whose retries end within the request timeout.
fn producer_config(
    partition: PartitionId,
    options: &FluvioLogOptions,
) -> Result<fluvio::TopicProducerConfig, LogError> {
    let retries = RetryPolicy {
        max_retries: 2,
        initial_delay: Duration::from_millis(20),
        max_delay: options.request_timeout / 4,
        timeout: options.request_timeout,
        strategy: RetryStrategy::ExponentialBackoff,
    };
    TopicProducerConfigBuilder::default()
        .set_specific_partitioner(partition)
        .batch_size(batch_bytes(options.record_bytes_max))
        .batch_queue_size(QUEUED_BATCHES_MAX)
        .linger(options.linger)
        .isolation(Isolation::ReadCommitted)
        .delivery_semantic(DeliverySemantic::AtLeastOnce(retries))
        .timeout(options.request_timeout)
        .build()
        .map_err(|error| LogError::Unavailable {
            reason: format!("configuring the producer of partition {partition}: {error}"),
        })
}

/// The producer's batch size for records of at most `record_bytes_max`: room for four.
fn batch_bytes(record_bytes_max: usize) -> usize {
    let bytes = BATCH_BYTES.max(4 * (record_bytes_max + RECORD_OVERHEAD_BYTES));
    // Batches still fill up to three quarters before the next starts, keeping the queue short.
    debug_assert!(IN_FLIGHT_BYTES_MAX / (bytes - record_bytes_max) + 2 < QUEUED_BATCHES_MAX);
    bytes
}

/// The bytes the records take in the producer's queue, if each record and the whole append are
/// within bounds.
fn check_size(records: &[KeyedRecord], record_bytes_max: usize) -> Result<usize, LogError> {
    let mut bytes = 0;
    for record in records {
        let record_bytes = record.key.len() + record.value.len();
        if record_bytes > record_bytes_max {
            return Err(LogError::AppendTooLarge {
                bytes: record_bytes as u64,
                bytes_max: record_bytes_max as u64,
            });
        }
        bytes += record_bytes + RECORD_OVERHEAD_BYTES;
    }
    if bytes > IN_FLIGHT_BYTES_MAX {
        return Err(LogError::AppendTooLarge {
            bytes: bytes as u64,
            bytes_max: IN_FLIGHT_BYTES_MAX as u64,
        });
    }
    Ok(bytes)
}

/// Hands every record to the producer, in order, and waits for their acknowledgements, on the
/// client's executor: `permit` is held until the cluster answered for every record handed
/// over, whether or not anyone still waits for the result. Answers the offsets, or why not.
fn produce_in_background(
    producer: TopicProducerPool,
    records: Vec<KeyedRecord>,
    permit: OwnedSemaphorePermit,
) -> oneshot::Receiver<Result<Vec<Offset>, String>> {
    let (sender, receiver) = oneshot::channel();
    fluvio_future::task::spawn(async move {
        let outputs = send_all(&producer, records).await;
        let result = wait_all(outputs).await;
        drop(permit);
        let _ = sender.send(result);
    });
    receiver
}

/// Hands the records to the producer, in order; stops at the first refusal. Returns what was
/// handed over, and the refusal.
async fn send_all(
    producer: &TopicProducerPool,
    records: Vec<KeyedRecord>,
) -> (Vec<ProduceOutput>, Option<String>) {
    let mut outputs = Vec::with_capacity(records.len());
    for record in records {
        match producer.send(record.key, record.value).await {
            Ok(output) => outputs.push(output),
            Err(error) => return (outputs, Some(format!("{error:#}"))),
        }
    }
    (outputs, None)
}

/// Waits for the acknowledgement of every record handed over; the offsets if all were
/// acknowledged and none was refused.
async fn wait_all(
    (outputs, refused): (Vec<ProduceOutput>, Option<String>),
) -> Result<Vec<Offset>, String> {
    let mut offsets = Vec::with_capacity(outputs.len());
    let mut failure = refused;
    for output in outputs {
        match output.wait().await {
            // Offsets on the wire are i64, never negative for a written record.
            Ok(metadata) => offsets.push(u64::try_from(metadata.offset()).unwrap_or(0)),
            Err(error) => {
                failure.get_or_insert_with(|| format!("{error:#}"));
            }
        }
    }
    match failure {
        Some(reason) => Err(reason),
        None => {
            debug_assert!(offsets.windows(2).all(|pair| pair[0] < pair[1]));
            Ok(offsets)
        }
    }
}
