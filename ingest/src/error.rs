//! Ingest's own errors as API errors, each mapped in one place: a body refused before or while
//! it was read, a body that is not the JSON asked for, and a user over the rate limit. The error
//! type and its shape are `tally_api`'s; the pipeline's errors map in `tally_api` too.

use axum::http::StatusCode;
use tally_api::ApiError;

use crate::body::{BodyError, ReadError};
use crate::rate_limit::RetryAfter;

/// A body refused before or while it was read. Only a want of slots may pass by itself (503,
/// `Retry-After`); a refused or timed-out read also closes the connection, whose unread rest of
/// the body cannot carry another request.
impl From<ReadError> for ApiError {
    fn from(error: ReadError) -> Self {
        let message = error.to_string();
        let close_connection = error.closes_connection();
        let answer = match error {
            ReadError::NotJsonMediaType => Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                message,
            ),
            ReadError::Encoded { .. } => Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_encoding",
                message,
            ),
            ReadError::TooLarge { .. } => {
                Self::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", message)
            }
            ReadError::Unreadable(_) => {
                Self::new(StatusCode::BAD_REQUEST, "unreadable_body", message)
            }
            ReadError::Busy { retry_after_s, .. } => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_body_reads",
                message,
            )
            .with_retry_after(retry_after_s),
            ReadError::TimedOut { .. } => {
                Self::new(StatusCode::REQUEST_TIMEOUT, "body_timeout", message)
            }
        };
        if close_connection {
            answer.closing_connection()
        } else {
            answer
        }
    }
}

impl From<BodyError> for ApiError {
    fn from(error: BodyError) -> Self {
        let message = error.to_string();
        match error {
            BodyError::NotJson(reason) => Self::malformed_json(reason),
            BodyError::RepeatedKey(key) => {
                Self::new(StatusCode::BAD_REQUEST, "duplicate_field", message).with_field(key)
            }
            BodyError::NotAnArray => Self::new(StatusCode::BAD_REQUEST, "invalid_body", message),
            BodyError::Invalid { field, message } => {
                let error = Self::new(StatusCode::BAD_REQUEST, "invalid_body", message);
                match field {
                    Some(field) => error.with_field(field),
                    None => error,
                }
            }
        }
    }
}

/// A user over the rate limit: 429 after the limiter's own wait.
impl From<RetryAfter> for ApiError {
    fn from(retry: RetryAfter) -> Self {
        Self::rate_limited(retry.seconds)
    }
}
