//! Dedupe by `payment_ref`, forever: the index of recorded donations.
//!
//! The first event of a `payment_ref` is recorded; a later one with the same order, user,
//! campaign, amount and currency is a **duplicate** (a retried callback; its `paid_at` may differ
//! and the first one's is kept); a later one that differs in any of those is a **conflict**. Neither
//! is counted again.
//!
//! The index maps a 64-bit fingerprint of each recorded `payment_ref` to the log offset of its
//! first event — 16 bytes per donation, so tens of millions fit in memory — and the log itself
//! holds what was recorded. A fingerprint match is confirmed against the recorded event before
//! anything is decided: from a small cache of recently recorded donations (two independent
//! 64-bit checks of identity and content), or else by reading the recorded event from the log
//! and comparing every field exactly. Two different `payment_ref`s that share a fingerprint are
//! kept apart by an exact side table, so the index never merges two payments.

mod fingerprint_table;

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64_with_seed;

pub use fingerprint_table::FingerprintTable;

use crate::event::DonationEvent;
use crate::log::Offset;

const FINGERPRINT_SEED: u64 = 0x7461_6c6c_795f_6670; // "tally_fp"
const IDENTITY_CHECK_SEED: u64 = 0x7461_6c6c_795f_6964; // "tally_id"
const CONTENT_SEED: u64 = 0x7461_6c6c_795f_6374; // "tally_ct"
/// Recently recorded donations remembered per generation; two generations are kept, so a retry
/// arriving within this many donations of its original needs no log read.
const RECENT_PER_GENERATION: usize = 64 * 1024;

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
    let mut differences = Vec::new();
    let mut compare = |field: &str, recorded: String, received: String| {
        if recorded != received {
            differences.push(FieldDifference {
                field: field.to_owned(),
                recorded,
                received,
            });
        }
    };
    compare(
        "amount_cents",
        recorded.amount_cents.to_string(),
        received.amount_cents.to_string(),
    );
    compare(
        "campaign_id",
        recorded.campaign_id.clone(),
        received.campaign_id.clone(),
    );
    compare(
        "currency",
        recorded.currency.clone(),
        received.currency.clone(),
    );
    compare(
        "order_id",
        recorded.order_id.clone(),
        received.order_id.clone(),
    );
    compare(
        "user_id",
        recorded.user_id.clone(),
        received.user_id.clone(),
    );
    differences
}

/// One field of a conflicting resend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldDifference {
    pub field: String,
    pub recorded: String,
    pub received: String,
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

/// The recorded donations of one partition.
#[derive(Debug, Default)]
pub struct DonationIndex {
    first_offsets: FingerprintTable,
    /// `payment_ref`s whose fingerprint was taken by another `payment_ref`.
    collisions: BTreeMap<String, Offset>,
    /// Keyed by the offset of the recorded donation.
    resends: HashMap<Offset, ResendCounts>,
    /// Changes since the last checkpoint, in order.
    pending: Vec<IndexChange>,
    recent: [HashMap<Offset, RecentChecks>; 2],
}

impl DonationIndex {
    pub fn with_capacity(recorded: usize) -> Self {
        Self {
            first_offsets: FingerprintTable::with_capacity(recorded),
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
                self.resends.insert(offset, counts);
            }
        }
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
        self.recent
            .iter()
            .find_map(|generation| generation.get(&offset).copied())
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
        self.remember(offset, RecentChecks::of(event));
        change
    }

    fn remember(&mut self, offset: Offset, checks: RecentChecks) {
        if self.recent[0].len() >= RECENT_PER_GENERATION {
            self.recent.swap(0, 1);
            self.recent[0].clear();
        }
        self.recent[0].insert(offset, checks);
    }

    /// Counts a duplicate or conflict of the donation recorded at `offset`.
    pub fn count_resend(&mut self, offset: Offset, conflict: bool) -> IndexChange {
        let counts = self.resends.entry(offset).or_default();
        if conflict {
            counts.conflicts = counts.conflicts.saturating_add(1);
        } else {
            counts.duplicates = counts.duplicates.saturating_add(1);
        }
        let change = IndexChange::Resends {
            offset,
            counts: *counts,
        };
        self.pending.push(change.clone());
        change
    }

    pub fn resends(&self, offset: Offset) -> ResendCounts {
        self.resends.get(&offset).copied().unwrap_or_default()
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

    /// The recorded donations of the fingerprint table, `(fingerprint, offset)`, in table
    /// order (a snapshot writes them so, and a table of the same size loads them in order).
    pub fn fingerprint_entries(&self) -> impl Iterator<Item = (u64, Offset)> + '_ {
        self.first_offsets.iter()
    }

    /// The rest of the index as changes that rebuild it: collisions, then resend counts by
    /// offset.
    pub fn other_entries(&self) -> impl Iterator<Item = IndexChange> + '_ {
        let mut resends: Vec<(Offset, ResendCounts)> =
            self.resends.iter().map(|(&o, &c)| (o, c)).collect();
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
