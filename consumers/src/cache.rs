//! The cache group's effect: replacing the generations of everything an event changes.
//!
//! See `rsvp_contract::cache_keys` for why a new generation, not a deleted key, is
//! what guarantees that no stale entry is read after the invalidation. Setting a
//! fresh random generation is idempotent in effect: applying it twice only costs
//! the readers one more miss.

use std::{collections::BTreeSet, time::Duration};

use fred::{
    clients::Client,
    interfaces::{ClientLike, KeysInterface},
    types::{config::Config, Expiration},
};
use rsvp_contract::{cache_keys, CloudEvent};

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
