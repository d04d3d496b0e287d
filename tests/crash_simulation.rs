//! Guards crash consistency without trusting the page cache: the real log, checkpoint store and
//! pipeline run on a simulated disk that, at a crash, keeps only what was synced (unsynced writes
//! torn sector by sector, unsynced directory entries undone). After each crash, at a point
//! chosen at random, the data directory must open as it is, every acknowledged record must be at
//! its offset once and unchanged, every committed checkpoint must still be there, and the totals
//! must equal a recomputation from the log. Journals compact (in the background) as often as
//! they may, and the log's write-ahead files are small, so crash points fall inside compactions,
//! write-ahead rotations and flushes as well. It runs at 3 partitions and at 64. A missing `fdatasync` or directory sync anywhere on
//! these paths makes some seed fail.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use support::pipeline::donation;
use tally_pipeline::checkpoint::CheckpointStore;
use tally_pipeline::clock::SystemClock;
use tally_pipeline::event::envelope;
use tally_pipeline::log::partition::{PartitionConfig, SpareMaking};
use tally_pipeline::log::{
    EmbeddedLog, EmbeddedLogOptions, KeyedRecord, Log, Offset, PartitionId, append_keyed,
};
use tally_pipeline::operators::campaign_totals::CampaignTotal;
use tally_pipeline::read_model::ReadModel;
use tally_pipeline::runner::{Pipeline, PipelineConfig, RunMode};
use tally_pipeline::storage::Storage;
use tally_pipeline::storage::simulated::SimulatedDisk;

/// Partitions of the logs of the tests that name no count.
const PARTITIONS: u32 = 3;
/// Seeds run at few partitions, and at many; each one crashes its data directory several times.
const SEEDS: u64 = 24;
const SEEDS_AT_MANY_PARTITIONS: u64 = 8;
const CRASHES_PER_SEED: usize = 4;
/// Appends between two crashes at most (the crash point usually comes first).
const STEPS_MAX: usize = 60;
const CAMPAIGNS: [&str; 3] = ["meals", "books", "water"];

fn log_dir() -> PathBuf {
    PathBuf::from("/data/log")
}

fn state_dir() -> PathBuf {
    PathBuf::from("/data/state")
}

/// What the test knows was acknowledged and committed before each crash.
#[derive(Default)]
struct Acknowledged {
    records: Vec<(PartitionId, Offset, KeyedRecord)>,
    /// Per partition, the furthest offset a checkpoint commit returned for.
    committed: Vec<Offset>,
}

fn open_log(storage: &Arc<dyn Storage>) -> Result<Arc<EmbeddedLog>, String> {
    open_log_with(storage, PARTITIONS)
}

fn open_log_with(storage: &Arc<dyn Storage>, partitions: u32) -> Result<Arc<EmbeddedLog>, String> {
    let witnesses =
        CheckpointStore::witnesses(&**storage, &state_dir()).map_err(|e| e.to_string())?;
    let options = EmbeddedLogOptions {
        partition_count: partitions,
        partition: PartitionConfig {
            // Small segments, index intervals and write-ahead files: crashes land in rolls,
            // index writes and write-ahead rotations too.
            segment_bytes_max: 4096,
            index_interval_bytes: 512,
            write_ahead_file_bytes_max: 6000,
            // Spares made on the writer's thread: the same operations every run.
            spare_making: SpareMaking::Inline,
            ..PartitionConfig::default()
        },
        storage: Arc::clone(storage),
        witnesses,
        ..EmbeddedLogOptions::default()
    };
    EmbeddedLog::open(&log_dir(), options)
        .map(Arc::new)
        .map_err(|e| e.to_string())
}

fn open_pipeline(storage: &Arc<dyn Storage>, log: Arc<EmbeddedLog>) -> Result<Pipeline, String> {
    let partitions = log.partition_count();
    let (store, _notes) = CheckpointStore::open_on(Arc::clone(storage), &state_dir(), partitions)
        .map_err(|e| e.to_string())?;
    // Journals compact as soon as they are due, and commit rounds retire their write-ahead
    // files after a few rounds: crashes land in compactions and retirements too.
    store.set_compaction_floor(0);
    store.set_round_write_ahead_bytes_max(3000);
    let config = PipelineConfig {
        checkpoint_records_max: 7,
        checkpoint_interval: Duration::from_secs(3600),
        read_batch_records: 5,
        ..PipelineConfig::default()
    };
    let log: Arc<dyn Log> = log;
    Pipeline::new(
        log,
        Arc::new(store),
        Arc::new(ReadModel::new(partitions)),
        Arc::new(SystemClock),
        config,
    )
    .map_err(|e| e.to_string())
}

/// Runs appends and catch-ups until the disk dies (or the steps run out, then it is killed).
fn run_until_crash(
    storage: &Arc<dyn Storage>,
    disk: &SimulatedDisk,
    random: &mut StdRng,
    next_payment: &mut u64,
    acknowledged: &mut Acknowledged,
) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let Ok(log) = open_log_with(storage, acknowledged.committed.len() as u32) else {
        return;
    };
    let pipeline = open_pipeline(storage, Arc::clone(&log)).ok();
    for _ in 0..STEPS_MAX {
        if disk.is_dead() {
            break;
        }
        let batch: Vec<KeyedRecord> = (0..random.gen_range(1..12))
            .map(|_| {
                // One in five is a resend of an earlier payment: dedupe must count it once.
                let payment = if *next_payment > 0 && random.gen_ratio(1, 5) {
                    random.gen_range(0..*next_payment)
                } else {
                    *next_payment += 1;
                    *next_payment - 1
                };
                let campaign = CAMPAIGNS[(payment % 3) as usize];
                let amount = 100 + payment % 7;
                envelope::keyed_record(&donation(
                    &format!("pay_{payment:06}"),
                    campaign,
                    amount,
                    1_790_000_000_000 + payment as i64 * 1000,
                    (payment % 11) as u32,
                ))
            })
            .collect();
        if let Ok(placements) = runtime.block_on(append_keyed(&*log, batch.clone())) {
            for ((partition, offset), record) in placements.into_iter().zip(batch) {
                acknowledged.records.push((partition, offset, record));
            }
        }
        if let Some(pipeline) = &pipeline
            && random.gen_ratio(1, 3)
        {
            let _ = pipeline.run(RunMode::CatchUp);
        }
    }
    if let Some(pipeline) = &pipeline {
        // The store remembers the last checkpoint each commit returned for.
        for partition in 0..log.partition_count() {
            if let Ok(Some(meta)) = pipeline.store().meta(partition) {
                let committed = &mut acknowledged.committed[partition as usize];
                *committed = (*committed).max(meta.scalars.next_offset);
            }
        }
    }
    disk.kill();
}

/// After a crash: everything acknowledged is there, checkpoints held, totals recompute.
fn check_invariants(storage: &Arc<dyn Storage>, acknowledged: &Acknowledged, context: &str) {
    let log = open_log_with(storage, acknowledged.committed.len() as u32)
        .unwrap_or_else(|e| panic!("{context}: the log must open: {e}"));
    for (partition, offset, record) in &acknowledged.records {
        let read = log
            .partition(*partition)
            .unwrap()
            .read(*offset, 1)
            .unwrap_or_else(|e| panic!("{context}: read {partition}/{offset}: {e}"));
        assert_eq!(
            read.first().map(|r| (&r.key, &r.value)),
            Some((&record.key, &record.value)),
            "{context}: acknowledged record at partition {partition} offset {offset}"
        );
    }
    let witnesses = CheckpointStore::witnesses(&**storage, &state_dir()).unwrap();
    for (partition, &committed) in acknowledged.committed.iter().enumerate() {
        let durable = witnesses
            .iter()
            .find(|w| w.partition == partition as u32)
            .map_or(0, |w| w.end_offset);
        assert!(
            durable >= committed,
            "{context}: partition {partition} committed a checkpoint at {committed}, \
             only {durable} survived"
        );
    }
    let pipeline = open_pipeline(storage, Arc::clone(&log))
        .unwrap_or_else(|e| panic!("{context}: the state must open: {e}"));
    pipeline
        .run(RunMode::CatchUp)
        .unwrap_or_else(|e| panic!("{context}: catch up: {e}"));
    assert_eq!(
        pipeline.read_model().campaign_totals(),
        totals_recomputed(&log),
        "{context}: totals equal a recomputation from the log"
    );
}

/// Every distinct payment in the log, counted once, by campaign.
fn totals_recomputed(log: &EmbeddedLog) -> BTreeMap<String, CampaignTotal> {
    let mut seen = HashSet::new();
    let mut totals: BTreeMap<String, CampaignTotal> = BTreeMap::new();
    for partition in 0..log.partition_count() {
        let reader = log.partition(partition).unwrap();
        for record in reader.read(0, usize::MAX).unwrap() {
            let event = envelope::decode(&record.value).unwrap();
            if seen.insert(event.payment_ref.clone()) {
                let total = totals.entry(event.campaign_id).or_default();
                total.total_cents += event.amount_cents;
                total.donations += 1;
            }
        }
    }
    totals
}

fn simulate(seed: u64, partitions: u32) {
    let mut random = StdRng::seed_from_u64(seed);
    let mut disk = SimulatedDisk::new();
    let mut acknowledged = Acknowledged {
        committed: vec![0; partitions as usize],
        ..Acknowledged::default()
    };
    let mut next_payment = 0;
    for crash in 0..CRASHES_PER_SEED {
        let storage = disk.storage();
        disk.crash_after(random.gen_range(20..1500));
        run_until_crash(
            &storage,
            &disk,
            &mut random,
            &mut next_payment,
            &mut acknowledged,
        );
        disk = disk.crash(random.r#gen());
        let context = format!("{partitions} partitions, seed {seed}, crash {crash}");
        check_invariants(&disk.storage(), &acknowledged, &context);
    }
}

#[test]
fn no_crash_point_loses_an_acknowledged_record_or_a_committed_checkpoint() {
    for seed in 0..SEEDS {
        simulate(seed, PARTITIONS);
    }
}

#[test]
fn no_crash_point_loses_an_acknowledged_record_or_a_committed_checkpoint_at_64_partitions() {
    for seed in 0..SEEDS_AT_MANY_PARTITIONS {
        simulate(10_000 + seed, 64);
    }
}

#[test]
fn the_simulated_disk_is_the_only_disk_written() {
    // The paths above are absolute; make sure nothing of them reached the real file system.
    simulate(1000, PARTITIONS);
    assert!(!Path::new("/data/log/manifest.json").exists());
}

/// How the first, big commit of [`commit_torn_where_a_failed_commit_was_cut`] fails.
#[derive(Debug, Clone, Copy)]
enum FirstFailure {
    /// A crash after its write, before its sync; cut when the log opens again.
    Crash,
    /// The disk fills up in the middle of its write; cut by the writer.
    DiskFull,
}

/// A commit that failed is cut; a second commit torn by a crash at the same place must be
/// judged torn too, never corruption: each cut must reach the disk before anything is written
/// there again, or sectors of the first commit would show through the second.
fn commit_torn_where_a_failed_commit_was_cut(first_failure: FirstFailure) {
    for seed in 0..64 {
        let mut disk = SimulatedDisk::new();
        let context = format!("{first_failure:?}, seed {seed}");
        let value = |fill: char, bytes: usize| fill.to_string().repeat(bytes);
        let log = open_log(&disk.storage()).unwrap();
        log.append_blocking(0, vec![tally_record("pay_first", &value('a', 100))])
            .unwrap();
        match first_failure {
            // The next commit's write happens, its sync does not.
            FirstFailure::Crash => disk.crash_after(1),
            FirstFailure::DiskFull => disk.set_bytes_max(Some(disk.bytes_used() + 2000)),
        }
        assert!(
            log.append_blocking(0, vec![tally_record("pay_big", &value('b', 3000))])
                .is_err()
        );
        disk.set_bytes_max(None);
        let log = match first_failure {
            FirstFailure::Crash => {
                drop(log);
                disk = disk.crash(seed);
                open_log(&disk.storage()).unwrap_or_else(|e| panic!("{context}: {e}"))
            }
            FirstFailure::DiskFull => log,
        };
        // The failed commit is gone, unless a crash let every sector of it reach the disk.
        let end_after_first = log.partition(0).unwrap().end_offset();
        assert!((1..=2).contains(&end_after_first), "{context}");
        disk.crash_after(1);
        assert!(
            log.append_blocking(0, vec![tally_record("pay_small", &value('c', 1500))])
                .is_err()
        );
        drop(log);
        disk = disk.crash(seed + 1000);
        let log = open_log(&disk.storage())
            .unwrap_or_else(|e| panic!("{context}: the second torn commit must open: {e}"));
        let end = log.partition(0).unwrap().end_offset();
        assert!(
            end == end_after_first || end == end_after_first + 1,
            "{context}"
        );
    }
}

#[test]
fn a_commit_torn_where_a_torn_commit_was_cut_still_opens() {
    commit_torn_where_a_failed_commit_was_cut(FirstFailure::Crash);
}

#[test]
fn a_commit_torn_where_a_disk_full_write_was_cut_still_opens() {
    commit_torn_where_a_failed_commit_was_cut(FirstFailure::DiskFull);
}

/// A sync fails; the next commit first recovers the partition from disk (cutting what the
/// failed sync may have left) and is then torn by a crash at its own sync: the log must open.
#[test]
fn a_commit_torn_right_after_recovering_from_a_failed_sync_still_opens() {
    let value = |fill: char, bytes: usize| fill.to_string().repeat(bytes);
    // Up to the failed sync; the same steps give the same disk every time.
    let failed_sync = |seed: u64| {
        let disk = SimulatedDisk::new();
        let log = open_log(&disk.storage()).unwrap();
        log.append_blocking(0, vec![tally_record("pay_first", &value('a', 100))])
            .unwrap();
        disk.fail_next_syncs(1);
        let big = vec![tally_record(&format!("pay_big_{seed}"), &value('b', 3000))];
        assert!(log.append_blocking(0, big).is_err());
        (disk, log)
    };
    let small = || vec![tally_record("pay_small", &value('c', 1500))];
    // Many seeds: the case that matters (the failed sync left a sector the torn commit does not
    // cover, and both its first sector and its seal reached the disk) is one way of tearing in
    // several dozen.
    for seed in 0..512 {
        // How many operations the recovery and the next commit's write take, up to its sync.
        let (disk, log) = failed_sync(seed);
        let before = disk.counters().operations;
        log.append_blocking(0, small()).unwrap();
        let until_sync = disk.counters().operations - before - 1;
        drop(log);

        let (disk, log) = failed_sync(seed);
        disk.crash_after(until_sync);
        assert!(
            log.append_blocking(0, small()).is_err(),
            "seed {seed}: crashed at its sync"
        );
        drop(log);
        let after = disk.crash(seed + 1000);
        let log = open_log(&after.storage()).unwrap_or_else(|e| {
            panic!("seed {seed}: a commit torn after a recovery must open: {e}")
        });
        assert!(
            (1..=2).contains(&log.partition(0).unwrap().end_offset()),
            "seed {seed}"
        );
    }
}

fn tally_record(key: &str, value: &str) -> KeyedRecord {
    KeyedRecord {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
    }
}

/// A reset checkpoint (a partition to be rebuilt from offset 0, as `tally log repair` leaves
/// it) stays reset across a crash, and a stored notification cursor keeps its new value.
#[test]
fn a_reset_checkpoint_and_a_stored_cursor_survive_a_crash() {
    for seed in 0..32 {
        let mut disk = SimulatedDisk::new();
        {
            let storage = disk.storage();
            let log = open_log(&storage).unwrap();
            let records = (0..20)
                .map(|i| {
                    envelope::keyed_record(&donation(
                        &format!("pay_{i}"),
                        "meals",
                        100,
                        1_790_000_000_000,
                        1,
                    ))
                })
                .collect();
            tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap()
                .block_on(append_keyed(&*log, records))
                .unwrap();
            let pipeline = open_pipeline(&storage, log).unwrap();
            pipeline.run(RunMode::CatchUp).unwrap();
            let store = pipeline.store();
            assert!(store.meta(0).unwrap().is_some(), "a checkpoint to reset");
            store.set_notification_cursor(0, 3).unwrap();
            store.reset(0).unwrap();
            store.set_notification_cursor(0, 7).unwrap();
        }
        disk = disk.crash(seed);
        let storage = disk.storage();
        let witnesses = CheckpointStore::witnesses(&*storage, &state_dir()).unwrap();
        assert!(
            witnesses.iter().all(|witness| witness.partition != 0),
            "seed {seed}: the reset checkpoint came back: {witnesses:?}"
        );
        let (store, _) = CheckpointStore::open_on(storage, &state_dir(), PARTITIONS).unwrap();
        assert_eq!(store.notification_cursor(0).unwrap(), 7, "seed {seed}");
    }
}
