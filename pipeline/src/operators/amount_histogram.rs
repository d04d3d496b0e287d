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
///
/// Serialized as its `(bucket lowest value, count)` pairs in value order; held as one `u64`
/// per pair ([`Cell`]), half the bytes: hundreds of thousands of buckets stay in memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AmountHistogram {
    /// Strictly increasing by value, counts ≥ 1.
    cells: Vec<Cell>,
}

/// One non-empty bucket in 8 bytes: its count above 16 bits that name the bucket (see
/// [`Cell::code_of`]), so cells order as their values do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cell(u64);

/// Counts a cell can hold: 2^48 − 1, hundreds of trillions of one amount in one bucket.
const CELL_COUNT_MAX: u64 = (1 << 48) - 1;

impl Cell {
    /// A bucket's lowest value has at most 8 significant bits (two significant digits take
    /// 256 sub-buckets): the code is its shift above 8 bits, then those bits, and orders as
    /// the value does. `None` for a value that is not a bucket's lowest.
    fn code_of(value: u64) -> Option<u64> {
        let shift = (u64::BITS - value.leading_zeros()).saturating_sub(8);
        let significant = value >> shift;
        ((significant << shift) == value).then_some((u64::from(shift) << 8) | significant)
    }

    fn new(value: u64, count: u64) -> Option<Self> {
        let code = Self::code_of(value)?;
        (count <= CELL_COUNT_MAX).then_some(Self((count << 16) | code))
    }

    fn value(self) -> u64 {
        let code = self.0 & 0xFFFF;
        (code & 0xFF) << (code >> 8)
    }

    fn count(self) -> u64 {
        self.0 >> 16
    }

    fn code(self) -> u64 {
        self.0 & 0xFFFF
    }

    /// This cell with `more` counted.
    fn plus(self, more: u64) -> Self {
        let count = self.count() + more;
        assert!(
            count <= CELL_COUNT_MAX,
            "a histogram cell counts at most {CELL_COUNT_MAX}"
        );
        Self((count << 16) | self.code())
    }
}

impl AmountHistogram {
    pub fn record(&mut self, amount_cents: u64) {
        let value = bucket_of(amount_cents);
        let code = Cell::code_of(value).expect("a bucket's lowest value has a code");
        match self.cells.binary_search_by_key(&code, |cell| cell.code()) {
            Ok(at) => self.cells[at] = self.cells[at].plus(1),
            Err(at) => self
                .cells
                .insert(at, Cell::new(value, 1).expect("a bucket's lowest value")),
        }
    }

    pub fn merge(&mut self, other: &AmountHistogram) {
        let mut merged = Vec::with_capacity(self.cells.len() + other.cells.len());
        let (mut left, mut right) = (
            self.cells.iter().copied().peekable(),
            other.cells.iter().copied().peekable(),
        );
        loop {
            let next = match (left.peek().copied(), right.peek().copied()) {
                (Some(l), Some(r)) if l.code() == r.code() => {
                    left.next();
                    right.next();
                    l.plus(r.count())
                }
                (Some(l), Some(r)) => {
                    if l.code() < r.code() {
                        left.next();
                        l
                    } else {
                        right.next();
                        r
                    }
                }
                (Some(l), None) => {
                    left.next();
                    l
                }
                (None, Some(r)) => {
                    right.next();
                    r
                }
                (None, None) => break,
            };
            merged.push(next);
        }
        debug_assert!(
            merged
                .windows(2)
                .all(|pair| pair[0].code() < pair[1].code())
        );
        self.cells = merged;
    }

    /// The non-empty buckets, `(bucket lowest value, count)` in value order.
    pub fn cells(&self) -> impl ExactSizeIterator<Item = (u64, u64)> + '_ {
        self.cells.iter().map(|cell| (cell.value(), cell.count()))
    }

    /// Appends the histogram's canonical encoding (the bytes `codec::encode` gives: the cell
    /// count, then each cell's value and count, as fixed-width little-endian `u64`s), written
    /// directly: hashing a bucket's state every checkpoint round encodes this often.
    pub fn encode_canonical_into(&self, buffer: &mut Vec<u8>) {
        buffer.reserve(8 + 16 * self.cells.len());
        buffer.extend_from_slice(&(self.cells.len() as u64).to_le_bytes());
        for (value, count) in self.cells() {
            buffer.extend_from_slice(&value.to_le_bytes());
            buffer.extend_from_slice(&count.to_le_bytes());
        }
    }

    /// A histogram of stored cells, checked: values strictly increasing and each a bucket's
    /// lowest value, counts at least 1 (and under 2^48). `None` if they are not.
    pub fn from_cells(cells: Vec<(u64, u64)>) -> Option<Self> {
        Self::from_cell_iter(cells.len(), cells)
    }

    /// [`from_cells`](Self::from_cells) from an iterator of `len` cells (more or fewer is not
    /// valid), without collecting them first.
    pub fn from_cell_iter(len: usize, cells: impl IntoIterator<Item = (u64, u64)>) -> Option<Self> {
        let mut packed = Vec::with_capacity(len);
        let mut previous: Option<u64> = None;
        for (value, count) in cells {
            let valid = count >= 1
                && bucket_of(value) == value
                && previous.is_none_or(|previous| previous < value);
            packed.push(Cell::new(value, count).filter(|_| valid)?);
            previous = Some(value);
        }
        (packed.len() == len).then_some(Self { cells: packed })
    }

    pub fn count(&self) -> u64 {
        self.cells.iter().map(|cell| cell.count()).sum()
    }

    /// How many distinct amount buckets hold something.
    pub fn len(&self) -> usize {
        self.cells.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    /// Amounts at the given quantiles (0.0–1.0), as an hdrhistogram with the same bucketing
    /// reports them; `None` when empty.
    pub fn quantiles<const N: usize>(&self, quantiles: [f64; N]) -> Option<[u64; N]> {
        hdr_quantiles(self.cells(), quantiles)
    }
}

impl Serialize for AmountHistogram {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.cells())
    }
}

impl<'de> Deserialize<'de> for AmountHistogram {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let cells = Vec::<(u64, u64)>::deserialize(deserializer)?;
        Self::from_cells(cells).ok_or_else(|| {
            serde::de::Error::custom(
                "histogram cells must ascend, each a bucket's lowest value counted 1 to 2^48 - 1 times",
            )
        })
    }
}

/// Cell codes run below this: the code of the largest trackable amount's bucket is the last.
const CODES: usize = {
    let shift = (u64::BITS - AMOUNT_CENTS_TRACKABLE_MAX.leading_zeros()).saturating_sub(8);
    ((shift as usize) << 8) + 256
};

/// Amounts at `quantiles` of the `(bucket lowest value, count)` cells given in value order, as
/// an `hdrhistogram` of the same bucketing reports them; `None` when there are none.
fn hdr_quantiles<const N: usize>(
    cells: impl Iterator<Item = (u64, u64)>,
    quantiles: [f64; N],
) -> Option<[u64; N]> {
    let mut dense = bucketing().clone();
    dense.reset();
    for (value, count) in cells {
        dense
            .record_n(value, count)
            .expect("bucket values come from the same bounds");
    }
    (!dense.is_empty()).then(|| quantiles.map(|quantile| dense.value_at_quantile(quantile)))
}

/// Sums many histograms without allocating per histogram: their cells' counts are added up by
/// cell code in one flat array (a statistics query over a range adds up hundreds of buckets of
/// hundreds of cells each), and only the sums go into an `hdrhistogram` for the quantiles.
#[derive(Debug, Clone)]
pub struct AmountAccumulator {
    counts_by_code: Vec<u64>,
}

impl Default for AmountAccumulator {
    fn default() -> Self {
        Self {
            counts_by_code: vec![0; CODES],
        }
    }
}

impl AmountAccumulator {
    pub fn add(&mut self, histogram: &AmountHistogram) {
        for cell in &histogram.cells {
            self.counts_by_code[cell.code() as usize] += cell.count();
        }
    }

    /// Amounts at the given quantiles, as [`AmountHistogram::quantiles`] gives them for the
    /// histograms added; `None` when nothing was.
    pub fn quantiles<const N: usize>(&self, quantiles: [f64; N]) -> Option<[u64; N]> {
        let cells = self
            .counts_by_code
            .iter()
            .enumerate()
            .filter(|&(_, &count)| count > 0)
            .map(|(code, &count)| (Cell(code as u64).value(), count));
        hdr_quantiles(cells, quantiles)
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
    fn every_bucket_value_has_a_code_that_orders_as_it_does() {
        let mut previous: Option<(u64, u64)> = None;
        let mut amount = 1u64;
        while amount <= AMOUNT_CENTS_TRACKABLE_MAX {
            let value = bucket_of(amount);
            let cell = Cell::new(value, 3).expect("a bucket value has a code");
            assert_eq!((cell.value(), cell.count()), (value, 3));
            if let Some((previous_value, previous_code)) = previous
                && previous_value != value
            {
                assert!(
                    previous_code < cell.code(),
                    "codes order as values at {value}"
                );
            }
            previous = Some((value, cell.code()));
            amount += 1 + amount / 300;
        }
        assert_eq!(Cell::code_of(257), None, "not a bucket's lowest value");
        assert!(Cell::new(100, CELL_COUNT_MAX + 1).is_none());
    }

    #[test]
    fn serializes_as_the_pairs_it_always_did() {
        let mut histogram = AmountHistogram::default();
        for amount in [100u64, 100, 37, 5_000_000, 12_345] {
            histogram.record(amount);
        }
        let pairs: Vec<(u64, u64)> = histogram.cells().collect();
        assert_eq!(
            pairs,
            vec![
                (37, 1),
                (100, 2),
                (bucket_of(12_345), 1),
                (bucket_of(5_000_000), 1)
            ]
        );
        let encoded = crate::support::codec::encode(&histogram);
        assert_eq!(encoded, crate::support::codec::encode(&pairs));
        let mut canonical = Vec::new();
        histogram.encode_canonical_into(&mut canonical);
        assert_eq!(canonical, encoded);
        let decoded: AmountHistogram = crate::support::codec::decode(&encoded).unwrap();
        assert_eq!(decoded, histogram);
        let unordered = crate::support::codec::encode(&vec![(100u64, 1u64), (37, 1)]);
        assert!(crate::support::codec::decode::<AmountHistogram>(&unordered).is_err());
        let not_a_bucket = crate::support::codec::encode(&vec![(257u64, 1u64)]);
        assert!(crate::support::codec::decode::<AmountHistogram>(&not_a_bucket).is_err());
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
    fn every_trackable_amount_has_a_code_below_the_accumulators_end() {
        let largest = Cell::new(bucket_of(u64::MAX), 1).expect("a bucket value");
        assert!((largest.code() as usize) < CODES);
        assert_eq!(largest.value(), bucket_of(AMOUNT_CENTS_TRACKABLE_MAX));
    }

    #[test]
    fn an_accumulator_of_many_histograms_answers_like_their_merge() {
        let mut merged = AmountHistogram::default();
        let mut accumulator = AmountAccumulator::default();
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        for round in 0..200 {
            let mut histogram = AmountHistogram::default();
            for _ in 0..(round % 50 + 1) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let amount = match seed % 4 {
                    0 => seed % 100,
                    1 => (seed % 20 + 1) * 100,
                    2 => seed % 100_000,
                    _ => seed >> (seed % 64),
                };
                histogram.record(amount);
            }
            accumulator.add(&histogram);
            merged.merge(&histogram);
        }
        let quantiles = [0.0, 0.001, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999, 1.0];
        assert!(merged.count() > 1_000);
        assert_eq!(
            accumulator.quantiles(quantiles),
            merged.quantiles(quantiles)
        );
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
