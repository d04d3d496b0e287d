//! Event-time windows: per campaign, minute buckets rolled up into hour and day buckets of
//! `paid_at`, each with count, sum, min, max and an amount histogram.
//!
//! Every recorded donation updates its minute, hour and day bucket at once, so a statistics
//! query over any minute-aligned range is answered from at most a few hundred buckets: whole days
//! in the middle, whole hours next to them, minutes at the edges ([`cover`]). Buckets are UTC.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::amount_histogram::AmountHistogram;
use crate::clock::UnixMillis;

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

/// The buckets of one campaign in one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CampaignBuckets {
    /// Indexed by `Granularity as usize`; keyed by bucket start.
    by_granularity: [BTreeMap<UnixMillis, WindowBucket>; 3],
    /// Buckets changed since the last checkpoint.
    dirty: BTreeSet<(Granularity, UnixMillis)>,
}

impl CampaignBuckets {
    pub fn get(&self, granularity: Granularity, start_ms: UnixMillis) -> Option<&WindowBucket> {
        self.by_granularity[granularity as usize].get(&start_ms)
    }

    /// Buckets of one granularity starting in `[from_ms, to_ms)`.
    pub fn range(
        &self,
        granularity: Granularity,
        from_ms: UnixMillis,
        to_ms: UnixMillis,
    ) -> impl Iterator<Item = (&UnixMillis, &WindowBucket)> {
        self.by_granularity[granularity as usize].range(from_ms..to_ms.max(from_ms))
    }
}

/// The buckets of one partition, with the keys changed since the last checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventTimeWindows {
    campaigns: BTreeMap<String, CampaignBuckets>,
}

impl EventTimeWindows {
    pub fn from_buckets(buckets: impl IntoIterator<Item = (BucketKey, WindowBucket)>) -> Self {
        let mut windows = Self::default();
        for (key, bucket) in buckets {
            windows
                .campaigns
                .entry(key.campaign_id)
                .or_default()
                .by_granularity[key.granularity as usize]
                .insert(key.start_ms, bucket);
        }
        windows
    }

    /// Adds a recorded donation to its minute, hour and day buckets.
    pub fn record(&mut self, campaign_id: &str, paid_at_ms: UnixMillis, amount_cents: u64) {
        if !self.campaigns.contains_key(campaign_id) {
            self.campaigns
                .insert(campaign_id.to_owned(), CampaignBuckets::default());
        }
        let campaign = self.campaigns.get_mut(campaign_id).expect("inserted above");
        for granularity in Granularity::ALL {
            let start_ms = granularity.bucket_start(paid_at_ms);
            campaign.by_granularity[granularity as usize]
                .entry(start_ms)
                .or_default()
                .add(amount_cents);
            campaign.dirty.insert((granularity, start_ms));
        }
    }

    /// Replaces one bucket with an absolute value (read models receiving published buckets).
    pub fn set(&mut self, key: BucketKey, bucket: WindowBucket) {
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

    /// Every bucket, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (BucketKey, &WindowBucket)> {
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

    /// The buckets changed since the last call, with their current values.
    pub fn take_dirty(&mut self) -> Vec<(BucketKey, WindowBucket)> {
        let mut changed = Vec::new();
        for (campaign_id, campaign) in &mut self.campaigns {
            for (granularity, start_ms) in std::mem::take(&mut campaign.dirty) {
                let bucket = campaign.by_granularity[granularity as usize][&start_ms].clone();
                let key = BucketKey {
                    campaign_id: campaign_id.clone(),
                    granularity,
                    start_ms,
                };
                changed.push((key, bucket));
            }
        }
        changed
    }

    pub fn has_dirty(&self) -> bool {
        self.campaigns
            .values()
            .any(|campaign| !campaign.dirty.is_empty())
    }

    pub fn bucket_count(&self) -> usize {
        self.campaigns
            .values()
            .map(|c| c.by_granularity.iter().map(BTreeMap::len).sum::<usize>())
            .sum()
    }
}

/// The buckets that exactly cover the minute-aligned range `[from_ms, to_ms)`: whole days where
/// possible, then whole hours, then minutes. `from_ms` and `to_ms` must be minute-aligned.
pub fn cover(from_ms: UnixMillis, to_ms: UnixMillis) -> Vec<(Granularity, UnixMillis)> {
    assert!(
        from_ms % MINUTE_MS == 0 && to_ms % MINUTE_MS == 0,
        "range must be minute-aligned"
    );
    let mut pieces = Vec::new();
    let mut cursor = from_ms;
    while cursor < to_ms {
        let granularity = [Granularity::Day, Granularity::Hour, Granularity::Minute]
            .into_iter()
            .find(|g| cursor.rem_euclid(g.width_ms()) == 0 && cursor + g.width_ms() <= to_ms)
            .expect("a minute always fits a minute-aligned range");
        pieces.push((granularity, cursor));
        cursor += granularity.width_ms();
    }
    pieces
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
        assert_eq!(windows.take_dirty().len(), 3);
        assert!(!windows.has_dirty());
    }

    #[test]
    fn times_before_the_epoch_bucket_downwards() {
        assert_eq!(Granularity::Minute.bucket_start(-1), -MINUTE_MS);
        assert_eq!(Granularity::Day.bucket_start(-1), -DAY_MS);
    }

    #[test]
    fn cover_is_exact_and_small() {
        let from = 2 * DAY_MS - 3 * HOUR_MS - 5 * MINUTE_MS;
        let to = 40 * DAY_MS + 2 * HOUR_MS + 9 * MINUTE_MS;
        let pieces = cover(from, to);
        let mut cursor = from;
        for &(granularity, start) in &pieces {
            assert_eq!(start, cursor);
            cursor += granularity.width_ms();
        }
        assert_eq!(cursor, to);
        assert!(pieces.len() <= 5 + 3 + 38 + 2 + 9, "{}", pieces.len());
        assert!(cover(from, from).is_empty());
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
