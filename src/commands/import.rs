//! `tally import FILE`: the backfill path for historical donations.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use serde_json::Value;
use tally_ingest::body::BodyError;
use tally_pipeline::clock::{Clock, SystemClock};
use tally_pipeline::event::envelope;
use tally_pipeline::event::validate::{DonationLimits, validate_donation};
use tally_pipeline::log::{KeyedRecord, Log, append_keyed};

/// A longer line is rejected without being parsed: a donation is a few hundred bytes.
const LINE_BYTES_MAX: usize = 64 * 1024;
/// Valid lines are appended in batches of this many records (one durable commit per partition).
const IMPORT_BATCH_RECORDS: usize = 4096;

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// NDJSON file of donation events, or `-` for standard input.
    file: PathBuf,
    /// Partitions of the log if this import creates it.
    #[arg(long, default_value_t = 8)]
    partitions: u32,
    /// Largest accepted donation, in cents.
    #[arg(long, default_value_t = DonationLimits::default().amount_cents_max)]
    amount_cents_max: u64,
}

#[derive(Debug, Default)]
struct ImportCounts {
    appended: u64,
    rejected: u64,
}

pub fn run(data_dir: &Path, args: ImportArgs) -> anyhow::Result<ExitCode> {
    let input: Box<dyn Read> = if args.file.as_os_str() == "-" {
        Box::new(std::io::stdin())
    } else {
        let file = File::open(&args.file)
            .with_context(|| format!("cannot open {}", args.file.display()))?;
        Box::new(file)
    };
    let log = super::open_log(data_dir, Some(args.partitions))?;
    let limits = DonationLimits {
        amount_cents_max: args.amount_cents_max,
        ..DonationLimits::default()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let counts = runtime.block_on(import(&log, BufReader::new(input), &limits))?;
    println!(
        "imported {} donations into {}; rejected {} lines",
        counts.appended,
        super::log_dir(data_dir).display(),
        counts.rejected
    );
    Ok(if counts.rejected == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn import(
    log: &dyn Log,
    mut input: impl BufRead,
    limits: &DonationLimits,
) -> anyhow::Result<ImportCounts> {
    let mut counts = ImportCounts::default();
    let mut batch = Vec::with_capacity(IMPORT_BATCH_RECORDS);
    let mut line = Vec::new();
    let mut line_number = 0u64;
    while read_bounded_line(&mut input, &mut line)? {
        line_number += 1;
        match parse_line(&line, limits) {
            Ok(None) => {}
            Ok(Some(record)) => batch.push(record),
            Err(message) => {
                counts.rejected += 1;
                eprintln!("line {line_number}: {message}");
            }
        }
        if batch.len() >= IMPORT_BATCH_RECORDS {
            counts.appended += flush(log, &mut batch).await?;
        }
    }
    counts.appended += flush(log, &mut batch).await?;
    Ok(counts)
}

async fn flush(log: &dyn Log, batch: &mut Vec<KeyedRecord>) -> anyhow::Result<u64> {
    if batch.is_empty() {
        return Ok(0);
    }
    let records = std::mem::take(batch);
    let count = records.len() as u64;
    append_keyed(log, records)
        .await
        .context("append to the log failed")?;
    Ok(count)
}

/// One line's record, `None` for a blank line, or why it was rejected.
fn parse_line(line: &[u8], limits: &DonationLimits) -> Result<Option<KeyedRecord>, String> {
    if line.len() > LINE_BYTES_MAX {
        return Err(format!("line longer than {LINE_BYTES_MAX} bytes"));
    }
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    // The same reading as a callback's body: a key given twice is refused, not last-one-wins.
    let value: Value = tally_ingest::body::value(line).map_err(|error| match error {
        BodyError::RepeatedKey(ref key) => format!("{key}: {error}"),
        other => format!("malformed JSON: {other}"),
    })?;
    let input =
        validate_donation(&value, limits, SystemClock.now_ms()).map_err(|e| e.to_string())?;
    let event = input.into_event(None).map_err(|e| e.to_string())?;
    Ok(Some(envelope::keyed_record(&event)))
}

/// Reads one line into `line` (without its newline), keeping at most `LINE_BYTES_MAX + 1`
/// bytes of it and discarding the rest. Returns false at the end of the input.
fn read_bounded_line(input: &mut impl BufRead, line: &mut Vec<u8>) -> anyhow::Result<bool> {
    line.clear();
    let mut seen_any = false;
    loop {
        let available = input.fill_buf().context("cannot read the input")?;
        if available.is_empty() {
            return Ok(seen_any);
        }
        seen_any = true;
        let (chunk, found_newline) = match available.iter().position(|&b| b == b'\n') {
            Some(at) => (&available[..at], true),
            None => (available, false),
        };
        let room = (LINE_BYTES_MAX + 1).saturating_sub(line.len());
        line.extend_from_slice(&chunk[..chunk.len().min(room)]);
        let consumed = chunk.len() + usize::from(found_newline);
        input.consume(consumed);
        if found_newline {
            return Ok(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_lines_split_on_newlines_and_cap_length() {
        let long = "x".repeat(LINE_BYTES_MAX + 10);
        let text = format!("a\n\n{long}\nb");
        let mut input = BufReader::with_capacity(7, text.as_bytes());
        let mut line = Vec::new();
        let mut lines = Vec::new();
        while read_bounded_line(&mut input, &mut line).unwrap() {
            lines.push(line.len());
        }
        assert_eq!(lines, vec![1, 0, LINE_BYTES_MAX + 1, 1]);
    }
}
