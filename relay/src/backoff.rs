//! Capped exponential backoff with full jitter, so that relays retrying against a
//! recovering broker or database do not retry in lock step.

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(max: Duration) -> Self {
        Self { initial: Duration::from_millis(100), max: max.max(Duration::from_millis(1)), attempt: 0 }
    }

    /// The ceiling of the next wait: 100ms doubled per failure, at most `max`.
    fn ceiling(&self) -> Duration {
        let factor = 1u32 << self.attempt.min(16);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The next wait: uniformly random up to the ceiling, never below a tenth of it.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let low = ceiling / 10;
        rand::thread_rng().gen_range(low..=ceiling)
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_until_the_cap_and_reset_after_success() {
        let mut backoff = Backoff::new(Duration::from_secs(2));
        let delays: Vec<_> = (0..10).map(|_| backoff.next_delay()).collect();
        assert!(delays[0] <= Duration::from_millis(100));
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(2)));
        assert_eq!(backoff.ceiling(), Duration::from_secs(2));
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }
}
