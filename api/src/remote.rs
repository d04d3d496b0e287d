//! Donations recorded in partitions another node runs. Only the node that runs a partition's
//! pipeline holds its dedupe index, so a look-up of a donation there is asked of that node.
//! Ingest (a resend for a closed campaign) and query (`GET /v1/donations/{payment_ref}`) both ask
//! through [`RemoteDonations`]; `tally serve` implements it by forwarding the look-up over HTTP.
//!
//! The owner's answer decides whether a resend for a closed campaign is acknowledged or refused,
//! so it is read into a typed shape ([`OwnerAnswer`]) and an answer that does not fit it is
//! [`UnreadableAnswer`] (503 `owner_unavailable`), never "not recorded".

use async_trait::async_trait;
use axum::body::Bytes;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::error::{ApiError, ErrorBody};
use crate::views::{Offset, PartitionId};

/// The codes of failures that need an operator, which a node passes on when the owner of a
/// partition answers with one.
const NON_TRANSIENT_CODES: [&str; 4] = ["log_corrupted", "records_lost", "log_failed", "internal"];

/// Another node's answer to `GET /v1/donations/{payment_ref}`, as it came over the wire.
#[derive(Debug, Clone)]
pub struct RemoteAnswer {
    pub status: StatusCode,
    /// Its `Retry-After`, in whole seconds, when it sent one.
    pub retry_after_s: Option<u64>,
    /// Its JSON body, as the owner sent it.
    pub body: Bytes,
}

/// What the owner said about a payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnerAnswer {
    /// 200: the donation is recorded there. `body` is the owner's donation view, to pass on.
    Recorded {
        partition: PartitionId,
        offset: Offset,
        body: Bytes,
    },
    /// 404 `donation_not_found`.
    NotRecorded,
    /// Any other error answer in the API's error shape.
    Refused(OwnerRefusal),
}

/// An error answer of the owner, in the API's error shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerRefusal {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
    pub retry_after_s: Option<u64>,
    /// The body as the owner sent it, to pass on.
    pub body: Bytes,
}

/// An answer that is neither a donation view for the payment asked about nor an error in the
/// API's shape: the owner cannot be understood, so nobody can tell whether the payment is
/// recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("its {status} answer cannot be read: {reason}")]
pub struct UnreadableAnswer {
    pub status: StatusCode,
    pub reason: String,
}

/// The fields of the owner's 200 answer that a look-up relies on (the rest is passed on).
#[derive(Debug, Deserialize)]
struct RecordedAnswer {
    payment_ref: String,
    partition: PartitionId,
    offset: Offset,
}

impl RemoteAnswer {
    /// Reads the owner's answer to a look-up of `payment_ref` into what it says.
    pub fn read(&self, payment_ref: &str) -> Result<OwnerAnswer, UnreadableAnswer> {
        let unreadable = |reason: String| UnreadableAnswer {
            status: self.status,
            reason,
        };
        if self.status == StatusCode::OK {
            let recorded: RecordedAnswer = serde_json::from_slice(&self.body)
                .map_err(|e| unreadable(format!("not a recorded donation: {e}")))?;
            if recorded.payment_ref != payment_ref {
                return Err(unreadable(format!(
                    "it is about payment {:?}, not {payment_ref:?}",
                    recorded.payment_ref
                )));
            }
            return Ok(OwnerAnswer::Recorded {
                partition: recorded.partition,
                offset: recorded.offset,
                body: self.body.clone(),
            });
        }
        let error: ErrorBody = serde_json::from_slice(&self.body)
            .map_err(|e| unreadable(format!("not an error in the API's shape: {e}")))?;
        if self.status.is_success() {
            return Err(unreadable("an error body with a success status".into()));
        }
        if self.status == StatusCode::NOT_FOUND && error.error.code == "donation_not_found" {
            return Ok(OwnerAnswer::NotRecorded);
        }
        Ok(OwnerAnswer::Refused(OwnerRefusal {
            status: self.status,
            code: error.error.code,
            message: error.error.message,
            retry_after_s: self.retry_after_s,
            body: self.body.clone(),
        }))
    }
}

impl OwnerRefusal {
    /// The `Retry-After` to pass on: a 503 stays retryable, after the owner's wait or a second.
    pub fn retry_after_s(&self) -> Option<u64> {
        (self.status == StatusCode::SERVICE_UNAVAILABLE)
            .then(|| self.retry_after_s.unwrap_or(1).max(1))
    }
}

/// The owner's refusal passed on as it sent it: its status and body, and its `Retry-After`.
impl IntoResponse for OwnerRefusal {
    fn into_response(self) -> Response {
        let retry_after_s = self.retry_after_s();
        let json = [(header::CONTENT_TYPE, "application/json")];
        let mut response = (self.status, json, self.body).into_response();
        if let Some(seconds) = retry_after_s {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<UnreadableAnswer> for ApiError {
    fn from(error: UnreadableAnswer) -> Self {
        Self::owner_unavailable(format!(
            "the node that runs this payment's partition cannot tell whether it is recorded \
             ({error}); retry"
        ))
    }
}

/// The owner could not answer: a 503 of its own stays a 503 here; a failure that needs an
/// operator keeps its code (as a 500), and anything else is a 500 `internal`.
impl From<OwnerRefusal> for ApiError {
    fn from(refusal: OwnerRefusal) -> Self {
        let message = format!(
            "the node that runs this payment's partition answered {} {}: {}",
            refusal.status, refusal.code, refusal.message
        );
        if let Some(retry_after_s) = refusal.retry_after_s() {
            return Self::owner_unavailable(message).with_retry_after(retry_after_s);
        }
        match NON_TRANSIENT_CODES
            .iter()
            .find(|code| **code == refusal.code)
        {
            Some(code) => Self::new(StatusCode::INTERNAL_SERVER_ERROR, code, message),
            None => Self::internal(message),
        }
    }
}

/// Asks the node that runs a partition.
#[async_trait]
pub trait RemoteDonations: Send + Sync + std::fmt::Debug {
    /// `None` when this node runs `partition` itself; otherwise the owner's answer, or an
    /// error when no live node runs it or the owner cannot be reached.
    async fn lookup(
        &self,
        partition: PartitionId,
        payment_ref: &str,
    ) -> Option<Result<RemoteAnswer, ApiError>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> RemoteAnswer {
        RemoteAnswer {
            status: StatusCode::from_u16(status).unwrap(),
            retry_after_s: None,
            body: Bytes::from(body.to_owned()),
        }
    }

    #[test]
    fn a_recorded_donation_is_read_with_its_place() {
        let body = r#"{"payment_ref":"pay-1","partition":3,"offset":17,"amount_cents":100}"#;
        let read = answer(200, body).read("pay-1").unwrap();
        assert_eq!(
            read,
            OwnerAnswer::Recorded {
                partition: 3,
                offset: 17,
                body: Bytes::from(body),
            }
        );
    }

    #[test]
    fn not_found_is_not_recorded_and_other_errors_are_refusals() {
        let not_found = r#"{"error":{"code":"donation_not_found","message":"no"}}"#;
        assert_eq!(
            answer(404, not_found).read("pay-1").unwrap(),
            OwnerAnswer::NotRecorded
        );
        let corrupted = r#"{"error":{"code":"log_corrupted","message":"damaged"}}"#;
        let OwnerAnswer::Refused(refusal) = answer(500, corrupted).read("pay-1").unwrap() else {
            panic!("a refusal");
        };
        assert_eq!(
            (refusal.status, refusal.code.as_str()),
            (StatusCode::INTERNAL_SERVER_ERROR, "log_corrupted")
        );
        // A 404 of another kind (no such route on the owner) does not say "not recorded".
        let no_route = r#"{"error":{"code":"not_found","message":"no such route"}}"#;
        assert!(matches!(
            answer(404, no_route).read("pay-1").unwrap(),
            OwnerAnswer::Refused(_)
        ));
    }

    fn refusal(status: u16, retry_after_s: Option<u64>) -> OwnerRefusal {
        OwnerRefusal {
            status: StatusCode::from_u16(status).unwrap(),
            code: "log_unavailable".into(),
            message: "m".into(),
            retry_after_s,
            body: Bytes::from_static(br#"{"error":{"code":"log_unavailable","message":"m"}}"#),
        }
    }

    #[test]
    fn a_passed_on_refusal_keeps_its_body_and_a_503_its_wait() {
        let header = |response: &Response| {
            let value = response.headers().get(header::RETRY_AFTER)?;
            Some(value.to_str().unwrap().to_owned())
        };
        let named = refusal(503, Some(7)).into_response();
        assert_eq!(
            (named.status(), header(&named).as_deref()),
            (StatusCode::SERVICE_UNAVAILABLE, Some("7"))
        );
        let unnamed = refusal(503, None).into_response();
        assert_eq!(header(&unnamed).as_deref(), Some("1"));
        let final_refusal = refusal(500, Some(7)).into_response();
        assert_eq!(header(&final_refusal), None);
        assert_eq!(
            final_refusal.headers().get(header::CONTENT_TYPE).unwrap(),
            "application/json"
        );
    }

    #[test]
    fn a_refusal_maps_with_the_owners_wait_or_its_operator_code() {
        let error = ApiError::from(refusal(503, Some(7)));
        assert_eq!(
            (error.status, error.code, error.retry_after_s),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "owner_unavailable",
                Some(7)
            )
        );
        let mut corrupted = refusal(500, None);
        corrupted.code = "log_corrupted".into();
        let error = ApiError::from(corrupted);
        assert_eq!(
            (error.status, error.code, error.retry_after_s),
            (StatusCode::INTERNAL_SERVER_ERROR, "log_corrupted", None)
        );
    }

    #[test]
    fn an_answer_that_does_not_fit_its_shape_is_unreadable() {
        let cases = [
            (200, "garbage"),
            (200, ""),
            (200, r#"{"payment_ref":"pay-1","partition":3}"#),
            (
                200,
                r#"{"payment_ref":"pay-1","partition":3,"offset":"17"}"#,
            ),
            (200, r#"{"payment_ref":"pay-1","partition":-1,"offset":17}"#),
            (200, r#"{"payment_ref":"pay-2","partition":3,"offset":17}"#),
            (
                200,
                r#"{"error":{"code":"donation_not_found","message":"no"}}"#,
            ),
            (404, ""),
            (404, "<html>not found</html>"),
            (502, "bad gateway"),
            (204, r#"{"error":{"code":"x","message":"y"}}"#),
        ];
        for (status, body) in cases {
            let read = answer(status, body).read("pay-1");
            assert!(read.is_err(), "{status} {body:?}: {read:?}");
        }
    }
}
