//! Guards refunds and chargebacks against a simple model: random streams of donations and of
//! retractions — partial and several per donation, more than a donation had, before their
//! donation, resent, resent with other fields — processed with random checkpoint cadences,
//! restarts and savepoints, must give the gross, refunded and net totals and the counters that
//! a plain recomputation in log order gives, and every checkpoint must match a rebuild from
//! the log.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use support::pipeline::{DataDir, donation, verified_digests};
use tally_pipeline::checkpoint::savepoint;
use tally_pipeline::event::refund::{RefundEvent, RetractionKind};
use tally_pipeline::event::{EventTime, LogEvent, envelope};
use tally_pipeline::log::KeyedRecord;
use tally_pipeline::operators::event_time_windows::{Granularity, MINUTE_MS};
use tally_pipeline::operators::retractions::RetractionCounters;
use tally_pipeline::runner::{Pipeline, RunMode};

const PARTITIONS: u32 = 3;
const CAMPAIGNS: [&str; 2] = ["meals", "shelter"];
const BASE_MS: i64 = 1_795_546_800_000;

#[derive(Debug, Clone)]
enum Step {
    Donation {
        campaign: usize,
        amount_cents: u64,
    },
    DonationResend {
        of: prop::sample::Index,
    },
    /// A refund of payment `pay_{n}`, where `n` may be ahead of the donations so far: it
    /// arrives before its donation.
    Refund {
        payment_ahead: u8,
        of: prop::sample::Index,
        amount_cents: u64,
        chargeback: bool,
    },
    RefundResend {
        of: prop::sample::Index,
        other_amount: bool,
    },
    Process {
        checkpoint_records: u64,
    },
    Restart,
    Savepoint,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (0..CAMPAIGNS.len(), 1u64..2_000)
            .prop_map(|(campaign, amount_cents)| Step::Donation { campaign, amount_cents }),
        1 => any::<prop::sample::Index>().prop_map(|of| Step::DonationResend { of }),
        6 => (0u8..4, any::<prop::sample::Index>(), 1u64..1_500, any::<bool>())
            .prop_map(|(payment_ahead, of, amount_cents, chargeback)| Step::Refund { payment_ahead, of, amount_cents, chargeback }),
        2 => (any::<prop::sample::Index>(), any::<bool>())
            .prop_map(|(of, other_amount)| Step::RefundResend { of, other_amount }),
        2 => (1u64..40).prop_map(|checkpoint_records| Step::Process { checkpoint_records }),
        1 => Just(Step::Restart),
        1 => Just(Step::Savepoint),
    ]
}

/// Per campaign: gross cents, donations, refunded cents, refunds, chargeback cents, chargebacks.
type Amounts = (u64, u64, u64, u64, u64, u64);

/// A plain recomputation, in log order.
#[derive(Debug, Default)]
struct Model {
    donations: HashMap<String, (String, u64, u64)>,
    refunds: HashMap<String, RefundEvent>,
    waiting: HashMap<String, Vec<RefundEvent>>,
    campaigns: BTreeMap<String, Amounts>,
    /// Applied refunds by campaign and minute of `refunded_at`: count, cents.
    refund_minutes: BTreeMap<(String, i64), (u64, u64)>,
    counters: RetractionCounters,
    refunds_sent: Vec<RefundEvent>,
    donation_refs: Vec<String>,
    next_payment: u64,
    next_refund: u64,
}

impl Model {
    fn apply(&mut self, event: &LogEvent) {
        match event {
            LogEvent::Donation(donation) => {
                if self.donations.contains_key(&donation.payment_ref) {
                    return;
                }
                self.donations.insert(
                    donation.payment_ref.clone(),
                    (donation.campaign_id.clone(), donation.amount_cents, 0),
                );
                let amounts = self
                    .campaigns
                    .entry(donation.campaign_id.clone())
                    .or_default();
                amounts.0 += donation.amount_cents;
                amounts.1 += 1;
                for refund in self
                    .waiting
                    .remove(&donation.payment_ref)
                    .unwrap_or_default()
                {
                    self.counters.pending -= 1;
                    self.settle(&refund);
                }
            }
            LogEvent::Refund(refund) => {
                if let Some(first) = self.refunds.get(&refund.refund_ref) {
                    let same = first.payment_ref == refund.payment_ref
                        && first.amount_cents == refund.amount_cents
                        && first.kind == refund.kind;
                    if same {
                        self.counters.duplicates += 1;
                    } else {
                        self.counters.conflicts += 1;
                    }
                    return;
                }
                self.refunds
                    .insert(refund.refund_ref.clone(), refund.clone());
                self.counters.recorded += 1;
                if self.donations.contains_key(&refund.payment_ref) {
                    self.settle(refund);
                } else {
                    self.counters.pending += 1;
                    self.waiting
                        .entry(refund.payment_ref.clone())
                        .or_default()
                        .push(refund.clone());
                }
            }
        }
    }

    fn settle(&mut self, refund: &RefundEvent) {
        let (campaign, amount, taken) = self.donations.get_mut(&refund.payment_ref).unwrap();
        if refund.amount_cents > *amount - *taken {
            self.counters.excess += 1;
            return;
        }
        *taken += refund.amount_cents;
        self.counters.applied += 1;
        let amounts = self.campaigns.get_mut(campaign.as_str()).unwrap();
        amounts.2 += refund.amount_cents;
        amounts.3 += 1;
        let minute = refund.refunded_at.unix_ms().div_euclid(60_000) * 60_000;
        let cell = self
            .refund_minutes
            .entry((campaign.clone(), minute))
            .or_default();
        cell.0 += 1;
        cell.1 += refund.amount_cents;
        if refund.kind == RetractionKind::Chargeback {
            amounts.4 += refund.amount_cents;
            amounts.5 += 1;
        }
    }

    /// The step's event, if it is one.
    fn materialize(&mut self, step: &Step) -> Option<LogEvent> {
        match step {
            Step::Donation {
                campaign,
                amount_cents,
            } => {
                let payment_ref = format!("pay_{}", self.next_payment);
                self.next_payment += 1;
                self.donation_refs.push(payment_ref.clone());
                let paid_at = BASE_MS + self.next_payment as i64 * 1_000;
                Some(LogEvent::Donation(donation(
                    &payment_ref,
                    CAMPAIGNS[*campaign],
                    *amount_cents,
                    paid_at,
                    1,
                )))
            }
            Step::DonationResend { of } => {
                let payment_ref = self
                    .donation_refs
                    .get(of.index(self.donation_refs.len().max(1)))?;
                let index: u64 = payment_ref["pay_".len()..].parse().unwrap();
                // Resent as first sent: its campaign and amount are the model's.
                let (campaign, amount, _) = self.donations.get(payment_ref)?.clone();
                let paid_at = BASE_MS + (index as i64 + 1) * 1_000;
                Some(LogEvent::Donation(donation(
                    payment_ref,
                    &campaign,
                    amount,
                    paid_at,
                    1,
                )))
            }
            Step::Refund {
                payment_ahead,
                of,
                amount_cents,
                chargeback,
            } => {
                let payment = if *payment_ahead == 0 || self.donation_refs.is_empty() {
                    // Ahead of every donation so far: it comes before its donation (or never).
                    format!("pay_{}", self.next_payment + u64::from(*payment_ahead))
                } else {
                    self.donation_refs[of.index(self.donation_refs.len())].clone()
                };
                let refund = RefundEvent {
                    refund_ref: format!("re_{}", self.next_refund),
                    payment_ref: payment,
                    amount_cents: *amount_cents,
                    kind: if *chargeback {
                        RetractionKind::Chargeback
                    } else {
                        RetractionKind::Refund
                    },
                    refunded_at: EventTime(BASE_MS + self.next_refund as i64 * 13_000),
                };
                self.next_refund += 1;
                self.refunds_sent.push(refund.clone());
                Some(LogEvent::Refund(refund))
            }
            Step::RefundResend { of, other_amount } => {
                let mut refund = self
                    .refunds_sent
                    .get(of.index(self.refunds_sent.len().max(1)))?
                    .clone();
                refund.refunded_at.0 += 5_000;
                if *other_amount {
                    refund.amount_cents += 1;
                }
                Some(LogEvent::Refund(refund))
            }
            _ => None,
        }
    }
}

fn record(event: &LogEvent) -> KeyedRecord {
    match event {
        LogEvent::Donation(donation) => envelope::keyed_record(donation),
        LogEvent::Refund(refund) => envelope::keyed_refund_record(refund),
    }
}

fn check_against_model(pipeline: &Pipeline, model: &Model) {
    let read_model = pipeline.read_model();
    let amounts: BTreeMap<String, Amounts> = read_model
        .campaigns_amounts()
        .into_iter()
        .map(|(campaign, a)| {
            let r = a.retractions;
            let amounts = (
                a.gross.total_cents,
                a.gross.donations,
                r.refunded_cents,
                r.refunds,
                r.chargeback_cents,
                r.chargebacks,
            );
            assert_eq!(
                a.net_cents(),
                amounts.0 - amounts.2,
                "{campaign}: net is gross less refunds"
            );
            (campaign, amounts)
        })
        .collect();
    assert_eq!(amounts, model.campaigns);
    assert_eq!(read_model.retraction_counters(), model.counters);
    // Refunds in the statistics, by `refunded_at`: over the whole range and per minute.
    for campaign in CAMPAIGNS {
        let (from, to) = (BASE_MS - 10 * MINUTE_MS, BASE_MS + 500 * MINUTE_MS);
        let stats = read_model
            .stats(campaign, from, to, Some(Granularity::Minute))
            .unwrap();
        let expected = model.campaigns.get(campaign).copied().unwrap_or_default();
        assert_eq!(
            (stats.refunds.refunds, stats.refunds.refunded_cents),
            (expected.3, expected.2),
            "{campaign}: refunds over the whole range"
        );
        for point in stats.series.unwrap() {
            let want = model
                .refund_minutes
                .get(&(campaign.to_owned(), point.start_ms))
                .copied()
                .unwrap_or_default();
            assert_eq!(
                (point.refunds.refunds, point.refunds.refunded_cents),
                want,
                "{campaign} minute {}",
                point.start_ms
            );
        }
        let hourly = read_model
            .stats(campaign, from, to, Some(Granularity::Hour))
            .unwrap();
        let in_hours: u64 = hourly
            .series
            .unwrap()
            .iter()
            .map(|p| p.refunds.refunds)
            .sum();
        assert_eq!(in_hours, expected.3, "{campaign}: hours add up");
    }
    let applied: HashSet<_> = model.refunds.keys().collect();
    assert_eq!(applied.len() as u64, model.counters.recorded);
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 32,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn refunds_match_the_model(steps in prop::collection::vec(step(), 1..160)) {
        let root = tempfile::tempdir().unwrap();
        let data = DataDir::new(root.path(), PARTITIONS);
        let mut log = Some(data.open_log());
        let mut pipeline = Some(data.pipeline(log.clone().unwrap(), 1_000));
        let mut model = Model::default();
        let mut savepoint_path = None;
        for (number, step) in steps.iter().enumerate() {
            if let Some(event) = model.materialize(step) {
                data.append_records(log.as_ref().unwrap(), vec![record(&event)]);
                model.apply(&event);
                continue;
            }
            match step {
                Step::Process { checkpoint_records } => {
                    drop(pipeline.take());
                    let processed = data.pipeline(log.clone().unwrap(), *checkpoint_records);
                    processed.run(RunMode::CatchUp).unwrap();
                    pipeline = Some(processed);
                }
                Step::Restart => {
                    drop(pipeline.take());
                    drop(log.take());
                    log = Some(data.open_log());
                    pipeline = Some(data.pipeline(log.clone().unwrap(), 1_000));
                }
                Step::Savepoint => {
                    let path = root.path().join(format!("savepoint-{number}"));
                    savepoint::create(pipeline.as_ref().unwrap().store(), &path, 0).unwrap();
                    savepoint_path = Some(path);
                }
                _ => {}
            }
        }
        drop(pipeline.take());
        let finished = data.catch_up(log.clone().unwrap(), 11);
        check_against_model(&finished, &model);
        let digests = verified_digests(&finished);

        if let Some(path) = savepoint_path {
            let restored = savepoint::read(&path).unwrap();
            savepoint::restore(finished.store(), &restored).unwrap();
            drop(finished);
            let replayed = data.catch_up(log.clone().unwrap(), 17);
            check_against_model(&replayed, &model);
            prop_assert_eq!(verified_digests(&replayed), digests, "restore + catch-up = never restored");
        }
    }
}
