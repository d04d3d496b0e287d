//! Helpers for tests that run the pipeline over an embedded log.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tally_pipeline::checkpoint::CheckpointStore;
use tally_pipeline::clock::SystemClock;
use tally_pipeline::event::{DonationEvent, EventTime, envelope};
use tally_pipeline::log::{
    EmbeddedLog, EmbeddedLogOptions, Log, Offset, PartitionId, append_keyed,
};
use tally_pipeline::read_model::ReadModel;
use tally_pipeline::runner::{Pipeline, PipelineConfig, RunMode};

/// A data directory laid out as `tally` lays it out: `log/` and `state/`.
pub struct DataDir {
    pub root: PathBuf,
    pub partitions: u32,
}

impl DataDir {
    pub fn new(root: &Path, partitions: u32) -> Self {
        Self {
            root: root.to_owned(),
            partitions,
        }
    }

    pub fn log_dir(&self) -> PathBuf {
        self.root.join("log")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.root.join("state")
    }

    pub fn open_log(&self) -> Arc<EmbeddedLog> {
        let options = EmbeddedLogOptions {
            partition_count: self.partitions,
            ..Default::default()
        };
        Arc::new(EmbeddedLog::open(&self.log_dir(), options).expect("open log"))
    }

    /// Appends events (keyed by payment_ref) and returns where each landed.
    pub fn append(
        &self,
        log: &EmbeddedLog,
        events: &[DonationEvent],
    ) -> Vec<(PartitionId, Offset)> {
        let records = events.iter().map(envelope::keyed_record).collect();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime
            .block_on(append_keyed(log, records))
            .expect("append")
    }

    /// Appends records of any kind (donations, refunds) and returns where each landed.
    pub fn append_records(
        &self,
        log: &EmbeddedLog,
        records: Vec<tally_pipeline::log::KeyedRecord>,
    ) -> Vec<(PartitionId, Offset)> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime
            .block_on(append_keyed(log, records))
            .expect("append")
    }

    /// A pipeline over this directory's log and state.
    pub fn pipeline(&self, log: Arc<EmbeddedLog>, checkpoint_records_max: u64) -> Pipeline {
        let config = PipelineConfig {
            checkpoint_records_max,
            checkpoint_interval: Duration::from_secs(3600),
            read_batch_records: 97,
            ..PipelineConfig::default()
        };
        self.pipeline_with(log, config)
    }

    /// A pipeline over this directory's state with `config`.
    pub fn pipeline_with(&self, log: Arc<EmbeddedLog>, config: PipelineConfig) -> Pipeline {
        let (store, _notes) =
            CheckpointStore::open(&self.state_dir(), self.partitions).expect("open state");
        let log: Arc<dyn Log> = log;
        Pipeline::new(
            log,
            Arc::new(store),
            Arc::new(ReadModel::new(self.partitions)),
            Arc::new(SystemClock),
            config,
        )
        .expect("pipeline")
    }

    /// Each partition's committed offset (0 without a checkpoint).
    pub fn committed_offsets(&self) -> Vec<Offset> {
        let (store, _notes) =
            CheckpointStore::open(&self.state_dir(), self.partitions).expect("open state");
        (0..self.partitions)
            .map(|p| {
                store
                    .meta(p)
                    .expect("meta")
                    .map_or(0, |m| m.scalars.next_offset)
            })
            .collect()
    }

    /// Opens everything, catches up, and returns the pipeline (still holding the state).
    pub fn catch_up(&self, log: Arc<EmbeddedLog>, checkpoint_records_max: u64) -> Pipeline {
        let pipeline = self.pipeline(log, checkpoint_records_max);
        pipeline.run(RunMode::CatchUp).expect("catch up");
        pipeline
    }
}

/// Each partition's committed digest, after checking it against a rebuild from the log.
pub fn verified_digests(pipeline: &Pipeline) -> Vec<u64> {
    let store = pipeline.store();
    (0..store.partition_count())
        .map(|partition| {
            let meta = store
                .export(partition)
                .expect("export")
                .expect("a checkpoint")
                .meta;
            let scalars = meta.scalars;
            let rebuilt = pipeline
                .rebuild_in_memory(
                    partition,
                    scalars.next_offset,
                    scalars.watermark.allowed_lateness_ms(),
                )
                .expect("rebuild");
            assert_eq!(
                rebuilt.state_digest(),
                meta.state_digest,
                "partition {partition} matches the log"
            );
            meta.state_digest
        })
        .collect()
}

pub fn donation(
    payment_ref: &str,
    campaign_id: &str,
    amount_cents: u64,
    paid_at_ms: i64,
    user: u32,
) -> DonationEvent {
    DonationEvent {
        payment_ref: payment_ref.to_owned(),
        order_id: format!("ord-{payment_ref}"),
        user_id: format!("usr-{user}"),
        campaign_id: campaign_id.to_owned(),
        amount_cents,
        currency: "USD".to_owned(),
        paid_at: EventTime(paid_at_ms),
    }
}
