//! The cache group's effect: replacing the generations of everything an event changes.
//!
//! See `rsvp_contract::cache_keys` for why a new generation, not a deleted key, is
//! what guarantees that no stale entry is read after the invalidation. Setting a
//! fresh random generation is idempotent in effect: applying it twice only costs
//! the readers one more miss.

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use fred::{
    clients::Client,
    interfaces::{ClientLike, KeysInterface},
    types::{config::Config, Expiration},
};
use rsvp_contract::{cache_keys, CloudEvent};
use sqlx::PgConnection;

use crate::{
    config::Settings,
    group::{ApplyError, BoxFuture, Consumer, Delivery, Group, Outcome},
};

pub const GROUP: Group = Group::new("cache-invalidation-group");

/// The cache group: at least once, since its effects live in Redis and replacing a
/// generation twice only costs the readers one more miss.
pub struct CacheInvalidation {
    invalidator: Invalidator,
    poll_interval: Duration,
    commit_interval: Duration,
}

pub fn build(settings: &Settings) -> anyhow::Result<Arc<dyn Consumer>> {
    let invalidator = Invalidator::connect(settings.redis_url.expose(), settings.redis_timeout)?;
    let (poll_interval, commit_interval) = (settings.cache_poll_interval, settings.cache_commit_interval);
    Ok(Arc::new(CacheInvalidation { invalidator, poll_interval, commit_interval }))
}

impl Consumer for CacheInvalidation {
    fn group(&self) -> Group {
        GROUP
    }

    fn delivery(&self) -> Delivery {
        Delivery::AtLeastOnce { commit_interval: self.commit_interval }
    }

    fn poll_interval(&self) -> Duration {
        self.poll_interval
    }

    /// Replaces the generations of everything the batch changes, in one round trip.
    fn apply<'a>(
        &'a self,
        _tx: Option<&'a mut PgConnection>,
        events: &'a [&'a CloudEvent],
    ) -> BoxFuture<'a, Result<Vec<Outcome>, ApplyError>> {
        Box::pin(async move {
            let keys: BTreeSet<String> = events.iter().flat_map(|e| affected_keys(e)).collect();
            self.invalidator
                .invalidate(&keys)
                .await
                .map_err(|e| ApplyError::Dependency { dependency: "redis", source: Box::new(e) })?;
            Ok(vec![Outcome::Applied; events.len()])
        })
    }

    fn readiness(&self) -> BoxFuture<'_, Option<(&'static str, bool)>> {
        Box::pin(async { Some(("redis", self.invalidator.ping().await)) })
    }
}

/// The generation keys whose entries `event` makes stale: the event with its counts
/// and rsvp list, and the rsvp itself.
pub fn affected_keys(event: &CloudEvent) -> [String; 2] {
    [cache_keys::event_generation(event.data.event_id), cache_keys::rsvp_generation(event.data.id)]
}

#[derive(Clone)]
pub struct Invalidator {
    client: Client,
    timeout: Duration,
}

impl Invalidator {
    /// Starts connecting in the background; commands fail until Redis answers.
    pub fn connect(url: &str, timeout: Duration) -> anyhow::Result<Self> {
        let mut config = Config::from_url(url)?;
        config.fail_fast = true;
        let client = fred::types::Builder::from_config(config)
            .with_connection_config(|c| c.connection_timeout = timeout)
            .with_performance_config(|p| p.default_command_timeout = timeout)
            .set_policy(fred::types::config::ReconnectPolicy::new_exponential(0, 50, 1_000, 2))
            .build()?;
        client.connect();
        Ok(Self { client, timeout })
    }

    /// Whether Redis answers a PING within the timeout.
    pub async fn ping(&self) -> bool {
        matches!(tokio::time::timeout(self.timeout, self.client.ping::<String>(None)).await, Ok(Ok(_)))
    }

    /// Gives each key a new generation, in one round trip.
    #[tracing::instrument(skip_all, fields(keys = keys.len()), err)]
    pub async fn invalidate(&self, keys: &BTreeSet<String>) -> Result<(), fred::error::Error> {
        if keys.is_empty() {
            return Ok(());
        }
        let pipeline = self.client.pipeline();
        for key in keys {
            let expiry = Some(Expiration::EX(cache_keys::GENERATION_TTL_SECONDS));
            let () = pipeline.set(key.as_str(), cache_keys::new_generation(), expiry, None, false).await?;
        }
        let sent = tokio::time::timeout(self.timeout, pipeline.all::<Vec<fred::types::Value>>()).await;
        match sent {
            Ok(result) => result.map(drop),
            Err(_) => Err(fred::error::Error::new(fred::error::ErrorKind::Timeout, "redis pipeline timed out")),
        }
    }
}
