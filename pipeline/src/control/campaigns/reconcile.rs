//! Reconciliation: a campaign's total recomputed from the donation records alone — every
//! record below a close point read back from the log and deduplicated by `payment_ref` (the
//! first record of a payment is its donation, as in the dedupe operator) — to compare with the
//! running total the operators kept. It shares no state with the operators, so any node can
//! run it for every partition, owned or not.

use std::collections::HashSet;

use crate::event::envelope;
use crate::log::{Log, LogError, Offset, PartitionId};

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

/// `(total cents, donations)` of `campaign_id` among the donations recorded below
/// `close_offsets[p]` in each partition `p`.
pub async fn recompute_campaign_total(
    log: &dyn Log,
    campaign_id: &str,
    close_offsets: &[Offset],
) -> Result<(u64, u64), ReconcileError> {
    let (mut total_cents, mut donations) = (0u64, 0u64);
    for (partition, &close) in close_offsets.iter().enumerate() {
        let (cents, count) =
            recompute_partition(log, partition as PartitionId, campaign_id, close).await?;
        total_cents += cents;
        donations += count;
    }
    Ok((total_cents, donations))
}

async fn recompute_partition(
    log: &dyn Log,
    partition: PartitionId,
    campaign_id: &str,
    close: Offset,
) -> Result<(u64, u64), ReconcileError> {
    let (mut total_cents, mut donations) = (0u64, 0u64);
    let mut payments_seen: HashSet<String> = HashSet::new();
    let mut next = 0;
    while next < close {
        let want = ((close - next) as usize).min(READ_RECORDS);
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
            let event =
                envelope::decode(&record.value).map_err(|e| ReconcileError::RecordMissing {
                    partition,
                    offset: record.offset,
                    reason: e.to_string(),
                })?;
            let first_of_payment = payments_seen.insert(event.payment_ref);
            if first_of_payment && event.campaign_id == campaign_id {
                total_cents += event.amount_cents;
                donations += 1;
            }
        }
    }
    Ok((total_cents, donations))
}
