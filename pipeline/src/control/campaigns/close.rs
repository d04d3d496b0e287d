//! Closing a campaign, the steps the module map draws, for whoever closes: a server among nodes
//! that take donations, or the offline command that holds the data directory alone. What differs
//! between them — how intake stops, how the pipeline gets to the close point — is a
//! [`ClosingNode`]; the order of the steps and the reconciliation are here, once.

use std::future::Future;

use super::reconcile::{ReconcileError, reconcile_campaign};
use super::{
    Campaign, CampaignError, CampaignRegistry, CampaignStatus, Reconciliation, RetractionsAtClose,
};
use crate::event::EventTime;
use crate::log::{Log, LogError, Offset};
use crate::operators::campaign_totals::CampaignTotal;
use crate::operators::retractions::CampaignRetractions;
use crate::support::clock::Clock;

/// Where a close runs: what it does between the steps the control log records.
pub trait ClosingNode: Sync {
    /// The caller's error: every step's error converts into it.
    type Error: From<CampaignError> + From<LogError> + From<ReconcileError> + Send;

    /// Returns once no node takes donations for the open or closing campaign and none is still
    /// being appended for it: the campaign as the registry then knows it (a racing close may
    /// already have noted the close point).
    fn stop_intake(
        &self,
        registry: &CampaignRegistry,
        campaign_id: &str,
    ) -> impl Future<Output = Result<Campaign, Self::Error>> + Send;

    /// Returns once the running totals count every record below `close_offsets`.
    fn apply_through(
        &self,
        close_offsets: &[Offset],
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// The running total the operators kept.
    fn running_total(&self, campaign_id: &str) -> CampaignTotal;

    /// The refunds and chargebacks the operators kept for the campaign, per partition, with the
    /// offset each partition's value reflects (read together).
    fn running_retractions(&self, campaign_id: &str) -> Vec<(Offset, CampaignRetractions)>;
}

/// Closes a campaign and records its reconciled final total: stop intake, note the donation
/// log's end offsets as the close point, apply the log up to it, recompute the total from the
/// donation records and compare it with the running total. Every step is decided by the control
/// log, so racing closes agree; a campaign already closed is returned as it is.
pub async fn close_campaign<N: ClosingNode>(
    node: &N,
    registry: &CampaignRegistry,
    log: &dyn Log,
    clock: &dyn Clock,
    campaign_id: &str,
) -> Result<Campaign, N::Error> {
    registry.sync().await?;
    let mut campaign = Campaign::clone(&*registry.existing(campaign_id)?);
    if campaign.status == CampaignStatus::Closed {
        return Ok(campaign);
    }
    if campaign.close_offsets.is_none() {
        campaign = node.stop_intake(registry, campaign_id).await?;
    }
    if campaign.close_offsets.is_none() {
        let ends = crate::log::end_offsets(log).await?;
        campaign = registry.start_close(campaign_id, ends).await?;
    }
    let close_offsets = campaign
        .close_offsets
        .clone()
        .expect("a campaign past its close point has its close offsets");
    node.apply_through(&close_offsets).await?;
    // Refunds keep coming after a close (they are post-close adjustments), so the running
    // retractions are compared with the log at the offsets they reflect, not at the close.
    let running_retractions = node.running_retractions(campaign_id);
    let reconciled =
        reconcile_campaign(log, campaign_id, &close_offsets, &running_retractions).await?;
    let recomputed = reconciled.at_close;
    let running = reconciled.running_retractions;
    let matched = reconciled.retractions_matched;
    let reconciliation = Reconciliation::compare(
        (recomputed.total_cents, recomputed.donations),
        node.running_total(campaign_id),
    );
    let retractions = RetractionsAtClose {
        final_refunded_cents: recomputed.retractions.refunded_cents,
        final_refunds: recomputed.retractions.refunds,
        final_chargeback_cents: recomputed.retractions.chargeback_cents,
        final_chargebacks: recomputed.retractions.chargebacks,
        running_refunded_cents: running.refunded_cents,
        running_refunds: running.refunds,
        matched,
    };
    if !reconciliation.matched || !retractions.matched {
        tracing::error!(
            campaign_id,
            ?reconciliation,
            ?retractions,
            "campaign close: recomputed total differs from the running total"
        );
    }
    let now = EventTime(clock.now_ms());
    Ok(registry
        .finish_close(campaign_id, reconciliation, retractions, now)
        .await?)
}

impl Reconciliation {
    /// The total recomputed from the donation records beside the running one.
    pub fn compare(recomputed: (u64, u64), running: CampaignTotal) -> Self {
        let (final_total_cents, final_donations) = recomputed;
        Self {
            final_total_cents,
            final_donations,
            running_total_cents: running.total_cents,
            running_donations: running.donations,
            matched: recomputed == (running.total_cents, running.donations),
        }
    }
}
