//! The query routes. Totals and statistics come from the read model (committed state only);
//! a donation look-up reads its recorded event back from the log.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::Stream;
use tally_api::ApiError;
use tally_api::remote::{OwnerAnswer, RemoteDonations};
use tally_api::server::PathParameter;
use tally_api::views::{CampaignView, DonationView, Freshness};
use tally_pipeline::campaigns::{Campaign, CampaignRegistry};
use tally_pipeline::clock::Clock;
use tally_pipeline::event::EventTime;
use tally_pipeline::log::{Log, Offset};
use tally_pipeline::operators::event_time_windows::Granularity;
use tally_pipeline::read_model::ReadModel;
use tally_pipeline::runner::DonationIndexes;

use crate::slots::QuerySlots;
use crate::views::{campaign_view, recorded_donation, rfc3339, stats_view};

/// Live updates are coalesced to at most one per this interval (about ten a second).
const LIVE_UPDATE_INTERVAL: Duration = Duration::from_millis(100);

/// Everything the query routes need.
#[derive(Debug)]
pub struct QueryContext {
    pub read_model: Arc<ReadModel>,
    pub campaigns: Arc<CampaignRegistry>,
    pub log: Arc<dyn Log>,
    pub donation_indexes: Arc<DonationIndexes>,
    /// Asks other nodes about partitions they run (on a shared log).
    pub remote: Option<Arc<dyn RemoteDonations>>,
    pub clock: Arc<dyn Clock>,
    /// The log's end offsets as last read, for answering while the log is away.
    pub last_log_ends: std::sync::Mutex<Option<Vec<Offset>>>,
    /// Where statistics are computed: off the workers that take donations, a few at once.
    pub query_slots: QuerySlots,
}

pub fn routes(context: Arc<QueryContext>) -> Router {
    Router::new()
        .route("/v1/campaigns", get(list_campaigns))
        .route("/v1/campaigns/{campaign_id}", get(get_campaign))
        .route("/v1/campaigns/{campaign_id}/stats", get(get_stats))
        .route("/v1/campaigns/{campaign_id}/live", get(get_live))
        .route("/v1/donations/{payment_ref}", get(get_donation))
        .with_state(context)
}

impl QueryContext {
    /// A campaign; one another node just created is found too.
    pub async fn campaign(&self, campaign_id: &str) -> Result<Arc<Campaign>, ApiError> {
        let campaign = self.campaigns.get_fresh(campaign_id).await?;
        campaign.ok_or_else(|| {
            ApiError::not_found(
                "campaign_not_found",
                format!("there is no campaign {campaign_id:?}"),
            )
        })
    }

    /// Applied offsets against the log's end offsets. While the log does not answer, the ends
    /// last read stand in (`log_reachable: false`), so totals stay readable through an outage;
    /// before any end was read, that is an error.
    pub async fn freshness(&self) -> Result<Freshness, ApiError> {
        let progress = self.read_model.progress();
        let ends = tally_pipeline::log::end_offsets(self.log.as_ref()).await;
        let (log_end_offsets, log_reachable) = match ends {
            Ok(ends) => {
                *self.lock_last_log_ends() = Some(ends.clone());
                (ends, true)
            }
            Err(error) => match self.lock_last_log_ends().clone() {
                Some(ends) => (ends, false),
                None => return Err(error.into()),
            },
        };
        let now_ms = self.clock.now_ms();
        let behind = progress
            .iter()
            .zip(&log_end_offsets)
            .filter(|(p, end)| p.applied_offset < **end);
        let lag_records = behind.clone().map(|(p, end)| end - p.applied_offset).sum();
        // A partition that never committed has no age to report.
        let lag_ms = behind
            .filter(|(p, _)| p.committed_at_ms > 0)
            .map(|(p, _)| (now_ms - p.committed_at_ms).max(0))
            .max()
            .unwrap_or(0);
        Ok(Freshness {
            applied_offsets: progress.iter().map(|p| p.applied_offset).collect(),
            log_end_offsets,
            lag_records,
            lag_ms,
            log_reachable,
        })
    }

    /// Every campaign with its total (without freshness), as `GET /v1/campaigns` lists them.
    pub fn campaign_views(&self) -> Vec<CampaignView> {
        let amounts = self.read_model.campaigns_amounts();
        self.campaigns
            .list()
            .iter()
            .map(|campaign| {
                let amounts = amounts
                    .get(&campaign.definition.campaign_id)
                    .copied()
                    .unwrap_or_default();
                campaign_view(campaign, amounts, None)
            })
            .collect()
    }

    fn lock_last_log_ends(&self) -> std::sync::MutexGuard<'_, Option<Vec<Offset>>> {
        self.last_log_ends
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

async fn list_campaigns(State(context): State<Arc<QueryContext>>) -> axum::Json<Vec<CampaignView>> {
    axum::Json(context.campaign_views())
}

async fn get_campaign(
    State(context): State<Arc<QueryContext>>,
    PathParameter(campaign_id): PathParameter,
) -> Result<axum::Json<CampaignView>, ApiError> {
    let campaign = context.campaign(&campaign_id).await?;
    let amounts = context.read_model.campaign_amounts(&campaign_id);
    let freshness = context.freshness().await?;
    Ok(axum::Json(campaign_view(
        &campaign,
        amounts,
        Some(freshness),
    )))
}

async fn get_stats(
    State(context): State<Arc<QueryContext>>,
    PathParameter(campaign_id): PathParameter,
    Query(parameters): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    context.campaign(&campaign_id).await?;
    let (from_ms, to_ms, bucket) = stats_parameters(&parameters)?;
    // The statistics and their JSON (up to 1440 series points) are computed in a query slot,
    // not on the worker serving this connection.
    let read_model = Arc::clone(&context.read_model);
    let body = context
        .query_slots
        .run(move || {
            let stats = read_model.stats(&campaign_id, from_ms, to_ms, bucket)?;
            serde_json::to_vec(&stats_view(&campaign_id, stats))
                .map_err(|error| ApiError::internal(format!("cannot encode statistics: {error}")))
        })
        .await??;
    let headers = [(header::CONTENT_TYPE, "application/json")];
    Ok((headers, body).into_response())
}

/// `from`, `to` and `bucket`, checked; any other parameter is refused.
fn stats_parameters(
    parameters: &HashMap<String, String>,
) -> Result<(i64, i64, Option<Granularity>), ApiError> {
    if let Some(unknown) = parameters
        .keys()
        .find(|k| !["from", "to", "bucket"].contains(&k.as_str()))
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "unknown_field",
            "is not a statistics parameter (from, to, bucket)",
        )
        .with_field(unknown.clone()));
    }
    let time = |name: &str| -> Result<i64, ApiError> {
        let text = parameters.get(name).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "missing_field",
                "is required (RFC 3339)",
            )
            .with_field(name)
        })?;
        EventTime::parse_rfc3339(text)
            .map(EventTime::unix_ms)
            .map_err(|_| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_field",
                    format!("must be an RFC 3339 timestamp, got {text:?}"),
                )
                .with_field(name)
            })
    };
    let (from_ms, to_ms) = (time("from")?, time("to")?);
    let bucket = match parameters.get("bucket").map(String::as_str) {
        None => None,
        Some("minute") => Some(Granularity::Minute),
        Some("hour") => Some(Granularity::Hour),
        Some("day") => Some(Granularity::Day),
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_field",
                format!("must be minute, hour or day, got {other:?}"),
            )
            .with_field("bucket"));
        }
    };
    Ok((from_ms, to_ms, bucket))
}

/// Server-Sent Events: the campaign's total now, then on every change, at most ~10 a second.
async fn get_live(
    State(context): State<Arc<QueryContext>>,
    PathParameter(campaign_id): PathParameter,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    context.campaign(&campaign_id).await?;
    let changes = context.read_model.subscribe();
    let stream = futures_util::stream::unfold(
        (changes, None, context, campaign_id),
        |(mut changes, last, context, campaign_id)| async move {
            loop {
                let total = context.read_model.campaign_amounts(&campaign_id);
                if last != Some(total) {
                    let data = serde_json::json!({
                        "campaign_id": campaign_id,
                        "total_cents": total.net_cents(),
                        "donations": total.gross.donations,
                        "at": rfc3339(context.clock.now_ms()),
                        "gross_cents": total.gross.total_cents,
                        "refunded_cents": total.retractions.refunded_cents,
                        "refunds": total.retractions.refunds,
                    });
                    let event = Event::default().event("total").data(data.to_string());
                    return Some((Ok(event), (changes, Some(total), context, campaign_id)));
                }
                if changes.changed().await.is_err() {
                    return None;
                }
                tokio::time::sleep(LIVE_UPDATE_INTERVAL).await;
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

async fn get_donation(
    State(context): State<Arc<QueryContext>>,
    PathParameter(payment_ref): PathParameter,
) -> Result<Response, ApiError> {
    let partition = context.log.partition_for_key(payment_ref.as_bytes());
    if let Some(remote) = &context.remote
        && let Some(answer) = remote.lookup(partition, &payment_ref).await
    {
        let json = [(header::CONTENT_TYPE, "application/json")];
        return match answer?.read(&payment_ref)? {
            OwnerAnswer::Recorded { body, .. } => Ok((StatusCode::OK, json, body).into_response()),
            OwnerAnswer::NotRecorded => Err(donation_not_found(&payment_ref)),
            OwnerAnswer::Refused(refusal) => Ok(refusal.into_response()),
        };
    }
    local_donation(&context, payment_ref)
        .await
        .map(IntoResponse::into_response)
}

fn donation_not_found(payment_ref: &str) -> ApiError {
    ApiError::not_found(
        "donation_not_found",
        format!("no donation is recorded for payment {payment_ref:?}"),
    )
}

/// A donation in a partition this node runs.
async fn local_donation(
    context: &QueryContext,
    payment_ref: String,
) -> Result<axum::Json<DonationView>, ApiError> {
    let found = context
        .donation_indexes
        .recorded(&*context.log, &payment_ref)
        .await?
        .ok_or_else(|| donation_not_found(&payment_ref))?;
    Ok(axum::Json(DonationView {
        donation: recorded_donation(found.event, found.partition, found.offset),
        recorded_at: rfc3339(found.append_time_ms),
        duplicates: found.resends.duplicates,
        conflicts: found.resends.conflicts,
    }))
}
