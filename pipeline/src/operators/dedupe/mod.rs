//! Dedupe by `payment_ref`, forever: the index of recorded donations.
//!
//! The first event of a `payment_ref` is recorded; a later one with the same order, user,
//! campaign, amount and currency is a **duplicate** (a retried callback; its `paid_at` may differ
//! and the first one's is kept); a later one that differs in any of those is a **conflict**. Neither
//! is counted again.
//!
//! The index maps a 64-bit fingerprint of each recorded `payment_ref` to the log offset of its
//! first event, in an [`OrderedTable`] — 13 to 15 bytes per donation, so tens of millions fit
//! in memory — and the log itself holds what was recorded. A fingerprint match is confirmed
//! against the recorded event before anything is decided: from a ring of the last donations
//! recorded (two independent 64-bit checks of identity and content), or else by reading the
//! recorded event from the log and comparing every field exactly. Two different `payment_ref`s
//! that share a fingerprint are kept apart by an exact side table, so the index never merges two
//! payments.

mod ordered_table;

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64_with_seed;

pub use ordered_table::{OrderedTable, ShardImage, ShardImageRef};

use crate::event::DonationEvent;
use crate::log::Offset;

const FINGERPRINT_SEED: u64 = 0x7461_6c6c_795f_6670; // "tally_fp"
const IDENTITY_CHECK_SEED: u64 = 0x7461_6c6c_795f_6964; // "tally_id"
const CONTENT_SEED: u64 = 0x7461_6c6c_795f_6374; // "tally_ct"
/// Recently recorded donations remembered: a retry arriving within this many donations of its
/// original needs no log read.
const RECENT_DONATIONS: usize = 128 * 1024;

/// The index key of a `payment_ref`.
pub fn fingerprint(payment_ref: &str) -> u64 {
    xxh3_64_with_seed(payment_ref.as_bytes(), FINGERPRINT_SEED)
}

fn identity_check(payment_ref: &str) -> u64 {
    xxh3_64_with_seed(payment_ref.as_bytes(), IDENTITY_CHECK_SEED)
}

/// A digest of the fields that must match for a resend to be a duplicate.
fn content_digest(event: &DonationEvent) -> u64 {
    let mut bytes = Vec::with_capacity(128);
    for field in [
        &event.order_id,
        &event.user_id,
        &event.campaign_id,
        &event.currency,
    ] {
        bytes.extend_from_slice(&(field.len() as u32).to_le_bytes());
        bytes.extend_from_slice(field.as_bytes());
    }
    bytes.extend_from_slice(&event.amount_cents.to_le_bytes());
    xxh3_64_with_seed(&bytes, CONTENT_SEED)
}

/// The fields in which a resend differs from the recorded donation (`paid_at` is not one).
pub fn differing_fields(
    recorded: &DonationEvent,
    received: &DonationEvent,
) -> Vec<FieldDifference> {
    FieldDifference::among(&[
        (
            "amount_cents",
            recorded.amount_cents.to_string(),
            received.amount_cents.to_string(),
        ),
        (
            "campaign_id",
            recorded.campaign_id.clone(),
            received.campaign_id.clone(),
        ),
        (
            "currency",
            recorded.currency.clone(),
            received.currency.clone(),
        ),
        (
            "order_id",
            recorded.order_id.clone(),
            received.order_id.clone(),
        ),
        (
            "user_id",
            recorded.user_id.clone(),
            received.user_id.clone(),
        ),
    ])
}

/// One field of a conflicting resend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldDifference {
    pub field: String,
    pub recorded: String,
    pub received: String,
}

impl FieldDifference {
    /// The differences among `(field, recorded, received)` triples, in their order.
    pub fn among(fields: &[(&str, String, String)]) -> Vec<FieldDifference> {
        fields
            .iter()
            .filter(|(_, recorded, received)| recorded != received)
            .map(|(field, recorded, received)| FieldDifference {
                field: (*field).to_owned(),
                recorded: recorded.clone(),
                received: received.clone(),
            })
            .collect()
    }
}

/// Duplicates and conflicts seen for one recorded donation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResendCounts {
    pub duplicates: u32,
    pub conflicts: u32,
}

/// A change to the index, as written to the checkpoint journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum IndexChange {
    /// A new donation recorded at `offset`.
    Recorded { fingerprint: u64, offset: Offset },
    /// A new donation whose fingerprint another `payment_ref` already has.
    RecordedCollision { payment_ref: String, offset: Offset },
    /// The resend counts of the donation recorded at `offset`, absolute.
    Resends {
        offset: Offset,
        counts: ResendCounts,
    },
}

/// What a fingerprint lookup found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Candidate {
    /// No recorded donation can have this `payment_ref`.
    None,
    /// The donation recorded at this offset is this `payment_ref` for sure (exact side table).
    Exact(Offset),
    /// The donation recorded at this offset has the same fingerprint; confirm before deciding.
    Fingerprint(Offset),
}

/// A recently recorded donation's checks, to confirm a fingerprint match without a log read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecentChecks {
    identity: u64,
    content: u64,
}

impl RecentChecks {
    pub fn of(event: &DonationEvent) -> Self {
        Self {
            identity: identity_check(&event.payment_ref),
            content: content_digest(event),
        }
    }

    pub fn same_payment(&self, event: &DonationEvent) -> bool {
        self.identity == identity_check(&event.payment_ref)
    }

    pub fn same_content(&self, event: &DonationEvent) -> bool {
        self.content == content_digest(event)
    }
}

/// Resend counts by the offset of the recorded donation, in an [`OrderedTable`]: about 14 bytes
/// a donation resent (a hash map of them took twice that).
///
/// The table wants uniformly distributed keys, so an offset is scrambled by multiplying it
/// (plus one: never 0) by an odd constant, which is undone by multiplying with its inverse. The
/// counts are packed in one `u64` (duplicates in the low half), nearly always under 32 bits.
#[derive(Debug, Default)]
pub struct ResendTable {
    table: OrderedTable,
}

/// 2^64 / φ, odd: consecutive offsets land evenly spread over the keys.
const OFFSET_SCRAMBLE: u64 = 0x9E37_79B9_7F4A_7C15;
const OFFSET_UNSCRAMBLE: u64 = inverse_of(OFFSET_SCRAMBLE);

/// The inverse of an odd number modulo 2^64, by Newton's iteration (each step doubles the bits
/// that are right).
const fn inverse_of(odd: u64) -> u64 {
    let mut inverse = odd;
    let mut step = 0;
    while step < 6 {
        inverse = inverse.wrapping_mul(2u64.wrapping_sub(odd.wrapping_mul(inverse)));
        step += 1;
    }
    inverse
}

impl ResendTable {
    pub fn get(&self, offset: Offset) -> ResendCounts {
        self.table
            .get(scramble(offset))
            .map_or_else(ResendCounts::default, ResendCounts::unpacked)
    }

    pub fn set(&mut self, offset: Offset, counts: ResendCounts) {
        self.table.set(scramble(offset), counts.packed());
    }

    /// Counts as a load reads them, in the order they were checkpointed (the last of an
    /// offset's stands): into an empty table in one pass, sized for them, instead of growing
    /// it one entry at a time.
    pub fn restore(&mut self, counts: Vec<(Offset, ResendCounts)>) {
        if !self.table.is_empty() {
            counts
                .into_iter()
                .for_each(|(offset, counts)| self.set(offset, counts));
            return;
        }
        let mut entries: Vec<(u64, u64)> = counts
            .into_iter()
            .map(|(offset, counts)| (scramble(offset), counts.packed()))
            .collect();
        // Stable: an offset's entries stay in checkpoint order, and the last is kept.
        entries.sort_by_key(|&(key, _)| key);
        entries.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                kept.1 = later.1;
            }
            same
        });
        self.table = OrderedTable::with_capacity(entries.len());
        self.table.extend_sorted(&entries);
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Every `(offset, counts)`, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (Offset, ResendCounts)> + '_ {
        self.table
            .iter()
            .map(|(key, packed)| (unscramble(key), ResendCounts::unpacked(packed)))
    }
}

fn scramble(offset: Offset) -> u64 {
    offset.wrapping_add(1).wrapping_mul(OFFSET_SCRAMBLE)
}

fn unscramble(key: u64) -> Offset {
    key.wrapping_mul(OFFSET_UNSCRAMBLE).wrapping_sub(1)
}

impl ResendCounts {
    /// Duplicates in the low 32 bits, conflicts in the high: the same eight bytes as their
    /// canonical encoding, read as a little-endian `u64`.
    pub fn packed(self) -> u64 {
        u64::from(self.duplicates) | (u64::from(self.conflicts) << 32)
    }

    pub fn unpacked(packed: u64) -> Self {
        Self {
            duplicates: packed as u32,
            conflicts: (packed >> 32) as u32,
        }
    }
}

/// The recorded donations of one partition.
#[derive(Debug, Default)]
pub struct DonationIndex {
    first_offsets: OrderedTable,
    /// `payment_ref`s whose fingerprint was taken by another `payment_ref`.
    collisions: BTreeMap<String, Offset>,
    resends: ResendTable,
    /// Changes since the last checkpoint, in order.
    pending: Vec<IndexChange>,
    recent: RecentDonations,
}

/// The checks of the last [`RECENT_DONATIONS`] donations recorded, by ascending offset (they
/// are recorded in log order): 24 bytes each, found by binary search.
#[derive(Debug, Default)]
struct RecentDonations {
    entries: VecDeque<(Offset, RecentChecks)>,
}

impl RecentDonations {
    fn remember(&mut self, offset: Offset, checks: RecentChecks) {
        if self.entries.back().is_some_and(|&(last, _)| last >= offset) {
            // Not in log order (a state rebuilt over again): start over rather than mis-sort.
            self.entries.clear();
        }
        if self.entries.len() == RECENT_DONATIONS {
            self.entries.pop_front();
        }
        self.entries.push_back((offset, checks));
    }

    fn get(&self, offset: Offset) -> Option<RecentChecks> {
        let at = self
            .entries
            .binary_search_by_key(&offset, |&(recorded, _)| recorded)
            .ok()?;
        Some(self.entries[at].1)
    }
}

impl DonationIndex {
    pub fn with_capacity(recorded: usize) -> Self {
        Self {
            first_offsets: OrderedTable::with_capacity(recorded),
            ..Self::default()
        }
    }

    /// Replays a checkpointed change (on load); the change is not pending.
    pub fn restore(&mut self, change: IndexChange) {
        match change {
            IndexChange::Recorded {
                fingerprint,
                offset,
            } => {
                self.first_offsets.insert(fingerprint, offset);
            }
            IndexChange::RecordedCollision {
                payment_ref,
                offset,
            } => {
                self.collisions.insert(payment_ref, offset);
            }
            IndexChange::Resends { offset, counts } => {
                self.resends.set(offset, counts);
            }
        }
    }

    /// Replays checkpointed recorded donations (on load) given by ascending fingerprint, in one
    /// pass over the table.
    /// Replays the resend counts a load read, in checkpoint order (see [`ResendTable::restore`]).
    pub fn restore_resends(&mut self, counts: Vec<(Offset, ResendCounts)>) {
        self.resends.restore(counts);
    }

    pub fn restore_recorded(&mut self, recorded: &[(u64, Offset)]) {
        self.first_offsets.extend_sorted(recorded);
    }

    pub fn lookup(&self, payment_ref: &str) -> Candidate {
        if !self.collisions.is_empty()
            && let Some(&offset) = self.collisions.get(payment_ref)
        {
            return Candidate::Exact(offset);
        }
        match self.first_offsets.get(fingerprint(payment_ref)) {
            Some(offset) => Candidate::Fingerprint(offset),
            None => Candidate::None,
        }
    }

    /// Checks of a recently recorded donation, if still remembered.
    pub fn recent(&self, offset: Offset) -> Option<RecentChecks> {
        self.recent.get(offset)
    }

    /// Records a new donation whose `payment_ref` is not in the index.
    pub fn record(&mut self, event: &DonationEvent, offset: Offset) -> IndexChange {
        let fingerprint = fingerprint(&event.payment_ref);
        let change = if self.first_offsets.contains(fingerprint) {
            IndexChange::RecordedCollision {
                payment_ref: event.payment_ref.clone(),
                offset,
            }
        } else {
            IndexChange::Recorded {
                fingerprint,
                offset,
            }
        };
        self.restore(change.clone());
        self.pending.push(change.clone());
        self.recent.remember(offset, RecentChecks::of(event));
        change
    }

    /// Counts a duplicate or conflict of the donation recorded at `offset`.
    pub fn count_resend(&mut self, offset: Offset, conflict: bool) -> IndexChange {
        let mut counts = self.resends.get(offset);
        if conflict {
            counts.conflicts = counts.conflicts.saturating_add(1);
        } else {
            counts.duplicates = counts.duplicates.saturating_add(1);
        }
        self.resends.set(offset, counts);
        let change = IndexChange::Resends { offset, counts };
        self.pending.push(change.clone());
        change
    }

    pub fn resends(&self, offset: Offset) -> ResendCounts {
        self.resends.get(offset)
    }

    /// Changes since the last call, for the next checkpoint.
    pub fn take_pending(&mut self) -> Vec<IndexChange> {
        std::mem::take(&mut self.pending)
    }

    /// Offsets of every recorded donation below `end`, ascending.
    pub fn recorded_offsets_below(&self, end: Offset) -> Vec<Offset> {
        let mut offsets: Vec<Offset> = self
            .first_offsets
            .iter()
            .map(|(_, offset)| offset)
            .chain(self.collisions.values().copied())
            .filter(|&offset| offset < end)
            .collect();
        offsets.sort_unstable();
        offsets
    }

    /// The offset that may hold this payment's recorded donation: certain for the exact side
    /// table, to be confirmed (read the record, compare `payment_ref`) for a fingerprint match.
    pub fn recorded_offset_candidate(&self, payment_ref: &str) -> Option<Offset> {
        match self.lookup(payment_ref) {
            Candidate::Exact(offset) | Candidate::Fingerprint(offset) => Some(offset),
            Candidate::None => None,
        }
    }

    /// Whether the record at `offset`, whose `payment_ref` is given, is a recorded donation (the
    /// first event of its payment) rather than a duplicate or conflict.
    pub fn is_recorded_at(&self, payment_ref: &str, offset: Offset) -> bool {
        match self.lookup(payment_ref) {
            Candidate::Exact(recorded) | Candidate::Fingerprint(recorded) => recorded == offset,
            Candidate::None => false,
        }
    }

    pub fn recorded(&self) -> usize {
        self.first_offsets.len() + self.collisions.len()
    }

    /// The fingerprint table's shards as a snapshot writes them.
    pub fn fingerprint_shards(&self) -> impl Iterator<Item = ShardImage> + '_ {
        self.first_offsets.shard_images()
    }

    /// Replays a snapshot's shard of the fingerprint table (on load), built in one pass.
    pub fn restore_shard(&mut self, image: &ShardImageRef<'_>) {
        self.first_offsets.extend_from_image(image);
    }

    /// Every donation resent, with its counts, in no particular order.
    pub fn resend_entries(&self) -> impl Iterator<Item = (Offset, ResendCounts)> + '_ {
        self.resends.iter()
    }

    /// The rest of the index as changes that rebuild it: collisions, then resend counts by
    /// offset.
    pub fn other_entries(&self) -> impl Iterator<Item = IndexChange> + '_ {
        let mut resends: Vec<(Offset, ResendCounts)> = self.resends.iter().collect();
        resends.sort_unstable_by_key(|&(offset, _)| offset);
        self.collisions
            .iter()
            .map(|(payment_ref, &offset)| IndexChange::RecordedCollision {
                payment_ref: payment_ref.clone(),
                offset,
            })
            .chain(
                resends
                    .into_iter()
                    .map(|(offset, counts)| IndexChange::Resends { offset, counts }),
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventTime;

    fn event(payment_ref: &str, amount_cents: u64) -> DonationEvent {
        DonationEvent {
            payment_ref: payment_ref.into(),
            order_id: "o".into(),
            user_id: "u".into(),
            campaign_id: "c".into(),
            amount_cents,
            currency: "USD".into(),
            paid_at: EventTime(0),
        }
    }

    #[test]
    fn remembers_the_last_recent_donations_only() {
        let mut recent = RecentDonations::default();
        let checks = RecentChecks::of(&event("pay_1", 100));
        for offset in 0..(RECENT_DONATIONS as u64 + 10) {
            recent.remember(offset * 2, checks);
        }
        assert_eq!(recent.get(0), None, "the oldest are forgotten");
        assert_eq!(recent.get(18), None);
        assert_eq!(recent.get(20), Some(checks));
        assert_eq!(recent.get(21), None, "never recorded");
        assert_eq!(recent.get(RECENT_DONATIONS as u64 * 2 + 18), Some(checks));
        recent.remember(5, checks);
        assert_eq!(recent.get(5), Some(checks), "out of order: starts over");
        assert_eq!(recent.get(20), None);
    }

    #[test]
    fn records_then_finds_by_fingerprint() {
        let mut index = DonationIndex::default();
        assert_eq!(index.lookup("pay_1"), Candidate::None);
        index.record(&event("pay_1", 100), 7);
        assert_eq!(index.lookup("pay_1"), Candidate::Fingerprint(7));
        let checks = index.recent(7).unwrap();
        assert!(checks.same_payment(&event("pay_1", 100)));
        assert!(checks.same_content(&event("pay_1", 100)));
        assert!(!checks.same_content(&event("pay_1", 200)));
        assert!(!checks.same_payment(&event("pay_2", 100)));
        assert_eq!(
            index.take_pending(),
            vec![IndexChange::Recorded {
                fingerprint: fingerprint("pay_1"),
                offset: 7
            }]
        );
    }

    #[test]
    fn a_fingerprint_collision_goes_to_the_exact_side_table() {
        let mut index = DonationIndex::default();
        index.record(&event("pay_1", 100), 1);
        // Simulate a second payment_ref with the same fingerprint.
        let change = index.record(&event("pay_1_twin", 100), 2);
        assert!(
            matches!(change, IndexChange::Recorded { .. }),
            "different fingerprints here"
        );
        index.collisions.insert("pay_x".into(), 3);
        assert_eq!(index.lookup("pay_x"), Candidate::Exact(3));
        assert_eq!(index.recorded(), 3);
    }

    #[test]
    fn resend_counts_keep_their_offsets_through_the_scramble() {
        assert_eq!(OFFSET_SCRAMBLE.wrapping_mul(OFFSET_UNSCRAMBLE), 1);
        let mut table = ResendTable::default();
        let offsets = [0, 1, 2, 1_000, u64::from(u32::MAX), u64::MAX - 1];
        for (i, &offset) in offsets.iter().enumerate() {
            let counts = ResendCounts {
                duplicates: i as u32 + 1,
                conflicts: if i % 2 == 0 { 0 } else { u32::MAX },
            };
            table.set(offset, counts);
            assert_eq!(table.get(offset), counts);
        }
        let mut listed: Vec<Offset> = table.iter().map(|(offset, _)| offset).collect();
        listed.sort_unstable();
        assert_eq!(listed, offsets);
        assert_eq!(table.get(3), ResendCounts::default());
        let counts = ResendCounts {
            duplicates: 7,
            conflicts: 9,
        };
        assert_eq!(
            counts.packed().to_le_bytes().to_vec(),
            crate::support::codec::encode(&counts),
            "packed as encoded"
        );
    }

    #[test]
    fn restored_resend_counts_keep_the_last_of_each_offset() {
        let counts = |duplicates| ResendCounts {
            duplicates,
            conflicts: duplicates / 2,
        };
        let checkpointed: Vec<(Offset, ResendCounts)> = (0..5_000u64)
            .flat_map(|offset| (1..=(offset % 4) as u32).map(move |n| (offset, counts(n))))
            .collect();
        let mut bulk = ResendTable::default();
        bulk.restore(checkpointed.clone());
        let mut one_by_one = ResendTable::default();
        for &(offset, counts) in &checkpointed {
            one_by_one.set(offset, counts);
        }
        let mut restored: Vec<_> = bulk.iter().collect();
        let mut set: Vec<_> = one_by_one.iter().collect();
        restored.sort_unstable_by_key(|&(offset, _)| offset);
        set.sort_unstable_by_key(|&(offset, _)| offset);
        assert_eq!(restored, set);
        assert_eq!(bulk.get(7), counts(3));
        assert_eq!(bulk.get(4), ResendCounts::default());
        // Into a table already holding counts: the same as setting each.
        bulk.restore(vec![(7, counts(9)), (8, counts(1))]);
        assert_eq!((bulk.get(7), bulk.get(8)), (counts(9), counts(1)));
    }

    #[test]
    fn resend_counts_are_absolute_in_changes() {
        let mut index = DonationIndex::default();
        index.record(&event("pay_1", 100), 1);
        index.count_resend(1, false);
        let change = index.count_resend(1, true);
        assert_eq!(
            change,
            IndexChange::Resends {
                offset: 1,
                counts: ResendCounts {
                    duplicates: 1,
                    conflicts: 1
                }
            }
        );
        assert_eq!(
            index.resends(1),
            ResendCounts {
                duplicates: 1,
                conflicts: 1
            }
        );
    }

    #[test]
    fn differing_fields_names_each_field_but_not_paid_at() {
        let recorded = event("p", 100);
        let mut received = event("p", 250);
        received.user_id = "someone-else".into();
        received.paid_at = EventTime(99);
        let fields: Vec<_> = differing_fields(&recorded, &received)
            .into_iter()
            .map(|d| d.field)
            .collect();
        assert_eq!(fields, vec!["amount_cents", "user_id"]);
    }
}
