//! The one error type of tally's HTTP API and its JSON shape.
//!
//! Every failure answers with the same JSON shape and a stable, machine-readable `code`:
//!
//! ```json
//! {"error": {"code": "invalid_field", "field": "amount_cents", "message": "must be an integer from 1 to 10000000, got 2.5"}}
//! ```
//!
//! 429 and 503 carry `Retry-After`: the payment system retries later, so a paid donation is
//! delayed, never lost. Only a failure that may pass without anyone fixing anything is a 503;
//! one that needs an operator (a damaged log, lost records, a failed disk) is a 500 with its own
//! code and no `Retry-After`. Each domain error decides which it is in one `From` impl, beside
//! the error: the pipeline's in `pipeline_errors` (the `server` feature), ingest's in
//! `tally_ingest::error`.
//!
//! [`ErrorBody`] is the shape on the wire, written by the server and read by clients.

use http::StatusCode;
use serde::{Deserialize, Serialize};

use crate::signature::SignatureError;

/// An error answer of the HTTP API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub field: Option<String>,
    pub message: String,
    pub retry_after_s: Option<u64>,
    /// Answer with `Connection: close`: the request was not read to its end (a body refused or
    /// timed out), so the connection cannot carry another request.
    pub close_connection: bool,
}

/// The body of every error answer: `{"error":{"code","message","field"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong: the stable code, a human message, and the offending field if there is one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            field: None,
            message: message.into(),
            retry_after_s: None,
            close_connection: false,
        }
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after_s = Some(seconds.max(1));
        self
    }

    pub fn closing_connection(mut self) -> Self {
        self.close_connection = true;
        self
    }

    /// The body this error answers with.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message.clone(),
                field: self.field.clone(),
            },
        }
    }

    pub fn malformed_json(reason: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("the body is not valid JSON: {reason}"),
        )
    }

    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn unprocessable(code: &'static str, field: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message).with_field(field)
    }

    pub fn rate_limited(retry_after_s: u64) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many donations for this user; retry after the time in Retry-After",
        )
        .with_field("user_id")
        .with_retry_after(retry_after_s)
    }

    /// A connection accepted above the cap, answered this before it is closed. There is no
    /// domain error behind it: the listener refuses before any route runs.
    pub fn too_many_connections(retry_after_s: u64) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_connections",
            "the server has as many connections open as it may; retry",
        )
        .with_retry_after(retry_after_s)
        .closing_connection()
    }

    /// The node that runs a partition cannot be asked, or its answer cannot be read.
    pub fn owner_unavailable(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "owner_unavailable",
            message,
        )
        .with_retry_after(1)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

/// A callback whose signature is refused: 401 with the signature error's own code.
impl From<SignatureError> for ApiError {
    fn from(error: SignatureError) -> Self {
        Self::unauthorized(error.code(), error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_keeps_its_field_order_and_leaves_out_a_missing_field() {
        let error = ApiError::new(StatusCode::BAD_REQUEST, "invalid_field", "bad").with_field("x");
        assert_eq!(
            serde_json::to_string(&error.body()).unwrap(),
            r#"{"error":{"code":"invalid_field","message":"bad","field":"x"}}"#
        );
        let error = ApiError::internal("broken");
        assert_eq!(
            serde_json::to_string(&error.body()).unwrap(),
            r#"{"error":{"code":"internal","message":"broken"}}"#
        );
    }

    #[test]
    fn a_body_reads_back_with_or_without_a_field() {
        let read: ErrorBody =
            serde_json::from_str(r#"{"error":{"code":"rate_limited","message":"m"}}"#).unwrap();
        assert_eq!(
            (read.error.code.as_str(), read.error.field),
            ("rate_limited", None)
        );
    }
}
