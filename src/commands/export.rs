//! `tally export --campaign ID [--from T --to T] --out FILE`: a campaign's ledger as CSV, from
//! the committed state of the data directory — every recorded donation and every refund or
//! chargeback applied to them, in log order, up to each partition's last checkpoint, so that
//! its sums are the totals `tally campaign totals` shows (see `tally_pipeline::export`).
//!
//! One partition's state is loaded at a time and the log is read a batch at a time, so memory
//! holds one partition's state and a batch, whatever the size of the log. A progress bar on
//! standard error counts the records read (drawn only on a terminal). The file is created new:
//! an existing one is never overwritten, and a failed export removes what it wrote.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use tally_pipeline::campaigns::CampaignRegistry;
use tally_pipeline::checkpoint::LoadedPartition;
use tally_pipeline::event::EventTime;
use tally_pipeline::export::{CSV_HEADER, LedgerFilter, PartitionLedger, csv_line};
use tally_pipeline::log::Log;

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The campaign whose ledger to write.
    #[arg(long)]
    campaign: String,
    /// Only rows whose event time (`paid_at`, `refunded_at`) is at or after this RFC 3339 time.
    #[arg(long)]
    from: Option<String>,
    /// …and before this one.
    #[arg(long)]
    to: Option<String>,
    /// The CSV file to create; it must not exist.
    #[arg(long)]
    out: PathBuf,
}

/// What an export wrote.
#[derive(Debug, Default)]
struct Written {
    rows: u64,
    net_cents: i64,
}

pub fn run(data_dir: &Path, args: ExportArgs) -> anyhow::Result<ExitCode> {
    let time = |flag: &str, text: &Option<String>| -> anyhow::Result<Option<i64>> {
        text.as_deref()
            .map(|text| {
                EventTime::parse_rfc3339(text)
                    .map(EventTime::unix_ms)
                    .with_context(|| format!("--{flag}"))
            })
            .transpose()
    };
    let filter = LedgerFilter {
        campaign_id: args.campaign.clone(),
        from_ms: time("from", &args.from)?,
        to_ms: time("to", &args.to)?,
    };
    super::log_binding::ensure_embedded(data_dir)?;
    let log = super::open_existing_log(data_dir)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let registry = runtime
        .block_on(CampaignRegistry::open_embedded(&data_dir.join("control")))
        .context("cannot open the campaign registry (is a server running on this data directory? export with GET /v1/campaigns/ID/ledger.csv)")?;
    let campaign = registry
        .get(&args.campaign)
        .with_context(|| format!("there is no campaign {:?}", args.campaign))?;
    let file = File::create_new(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let written = write_ledger(
        data_dir,
        &log,
        &runtime,
        &filter,
        &campaign.definition.currency,
        file,
    );
    match written {
        Ok(written) => {
            eprintln!(
                "tally: wrote {} rows of {} to {} (net {} cents)",
                written.rows,
                args.campaign,
                args.out.display(),
                written.net_cents
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            let _ = std::fs::remove_file(&args.out);
            Err(error)
        }
    }
}

fn write_ledger(
    data_dir: &Path,
    log: &tally_pipeline::log::EmbeddedLog,
    runtime: &tokio::runtime::Runtime,
    filter: &LedgerFilter,
    currency: &str,
    file: File,
) -> anyhow::Result<Written> {
    let store = super::open_store(data_dir, log.partition_count())?;
    let mut out = BufWriter::new(file);
    out.write_all(CSV_HEADER.as_bytes())?;
    let metas: Vec<_> = (0..store.partition_count())
        .map(|partition| store.meta(partition))
        .collect::<Result<_, _>>()?;
    let records: u64 = metas
        .iter()
        .map(|meta| meta.map_or(0, |m| m.scalars.next_offset))
        .sum();
    let progress = ProgressBar::new(records).with_style(
        ProgressStyle::with_template(
            "{spinner} {wide_bar} {human_pos}/{human_len} records, {per_sec}, {eta} left",
        )
        .expect("a valid template"),
    );
    let mut written = Written::default();
    let mut text = String::new();
    for partition in 0..store.partition_count() {
        let loaded = store.load(partition).with_context(|| {
            format!(
                "the state of partition {partition} cannot be read (`tally process` rebuilds it)"
            )
        })?;
        let LoadedPartition::Restored { state, meta, .. } = loaded else {
            continue;
        };
        let mut ledger = PartitionLedger::new(
            partition,
            meta.scalars.next_offset,
            state.shared_index(),
            state.shared_retractions(),
        );
        drop(state);
        let mut read_before = 0;
        while let Some(rows) = runtime.block_on(ledger.next_rows(log, filter))? {
            text.clear();
            for row in &rows {
                csv_line(row, currency, &mut text);
                written.net_cents += row.net_cents();
            }
            written.rows += rows.len() as u64;
            out.write_all(text.as_bytes())?;
            let (read, _) = ledger.progress();
            progress.inc(read - read_before);
            read_before = read;
        }
    }
    progress.finish_and_clear();
    out.into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()
        .context("cannot sync the export")?;
    Ok(written)
}
