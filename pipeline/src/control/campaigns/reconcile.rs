//! Reconciliation: a campaign's total recomputed from the donation records alone — every
//! record below a close point read back from the log and deduplicated by `payment_ref` (the
//! first record of a payment is its donation, as in the dedupe operator), and its refunds and
//! chargebacks by `refund_ref` — to compare with the running totals the operators kept. It shares no state with the operators, so any node can
//! run it for every partition, owned or not.

use std::collections::{HashMap, HashSet};

use crate::event::refund::{RefundEvent, RetractionKind};
use crate::event::{LogEvent, envelope};
use crate::log::{Log, LogError, Offset, PartitionId};
use crate::operators::retractions::CampaignRetractions;

/// Records read per step while recomputing.
const READ_RECORDS: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("record {offset} of partition {partition} cannot be read back: {reason}")]
    RecordMissing {
        partition: PartitionId,
        offset: Offset,
        reason: String,
    },
}

/// What the log's records say a campaign holds, recomputed: its donations, and the refunds and
/// chargebacks taken back from them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recomputed {
    pub total_cents: u64,
    pub donations: u64,
    pub retractions: CampaignRetractions,
}

impl Recomputed {
    fn add(&mut self, other: Recomputed) {
        self.total_cents += other.total_cents;
        self.donations += other.donations;
        self.retractions.add(other.retractions);
    }
}

/// What a close reconciles: the campaign recomputed from the records below the close point, and
/// the operators' running retractions (which go on past the close: post-close adjustments)
/// beside the log's at the offsets they reflect.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reconciled {
    pub at_close: Recomputed,
    pub running_retractions: CampaignRetractions,
    /// Whether the running retractions equal the log's, partition by partition.
    pub retractions_matched: bool,
}

/// Reconciles `campaign_id` in one read of each partition `p`: the records below
/// `close_offsets[p]`, and the retractions below `running[p].0` against `running[p].1`.
pub async fn reconcile_campaign(
    log: &dyn Log,
    campaign_id: &str,
    close_offsets: &[Offset],
    running: &[(Offset, CampaignRetractions)],
) -> Result<Reconciled, ReconcileError> {
    assert_eq!(
        close_offsets.len(),
        running.len(),
        "one of each per partition"
    );
    let mut reconciled = Reconciled {
        retractions_matched: true,
        ..Reconciled::default()
    };
    for (partition, (&close, &(applied, published))) in
        close_offsets.iter().zip(running).enumerate()
    {
        let partition = partition as PartitionId;
        let mut scan = PartitionScan::new(campaign_id);
        let mut at = |scan: &PartitionScan<'_>, offset: Offset| {
            if offset == close {
                reconciled.at_close.add(scan.recomputed);
            }
            if offset == applied {
                reconciled.retractions_matched &= scan.recomputed.retractions == published;
            }
        };
        let mut stops = vec![close.min(applied), close.max(applied)];
        stops.dedup();
        for offset in stops {
            scan.read_until(log, partition, offset).await?;
            at(&scan, offset);
        }
        reconciled.running_retractions.add(published);
    }
    Ok(reconciled)
}

/// One partition's records read in log order, as the operators apply them but sharing nothing
/// with them: the first record of a payment is its donation, the first of a `refund_ref` its
/// retraction; a retraction applies once its donation is recorded, and only within what the
/// donation has left.
struct PartitionScan<'a> {
    campaign_id: &'a str,
    payments_seen: HashSet<String>,
    /// The campaign's donations: amount and what retractions took.
    donations: HashMap<String, (u64, u64)>,
    refunds_seen: HashSet<String>,
    /// Retractions whose donation had not come yet, by payment.
    waiting: HashMap<String, Vec<RefundEvent>>,
    recomputed: Recomputed,
    /// The offset read up to.
    next: Offset,
}

impl<'a> PartitionScan<'a> {
    fn new(campaign_id: &'a str) -> Self {
        Self {
            campaign_id,
            payments_seen: HashSet::new(),
            donations: HashMap::new(),
            refunds_seen: HashSet::new(),
            waiting: HashMap::new(),
            recomputed: Recomputed::default(),
            next: 0,
        }
    }

    /// Reads on from where it got to, up to `until`.
    async fn read_until(
        &mut self,
        log: &dyn Log,
        partition: PartitionId,
        until: Offset,
    ) -> Result<(), ReconcileError> {
        let mut next = self.next;
        while next < until {
            let want = ((until - next) as usize).min(READ_RECORDS);
            let records = log.read(partition, next, want).await?;
            if records.is_empty() {
                return Err(ReconcileError::RecordMissing {
                    partition,
                    offset: next,
                    reason: "past the end of the log".into(),
                });
            }
            for record in records {
                debug_assert_eq!(record.offset, next, "reads never skip a record");
                next = record.offset + 1;
                let event = envelope::decode_event(&record.value).map_err(|e| {
                    ReconcileError::RecordMissing {
                        partition,
                        offset: record.offset,
                        reason: e.to_string(),
                    }
                })?;
                self.apply(event);
            }
            self.next = next;
        }
        Ok(())
    }

    fn apply(&mut self, event: LogEvent) {
        match event {
            LogEvent::Donation(donation) => {
                if !self.payments_seen.insert(donation.payment_ref.clone()) {
                    return;
                }
                let waiting = self.waiting.remove(&donation.payment_ref);
                if donation.campaign_id != self.campaign_id {
                    return;
                }
                self.recomputed.total_cents += donation.amount_cents;
                self.recomputed.donations += 1;
                self.donations
                    .insert(donation.payment_ref.clone(), (donation.amount_cents, 0));
                for refund in waiting.into_iter().flatten() {
                    self.settle(&refund);
                }
            }
            LogEvent::Refund(refund) => {
                if !self.refunds_seen.insert(refund.refund_ref.clone()) {
                    return;
                }
                if self.payments_seen.contains(&refund.payment_ref) {
                    self.settle(&refund);
                } else {
                    self.waiting
                        .entry(refund.payment_ref.clone())
                        .or_default()
                        .push(refund);
                }
            }
        }
    }

    /// A retraction of a recorded donation: counted if it is the campaign's and fits.
    fn settle(&mut self, refund: &RefundEvent) {
        let Some((amount, taken)) = self.donations.get_mut(&refund.payment_ref) else {
            return;
        };
        if refund.amount_cents > *amount - *taken {
            return;
        }
        *taken += refund.amount_cents;
        let retractions = &mut self.recomputed.retractions;
        retractions.refunded_cents += refund.amount_cents;
        retractions.refunds += 1;
        if refund.kind == RetractionKind::Chargeback {
            retractions.chargeback_cents += refund.amount_cents;
            retractions.chargebacks += 1;
        }
    }
}
