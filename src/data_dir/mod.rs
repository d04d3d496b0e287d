//! A data directory's layout: the embedded log in `log/`, the checkpointed state in `state/`,
//! and the binding to the log its state belongs to ([`log_binding`]). The server and every
//! command open them through here, so they agree on where things are.

pub mod log_binding;

use std::path::{Path, PathBuf};

use anyhow::Context;
use tally_pipeline::checkpoint::CheckpointStore;
use tally_pipeline::log::{EmbeddedLog, EmbeddedLogOptions, Witness};
use tally_pipeline::storage::OsStorage;

/// Where the embedded log lives inside a data directory.
pub fn log_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("log")
}

/// Opens the data directory's embedded log, creating it with `partition_count` partitions if
/// it does not exist yet.
pub fn open_log(data_dir: &Path, partition_count: Option<u32>) -> anyhow::Result<EmbeddedLog> {
    log_binding::ensure_embedded(data_dir)?;
    let mut options = EmbeddedLogOptions::default();
    if let Some(count) = partition_count {
        options.partition_count = count;
    }
    options.witnesses = witnesses(data_dir)?;
    let dir = log_dir(data_dir);
    EmbeddedLog::open(&dir, options)
        .with_context(|| format!("cannot open the log in {}", dir.display()))
}

/// How far the checkpoints in the data directory have seen each partition of the log reach:
/// recovery never cuts the log below that.
pub fn witnesses(data_dir: &Path) -> anyhow::Result<Vec<Witness>> {
    let dir = state_dir(data_dir);
    CheckpointStore::witnesses(&OsStorage, &dir)
        .with_context(|| format!("cannot read the checkpoints in {}", dir.display()))
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

/// Opens the checkpoint store for a log's partitions, compacting each journal once it
/// outweighs its snapshot by `compaction_floor_bytes` at least, and reports any rebuild it
/// forces.
pub fn open_store(
    data_dir: &Path,
    partition_count: u32,
    compaction_floor_bytes: u64,
) -> anyhow::Result<CheckpointStore> {
    let dir = state_dir(data_dir);
    let (store, notes) = CheckpointStore::open(&dir, partition_count)
        .with_context(|| format!("cannot open the state in {}", dir.display()))?;
    store.set_compaction_floor(compaction_floor_bytes);
    for note in notes {
        tracing::warn!("{note}");
    }
    Ok(store)
}
