//! Validation of untrusted donation input (HTTP callbacks, NDJSON imports) into events.
//!
//! Input is checked field by field from a parsed JSON value, so that every rejection names the
//! field and says what is wrong with it — including wrong JSON types such as `"200"`, `2.5`,
//! `-1` or `1e30` for an amount, which a typed deserializer would only report vaguely.
//!
//! [`accept_plain_donation`] is the fast way in for the common case: a flat object whose fields
//! were parsed straight into strings and whole numbers, with no JSON value built. It runs the
//! same checks and accepts exactly what [`validate_donation`] accepts; anything it does not
//! accept it hands back, for `validate_donation` to name what is wrong.

use serde_json::{Map, Value};

use super::currency::is_iso_4217;
use super::{DonationEvent, EventTime};
use crate::support::clock::UnixMillis;

/// Longest `payment_ref`, `order_id` or `user_id`, in characters.
pub const REFERENCE_CHARS_MAX: usize = 128;
/// Longest `campaign_id`, in characters.
pub const CAMPAIGN_ID_CHARS_MAX: usize = 64;
/// Default cap on one donation: $100,000.00 in cents.
pub const AMOUNT_CENTS_MAX_DEFAULT: u64 = 10_000_000;
/// How far in the future `paid_at` may be, to absorb clock skew between us and the payer.
pub const PAID_AT_FUTURE_SKEW_MS_DEFAULT: i64 = 5 * 60 * 1000;

/// A donation's fields, in the order [`accept_plain_donation`] takes their values.
pub const DONATION_FIELDS: &[&str] = &FIELDS;

const FIELDS: [&str; 7] = [
    "payment_ref",
    "order_id",
    "user_id",
    "campaign_id",
    "amount_cents",
    "currency",
    "paid_at",
];

/// Bounds a donation must respect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DonationLimits {
    pub amount_cents_max: u64,
    pub paid_at_future_skew_ms: i64,
}

impl Default for DonationLimits {
    fn default() -> Self {
        Self {
            amount_cents_max: AMOUNT_CENTS_MAX_DEFAULT,
            paid_at_future_skew_ms: PAID_AT_FUTURE_SKEW_MS_DEFAULT,
        }
    }
}

/// Stable machine-readable reasons for rejecting input; their strings are public API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectionCode {
    /// The body is not a JSON object.
    InvalidBody,
    MissingField,
    InvalidField,
    UnknownField,
}

impl RejectionCode {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectionCode::InvalidBody => "invalid_body",
            RejectionCode::MissingField => "missing_field",
            RejectionCode::InvalidField => "invalid_field",
            RejectionCode::UnknownField => "unknown_field",
        }
    }
}

/// Why one donation input was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", field.as_ref().map(|f| format!("{f}: ")).unwrap_or_default())]
pub struct Rejection {
    pub code: RejectionCode,
    pub field: Option<String>,
    pub message: String,
}

impl Rejection {
    fn field(code: RejectionCode, field: &str, message: impl Into<String>) -> Self {
        Self {
            code,
            field: Some(field.to_owned()),
            message: message.into(),
        }
    }

    pub(crate) fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::field(RejectionCode::InvalidField, field, message)
    }
}

/// A validated donation whose currency may still have to come from its campaign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DonationInput {
    pub payment_ref: String,
    pub order_id: String,
    pub user_id: String,
    pub campaign_id: String,
    pub amount_cents: u64,
    pub currency: Option<String>,
    pub paid_at: EventTime,
}

impl DonationInput {
    /// Completes the event, taking the currency from `default_currency` when the input had none.
    pub fn into_event(self, default_currency: Option<&str>) -> Result<DonationEvent, Rejection> {
        let currency = match (self.currency, default_currency) {
            (Some(currency), _) => currency,
            (None, Some(default)) => default.to_owned(),
            (None, None) => {
                return Err(Rejection::field(
                    RejectionCode::MissingField,
                    "currency",
                    "is required: no campaign currency to default to",
                ));
            }
        };
        Ok(DonationEvent {
            payment_ref: self.payment_ref,
            order_id: self.order_id,
            user_id: self.user_id,
            campaign_id: self.campaign_id,
            amount_cents: self.amount_cents,
            currency,
            paid_at: self.paid_at,
        })
    }
}

/// A value of a flat object's field, of one of the two kinds a donation's fields take: a string,
/// or a whole number from 0 to `u64::MAX` (what `serde_json` parses as unsigned).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlainValue {
    Text(String),
    Unsigned(u64),
}

impl PlainValue {
    fn text(slot: &Option<PlainValue>) -> Option<&str> {
        match slot {
            Some(PlainValue::Text(text)) => Some(text),
            _ => None,
        }
    }

    fn take_text(slot: &mut Option<PlainValue>) -> String {
        match slot.take() {
            Some(PlainValue::Text(text)) => text,
            other => unreachable!("a field checked as text is {other:?}"),
        }
    }
}

/// The donation whose fields are `fields` — a flat object's values in the order of
/// [`DONATION_FIELDS`], each given at most once, `None` where absent — at wall-clock time
/// `now_ms`, when every field has the kind it must have and passes its check: the same
/// [`DonationInput`] that [`validate_donation`] makes of that object. Anything else is handed
/// back as it came, for `validate_donation` to say what is wrong.
pub fn accept_plain_donation(
    mut fields: Vec<Option<PlainValue>>,
    limits: &DonationLimits,
    now_ms: UnixMillis,
) -> Result<DonationInput, Vec<Option<PlainValue>>> {
    let Some((amount_cents, paid_at)) = check_plain(&fields, limits, now_ms) else {
        return Err(fields);
    };
    let currency = fields[5]
        .is_some()
        .then(|| PlainValue::take_text(&mut fields[5]));
    Ok(DonationInput {
        payment_ref: PlainValue::take_text(&mut fields[0]),
        order_id: PlainValue::take_text(&mut fields[1]),
        user_id: PlainValue::take_text(&mut fields[2]),
        campaign_id: PlainValue::take_text(&mut fields[3]),
        amount_cents,
        currency,
        paid_at,
    })
}

/// The amount and the time of plain donation fields that pass every check of
/// [`validate_donation`], by the same functions; `None` if any does not.
fn check_plain(
    fields: &[Option<PlainValue>],
    limits: &DonationLimits,
    now_ms: UnixMillis,
) -> Option<(u64, EventTime)> {
    let [
        payment_ref,
        order_id,
        user_id,
        campaign_id,
        amount,
        currency,
        paid_at,
    ] = fields
    else {
        return None;
    };
    for (field, slot) in [
        ("payment_ref", payment_ref),
        ("order_id", order_id),
        ("user_id", user_id),
    ] {
        check_reference(field, PlainValue::text(slot)?).ok()?;
    }
    check_campaign_id_text(PlainValue::text(campaign_id)?).ok()?;
    let Some(PlainValue::Unsigned(cents)) = *amount else {
        return None;
    };
    check_amount_cents(cents, limits.amount_cents_max).ok()?;
    match currency {
        None => {}
        Some(PlainValue::Text(code)) if is_iso_4217(code) => {}
        Some(_) => return None,
    }
    let paid_at = timestamp_text(
        "paid_at",
        PlainValue::text(paid_at)?,
        now_ms,
        limits.paid_at_future_skew_ms,
    )
    .ok()?;
    Some((cents, paid_at))
}

/// Validates one donation given as a JSON value, at wall-clock time `now_ms`.
pub fn validate_donation(
    value: &Value,
    limits: &DonationLimits,
    now_ms: UnixMillis,
) -> Result<DonationInput, Rejection> {
    let Value::Object(object) = value else {
        return Err(Rejection {
            code: RejectionCode::InvalidBody,
            field: None,
            message: "a donation must be a JSON object".into(),
        });
    };
    reject_unknown(object, &FIELDS, "is not a donation field")?;
    let payment_ref = reference(object, "payment_ref")?;
    let order_id = reference(object, "order_id")?;
    let user_id = reference(object, "user_id")?;
    let campaign_id = campaign_id(object)?;
    let amount_cents = amount_cents(object, limits.amount_cents_max)?;
    let currency = currency(object)?;
    let paid_at = paid_at(object, now_ms, limits.paid_at_future_skew_ms)?;
    Ok(DonationInput {
        payment_ref,
        order_id,
        user_id,
        campaign_id,
        amount_cents,
        currency,
        paid_at,
    })
}

/// Refuses the first key of `object` that is not one of `fields`.
pub(crate) fn reject_unknown(
    object: &Map<String, Value>,
    fields: &[&str],
    message: &str,
) -> Result<(), Rejection> {
    match object.keys().find(|key| !fields.contains(&key.as_str())) {
        Some(unknown) => Err(Rejection::field(
            RejectionCode::UnknownField,
            &truncate_for_message(unknown),
            message,
        )),
        None => Ok(()),
    }
}

fn required<'a>(object: &'a Map<String, Value>, field: &str) -> Result<&'a Value, Rejection> {
    match object.get(field) {
        None | Some(Value::Null) => Err(Rejection::field(
            RejectionCode::MissingField,
            field,
            "is required",
        )),
        Some(value) => Ok(value),
    }
}

fn string<'a>(object: &'a Map<String, Value>, field: &str) -> Result<&'a str, Rejection> {
    required(object, field)?
        .as_str()
        .ok_or_else(|| Rejection::invalid(field, "must be a string"))
}

pub(crate) fn reference(object: &Map<String, Value>, field: &str) -> Result<String, Rejection> {
    let text = string(object, field)?;
    check_reference(field, text)?;
    Ok(text.to_owned())
}

/// Checks a `payment_ref`, `order_id` or `user_id`.
fn check_reference(field: &str, text: &str) -> Result<(), Rejection> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-');
    check_token_text(field, text, REFERENCE_CHARS_MAX, allowed, "[A-Za-z0-9._:-]")
}

fn campaign_id(object: &Map<String, Value>) -> Result<String, Rejection> {
    check_campaign_id(string(object, "campaign_id")?)
}

/// Checks a `campaign_id`, in a donation or in a campaign's definition alike.
pub fn check_campaign_id(text: &str) -> Result<String, Rejection> {
    check_campaign_id_text(text)?;
    Ok(text.to_owned())
}

fn check_campaign_id_text(text: &str) -> Result<(), Rejection> {
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-');
    check_token_text(
        "campaign_id",
        text,
        CAMPAIGN_ID_CHARS_MAX,
        allowed,
        "[a-z0-9_-]",
    )
}

/// Checks an identifier's length and alphabet; `parse_campaign_id` and friends reuse it.
pub fn check_token(
    field: &str,
    text: &str,
    chars_max: usize,
    allowed: impl Fn(char) -> bool,
    alphabet: &str,
) -> Result<String, Rejection> {
    check_token_text(field, text, chars_max, allowed, alphabet)?;
    Ok(text.to_owned())
}

fn check_token_text(
    field: &str,
    text: &str,
    chars_max: usize,
    allowed: impl Fn(char) -> bool,
    alphabet: &str,
) -> Result<(), Rejection> {
    let length = text.chars().count();
    if length == 0 || length > chars_max {
        return Err(Rejection::invalid(
            field,
            format!("must be 1 to {chars_max} characters, got {length}"),
        ));
    }
    if let Some(bad) = text.chars().find(|&c| !allowed(c)) {
        return Err(Rejection::invalid(
            field,
            format!("may only contain {alphabet}, found {bad:?}"),
        ));
    }
    Ok(())
}

pub(crate) fn amount_cents(
    object: &Map<String, Value>,
    amount_cents_max: u64,
) -> Result<u64, Rejection> {
    const FIELD: &str = "amount_cents";
    let value = required(object, FIELD)?;
    let range = || format!("must be an integer from 1 to {amount_cents_max}");
    let Value::Number(number) = value else {
        return Err(Rejection::invalid(
            FIELD,
            format!("{}, not a {}", range(), json_kind(value)),
        ));
    };
    match number.as_u64() {
        Some(cents) => check_amount_cents(cents, amount_cents_max),
        None if number.is_i64() => Err(Rejection::invalid(
            FIELD,
            format!("{}, got {number}", range()),
        )),
        None => Err(Rejection::invalid(
            FIELD,
            format!(
                "{} (whole cents, no fraction or exponent), got {number}",
                range()
            ),
        )),
    }
}

/// Checks a whole amount against its range.
fn check_amount_cents(cents: u64, amount_cents_max: u64) -> Result<u64, Rejection> {
    if (1..=amount_cents_max).contains(&cents) {
        Ok(cents)
    } else {
        Err(Rejection::invalid(
            "amount_cents",
            format!("must be an integer from 1 to {amount_cents_max}, got {cents}"),
        ))
    }
}

fn currency(object: &Map<String, Value>) -> Result<Option<String>, Rejection> {
    match object.get("currency") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(code)) if is_iso_4217(code) => Ok(Some(code.clone())),
        Some(Value::String(code)) => Err(Rejection::invalid(
            "currency",
            format!(
                "must be an ISO 4217 code such as \"USD\", got {:?}",
                truncate_for_message(code)
            ),
        )),
        Some(other) => Err(Rejection::invalid(
            "currency",
            format!("must be a string, not a {}", json_kind(other)),
        )),
    }
}

fn paid_at(
    object: &Map<String, Value>,
    now_ms: UnixMillis,
    future_skew_ms: i64,
) -> Result<EventTime, Rejection> {
    timestamp(object, "paid_at", now_ms, future_skew_ms)
}

/// An RFC 3339 time no further than `future_skew_ms` ahead of `now_ms`.
pub(crate) fn timestamp(
    object: &Map<String, Value>,
    field: &str,
    now_ms: UnixMillis,
    future_skew_ms: i64,
) -> Result<EventTime, Rejection> {
    timestamp_text(field, string(object, field)?, now_ms, future_skew_ms)
}

/// Checks a field's text as [`timestamp`] does.
fn timestamp_text(
    field: &str,
    text: &str,
    now_ms: UnixMillis,
    future_skew_ms: i64,
) -> Result<EventTime, Rejection> {
    let time = EventTime::parse_rfc3339(text).map_err(|_| {
        Rejection::invalid(
            field,
            format!(
                "must be an RFC 3339 timestamp such as \"2026-11-24T18:30:00Z\", got {:?}",
                truncate_for_message(text)
            ),
        )
    })?;
    if time.unix_ms() > now_ms.saturating_add(future_skew_ms) {
        return Err(Rejection::invalid(
            field,
            format!("is more than {} s in the future", future_skew_ms / 1000),
        ));
    }
    Ok(time)
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Bounds how much of an untrusted string is echoed back in an error message.
fn truncate_for_message(text: &str) -> String {
    const ECHO_CHARS_MAX: usize = 64;
    if text.chars().count() <= ECHO_CHARS_MAX {
        text.to_owned()
    } else {
        let head: String = text.chars().take(ECHO_CHARS_MAX).collect();
        format!("{head}…")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const NOW_MS: i64 = 1_795_546_800_000; // 2026-11-24T19:00:00Z

    fn good() -> Value {
        json!({
            "payment_ref": "pay_01HZX:9.a-b",
            "order_id": "ord_1",
            "user_id": "usr_1",
            "campaign_id": "dinner-rush_2026",
            "amount_cents": 100,
            "currency": "USD",
            "paid_at": "2026-11-24T18:30:00Z"
        })
    }

    fn check(mutate: impl FnOnce(&mut Map<String, Value>)) -> Result<DonationInput, Rejection> {
        let mut value = good();
        mutate(value.as_object_mut().unwrap());
        validate_donation(&value, &DonationLimits::default(), NOW_MS)
    }

    fn rejected_field(result: Result<DonationInput, Rejection>) -> (RejectionCode, String) {
        let rejection = result.unwrap_err();
        (rejection.code, rejection.field.unwrap_or_default())
    }

    #[test]
    fn accepts_a_good_donation() {
        let input = check(|_| {}).unwrap();
        assert_eq!(input.amount_cents, 100);
        assert_eq!(input.currency.as_deref(), Some("USD"));
        let event = input.into_event(None).unwrap();
        assert_eq!(event.paid_at.to_rfc3339().unwrap(), "2026-11-24T18:30:00Z");
    }

    #[test]
    fn amount_must_be_a_whole_positive_bounded_integer() {
        for bad in [
            json!("200"),
            json!(2.5),
            json!(-1),
            json!(1e30),
            json!(0),
            json!(10_000_001),
            json!(null),
            json!(true),
        ] {
            let (code, field) = rejected_field(check(|o| {
                o.insert("amount_cents".into(), bad.clone());
            }));
            assert_eq!(field, "amount_cents", "{bad}");
            let expected = if bad.is_null() {
                RejectionCode::MissingField
            } else {
                RejectionCode::InvalidField
            };
            assert_eq!(code, expected, "{bad}");
        }
        assert!(
            check(|o| {
                o.insert("amount_cents".into(), json!(10_000_000));
            })
            .is_ok()
        );
    }

    #[test]
    fn identifiers_have_an_alphabet_and_a_length() {
        for (field, bad) in [
            ("payment_ref", json!("")),
            ("payment_ref", json!("a b")),
            ("order_id", json!("x".repeat(129))),
            ("user_id", json!(42)),
            ("campaign_id", json!("Meals")),
            ("campaign_id", json!("x".repeat(65))),
            ("campaign_id", json!("meals!")),
        ] {
            let (code, got_field) = rejected_field(check(|o| {
                o.insert(field.into(), bad.clone());
            }));
            assert_eq!(
                (code, got_field.as_str()),
                (RejectionCode::InvalidField, field),
                "{bad}"
            );
        }
        assert!(
            check(|o| {
                o.insert("order_id".into(), json!("x".repeat(128)));
            })
            .is_ok()
        );
    }

    #[test]
    fn unknown_and_missing_fields_are_named() {
        let (code, field) = rejected_field(check(|o| {
            o.insert("amount".into(), json!(1));
        }));
        assert_eq!(
            (code, field.as_str()),
            (RejectionCode::UnknownField, "amount")
        );
        let (code, field) = rejected_field(check(|o| {
            o.remove("order_id");
        }));
        assert_eq!(
            (code, field.as_str()),
            (RejectionCode::MissingField, "order_id")
        );
    }

    #[test]
    fn currency_is_optional_but_must_be_iso_4217() {
        let input = check(|o| {
            o.remove("currency");
        })
        .unwrap();
        assert_eq!(
            input.clone().into_event(Some("EUR")).unwrap().currency,
            "EUR"
        );
        assert_eq!(
            input.into_event(None).unwrap_err().code,
            RejectionCode::MissingField
        );
        let (code, field) = rejected_field(check(|o| {
            o.insert("currency".into(), json!("usd"));
        }));
        assert_eq!(
            (code, field.as_str()),
            (RejectionCode::InvalidField, "currency")
        );
    }

    #[test]
    fn paid_at_must_parse_and_not_be_far_in_the_future() {
        let future = EventTime(NOW_MS + PAID_AT_FUTURE_SKEW_MS_DEFAULT + 1)
            .to_rfc3339()
            .unwrap();
        let near = EventTime(NOW_MS + PAID_AT_FUTURE_SKEW_MS_DEFAULT)
            .to_rfc3339()
            .unwrap();
        for bad in [json!("tomorrow"), json!(1_795_000_000), json!(future)] {
            let (code, field) = rejected_field(check(|o| {
                o.insert("paid_at".into(), bad.clone());
            }));
            assert_eq!(
                (code, field.as_str()),
                (RejectionCode::InvalidField, "paid_at"),
                "{bad}"
            );
        }
        assert!(
            check(|o| {
                o.insert("paid_at".into(), json!(near));
            })
            .is_ok()
        );
    }

    #[test]
    fn non_objects_are_rejected_without_a_field() {
        for bad in [json!([]), json!("x"), json!(1)] {
            let rejection =
                validate_donation(&bad, &DonationLimits::default(), NOW_MS).unwrap_err();
            assert_eq!(rejection.code, RejectionCode::InvalidBody);
            assert!(rejection.field.is_none());
        }
    }
}
