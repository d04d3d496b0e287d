//! The pipeline's errors as API errors: the one place that decides each one's status and code,
//! with the log's own retry hint ([`LogError::is_retryable`]) deciding 503 or 500.
//!
//! They are here rather than beside the errors because the pipeline knows nothing of HTTP, and
//! Rust allows `impl From<E> for ApiError` only in the crate of `E` or of `ApiError`.

use http::StatusCode;
use tally_pipeline::campaigns::CampaignError;
use tally_pipeline::campaigns::reconcile::ReconcileError;
use tally_pipeline::checkpoint::CheckpointError;
use tally_pipeline::checkpoint::savepoint::SavepointError;
use tally_pipeline::event::envelope::EnvelopeError;
use tally_pipeline::event::validate::Rejection;
use tally_pipeline::log::LogError;
use tally_pipeline::outbox::OutboxError;
use tally_pipeline::read_model::StatsError;
use tally_pipeline::runner::LookupError;

use crate::error::ApiError;

/// The log cannot take appends right now; nothing was acknowledged. Only for a failure that
/// may pass by itself: [`From<LogError>`](ApiError#impl-From<LogError>-for-ApiError) decides.
fn log_unavailable(reason: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "log_unavailable",
        format!("the donation log is unavailable, nothing was recorded: {reason}"),
    )
    .with_retry_after(1)
}

/// A log failure: 503 with `Retry-After` only when [`LogError::is_retryable`] says the same
/// request may succeed later; otherwise a 500 naming what is wrong.
impl From<LogError> for ApiError {
    fn from(error: LogError) -> Self {
        if error.is_retryable() {
            return log_unavailable(error);
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

/// A partition out of range is the client's to fix; one whose outbox another node keeps is a
/// conflict naming this node's partitions; the rest as their own errors map.
impl From<OutboxError> for ApiError {
    fn from(error: OutboxError) -> Self {
        match error {
            OutboxError::NoSuchPartition { .. } => {
                Self::new(StatusCode::BAD_REQUEST, "invalid_field", error.to_string())
                    .with_field("partition")
            }
            OutboxError::NotOwned { .. } => Self::new(
                StatusCode::CONFLICT,
                "partition_not_owned",
                error.to_string(),
            )
            .with_field("partition"),
            OutboxError::Log(error) => error.into(),
            OutboxError::Envelope(error) => error.into(),
            OutboxError::Checkpoint(error) => error.into(),
        }
    }
}

/// A look-up fails as the log or the event it read fails.
impl From<LookupError> for ApiError {
    fn from(error: LookupError) -> Self {
        match error {
            LookupError::Log(error) => error.into(),
            LookupError::Envelope(error) => error.into(),
        }
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
