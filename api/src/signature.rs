//! Authenticity of payment callbacks: the shared signing secret and the `Tally-Signature`
//! header, signed and checked the way payment providers sign their webhooks.
//!
//! The header value is `t=<unix seconds>,v1=<lowercase hex HMAC-SHA256 of "<t>.<raw body>">`.
//! The timestamp is inside the MAC, so a captured request can only be replayed within the
//! tolerance window; more than one `v1=` entry is accepted so a provider can sign with the old
//! and the new secret while the secret is rotated. The scheme is part of the contract, so it is
//! kept here once for both sides: ingest checks callbacks against the raw body bytes, exactly as
//! sent, and clients (the load generator, the benches) and donor notifications sign with it.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::{Choice, ConstantTimeEq};
use thiserror::Error;

/// The HTTP header that carries the signature.
pub const SIGNATURE_HEADER: &str = "Tally-Signature";

/// How far, in seconds, a signature's timestamp may lie from our clock, in either direction.
/// Five minutes is what payment providers use (Stripe's default tolerance): wide enough for
/// clock skew and provider retries in flight, narrow enough to bound replays.
pub const SIGNATURE_TOLERANCE_S_DEFAULT: i64 = 300;

/// Length of a generated secret: 32 bytes = 256 bits, the output size of SHA-256, which is the
/// key length RFC 2104 recommends as a minimum for HMAC-SHA256.
const SECRET_GENERATED_LEN_BYTES: usize = 32;

/// The operating system's non-blocking cryptographic random source.
const RANDOM_SOURCE_PATH: &str = "/dev/urandom";

/// Length of an HMAC-SHA256 tag: the SHA-256 output size.
const SIGNATURE_LEN_BYTES: usize = 32;

/// At most this many `v1=` entries are checked per header. Providers send one, or two while a
/// secret is rotated; the bound keeps the work an unauthenticated caller can cause small.
const SIGNATURES_PER_HEADER_MAX: usize = 8;

/// Header key of the timestamp entry.
const TIMESTAMP_KEY: &str = "t";

/// Header key of an HMAC-SHA256 signature entry (scheme version 1).
const SIGNATURE_V1_KEY: &str = "v1";

type HmacSha256 = Hmac<Sha256>;

/// A shared secret used to sign and verify callbacks. `Debug` never shows its bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningSecret(Vec<u8>);

/// Why a configured secret could not be read.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum SecretError {
    #[error("signing secret is not valid hex: {0}")]
    InvalidHex(#[from] hex::FromHexError),
    #[error("signing secret is empty")]
    Empty,
}

impl SigningSecret {
    /// A secret made of exactly these bytes.
    pub fn from_bytes(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into())
    }

    /// A secret given as text in configuration (such as `whsec_...`): its raw UTF-8 bytes, not
    /// decoded in any way.
    pub fn from_text(text: &str) -> Self {
        Self(text.as_bytes().to_vec())
    }

    /// A secret given as hex, as printed by [`SigningSecret::to_hex`].
    pub fn from_hex(hex_text: &str) -> Result<Self, SecretError> {
        let bytes = hex::decode(hex_text.trim())?;
        if bytes.is_empty() {
            return Err(SecretError::Empty);
        }
        Ok(Self(bytes))
    }

    /// A fresh random secret of 32 bytes from the operating system.
    pub fn generate() -> io::Result<Self> {
        let mut bytes = vec![0_u8; SECRET_GENERATED_LEN_BYTES];
        File::open(RANDOM_SOURCE_PATH)?.read_exact(&mut bytes)?;
        Ok(Self(bytes))
    }

    /// The secret as lowercase hex, for handing to the payment provider or to configuration.
    pub fn to_hex(&self) -> String {
        hex::encode(&self.0)
    }

    /// Whether the secret has no bytes at all; such a secret authenticates nothing.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn keyed_mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.0).expect("HMAC accepts keys of any length")
    }
}

impl fmt::Debug for SigningSecret {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("SigningSecret(<redacted>)")
    }
}

/// Why a request's signature was refused. [`SignatureError::code`] is stable for responses and
/// metrics; the message is for logs.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SignatureError {
    #[error("no {SIGNATURE_HEADER} header")]
    Missing,
    #[error("malformed {SIGNATURE_HEADER} header: {0}")]
    Malformed(String),
    /// `age_s` is our clock minus the signed timestamp: negative when signed in the future.
    #[error("{SIGNATURE_HEADER} timestamp is outside the tolerance: {}", describe_age(*.age_s))]
    Expired { age_s: i64 },
    #[error("{SIGNATURE_HEADER} does not match the body")]
    Mismatch,
}

impl SignatureError {
    /// A stable, machine-readable name of the error.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Missing => "signature_missing",
            Self::Malformed(_) => "signature_malformed",
            Self::Expired { .. } => "signature_expired",
            Self::Mismatch => "signature_mismatch",
        }
    }
}

fn describe_age(age_s: i64) -> String {
    if age_s < 0 {
        format!("signed {} s in the future", age_s.unsigned_abs())
    } else {
        format!("signed {age_s} s ago")
    }
}

/// The full `Tally-Signature` header value for `body` sent at `timestamp_s` (Unix seconds).
pub fn sign(secret: &SigningSecret, timestamp_s: i64, body: &[u8]) -> String {
    let tag = signature_tag(secret, timestamp_s, body);
    format!(
        "{TIMESTAMP_KEY}={timestamp_s},{SIGNATURE_V1_KEY}={}",
        hex::encode(tag)
    )
}

/// Checks that `header` is a valid signature of `body` by `secret`, made within `tolerance_s`
/// seconds of `now_s` (Unix seconds) in either direction.
///
/// The signature is checked before the timestamp, so `Expired` always means an authentic but
/// stale (or future-dated) request: a replay or a skewed clock, never a forgery.
pub fn verify(
    secret: &SigningSecret,
    header: Option<&str>,
    body: &[u8],
    now_s: i64,
    tolerance_s: i64,
) -> Result<(), SignatureError> {
    let header = header
        .filter(|value| !value.trim().is_empty())
        .ok_or(SignatureError::Missing)?;
    let parsed = parse_header(header)?;
    let expected = signature_tag(secret, parsed.timestamp_s, body);
    if !matches_any(&expected, &parsed.signatures) {
        return Err(SignatureError::Mismatch);
    }
    check_timestamp(parsed.timestamp_s, now_s, tolerance_s)
}

/// HMAC-SHA256 over `"<timestamp_s>.<body>"`.
fn signature_tag(
    secret: &SigningSecret,
    timestamp_s: i64,
    body: &[u8],
) -> [u8; SIGNATURE_LEN_BYTES] {
    let mut mac = secret.keyed_mac();
    mac.update(timestamp_s.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

/// Constant-time comparison against every candidate; no early exit on a match.
fn matches_any(
    expected: &[u8; SIGNATURE_LEN_BYTES],
    candidates: &[[u8; SIGNATURE_LEN_BYTES]],
) -> bool {
    let any_match = candidates.iter().fold(Choice::from(0), |found, candidate| {
        found | expected.ct_eq(candidate)
    });
    any_match.into()
}

fn check_timestamp(timestamp_s: i64, now_s: i64, tolerance_s: i64) -> Result<(), SignatureError> {
    let tolerance_s = tolerance_s.max(0);
    let age_s = now_s.saturating_sub(timestamp_s);
    if age_s > tolerance_s || age_s < -tolerance_s {
        return Err(SignatureError::Expired { age_s });
    }
    Ok(())
}

#[derive(Debug)]
struct ParsedHeader {
    timestamp_s: i64,
    signatures: Vec<[u8; SIGNATURE_LEN_BYTES]>,
}

/// Parses `key=value` entries separated by commas, in any order; unknown keys are ignored.
fn parse_header(header: &str) -> Result<ParsedHeader, SignatureError> {
    let mut timestamp_s = None;
    let mut signatures = Vec::new();
    for entry in header.split(',') {
        let (key, value) = entry
            .trim()
            .split_once('=')
            .ok_or_else(|| malformed("an entry is not `key=value`"))?;
        match key.trim() {
            TIMESTAMP_KEY if timestamp_s.is_some() => {
                return Err(malformed("more than one `t=` entry"));
            }
            TIMESTAMP_KEY => timestamp_s = Some(parse_timestamp(value)?),
            SIGNATURE_V1_KEY if signatures.len() >= SIGNATURES_PER_HEADER_MAX => {
                return Err(malformed("too many `v1=` entries"));
            }
            SIGNATURE_V1_KEY => signatures.push(parse_signature(value)?),
            "" => return Err(malformed("an entry has an empty key")),
            _ => {}
        }
    }
    let timestamp_s = timestamp_s.ok_or_else(|| malformed("no `t=` entry"))?;
    if signatures.is_empty() {
        return Err(malformed("no `v1=` entry"));
    }
    Ok(ParsedHeader {
        timestamp_s,
        signatures,
    })
}

fn parse_timestamp(value: &str) -> Result<i64, SignatureError> {
    value
        .trim()
        .parse()
        .map_err(|_| malformed("`t=` is not an integer number of seconds"))
}

fn parse_signature(value: &str) -> Result<[u8; SIGNATURE_LEN_BYTES], SignatureError> {
    let mut tag = [0_u8; SIGNATURE_LEN_BYTES];
    hex::decode_to_slice(value.trim(), &mut tag)
        .map_err(|_| malformed("`v1=` is not 64 hex digits"))?;
    Ok(tag)
}

/// The reason is fixed text: the header is attacker-controlled and is not echoed into logs.
fn malformed(reason: &str) -> SignatureError {
    SignatureError::Malformed(reason.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW_S: i64 = 1_700_000_000;
    const BODY: &[u8] = br#"{"event_id":"e-1","amount_cents":500}"#;

    fn secret() -> SigningSecret {
        SigningSecret::from_text("whsec_test")
    }

    fn verify_now(header: Option<&str>, body: &[u8]) -> Result<(), SignatureError> {
        verify(
            &secret(),
            header,
            body,
            NOW_S,
            SIGNATURE_TOLERANCE_S_DEFAULT,
        )
    }

    #[test]
    fn sign_then_verify_roundtrips() {
        let header = sign(&secret(), NOW_S, BODY);
        assert!(header.starts_with("t=1700000000,v1="));
        assert_eq!(verify_now(Some(&header), BODY), Ok(()));
    }

    #[test]
    fn matches_a_fixed_test_vector() {
        // Computed independently with Python's hmac module:
        // hmac.new(b"whsec_test", b'1700000000.{"a":1}', hashlib.sha256).hexdigest()
        let expected = "t=1700000000,v1=\
            38877139021993b830af32feea6e18a8da83eb2f6e49ee50bd9e4cf4ca4d3789";
        assert_eq!(sign(&secret(), NOW_S, br#"{"a":1}"#), expected);
        assert_eq!(verify_now(Some(expected), br#"{"a":1}"#), Ok(()));
    }

    #[test]
    fn tampered_body_is_a_mismatch() {
        let header = sign(&secret(), NOW_S, BODY);
        let tampered = br#"{"event_id":"e-1","amount_cents":50000}"#;
        assert_eq!(
            verify_now(Some(&header), tampered),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn wrong_secret_is_a_mismatch() {
        let header = sign(&SigningSecret::from_text("whsec_other"), NOW_S, BODY);
        assert_eq!(
            verify_now(Some(&header), BODY),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn tampered_timestamp_is_a_mismatch() {
        let header = sign(&secret(), NOW_S, BODY).replace("t=1700000000", "t=1700000001");
        assert_eq!(
            verify_now(Some(&header), BODY),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn too_old_is_expired() {
        let signed_s = NOW_S - SIGNATURE_TOLERANCE_S_DEFAULT - 1;
        let header = sign(&secret(), signed_s, BODY);
        let error = verify_now(Some(&header), BODY).unwrap_err();
        assert_eq!(error, SignatureError::Expired { age_s: 301 });
        assert_eq!(error.code(), "signature_expired");
        assert!(error.to_string().contains("301 s ago"), "{error}");
    }

    #[test]
    fn at_the_tolerance_edge_is_accepted() {
        for signed_s in [
            NOW_S - SIGNATURE_TOLERANCE_S_DEFAULT,
            NOW_S + SIGNATURE_TOLERANCE_S_DEFAULT,
        ] {
            let header = sign(&secret(), signed_s, BODY);
            assert_eq!(verify_now(Some(&header), BODY), Ok(()));
        }
    }

    #[test]
    fn too_far_in_the_future_is_expired() {
        let signed_s = NOW_S + SIGNATURE_TOLERANCE_S_DEFAULT + 1;
        let header = sign(&secret(), signed_s, BODY);
        let error = verify_now(Some(&header), BODY).unwrap_err();
        assert_eq!(error, SignatureError::Expired { age_s: -301 });
        assert!(error.to_string().contains("in the future"), "{error}");
    }

    #[test]
    fn forged_and_stale_is_a_mismatch_not_expired() {
        let header = sign(
            &SigningSecret::from_text("whsec_other"),
            NOW_S - 3_600,
            BODY,
        );
        assert_eq!(
            verify_now(Some(&header), BODY),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn missing_header_is_missing() {
        assert_eq!(verify_now(None, BODY), Err(SignatureError::Missing));
        assert_eq!(verify_now(Some("  "), BODY), Err(SignatureError::Missing));
        assert_eq!(SignatureError::Missing.code(), "signature_missing");
    }

    #[test]
    fn malformed_headers_are_malformed() {
        let valid_tag = "0".repeat(64);
        let too_many = vec![format!("v1={valid_tag}"); SIGNATURES_PER_HEADER_MAX + 1].join(",");
        let cases = [
            "garbage".to_owned(),
            "t=abc,v1=00".to_owned(),
            "t=1".to_owned(),
            "v1=ab".to_owned(),
            format!("t=1,v1={valid_tag},t=2"),
            format!("t=1,v1=zz{}", &valid_tag[2..]),
            format!("t=1,v1={valid_tag}00"),
            format!("t=1,={valid_tag}"),
            format!("t=1,{too_many}"),
        ];
        for header in &cases {
            let error = verify_now(Some(header), BODY).unwrap_err();
            assert!(
                matches!(error, SignatureError::Malformed(_)),
                "{header}: {error:?}"
            );
            assert_eq!(error.code(), "signature_malformed");
        }
    }

    #[test]
    fn one_matching_among_several_v1_entries_is_accepted() {
        let old_secret = SigningSecret::from_text("whsec_old");
        let stale = sign(&old_secret, NOW_S, BODY);
        let current = sign(&secret(), NOW_S, BODY);
        let stale_tag = stale.split_once("v1=").map(|(_, tag)| tag).unwrap();
        let current_tag = current.split_once("v1=").map(|(_, tag)| tag).unwrap();
        let header = format!("v1={stale_tag}, v0=legacy, t={NOW_S}, v1={current_tag}");
        assert_eq!(verify_now(Some(&header), BODY), Ok(()));

        let none_match = format!("t={NOW_S},v1={stale_tag},v1={stale_tag}");
        assert_eq!(
            verify_now(Some(&none_match), BODY),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(SignatureError::Mismatch.code(), "signature_mismatch");
    }

    #[test]
    fn secret_debug_does_not_show_the_secret() {
        let secret = SigningSecret::from_text("whsec_supersecret");
        let shown = format!("{secret:?}");
        assert!(!shown.contains("supersecret"), "{shown}");
        assert!(!shown.contains(&secret.to_hex()), "{shown}");
    }

    #[test]
    fn secret_hex_roundtrips_and_generate_is_random() {
        let generated = SigningSecret::generate().unwrap();
        assert_eq!(generated.to_hex().len(), 2 * SECRET_GENERATED_LEN_BYTES);
        assert_eq!(
            SigningSecret::from_hex(&generated.to_hex()).unwrap(),
            generated
        );
        assert_ne!(SigningSecret::generate().unwrap(), generated);
        assert_eq!(
            SigningSecret::from_hex("7768736563"),
            Ok(SigningSecret::from_bytes(b"whsec".to_vec()))
        );
    }

    #[test]
    fn bad_hex_secrets_are_refused() {
        assert!(matches!(
            SigningSecret::from_hex("not hex"),
            Err(SecretError::InvalidHex(_))
        ));
        assert!(matches!(
            SigningSecret::from_hex(""),
            Err(SecretError::Empty)
        ));
    }
}
