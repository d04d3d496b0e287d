//! Reconciliation: a campaign's total recomputed from the donation records — every recorded
//! donation below a close point, read back from the log — to compare with the running total the
//! operators kept.

use crate::event::envelope;
use crate::log::{Log, LogError, Offset, PartitionId};
use crate::runner::DonationDirectory;

/// Records read per step while recomputing.
const READ_RECORDS: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(
        "recorded donation at offset {offset} of partition {partition} cannot be read back: {reason}"
    )]
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
    directory: &DonationDirectory,
    campaign_id: &str,
    close_offsets: &[Offset],
) -> Result<(u64, u64), ReconcileError> {
    let (mut total_cents, mut donations) = (0u64, 0u64);
    for (partition, &close) in close_offsets.iter().enumerate() {
        let partition = partition as PartitionId;
        let recorded = directory
            .index(partition)
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .recorded_offsets_below(close);
        let mut wanted = recorded.iter().peekable();
        while let Some(&&from) = wanted.peek() {
            let records = log.read(partition, from, READ_RECORDS).await?;
            if records.is_empty() {
                return Err(ReconcileError::RecordMissing {
                    partition,
                    offset: from,
                    reason: "past the end of the log".into(),
                });
            }
            for record in records {
                if wanted.peek() != Some(&&record.offset) {
                    continue;
                }
                wanted.next();
                let event =
                    envelope::decode(&record.value).map_err(|e| ReconcileError::RecordMissing {
                        partition,
                        offset: record.offset,
                        reason: e.to_string(),
                    })?;
                if event.campaign_id == campaign_id {
                    total_cents += event.amount_cents;
                    donations += 1;
                }
            }
        }
    }
    Ok((total_cents, donations))
}
