//! The ledger export: every recorded donation of a campaign and every refund or chargeback
//! applied to them, row by row in log order (partition by partition, offset by offset), with
//! where each sits in the log. Its sums are the campaign's totals: the donations' amounts its
//! gross, the retractions' its refunded, their signed sum its net.
//!
//! A partition is read up to an offset its state has applied (`until`); a record counts as its
//! state says — a donation if it is its payment's first record, a retraction if it is its
//! `refund_ref`'s first and was applied to one of the campaign's donations below `until` (a
//! refund that waited for its donation is applied at the donation's offset). So an export up to
//! a checkpoint's offsets adds up to that checkpoint's totals even while the state runs ahead.
//!
//! Records are read a batch at a time ([`PartitionLedger::next_rows`]): memory holds a batch,
//! whatever the size of the log.

use std::sync::PoisonError;

use crate::event::refund::RetractionKind;
use crate::event::{LogEvent, envelope};
use crate::log::{Log, LogError, Offset, PartitionId};
use crate::operators::retractions::RetractionStatus;
use crate::processor::partition_state::{SharedIndex, SharedRetractions};
use crate::support::clock::UnixMillis;

/// Records read from the log per step.
const READ_RECORDS: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("record {offset} of partition {partition} does not decode: {reason}")]
    Undecodable {
        partition: PartitionId,
        offset: Offset,
        reason: String,
    },
    #[error("partition {partition} ends at {end}, before offset {until} its state applied")]
    LogShort {
        partition: PartitionId,
        end: Offset,
        until: Offset,
    },
}

/// What a row records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerKind {
    Donation,
    Refund,
    Chargeback,
}

impl LedgerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LedgerKind::Donation => "donation",
            LedgerKind::Refund => "refund",
            LedgerKind::Chargeback => "chargeback",
        }
    }
}

/// One row of the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerRow {
    pub kind: LedgerKind,
    pub partition: PartitionId,
    pub offset: Offset,
    /// When the log accepted the record.
    pub recorded_at_ms: UnixMillis,
    /// The donation's `paid_at`, the retraction's `refunded_at`.
    pub event_time_ms: UnixMillis,
    pub payment_ref: String,
    /// Empty for a donation.
    pub refund_ref: String,
    /// Empty for a retraction.
    pub order_id: String,
    /// Empty for a retraction.
    pub user_id: String,
    pub amount_cents: u64,
}

impl LedgerRow {
    /// What the row adds to the net total: the donation's amount, less a retraction's.
    pub fn net_cents(&self) -> i64 {
        let amount = i64::try_from(self.amount_cents).expect("amounts are bounded");
        match self.kind {
            LedgerKind::Donation => amount,
            LedgerKind::Refund | LedgerKind::Chargeback => -amount,
        }
    }
}

/// Which rows an export wants.
#[derive(Debug, Clone)]
pub struct LedgerFilter {
    pub campaign_id: String,
    /// Only rows whose event time is in `[from_ms, to_ms)`.
    pub from_ms: Option<UnixMillis>,
    pub to_ms: Option<UnixMillis>,
}

impl LedgerFilter {
    fn in_range(&self, event_time_ms: UnixMillis) -> bool {
        self.from_ms.is_none_or(|from| event_time_ms >= from)
            && self.to_ms.is_none_or(|to| event_time_ms < to)
    }
}

/// One partition's rows, read a batch at a time.
#[derive(Debug)]
pub struct PartitionLedger {
    partition: PartitionId,
    next: Offset,
    until: Offset,
    index: SharedIndex,
    retractions: SharedRetractions,
}

impl PartitionLedger {
    /// The rows of `partition` below `until`, as `index` and `retractions` (the partition's
    /// state, which has applied at least `until`) tell them.
    pub fn new(
        partition: PartitionId,
        until: Offset,
        index: SharedIndex,
        retractions: SharedRetractions,
    ) -> Self {
        Self {
            partition,
            next: 0,
            until,
            index,
            retractions,
        }
    }

    /// Records read so far, and how many there are to read.
    pub fn progress(&self) -> (Offset, Offset) {
        (self.next, self.until)
    }

    /// The next batch's rows that `filter` wants (possibly none); `None` once the partition is
    /// read up to `until`.
    pub async fn next_rows(
        &mut self,
        log: &dyn Log,
        filter: &LedgerFilter,
    ) -> Result<Option<Vec<LedgerRow>>, ExportError> {
        if self.next >= self.until {
            return Ok(None);
        }
        let want = ((self.until - self.next) as usize).min(READ_RECORDS);
        let records = log.read(self.partition, self.next, want).await?;
        if records.is_empty() {
            return Err(ExportError::LogShort {
                partition: self.partition,
                end: self.next,
                until: self.until,
            });
        }
        let mut rows = Vec::new();
        let index = self.index.read().unwrap_or_else(PoisonError::into_inner);
        let retractions = self
            .retractions
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        for record in records {
            if record.offset >= self.until {
                break;
            }
            self.next = record.offset + 1;
            let event =
                envelope::decode_event(&record.value).map_err(|e| ExportError::Undecodable {
                    partition: self.partition,
                    offset: record.offset,
                    reason: e.to_string(),
                })?;
            let row = match event {
                LogEvent::Donation(donation) => {
                    let counted = donation.campaign_id == filter.campaign_id
                        && index.is_recorded_at(&donation.payment_ref, record.offset);
                    counted.then(|| LedgerRow {
                        kind: LedgerKind::Donation,
                        partition: self.partition,
                        offset: record.offset,
                        recorded_at_ms: record.append_time_ms,
                        event_time_ms: donation.paid_at.unix_ms(),
                        payment_ref: donation.payment_ref,
                        refund_ref: String::new(),
                        order_id: donation.order_id,
                        user_id: donation.user_id,
                        amount_cents: donation.amount_cents,
                    })
                }
                LogEvent::Refund(refund) => {
                    let counted = retractions.get(&refund.refund_ref).is_some_and(|recorded| {
                        recorded.offset == record.offset
                            && match &recorded.status {
                                RetractionStatus::Applied {
                                    campaign_id,
                                    donation_offset,
                                } => {
                                    *campaign_id == filter.campaign_id
                                        && record.offset.max(*donation_offset) < self.until
                                }
                                _ => false,
                            }
                    });
                    counted.then(|| LedgerRow {
                        kind: match refund.kind {
                            RetractionKind::Refund => LedgerKind::Refund,
                            RetractionKind::Chargeback => LedgerKind::Chargeback,
                        },
                        partition: self.partition,
                        offset: record.offset,
                        recorded_at_ms: record.append_time_ms,
                        event_time_ms: refund.refunded_at.unix_ms(),
                        payment_ref: refund.payment_ref,
                        refund_ref: refund.refund_ref,
                        order_id: String::new(),
                        user_id: String::new(),
                        amount_cents: refund.amount_cents,
                    })
                }
            };
            if let Some(row) = row.filter(|row| filter.in_range(row.event_time_ms)) {
                rows.push(row);
            }
        }
        Ok(Some(rows))
    }
}

/// The CSV header of [`csv_line`]'s rows.
pub const CSV_HEADER: &str = "kind,partition,offset,recorded_at,event_time,payment_ref,refund_ref,order_id,user_id,amount_cents,net_cents,currency\n";

/// A row as a CSV line (RFC 4180; the identifiers' alphabets need no quoting, but a field that
/// would is quoted all the same).
pub fn csv_line(row: &LedgerRow, currency: &str, out: &mut String) {
    use std::fmt::Write;
    let time = |ms: UnixMillis| {
        crate::event::EventTime(ms)
            .to_rfc3339()
            .unwrap_or_else(|_| ms.to_string())
    };
    let fields = [
        row.kind.as_str().to_owned(),
        row.partition.to_string(),
        row.offset.to_string(),
        time(row.recorded_at_ms),
        time(row.event_time_ms),
        row.payment_ref.clone(),
        row.refund_ref.clone(),
        row.order_id.clone(),
        row.user_id.clone(),
        row.amount_cents.to_string(),
        row.net_cents().to_string(),
        currency.to_owned(),
    ];
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        if field.contains([',', '"', '\n', '\r']) {
            let _ = write!(out, "\"{}\"", field.replace('"', "\"\""));
        } else {
            out.push_str(field);
        }
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_is_one_csv_line_with_its_signed_amount() {
        let row = LedgerRow {
            kind: LedgerKind::Chargeback,
            partition: 3,
            offset: 17,
            recorded_at_ms: 1_795_546_800_000,
            event_time_ms: 1_795_546_860_500,
            payment_ref: "pay_1".into(),
            refund_ref: "re_1".into(),
            order_id: String::new(),
            user_id: String::new(),
            amount_cents: 250,
        };
        let mut line = String::new();
        csv_line(&row, "USD", &mut line);
        assert_eq!(
            line,
            "chargeback,3,17,2026-11-24T19:00:00Z,2026-11-24T19:01:00.5Z,pay_1,re_1,,,250,-250,USD\n"
        );
        assert_eq!(CSV_HEADER.matches(',').count(), line.matches(',').count());
        let mut quoted = String::new();
        let odd = LedgerRow {
            user_id: "a,\"b\"".into(),
            ..row
        };
        csv_line(&odd, "USD", &mut quoted);
        assert!(quoted.contains(",\"a,\"\"b\"\"\","), "{quoted}");
    }
}
