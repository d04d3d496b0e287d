//! `GET /v1/campaigns/{campaign_id}/ledger.csv`: a campaign's ledger streamed as CSV — every
//! recorded donation and every refund or chargeback applied to them, in log order, with their
//! place in the log ([`tally_pipeline::export`]). It is read up to the offsets the committed
//! totals reflect when the request comes, so its sums are those totals: the donations' amounts
//! `gross_cents`, the retractions' `refunded_cents`, the `net_cents` column `total_cents`.
//!
//! The body is written a batch of log records at a time as the client reads it: memory holds a
//! batch, however long the ledger. A failure once the body has started (the log gone) ends the
//! response short, without its last line, which the client sees as a cut connection.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tally_api::ApiError;
use tally_api::server::PathParameter;
use tally_pipeline::control::cluster::partition_set::format_ranges;
use tally_pipeline::event::EventTime;
use tally_pipeline::export::{CSV_HEADER, LedgerFilter, PartitionLedger, csv_line};
use tally_pipeline::log::{Log, PartitionId};

use super::AppState;
use super::admin::authorize;

/// The export of one campaign, as the response body reads it.
struct LedgerStream {
    log: Arc<dyn Log>,
    filter: LedgerFilter,
    currency: String,
    header_sent: bool,
    partitions: VecDeque<PartitionLedger>,
}

impl LedgerStream {
    /// The next chunk of the body; `None` at the end.
    async fn next_chunk(&mut self) -> Option<Result<Bytes, std::io::Error>> {
        if !self.header_sent {
            self.header_sent = true;
            return Some(Ok(Bytes::from_static(CSV_HEADER.as_bytes())));
        }
        loop {
            let partition = self.partitions.front_mut()?;
            match partition.next_rows(&*self.log, &self.filter).await {
                Ok(Some(rows)) if rows.is_empty() => continue,
                Ok(Some(rows)) => {
                    let mut text = String::with_capacity(rows.len() * 128);
                    for row in &rows {
                        csv_line(row, &self.currency, &mut text);
                    }
                    return Some(Ok(Bytes::from(text)));
                }
                Ok(None) => {
                    self.partitions.pop_front();
                }
                Err(error) => {
                    tracing::error!(%error, campaign_id = %self.filter.campaign_id, "ledger export cut short");
                    self.partitions.clear();
                    return Some(Err(std::io::Error::other(error.to_string())));
                }
            }
        }
    }
}

pub async fn ledger_csv(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    PathParameter(campaign_id): PathParameter,
    Query(parameters): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let campaign = state.campaigns.get(&campaign_id).ok_or_else(|| {
        ApiError::not_found(
            "campaign_not_found",
            format!("there is no campaign {campaign_id:?}"),
        )
    })?;
    let time = |name: &str| -> Result<Option<i64>, ApiError> {
        parameters
            .get(name)
            .map(|text| {
                EventTime::parse_rfc3339(text)
                    .map(EventTime::unix_ms)
                    .map_err(|e| {
                        ApiError::new(StatusCode::BAD_REQUEST, "invalid_field", e.to_string())
                            .with_field(name)
                    })
            })
            .transpose()
    };
    let filter = LedgerFilter {
        campaign_id: campaign_id.clone(),
        from_ms: time("from")?,
        to_ms: time("to")?,
    };
    let owned = state.notifications.owned();
    let all: Vec<PartitionId> = (0..state.log.partition_count()).collect();
    if owned != all {
        let elsewhere: Vec<PartitionId> = all.into_iter().filter(|p| !owned.contains(p)).collect();
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "partitions_elsewhere",
            format!(
                "partitions {} are run by other nodes: export from a node that runs every partition",
                format_ranges(&elsewhere)
            ),
        ));
    }
    let indexes = state.pipeline.donation_indexes();
    let partitions = state
        .read_model
        .progress()
        .into_iter()
        .map(|progress| {
            PartitionLedger::new(
                progress.partition,
                progress.applied_offset,
                indexes.index(progress.partition),
                indexes.retractions(progress.partition),
            )
        })
        .collect();
    let stream = LedgerStream {
        log: Arc::clone(&state.log),
        filter,
        currency: campaign.definition.currency.clone(),
        header_sent: false,
        partitions,
    };
    let body = futures_util::stream::unfold(stream, |mut stream| async move {
        let chunk = stream.next_chunk().await?;
        Some((chunk, stream))
    });
    let disposition = format!("attachment; filename=\"{campaign_id}-ledger.csv\"");
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        Body::from_stream(body),
    )
        .into_response())
}
