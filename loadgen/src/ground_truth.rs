//! What tally must report, computed from what it acknowledged.
//!
//! Every donation that got a 2xx counts once, with the fields of the first event of its payment
//! that the server acknowledged; later resends — identical or conflicting — count nothing. The
//! load generator only sends a conflicting resend after the original was acknowledged, so the
//! original is the one in the log first and the one tally records.
//!
//! Every refund or chargeback that got a 2xx counts once per `refund_ref`, in its donation's
//! campaign, once that donation is recorded (one acknowledged before its donation waits for it;
//! one whose donation never was stays out). The load generator refunds a donation once, within
//! its amount, so none is ever more than its donation has left.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;

/// A donation as the load generator sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentDonation {
    pub payment_ref: String,
    pub campaign_id: String,
    pub amount_cents: u64,
    /// Unix milliseconds.
    pub paid_at_ms: i64,
}

/// A refund or chargeback as the load generator sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentRefund {
    pub refund_ref: String,
    pub payment_ref: String,
    pub campaign_id: String,
    pub amount_cents: u64,
}

/// A campaign's expected refunds: cents taken back, and how many refunds took them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExpectedRefunds {
    pub refunded_cents: u64,
    pub refunds: u64,
}

/// A campaign's expected total.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExpectedTotal {
    pub total_cents: u64,
    pub donations: u64,
}

/// What a stats query over a range must answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExpectedStats {
    pub count: u64,
    pub sum_cents: u64,
    pub min_cents: Option<u64>,
    pub max_cents: Option<u64>,
    pub per_minute: BTreeMap<i64, ExpectedTotal>,
}

/// A recorded donation without its `payment_ref` (the map's key) and with its campaign as an
/// index: an acknowledgement copies only the key.
#[derive(Debug, Clone, Copy)]
struct Recorded {
    campaign: usize,
    amount_cents: u64,
    paid_at_ms: i64,
}

#[derive(Debug, Default)]
pub struct GroundTruth {
    /// By `payment_ref`; hashed with FxHash, not SipHash: the keys are the load generator's
    /// own, and the map is looked up for every acknowledgement on the sending path.
    recorded: FxHashMap<String, Recorded>,
    /// The campaigns seen, in order; [`Recorded::campaign`] indexes it.
    campaigns: Vec<String>,
    totals: BTreeMap<String, ExpectedTotal>,
    resends_acknowledged: u64,
    /// Refunds acknowledged, by `refund_ref`: the payment, campaign and amount.
    refunds: FxHashMap<String, (String, String, u64)>,
}

impl GroundTruth {
    /// Room for `donations` distinct payments before the map grows (growing rehashes every
    /// entry, on the sending path).
    pub fn with_capacity(donations: usize) -> Self {
        Self {
            recorded: FxHashMap::with_capacity_and_hasher(donations, Default::default()),
            ..Self::default()
        }
    }

    /// Notes a 2xx for `donation`; returns whether it was the payment's first.
    pub fn acknowledged(&mut self, donation: &SentDonation) -> bool {
        if self.recorded.contains_key(&donation.payment_ref) {
            self.resends_acknowledged += 1;
            return false;
        }
        let campaign = self.campaign_index(&donation.campaign_id);
        let total = match self.totals.get_mut(&donation.campaign_id) {
            Some(total) => total,
            None => self.totals.entry(donation.campaign_id.clone()).or_default(),
        };
        total.total_cents += donation.amount_cents;
        total.donations += 1;
        let recorded = Recorded {
            campaign,
            amount_cents: donation.amount_cents,
            paid_at_ms: donation.paid_at_ms,
        };
        self.recorded.insert(donation.payment_ref.clone(), recorded);
        true
    }

    /// The index of `campaign_id` in `campaigns`, added if new (a run has a handful).
    fn campaign_index(&mut self, campaign_id: &str) -> usize {
        match self.campaigns.iter().position(|known| known == campaign_id) {
            Some(index) => index,
            None => {
                self.campaigns.push(campaign_id.to_owned());
                self.campaigns.len() - 1
            }
        }
    }

    pub fn is_recorded(&self, payment_ref: &str) -> bool {
        self.recorded.contains_key(payment_ref)
    }

    pub fn totals(&self) -> &BTreeMap<String, ExpectedTotal> {
        &self.totals
    }

    /// Expected count and sum of a campaign's donations with `paid_at` in `[from_ms, to_ms)`.
    pub fn range(&self, campaign_id: &str, from_ms: i64, to_ms: i64) -> ExpectedTotal {
        let stats = self.range_stats(campaign_id, from_ms, to_ms);
        ExpectedTotal {
            total_cents: stats.sum_cents,
            donations: stats.count,
        }
    }

    /// Count, sum, smallest and largest of a campaign's donations paid in `[from_ms, to_ms)`,
    /// and their per-minute series (minute start in unix ms → count and sum).
    pub fn range_stats(&self, campaign_id: &str, from_ms: i64, to_ms: i64) -> ExpectedStats {
        let mut stats = ExpectedStats::default();
        let Some(campaign) = self.campaigns.iter().position(|known| known == campaign_id) else {
            return stats;
        };
        let paid_in_range = self.recorded.values().filter(|donation| {
            donation.campaign == campaign && (from_ms..to_ms).contains(&donation.paid_at_ms)
        });
        for donation in paid_in_range {
            stats.count += 1;
            stats.sum_cents += donation.amount_cents;
            stats.min_cents = Some(
                stats
                    .min_cents
                    .map_or(donation.amount_cents, |m| m.min(donation.amount_cents)),
            );
            stats.max_cents = Some(
                stats
                    .max_cents
                    .map_or(donation.amount_cents, |m| m.max(donation.amount_cents)),
            );
            let minute = stats
                .per_minute
                .entry(donation.paid_at_ms.div_euclid(60_000) * 60_000)
                .or_default();
            minute.donations += 1;
            minute.total_cents += donation.amount_cents;
        }
        stats
    }

    /// Counts a donation the server recorded although its request was never answered.
    pub fn recorded_without_answer(&mut self, donation: &SentDonation) -> bool {
        self.acknowledged(donation)
    }

    pub fn recorded_count(&self) -> usize {
        self.recorded.len()
    }

    pub fn resends_acknowledged(&self) -> u64 {
        self.resends_acknowledged
    }

    /// Notes a 2xx for `refund`; returns whether it was the `refund_ref`'s first.
    pub fn refund_acknowledged(&mut self, refund: &SentRefund) -> bool {
        if self.refunds.contains_key(&refund.refund_ref) {
            return false;
        }
        self.refunds.insert(
            refund.refund_ref.clone(),
            (
                refund.payment_ref.clone(),
                refund.campaign_id.clone(),
                refund.amount_cents,
            ),
        );
        true
    }

    pub fn refunds_acknowledged(&self) -> u64 {
        self.refunds.len() as u64
    }

    /// Per campaign, the acknowledged refunds whose donation is recorded.
    pub fn refund_totals(&self) -> BTreeMap<String, ExpectedRefunds> {
        let mut totals: BTreeMap<String, ExpectedRefunds> = BTreeMap::new();
        for (payment_ref, campaign_id, amount_cents) in self.refunds.values() {
            if self.recorded.contains_key(payment_ref) {
                let total = totals.entry(campaign_id.clone()).or_default();
                total.refunded_cents += amount_cents;
                total.refunds += 1;
            }
        }
        totals
    }

    /// Acknowledged refunds whose donation is not recorded: tally holds them pending.
    pub fn refunds_waiting(&self) -> u64 {
        self.refunds
            .values()
            .filter(|(payment_ref, ..)| !self.recorded.contains_key(payment_ref))
            .count() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn donation(
        payment_ref: &str,
        campaign_id: &str,
        amount_cents: u64,
        paid_at_ms: i64,
    ) -> SentDonation {
        SentDonation {
            payment_ref: payment_ref.into(),
            campaign_id: campaign_id.into(),
            amount_cents,
            paid_at_ms,
        }
    }

    #[test]
    fn a_payment_counts_once_with_its_first_acknowledged_fields() {
        let mut truth = GroundTruth::default();
        assert!(truth.acknowledged(&donation("p1", "meals", 100, 0)));
        assert!(
            !truth.acknowledged(&donation("p1", "meals", 100, 5)),
            "a retry"
        );
        assert!(
            !truth.acknowledged(&donation("p1", "shelter", 999, 0)),
            "a conflicting resend"
        );
        assert!(truth.acknowledged(&donation("p2", "meals", 250, 60_000)));
        assert_eq!(
            truth.totals()["meals"],
            ExpectedTotal {
                total_cents: 350,
                donations: 2
            }
        );
        assert!(!truth.totals().contains_key("shelter"));
        assert_eq!(truth.resends_acknowledged(), 2);
        assert_eq!(truth.recorded_count(), 2);
    }

    #[test]
    fn a_refund_counts_once_and_only_once_its_donation_is_recorded() {
        let mut truth = GroundTruth::default();
        let refund = |refund_ref: &str, payment_ref: &str, amount_cents| SentRefund {
            refund_ref: refund_ref.into(),
            payment_ref: payment_ref.into(),
            campaign_id: "meals".into(),
            amount_cents,
        };
        assert!(truth.refund_acknowledged(&refund("r1", "p1", 40)));
        assert!(
            !truth.refund_acknowledged(&refund("r1", "p1", 40)),
            "a resend"
        );
        truth.refund_acknowledged(&refund("r2", "p2", 10));
        assert!(truth.refund_totals().is_empty(), "no donation recorded yet");
        truth.acknowledged(&donation("p1", "meals", 100, 0));
        assert_eq!(
            truth.refund_totals()["meals"],
            ExpectedRefunds {
                refunded_cents: 40,
                refunds: 1
            }
        );
        assert_eq!(truth.refunds_waiting(), 1);
        assert_eq!(truth.refunds_acknowledged(), 2);
    }

    #[test]
    fn ranges_follow_paid_at_with_an_exclusive_end() {
        let mut truth = GroundTruth::default();
        for (i, paid_at_ms) in [0, 59_999, 60_000, 120_000].into_iter().enumerate() {
            truth.acknowledged(&donation(&format!("p{i}"), "meals", 10, paid_at_ms));
        }
        assert_eq!(
            truth.range("meals", 0, 60_000),
            ExpectedTotal {
                total_cents: 20,
                donations: 2
            }
        );
        assert_eq!(truth.range("meals", 60_000, 120_000).donations, 1);
        assert_eq!(truth.range("shelter", 0, 1_000_000).donations, 0);
    }

    #[test]
    fn range_stats_hold_extremes_and_a_per_minute_series() {
        let mut truth = GroundTruth::default();
        truth.acknowledged(&donation("a", "meals", 300, 1_000));
        truth.acknowledged(&donation("b", "meals", 5, 59_000));
        truth.acknowledged(&donation("c", "meals", 1_000, 61_000));
        truth.acknowledged(&donation("d", "meals", 1, 200_000));
        let stats = truth.range_stats("meals", 0, 120_000);
        assert_eq!((stats.count, stats.sum_cents), (3, 1_305));
        assert_eq!((stats.min_cents, stats.max_cents), (Some(5), Some(1_000)));
        assert_eq!(
            stats.per_minute.into_iter().collect::<Vec<_>>(),
            vec![
                (
                    0,
                    ExpectedTotal {
                        total_cents: 305,
                        donations: 2
                    }
                ),
                (
                    60_000,
                    ExpectedTotal {
                        total_cents: 1_000,
                        donations: 1
                    }
                )
            ]
        );
        let empty = truth.range_stats("meals", 300_000, 360_000);
        assert_eq!(empty, ExpectedStats::default());
    }
}
