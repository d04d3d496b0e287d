//! The notification outbox: the donors owed a notification, and how far delivery has got.
//!
//! A partition's outbox is its recorded donations in log order, and the refunds and chargebacks
//! applied to them: the log holds the events, the dedupe index tells a recorded donation from a
//! duplicate or a conflicting resend, and the retraction ledger tells an applied retraction from
//! a resend, a pending or an excess one, so the outbox costs nothing beyond them. A retraction is
//! owed where it was applied: at its own offset, or — one that waited for its donation — right
//! after that donation's notice, at the donation's offset. A pending or excess one is owed
//! nothing. A cursor per partition — stored beside the checkpoints,
//! outside the derived state — says up to which offset everything was delivered; it never moves
//! back, and never past what the pipeline has applied. Only the partitions this node runs have
//! an outbox here. Delivery itself (a webhook, or a consumer paging through) is the server's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use crate::checkpoint::{CheckpointError, CheckpointStore};
use crate::control::cluster::partition_set::format_ranges;
use crate::event::envelope::{self, EnvelopeError};
use crate::event::refund::RefundEvent;
use crate::event::{DonationEvent, LogEvent};
use crate::log::{Log, LogError, Offset, PartitionId};
use crate::operators::retractions::RetractionStatus;
use crate::read_model::{PartitionProgress, ReadModel};
use crate::runner::DonationIndexes;

/// Records read from the log per scan step.
pub const SCAN_BATCH: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("must be below the partition count {partition_count}")]
    NoSuchPartition {
        partition: PartitionId,
        partition_count: usize,
    },
    #[error(
        "partition {partition} is run by another node, which keeps its outbox; this node runs {}",
        format_ranges(owned)
    )]
    NotOwned {
        partition: PartitionId,
        owned: Vec<PartitionId>,
    },
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
}

/// What a donor is told.
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    /// Their donation was recorded.
    Donation(DonationEvent),
    /// Money of their donation went back (a refund or a chargeback was applied).
    Retraction {
        refund: RefundEvent,
        donation: DonationEvent,
    },
}

/// A notice owed, where the log holds its record, and where the scan found it owed.
#[derive(Debug, Clone, PartialEq)]
pub struct Owed {
    pub notice: Notice,
    pub partition: PartitionId,
    /// The offset of the notice's record (the donation's, the retraction's).
    pub offset: Offset,
    /// The offset it is owed at: its own, or a waiting retraction's donation's. Delivery counts
    /// as through `position + 1` once every notice owed at `position` is delivered.
    pub position: Offset,
}

#[derive(Debug)]
pub struct NotificationOutbox {
    store: Arc<CheckpointStore>,
    log: Arc<dyn Log>,
    donation_indexes: Arc<DonationIndexes>,
    read_model: Arc<ReadModel>,
    cursors: Vec<AtomicU64>,
    owned: RwLock<Vec<PartitionId>>,
}

impl NotificationOutbox {
    /// The outboxes of the `owned` partitions, each from its stored cursor.
    pub fn open(
        store: Arc<CheckpointStore>,
        log: Arc<dyn Log>,
        donation_indexes: Arc<DonationIndexes>,
        read_model: Arc<ReadModel>,
        owned: Vec<PartitionId>,
    ) -> Result<Self, CheckpointError> {
        let cursors = (0..log.partition_count())
            .map(|p| store.notification_cursor(p).map(AtomicU64::new))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            store,
            log,
            donation_indexes,
            read_model,
            cursors,
            owned: RwLock::new(owned),
        })
    }

    /// The partitions whose outbox this node keeps.
    pub fn owned(&self) -> Vec<PartitionId> {
        self.owned
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn keeps(&self, partition: PartitionId) -> bool {
        self.owned
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&partition)
    }

    /// This node keeps the outboxes of `owned` from now on (its assignment changed). A partition
    /// taken on resumes from the cursor stored here, if this node delivered for it before, so a
    /// donor may be notified again (never less than once); the `Idempotency-Key` makes that
    /// once for the receiver.
    pub fn set_owned(&self, owned: Vec<PartitionId>) -> Result<(), CheckpointError> {
        for &partition in &owned {
            let stored = self.store.notification_cursor(partition)?;
            self.cursors[partition as usize].fetch_max(stored, Ordering::SeqCst);
        }
        *self.owned.write().unwrap_or_else(PoisonError::into_inner) = owned;
        Ok(())
    }

    /// Everything below this offset of `partition` was delivered.
    pub fn cursor(&self, partition: PartitionId) -> Offset {
        self.cursors[partition as usize].load(Ordering::Relaxed)
    }

    /// Records the pipeline has applied in `partition`: the outbox reaches that far.
    pub fn applied(&self, partition: PartitionId) -> Offset {
        self.read_model.progress()[partition as usize].applied_offset
    }

    /// Applied records not yet scanned, per partition (0 for one run elsewhere).
    pub fn backlog(&self, progress: &[PartitionProgress]) -> Vec<u64> {
        progress
            .iter()
            .map(|p| {
                if !self.keeps(p.partition) {
                    return 0;
                }
                p.applied_offset.saturating_sub(self.cursor(p.partition))
            })
            .collect()
    }

    /// A partition this node keeps the outbox of.
    pub fn check_partition(&self, partition: PartitionId) -> Result<(), OutboxError> {
        if (partition as usize) >= self.cursors.len() {
            return Err(OutboxError::NoSuchPartition {
                partition,
                partition_count: self.cursors.len(),
            });
        }
        if !self.keeps(partition) {
            return Err(OutboxError::NotOwned {
                partition,
                owned: self.owned(),
            });
        }
        Ok(())
    }

    /// Up to `limit` donations owed in `partition` from `after` (default: the cursor) up to what
    /// is applied; and the offset to go on from.
    pub async fn owed(
        &self,
        partition: PartitionId,
        after: Option<Offset>,
        limit: usize,
    ) -> Result<(Vec<Owed>, Offset), OutboxError> {
        self.check_partition(partition)?;
        let from = after.unwrap_or_else(|| self.cursor(partition));
        self.scan(partition, from, self.applied(partition), limit)
            .await
    }

    /// Takes on a cursor another node reached for `partition` (delivered there): everything
    /// below it counts as delivered here too. The cursor never moves back.
    pub fn adopt_cursor(&self, partition: PartitionId, cursor: Offset) -> Result<(), OutboxError> {
        self.check_partition(partition)?;
        let previous = self.cursors[partition as usize].fetch_max(cursor, Ordering::SeqCst);
        if cursor > previous {
            self.store.set_notification_cursor(partition, cursor)?;
        }
        Ok(())
    }

    /// Marks everything below `next_offset` delivered (capped at what is applied); the cursor
    /// never moves back. The cursor as it now is.
    pub fn ack(&self, partition: PartitionId, next_offset: Offset) -> Result<Offset, OutboxError> {
        self.check_partition(partition)?;
        let next_offset = next_offset.min(self.applied(partition));
        let cursor = &self.cursors[partition as usize];
        let previous = cursor.fetch_max(next_offset, Ordering::SeqCst);
        let now = previous.max(next_offset);
        if now != previous {
            self.store.set_notification_cursor(partition, now)?;
        }
        Ok(now)
    }

    /// Notices owed among records `from..until`, `limit` of them or a few more (a donation's
    /// notice and those of the retractions that waited for it are never split); and where to go
    /// on from.
    async fn scan(
        &self,
        partition: PartitionId,
        from: Offset,
        until: Offset,
        limit: usize,
    ) -> Result<(Vec<Owed>, Offset), OutboxError> {
        let mut found = Vec::new();
        let mut next = from;
        while next < until && found.len() < limit {
            let want = ((until - next) as usize).min(SCAN_BATCH);
            let records = self.log.read(partition, next, want).await?;
            let Some(last) = records.last().map(|r| r.offset) else {
                break;
            };
            let index = self.donation_indexes.index(partition);
            let retractions = self.donation_indexes.retractions(partition);
            for record in records {
                next = record.offset + 1;
                let offset = record.offset;
                let owed = |notice| Owed {
                    notice,
                    partition,
                    offset,
                    position: offset,
                };
                match envelope::decode_event(&record.value)? {
                    LogEvent::Donation(event) => {
                        let recorded = index
                            .read()
                            .unwrap_or_else(PoisonError::into_inner)
                            .is_recorded_at(&event.payment_ref, offset);
                        if !recorded {
                            continue;
                        }
                        // Retractions that waited for this donation are owed right after it.
                        let waited: Vec<Owed> = retractions
                            .read()
                            .unwrap_or_else(PoisonError::into_inner)
                            .waited_for_donation(&event.payment_ref)
                            .filter(|r| {
                                r.offset < offset
                                    && matches!(r.status, RetractionStatus::Applied { donation_offset, .. } if donation_offset == offset)
                            })
                            .map(|r| Owed {
                                notice: Notice::Retraction {
                                    refund: r.event.clone(),
                                    donation: event.clone(),
                                },
                                partition,
                                offset: r.offset,
                                position: offset,
                            })
                            .collect();
                        found.push(owed(Notice::Donation(event)));
                        found.extend(waited);
                    }
                    LogEvent::Refund(refund) => {
                        let applied_after_donation = retractions
                            .read()
                            .unwrap_or_else(PoisonError::into_inner)
                            .get(&refund.refund_ref)
                            .and_then(|r| match r.status {
                                RetractionStatus::Applied {
                                    donation_offset, ..
                                } if r.offset == offset && donation_offset < offset => {
                                    Some(donation_offset)
                                }
                                _ => None,
                            });
                        let Some(donation_offset) = applied_after_donation else {
                            continue;
                        };
                        let donation = self.donation_at(partition, donation_offset).await?;
                        found.push(owed(Notice::Retraction { refund, donation }));
                    }
                }
                if found.len() >= limit {
                    break;
                }
            }
            debug_assert!(next <= last + 1);
        }
        Ok((found, next))
    }

    /// The donation recorded at `offset` of `partition`, read back from the log.
    async fn donation_at(
        &self,
        partition: PartitionId,
        offset: Offset,
    ) -> Result<DonationEvent, OutboxError> {
        let records = self.log.read(partition, offset, 1).await?;
        let record = records
            .first()
            .filter(|record| record.offset == offset)
            .ok_or(OutboxError::Log(LogError::OffsetOutOfRange {
                partition,
                offset,
                end_offset: offset,
            }))?;
        Ok(envelope::decode(&record.value)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_partition_says_why_in_the_words_the_api_has_always_used() {
        let out_of_range = OutboxError::NoSuchPartition {
            partition: 9,
            partition_count: 8,
        };
        assert_eq!(
            out_of_range.to_string(),
            "must be below the partition count 8"
        );
        let not_owned = OutboxError::NotOwned {
            partition: 5,
            owned: vec![0, 1, 2, 3],
        };
        assert_eq!(
            not_owned.to_string(),
            "partition 5 is run by another node, which keeps its outbox; this node runs 0-3"
        );
    }
}
