//! Admin routes (bearer token): campaigns, their close and reconciliation, the notification
//! outbox, checkpoints.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use subtle::ConstantTimeEq;
use tally_api::ApiError;
use tally_api::server::PathParameter;
use tally_api::views::CampaignView;
use tally_pipeline::campaigns::{self, Campaign, CampaignRegistry, CampaignRequest, ClosingNode};
use tally_pipeline::checkpoint::verify::{Verdict, verify_partition};
use tally_pipeline::checkpoint::{CheckpointInfo, savepoint};
use tally_pipeline::event::EventTime;
use tally_pipeline::log::{Offset, PartitionId};
use tally_pipeline::operators::campaign_totals::CampaignTotal;
use tally_pipeline::operators::retractions::CampaignRetractions;
use tally_query::views::campaign_view;

use super::AppState;
use super::notifications::{PAGE_LIMIT_DEFAULT, PAGE_LIMIT_MAX, Page};

/// Admin request bodies are small: they are read in the callback-sized body slots.
const ADMIN_BODY_BYTES_MAX: usize = 16 * 1024;
const _: () = assert!(ADMIN_BODY_BYTES_MAX <= tally_ingest::body::CALLBACK_BODY_BYTES_MAX);
/// How long a close waits for the pipeline to apply the log up to the close point.
const CLOSE_WAIT_MAX: Duration = Duration::from_secs(60);

pub fn routes(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/campaigns", post(create_campaign))
        .route("/v1/campaigns/{campaign_id}/close", post(close_campaign))
        .route(
            "/v1/campaigns/{campaign_id}/ledger.csv",
            get(super::ledger::ledger_csv),
        )
        .route("/v1/notifications", get(list_notifications))
        .route("/v1/notifications/ack", post(ack_notifications))
        .route("/v1/checkpoints", get(list_checkpoints))
        .route("/v1/checkpoints/savepoint", post(create_savepoint))
        .route("/v1/checkpoints/verify", post(verify_checkpoints))
        .with_state(state)
}

pub(super) fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            ApiError::unauthorized(
                "admin_token_missing",
                "admin routes need Authorization: Bearer <admin token>",
            )
        })?;
    if bool::from(presented.as_bytes().ct_eq(state.admin_token.as_bytes())) {
        Ok(())
    } else {
        Err(ApiError::unauthorized(
            "admin_token_invalid",
            "the admin token is not valid",
        ))
    }
}

/// An admin request's JSON body: read as every body is (type, encoding, size, in a body slot
/// within the read timeout), and parsed into `T` with no key given twice.
async fn json_body<T: DeserializeOwned>(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<T, ApiError> {
    let bytes = state
        .ingest
        .bodies
        .read_json(headers, body, ADMIN_BODY_BYTES_MAX)
        .await?;
    Ok(tally_ingest::body::typed(&bytes)?)
}

fn invalid(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_field", message).with_field(field)
}

async fn create_campaign(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<CampaignView>), ApiError> {
    authorize(&state, &headers)?;
    let request: CampaignRequest = json_body(&state, &headers, body).await?;
    let definition = request.validate()?;
    let now = EventTime(state.clock.now_ms());
    let created = state.campaigns.create(definition, now).await?;
    Ok((
        StatusCode::CREATED,
        Json(campaign_view(&created, Default::default(), None)),
    ))
}

/// Closes the campaign ([`campaigns::close_campaign`]) from this node: any node can close, and every step
/// is decided by the control log, so racing closes agree.
async fn close_campaign(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    PathParameter(campaign_id): PathParameter,
) -> Result<Json<CampaignView>, ApiError> {
    authorize(&state, &headers)?;
    let _one_close_at_a_time = state.close_lock.lock().await;
    let closed = campaigns::close_campaign(
        &ServingNode(&state),
        &state.campaigns,
        state.log.as_ref(),
        state.clock.as_ref(),
        &campaign_id,
    )
    .await?;
    Ok(Json(view(&state, &closed)))
}

fn view(state: &AppState, campaign: &Campaign) -> CampaignView {
    campaign_view(
        campaign,
        state
            .read_model
            .campaign_amounts(&campaign.definition.campaign_id),
        None,
    )
}

/// A close run by a serving node, among the other live nodes taking donations.
struct ServingNode<'a>(&'a AppState);

impl ClosingNode for ServingNode<'_> {
    type Error = ApiError;

    /// Asks every node to stop taking donations and waits until every live one says it did.
    async fn stop_intake(
        &self,
        registry: &CampaignRegistry,
        campaign_id: &str,
    ) -> Result<Campaign, ApiError> {
        let campaign = registry
            .request_close(campaign_id, &self.0.node.node_id)
            .await?;
        if campaign.close_offsets.is_none() {
            wait_until_intake_stopped(self.0, campaign_id).await?;
        }
        Ok(campaign)
    }

    async fn apply_through(&self, close_offsets: &[Offset]) -> Result<(), ApiError> {
        wait_until_applied(self.0, close_offsets).await
    }

    fn running_total(&self, campaign_id: &str) -> CampaignTotal {
        self.0.read_model.campaign_total(campaign_id)
    }

    fn running_retractions(&self, campaign_id: &str) -> Vec<(Offset, CampaignRetractions)> {
        self.0
            .read_model
            .campaign_retractions_by_partition(campaign_id)
    }
}

/// Waits until every live node has said it takes no more donations for the campaign.
async fn wait_until_intake_stopped(state: &AppState, campaign_id: &str) -> Result<(), ApiError> {
    // Who is live now: a node that joined before the close request was folded must confirm.
    state.node.refresh().await;
    let mut changes = state.campaigns.subscribe();
    let waiting = || -> Vec<String> {
        let stopped = state
            .campaigns
            .get(campaign_id)
            .map(|c| c.intake_stopped.clone())
            .unwrap_or_default();
        state
            .node
            .live_node_ids()
            .into_iter()
            .filter(|node| !stopped.contains(node))
            .collect()
    };
    let wait = async {
        loop {
            if waiting().is_empty() {
                return;
            }
            // Also look again now and then: a node whose lease runs out is no longer waited for.
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
    };
    if tokio::time::timeout(CLOSE_WAIT_MAX, wait).await.is_err() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_caught_up",
            format!(
                "nodes {} have not confirmed that they stopped taking donations for the campaign; retry the close",
                waiting().join(", ")
            ),
        )
        .with_retry_after(5));
    }
    Ok(())
}

async fn wait_until_applied(state: &AppState, close_offsets: &[Offset]) -> Result<(), ApiError> {
    let mut changes = state.read_model.subscribe();
    let caught_up = || {
        state
            .read_model
            .progress()
            .iter()
            .zip(close_offsets)
            .all(|(progress, close)| progress.applied_offset >= *close)
    };
    let wait = async {
        while !caught_up() {
            if changes.changed().await.is_err() {
                break;
            }
        }
    };
    tokio::time::timeout(CLOSE_WAIT_MAX, wait)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_caught_up",
                "the pipeline has not applied the log up to the close point yet; retry the close",
            )
            .with_retry_after(5)
        })?;
    Ok(())
}

async fn list_notifications(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(parameters): Query<HashMap<String, String>>,
) -> Result<Json<Page>, ApiError> {
    authorize(&state, &headers)?;
    let number = |name: &str| -> Result<Option<u64>, ApiError> {
        parameters
            .get(name)
            .map(|text| {
                text.parse::<u64>()
                    .map_err(|_| invalid(name, "must be a non-negative integer"))
            })
            .transpose()
    };
    let partition = PartitionId::try_from(number("partition")?.unwrap_or(0))
        .map_err(|_| invalid("partition", "must be below the partition count"))?;
    let after = number("after")?;
    let limit = match number("limit")? {
        None => PAGE_LIMIT_DEFAULT,
        Some(0) => {
            return Err(invalid(
                "limit",
                format!("must be from 1 to {PAGE_LIMIT_MAX} (larger is read as {PAGE_LIMIT_MAX})"),
            ));
        }
        Some(limit) => usize::try_from(limit)
            .unwrap_or(usize::MAX)
            .min(PAGE_LIMIT_MAX),
    };
    Ok(Json(
        state.notifications.page(partition, after, limit).await?,
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Ack {
    partition: PartitionId,
    next_offset: Offset,
}

async fn ack_notifications(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&state, &headers)?;
    let ack: Ack = json_body(&state, &headers, body).await?;
    let next_offset = state.notifications.ack(ack.partition, ack.next_offset)?;
    Ok(Json(
        serde_json::json!({"partition": ack.partition, "next_offset": next_offset}),
    ))
}

async fn list_checkpoints(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Vec<Option<CheckpointInfo>>>, ApiError> {
    authorize(&state, &headers)?;
    Ok(Json(state.store.list()?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavepointRequest {
    /// A file name under `<data-dir>/savepoints/` (see `savepoint::check_name`).
    name: String,
}

/// Writes a savepoint of the running server's committed state into its data directory's
/// `savepoints/`, under a new name.
async fn create_savepoint(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&state, &headers)?;
    let request: SavepointRequest = json_body(&state, &headers, body).await?;
    let name = savepoint::check_name(&request.name)?.to_owned();
    let store = Arc::clone(&state.store);
    let data_dir = state.data_dir.clone();
    let now_ms = state.clock.now_ms();
    let written = name.clone();
    let (savepoint, path) = tokio::task::spawn_blocking(move || {
        savepoint::create_named(&store, &data_dir, &written, now_ms)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(Json(serde_json::json!({
        "name": name,
        "path": path,
        "offsets": savepoint.offsets(),
    })))
}

/// Rebuilds each partition's state from the log up to its committed offset, in memory, and
/// compares digests with the committed checkpoints.
async fn verify_checkpoints(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&state, &headers)?;
    let pipeline = state.pipeline.clone();
    let partitions = tokio::task::spawn_blocking(move || {
        let store = pipeline.store();
        (0..store.partition_count())
            .map(|partition| verdict_json(partition, &verify_partition(&pipeline, partition)))
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?;
    let ok = partitions.iter().all(|p| p["ok"] == true);
    Ok(Json(
        serde_json::json!({"ok": ok, "partitions": partitions}),
    ))
}

/// One partition's [`Verdict`] as the verify route answers it.
fn verdict_json(partition: PartitionId, verdict: &Verdict) -> serde_json::Value {
    match verdict {
        Verdict::NoCheckpoint => {
            serde_json::json!({"partition": partition, "ok": true, "checkpoint": null})
        }
        Verdict::Unreadable(error) => {
            serde_json::json!({"partition": partition, "ok": false, "error": error.to_string()})
        }
        Verdict::RebuildFailed(error) => {
            serde_json::json!({"partition": partition, "ok": false, "error": error.to_string()})
        }
        Verdict::Compared {
            offset,
            checkpoint_digest,
            rebuilt_digest,
        } => serde_json::json!({
            "partition": partition,
            "offset": offset,
            "checkpoint_digest": format!("{checkpoint_digest:016x}"),
            "rebuilt_digest": format!("{rebuilt_digest:016x}"),
            "ok": verdict.ok(),
        }),
    }
}
