//! The page routes: `GET /`, `/campaigns/{campaign_id}`, `/ops` and `/assets/{name}`.
//!
//! Pages read what the JSON API reads (the query context's campaigns, totals and freshness,
//! and the node's operations view) and render it on the server; their scripts then follow the
//! JSON API and its live stream.

mod campaign;
mod index;
mod ops;

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use maud::{Markup, html};
use tally_api::ApiError;
use tally_api::server::PathParameter;
use tally_api::views::OpsView;
use tally_query::routes::QueryContext;

use crate::layout::page;

/// Where the operator's view comes from: the node, which knows its partitions, counters and
/// cluster.
#[async_trait::async_trait]
pub trait OpsSource: Send + Sync + std::fmt::Debug {
    async fn ops_view(&self) -> OpsView;
}

/// What the pages read.
#[derive(Debug, Clone)]
pub struct PagesContext {
    pub query: Arc<QueryContext>,
    pub ops: Arc<dyn OpsSource>,
}

pub fn routes(context: PagesContext) -> Router {
    Router::new()
        .route("/", get(index::index_page))
        .route("/campaigns/{campaign_id}", get(campaign::campaign_page))
        .route("/ops", get(ops::ops_page))
        .route("/assets/{name}", get(asset))
        .with_state(context)
}

/// A page answer: HTML, never cached (its numbers move).
fn html_page(markup: Markup) -> Response {
    (
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Html(markup.into_string()),
    )
        .into_response()
}

/// An error as a page a person reads: the status, the stable code and the message.
fn error_page(error: &ApiError) -> Response {
    let status = error.status;
    let markup = page(
        &status.to_string(),
        html! {
            section.error {
                h1 { (status.canonical_reason().unwrap_or("Error")) }
                p { (error.message) }
                p.code { "Error code: " code { (error.code) } }
                p { a href="/" { "All campaigns" } }
            }
        },
        &[],
    );
    (status, Html(markup.into_string())).into_response()
}

async fn asset(PathParameter(name): PathParameter) -> Result<Response, ApiError> {
    let asset = crate::assets::find(&name)
        .ok_or_else(|| ApiError::not_found("asset_not_found", format!("no asset {name:?}")))?;
    let cache = if asset.immutable {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, asset.content_type),
            (header::CACHE_CONTROL, cache),
        ],
        asset.body,
    )
        .into_response())
}
