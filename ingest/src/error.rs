//! The one error type of tally's HTTP API and its mapping to responses.
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
//! code and no `Retry-After`. The `From` impls below are the one place that decides which a
//! domain error is.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tally_pipeline::campaigns::CampaignError;
use tally_pipeline::checkpoint::CheckpointError;
use tally_pipeline::checkpoint::savepoint::SavepointError;
use tally_pipeline::event::envelope::EnvelopeError;
use tally_pipeline::event::validate::Rejection;
use tally_pipeline::log::LogError;
use tally_pipeline::read_model::StatsError;
use tally_pipeline::reconcile::ReconcileError;

use crate::body::{BodyError, ReadError};
use crate::remote::{OwnerRefusal, UnreadableAnswer};

/// The codes of failures that need an operator, which a node passes on when the owner of a
/// partition answers with one.
const NON_TRANSIENT_CODES: [&str; 4] = ["log_corrupted", "records_lost", "log_failed", "internal"];

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

    /// The log cannot take appends right now; nothing was acknowledged. Only for a failure that
    /// may pass by itself: [`From<LogError>`](#impl-From<LogError>-for-ApiError) decides.
    fn log_unavailable(reason: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "log_unavailable",
            format!("the donation log is unavailable, nothing was recorded: {reason}"),
        )
        .with_retry_after(1)
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

/// A log failure: 503 with `Retry-After` only when [`LogError::is_retryable`] says the same
/// request may succeed later; otherwise a 500 naming what is wrong.
impl From<LogError> for ApiError {
    fn from(error: LogError) -> Self {
        if error.is_retryable() {
            return Self::log_unavailable(error);
        }
        match error {
            LogError::Corruption { .. } => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "log_corrupted",
                format!("the donation log is damaged; an operator must repair it: {error}"),
            ),
            LogError::RecordsLost { .. } => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "records_lost",
                format!(
                    "the donation log lost acknowledged records; an operator must look: {error}"
                ),
            ),
            // A partition whose write or sync failed recovers itself from disk (`Failed` is
            // retryable, answered above); an I/O error that reaches here needs an operator.
            LogError::Io { .. } => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "log_failed",
                format!(
                    "the donation log failed and needs an operator (retrying does not help): {error}"
                ),
            ),
            other => Self::internal(other.to_string()),
        }
    }
}

impl From<CampaignError> for ApiError {
    fn from(error: CampaignError) -> Self {
        match error {
            CampaignError::AlreadyExists(id) => Self::new(
                StatusCode::CONFLICT,
                "campaign_exists",
                format!("campaign {id:?} already exists"),
            )
            .with_field("campaign_id"),
            CampaignError::NotFound(id) => {
                Self::not_found("campaign_not_found", format!("there is no campaign {id:?}"))
            }
            CampaignError::AlreadyClosed(id) => Self::new(
                StatusCode::CONFLICT,
                "campaign_closed",
                format!("campaign {id:?} is already closed"),
            ),
            CampaignError::Log(error) => error.into(),
            other @ (CampaignError::WrongStatus { .. } | CampaignError::Undecodable { .. }) => {
                Self::internal(other.to_string())
            }
        }
    }
}

impl From<ReconcileError> for ApiError {
    fn from(error: ReconcileError) -> Self {
        match error {
            ReconcileError::Log(error) => error.into(),
            other @ ReconcileError::RecordMissing { .. } => Self::internal(other.to_string()),
        }
    }
}

/// A recorded event that does not decode is damaged state (or a newer build's): a 500.
impl From<EnvelopeError> for ApiError {
    fn from(error: EnvelopeError) -> Self {
        Self::internal(format!("a recorded event does not decode: {error}"))
    }
}

/// The checkpoint store failing (I/O, damage, a lock) is never transient.
impl From<CheckpointError> for ApiError {
    fn from(error: CheckpointError) -> Self {
        Self::internal(error.to_string())
    }
}

/// A savepoint refused for its name is the client's to fix; one that could not be written (or
/// whose checkpoints failed their check) needs an operator.
impl From<SavepointError> for ApiError {
    fn from(error: SavepointError) -> Self {
        let message = error.to_string();
        match error {
            SavepointError::InvalidName { .. } => {
                Self::new(StatusCode::BAD_REQUEST, "invalid_field", message).with_field("name")
            }
            SavepointError::Exists { .. } => {
                Self::new(StatusCode::CONFLICT, "savepoint_exists", message).with_field("name")
            }
            SavepointError::Io { .. } | SavepointError::Checkpoint(_) => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "savepoint_failed",
                message,
            ),
        }
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
        if refusal.status == StatusCode::SERVICE_UNAVAILABLE {
            let error = Self::owner_unavailable(message);
            return error.with_retry_after(refusal.retry_after_s.unwrap_or(1));
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
            StatsError::EmptyRange { .. } => {
                Self::new(StatusCode::BAD_REQUEST, "invalid_range", error.to_string())
                    .with_field("to")
            }
            StatsError::SeriesFinerThanResolution { .. } => Self::new(
                StatusCode::BAD_REQUEST,
                "series_finer_than_resolution",
                error.to_string(),
            )
            .with_field("bucket"),
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
        if self.close_connection {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
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
