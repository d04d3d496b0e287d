//! A compact map from `payment_ref` fingerprints to the offset of the recorded donation.
//!
//! Tens of millions of entries must fit in well under a gigabyte, so this is an open-addressing
//! table with linear probing over two flat arrays — 8 bytes of fingerprint and 4 bytes of offset
//! per slot, at most 85% full — instead of a general hash map, whose power-of-two sizing can
//! double its footprint. Offsets that do not fit 32 bits (past four billion records in one
//! partition) go to a side map. Fingerprints are uniformly distributed hashes, so the slot is the
//! fingerprint scaled to the table size, with no further hashing.

use std::collections::HashMap;

use crate::log::Offset;

/// A slot whose fingerprint is this is empty; a real fingerprint of 0 is stored as 1 (the index
/// treats a fingerprint only as a candidate to confirm, so merging two values is harmless).
const EMPTY: u64 = 0;
const LOAD_FACTOR_MAX: f64 = 0.85;
const CAPACITY_MIN: usize = 1024;

#[derive(Debug)]
pub struct FingerprintTable {
    fingerprints: Vec<u64>,
    offsets: Vec<u32>,
    len: usize,
    /// Entries whose offset is `u32::MAX` or more; their slot holds the sentinel `u32::MAX`.
    wide_offsets: HashMap<u64, Offset>,
}

impl Default for FingerprintTable {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl FingerprintTable {
    /// A table that holds `entries` without growing.
    pub fn with_capacity(entries: usize) -> Self {
        let slots = slots_for(entries);
        Self {
            fingerprints: vec![EMPTY; slots],
            offsets: vec![0; slots],
            len: 0,
            wide_offsets: HashMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, fingerprint: u64) -> Option<Offset> {
        let fingerprint = stored(fingerprint);
        let mut slot = self.home(fingerprint);
        loop {
            match self.fingerprints[slot] {
                EMPTY => return None,
                found if found == fingerprint => return Some(self.offset_at(slot, fingerprint)),
                _ => slot = self.next(slot),
            }
        }
    }

    pub fn contains(&self, fingerprint: u64) -> bool {
        self.get(fingerprint).is_some()
    }

    /// Inserts a fingerprint that is not in the table.
    pub fn insert(&mut self, fingerprint: u64, offset: Offset) {
        if (self.len + 1) as f64 > self.fingerprints.len() as f64 * LOAD_FACTOR_MAX {
            self.grow();
        }
        let fingerprint = stored(fingerprint);
        let mut slot = self.home(fingerprint);
        while self.fingerprints[slot] != EMPTY {
            assert_ne!(
                self.fingerprints[slot], fingerprint,
                "a fingerprint is inserted once"
            );
            slot = self.next(slot);
        }
        self.fingerprints[slot] = fingerprint;
        self.offsets[slot] = match u32::try_from(offset) {
            Ok(narrow) if narrow != u32::MAX => narrow,
            _ => {
                self.wide_offsets.insert(fingerprint, offset);
                u32::MAX
            }
        };
        self.len += 1;
    }

    /// Every `(fingerprint, offset)`, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, Offset)> + '_ {
        self.fingerprints
            .iter()
            .enumerate()
            .filter(|&(_, &fingerprint)| fingerprint != EMPTY)
            .map(|(slot, &fingerprint)| (fingerprint, self.offset_at(slot, fingerprint)))
    }

    /// Heap bytes used, for operators.
    pub fn heap_bytes(&self) -> usize {
        self.fingerprints.len() * (8 + 4) + self.wide_offsets.len() * 32
    }

    fn offset_at(&self, slot: usize, fingerprint: u64) -> Offset {
        match self.offsets[slot] {
            u32::MAX => self.wide_offsets[&fingerprint],
            narrow => Offset::from(narrow),
        }
    }

    /// The first slot to probe: the fingerprint scaled onto the table.
    fn home(&self, fingerprint: u64) -> usize {
        ((u128::from(fingerprint) * self.fingerprints.len() as u128) >> 64) as usize
    }

    fn next(&self, slot: usize) -> usize {
        if slot + 1 == self.fingerprints.len() {
            0
        } else {
            slot + 1
        }
    }

    /// Rebuilds the table 1.5 times larger.
    fn grow(&mut self) {
        let slots = slots_for(self.len.max(CAPACITY_MIN) * 3 / 2);
        let fingerprints = std::mem::replace(&mut self.fingerprints, vec![EMPTY; slots]);
        let offsets = std::mem::replace(&mut self.offsets, vec![0; slots]);
        let wide_offsets = std::mem::take(&mut self.wide_offsets);
        self.len = 0;
        for (fingerprint, narrow) in fingerprints.into_iter().zip(offsets) {
            if fingerprint != EMPTY {
                let offset = match narrow {
                    u32::MAX => wide_offsets[&fingerprint],
                    narrow => Offset::from(narrow),
                };
                self.insert(fingerprint, offset);
            }
        }
    }
}

fn stored(fingerprint: u64) -> u64 {
    if fingerprint == EMPTY { 1 } else { fingerprint }
}

fn slots_for(entries: usize) -> usize {
    ((entries as f64 / LOAD_FACTOR_MAX).ceil() as usize + 1).max(CAPACITY_MIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spread(i: u64) -> u64 {
        i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (i >> 7)
    }

    #[test]
    fn finds_what_was_inserted_across_growth() {
        let mut table = FingerprintTable::default();
        for i in 1..50_000u64 {
            table.insert(spread(i), i * 3);
        }
        assert_eq!(table.len(), 49_999);
        for i in 1..50_000u64 {
            assert_eq!(table.get(spread(i)), Some(i * 3));
        }
        assert_eq!(table.get(spread(50_001)), None);
        let mut offsets: Vec<u64> = table.iter().map(|(_, offset)| offset).collect();
        offsets.sort_unstable();
        assert_eq!(offsets, (1..50_000u64).map(|i| i * 3).collect::<Vec<_>>());
        assert!(table.fingerprints.len() as f64 * LOAD_FACTOR_MAX >= table.len() as f64);
    }

    #[test]
    fn wide_offsets_and_the_empty_fingerprint_work() {
        let mut table = FingerprintTable::with_capacity(10);
        table.insert(0, 5);
        table.insert(77, u64::from(u32::MAX));
        table.insert(78, u64::MAX - 1);
        assert_eq!(table.get(0), Some(5));
        assert_eq!(table.get(77), Some(u64::from(u32::MAX)));
        assert_eq!(table.get(78), Some(u64::MAX - 1));
        for i in 100..5_000 {
            table.insert(spread(i), i);
        }
        assert_eq!(
            table.get(78),
            Some(u64::MAX - 1),
            "wide offsets survive growth"
        );
    }

    #[test]
    fn probing_wraps_around_the_end() {
        let mut table = FingerprintTable::with_capacity(0);
        let last_home = u64::MAX;
        for i in 0..10 {
            table.insert(last_home - i, i);
        }
        for i in 0..10 {
            assert_eq!(table.get(last_home - i), Some(i));
        }
    }
}
