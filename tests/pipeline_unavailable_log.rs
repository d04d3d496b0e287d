//! A following pipeline waits out a log that does not answer (a Fluvio cluster away): reads that
//! fail as unavailable — of the next records, or of a recorded donation dedupe compares a resend
//! with — are retried from the same offset, so every record is still applied once; a catch-up
//! run reports the error instead.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use support::pipeline::{DataDir, donation};
use tally_pipeline::checkpoint::CheckpointStore;
use tally_pipeline::clock::SystemClock;
use tally_pipeline::log::{
    AppendAck, EmbeddedLog, KeyedRecord, Log, LogError, LogRecord, Offset, PartitionId,
};
use tally_pipeline::read_model::ReadModel;
use tally_pipeline::runner::{Pipeline, PipelineConfig, RunMode};

const PARTITIONS: u32 = 2;
const DONATIONS: u64 = 300;
/// Reads that fail before the log answers again.
const UNAVAILABLE_READS: u32 = 6;
/// Bound on waiting for the follower to apply everything; reaching it fails the test.
const APPLY_WAIT: Duration = Duration::from_secs(60);

/// The embedded log, but its first `failures_left` reads answer `Unavailable` (only reads of
/// one record, dedupe's look-ups, with `only_lookups`).
#[derive(Debug)]
struct FlakyLog {
    inner: Arc<EmbeddedLog>,
    failures_left: AtomicU32,
    only_lookups: bool,
}

#[async_trait]
impl Log for FlakyLog {
    fn partition_count(&self) -> u32 {
        self.inner.partition_count()
    }

    async fn append(
        &self,
        partition: PartitionId,
        records: Vec<KeyedRecord>,
    ) -> Result<AppendAck, LogError> {
        self.inner.append(partition, records).await
    }

    async fn read(
        &self,
        partition: PartitionId,
        from: Offset,
        records_max: usize,
    ) -> Result<Vec<LogRecord>, LogError> {
        let failing = (records_max == 1 || !self.only_lookups)
            && self
                .failures_left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
        if failing {
            return Err(LogError::Unavailable {
                reason: "the cluster did not answer in time".into(),
            });
        }
        self.inner.read(partition, from, records_max).await
    }

    async fn end_offset(&self, partition: PartitionId) -> Result<Offset, LogError> {
        self.inner.end_offset(partition).await
    }

    async fn wait_for_offset(
        &self,
        partition: PartitionId,
        offset: Offset,
    ) -> Result<(), LogError> {
        self.inner.wait_for_offset(partition, offset).await
    }
}

fn donations() -> Vec<tally_pipeline::event::DonationEvent> {
    (0..DONATIONS)
        .map(|i| donation(&format!("pay-{i}"), "meals", 100 + i, 1_795_546_800_000, 1))
        .collect()
}

fn flaky_pipeline(dir: &DataDir) -> (Pipeline, Arc<FlakyLog>) {
    let inner = dir.open_log();
    dir.append(&inner, &donations());
    pipeline_over(dir, inner, false)
}

fn pipeline_over(
    dir: &DataDir,
    inner: Arc<EmbeddedLog>,
    only_lookups: bool,
) -> (Pipeline, Arc<FlakyLog>) {
    let log = Arc::new(FlakyLog {
        inner,
        failures_left: AtomicU32::new(UNAVAILABLE_READS),
        only_lookups,
    });
    let (store, _notes) = CheckpointStore::open(&dir.state_dir(), PARTITIONS).expect("state");
    let config = PipelineConfig {
        checkpoint_interval: Duration::from_millis(10),
        read_batch_records: 50,
        ..PipelineConfig::default()
    };
    let as_log: Arc<dyn Log> = Arc::clone(&log) as Arc<dyn Log>;
    let pipeline = Pipeline::new(
        as_log,
        Arc::new(store),
        Arc::new(ReadModel::new(PARTITIONS)),
        Arc::new(SystemClock),
        config,
    )
    .expect("pipeline");
    (pipeline, log)
}

fn expected_total_cents() -> u64 {
    (0..DONATIONS).map(|i| 100 + i).sum()
}

#[test]
fn a_following_pipeline_waits_out_an_unavailable_log_and_applies_everything_once() {
    let root = tempfile::tempdir().expect("temp dir");
    let dir = DataDir::new(root.path(), PARTITIONS);
    let (pipeline, log) = flaky_pipeline(&dir);
    follow_until_applied(&pipeline, &log, DONATIONS, DONATIONS);
}

/// Resends of donations recorded before a restart are compared with the recorded ones read back
/// from the log; those reads fail for a while, and the follower waits instead of stopping.
#[test]
fn a_following_pipeline_waits_out_an_unavailable_log_when_comparing_resends() {
    let root = tempfile::tempdir().expect("temp dir");
    let dir = DataDir::new(root.path(), PARTITIONS);
    let inner = dir.open_log();
    dir.append(&inner, &donations());
    {
        let (first_run, _) = pipeline_over(&dir, Arc::clone(&inner), true);
        first_run
            .run(RunMode::CatchUp)
            .expect("no look-up fails without resends");
    }
    dir.append(&inner, &donations());
    let (pipeline, log) = pipeline_over(&dir, inner, true);
    follow_until_applied(&pipeline, &log, DONATIONS, 2 * DONATIONS);
    let duplicates: u64 = pipeline
        .read_model()
        .progress()
        .iter()
        .map(|p| p.counters.duplicates)
        .sum();
    assert_eq!(duplicates, DONATIONS, "every resend is a duplicate");
}

/// Follows until every partition applied `records` in all, then checks each donation counted once.
fn follow_until_applied(pipeline: &Pipeline, log: &FlakyLog, donations: u64, records: u64) {
    let applied_records = || -> u64 {
        pipeline
            .read_model()
            .progress()
            .iter()
            .map(|p| p.applied_offset)
            .sum()
    };
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let follower = {
        let pipeline = pipeline.clone();
        std::thread::spawn(move || pipeline.run(RunMode::Follow { shutdown }))
    };
    let deadline = Instant::now() + APPLY_WAIT;
    while applied_records() < records {
        assert!(
            Instant::now() < deadline,
            "the follower did not apply every donation after the log came back"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.send(true).expect("the follower listens");
    let summaries = follower
        .join()
        .expect("no panic")
        .expect("unavailable reads do not stop a follower");
    assert_eq!(
        log.failures_left.load(Ordering::SeqCst),
        0,
        "every failure was met"
    );
    let applied: Offset = summaries.iter().map(|s| s.next_offset).sum();
    assert_eq!(applied, records);
    let total = pipeline.read_model().campaign_total("meals");
    assert_eq!(
        (total.donations, total.total_cents),
        (donations, expected_total_cents()),
        "each donation counted once"
    );
}

#[test]
fn a_catch_up_run_reports_an_unavailable_log() {
    let root = tempfile::tempdir().expect("temp dir");
    let dir = DataDir::new(root.path(), PARTITIONS);
    let (pipeline, _log) = flaky_pipeline(&dir);
    let error = pipeline
        .run(RunMode::CatchUp)
        .expect_err("a catch-up run does not wait for the log");
    assert!(error.to_string().contains("unavailable"), "{error}");
}
