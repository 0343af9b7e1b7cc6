//! Throttling of failed authentications. Each key (the api uses a source
//! address, and a (source address, user) pair) may fail `limit` times per
//! `window`; past that it must wait until the oldest failure leaves the window
//! (the answer's Retry-After). Only failures are recorded: what a key may still
//! do while throttled (a known-good credential passes) is the caller's policy.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Throttle {
    limit: usize,
    window: Duration,
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl Throttle {
    pub fn new(limit: usize, window: Duration) -> Self {
        Self { limit: limit.max(1), window, failures: Mutex::new(HashMap::new()) }
    }

    /// `Err(retry_after)` if `key` has used up its failures.
    pub fn check(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let mut g = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let Some(q) = g.get_mut(key) else { return Ok(()) };
        while q.front().is_some_and(|t| now.duration_since(*t) >= self.window) {
            q.pop_front();
        }
        if q.len() >= self.limit {
            let oldest = q.front().copied().unwrap_or(now);
            return Err(self.window.saturating_sub(now.duration_since(oldest)).max(Duration::from_secs(1)));
        }
        Ok(())
    }

    pub fn record_failure(&self, key: &str, now: Instant) {
        let mut g = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        // Bound memory under a spray of sources: forget the oldest keys.
        if g.len() > 100_000 {
            g.clear();
        }
        g.entry(key.to_owned()).or_default().push_back(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_holds_within_the_window_and_lifts_after() {
        let t = Throttle::new(2, Duration::from_secs(60));
        let now = Instant::now();
        t.record_failure("ip", now);
        assert!(t.check("ip", now).is_ok());
        t.record_failure("ip", now);
        let wait = t.check("ip", now + Duration::from_secs(10)).unwrap_err();
        assert_eq!(wait, Duration::from_secs(50));
        assert!(t.check("other", now).is_ok());
        assert!(t.check("ip", now + Duration::from_secs(61)).is_ok());
    }
}
