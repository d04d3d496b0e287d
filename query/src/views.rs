//! The JSON shapes of the query API. Times are RFC 3339 strings; money is integer cents.

use serde::Serialize;
use tally_pipeline::campaigns::{Campaign, Reconciliation};
use tally_pipeline::event::{DonationEvent, EventTime};
use tally_pipeline::log::{Offset, PartitionId};
use tally_pipeline::operators::campaign_totals::CampaignTotal;
use tally_pipeline::read_model::{CampaignStats, SeriesPoint};

/// RFC 3339 for a time the API reports.
pub fn rfc3339(unix_ms: i64) -> String {
    EventTime(unix_ms)
        .to_rfc3339()
        .unwrap_or_else(|_| unix_ms.to_string())
}

/// How fresh the totals are: what the operators applied against what the log holds.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Freshness {
    pub applied_offsets: Vec<Offset>,
    pub log_end_offsets: Vec<Offset>,
    pub lag_records: u64,
    /// Time since the oldest partition that is behind last committed; 0 when none is behind.
    pub lag_ms: i64,
    /// False while the log does not answer: `log_end_offsets` are then the ones last read.
    pub log_reachable: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct CampaignView {
    pub campaign_id: String,
    pub name: String,
    pub currency: String,
    pub goal_cents: Option<u64>,
    pub starts_at: Option<String>,
    pub ends_at: Option<String>,
    pub status: &'static str,
    pub total_cents: u64,
    pub donations: u64,
    pub created_at: String,
    pub closed_at: Option<String>,
    pub reconciliation: Option<Reconciliation>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub freshness: Option<Freshness>,
}

impl CampaignView {
    pub fn new(campaign: &Campaign, total: CampaignTotal, freshness: Option<Freshness>) -> Self {
        let definition = &campaign.definition;
        Self {
            campaign_id: definition.campaign_id.clone(),
            name: definition.name.clone(),
            currency: definition.currency.clone(),
            goal_cents: definition.goal_cents,
            starts_at: definition.starts_at.map(|t| rfc3339(t.unix_ms())),
            ends_at: definition.ends_at.map(|t| rfc3339(t.unix_ms())),
            status: campaign.status.as_str(),
            total_cents: total.total_cents,
            donations: total.donations,
            created_at: rfc3339(campaign.created_at.unix_ms()),
            closed_at: campaign.closed_at.map(|t| rfc3339(t.unix_ms())),
            reconciliation: campaign.reconciliation,
            freshness,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct StatsView {
    pub campaign_id: String,
    pub from: String,
    pub to: String,
    /// The finest buckets still held from `from` on: `minute`, `hour` or `day`.
    pub resolution: &'static str,
    pub count: u64,
    pub sum_cents: u64,
    pub min_cents: Option<u64>,
    pub max_cents: Option<u64>,
    pub mean_cents: Option<u64>,
    pub p50_cents: Option<u64>,
    pub p90_cents: Option<u64>,
    pub p99_cents: Option<u64>,
    pub complete_through: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub series: Option<Vec<SeriesPointView>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SeriesPointView {
    pub start: String,
    pub count: u64,
    pub sum_cents: u64,
}

impl StatsView {
    pub fn new(campaign_id: &str, stats: CampaignStats) -> Self {
        let point = |p: &SeriesPoint| SeriesPointView {
            start: rfc3339(p.start_ms),
            count: p.count,
            sum_cents: p.sum_cents,
        };
        Self {
            campaign_id: campaign_id.to_owned(),
            from: rfc3339(stats.from_ms),
            to: rfc3339(stats.to_ms),
            resolution: stats.resolution.name(),
            count: stats.count,
            sum_cents: stats.sum_cents,
            min_cents: stats.min_cents,
            max_cents: stats.max_cents,
            mean_cents: stats.mean_cents,
            p50_cents: stats.p50_cents,
            p90_cents: stats.p90_cents,
            p99_cents: stats.p99_cents,
            complete_through: stats.complete_through_ms.map(rfc3339),
            series: stats
                .series
                .as_ref()
                .map(|points| points.iter().map(point).collect()),
        }
    }
}

/// A donation as the log records it, and where: the shape both the donation lookup and donor
/// notifications answer with.
#[derive(Debug, Clone, Serialize)]
pub struct RecordedDonation {
    pub payment_ref: String,
    pub order_id: String,
    pub user_id: String,
    pub campaign_id: String,
    pub amount_cents: u64,
    pub currency: String,
    pub paid_at: String,
    pub partition: PartitionId,
    pub offset: Offset,
}

impl RecordedDonation {
    pub fn new(event: DonationEvent, partition: PartitionId, offset: Offset) -> Self {
        Self {
            payment_ref: event.payment_ref,
            order_id: event.order_id,
            user_id: event.user_id,
            campaign_id: event.campaign_id,
            amount_cents: event.amount_cents,
            currency: event.currency,
            paid_at: rfc3339(event.paid_at.unix_ms()),
            partition,
            offset,
        }
    }
}

/// A recorded donation, with how often its payment was sent again.
#[derive(Debug, Clone, Serialize)]
pub struct DonationView {
    #[serde(flatten)]
    pub donation: RecordedDonation,
    pub recorded_at: String,
    pub duplicates: u32,
    pub conflicts: u32,
}
