//! Event-time windows: per campaign, minute, hour and day buckets of `paid_at`, each with count,
//! sum, min, max and an amount histogram.
//!
//! Every recorded donation updates its minute, hour and day bucket at once, so a statistics
//! query over any minute-aligned range is answered from whole days in the middle, whole hours
//! next to them and minutes at the edges ([`cover`]): at most five runs of bucket starts, in each
//! of which only the buckets that exist are visited. Buckets are UTC.
//!
//! # Roll-up
//! Minutes older than a horizon behind the watermark are dropped, and so are hours older than a
//! second horizon ([`WindowHorizons`]); days are kept. Nothing is lost by dropping them: the hour
//! and day buckets counted every donation themselves (never a sum of rounded finer buckets), so
//! statistics over rolled-up time are as exact as over minutes, at a coarser resolution. The cut
//! of each granularity is aligned to the next coarser bucket, so an hour is either held in
//! minutes whole or not at all, and it only moves forward. A donation that arrives for time
//! before a cut (a very late one) still counts in the coarser buckets it falls in. Memory is
//! bounded by campaigns × horizons, not by the age of the data.
//!
//! # Changes
//! What a checkpoint needs is what changed since the previous one: each dirty bucket's
//! *delta* — a bucket holding only the donations added since (its merge into the stored bucket
//! gives the new value) — and the cuts. Its bytes follow what was applied, never the size of
//! the buckets it touched.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::amount_histogram::AmountHistogram;
use crate::support::clock::UnixMillis;

pub const MINUTE_MS: i64 = 60_000;
pub const HOUR_MS: i64 = 60 * MINUTE_MS;
pub const DAY_MS: i64 = 24 * HOUR_MS;

/// The width of a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Granularity {
    Minute,
    Hour,
    Day,
}

impl Granularity {
    pub const ALL: [Granularity; 3] = [Granularity::Minute, Granularity::Hour, Granularity::Day];

    pub fn width_ms(self) -> i64 {
        match self {
            Granularity::Minute => MINUTE_MS,
            Granularity::Hour => HOUR_MS,
            Granularity::Day => DAY_MS,
        }
    }

    /// The start of the bucket holding `time_ms`.
    pub fn bucket_start(self, time_ms: UnixMillis) -> UnixMillis {
        time_ms.div_euclid(self.width_ms()) * self.width_ms()
    }

    /// The next coarser granularity, `None` for days.
    pub fn coarser(self) -> Option<Granularity> {
        match self {
            Granularity::Minute => Some(Granularity::Hour),
            Granularity::Hour => Some(Granularity::Day),
            Granularity::Day => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Granularity::Minute => "minute",
            Granularity::Hour => "hour",
            Granularity::Day => "day",
        }
    }
}

/// Identifies one bucket. Ordered by campaign, then granularity, then start.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BucketKey {
    pub campaign_id: String,
    pub granularity: Granularity,
    pub start_ms: UnixMillis,
}

/// What one bucket knows about the donations whose `paid_at` fell in it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowBucket {
    pub count: u64,
    pub sum_cents: u64,
    pub min_cents: u64,
    pub max_cents: u64,
    pub histogram: AmountHistogram,
}

impl WindowBucket {
    /// Appends the bucket's canonical encoding (the bytes `codec::encode` gives), written
    /// directly rather than through serde: see [`AmountHistogram::encode_canonical_into`].
    pub fn encode_canonical_into(&self, buffer: &mut Vec<u8>) {
        for field in [self.count, self.sum_cents, self.min_cents, self.max_cents] {
            buffer.extend_from_slice(&field.to_le_bytes());
        }
        self.histogram.encode_canonical_into(buffer);
    }

    pub fn add(&mut self, amount_cents: u64) {
        self.min_cents = if self.count == 0 {
            amount_cents
        } else {
            self.min_cents.min(amount_cents)
        };
        self.max_cents = self.max_cents.max(amount_cents);
        self.count += 1;
        self.sum_cents += amount_cents;
        self.histogram.record(amount_cents);
    }

    pub fn merge(&mut self, other: &WindowBucket) {
        if other.count == 0 {
            return;
        }
        self.min_cents = if self.count == 0 {
            other.min_cents
        } else {
            self.min_cents.min(other.min_cents)
        };
        self.max_cents = self.max_cents.max(other.max_cents);
        self.count += other.count;
        self.sum_cents += other.sum_cents;
        self.histogram.merge(&other.histogram);
    }
}

/// How long finer buckets are kept behind the watermark before only coarser ones hold that time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowHorizons {
    /// Minute buckets older than this behind the watermark are dropped (their hours remain).
    pub minutes_ms: i64,
    /// Hour buckets older than this behind the watermark are dropped (their days remain).
    pub hours_ms: i64,
}

impl WindowHorizons {
    /// Two weeks of minutes (a campaign page's "last days, minute by minute") and thirteen
    /// months of hours (this year against the same month last year, hour by hour).
    pub const DEFAULT: WindowHorizons = WindowHorizons {
        minutes_ms: 14 * DAY_MS,
        hours_ms: 396 * DAY_MS,
    };

    /// The cuts for a watermark: `[minute cut, hour cut]`, buckets starting before a cut are
    /// rolled up. Aligned to the next coarser bucket.
    fn cuts_at(&self, watermark_ms: UnixMillis) -> RolledUp {
        RolledUp {
            minutes_before_ms: Granularity::Hour
                .bucket_start(watermark_ms.saturating_sub(self.minutes_ms)),
            hours_before_ms: Granularity::Day
                .bucket_start(watermark_ms.saturating_sub(self.hours_ms)),
        }
    }
}

impl Default for WindowHorizons {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Where the roll-up has got to: buckets of a granularity starting before its cut are gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolledUp {
    pub minutes_before_ms: UnixMillis,
    pub hours_before_ms: UnixMillis,
}

impl RolledUp {
    /// Nothing rolled up.
    pub const NONE: RolledUp = RolledUp {
        minutes_before_ms: UnixMillis::MIN,
        hours_before_ms: UnixMillis::MIN,
    };

    /// The cut of a granularity (`MIN` for days: they are kept).
    pub fn before_ms(&self, granularity: Granularity) -> UnixMillis {
        match granularity {
            Granularity::Minute => self.minutes_before_ms,
            Granularity::Hour => self.hours_before_ms,
            Granularity::Day => UnixMillis::MIN,
        }
    }

    /// The later of two cuts, granularity by granularity (cuts never move back).
    pub fn max(self, other: RolledUp) -> RolledUp {
        RolledUp {
            minutes_before_ms: self.minutes_before_ms.max(other.minutes_before_ms),
            hours_before_ms: self.hours_before_ms.max(other.hours_before_ms),
        }
    }

    /// Whether a bucket is below its granularity's cut.
    pub fn covers(&self, granularity: Granularity, start_ms: UnixMillis) -> bool {
        start_ms < self.before_ms(granularity)
    }

    /// The finest granularity that still holds every bucket from `from_ms` on.
    pub fn finest_from(&self, from_ms: UnixMillis) -> Granularity {
        Granularity::ALL
            .into_iter()
            .find(|&granularity| !self.covers(granularity, from_ms))
            .unwrap_or(Granularity::Day)
    }
}

impl Default for RolledUp {
    fn default() -> Self {
        Self::NONE
    }
}

/// A bucket's key, borrowed: encodes exactly as a [`BucketKey`] does.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct BucketKeyRef<'a> {
    pub campaign_id: &'a str,
    pub granularity: Granularity,
    pub start_ms: UnixMillis,
}

/// Buckets by campaign and granularity, keyed by start: how a load collects them, with a
/// campaign's name held once rather than once per bucket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupedBuckets {
    campaigns: BTreeMap<String, [BTreeMap<UnixMillis, WindowBucket>; 3]>,
}

impl GroupedBuckets {
    /// The buckets of one campaign and granularity.
    pub fn group_mut(
        &mut self,
        campaign_id: &str,
        granularity: Granularity,
    ) -> &mut BTreeMap<UnixMillis, WindowBucket> {
        if !self.campaigns.contains_key(campaign_id) {
            self.campaigns
                .insert(campaign_id.to_owned(), Default::default());
        }
        let groups = self.campaigns.get_mut(campaign_id).expect("inserted above");
        &mut groups[granularity as usize]
    }

    pub fn insert(&mut self, key: &BucketKey, bucket: WindowBucket) {
        self.group_mut(&key.campaign_id, key.granularity)
            .insert(key.start_ms, bucket);
    }

    /// Adds a delta's donations to the bucket (an empty one if there is none).
    pub fn merge(&mut self, key: &BucketKey, delta: &WindowBucket) {
        self.group_mut(&key.campaign_id, key.granularity)
            .entry(key.start_ms)
            .or_default()
            .merge(delta);
    }

    pub fn remove(&mut self, key: &BucketKey) {
        if let Some(groups) = self.campaigns.get_mut(&key.campaign_id) {
            groups[key.granularity as usize].remove(&key.start_ms);
        }
    }

    /// Drops the buckets `rolled_up` covers.
    pub fn retain_not_rolled_up(&mut self, rolled_up: RolledUp) {
        for groups in self.campaigns.values_mut() {
            for granularity in Granularity::ALL {
                let before = rolled_up.before_ms(granularity);
                let group = &mut groups[granularity as usize];
                *group = group.split_off(&before);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.campaigns
            .values()
            .flat_map(|groups| groups.iter().map(BTreeMap::len))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every bucket, by campaign, granularity and start.
    pub fn iter(&self) -> impl Iterator<Item = (BucketKeyRef<'_>, &WindowBucket)> {
        self.campaigns.iter().flat_map(|(campaign_id, groups)| {
            Granularity::ALL.into_iter().flat_map(move |granularity| {
                groups[granularity as usize]
                    .iter()
                    .map(move |(&start_ms, bucket)| {
                        let key = BucketKeyRef {
                            campaign_id,
                            granularity,
                            start_ms,
                        };
                        (key, bucket)
                    })
            })
        })
    }

    /// Every bucket with its own key, by campaign, granularity and start.
    pub fn into_vec(self) -> Vec<(BucketKey, WindowBucket)> {
        let mut buckets = Vec::with_capacity(self.len());
        for (campaign_id, groups) in self.campaigns {
            for (granularity, group) in Granularity::ALL.into_iter().zip(groups) {
                buckets.extend(group.into_iter().map(|(start_ms, bucket)| {
                    let key = BucketKey {
                        campaign_id: campaign_id.clone(),
                        granularity,
                        start_ms,
                    };
                    (key, bucket)
                }));
            }
        }
        buckets
    }
}

/// A bucket as a partition's state and its readers share it: a reader holds the value it was
/// given, and the next donation into the bucket copies it first (`Arc::make_mut`), so buckets
/// that no longer change — almost all of them — are held once in memory, not once per holder.
pub type SharedBucket = Arc<WindowBucket>;

/// The buckets of one campaign in one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CampaignBuckets {
    /// Indexed by `Granularity as usize`; keyed by bucket start.
    by_granularity: [BTreeMap<UnixMillis, SharedBucket>; 3],
    /// Per bucket changed since the last checkpoint, the donations added since.
    deltas: BTreeMap<(Granularity, UnixMillis), WindowBucket>,
}

impl CampaignBuckets {
    pub fn get(&self, granularity: Granularity, start_ms: UnixMillis) -> Option<&WindowBucket> {
        self.by_granularity[granularity as usize]
            .get(&start_ms)
            .map(|bucket| &**bucket)
    }

    /// Buckets of one granularity starting in `[from_ms, to_ms)`.
    pub fn range(
        &self,
        granularity: Granularity,
        from_ms: UnixMillis,
        to_ms: UnixMillis,
    ) -> impl Iterator<Item = (&UnixMillis, &WindowBucket)> {
        self.by_granularity[granularity as usize]
            .range(from_ms..to_ms.max(from_ms))
            .map(|(start, bucket)| (start, &**bucket))
    }

    /// Drops the buckets below the cuts; calls `dropped` with each one's granularity and start.
    fn roll_up(&mut self, cuts: RolledUp, mut dropped: impl FnMut(Granularity, UnixMillis)) {
        for granularity in [Granularity::Minute, Granularity::Hour] {
            let kept = &mut self.by_granularity[granularity as usize];
            let before = cuts.before_ms(granularity);
            while let Some(entry) = kept.first_entry() {
                if *entry.key() >= before {
                    break;
                }
                let start_ms = entry.remove_entry().0;
                self.deltas.remove(&(granularity, start_ms));
                dropped(granularity, start_ms);
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.by_granularity.iter().all(BTreeMap::is_empty)
    }
}

/// What changed in a partition's windows since the last checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WindowChanges {
    /// Each changed bucket's delta: the donations added since the last checkpoint.
    pub deltas: Vec<(BucketKey, WindowBucket)>,
    /// The buckets dropped by the roll-up since the last checkpoint.
    pub dropped: Vec<BucketKey>,
    /// The cuts as of these changes.
    pub rolled_up: RolledUp,
}

/// The buckets of one partition, with what changed since the last checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventTimeWindows {
    campaigns: BTreeMap<String, CampaignBuckets>,
    horizons: WindowHorizons,
    rolled_up: RolledUp,
    /// Dropped since the last checkpoint.
    dropped: Vec<BucketKey>,
}

impl EventTimeWindows {
    /// Empty windows that roll up at `horizons`.
    pub fn new(horizons: WindowHorizons) -> Self {
        Self {
            horizons,
            ..Self::default()
        }
    }

    /// Windows as stored: absolute buckets and the cuts they were rolled up to.
    /// Windows holding `buckets` (none of them covered by `rolled_up`), shared from now on.
    pub fn from_grouped(buckets: GroupedBuckets, rolled_up: RolledUp) -> Self {
        let campaigns = buckets
            .campaigns
            .into_iter()
            .map(|(campaign_id, groups)| {
                let by_granularity = groups.map(|group| {
                    group
                        .into_iter()
                        .map(|(start_ms, bucket)| (start_ms, Arc::new(bucket)))
                        .collect()
                });
                let buckets = CampaignBuckets {
                    by_granularity,
                    deltas: BTreeMap::new(),
                };
                (campaign_id, buckets)
            })
            .filter(|(_, buckets)| !buckets.is_empty())
            .collect();
        Self {
            campaigns,
            rolled_up,
            ..Self::default()
        }
    }

    pub fn horizons(&self) -> WindowHorizons {
        self.horizons
    }

    /// Rolls up at other horizons from now on (what was rolled up stays rolled up).
    pub fn set_horizons(&mut self, horizons: WindowHorizons) {
        self.horizons = horizons;
    }

    pub fn rolled_up(&self) -> RolledUp {
        self.rolled_up
    }

    /// Adds a recorded donation to its minute, hour and day buckets (those not rolled up).
    pub fn record(&mut self, campaign_id: &str, paid_at_ms: UnixMillis, amount_cents: u64) {
        if !self.campaigns.contains_key(campaign_id) {
            self.campaigns
                .insert(campaign_id.to_owned(), CampaignBuckets::default());
        }
        let campaign = self.campaigns.get_mut(campaign_id).expect("inserted above");
        for granularity in Granularity::ALL {
            let start_ms = granularity.bucket_start(paid_at_ms);
            if self.rolled_up.covers(granularity, start_ms) {
                continue;
            }
            Arc::make_mut(
                campaign.by_granularity[granularity as usize]
                    .entry(start_ms)
                    .or_default(),
            )
            .add(amount_cents);
            campaign
                .deltas
                .entry((granularity, start_ms))
                .or_default()
                .add(amount_cents);
        }
    }

    /// Rolls up what the watermark has left behind the horizons.
    pub fn roll_up(&mut self, watermark_ms: Option<UnixMillis>) {
        let Some(watermark_ms) = watermark_ms else {
            return;
        };
        let cuts = self.rolled_up.max(self.horizons.cuts_at(watermark_ms));
        self.roll_up_to(cuts);
    }

    /// Drops every bucket below `cuts` (already rolled up where they were stored).
    pub fn roll_up_to(&mut self, cuts: RolledUp) {
        let cuts = self.rolled_up.max(cuts);
        if cuts == self.rolled_up {
            return;
        }
        self.rolled_up = cuts;
        let dropped = &mut self.dropped;
        self.campaigns.retain(|campaign_id, campaign| {
            campaign.roll_up(cuts, |granularity, start_ms| {
                dropped.push(BucketKey {
                    campaign_id: campaign_id.clone(),
                    granularity,
                    start_ms,
                })
            });
            !campaign.is_empty() || !campaign.deltas.is_empty()
        });
    }

    /// Forgets the buckets the roll-up dropped (a read model keeps no checkpoint; it only
    /// `set`s buckets, which records no deltas).
    pub fn forget_changes(&mut self) {
        self.dropped.clear();
    }

    /// Replaces one bucket with an absolute value (read models receiving published buckets).
    /// A bucket below the cuts is ignored: its time is held by coarser buckets only.
    pub fn set(&mut self, key: BucketKey, bucket: SharedBucket) {
        if self.rolled_up.covers(key.granularity, key.start_ms) {
            return;
        }
        self.campaigns
            .entry(key.campaign_id)
            .or_default()
            .by_granularity[key.granularity as usize]
            .insert(key.start_ms, bucket);
    }

    pub fn campaign(&self, campaign_id: &str) -> Option<&CampaignBuckets> {
        self.campaigns.get(campaign_id)
    }

    pub fn get(&self, key: &BucketKey) -> Option<&WindowBucket> {
        self.campaigns
            .get(&key.campaign_id)?
            .get(key.granularity, key.start_ms)
    }

    /// A bucket, shared (to hand to a reader without copying it).
    pub fn get_shared(&self, key: &BucketKey) -> Option<&SharedBucket> {
        self.campaigns.get(&key.campaign_id)?.by_granularity[key.granularity as usize]
            .get(&key.start_ms)
    }

    /// Every bucket, in key order, shared.
    pub fn iter(&self) -> impl Iterator<Item = (BucketKey, &SharedBucket)> {
        self.campaigns.iter().flat_map(|(campaign_id, campaign)| {
            Granularity::ALL.into_iter().flat_map(move |granularity| {
                campaign.by_granularity[granularity as usize].iter().map(
                    move |(&start_ms, bucket)| {
                        let key = BucketKey {
                            campaign_id: campaign_id.clone(),
                            granularity,
                            start_ms,
                        };
                        (key, bucket)
                    },
                )
            })
        })
    }

    /// What changed since the last call: each changed bucket's delta, the buckets rolled up,
    /// the cuts.
    pub fn take_changes(&mut self) -> WindowChanges {
        let mut deltas = Vec::new();
        for (campaign_id, campaign) in &mut self.campaigns {
            for ((granularity, start_ms), delta) in std::mem::take(&mut campaign.deltas) {
                let key = BucketKey {
                    campaign_id: campaign_id.clone(),
                    granularity,
                    start_ms,
                };
                deltas.push((key, delta));
            }
        }
        WindowChanges {
            deltas,
            dropped: std::mem::take(&mut self.dropped),
            rolled_up: self.rolled_up,
        }
    }

    pub fn has_changes(&self) -> bool {
        !self.dropped.is_empty()
            || self
                .campaigns
                .values()
                .any(|campaign| !campaign.deltas.is_empty())
    }

    pub fn bucket_count(&self) -> usize {
        self.campaigns
            .values()
            .map(|c| c.by_granularity.iter().map(BTreeMap::len).sum::<usize>())
            .sum()
    }
}

/// The runs of buckets that exactly cover the minute-aligned range `[from_ms, to_ms)`, none
/// coarser than `coarsest`: whole days where possible, then whole hours next to them, then
/// minutes at the edges. Each run is `(granularity, starts)`: every bucket of that granularity
/// whose start is in `starts` lies inside the range, and the runs together tile it. There are at
/// most five runs (minutes, hours, days, hours, minutes) however wide the range, so a reader
/// visits only the buckets that exist in each run ([`CampaignBuckets::range`]), never every
/// minute or day of the calendar. `from_ms` and `to_ms` must be minute-aligned.
pub fn cover(
    from_ms: UnixMillis,
    to_ms: UnixMillis,
    coarsest: Granularity,
) -> Vec<(Granularity, Range<UnixMillis>)> {
    assert!(
        from_ms % MINUTE_MS == 0 && to_ms % MINUTE_MS == 0,
        "range must be minute-aligned"
    );
    let mut runs = Vec::with_capacity(COVER_RUNS_MAX);
    push_cover(&mut runs, from_ms, to_ms, coarsest);
    debug_assert!(runs.len() <= COVER_RUNS_MAX);
    runs
}

/// Minutes, hours, days, hours, minutes.
pub const COVER_RUNS_MAX: usize = 5;

fn push_cover(
    runs: &mut Vec<(Granularity, Range<UnixMillis>)>,
    from_ms: UnixMillis,
    to_ms: UnixMillis,
    granularity: Granularity,
) {
    if from_ms >= to_ms {
        return;
    }
    let finer = match granularity {
        Granularity::Day => Granularity::Hour,
        Granularity::Hour => Granularity::Minute,
        Granularity::Minute => {
            runs.push((Granularity::Minute, from_ms..to_ms));
            return;
        }
    };
    let width_ms = granularity.width_ms();
    let floor = |t: UnixMillis| t.div_euclid(width_ms) * width_ms;
    let whole_from = if floor(from_ms) == from_ms {
        from_ms
    } else {
        floor(from_ms).saturating_add(width_ms)
    };
    let whole_to = floor(to_ms);
    if whole_from >= whole_to {
        // No whole bucket of this width fits: the range is made of finer ones only.
        push_cover(runs, from_ms, to_ms, finer);
        return;
    }
    push_cover(runs, from_ms, whole_from, finer);
    runs.push((granularity, whole_from..whole_to));
    push_cover(runs, whole_to, to_ms, finer);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_donation_lands_in_its_minute_hour_and_day() {
        let mut windows = EventTimeWindows::default();
        let paid_at = 3 * DAY_MS + 5 * HOUR_MS + 7 * MINUTE_MS + 1234;
        windows.record("meals", paid_at, 250);
        let starts: Vec<_> = windows
            .iter()
            .map(|(k, _)| (k.granularity, k.start_ms))
            .collect();
        assert_eq!(
            starts,
            vec![
                (
                    Granularity::Minute,
                    3 * DAY_MS + 5 * HOUR_MS + 7 * MINUTE_MS
                ),
                (Granularity::Hour, 3 * DAY_MS + 5 * HOUR_MS),
                (Granularity::Day, 3 * DAY_MS),
            ]
        );
        assert_eq!(windows.take_changes().deltas.len(), 3);
        assert!(!windows.has_changes());
    }

    #[test]
    fn times_before_the_epoch_bucket_downwards() {
        assert_eq!(Granularity::Minute.bucket_start(-1), -MINUTE_MS);
        assert_eq!(Granularity::Day.bucket_start(-1), -DAY_MS);
    }

    /// The bucket starts a cover stands for, one by one.
    fn expand(runs: &[(Granularity, Range<UnixMillis>)]) -> Vec<(Granularity, UnixMillis)> {
        runs.iter()
            .flat_map(|(granularity, starts)| {
                let width_ms = granularity.width_ms();
                (starts.start..starts.end)
                    .step_by(width_ms as usize)
                    .map(move |start| (*granularity, start))
            })
            .collect()
    }

    #[test]
    fn cover_is_exact_and_small() {
        let from = 2 * DAY_MS - 3 * HOUR_MS - 5 * MINUTE_MS;
        let to = 40 * DAY_MS + 2 * HOUR_MS + 9 * MINUTE_MS;
        let runs = cover(from, to, Granularity::Day);
        let pieces = expand(&runs);
        let mut cursor = from;
        for &(granularity, start) in &pieces {
            assert_eq!(start, cursor);
            assert_eq!(start.rem_euclid(granularity.width_ms()), 0);
            cursor += granularity.width_ms();
        }
        assert_eq!(cursor, to);
        assert_eq!(pieces.len(), 5 + 3 + 38 + 2 + 9);
        assert_eq!(runs.len(), 5);
        assert!(cover(from, from, Granularity::Day).is_empty());
    }

    #[test]
    fn cover_of_the_widest_range_is_five_runs() {
        // 0000-01-01T00:00:00Z to 9999-12-31T23:59:00Z: 3.65 million days.
        let (from, to) = (-62_167_219_200_000, 253_402_300_740_000);
        let runs = cover(from, to, Granularity::Day);
        assert_eq!(
            runs,
            vec![
                (Granularity::Day, from..to - 23 * HOUR_MS - 59 * MINUTE_MS),
                (
                    Granularity::Hour,
                    to - 23 * HOUR_MS - 59 * MINUTE_MS..to - 59 * MINUTE_MS
                ),
                (Granularity::Minute, to - 59 * MINUTE_MS..to),
            ]
        );
    }

    #[test]
    fn cover_never_uses_buckets_coarser_than_asked() {
        let from = -3 * DAY_MS + 7 * MINUTE_MS;
        let to = 3 * DAY_MS - 11 * MINUTE_MS;
        for coarsest in Granularity::ALL {
            let runs = cover(from, to, coarsest);
            assert!(runs.iter().all(|(g, _)| *g <= coarsest), "{runs:?}");
            let pieces = expand(&runs);
            let covered: i64 = pieces.iter().map(|(g, _)| g.width_ms()).sum();
            assert_eq!(covered, to - from);
            assert!(runs.len() <= COVER_RUNS_MAX);
        }
        let minutes = cover(from, to, Granularity::Minute);
        assert_eq!(minutes, vec![(Granularity::Minute, from..to)]);
    }

    #[test]
    fn bucket_merge_matches_adding_everything() {
        let (mut a, mut b, mut all) = (
            WindowBucket::default(),
            WindowBucket::default(),
            WindowBucket::default(),
        );
        for amount in [500, 100, 37] {
            a.add(amount);
            all.add(amount);
        }
        for amount in [12, 900] {
            b.add(amount);
            all.add(amount);
        }
        a.merge(&b);
        a.merge(&WindowBucket::default());
        assert_eq!(a, all);
        assert_eq!(
            (all.min_cents, all.max_cents, all.sum_cents),
            (12, 900, 1549)
        );
    }
}
