//! `tally log …`: look inside the donation log.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde::Serialize;
use tally_pipeline::event::{EventTime, LoggedDonation, envelope};
use tally_pipeline::log::{Offset, PartitionId};

/// Records printed by one `tail` unless `--limit` says otherwise.
const TAIL_LIMIT_DEFAULT: usize = 100;
/// Records read from the log per batch while tailing.
const TAIL_READ_RECORDS: usize = 1024;

#[derive(Debug, Subcommand)]
pub enum LogCommand {
    /// Per partition: end offset, segments, bytes.
    Stats {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print records of one partition as JSON lines.
    Tail(TailArgs),
    /// Read every record of every partition and check its checksum.
    Verify,
    /// Cut each damaged partition (of the donation log and the control log) back to its last
    /// whole commit before the damage, record what was cut in `repair-audit.jsonl` beside the
    /// log, and reset checkpoints that had applied records beyond the new end (they are rebuilt
    /// from the log). The way out when `serve` refuses to start over corruption.
    Repair,
}

#[derive(Debug, Args)]
pub struct TailArgs {
    #[arg(long)]
    partition: PartitionId,
    #[arg(long, default_value_t = 0)]
    from: Offset,
    #[arg(long, default_value_t = TAIL_LIMIT_DEFAULT)]
    limit: usize,
}

#[derive(Debug, Serialize)]
struct PartitionRow {
    partition: PartitionId,
    end_offset: Offset,
    segments: usize,
    bytes: u64,
}

pub fn run(data_dir: &Path, command: LogCommand) -> anyhow::Result<ExitCode> {
    if let LogCommand::Repair = command {
        return super::log_repair::run(data_dir);
    }
    let log = super::open_existing_log(data_dir)?;
    match command {
        LogCommand::Stats { json } => stats(&log, json),
        LogCommand::Tail(args) => tail(&log, &args),
        LogCommand::Verify => {
            let end_offsets = log.verify().context("log verification failed")?;
            let records: u64 = end_offsets.iter().sum();
            println!(
                "ok: {records} records in {} partitions verified",
                end_offsets.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        LogCommand::Repair => unreachable!("handled before the log is opened"),
    }
}

fn stats(log: &tally_pipeline::log::EmbeddedLog, json: bool) -> anyhow::Result<ExitCode> {
    let rows: Vec<PartitionRow> = log
        .stats()
        .into_iter()
        .map(|s| PartitionRow {
            partition: s.partition,
            end_offset: s.end_offset,
            segments: s.segments,
            bytes: s.bytes,
        })
        .collect();
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &rows)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "{:>9}  {:>12}  {:>8}  {:>14}",
        "partition", "end_offset", "segments", "bytes"
    )?;
    for row in &rows {
        writeln!(
            out,
            "{:>9}  {:>12}  {:>8}  {:>14}",
            row.partition, row.end_offset, row.segments, row.bytes
        )?;
    }
    let total = |f: fn(&PartitionRow) -> u64| rows.iter().map(f).sum::<u64>();
    writeln!(
        out,
        "{:>9}  {:>12}  {:>8}  {:>14}",
        "total",
        total(|r| r.end_offset),
        total(|r| r.segments as u64),
        total(|r| r.bytes)
    )?;
    Ok(ExitCode::SUCCESS)
}

fn tail(log: &tally_pipeline::log::EmbeddedLog, args: &TailArgs) -> anyhow::Result<ExitCode> {
    let partition = log.partition(args.partition)?;
    let mut out = std::io::stdout().lock();
    let mut next = args.from;
    let mut printed = 0;
    while printed < args.limit {
        let records = partition.read(next, TAIL_READ_RECORDS.min(args.limit - printed))?;
        let Some(last) = records.last() else { break };
        next = last.offset + 1;
        for record in records {
            let event = envelope::decode(&record.value).with_context(|| {
                format!("record {} of partition {}", record.offset, record.partition)
            })?;
            let logged = LoggedDonation {
                partition: record.partition,
                offset: record.offset,
                append_time: EventTime(record.append_time_ms),
                event,
            };
            serde_json::to_writer(&mut out, &logged)?;
            writeln!(out)?;
            printed += 1;
        }
    }
    Ok(ExitCode::SUCCESS)
}
