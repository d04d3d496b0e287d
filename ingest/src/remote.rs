//! Donations recorded in partitions another node runs. Only the node that runs a partition's
//! pipeline holds its dedupe index, so a look-up of a donation there is asked of that node.

use async_trait::async_trait;
use axum::body::Bytes;
use axum::http::StatusCode;
use tally_pipeline::log::{Offset, PartitionId};

use crate::error::ApiError;

/// Another node's answer to `GET /v1/donations/{payment_ref}`.
#[derive(Debug, Clone)]
pub struct RemoteAnswer {
    pub status: StatusCode,
    /// Its JSON body, as the owner sent it.
    pub body: Bytes,
}

impl RemoteAnswer {
    /// Where the donation is recorded, if the owner found it.
    pub fn placement(&self) -> Option<(PartitionId, Offset)> {
        if self.status != StatusCode::OK {
            return None;
        }
        let value: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
        let partition = PartitionId::try_from(value["partition"].as_u64()?).ok()?;
        Some((partition, value["offset"].as_u64()?))
    }
}

/// Asks the node that runs a partition.
#[async_trait]
pub trait RemoteDonations: Send + Sync + std::fmt::Debug {
    /// `None` when this node runs `partition` itself; otherwise the owner's answer, or an
    /// error when no live node runs it or the owner cannot be reached.
    async fn lookup(
        &self,
        partition: PartitionId,
        payment_ref: &str,
    ) -> Option<Result<RemoteAnswer, ApiError>>;
}
