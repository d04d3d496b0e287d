//! Request bodies: how every JSON body of the API is read and parsed.
//!
//! [`read_json`] checks, before reading a byte, that the body is `application/json`, not
//! compressed (`Content-Encoding` other than `identity` is refused: the signature covers the
//! bytes as sent, and an inflated body could be any size), and not declared longer than the
//! route's limit; then it reads at most that many bytes.
//!
//! [`value`], [`batch`] and [`typed`] parse it while refusing an object that names a key twice:
//! serde_json would keep the last value, so `"amount_cents":100,"amount_cents":999999` would
//! record 999999 while a reader of the body (or a log line) sees 100. One pass builds the value
//! and notes the first repeated key of each item.

use std::collections::HashSet;
use std::fmt;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode, header};
use serde::de::{self, DeserializeOwned, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use crate::error::ApiError;

/// Why a JSON body was refused.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Not JSON at all (syntax, not UTF-8, trailing bytes).
    #[error("the body is not valid JSON: {0}")]
    NotJson(serde_json::Error),
    /// An object names this key twice.
    #[error("appears more than once in one object; give each field once")]
    RepeatedKey(String),
    /// A batch that is not a JSON array.
    #[error("a batch must be a JSON array of donations")]
    NotAnArray,
    /// A typed body that does not deserialize: `field` names the field when there is one.
    #[error("{message}")]
    Invalid {
        field: Option<String>,
        message: String,
    },
}

/// One item of a batch, and the first key it repeats (the item is refused then).
#[derive(Debug, Clone, PartialEq)]
pub struct BatchItem {
    pub value: Value,
    pub repeated_key: Option<String>,
}

/// The body of a request that must be JSON: checked as the module doc says, then read whole.
pub async fn read_json(
    headers: &HeaderMap,
    body: Body,
    bytes_max: usize,
) -> Result<Bytes, ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(ApiError::unsupported_media_type());
    }
    for value in headers.get_all(header::CONTENT_ENCODING) {
        let text = value.to_str().unwrap_or("(not text)");
        let identity = text
            .split(',')
            .map(str::trim)
            .all(|coding| coding.is_empty() || coding.eq_ignore_ascii_case("identity"));
        if !identity {
            return Err(ApiError::unsupported_encoding(text));
        }
    }
    let declared_bytes = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok());
    if declared_bytes.is_some_and(|bytes| bytes > bytes_max as u64) {
        return Err(ApiError::body_too_large(bytes_max));
    }
    axum::body::to_bytes(body, bytes_max)
        .await
        .map_err(|error| {
            let too_large =
                std::iter::successors(Some(&error as &dyn std::error::Error), |e| e.source())
                    .any(|e| e.is::<http_body_util::LengthLimitError>());
            if too_large {
                ApiError::body_too_large(bytes_max)
            } else {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "unreadable_body",
                    format!("the body could not be read: {error}"),
                )
            }
        })
}

/// Any JSON value, with no key repeated in any object.
pub fn value(bytes: &[u8]) -> Result<Value, BodyError> {
    let mut repeated = None;
    let value = parse(bytes, &mut repeated, None).map_err(BodyError::NotJson)?;
    match repeated {
        Some(key) => Err(BodyError::RepeatedKey(key)),
        None => Ok(value),
    }
}

/// A JSON array, each item with the first key it repeats: an item is refused on its own.
pub fn batch(bytes: &[u8]) -> Result<Vec<BatchItem>, BodyError> {
    let mut repeated = None;
    let mut items = Vec::new();
    let value = parse(bytes, &mut repeated, Some(&mut items)).map_err(BodyError::NotJson)?;
    match (value, repeated) {
        (Value::Array(_), _) => Ok(items),
        (_, Some(key)) => Err(BodyError::RepeatedKey(key)),
        (_, None) => Err(BodyError::NotAnArray),
    }
}

/// A typed body (the admin routes'): anything that does not deserialize into `T`, syntax
/// included, is [`BodyError::Invalid`] naming the field where there is one; a repeated key is
/// [`BodyError::RepeatedKey`].
pub fn typed<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, BodyError> {
    let value = value(bytes).map_err(|error| match error {
        BodyError::NotJson(error) => BodyError::Invalid {
            field: None,
            message: format!("the body is not valid JSON: {error}"),
        },
        other => other,
    })?;
    serde_path_to_error::deserialize(value).map_err(|error| {
        let path = error.path().to_string();
        let message = error.inner().to_string();
        BodyError::Invalid {
            field: field_of(&message, &path),
            message,
        }
    })
}

/// The field a deserialization error is about. serde names a missing or unknown field in its
/// message (its path is the enclosing object's); for a value of the wrong type or range the
/// path says where it is (`.` for the body itself, `[0]` for an element of a body that is an
/// array: no field).
fn field_of(message: &str, path: &str) -> Option<String> {
    for prefix in ["missing field `", "unknown field `", "duplicate field `"] {
        if let Some(rest) = message.strip_prefix(prefix) {
            return rest.split('`').next().map(str::to_owned);
        }
    }
    let names_a_field = !path.is_empty() && path != "." && !path.starts_with('[');
    names_a_field.then(|| path.to_owned())
}

fn parse(
    bytes: &[u8],
    repeated: &mut Option<String>,
    items: Option<&mut Vec<BatchItem>>,
) -> Result<Value, serde_json::Error> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = Walk { repeated, items }.deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(value)
}

/// Builds a JSON value, noting in `repeated` the first key an object in it names twice (the
/// later value is dropped). With `items`, the value is the top level of a batch: each element of
/// an array there is noted on its own.
struct Walk<'a> {
    repeated: &'a mut Option<String>,
    items: Option<&'a mut Vec<BatchItem>>,
}

impl<'a> Walk<'a> {
    fn nested(repeated: &'a mut Option<String>) -> Self {
        Self {
            repeated,
            items: None,
        }
    }
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = Value;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Value, E> {
        // JSON has no NaN or infinity, so a parsed float always converts.
        Number::from_f64(value)
            .map(Value::Number)
            .ok_or_else(|| E::custom("a number JSON cannot hold"))
    }

    fn visit_str<E>(self, value: &str) -> Result<Value, E> {
        Ok(Value::String(value.to_owned()))
    }

    fn visit_string<E>(self, value: String) -> Result<Value, E> {
        Ok(Value::String(value))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut elements = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        match self.items {
            None => {
                while let Some(element) = seq.next_element_seed(Walk::nested(self.repeated))? {
                    elements.push(element);
                }
            }
            Some(items) => loop {
                let mut repeated_key = None;
                let Some(value) = seq.next_element_seed(Walk::nested(&mut repeated_key))? else {
                    break;
                };
                // The items are the batch; the array itself is not kept twice.
                items.push(BatchItem {
                    value,
                    repeated_key,
                });
            },
        }
        Ok(Value::Array(elements))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        let mut keys = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value_seed(Walk::nested(&mut *self.repeated))?;
            if keys.contains(&key) {
                self.repeated.get_or_insert(key);
                continue;
            }
            keys.insert(key.clone());
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;

    use super::*;

    fn repeated(result: Result<Value, BodyError>) -> String {
        match result {
            Err(BodyError::RepeatedKey(key)) => key,
            other => panic!("not a repeated key: {other:?}"),
        }
    }

    #[test]
    fn a_key_given_twice_is_refused_and_named() {
        let body = br#"{"amount_cents":100,"amount_cents":999999}"#;
        assert_eq!(repeated(value(body)), "amount_cents");
        // The same key spelled with an escape is the same key.
        assert_eq!(repeated(value(br#"{"a":1,"\u0061":2}"#)), "a");
        // Nested, in an array, and the first repeat wins.
        let nested = br#"[{"x":{"b":1,"c":{"d":1,"d":2},"b":3}}]"#;
        assert_eq!(repeated(value(nested)), "d");
    }

    #[test]
    fn json_without_repeats_parses_as_serde_json_does() {
        let body =
            br#"{"a":[1,-2,2.5,1e30,"s\n",null,true,{}],"b":{"a":1},"c":18446744073709551615}"#;
        assert_eq!(
            value(body).unwrap(),
            serde_json::from_slice::<Value>(body).unwrap()
        );
        // The same key in two objects is no repeat.
        assert_eq!(
            value(br#"[{"a":1},{"a":2}]"#).unwrap(),
            json!([{"a": 1}, {"a": 2}])
        );
    }

    #[test]
    fn what_is_not_json_stays_not_json() {
        for body in [
            &b"{\"a\":"[..],
            b"{\"a\":1} x",
            b"\"\xff\"",
            b"",
            b"{\"a\":1,\"a\":}",
        ] {
            assert!(
                matches!(value(body), Err(BodyError::NotJson(_))),
                "{body:?}"
            );
        }
    }

    #[test]
    fn a_batch_notes_each_items_repeat_on_its_own() {
        let body = br#"[{"a":1},{"b":1,"b":2,"c":1,"c":2},7,{"d":{"e":1,"e":1}}]"#;
        let items = batch(body).unwrap();
        let keys: Vec<Option<&str>> = items.iter().map(|i| i.repeated_key.as_deref()).collect();
        assert_eq!(keys, [None, Some("b"), None, Some("e")]);
        assert_eq!(items[0].value, json!({"a": 1}));
        assert_eq!(items[2].value, json!(7));
        assert!(matches!(batch(br#"{"a":1}"#), Err(BodyError::NotAnArray)));
        assert!(matches!(
            batch(br#"{"a":1,"a":2}"#),
            Err(BodyError::RepeatedKey(key)) if key == "a"
        ));
        assert!(matches!(batch(b"[{"), Err(BodyError::NotJson(_))));
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Example {
        name: String,
        goal_cents: Option<u64>,
        partition: Option<u32>,
    }

    fn invalid_field(body: &[u8]) -> Option<String> {
        match typed::<Example>(body) {
            Err(BodyError::Invalid { field, .. }) => field,
            other => panic!("not invalid: {other:?}"),
        }
    }

    #[test]
    fn a_typed_body_names_the_field_not_the_value() {
        assert_eq!(invalid_field(br#"{"name":5}"#).as_deref(), Some("name"));
        assert_eq!(
            invalid_field(br#"{"name":"n","goal_cents":"5"}"#).as_deref(),
            Some("goal_cents")
        );
        assert_eq!(
            invalid_field(br#"{"name":"n","partition":4294967296}"#).as_deref(),
            Some("partition")
        );
        assert_eq!(
            invalid_field(br#"{"name":"n","tip":1}"#).as_deref(),
            Some("tip")
        );
        assert_eq!(invalid_field(br#"{}"#).as_deref(), Some("name"));
        assert_eq!(invalid_field(br#"[1]"#), None);
        assert_eq!(invalid_field(br#"{"name":"#), None);
        assert!(matches!(
            typed::<Example>(br#"{"name":"a","name":"b"}"#),
            Err(BodyError::RepeatedKey(key)) if key == "name"
        ));
        assert_eq!(typed::<Example>(br#"{"name":"a"}"#).unwrap().name, "a");
    }
}
