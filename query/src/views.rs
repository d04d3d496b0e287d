//! The query API's answers, built from the state: the shapes themselves are the contract's
//! ([`tally_api::views`]), so what the server writes is what clients read.

use tally_api::views::{
    Adjustments, CampaignView, Freshness, ReconciledRefunds, Reconciliation, RecordedDonation,
    SeriesPointView, StatsView,
};
use tally_pipeline::campaigns::{self, Campaign};
use tally_pipeline::event::{DonationEvent, EventTime};
use tally_pipeline::log::{Offset, PartitionId};
use tally_pipeline::read_model::{CampaignAmounts, CampaignStats, SeriesPoint};

/// RFC 3339 for a time the API reports.
pub fn rfc3339(unix_ms: i64) -> String {
    EventTime(unix_ms)
        .to_rfc3339()
        .unwrap_or_else(|_| unix_ms.to_string())
}

/// A campaign with its amounts, and with its freshness when one campaign is asked for.
pub fn campaign_view(
    campaign: &Campaign,
    amounts: CampaignAmounts,
    freshness: Option<Freshness>,
) -> CampaignView {
    let definition = &campaign.definition;
    let (total, retractions) = (amounts.gross, amounts.retractions);
    CampaignView {
        campaign_id: definition.campaign_id.clone(),
        name: definition.name.clone(),
        currency: definition.currency.clone(),
        goal_cents: definition.goal_cents,
        starts_at: definition.starts_at.map(|t| rfc3339(t.unix_ms())),
        ends_at: definition.ends_at.map(|t| rfc3339(t.unix_ms())),
        status: campaign.status.as_str().to_owned(),
        total_cents: amounts.net_cents(),
        donations: total.donations,
        created_at: rfc3339(campaign.created_at.unix_ms()),
        closed_at: campaign.closed_at.map(|t| rfc3339(t.unix_ms())),
        reconciliation: campaign
            .reconciliation
            .map(|settled| reconciliation(settled, campaign.retractions_at_close)),
        freshness,
        gross_cents: total.total_cents,
        refunded_cents: retractions.refunded_cents,
        refunds: retractions.refunds,
        chargeback_cents: retractions.chargeback_cents,
        chargebacks: retractions.chargebacks,
        net_cents: amounts.net_cents(),
        adjustments: adjustments(campaign, amounts),
    }
}

/// A closed campaign's refunds and chargebacks since its close: what is taken back now beyond
/// what its reconciled final total took.
fn adjustments(campaign: &Campaign, amounts: CampaignAmounts) -> Option<Adjustments> {
    let settled = campaign.reconciliation?;
    let at_close = campaign.retractions_at_close.unwrap_or_default();
    let refunded_cents = amounts
        .retractions
        .refunded_cents
        .saturating_sub(at_close.final_refunded_cents);
    let refunds = amounts
        .retractions
        .refunds
        .saturating_sub(at_close.final_refunds);
    let final_net = settled
        .final_total_cents
        .saturating_sub(at_close.final_refunded_cents);
    Some(Adjustments {
        refunded_cents,
        refunds,
        net_after_cents: final_net.saturating_sub(refunded_cents),
    })
}

fn reconciliation(
    reconciliation: campaigns::Reconciliation,
    retractions: Option<campaigns::RetractionsAtClose>,
) -> Reconciliation {
    Reconciliation {
        final_total_cents: reconciliation.final_total_cents,
        final_donations: reconciliation.final_donations,
        running_total_cents: reconciliation.running_total_cents,
        running_donations: reconciliation.running_donations,
        matched: reconciliation.matched,
        refunds: retractions.map(|r| ReconciledRefunds {
            final_refunded_cents: r.final_refunded_cents,
            final_refunds: r.final_refunds,
            final_chargeback_cents: r.final_chargeback_cents,
            final_chargebacks: r.final_chargebacks,
            final_net_cents: reconciliation
                .final_total_cents
                .saturating_sub(r.final_refunded_cents),
            running_refunded_cents: r.running_refunded_cents,
            running_refunds: r.running_refunds,
            refunds_matched: r.matched,
        }),
    }
}

/// A campaign's statistics over a range, with its series when one was asked for.
pub fn stats_view(campaign_id: &str, stats: CampaignStats) -> StatsView {
    let point = |p: &SeriesPoint| SeriesPointView {
        start: rfc3339(p.start_ms),
        count: p.count,
        sum_cents: p.sum_cents,
        refunds: p.refunds.refunds,
        refunded_cents: p.refunds.refunded_cents,
    };
    StatsView {
        campaign_id: campaign_id.to_owned(),
        from: rfc3339(stats.from_ms),
        to: rfc3339(stats.to_ms),
        resolution: stats.resolution.name().to_owned(),
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
        refunds: stats.refunds.refunds,
        refunded_cents: stats.refunds.refunded_cents,
    }
}

/// A recorded event and where it is: what the donation look-up and donor notifications show.
pub fn recorded_donation(
    event: DonationEvent,
    partition: PartitionId,
    offset: Offset,
) -> RecordedDonation {
    RecordedDonation {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The contract's mirror of a reconciliation writes what the pipeline's own type writes.
    #[test]
    fn a_reconciliation_serializes_as_the_pipelines_does() {
        let recorded = campaigns::Reconciliation {
            final_total_cents: 300,
            final_donations: 2,
            running_total_cents: 300,
            running_donations: 2,
            matched: true,
        };
        assert_eq!(
            serde_json::to_string(&reconciliation(recorded, None)).unwrap(),
            serde_json::to_string(&recorded).unwrap()
        );
    }
}
