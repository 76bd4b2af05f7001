//! Read-through Redis cache with generation keys (see `rsvp_contract::cache_keys`
//! for why a reader can never store stale rows after an invalidation).
//!
//! Redis is an optimisation, never a dependency of correctness: every cache failure
//! falls back to Postgres, is logged and counted, and never fails the request.

use std::{future::Future, time::Duration};

use fred::{
    clients::Client,
    interfaces::{ClientLike, KeysInterface},
    types::{
        config::{Config, Options},
        Expiration, SetOptions,
    },
};
use metrics::counter;
use rsvp_contract::cache_keys::{new_generation, GENERATION_TTL_SECONDS, VALUE_TTL_SECONDS};
use serde::{de::DeserializeOwned, Serialize};

use crate::metric_names;

#[derive(Clone)]
pub struct Cache {
    client: Client,
    timeout: Duration,
}

impl Cache {
    /// Starts connecting in the background: the api serves (from Postgres) while
    /// Redis is unreachable, and uses it as soon as it answers.
    pub fn connect(url: &str, timeout: Duration) -> anyhow::Result<Self> {
        let mut config = Config::from_url(url)?;
        // Keep reconnecting instead of failing start-up when Redis is down.
        config.fail_fast = false;
        let client = fred::types::Builder::from_config(config)
            .with_connection_config(|c| c.connection_timeout = timeout.max(Duration::from_secs(1)))
            .set_policy(fred::types::config::ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
            .build()?;
        client.connect();
        Ok(Self { client, timeout })
    }

    /// Waits up to `within` for the first connection, so that a process that starts
    /// with Redis up serves its first reads from the cache; returns whether it connected.
    pub async fn wait_connected(&self, within: Duration) -> bool {
        matches!(tokio::time::timeout(within, self.client.wait_for_connect()).await, Ok(Ok(())))
    }

    fn options(&self) -> Options {
        Options { fail_fast: true, timeout: Some(self.timeout), max_attempts: Some(1), ..Default::default() }
    }

    /// Whether Redis answers a PING within the timeout.
    pub async fn ping(&self) -> bool {
        let client = self.client.with_options(&self.options());
        matches!(tokio::time::timeout(self.timeout, client.ping::<String>(None)).await, Ok(Ok(_)))
    }

    /// The entity's current generation, created when missing.
    pub async fn generation(&self, generation_key: &str) -> anyhow::Result<String> {
        let client = self.client.with_options(&self.options());
        if let Some(generation) = client.get::<Option<String>, _>(generation_key).await? {
            return Ok(generation);
        }
        let fresh = new_generation();
        let set: Option<String> = client
            .set(
                generation_key,
                fresh.as_str(),
                Some(Expiration::EX(GENERATION_TTL_SECONDS)),
                Some(SetOptions::NX),
                false,
            )
            .await?;
        if set.is_some() {
            return Ok(fresh);
        }
        // Another reader or an invalidation created it first.
        client
            .get::<Option<String>, _>(generation_key)
            .await?
            .ok_or_else(|| anyhow::anyhow!("generation key {generation_key} vanished"))
    }

    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> anyhow::Result<Option<T>> {
        let json: Option<String> = self.client.with_options(&self.options()).get(key).await?;
        Ok(json.map(|j| serde_json::from_str(&j)).transpose()?)
    }

    pub async fn store<T: Serialize>(&self, key: &str, value: &T) -> anyhow::Result<()> {
        let json = serde_json::to_string(value)?;
        self.client
            .with_options(&self.options())
            .set::<(), _, _>(key, json, Some(Expiration::EX(VALUE_TTL_SECONDS)), None, false)
            .await?;
        Ok(())
    }

    /// Replaces each generation with a new one: what the cache consumer does after a change.
    pub async fn invalidate(&self, generation_keys: &[String]) -> anyhow::Result<()> {
        let client = self.client.with_options(&self.options());
        for key in generation_keys {
            client
                .set::<(), _, _>(
                    key.as_str(),
                    new_generation(),
                    Some(Expiration::EX(GENERATION_TTL_SECONDS)),
                    None,
                    false,
                )
                .await?;
        }
        Ok(())
    }

    /// The value under the entity's current generation, or `load`'s answer, which is
    /// stored for the next reader when it is `Some`.
    pub async fn read_through<T, F, Fut, E>(
        &self,
        generation_key: &str,
        value_key: impl FnOnce(&str) -> String,
        load: F,
    ) -> Result<Option<T>, E>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<T>, E>>,
    {
        // The generation must be read before loading: that order is what closes the race.
        let key = match self.generation(generation_key).await {
            Ok(generation) => value_key(&generation),
            Err(error) => {
                self.record_error(&error);
                return load().await;
            }
        };
        match self.get(&key).await {
            Ok(Some(value)) => {
                counter!(metric_names::CACHE_REQUESTS, "result" => "hit").increment(1);
                return Ok(Some(value));
            }
            Ok(None) => counter!(metric_names::CACHE_REQUESTS, "result" => "miss").increment(1),
            Err(error) => {
                self.record_error(&error);
                return load().await;
            }
        }
        let loaded = load().await?;
        if let Some(value) = &loaded {
            if let Err(error) = self.store(&key, value).await {
                self.record_error(&error);
            }
        }
        Ok(loaded)
    }

    fn record_error(&self, error: &anyhow::Error) {
        counter!(metric_names::CACHE_REQUESTS, "result" => "error").increment(1);
        tracing::warn!(error = %error, "cache unavailable, reading from postgres");
    }
}
