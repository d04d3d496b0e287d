//! What a checkout rush sends: donations and the resends, conflicts and bad requests that come
//! with them, reproducible from a seed.
//!
//! - Campaigns: the first one is hot (80% of donations by default), the rest share the remainder.
//! - Amounts: $1 (40%), $2 (20%), round-up cents 1–99 (35%), a custom amount $3–$50 (5%).
//! - `paid_at`: the moment of sending, except one in twenty paid up to ten minutes earlier (a late
//!   callback) — so event time arrives out of order, and some of it late.
//! - Resends of a donation already sent (a payment-callback retry, counted once by tally):
//!   immediately, concurrently with the original, or minutes later.
//! - Conflicting resends: same `payment_ref`, a different amount (counted nowhere).
//! - Invalid requests: a body tally must refuse (wrong amount type, unknown field, bad id).
//! - Per-user bursts: now and then one user checks out many times at once — more than the
//!   server's per-user allowance, so some are answered 429 and sent again after `Retry-After`.
//! - Refunds and chargebacks: a share of donations is refunded (whole or in part; some as
//!   chargebacks), most once the donation was answered, some minutes later, some before the
//!   donation is sent at all (tally holds those until the donation comes); some are resent.
//! - `payment_ref`s carry a run id, so a second run against the same server sends new payments.

use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{Value, json};

use crate::ground_truth::{SentDonation, SentRefund};

/// When a resend goes out, relative to its original.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResendTiming {
    /// Right after the original was acknowledged.
    Immediate,
    /// At the same time as the original, racing it.
    Concurrent,
    /// This many milliseconds of run time later (minutes of the day, compressed).
    Later { delay_ms: u64 },
}

/// Shares and sizes of a traffic mix; `Default` is a plausible dinner rush.
#[derive(Debug, Clone, PartialEq)]
pub struct TrafficConfig {
    pub seed: u64,
    /// Part of every `payment_ref`: one run's payments never repeat another's.
    pub run_id: String,
    pub campaigns: Vec<String>,
    pub hot_campaign_share: f64,
    pub users: u32,
    pub resend_share: f64,
    pub conflict_share: f64,
    pub invalid_share: f64,
    pub late_share: f64,
    /// Share of donations refunded (or charged back), and of those refunds resent.
    pub refund_share: f64,
    pub refund_resend_share: f64,
    /// Share of checkouts that are a burst of `burst_size` donations from one user.
    pub burst_share: f64,
    pub burst_size: usize,
    /// The longest a late callback lags its payment.
    pub lateness_ms_max: i64,
    /// The longest a "later" resend waits, in run time.
    pub later_resend_ms_max: u64,
}

impl Default for TrafficConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            run_id: "run".into(),
            campaigns: vec![
                "meals-for-kids".into(),
                "food-bank".into(),
                "shelter".into(),
            ],
            hot_campaign_share: 0.8,
            users: 50_000,
            resend_share: 0.10,
            conflict_share: 0.01,
            invalid_share: 0.01,
            late_share: 0.05,
            refund_share: 0.03,
            refund_resend_share: 0.25,
            burst_share: 0.002,
            burst_size: 30,
            lateness_ms_max: 10 * 60 * 1000,
            later_resend_ms_max: 30_000,
        }
    }
}

/// Bytes reserved for a body as it is encoded: more than a donation's or a refund's fields take.
const BODY_CAPACITY: usize = 256;

/// A request body, encoded once when it is planned: a resend shares its original's bytes, and
/// the sending path never touches JSON values.
#[derive(Clone, PartialEq, Eq)]
pub struct Body(Arc<[u8]>);

impl Body {
    fn encode(value: &impl Serialize) -> Self {
        // Room for a whole donation's body at once: growing a vector from empty as serde_json
        // writes costs several reallocations per body.
        let mut bytes = Vec::with_capacity(BODY_CAPACITY);
        // Serializing plain structs and `Value`s into memory cannot fail.
        serde_json::to_writer(&mut bytes, value).unwrap_or_default();
        Self(bytes.into())
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The body read back as JSON (for checks and diagnostics, not the sending path).
    pub fn to_json(&self) -> Value {
        serde_json::from_slice(&self.0).unwrap_or(Value::Null)
    }
}

impl std::fmt::Display for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Body({self})")
    }
}

/// A donation callback's fields, as tally's contract names them.
#[derive(Debug, Serialize)]
struct DonationBody<'a> {
    payment_ref: &'a str,
    order_id: &'a str,
    user_id: &'a str,
    campaign_id: &'a str,
    amount_cents: u64,
    paid_at: &'a str,
}

/// When a refund goes out, relative to its donation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundTiming {
    /// Before the donation is sent: tally holds it until the donation comes.
    Before,
    /// Once the donation was answered.
    After,
    /// This many milliseconds of run time after the donation was answered.
    Later { delay_ms: u64 },
}

/// A refund callback's fields, as tally's contract names them.
#[derive(Debug, Serialize)]
struct RefundBody<'a> {
    refund_ref: &'a str,
    payment_ref: &'a str,
    amount_cents: u64,
    kind: &'a str,
    refunded_at: &'a str,
}

/// One request to send, and what it means for the ground truth.
#[derive(Debug, Clone, PartialEq)]
pub enum Planned {
    /// A new payment's donation.
    Donation(SentDonation, Body),
    /// The same donation again.
    Resend {
        of: SentDonation,
        body: Body,
        timing: ResendTiming,
    },
    /// Same `payment_ref`, different amount: tally keeps it as a conflict, counts nothing.
    Conflict { payment_ref: String, body: Body },
    /// A request tally must refuse with a 400.
    Invalid { body: Body },
    /// A refund or chargeback of a donation of this checkout (`POST /v1/refunds`).
    Refund {
        refund: SentRefund,
        body: Body,
        timing: RefundTiming,
    },
    /// The same refund again, once the first was answered.
    RefundResend { of: SentRefund, body: Body },
}

impl Planned {
    /// The request's body.
    pub fn body(&self) -> &Body {
        match self {
            Planned::Donation(_, body)
            | Planned::Resend { body, .. }
            | Planned::Conflict { body, .. }
            | Planned::Invalid { body }
            | Planned::Refund { body, .. }
            | Planned::RefundResend { body, .. } => body,
        }
    }
}

/// Generates the traffic of one run.
#[derive(Debug)]
pub struct Traffic {
    config: TrafficConfig,
    rng: StdRng,
    next_payment: u64,
    next_refund: u64,
}

impl Traffic {
    pub fn new(config: TrafficConfig) -> Self {
        assert!(!config.campaigns.is_empty(), "traffic needs a campaign");
        let rng = StdRng::seed_from_u64(config.seed);
        Self {
            config,
            rng,
            next_payment: 0,
            next_refund: 0,
        }
    }

    /// The requests for one checkout at wall-clock `now_ms`: its donation, and maybe a resend,
    /// a conflict or a bad request riding along.
    pub fn checkout(&mut self, now_ms: i64) -> Vec<Planned> {
        let user = self.rng.gen_range(0..self.config.users);
        let (donation, fields) = self.donation(now_ms, user);
        let body = Body::encode(&fields.as_body(&donation));
        let mut planned = vec![Planned::Donation(donation.clone(), body.clone())];
        if self.rng.r#gen::<f64>() < self.config.burst_share {
            for _ in 1..self.config.burst_size {
                let (donation, fields) = self.donation(now_ms, user);
                let body = Body::encode(&fields.as_body(&donation));
                planned.push(Planned::Donation(donation, body));
            }
        }
        let roll: f64 = self.rng.r#gen();
        if roll < self.config.resend_share {
            let timing = self.resend_timing();
            planned.push(Planned::Resend {
                of: donation.clone(),
                body: body.clone(),
                timing,
            });
        } else if roll < self.config.resend_share + self.config.conflict_share {
            let conflicting = DonationBody {
                amount_cents: donation.amount_cents + 1,
                ..fields.as_body(&donation)
            };
            planned.push(Planned::Conflict {
                payment_ref: donation.payment_ref.clone(),
                body: Body::encode(&conflicting),
            });
        }
        if self.rng.r#gen::<f64>() < self.config.invalid_share {
            planned.push(Planned::Invalid {
                body: self.invalid_body(now_ms),
            });
        }
        if self.rng.r#gen::<f64>() < self.config.refund_share {
            self.refund(&donation, &fields, &mut planned);
        }
        planned
    }

    /// A refund of `donation`, whole or in part, maybe resent.
    fn refund(
        &mut self,
        donation: &SentDonation,
        fields: &OtherFields,
        planned: &mut Vec<Planned>,
    ) {
        self.next_refund += 1;
        let refund_ref = format!(
            "re_{}_{:08x}_{:010}",
            self.config.run_id, self.config.seed as u32, self.next_refund
        );
        let amount_cents = if donation.amount_cents > 1 && self.rng.gen_ratio(2, 5) {
            self.rng.gen_range(1..donation.amount_cents)
        } else {
            donation.amount_cents
        };
        let kind = if self.rng.gen_ratio(3, 20) {
            "chargeback"
        } else {
            "refund"
        };
        let timing = match self.rng.gen_range(0..20) {
            0..3 => RefundTiming::Before,
            3..15 => RefundTiming::After,
            _ => RefundTiming::Later {
                delay_ms: self
                    .rng
                    .gen_range(1_000..=self.config.later_resend_ms_max.max(1_000)),
            },
        };
        let body = Body::encode(&RefundBody {
            refund_ref: &refund_ref,
            payment_ref: &donation.payment_ref,
            amount_cents,
            kind,
            refunded_at: &fields.paid_at,
        });
        let refund = SentRefund {
            refund_ref,
            payment_ref: donation.payment_ref.clone(),
            campaign_id: donation.campaign_id.clone(),
            amount_cents,
        };
        let resent = self.rng.r#gen::<f64>() < self.config.refund_resend_share;
        planned.push(Planned::Refund {
            refund: refund.clone(),
            body: body.clone(),
            timing,
        });
        if resent {
            planned.push(Planned::RefundResend { of: refund, body });
        }
    }

    fn donation(&mut self, now_ms: i64, user: u32) -> (SentDonation, OtherFields) {
        self.next_payment += 1;
        let payment_ref = format!(
            "pay_{}_{:08x}_{:010}",
            self.config.run_id, self.config.seed as u32, self.next_payment
        );
        let campaign_id = self.campaign().to_owned();
        let amount_cents = self.amount_cents();
        let paid_at_ms = if self.rng.r#gen::<f64>() < self.config.late_share {
            now_ms - self.rng.gen_range(0..=self.config.lateness_ms_max)
        } else {
            now_ms
        };
        let fields = OtherFields {
            order_id: format!("ord_{:010}", self.next_payment),
            user_id: format!("usr_{user:07}"),
            paid_at: rfc3339(paid_at_ms),
        };
        let donation = SentDonation {
            payment_ref,
            campaign_id,
            amount_cents,
            paid_at_ms,
        };
        (donation, fields)
    }

    fn campaign(&mut self) -> &str {
        let campaigns = &self.config.campaigns;
        if campaigns.len() == 1 || self.rng.r#gen::<f64>() < self.config.hot_campaign_share {
            &campaigns[0]
        } else {
            &campaigns[self.rng.gen_range(1..campaigns.len())]
        }
    }

    fn amount_cents(&mut self) -> u64 {
        match self.rng.gen_range(0..100) {
            0..40 => 100,
            40..60 => 200,
            60..95 => self.rng.gen_range(1..=99),
            _ => self.rng.gen_range(300..=5_000),
        }
    }

    fn resend_timing(&mut self) -> ResendTiming {
        match self.rng.gen_range(0..10) {
            0..5 => ResendTiming::Immediate,
            5..7 => ResendTiming::Concurrent,
            _ => ResendTiming::Later {
                delay_ms: self
                    .rng
                    .gen_range(1_000..=self.config.later_resend_ms_max.max(1_000)),
            },
        }
    }

    fn invalid_body(&mut self, now_ms: i64) -> Body {
        let user = self.rng.gen_range(0..self.config.users);
        let (donation, fields) = self.donation(now_ms, user);
        let mut body = serde_json::to_value(fields.as_body(&donation)).unwrap_or(Value::Null);
        match self.rng.gen_range(0..3) {
            0 => body["amount_cents"] = json!("200"),
            1 => body["tip_cents"] = json!(5),
            _ => body["campaign_id"] = json!("Not A Campaign!"),
        }
        Body::encode(&body)
    }
}

/// The fields of a donation's body that the ground truth does not keep.
#[derive(Debug)]
struct OtherFields {
    order_id: String,
    user_id: String,
    paid_at: String,
}

impl OtherFields {
    fn as_body<'a>(&'a self, donation: &'a SentDonation) -> DonationBody<'a> {
        DonationBody {
            payment_ref: &donation.payment_ref,
            order_id: &self.order_id,
            user_id: &self.user_id,
            campaign_id: &donation.campaign_id,
            amount_cents: donation.amount_cents,
            paid_at: &self.paid_at,
        }
    }
}

/// RFC 3339 (UTC, milliseconds) without a time library: civil date from days since the epoch.
pub fn rfc3339(unix_ms: i64) -> String {
    let days = unix_ms.div_euclid(86_400_000);
    let ms_of_day = unix_ms.rem_euclid(86_400_000);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute) = (ms_of_day / 3_600_000, ms_of_day / 60_000 % 60);
    let (second, millis) = (ms_of_day / 1000 % 60, ms_of_day % 1000);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{millis:03}Z")
}

/// Howard Hinnant's `civil_from_days`: the proleptic Gregorian date of a day count.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW_MS: i64 = 1_795_546_800_000; // 2026-11-24T19:00:00Z

    fn run(checkouts: usize) -> Vec<Planned> {
        let mut traffic = Traffic::new(TrafficConfig::default());
        (0..checkouts)
            .flat_map(|i| traffic.checkout(NOW_MS + i as i64))
            .collect()
    }

    #[test]
    fn the_mix_follows_its_shares() {
        let planned = run(20_000);
        let count = |f: &dyn Fn(&Planned) -> bool| {
            planned.iter().filter(|p| f(p)).count() as f64 / 20_000.0
        };
        assert!((count(&|p| matches!(p, Planned::Resend { .. })) - 0.10).abs() < 0.01);
        assert!((count(&|p| matches!(p, Planned::Conflict { .. })) - 0.01).abs() < 0.004);
        assert!((count(&|p| matches!(p, Planned::Invalid { .. })) - 0.01).abs() < 0.004);
        let donations: Vec<&SentDonation> = planned
            .iter()
            .filter_map(|p| match p {
                Planned::Donation(d, _) => Some(d),
                _ => None,
            })
            .collect();
        let hot = donations
            .iter()
            .filter(|d| d.campaign_id == "meals-for-kids")
            .count() as f64;
        assert!((hot / donations.len() as f64 - 0.8).abs() < 0.02);
        let dollars = donations.iter().filter(|d| d.amount_cents == 100).count() as f64;
        assert!((dollars / donations.len() as f64 - 0.4).abs() < 0.02);
        let late = donations
            .iter()
            .filter(|d| d.paid_at_ms < NOW_MS - 1000)
            .count() as f64;
        assert!(late > 0.0 && late / (donations.len() as f64) < 0.06);
    }

    #[test]
    fn payments_are_unique_and_resends_repeat_them_exactly() {
        let planned = run(5_000);
        let mut refs = std::collections::HashSet::new();
        for p in &planned {
            match p {
                Planned::Donation(d, body) => {
                    assert!(
                        refs.insert(d.payment_ref.clone()),
                        "a payment_ref is new once"
                    );
                    let body = body.to_json();
                    assert_eq!(body["payment_ref"], d.payment_ref.as_str());
                    assert_eq!(body["campaign_id"], d.campaign_id.as_str());
                    assert_eq!(body["amount_cents"], d.amount_cents);
                    assert_eq!(body["paid_at"], rfc3339(d.paid_at_ms).as_str());
                }
                Planned::Resend { of, body, .. } => {
                    let body = body.to_json();
                    assert_eq!(body["payment_ref"], of.payment_ref.as_str());
                    assert_eq!(body["amount_cents"], of.amount_cents);
                }
                Planned::Conflict { payment_ref, body } => {
                    assert_eq!(body.to_json()["payment_ref"], payment_ref.as_str())
                }
                Planned::Invalid { .. } => {}
                Planned::Refund { refund, body, .. }
                | Planned::RefundResend { of: refund, body } => {
                    let body = body.to_json();
                    assert_eq!(body["refund_ref"], refund.refund_ref.as_str());
                    assert_eq!(body["payment_ref"], refund.payment_ref.as_str());
                    assert_eq!(body["amount_cents"], refund.amount_cents);
                    assert!(refund.amount_cents >= 1);
                }
            }
        }
    }

    #[test]
    fn a_share_of_donations_is_refunded_within_its_amount_some_before_it() {
        let planned = run(20_000);
        let donations: std::collections::HashMap<&str, u64> = planned
            .iter()
            .filter_map(|p| match p {
                Planned::Donation(d, _) => Some((d.payment_ref.as_str(), d.amount_cents)),
                _ => None,
            })
            .collect();
        let refunds: Vec<(&crate::ground_truth::SentRefund, RefundTiming)> = planned
            .iter()
            .filter_map(|p| match p {
                Planned::Refund { refund, timing, .. } => Some((refund, *timing)),
                _ => None,
            })
            .collect();
        let share = refunds.len() as f64 / donations.len() as f64;
        assert!((0.02..0.04).contains(&share), "{share}");
        for (refund, _) in &refunds {
            assert!(refund.amount_cents <= donations[refund.payment_ref.as_str()]);
        }
        assert!(refunds.iter().any(|(_, t)| *t == RefundTiming::Before));
        assert!(
            refunds
                .iter()
                .any(|(r, _)| r.amount_cents < donations[r.payment_ref.as_str()])
        );
        let chargebacks = planned
            .iter()
            .filter(|p| matches!(p, Planned::Refund { body, .. } if body.to_json()["kind"] == "chargeback"))
            .count();
        assert!(chargebacks > 0);
        assert!(
            planned
                .iter()
                .any(|p| matches!(p, Planned::RefundResend { .. }))
        );
    }

    #[test]
    fn the_same_seed_replays_the_same_traffic() {
        assert_eq!(run(500), run(500));
        let other = {
            let mut traffic = Traffic::new(TrafficConfig {
                seed: 2,
                ..TrafficConfig::default()
            });
            traffic.checkout(NOW_MS)
        };
        assert_ne!(run(1), other);
    }

    #[test]
    fn bursts_come_from_one_user_and_exceed_the_allowance() {
        let mut traffic = Traffic::new(TrafficConfig {
            burst_share: 1.0,
            resend_share: 0.0,
            conflict_share: 0.0,
            invalid_share: 0.0,
            refund_share: 0.0,
            ..TrafficConfig::default()
        });
        let planned = traffic.checkout(NOW_MS);
        assert_eq!(planned.len(), 30);
        let users: std::collections::HashSet<String> = planned
            .iter()
            .map(|p| match p {
                Planned::Donation(_, body) => body.to_json()["user_id"].to_string(),
                other => panic!("a burst is donations only: {other:?}"),
            })
            .collect();
        assert_eq!(users.len(), 1);
        let bursts = run(20_000)
            .iter()
            .filter(|p| matches!(p, Planned::Donation(..)))
            .count();
        // 0.2% of 20,000 checkouts add 29 donations each: about 1,160 extra.
        assert!((20_600..21_800).contains(&bursts), "{bursts}");
    }

    #[test]
    fn the_run_id_keeps_payments_of_two_runs_apart() {
        let refs = |run_id: &str| {
            let mut traffic = Traffic::new(TrafficConfig {
                run_id: run_id.into(),
                ..TrafficConfig::default()
            });
            match &traffic.checkout(NOW_MS)[0] {
                Planned::Donation(d, _) => d.payment_ref.clone(),
                other => panic!("{other:?}"),
            }
        };
        assert_ne!(refs("a"), refs("b"));
        assert!(refs("a").starts_with("pay_a_"));
    }

    #[test]
    fn rfc3339_matches_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(NOW_MS), "2026-11-24T19:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_000 + 1), "2000-02-29T00:00:00.001Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59.999Z");
    }
}
