//! One module per `tally` subcommand.

pub mod audit;
pub mod campaign;
pub mod checkpoint;
pub mod import;
pub mod log;
pub mod process;

use std::path::{Path, PathBuf};

use std::sync::Arc;

use anyhow::Context;
use tally_pipeline::checkpoint::{CheckpointStore, LoadedPartition};
use tally_pipeline::clock::{Clock, SystemClock};
use tally_pipeline::log::{EmbeddedLog, EmbeddedLogOptions, Log};
use tally_pipeline::read_model::{PartitionUpdate, ReadModel};
use tally_pipeline::runner::{Pipeline, PipelineConfig};

/// Where the embedded log lives inside a data directory.
pub fn log_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("log")
}

/// Opens the data directory's embedded log, creating it with `partition_count` partitions if
/// it does not exist yet.
pub fn open_log(data_dir: &Path, partition_count: Option<u32>) -> anyhow::Result<EmbeddedLog> {
    let mut options = EmbeddedLogOptions::default();
    if let Some(count) = partition_count {
        options.partition_count = count;
    }
    let dir = log_dir(data_dir);
    EmbeddedLog::open(&dir, options)
        .with_context(|| format!("cannot open the log in {}", dir.display()))
}

/// Opens an existing log, refusing to create one where there is none.
pub fn open_existing_log(data_dir: &Path) -> anyhow::Result<EmbeddedLog> {
    let dir = log_dir(data_dir);
    anyhow::ensure!(
        dir.join("manifest.json").exists(),
        "no donation log in {} (import or serve creates one)",
        dir.display()
    );
    open_log(data_dir, None)
}

/// Where the checkpointed state lives inside a data directory.
pub fn state_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("state")
}

/// Opens the checkpoint store for a log's partitions, reporting any rebuild it forces.
pub fn open_store(data_dir: &Path, partition_count: u32) -> anyhow::Result<CheckpointStore> {
    let dir = state_dir(data_dir);
    let (store, notes) = CheckpointStore::open(&dir, partition_count)
        .with_context(|| format!("cannot open the state in {}", dir.display()))?;
    for note in notes {
        tracing::warn!("{note}");
    }
    Ok(store)
}

/// The log, the state and the pipeline over them, for commands that process.
pub fn open_pipeline(data_dir: &Path, config: PipelineConfig) -> anyhow::Result<Pipeline> {
    let log: Arc<dyn Log> = Arc::new(open_existing_log(data_dir)?);
    let store = Arc::new(open_store(data_dir, log.partition_count())?);
    let read_model = Arc::new(ReadModel::new(log.partition_count()));
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    Ok(Pipeline::new(log, store, read_model, clock, config)?)
}

/// The committed state as queries see it, without processing anything. A damaged partition is
/// an error here: `tally process` rebuilds it.
pub fn load_read_model(store: &CheckpointStore) -> anyhow::Result<ReadModel> {
    let read_model = ReadModel::new(store.partition_count());
    for partition in 0..store.partition_count() {
        let loaded = store.load(partition).with_context(|| {
            format!(
                "the state of partition {partition} cannot be read (`tally process` rebuilds it)"
            )
        })?;
        if let LoadedPartition::Restored { state, meta } = loaded {
            read_model.publish(PartitionUpdate::whole(&state, meta.committed_at_ms));
        }
    }
    Ok(read_model)
}

/// Formats Unix milliseconds as RFC 3339 for people.
pub fn rfc3339(unix_ms: i64) -> String {
    tally_pipeline::event::EventTime(unix_ms)
        .to_rfc3339()
        .unwrap_or_else(|_| unix_ms.to_string())
}
