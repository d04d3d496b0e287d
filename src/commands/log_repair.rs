//! `tally log repair`: the operator's way out of a log that fails its checks.
//!
//! Opening a log never cuts what a checkpoint has seen, nor damage that is not a torn write;
//! it refuses, naming the file and byte. The repair cuts each damaged partition back to its last
//! whole commit before the damage (removing later segments), then records every cut as one JSON
//! line in `repair-audit.jsonl` beside the log, synced, and resets each checkpoint that had
//! applied records beyond the new end, so the state is rebuilt from what the log still holds.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use serde::Serialize;
use tally_pipeline::clock::{Clock, SystemClock};
use tally_pipeline::log::{
    EmbeddedLog, EmbeddedLogOptions, Log, Offset, PartitionId, RepairAction, embedded,
};
use tally_pipeline::storage::{OpenMode, OsStorage, Storage};

/// The audit file written beside a repaired log.
pub const REPAIR_AUDIT_FILE_NAME: &str = "repair-audit.jsonl";

/// One line of the repair audit.
#[derive(Debug, Serialize)]
struct AuditEntry<'a> {
    format_version: u32,
    repaired_at: String,
    log: &'a str,
    partition: PartitionId,
    file: String,
    position: u64,
    reason: &'a str,
    kept_end_offset: Offset,
    /// The furthest offset a checkpoint had seen, if it was beyond the new end: the records
    /// in `[kept_end_offset, witnessed_end_offset)` were acknowledged and are lost.
    witnessed_end_offset: Option<Offset>,
    bytes_cut: u64,
    segments_removed: Vec<String>,
}

pub fn run(data_dir: &Path) -> anyhow::Result<ExitCode> {
    let log_dir = super::log_dir(data_dir);
    anyhow::ensure!(
        log_dir.join("manifest.json").exists(),
        "no donation log in {}",
        log_dir.display()
    );
    let options = EmbeddedLogOptions {
        witnesses: super::witnesses(data_dir)?,
        ..Default::default()
    };
    // Recorded before anything is cut: a repair that stops half way is never silent.
    let started = serde_json::json!({
        "format_version": 1,
        "repair_started_at": super::rfc3339(SystemClock.now_ms()),
        "witnesses": options
            .witnesses
            .iter()
            .map(|witness| serde_json::json!({"partition": witness.partition, "end_offset": witness.end_offset}))
            .collect::<Vec<_>>(),
    });
    append_audit_lines(&log_dir, &[started])?;
    let actions = embedded::repair(&log_dir, &options)
        .with_context(|| format!("cannot repair the log in {}", log_dir.display()))?;
    record(&log_dir, "donations", &actions)?;
    reset_state_beyond(data_dir, &actions)?;
    let control_dir = data_dir.join("control");
    let control_actions = if control_dir.join("manifest.json").exists() {
        let actions =
            embedded::repair(&control_dir, &EmbeddedLogOptions::default()).with_context(|| {
                format!("cannot repair the control log in {}", control_dir.display())
            })?;
        record(&control_dir, "control", &actions)?;
        actions
    } else {
        Vec::new()
    };
    if actions.is_empty() && control_actions.is_empty() {
        println!("nothing to repair: every partition opens cleanly");
        return Ok(ExitCode::SUCCESS);
    }
    for (name, action) in actions
        .iter()
        .map(|action| ("log", action))
        .chain(control_actions.iter().map(|action| ("control log", action)))
    {
        println!("{}", describe(name, action));
    }
    println!(
        "the cuts are recorded in {}",
        log_dir.join(REPAIR_AUDIT_FILE_NAME).display()
    );
    Ok(ExitCode::SUCCESS)
}

fn describe(name: &str, action: &RepairAction) -> String {
    let lost = match &action.witness {
        Some(witness) if witness.end_offset > action.kept_end_offset => format!(
            "; acknowledged records at offsets {}..{} are lost",
            action.kept_end_offset, witness.end_offset
        ),
        _ => String::new(),
    };
    format!(
        "{name} partition {}: cut at {} byte {} ({}), now ends at offset {}{lost}",
        action.partition,
        action.path.display(),
        action.position,
        action.reason,
        action.kept_end_offset
    )
}

/// Appends one audit line per action to the log's audit file, synced.
fn record(dir: &Path, log: &str, actions: &[RepairAction]) -> anyhow::Result<()> {
    if actions.is_empty() {
        return Ok(());
    }
    let mut lines = Vec::new();
    let repaired_at = super::rfc3339(SystemClock.now_ms());
    for action in actions {
        let entry = AuditEntry {
            format_version: 1,
            repaired_at: repaired_at.clone(),
            log,
            partition: action.partition,
            file: action.path.display().to_string(),
            position: action.position,
            reason: &action.reason,
            kept_end_offset: action.kept_end_offset,
            witnessed_end_offset: action
                .witness
                .as_ref()
                .map(|witness| witness.end_offset)
                .filter(|&end| end > action.kept_end_offset),
            bytes_cut: action.bytes_cut,
            segments_removed: action
                .segments_removed
                .iter()
                .map(|path| path.display().to_string())
                .collect(),
        };
        lines.push(serde_json::to_value(&entry)?);
    }
    append_audit_lines(dir, &lines)
}

/// Appends JSON lines to the audit file beside a log, synced with its directory.
fn append_audit_lines(dir: &Path, lines: &[serde_json::Value]) -> anyhow::Result<()> {
    let path = dir.join(REPAIR_AUDIT_FILE_NAME);
    let file = OsStorage
        .open(&path, OpenMode::CreateOrOpen)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let mut bytes = Vec::new();
    for line in lines {
        serde_json::to_writer(&mut bytes, line)?;
        bytes.push(b'\n');
    }
    let end = file.len()?;
    file.write_all_at(&bytes, end)
        .and_then(|()| file.sync_data())
        .and_then(|()| OsStorage.sync_dir(dir))
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Resets each checkpoint that applied records the repair cut, and pulls back notification
/// cursors past the new end, so no offset is taken for a record it no longer holds.
fn reset_state_beyond(data_dir: &Path, actions: &[RepairAction]) -> anyhow::Result<()> {
    if actions.is_empty() {
        return Ok(());
    }
    // Opened without witnesses: the checkpoints that saw beyond the cut are the ones reset here.
    let log_dir = super::log_dir(data_dir);
    let log = EmbeddedLog::open(&log_dir, EmbeddedLogOptions::default())
        .with_context(|| format!("cannot open the repaired log in {}", log_dir.display()))?;
    let store = super::open_store(data_dir, log.partition_count())?;
    drop(log);
    for action in actions {
        let partition = action.partition;
        let applied = store.meta(partition)?.map(|meta| meta.scalars.next_offset);
        if applied.is_some_and(|next| next > action.kept_end_offset) {
            store.reset(partition)?;
            println!(
                "partition {partition}: its checkpoint had applied records that were cut; it is \
                 rebuilt from the log on the next start"
            );
        }
        if store.notification_cursor(partition)? > action.kept_end_offset {
            store.set_notification_cursor(partition, action.kept_end_offset)?;
        }
    }
    Ok(())
}
