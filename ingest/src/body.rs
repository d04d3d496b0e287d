//! Request bodies: how every body of the API is read, and how its JSON is parsed.
//!
//! [`BodyReads::read_json`] is the one way a route reads a body. Before reading a byte it checks
//! that the body is `application/json`, not compressed (`Content-Encoding` other than `identity`
//! is refused: the signature covers the bytes as sent, and an inflated body could be any size),
//! and not declared longer than the route's limit; a body refused for these takes no slot. Then
//! it reads at most that many bytes, in a slot, within the read timeout.
//!
//! A body has to be read whole before its signature can be checked, so anyone who can open a
//! connection can make the server read one, as slowly as they like. Reading therefore holds a
//! slot of its own, never the permit of admitted work (which is taken only once the body is
//! read and authenticated). Slots come in two classes so that batches cannot crowd out
//! callbacks: bodies of at most [`CALLBACK_BODY_BYTES_MAX`] (a donation, an admin request), and
//! larger ones (a batch). The memory held by bodies being read is at most, per class, its slots
//! times its body limit. When every slot of its class is taken a request is refused at once (503
//! `too_many_body_reads`, `Retry-After`) rather than queued, and a body that has not arrived
//! within the read timeout is answered 408 `body_timeout`. Both answers close the connection:
//! the unread rest of the body is not worth draining.
//!
//! [`value`], [`item`], [`batch`] and [`typed`] parse it while refusing an object that names a
//! key twice: serde_json would keep the last value, so `"amount_cents":100,"amount_cents":999999`
//! would record 999999 while a reader of the body (or a log line) sees 100. One pass builds the
//! value and notes the first repeated key of each item.
//!
//! A donation is parsed for the common case first: [`item`] and [`batch`] take the fields a
//! route expects, and an item that is a flat object of only those fields, each given once as a
//! string or a whole number, comes out as [`Item::Plain`], its values in the fields' order,
//! with no JSON value built. Anything else comes out as [`Item::Value`], as before; the parse
//! turns into it at the first key that does not fit, in the same pass.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, header};
use serde::de::{self, DeserializeOwned, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use tally_pipeline::event::validate::PlainValue;
use tokio::sync::Semaphore;

/// The largest body read in the callback class: a donation callback's limit (16 KiB), which
/// admin requests share. Anything larger (a batch, up to 1 MiB) is read in the batch class.
pub const CALLBACK_BODY_BYTES_MAX: usize = 16 * 1024;

/// Callback-sized bodies read at once, by default. The payment system sends a few hundred
/// callbacks a second, each read in well under a millisecond, so a handful of slots is busy in
/// normal traffic; 8,192 leaves room for thousands of slow or stalled clients besides, and holds
/// at most 8,192 × 16 KiB = 128 MiB.
pub const CALLBACK_BODY_READS_MAX_DEFAULT: usize = 8192;

/// Batch bodies read at once. Batches come from a few backfilling senders; 64 × 1 MiB = 64 MiB
/// at most.
pub const BATCH_BODY_READS_MAX: usize = 64;

/// How long a body may take to arrive, by default. A callback arrives in one TCP segment; a
/// 1 MiB batch over a 1 Mbit/s link takes 8 s.
pub const BODY_READ_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);

/// How long a client refused for want of a slot is told to wait: slots free up as bodies finish
/// or time out, so one second is the shortest useful retry.
const BUSY_RETRY_AFTER_S: u64 = 1;

/// Why a body was not read: refused from its headers, for want of a slot, or cut short. Each
/// is answered at once; only [`ReadError::Busy`] may pass by itself on a retry.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// No `Content-Type: application/json`.
    #[error("the body must be JSON (Content-Type: application/json)")]
    NotJsonMediaType,
    /// A `Content-Encoding` other than `identity`.
    #[error("the body must be sent as is (Content-Encoding: identity), not {content_encoding:?}")]
    Encoded { content_encoding: String },
    /// Declared (`Content-Length`) or found longer than the route's limit.
    #[error("the body is larger than {bytes_max} bytes")]
    TooLarge { bytes_max: usize },
    /// The connection broke, or its framing did, before the body's end.
    #[error("the body could not be read: {0}")]
    Unreadable(#[source] axum::Error),
    /// Every slot of the body's class is taken.
    #[error("the server is reading as many {class} bodies as it may at once; retry")]
    Busy {
        class: BodyClass,
        retry_after_s: u64,
    },
    /// The body did not arrive whole within the read timeout.
    #[error("the body did not arrive within {} ms", timeout.as_millis())]
    TimedOut { timeout: Duration },
}

impl ReadError {
    /// The request was not read to its end and the connection should not carry another: the
    /// refused or timed-out body would have to be drained first.
    pub fn closes_connection(&self) -> bool {
        matches!(self, Self::Busy { .. } | Self::TimedOut { .. })
    }
}

/// The two classes of body slots (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyClass {
    /// Up to [`CALLBACK_BODY_BYTES_MAX`]: a donation, an admin request.
    Callback,
    /// Larger: a batch.
    Batch,
}

impl BodyClass {
    fn of(bytes_max: usize) -> Self {
        if bytes_max <= CALLBACK_BODY_BYTES_MAX {
            Self::Callback
        } else {
            Self::Batch
        }
    }
}

impl fmt::Display for BodyClass {
    fn fmt(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str(match self {
            Self::Callback => "callback",
            Self::Batch => "batch",
        })
    }
}

/// Configuration of [`BodyReads`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyReadLimits {
    pub callback_reads_max: usize,
    pub batch_reads_max: usize,
    pub read_timeout: Duration,
}

impl Default for BodyReadLimits {
    fn default() -> Self {
        Self {
            callback_reads_max: CALLBACK_BODY_READS_MAX_DEFAULT,
            batch_reads_max: BATCH_BODY_READS_MAX,
            read_timeout: BODY_READ_TIMEOUT_DEFAULT,
        }
    }
}

/// The slots for bodies being read, and what happened to reads, for `/metrics`.
#[derive(Debug)]
pub struct BodyReads {
    limits: BodyReadLimits,
    callback: Arc<Semaphore>,
    batch: Arc<Semaphore>,
    refused: AtomicU64,
    timed_out: AtomicU64,
}

/// A snapshot of [`BodyReads`] for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BodyReadCounts {
    pub in_progress: u64,
    pub refused: u64,
    pub timed_out: u64,
}

impl BodyReads {
    pub fn new(limits: BodyReadLimits) -> Self {
        assert!(limits.callback_reads_max > 0 && limits.batch_reads_max > 0);
        Self {
            limits,
            callback: Arc::new(Semaphore::new(limits.callback_reads_max)),
            batch: Arc::new(Semaphore::new(limits.batch_reads_max)),
            refused: AtomicU64::new(0),
            timed_out: AtomicU64::new(0),
        }
    }

    pub fn limits(&self) -> BodyReadLimits {
        self.limits
    }

    /// The body of a request that must be JSON: checked from its headers as the module doc
    /// says, then read whole in a slot of its class within the read timeout.
    pub async fn read_json(
        &self,
        headers: &HeaderMap,
        body: Body,
        bytes_max: usize,
    ) -> Result<Bytes, ReadError> {
        check_headers(headers, bytes_max)?;
        self.read(body, bytes_max).await
    }

    /// Reads a body of at most `bytes_max` bytes in a slot of its class, within the read
    /// timeout.
    async fn read(&self, body: Body, bytes_max: usize) -> Result<Bytes, ReadError> {
        let class = BodyClass::of(bytes_max);
        let slots = match class {
            BodyClass::Callback => &self.callback,
            BodyClass::Batch => &self.batch,
        };
        let Ok(_slot) = slots.try_acquire() else {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(ReadError::Busy {
                class,
                retry_after_s: BUSY_RETRY_AFTER_S,
            });
        };
        let timeout = self.limits.read_timeout;
        match tokio::time::timeout(timeout, read_whole(body, bytes_max)).await {
            Ok(read) => read,
            Err(_) => {
                self.timed_out.fetch_add(1, Ordering::Relaxed);
                Err(ReadError::TimedOut { timeout })
            }
        }
    }

    pub fn counts(&self) -> BodyReadCounts {
        let busy = |slots: &Semaphore, max: usize| (max - slots.available_permits()) as u64;
        BodyReadCounts {
            in_progress: busy(&self.callback, self.limits.callback_reads_max)
                + busy(&self.batch, self.limits.batch_reads_max),
            refused: self.refused.load(Ordering::Relaxed),
            timed_out: self.timed_out.load(Ordering::Relaxed),
        }
    }
}

/// Refuses a body from its headers alone: not JSON, compressed, or declared over `bytes_max`.
fn check_headers(headers: &HeaderMap, bytes_max: usize) -> Result<(), ReadError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(ReadError::NotJsonMediaType);
    }
    for value in headers.get_all(header::CONTENT_ENCODING) {
        let text = value.to_str().unwrap_or("(not text)");
        let identity = text
            .split(',')
            .map(str::trim)
            .all(|coding| coding.is_empty() || coding.eq_ignore_ascii_case("identity"));
        if !identity {
            return Err(ReadError::Encoded {
                content_encoding: text.to_owned(),
            });
        }
    }
    let declared_bytes = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok());
    if declared_bytes.is_some_and(|bytes| bytes > bytes_max as u64) {
        return Err(ReadError::TooLarge { bytes_max });
    }
    Ok(())
}

/// Reads a whole body of at most `bytes_max` bytes.
async fn read_whole(body: Body, bytes_max: usize) -> Result<Bytes, ReadError> {
    axum::body::to_bytes(body, bytes_max)
        .await
        .map_err(|error| {
            let too_large =
                std::iter::successors(Some(&error as &dyn std::error::Error), |e| e.source())
                    .any(|e| e.is::<http_body_util::LengthLimitError>());
            if too_large {
                ReadError::TooLarge { bytes_max }
            } else {
                ReadError::Unreadable(error)
            }
        })
}

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

/// One item of a body: a flat object of the fields a route expects (see the module doc), or any
/// other JSON value with the first key it repeats (the item is refused then).
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// The values of `fields`, in their order, `None` where absent.
    Plain {
        fields: &'static [&'static str],
        values: Vec<Option<PlainValue>>,
    },
    Value {
        value: Value,
        repeated_key: Option<String>,
    },
}

impl Item {
    /// The item as a JSON value, and the first key it repeats: the same as [`value`] would give.
    pub fn into_value(self) -> (Value, Option<String>) {
        match self {
            Item::Plain { fields, values } => (Value::Object(plain_object(fields, values)), None),
            Item::Value {
                value,
                repeated_key,
            } => (value, repeated_key),
        }
    }
}

fn plain_object(fields: &[&str], values: Vec<Option<PlainValue>>) -> Map<String, Value> {
    fields
        .iter()
        .zip(values)
        .filter_map(|(field, value)| {
            let value = match value? {
                PlainValue::Text(text) => Value::String(text),
                PlainValue::Unsigned(number) => Value::Number(number.into()),
            };
            Some(((*field).to_owned(), value))
        })
        .collect()
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

/// One item (see [`Item`]) expected to hold `fields`: a body that is not JSON is refused, one that
/// repeats a key is not (the caller says so, as it does for an item of a batch).
pub fn item(bytes: &[u8], fields: &'static [&'static str]) -> Result<Item, BodyError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let item = ItemSeed { fields }
        .deserialize(&mut deserializer)
        .and_then(|item| deserializer.end().map(|()| item))
        .map_err(BodyError::NotJson)?;
    Ok(item)
}

/// A JSON array, each item expected to hold `fields` (see [`Item`]) and with the first key it
/// repeats: an item is refused on its own.
pub fn batch(bytes: &[u8], fields: &'static [&'static str]) -> Result<Vec<Item>, BodyError> {
    let mut repeated = None;
    let mut items = Vec::new();
    let value =
        parse(bytes, &mut repeated, Some((&mut items, fields))).map_err(BodyError::NotJson)?;
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
    items: Option<BatchItems<'_>>,
) -> Result<Value, serde_json::Error> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = Walk { repeated, items }.deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(value)
}

/// Where a batch's items go, and the fields each is expected to hold.
type BatchItems<'a> = (&'a mut Vec<Item>, &'static [&'static str]);

/// Builds a JSON value, noting in `repeated` the first key an object in it names twice (the
/// later value is dropped). With `items`, the value is the top level of a batch: each element of
/// an array there is parsed on its own, as an [`Item`].
struct Walk<'a> {
    repeated: &'a mut Option<String>,
    items: Option<BatchItems<'a>>,
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
            Some((items, fields)) => {
                // The items are the batch; the array itself is not kept twice.
                while let Some(item) = seq.next_element_seed(ItemSeed { fields })? {
                    items.push(item);
                }
            }
        }
        Ok(Value::Array(elements))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        fill_object(&mut map, &mut object, self.repeated)?;
        Ok(Value::Object(object))
    }
}

/// Reads the rest of an object into `object`, which holds the keys read so far: a key it holds
/// already is noted in `repeated` and its later value dropped.
fn fill_object<'de, A: MapAccess<'de>>(
    map: &mut A,
    object: &mut Map<String, Value>,
    repeated: &mut Option<String>,
) -> Result<(), A::Error> {
    while let Some(key) = map.next_key::<String>()? {
        let value = map.next_value_seed(Walk::nested(&mut *repeated))?;
        add_entry(object, repeated, key, value);
    }
    Ok(())
}

fn add_entry(
    object: &mut Map<String, Value>,
    repeated: &mut Option<String>,
    key: String,
    value: Value,
) {
    if object.contains_key(&key) {
        repeated.get_or_insert(key);
    } else {
        object.insert(key, value);
    }
}

/// Parses one [`Item`] expected to hold `fields`.
struct ItemSeed {
    fields: &'static [&'static str],
}

impl<'de> DeserializeSeed<'de> for ItemSeed {
    type Value = Item;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Item, D::Error> {
        let mut repeated_key = None;
        let visitor = ItemVisitor {
            fields: self.fields,
            repeated: &mut repeated_key,
        };
        match deserializer.deserialize_any(visitor)? {
            Ok(plain) => Ok(plain),
            Err(value) => Ok(Item::Value {
                value,
                repeated_key,
            }),
        }
    }
}

/// An item: [`Item::Plain`] while every key is one of `fields`, given once, with a plain value;
/// from the first one that is not, the rest is read as [`Walk`] reads it, and the value is
/// handed back (`Err`) for the seed to pair with `repeated`.
struct ItemVisitor<'a> {
    fields: &'static [&'static str],
    repeated: &'a mut Option<String>,
}

impl<'de> Visitor<'de> for ItemVisitor<'_> {
    type Value = Result<Item, Value>;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<Self::Value, E> {
        Walk::nested(self.repeated).visit_bool(value).map(Err)
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Self::Value, E> {
        Walk::nested(self.repeated).visit_i64(value).map(Err)
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Self::Value, E> {
        Walk::nested(self.repeated).visit_u64(value).map(Err)
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Self::Value, E> {
        Walk::nested(self.repeated).visit_f64(value).map(Err)
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
        Walk::nested(self.repeated).visit_str(value).map(Err)
    }

    fn visit_string<E: de::Error>(self, value: String) -> Result<Self::Value, E> {
        Walk::nested(self.repeated).visit_string(value).map(Err)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Walk::nested(self.repeated).visit_unit().map(Err)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        Walk::nested(self.repeated).visit_seq(seq).map(Err)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut values: Vec<Option<PlainValue>> = vec![None; self.fields.len()];
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let slot = self.fields.iter().position(|field| *field == key);
            let fits = slot.filter(|&slot| values[slot].is_none());
            let value = match fits {
                Some(slot) => match map.next_value_seed(FieldSeed(&mut *self.repeated))? {
                    Ok(plain) => {
                        values[slot] = Some(plain);
                        continue;
                    }
                    Err(value) => value,
                },
                None => map.next_value_seed(Walk::nested(&mut *self.repeated))?,
            };
            // The first key that does not fit: from here on, a JSON value.
            let mut object = plain_object(self.fields, values);
            add_entry(&mut object, self.repeated, key.into_owned(), value);
            fill_object(&mut map, &mut object, self.repeated)?;
            return Ok(Err(Value::Object(object)));
        }
        Ok(Ok(Item::Plain {
            fields: self.fields,
            values,
        }))
    }
}

/// An object's key, borrowed from the body where it has no escapes.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a key")
    }

    fn visit_borrowed_str<E>(self, value: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(value))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(value.to_owned()))
    }

    fn visit_string<E: de::Error>(self, value: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(value))
    }
}

/// A field's value: plain (a string, a whole number from 0 to `u64::MAX`) or, handed back as
/// `Err`, any other JSON value, read as [`Walk`] reads it.
struct FieldSeed<'a>(&'a mut Option<String>);

impl<'de> DeserializeSeed<'de> for FieldSeed<'_> {
    type Value = Result<PlainValue, Value>;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for FieldSeed<'_> {
    type Value = Result<PlainValue, Value>;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<Self::Value, E> {
        Walk::nested(self.0).visit_bool(value).map(Err)
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Self::Value, E> {
        Walk::nested(self.0).visit_i64(value).map(Err)
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Self::Value, E> {
        Ok(Ok(PlainValue::Unsigned(value)))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Self::Value, E> {
        Walk::nested(self.0).visit_f64(value).map(Err)
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
        Ok(Ok(PlainValue::Text(value.to_owned())))
    }

    fn visit_string<E: de::Error>(self, value: String) -> Result<Self::Value, E> {
        Ok(Ok(PlainValue::Text(value)))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Walk::nested(self.0).visit_unit().map(Err)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        Walk::nested(self.0).visit_seq(seq).map(Err)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        Walk::nested(self.0).visit_map(map).map(Err)
    }
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderValue, StatusCode};
    use http_body_util::Channel;
    use serde::Deserialize;
    use serde_json::json;
    use tally_api::ApiError;

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
        let items: Vec<(Value, Option<String>)> = batch(body, &[])
            .unwrap()
            .into_iter()
            .map(Item::into_value)
            .collect();
        let keys: Vec<Option<&str>> = items.iter().map(|(_, key)| key.as_deref()).collect();
        assert_eq!(keys, [None, Some("b"), None, Some("e")]);
        assert_eq!(items[0].0, json!({"a": 1}));
        assert_eq!(items[2].0, json!(7));
        assert!(matches!(
            batch(br#"{"a":1}"#, &[]),
            Err(BodyError::NotAnArray)
        ));
        assert!(matches!(
            batch(br#"{"a":1,"a":2}"#, &[]),
            Err(BodyError::RepeatedKey(key)) if key == "a"
        ));
        assert!(matches!(batch(b"[{", &[]), Err(BodyError::NotJson(_))));
    }

    const FIELDS: &[&str] = &["name", "cents"];

    fn plain(name: &str, cents: Option<u64>) -> Item {
        Item::Plain {
            fields: FIELDS,
            values: vec![
                Some(PlainValue::Text(name.to_owned())),
                cents.map(PlainValue::Unsigned),
            ],
        }
    }

    #[test]
    fn a_flat_object_of_the_expected_fields_is_plain_and_anything_else_a_value() {
        let body = br#"[{"cents":5,"name":"a"},{"name":"b\u0021"},{"name":"c","tip":1},
            {"name":"d","cents":-1},{"name":"e","name":"f"},{"name":null},{"na\u006de":"g"}]"#;
        let items = batch(body, FIELDS).unwrap();
        assert_eq!(items[0], plain("a", Some(5)));
        assert_eq!(items[1], plain("b!", None));
        assert_eq!(items[6], plain("g", None));
        let values: Vec<(Value, Option<String>)> =
            items[2..6].iter().cloned().map(Item::into_value).collect();
        assert_eq!(
            values,
            [
                (json!({"name": "c", "tip": 1}), None),
                (json!({"name": "d", "cents": -1}), None),
                (json!({"name": "e"}), Some("name".to_owned())),
                (json!({"name": null}), None),
            ]
        );
        assert_eq!(
            item(br#"{"name":"a","cents":5}"#, FIELDS).unwrap(),
            plain("a", Some(5))
        );
        assert!(matches!(
            item(br#"{"name":"a"} x"#, FIELDS),
            Err(BodyError::NotJson(_))
        ));
    }

    /// Bodies built from a few keys and values, in every order a small generator makes: objects
    /// that switch from plain to a value at any key, with repeats, nesting and escapes.
    fn generated_bodies() -> Vec<String> {
        use tally_pipeline::event::validate::DONATION_FIELDS;
        let keys: Vec<&str> = DONATION_FIELDS
            .iter()
            .copied()
            .chain(["amount", "paym\\u0065nt_ref"])
            .collect();
        let values = [
            r#""pay_1""#,
            r#""ord_1""#,
            r#""usr_1""#,
            r#""meals""#,
            "100",
            "0",
            "10000001",
            "-5",
            "2.5",
            "1e3",
            "18446744073709551615",
            r#""USD""#,
            r#""usd""#,
            r#""2026-11-24T18:30:00Z""#,
            r#""2099-01-01T00:00:00Z""#,
            r#""a b""#,
            r#""""#,
            "null",
            "true",
            "[1,{\"x\":1,\"x\":2}]",
            r#"{"y":1,"y":2}"#,
        ];
        // A good value of each field, by its index in `values`.
        let good = DONATION_FIELDS.iter().zip([0, 1, 2, 3, 4, 11, 13]);
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = |bound: usize| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((state >> 33) as usize) % bound
        };
        let mut bodies = Vec::new();
        for _ in 0..4000 {
            let mut entries: Vec<String> = good
                .clone()
                .map(|(key, value)| format!("\"{key}\":{}", values[value]))
                .collect();
            for _ in 0..next(3) {
                let at = next(entries.len() + 1);
                let key = keys[next(keys.len())];
                let entry = format!("\"{key}\":{}", values[next(values.len())]);
                if next(2) == 0 && at < entries.len() {
                    entries[at] = entry;
                } else {
                    entries.insert(at, entry);
                }
            }
            if next(4) == 0 && !entries.is_empty() {
                entries.remove(next(entries.len()));
            }
            bodies.push(format!("{{{}}}", entries.join(",")));
        }
        bodies
    }

    #[test]
    fn a_plain_item_is_the_same_value_and_the_same_donation_as_the_value_path_makes() {
        use tally_pipeline::event::validate::{
            DONATION_FIELDS, DonationLimits, accept_plain_donation, validate_donation,
        };
        const NOW_MS: i64 = 1_795_546_800_000; // 2026-11-24T19:00:00Z
        let limits = DonationLimits::default();
        let (mut plain_accepted, mut plain_handed_back, mut values) = (0, 0, 0);
        for body in generated_bodies() {
            let mut repeated = None;
            let expected = parse(body.as_bytes(), &mut repeated, None).unwrap();
            let item = item(body.as_bytes(), DONATION_FIELDS).unwrap();
            assert_eq!(
                item.clone().into_value(),
                (expected.clone(), repeated),
                "{body}"
            );
            let Item::Plain { values: fields, .. } = item else {
                values += 1;
                continue;
            };
            let by_value = validate_donation(&expected, &limits, NOW_MS);
            match accept_plain_donation(fields.clone(), &limits, NOW_MS) {
                Ok(input) => {
                    plain_accepted += 1;
                    assert_eq!(Ok(input), by_value, "{body}");
                }
                Err(handed_back) => {
                    plain_handed_back += 1;
                    assert_eq!(handed_back, fields, "{body}");
                    assert!(by_value.is_err(), "{body}: {by_value:?}");
                }
            }
        }
        // The generator reaches every path.
        assert!(plain_accepted > 100 && plain_handed_back > 100 && values > 100);
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

    fn one_slot_each(read_timeout: Duration) -> BodyReads {
        BodyReads::new(BodyReadLimits {
            callback_reads_max: 1,
            batch_reads_max: 1,
            read_timeout,
        })
    }

    /// A body whose bytes never come while its sender is kept.
    fn stalled() -> (Body, http_body_util::channel::Sender<Bytes, std::io::Error>) {
        let (sender, body) = Channel::<Bytes, std::io::Error>::new(1);
        (Body::new(body), sender)
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_does_not_arrive_in_time_is_answered_408_and_frees_its_slot() {
        let reads = one_slot_each(Duration::from_secs(10));
        let (body, _sender) = stalled();
        let error = ApiError::from(reads.read(body, CALLBACK_BODY_BYTES_MAX).await.unwrap_err());
        assert_eq!(
            (error.status, error.code),
            (StatusCode::REQUEST_TIMEOUT, "body_timeout")
        );
        assert!(error.close_connection);
        assert_eq!(reads.counts().in_progress, 0);
        assert_eq!(reads.counts().timed_out, 1);
        let bytes = reads.read(Body::from("{}"), CALLBACK_BODY_BYTES_MAX).await;
        assert_eq!(bytes.unwrap(), Bytes::from_static(b"{}"));
    }

    #[tokio::test]
    async fn a_read_beyond_the_slots_of_its_class_is_refused_at_once_and_the_other_class_reads() {
        let reads = std::sync::Arc::new(one_slot_each(Duration::from_secs(3600)));
        let (body, _sender) = stalled();
        let holder = tokio::spawn({
            let reads = std::sync::Arc::clone(&reads);
            async move { reads.read(body, CALLBACK_BODY_BYTES_MAX).await }
        });
        while reads.counts().in_progress == 0 {
            tokio::task::yield_now().await;
        }
        let error = reads.read(Body::from("{}"), CALLBACK_BODY_BYTES_MAX).await;
        let error = ApiError::from(error.unwrap_err());
        assert_eq!(
            (error.status, error.code, error.retry_after_s),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_body_reads",
                Some(1)
            )
        );
        assert!(error.close_connection);
        assert_eq!(reads.counts().refused, 1);
        let batch = reads.read(Body::from("[]"), 1024 * 1024).await;
        assert_eq!(batch.unwrap(), Bytes::from_static(b"[]"));
        holder.abort();
    }

    #[tokio::test]
    async fn a_body_over_its_limit_is_413_and_a_broken_one_400() {
        let reads = one_slot_each(Duration::from_secs(10));
        let error = ApiError::from(reads.read(Body::from("12345"), 4).await.unwrap_err());
        assert_eq!(error.code, "body_too_large");
        assert!(!error.close_connection);
        let (body, sender) = stalled();
        sender.abort(std::io::Error::other("connection cut"));
        let error = ApiError::from(reads.read(body, 4).await.unwrap_err());
        assert_eq!(error.code, "unreadable_body");
    }

    fn json_headers(extra: &[(header::HeaderName, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        for (name, value) in extra {
            headers.append(name, HeaderValue::from_static(value));
        }
        headers
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_refused_from_its_headers_takes_no_slot_and_is_never_read() {
        let reads = one_slot_each(Duration::from_secs(3600));
        let cases = [
            (HeaderMap::new(), "unsupported_media_type"),
            (
                json_headers(&[(header::CONTENT_ENCODING, "gzip")]),
                "unsupported_encoding",
            ),
            (
                json_headers(&[
                    (header::CONTENT_ENCODING, "identity"),
                    (header::CONTENT_ENCODING, "identity, br"),
                ]),
                "unsupported_encoding",
            ),
            (
                json_headers(&[(header::CONTENT_LENGTH, "17")]),
                "body_too_large",
            ),
        ];
        for (headers, code) in cases {
            // A stalled body: were it read, the read would end in `body_timeout`.
            let (body, _sender) = stalled();
            let error = reads.read_json(&headers, body, 16).await.unwrap_err();
            let error = ApiError::from(error);
            assert_eq!(error.code, code, "{headers:?}");
            assert!(!error.close_connection);
            assert_eq!(reads.counts().in_progress, 0);
        }
        let headers = json_headers(&[
            (header::CONTENT_ENCODING, "identity"),
            (header::CONTENT_LENGTH, "16"),
        ]);
        let bytes = reads.read_json(&headers, Body::from("{}"), 16).await;
        assert_eq!(bytes.unwrap(), Bytes::from_static(b"{}"));
        assert_eq!(reads.counts(), BodyReadCounts::default());
    }
}
