//! Waiting out a log or cluster that does not answer: a pause that doubles while the trouble
//! lasts, up to a bound, and is cut short by shutdown.

use std::time::Duration;

use tokio::sync::watch;

/// The pause before the next attempt.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// 100 ms, doubling up to 2 s: what every follower of a log uses.
    pub const fn for_log() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(2))
    }

    pub const fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            next: min,
        }
    }

    /// How long the next pause lasts.
    pub fn next(&self) -> Duration {
        self.next
    }

    /// The trouble is over: the next pause is the shortest again.
    pub fn reset(&mut self) {
        self.next = self.min;
    }

    /// Sleeps the next pause, or until `shutdown` changes; the pause after is twice as long.
    pub async fn pause(&mut self, shutdown: &mut watch::Receiver<bool>) {
        tokio::select! {
            _ = tokio::time::sleep(self.next) => {}
            _ = shutdown.changed() => {}
        }
        self.next = (self.next * 2).min(self.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pauses_double_up_to_the_bound_and_reset() {
        // With the sender gone, every pause ends at once.
        let (stop, mut shutdown) = watch::channel(false);
        drop(stop);
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(300));
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(backoff.next());
            backoff.pause(&mut shutdown).await;
        }
        let ms = |n| Duration::from_millis(n);
        assert_eq!(seen, vec![ms(100), ms(200), ms(300), ms(300)]);
        backoff.reset();
        assert_eq!(backoff.next(), ms(100));
    }
}
