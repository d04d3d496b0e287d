//! One module per `tally` subcommand.

pub mod import;
pub mod log;

use std::path::{Path, PathBuf};

use anyhow::Context;
use tally_pipeline::log::{EmbeddedLog, EmbeddedLogOptions};

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
