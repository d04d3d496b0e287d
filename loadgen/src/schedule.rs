//! Traffic shapes: how many requests are due at each moment of a run.
//!
//! A run of `duration` replays one shape at an average of `rate` requests a second, open loop:
//! request `n` is due at a fixed time whatever happened to earlier ones, so latency under
//! overload is measured rather than hidden (no coordinated omission).
//!
//! - `steady`: the same rate throughout.
//! - `dinner-rush`: a delivery app's day compressed into the run: quiet nights, a lunch bump, and
//!   the 17:00–20:00 window holding 40% of the orders, peaking at 18:00 at 3.8× the average.
//! - `spike`: steady, with a viral moment at 10× for the middle tenth of the run.

use std::time::Duration;

/// Share of a day's orders in each hour, in percent (sums to 100). Hours 17–19 hold 40%; the
/// peak hour (16%) is 3.84 times the average hour (100/24).
const DINNER_RUSH_PERCENT_BY_HOUR: [f64; 24] = [
    0.5, 0.5, 0.5, 0.5, 0.5, 0.5, // 00–05: night
    3.0, 3.0, 3.0, 3.0, 3.0, // 06–10: breakfast, coffee
    4.0, 6.0, 5.0, // 11–13: lunch
    4.0, 4.0, 4.0, // 14–16: afternoon
    12.0, 16.0, 12.0, // 17–19: dinner rush
    6.0, 4.0, 3.0, 2.0, // 20–23: late dinners
];
/// How much more traffic the spike carries than the steady rate around it.
const SPIKE_FACTOR: f64 = 10.0;
/// The spike covers this middle share of the run.
const SPIKE_START_FRACTION: f64 = 0.45;
const SPIKE_END_FRACTION: f64 = 0.55;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Steady,
    DinnerRush,
    Spike,
}

impl std::str::FromStr for Profile {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "steady" => Ok(Profile::Steady),
            "dinner-rush" => Ok(Profile::DinnerRush),
            "spike" => Ok(Profile::Spike),
            other => Err(format!(
                "unknown profile {other:?} (steady, dinner-rush, spike)"
            )),
        }
    }
}

/// A traffic shape over a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    pub profile: Profile,
    pub duration: Duration,
    /// Average requests per second over the whole run.
    pub average_rate: f64,
}

impl Schedule {
    pub fn new(profile: Profile, duration: Duration, average_rate: f64) -> Self {
        assert!(
            average_rate > 0.0 && average_rate.is_finite(),
            "a rate is positive"
        );
        assert!(!duration.is_zero(), "a run lasts");
        Self {
            profile,
            duration,
            average_rate,
        }
    }

    /// Requests per second due at `elapsed` into the run.
    pub fn rate_at(&self, elapsed: Duration) -> f64 {
        let fraction =
            (elapsed.as_secs_f64() / self.duration.as_secs_f64()).clamp(0.0, 1.0 - f64::EPSILON);
        self.average_rate * self.relative_rate(fraction)
    }

    /// The rate at a point of the run relative to the average (averages 1 over the run).
    fn relative_rate(&self, fraction: f64) -> f64 {
        match self.profile {
            Profile::Steady => 1.0,
            Profile::DinnerRush => {
                let hour = (fraction * 24.0) as usize;
                DINNER_RUSH_PERCENT_BY_HOUR[hour] / 100.0 * 24.0
            }
            Profile::Spike => {
                let spike_share = SPIKE_END_FRACTION - SPIKE_START_FRACTION;
                // The base rate that keeps the average at 1 with the spike in it.
                let base = 1.0 / (1.0 - spike_share + spike_share * SPIKE_FACTOR);
                if (SPIKE_START_FRACTION..SPIKE_END_FRACTION).contains(&fraction) {
                    base * SPIKE_FACTOR
                } else {
                    base
                }
            }
        }
    }

    /// When each request is due, from the start of the run, in order.
    pub fn due_times(&self) -> impl Iterator<Item = Duration> + '_ {
        let end = self.duration.as_secs_f64();
        let mut next = 0.0f64;
        std::iter::from_fn(move || {
            if next >= end {
                return None;
            }
            let due = next;
            next += 1.0 / self.rate_at(Duration::from_secs_f64(due));
            Some(Duration::from_secs_f64(due))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count_between(schedule: &Schedule, from: f64, to: f64) -> usize {
        let duration = schedule.duration.as_secs_f64();
        schedule
            .due_times()
            .filter(|t| (from * duration..to * duration).contains(&t.as_secs_f64()))
            .count()
    }

    #[test]
    fn the_hours_sum_to_a_whole_day() {
        let total: f64 = DINNER_RUSH_PERCENT_BY_HOUR.iter().sum();
        assert!((total - 100.0).abs() < 1e-9, "{total}");
    }

    #[test]
    fn every_shape_averages_the_asked_rate() {
        for profile in [Profile::Steady, Profile::DinnerRush, Profile::Spike] {
            let schedule = Schedule::new(profile, Duration::from_secs(240), 500.0);
            let requests = schedule.due_times().count() as f64;
            assert!(
                (requests / 120_000.0 - 1.0).abs() < 0.01,
                "{profile:?}: {requests}"
            );
        }
    }

    #[test]
    fn the_dinner_rush_holds_forty_percent_and_peaks_at_three_to_five_times() {
        let schedule = Schedule::new(Profile::DinnerRush, Duration::from_secs(24 * 60), 100.0);
        let all = schedule.due_times().count() as f64;
        let evening = count_between(&schedule, 17.0 / 24.0, 20.0 / 24.0) as f64;
        assert!((evening / all - 0.40).abs() < 0.01, "{}", evening / all);
        let peak = (0..24)
            .map(|hour| schedule.rate_at(Duration::from_secs(hour * 60 + 30)))
            .fold(0.0, f64::max);
        assert!((3.0..=5.0).contains(&(peak / 100.0)), "{peak}");
    }

    #[test]
    fn the_spike_is_ten_times_the_rate_around_it() {
        let schedule = Schedule::new(Profile::Spike, Duration::from_secs(100), 1000.0);
        let before = schedule.rate_at(Duration::from_secs(10));
        let during = schedule.rate_at(Duration::from_secs(50));
        assert!((during / before - SPIKE_FACTOR).abs() < 1e-9);
        let in_spike = count_between(&schedule, 0.45, 0.55) as f64;
        let in_first_tenth = count_between(&schedule, 0.0, 0.10) as f64;
        assert!(
            (in_spike / in_first_tenth - SPIKE_FACTOR).abs() < 0.1,
            "{in_spike} {in_first_tenth}"
        );
    }

    #[test]
    fn due_times_are_in_order_and_within_the_run() {
        let schedule = Schedule::new(Profile::DinnerRush, Duration::from_secs(60), 200.0);
        let times: Vec<Duration> = schedule.due_times().collect();
        assert!(times.windows(2).all(|pair| pair[0] <= pair[1]));
        assert!(times.iter().all(|t| *t < Duration::from_secs(60)));
        assert_eq!(times[0], Duration::ZERO);
    }

    #[test]
    fn profiles_parse_by_name() {
        assert_eq!("dinner-rush".parse(), Ok(Profile::DinnerRush));
        assert!("brunch".parse::<Profile>().is_err());
    }
}
