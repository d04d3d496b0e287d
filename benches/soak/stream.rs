//! The simulated campaign: every donation of a 30-day campaign, in `paid_at` order, streamed.
//!
//! Donation `id` is a pure function of `id` and the campaign's size (a hash of `id` picks its
//! campaign, amount, user and jitter), so a resend is that function called again — the same
//! payment_ref and the same content — and the stream holds no more than its pending resends in
//! memory, whatever the size. What was sent is counted as it goes, for the exactness check.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use tally_pipeline::event::{DonationEvent, EventTime};

pub const CAMPAIGN_DAYS: i64 = 30;
const DAY_MS: i64 = 86_400_000;
const HOUR_MS: i64 = 3_600_000;
/// 2026-11-02T00:00:00Z, a Monday.
pub const CAMPAIGN_START_MS: i64 = 1_793_577_600_000;
pub const CAMPAIGN_END_MS: i64 = CAMPAIGN_START_MS + CAMPAIGN_DAYS * DAY_MS;

pub const HOT_CAMPAIGN: &str = "meals-for-kids";
pub const SMALL_CAMPAIGNS: [&str; 4] = ["food-bank", "shelter", "school-books", "clean-water"];
pub const HOT_CAMPAIGN_PERCENT: u64 = 90;
/// Share of donations whose callback the provider sends a second time.
pub const RESEND_PERCENT: u64 = 10;
/// A resend follows its donation by up to this much event time (provider retries back off
/// over minutes); it is appended once the stream has reached that point.
const RESEND_DELAY_MS_MAX: i64 = 10 * 60 * 1000;
/// One donation in this many arrives late, by up to `LATE_MS_MAX`.
const LATE_ONE_IN: u64 = 200;
/// Within the pipeline's default allowed lateness (5 minutes), so late donations still land
/// in their windows.
const LATE_MS_MAX: i64 = 4 * 60 * 1000;
/// `paid_at` of on-time donations moves up to this much either way around its place.
const JITTER_MS_MAX: i64 = 20_000;
const USERS: u64 = 2_000_000;

/// Relative donations per hour of a day (UTC as local time): quiet nights, a lunch bump and the
/// dinner rush from 17:00 to 20:00.
const HOURLY_WEIGHTS: [u64; 24] = [
    1, 1, 1, 1, 1, 2, 3, 5, 6, 6, 7, 9, 10, 8, 6, 6, 8, 14, 18, 16, 10, 6, 3, 2,
];

/// What the stream sent, per campaign: distinct donations and their cents.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub donations: u64,
    pub total_cents: u64,
}

#[derive(Debug)]
pub struct CampaignStream {
    donations_total: u64,
    /// Donations issued so far (ids `0..issued`).
    issued: u64,
    /// Records handed out: donations and resends.
    pub records: u64,
    pub resends: u64,
    /// Resends not yet sent, by the event time at which they are due.
    pending: BinaryHeap<Reverse<(i64, u64)>>,
    /// `paid_at` the stream has reached (on-time position of the latest donation).
    pub reached_ms: i64,
    /// Per campaign: `[HOT_CAMPAIGN, SMALL_CAMPAIGNS...]`.
    pub sent: [Sent; 1 + SMALL_CAMPAIGNS.len()],
}

impl CampaignStream {
    pub fn new(donations_total: u64) -> Self {
        Self {
            donations_total,
            issued: 0,
            records: 0,
            resends: 0,
            pending: BinaryHeap::new(),
            reached_ms: CAMPAIGN_START_MS,
            sent: Default::default(),
        }
    }

    pub fn issued(&self) -> u64 {
        self.issued
    }

    /// The next record, while donations `..donations_until` are not all issued; resends due by
    /// then come in between. With `drain`, the resends still pending follow the last donation.
    pub fn next_record(&mut self, donations_until: u64, drain: bool) -> Option<DonationEvent> {
        let resend_due = self
            .pending
            .peek()
            .is_some_and(|Reverse((due_ms, _))| *due_ms <= self.reached_ms);
        let event = if resend_due || (self.issued >= donations_until && drain) {
            let Reverse((_, id)) = self.pending.pop()?;
            self.resends += 1;
            donation(id, self.donations_total)
        } else if self.issued < donations_until.min(self.donations_total) {
            let id = self.issued;
            self.issued += 1;
            self.issue(id)
        } else {
            return None;
        };
        self.records += 1;
        Some(event)
    }

    /// Donation `id`, counted as sent, with its resend scheduled if it has one.
    fn issue(&mut self, id: u64) -> DonationEvent {
        let event = donation(id, self.donations_total);
        self.reached_ms = self.reached_ms.max(on_time_ms(id, self.donations_total));
        let slot = campaign_index(id);
        self.sent[slot].donations += 1;
        self.sent[slot].total_cents += event.amount_cents;
        let hash = mix(id ^ 0x5eed);
        if hash % 100 < RESEND_PERCENT {
            let delay_ms = 1_000 + (hash >> 8) as i64 % RESEND_DELAY_MS_MAX;
            self.pending.push(Reverse((event.paid_at.0 + delay_ms, id)));
        }
        event
    }

    pub fn distinct_donations(&self) -> u64 {
        self.sent.iter().map(|s| s.donations).sum()
    }
}

pub fn campaign_name(index: usize) -> &'static str {
    if index == 0 {
        HOT_CAMPAIGN
    } else {
        SMALL_CAMPAIGNS[index - 1]
    }
}

fn campaign_index(id: u64) -> usize {
    let hash = mix(id ^ 0xca3);
    if hash % 100 < HOT_CAMPAIGN_PERCENT {
        0
    } else {
        1 + (hash >> 8) as usize % SMALL_CAMPAIGNS.len()
    }
}

/// Donation `id` of a campaign of `donations_total`: the same every time it is asked for.
pub fn donation(id: u64, donations_total: u64) -> DonationEvent {
    let hash = mix(id);
    let on_time = on_time_ms(id, donations_total);
    let paid_at = if hash.is_multiple_of(LATE_ONE_IN) {
        on_time - 1 - (hash >> 16) as i64 % LATE_MS_MAX
    } else {
        on_time + (hash >> 16) as i64 % (2 * JITTER_MS_MAX + 1) - JITTER_MS_MAX
    };
    DonationEvent {
        payment_ref: format!("pay_{id:012}"),
        order_id: format!("ord_{id:012}"),
        user_id: format!("usr_{:07}", mix(id ^ 0x05e2) % USERS),
        campaign_id: campaign_name(campaign_index(id)).to_owned(),
        amount_cents: amount_cents(mix(id ^ 0xa30)),
        currency: "USD".to_owned(),
        paid_at: EventTime(paid_at.clamp(CAMPAIGN_START_MS, CAMPAIGN_END_MS - 1)),
    }
}

/// Round-up cents, $1, $2, $5, $10 and $20 buttons, and custom amounts up to $1,000.
fn amount_cents(hash: u64) -> u64 {
    let pick = hash % 1000;
    let rest = hash >> 10;
    match pick {
        0..350 => 1 + rest % 99,
        350..600 => 100,
        600..750 => 200,
        750..850 => 500,
        850..900 => 1_000,
        900..930 => 2_000,
        930..990 => 300 + rest % 9_700,
        _ => 10_000 + rest % 90_001,
    }
}

/// Where donation `id` falls in the campaign: the `id / total` quantile of 30 days of
/// `HOURLY_WEIGHTS`, so donations are in order and follow the daily shape.
fn on_time_ms(id: u64, donations_total: u64) -> i64 {
    let position = id as f64 / donations_total.max(1) as f64 * CAMPAIGN_DAYS as f64;
    let day = (position.floor() as i64).min(CAMPAIGN_DAYS - 1);
    let weight_total: u64 = HOURLY_WEIGHTS.iter().sum();
    let mut within_day = (position - day as f64) * weight_total as f64;
    let mut hour = 0;
    while hour < 23 && within_day >= HOURLY_WEIGHTS[hour] as f64 {
        within_day -= HOURLY_WEIGHTS[hour] as f64;
        hour += 1;
    }
    let within_hour = (within_day / HOURLY_WEIGHTS[hour] as f64).min(1.0);
    CAMPAIGN_START_MS + day * DAY_MS + hour as i64 * HOUR_MS + (within_hour * HOUR_MS as f64) as i64
}

/// splitmix64: a cheap, well-mixed hash of a donation id.
fn mix(value: u64) -> u64 {
    let mut z = value.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
