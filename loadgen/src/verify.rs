//! The end-of-run check: once the server reports no lag, every campaign's total and donation
//! count, and its statistics over several time ranges (count, sum, extremes, and the per-minute
//! series), must equal what was there before the run plus the ground truth of what this run got
//! acknowledged. With several target nodes sharing one log, each is checked so, and all of them
//! must report the same. Totals are checked gross (every donation), refunded (every refund and
//! chargeback applied) and net (the one less the other, the campaign's `total_cents`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::time::{Duration, Instant};

use anyhow::Context;
use tally_api::views::StatsView;

use crate::client::Server;
use crate::ground_truth::{ExpectedRefunds, ExpectedStats, ExpectedTotal, GroundTruth};

const MINUTE_MS: i64 = 60_000;

/// A `[from_ms, to_ms)` range of `paid_at`, whole minutes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TimeRange {
    pub from_ms: i64,
    pub to_ms: i64,
}

/// The ranges checked for a run of `[start_ms, end_ms)` whose late callbacks are paid up to
/// `lateness_ms` before they are sent: all of it, the late stretch before the start, the first
/// half, and the last minute onwards.
pub fn ranges_for_run(start_ms: i64, end_ms: i64, lateness_ms: i64) -> Vec<TimeRange> {
    let minute = |ms: i64| ms.div_euclid(MINUTE_MS) * MINUTE_MS;
    let (start, end) = (minute(start_ms), minute(end_ms));
    let middle = minute(start_ms + (end_ms - start_ms) / 2);
    let candidates = [
        (
            minute(start_ms - lateness_ms) - MINUTE_MS,
            end + 2 * MINUTE_MS,
        ),
        (minute(start_ms - lateness_ms), start),
        (start, middle),
        (end - MINUTE_MS, end + 2 * MINUTE_MS),
    ];
    let mut ranges: Vec<TimeRange> = candidates
        .into_iter()
        .filter(|(from_ms, to_ms)| from_ms < to_ms)
        .map(|(from_ms, to_ms)| TimeRange { from_ms, to_ms })
        .collect();
    ranges.sort();
    ranges.dedup();
    ranges
}

/// What the server reported for the campaigns and ranges, at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Gross: every donation recorded.
    pub totals: BTreeMap<String, ExpectedTotal>,
    /// Refunds and chargebacks applied, and the net total the server reports.
    pub refunds: BTreeMap<String, (ExpectedRefunds, u64)>,
    pub stats: BTreeMap<(String, TimeRange), ExpectedStats>,
}

/// What one target reported, named by its base URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetSnapshot {
    pub target: String,
    pub snapshot: Snapshot,
}

/// Waits until every target's view of every campaign reports zero lag, up to `wait` each.
pub async fn wait_every_caught_up(
    servers: &[Server],
    campaigns: &[String],
    wait: Duration,
) -> anyhow::Result<()> {
    let several = servers.len() > 1;
    for server in servers {
        let caught_up = wait_caught_up(server, campaigns, wait).await;
        if several {
            caught_up.with_context(|| format!("target {}", server.base()))?;
        } else {
            caught_up?;
        }
    }
    Ok(())
}

/// Every target's snapshot, in `servers`' order.
pub async fn snapshot_every(
    servers: &[Server],
    campaigns: &[String],
    ranges: &[TimeRange],
) -> anyhow::Result<Vec<TargetSnapshot>> {
    let mut snapshots = Vec::with_capacity(servers.len());
    for server in servers {
        let snapshot = snapshot(server, campaigns, ranges)
            .await
            .with_context(|| format!("target {}", server.base()))?;
        snapshots.push(TargetSnapshot {
            target: server.base().to_owned(),
            snapshot,
        });
    }
    Ok(snapshots)
}

/// Waits until every campaign's view reports zero lag, up to `wait`.
pub async fn wait_caught_up(
    server: &Server,
    campaigns: &[String],
    wait: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + wait;
    for campaign in campaigns {
        loop {
            let view = server.campaign(campaign).await;
            let lag_records = view.as_ref().and_then(|v| v.freshness.as_ref());
            if lag_records.is_some_and(|freshness| freshness.lag_records == 0) {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the server did not catch up within {wait:?} (last view of {campaign}: {view:?})"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

/// Reads every campaign's total and its stats over every range.
pub async fn snapshot(
    server: &Server,
    campaigns: &[String],
    ranges: &[TimeRange],
) -> anyhow::Result<Snapshot> {
    let mut snapshot = Snapshot::default();
    for campaign in campaigns {
        let view = server
            .campaign(campaign)
            .await
            .ok_or_else(|| anyhow::anyhow!("cannot read campaign {campaign}"))?;
        snapshot.totals.insert(
            campaign.clone(),
            ExpectedTotal {
                total_cents: view.gross_cents,
                donations: view.donations,
            },
        );
        let refunds = ExpectedRefunds {
            refunded_cents: view.refunded_cents,
            refunds: view.refunds,
        };
        snapshot
            .refunds
            .insert(campaign.clone(), (refunds, view.total_cents));
        for range in ranges {
            let stats = server
                .stats(campaign, range.from_ms, range.to_ms)
                .await
                .ok_or_else(|| anyhow::anyhow!("cannot read stats of {campaign}"))?;
            snapshot
                .stats
                .insert((campaign.clone(), *range), parse_stats(&stats)?);
        }
    }
    Ok(snapshot)
}

fn parse_stats(stats: &StatsView) -> anyhow::Result<ExpectedStats> {
    let mut per_minute = BTreeMap::new();
    for point in stats.series.iter().flatten() {
        let total = ExpectedTotal {
            total_cents: point.sum_cents,
            donations: point.count,
        };
        if total.donations > 0 {
            per_minute.insert(parse_minute(&point.start)?, total);
        }
    }
    Ok(ExpectedStats {
        count: stats.count,
        sum_cents: stats.sum_cents,
        min_cents: stats.min_cents,
        max_cents: stats.max_cents,
        per_minute,
    })
}

/// The unix ms of an RFC 3339 minute the server wrote ("2026-11-24T19:00:00Z", maybe with
/// fractional seconds).
fn parse_minute(text: &str) -> anyhow::Result<i64> {
    let bad = || anyhow::anyhow!("not an RFC 3339 UTC time: {text:?}");
    let field = |range: std::ops::Range<usize>| -> anyhow::Result<i64> {
        text.get(range).and_then(|s| s.parse().ok()).ok_or_else(bad)
    };
    let (year, month, day) = (field(0..4)?, field(5..7)?, field(8..10)?);
    let (hour, minute) = (field(11..13)?, field(14..16)?);
    let days = days_from_civil(year, month, day);
    Ok(((days * 24 + hour) * 60 + minute) * MINUTE_MS)
}

/// Howard Hinnant's `days_from_civil`: days since the epoch of a proleptic Gregorian date.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_index = if month > 2 { month - 3 } else { month + 9 };
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// What differs between the server's `after` and `before` plus the ground truth.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Comparison {
    pub checks: usize,
    pub mismatches: Vec<String>,
}

/// Compares each target's `after` with its own `before` plus the ground truth; with several
/// targets, also compares every target's `after` with the first's, and every mismatch names its
/// target. `before` and `after` list the same targets in the same order.
pub fn compare_targets(
    before: &[TargetSnapshot],
    after: &[TargetSnapshot],
    truth: &GroundTruth,
    ranges: &[TimeRange],
) -> Comparison {
    let mut comparison = Comparison::default();
    let several = after.len() > 1;
    for (before, after) in before.iter().zip(after) {
        let target = compare(&before.snapshot, &after.snapshot, truth, ranges);
        comparison.absorb(if several {
            target.naming(&after.target)
        } else {
            target
        });
    }
    if several {
        comparison.absorb(agreement(after));
    }
    comparison
}

/// Where the targets' snapshots differ from the first target's: every campaign total, and every
/// stats range's count and sum, extremes and per-minute series; each mismatch names the target
/// that differs.
pub fn agreement(snapshots: &[TargetSnapshot]) -> Comparison {
    let mut comparison = Comparison::default();
    let Some((first, others)) = snapshots.split_first() else {
        return comparison;
    };
    for other in others {
        let pair = TargetPair { first, other };
        let (first, other) = (&first.snapshot, &other.snapshot);
        for campaign in union(&first.totals, &other.totals) {
            let totals = (first.totals.get(campaign), other.totals.get(campaign));
            pair.check(&mut comparison, &format!("{campaign} total"), totals);
            let refunds = (first.refunds.get(campaign), other.refunds.get(campaign));
            pair.check(&mut comparison, &format!("{campaign} refunds"), refunds);
        }
        for key in union(&first.stats, &other.stats) {
            let name = stats_name(&key.0, &key.1);
            match (first.stats.get(key), other.stats.get(key)) {
                (Some(expected), Some(got)) => {
                    pair.check_stats(&mut comparison, &name, expected, got);
                }
                either => pair.check(&mut comparison, &name, either),
            }
        }
    }
    comparison
}

/// The keys either map holds.
fn union<'a, K: Ord, V>(a: &'a BTreeMap<K, V>, b: &'a BTreeMap<K, V>) -> BTreeSet<&'a K> {
    a.keys().chain(b.keys()).collect()
}

/// The first target, whose answers the other's must equal.
#[derive(Debug, Clone, Copy)]
struct TargetPair<'a> {
    first: &'a TargetSnapshot,
    other: &'a TargetSnapshot,
}

impl TargetPair<'_> {
    /// One check: the first's and the other's answers under `name` (`None`: not answered).
    fn check<T: PartialEq + Debug>(
        &self,
        comparison: &mut Comparison,
        name: &str,
        (expected, got): (Option<T>, Option<T>),
    ) {
        comparison.check(expected == got, || {
            format!(
                "[{}] {name}: {}, but [{}] {}",
                self.other.target,
                shown(got),
                self.first.target,
                shown(expected)
            )
        });
    }

    fn check_stats(
        &self,
        comparison: &mut Comparison,
        name: &str,
        expected: &ExpectedStats,
        got: &ExpectedStats,
    ) {
        let count_sum = |s: &ExpectedStats| Some((s.count, s.sum_cents));
        let count_sums = (count_sum(expected), count_sum(got));
        self.check(comparison, &format!("{name}: count/sum"), count_sums);
        let extremes = |s: &ExpectedStats| Some((s.min_cents, s.max_cents));
        let extremes = (extremes(expected), extremes(got));
        self.check(comparison, &format!("{name}: min/max"), extremes);
        for minute in union(&expected.per_minute, &got.per_minute) {
            let name = format!("{name}: minute {}", crate::traffic::rfc3339(*minute));
            let series = (expected.per_minute.get(minute), got.per_minute.get(minute));
            self.check(comparison, &name, series);
        }
    }
}

fn shown(value: Option<impl Debug>) -> String {
    value.map_or_else(|| "nothing".to_owned(), |value| format!("{value:?}"))
}

fn stats_name(campaign: &str, range: &TimeRange) -> String {
    format!(
        "{campaign} stats [{}, {})",
        crate::traffic::rfc3339(range.from_ms),
        crate::traffic::rfc3339(range.to_ms)
    )
}

pub fn compare(
    before: &Snapshot,
    after: &Snapshot,
    truth: &GroundTruth,
    ranges: &[TimeRange],
) -> Comparison {
    let mut comparison = Comparison::default();
    for (campaign, got) in &after.totals {
        let base = before.totals.get(campaign).copied().unwrap_or_default();
        let run = truth.totals().get(campaign).copied().unwrap_or_default();
        let expected = ExpectedTotal {
            total_cents: base.total_cents + run.total_cents,
            donations: base.donations + run.donations,
        };
        comparison.check(*got == expected, || {
            format!("{campaign} total: server {got:?}, expected {expected:?}")
        });
        let (base_refunds, _) = before.refunds.get(campaign).copied().unwrap_or_default();
        let run_refunds = truth
            .refund_totals()
            .get(campaign)
            .copied()
            .unwrap_or_default();
        let expected_refunds = ExpectedRefunds {
            refunded_cents: base_refunds.refunded_cents + run_refunds.refunded_cents,
            refunds: base_refunds.refunds + run_refunds.refunds,
        };
        let (got_refunds, got_net) = after.refunds.get(campaign).copied().unwrap_or_default();
        comparison.check(got_refunds == expected_refunds, || {
            format!("{campaign} refunds: server {got_refunds:?}, expected {expected_refunds:?}")
        });
        let expected_net = expected
            .total_cents
            .saturating_sub(expected_refunds.refunded_cents);
        comparison.check(got_net == expected_net, || {
            format!("{campaign} net total: server {got_net}, expected {expected_net}")
        });
        for range in ranges {
            let key = (campaign.clone(), *range);
            let (Some(got), Some(base)) = (after.stats.get(&key), before.stats.get(&key)) else {
                continue;
            };
            let run = truth.range_stats(campaign, range.from_ms, range.to_ms);
            compare_stats(&mut comparison, campaign, range, got, base, &run);
        }
    }
    comparison
}

fn compare_stats(
    comparison: &mut Comparison,
    campaign: &str,
    range: &TimeRange,
    got: &ExpectedStats,
    base: &ExpectedStats,
    run: &ExpectedStats,
) {
    let name = stats_name(campaign, range);
    let expected = (base.count + run.count, base.sum_cents + run.sum_cents);
    comparison.check((got.count, got.sum_cents) == expected, || {
        format!(
            "{name}: server count/sum {:?}, expected {expected:?}",
            (got.count, got.sum_cents)
        )
    });
    if base.count == 0 {
        comparison.check(
            (got.min_cents, got.max_cents) == (run.min_cents, run.max_cents),
            || {
                format!(
                    "{name}: server min/max {:?}, expected {:?}",
                    (got.min_cents, got.max_cents),
                    (run.min_cents, run.max_cents)
                )
            },
        );
    }
    let minutes: std::collections::BTreeSet<i64> = got
        .per_minute
        .keys()
        .chain(run.per_minute.keys())
        .copied()
        .collect();
    for minute in minutes {
        let got = got.per_minute.get(&minute).copied().unwrap_or_default();
        let base = base.per_minute.get(&minute).copied().unwrap_or_default();
        let run = run.per_minute.get(&minute).copied().unwrap_or_default();
        let expected = ExpectedTotal {
            total_cents: base.total_cents + run.total_cents,
            donations: base.donations + run.donations,
        };
        comparison.check(got == expected, || {
            format!(
                "{name}: minute {}: server {got:?}, expected {expected:?}",
                crate::traffic::rfc3339(minute)
            )
        });
    }
}

impl Comparison {
    fn check(&mut self, holds: bool, describe: impl FnOnce() -> String) {
        self.checks += 1;
        if !holds {
            self.mismatches.push(describe());
        }
    }

    fn absorb(&mut self, other: Comparison) {
        self.checks += other.checks;
        self.mismatches.extend(other.mismatches);
    }

    /// The same comparison, every mismatch prefixed with `[target]`.
    fn naming(self, target: &str) -> Self {
        Self {
            checks: self.checks,
            mismatches: self
                .mismatches
                .into_iter()
                .map(|mismatch| format!("[{target}] {mismatch}"))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ground_truth::SentDonation;

    const START_MS: i64 = 1_795_546_800_000; // 2026-11-24T19:00:00Z

    #[test]
    fn ranges_cover_the_run_and_its_late_callbacks_in_whole_minutes() {
        let ranges = ranges_for_run(START_MS + 30_000, START_MS + 150_000, 600_000);
        assert!(
            ranges
                .iter()
                .all(|r| r.from_ms % MINUTE_MS == 0 && r.to_ms % MINUTE_MS == 0)
        );
        let whole = ranges.iter().map(|r| r.to_ms - r.from_ms).max().unwrap();
        assert!(whole >= 600_000 + 120_000, "{ranges:?}");
        assert!(ranges.iter().all(|r| r.from_ms < r.to_ms));
        assert_eq!(ranges.len(), 4, "{ranges:?}");
    }

    #[test]
    fn minutes_parse_back_from_the_servers_text() {
        assert_eq!(parse_minute("2026-11-24T19:00:00Z").unwrap(), START_MS);
        assert_eq!(
            parse_minute("2026-11-24T19:01:00.000Z").unwrap(),
            START_MS + MINUTE_MS
        );
        assert_eq!(
            parse_minute(&crate::traffic::rfc3339(951_782_400_000)).unwrap(),
            951_782_400_000
        );
        assert!(parse_minute("yesterday").is_err());
    }

    #[test]
    fn a_missing_or_extra_donation_is_a_mismatch_and_the_baseline_is_subtracted() {
        let truth = one_acknowledged();
        let range = minute_range();
        // A snapshot of `donations` to "meals" worth `cents`, all in the first minute.
        let snapshot = |cents, donations| {
            let total = ExpectedTotal {
                total_cents: cents,
                donations,
            };
            let stats = ExpectedStats {
                count: donations,
                sum_cents: cents,
                min_cents: None,
                max_cents: None,
                per_minute: [(START_MS, total)].into_iter().collect(),
            };
            Snapshot {
                totals: [("meals".to_owned(), total)].into(),
                refunds: [("meals".to_owned(), (ExpectedRefunds::default(), cents))].into(),
                stats: [(("meals".to_owned(), range), stats)].into(),
            }
        };
        let before = snapshot(500, 2);
        let comparison = compare(&before, &snapshot(600, 3), &truth, &[range]);
        assert!(comparison.mismatches.is_empty(), "{comparison:?}");
        assert_eq!(comparison.checks, 5);
        let double_counted = snapshot(700, 4);
        let comparison = compare(&before, &double_counted, &truth, &[range]);
        assert_eq!(comparison.mismatches.len(), 4, "{comparison:?}");
    }

    const FIRST: &str = "http://127.0.0.1:8081";
    const SECOND: &str = "http://127.0.0.1:8082";

    fn minute_range() -> TimeRange {
        TimeRange {
            from_ms: START_MS,
            to_ms: START_MS + MINUTE_MS,
        }
    }

    /// A target reporting `donations` donations of 100 cents to "meals", all in the first
    /// minute.
    fn meals(target: &str, donations: u64) -> TargetSnapshot {
        let total = ExpectedTotal {
            total_cents: 100 * donations,
            donations,
        };
        let stats = ExpectedStats {
            count: donations,
            sum_cents: 100 * donations,
            min_cents: (donations > 0).then_some(100),
            max_cents: (donations > 0).then_some(100),
            per_minute: (donations > 0)
                .then_some((START_MS, total))
                .into_iter()
                .collect(),
        };
        TargetSnapshot {
            target: target.to_owned(),
            snapshot: Snapshot {
                totals: [("meals".to_owned(), total)].into(),
                refunds: [(
                    "meals".to_owned(),
                    (ExpectedRefunds::default(), total.total_cents),
                )]
                .into(),
                stats: [(("meals".to_owned(), minute_range()), stats)].into(),
            },
        }
    }

    fn one_acknowledged() -> GroundTruth {
        let mut truth = GroundTruth::default();
        truth.acknowledged(&SentDonation {
            payment_ref: "p1".into(),
            campaign_id: "meals".into(),
            amount_cents: 100,
            paid_at_ms: START_MS + 1_000,
        });
        truth
    }

    #[test]
    fn identical_targets_agree() {
        let comparison = agreement(&[meals(FIRST, 3), meals(SECOND, 3)]);
        assert!(comparison.mismatches.is_empty(), "{comparison:?}");
        assert_eq!(
            comparison.checks, 5,
            "a total, its refunds; a range's count/sum, min/max and one minute"
        );
        assert_eq!(agreement(&[meals(FIRST, 3)]), Comparison::default());
    }

    #[test]
    fn targets_that_differ_are_mismatches_naming_the_one_that_differs() {
        let comparison = agreement(&[meals(FIRST, 3), meals(SECOND, 4)]);
        assert_eq!(comparison.mismatches.len(), 4, "{comparison:?}");
        assert!(
            comparison.mismatches[0].starts_with(&format!("[{SECOND}] meals total: ")),
            "{comparison:?}"
        );
        assert!(
            comparison.mismatches[1].starts_with(&format!("[{SECOND}] meals refunds: ")),
            "{comparison:?}"
        );
        assert!(
            comparison.mismatches[2].starts_with(&format!("[{SECOND}] meals stats [")),
            "{comparison:?}"
        );
        assert!(
            comparison.mismatches[2].contains("count/sum: (4, 400), but"),
            "{comparison:?}"
        );
        assert!(
            comparison.mismatches[3].contains("minute 2026-11-24T19:00:00.000Z"),
            "{comparison:?}"
        );
        assert!(
            comparison
                .mismatches
                .iter()
                .all(|m| m.contains(&format!("but [{FIRST}]"))),
            "{comparison:?}"
        );
        let mut missing_campaign = meals(SECOND, 3);
        missing_campaign.snapshot.totals.clear();
        missing_campaign.snapshot.stats.clear();
        let comparison = agreement(&[meals(FIRST, 3), missing_campaign]);
        assert_eq!(comparison.mismatches.len(), 2, "{comparison:?}");
        assert!(
            comparison.mismatches[0].contains("meals total: nothing, but"),
            "{comparison:?}"
        );
    }

    #[test]
    fn every_target_is_checked_against_the_ground_truth_and_the_others() {
        let truth = one_acknowledged();
        let range = minute_range();
        let before = [meals(FIRST, 2), meals(SECOND, 2)];
        let right = [meals(FIRST, 3), meals(SECOND, 3)];
        let comparison = compare_targets(&before, &right, &truth, &[range]);
        assert!(comparison.mismatches.is_empty(), "{comparison:?}");
        assert_eq!(comparison.checks, 2 * 5 + 5, "per target, then agreement");

        let second_double_counted = [meals(FIRST, 3), meals(SECOND, 4)];
        let comparison = compare_targets(&before, &second_double_counted, &truth, &[range]);
        assert!(!comparison.mismatches.is_empty());
        assert!(
            comparison
                .mismatches
                .iter()
                .all(|m| m.starts_with(&format!("[{SECOND}] "))),
            "{comparison:?}"
        );
        assert!(
            comparison
                .mismatches
                .iter()
                .any(|m| m.starts_with(&format!("[{SECOND}] meals total: server "))),
            "{comparison:?}"
        );
    }

    #[test]
    fn one_target_keeps_its_mismatches_unnamed() {
        let truth = one_acknowledged();
        let range = minute_range();
        let comparison = compare_targets(&[meals(FIRST, 2)], &[meals(FIRST, 4)], &truth, &[range]);
        let alone = compare(
            &meals(FIRST, 2).snapshot,
            &meals(FIRST, 4).snapshot,
            &truth,
            &[range],
        );
        assert_eq!(comparison, alone);
        assert!(!alone.mismatches.is_empty());
    }
}
