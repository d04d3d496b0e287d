//! The read model: what queries see. Each partition's runner publishes, after every checkpoint
//! commit, the absolute values it changed (campaign totals, window buckets) together with the
//! offset they reflect; readers merge the partitions.
//!
//! Only committed state is published, so a reader never sees a total that a crash could take
//! back. An update also says where the partition's windows are rolled up to, and the reader
//! drops its buckets below: the owner's cuts are the ones that hold, whatever the reader's
//! own settings. Updates carry absolute values and the offset they reflect, so applying an older update
//! after a newer one is detected and ignored: re-delivery and reordering are harmless.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::log::{Offset, PartitionId};
use crate::operators::amount_histogram::AmountAccumulator;
use crate::operators::campaign_totals::CampaignTotal;
use crate::operators::event_time_windows::{
    BucketKey, CampaignBuckets, EventTimeWindows, Granularity, RolledUp, SharedBucket,
    WindowBucket, cover,
};
use crate::operators::retractions::{
    CampaignRetractions, RefundBucket, RefundBucketKey, RefundBuckets, RetractionCounters,
};
use crate::processor::{PartitionCounters, PartitionState};
use crate::support::clock::UnixMillis;

/// Series longer than this are refused: a day of minutes.
pub const SERIES_POINTS_MAX: i64 = 1440;

/// One partition's committed changes, as published after a checkpoint (and, between nodes, on
/// the results topic: [`crate::control::cluster::results`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PartitionUpdate {
    pub partition: PartitionId,
    /// The state reflects records `0..next_offset`.
    pub next_offset: Offset,
    pub committed_at_ms: UnixMillis,
    /// How long the checkpoint commit took.
    pub checkpoint_duration_us: u64,
    pub watermark_ms: Option<UnixMillis>,
    pub counters: PartitionCounters,
    pub totals: Vec<(String, CampaignTotal)>,
    /// Shared with the partition's state: a bucket that no longer changes is held once.
    pub buckets: Vec<(BucketKey, SharedBucket)>,
    /// Where the partition's windows are rolled up to: readers drop the buckets below.
    pub rolled_up: RolledUp,
    /// Changed campaigns' refunds and chargebacks, absolute.
    pub retractions: Vec<(String, CampaignRetractions)>,
    /// Changed buckets of `refunded_at`, absolute.
    pub refund_buckets: Vec<(RefundBucketKey, RefundBucket)>,
    pub retraction_counters: RetractionCounters,
}

impl PartitionUpdate {
    /// The update without its totals and buckets.
    pub fn clone_header(&self) -> Self {
        Self {
            partition: self.partition,
            next_offset: self.next_offset,
            committed_at_ms: self.committed_at_ms,
            checkpoint_duration_us: self.checkpoint_duration_us,
            watermark_ms: self.watermark_ms,
            counters: self.counters,
            totals: Vec::new(),
            buckets: Vec::new(),
            rolled_up: self.rolled_up,
            retractions: Vec::new(),
            refund_buckets: Vec::new(),
            retraction_counters: self.retraction_counters,
        }
    }

    /// The whole of a partition's state, as one update (after loading a checkpoint).
    pub fn whole(state: &PartitionState, committed_at_ms: UnixMillis) -> Self {
        Self {
            partition: state.partition(),
            next_offset: state.next_offset(),
            committed_at_ms,
            checkpoint_duration_us: 0,
            watermark_ms: state.watermark().current(),
            counters: state.counters(),
            totals: state
                .totals()
                .iter()
                .map(|(c, t)| (c.clone(), *t))
                .collect(),
            buckets: state
                .windows()
                .iter()
                .map(|(k, b)| (k, Arc::clone(b)))
                .collect(),
            rolled_up: state.windows().rolled_up(),
            retractions: state
                .retractions()
                .campaigns()
                .map(|(c, r)| (c.clone(), *r))
                .collect(),
            refund_buckets: state.retractions().buckets().collect(),
            retraction_counters: state.retractions().counters(),
        }
    }
}

/// A campaign's money as readers see it: the donations recorded (gross) and the refunds and
/// chargebacks taken back from them; the net is what the campaign holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CampaignAmounts {
    pub gross: CampaignTotal,
    pub retractions: CampaignRetractions,
}

impl CampaignAmounts {
    /// Gross less every refund and chargeback applied. Never negative: a retraction is applied
    /// only within its donation's amount.
    pub fn net_cents(&self) -> u64 {
        self.gross
            .total_cents
            .saturating_sub(self.retractions.refunded_cents)
    }
}

/// What a partition's committed state looks like to readers.
#[derive(Debug, Clone, Default)]
struct PartitionView {
    /// The highest owner epoch of the results folded in (automatic assignment; 0 otherwise).
    epoch: u64,
    next_offset: Offset,
    committed_at_ms: UnixMillis,
    checkpoint_duration_us: u64,
    watermark_ms: Option<UnixMillis>,
    counters: PartitionCounters,
    totals: BTreeMap<String, CampaignTotal>,
    windows: EventTimeWindows,
    retractions: BTreeMap<String, CampaignRetractions>,
    refund_buckets: BTreeMap<String, RefundBuckets>,
    retraction_counters: RetractionCounters,
}

/// Progress of one partition, for freshness reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PartitionProgress {
    pub partition: PartitionId,
    pub applied_offset: Offset,
    pub committed_at_ms: UnixMillis,
    pub checkpoint_duration_us: u64,
    pub watermark_ms: Option<UnixMillis>,
    pub counters: PartitionCounters,
}

/// Statistics of one campaign's donations with `paid_at` in `[from_ms, to_ms)`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CampaignStats {
    pub from_ms: UnixMillis,
    pub to_ms: UnixMillis,
    /// The finest buckets still held from `from_ms` on, which answered: `from_ms` and `to_ms`
    /// are truncated to it.
    #[serde(serialize_with = "granularity_name")]
    pub resolution: Granularity,
    pub count: u64,
    pub sum_cents: u64,
    pub min_cents: Option<u64>,
    pub max_cents: Option<u64>,
    /// Rounded to the nearest cent.
    pub mean_cents: Option<u64>,
    pub p50_cents: Option<u64>,
    pub p90_cents: Option<u64>,
    pub p99_cents: Option<u64>,
    /// Buckets before this event time will not change any more (the lowest partition
    /// watermark); `None` until every partition has seen a donation.
    pub complete_through_ms: Option<UnixMillis>,
    pub series: Option<Vec<SeriesPoint>>,
    /// Refunds and chargebacks of the campaign's donations applied with `refunded_at` in the
    /// range (truncated as the range is).
    pub refunds: RefundBucket,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SeriesPoint {
    pub start_ms: UnixMillis,
    pub count: u64,
    pub sum_cents: u64,
    /// Refunds and chargebacks with `refunded_at` in the point.
    pub refunds: RefundBucket,
}

/// Why a statistics query cannot be answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatsError {
    #[error("`from` must be before `to` (after truncating both to the {})", resolution.name())]
    EmptyRange { resolution: Granularity },
    #[error(
        "{} buckets before {rolled_up_before_ms} (Unix ms) are rolled up into {}s: ask for a series of {}s or more, or a later `from`",
        series.name(),
        resolution.name(),
        resolution.name()
    )]
    SeriesFinerThanResolution {
        series: Granularity,
        resolution: Granularity,
        /// Where the rolled-up time ends.
        rolled_up_before_ms: UnixMillis,
    },
    #[error("the series would have {points} points; the limit is {SERIES_POINTS_MAX}")]
    SeriesTooLong { points: i64 },
}

#[derive(Debug)]
pub struct ReadModel {
    partitions: RwLock<Vec<PartitionView>>,
    /// Bumped on every published update; readers wait on it for changes.
    version: watch::Sender<u64>,
}

impl ReadModel {
    pub fn new(partition_count: u32) -> Self {
        Self {
            partitions: RwLock::new(vec![PartitionView::default(); partition_count as usize]),
            version: watch::channel(0).0,
        }
    }

    pub fn partition_count(&self) -> u32 {
        self.read().len() as u32
    }

    fn read(&self) -> RwLockReadGuard<'_, Vec<PartitionView>> {
        self.partitions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies a partition's update; an update older than what is already there is ignored.
    pub fn publish(&self, update: PartitionUpdate) {
        self.publish_from(update, None);
    }

    /// [`publish`](Self::publish) for a result another node published at an owner `epoch`: one
    /// of an epoch below the highest folded for the partition is ignored whatever its offset (a
    /// fenced owner's), and a higher one raises it.
    pub fn publish_at_epoch(&self, update: PartitionUpdate, epoch: u64) {
        self.publish_from(update, Some(epoch));
    }

    fn publish_from(&self, update: PartitionUpdate, epoch: Option<u64>) {
        {
            let mut partitions = self
                .partitions
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            let view = &mut partitions[update.partition as usize];
            if let Some(epoch) = epoch {
                if epoch < view.epoch {
                    return;
                }
                view.epoch = epoch;
            }
            if update.next_offset < view.next_offset {
                return;
            }
            view.next_offset = update.next_offset;
            view.committed_at_ms = update.committed_at_ms;
            view.checkpoint_duration_us = update.checkpoint_duration_us;
            view.watermark_ms = update.watermark_ms;
            view.counters = update.counters;
            view.totals.extend(update.totals);
            view.retractions.extend(update.retractions);
            for ((campaign_id, granularity, start), bucket) in update.refund_buckets {
                view.refund_buckets
                    .entry(campaign_id)
                    .or_default()
                    .insert((granularity, start), bucket);
            }
            view.retraction_counters = update.retraction_counters;
            view.windows.roll_up_to(update.rolled_up);
            view.windows.forget_changes();
            for (key, bucket) in update.buckets {
                view.windows.set(key, bucket);
            }
        }
        self.version.send_modify(|version| *version += 1);
    }

    /// A partition's whole view, as one update (to save what other nodes published).
    pub fn export_partition(&self, partition: PartitionId) -> PartitionUpdate {
        let partitions = self.read();
        let view = &partitions[partition as usize];
        PartitionUpdate {
            partition,
            next_offset: view.next_offset,
            committed_at_ms: view.committed_at_ms,
            checkpoint_duration_us: view.checkpoint_duration_us,
            watermark_ms: view.watermark_ms,
            counters: view.counters,
            totals: view.totals.iter().map(|(c, t)| (c.clone(), *t)).collect(),
            buckets: view
                .windows
                .iter()
                .map(|(k, b)| (k, Arc::clone(b)))
                .collect(),
            rolled_up: view.windows.rolled_up(),
            retractions: view
                .retractions
                .iter()
                .map(|(c, r)| (c.clone(), *r))
                .collect(),
            refund_buckets: view
                .refund_buckets
                .iter()
                .flat_map(|(campaign_id, buckets)| {
                    buckets.iter().map(move |(&(granularity, start), &bucket)| {
                        ((campaign_id.clone(), granularity, start), bucket)
                    })
                })
                .collect(),
            retraction_counters: view.retraction_counters,
        }
    }

    /// Forgets a partition's view (its state is being rebuilt from scratch).
    pub fn reset_partition(&self, partition: PartitionId) {
        let mut partitions = self
            .partitions
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        partitions[partition as usize] = PartitionView::default();
    }

    /// A receiver that changes whenever any partition publishes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    pub fn progress(&self) -> Vec<PartitionProgress> {
        self.read()
            .iter()
            .enumerate()
            .map(|(partition, view)| PartitionProgress {
                partition: partition as PartitionId,
                applied_offset: view.next_offset,
                committed_at_ms: view.committed_at_ms,
                checkpoint_duration_us: view.checkpoint_duration_us,
                watermark_ms: view.watermark_ms,
                counters: view.counters,
            })
            .collect()
    }

    /// A campaign's total over all partitions.
    pub fn campaign_total(&self, campaign_id: &str) -> CampaignTotal {
        let mut total = CampaignTotal::default();
        for view in self.read().iter() {
            if let Some(partial) = view.totals.get(campaign_id) {
                total.add(*partial);
            }
        }
        total
    }

    /// Every campaign's total over all partitions.
    /// A campaign's gross total and its refunds and chargebacks, summed over the partitions.
    pub fn campaign_amounts(&self, campaign_id: &str) -> CampaignAmounts {
        let mut amounts = CampaignAmounts::default();
        for view in self.read().iter() {
            if let Some(partial) = view.totals.get(campaign_id) {
                amounts.gross.add(*partial);
            }
            if let Some(partial) = view.retractions.get(campaign_id) {
                amounts.retractions.add(*partial);
            }
        }
        amounts
    }

    /// Every campaign's amounts, summed over the partitions.
    pub fn campaigns_amounts(&self) -> BTreeMap<String, CampaignAmounts> {
        let mut amounts: BTreeMap<String, CampaignAmounts> = BTreeMap::new();
        for view in self.read().iter() {
            for (campaign_id, partial) in &view.totals {
                amounts
                    .entry(campaign_id.clone())
                    .or_default()
                    .gross
                    .add(*partial);
            }
            for (campaign_id, partial) in &view.retractions {
                amounts
                    .entry(campaign_id.clone())
                    .or_default()
                    .retractions
                    .add(*partial);
            }
        }
        amounts
    }

    /// A campaign's refunds and chargebacks in each partition, with the offset each reflects,
    /// read at one instant.
    pub fn campaign_retractions_by_partition(
        &self,
        campaign_id: &str,
    ) -> Vec<(Offset, CampaignRetractions)> {
        self.read()
            .iter()
            .map(|view| {
                let retractions = view.retractions.get(campaign_id).copied();
                (view.next_offset, retractions.unwrap_or_default())
            })
            .collect()
    }

    /// The partitions' retraction counters, summed.
    pub fn retraction_counters(&self) -> RetractionCounters {
        let mut total = RetractionCounters::default();
        for view in self.read().iter() {
            total.add(view.retraction_counters);
        }
        total
    }

    pub fn campaign_totals(&self) -> BTreeMap<String, CampaignTotal> {
        let mut totals: BTreeMap<String, CampaignTotal> = BTreeMap::new();
        for view in self.read().iter() {
            for (campaign_id, partial) in &view.totals {
                totals.entry(campaign_id.clone()).or_default().add(*partial);
            }
        }
        totals
    }

    /// Statistics over `[from_ms, to_ms)`, both truncated to the finest buckets every
    /// partition still holds from `from_ms` on (minutes, unless that time is rolled up), with an
    /// optional series.
    pub fn stats(
        &self,
        campaign_id: &str,
        from_ms: UnixMillis,
        to_ms: UnixMillis,
        series: Option<Granularity>,
    ) -> Result<CampaignStats, StatsError> {
        let partitions = self.read();
        let rolled_up = partitions.iter().fold(RolledUp::NONE, |cuts, view| {
            cuts.max(view.windows.rolled_up())
        });
        let resolution = rolled_up.finest_from(from_ms);
        let from_ms = resolution.bucket_start(from_ms);
        let to_ms = resolution.bucket_start(to_ms);
        if from_ms >= to_ms {
            return Err(StatsError::EmptyRange { resolution });
        }
        if let Some(granularity) = series {
            let first = granularity.bucket_start(from_ms);
            let last = granularity.bucket_start(to_ms - 1);
            let points = (last - first) / granularity.width_ms() + 1;
            if points > SERIES_POINTS_MAX {
                return Err(StatsError::SeriesTooLong { points });
            }
            if granularity < resolution {
                return Err(StatsError::SeriesFinerThanResolution {
                    series: granularity,
                    resolution,
                    rolled_up_before_ms: rolled_up.before_ms(granularity),
                });
            }
        }
        let campaigns: Vec<&CampaignBuckets> = partitions
            .iter()
            .filter_map(|view| view.windows.campaign(campaign_id))
            .collect();
        let whole = merged_range(&campaigns, from_ms, to_ms);
        let series_granularity = series;
        let mut series =
            series.map(|granularity| series_points(&campaigns, from_ms, to_ms, granularity));
        let refund_campaigns: Vec<&RefundBuckets> = partitions
            .iter()
            .filter_map(|view| view.refund_buckets.get(campaign_id))
            .collect();
        let series_of_refunds = series_granularity.zip(series.as_deref_mut());
        let refunds = refunds_in(&refund_campaigns, from_ms, to_ms, series_of_refunds);
        let complete_through_ms = complete_through(&partitions);
        // Percentiles need no bucket: let the pipeline publish meanwhile.
        drop(campaigns);
        drop(partitions);
        // A bucket's quantile is its highest equivalent value, which can exceed the largest
        // amount recorded; clamp into the observed range.
        let quantiles = whole
            .amounts
            .quantiles([0.5, 0.9, 0.99])
            .map(|values| values.map(|v| v.clamp(whole.min_cents, whole.max_cents)));
        let any = whole.count > 0;
        Ok(CampaignStats {
            from_ms,
            to_ms,
            resolution,
            count: whole.count,
            sum_cents: whole.sum_cents,
            min_cents: any.then_some(whole.min_cents),
            max_cents: any.then_some(whole.max_cents),
            mean_cents: any.then(|| (whole.sum_cents + whole.count / 2) / whole.count),
            p50_cents: quantiles.map(|q| q[0]),
            p90_cents: quantiles.map(|q| q[1]),
            p99_cents: quantiles.map(|q| q[2]),
            complete_through_ms,
            series,
            refunds,
        })
    }
}

/// The refunds of `[from_ms, to_ms)` from the campaign's refund buckets of every partition,
/// read over the range's cover — none coarser than the series' points, when there is a series,
/// each bucket then added to the point it falls in too (as `series_points` does).
fn refunds_in(
    campaigns: &[&RefundBuckets],
    from_ms: UnixMillis,
    to_ms: UnixMillis,
    mut series: Option<(Granularity, &mut [SeriesPoint])>,
) -> RefundBucket {
    let mut whole = RefundBucket::default();
    let coarsest = series.as_ref().map_or(Granularity::Day, |(g, _)| *g);
    for (granularity, starts) in cover(from_ms, to_ms, coarsest) {
        for campaign in campaigns {
            let range = campaign.range((granularity, starts.start)..(granularity, starts.end));
            for (&(_, start_ms), bucket) in range {
                whole.add(*bucket);
                if let Some((point_granularity, points)) = series.as_mut() {
                    let first_ms = point_granularity.bucket_start(from_ms);
                    let index = (start_ms - first_ms) / point_granularity.width_ms();
                    points[index as usize].refunds.add(*bucket);
                }
            }
        }
    }
    whole
}

fn granularity_name<S: serde::Serializer>(
    granularity: &Granularity,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(granularity.name())
}

fn complete_through(partitions: &[PartitionView]) -> Option<UnixMillis> {
    partitions
        .iter()
        .map(|view| view.watermark_ms)
        .collect::<Option<Vec<_>>>()?
        .into_iter()
        .min()
        .map(|watermark| Granularity::Minute.bucket_start(watermark))
}

/// What the buckets covering a range add up to.
#[derive(Debug, Default)]
struct RangeTotals {
    count: u64,
    sum_cents: u64,
    min_cents: u64,
    max_cents: u64,
    amounts: AmountAccumulator,
}

impl RangeTotals {
    fn add(&mut self, bucket: &WindowBucket) {
        if bucket.count == 0 {
            return;
        }
        self.min_cents = if self.count == 0 {
            bucket.min_cents
        } else {
            self.min_cents.min(bucket.min_cents)
        };
        self.max_cents = self.max_cents.max(bucket.max_cents);
        self.count += bucket.count;
        self.sum_cents += bucket.sum_cents;
        self.amounts.add(&bucket.histogram);
    }
}

/// All partitions' buckets covering `[from_ms, to_ms)`, added up. Visits only the buckets that
/// exist in the range's [`cover`]: at most 59 + 23 minutes and hours at each end, and the days
/// holding donations, per partition.
fn merged_range(
    campaigns: &[&CampaignBuckets],
    from_ms: UnixMillis,
    to_ms: UnixMillis,
) -> RangeTotals {
    let mut merged = RangeTotals::default();
    for (granularity, starts) in cover(from_ms, to_ms, Granularity::Day) {
        for campaign in campaigns {
            for (_, bucket) in campaign.range(granularity, starts.start, starts.end) {
                merged.add(bucket);
            }
        }
    }
    merged
}

/// One point per `granularity` bucket from the one holding `from_ms` up to `to_ms`, each over its
/// bucket clipped to `[from_ms, to_ms)`, empty ones included. The points are laid out first (the
/// caller checked there are at most [`SERIES_POINTS_MAX`]), then the existing buckets of the
/// range's cover, none coarser than a point, are added to the point they fall in.
fn series_points(
    campaigns: &[&CampaignBuckets],
    from_ms: UnixMillis,
    to_ms: UnixMillis,
    granularity: Granularity,
) -> Vec<SeriesPoint> {
    let width_ms = granularity.width_ms();
    let first_ms = granularity.bucket_start(from_ms);
    let mut points: Vec<SeriesPoint> = (first_ms..to_ms)
        .step_by(width_ms as usize)
        .map(|start_ms| SeriesPoint {
            start_ms,
            count: 0,
            sum_cents: 0,
            refunds: RefundBucket::default(),
        })
        .collect();
    for (piece, starts) in cover(from_ms, to_ms, granularity) {
        for campaign in campaigns {
            for (&start_ms, bucket) in campaign.range(piece, starts.start, starts.end) {
                // A piece is no wider than a point and starts in [from_ms, to_ms), so it lies in
                // the point its start falls in, which is one of those laid out above.
                let point = &mut points[((start_ms - first_ms) / width_ms) as usize];
                point.count += bucket.count;
                point.sum_cents += bucket.sum_cents;
            }
        }
    }
    points
}
