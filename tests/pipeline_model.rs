//! Guards exactly-once processing against a simple model: random event streams with
//! duplicates, conflicts, out-of-order and late `paid_at`, several campaigns, processed with
//! random checkpoint cadences and restarts (and a savepoint restored at the end) must give the
//! totals, minute windows, conflicts and counters that a plain recomputation gives.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use support::pipeline::{DataDir, donation, verified_digests};
use tally_pipeline::checkpoint::savepoint;
use tally_pipeline::event::DonationEvent;
use tally_pipeline::log::{Offset, PartitionId, Partitioner};
use tally_pipeline::operators::event_time_windows::MINUTE_MS;
use tally_pipeline::operators::watermark::ALLOWED_LATENESS_MS_DEFAULT;
use tally_pipeline::runner::{Pipeline, RunMode};

const PARTITIONS: u32 = 3;
const CAMPAIGNS: [&str; 3] = ["meals", "food-bank", "shelter"];
const BASE_MS: i64 = 1_795_546_800_000;

#[derive(Debug, Clone)]
enum Step {
    New {
        campaign: usize,
        amount_cents: u64,
        minute: i64,
        user: u32,
    },
    Duplicate {
        of: prop::sample::Index,
        paid_at_shift_ms: i64,
    },
    Conflict {
        of: prop::sample::Index,
        field: u8,
    },
    Process {
        checkpoint_records: u64,
    },
    Restart,
    Savepoint,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        10 => (0..CAMPAIGNS.len(), 1u64..5_000, 0i64..400, 0u32..4)
            .prop_map(|(campaign, amount_cents, minute, user)| Step::New { campaign, amount_cents, minute, user }),
        3 => (any::<prop::sample::Index>(), -120_000i64..120_000)
            .prop_map(|(of, paid_at_shift_ms)| Step::Duplicate { of, paid_at_shift_ms }),
        2 => (any::<prop::sample::Index>(), 0u8..4).prop_map(|(of, field)| Step::Conflict { of, field }),
        2 => (1u64..60).prop_map(|checkpoint_records| Step::Process { checkpoint_records }),
        1 => Just(Step::Restart),
        1 => Just(Step::Savepoint),
    ]
}

/// What a plain recomputation says the state must be.
#[derive(Debug, Default)]
struct Model {
    firsts: Vec<DonationEvent>,
    recorded: BTreeMap<String, (DonationEvent, (PartitionId, Offset))>,
    totals: BTreeMap<String, (u64, u64)>,
    minutes: BTreeMap<(String, i64), (u64, u64, u64, u64)>,
    conflicts: BTreeSet<(String, Offset, Offset, Vec<String>)>,
    duplicates: u64,
    late: u64,
    paid_at_max: BTreeMap<PartitionId, i64>,
}

impl Model {
    fn apply(&mut self, event: &DonationEvent, at: (PartitionId, Offset)) {
        let Some((first, first_at)) = self.recorded.get(&event.payment_ref) else {
            let watermark = self
                .paid_at_max
                .get(&at.0)
                .map(|max| max - ALLOWED_LATENESS_MS_DEFAULT);
            self.late += u64::from(watermark.is_some_and(|w| event.paid_at.unix_ms() < w));
            let max = self.paid_at_max.entry(at.0).or_insert(i64::MIN);
            *max = (*max).max(event.paid_at.unix_ms());
            self.recorded
                .insert(event.payment_ref.clone(), (event.clone(), at));
            let total = self.totals.entry(event.campaign_id.clone()).or_default();
            total.0 += event.amount_cents;
            total.1 += 1;
            let minute = event.paid_at.unix_ms().div_euclid(MINUTE_MS) * MINUTE_MS;
            let cell = self
                .minutes
                .entry((event.campaign_id.clone(), minute))
                .or_insert((0, 0, u64::MAX, 0));
            cell.0 += 1;
            cell.1 += event.amount_cents;
            cell.2 = cell.2.min(event.amount_cents);
            cell.3 = cell.3.max(event.amount_cents);
            return;
        };
        let mut fields = Vec::new();
        if first.amount_cents != event.amount_cents {
            fields.push("amount_cents".to_owned());
        }
        if first.campaign_id != event.campaign_id {
            fields.push("campaign_id".to_owned());
        }
        if first.currency != event.currency {
            fields.push("currency".to_owned());
        }
        if first.order_id != event.order_id {
            fields.push("order_id".to_owned());
        }
        if first.user_id != event.user_id {
            fields.push("user_id".to_owned());
        }
        if fields.is_empty() {
            self.duplicates += 1;
        } else {
            self.conflicts
                .insert((event.payment_ref.clone(), first_at.1, at.1, fields));
        }
    }
}

fn materialize(step: &Step, model: &Model, next_ref: &mut u64) -> Option<DonationEvent> {
    match step {
        Step::New {
            campaign,
            amount_cents,
            minute,
            user,
        } => {
            *next_ref += 1;
            let paid_at = BASE_MS + minute * MINUTE_MS + (*next_ref as i64 * 7_919) % MINUTE_MS;
            Some(donation(
                &format!("pay_{next_ref}"),
                CAMPAIGNS[*campaign],
                *amount_cents,
                paid_at,
                *user,
            ))
        }
        Step::Duplicate {
            of,
            paid_at_shift_ms,
        } => {
            let mut event = model
                .firsts
                .get(of.index(model.firsts.len().max(1)))?
                .clone();
            event.paid_at.0 += paid_at_shift_ms;
            Some(event)
        }
        Step::Conflict { of, field } => {
            let mut event = model
                .firsts
                .get(of.index(model.firsts.len().max(1)))?
                .clone();
            match field {
                0 => event.amount_cents += 1,
                1 => {
                    event.campaign_id = if event.campaign_id == "meals" {
                        "shelter".into()
                    } else {
                        "meals".into()
                    }
                }
                2 => event.user_id.push('x'),
                _ => {
                    event.order_id.push('x');
                    event.amount_cents += 2;
                }
            }
            Some(event)
        }
        _ => None,
    }
}

fn check_against_model(pipeline: &Pipeline, model: &Model) {
    let read_model = pipeline.read_model();
    let totals: BTreeMap<String, (u64, u64)> = read_model
        .campaign_totals()
        .into_iter()
        .map(|(campaign, total)| (campaign, (total.total_cents, total.donations)))
        .collect();
    assert_eq!(totals, model.totals);
    for ((campaign, minute), &(count, sum, min, max)) in &model.minutes {
        let stats = read_model
            .stats(campaign, *minute, minute + MINUTE_MS, None)
            .unwrap();
        assert_eq!(
            (
                stats.count,
                stats.sum_cents,
                stats.min_cents,
                stats.max_cents
            ),
            (count, sum, Some(min), Some(max))
        );
    }
    for campaign in CAMPAIGNS {
        let stats = read_model
            .stats(
                campaign,
                BASE_MS - 10 * MINUTE_MS,
                BASE_MS + 500 * MINUTE_MS,
                None,
            )
            .unwrap();
        let (sum, count) = model.totals.get(campaign).copied().unwrap_or_default();
        assert_eq!(
            (stats.count, stats.sum_cents),
            (count, sum),
            "{campaign} over the whole range"
        );
    }
    let mut conflicts = BTreeSet::new();
    let mut counters = (0, 0, 0, 0);
    let store = pipeline.store();
    for partition in 0..store.partition_count() {
        for conflict in store.conflicts(partition).unwrap() {
            let fields = conflict
                .differences
                .iter()
                .map(|d| d.field.clone())
                .collect();
            conflicts.insert((
                conflict.payment_ref,
                conflict.recorded_offset,
                conflict.conflicting_offset,
                fields,
            ));
        }
        let c = store.meta(partition).unwrap().unwrap().scalars.counters;
        counters = (
            counters.0 + c.recorded,
            counters.1 + c.duplicates,
            counters.2 + c.conflicts,
            counters.3 + c.late,
        );
    }
    assert_eq!(conflicts, model.conflicts);
    assert_eq!(
        counters,
        (
            model.recorded.len() as u64,
            model.duplicates,
            model.conflicts.len() as u64,
            model.late
        )
    );
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 24,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn pipeline_matches_model(steps in prop::collection::vec(step(), 1..160)) {
        let root = tempfile::tempdir().unwrap();
        let data = DataDir::new(root.path(), PARTITIONS);
        let partitioner = Partitioner::new(PARTITIONS);
        let mut log = Some(data.open_log());
        let mut pipeline = Some(data.pipeline(log.clone().unwrap(), 1_000));
        let mut model = Model::default();
        let mut next_ref = 0;
        let mut savepoint_path = None;
        let mut savepoints_taken = 0;
        for step in &steps {
            if let Some(event) = materialize(step, &model, &mut next_ref) {
                let at = data.append(log.as_ref().unwrap(), std::slice::from_ref(&event))[0];
                prop_assert_eq!(at.0, partitioner.partition_for_key(event.payment_ref.as_bytes()));
                if matches!(step, Step::New { .. }) {
                    model.firsts.push(event.clone());
                }
                model.apply(&event, at);
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
                    // A savepoint never replaces a file: each gets its own.
                    let path = root.path().join(format!("savepoint-{savepoints_taken}"));
                    savepoints_taken += 1;
                    let current = pipeline.as_ref().unwrap();
                    savepoint::create(current.store(), &path, 0).unwrap();
                    savepoint_path = Some(path);
                }
                Step::New { .. } | Step::Duplicate { .. } | Step::Conflict { .. } => {}
            }
        }
        drop(pipeline.take());
        let finished = data.catch_up(log.clone().unwrap(), 13);
        check_against_model(&finished, &model);
        let digests = verified_digests(&finished);

        if let Some(path) = savepoint_path {
            let restored = savepoint::read(&path).unwrap();
            savepoint::restore(finished.store(), &restored).unwrap();
            drop(finished);
            let replayed = data.catch_up(log.clone().unwrap(), 29);
            check_against_model(&replayed, &model);
            prop_assert_eq!(verified_digests(&replayed), digests, "restore + catch-up = never restored");
        }
    }
}
