//! The wait between retries of something that failed for a while (the log
//! unreadable, NATS or Postgres away): doubling from a short first wait up to
//! a ceiling, so an outage is not hammered and a blip costs little, and cut
//! short by the caller's stop.

use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Doubling waits from `first` up to `max`; [`Backoff::reset`] once it works.
#[derive(Clone, Debug)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        Self { first, max, next: first }
    }

    /// Waits the next wait, or until `stop` (then at once). True if the wait
    /// ran out, false if `stop` ended it.
    pub async fn wait(&mut self, stop: &CancellationToken) -> bool {
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        tokio::select! {
            _ = stop.cancelled() => false,
            _ = tokio::time::sleep(wait) => true,
        }
    }

    /// The next failure waits the first wait again.
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_double_up_to_the_ceiling_and_start_over_after_a_reset() {
        let mut b = Backoff::new(Duration::from_millis(1), Duration::from_millis(3));
        let running = CancellationToken::new();
        assert!(b.wait(&running).await, "a wait that ran out says so");
        let stopped = CancellationToken::new();
        stopped.cancel();
        let mut next = vec![b.next];
        for _ in 0..3 {
            assert!(!b.wait(&stopped).await, "a stopped wait says so");
            next.push(b.next);
        }
        let ms = |n| Duration::from_millis(n);
        assert_eq!(next, [ms(2), ms(3), ms(3), ms(3)]);
        b.reset();
        assert_eq!(b.next, ms(1));
    }
}
