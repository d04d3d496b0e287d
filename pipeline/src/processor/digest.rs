//! The state digest: a fingerprint of a partition's whole state that can be kept up to date as
//! the state changes, and recomputed from a checkpoint or a rebuild to compare.
//!
//! Each component is the wrapping sum of an xxh3 hash of every element (a recorded donation, a
//! campaign total, a window bucket, …) in its canonical encoding. A sum does not depend on the
//! order elements were added in, and changing one element is "subtract its old hash, add its new
//! one". Equal states give equal digests; a lost, duplicated or altered element changes one.

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::operators::event_time_windows::WindowBucket;
use crate::support::codec;

const ELEMENT_SEED: u64 = 0x7461_6c6c_795f_6467; // "tally_dg"

/// The hash of one state element: its kind, key and value in canonical encoding.
pub fn element_hash<K: Serialize + ?Sized, V: Serialize + ?Sized>(
    kind: u8,
    key: &K,
    value: &V,
) -> u64 {
    let mut bytes = vec![kind];
    bytes.extend_from_slice(&codec::encode(key));
    bytes.extend_from_slice(&codec::encode(value));
    xxh3_64_with_seed(&bytes, ELEMENT_SEED)
}

/// `element_hash(kind::WINDOW_BUCKET, key, bucket)` for a `BucketKey` or its borrowed form,
/// encoding into `buffer` (cleared first) with the bucket's direct canonical encoder: a bucket's
/// whole histogram is hashed whenever it changes, so this runs for every changed bucket of every
/// checkpoint round.
pub fn bucket_hash_with<K: Serialize + ?Sized>(
    buffer: &mut Vec<u8>,
    key: &K,
    bucket: &WindowBucket,
) -> u64 {
    buffer.clear();
    buffer.push(kind::WINDOW_BUCKET);
    codec::encode_into(buffer, key);
    bucket.encode_canonical_into(buffer);
    xxh3_64_with_seed(buffer, ELEMENT_SEED)
}

/// `element_hash(kind, &a, &b)` for two `u64`s (their canonical encoding is 8 little-endian
/// bytes each), computed on the stack.
pub fn element_hash_of_two_u64(kind: u8, a: u64, b: u64) -> u64 {
    let mut bytes = [0u8; 17];
    bytes[0] = kind;
    bytes[1..9].copy_from_slice(&a.to_le_bytes());
    bytes[9..17].copy_from_slice(&b.to_le_bytes());
    xxh3_64_with_seed(&bytes, ELEMENT_SEED)
}

/// Element kinds, part of every element hash.
pub mod kind {
    pub const RECORDED: u8 = 1;
    pub const RECORDED_COLLISION: u8 = 2;
    pub const RESENDS: u8 = 3;
    pub const CAMPAIGN_TOTAL: u8 = 4;
    pub const WINDOW_BUCKET: u8 = 5;
    pub const CONFLICT: u8 = 6;
    pub const SCALARS: u8 = 7;
    pub const RETRACTION: u8 = 8;
    pub const RETRACTION_COUNTERS: u8 = 9;
    pub const RETRACTION_CONFLICT: u8 = 10;
    /// The combined digest with the retraction ledger's folded in.
    pub const WITH_RETRACTIONS: u8 = 11;
}

/// The digest components of one partition's state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateDigest {
    pub recorded: u64,
    pub resends: u64,
    pub totals: u64,
    pub windows: u64,
    pub conflicts: u64,
}

impl StateDigest {
    /// One number for the whole state: the components plus the partition's scalars (next offset,
    /// counters, watermark), hashed together.
    pub fn combined<S: Serialize>(&self, scalars: &S) -> u64 {
        element_hash(kind::SCALARS, scalars, self)
    }
}

/// Adds `new` and removes `old` (0 when the element did not exist) from a component.
pub fn replace(component: &mut u64, old: Option<u64>, new: u64) {
    *component = component.wrapping_sub(old.unwrap_or(0)).wrapping_add(new);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operators::event_time_windows::{BucketKey, Granularity};

    #[test]
    fn a_bucket_hashes_as_its_serde_encoding_does() {
        let key = BucketKey {
            campaign_id: "meals".to_owned(),
            granularity: Granularity::Hour,
            start_ms: 1_795_546_800_000,
        };
        let mut bucket = WindowBucket::default();
        let mut buffer = Vec::new();
        assert_eq!(
            bucket_hash_with(&mut buffer, &key, &bucket),
            element_hash(kind::WINDOW_BUCKET, &key, &bucket)
        );
        for amount in [100, 100, 37, 5_000_000, 12_345, 1, u64::from(u32::MAX)] {
            bucket.add(amount);
            assert_eq!(
                bucket_hash_with(&mut buffer, &key, &bucket),
                element_hash(kind::WINDOW_BUCKET, &key, &bucket)
            );
        }
    }

    #[test]
    fn order_does_not_matter_and_replacement_is_exact() {
        let (a, b, c) = (
            element_hash(1, "a", &1u64),
            element_hash(1, "b", &2u64),
            element_hash(1, "c", &3u64),
        );
        let mut forward = 0u64;
        for hash in [a, b, c] {
            replace(&mut forward, None, hash);
        }
        let mut backward = 0u64;
        for hash in [c, b, a] {
            replace(&mut backward, None, hash);
        }
        assert_eq!(forward, backward);
        let b2 = element_hash(1, "b", &20u64);
        replace(&mut forward, Some(b), b2);
        let mut fresh = 0u64;
        for hash in [a, b2, c] {
            replace(&mut fresh, None, hash);
        }
        assert_eq!(forward, fresh);
        assert_ne!(
            element_hash(1, "b", &2u64),
            element_hash(2, "b", &2u64),
            "kinds separate"
        );
    }
}
