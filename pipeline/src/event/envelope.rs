//! The versioned binary envelopes of the log's events, as stored in the log.
//!
//! The first byte says what follows; the rest is bincode 1.x (fixed-width little-endian
//! integers, u64 length prefixes):
//!
//! ```text
//! byte 0 = 1  DonationEventV1 { payment_ref, order_id, user_id, campaign_id: String,
//!                               amount_cents: u64, currency: String, paid_at: i64 unix ms }
//! byte 0 = 2  RefundEventV1 { refund_ref, payment_ref: String, amount_cents: u64,
//!                             kind: u32 (0 refund, 1 chargeback), refunded_at: i64 unix ms }
//! ```
//!
//! A new format gets a new version byte and a decoder arm here; old arms stay, so logs written
//! today remain readable. `tests/fixtures/donation_event_v1.bin` pins version 1 and
//! `tests/fixtures/refund_event_v1.bin` pins version 2.

use bincode::Options;

use super::refund::RefundEvent;
use super::{DonationEvent, LogEvent};

/// The envelope version this build writes for donations.
pub const FORMAT_VERSION_CURRENT: u8 = 1;
/// The envelope version this build writes for refunds and chargebacks.
pub const REFUND_FORMAT_VERSION: u8 = 2;

/// An envelope larger than this is corrupt: validated events are well under 1 KiB.
const ENVELOPE_BYTES_MAX: u64 = 64 * 1024;

/// bincode 1.x with fixed-width integers, rejecting trailing bytes and bounding allocations.
fn codec() -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_limit(ENVELOPE_BYTES_MAX)
}

/// Why stored bytes are not a donation event this build can read.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("empty donation envelope")]
    Empty,
    #[error("donation envelope format version {0} is not known to this build (knows 1 and 2)")]
    UnknownVersion(u8),
    #[error("the record is a refund, not a donation")]
    NotADonation,
    #[error("donation envelope version {version} does not decode: {reason}")]
    Malformed { version: u8, reason: String },
}

/// An event as a log record: keyed by its `payment_ref`, which picks its partition, so every
/// resend of one payment lands in one partition.
pub fn keyed_record(event: &DonationEvent) -> crate::log::KeyedRecord {
    crate::log::KeyedRecord {
        key: event.payment_ref.clone().into_bytes(),
        value: encode(event),
    }
}

/// Encodes an event in the current format.
pub fn encode(event: &DonationEvent) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(encoded_len_hint(event));
    bytes.push(FORMAT_VERSION_CURRENT);
    // Serializing a validated event into a Vec cannot fail: bincode only errors on I/O (none
    // here), maps of unknown length (none) and the size limit, which validated fields (at most
    // a few hundred bytes) cannot reach.
    codec()
        .serialize_into(&mut bytes, event)
        .expect("a validated event always encodes");
    bytes
}

/// A refund as a log record: keyed by its donation's `payment_ref`, so it lands in the
/// donation's partition and is applied in log order with it.
pub fn keyed_refund_record(refund: &RefundEvent) -> crate::log::KeyedRecord {
    let mut value =
        Vec::with_capacity(1 + 4 * 8 + 4 + refund.refund_ref.len() + refund.payment_ref.len());
    value.push(REFUND_FORMAT_VERSION);
    codec()
        .serialize_into(&mut value, refund)
        .expect("a validated refund always encodes");
    crate::log::KeyedRecord {
        key: refund.payment_ref.clone().into_bytes(),
        value,
    }
}

/// Decodes a donation from any format version this build knows; a refund's record is
/// [`EnvelopeError::NotADonation`].
pub fn decode(bytes: &[u8]) -> Result<DonationEvent, EnvelopeError> {
    match decode_event(bytes)? {
        LogEvent::Donation(donation) => Ok(donation),
        LogEvent::Refund(_) => Err(EnvelopeError::NotADonation),
    }
}

/// Decodes any record of the donation log.
pub fn decode_event(bytes: &[u8]) -> Result<LogEvent, EnvelopeError> {
    let (&version, body) = bytes.split_first().ok_or(EnvelopeError::Empty)?;
    let malformed = |e: bincode::Error| EnvelopeError::Malformed {
        version,
        reason: e.to_string(),
    };
    match version {
        1 => codec()
            .deserialize(body)
            .map(LogEvent::Donation)
            .map_err(malformed),
        REFUND_FORMAT_VERSION => codec()
            .deserialize(body)
            .map(LogEvent::Refund)
            .map_err(malformed),
        other => Err(EnvelopeError::UnknownVersion(other)),
    }
}

fn encoded_len_hint(event: &DonationEvent) -> usize {
    const FIXED_BYTES: usize = 1 + 5 * 8 + 8 + 8;
    FIXED_BYTES
        + event.payment_ref.len()
        + event.order_id.len()
        + event.user_id.len()
        + event.campaign_id.len()
        + event.currency.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventTime;

    fn sample() -> DonationEvent {
        DonationEvent {
            payment_ref: "pay_1".into(),
            order_id: "ord_1".into(),
            user_id: "usr_1".into(),
            campaign_id: "meals".into(),
            amount_cents: 100,
            currency: "USD".into(),
            paid_at: EventTime(1_790_000_000_000),
        }
    }

    #[test]
    fn roundtrip() {
        let event = sample();
        let bytes = encode(&event);
        assert_eq!(bytes[0], FORMAT_VERSION_CURRENT);
        assert_eq!(bytes.len(), encoded_len_hint(&event));
        assert_eq!(decode(&bytes).unwrap(), event);
    }

    #[test]
    fn a_refund_roundtrips_under_its_payment_key() {
        let refund = RefundEvent {
            refund_ref: "re_1".into(),
            payment_ref: "pay_1".into(),
            amount_cents: 40,
            kind: crate::event::refund::RetractionKind::Chargeback,
            refunded_at: EventTime(1_790_000_000_500),
        };
        let record = keyed_refund_record(&refund);
        assert_eq!(record.key, b"pay_1");
        assert_eq!(record.value[0], REFUND_FORMAT_VERSION);
        assert_eq!(
            decode_event(&record.value).unwrap(),
            LogEvent::Refund(refund)
        );
        assert!(matches!(
            decode(&record.value),
            Err(EnvelopeError::NotADonation)
        ));
    }

    #[test]
    fn unknown_version_and_garbage_are_errors() {
        let mut bytes = encode(&sample());
        bytes[0] = 9;
        assert!(matches!(
            decode(&bytes),
            Err(EnvelopeError::UnknownVersion(9))
        ));
        assert!(matches!(decode(&[]), Err(EnvelopeError::Empty)));
        assert!(matches!(
            decode(&[1, 0xff, 0xff]),
            Err(EnvelopeError::Malformed { .. })
        ));
    }
}
