//! A compact map from uniformly distributed 64-bit keys to values that nearly always fit 32
//! bits: the dedupe index's `payment_ref` fingerprints to the offset of the recorded donation,
//! and its resend counts by (scrambled) offset.
//!
//! Tens of millions of entries must fit in well under a gigabyte, so this is an open-addressing
//! table over one flat array — 8 bytes of key and 4 bytes of value per slot — instead of a
//! general hash map, whose power-of-two sizing can double its footprint. Values that do not fit
//! 32 bits (an offset past four billion records in one partition) go to a side map.
//!
//! Keys are uniformly distributed, so a key's home slot is its value scaled onto the table, with
//! no further hashing, and the table is kept **ordered**: along the slots, the keys stored
//! ascend. A lookup therefore stops at the first larger key as well as at an empty slot, and a
//! miss costs about what a hit does, which lets the table run 92% full. An insert shifts the rest
//! of its run of occupied slots one place up.
//!
//! The table is split into [`SHARDS`] shards by the key's top bits, each growing by itself and
//! only by an eighth at a time: the table stays 80–92% full at any size, and a
//! growth copies one shard, never the whole table at once. Iteration yields keys in ascending
//! order, and inserting in ascending order only ever appends to a run, so a table rebuilt from
//! a snapshot is written front to back.
//!
//! A key of 0 marks an empty slot, so a key of 0 is stored as 1: the fingerprint index treats a
//! match only as a candidate to confirm, so merging the two is harmless there, and scrambled
//! offsets are never 0.

use std::borrow::Cow;
use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// A slot whose key is this is empty.
const EMPTY: u64 = 0;
/// A slot's value is this when the real value is in the side map.
const WIDE: u32 = u32::MAX;
/// A shard grows before an insert would take it past this share of its home slots.
const LOAD_FACTOR_MAX: f64 = 0.92;
/// A sized table (a load) is filled to this, leaving room before its first growth.
const LOAD_FACTOR_SIZED: f64 = 0.85;
/// A growing shard gets this many times its home slots.
const GROWTH: f64 = 1.125;
const SHARD_BITS: u32 = 6;
/// Shards per table, chosen by the key's top [`SHARD_BITS`] bits.
pub const SHARDS: usize = 1 << SHARD_BITS;
const HOMES_MIN: usize = 8;
/// Slots past the last home slot, where the last run may spill: a few, and 1/256 of the homes.
const SPILL_MIN: usize = 8;
const SPILL_SHARE: usize = 256;

#[derive(Debug)]
pub struct OrderedTable {
    shards: Vec<Shard>,
    len: usize,
    /// Entries whose value is [`WIDE`] or more; their slot holds [`WIDE`].
    wide_values: HashMap<u64, u64>,
    /// Home slots a shard gets when it is first filled, in a table sized for a number of
    /// entries (0: a shard grows from the smallest size). A sized table allocates its shards as
    /// they fill, so a shard loaded from an image never costs a second allocation.
    sized_homes: usize,
}

/// A slot: a key and the 32-bit value beside it, in 12 bytes (one cache line holds both for a
/// lookup): the key's low and high halves, then the value. All zeros is an empty slot, so the
/// slots of a new shard are zeroed memory, which the system hands over untouched.
type Slot = [u32; 3];

const EMPTY_SLOT: Slot = [0; 3];

fn new_slot(key: u64, value: u32) -> Slot {
    [key as u32, (key >> 32) as u32, value]
}

/// A slot's parts.
trait SlotParts {
    fn key(&self) -> u64;
    fn value(&self) -> u32;
}

impl SlotParts for Slot {
    fn key(&self) -> u64 {
        u64::from(self[0]) | (u64::from(self[1]) << 32)
    }

    fn value(&self) -> u32 {
        self[2]
    }
}

/// One shard: `homes` home slots and a spill area after them, with no wrap-around.
///
/// Invariants: the stored keys ascend along the slots (empty slots between them); a key sits at
/// or after its home slot, and every slot from its home to it is occupied.
#[derive(Debug, Default)]
struct Shard {
    slots: Box<[Slot]>,
    homes: usize,
    len: usize,
    /// One past the last occupied slot (0 when empty): where a key larger than every one in the
    /// shard goes, if its home is not further.
    tail: usize,
}

/// One shard of a table as written to a snapshot: its slots as they lie, so that a load
/// copies them back instead of inserting each entry. A loader checks the image slot by slot
/// and falls back to inserting its entries when it is not a valid shard of its own table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardImage {
    /// The table's [`SHARD_BITS`] when written.
    pub shard_bits: u8,
    pub shard: u32,
    pub homes: u64,
    /// Every slot, 12 bytes each: the key then the value, little-endian (an empty slot's key is
    /// 0).
    #[serde(with = "serde_bytes")]
    pub slots: Vec<u8>,
    /// The values of the slots whose value is `u32::MAX`: `(key, value)`.
    pub wide: Vec<(u64, u64)>,
}

const SLOT_BYTES: usize = 12;

/// A shard image as it lies in the bytes it was read from: what a load takes in, without
/// copying its slots out of the frame first. It decodes from the same bytes as [`ShardImage`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ShardImageRef<'a> {
    pub shard_bits: u8,
    pub shard: u32,
    pub homes: u64,
    #[serde(borrow)]
    pub slots: &'a [u8],
    pub wide: Cow<'a, [(u64, u64)]>,
}

impl ShardImage {
    /// The image borrowed, as a load reads it.
    pub fn view(&self) -> ShardImageRef<'_> {
        ShardImageRef {
            shard_bits: self.shard_bits,
            shard: self.shard,
            homes: self.homes,
            slots: &self.slots,
            wide: Cow::Borrowed(&self.wide),
        }
    }

    /// How many entries it holds.
    pub fn entry_count(&self) -> usize {
        self.view().entry_count()
    }

    /// How many slots it has, empty ones included.
    pub fn slot_count(&self) -> usize {
        self.view().slot_count()
    }

    /// Every `(key, value)` in the image, in slot order; `None` if it is not whole.
    pub fn entries(&self) -> Option<Vec<(u64, u64)>> {
        self.view().entries()
    }
}

impl ShardImageRef<'_> {
    /// Whole slots, and every wide value given: [`ShardImage::entries`] is `Some`.
    pub fn is_whole(&self) -> bool {
        self.slots.len().is_multiple_of(SLOT_BYTES)
            && self.occupied().all(|(key, narrow)| {
                narrow != WIDE || self.wide.iter().any(|&(wide_key, _)| wide_key == key)
            })
    }

    /// How many entries it holds.
    pub fn entry_count(&self) -> usize {
        self.occupied().count()
    }

    /// How many slots it has, empty ones included.
    pub fn slot_count(&self) -> usize {
        self.slots.len() / SLOT_BYTES
    }

    /// The occupied slots, `(key, value as held)`, in slot order.
    fn occupied(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.slots
            .chunks_exact(SLOT_BYTES)
            .map(slot_from_bytes)
            .filter(|slot| slot.key() != EMPTY)
            .map(|slot| (slot.key(), slot.value()))
    }

    /// How many entries it holds if it is a shard of this table's layout, its keys ascending,
    /// each in the shard; `None` if not. One pass.
    fn len_in_this_layout(&self) -> Option<usize> {
        let index = self.shard as usize;
        // The slots a shard of `homes` has: a load sizes the shard from `homes`, so a value
        // the slots do not bear out (damage the frame's checksum missed) is not trusted.
        let slots_for_homes = usize::try_from(self.homes)
            .ok()
            .and_then(|homes| homes.checked_add(spill_for(homes)));
        if u32::from(self.shard_bits) != SHARD_BITS
            || index >= SHARDS
            || !self.slots.len().is_multiple_of(SLOT_BYTES)
            || slots_for_homes != Some(self.slots.len() / SLOT_BYTES)
        {
            return None;
        }
        let mut previous = EMPTY;
        let mut len = 0;
        for (key, _) in self.occupied() {
            if key <= previous || shard_of(key) != index {
                return None;
            }
            previous = key;
            len += 1;
        }
        Some(len)
    }

    /// Each `(key, value)` in the image, in slot order, without collecting them; a wide value
    /// missing from the image reads as `u64::MAX` (an image that [`is_whole`](Self::is_whole)
    /// has none missing).
    pub fn for_each_entry(&self, mut each: impl FnMut(u64, u64)) {
        let wide: HashMap<u64, u64> = self.wide.iter().copied().collect();
        for (key, narrow) in self.occupied() {
            let value = match narrow {
                WIDE => wide.get(&key).copied().unwrap_or(u64::MAX),
                narrow => u64::from(narrow),
            };
            each(key, value);
        }
    }

    /// Every `(key, value)` in the image, in slot order; `None` if it is not
    /// [whole](Self::is_whole).
    pub fn entries(&self) -> Option<Vec<(u64, u64)>> {
        self.is_whole().then(|| {
            let mut entries = Vec::with_capacity(self.entry_count());
            self.for_each_entry(|key, value| entries.push((key, value)));
            entries
        })
    }
}

fn slot_from_bytes(bytes: &[u8]) -> Slot {
    let key = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    let value = u32::from_le_bytes(bytes[8..SLOT_BYTES].try_into().expect("4 bytes"));
    new_slot(key, value)
}

impl Default for OrderedTable {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl OrderedTable {
    /// A table that holds `entries` without growing.
    pub fn with_capacity(entries: usize) -> Self {
        let sized_homes = match entries.div_ceil(SHARDS) {
            0 => 0,
            per_shard => homes_for(per_shard, LOAD_FACTOR_SIZED),
        };
        Self {
            // Each allocated when first filled: an empty table costs next to nothing.
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            len: 0,
            wide_values: HashMap::new(),
            sized_homes,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, key: u64) -> Option<u64> {
        let key = stored(key);
        let shard = &self.shards[shard_of(key)];
        let slot = shard.find(key).ok()?;
        Some(self.widened(shard.slots[slot].value(), key))
    }

    pub fn contains(&self, key: u64) -> bool {
        self.get(key).is_some()
    }

    /// Inserts a key that is not in the table.
    pub fn insert(&mut self, key: u64, value: u64) {
        let key = stored(key);
        let narrow = self.narrowed(key, value);
        let shard = &mut self.shards[shard_of(key)];
        if shard.slots.is_empty() && self.sized_homes > 0 {
            *shard = Shard::with_homes(self.sized_homes);
        }
        shard.insert(key, narrow);
        self.len += 1;
    }

    /// Sets a key's value, inserting the key if it is not in the table; the value it had.
    pub fn set(&mut self, key: u64, value: u64) -> Option<u64> {
        let stored_key = stored(key);
        let shard_index = shard_of(stored_key);
        match self.shards[shard_index].find(stored_key) {
            Ok(slot) => {
                let old = self.widened(self.shards[shard_index].slots[slot].value(), stored_key);
                self.wide_values.remove(&stored_key);
                let narrow = self.narrowed(stored_key, value);
                self.shards[shard_index].slots[slot] = new_slot(stored_key, narrow);
                Some(old)
            }
            Err(_) => {
                self.insert(key, value);
                None
            }
        }
    }

    /// Inserts entries that are not in the table, given by ascending key, in one pass over each
    /// shard: for many entries at once (a load's), where inserting each would shift runs.
    pub fn extend_sorted(&mut self, entries: &[(u64, u64)]) {
        assert!(
            entries.windows(2).all(|pair| pair[0].0 < pair[1].0),
            "entries ascend"
        );
        let mut rest = entries;
        for shard_index in 0..SHARDS {
            let count = rest.partition_point(|&(key, _)| shard_of(stored(key)) <= shard_index);
            let (these, later) = rest.split_at(count);
            rest = later;
            if these.is_empty() {
                continue;
            }
            let slots: Vec<Slot> = these
                .iter()
                .map(|&(key, value)| {
                    let key = stored(key);
                    new_slot(key, self.narrowed(key, value))
                })
                .collect();
            self.shards[shard_index].merge(&slots, self.sized_homes);
            self.len += these.len();
        }
    }

    /// Each non-empty shard as a snapshot writes it, in key order.
    pub fn shard_images(&self) -> impl Iterator<Item = ShardImage> + '_ {
        self.shards
            .iter()
            .enumerate()
            .filter(|(_, shard)| shard.len > 0)
            .map(|(index, shard)| {
                let mut slots = Vec::with_capacity(shard.slots.len() * SLOT_BYTES);
                let mut wide = Vec::new();
                for slot in shard.slots.iter() {
                    slots.extend_from_slice(&slot.key().to_le_bytes());
                    slots.extend_from_slice(&slot.value().to_le_bytes());
                    if slot.key() != EMPTY && slot.value() == WIDE {
                        wide.push((slot.key(), self.wide_values[&slot.key()]));
                    }
                }
                ShardImage {
                    shard_bits: SHARD_BITS as u8,
                    shard: index as u32,
                    homes: shard.homes as u64,
                    slots,
                    wide,
                }
            })
    }

    /// Adds a snapshot's shard image (it [is whole](ShardImageRef::is_whole), its keys in no
    /// shard here yet): a shard of this layout, keys ascending, whose shard is still empty here
    /// is built from it in one pass, sized for it; any other image is sorted in.
    pub fn extend_from_image(&mut self, image: &ShardImageRef<'_>) {
        let index = image.shard as usize;
        match image.len_in_this_layout() {
            Some(len) if self.shards[index].len == 0 => {
                self.wide_values.extend(image.wide.iter().copied());
                let homes = homes_for(len, LOAD_FACTOR_SIZED)
                    .max(image.homes as usize)
                    .max(self.sized_homes);
                self.shards[index] = placed_growing(homes, || {
                    image.occupied().map(|(key, value)| new_slot(key, value))
                });
                self.len += len;
            }
            _ => {
                let mut entries = image.entries().unwrap_or_default();
                entries.sort_unstable();
                self.extend_sorted(&entries);
            }
        }
    }

    /// Every `(key, value)`, by ascending key.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.shards.iter().flat_map(move |shard| {
            shard
                .slots
                .iter()
                .filter(|slot| slot.key() != EMPTY)
                .map(move |slot| (slot.key(), self.widened(slot.value(), slot.key())))
        })
    }

    /// Heap bytes the slots take (the side map counted at 32 bytes an entry).
    #[cfg(test)]
    fn heap_bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.slots.len() * std::mem::size_of::<Slot>())
            .sum::<usize>()
            + self.wide_values.len() * 32
    }

    fn widened(&self, narrow: u32, key: u64) -> u64 {
        match narrow {
            WIDE => self.wide_values[&key],
            narrow => u64::from(narrow),
        }
    }

    /// The 32 bits a slot holds for `value`, putting a wide one in the side map.
    fn narrowed(&mut self, key: u64, value: u64) -> u32 {
        match u32::try_from(value) {
            Ok(narrow) if narrow != WIDE => narrow,
            _ => {
                self.wide_values.insert(key, value);
                WIDE
            }
        }
    }
}

impl Shard {
    fn with_homes(homes: usize) -> Self {
        Self {
            slots: vec![EMPTY_SLOT; homes + spill_for(homes)].into_boxed_slice(),
            homes,
            len: 0,
            tail: 0,
        }
    }

    /// The first slot to probe: the key, less the shard's bits, scaled onto the homes.
    fn home(&self, key: u64) -> usize {
        let within = key << SHARD_BITS;
        ((u128::from(within) * self.homes as u128) >> 64) as usize
    }

    /// `Ok(slot)` holding `key`, or `Err(slot)` where it would go: the first slot from its home
    /// that is empty or holds a larger key (the end of the slots if none).
    fn find(&self, key: u64) -> Result<usize, usize> {
        let mut slot = self.home(key);
        while let Some(found) = self.slots.get(slot).map(|slot| slot.key()) {
            if found == key {
                return Ok(slot);
            }
            if found == EMPTY || found > key {
                return Err(slot);
            }
            slot += 1;
        }
        Err(slot)
    }

    fn insert(&mut self, key: u64, value: u32) {
        if (self.len + 1) as f64 > self.homes as f64 * LOAD_FACTOR_MAX {
            self.grow();
        }
        let home = self.home(key);
        if home >= self.tail && home < self.slots.len() {
            // Past every occupied slot (so larger than every key here: each sits at or
            // after its home): the common case of a load in ascending order.
            self.slots[home] = new_slot(key, value);
            self.len += 1;
            self.tail = home + 1;
            return;
        }
        loop {
            let at = match self.find(key) {
                Ok(_) => panic!("a key is inserted once"),
                Err(at) => at,
            };
            let Some(empty) = self.slots[at.min(self.slots.len())..]
                .iter()
                .position(|slot| slot.key() == EMPTY)
                .map(|distance| at + distance)
            else {
                // The last run reached the end of the spill area.
                self.grow();
                continue;
            };
            self.slots.copy_within(at..empty, at + 1);
            self.slots[at] = new_slot(key, value);
            self.len += 1;
            self.tail = self.tail.max(empty + 1);
            return;
        }
    }

    /// Rebuilds the shard with [`GROWTH`] times its home slots.
    fn grow(&mut self) {
        let homes = ((self.homes as f64 * GROWTH).ceil() as usize).max(self.homes + HOMES_MIN);
        self.rebuild(homes, &[]);
    }

    /// Adds `extra` (ascending, none of them here) in one pass, into a shard larger if they
    /// need the room (at least `sized_homes`).
    fn merge(&mut self, extra: &[Slot], sized_homes: usize) {
        let len = self.len + extra.len();
        let homes = if len as f64 > self.homes as f64 * LOAD_FACTOR_MAX {
            homes_for(len, LOAD_FACTOR_SIZED).max(sized_homes)
        } else {
            self.homes
        };
        self.rebuild(homes, extra);
    }

    /// Rebuilds the shard over `homes` home slots from its entries and `extra` (ascending,
    /// none of them here), placing each at its home or just after the one before it.
    fn rebuild(&mut self, homes: usize, extra: &[Slot]) {
        let occupied = || {
            self.slots
                .iter()
                .copied()
                .filter(|slot| slot.key() != EMPTY)
        };
        *self = placed_growing(homes, || ascending(occupied(), extra.iter().copied()));
    }
}

/// [`placed`] over `homes` home slots, or over more if a run would not fit.
fn placed_growing<I: Iterator<Item = Slot>>(homes: usize, entries: impl Fn() -> I) -> Shard {
    let mut homes = homes;
    loop {
        match placed(homes, entries()) {
            Some(shard) => return shard,
            // A run longer than the spill area: more homes instead.
            None => homes += homes / 8 + HOMES_MIN,
        }
    }
}

/// A shard over `homes` home slots holding `entries` (ascending), each at its home or just
/// after the one before it; `None` if a run would not fit.
fn placed(homes: usize, entries: impl Iterator<Item = Slot>) -> Option<Shard> {
    let mut shard = Shard::with_homes(homes);
    let mut next_free = 0;
    for entry in entries {
        let slot = shard.home(entry.key()).max(next_free);
        *shard.slots.get_mut(slot)? = entry;
        next_free = slot + 1;
        shard.len += 1;
    }
    shard.tail = next_free;
    Some(shard)
}

/// Two ascending runs of slots merged into one; a key in both is a broken promise.
fn ascending(
    first: impl Iterator<Item = Slot>,
    second: impl Iterator<Item = Slot>,
) -> impl Iterator<Item = Slot> {
    let mut first = first.peekable();
    let mut second = second.peekable();
    std::iter::from_fn(move || match (first.peek(), second.peek()) {
        (Some(a), Some(b)) => {
            assert_ne!(a.key(), b.key(), "a key is inserted once");
            if a.key() < b.key() {
                first.next()
            } else {
                second.next()
            }
        }
        (Some(_), None) => first.next(),
        (None, _) => second.next(),
    })
}

fn stored(key: u64) -> u64 {
    if key == EMPTY { 1 } else { key }
}

fn shard_of(key: u64) -> usize {
    (key >> (u64::BITS - SHARD_BITS)) as usize
}

fn homes_for(entries: usize, load_factor: f64) -> usize {
    ((entries as f64 / load_factor).ceil() as usize).max(HOMES_MIN)
}

fn spill_for(homes: usize) -> usize {
    SPILL_MIN + homes / SPILL_SHARE
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spread(i: u64) -> u64 {
        i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (i >> 7)
    }

    /// The shard invariants, checked slot by slot.
    fn assert_ordered(table: &OrderedTable) {
        let mut total = 0;
        for (index, shard) in table.shards.iter().enumerate() {
            let mut previous = 0;
            let mut occupied = 0;
            for (slot, entry) in shard.slots.iter().enumerate() {
                let fingerprint = entry.key();
                if fingerprint == EMPTY {
                    continue;
                }
                occupied += 1;
                assert_eq!(shard_of(fingerprint), index, "in its shard");
                assert!(fingerprint > previous, "ascending at slot {slot}");
                let home = shard.home(fingerprint);
                assert!(home <= slot, "at or after its home");
                assert!(
                    shard.slots[home..=slot].iter().all(|s| s.key() != EMPTY),
                    "no gap between its home and slot {slot}"
                );
                previous = fingerprint;
            }
            assert_eq!(occupied, shard.len);
            let last_occupied = shard.slots.iter().rposition(|s| s.key() != EMPTY);
            assert_eq!(shard.tail, last_occupied.map_or(0, |slot| slot + 1), "tail");
            assert!(shard.len as f64 <= shard.homes as f64 * LOAD_FACTOR_MAX + 1.0);
            total += occupied;
        }
        assert_eq!(total, table.len());
    }

    #[test]
    fn finds_what_was_inserted_across_growth() {
        let mut table = OrderedTable::default();
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
        assert_ordered(&table);
    }

    #[test]
    fn iterates_in_ascending_order_and_reloads_in_place() {
        let mut table = OrderedTable::default();
        for i in 1..20_000u64 {
            table.insert(spread(i), i);
        }
        let entries: Vec<(u64, u64)> = table.iter().collect();
        assert!(entries.windows(2).all(|pair| pair[0].0 < pair[1].0));
        let mut reloaded = OrderedTable::with_capacity(entries.len());
        for &(fingerprint, offset) in &entries {
            reloaded.insert(fingerprint, offset);
        }
        assert_eq!(reloaded.iter().collect::<Vec<_>>(), entries);
        assert_ordered(&reloaded);
        let slots = |table: &OrderedTable| table.heap_bytes();
        assert!(
            slots(&reloaded) <= slots(&table) * 11 / 10,
            "a sized table is no larger than a grown one"
        );
    }

    #[test]
    fn stays_dense_at_any_size() {
        let mut table = OrderedTable::default();
        for i in 1..200_000u64 {
            table.insert(spread(i), i);
            if i % 20_000 == 0 {
                let bytes_per_entry = table.heap_bytes() as f64 / table.len() as f64;
                assert!(
                    bytes_per_entry < 12.0 / 0.78,
                    "{bytes_per_entry:.1} bytes an entry at {i}"
                );
            }
        }
        assert_ordered(&table);
    }

    #[test]
    fn wide_values_and_the_empty_key_work() {
        let mut table = OrderedTable::with_capacity(10);
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
            "wide values survive growth"
        );
        assert_ordered(&table);
    }

    #[test]
    fn a_crowded_end_of_a_shard_spills_and_grows() {
        let mut table = OrderedTable::with_capacity(0);
        let last_home = u64::MAX;
        for i in 0..100 {
            table.insert(last_home - i, i);
        }
        for i in 0..100 {
            assert_eq!(table.get(last_home - i), Some(i));
        }
        let mut first_shard = OrderedTable::with_capacity(0);
        for i in 1..=100 {
            first_shard.insert(i, i);
        }
        assert_eq!(first_shard.get(50), Some(50));
        assert_eq!(first_shard.get(101), None);
        assert_ordered(&table);
        assert_ordered(&first_shard);
    }

    #[test]
    fn a_sized_table_allocates_each_shard_when_first_filled_and_never_grows() {
        let total = 64_000u64;
        let mut table = OrderedTable::with_capacity(total as usize);
        assert!(
            table.shards.iter().all(|shard| shard.slots.is_empty()),
            "lazily"
        );
        let mut first: Vec<(u64, u64)> = (1..=total / 2).map(|i| (spread(i), i)).collect();
        first.sort_unstable();
        for &(key, value) in &first {
            table.insert(key, value);
        }
        let homes: Vec<usize> = table.shards.iter().map(|shard| shard.homes).collect();
        assert!(
            homes.iter().all(|&h| h == table.sized_homes),
            "sized when first filled"
        );
        // Three rounds of entries spread among those there, like a load's deltas.
        for round in 0..3 {
            let mut more: Vec<(u64, u64)> = (total / 2 + 1..=total)
                .filter(|i| i % 3 == round)
                .map(|i| (spread(i), i))
                .collect();
            more.sort_unstable();
            table.extend_sorted(&more);
            assert_ordered(&table);
        }
        let now: Vec<usize> = table.shards.iter().map(|shard| shard.homes).collect();
        assert_eq!(homes, now, "no shard grew");
        assert_eq!(table.len(), total as usize);
        for i in 1..=total {
            assert_eq!(table.get(spread(i)), Some(i), "entry {i}");
        }
    }

    #[test]
    fn extend_sorted_merges_into_what_is_there() {
        let mut table = OrderedTable::with_capacity(3_000);
        for i in 1..3_000u64 {
            table.insert(spread(i), i);
        }
        let mut more: Vec<(u64, u64)> = (3_000..40_000u64).map(|i| (spread(i), i)).collect();
        more.push((spread(40_000), u64::MAX - 3));
        more.sort_unstable();
        table.extend_sorted(&more);
        table.extend_sorted(&[]);
        assert_eq!(table.len(), 40_000);
        for i in 1..40_000u64 {
            assert_eq!(table.get(spread(i)), Some(i));
        }
        assert_eq!(table.get(spread(40_000)), Some(u64::MAX - 3));
        assert_ordered(&table);
        table.insert(spread(50_000), 5);
        assert_eq!(table.get(spread(50_000)), Some(5));
    }

    #[test]
    #[should_panic(expected = "a key is inserted once")]
    fn extend_sorted_refuses_a_key_already_there() {
        let mut table = OrderedTable::default();
        table.insert(spread(1), 1);
        table.extend_sorted(&[(spread(1), 2)]);
    }

    #[test]
    fn a_table_builds_from_its_shard_images_and_more_entries() {
        let mut table = OrderedTable::default();
        for i in 1..30_000u64 {
            table.insert(spread(i), i);
        }
        table.insert(spread(30_000), u64::MAX - 1);
        let images: Vec<ShardImage> = table.shard_images().collect();
        assert!(images.iter().all(|image| image.view().is_whole()));
        let entries: Vec<(u64, u64)> = images.iter().flat_map(|i| i.entries().unwrap()).collect();
        assert_eq!(entries, table.iter().collect::<Vec<_>>());
        let mut more: Vec<(u64, u64)> = (30_001..40_000u64).map(|i| (spread(i), i)).collect();
        more.sort_unstable();
        let mut built = OrderedTable::with_capacity(40_000);
        built.insert(spread(50_000), 7);
        for image in &images {
            built.extend_from_image(&image.view());
        }
        built.extend_sorted(&more);
        assert_eq!(built.len(), 40_000);
        for i in 1..40_000u64 {
            let expected = if i == 30_000 { u64::MAX - 1 } else { i };
            assert_eq!(built.get(spread(i)), Some(expected));
        }
        assert_eq!(built.get(spread(50_000)), Some(7), "what it held stays");
        assert_ordered(&built);
    }

    #[test]
    fn a_shard_image_out_of_order_is_sorted_in_instead() {
        let mut table = OrderedTable::default();
        for i in 1..5_000u64 {
            table.insert(spread(i), i);
        }
        let images: Vec<ShardImage> = table.shard_images().collect();
        let mut swapped = images[0].clone();
        let occupied: Vec<usize> = (0..swapped.slots.len() / SLOT_BYTES)
            .filter(|&at| slot_from_bytes(&swapped.slots[at * SLOT_BYTES..]).key() != EMPTY)
            .collect();
        let (a, b) = (occupied[0] * SLOT_BYTES, occupied[1] * SLOT_BYTES);
        let first: Vec<u8> = swapped.slots[a..a + SLOT_BYTES].to_vec();
        let second: Vec<u8> = swapped.slots[b..b + SLOT_BYTES].to_vec();
        swapped.slots[a..a + SLOT_BYTES].copy_from_slice(&second);
        swapped.slots[b..b + SLOT_BYTES].copy_from_slice(&first);
        assert_eq!(swapped.view().len_in_this_layout(), None);
        assert_eq!(
            images[0].view().len_in_this_layout(),
            Some(images[0].entries().unwrap().len())
        );
        let mut other_layout = images[1].clone();
        other_layout.shard_bits += 1;
        let mut too_many_homes = images[2].clone();
        too_many_homes.homes = 1 << 40;
        assert_eq!(too_many_homes.view().len_in_this_layout(), None);
        let mut rebuilt_images = images.clone();
        rebuilt_images[0] = swapped;
        rebuilt_images[1] = other_layout;
        rebuilt_images[2] = too_many_homes;
        let mut built = OrderedTable::default();
        for image in &rebuilt_images {
            built.extend_from_image(&image.view());
        }
        assert_eq!(
            built.iter().collect::<Vec<_>>(),
            table.iter().collect::<Vec<_>>()
        );
        assert_ordered(&built);
        let mut torn = images[2].clone();
        torn.slots.truncate(torn.slots.len() - 5);
        assert_eq!(torn.entries(), None, "not whole slots");
        assert!(!torn.view().is_whole());
    }

    #[test]
    fn set_replaces_a_value_narrow_or_wide() {
        let mut table = OrderedTable::default();
        assert_eq!(table.set(spread(1), 5), None);
        assert_eq!(table.set(spread(1), 6), Some(5));
        assert_eq!(table.set(spread(1), u64::MAX), Some(6));
        assert_eq!(table.get(spread(1)), Some(u64::MAX));
        assert_eq!(table.set(spread(1), 7), Some(u64::MAX));
        assert!(
            table.wide_values.is_empty(),
            "a value made narrow leaves the side map"
        );
        for i in 2..10_000 {
            table.set(spread(i), i);
        }
        for i in 2..10_000 {
            assert_eq!(table.set(spread(i), i + 1), Some(i));
        }
        assert_eq!(table.len(), 9_999);
        assert_eq!(table.get(spread(1)), Some(7));
        assert_eq!(table.get(spread(9_999)), Some(10_000));
        assert_ordered(&table);
    }

    #[test]
    fn lookups_of_absent_keys_stop_at_a_larger_one() {
        let mut table = OrderedTable::with_capacity(1_000);
        for i in 1..1_000u64 {
            table.insert(spread(i) | 1, i);
        }
        for i in 1..1_000u64 {
            assert_eq!(table.get(spread(i) & !1), None);
        }
    }
}
