//! How long a partition worker pauses between fetches.

use std::time::Duration;

/// The pause before a partition's next fetch. Tansu answers a fetch with what it had
/// when the fetch came in, after holding it FETCH_MAX_WAIT whether or not records
/// arrive meanwhile, so waiting for data at the broker only adds latency: the pause
/// is taken here. After records it is the poll interval, so that a busy partition
/// fetches larger batches; after each fetch that found nothing it doubles up to the
/// idle maximum, so an idle partition costs about one fetch per that maximum. The
/// time the fetch itself took counts towards the pause (a broker that does hold an
/// empty fetch until data comes needs no pause on top).
#[derive(Debug, Clone)]
pub struct IdlePacing {
    base: Duration,
    max: Duration,
    next_idle: Duration,
}

impl IdlePacing {
    pub fn new(base: Duration, max: Duration) -> Self {
        let max = max.max(base);
        Self { base, max, next_idle: base }
    }

    /// The pause after a step that applied records and left nothing behind them.
    pub fn after_records(&mut self, fetch_took: Duration) -> Duration {
        self.next_idle = self.base;
        self.base.saturating_sub(fetch_took)
    }

    /// The pause after a fetch that found nothing new.
    pub fn after_empty(&mut self, fetch_took: Duration) -> Duration {
        let pause = self.next_idle.saturating_sub(fetch_took);
        self.next_idle = (self.next_idle * 2).min(self.max);
        pause
    }

    /// After a failure or a step with more to read: start from the poll interval again.
    pub fn reset(&mut self) {
        self.next_idle = self.base;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn empty_fetches_double_the_pause_up_to_the_maximum_and_records_reset_it() {
        let mut pacing = IdlePacing::new(10 * MS, 500 * MS);
        let pauses: Vec<u128> = (0..8).map(|_| pacing.after_empty(Duration::ZERO).as_millis()).collect();
        assert_eq!(pauses, [10, 20, 40, 80, 160, 320, 500, 500]);
        assert_eq!(pacing.after_records(Duration::ZERO), 10 * MS);
        assert_eq!(pacing.after_empty(Duration::ZERO), 10 * MS);
        pacing.after_empty(Duration::ZERO);
        pacing.reset();
        assert_eq!(pacing.after_empty(Duration::ZERO), 10 * MS);
    }

    #[test]
    fn the_time_a_fetch_took_counts_towards_the_pause() {
        let mut pacing = IdlePacing::new(10 * MS, 500 * MS);
        assert_eq!(pacing.after_records(4 * MS), 6 * MS);
        assert_eq!(pacing.after_empty(25 * MS), Duration::ZERO);
        assert_eq!(pacing.after_empty(5 * MS), 15 * MS);
        // A maximum below the poll interval is the poll interval.
        let mut pacing = IdlePacing::new(100 * MS, 10 * MS);
        assert_eq!(pacing.after_empty(Duration::ZERO), 100 * MS);
        assert_eq!(pacing.after_empty(Duration::ZERO), 100 * MS);
    }
}
