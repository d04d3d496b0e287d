//! The versioned binary envelope of a [`DonationEvent`] as stored in the log.
//!
//! Format version 1 (the only one so far):
//!
//! ```text
//! byte 0      format version, 1
//! bytes 1..   bincode 1.x (fixed-width little-endian integers, u64 length prefixes) of
//!             DonationEventV1 { payment_ref, order_id, user_id, campaign_id: String,
//!                               amount_cents: u64, currency: String, paid_at: i64 unix ms }
//! ```
//!
//! A new format gets a new version byte and a decoder arm here; old arms stay, so logs written
//! today remain readable. `tests/fixtures/donation_event_v1.bin` pins version 1.

use bincode::Options;

use super::DonationEvent;

/// The envelope version this build writes.
pub const FORMAT_VERSION_CURRENT: u8 = 1;

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
    #[error("donation envelope format version {0} is not known to this build (knows 1)")]
    UnknownVersion(u8),
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

/// Decodes an event from any format version this build knows.
pub fn decode(bytes: &[u8]) -> Result<DonationEvent, EnvelopeError> {
    let (&version, body) = bytes.split_first().ok_or(EnvelopeError::Empty)?;
    match version {
        1 => codec()
            .deserialize(body)
            .map_err(|e| EnvelopeError::Malformed {
                version,
                reason: e.to_string(),
            }),
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
