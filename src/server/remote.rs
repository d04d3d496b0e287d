//! Look-ups of donations in partitions another node runs: forwarded to that node over HTTP.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::http::StatusCode;
use tally_api::ApiError;
use tally_api::remote::{RemoteAnswer, RemoteDonations};
use tally_pipeline::log::PartitionId;

use super::node::Node;

/// A forwarded look-up gives up after this long.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);
/// The path segment of a `payment_ref` needs no escaping: `[A-Za-z0-9._:-]` only; anything
/// else is refused by the owner as it would be here.
const PAYMENT_REF_SAFE: fn(char) -> bool =
    |c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-');

#[derive(Debug)]
pub struct ForwardToOwner {
    pub node: Arc<Node>,
    pub client: reqwest::Client,
}

#[async_trait]
impl RemoteDonations for ForwardToOwner {
    async fn lookup(
        &self,
        partition: PartitionId,
        payment_ref: &str,
    ) -> Option<Result<RemoteAnswer, ApiError>> {
        if self.node.owns(partition) {
            return None;
        }
        Some(self.ask_owner(partition, payment_ref).await)
    }
}

impl ForwardToOwner {
    async fn ask_owner(
        &self,
        partition: PartitionId,
        payment_ref: &str,
    ) -> Result<RemoteAnswer, ApiError> {
        if !payment_ref.chars().all(PAYMENT_REF_SAFE) {
            return Ok(not_found(payment_ref));
        }
        let owner = self.node.remote_owner(partition).ok_or_else(|| {
            owner_unavailable(format!(
                "no live node runs partition {partition} right now; retry shortly"
            ))
        })?;
        let url = format!(
            "{}/v1/donations/{payment_ref}",
            owner.node.advertise.trim_end_matches('/')
        );
        let unreachable = |error: reqwest::Error| {
            owner_unavailable(format!(
                "node {} that runs partition {partition} did not answer: {error}",
                owner.node.node_id
            ))
        };
        let response = self
            .client
            .get(&url)
            .timeout(FORWARD_TIMEOUT)
            .send()
            .await
            .map_err(unreachable)?;
        let status =
            StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        let retry_after_s = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse().ok());
        let body = response.bytes().await.map_err(unreachable)?;
        Ok(RemoteAnswer {
            status,
            retry_after_s,
            body,
        })
    }
}

fn owner_unavailable(message: String) -> ApiError {
    ApiError::owner_unavailable(message)
}

fn not_found(payment_ref: &str) -> RemoteAnswer {
    let body = serde_json::json!({"error": {
        "code": "donation_not_found",
        "message": format!("no donation is recorded for payment {payment_ref:?}"),
    }});
    RemoteAnswer {
        status: StatusCode::NOT_FOUND,
        retry_after_s: None,
        body: axum::body::Bytes::from(body.to_string()),
    }
}
