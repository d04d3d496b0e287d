//! The refund routes: `POST /v1/refunds` and `POST /v1/refunds/batch`.
//!
//! A refund or chargeback callback is checked like a donation — content type, encoding and
//! size, the body read in a slot, signature, JSON (no key twice), fields — and then against its
//! donation where this node can tell: a refund larger than what its donation has left (the
//! donation's amount less the retractions already applied) is `422 refund_exceeds_donation`.
//! A resend of a recorded `refund_ref` is taken (the pipeline counts it as a duplicate, or as a
//! conflict when its fields differ), and so is a refund whose donation is not recorded yet (it
//! waits for it), or sits in a partition another node runs (the pipeline holds out any excess).
//! It is appended under its donation's `payment_ref`, so it lands in the donation's partition
//! and is applied in log order with it, and the answer is 202 only once it is durable.
//!
//! Refunds come from the payment system, not from donors, so no donor's rate limit applies,
//! and a closed campaign takes them (as post-close adjustments).

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use tally_api::ApiError;
use tally_api::views::{BatchRejection, RefundAccepted, RefundBatchOutcome, RefundBatchResult};
use tally_pipeline::event::envelope;
use tally_pipeline::event::refund::{RefundEvent, validate_refund};
use tally_pipeline::log::{Offset, PartitionId};

use crate::body::{self, BodyError};
use crate::routes::IngestContext;

pub fn routes(context: Arc<IngestContext>) -> Router {
    Router::new()
        .route("/v1/refunds", post(post_refund))
        .route("/v1/refunds/batch", post(post_refund_batch))
        .with_state(context)
}

async fn post_refund(
    State(context): State<Arc<IngestContext>>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, axum::Json<RefundAccepted>), ApiError> {
    let bytes = context
        .authenticated_body(&headers, body, context.limits.body_bytes_max)
        .await?;
    let _admitted = context.admit_work().await?;
    let value = body::value(&bytes)?;
    let refund = validate_refund(&value, &context.limits.donation, context.clock.now_ms())?;
    context.check_refund(&refund).await?;
    let (partition, offset) = append_refunds(&context, &[&refund]).await?[0];
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(RefundAccepted {
            status: "accepted".to_owned(),
            refund_ref: refund.refund_ref,
            payment_ref: refund.payment_ref,
            partition,
            offset,
        }),
    ))
}

async fn post_refund_batch(
    State(context): State<Arc<IngestContext>>,
    headers: HeaderMap,
    body: Body,
) -> Result<axum::Json<RefundBatchOutcome>, ApiError> {
    // Refunds are few: every item is read as a JSON value, checked field by field.
    let (_admitted, items) = context.batch_items(&headers, body, &[]).await?;
    let now_ms = context.clock.now_ms();
    let mut rejected = Vec::new();
    let mut to_append: Vec<(usize, RefundEvent)> = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        let checked = match item.into_value() {
            (_, Some(key)) => Err(ApiError::from(BodyError::RepeatedKey(key))),
            (value, None) => match validate_refund(&value, &context.limits.donation, now_ms) {
                Err(rejection) => Err(ApiError::from(rejection)),
                Ok(refund) => context.check_refund(&refund).await.map(|()| refund),
            },
        };
        match checked {
            Ok(refund) => to_append.push((index, refund)),
            Err(error) => rejected.push(BatchRejection {
                index,
                code: error.code.to_owned(),
                field: error.field,
                message: error.message,
            }),
        }
    }
    let refunds: Vec<&RefundEvent> = to_append.iter().map(|(_, refund)| refund).collect();
    let placements = append_refunds(&context, &refunds).await?;
    let results: Vec<RefundBatchResult> = to_append
        .iter()
        .zip(placements)
        .map(|((index, refund), (partition, offset))| RefundBatchResult {
            index: *index,
            refund_ref: refund.refund_ref.clone(),
            payment_ref: refund.payment_ref.clone(),
            partition,
            offset,
        })
        .collect();
    Ok(axum::Json(RefundBatchOutcome {
        accepted: results.len(),
        rejected,
        results,
    }))
}

async fn append_refunds(
    context: &IngestContext,
    refunds: &[&RefundEvent],
) -> Result<Vec<(PartitionId, Offset)>, ApiError> {
    let records = refunds
        .iter()
        .map(|refund| envelope::keyed_refund_record(refund))
        .collect();
    context.append_records(records).await
}

impl IngestContext {
    /// Refuses a refund that this node can tell is more than its donation has left.
    async fn check_refund(&self, refund: &RefundEvent) -> Result<(), ApiError> {
        let Some(found) = self
            .donation_indexes
            .recorded(&*self.log, &refund.payment_ref)
            .await?
        else {
            return Ok(());
        };
        let ledger = self.donation_indexes.retractions(found.partition);
        let ledger = ledger
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if ledger.get(&refund.refund_ref).is_some() {
            return Ok(());
        }
        let donation_cents = found.event.amount_cents;
        let taken_cents = ledger.applied_cents(&refund.payment_ref);
        if refund.amount_cents > donation_cents.saturating_sub(taken_cents) {
            return Err(ApiError::unprocessable(
                "refund_exceeds_donation",
                "amount_cents",
                format!(
                    "payment {:?} donated {donation_cents} and {taken_cents} of it is already refunded; {} more is more than is left",
                    refund.payment_ref, refund.amount_cents
                ),
            ));
        }
        Ok(())
    }
}
