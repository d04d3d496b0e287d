//! `tally campaign …`: what the committed state says about campaigns.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;
use tally_pipeline::event::EventTime;
use tally_pipeline::log::Log;
use tally_pipeline::operators::event_time_windows::Granularity;

#[derive(Debug, Subcommand)]
pub enum CampaignCommand {
    /// Every campaign's total cents and donation count.
    Totals {
        #[arg(long)]
        json: bool,
    },
    /// Statistics of one campaign's donations with `paid_at` in [FROM, TO).
    Stats(StatsArgs),
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    campaign_id: String,
    /// RFC 3339, truncated to the minute.
    #[arg(long)]
    from: String,
    /// RFC 3339, truncated to the minute; exclusive.
    #[arg(long)]
    to: String,
    /// Also print a series with one point per bucket.
    #[arg(long, value_enum)]
    bucket: Option<BucketArg>,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum BucketArg {
    Minute,
    Hour,
    Day,
}

impl From<BucketArg> for Granularity {
    fn from(bucket: BucketArg) -> Self {
        match bucket {
            BucketArg::Minute => Granularity::Minute,
            BucketArg::Hour => Granularity::Hour,
            BucketArg::Day => Granularity::Day,
        }
    }
}

#[derive(Debug, Serialize)]
struct TotalRow<'a> {
    campaign_id: &'a str,
    total_cents: u64,
    donations: u64,
}

pub fn run(data_dir: &Path, command: CampaignCommand) -> anyhow::Result<ExitCode> {
    let log = super::open_existing_log(data_dir)?;
    let store = super::open_store(data_dir, log.partition_count())?;
    let read_model = super::load_read_model(&store)?;
    let mut out = std::io::stdout().lock();
    match command {
        CampaignCommand::Totals { json } => {
            let totals = read_model.campaign_totals();
            let rows: Vec<TotalRow> = totals
                .iter()
                .map(|(id, t)| TotalRow {
                    campaign_id: id,
                    total_cents: t.total_cents,
                    donations: t.donations,
                })
                .collect();
            if json {
                serde_json::to_writer_pretty(&mut out, &rows)?;
                writeln!(out)?;
            } else {
                writeln!(
                    out,
                    "{:<32}  {:>16}  {:>12}",
                    "campaign_id", "total_cents", "donations"
                )?;
                for row in rows {
                    writeln!(
                        out,
                        "{:<32}  {:>16}  {:>12}",
                        row.campaign_id, row.total_cents, row.donations
                    )?;
                }
            }
        }
        CampaignCommand::Stats(args) => {
            let parse = |name: &str, text: &str| {
                EventTime::parse_rfc3339(text)
                    .with_context(|| format!("--{name} {text:?} is not an RFC 3339 timestamp"))
            };
            let from = parse("from", &args.from)?;
            let to = parse("to", &args.to)?;
            let stats = read_model
                .stats(
                    &args.campaign_id,
                    from.unix_ms(),
                    to.unix_ms(),
                    args.bucket.map(Granularity::from),
                )
                .context("invalid range")?;
            if args.json {
                serde_json::to_writer_pretty(&mut out, &stats)?;
                writeln!(out)?;
            } else {
                writeln!(
                    out,
                    "campaign {} from {} to {}",
                    args.campaign_id,
                    super::rfc3339(stats.from_ms),
                    super::rfc3339(stats.to_ms)
                )?;
                let show = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
                writeln!(
                    out,
                    "count {}  sum_cents {}  min {}  max {}  mean {}",
                    stats.count,
                    stats.sum_cents,
                    show(stats.min_cents),
                    show(stats.max_cents),
                    show(stats.mean_cents)
                )?;
                writeln!(
                    out,
                    "p50 {}  p90 {}  p99 {}",
                    show(stats.p50_cents),
                    show(stats.p90_cents),
                    show(stats.p99_cents)
                )?;
                for point in stats.series.iter().flatten() {
                    writeln!(
                        out,
                        "{}  {:>10}  {:>14}",
                        super::rfc3339(point.start_ms),
                        point.count,
                        point.sum_cents
                    )?;
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
