//! What a run saw, as it goes (the progress line) and at the end (a table, and a JSON file with
//! the same figures and a per-second series).
//!
//! Latency is measured from the moment a request was due on the schedule, not from when it was
//! sent, so a server that falls behind shows it (no coordinated omission).

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latency histograms go from 1 µs to 10 minutes.
const LATENCY_US_MAX: u64 = 600_000_000;

/// What a run counted: the same in the live stats and in the report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counters {
    pub requests_sent: u64,
    pub donations_sent: u64,
    pub donations_acknowledged: u64,
    pub resends_sent: u64,
    pub conflicts_sent: u64,
    pub invalid_sent: u64,
    /// Refund and chargeback requests sent (resends included), and the distinct refunds
    /// acknowledged.
    pub refunds_sent: u64,
    pub refund_resends_sent: u64,
    pub refunds_acknowledged: u64,
    /// 429s answered and retried after `Retry-After`.
    pub rate_limited_retries: u64,
    /// 503s and unanswered requests retried.
    pub unavailable_retries: u64,
    /// Final refusals by "status code", e.g. "400 invalid_field".
    pub refused_by_code: BTreeMap<String, u64>,
    /// Donations whose outcome stayed unknown after the retry window.
    pub gave_up: u64,
    pub server_restarts: u64,
}

/// What one of several targets was sent and acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TargetCounters {
    pub target: String,
    /// Donation requests sent to it, retries included.
    pub requests_sent: u64,
    pub donations_acknowledged: u64,
}

/// Counters and histograms of one run, updated by the sending tasks.
#[derive(Debug)]
pub struct RunStats {
    pub counters: Counters,
    per_target: Vec<TargetCounters>,
    latency_us: Histogram<u64>,
    freshness_us: Histogram<u64>,
    per_second: Vec<SecondStats>,
}

#[derive(Debug, Clone)]
struct SecondStats {
    requests_completed: u64,
    donations_acknowledged: u64,
    refused: u64,
    latency_us: Histogram<u64>,
}

impl RunStats {
    pub fn new() -> Self {
        Self::with_targets(&[])
    }

    /// Stats that also count requests and acknowledgements per target, in `targets`' order.
    pub fn with_targets(targets: &[String]) -> Self {
        Self {
            counters: Counters::default(),
            per_target: targets
                .iter()
                .map(|target| TargetCounters {
                    target: target.clone(),
                    requests_sent: 0,
                    donations_acknowledged: 0,
                })
                .collect(),
            latency_us: latency_histogram(3),
            freshness_us: latency_histogram(3),
            per_second: Vec::new(),
        }
    }

    /// A request answered at `second` of the run, `latency` after it was due, acknowledging
    /// `acknowledged` donations.
    pub fn answered(&mut self, second: usize, latency: Duration, acknowledged: u64) {
        let us = (latency.as_micros() as u64).clamp(1, LATENCY_US_MAX);
        let _ = self.latency_us.record(us);
        self.counters.donations_acknowledged += acknowledged;
        let slot = self.second(second);
        slot.requests_completed += 1;
        slot.donations_acknowledged += acknowledged;
        let _ = slot.latency_us.record(us);
    }

    /// A donation request (first attempt or retry) went to target `target`.
    pub fn sent_to(&mut self, target: usize) {
        if let Some(counters) = self.per_target.get_mut(target) {
            counters.requests_sent += 1;
        }
    }

    /// Target `target` acknowledged `count` donations.
    pub fn acknowledged_by(&mut self, target: usize, count: u64) {
        if let Some(counters) = self.per_target.get_mut(target) {
            counters.donations_acknowledged += count;
        }
    }

    pub fn refused(&mut self, second: usize, status: u16, code: &str, count: u64) {
        *self
            .counters
            .refused_by_code
            .entry(format!("{status} {code}"))
            .or_default() += count;
        self.second(second).refused += count;
    }

    pub fn freshness(&mut self, visible_after: Duration) {
        let us = (visible_after.as_micros() as u64).clamp(1, LATENCY_US_MAX);
        let _ = self.freshness_us.record(us);
    }

    fn second(&mut self, second: usize) -> &mut SecondStats {
        while self.per_second.len() <= second {
            self.per_second.push(SecondStats {
                requests_completed: 0,
                donations_acknowledged: 0,
                refused: 0,
                latency_us: latency_histogram(2),
            });
        }
        &mut self.per_second[second]
    }

    pub fn refused_total(&self) -> u64 {
        self.counters.refused_by_code.values().sum()
    }

    /// One line for the progress display.
    pub fn progress_line(&self, elapsed: Duration, planned: Duration) -> String {
        let done = (elapsed.as_secs_f64() / planned.as_secs_f64()).clamp(0.0, 1.0);
        let filled = (done * 20.0).round() as usize;
        let bar: String = "#".repeat(filled) + &"-".repeat(20 - filled);
        let recent = self
            .per_second
            .len()
            .checked_sub(2)
            .map_or(0, |i| self.per_second[i].donations_acknowledged);
        format!(
            "[{bar}] {:>3.0}% {:>6.1}s  {recent:>6}/s  acked {}  refused {}  retried {}  p99 {:.1} ms",
            done * 100.0,
            elapsed.as_secs_f64(),
            self.counters.donations_acknowledged,
            self.refused_total(),
            self.counters.rate_limited_retries + self.counters.unavailable_retries,
            ms(&self.latency_us, 0.99),
        )
    }

    /// The figures of the finished run.
    pub fn report(&self, context: ReportContext) -> Report {
        let quantiles = |h: &Histogram<u64>| Quantiles {
            p50_ms: ms(h, 0.5),
            p90_ms: ms(h, 0.9),
            p99_ms: ms(h, 0.99),
            p999_ms: ms(h, 0.999),
            max_ms: h.max() as f64 / 1000.0,
            samples: h.len(),
        };
        let seconds = context.elapsed.as_secs_f64().max(0.001);
        // Rates are over the schedule: the late resends after it would dilute them.
        let scheduled_s = context.scheduled.as_secs_f64().max(0.001);
        let in_schedule = self
            .per_second
            .iter()
            .take(context.scheduled.as_secs().max(1) as usize);
        let (requests_in_schedule, donations_in_schedule) = in_schedule
            .fold((0, 0), |(r, d), s| {
                (r + s.requests_completed, d + s.donations_acknowledged)
            });
        Report {
            counters: self.counters.clone(),
            distinct_donations_recorded: context.distinct_recorded,
            elapsed_s: seconds,
            achieved_requests_per_s: requests_in_schedule as f64 / scheduled_s,
            achieved_donations_per_s: donations_in_schedule as f64 / scheduled_s,
            latency: quantiles(&self.latency_us),
            freshness: quantiles(&self.freshness_us),
            per_second: self
                .per_second
                .iter()
                .enumerate()
                .map(|(second, s)| SecondReport {
                    second,
                    requests_completed: s.requests_completed,
                    donations_acknowledged: s.donations_acknowledged,
                    refused: s.refused,
                    p50_ms: ms(&s.latency_us, 0.5),
                    p90_ms: ms(&s.latency_us, 0.9),
                    p99_ms: ms(&s.latency_us, 0.99),
                })
                .collect(),
            settings: context.settings,
            per_target: if self.per_target.len() > 1 {
                self.per_target.clone()
            } else {
                Vec::new()
            },
            verification: None,
        }
    }
}

impl Default for RunStats {
    fn default() -> Self {
        Self::new()
    }
}

fn latency_histogram(significant_digits: u8) -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, significant_digits)
        .expect("constant histogram bounds are valid")
}

fn ms(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    if histogram.is_empty() {
        return 0.0;
    }
    histogram.value_at_quantile(quantile) as f64 / 1000.0
}

/// What the report needs beyond the counters.
#[derive(Debug, Clone)]
pub struct ReportContext {
    /// The whole run, late resends included.
    pub elapsed: Duration,
    /// The schedule's duration: achieved rates are answers within it, divided by it.
    pub scheduled: Duration,
    pub distinct_recorded: usize,
    pub settings: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Quantiles {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub samples: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SecondReport {
    pub second: usize,
    pub requests_completed: u64,
    pub donations_acknowledged: u64,
    pub refused: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
}

/// The end-of-run figures; `--report FILE.json` writes this.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub settings: BTreeMap<String, String>,
    #[serde(flatten)]
    pub counters: Counters,
    pub distinct_donations_recorded: usize,
    pub elapsed_s: f64,
    /// Requests answered during the schedule, per second of it.
    pub achieved_requests_per_s: f64,
    /// Donations acknowledged during the schedule, per second of it.
    pub achieved_donations_per_s: f64,
    /// Request latency from its due time.
    pub latency: Quantiles,
    /// From a 202 to the donation being counted in `GET /v1/campaigns/{id}`.
    pub freshness: Quantiles,
    pub per_second: Vec<SecondReport>,
    /// With several targets: what each was sent and acknowledged.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub per_target: Vec<TargetCounters>,
    pub verification: Option<VerificationReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerificationReport {
    pub passed: bool,
    pub checks: usize,
    pub mismatches: Vec<String>,
    /// Donations that were never answered but that the server recorded.
    pub recorded_without_answer: u64,
    /// Targets of several that did not answer at the end (a node killed during the run): left
    /// out of the comparison, which the others must pass. Never all of them.
    pub targets_left_out: Vec<String>,
}

impl Report {
    /// The table a person reads at the end of a run.
    pub fn write_table(&self, out: &mut impl Write) -> std::io::Result<()> {
        writeln!(out, "tally-loadgen report")?;
        let settings = self
            .settings
            .iter()
            .map(|(name, value)| (name.to_string(), value.clone()));
        let rows = settings
            .chain(self.sent_rows())
            .chain(self.answer_rows())
            .chain(self.result_rows());
        for (name, value) in rows {
            writeln!(out, "  {name:<34} {value}")?;
        }
        Ok(())
    }

    /// What was sent, and what was acknowledged (by each target too).
    fn sent_rows(&self) -> Vec<(String, String)> {
        let counters = &self.counters;
        let mut rows = vec![
            row("requests sent", counters.requests_sent),
            row("donations sent", counters.donations_sent),
            row("  of which resends (same payment)", counters.resends_sent),
            row("  of which conflicting resends", counters.conflicts_sent),
            row("invalid requests sent", counters.invalid_sent),
            row(
                "donations acknowledged (2xx)",
                counters.donations_acknowledged,
            ),
            row("refunds and chargebacks sent", counters.refunds_sent),
            row(
                "  of which resends (same refund)",
                counters.refund_resends_sent,
            ),
            row("refunds acknowledged (2xx)", counters.refunds_acknowledged),
        ];
        rows.extend(self.per_target.iter().map(|target| {
            let acknowledged = format!(
                "{} ({} requests sent)",
                target.donations_acknowledged, target.requests_sent
            );
            (format!("  by {}", target.target), acknowledged)
        }));
        rows.push(row(
            "distinct donations recorded",
            self.distinct_donations_recorded,
        ));
        rows
    }

    /// The refusals, retries and restarts.
    fn answer_rows(&self) -> Vec<(String, String)> {
        let counters = &self.counters;
        let mut rows: Vec<(String, String)> = counters
            .refused_by_code
            .iter()
            .map(|(code, count)| (format!("rejected {code}"), count.to_string()))
            .collect();
        rows.push(row(
            "rate limited (429), retried",
            counters.rate_limited_retries,
        ));
        rows.push(row(
            "unavailable/unanswered, retried",
            counters.unavailable_retries,
        ));
        if counters.server_restarts > 0 {
            rows.push(row(
                "server SIGKILLed and restarted",
                counters.server_restarts,
            ));
        }
        if counters.gave_up > 0 {
            rows.push(row("gave up retrying (outcome unknown)", counters.gave_up));
        }
        rows
    }

    /// The rate, latency, freshness and verification.
    fn result_rows(&self) -> Vec<(String, String)> {
        let rate = format!(
            "{:.0} requests/s, {:.0} donations/s acknowledged during the schedule ({:.1} s in all)",
            self.achieved_requests_per_s, self.achieved_donations_per_s, self.elapsed_s
        );
        let mut rows = vec![
            row("achieved rate", rate),
            row("latency from due time", quantile_text(&self.latency)),
            row("freshness (202 → in total)", quantile_text(&self.freshness)),
        ];
        if let Some(verification) = &self.verification {
            let verdict = if verification.passed {
                "passed"
            } else {
                "FAILED"
            };
            let mut text = format!(
                "{verdict} ({} checks, {} mismatches)",
                verification.checks,
                verification.mismatches.len()
            );
            if !verification.targets_left_out.is_empty() {
                text.push_str(&format!(
                    "; left out, not answering: {}",
                    verification.targets_left_out.join(", ")
                ));
            }
            rows.push(row("verification", text));
        }
        rows
    }
}

/// One row of the report table.
fn row(name: &str, value: impl ToString) -> (String, String) {
    (name.to_owned(), value.to_string())
}

fn quantile_text(q: &Quantiles) -> String {
    if q.samples == 0 {
        return "no samples".into();
    }
    format!(
        "p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2} ms  ({} samples)",
        q.p50_ms, q.p90_ms, q.p99_ms, q.p999_ms, q.max_ms, q.samples
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_second_series_and_quantiles_follow_what_was_recorded() {
        let mut stats = RunStats::new();
        for i in 1..=100u64 {
            stats.answered(0, Duration::from_millis(i), 1);
        }
        stats.answered(2, Duration::from_millis(500), 1000);
        stats.refused(1, 400, "invalid_field", 3);
        let report = stats.report(ReportContext {
            elapsed: Duration::from_secs(3),
            scheduled: Duration::from_secs(2),
            distinct_recorded: 1100,
            settings: BTreeMap::new(),
        });
        assert_eq!(report.counters.donations_acknowledged, 1100);
        assert!(
            (report.achieved_donations_per_s - 50.0).abs() < 1e-9,
            "seconds 0 and 1 of 2"
        );
        assert_eq!(report.per_second.len(), 3);
        assert_eq!(report.per_second[0].requests_completed, 100);
        assert_eq!(report.per_second[1].refused, 3);
        assert_eq!(report.per_second[2].donations_acknowledged, 1000);
        assert!((report.latency.p50_ms - 51.0).abs() < 1.0, "{report:?}");
        assert!((report.latency.max_ms - 500.0).abs() < 1.0);
        assert_eq!(report.counters.refused_by_code["400 invalid_field"], 3);
        let mut table = Vec::new();
        report.write_table(&mut table).unwrap();
        let table = String::from_utf8(table).unwrap();
        assert!(table.contains("rejected 400 invalid_field"), "{table}");
        assert!(
            serde_json::to_string(&report)
                .unwrap()
                .contains("per_second")
        );
    }

    fn context() -> ReportContext {
        ReportContext {
            elapsed: Duration::from_secs(1),
            scheduled: Duration::from_secs(1),
            distinct_recorded: 0,
            settings: BTreeMap::new(),
        }
    }

    #[test]
    fn several_targets_are_counted_each_and_one_target_is_not_broken_down() {
        let targets = [
            "http://127.0.0.1:8081".to_owned(),
            "http://127.0.0.1:8082".to_owned(),
        ];
        let mut stats = RunStats::with_targets(&targets);
        stats.sent_to(0);
        stats.sent_to(1);
        stats.sent_to(1);
        stats.acknowledged_by(1, 25);
        stats.sent_to(7);
        let report = stats.report(context());
        assert_eq!(report.per_target[0].requests_sent, 1);
        assert_eq!(report.per_target[1].requests_sent, 2);
        assert_eq!(report.per_target[1].donations_acknowledged, 25);
        let mut table = Vec::new();
        report.write_table(&mut table).unwrap();
        let table = String::from_utf8(table).unwrap();
        assert!(
            table.contains("by http://127.0.0.1:8082") && table.contains("25 (2 requests sent)"),
            "{table}"
        );
        assert!(
            serde_json::to_string(&report)
                .unwrap()
                .contains("per_target")
        );

        let mut one = RunStats::with_targets(&targets[..1]);
        one.sent_to(0);
        let report = one.report(context());
        assert!(report.per_target.is_empty());
        assert!(
            !serde_json::to_string(&report)
                .unwrap()
                .contains("per_target")
        );
    }
}
