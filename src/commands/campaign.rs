//! `tally campaign …`: what the committed state says about campaigns.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};

use super::Target;
use serde::Serialize;
use tally_pipeline::event::EventTime;
use tally_pipeline::log::Log;
use tally_pipeline::operators::event_time_windows::Granularity;
use tally_pipeline::read_model::ReadModel;

#[derive(Debug, Subcommand)]
pub enum CampaignCommand {
    /// Create a campaign.
    Create(CreateArgs),
    /// List campaigns with their totals and status.
    List {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        json: bool,
    },
    /// Stop a campaign taking donations and reconcile its final total.
    Close {
        campaign_id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Every campaign's total cents and donation count.
    Totals {
        #[arg(long)]
        json: bool,
    },
    /// Statistics of one campaign's donations with `paid_at` in [FROM, TO).
    Stats(StatsArgs),
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    campaign_id: String,
    #[arg(long)]
    name: String,
    /// ISO 4217 code, e.g. USD.
    #[arg(long)]
    currency: String,
    #[arg(long)]
    goal_cents: Option<u64>,
    /// RFC 3339.
    #[arg(long)]
    starts_at: Option<String>,
    /// RFC 3339.
    #[arg(long)]
    ends_at: Option<String>,
    #[command(flatten)]
    target: Target,
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
    /// Net: the donations less the refunds and chargebacks applied.
    total_cents: u64,
    donations: u64,
    gross_cents: u64,
    refunded_cents: u64,
    refunds: u64,
}

pub fn run(data_dir: &Path, command: CampaignCommand) -> anyhow::Result<ExitCode> {
    match command {
        CampaignCommand::Create(args) => admin::create(data_dir, args),
        CampaignCommand::List { target, json } => admin::list(data_dir, &target, json),
        CampaignCommand::Close {
            campaign_id,
            target,
        } => admin::close(data_dir, &campaign_id, &target),
        CampaignCommand::Totals { json } => {
            write_totals(&read_model_of(data_dir)?, json)?;
            Ok(ExitCode::SUCCESS)
        }
        CampaignCommand::Stats(args) => {
            write_stats(&read_model_of(data_dir)?, &args)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The read model of the data directory's checkpoints, as `tally serve` would start from.
fn read_model_of(data_dir: &Path) -> anyhow::Result<ReadModel> {
    let log = super::open_existing_log(data_dir)?;
    let store = super::open_store(data_dir, log.partition_count())?;
    super::load_read_model(&store)
}

/// Every campaign's total, as a table or JSON.
fn write_totals(read_model: &ReadModel, json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let totals = read_model.campaigns_amounts();
    let rows: Vec<TotalRow> = totals
        .iter()
        .map(|(id, amounts)| TotalRow {
            campaign_id: id,
            total_cents: amounts.net_cents(),
            donations: amounts.gross.donations,
            gross_cents: amounts.gross.total_cents,
            refunded_cents: amounts.retractions.refunded_cents,
            refunds: amounts.retractions.refunds,
        })
        .collect();
    if json {
        serde_json::to_writer_pretty(&mut out, &rows)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<32}  {:>16}  {:>12}  {:>16}  {:>16}  {:>8}",
        "campaign_id", "total_cents", "donations", "gross_cents", "refunded_cents", "refunds"
    )?;
    for row in rows {
        writeln!(
            out,
            "{:<32}  {:>16}  {:>12}  {:>16}  {:>16}  {:>8}",
            row.campaign_id,
            row.total_cents,
            row.donations,
            row.gross_cents,
            row.refunded_cents,
            row.refunds
        )?;
    }
    Ok(())
}

/// One campaign's statistics over a range, as text or JSON.
fn write_stats(read_model: &ReadModel, args: &StatsArgs) -> anyhow::Result<()> {
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
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &stats)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(
        out,
        "campaign {} from {} to {} (by the {})",
        args.campaign_id,
        super::rfc3339(stats.from_ms),
        super::rfc3339(stats.to_ms),
        stats.resolution.name()
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
    Ok(())
}

/// Campaign administration, against a server or the data directory.
mod admin {
    use std::path::Path;
    use std::process::ExitCode;

    use anyhow::Context;
    use tally_pipeline::campaigns::{
        self, Campaign, CampaignError, CampaignRegistry, CampaignRequest, CampaignStatus,
        ClosingNode,
    };
    use tally_pipeline::clock::{Clock, SystemClock};
    use tally_pipeline::event::EventTime;
    use tally_pipeline::log::Offset;
    use tally_pipeline::operators::campaign_totals::CampaignTotal;
    use tally_pipeline::runner::{Pipeline, PipelineConfig, RunMode};

    use super::CreateArgs;
    use crate::commands::{Target, server_request as request};

    fn now() -> EventTime {
        EventTime(SystemClock.now_ms())
    }

    fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
        println!("{}", serde_json::to_string_pretty(value)?);
        Ok(())
    }

    fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
        Ok(tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?)
    }

    fn registry(
        runtime: &tokio::runtime::Runtime,
        data_dir: &Path,
    ) -> anyhow::Result<CampaignRegistry> {
        crate::commands::log_binding::ensure_embedded(data_dir)?;
        runtime
            .block_on(CampaignRegistry::open_embedded(&data_dir.join("control")))
            .context("cannot open the campaign registry (is a server running on this data directory? use --server)")
    }

    pub fn create(data_dir: &Path, args: CreateArgs) -> anyhow::Result<ExitCode> {
        let campaign = CampaignRequest {
            campaign_id: args.campaign_id,
            name: args.name,
            currency: args.currency,
            goal_cents: args.goal_cents,
            starts_at: args.starts_at,
            ends_at: args.ends_at,
        };
        if args.target.server.is_some() {
            let body = serde_json::to_value(&campaign)?;
            print_json(&request(
                data_dir,
                &args.target,
                reqwest::Method::POST,
                "/v1/campaigns",
                Some(body),
            )?)?;
            return Ok(ExitCode::SUCCESS);
        }
        let definition = campaign.validate()?;
        let runtime = runtime()?;
        let created = runtime.block_on(registry(&runtime, data_dir)?.create(definition, now()))?;
        print_json(&created)?;
        Ok(ExitCode::SUCCESS)
    }

    pub fn list(data_dir: &Path, target: &Target, json: bool) -> anyhow::Result<ExitCode> {
        if target.server.is_some() {
            print_json(&request(
                data_dir,
                target,
                reqwest::Method::GET,
                "/v1/campaigns",
                None,
            )?)?;
            return Ok(ExitCode::SUCCESS);
        }
        let campaigns = registry(&runtime()?, data_dir)?.list();
        if json {
            let campaigns: Vec<&Campaign> = campaigns.iter().map(|c| c.as_ref()).collect();
            print_json(&campaigns)?;
        } else {
            println!(
                "{:<32}  {:<8}  {:<8}  name",
                "campaign_id", "currency", "status"
            );
            for campaign in campaigns {
                let d = &campaign.definition;
                println!(
                    "{:<32}  {:<8}  {:<8}  {}",
                    d.campaign_id,
                    d.currency,
                    campaign.status.as_str(),
                    d.name
                );
            }
        }
        Ok(ExitCode::SUCCESS)
    }

    /// Closes through the server, or on the data directory: stop intake at the log's end, run
    /// the pipeline to that point, recompute from the donation records, record the result.
    pub fn close(data_dir: &Path, campaign_id: &str, target: &Target) -> anyhow::Result<ExitCode> {
        if target.server.is_some() {
            let path = format!("/v1/campaigns/{campaign_id}/close");
            print_json(&request(
                data_dir,
                target,
                reqwest::Method::POST,
                &path,
                None,
            )?)?;
            return Ok(ExitCode::SUCCESS);
        }
        let runtime = runtime()?;
        let registry = registry(&runtime, data_dir)?;
        let pipeline = crate::commands::open_pipeline(data_dir, PipelineConfig::default())?;
        if registry
            .get(campaign_id)
            .is_some_and(|c| c.status == CampaignStatus::Closed)
        {
            return Err(CampaignError::AlreadyClosed(campaign_id.to_owned()).into());
        }
        let closed = runtime.block_on(campaigns::close_campaign(
            &OfflineNode(&pipeline),
            &registry,
            pipeline.log().as_ref(),
            &SystemClock,
            campaign_id,
        ))?;
        let matched = closed.reconciliation.is_some_and(|r| r.matched);
        print_json(&closed)?;
        Ok(if matched {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    }

    /// A close run offline: nothing else takes donations while this command holds the data
    /// directory, and the pipeline runs here, to the end of the log.
    struct OfflineNode<'a>(&'a Pipeline);

    impl ClosingNode for OfflineNode<'_> {
        type Error = anyhow::Error;

        async fn stop_intake(
            &self,
            registry: &CampaignRegistry,
            campaign_id: &str,
        ) -> anyhow::Result<Campaign> {
            let campaign = registry
                .get(campaign_id)
                .ok_or_else(|| CampaignError::NotFound(campaign_id.to_owned()))?;
            Ok(Campaign::clone(&campaign))
        }

        async fn apply_through(&self, _close_offsets: &[Offset]) -> anyhow::Result<()> {
            // The close point is the log's end, so catching up applies everything below it.
            self.0.run(RunMode::CatchUp)?;
            Ok(())
        }

        fn running_total(&self, campaign_id: &str) -> CampaignTotal {
            self.0.read_model().campaign_total(campaign_id)
        }

        fn running_retractions(
            &self,
            campaign_id: &str,
        ) -> Vec<(
            Offset,
            tally_pipeline::operators::retractions::CampaignRetractions,
        )> {
            self.0
                .read_model()
                .campaign_retractions_by_partition(campaign_id)
        }
    }
}
