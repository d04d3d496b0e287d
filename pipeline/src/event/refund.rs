//! The retraction event: a refund or chargeback of a recorded donation's payment.
//!
//! - [`RefundEvent`] is the domain record; `refund_ref` is its idempotency key, and its
//!   `payment_ref` names the donation it takes money back from (and picks its partition, so a
//!   retraction is applied in log order with its donation).
//! - [`validate_refund`] turns untrusted JSON into a `RefundEvent` or a field-level error.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::EventTime;
use super::validate::{
    DonationLimits, Rejection, RejectionCode, amount_cents, reference, reject_unknown, timestamp,
};
use crate::support::clock::UnixMillis;

/// Why money went back: the donor asked for it, or the card network clawed it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetractionKind {
    Refund,
    Chargeback,
}

impl RetractionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RetractionKind::Refund => "refund",
            RetractionKind::Chargeback => "chargeback",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "refund" => Some(RetractionKind::Refund),
            "chargeback" => Some(RetractionKind::Chargeback),
            _ => None,
        }
    }
}

/// One refund or chargeback the payment system reported, in minor units of the donation's
/// currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundEvent {
    /// The payment provider's reference of the refund: the idempotency key.
    pub refund_ref: String,
    /// The payment whose donation it retracts.
    pub payment_ref: String,
    pub amount_cents: u64,
    pub kind: RetractionKind,
    /// When the money went back (event time), to the millisecond.
    pub refunded_at: EventTime,
}

const FIELDS: [&str; 5] = [
    "refund_ref",
    "payment_ref",
    "amount_cents",
    "kind",
    "refunded_at",
];

/// Validates one refund given as a JSON value, at wall-clock time `now_ms`; amounts and the
/// clock skew allowed are bounded as for donations.
pub fn validate_refund(
    value: &Value,
    limits: &DonationLimits,
    now_ms: UnixMillis,
) -> Result<RefundEvent, Rejection> {
    let Value::Object(object) = value else {
        return Err(Rejection {
            code: RejectionCode::InvalidBody,
            field: None,
            message: "a refund must be a JSON object".into(),
        });
    };
    reject_unknown(object, &FIELDS, "is not a refund field")?;
    let refund_ref = reference(object, "refund_ref")?;
    let payment_ref = reference(object, "payment_ref")?;
    let amount_cents = amount_cents(object, limits.amount_cents_max)?;
    let kind = kind(object)?;
    let refunded_at = timestamp(object, "refunded_at", now_ms, limits.paid_at_future_skew_ms)?;
    Ok(RefundEvent {
        refund_ref,
        payment_ref,
        amount_cents,
        kind,
        refunded_at,
    })
}

fn kind(object: &Map<String, Value>) -> Result<RetractionKind, Rejection> {
    const FIELD: &str = "kind";
    match object.get(FIELD) {
        None | Some(Value::Null) => Err(Rejection {
            code: RejectionCode::MissingField,
            field: Some(FIELD.into()),
            message: "is required".into(),
        }),
        Some(Value::String(text)) => RetractionKind::parse(text)
            .ok_or_else(|| Rejection::invalid(FIELD, "must be \"refund\" or \"chargeback\"")),
        Some(_) => Err(Rejection::invalid(
            FIELD,
            "must be the string \"refund\" or \"chargeback\"",
        )),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const NOW_MS: i64 = 1_795_546_800_000; // 2026-11-24T19:00:00Z

    fn check(mutate: impl FnOnce(&mut Map<String, Value>)) -> Result<RefundEvent, Rejection> {
        let mut value = json!({
            "refund_ref": "re_1",
            "payment_ref": "pay_1",
            "amount_cents": 50,
            "kind": "chargeback",
            "refunded_at": "2026-11-24T18:45:00Z"
        });
        mutate(value.as_object_mut().unwrap());
        validate_refund(&value, &DonationLimits::default(), NOW_MS)
    }

    #[test]
    fn accepts_a_good_refund() {
        let refund = check(|_| {}).unwrap();
        assert_eq!(refund.kind, RetractionKind::Chargeback);
        assert_eq!(refund.amount_cents, 50);
        assert_eq!(
            refund.refunded_at.to_rfc3339().unwrap(),
            "2026-11-24T18:45:00Z"
        );
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases: Vec<(&str, Value, RejectionCode)> = vec![
            ("refund_ref", json!(null), RejectionCode::MissingField),
            ("refund_ref", json!("a b"), RejectionCode::InvalidField),
            ("payment_ref", json!(7), RejectionCode::InvalidField),
            ("amount_cents", json!(0), RejectionCode::InvalidField),
            ("amount_cents", json!("5"), RejectionCode::InvalidField),
            ("kind", json!("goodwill"), RejectionCode::InvalidField),
            ("kind", json!(null), RejectionCode::MissingField),
            (
                "refunded_at",
                json!("yesterday"),
                RejectionCode::InvalidField,
            ),
            (
                "refunded_at",
                json!("2026-11-24T20:00:00Z"),
                RejectionCode::InvalidField,
            ),
        ];
        for (field, bad, code) in cases {
            let rejection = check(|o| {
                o.insert(field.into(), bad.clone());
            })
            .unwrap_err();
            assert_eq!(rejection.field.as_deref(), Some(field), "{field} = {bad}");
            assert_eq!(rejection.code, code, "{field} = {bad}");
        }
        let unknown = check(|o| {
            o.insert("campaign_id".into(), json!("meals"));
        })
        .unwrap_err();
        assert_eq!(unknown.code, RejectionCode::UnknownField);
        assert_eq!(unknown.field.as_deref(), Some("campaign_id"));
    }
}
