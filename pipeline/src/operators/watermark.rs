//! The event-time watermark of one partition: the greatest `paid_at` seen minus the allowed
//! lateness. A donation older than the watermark is late: it is still counted, in its own
//! bucket (money is never dropped for being late), and counted as late in the metrics. Readers
//! learn from the watermark up to when buckets are complete.

use serde::{Deserialize, Serialize};

use crate::support::clock::UnixMillis;

/// Default allowed lateness: payment callbacks arrive within minutes of the payment.
pub const ALLOWED_LATENESS_MS_DEFAULT: i64 = 5 * 60 * 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watermark {
    paid_at_ms_max: Option<UnixMillis>,
    allowed_lateness_ms: i64,
}

impl Watermark {
    pub fn new(allowed_lateness_ms: i64) -> Self {
        assert!(allowed_lateness_ms >= 0, "lateness is a duration");
        Self {
            paid_at_ms_max: None,
            allowed_lateness_ms,
        }
    }

    /// Notes a donation's event time; returns whether it is late.
    pub fn observe(&mut self, paid_at_ms: UnixMillis) -> bool {
        let late = self
            .current()
            .is_some_and(|watermark| paid_at_ms < watermark);
        self.paid_at_ms_max = Some(
            self.paid_at_ms_max
                .map_or(paid_at_ms, |max| max.max(paid_at_ms)),
        );
        late
    }

    pub fn allowed_lateness_ms(&self) -> i64 {
        self.allowed_lateness_ms
    }

    /// Event time before which this partition expects no more donations; `None` before any.
    pub fn current(&self) -> Option<UnixMillis> {
        self.paid_at_ms_max
            .map(|max| max.saturating_sub(self.allowed_lateness_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn late_means_older_than_max_minus_lateness() {
        let mut watermark = Watermark::new(100);
        assert_eq!(watermark.current(), None);
        assert!(!watermark.observe(1_000));
        assert_eq!(watermark.current(), Some(900));
        assert!(!watermark.observe(950), "within the allowed lateness");
        assert!(watermark.observe(899));
        assert!(!watermark.observe(2_000));
        assert_eq!(
            watermark.current(),
            Some(1_900),
            "the watermark never moves back"
        );
        assert!(!watermark.observe(1_950));
    }
}
