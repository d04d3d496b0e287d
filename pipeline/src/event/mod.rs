//! The events of the donation log: what the payment system tells us about one successful
//! payment, and about money that went back.
//!
//! - [`DonationEvent`] is the domain record; `payment_ref` is its idempotency key.
//! - [`refund::RefundEvent`] retracts (part of) a donation: a refund or a chargeback, keyed by
//!   its `refund_ref` and logged under its donation's `payment_ref`.
//! - [`validate`] turns untrusted JSON into a `DonationEvent` or a field-level error.
//! - [`envelope`] is the versioned binary form stored in the log.

pub mod currency;
pub mod envelope;
pub mod refund;
pub mod validate;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::log::{Offset, PartitionId};
use crate::support::clock::UnixMillis;

/// One successful checkout payment that included a donation.
///
/// Every field is validated before an event reaches the log (see [`validate`]); amounts are
/// integer minor units of `currency`, never floats.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DonationEvent {
    /// The payment provider's reference: the idempotency key. Retries carry the same value.
    pub payment_ref: String,
    pub order_id: String,
    pub user_id: String,
    pub campaign_id: String,
    pub amount_cents: u64,
    /// ISO 4217 code, upper case.
    pub currency: String,
    /// When the payment succeeded (event time), to the millisecond.
    pub paid_at: EventTime,
}

/// One record of the donation log, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogEvent {
    Donation(DonationEvent),
    Refund(refund::RefundEvent),
}

impl LogEvent {
    /// The payment the record is about: its log key.
    pub fn payment_ref(&self) -> &str {
        match self {
            LogEvent::Donation(donation) => &donation.payment_ref,
            LogEvent::Refund(refund) => &refund.payment_ref,
        }
    }
}

/// A donation event together with what the log added when it was appended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LoggedDonation {
    pub partition: PartitionId,
    pub offset: Offset,
    pub append_time: EventTime,
    #[serde(flatten)]
    pub event: DonationEvent,
}

/// A point in time, kept as milliseconds since the Unix epoch (UTC).
///
/// Human-readable formats (JSON) carry it as an RFC 3339 string; binary formats as an `i64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventTime(pub UnixMillis);

/// Why a timestamp could not be read or written as RFC 3339.
#[derive(Debug, thiserror::Error)]
#[error("not an RFC 3339 timestamp within years 0000-9999: {0}")]
pub struct TimestampError(String);

impl EventTime {
    pub fn unix_ms(self) -> UnixMillis {
        self.0
    }

    /// Parses an RFC 3339 timestamp, keeping millisecond precision (finer digits are dropped).
    pub fn parse_rfc3339(text: &str) -> Result<Self, TimestampError> {
        let parsed =
            OffsetDateTime::parse(text, &Rfc3339).map_err(|e| TimestampError(e.to_string()))?;
        let millis = parsed.unix_timestamp_nanos().div_euclid(1_000_000);
        i64::try_from(millis)
            .map(EventTime)
            .map_err(|e| TimestampError(e.to_string()))
    }

    /// Formats as RFC 3339 in UTC, with fractional seconds only when they are not zero.
    pub fn to_rfc3339(self) -> Result<String, TimestampError> {
        let nanos = i128::from(self.0) * 1_000_000;
        let moment = OffsetDateTime::from_unix_timestamp_nanos(nanos)
            .map_err(|e| TimestampError(e.to_string()))?;
        moment
            .format(&Rfc3339)
            .map_err(|e| TimestampError(e.to_string()))
    }
}

impl Serialize for EventTime {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            let text = self.to_rfc3339().map_err(serde::ser::Error::custom)?;
            serializer.serialize_str(&text)
        } else {
            serializer.serialize_i64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for EventTime {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let text = String::deserialize(deserializer)?;
            EventTime::parse_rfc3339(&text).map_err(serde::de::Error::custom)
        } else {
            i64::deserialize(deserializer).map(EventTime)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_roundtrip_keeps_milliseconds() {
        let time = EventTime::parse_rfc3339("2026-11-24T18:30:05.123456+01:00").unwrap();
        assert_eq!(time.to_rfc3339().unwrap(), "2026-11-24T17:30:05.123Z");
        let whole = EventTime::parse_rfc3339("2026-11-24T18:30:05Z").unwrap();
        assert_eq!(whole.to_rfc3339().unwrap(), "2026-11-24T18:30:05Z");
    }

    #[test]
    fn times_before_the_epoch_round_down() {
        let time = EventTime::parse_rfc3339("1969-12-31T23:59:59.9995Z").unwrap();
        assert_eq!(time.unix_ms(), -1);
    }

    #[test]
    fn rejects_non_rfc3339() {
        assert!(EventTime::parse_rfc3339("2026-11-24 18:30").is_err());
        assert!(EventTime::parse_rfc3339("yesterday").is_err());
    }
}
