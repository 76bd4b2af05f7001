//! Capped exponential backoff with jitter between retries of a failing dependency,
//! so that processes retrying against a recovering broker or database do not retry
//! in lock step.

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Waits of about `first`, doubled per failure up to `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        let max = max.max(Duration::from_millis(1));
        Self { first: first.min(max), max, attempt: 0 }
    }

    /// The ceiling of the next wait: `first` doubled per failure, at most `max`.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32 << self.attempt.min(16);
        self.first.saturating_mul(factor).min(self.max)
    }

    /// The next wait: uniformly random up to the ceiling, never below a tenth of it.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        rand::thread_rng().gen_range(ceiling / 10..=ceiling)
    }

    /// After a success: the next failure waits about `first` again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_double_up_to_the_cap_and_start_over_after_a_reset() {
        let mut backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(70));
        let mut ceilings = Vec::new();
        for _ in 0..4 {
            ceilings.push(backoff.ceiling().as_millis());
            backoff.next_delay();
        }
        assert_eq!(ceilings, [20, 40, 70, 70]);
        backoff.reset();
        assert_eq!(backoff.ceiling(), Duration::from_millis(20));
    }

    #[test]
    fn every_delay_lies_between_a_tenth_of_its_ceiling_and_the_ceiling() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        for _ in 0..20 {
            let ceiling = backoff.ceiling();
            let delay = backoff.next_delay();
            assert!(delay >= ceiling / 10 && delay <= ceiling, "{delay:?} outside {ceiling:?}");
        }
        assert_eq!(backoff.ceiling(), Duration::from_secs(2));
    }

    #[test]
    fn a_first_wait_above_the_cap_is_cut_to_the_cap() {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_millis(50));
        assert!(backoff.next_delay() <= Duration::from_millis(50));
    }
}
