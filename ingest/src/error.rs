//! The one error type of tally's HTTP API and its mapping to responses.
//!
//! Every failure answers with the same JSON shape and a stable, machine-readable `code`:
//!
//! ```json
//! {"error": {"code": "invalid_field", "field": "amount_cents", "message": "must be an integer from 1 to 10000000, got 2.5"}}
//! ```
//!
//! 429 and 503 carry `Retry-After`: the payment system retries later, so a paid donation is
//! delayed, never lost.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tally_pipeline::event::validate::Rejection;
use tally_pipeline::read_model::StatsError;

/// An error answer of the HTTP API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub field: Option<String>,
    pub message: String,
    pub retry_after_s: Option<u64>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            field: None,
            message: message.into(),
            retry_after_s: None,
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

    pub fn malformed_json(reason: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("the body is not valid JSON: {reason}"),
        )
    }

    pub fn body_too_large(bytes_max: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body is larger than {bytes_max} bytes"),
        )
    }

    pub fn unsupported_media_type() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the body must be JSON (Content-Type: application/json)",
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

    /// The log cannot take appends right now; nothing was acknowledged.
    pub fn log_unavailable(reason: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "log_unavailable",
            format!("the donation log is unavailable, nothing was recorded: {reason}"),
        )
        .with_retry_after(1)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl From<Rejection> for ApiError {
    fn from(rejection: Rejection) -> Self {
        let error = Self::new(
            StatusCode::BAD_REQUEST,
            rejection.code.as_str(),
            rejection.message,
        );
        match rejection.field {
            Some(field) => error.with_field(field),
            None => error,
        }
    }
}

impl From<StatsError> for ApiError {
    fn from(error: StatsError) -> Self {
        match error {
            StatsError::EmptyRange => Self::new(
                StatusCode::BAD_REQUEST,
                "invalid_range",
                format!("{error} (after truncating both to the minute)"),
            )
            .with_field("to"),
            StatsError::SeriesTooLong { .. } => Self::new(
                StatusCode::BAD_REQUEST,
                "series_too_long",
                error.to_string(),
            )
            .with_field("bucket"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            error: Detail {
                code: self.code,
                message: &self.message,
                field: self.field.as_deref(),
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after_s {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// A path parameter, with a bad one (not UTF-8, say) refused in the API's error shape rather
/// than axum's plain-text rejection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathParameter(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for PathParameter {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<String>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Self(value)),
            Err(rejection) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_field",
                format!("invalid path parameter: {}", rejection.body_text()),
            )
            .with_field(path_parameter_name(parts))),
        }
    }
}

/// The name of the route's path parameter, for error messages.
fn path_parameter_name(parts: &axum::http::request::Parts) -> String {
    parts
        .extensions
        .get::<axum::extract::MatchedPath>()
        .and_then(|path| path.as_str().split('{').nth(1))
        .and_then(|rest| rest.split('}').next())
        .unwrap_or("path")
        .to_owned()
}
