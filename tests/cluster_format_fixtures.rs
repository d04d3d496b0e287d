//! Guards the formats of the cluster's records: control log records, nodes-topic records,
//! results-topic records and the results cache file, as written by earlier builds, must still be
//! read by this build.
//!
//! Each `*.bin` fixture under `tests/fixtures/` holds the record values one kind of writer
//! produced, each prefixed by its length (u32, little-endian); the cache fixture is the file
//! itself. They are written through the public API (a registry, a node joining, a publisher, a
//! cache saved) so that they are exactly what a running node writes, and read back the same way.
//!
//! The `*_unversioned` fixtures were written by this file's `regenerate_fixtures` before these
//! records carried a format version; no build can write them again. The `*_v1` ones are written by `regenerate_fixtures` (run with
//! `TALLY_WRITE_FIXTURES=1 cargo test --test cluster_format_fixtures -- --ignored`), which must
//! never be run again for version 1: a new format version changes [`WRITTEN_SUFFIX`] and adds
//! new fixtures and tests beside them. `version_1_encodings_are_unchanged` checks that this build
//! still writes version 1 byte for byte.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tally_pipeline::campaigns::{CampaignDefinition, CampaignRegistry, Reconciliation};
use tally_pipeline::clock::ManualClock;
use tally_pipeline::cluster::results::{ResultsCache, snapshot_start};
use tally_pipeline::cluster::{ClusterError, Membership, NodeAnnouncement, ResultsPublisher};
use tally_pipeline::event::EventTime;
use tally_pipeline::log::{EmbeddedLog, EmbeddedLogOptions, KeyedRecord, Log, PartitionId};
use tally_pipeline::operators::campaign_totals::CampaignTotal;
use tally_pipeline::operators::event_time_windows::{
    BucketKey, Granularity, RolledUp, WindowBucket,
};
use tally_pipeline::processor::PartitionCounters;
use tally_pipeline::read_model::{PartitionUpdate, ReadModel};
use tally_pipeline::runner::UpdateSink;
use tokio::sync::watch;

/// The suffix of the fixtures `regenerate_fixtures` writes: the format version this build writes.
const WRITTEN_SUFFIX: &str = "v1";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn one_partition_log(dir: &Path) -> Arc<dyn Log> {
    let options = EmbeddedLogOptions {
        partition_count: 1,
        ..EmbeddedLogOptions::default()
    };
    Arc::new(EmbeddedLog::open(dir, options).unwrap())
}

fn write_records(path: &Path, values: &[Vec<u8>]) {
    let mut bytes = Vec::new();
    for value in values {
        bytes.extend_from_slice(&u32::try_from(value.len()).unwrap().to_le_bytes());
        bytes.extend_from_slice(value);
    }
    std::fs::write(path, bytes).unwrap();
}

fn read_records(path: &Path) -> Vec<Vec<u8>> {
    let bytes = std::fs::read(path).unwrap();
    let mut rest = bytes.as_slice();
    let mut values = Vec::new();
    while !rest.is_empty() {
        let (length, tail) = rest.split_at(4);
        let length = u32::from_le_bytes(length.try_into().unwrap()) as usize;
        let (value, tail) = tail.split_at(length);
        values.push(value.to_vec());
        rest = tail;
    }
    values
}

/// Every value of the log's only partition.
async fn values(log: &dyn Log) -> Vec<Vec<u8>> {
    let records = log.read(0, 0, 1024).await.unwrap();
    records.into_iter().map(|record| record.value).collect()
}

/// A log holding `values`, one record each.
async fn log_of(dir: &Path, values: Vec<Vec<u8>>) -> Arc<dyn Log> {
    let log = one_partition_log(dir);
    for value in values {
        let record = KeyedRecord {
            key: b"fixture".to_vec(),
            value,
        };
        log.append(0, vec![record]).await.unwrap();
    }
    log
}

// The control log: one record of every kind of change.

fn definition() -> CampaignDefinition {
    CampaignDefinition {
        campaign_id: "meals".into(),
        name: "Meals for kids".into(),
        currency: "USD".into(),
        goal_cents: Some(1_000_000),
        starts_at: Some(EventTime(1_795_546_800_000)),
        ends_at: None,
    }
}

fn reconciliation() -> Reconciliation {
    Reconciliation {
        final_total_cents: 4_200,
        final_donations: 3,
        running_total_cents: 4_200,
        running_donations: 3,
        matched: true,
    }
}

async fn write_control_records() -> Vec<Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let registry = CampaignRegistry::open(one_partition_log(dir.path()))
        .await
        .unwrap();
    registry
        .create(definition(), EventTime(1_795_546_800_001))
        .await
        .unwrap();
    registry.request_close("meals", "node-a").await.unwrap();
    registry
        .confirm_intake_stopped("meals", "node-a")
        .await
        .unwrap();
    registry.start_close("meals", vec![4, 9]).await.unwrap();
    registry
        .finish_close(
            "meals",
            reconciliation(),
            Default::default(),
            EventTime(1_795_546_900_000),
        )
        .await
        .unwrap();
    values(registry.control().as_ref()).await
}

async fn check_control_records(path: &Path) {
    let records = read_records(path);
    assert_eq!(records.len(), 5, "one record of each kind");
    let dir = tempfile::tempdir().unwrap();
    let registry = CampaignRegistry::open(log_of(dir.path(), records).await)
        .await
        .unwrap();
    let campaigns = registry.list();
    assert_eq!(campaigns.len(), 1);
    let meals = &campaigns[0];
    assert_eq!(meals.definition, definition());
    assert_eq!(meals.created_at, EventTime(1_795_546_800_001));
    assert_eq!(meals.created_offset, 0);
    assert_eq!(
        meals.intake_stopped.iter().collect::<Vec<_>>(),
        vec!["node-a"]
    );
    assert_eq!(meals.close_offsets, Some(vec![4, 9]));
    assert_eq!(meals.closed_at, Some(EventTime(1_795_546_900_000)));
    assert_eq!(meals.reconciliation, Some(reconciliation()));
    assert_eq!(meals.status.as_str(), "closed");
}

#[tokio::test]
async fn control_records_unversioned_fixture_folds() {
    check_control_records(&fixtures().join("control_records_unversioned.bin")).await;
}

// The nodes topic: a claim and a heartbeat of a live node, a claim and a withdrawal of another.

const NODES_CLOCK_MS: i64 = 1_795_546_800_000;

fn node(id: &str, owns: &[PartitionId]) -> NodeAnnouncement {
    NodeAnnouncement {
        node_id: id.into(),
        owns: owns.to_vec(),
        advertise: format!("http://127.0.0.1:80{}", owns[0]),
    }
}

async fn write_node_records() -> Vec<Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let log = one_partition_log(dir.path());
    let clock = Arc::new(ManualClock::new(NODES_CLOCK_MS));
    let a = Membership::join(Arc::clone(&log), node("a", &[0, 1]), clock.clone())
        .await
        .unwrap();
    clock.advance(1_000);
    a.heartbeat().await.unwrap();
    let b = Membership::join(Arc::clone(&log), node("b", &[2, 3]), clock.clone())
        .await
        .unwrap();
    clock.advance(1_000);
    b.withdraw().await;
    values(log.as_ref()).await
}

async fn check_node_records(path: &Path) {
    let records = read_records(path);
    assert_eq!(records.len(), 4, "claim, heartbeat, claim, withdrawal");
    let dir = tempfile::tempdir().unwrap();
    let log = log_of(dir.path(), records).await;
    let clock = Arc::new(ManualClock::new(NODES_CLOCK_MS + 2_500));
    // b withdrew: its partitions are free. a is live: its are not.
    let z = Membership::join(Arc::clone(&log), node("z", &[2, 3]), clock.clone())
        .await
        .unwrap();
    let a = z.remote_owner(1).expect("a owns partition 1");
    assert_eq!(a.node, node("a", &[0, 1]));
    assert_eq!(
        (a.claim_offset, a.last_seen_ms),
        (0, NODES_CLOCK_MS + 1_000)
    );
    assert!(!a.withdrawn);
    let live: Vec<String> = z.live_nodes().into_iter().map(|n| n.node.node_id).collect();
    assert_eq!(live, vec!["a".to_owned(), "z".to_owned()]);
    match Membership::join(Arc::clone(&log), node("y", &[1]), clock).await {
        Err(ClusterError::OwnershipConflict { node_id, .. }) => assert_eq!(node_id, "a"),
        other => panic!("expected a conflict with a, got {other:?}"),
    }
}

// The results topic and the results cache: two partitions' updates.

fn update(partition: PartitionId, next_offset: u64, total_cents: u64) -> PartitionUpdate {
    let mut bucket = WindowBucket::default();
    bucket.add(total_cents);
    PartitionUpdate {
        partition,
        next_offset,
        committed_at_ms: 1_795_546_800_000 + next_offset as i64,
        checkpoint_duration_us: 250 + u64::from(partition),
        watermark_ms: Some(1_795_546_790_000),
        counters: PartitionCounters {
            applied: next_offset,
            recorded: next_offset - 1,
            duplicates: 1,
            conflicts: 0,
            late: u64::from(partition),
        },
        totals: vec![(
            "meals".into(),
            CampaignTotal {
                total_cents,
                donations: next_offset - 1,
            },
        )],
        rolled_up: RolledUp::NONE,
        retractions: Vec::new(),
        refund_buckets: Vec::new(),
        retraction_counters: Default::default(),
        buckets: vec![(
            BucketKey {
                campaign_id: "meals".into(),
                granularity: Granularity::Minute,
                start_ms: 1_795_546_740_000,
            },
            bucket.into(),
        )],
    }
}

fn updates() -> Vec<PartitionUpdate> {
    vec![update(0, 12, 4_200), update(1, 7, 1_500)]
}

fn check_read_model(read_model: &ReadModel) {
    for expected in updates() {
        assert_eq!(
            format!("{:?}", read_model.export_partition(expected.partition)),
            format!("{expected:?}")
        );
    }
}

async fn write_results_records() -> Vec<Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let log = one_partition_log(dir.path());
    // Updates only: the publisher's read model (its runners' view) is behind what it was
    // offered, so no snapshot is due yet.
    let publisher = ResultsPublisher::new(Arc::clone(&log), Arc::new(ReadModel::new(2)));
    for update in updates() {
        publisher.offer(&update);
    }
    let (_, stopped) = watch::channel(true);
    publisher.run(stopped).await;
    values(log.as_ref()).await
}

/// Snapshots of both partitions: what an owner publishes first.
async fn write_results_snapshots() -> Vec<Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let log = one_partition_log(dir.path());
    let read_model = Arc::new(ReadModel::new(2));
    let publisher = ResultsPublisher::new(Arc::clone(&log), Arc::clone(&read_model));
    for update in updates() {
        publisher.offer(&update);
        read_model.publish(update);
    }
    let (_, stopped) = watch::channel(true);
    publisher.run(stopped).await;
    let mut values = values(log.as_ref()).await;
    // The publisher names its snapshots by the time it started: pin it.
    for value in &mut values {
        value[2 + 4..2 + 4 + 8].copy_from_slice(&SNAPSHOT_PUBLISHER.to_le_bytes());
    }
    values
}

/// The publisher named in the snapshots fixture.
const SNAPSHOT_PUBLISHER: u64 = 0x0102_0304_0506_0708;

async fn check_results_snapshots(path: &Path) {
    let records = read_records(path);
    assert_eq!(records.len(), 2, "one snapshot record per partition");
    let dir = tempfile::tempdir().unwrap();
    let log = log_of(dir.path(), records).await;
    let start = snapshot_start(log.as_ref(), 2, &[], 0, i64::MIN)
        .await
        .unwrap();
    assert_eq!(start, 0, "both snapshots are complete");
    let read_model = ReadModel::new(2);
    tally_pipeline::cluster::catch_up_results(log.as_ref(), &read_model, &[], start)
        .await
        .unwrap();
    check_read_model(&read_model);
}

async fn check_results_records(path: &Path) {
    let records = read_records(path);
    let dir = tempfile::tempdir().unwrap();
    let log = log_of(dir.path(), records).await;
    let read_model = ReadModel::new(2);
    tally_pipeline::cluster::catch_up_results(log.as_ref(), &read_model, &[], 0)
        .await
        .unwrap();
    check_read_model(&read_model);
}

/// The topic offset a cache fixture reflects.
const CACHE_NEXT_OFFSET: u64 = 5;

fn write_results_cache() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let read_model = ReadModel::new(2);
    for update in updates() {
        read_model.publish(update);
    }
    let cache = ResultsCache::new(dir.path().join("results-cache"));
    cache.save(&read_model, &[], CACHE_NEXT_OFFSET).unwrap();
    std::fs::read(cache.path()).unwrap()
}

fn check_results_cache(path: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("results-cache");
    std::fs::copy(path, &copy).unwrap();
    let read_model = ReadModel::new(2);
    let from = ResultsCache::new(copy).load(&read_model, &[], CACHE_NEXT_OFFSET);
    assert_eq!(from, CACHE_NEXT_OFFSET);
    check_read_model(&read_model);
}

#[tokio::test]
async fn node_records_unversioned_fixture_folds() {
    check_node_records(&fixtures().join("node_records_unversioned.bin")).await;
}

#[tokio::test]
async fn results_records_unversioned_fixture_folds() {
    check_results_records(&fixtures().join("results_records_unversioned.bin")).await;
}

#[test]
fn results_cache_unversioned_fixture_loads() {
    check_results_cache(&fixtures().join("results_cache_unversioned.bin"));
}

#[tokio::test]
async fn control_records_v1_fixture_folds() {
    check_control_records(&fixtures().join("control_records_v1.bin")).await;
}

#[tokio::test]
async fn node_records_v1_fixture_folds() {
    check_node_records(&fixtures().join("node_records_v1.bin")).await;
}

#[tokio::test]
async fn results_records_v1_fixture_folds() {
    check_results_records(&fixtures().join("results_records_v1.bin")).await;
}

#[tokio::test]
async fn results_snapshots_v1_fixture_folds() {
    check_results_snapshots(&fixtures().join("results_snapshots_v1.bin")).await;
}

#[test]
fn results_cache_v1_fixture_loads() {
    check_results_cache(&fixtures().join("results_cache_v1.bin"));
}

/// Every record of a versioned kind starts with the marker and its version.
fn assert_version(values: &[Vec<u8>], version: u8) {
    for value in values {
        assert_eq!(value[..2], [0xFF, version], "format marker and version");
    }
}

#[tokio::test]
async fn version_1_encodings_are_unchanged() {
    let control = write_control_records().await;
    assert_version(&control, 1);
    assert_eq!(
        control,
        read_records(&fixtures().join("control_records_v1.bin")),
        "control record version 1 changed"
    );
    let nodes = write_node_records().await;
    assert_version(&nodes, 1);
    assert_eq!(
        nodes,
        read_records(&fixtures().join("node_records_v1.bin")),
        "nodes-topic record version 1 changed"
    );
    let results = write_results_records().await;
    assert_version(&results, 1);
    assert_eq!(
        results,
        read_records(&fixtures().join("results_records_v1.bin")),
        "results record version 1 changed"
    );
    let snapshots = write_results_snapshots().await;
    assert_version(&snapshots, 1);
    assert_eq!(
        snapshots,
        read_records(&fixtures().join("results_snapshots_v1.bin")),
        "results snapshot record version 1 changed"
    );
    let cache = write_results_cache();
    assert_eq!(cache[..9], *b"tallyrc\xFF\x01", "cache magic and version");
    assert_eq!(
        cache,
        std::fs::read(fixtures().join("results_cache_v1.bin")).unwrap(),
        "results cache version 1 changed"
    );
}

#[test]
#[ignore = "writes the fixtures of the current formats; run only to create them"]
fn regenerate_fixtures() {
    if std::env::var("TALLY_WRITE_FIXTURES").as_deref() != Ok("1") {
        return;
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let control = write_control_records().await;
        write_records(
            &fixtures().join(format!("control_records_{WRITTEN_SUFFIX}.bin")),
            &control,
        );
        let nodes = write_node_records().await;
        write_records(
            &fixtures().join(format!("node_records_{WRITTEN_SUFFIX}.bin")),
            &nodes,
        );
        let results = write_results_records().await;
        write_records(
            &fixtures().join(format!("results_records_{WRITTEN_SUFFIX}.bin")),
            &results,
        );
        let snapshots = write_results_snapshots().await;
        write_records(
            &fixtures().join(format!("results_snapshots_{WRITTEN_SUFFIX}.bin")),
            &snapshots,
        );
    });
    std::fs::write(
        fixtures().join(format!("results_cache_{WRITTEN_SUFFIX}.bin")),
        write_results_cache(),
    )
    .unwrap();
}
