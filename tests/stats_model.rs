//! Guards campaign statistics against a brute-force recomputation: donations at random event
//! times (from year 0 to year 9999, clustered so that minutes, hours and days hold several)
//! spread over partitions, then random ranges — the widest one the API takes among them — with
//! and without a series, must give the count, sum, min, max, mean, percentiles and series points
//! that a scan of every donation gives; and an empty campaign over the widest range answers.
//! The same holds over rolled-up time, at the resolution the roll-up leaves: donations over two
//! months, some late, through real partition states with short horizons.

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use tally_pipeline::clock::UnixMillis;
use tally_pipeline::event::{DonationEvent, EventTime};
use tally_pipeline::operators::amount_histogram::AmountHistogram;
use tally_pipeline::operators::event_time_windows::{
    DAY_MS, EventTimeWindows, Granularity, HOUR_MS, MINUTE_MS, WindowHorizons,
};
use tally_pipeline::processor::PartitionState;
use tally_pipeline::processor::partition_state::{ApplyError, RecordedEvents};
use tally_pipeline::read_model::{
    CampaignStats, PartitionUpdate, ReadModel, SERIES_POINTS_MAX, SeriesPoint, StatsError,
};

/// `0000-01-01T00:00:00Z` and `9999-12-31T23:59:00Z`: the widest range RFC 3339 can name.
const WIDEST_FROM_MS: UnixMillis = -62_167_219_200_000;
const WIDEST_TO_MS: UnixMillis = 253_402_300_740_000;
const PARTITIONS: u32 = 3;
/// Event times cluster around these, so that buckets hold several donations and ranges cut
/// through them; the rest are anywhere.
const ANCHORS_MS: [UnixMillis; 4] = [WIDEST_FROM_MS, 0, 1_795_546_800_000, WIDEST_TO_MS - DAY_MS];

#[derive(Debug, Clone)]
struct Donation {
    partition: u32,
    campaign: &'static str,
    paid_at_ms: UnixMillis,
    amount_cents: u64,
}

fn event_time() -> impl Strategy<Value = UnixMillis> {
    prop_oneof![
        4 => (0..ANCHORS_MS.len(), -3 * DAY_MS..3 * DAY_MS)
            .prop_map(|(anchor, offset)| ANCHORS_MS[anchor] + offset),
        1 => WIDEST_FROM_MS..WIDEST_TO_MS,
    ]
    .prop_map(|t| t.clamp(WIDEST_FROM_MS, WIDEST_TO_MS - 1))
}

fn donation() -> impl Strategy<Value = Donation> {
    (
        0..PARTITIONS,
        prop_oneof![9 => Just("meals"), 1 => Just("other")],
        event_time(),
        prop_oneof![4 => 1u64..300, 1 => 1u64..10_000_000],
    )
        .prop_map(|(partition, campaign, paid_at_ms, amount_cents)| Donation {
            partition,
            campaign,
            paid_at_ms,
            amount_cents,
        })
}

#[derive(Debug, Clone, Copy)]
struct Query {
    from_ms: UnixMillis,
    to_ms: UnixMillis,
    bucket: Option<Granularity>,
}

fn query() -> impl Strategy<Value = Query> {
    let bucket = prop_oneof![
        Just(None),
        Just(Some(Granularity::Minute)),
        Just(Some(Granularity::Hour)),
        Just(Some(Granularity::Day)),
    ];
    let widest = Just((WIDEST_FROM_MS, WIDEST_TO_MS));
    let near = (event_time(), 0..3 * DAY_MS).prop_map(|(from, width)| (from, from + width));
    let anywhere = (event_time(), event_time());
    (prop_oneof![1 => widest, 3 => near, 1 => anywhere], bucket).prop_map(|((a, b), bucket)| {
        Query {
            from_ms: a.min(b),
            to_ms: a.max(b),
            bucket,
        }
    })
}

/// One update per partition, with the buckets its operators built from its donations.
fn read_model(donations: &[Donation]) -> ReadModel {
    let read_model = ReadModel::new(PARTITIONS);
    for partition in 0..PARTITIONS {
        let mut windows = EventTimeWindows::default();
        for donation in donations.iter().filter(|d| d.partition == partition) {
            windows.record(
                donation.campaign,
                donation.paid_at_ms,
                donation.amount_cents,
            );
        }
        read_model.publish(PartitionUpdate {
            partition,
            next_offset: 1,
            buckets: windows.iter().map(|(k, b)| (k, b.clone())).collect(),
            ..PartitionUpdate::default()
        });
    }
    read_model
}

/// What a scan of every donation says the answer is, nothing rolled up.
fn brute_force(donations: &[Donation], query: Query) -> Result<CampaignStats, StatsError> {
    brute_force_with_cuts(donations, query, Cuts::NONE, None)
}

/// Where minutes and hours are rolled up: buckets starting before these are gone.
#[derive(Debug, Clone, Copy)]
struct Cuts {
    minutes_before_ms: UnixMillis,
    hours_before_ms: UnixMillis,
}

impl Cuts {
    const NONE: Cuts = Cuts {
        minutes_before_ms: UnixMillis::MIN,
        hours_before_ms: UnixMillis::MIN,
    };

    fn before_ms(&self, granularity: Granularity) -> UnixMillis {
        match granularity {
            Granularity::Minute => self.minutes_before_ms,
            Granularity::Hour => self.hours_before_ms,
            Granularity::Day => UnixMillis::MIN,
        }
    }
}

/// [`brute_force`] where time before `cuts` is held only by coarser buckets: the answer comes
/// at the finest resolution that holds `from` on.
fn brute_force_with_cuts(
    donations: &[Donation],
    query: Query,
    cuts: Cuts,
    complete_through_ms: Option<UnixMillis>,
) -> Result<CampaignStats, StatsError> {
    let resolution = Granularity::ALL
        .into_iter()
        .find(|&g| query.from_ms >= cuts.before_ms(g))
        .unwrap_or(Granularity::Day);
    let from_ms = resolution.bucket_start(query.from_ms);
    let to_ms = resolution.bucket_start(query.to_ms);
    if from_ms >= to_ms {
        return Err(StatsError::EmptyRange { resolution });
    }

    let amounts_in = |from: UnixMillis, to: UnixMillis| {
        donations
            .iter()
            .filter(move |d| d.campaign == "meals" && (from..to).contains(&d.paid_at_ms))
            .map(|d| d.amount_cents)
    };
    let series = match query.bucket {
        None => None,
        Some(granularity) => {
            let width_ms = granularity.width_ms();
            let first = granularity.bucket_start(from_ms);
            let points = (granularity.bucket_start(to_ms - 1) - first) / width_ms + 1;
            if points > SERIES_POINTS_MAX {
                return Err(StatsError::SeriesTooLong { points });
            }
            if granularity < resolution {
                return Err(StatsError::SeriesFinerThanResolution {
                    series: granularity,
                    resolution,
                    rolled_up_before_ms: cuts.before_ms(granularity),
                });
            }
            let series = (0..points)
                .map(|i| {
                    let start_ms = first + i * width_ms;
                    let amounts: Vec<u64> =
                        amounts_in(start_ms.max(from_ms), (start_ms + width_ms).min(to_ms))
                            .collect();
                    SeriesPoint {
                        start_ms,
                        count: amounts.len() as u64,
                        sum_cents: amounts.iter().sum(),
                        refunds: Default::default(),
                    }
                })
                .collect();
            Some(series)
        }
    };
    let amounts: Vec<u64> = amounts_in(from_ms, to_ms).collect();
    let (count, sum_cents) = (amounts.len() as u64, amounts.iter().sum::<u64>());
    let (min_cents, max_cents) = (amounts.iter().copied().min(), amounts.iter().copied().max());
    let mut histogram = AmountHistogram::default();
    amounts.iter().for_each(|&a| histogram.record(a));
    let quantiles = histogram
        .quantiles([0.5, 0.9, 0.99])
        .map(|q| q.map(|v| v.clamp(min_cents.unwrap_or(0), max_cents.unwrap_or(0))));
    Ok(CampaignStats {
        from_ms,
        to_ms,
        resolution,
        count,
        sum_cents,
        min_cents,
        max_cents,
        mean_cents: (count > 0).then(|| (sum_cents + count / 2) / count),
        p50_cents: quantiles.map(|q| q[0]),
        p90_cents: quantiles.map(|q| q[1]),
        p99_cents: quantiles.map(|q| q[2]),
        complete_through_ms,
        series,
        refunds: Default::default(),
    })
}

fn stats(read_model: &ReadModel, query: Query) -> Result<CampaignStats, StatsError> {
    read_model.stats("meals", query.from_ms, query.to_ms, query.bucket)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn stats_match_a_scan_of_every_donation(
        donations in prop::collection::vec(donation(), 0..200),
        queries in prop::collection::vec(query(), 1..12),
    ) {
        let read_model = read_model(&donations);
        let widest = Query { from_ms: WIDEST_FROM_MS, to_ms: WIDEST_TO_MS, bucket: None };
        for query in queries.into_iter().chain([widest]) {
            prop_assert_eq!(stats(&read_model, query), brute_force(&donations, query), "{:?}", query);
        }
    }
}

#[test]
fn an_empty_campaign_over_the_widest_range_has_nothing_and_no_series() {
    let read_model = read_model(&[]);
    let widest = Query {
        from_ms: WIDEST_FROM_MS,
        to_ms: WIDEST_TO_MS,
        bucket: None,
    };
    let stats = stats(&read_model, widest).unwrap();
    assert_eq!(stats, brute_force(&[], widest).unwrap());
    assert_eq!((stats.count, stats.sum_cents), (0, 0));
    assert_eq!(
        (stats.min_cents, stats.p99_cents, stats.series),
        (None, None, None)
    );
    assert_eq!((stats.from_ms, stats.to_ms), (WIDEST_FROM_MS, WIDEST_TO_MS));
}

#[test]
fn the_widest_range_answers_on_empty_and_populated_campaigns_and_its_series_is_refused() {
    let donations: Vec<Donation> = ANCHORS_MS
        .iter()
        .enumerate()
        .map(|(i, &paid_at_ms)| Donation {
            partition: i as u32 % PARTITIONS,
            campaign: "meals",
            paid_at_ms,
            amount_cents: 100 * (i as u64 + 1),
        })
        .collect();
    for donations in [&[][..], &donations[..]] {
        let read_model = read_model(donations);
        let plain = Query {
            from_ms: WIDEST_FROM_MS,
            to_ms: WIDEST_TO_MS,
            bucket: None,
        };
        let answer = stats(&read_model, plain).unwrap();
        assert_eq!(answer.count, donations.len() as u64);
        assert_eq!(answer.series, None);
        for bucket in Granularity::ALL {
            let query = Query {
                bucket: Some(bucket),
                ..plain
            };
            match stats(&read_model, query) {
                Err(StatsError::SeriesTooLong { points }) => assert!(points > SERIES_POINTS_MAX),
                other => panic!("{bucket:?}: {other:?}"),
            }
        }
    }
}

#[test]
fn the_longest_series_allowed_has_every_point_and_the_donations_in_them() {
    let to_ms = Granularity::Day.bucket_start(1_795_546_800_000);
    let from_ms = to_ms - SERIES_POINTS_MAX * DAY_MS;
    let donations = [from_ms, from_ms + HOUR_MS, to_ms - MINUTE_MS]
        .into_iter()
        .enumerate()
        .map(|(i, paid_at_ms)| Donation {
            partition: i as u32 % PARTITIONS,
            campaign: "meals",
            paid_at_ms,
            amount_cents: 7,
        })
        .collect::<Vec<_>>();
    let read_model = read_model(&donations);
    let query = Query {
        from_ms,
        to_ms,
        bucket: Some(Granularity::Day),
    };
    let stats = stats(&read_model, query).unwrap();
    let series = stats.series.clone().unwrap();
    assert_eq!(series.len() as i64, SERIES_POINTS_MAX);
    assert_eq!((series[0].count, series[0].sum_cents), (2, 14));
    assert_eq!(series[series.len() - 1].count, 1);
    assert_eq!(stats, brute_force(&donations, query).unwrap());
    let one_more = Query {
        from_ms: from_ms - DAY_MS,
        ..query
    };
    assert_eq!(
        stats_error(&read_model, one_more),
        Some(StatsError::SeriesTooLong {
            points: SERIES_POINTS_MAX + 1
        })
    );
}

fn stats_error(read_model: &ReadModel, query: Query) -> Option<StatsError> {
    stats(read_model, query).err()
}

// Rolled-up time: donations over a couple of months go through real partition states that
// roll their minutes and hours up at short horizons, checkpoint by checkpoint; the answers must
// be a scan of every donation at the resolution the cuts leave.

/// Short horizons, so that months of donations roll up several times.
const SHORT_HORIZONS: WindowHorizons = WindowHorizons {
    minutes_ms: 3 * DAY_MS,
    hours_ms: 20 * DAY_MS,
};
const SPAN_START_MS: UnixMillis = 1_795_546_800_000;
const SPAN_MS: i64 = 60 * DAY_MS;

/// Donations in order of arrival: times move forward through the span, and one in eight comes
/// late (up to several days back, past the minute horizon).
fn arrivals() -> impl Strategy<Value = Vec<Donation>> {
    prop::collection::vec(
        (
            0..PARTITIONS,
            prop_oneof![9 => Just("meals"), 1 => Just("other")],
            1i64..SPAN_MS / 150,
            prop_oneof![7 => Just(0i64), 1 => 0..6 * DAY_MS],
            prop_oneof![4 => 1u64..300, 1 => 1u64..10_000_000],
        ),
        0..300,
    )
    .prop_map(|steps| {
        let mut now = SPAN_START_MS;
        steps
            .into_iter()
            .map(|(partition, campaign, step, late_by, amount_cents)| {
                now += step;
                Donation {
                    partition,
                    campaign,
                    paid_at_ms: now - late_by,
                    amount_cents,
                }
            })
            .collect()
    })
}

/// No look-up is needed: every payment is new.
struct NoRecordedEvents;

impl RecordedEvents for NoRecordedEvents {
    fn recorded_event(&self, offset: u64) -> Result<DonationEvent, ApplyError> {
        panic!("no resends here (offset {offset})")
    }
}

/// Applies the donations through partition states, checkpointing every `every` donations of a
/// partition and publishing what a checkpoint publishes; the read model and each partition's
/// watermark.
fn rolled_up_read_model(donations: &[Donation], every: usize) -> (ReadModel, Vec<UnixMillis>) {
    let read_model = ReadModel::new(PARTITIONS);
    let mut states: Vec<PartitionState> = (0..PARTITIONS)
        .map(|partition| PartitionState::new(partition, 0, SHORT_HORIZONS))
        .collect();
    let publish = |state: &mut PartitionState| {
        let changes = state.take_changes();
        read_model.publish(PartitionUpdate {
            partition: state.partition(),
            next_offset: state.next_offset(),
            watermark_ms: state.watermark().current(),
            buckets: state.changed_buckets(&changes),
            rolled_up: changes.windows.rolled_up,
            ..PartitionUpdate::default()
        });
    };
    for (i, donation) in donations.iter().enumerate() {
        let state = &mut states[donation.partition as usize];
        let event = DonationEvent {
            payment_ref: format!("pay_{i}"),
            order_id: format!("ord_{i}"),
            user_id: "usr".into(),
            campaign_id: donation.campaign.into(),
            amount_cents: donation.amount_cents,
            currency: "USD".into(),
            paid_at: EventTime(donation.paid_at_ms),
        };
        let offset = state.next_offset();
        state.apply(offset, event, &NoRecordedEvents).unwrap();
        if offset as usize % every == every - 1 {
            publish(state);
        }
    }
    let watermarks = states
        .iter_mut()
        .map(|state| {
            publish(state);
            state.watermark().current().unwrap_or(UnixMillis::MIN)
        })
        .collect();
    (read_model, watermarks)
}

/// The cuts the documented rule gives: minutes before the hour holding the newest watermark
/// less the minute horizon, hours before the day holding it less the hour horizon.
fn cuts_of(watermarks: &[UnixMillis]) -> Cuts {
    let Some(&newest) = watermarks.iter().max().filter(|&&w| w > UnixMillis::MIN) else {
        return Cuts::NONE;
    };
    Cuts {
        minutes_before_ms: Granularity::Hour.bucket_start(newest - SHORT_HORIZONS.minutes_ms),
        hours_before_ms: Granularity::Day.bucket_start(newest - SHORT_HORIZONS.hours_ms),
    }
}

fn span_query() -> impl Strategy<Value = Query> {
    let bucket = prop_oneof![
        Just(None),
        Just(Some(Granularity::Minute)),
        Just(Some(Granularity::Hour)),
        Just(Some(Granularity::Day)),
    ];
    let time = SPAN_START_MS - DAY_MS..SPAN_START_MS + SPAN_MS + DAY_MS;
    (time, 0..40 * DAY_MS, bucket).prop_map(|(from_ms, width, bucket)| Query {
        from_ms,
        to_ms: from_ms + width,
        bucket,
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 48,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn rolled_up_stats_match_a_scan_of_every_donation(
        donations in arrivals(),
        every in 1usize..40,
        queries in prop::collection::vec(span_query(), 1..16),
    ) {
        let (read_model, watermarks) = rolled_up_read_model(&donations, every);
        let cuts = cuts_of(&watermarks);
        let complete_through = watermarks
            .iter()
            .min()
            .filter(|&&w| w > UnixMillis::MIN)
            .map(|&w| Granularity::Minute.bucket_start(w));
        for query in queries {
            let expected = brute_force_with_cuts(&donations, query, cuts, complete_through);
            prop_assert_eq!(stats(&read_model, query), expected, "{:?} {:?}", query, cuts);
        }
    }
}
