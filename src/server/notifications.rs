//! Donor notifications: the outbox, delivered to a webhook or paged through by a consumer.
//!
//! The outbox of a partition is its recorded donations in log order (the dedupe index tells a
//! recorded donation from a duplicate). A cursor per partition — stored beside the checkpoints,
//! outside the derived state — says up to which offset everything was delivered. With
//! `--notify-webhook`, one task per partition POSTs each notification, signed like a callback and
//! with `Idempotency-Key: <payment_ref>`, retrying with backoff until it is acknowledged (2xx),
//! then moves the cursor: delivery is at least once. Without a webhook, `GET /v1/notifications`
//! pages through the outbox and `POST /v1/notifications/ack` moves the cursor.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use tally_api::ApiError;
use tally_api::signature::{self, SigningSecret};
use tally_api::views::RecordedDonation;
use tally_pipeline::checkpoint::CheckpointStore;
use tally_pipeline::clock::Clock;
use tally_pipeline::event::envelope;
use tally_pipeline::log::{Log, Offset, PartitionId};
use tally_pipeline::read_model::{PartitionProgress, ReadModel};
use tally_pipeline::runner::DonationIndexes;
use tally_query::views::recorded_donation;
use tokio::sync::watch;

/// Records read from the log per scan step.
const SCAN_BATCH: usize = 512;
/// Notifications a page may ask for: a page of them is about 250 KB of JSON.
pub const PAGE_LIMIT_MAX: usize = 1000;
/// Notifications in a page that does not say how many.
pub const PAGE_LIMIT_DEFAULT: usize = 100;
const RETRY_DELAY_MIN: Duration = Duration::from_millis(100);
/// Backoff stops growing here: a receiver that is down for long is still retried every 10 s.
const RETRY_DELAY_MAX: Duration = Duration::from_secs(10);
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// One notification: a recorded donation, as the donor is told about it.
pub type Notification = RecordedDonation;

#[derive(Debug, Serialize)]
pub struct Page {
    pub partition: PartitionId,
    pub notifications: Vec<Notification>,
    /// Acknowledge this to mark the page delivered; ask from it for the next page.
    pub next_offset: Offset,
}

#[derive(Debug)]
pub struct Webhook {
    pub url: String,
    pub secret: SigningSecret,
    pub client: reqwest::Client,
}

#[derive(Debug)]
pub struct Notifications {
    store: Arc<CheckpointStore>,
    log: Arc<dyn Log>,
    donation_indexes: Arc<DonationIndexes>,
    read_model: Arc<ReadModel>,
    clock: Arc<dyn Clock>,
    cursors: Vec<AtomicU64>,
    webhook: Option<Webhook>,
    /// The partitions this node runs: only they have an outbox here.
    owned: Vec<PartitionId>,
}

impl Notifications {
    pub fn new(
        store: Arc<CheckpointStore>,
        log: Arc<dyn Log>,
        donation_indexes: Arc<DonationIndexes>,
        read_model: Arc<ReadModel>,
        clock: Arc<dyn Clock>,
        webhook: Option<Webhook>,
        owned: Vec<PartitionId>,
    ) -> anyhow::Result<Self> {
        let cursors = (0..log.partition_count())
            .map(|p| store.notification_cursor(p).map(AtomicU64::new))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            store,
            log,
            donation_indexes,
            read_model,
            clock,
            cursors,
            webhook,
            owned,
        })
    }

    /// Applied records not yet scanned, per partition.
    pub fn backlog(&self, progress: &[PartitionProgress]) -> Vec<u64> {
        progress
            .iter()
            .map(|p| {
                if !self.owned.contains(&p.partition) {
                    return 0;
                }
                p.applied_offset
                    .saturating_sub(self.cursors[p.partition as usize].load(Ordering::Relaxed))
            })
            .collect()
    }

    fn partition_checked(&self, partition: PartitionId) -> Result<(), ApiError> {
        if (partition as usize) >= self.cursors.len() {
            return Err(ApiError::new(
                axum::http::StatusCode::BAD_REQUEST,
                "invalid_field",
                format!("must be below the partition count {}", self.cursors.len()),
            )
            .with_field("partition"));
        }
        if !self.owned.contains(&partition) {
            return Err(ApiError::new(
                axum::http::StatusCode::CONFLICT,
                "partition_not_owned",
                format!(
                    "partition {partition} is run by another node, which keeps its outbox; this \
                     node runs {}",
                    tally_pipeline::cluster::partition_set::format_ranges(&self.owned)
                ),
            )
            .with_field("partition"));
        }
        Ok(())
    }

    /// Up to `limit` notifications of `partition` from `after` (default: the cursor) on.
    pub async fn page(
        &self,
        partition: PartitionId,
        after: Option<Offset>,
        limit: usize,
    ) -> Result<Page, ApiError> {
        self.partition_checked(partition)?;
        let from =
            after.unwrap_or_else(|| self.cursors[partition as usize].load(Ordering::Relaxed));
        let until = self.read_model.progress()[partition as usize].applied_offset;
        let (notifications, next_offset) = self
            .scan(partition, from, until, limit.clamp(1, PAGE_LIMIT_MAX))
            .await?;
        Ok(Page {
            partition,
            notifications,
            next_offset,
        })
    }

    /// Marks everything below `next_offset` delivered. The cursor never moves back.
    pub fn ack(&self, partition: PartitionId, next_offset: Offset) -> Result<Offset, ApiError> {
        self.partition_checked(partition)?;
        let applied = self.read_model.progress()[partition as usize].applied_offset;
        let next_offset = next_offset.min(applied);
        let cursor = &self.cursors[partition as usize];
        let previous = cursor.fetch_max(next_offset, Ordering::SeqCst);
        let now = previous.max(next_offset);
        if now != previous {
            self.store.set_notification_cursor(partition, now)?;
        }
        Ok(now)
    }

    /// Recorded donations among records `from..until`, at most `limit`; and where to go on from.
    async fn scan(
        &self,
        partition: PartitionId,
        from: Offset,
        until: Offset,
        limit: usize,
    ) -> Result<(Vec<Notification>, Offset), ApiError> {
        let mut found = Vec::new();
        let mut next = from;
        while next < until && found.len() < limit {
            let want = ((until - next) as usize).min(SCAN_BATCH);
            let records = self.log.read(partition, next, want).await?;
            let Some(last) = records.last().map(|r| r.offset) else {
                break;
            };
            let index = self.donation_indexes.index(partition);
            for record in records {
                let event = envelope::decode(&record.value)?;
                let recorded = index
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .is_recorded_at(&event.payment_ref, record.offset);
                next = record.offset + 1;
                if recorded {
                    found.push(recorded_donation(event, partition, record.offset));
                    if found.len() >= limit {
                        break;
                    }
                }
            }
            debug_assert!(next <= last + 1);
        }
        Ok((found, next))
    }

    /// One delivery task per partition, until `shutdown`.
    pub fn spawn_delivery(
        self: &Arc<Self>,
        shutdown: watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        if self.webhook.is_none() {
            return Vec::new();
        }
        self.owned
            .iter()
            .map(|&partition| {
                let notifications = Arc::clone(self);
                let shutdown = shutdown.clone();
                tokio::spawn(
                    async move { notifications.deliver_partition(partition, shutdown).await },
                )
            })
            .collect()
    }

    async fn deliver_partition(&self, partition: PartitionId, mut shutdown: watch::Receiver<bool>) {
        let mut changes = self.read_model.subscribe();
        while !*shutdown.borrow() {
            let cursor = self.cursors[partition as usize].load(Ordering::Relaxed);
            let applied = self.read_model.progress()[partition as usize].applied_offset;
            if cursor >= applied {
                tokio::select! {
                    _ = changes.changed() => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
            let (batch, next) = match self.scan(partition, cursor, applied, SCAN_BATCH).await {
                Ok(scanned) => scanned,
                Err(error) => {
                    tracing::warn!(
                        partition,
                        "notification scan failed, retrying: {}",
                        error.message
                    );
                    tokio::time::sleep(RETRY_DELAY_MAX).await;
                    continue;
                }
            };
            for notification in &batch {
                if !self.deliver(notification, &mut shutdown).await {
                    return;
                }
            }
            if let Err(error) = self.ack(partition, next) {
                tracing::warn!(
                    partition,
                    "cannot store the notification cursor: {}",
                    error.message
                );
            }
        }
    }

    /// Delivers one notification, retrying with backoff; false if shutdown came first.
    async fn deliver(
        &self,
        notification: &Notification,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        let webhook = self
            .webhook
            .as_ref()
            .expect("delivery runs only with a webhook");
        let body = serde_json::to_vec(notification).expect("a notification serializes");
        let mut delay = RETRY_DELAY_MIN;
        loop {
            let signature =
                signature::sign(&webhook.secret, self.clock.now_ms().div_euclid(1000), &body);
            let attempt = webhook
                .client
                .post(&webhook.url)
                .header("Content-Type", "application/json")
                .header(signature::SIGNATURE_HEADER, signature)
                .header("Idempotency-Key", &notification.payment_ref)
                .timeout(DELIVERY_TIMEOUT)
                .body(body.clone())
                .send()
                .await;
            match attempt {
                Ok(response) if response.status().is_success() => return true,
                Ok(response) => {
                    tracing::debug!(status = %response.status(), "webhook refused a notification; retrying")
                }
                Err(error) => tracing::debug!(%error, "webhook unreachable; retrying"),
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.changed() => return false,
            }
            delay = (delay * 2).min(RETRY_DELAY_MAX);
        }
    }
}
