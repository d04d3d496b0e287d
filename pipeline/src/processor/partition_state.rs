//! Every operator's state for one partition, and how one log record changes it.
//!
//! `apply` is deterministic: the same records in the same order give the same state and the same
//! digest, whatever the checkpoint cadence, cache contents or process restarts in between.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde::{Deserialize, Serialize};

use super::digest::{self, StateDigest, element_hash, kind};
use crate::event::refund::RefundEvent;
use crate::event::{DonationEvent, LogEvent};
use crate::log::{Offset, PartitionId};
use crate::operators::campaign_totals::{CampaignTotal, CampaignTotals};
use crate::operators::conflict_audit::Conflict;
use crate::operators::dedupe::{
    Candidate, DonationIndex, IndexChange, ResendCounts, ShardImageRef, differing_fields,
};
use crate::operators::event_time_windows::{
    BucketKey, BucketKeyRef, EventTimeWindows, GroupedBuckets, RolledUp, SharedBucket,
    WindowBucket, WindowChanges, WindowHorizons,
};
use crate::operators::retractions::{
    DonationFacts, RetractionChanges, RetractionLedger, RetractionOutcome, ShownRetractions,
};
use crate::operators::watermark::Watermark;
use crate::support::clock::UnixMillis;

/// Running counts of what a partition has applied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionCounters {
    /// Log records applied, of every outcome.
    pub applied: u64,
    pub recorded: u64,
    pub duplicates: u64,
    pub conflicts: u64,
    /// Recorded donations that were older than the watermark when they arrived.
    pub late: u64,
}

/// What applying one record did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Recorded {
        late: bool,
    },
    Duplicate {
        recorded_offset: Offset,
    },
    Conflict(Conflict),
    /// A refund or chargeback record.
    Retraction(RetractionOutcome),
}

/// Why a record could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("cannot read the recorded event at offset {offset} of partition {partition}: {reason}")]
    RecordedEventUnavailable {
        partition: PartitionId,
        offset: Offset,
        reason: String,
        /// The log was only unavailable: the same record may apply later.
        retryable: bool,
    },
}

impl ApplyError {
    /// Whether applying the same record again later may succeed. Nothing was changed by a
    /// failed apply: look-ups come before any change.
    pub fn is_retryable(&self) -> bool {
        match self {
            ApplyError::RecordedEventUnavailable { retryable, .. } => *retryable,
        }
    }
}

/// Reads back the event recorded at an offset of this partition (from the log).
pub trait RecordedEvents {
    fn recorded_event(&self, offset: Offset) -> Result<DonationEvent, ApplyError>;
}

/// The scalars that, with the digest components, make up the combined state digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateScalars {
    pub partition: PartitionId,
    pub next_offset: Offset,
    pub counters: PartitionCounters,
    pub watermark: Watermark,
}

/// What changed since the last checkpoint, ready to be committed.
#[derive(Debug, Default)]
pub struct StateChanges {
    pub index: Vec<IndexChange>,
    /// The changed campaign totals, absolute.
    pub totals: Vec<(String, CampaignTotal)>,
    /// The changed buckets as deltas, the buckets rolled up, the cuts.
    pub windows: WindowChanges,
    pub conflicts: Vec<Conflict>,
    /// Refunds and chargebacks recorded or settled since, and the resend counters.
    pub retractions: RetractionChanges,
    /// What readers are shown of the retractions changed: campaigns' totals and buckets of
    /// `refunded_at`, absolute (derived on a load, never checkpointed).
    pub shown_retractions: ShownRetractions,
}

impl StateChanges {
    /// These changes and `later` ones as one checkpoint (after a checkpoint that failed to
    /// commit these): index entries and conflicts in order, of a total changed in both the later
    /// value, of a bucket changed in both the merged deltas, and a bucket rolled up later loses
    /// its earlier delta.
    pub fn followed_by(mut self, later: StateChanges) -> StateChanges {
        self.index.extend(later.index);
        self.totals = latest_values(self.totals, later.totals);
        let mut deltas: std::collections::BTreeMap<BucketKey, WindowBucket> =
            self.windows.deltas.into_iter().collect();
        for key in &later.windows.dropped {
            deltas.remove(key);
        }
        for (key, delta) in later.windows.deltas {
            deltas.entry(key).or_default().merge(&delta);
        }
        self.windows.deltas = deltas.into_iter().collect();
        self.windows.dropped.extend(later.windows.dropped);
        self.windows.rolled_up = later.windows.rolled_up;
        self.conflicts.extend(later.conflicts);
        self.retractions = self.retractions.followed_by(later.retractions);
        self.shown_retractions = self.shown_retractions.followed_by(later.shown_retractions);
        self
    }
}

fn latest_values<K: Ord, V>(earlier: Vec<(K, V)>, later: Vec<(K, V)>) -> Vec<(K, V)> {
    let mut merged: std::collections::BTreeMap<K, V> = earlier.into_iter().collect();
    merged.extend(later);
    merged.into_iter().collect()
}

/// A partition's donation index as readers share it.
pub type SharedIndex = Arc<RwLock<DonationIndex>>;
/// A partition's refunds and chargebacks as readers share them (ingest checks a refund against
/// what its donation has left).
pub type SharedRetractions = Arc<RwLock<RetractionLedger>>;

/// Rebuilds a partition's donation index from checkpointed changes, one at a time (the journal
/// is streamed, never held whole), keeping the digest components they make up.
#[derive(Debug)]
pub struct IndexRestorer {
    index: DonationIndex,
    recorded_digest: u64,
    /// The largest fingerprint inserted so far.
    largest: Option<u64>,
    /// Recorded donations not in ascending order of fingerprint (those of the checkpoints after
    /// a snapshot, in log order), merged into the table at the end in one pass.
    out_of_order: Vec<(u64, Offset)>,
    /// Resend counts in checkpoint order, put in the table at the end in one pass.
    resends: Vec<(Offset, ResendCounts)>,
}

impl IndexRestorer {
    pub fn new(recorded: u64) -> Self {
        Self {
            index: DonationIndex::with_capacity(recorded as usize),
            recorded_digest: 0,
            largest: None,
            out_of_order: Vec::new(),
            resends: Vec::new(),
        }
    }

    pub fn add(&mut self, change: IndexChange) {
        match change {
            IndexChange::Recorded {
                fingerprint,
                offset,
            } => {
                digest::replace(
                    &mut self.recorded_digest,
                    None,
                    recorded_hash(fingerprint, offset),
                );
                self.add_recorded_undigested(fingerprint, offset);
            }
            IndexChange::RecordedCollision {
                ref payment_ref,
                offset,
            } => {
                let hash = element_hash(kind::RECORDED_COLLISION, payment_ref, &offset);
                digest::replace(&mut self.recorded_digest, None, hash);
                self.index.restore(change);
            }
            // Absolute counts: the last of an offset's stands, hashed once all are in.
            IndexChange::Resends { offset, counts } => self.resends.push((offset, counts)),
        }
    }

    /// A recorded donation into the table, already counted in the digest.
    fn add_recorded_undigested(&mut self, fingerprint: u64, offset: Offset) {
        if self.largest.is_none_or(|largest| fingerprint > largest) {
            // A snapshot's, in ascending order: each goes after every one in the table.
            self.largest = Some(fingerprint);
            self.index.restore(IndexChange::Recorded {
                fingerprint,
                offset,
            });
        } else {
            self.out_of_order.push((fingerprint, offset));
        }
    }

    /// A snapshot's shard of recorded donations, counted in the digest and built into the
    /// table in one pass (the donations recorded after the snapshot are merged in at the
    /// end).
    pub fn add_shard(&mut self, image: ShardImageRef<'_>) {
        let mut last = None;
        image.for_each_entry(|fingerprint, offset| {
            digest::replace(
                &mut self.recorded_digest,
                None,
                recorded_hash(fingerprint, offset),
            );
            last = Some(fingerprint);
        });
        self.largest = self.largest.max(last);
        self.index.restore_shard(&image);
    }

    /// The index, every change in.
    fn finish(mut self) -> Self {
        self.out_of_order.sort_unstable();
        self.index.restore_recorded(&self.out_of_order);
        self.out_of_order = Vec::new();
        self.index
            .restore_resends(std::mem::take(&mut self.resends));
        self
    }
}

/// One partition's state.
#[derive(Debug)]
pub struct PartitionState {
    partition: PartitionId,
    next_offset: Offset,
    counters: PartitionCounters,
    watermark: Watermark,
    /// Shared with readers (donation look-ups, reconciliation), written only by this state.
    index: SharedIndex,
    totals: CampaignTotals,
    windows: EventTimeWindows,
    pending_conflicts: Vec<Conflict>,
    /// Shared with readers, written only by this state.
    retractions: SharedRetractions,
    digest: StateDigest,
    /// Element hashes as of the last checkpoint, to replace them in the digest.
    total_hashes: HashMap<String, u64>,
    bucket_hashes: BucketHashes,
}

impl PartitionState {
    /// Empty state, to be applied from offset 0, rolling its windows up at `horizons`.
    pub fn new(partition: PartitionId, allowed_lateness_ms: i64, horizons: WindowHorizons) -> Self {
        Self {
            partition,
            next_offset: 0,
            counters: PartitionCounters::default(),
            watermark: Watermark::new(allowed_lateness_ms),
            index: SharedIndex::default(),
            totals: CampaignTotals::default(),
            windows: EventTimeWindows::new(horizons),
            pending_conflicts: Vec::new(),
            retractions: Arc::new(RwLock::new(RetractionLedger::new(partition))),
            digest: StateDigest::default(),
            total_hashes: HashMap::new(),
            bucket_hashes: BucketHashes::default(),
        }
    }

    /// State as a checkpoint stored it: absolute buckets and the cuts they were rolled up to.
    /// The digest is recomputed from the parts, so the caller can compare it with the digest
    /// the checkpoint recorded. The windows roll up at the default horizons until
    /// [`set_window_horizons`](Self::set_window_horizons) says otherwise.
    pub fn restore(
        scalars: StateScalars,
        index: IndexRestorer,
        totals: Vec<(String, CampaignTotal)>,
        buckets: GroupedBuckets,
        rolled_up: RolledUp,
        conflicts: &[Conflict],
        retractions: RetractionLedger,
    ) -> Self {
        let index = index.finish();
        let mut state = Self::new(scalars.partition, 0, WindowHorizons::DEFAULT);
        state.next_offset = scalars.next_offset;
        state.counters = scalars.counters;
        state.watermark = scalars.watermark;
        state.digest.recorded = index.recorded_digest;
        state.digest.resends = index
            .index
            .resend_entries()
            .fold(0, |sum, (offset, counts)| {
                sum.wrapping_add(resends_hash(offset, counts))
            });
        state.index = Arc::new(RwLock::new(index.index));
        for (campaign_id, total) in &totals {
            let hash = element_hash(kind::CAMPAIGN_TOTAL, campaign_id, total);
            digest::replace(&mut state.digest.totals, None, hash);
            state.total_hashes.insert(campaign_id.clone(), hash);
        }
        let mut encoded = Vec::new();
        for (key, bucket) in buckets.iter() {
            let hash = digest::bucket_hash_with(&mut encoded, &key, bucket);
            digest::replace(&mut state.digest.windows, None, hash);
            state.bucket_hashes.insert_ref(key, hash);
        }
        for conflict in conflicts {
            digest::replace(&mut state.digest.conflicts, None, conflict_hash(conflict));
        }
        state.totals = CampaignTotals::from_totals(totals);
        state.windows = EventTimeWindows::from_grouped(buckets, rolled_up);
        state.retractions = Arc::new(RwLock::new(retractions));
        state
    }

    /// Rolls the windows up at `horizons` from the next checkpoint on.
    pub fn set_window_horizons(&mut self, horizons: WindowHorizons) {
        self.windows.set_horizons(horizons);
    }

    pub fn partition(&self) -> PartitionId {
        self.partition
    }

    pub fn next_offset(&self) -> Offset {
        self.next_offset
    }

    pub fn counters(&self) -> PartitionCounters {
        self.counters
    }

    pub fn watermark(&self) -> Watermark {
        self.watermark
    }

    pub fn totals(&self) -> &CampaignTotals {
        &self.totals
    }

    pub fn windows(&self) -> &EventTimeWindows {
        &self.windows
    }

    /// Refunds and chargebacks, as of the last record applied.
    pub fn retractions(&self) -> RwLockReadGuard<'_, RetractionLedger> {
        self.retractions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The refunds and chargebacks, shared: ingest reads them while this state applies records.
    pub fn shared_retractions(&self) -> SharedRetractions {
        Arc::clone(&self.retractions)
    }

    fn retractions_mut(&self) -> RwLockWriteGuard<'_, RetractionLedger> {
        self.retractions
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The donation index, shared: readers look donations up while this state applies records.
    pub fn shared_index(&self) -> SharedIndex {
        Arc::clone(&self.index)
    }

    fn index(&self) -> RwLockWriteGuard<'_, DonationIndex> {
        self.index.write().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn scalars(&self) -> StateScalars {
        StateScalars {
            partition: self.partition,
            next_offset: self.next_offset,
            counters: self.counters,
            watermark: self.watermark,
        }
    }

    /// The digest components as of the last `take_changes` (or restore).
    pub fn digest(&self) -> StateDigest {
        self.digest
    }

    /// The combined digest as of the last `take_changes` (or restore). The retraction
    /// ledger's digest is folded in once it holds anything, so a state that never saw a refund
    /// digests as states did before refunds existed.
    pub fn state_digest(&self) -> u64 {
        let combined = self.digest.combined(&self.scalars());
        match self.retractions().digest() {
            0 => combined,
            retractions => {
                digest::element_hash_of_two_u64(kind::WITH_RETRACTIONS, combined, retractions)
            }
        }
    }

    /// Applies the record at `offset`, which must be the next one: a donation or a retraction.
    pub fn apply_event(
        &mut self,
        offset: Offset,
        event: LogEvent,
        recorded_events: &dyn RecordedEvents,
    ) -> Result<Outcome, ApplyError> {
        match event {
            LogEvent::Donation(donation) => self.apply(offset, donation, recorded_events),
            LogEvent::Refund(refund) => self.apply_refund(offset, refund, recorded_events),
        }
    }

    /// Applies a refund or chargeback at `offset`, which must be the next record: recorded
    /// once per `refund_ref`, settled against its donation if that is recorded, else pending.
    fn apply_refund(
        &mut self,
        offset: Offset,
        refund: RefundEvent,
        recorded_events: &dyn RecordedEvents,
    ) -> Result<Outcome, ApplyError> {
        assert_eq!(
            offset, self.next_offset,
            "partition {} applies records in order",
            self.partition
        );
        let recorded = self.retractions().get(&refund.refund_ref).is_some();
        let outcome = if recorded {
            self.retractions_mut().resend(offset, &refund)
        } else {
            let donation = self.recorded_donation(&refund.payment_ref, recorded_events)?;
            let facts = donation
                .as_ref()
                .map(|(donation_offset, donation)| DonationFacts {
                    campaign_id: &donation.campaign_id,
                    amount_cents: donation.amount_cents,
                    offset: *donation_offset,
                });
            self.retractions_mut().record(offset, refund, facts)
        };
        self.next_offset = offset + 1;
        self.counters.applied += 1;
        Ok(Outcome::Retraction(outcome))
    }

    /// The donation recorded for `payment_ref`, read back from the log, with its offset.
    fn recorded_donation(
        &self,
        payment_ref: &str,
        recorded_events: &dyn RecordedEvents,
    ) -> Result<Option<(Offset, DonationEvent)>, ApplyError> {
        let candidate = self.index().lookup(payment_ref);
        let offset = match candidate {
            Candidate::None => return Ok(None),
            Candidate::Exact(offset) | Candidate::Fingerprint(offset) => offset,
        };
        let donation = recorded_events.recorded_event(offset)?;
        Ok((donation.payment_ref == payment_ref).then_some((offset, donation)))
    }

    /// Applies the record at `offset`, which must be the next one.
    pub fn apply(
        &mut self,
        offset: Offset,
        event: DonationEvent,
        recorded_events: &dyn RecordedEvents,
    ) -> Result<Outcome, ApplyError> {
        assert_eq!(
            offset, self.next_offset,
            "partition {} applies records in order",
            self.partition
        );
        let candidate = self.index().lookup(&event.payment_ref);
        let outcome = match candidate {
            Candidate::None => self.record(offset, &event),
            Candidate::Exact(recorded_offset) => {
                self.resend(recorded_offset, offset, event, recorded_events)?
            }
            Candidate::Fingerprint(recorded_offset) => {
                match self.confirm(recorded_offset, &event, recorded_events)? {
                    Confirmation::OtherPayment => self.record(offset, &event),
                    Confirmation::SamePayment => {
                        self.resend(recorded_offset, offset, event, recorded_events)?
                    }
                }
            }
        };
        self.next_offset = offset + 1;
        self.counters.applied += 1;
        Ok(outcome)
    }

    fn record(&mut self, offset: Offset, event: &DonationEvent) -> Outcome {
        let change = self.index().record(event, offset);
        let hash = match &change {
            IndexChange::Recorded {
                fingerprint,
                offset,
            } => recorded_hash(*fingerprint, *offset),
            IndexChange::RecordedCollision {
                payment_ref,
                offset,
            } => element_hash(kind::RECORDED_COLLISION, payment_ref, offset),
            IndexChange::Resends { .. } => unreachable!("record yields a recorded change"),
        };
        digest::replace(&mut self.digest.recorded, None, hash);
        let paid_at_ms = event.paid_at.unix_ms();
        let late = self.watermark.observe(paid_at_ms);
        self.totals.record(&event.campaign_id, event.amount_cents);
        self.windows
            .record(&event.campaign_id, paid_at_ms, event.amount_cents);
        if self.retractions().has_pending(&event.payment_ref) {
            let donation = DonationFacts {
                campaign_id: &event.campaign_id,
                amount_cents: event.amount_cents,
                offset,
            };
            self.retractions_mut()
                .donation_recorded(&event.payment_ref, donation);
        }
        self.counters.recorded += 1;
        self.counters.late += u64::from(late);
        Outcome::Recorded { late }
    }

    /// Whether a fingerprint match is the same payment, from the recent checks or the log.
    fn confirm(
        &self,
        recorded_offset: Offset,
        event: &DonationEvent,
        recorded_events: &dyn RecordedEvents,
    ) -> Result<Confirmation, ApplyError> {
        let recent = self.index().recent(recorded_offset);
        let same = match recent {
            Some(checks) => checks.same_payment(event),
            None => {
                recorded_events.recorded_event(recorded_offset)?.payment_ref == event.payment_ref
            }
        };
        Ok(if same {
            Confirmation::SamePayment
        } else {
            Confirmation::OtherPayment
        })
    }

    fn resend(
        &mut self,
        recorded_offset: Offset,
        offset: Offset,
        event: DonationEvent,
        recorded_events: &dyn RecordedEvents,
    ) -> Result<Outcome, ApplyError> {
        let recent = self.index().recent(recorded_offset);
        let duplicate = match recent {
            Some(checks) if checks.same_content(&event) => None,
            _ => {
                let recorded = recorded_events.recorded_event(recorded_offset)?;
                let differences = differing_fields(&recorded, &event);
                (!differences.is_empty()).then_some(differences)
            }
        };
        let old_counts = self.index().resends(recorded_offset);
        let is_conflict = duplicate.is_some();
        let change = self.index().count_resend(recorded_offset, is_conflict);
        if let IndexChange::Resends { counts, .. } = &change {
            let old = (old_counts != Default::default())
                .then(|| resends_hash(recorded_offset, old_counts));
            digest::replace(
                &mut self.digest.resends,
                old,
                resends_hash(recorded_offset, *counts),
            );
        }
        match duplicate {
            None => {
                self.counters.duplicates += 1;
                Ok(Outcome::Duplicate { recorded_offset })
            }
            Some(differences) => {
                self.counters.conflicts += 1;
                let conflict = Conflict {
                    payment_ref: event.payment_ref,
                    partition: self.partition,
                    recorded_offset,
                    conflicting_offset: offset,
                    differences,
                };
                digest::replace(&mut self.digest.conflicts, None, conflict_hash(&conflict));
                self.pending_conflicts.push(conflict.clone());
                Ok(Outcome::Conflict(conflict))
            }
        }
    }

    /// Everything changed since the last call (rolling the windows up to the watermark first),
    /// and brings the digest up to date with it.
    pub fn take_changes(&mut self) -> StateChanges {
        let totals = self.totals.take_dirty();
        for (campaign_id, total) in &totals {
            let hash = element_hash(kind::CAMPAIGN_TOTAL, campaign_id, total);
            let old = self.total_hashes.insert(campaign_id.clone(), hash);
            digest::replace(&mut self.digest.totals, old, hash);
        }
        self.windows.roll_up(self.watermark.current());
        let windows = self.windows.take_changes();
        let mut encoded = Vec::new();
        for (key, _) in &windows.deltas {
            let bucket = self.windows.get(key).expect("a changed bucket is held");
            let hash = digest::bucket_hash_with(&mut encoded, key, bucket);
            let old = self.bucket_hashes.insert(key, hash);
            digest::replace(&mut self.digest.windows, old, hash);
        }
        for key in &windows.dropped {
            if let Some(old) = self.bucket_hashes.remove(key) {
                digest::replace(&mut self.digest.windows, Some(old), 0);
            }
        }
        let index = self.index().take_pending();
        let (retractions, shown_retractions) = self.retractions_mut().take_changes();
        StateChanges {
            index,
            totals,
            windows,
            conflicts: std::mem::take(&mut self.pending_conflicts),
            retractions,
            shown_retractions,
        }
    }

    /// The current, absolute values of the buckets `changes` changed, for readers.
    pub fn changed_buckets(&self, changes: &StateChanges) -> Vec<(BucketKey, SharedBucket)> {
        changes
            .windows
            .deltas
            .iter()
            .filter_map(|(key, _)| Some((key.clone(), Arc::clone(self.windows.get_shared(key)?))))
            .collect()
    }

    /// Whether anything changed since the last `take_changes`.
    pub fn has_changes(&self) -> bool {
        !self.pending_conflicts.is_empty()
            || self.windows.has_changes()
            || self.retractions().has_changes()
    }
}

/// Each bucket's element hash as of the last checkpoint, by campaign, granularity and start: a
/// campaign's name once, not once per bucket (a partition holds about a hundred thousand
/// buckets per campaign at the default horizons).
#[derive(Debug, Default)]
struct BucketHashes {
    campaigns: HashMap<String, [HashMap<UnixMillis, u64>; 3]>,
}

impl BucketHashes {
    /// Sets a bucket's hash, as a load finds it.
    fn insert_ref(&mut self, key: BucketKeyRef<'_>, hash: u64) {
        if !self.campaigns.contains_key(key.campaign_id) {
            self.campaigns
                .insert(key.campaign_id.to_owned(), Default::default());
        }
        self.campaigns
            .get_mut(key.campaign_id)
            .expect("inserted above")[key.granularity as usize]
            .insert(key.start_ms, hash);
    }

    /// Sets a bucket's hash; the one it had.
    fn insert(&mut self, key: &BucketKey, hash: u64) -> Option<u64> {
        if !self.campaigns.contains_key(&key.campaign_id) {
            self.campaigns
                .insert(key.campaign_id.clone(), Default::default());
        }
        self.campaigns
            .get_mut(&key.campaign_id)
            .expect("inserted above")[key.granularity as usize]
            .insert(key.start_ms, hash)
    }

    fn remove(&mut self, key: &BucketKey) -> Option<u64> {
        self.campaigns.get_mut(&key.campaign_id)?[key.granularity as usize].remove(&key.start_ms)
    }
}

enum Confirmation {
    SamePayment,
    OtherPayment,
}

/// `element_hash(kind::RECORDED, &fingerprint, &offset)`, without allocating: it runs once per
/// recorded donation, and once per entry when a checkpoint is loaded.
fn recorded_hash(fingerprint: u64, offset: Offset) -> u64 {
    digest::element_hash_of_two_u64(kind::RECORDED, fingerprint, offset)
}

/// `element_hash(RESENDS, &offset, &counts)`, on the stack: the counts' encoding is their
/// packed `u64`'s.
fn resends_hash(offset: Offset, counts: ResendCounts) -> u64 {
    digest::element_hash_of_two_u64(kind::RESENDS, offset, counts.packed())
}

fn conflict_hash(conflict: &Conflict) -> u64 {
    element_hash(
        kind::CONFLICT,
        &(&conflict.payment_ref, conflict.conflicting_offset),
        conflict,
    )
}
