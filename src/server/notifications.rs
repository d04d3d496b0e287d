//! Donor notifications: the outbox ([`tally_pipeline::outbox`]: each partition's recorded
//! donations in log order, and a delivery cursor per partition that never moves back),
//! delivered to a webhook or paged through by a consumer. With
//! `--notify-webhook`, one task per partition POSTs each notification, signed like a callback and
//! with `Idempotency-Key: <payment_ref>`, retrying with backoff until it is acknowledged (2xx),
//! then moves the cursor: delivery is at least once. Without a webhook, `GET /v1/notifications`
//! pages through the outbox and `POST /v1/notifications/ack` moves the cursor.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use serde::Serialize;
use tally_api::ApiError;
use tally_api::signature::{self, SigningSecret};
use tally_api::views::{RecordedDonation, RefundNotification};
use tally_pipeline::clock::Clock;
use tally_pipeline::cluster::Fence;
use tally_pipeline::log::{Offset, PartitionId};
use tally_pipeline::outbox::{Notice, NotificationOutbox, Owed, SCAN_BATCH};
use tally_pipeline::read_model::{PartitionProgress, ReadModel};
use tally_query::views::recorded_donation;
use tokio::sync::watch;

/// Notifications a page may ask for: a page of them is about 250 KB of JSON.
pub const PAGE_LIMIT_MAX: usize = 1000;
/// Notifications in a page that does not say how many.
pub const PAGE_LIMIT_DEFAULT: usize = 100;
const RETRY_DELAY_MIN: Duration = Duration::from_millis(100);
/// Backoff stops growing here: a receiver that is down for long is still retried every 10 s.
const RETRY_DELAY_MAX: Duration = Duration::from_secs(10);
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// One notification, as the donor is told: a recorded donation, or a refund or chargeback
/// applied to one (which has a `refund_ref`).
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Notification {
    Donation(RecordedDonation),
    Refund(RefundNotification),
}

impl Notification {
    /// What the receiver dedupes on: the payment for a donation, `refund:` and the refund's
    /// reference for a refund (so neither can be taken for the other).
    fn idempotency_key(&self) -> String {
        match self {
            Notification::Donation(donation) => donation.payment_ref.clone(),
            Notification::Refund(refund) => format!("refund:{}", refund.refund_ref),
        }
    }
}

fn notification(owed: Owed) -> Notification {
    match owed.notice {
        Notice::Donation(event) => {
            Notification::Donation(recorded_donation(event, owed.partition, owed.offset))
        }
        Notice::Retraction { refund, donation } => Notification::Refund(RefundNotification {
            refund_ref: refund.refund_ref,
            payment_ref: refund.payment_ref,
            kind: refund.kind.as_str().to_owned(),
            amount_cents: refund.amount_cents,
            currency: donation.currency,
            refunded_at: tally_query::views::rfc3339(refund.refunded_at.unix_ms()),
            campaign_id: donation.campaign_id,
            order_id: donation.order_id,
            user_id: donation.user_id,
            partition: owed.partition,
            offset: owed.offset,
        }),
    }
}

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
    outbox: NotificationOutbox,
    read_model: Arc<ReadModel>,
    clock: Arc<dyn Clock>,
    webhook: Option<Webhook>,
    /// With automatic assignment: nothing is delivered while this node does not hold its lease.
    fence: Option<Arc<dyn Fence>>,
}

impl Notifications {
    pub fn new(
        outbox: NotificationOutbox,
        read_model: Arc<ReadModel>,
        clock: Arc<dyn Clock>,
        webhook: Option<Webhook>,
    ) -> Self {
        Self {
            outbox,
            read_model,
            clock,
            webhook,
            fence: None,
        }
    }

    /// Delivers nothing while `fence` does not hold.
    pub fn with_fence(mut self, fence: Arc<dyn Fence>) -> Self {
        self.fence = Some(fence);
        self
    }

    /// This node delivers for `partitions` from now on (its assignment changed).
    pub fn set_owned(&self, partitions: Vec<PartitionId>) -> anyhow::Result<()> {
        self.outbox
            .set_owned(partitions)
            .context("cannot read the notification cursors")
    }

    /// The partitions this node runs (and delivers for).
    pub fn owned(&self) -> Vec<PartitionId> {
        self.outbox.owned()
    }

    /// Everything below this offset of `partition` was delivered.
    pub fn cursor(&self, partition: PartitionId) -> Offset {
        self.outbox.cursor(partition)
    }

    /// Counts what another node delivered of `partition` (below `cursor`) as delivered.
    pub fn adopt_cursor(&self, partition: PartitionId, cursor: Offset) -> anyhow::Result<()> {
        self.outbox
            .adopt_cursor(partition, cursor)
            .context("cannot store the notification cursor")
    }

    fn fenced(&self) -> bool {
        self.fence.as_ref().is_some_and(|fence| !fence.holds())
    }

    /// Applied records not yet scanned, per partition.
    pub fn backlog(&self, progress: &[PartitionProgress]) -> Vec<u64> {
        self.outbox.backlog(progress)
    }

    /// Up to `limit` notifications of `partition` from `after` (default: the cursor) on.
    pub async fn page(
        &self,
        partition: PartitionId,
        after: Option<Offset>,
        limit: usize,
    ) -> Result<Page, ApiError> {
        let (owed, next_offset) = self
            .outbox
            .owed(partition, after, limit.clamp(1, PAGE_LIMIT_MAX))
            .await?;
        Ok(Page {
            partition,
            notifications: owed.into_iter().map(notification).collect(),
            next_offset,
        })
    }

    /// Marks everything below `next_offset` delivered. The cursor never moves back.
    pub fn ack(&self, partition: PartitionId, next_offset: Offset) -> Result<Offset, ApiError> {
        Ok(self.outbox.ack(partition, next_offset)?)
    }

    /// One delivery task per partition, until `shutdown`.
    pub fn spawn_delivery(
        self: &Arc<Self>,
        shutdown: watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        self.outbox
            .owned()
            .into_iter()
            .filter_map(|partition| self.spawn_delivery_of(partition, shutdown.clone()))
            .collect()
    }

    /// Delivers the notifications of one partition this node runs until `shutdown` (none
    /// without a webhook).
    pub fn spawn_delivery_of(
        self: &Arc<Self>,
        partition: PartitionId,
        shutdown: watch::Receiver<bool>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        self.webhook.as_ref()?;
        let notifications = Arc::clone(self);
        Some(tokio::spawn(async move {
            notifications.deliver_partition(partition, shutdown).await
        }))
    }

    async fn deliver_partition(&self, partition: PartitionId, mut shutdown: watch::Receiver<bool>) {
        let mut changes = self.read_model.subscribe();
        while !*shutdown.borrow() {
            if self.outbox.cursor(partition) >= self.outbox.applied(partition) {
                tokio::select! {
                    _ = changes.changed() => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
            let (batch, next) = match self.outbox.owed(partition, None, SCAN_BATCH).await {
                Ok(scanned) => scanned,
                Err(error) => {
                    tracing::warn!(partition, "notification scan failed, retrying: {error}");
                    tokio::time::sleep(RETRY_DELAY_MAX).await;
                    continue;
                }
            };
            let positions: Vec<Offset> = batch.iter().map(|owed| owed.position).collect();
            for (i, owed) in batch.into_iter().enumerate() {
                // Through this notice's position, unless more are owed at it.
                let position = owed.position;
                let through = if positions.get(i + 1) == Some(&position) {
                    position
                } else {
                    position + 1
                };
                if !self.deliver(&notification(owed), &mut shutdown).await {
                    return;
                }
                if self.fenced() {
                    // Stopping here: what was delivered is acknowledged, so the next holder
                    // delivers from there.
                    if let Err(error) = self.outbox.ack(partition, through) {
                        tracing::warn!(partition, "cannot store the notification cursor: {error}");
                    }
                    return;
                }
            }
            if let Err(error) = self.outbox.ack(partition, next) {
                tracing::warn!(partition, "cannot store the notification cursor: {error}");
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
            if self.fenced() {
                // Another node may run this partition now: it delivers.
                tracing::warn!("not delivering: this node does not hold its lease");
                return false;
            }
            let signature =
                signature::sign(&webhook.secret, self.clock.now_ms().div_euclid(1000), &body);
            let attempt = webhook
                .client
                .post(&webhook.url)
                .header("Content-Type", "application/json")
                .header(signature::SIGNATURE_HEADER, signature)
                .header("Idempotency-Key", notification.idempotency_key())
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
