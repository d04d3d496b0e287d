//! A compact, mergeable histogram of donation amounts.
//!
//! Amounts are bucketed exactly as an `hdrhistogram` with two significant digits buckets them
//! (every amount maps to its bucket's lowest equivalent value), and only the buckets that hold
//! something are stored, as `(lowest value, count)` pairs in value order. Donation amounts cluster
//! on a few values ($1, $2, round-up cents), so a minute bucket costs tens of bytes instead of the
//! ~18 KiB of a dense histogram, and merging two is a sorted merge. Quantiles are answered by
//! replaying the pairs into an `hdrhistogram`, so they follow its definition.

use std::sync::OnceLock;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Two significant digits: a quantile is within 1% of the true amount.
const SIGNIFICANT_DIGITS: u8 = 2;
/// Larger than any amount cap (10^12 cents is $10 billion); fixes the bucketing for good.
const AMOUNT_CENTS_TRACKABLE_MAX: u64 = 1 << 40;

fn bucketing() -> &'static Histogram<u64> {
    static TEMPLATE: OnceLock<Histogram<u64>> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        Histogram::new_with_bounds(1, AMOUNT_CENTS_TRACKABLE_MAX, SIGNIFICANT_DIGITS)
            .expect("constant histogram bounds are valid")
    })
}

/// The value that stands for `amount_cents`'s bucket.
pub fn bucket_of(amount_cents: u64) -> u64 {
    bucketing().lowest_equivalent(amount_cents.clamp(1, AMOUNT_CENTS_TRACKABLE_MAX))
}

/// Counts of amounts per bucket, sparse.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AmountHistogram {
    /// `(bucket lowest value, count)`, strictly increasing by value, counts ≥ 1.
    buckets: Vec<(u64, u64)>,
}

impl AmountHistogram {
    pub fn record(&mut self, amount_cents: u64) {
        let bucket = bucket_of(amount_cents);
        match self
            .buckets
            .binary_search_by_key(&bucket, |&(value, _)| value)
        {
            Ok(at) => self.buckets[at].1 += 1,
            Err(at) => self.buckets.insert(at, (bucket, 1)),
        }
    }

    pub fn merge(&mut self, other: &AmountHistogram) {
        let mut merged = Vec::with_capacity(self.buckets.len() + other.buckets.len());
        let (mut left, mut right) = (
            self.buckets.iter().peekable(),
            other.buckets.iter().peekable(),
        );
        loop {
            let next = match (left.peek(), right.peek()) {
                (Some(&&(a, n)), Some(&&(b, m))) if a == b => {
                    left.next();
                    right.next();
                    (a, n + m)
                }
                (Some(&&l), Some(&&r)) => {
                    if l.0 < r.0 {
                        left.next();
                        l
                    } else {
                        right.next();
                        r
                    }
                }
                (Some(&&l), None) => {
                    left.next();
                    l
                }
                (None, Some(&&r)) => {
                    right.next();
                    r
                }
                (None, None) => break,
            };
            merged.push(next);
        }
        debug_assert!(merged.windows(2).all(|pair| pair[0].0 < pair[1].0));
        self.buckets = merged;
    }

    /// The non-empty buckets, `(bucket lowest value, count)` in value order.
    pub fn cells(&self) -> &[(u64, u64)] {
        &self.buckets
    }

    /// A histogram of stored cells, checked: values strictly increasing and each a bucket's
    /// lowest value, counts at least 1. `None` if they are not.
    pub fn from_cells(cells: Vec<(u64, u64)>) -> Option<Self> {
        let ordered = cells.windows(2).all(|pair| pair[0].0 < pair[1].0);
        let valid = cells
            .iter()
            .all(|&(value, count)| count >= 1 && bucket_of(value) == value);
        (ordered && valid).then_some(Self { buckets: cells })
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|&(_, count)| count).sum()
    }

    /// How many distinct amount buckets hold something.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Amounts at the given quantiles (0.0–1.0), as an hdrhistogram with the same bucketing
    /// reports them; `None` when empty.
    pub fn quantiles<const N: usize>(&self, quantiles: [f64; N]) -> Option<[u64; N]> {
        if self.buckets.is_empty() {
            return None;
        }
        let mut dense = bucketing().clone();
        dense.reset();
        for &(value, count) in &self.buckets {
            dense
                .record_n(value, count)
                .expect("bucket values come from the same bounds");
        }
        Some(quantiles.map(|quantile| dense.value_at_quantile(quantile)))
    }
}

/// Sums many histograms without allocating per histogram: their cells are counted into one
/// dense `hdrhistogram` of the same bucketing (a statistics query over a range adds up
/// hundreds of buckets).
#[derive(Debug, Clone)]
pub struct AmountAccumulator {
    dense: Histogram<u64>,
}

impl Default for AmountAccumulator {
    fn default() -> Self {
        let mut dense = bucketing().clone();
        dense.reset();
        Self { dense }
    }
}

impl AmountAccumulator {
    pub fn add(&mut self, histogram: &AmountHistogram) {
        for &(value, count) in &histogram.buckets {
            self.dense
                .record_n(value, count)
                .expect("bucket values come from the same bounds");
        }
    }

    /// Amounts at the given quantiles, as [`AmountHistogram::quantiles`] gives them for the
    /// histograms added; `None` when nothing was.
    pub fn quantiles<const N: usize>(&self, quantiles: [f64; N]) -> Option<[u64; N]> {
        (!self.dense.is_empty())
            .then(|| quantiles.map(|quantile| self.dense.value_at_quantile(quantile)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_amounts_are_exact_and_large_ones_within_one_percent() {
        for amount in 1..=200 {
            assert_eq!(bucket_of(amount), amount);
        }
        for amount in [1_234, 99_999, 5_000_000, 10_000_000] {
            let bucket = bucket_of(amount);
            assert!(
                bucket <= amount && (amount - bucket) * 100 <= amount,
                "{amount} -> {bucket}"
            );
        }
    }

    #[test]
    fn merge_equals_recording_everything_in_one() {
        let (mut a, mut b, mut all) = Default::default();
        for (i, amount) in [100u64, 200, 37, 100, 5_000, 63, 100, 12_345]
            .iter()
            .enumerate()
        {
            let target: &mut AmountHistogram = if i % 2 == 0 { &mut a } else { &mut b };
            target.record(*amount);
            AmountHistogram::record(&mut all, *amount);
        }
        let mut merged: AmountHistogram = a.clone();
        merged.merge(&b);
        assert_eq!(merged, all);
        assert_eq!(merged.count(), 8);
    }

    #[test]
    fn an_accumulator_answers_like_the_merged_histogram() {
        let (mut a, mut b, mut merged) = Default::default();
        for amount in [5u64, 17, 100, 100, 250_000, 3] {
            AmountHistogram::record(&mut a, amount);
            AmountHistogram::record(&mut merged, amount);
        }
        for amount in [9u64, 100, 7_777] {
            AmountHistogram::record(&mut b, amount);
            AmountHistogram::record(&mut merged, amount);
        }
        let mut accumulator = AmountAccumulator::default();
        assert_eq!(accumulator.quantiles([0.5]), None);
        accumulator.add(&a);
        accumulator.add(&b);
        let quantiles = [0.0, 0.25, 0.5, 0.9, 0.99, 1.0];
        assert_eq!(
            accumulator.quantiles(quantiles),
            merged.quantiles(quantiles)
        );
    }

    #[test]
    fn quantiles_follow_the_recorded_amounts() {
        let mut histogram = AmountHistogram::default();
        assert_eq!(histogram.quantiles([0.5]), None);
        for amount in 1..=100 {
            histogram.record(amount);
        }
        let [p50, p90, p99] = histogram.quantiles([0.5, 0.9, 0.99]).unwrap();
        assert_eq!((p50, p90, p99), (50, 90, 99));
    }
}
