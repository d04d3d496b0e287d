//! An ingest router over a real embedded log and campaign registry in a temporary directory,
//! with the log's failures and another node's answers injected, driven without a socket.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use tally_api::ApiError;
use tally_api::remote::{RemoteAnswer, RemoteDonations};
use tally_api::signature::{SigningSecret, sign};
use tally_ingest::body::{BodyReadLimits, BodyReads};
use tally_ingest::rate_limit::{RateLimitConfig, RateLimiter};
use tally_ingest::routes::{IngestContext, IngestLimits, routes};
use tally_pipeline::campaigns::{CampaignDefinition, CampaignRegistry};
use tally_pipeline::checkpoint::CheckpointStore;
use tally_pipeline::clock::{Clock, ManualClock};
use tally_pipeline::event::EventTime;
use tally_pipeline::log::{
    AppendAck, EmbeddedLog, EmbeddedLogOptions, KeyedRecord, Log, LogError, LogRecord, Offset,
    PartitionId,
};
use tally_pipeline::read_model::ReadModel;
use tally_pipeline::runner::{Pipeline, PipelineConfig};
use tempfile::TempDir;
use tower::ServiceExt;

pub const SECRET: &str = "ingest-test-secret";
/// 2026-11-24T18:30:00Z: the clock of every test.
pub const NOW_MS: i64 = 1_795_545_000_000;
pub const PARTITIONS: u32 = 4;
/// Requests admitted to work at once: the tests send a few at a time.
const ADMITTED_REQUESTS_MAX: usize = 64;

/// Makes the error every log call answers while set.
pub type Failure = fn() -> LogError;

/// The embedded log, failing every call with `failure` while it is set.
#[derive(Debug)]
pub struct FailingLog {
    inner: EmbeddedLog,
    failure: Mutex<Option<Failure>>,
}

impl FailingLog {
    pub fn fail_with(&self, failure: Option<Failure>) {
        *self.failure.lock().unwrap() = failure;
    }

    fn check(&self) -> Result<(), LogError> {
        match *self.failure.lock().unwrap() {
            Some(failure) => Err(failure()),
            None => Ok(()),
        }
    }
}

#[async_trait]
impl Log for FailingLog {
    fn partition_count(&self) -> u32 {
        self.inner.partition_count()
    }

    async fn append(
        &self,
        partition: PartitionId,
        records: Vec<KeyedRecord>,
    ) -> Result<AppendAck, LogError> {
        self.check()?;
        self.inner.append(partition, records).await
    }

    async fn read(
        &self,
        partition: PartitionId,
        from: Offset,
        records_max: usize,
    ) -> Result<Vec<LogRecord>, LogError> {
        self.check()?;
        self.inner.read(partition, from, records_max).await
    }

    async fn end_offset(&self, partition: PartitionId) -> Result<Offset, LogError> {
        self.check()?;
        self.inner.end_offset(partition).await
    }

    async fn wait_for_offset(
        &self,
        partition: PartitionId,
        offset: Offset,
    ) -> Result<(), LogError> {
        self.check()?;
        self.inner.wait_for_offset(partition, offset).await
    }
}

/// Another node that runs every partition and answers every look-up with `answer`.
#[derive(Debug, Default)]
pub struct OtherNode {
    pub answer: Mutex<Option<RemoteAnswer>>,
}

impl OtherNode {
    pub fn answers(&self, status: u16, body: &str) {
        *self.answer.lock().unwrap() = Some(RemoteAnswer {
            status: StatusCode::from_u16(status).unwrap(),
            retry_after_s: None,
            body: Bytes::from(body.to_owned()),
        });
    }
}

#[async_trait]
impl RemoteDonations for OtherNode {
    async fn lookup(
        &self,
        _partition: PartitionId,
        _payment_ref: &str,
    ) -> Option<Result<RemoteAnswer, ApiError>> {
        let answer = self.answer.lock().unwrap().clone();
        Some(Ok(
            answer.expect("the test says what the other node answers")
        ))
    }
}

/// The ingest routes on their own, over a temporary directory.
pub struct Ingest {
    pub router: Router,
    pub log: Arc<FailingLog>,
    pub campaigns: Arc<CampaignRegistry>,
    pub other_node: Arc<OtherNode>,
    _dir: TempDir,
}

/// An answer: status, `Retry-After` if any, and the JSON body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<String>,
    pub body: serde_json::Value,
}

impl Answer {
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or_default()
    }
}

impl Ingest {
    /// With `other_node`, every partition is run by another node (a shared log).
    pub async fn start(other_node: bool) -> Self {
        let dir = TempDir::new().unwrap();
        let options = EmbeddedLogOptions {
            partition_count: PARTITIONS,
            ..EmbeddedLogOptions::default()
        };
        let log = Arc::new(FailingLog {
            inner: EmbeddedLog::open(&dir.path().join("log"), options).unwrap(),
            failure: Mutex::new(None),
        });
        let campaigns = Arc::new(
            CampaignRegistry::open_embedded(&dir.path().join("control"))
                .await
                .unwrap(),
        );
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(NOW_MS));
        let (store, _) = CheckpointStore::open(&dir.path().join("state"), PARTITIONS).unwrap();
        let pipeline = Pipeline::new(
            Arc::clone(&log) as Arc<dyn Log>,
            Arc::new(store),
            Arc::new(ReadModel::new(PARTITIONS)),
            Arc::clone(&clock),
            PipelineConfig::default(),
        )
        .unwrap();
        let other = Arc::new(OtherNode::default());
        let context = IngestContext {
            log: Arc::clone(&log) as Arc<dyn Log>,
            campaigns: Arc::clone(&campaigns),
            intake: Default::default(),
            donation_indexes: Arc::clone(pipeline.donation_indexes()),
            remote: other_node.then(|| Arc::clone(&other) as Arc<dyn RemoteDonations>),
            signing_secret: SigningSecret::from_text(SECRET),
            limits: IngestLimits::default(),
            bodies: Arc::new(BodyReads::new(BodyReadLimits::default())),
            admitted: Arc::new(tokio::sync::Semaphore::new(ADMITTED_REQUESTS_MAX)),
            rate_limiter: RateLimiter::new(RateLimitConfig::default(), Arc::clone(&clock)).unwrap(),
            clock,
            metrics: Default::default(),
        };
        Self {
            router: routes(Arc::new(context)),
            log,
            campaigns,
            other_node: other,
            _dir: dir,
        }
    }

    pub async fn create_campaign(&self, campaign_id: &str) {
        let definition = CampaignDefinition {
            campaign_id: campaign_id.to_owned(),
            name: campaign_id.to_owned(),
            currency: "USD".to_owned(),
            goal_cents: None,
            starts_at: None,
            ends_at: None,
        };
        self.campaigns
            .create(definition, EventTime(NOW_MS))
            .await
            .unwrap();
    }

    /// Stops the campaign taking new donations (it shows as closing).
    pub async fn close_campaign(&self, campaign_id: &str) {
        self.campaigns
            .request_close(campaign_id, "node-a")
            .await
            .unwrap();
    }

    /// POSTs a signed JSON body.
    pub async fn post(&self, path: &str, body: &[u8]) -> Answer {
        let signature = sign(&SigningSecret::from_text(SECRET), NOW_MS / 1000, body);
        let request = Request::post(path)
            .header("Content-Type", "application/json")
            .header("Tally-Signature", signature)
            .body(Body::from(body.to_vec()))
            .unwrap();
        self.send(request).await
    }

    pub async fn send(&self, request: Request<Body>) -> Answer {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|value| value.to_str().unwrap().to_owned());
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        Answer {
            status,
            retry_after,
            body,
        }
    }
}

/// A valid donation body.
pub fn donation(payment_ref: &str, campaign_id: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "payment_ref": payment_ref,
        "order_id": format!("ord-{payment_ref}"),
        "user_id": format!("usr-{payment_ref}"),
        "campaign_id": campaign_id,
        "amount_cents": 100,
        "paid_at": "2026-11-24T18:00:00Z",
    }))
    .unwrap()
}
