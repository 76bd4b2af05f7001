//! What the partition workers of one group share: the group, its store, the broker
//! client and the settings of fetching and retrying.

use std::{sync::Arc, time::Duration};

use rsvp_contract::runtime::backoff::Backoff;
use sqlx::PgPool;

use crate::{
    decoded::DecodedEvents,
    group::{Consumer, Group},
    recent::RecentRecords,
    wakeup::Wakeups,
};

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
    /// Between retries of a failing dependency; each worker starts from a copy.
    pub backoff: Backoff,
    pub rebalance_interval: Duration,
    /// How long a role session (partition owner, member) may go unused before
    /// Postgres ends it.
    pub role_loss_timeout: Duration,
}

/// Everything the workers of one group share.
pub struct GroupContext {
    pub group: Group,
    pub topic: String,
    /// The database of this group's offsets, members and dead letters (and, for an
    /// exactly-once group, its effects). Each owned partition opens its own connection.
    pub store_url: String,
    pub store: PgPool,
    pub kafka: Arc<rskafka::client::Client>,
    /// `KAFKA_BROKERS`, for the fetches rskafka cannot decode (`crate::raw_fetch`).
    pub brokers: Vec<String>,
    pub consumer: Arc<dyn Consumer>,
    pub settings: WorkerSettings,
    /// The relay's wake-ups, shared by every group of the process.
    pub wakeups: Arc<Wakeups>,
    /// What the groups of the process fetched lately; none when it runs one group.
    pub recent: Option<Arc<RecentRecords>>,
    /// What the groups of the process decoded lately; none when it runs one group.
    pub decoded: Option<Arc<DecodedEvents>>,
}
