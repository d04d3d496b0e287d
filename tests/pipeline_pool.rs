//! A running pool of pipeline workers takes partitions on and gives them up while the others
//! keep running: a partition given up has its last checkpoint committed and is applied no
//! further; the partitions kept are never restarted; one taken on again resumes from its
//! checkpoint; every donation is counted once. A worker's partitions share checkpoint rounds.

mod support;

use std::time::{Duration, Instant};

use support::pipeline::{DataDir, donation};
use tally_pipeline::event::DonationEvent;
use tally_pipeline::log::{Offset, PartitionId};
use tally_pipeline::runner::{Pipeline, PipelineConfig, PipelineError};

const PARTITIONS: u32 = 4;
/// Bound on waiting for the workers to apply what the log holds; reaching it fails the test.
const APPLY_WAIT: Duration = Duration::from_secs(60);

fn donations(from: u64, count: u64) -> Vec<DonationEvent> {
    (from..from + count)
        .map(|i| donation(&format!("pay-{i}"), "meals", 100 + i, 1_795_546_800_000, 1))
        .collect()
}

fn log_ends(pipeline: &Pipeline) -> Vec<Offset> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    (0..PARTITIONS)
        .map(|p| runtime.block_on(pipeline.log().end_offset(p)).unwrap())
        .collect()
}

fn applied(pipeline: &Pipeline, partition: PartitionId) -> Offset {
    pipeline.read_model().progress()[partition as usize].applied_offset
}

/// Waits, within a bound, until each of `partitions` applied its log to the end.
fn wait_applied(pipeline: &Pipeline, partitions: &[PartitionId]) {
    let ends = log_ends(pipeline);
    let mut changes = pipeline.read_model().subscribe();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let deadline = Instant::now() + APPLY_WAIT;
    while partitions
        .iter()
        .any(|&p| applied(pipeline, p) < ends[p as usize])
    {
        assert!(Instant::now() < deadline, "the pool did not apply the log");
        let _ = runtime.block_on(async {
            tokio::time::timeout(Duration::from_millis(100), changes.changed()).await
        });
    }
}

fn load(
    pipeline: &Pipeline,
    partitions: &[PartitionId],
) -> Vec<(tally_pipeline::processor::PartitionState, bool)> {
    pipeline.load_partitions(partitions).expect("load")
}

#[test]
fn a_pool_gives_one_partition_up_while_the_others_keep_running() {
    let root = tempfile::tempdir().expect("temp dir");
    let dir = DataDir::new(root.path(), PARTITIONS);
    let log = dir.open_log();
    dir.append(&log, &donations(0, 400));
    let pipeline = dir.pipeline(log.clone(), 1_000_000);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();

    let mut pool = pipeline.start_pool().expect("workers start");
    pool.take(load(&pipeline, &[0, 1, 2, 3]));
    assert_eq!(pool.partitions(), vec![0, 1, 2, 3]);
    wait_applied(&pipeline, &[0, 1, 2, 3]);

    // Given up: its last checkpoint is committed at the end of what it applied.
    let given = runtime.block_on(pool.give(&[1]));
    let (partition, summary) = given.into_iter().next().expect("one answer");
    let summary = summary.expect("partition 1 stops at a checkpoint");
    assert_eq!(partition, 1);
    let end_of_1 = log_ends(&pipeline)[1];
    assert_eq!(summary.next_offset, end_of_1);
    let committed = pipeline.store().meta(1).unwrap().expect("a checkpoint");
    assert_eq!(committed.scalars.next_offset, end_of_1);
    assert_eq!(pool.partitions(), vec![0, 2, 3]);

    // The others keep applying; partition 1 is applied no further.
    dir.append(&log, &donations(400, 400));
    wait_applied(&pipeline, &[0, 2, 3]);
    assert!(
        log_ends(&pipeline)[1] > end_of_1,
        "new records reached partition 1"
    );
    assert_eq!(applied(&pipeline, 1), end_of_1);

    // Giving up one not running here is refused, and changes nothing.
    let again = runtime.block_on(pool.give(&[1]));
    assert!(matches!(
        again[0].1,
        Err(PipelineError::NotRunning { partition: 1 })
    ));

    // Taken on again: it resumes from its checkpoint, not from offset 0.
    pool.take(load(&pipeline, &[1]));
    wait_applied(&pipeline, &[0, 1, 2, 3]);
    let summaries = pool.stop();
    let ends = log_ends(&pipeline);
    for (partition, summary) in &summaries {
        let summary = summary
            .as_ref()
            .expect("every partition stops at a checkpoint");
        assert_eq!(summary.next_offset, ends[*partition as usize]);
        let expected_start = if *partition == 1 { end_of_1 } else { 0 };
        assert_eq!(
            summary.started_at_offset, expected_start,
            "partition {partition} ran once, from where it started"
        );
        assert!(!summary.rebuilt);
    }
    assert_eq!(summaries.len(), PARTITIONS as usize);

    let total = pipeline.read_model().campaign_total("meals");
    let expected: u64 = (0..800).map(|i| 100 + i).sum();
    assert_eq!((total.donations, total.total_cents), (800, expected));
    let committed: Vec<Offset> = (0..PARTITIONS)
        .map(|p| {
            let meta = pipeline.store().meta(p).unwrap().expect("a checkpoint");
            meta.scalars.next_offset
        })
        .collect();
    assert_eq!(committed, ends);
}

#[test]
fn a_pool_with_no_partitions_waits_and_stops_when_told() {
    let root = tempfile::tempdir().expect("temp dir");
    let dir = DataDir::new(root.path(), PARTITIONS);
    let log = dir.open_log();
    let pipeline = dir.pipeline(log, 1_000_000);
    let pool = pipeline.start_pool().expect("workers start");
    assert!(pool.partitions().is_empty());
    assert!(pool.stop().is_empty());
}

/// `count` donations whose payment refs all land in `partition`, numbered from `from` on.
fn donations_in(
    pipeline: &Pipeline,
    partition: PartitionId,
    from: u64,
    count: usize,
) -> Vec<DonationEvent> {
    (from..)
        .map(|i| donation(&format!("pay-{i}"), "meals", 100, 1_795_546_800_000, 1))
        .filter(|event| {
            pipeline
                .log()
                .partition_for_key(event.payment_ref.as_bytes())
                == partition
        })
        .take(count)
        .collect()
}

/// Waits, within a bound, until partition `partition`'s committed checkpoint reaches `offset`;
/// false if the bound passed first.
fn wait_committed(
    pipeline: &Pipeline,
    partition: PartitionId,
    offset: Offset,
    bound: Duration,
) -> bool {
    let deadline = Instant::now() + bound;
    let mut changes = pipeline.read_model().subscribe();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    loop {
        let committed = pipeline
            .store()
            .meta(partition)
            .unwrap()
            .map_or(0, |meta| meta.scalars.next_offset);
        if committed >= offset {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        let _ = runtime.block_on(async {
            tokio::time::timeout(Duration::from_millis(50), changes.changed()).await
        });
    }
}

#[test]
fn a_due_checkpoint_takes_every_changed_partition_of_its_worker_along() {
    // One worker, no interval that could fall due during the test: only a partition's record
    // count makes a checkpoint due. Partition 0 gets one record, never enough on its own; its
    // checkpoint must ride along with partition 1's rounds.
    const RECORDS_PER_CHECKPOINT: u64 = 5;
    let root = tempfile::tempdir().expect("temp dir");
    let dir = DataDir::new(root.path(), PARTITIONS);
    let log = dir.open_log();
    let config = PipelineConfig {
        checkpoint_records_max: RECORDS_PER_CHECKPOINT,
        checkpoint_interval: Duration::from_secs(3600),
        caught_up_checkpoint_interval: Duration::from_secs(3600),
        workers: 1,
        ..PipelineConfig::default()
    };
    let pipeline = dir.pipeline_with(log.clone(), config);
    let mut pool = pipeline.start_pool().expect("workers start");
    pool.take(load(&pipeline, &[0, 1]));

    let lone = donations_in(&pipeline, 0, 0, 1);
    let (_, lone_offset) = dir.append(&log, &lone)[0];
    let mut next_ref = 1_000;
    let mut appended = 1;
    let mut rode_along = false;
    // The worker may read partition 0 just before its record is there and partition 1 just
    // after, so the first round can miss it; the next round of partition 1 cannot.
    for _ in 0..3 {
        let batch = donations_in(&pipeline, 1, next_ref, RECORDS_PER_CHECKPOINT as usize);
        next_ref += 10_000;
        appended += batch.len() as u64;
        let end_of_1 = dir.append(&log, &batch).last().expect("appended").1 + 1;
        assert!(
            wait_committed(&pipeline, 1, end_of_1, APPLY_WAIT),
            "partition 1's own checkpoint was not committed"
        );
        if wait_committed(&pipeline, 0, lone_offset + 1, Duration::ZERO) {
            rode_along = true;
            break;
        }
    }
    assert!(
        rode_along,
        "partition 0's changes waited for a checkpoint of its own instead of sharing partition 1's round"
    );
    let summaries = pool.stop();
    assert_eq!(summaries.len(), 2);
    let total = pipeline.read_model().campaign_total("meals");
    assert_eq!(total.donations, appended);
}
