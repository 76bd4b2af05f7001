//! The two consumer groups, and what a group's partition workers share.

use std::{sync::Arc, time::Duration};

use sqlx::PgPool;

use crate::cache::Invalidator;

/// A consumer group: its own offsets, its own partition owners, its own effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Group {
    /// Invalidates the api's Redis cache.
    Cache,
    /// Keeps per-event statistics.
    Analytics,
}

impl Group {
    pub const ALL: [Group; 2] = [Group::Cache, Group::Analytics];

    /// The group name: also the `group` label of every metric.
    pub fn name(self) -> &'static str {
        match self {
            Group::Cache => "cache-invalidation-group",
            Group::Analytics => "analytics-group",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|g| g.name() == name)
    }
}

/// What a group does with the events of a batch.
#[derive(Clone)]
pub enum Effect {
    Cache(Invalidator),
    /// Writes statistics through the partition's own connection to the group's store.
    Analytics,
}

/// Fetching and retrying, as configured.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub fetch_max_bytes: i32,
    pub fetch_max_wait: Duration,
    /// How soon a caught-up partition fetches again; the first pause after an empty fetch.
    pub poll_interval: Duration,
    /// The longest pause between the fetches of a partition that keeps finding nothing.
    pub idle_poll_max: Duration,
    /// How long a batch's offset may wait to be stored with a later one; zero when
    /// the offset must commit with the batch's effects.
    pub commit_interval: Duration,
    pub max_attempts: u32,
    pub retry_max_backoff: Duration,
    pub rebalance_interval: Duration,
    /// How long a role session (partition owner, member) may go unused before
    /// Postgres ends it.
    pub role_loss_timeout: Duration,
}

/// Everything the workers of one group share.
pub struct GroupContext {
    pub group: Group,
    pub topic: String,
    /// The database of this group's offsets, members and dead letters (and, for
    /// analytics, its statistics). Each owned partition opens its own connection.
    pub store_url: String,
    pub store: PgPool,
    pub kafka: Arc<rskafka::client::Client>,
    pub effect: Effect,
    pub settings: WorkerSettings,
}

/// Exponential backoff between retries of a failing dependency.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(20);

    pub fn new(max: Duration) -> Self {
        Self { next: Self::FIRST, max }
    }

    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next.min(self.max);
        self.next = (self.next * 2).min(self.max);
        delay
    }

    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_names_round_trip() {
        for group in Group::ALL {
            assert_eq!(Group::parse(group.name()), Some(group));
        }
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(70));
        let delays: Vec<_> = (0..4).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(delays, vec![20, 40, 70, 70]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_millis(20));
    }
}
