//! What a consumer group is, and what a group's partition workers share.
//!
//! A group is a [`Consumer`]: its name, how its effects commit relative to its
//! offsets ([`Delivery`]), and one function applying a batch of decoded events.
//! Everything else is the same for every group and comes with the runner:
//! partition ownership and failover, offsets, retries, dead letters, metrics,
//! `status` and `dlq` (what a group's workers share for that is
//! [`crate::context::GroupContext`]). `crate::registry` lists the groups this binary
//! runs.

use std::{error::Error as StdError, future::Future, pin::Pin, sync::Arc, time::Duration};

use rsvp_contract::CloudEvent;
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

/// A boxed future, so that [`Consumer`] can be used as a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A consumer group's name: its offsets, partition locks, members and dead letters
/// are kept under it, and it is the `group` label of every metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Group(&'static str);

impl Group {
    pub const fn new(name: &'static str) -> Self {
        Self(name)
    }

    pub fn name(self) -> &'static str {
        self.0
    }
}

/// How a group's effects commit relative to its offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The effects are written in the Postgres transaction that also advances the
    /// offset: each record takes effect exactly once, whatever crashes or
    /// redeliveries happen (a replay at new offsets is the consumer's to recognise,
    /// by `ce_id`).
    ExactlyOnce,
    /// The effects live outside Postgres and are idempotent: applied before the
    /// offset is stored, so at least once. The offset may wait up to
    /// `commit_interval` to be stored with a later batch.
    AtLeastOnce { commit_interval: Duration },
}

/// Which database holds a group's offsets, members and dead letters (and an
/// exactly-once group's effects, which commit with them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Database {
    /// `DATABASE_URL`, the api's.
    Main,
    /// `ANALYTICS_DATABASE_URL` (the main one unless set).
    Analytics,
}

/// What applying one event did, as the `result` label of `consumer_processed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It took effect (or had nothing to do).
    Applied,
    /// It had taken effect before: a redelivery or replay.
    Duplicate,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Duplicate => "duplicate",
        }
    }
}

/// Why applying a batch failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Postgres failed. Classified by SQLSTATE (`crate::fault`): contention and lost
    /// connections are retried without limit; anything else may be the record's
    /// fault and counts towards dead-lettering it.
    #[error(transparent)]
    Postgres(#[from] sqlx::Error),
    /// A dependency outside Postgres failed (Redis, say): retried without limit,
    /// never the record's fault.
    #[error("{dependency} failed")]
    Dependency {
        /// The `dependency` label of `consumer_retries_total`.
        dependency: &'static str,
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
}

/// One consumer group's effect.
pub trait Consumer: Send + Sync + 'static {
    fn group(&self) -> Group;

    fn delivery(&self) -> Delivery;

    /// Where the group's state lives; the main database unless overridden.
    fn database(&self) -> Database {
        Database::Main
    }

    /// How often a caught-up partition fetches again.
    fn poll_interval(&self) -> Duration;

    /// How soon after a fetch began the relay's wake-up (`crate::wakeup`) may start
    /// the next one. By default the poll interval: the wake-up then only shortens the
    /// longer pauses of an idle partition, and a busy one fetches as large batches as
    /// polling gives it.
    fn wake_gap(&self) -> Duration {
        self.poll_interval()
    }

    /// Applies `events`, in partition order, returning each one's outcome. An
    /// exactly-once group gets `tx`, the transaction that also advances the offset
    /// and commits after this returns; an at-least-once group gets none. Events
    /// that cannot be decoded never get here: they are dead-lettered.
    fn apply<'a>(
        &'a self,
        tx: Option<&'a mut PgConnection>,
        events: &'a [&'a CloudEvent],
    ) -> BoxFuture<'a, Result<Vec<Outcome>, ApplyError>>;

    /// A dependency besides Postgres and the broker that `/readyz` reports, and
    /// whether it answers.
    fn readiness(&self) -> BoxFuture<'_, Option<(&'static str, bool)>> {
        Box::pin(async { None })
    }

    /// Upkeep running beside the group until `shutdown` (pruning, say), given the
    /// group's store.
    fn maintenance(self: Arc<Self>, _store: PgPool, _shutdown: CancellationToken) -> Option<BoxFuture<'static, ()>> {
        None
    }
}
