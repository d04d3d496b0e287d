//! Refunds and chargebacks of one partition: the retraction ledger.
//!
//! A retraction is recorded once per `refund_ref`: a resend with the same payment, amount and
//! kind is a duplicate, one that differs in any of them a conflict (kept for the audit, never
//! applied). A recorded retraction takes money out of its donation's campaign only while the
//! retractions applied to that donation stay within the donation's amount; one that would go
//! past it is held out of the totals as an **excess** and listed. A retraction whose donation is
//! not recorded yet is **pending** and is applied, in log order, when the donation is recorded.
//! Each retraction is logged under its donation's `payment_ref`, so both are in one partition
//! and this order is the log's.
//!
//! The state is each recorded retraction with its status, plus the resend counters; the
//! per-donation sums, the pending lists, the per-campaign totals and the per-campaign buckets of
//! `refunded_at` (minute, hour and day: count and cents, for statistics) are derived from them
//! (and rebuilt from them on a load). A checkpoint holds the retractions whose status changed
//! since the one before, absolute.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};

use serde::{Deserialize, Serialize};

use super::dedupe::FieldDifference;
use super::event_time_windows::Granularity;
use crate::event::refund::{RefundEvent, RetractionKind};
use crate::log::{Offset, PartitionId};
use crate::processor::digest::{self, element_hash, kind};
use crate::support::clock::UnixMillis;

/// Where a retraction stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RetractionStatus {
    /// Its donation is not recorded yet.
    Pending,
    /// Taken out of its donation's campaign.
    Applied {
        campaign_id: String,
        donation_offset: Offset,
    },
    /// More than its donation had left (`remaining_cents`) when it came: held out of the
    /// totals.
    Excess {
        campaign_id: String,
        donation_offset: Offset,
        remaining_cents: u64,
    },
}

/// One recorded retraction: the first record of its `refund_ref`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedRetraction {
    /// Where the retraction sits in the log.
    pub offset: Offset,
    pub event: RefundEvent,
    pub status: RetractionStatus,
}

/// Retractions taken out of one campaign, in one partition (or summed over partitions).
/// `refunded_cents` and `refunds` count every retraction, chargebacks included; the chargeback
/// fields are the part of them that were chargebacks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CampaignRetractions {
    pub refunded_cents: u64,
    pub refunds: u64,
    pub chargeback_cents: u64,
    pub chargebacks: u64,
}

impl CampaignRetractions {
    pub fn add(&mut self, other: CampaignRetractions) {
        self.refunded_cents += other.refunded_cents;
        self.refunds += other.refunds;
        self.chargeback_cents += other.chargeback_cents;
        self.chargebacks += other.chargebacks;
    }

    fn apply(&mut self, event: &RefundEvent) {
        self.refunded_cents += event.amount_cents;
        self.refunds += 1;
        if event.kind == RetractionKind::Chargeback {
            self.chargeback_cents += event.amount_cents;
            self.chargebacks += 1;
        }
    }
}

/// The refunds and chargebacks of one campaign applied with `refunded_at` in one bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundBucket {
    pub refunds: u64,
    pub refunded_cents: u64,
}

impl RefundBucket {
    pub fn add(&mut self, other: RefundBucket) {
        self.refunds += other.refunds;
        self.refunded_cents += other.refunded_cents;
    }
}

/// A campaign's refund buckets, by granularity and start.
pub type RefundBuckets = BTreeMap<(Granularity, UnixMillis), RefundBucket>;

/// Which bucket: campaign, granularity, start.
pub type RefundBucketKey = (String, Granularity, UnixMillis);

/// Counts of one partition's retraction records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetractionCounters {
    /// Distinct `refund_ref`s recorded.
    pub recorded: u64,
    pub applied: u64,
    pub pending: u64,
    pub excess: u64,
    pub duplicates: u64,
    pub conflicts: u64,
}

impl RetractionCounters {
    pub fn add(&mut self, other: RetractionCounters) {
        self.recorded += other.recorded;
        self.applied += other.applied;
        self.pending += other.pending;
        self.excess += other.excess;
        self.duplicates += other.duplicates;
        self.conflicts += other.conflicts;
    }
}

/// A resend of a recorded `refund_ref` that differs in payment, amount or kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetractionConflict {
    pub refund_ref: String,
    pub partition: PartitionId,
    pub recorded_offset: Offset,
    pub conflicting_offset: Offset,
    pub differences: Vec<FieldDifference>,
}

/// What applying one retraction record did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetractionOutcome {
    Applied,
    Pending,
    Excess { remaining_cents: u64 },
    Duplicate { recorded_offset: Offset },
    Conflict(RetractionConflict),
}

/// The recorded donation a retraction is for, as far as the ledger needs it.
#[derive(Debug, Clone, Copy)]
pub struct DonationFacts<'a> {
    pub campaign_id: &'a str,
    pub amount_cents: u64,
    pub offset: Offset,
}

/// What changed in the ledger since the last checkpoint; a snapshot is the same from nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetractionChanges {
    /// Retractions recorded or changed since, absolute, in log order of their change.
    pub retractions: Vec<RecordedRetraction>,
    pub counters: RetractionCounters,
    pub conflicts: Vec<RetractionConflict>,
}

impl RetractionChanges {
    pub fn is_empty(&self) -> bool {
        self.retractions.is_empty()
            && self.conflicts.is_empty()
            && self.counters == RetractionCounters::default()
    }

    /// These changes and `later` ones as one checkpoint: the later status of a retraction
    /// changed in both, the later counters, every conflict.
    pub fn followed_by(mut self, later: RetractionChanges) -> RetractionChanges {
        if later.is_empty() {
            return self;
        }
        let mut order: Vec<String> = Vec::new();
        let mut latest: HashMap<String, RecordedRetraction> = HashMap::new();
        for retraction in self.retractions.into_iter().chain(later.retractions) {
            let key = retraction.event.refund_ref.clone();
            if latest.insert(key.clone(), retraction).is_none() {
                order.push(key);
            }
        }
        self.retractions = order
            .into_iter()
            .map(|key| latest.remove(&key).expect("each key once"))
            .collect();
        self.counters = later.counters;
        self.conflicts.extend(later.conflicts);
        self
    }
}

/// A recorded retraction in the ledger's set, found by its `refund_ref` (held once, in the
/// record: the set needs no key of its own).
#[derive(Debug, Clone)]
struct Held {
    retraction: RecordedRetraction,
    /// Its element hash as of the last checkpoint (0: not checkpointed yet).
    committed_hash: u64,
}

impl std::borrow::Borrow<str> for Held {
    fn borrow(&self) -> &str {
        &self.retraction.event.refund_ref
    }
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        self.retraction.event.refund_ref == other.retraction.event.refund_ref
    }
}

impl Eq for Held {}

impl Hash for Held {
    /// As its `refund_ref` hashes, so that the set is looked up by a `&str`.
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.retraction.event.refund_ref.as_str().hash(state);
    }
}

/// What the ledger derives per donation that has retractions.
#[derive(Debug, Clone, Default)]
struct PaymentRetractions {
    applied_cents: u64,
    /// Retractions waiting for the donation, in log order.
    pending: Vec<String>,
    /// Retractions that waited for the donation and were settled when it came, in log order
    /// (those that came after it need no list: they are told where they lie).
    waited: Vec<String>,
}

/// One partition's retractions.
#[derive(Debug, Clone, Default)]
pub struct RetractionLedger {
    partition: PartitionId,
    retractions: HashSet<Held>,
    payments: HashMap<String, PaymentRetractions>,
    campaigns: BTreeMap<String, CampaignRetractions>,
    buckets: BTreeMap<String, RefundBuckets>,
    counters: RetractionCounters,
    conflicts: Vec<RetractionConflict>,
    /// Changed since the last checkpoint, in order of change.
    dirty: Vec<String>,
    dirty_set: BTreeSet<String>,
    dirty_campaigns: BTreeSet<String>,
    dirty_buckets: BTreeSet<RefundBucketKey>,
    new_conflicts: usize,
    committed_counters: RetractionCounters,
    digest: u64,
}

impl RetractionLedger {
    pub fn new(partition: PartitionId) -> Self {
        Self {
            partition,
            ..Self::default()
        }
    }

    /// The ledger a checkpoint's retractions make, in the order they were committed (a later
    /// status of a `refund_ref` replaces an earlier one).
    pub fn restore(
        partition: PartitionId,
        retractions: impl IntoIterator<Item = RecordedRetraction>,
        counters: RetractionCounters,
        conflicts: Vec<RetractionConflict>,
    ) -> Self {
        let mut ledger = Self::new(partition);
        for retraction in retractions {
            ledger.retractions.replace(Held {
                retraction,
                committed_hash: 0,
            });
        }
        let mut by_offset: Vec<&Held> = ledger.retractions.iter().collect();
        by_offset.sort_by_key(|held| held.retraction.offset);
        for held in by_offset {
            let retraction = &held.retraction;
            let payment = ledger
                .payments
                .entry(retraction.event.payment_ref.clone())
                .or_default();
            let settled_at = match &retraction.status {
                RetractionStatus::Applied {
                    donation_offset, ..
                }
                | RetractionStatus::Excess {
                    donation_offset, ..
                } => Some(*donation_offset),
                RetractionStatus::Pending => None,
            };
            if settled_at.is_some_and(|donation_offset| donation_offset > retraction.offset) {
                payment.waited.push(retraction.event.refund_ref.clone());
            }
            match &retraction.status {
                RetractionStatus::Pending => {
                    payment.pending.push(retraction.event.refund_ref.clone())
                }
                RetractionStatus::Applied { campaign_id, .. } => {
                    payment.applied_cents += retraction.event.amount_cents;
                    ledger
                        .campaigns
                        .entry(campaign_id.clone())
                        .or_default()
                        .apply(&retraction.event);
                    let buckets = ledger.buckets.entry(campaign_id.clone()).or_default();
                    add_to_buckets(buckets, &retraction.event);
                }
                RetractionStatus::Excess { .. } => {}
            }
        }
        ledger.retractions = std::mem::take(&mut ledger.retractions)
            .into_iter()
            .map(|mut held| {
                held.committed_hash = retraction_hash(&held.retraction);
                digest::replace(&mut ledger.digest, None, held.committed_hash);
                held
            })
            .collect();
        ledger.counters = counters;
        ledger.committed_counters = counters;
        if counters != RetractionCounters::default() {
            digest::replace(&mut ledger.digest, None, counters_hash(&counters));
        }
        for conflict in &conflicts {
            digest::replace(&mut ledger.digest, None, conflict_hash(conflict));
        }
        ledger.conflicts = conflicts;
        ledger
    }

    /// The whole ledger as changes from nothing (a snapshot's part), in log order. Only of a
    /// ledger as committed (restored, or just after `take_changes`).
    pub fn image(&self) -> RetractionChanges {
        assert!(!self.has_changes(), "an image is of committed state");
        let mut retractions: Vec<RecordedRetraction> = self
            .retractions
            .iter()
            .map(|held| held.retraction.clone())
            .collect();
        retractions.sort_by_key(|retraction| retraction.offset);
        RetractionChanges {
            retractions,
            counters: self.counters,
            conflicts: self.conflicts.clone(),
        }
    }

    /// The digest of the ledger as of the last checkpoint: 0 for a ledger that never held
    /// anything, so a state without retractions digests as it always did.
    pub fn digest(&self) -> u64 {
        self.digest
    }

    pub fn counters(&self) -> RetractionCounters {
        self.counters
    }

    pub fn campaign(&self, campaign_id: &str) -> Option<CampaignRetractions> {
        self.campaigns.get(campaign_id).copied()
    }

    pub fn campaigns(&self) -> impl Iterator<Item = (&String, &CampaignRetractions)> {
        self.campaigns.iter()
    }

    /// Every refund bucket, absolute.
    pub fn buckets(&self) -> impl Iterator<Item = (RefundBucketKey, RefundBucket)> + '_ {
        self.buckets.iter().flat_map(|(campaign_id, buckets)| {
            buckets.iter().map(move |(&(granularity, start), &bucket)| {
                ((campaign_id.clone(), granularity, start), bucket)
            })
        })
    }

    pub fn conflicts(&self) -> &[RetractionConflict] {
        &self.conflicts
    }

    pub fn get(&self, refund_ref: &str) -> Option<&RecordedRetraction> {
        self.retractions
            .get(refund_ref)
            .map(|held| &held.retraction)
    }

    /// Every recorded retraction, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &RecordedRetraction> {
        self.retractions.iter().map(|held| &held.retraction)
    }

    /// The retractions of `payment_ref` that came before its donation and were settled when it
    /// was recorded, in log order.
    pub fn waited_for_donation(
        &self,
        payment_ref: &str,
    ) -> impl Iterator<Item = &RecordedRetraction> {
        self.payments
            .get(payment_ref)
            .into_iter()
            .flat_map(|payment| payment.waited.iter())
            .filter_map(|refund_ref| self.get(refund_ref))
    }

    /// How much of a donation's amount retractions have taken so far.
    pub fn applied_cents(&self, payment_ref: &str) -> u64 {
        self.payments
            .get(payment_ref)
            .map_or(0, |payment| payment.applied_cents)
    }

    /// Whether any retraction waits for `payment_ref`'s donation.
    pub fn has_pending(&self, payment_ref: &str) -> bool {
        self.counters.pending > 0
            && self
                .payments
                .get(payment_ref)
                .is_some_and(|payment| !payment.pending.is_empty())
    }

    /// A record of a `refund_ref` already recorded: a duplicate, or a conflict if it differs
    /// in its payment, amount or kind (`refunded_at` may differ: the first is kept).
    pub fn resend(&mut self, offset: Offset, event: &RefundEvent) -> RetractionOutcome {
        let recorded = self
            .retractions
            .get(event.refund_ref.as_str())
            .map(|held| &held.retraction)
            .expect("a resend is of a recorded refund_ref");
        let differences = differing_fields(&recorded.event, event);
        if differences.is_empty() {
            self.counters.duplicates += 1;
            return RetractionOutcome::Duplicate {
                recorded_offset: recorded.offset,
            };
        }
        let conflict = RetractionConflict {
            refund_ref: event.refund_ref.clone(),
            partition: self.partition,
            recorded_offset: recorded.offset,
            conflicting_offset: offset,
            differences,
        };
        self.counters.conflicts += 1;
        self.conflicts.push(conflict.clone());
        self.new_conflicts += 1;
        RetractionOutcome::Conflict(conflict)
    }

    /// A new `refund_ref` at `offset`, for `donation` (`None`: its donation is not recorded).
    pub fn record(
        &mut self,
        offset: Offset,
        event: RefundEvent,
        donation: Option<DonationFacts<'_>>,
    ) -> RetractionOutcome {
        assert!(
            !self.retractions.contains(event.refund_ref.as_str()),
            "a recorded refund_ref is a resend"
        );
        let refund_ref = event.refund_ref.clone();
        let payment_ref = event.payment_ref.clone();
        self.counters.recorded += 1;
        let mut retraction = RecordedRetraction {
            offset,
            event,
            status: RetractionStatus::Pending,
        };
        let outcome = match donation {
            Some(donation) => self.settle(&mut retraction, donation),
            None => {
                self.counters.pending += 1;
                self.payments
                    .entry(payment_ref)
                    .or_default()
                    .pending
                    .push(refund_ref.clone());
                RetractionOutcome::Pending
            }
        };
        self.retractions.insert(Held {
            retraction,
            committed_hash: 0,
        });
        self.mark(&refund_ref);
        outcome
    }

    /// `payment_ref`'s donation was just recorded: the retractions waiting for it are applied
    /// (or found excess), in log order.
    pub fn donation_recorded(&mut self, payment_ref: &str, donation: DonationFacts<'_>) {
        let Some(payment) = self.payments.get_mut(payment_ref) else {
            return;
        };
        let waiting = std::mem::take(&mut payment.pending);
        payment.waited.extend(waiting.iter().cloned());
        for refund_ref in waiting {
            let mut held = self
                .retractions
                .take(refund_ref.as_str())
                .expect("a pending retraction is held");
            debug_assert_eq!(held.retraction.status, RetractionStatus::Pending);
            self.counters.pending -= 1;
            self.settle(&mut held.retraction, donation);
            self.retractions.insert(held);
            self.mark(&refund_ref);
        }
    }

    /// Applies a retraction to its donation, or holds it out as excess.
    fn settle(
        &mut self,
        retraction: &mut RecordedRetraction,
        donation: DonationFacts<'_>,
    ) -> RetractionOutcome {
        let payment = self
            .payments
            .entry(retraction.event.payment_ref.clone())
            .or_default();
        let remaining_cents = donation.amount_cents.saturating_sub(payment.applied_cents);
        if retraction.event.amount_cents > remaining_cents {
            self.counters.excess += 1;
            retraction.status = RetractionStatus::Excess {
                campaign_id: donation.campaign_id.to_owned(),
                donation_offset: donation.offset,
                remaining_cents,
            };
            return RetractionOutcome::Excess { remaining_cents };
        }
        payment.applied_cents += retraction.event.amount_cents;
        self.counters.applied += 1;
        match self.campaigns.get_mut(donation.campaign_id) {
            Some(campaign) => campaign.apply(&retraction.event),
            None => {
                let mut campaign = CampaignRetractions::default();
                campaign.apply(&retraction.event);
                self.campaigns
                    .insert(donation.campaign_id.to_owned(), campaign);
            }
        }
        if !self.dirty_campaigns.contains(donation.campaign_id) {
            self.dirty_campaigns.insert(donation.campaign_id.to_owned());
        }
        let buckets = match self.buckets.get_mut(donation.campaign_id) {
            Some(buckets) => buckets,
            None => self
                .buckets
                .entry(donation.campaign_id.to_owned())
                .or_default(),
        };
        add_to_buckets(buckets, &retraction.event);
        for granularity in Granularity::ALL {
            let start = granularity.bucket_start(retraction.event.refunded_at.unix_ms());
            self.dirty_buckets
                .insert((donation.campaign_id.to_owned(), granularity, start));
        }
        retraction.status = RetractionStatus::Applied {
            campaign_id: donation.campaign_id.to_owned(),
            donation_offset: donation.offset,
        };
        RetractionOutcome::Applied
    }

    fn mark(&mut self, refund_ref: &str) {
        if self.dirty_set.insert(refund_ref.to_owned()) {
            self.dirty.push(refund_ref.to_owned());
        }
    }

    /// Whether anything changed since the last `take_changes`.
    pub fn has_changes(&self) -> bool {
        !self.dirty.is_empty() || self.new_conflicts > 0 || self.counters != self.committed_counters
    }

    /// Everything changed since the last call, with what readers are shown of it (absolute);
    /// brings the digest up to date with it.
    pub fn take_changes(&mut self) -> (RetractionChanges, ShownRetractions) {
        if !self.has_changes() {
            return Default::default();
        }
        let mut retractions = Vec::with_capacity(self.dirty.len());
        for refund_ref in std::mem::take(&mut self.dirty) {
            let mut held = self
                .retractions
                .take(refund_ref.as_str())
                .expect("a changed retraction is held");
            let hash = retraction_hash(&held.retraction);
            let old = (held.committed_hash != 0).then_some(held.committed_hash);
            digest::replace(&mut self.digest, old, hash);
            held.committed_hash = hash;
            retractions.push(held.retraction.clone());
            self.retractions.insert(held);
        }
        self.dirty_set.clear();
        if self.counters != self.committed_counters {
            let old = (self.committed_counters != RetractionCounters::default())
                .then(|| counters_hash(&self.committed_counters));
            digest::replace(&mut self.digest, old, counters_hash(&self.counters));
            self.committed_counters = self.counters;
        }
        let conflicts = self.conflicts[self.conflicts.len() - self.new_conflicts..].to_vec();
        for conflict in &conflicts {
            digest::replace(&mut self.digest, None, conflict_hash(conflict));
        }
        self.new_conflicts = 0;
        let totals = std::mem::take(&mut self.dirty_campaigns)
            .into_iter()
            .map(|campaign_id| {
                let totals = self.campaigns[&campaign_id];
                (campaign_id, totals)
            })
            .collect();
        let buckets = std::mem::take(&mut self.dirty_buckets)
            .into_iter()
            .map(|key| {
                let bucket = self.buckets[&key.0][&(key.1, key.2)];
                (key, bucket)
            })
            .collect();
        let campaigns = ShownRetractions { totals, buckets };
        let changes = RetractionChanges {
            retractions,
            counters: self.counters,
            conflicts,
        };
        (changes, campaigns)
    }
}

/// What readers are shown of a partition's retractions: changed campaigns' totals and changed
/// buckets, absolute.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShownRetractions {
    pub totals: Vec<(String, CampaignRetractions)>,
    pub buckets: Vec<(RefundBucketKey, RefundBucket)>,
}

impl ShownRetractions {
    /// These and `later` ones as one: the later value of anything in both.
    pub fn followed_by(self, later: ShownRetractions) -> ShownRetractions {
        let mut totals: BTreeMap<String, CampaignRetractions> = self.totals.into_iter().collect();
        totals.extend(later.totals);
        let mut buckets: BTreeMap<RefundBucketKey, RefundBucket> =
            self.buckets.into_iter().collect();
        buckets.extend(later.buckets);
        ShownRetractions {
            totals: totals.into_iter().collect(),
            buckets: buckets.into_iter().collect(),
        }
    }
}

fn add_to_buckets(buckets: &mut RefundBuckets, refund: &RefundEvent) {
    let one = RefundBucket {
        refunds: 1,
        refunded_cents: refund.amount_cents,
    };
    for granularity in Granularity::ALL {
        let start = granularity.bucket_start(refund.refunded_at.unix_ms());
        buckets.entry((granularity, start)).or_default().add(one);
    }
}

/// The fields of a retraction's resend that differ from the recorded one; `refunded_at` is not
/// compared (the first is kept, as a donation's `paid_at`).
pub fn differing_fields(recorded: &RefundEvent, received: &RefundEvent) -> Vec<FieldDifference> {
    FieldDifference::among(&[
        (
            "amount_cents",
            recorded.amount_cents.to_string(),
            received.amount_cents.to_string(),
        ),
        (
            "kind",
            recorded.kind.as_str().to_owned(),
            received.kind.as_str().to_owned(),
        ),
        (
            "payment_ref",
            recorded.payment_ref.clone(),
            received.payment_ref.clone(),
        ),
    ])
}

fn retraction_hash(retraction: &RecordedRetraction) -> u64 {
    element_hash(kind::RETRACTION, &retraction.event.refund_ref, retraction)
}

fn counters_hash(counters: &RetractionCounters) -> u64 {
    element_hash(kind::RETRACTION_COUNTERS, &(), counters)
}

fn conflict_hash(conflict: &RetractionConflict) -> u64 {
    element_hash(
        kind::RETRACTION_CONFLICT,
        &(&conflict.refund_ref, conflict.conflicting_offset),
        conflict,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventTime;

    fn refund(refund_ref: &str, payment_ref: &str, amount_cents: u64) -> RefundEvent {
        RefundEvent {
            refund_ref: refund_ref.into(),
            payment_ref: payment_ref.into(),
            amount_cents,
            kind: RetractionKind::Refund,
            refunded_at: EventTime(1_000),
        }
    }

    fn donation(offset: Offset) -> DonationFacts<'static> {
        DonationFacts {
            campaign_id: "meals",
            amount_cents: 100,
            offset,
        }
    }

    #[test]
    fn partial_refunds_apply_up_to_the_donation_and_the_rest_is_excess() {
        let mut ledger = RetractionLedger::new(0);
        assert_eq!(
            ledger.record(1, refund("r1", "p", 60), Some(donation(0))),
            RetractionOutcome::Applied
        );
        assert_eq!(
            ledger.record(2, refund("r2", "p", 40), Some(donation(0))),
            RetractionOutcome::Applied
        );
        assert_eq!(
            ledger.record(3, refund("r3", "p", 1), Some(donation(0))),
            RetractionOutcome::Excess { remaining_cents: 0 }
        );
        let meals = ledger.campaign("meals").unwrap();
        assert_eq!((meals.refunded_cents, meals.refunds), (100, 2));
        assert_eq!(ledger.counters().excess, 1);
    }

    #[test]
    fn a_pending_refund_applies_when_its_donation_comes() {
        let mut ledger = RetractionLedger::new(0);
        assert_eq!(
            ledger.record(0, refund("r1", "p", 30), None),
            RetractionOutcome::Pending
        );
        assert!(ledger.has_pending("p"));
        assert_eq!(ledger.counters().pending, 1);
        ledger.donation_recorded("p", donation(1));
        assert!(!ledger.has_pending("p"));
        assert_eq!(ledger.counters().pending, 0);
        assert_eq!(ledger.campaign("meals").unwrap().refunded_cents, 30);
        assert!(matches!(
            ledger.get("r1").unwrap().status,
            RetractionStatus::Applied {
                donation_offset: 1,
                ..
            }
        ));
    }

    #[test]
    fn a_resend_is_a_duplicate_or_a_conflict_never_applied_twice() {
        let mut ledger = RetractionLedger::new(0);
        ledger.record(1, refund("r1", "p", 30), Some(donation(0)));
        let mut later = refund("r1", "p", 30);
        later.refunded_at = EventTime(9_999);
        assert_eq!(
            ledger.resend(2, &later),
            RetractionOutcome::Duplicate { recorded_offset: 1 }
        );
        let RetractionOutcome::Conflict(conflict) = ledger.resend(3, &refund("r1", "p", 31)) else {
            panic!("a different amount is a conflict");
        };
        assert_eq!(conflict.differences[0].field, "amount_cents");
        assert_eq!(ledger.campaign("meals").unwrap().refunded_cents, 30);
        assert_eq!(
            (ledger.counters().duplicates, ledger.counters().conflicts),
            (1, 1)
        );
    }

    #[test]
    fn a_restored_ledger_has_the_digest_and_totals_of_the_one_that_committed() {
        let mut ledger = RetractionLedger::new(4);
        let mut committed = RetractionChanges::default();
        ledger.record(0, refund("r0", "q", 10), None);
        ledger.record(2, refund("r1", "p", 30), Some(donation(1)));
        committed = committed.followed_by(ledger.take_changes().0);
        ledger.donation_recorded("q", donation(3));
        ledger.resend(4, &refund("r1", "p", 30));
        ledger.resend(5, &refund("r1", "p", 31));
        committed = committed.followed_by(ledger.take_changes().0);
        let restored = RetractionLedger::restore(
            4,
            committed.retractions.clone(),
            committed.counters,
            committed.conflicts.clone(),
        );
        assert_eq!(restored.digest(), ledger.digest());
        assert_ne!(restored.digest(), 0);
        assert_eq!(restored.campaign("meals"), ledger.campaign("meals"));
        assert_eq!(
            restored.buckets().collect::<Vec<_>>(),
            ledger.buckets().collect::<Vec<_>>()
        );
        assert_eq!(
            restored.buckets().count(),
            3,
            "one refunded_at: a minute, an hour, a day"
        );
        let waited = |ledger: &RetractionLedger, payment_ref: &str| -> Vec<String> {
            ledger
                .waited_for_donation(payment_ref)
                .map(|r| r.event.refund_ref.clone())
                .collect()
        };
        assert_eq!(waited(&ledger, "q"), ["r0"], "r0 came before q's donation");
        assert_eq!(waited(&restored, "q"), ["r0"]);
        assert!(
            waited(&restored, "p").is_empty(),
            "r1 came after p's donation"
        );
        assert_eq!(restored.counters(), ledger.counters());
        assert_eq!(restored.image(), ledger.image());
        let from_image = ledger.image();
        let again = RetractionLedger::restore(
            4,
            from_image.retractions,
            from_image.counters,
            from_image.conflicts,
        );
        assert_eq!(again.digest(), ledger.digest());
    }
}
