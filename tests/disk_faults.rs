//! Guards that a full disk and a failing sync are operating conditions the process heals from
//! by itself: appends and checkpoints are refused with a retryable error while the disk is full
//! and resume once there is room, a failed sync is recovered from disk in the process, and
//! nothing acknowledged or committed is lost on the way — also across a crash afterwards. (The
//! same with the real server on a real small file system is `serve_disk_full.rs`.)

mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use support::pipeline::donation;
use tally_pipeline::checkpoint::CheckpointStore;
use tally_pipeline::clock::SystemClock;
use tally_pipeline::event::envelope;
use tally_pipeline::log::partition::{PartitionConfig, SpareMaking};
use tally_pipeline::log::{EmbeddedLog, EmbeddedLogOptions, KeyedRecord, Log, LogError, Offset};
use tally_pipeline::read_model::ReadModel;
use tally_pipeline::runner::{Pipeline, PipelineConfig, RunMode};
use tally_pipeline::storage::Storage;
use tally_pipeline::storage::simulated::SimulatedDisk;

fn open_log(storage: &Arc<dyn Storage>) -> Arc<EmbeddedLog> {
    let witnesses = CheckpointStore::witnesses(&**storage, &PathBuf::from("/data/state")).unwrap();
    let options = EmbeddedLogOptions {
        partition_count: 1,
        // Spares made on the writer's thread: the same operations every run.
        partition: PartitionConfig {
            spare_making: SpareMaking::Inline,
            ..PartitionConfig::default()
        },
        storage: Arc::clone(storage),
        witnesses,
        ..EmbeddedLogOptions::default()
    };
    Arc::new(EmbeddedLog::open(&PathBuf::from("/data/log"), options).expect("open log"))
}

fn open_pipeline(storage: &Arc<dyn Storage>, log: Arc<EmbeddedLog>) -> Pipeline {
    let (store, _) =
        CheckpointStore::open_on(Arc::clone(storage), &PathBuf::from("/data/state"), 1).unwrap();
    let config = PipelineConfig {
        checkpoint_interval: Duration::from_secs(3600),
        ..PipelineConfig::default()
    };
    let log: Arc<dyn Log> = log;
    Pipeline::new(
        log,
        Arc::new(store),
        Arc::new(ReadModel::new(1)),
        Arc::new(SystemClock),
        config,
    )
    .unwrap()
}

fn donation_record(i: u64, padding: usize) -> KeyedRecord {
    let mut event = donation(&format!("pay_{i:05}"), "meals", 100, 1_790_000_000_000, 1);
    event.order_id = format!("ord_{}", "x".repeat(padding));
    envelope::keyed_record(&event)
}

/// Appends and keeps what was acknowledged.
fn append(
    log: &EmbeddedLog,
    i: u64,
    padding: usize,
    acked: &mut Vec<(Offset, KeyedRecord)>,
) -> Result<(), LogError> {
    let record = donation_record(i, padding);
    let ack = log.append_blocking(0, vec![record.clone()])?;
    acked.push((ack.first_offset(), record));
    Ok(())
}

fn assert_all_present(log: &EmbeddedLog, acked: &[(Offset, KeyedRecord)]) {
    let records = log.partition(0).unwrap().read(0, usize::MAX).unwrap();
    for (offset, record) in acked {
        let found = &records[*offset as usize];
        assert_eq!(
            (&found.key, &found.value),
            (&record.key, &record.value),
            "offset {offset}"
        );
    }
}

#[test]
fn a_full_disk_refuses_appends_and_checkpoints_until_there_is_room() {
    let mut disk = SimulatedDisk::new();
    let storage = disk.storage();
    let log = open_log(&storage);
    let pipeline = open_pipeline(&storage, Arc::clone(&log));
    let mut acked = Vec::new();
    for i in 0..10 {
        append(&log, i, 10, &mut acked).unwrap();
    }
    pipeline.run(RunMode::CatchUp).unwrap();
    disk.set_bytes_max(Some(disk.bytes_used() + 2_000));
    let mut i = 10;
    let refusal = loop {
        match append(&log, i, 100, &mut acked) {
            Ok(()) => i += 1,
            Err(error) => break error,
        }
        assert!(i < 100, "the disk fills up");
    };
    assert!(
        matches!(refusal, LogError::Unavailable { .. }) && refusal.is_retryable(),
        "a full disk is retryable, not a failed partition: {refusal}"
    );
    assert!(
        pipeline.run(RunMode::CatchUp).is_err(),
        "no room for a checkpoint"
    );
    assert!(append(&log, i, 100, &mut acked).is_err(), "still full");

    disk.set_bytes_max(None);
    append(&log, i, 100, &mut acked).expect("appends resume once there is room");
    assert_eq!(
        acked.last().unwrap().0,
        acked.len() as u64 - 1,
        "offsets continue without a gap"
    );
    pipeline.run(RunMode::CatchUp).expect("checkpoints resume");
    assert_eq!(
        pipeline.read_model().campaign_total("meals").donations,
        acked.len() as u64
    );
    assert_all_present(&log, &acked);
    drop((pipeline, log));

    for seed in 0..8 {
        let after = disk.crash(seed);
        let log = open_log(&after.storage());
        assert_all_present(&log, &acked);
        let pipeline = open_pipeline(&after.storage(), Arc::clone(&log));
        pipeline.run(RunMode::CatchUp).unwrap();
        assert_eq!(
            pipeline.read_model().campaign_total("meals").donations,
            acked.len() as u64
        );
        drop((pipeline, log));
        disk = after;
    }
}

#[test]
fn a_failed_sync_is_recovered_from_disk_without_a_restart() {
    let disk = SimulatedDisk::new();
    let storage = disk.storage();
    let log = open_log(&storage);
    let pipeline = open_pipeline(&storage, Arc::clone(&log));
    let mut acked = Vec::new();
    for i in 0..5 {
        append(&log, i, 10, &mut acked).unwrap();
    }
    disk.fail_next_syncs(1);
    let failure = append(&log, 5, 10, &mut acked).unwrap_err();
    assert!(
        matches!(failure, LogError::Failed { .. }) && failure.is_retryable(),
        "{failure}"
    );
    append(&log, 6, 10, &mut acked).expect("the partition recovered from disk");
    assert_eq!(
        acked.last().unwrap().0,
        5,
        "the unacknowledged commit's offset is taken again"
    );

    pipeline.run(RunMode::CatchUp).unwrap();
    append(&log, 7, 10, &mut acked).unwrap();
    disk.fail_next_syncs(1);
    assert!(
        pipeline.run(RunMode::CatchUp).is_err(),
        "the checkpoint's sync failed"
    );
    pipeline
        .run(RunMode::CatchUp)
        .expect("the journal is cut back and written again");
    assert_all_present(&log, &acked);
    drop((pipeline, log));

    let after = disk.crash(3);
    let log = open_log(&after.storage());
    assert_all_present(&log, &acked);
    let pipeline = open_pipeline(&after.storage(), log);
    pipeline.run(RunMode::CatchUp).unwrap();
    assert_eq!(
        pipeline.read_model().campaign_total("meals").donations,
        acked.len() as u64
    );
}
