//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod browser;
pub mod fluvio;
pub mod in_process;
pub mod ledger;
pub mod pipeline;
pub mod server;
pub mod webhook;

use std::path::{Path, PathBuf};

use tally_pipeline::log::partition::PartitionConfig;
use tally_pipeline::log::{
    EmbeddedLog, EmbeddedLogOptions, KeyedRecord, LogRecord, Offset, PartitionId,
};

/// Options with tiny segments and write-ahead files so that tests cross segment boundaries
/// and write-ahead rotations, into spares made on the writer's side thread.
pub fn small_segment_options(partition_count: u32) -> EmbeddedLogOptions {
    EmbeddedLogOptions {
        partition_count,
        partition: PartitionConfig {
            segment_bytes_max: 2048,
            index_interval_bytes: 256,
            write_ahead_file_bytes_max: 64 * 1024,
            ..PartitionConfig::default()
        },
        ..EmbeddedLogOptions::default()
    }
}

pub fn open(dir: &Path, options: &EmbeddedLogOptions) -> EmbeddedLog {
    EmbeddedLog::open(dir, options.clone()).expect("open log")
}

pub fn record(key: &str, value: &str) -> KeyedRecord {
    KeyedRecord {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
    }
}

/// Every record of a partition, read in small batches to exercise resumption.
pub fn read_all(log: &EmbeddedLog, partition: PartitionId) -> Vec<LogRecord> {
    let reader = log.partition(partition).unwrap();
    let mut records = Vec::new();
    let mut next: Offset = 0;
    loop {
        let batch = reader.read(next, 37).unwrap();
        let Some(last) = batch.last() else { break };
        next = last.offset + 1;
        records.extend(batch);
    }
    assert_eq!(records.len() as u64, reader.end_offset());
    records
}

/// The segment files of one partition, in offset order.
pub fn segment_files(log_dir: &Path, partition: PartitionId) -> Vec<PathBuf> {
    let dir = log_dir.join(format!("partition-{partition:03}"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "seg"))
        .collect();
    files.sort();
    files
}

/// Flips bits of the byte at `position` of a file: damage done to a disk.
pub fn flip_byte(path: &Path, position: u64) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, position).unwrap();
    file.write_all_at(&[byte[0] ^ 0x5A], position).unwrap();
}

/// Runs the `tally` binary on a data directory and waits for it.
pub fn tally(data_dir: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tally"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env("TALLY_LOG", "warn")
        .output()
        .expect("run tally")
}

/// The committed fixtures (`tests/fixtures/`).
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Copies a directory tree (a fixture data directory) to `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Every campaign's `(total cents, donations)` as `tally campaign totals --json` reports them.
pub fn reported_totals(data_dir: &Path) -> std::collections::BTreeMap<String, (u64, u64)> {
    let output = tally(data_dir, &["campaign", "totals", "--json"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    rows.iter()
        .map(|row| {
            let total = (
                row["total_cents"].as_u64().unwrap(),
                row["donations"].as_u64().unwrap(),
            );
            (row["campaign_id"].as_str().unwrap().to_owned(), total)
        })
        .collect()
}
