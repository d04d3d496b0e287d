//! Guards the `Log` contract on every backend with one suite, written against `dyn Log`: it
//! always runs on a fresh embedded log, and on a Fluvio cluster when `TALLY_FLUVIO_ENDPOINT`
//! (`HOST:PORT` of the SC's public server) is set, on a new topic each run. Without the
//! variable the Fluvio test passes and says plainly that it did not run.
//!
//! The checks run one after another on one log and measure from each partition's end when they
//! start, so they hold on a log that already has records.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tally_pipeline::log::{
    EmbeddedLog, EmbeddedLogOptions, FluvioLog, FluvioLogOptions, KeyedRecord, Log, LogError,
    LogRecord, Offset, PartitionId, Partitioner, append_keyed,
};

const ENDPOINT_VAR: &str = "TALLY_FLUVIO_ENDPOINT";
/// Eight partitions, so the partitioner's pinned values apply.
const PARTITIONS: u32 = 8;
/// Segments of the Fluvio suite's topic: room for a few of the producer's 64 KiB batches.
const SMALL_SEGMENT_BYTES: u32 = 256 * 1024;
/// Records of the segment check, about five small segments' worth.
const ACROSS_RECORDS: u64 = 1300;
const ACROSS_VALUE_BYTES: usize = 1000;
/// No check takes this long on a healthy backend; a hung one fails instead of hanging the run.
const CHECK_TIMEOUT: Duration = Duration::from_secs(120);

#[test]
fn embedded_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let options = EmbeddedLogOptions {
        partition_count: PARTITIONS,
        ..EmbeddedLogOptions::default()
    };
    let log: Arc<dyn Log> = Arc::new(EmbeddedLog::open(dir.path(), options).unwrap());
    runtime().block_on(run_suite("embedded", log));
}

#[test]
fn fluvio_conformance_when_tally_fluvio_endpoint_is_set() {
    let Ok(endpoint) = std::env::var(ENDPOINT_VAR) else {
        // Written to stderr directly rather than with eprintln!, which the test harness
        // captures: the skip shows in every test run's output.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "{ENDPOINT_VAR} is not set: the Fluvio conformance tests did not run"
        );
        return;
    };
    let topic = format!("tally-conformance-{}-{}", std::process::id(), unix_millis());
    eprintln!("fluvio: running the conformance suite on {endpoint}, topic {topic}");
    runtime().block_on(async {
        // Small segments, so the suite's records fill several and reads cross their boundaries.
        let options = FluvioLogOptions {
            segment_bytes: SMALL_SEGMENT_BYTES,
            ..FluvioLogOptions::default()
        };
        let log = FluvioLog::connect(&endpoint, &topic, PARTITIONS, options)
            .await
            .unwrap_or_else(|error| panic!("connecting to {endpoint}: {error}"));
        run_suite("fluvio", Arc::new(log)).await;
        // The topic now exists with eight partitions: a log of another count must not use it.
        let other = FluvioLog::connect(&endpoint, &topic, 4, FluvioLogOptions::default()).await;
        match other {
            Err(LogError::TopicMismatch { reason, .. }) => {
                assert!(reason.contains("it has 8 partitions"), "{reason}")
            }
            other => panic!("expected TopicMismatch, got {other:?}"),
        }
        eprintln!("fluvio: a topic with another partition count is refused ... ok");
    });
}

async fn run_suite(backend: &str, log: Arc<dyn Log>) {
    assert_eq!(log.partition_count(), PARTITIONS);
    check(backend, "roundtrip across partitions", roundtrip(&log)).await;
    check(backend, "acknowledged offsets", acknowledged_offsets(&log)).await;
    check(
        backend,
        "reads from every offset",
        reads_from_every_offset(&log),
    )
    .await;
    check(backend, "reads past the end", reads_past_the_end(&log)).await;
    check(backend, "end offset after appends", end_after_appends(&log)).await;
    check(backend, "wait for offset wakes", wait_wakes(&log)).await;
    check(backend, "concurrent appenders", concurrent_appenders(&log)).await;
    check(backend, "partition for key", partition_for_key(&log)).await;
    check(backend, "large batch", large_batch(&log)).await;
    check(backend, "reads across segments", across_segments(&log)).await;
}

async fn check(backend: &str, name: &str, body: impl Future<Output = ()>) {
    if tokio::time::timeout(CHECK_TIMEOUT, body).await.is_err() {
        panic!("{backend}: {name}: did not finish within {CHECK_TIMEOUT:?}");
    }
    eprintln!("{backend}: {name} ... ok");
}

/// Records of `append_keyed` land in their key's partition, each readable at its offset.
async fn roundtrip(log: &Arc<dyn Log>) {
    let before = ends(log).await;
    let records: Vec<KeyedRecord> = (0..400).map(|i| record("roundtrip", i, 40)).collect();
    let placements = append_keyed(log.as_ref(), records.clone()).await.unwrap();
    let partitioner = Partitioner::new(PARTITIONS);
    for (record, &(partition, offset)) in records.iter().zip(&placements) {
        assert_eq!(partition, partitioner.partition_for_key(&record.key));
        assert!(offset >= before[partition as usize]);
        let read = log.read(partition, offset, 1).await.unwrap();
        assert_same(&read[0], partition, offset, record);
    }
    let after = ends(log).await;
    let appended: u64 = after.iter().zip(&before).map(|(a, b)| a - b).sum();
    assert_eq!(appended, records.len() as u64, "every record exactly once");
}

/// An acknowledgement names one offset per record, increasing, past the end before it.
async fn acknowledged_offsets(log: &Arc<dyn Log>) {
    for partition in 0..PARTITIONS {
        let mut end = log.end_offset(partition).await.unwrap();
        for append in 0..3 {
            let records: Vec<KeyedRecord> = (0..append * 2 + 1)
                .map(|i| record(&format!("acked-{partition}-{append}"), i, 20))
                .collect();
            let ack = log.append(partition, records.clone()).await.unwrap();
            assert_eq!(ack.partition, partition);
            assert_eq!(ack.count(), records.len());
            assert!(ack.first_offset() >= end);
            assert!(ack.offsets.windows(2).all(|pair| pair[0] < pair[1]));
            for (&offset, record) in ack.offsets.iter().zip(&records) {
                let read = log.read(partition, offset, 1).await.unwrap();
                assert_same(&read[0], partition, offset, record);
            }
            end = ack.offsets.last().unwrap() + 1;
        }
        assert_eq!(log.end_offset(partition).await.unwrap(), end);
    }
}

/// A read from any offset returns records from exactly there on, in order, then nothing.
async fn reads_from_every_offset(log: &Arc<dyn Log>) {
    let partition = 1;
    let start = log.end_offset(partition).await.unwrap();
    let mut expected = Vec::new();
    for append in 0..6 {
        let records: Vec<KeyedRecord> = (0..append + 1)
            .map(|i| record(&format!("every-{append}"), i, 30))
            .collect();
        log.append(partition, records.clone()).await.unwrap();
        expected.extend(records);
    }
    let end = log.end_offset(partition).await.unwrap();
    assert_eq!(end - start, expected.len() as u64);
    for from in start..end {
        let read = log.read(partition, from, 7).await.unwrap();
        assert!(
            !read.is_empty() && read.len() <= 7,
            "{} records",
            read.len()
        );
        for (offset, got) in (from..).zip(&read) {
            assert_same(got, partition, offset, &expected[(offset - start) as usize]);
        }
    }
    assert!(log.read(partition, end, 7).await.unwrap().is_empty());
    assert_eq!(
        read_range(log, partition, start, end).await.len(),
        expected.len()
    );
}

/// At the end a read is empty; past it, an error; so is a partition that does not exist.
async fn reads_past_the_end(log: &Arc<dyn Log>) {
    let partition = 2;
    log.append(partition, vec![record("past", 0, 10)])
        .await
        .unwrap();
    let end = log.end_offset(partition).await.unwrap();
    assert!(log.read(partition, end, 10).await.unwrap().is_empty());
    assert!(log.read(partition, 0, 0).await.unwrap().is_empty());
    match log.read(partition, end + 1, 10).await {
        Err(LogError::OffsetOutOfRange {
            partition: p,
            offset,
            end_offset,
        }) => assert_eq!((p, offset, end_offset), (partition, end + 1, end)),
        other => panic!("expected OffsetOutOfRange, got {other:?}"),
    }
    assert!(matches!(
        log.read(PARTITIONS, 0, 1).await,
        Err(LogError::NoSuchPartition { .. })
    ));
    assert!(matches!(
        log.end_offset(PARTITIONS).await,
        Err(LogError::NoSuchPartition { .. })
    ));
}

/// With one writer, the end moves by exactly the records appended.
async fn end_after_appends(log: &Arc<dyn Log>) {
    let partition = 3;
    let before = log.end_offset(partition).await.unwrap();
    log.append(partition, vec![record("end", 0, 10)])
        .await
        .unwrap();
    assert_eq!(log.end_offset(partition).await.unwrap(), before + 1);
    let ten: Vec<KeyedRecord> = (1..11).map(|i| record("end", i, 10)).collect();
    let ack = log.append(partition, ten).await.unwrap();
    assert_eq!(log.end_offset(partition).await.unwrap(), before + 11);
    assert_eq!(*ack.offsets.last().unwrap(), before + 10);
}

/// A waiter for the end offset sleeps until a record is appended there, and not before.
async fn wait_wakes(log: &Arc<dyn Log>) {
    let partition = 4;
    log.append(partition, vec![record("wait", 0, 10)])
        .await
        .unwrap();
    let end = log.end_offset(partition).await.unwrap();
    let present = log.wait_for_offset(partition, end - 1);
    tokio::time::timeout(Duration::from_secs(5), present)
        .await
        .expect("a present offset returns at once")
        .unwrap();
    let waiter = {
        let log = Arc::clone(log);
        tokio::spawn(async move { log.wait_for_offset(partition, end).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiter.is_finished(), "woke before anything was appended");
    let appended = record("wait", 1, 10);
    let ack = log.append(partition, vec![appended.clone()]).await.unwrap();
    assert_eq!(ack.offsets, [end]);
    tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the waiter wakes after the append")
        .unwrap()
        .unwrap();
    let read = log.read(partition, end, 1).await.unwrap();
    assert_same(&read[0], partition, end, &appended);
}

/// Appends racing on one partition are each acknowledged and stored exactly once.
async fn concurrent_appenders(log: &Arc<dyn Log>) {
    const TASKS: usize = 16;
    const APPENDS_PER_TASK: usize = 25;
    let partition = 5;
    let before = log.end_offset(partition).await.unwrap();
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let log = Arc::clone(log);
            tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                for append in 0..APPENDS_PER_TASK {
                    let records: Vec<KeyedRecord> = (0..append % 4 + 1)
                        .map(|i| record(&format!("race-{task}-{append}"), i as u64, 24))
                        .collect();
                    let ack = log.append(partition, records.clone()).await.unwrap();
                    acknowledged.extend(ack.offsets.into_iter().zip(records));
                }
                acknowledged
            })
        })
        .collect();
    let mut acknowledged: Vec<(Offset, KeyedRecord)> = Vec::new();
    for task in tasks {
        acknowledged.extend(task.await.unwrap());
    }
    let after = log.end_offset(partition).await.unwrap();
    assert_eq!(
        after - before,
        acknowledged.len() as u64,
        "nothing extra stored"
    );
    let offsets: HashSet<Offset> = acknowledged.iter().map(|(offset, _)| *offset).collect();
    assert_eq!(
        offsets.len(),
        acknowledged.len(),
        "no offset acknowledged twice"
    );
    let stored = read_range(log, partition, before, after).await;
    for (offset, record) in &acknowledged {
        assert_same(
            &stored[(offset - before) as usize],
            partition,
            *offset,
            record,
        );
    }
}

/// Every backend places a key where the embedded log's partitioner does.
async fn partition_for_key(log: &Arc<dyn Log>) {
    // The values `Partitioner`'s own tests pin for eight partitions.
    let pinned: Vec<PartitionId> = ["pay_1", "pay_2", "pay_3", "ch_3OqKx2", "a", ""]
        .iter()
        .map(|key| log.partition_for_key(key.as_bytes()))
        .collect();
    assert_eq!(pinned, [4, 6, 7, 3, 3, 1]);
    let partitioner = Partitioner::new(PARTITIONS);
    for i in 0..2000 {
        let key = format!("pay_{i:06}");
        assert_eq!(
            log.partition_for_key(key.as_bytes()),
            partitioner.partition_for_key(key.as_bytes())
        );
    }
}

/// One append of thousands of donation-sized records goes in and comes back whole — more than
/// the 1 MiB a Fluvio consumer fetches by default, which once cut a batch and lost its tail.
async fn large_batch(log: &Arc<dyn Log>) {
    let partition = 6;
    let records: Vec<KeyedRecord> = (0..7000).map(|i| record("large", i, 180)).collect();
    let ack = log.append(partition, records.clone()).await.unwrap();
    assert_eq!(ack.count(), records.len());
    assert!(ack.offsets.windows(2).all(|pair| pair[0] < pair[1]));
    let first = ack.first_offset();
    let last = *ack.offsets.last().unwrap();
    let stored = read_range(log, partition, first, last + 1).await;
    let by_offset: Vec<&LogRecord> = ack
        .offsets
        .iter()
        .map(|offset| &stored[(offset - first) as usize])
        .collect();
    for ((got, offset), want) in by_offset.into_iter().zip(&ack.offsets).zip(&records) {
        assert_same(got, partition, *offset, want);
    }
}

/// Records filling several segments (on the Fluvio suite's topic): a follower that waits for
/// each append reads them in order as they come, then they are read back in order, one by one
/// at scattered offsets, and in short runs from scattered offsets.
async fn across_segments(log: &Arc<dyn Log>) {
    let partition = 7;
    let start = log.end_offset(partition).await.unwrap();
    let records: Vec<KeyedRecord> = (0..ACROSS_RECORDS)
        .map(|i| record("across", i, ACROSS_VALUE_BYTES))
        .collect();
    let follower = {
        let log = Arc::clone(log);
        tokio::spawn(async move {
            let mut got = Vec::new();
            let mut next = start;
            while next < start + ACROSS_RECORDS {
                let batch = log.read(partition, next, 500).await.unwrap();
                if batch.is_empty() {
                    log.wait_for_offset(partition, next).await.unwrap();
                    continue;
                }
                next += batch.len() as u64;
                got.extend(batch);
            }
            got
        })
    };
    let mut offsets = Vec::new();
    for chunk in records.chunks(100) {
        let ack = log.append(partition, chunk.to_vec()).await.unwrap();
        offsets.extend(ack.offsets);
    }
    // This check is the partition's only appender: its records are consecutive.
    let end = start + ACROSS_RECORDS;
    assert_eq!(offsets, (start..end).collect::<Vec<_>>());
    let followed = follower.await.unwrap();
    assert_eq!(followed.len() as u64, ACROSS_RECORDS);
    for ((got, offset), want) in followed.iter().zip(start..).zip(&records) {
        assert_same(got, partition, offset, want);
    }
    let in_order = read_range(log, partition, start, end).await;
    for ((got, offset), want) in in_order.iter().zip(start..).zip(&records) {
        assert_same(got, partition, offset, want);
    }
    // Scattered offsets (a fixed permutation), one record and then short runs.
    let scattered = (0..ACROSS_RECORDS).map(|i| (i * 7919) % ACROSS_RECORDS);
    for index in scattered.clone().step_by(3) {
        let read = log.read(partition, start + index, 1).await.unwrap();
        assert_eq!(read.len(), 1, "one record at {}", start + index);
        assert_same(&read[0], partition, start + index, &records[index as usize]);
    }
    for index in scattered.step_by(29) {
        let read = log.read(partition, start + index, 40).await.unwrap();
        assert!(!read.is_empty(), "records at {}", start + index);
        for (got, offset) in read.iter().zip(start + index..) {
            assert_same(got, partition, offset, &records[(offset - start) as usize]);
        }
    }
    // Waiting across the boundaries: the last record is there, the next one wakes a waiter.
    log.wait_for_offset(partition, end - 1).await.unwrap();
    let waiter = {
        let log = Arc::clone(log);
        tokio::spawn(async move { log.wait_for_offset(partition, end).await })
    };
    let last = record("across-last", 0, ACROSS_VALUE_BYTES);
    let ack = log.append(partition, vec![last.clone()]).await.unwrap();
    assert_eq!(ack.offsets, vec![end]);
    waiter.await.unwrap().unwrap();
    assert_same(
        &log.read(partition, end, 1).await.unwrap()[0],
        partition,
        end,
        &last,
    );
}

/// Records `from..to` of a partition, read in batches, checking each starts where asked.
async fn read_range(
    log: &Arc<dyn Log>,
    partition: PartitionId,
    from: Offset,
    to: Offset,
) -> Vec<LogRecord> {
    let mut records = Vec::new();
    let mut next = from;
    while next < to {
        let want = ((to - next) as usize).min(1000);
        let batch = log.read(partition, next, want).await.unwrap();
        assert!(
            !batch.is_empty(),
            "no records at {next} though the end is {to}"
        );
        for (offset, got) in (next..).zip(&batch) {
            assert_eq!((got.partition, got.offset), (partition, offset));
        }
        next += batch.len() as u64;
        records.extend(batch);
    }
    records
}

async fn ends(log: &Arc<dyn Log>) -> Vec<Offset> {
    let mut ends = Vec::new();
    for partition in 0..PARTITIONS {
        ends.push(log.end_offset(partition).await.unwrap());
    }
    ends
}

fn assert_same(got: &LogRecord, partition: PartitionId, offset: Offset, want: &KeyedRecord) {
    assert_eq!((got.partition, got.offset), (partition, offset));
    assert_eq!(got.key, want.key, "key at offset {offset}");
    assert_eq!(got.value, want.value, "value at offset {offset}");
}

/// A record whose key is unique to this run and whose value has `value_bytes` bytes.
fn record(name: &str, index: u64, value_bytes: usize) -> KeyedRecord {
    let key = format!("{name}-{index}-{}", unix_millis());
    let mut value = format!("{key}:").into_bytes();
    value.resize(value_bytes.max(value.len()), b'v');
    KeyedRecord {
        key: key.into_bytes(),
        value,
    }
}

fn unix_millis() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_millis()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}
