//! Compact encodings of the bulk of a snapshot and of a checkpoint: recorded donations and
//! window buckets, as LEB128 varints in byte strings instead of fixed-width fields.
//!
//! A recorded donation is its fingerprint (8 bytes, little-endian) and its offset (varint):
//! about 12 bytes instead of an encoded change's 20. The buckets of one campaign and
//! granularity are their starts (in bucket widths, each a zigzag varint of the step from the
//! one before), count, sum, min, max and histogram cells (each value a varint step from the one
//! before, and its count): a bucket of a few donations takes about 15 bytes instead of 100.

use serde::{Deserialize, Serialize};

use crate::log::Offset;
use crate::operators::amount_histogram::AmountHistogram;
use crate::operators::event_time_windows::{BucketKey, Granularity, WindowBucket};
use crate::support::clock::UnixMillis;

/// Why packed bytes do not decode.
pub type Malformed = &'static str;

fn put_varint(bytes: &mut Vec<u8>, mut value: u64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            bytes.push(byte);
            return;
        }
        bytes.push(byte | 0x80);
    }
}

fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

fn unzigzag(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

/// Reads packed bytes front to back.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, at: 0 }
    }

    fn is_done(&self) -> bool {
        self.at == self.bytes.len()
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }

    fn varint(&mut self) -> Result<u64, Malformed> {
        let mut value: u64 = 0;
        let mut shift = 0;
        loop {
            let byte = *self
                .bytes
                .get(self.at)
                .ok_or("a packed number is cut short")?;
            self.at += 1;
            if shift > 63 || (shift == 63 && byte > 1) {
                return Err("a packed number overflows");
            }
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
            shift += 7;
        }
    }

    fn u64_le(&mut self) -> Result<u64, Malformed> {
        let bytes = self
            .bytes
            .get(self.at..self.at + 8)
            .ok_or("a packed entry is cut short")?;
        self.at += 8;
        Ok(u64::from_le_bytes(bytes.try_into().expect("8 bytes")))
    }
}

/// Appends one recorded donation.
pub fn pack_recorded(packed: &mut Vec<u8>, fingerprint: u64, offset: Offset) {
    packed.extend_from_slice(&fingerprint.to_le_bytes());
    put_varint(packed, offset);
}

/// Calls `each` with every recorded donation of a [`pack_recorded`] string.
pub fn unpack_recorded(packed: &[u8], mut each: impl FnMut(u64, Offset)) -> Result<(), Malformed> {
    let mut reader = Reader::new(packed);
    while !reader.is_done() {
        let fingerprint = reader.u64_le()?;
        each(fingerprint, reader.varint()?);
    }
    Ok(())
}

/// Buckets of one campaign and granularity, in start order, packed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackedBuckets {
    pub campaign_id: String,
    pub granularity: Granularity,
    #[serde(with = "serde_bytes")]
    packed: Vec<u8>,
    #[serde(skip)]
    last_start: Option<i64>,
}

impl PackedBuckets {
    pub fn new(campaign_id: String, granularity: Granularity) -> Self {
        Self {
            campaign_id,
            granularity,
            packed: Vec::new(),
            last_start: None,
        }
    }

    /// Whether `key` can follow the buckets packed so far.
    pub fn takes(&self, key: &BucketKey) -> bool {
        key.campaign_id == self.campaign_id
            && key.granularity == self.granularity
            && self.last_start.is_none_or(|last| key.start_ms > last)
    }

    pub fn bytes(&self) -> usize {
        self.packed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.packed.is_empty()
    }

    /// Appends a bucket (its start after the last one's).
    pub fn push(&mut self, start_ms: i64, bucket: &WindowBucket) {
        let width = self.granularity.width_ms();
        debug_assert_eq!(start_ms.rem_euclid(width), 0, "a bucket start");
        let index = start_ms.div_euclid(width);
        let step = index - self.last_start.map_or(0, |last| last.div_euclid(width));
        put_varint(&mut self.packed, zigzag(step));
        self.last_start = Some(start_ms);
        for value in [
            bucket.count,
            bucket.sum_cents,
            bucket.min_cents,
            bucket.max_cents,
        ] {
            put_varint(&mut self.packed, value);
        }
        let cells = bucket.histogram.cells();
        put_varint(&mut self.packed, cells.len() as u64);
        let mut previous = 0;
        for (value, count) in cells {
            put_varint(&mut self.packed, value - previous);
            put_varint(&mut self.packed, count);
            previous = value;
        }
    }

    /// The buckets, checked.
    pub fn unpack(&self) -> Result<Vec<(BucketKey, WindowBucket)>, Malformed> {
        let mut buckets = Vec::new();
        self.unpack_each(|start_ms, bucket| {
            let key = BucketKey {
                campaign_id: self.campaign_id.clone(),
                granularity: self.granularity,
                start_ms,
            };
            buckets.push((key, bucket));
        })?;
        Ok(buckets)
    }

    /// Each bucket, checked, with its start, in start order; stops at the first malformed
    /// one (those before it have been handed over).
    pub fn unpack_each(
        &self,
        mut each: impl FnMut(UnixMillis, WindowBucket),
    ) -> Result<(), Malformed> {
        let width = self.granularity.width_ms();
        let mut reader = Reader::new(&self.packed);
        let mut index: i64 = 0;
        while !reader.is_done() {
            index = index
                .checked_add(unzigzag(reader.varint()?))
                .ok_or("a bucket start overflows")?;
            let start_ms = index.checked_mul(width).ok_or("a bucket start overflows")?;
            let (count, sum_cents, min_cents, max_cents) = (
                reader.varint()?,
                reader.varint()?,
                reader.varint()?,
                reader.varint()?,
            );
            let histogram = unpack_histogram(&mut reader, count)?;
            let bucket = WindowBucket {
                count,
                sum_cents,
                min_cents,
                max_cents,
                histogram,
            };
            each(start_ms, bucket);
        }
        Ok(())
    }
}

/// A bucket's histogram cells, which must count its `count` donations.
fn unpack_histogram(reader: &mut Reader<'_>, count: u64) -> Result<AmountHistogram, Malformed> {
    let cells_len = reader.varint()?;
    if cells_len > count {
        return Err("more histogram cells than donations");
    }
    // A cell takes two bytes at least: a damaged length cannot size a huge allocation.
    if cells_len > (reader.remaining() / 2) as u64 {
        return Err("more histogram cells than bytes");
    }
    let mut value: u64 = 0;
    let mut malformed = None;
    let cells = (0..cells_len).map_while(|_| {
        let cell = reader.varint().and_then(|step| {
            value = value
                .checked_add(step)
                .ok_or("a histogram value overflows")?;
            Ok((value, reader.varint()?))
        });
        cell.map_err(|problem| malformed = Some(problem)).ok()
    });
    let histogram = AmountHistogram::from_cell_iter(cells_len as usize, cells);
    if let Some(problem) = malformed {
        return Err(problem);
    }
    let histogram = histogram.ok_or("a histogram is not valid")?;
    if histogram.count() != count {
        return Err("a histogram does not count its bucket's donations");
    }
    Ok(histogram)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_entries_round_trip() {
        let entries = [
            (0u64, 0u64),
            (u64::MAX, 127),
            (7, 128),
            (9, u64::MAX),
            (1, 300),
        ];
        let mut packed = Vec::new();
        for (fingerprint, offset) in entries {
            pack_recorded(&mut packed, fingerprint, offset);
        }
        let mut unpacked = Vec::new();
        unpack_recorded(&packed, |f, o| unpacked.push((f, o))).unwrap();
        assert_eq!(unpacked, entries);
        assert!(unpack_recorded(&packed[..packed.len() - 1], |_, _| {}).is_err());
    }

    #[test]
    fn buckets_round_trip_before_and_after_the_epoch() {
        let mut packed = PackedBuckets::new("meals".into(), Granularity::Minute);
        let mut expected = Vec::new();
        for (i, start) in [-3 * 60_000i64, 0, 60_000, 3_600_000 * 500]
            .into_iter()
            .enumerate()
        {
            let mut bucket = WindowBucket::default();
            for amount in [100, 37, 1_234_567, 100 + i as u64] {
                bucket.add(amount);
            }
            let key = BucketKey {
                campaign_id: "meals".into(),
                granularity: Granularity::Minute,
                start_ms: start,
            };
            assert!(packed.takes(&key));
            packed.push(start, &bucket);
            expected.push((key, bucket));
        }
        assert_eq!(packed.unpack().unwrap(), expected);
        let small = packed.bytes() / expected.len();
        assert!(small < 30, "{small} bytes a bucket");
    }
}
