//! The ingest routes: `POST /v1/donations` and `POST /v1/donations/batch`.
//!
//! A callback is checked in this order — content type, encoding and declared size, then the body
//! read in a slot within the read timeout ([`crate::body`]), signature, JSON (no key twice),
//! fields, rate limit, campaign — and appended to the log only when all pass. The answer is 202
//! only once the event is durable in the log; anything else is an [`ApiError`] and nothing was
//! recorded.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use tally_api::ApiError;
use tally_api::remote::{OwnerAnswer, RemoteDonations};
use tally_api::signature::{self, SIGNATURE_HEADER, SigningSecret};
use tally_api::views::{Accepted, BatchOutcome, BatchRejection, BatchResult};
use tally_pipeline::campaigns::{CampaignRegistry, CampaignStatus};
use tally_pipeline::clock::Clock;
use tally_pipeline::clock::UnixMillis;
use tally_pipeline::event::validate::{
    DONATION_FIELDS, DonationInput, DonationLimits, accept_plain_donation, validate_donation,
};
use tally_pipeline::event::{DonationEvent, envelope};
use tally_pipeline::log::{KeyedRecord, Log, Offset, PartitionId, append_keyed};
use tally_pipeline::runner::DonationIndexes;

use crate::body::{self, BodyError, BodyReads, CALLBACK_BODY_BYTES_MAX, Item};
use crate::rate_limit::RateLimiter;

/// Bounds on what one request may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngestLimits {
    /// A donation callback is a few hundred bytes; 16 KiB leaves room and stops abuse early.
    pub body_bytes_max: usize,
    /// Items in one batch request.
    pub batch_items_max: usize,
    /// Bytes of one batch request: about `batch_items_max` donations.
    pub batch_bytes_max: usize,
    pub donation: DonationLimits,
    pub signature_tolerance_s: i64,
}

impl Default for IngestLimits {
    fn default() -> Self {
        Self {
            body_bytes_max: CALLBACK_BODY_BYTES_MAX,
            batch_items_max: 1000,
            batch_bytes_max: 1024 * 1024,
            donation: DonationLimits::default(),
            signature_tolerance_s: signature::SIGNATURE_TOLERANCE_S_DEFAULT,
        }
    }
}

/// Counters the ingest side keeps for `/metrics`.
#[derive(Debug, Default)]
pub struct IngestMetrics {
    pub appended_records: AtomicU64,
    pub rate_limited: AtomicU64,
}

/// Everything the ingest routes need.
#[derive(Debug)]
pub struct IngestContext {
    pub log: Arc<dyn Log>,
    pub campaigns: Arc<CampaignRegistry>,
    /// Donation appends hold it shared; closing a campaign holds it exclusively for an instant, so
    /// that no donation validated against an open campaign lands after its close point.
    pub intake: Arc<tokio::sync::RwLock<()>>,
    pub donation_indexes: Arc<DonationIndexes>,
    /// Asks other nodes about partitions they run (on a shared log).
    pub remote: Option<Arc<dyn RemoteDonations>>,
    pub signing_secret: SigningSecret,
    pub limits: IngestLimits,
    /// Slots for bodies being read, before they are authenticated.
    pub bodies: Arc<BodyReads>,
    /// Permits for admitted work: a request takes one only once its body is read and its
    /// signature checked, and holds it until answered; more wait for a permit.
    pub admitted: Arc<tokio::sync::Semaphore>,
    pub rate_limiter: RateLimiter,
    pub clock: Arc<dyn Clock>,
    pub metrics: IngestMetrics,
}

pub fn routes(context: Arc<IngestContext>) -> Router {
    Router::new()
        .route("/v1/donations", post(post_donation))
        .route("/v1/donations/batch", post(post_batch))
        .with_state(context)
}

/// What to do with a valid donation.
enum Admission {
    Append(DonationEvent),
    /// Its payment is already recorded (a retry for a campaign that closed since): answer with
    /// where it is, append nothing.
    AlreadyRecorded {
        payment_ref: String,
        partition: PartitionId,
        offset: Offset,
    },
}

/// The donation an item holds: taken the plain way when it is plain and passes (see
/// [`accept_plain_donation`]), else checked field by field from its JSON value, which names
/// what is wrong.
fn donation_input(
    item: Item,
    limits: &DonationLimits,
    now_ms: UnixMillis,
) -> Result<DonationInput, ApiError> {
    let item = match item {
        Item::Plain { fields, values } => match accept_plain_donation(values, limits, now_ms) {
            Ok(input) => return Ok(input),
            Err(values) => Item::Plain { fields, values },
        },
        other => other,
    };
    match item.into_value() {
        (_, Some(key)) => Err(BodyError::RepeatedKey(key).into()),
        (value, None) => validate_donation(&value, limits, now_ms).map_err(ApiError::from),
    }
}

async fn post_donation(
    State(context): State<Arc<IngestContext>>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, axum::Json<Accepted>), ApiError> {
    let bytes = context
        .authenticated_body(&headers, body, context.limits.body_bytes_max)
        .await?;
    let _admitted = context.admit_work().await?;
    let item = body::item(&bytes, DONATION_FIELDS)?;
    let input = donation_input(item, &context.limits.donation, context.clock.now_ms())?;
    if let Err(retry) = context.rate_limiter.check(&input.user_id) {
        context.metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
        return Err(retry.into());
    }
    let payment_ref = input.payment_ref.clone();
    let _intake = context.intake.read().await;
    let (partition, offset) = match context.admit(input).await? {
        Admission::AlreadyRecorded {
            partition, offset, ..
        } => (partition, offset),
        Admission::Append(event) => context.append(std::slice::from_ref(&event)).await?[0],
    };
    let accepted = Accepted {
        status: "accepted".to_owned(),
        payment_ref,
        partition,
        offset,
    };
    Ok((StatusCode::ACCEPTED, axum::Json(accepted)))
}

async fn post_batch(
    State(context): State<Arc<IngestContext>>,
    headers: HeaderMap,
    body: Body,
) -> Result<axum::Json<BatchOutcome>, ApiError> {
    let (_admitted, items) = context.batch_items(&headers, body, DONATION_FIELDS).await?;
    let now_ms = context.clock.now_ms();
    let mut rejected = Vec::new();
    let mut results = Vec::new();
    let mut to_append: Vec<(usize, DonationEvent)> = Vec::new();
    let _intake = context.intake.read().await;
    for (index, item) in items.into_iter().enumerate() {
        let admitted = match donation_input(item, &context.limits.donation, now_ms) {
            Err(error) => Err(error),
            Ok(input) => match context.rate_limiter.check(&input.user_id) {
                Err(retry) => {
                    context.metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
                    Err(retry.into())
                }
                Ok(()) => context.admit(input).await,
            },
        };
        match admitted {
            Ok(Admission::Append(event)) => to_append.push((index, event)),
            Ok(Admission::AlreadyRecorded {
                payment_ref,
                partition,
                offset,
            }) => results.push(BatchResult {
                index,
                payment_ref,
                partition,
                offset,
            }),
            Err(error) => rejected.push(BatchRejection {
                index,
                code: error.code.to_owned(),
                field: error.field,
                message: error.message,
            }),
        }
    }
    let (indexes, events): (Vec<usize>, Vec<DonationEvent>) = to_append.into_iter().unzip();
    let placements = context.append(&events).await?;
    for ((index, event), (partition, offset)) in indexes.into_iter().zip(events).zip(placements) {
        results.push(BatchResult {
            index,
            payment_ref: event.payment_ref,
            partition,
            offset,
        });
    }
    results.sort_by_key(|result| result.index);
    Ok(axum::Json(BatchOutcome {
        accepted: results.len(),
        rejected,
        results,
    }))
}

impl IngestContext {
    /// A batch request's items, once its body is read, signed and admitted (the permit is held
    /// until the answer), and holds no more items than a request may carry.
    pub(crate) async fn batch_items(
        &self,
        headers: &HeaderMap,
        body: Body,
        fields: &'static [&'static str],
    ) -> Result<(tokio::sync::SemaphorePermit<'_>, Vec<Item>), ApiError> {
        let bytes = self
            .authenticated_body(headers, body, self.limits.batch_bytes_max)
            .await?;
        let admitted = self.admit_work().await?;
        let items = body::batch(&bytes, fields)?;
        self.check_batch_size(items.len())?;
        Ok((admitted, items))
    }

    /// Refuses a batch of more items than a request may carry.
    fn check_batch_size(&self, items: usize) -> Result<(), ApiError> {
        if items > self.limits.batch_items_max {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "batch_too_large",
                format!(
                    "a batch holds at most {} items, got {items}",
                    self.limits.batch_items_max
                ),
            ));
        }
        Ok(())
    }

    /// The request body, once it is JSON and read within `bytes_max` (see
    /// [`BodyReads::read_json`]), and signed with our secret.
    pub(crate) async fn authenticated_body(
        &self,
        headers: &HeaderMap,
        body: Body,
        bytes_max: usize,
    ) -> Result<Bytes, ApiError> {
        let bytes = self.bodies.read_json(headers, body, bytes_max).await?;
        let header = headers
            .get(SIGNATURE_HEADER)
            .and_then(|value| value.to_str().ok());
        let now_s = self.clock.now_ms().div_euclid(1000);
        signature::verify(
            &self.signing_secret,
            header,
            &bytes,
            now_s,
            self.limits.signature_tolerance_s,
        )
        .map_err(ApiError::from)?;
        Ok(bytes)
    }

    /// A permit for admitted work, waited for.
    pub(crate) async fn admit_work(&self) -> Result<tokio::sync::SemaphorePermit<'_>, ApiError> {
        self.admitted
            .acquire()
            .await
            .map_err(|_| ApiError::internal("the admitted-work permits are closed"))
    }

    /// Checks a valid donation against its campaign.
    async fn admit(&self, input: DonationInput) -> Result<Admission, ApiError> {
        let campaign = self.campaigns.get_fresh(&input.campaign_id).await?;
        let Some(campaign) = campaign else {
            return Err(ApiError::unprocessable(
                "unknown_campaign",
                "campaign_id",
                format!("there is no campaign {:?}", input.campaign_id),
            ));
        };
        if campaign.status != CampaignStatus::Open {
            if let Some((partition, offset)) = self.recorded_placement(&input.payment_ref).await? {
                return Ok(Admission::AlreadyRecorded {
                    payment_ref: input.payment_ref,
                    partition,
                    offset,
                });
            }
            return Err(ApiError::unprocessable(
                "campaign_closed",
                "campaign_id",
                format!(
                    "campaign {:?} is closed and takes no more donations",
                    input.campaign_id
                ),
            ));
        }
        if let Some(currency) = &input.currency
            && *currency != campaign.definition.currency
        {
            return Err(ApiError::unprocessable(
                "currency_mismatch",
                "currency",
                format!(
                    "campaign {:?} is in {}, not {currency}",
                    input.campaign_id, campaign.definition.currency
                ),
            ));
        }
        Ok(Admission::Append(
            input.into_event(Some(&campaign.definition.currency))?,
        ))
    }

    /// Where a payment's donation is recorded, if it is. A log or node that cannot tell is an
    /// error (503), never "not recorded": the payment system must not hear that a counted
    /// donation was refused.
    async fn recorded_placement(
        &self,
        payment_ref: &str,
    ) -> Result<Option<(PartitionId, Offset)>, ApiError> {
        let partition = self.log.partition_for_key(payment_ref.as_bytes());
        if let Some(remote) = &self.remote
            && let Some(answer) = remote.lookup(partition, payment_ref).await
        {
            return match answer?.read(payment_ref)? {
                OwnerAnswer::Recorded {
                    partition, offset, ..
                } => Ok(Some((partition, offset))),
                OwnerAnswer::NotRecorded => Ok(None),
                OwnerAnswer::Refused(refusal) => Err(refusal.into()),
            };
        }
        let found = self
            .donation_indexes
            .recorded(&*self.log, payment_ref)
            .await?;
        Ok(found.map(|found| (found.partition, found.offset)))
    }

    /// Appends events durably; their placements in order.
    async fn append(
        &self,
        events: &[DonationEvent],
    ) -> Result<Vec<(PartitionId, Offset)>, ApiError> {
        let records = events.iter().map(envelope::keyed_record).collect();
        self.append_records(records).await
    }

    /// Appends encoded records durably; their placements in order.
    pub(crate) async fn append_records(
        &self,
        records: Vec<KeyedRecord>,
    ) -> Result<Vec<(PartitionId, Offset)>, ApiError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let count = records.len() as u64;
        let placements = append_keyed(self.log.as_ref(), records)
            .await
            .map_err(|error| {
                tracing::error!(%error, "append failed; nothing was acknowledged");
                ApiError::from(error)
            })?;
        self.metrics
            .appended_records
            .fetch_add(count, Ordering::Relaxed);
        Ok(placements)
    }
}
