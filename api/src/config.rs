//! Settings from flags and environment, validated at start-up.

use std::{net::SocketAddr, time::Duration};

use clap::{Parser, Subcommand};
use rsvp_contract::runtime::{
    secret::Secret,
    settings::{self, CommonSettings},
};

use crate::{
    coalesce::CoalescingSettings, idempotency::IdempotencySettings, serve::ConnectionLimits,
    store::transactions::TxTimeouts,
};

/// The api's command line.
pub type Cli = settings::Cli<Command, Settings>;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run migrations, then serve the api and the admin port (the default).
    Serve,
    /// Run pending migrations and exit.
    Migrate,
}

/// `ADMIN_ADDR` of the api, beside the relay's and the consumers'.
const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:9464";

#[derive(Debug, Clone, Parser)]
#[command(
    display_name = "rsvp-api",
    version,
    about = "REST api for events and rsvps with a transactional outbox",
    mut_arg("admin_addr", |arg| arg.default_value(DEFAULT_ADMIN_ADDR))
)]
pub struct Settings {
    #[command(flatten)]
    pub common: CommonSettings,

    /// PostgreSQL holding the consumers' `analytics` schema, read by
    /// `GET /events/{id}/stats`; the main database when unset.
    #[arg(long, env = "ANALYTICS_DATABASE_URL", hide_env_values = true)]
    pub analytics_database_url: Option<Secret<String>>,

    /// Redis connection string of the read-through cache.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379", hide_env_values = true)]
    pub redis_url: Secret<String>,

    /// Address of the REST api.
    #[arg(long, env = "API_ADDR", default_value = "127.0.0.1:8080")]
    pub api_addr: SocketAddr,

    /// Bearer token for admin endpoints (creating events, deleting rsvps); at least 16 characters.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Secret<String>,

    /// Largest number of pooled Postgres connections.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 32)]
    pub database_max_connections: u32,

    /// How long a cache command may take before the read falls back to Postgres.
    #[arg(long, env = "REDIS_TIMEOUT", default_value = "250ms", value_parser = humantime::parse_duration)]
    pub redis_timeout: Duration,

    /// Group concurrent writes into shared transactions (one commit for many rsvps).
    #[arg(long, env = "WRITE_COALESCING", default_value_t = true, action = clap::ArgAction::Set)]
    pub write_coalescing: bool,

    /// Most writes in one coalesced transaction.
    #[arg(long, env = "WRITE_BATCH_MAX", default_value_t = 256)]
    pub write_batch_max: usize,

    /// Longest a write waits for others to share its transaction.
    #[arg(long, env = "WRITE_BATCH_WAIT", default_value = "2ms", value_parser = humantime::parse_duration)]
    pub write_batch_wait: Duration,

    /// Lanes of coalesced writes, each committing one transaction at a time; creates
    /// take the lane of their event, so lanes rarely wait for each other's locks.
    #[arg(long, env = "WRITE_WORKERS", default_value_t = 3)]
    pub write_workers: usize,

    /// How long one request may take before it is answered 503.
    #[arg(long, env = "REQUEST_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,

    /// Longest a write transaction waits for one lock (an event or rsvp row held by
    /// another transaction) before its write is answered 503 `lock_timeout`; the
    /// other writes of its shared transaction then complete without it.
    #[arg(long, env = "DATABASE_LOCK_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub database_lock_timeout: Duration,

    /// Longest one statement of a write transaction (its COMMIT included) may run
    /// before it is cancelled and the write answered 503 `statement_timeout`.
    #[arg(long, env = "DATABASE_STATEMENT_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub database_statement_timeout: Duration,

    /// How long a client may take to send a request's headers (and an idle keep-alive
    /// connection may wait for its next request) before its connection is closed.
    #[arg(long, env = "HEADER_READ_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,

    /// Most client connections open at once; one more is closed as soon as it is accepted.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// How long a write's `Idempotency-Key` answers retries; after that a request with
    /// the key is a new request.
    #[arg(long, env = "IDEMPOTENCY_KEY_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    pub idempotency_key_ttl: Duration,

    /// How often expired idempotency keys are deleted.
    #[arg(long, env = "IDEMPOTENCY_PRUNE_INTERVAL", default_value = "1m", value_parser = humantime::parse_duration)]
    pub idempotency_prune_interval: Duration,
}

impl Settings {
    /// Rejects settings the process cannot run with, before anything is started.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.admin_token.expose().len() >= 16, "ADMIN_TOKEN must be at least 16 characters");
        anyhow::ensure!(self.database_max_connections >= 1, "DATABASE_MAX_CONNECTIONS must be at least 1");
        anyhow::ensure!(self.write_batch_max >= 1, "WRITE_BATCH_MAX must be at least 1");
        anyhow::ensure!(self.max_connections >= 1, "MAX_CONNECTIONS must be at least 1");
        anyhow::ensure!(!self.header_read_timeout.is_zero(), "HEADER_READ_TIMEOUT must be above zero");
        for (name, timeout) in [
            ("REQUEST_TIMEOUT", self.request_timeout),
            ("DATABASE_LOCK_TIMEOUT", self.database_lock_timeout),
            ("DATABASE_STATEMENT_TIMEOUT", self.database_statement_timeout),
        ] {
            // Postgres reads a zero lock or statement timeout as none at all.
            anyhow::ensure!(timeout >= Duration::from_millis(1), "{name} must be at least 1ms");
        }
        anyhow::ensure!(self.write_workers >= 1, "WRITE_WORKERS must be at least 1");
        anyhow::ensure!(!self.idempotency_key_ttl.is_zero(), "IDEMPOTENCY_KEY_TTL must be above zero");
        anyhow::ensure!(!self.idempotency_prune_interval.is_zero(), "IDEMPOTENCY_PRUNE_INTERVAL must be above zero");
        anyhow::ensure!(
            self.write_workers as u32 <= self.database_max_connections,
            "WRITE_WORKERS must not exceed DATABASE_MAX_CONNECTIONS"
        );
        Ok(())
    }

    pub fn connection_limits(&self) -> ConnectionLimits {
        ConnectionLimits { header_read_timeout: self.header_read_timeout, max_connections: self.max_connections }
    }

    pub fn idempotency(&self) -> IdempotencySettings {
        IdempotencySettings { ttl: self.idempotency_key_ttl }
    }

    pub fn coalescing(&self) -> CoalescingSettings {
        CoalescingSettings {
            enabled: self.write_coalescing,
            max_batch: self.write_batch_max,
            max_wait: self.write_batch_wait,
            workers: self.write_workers,
            timeouts: TxTimeouts { lock: self.database_lock_timeout, statement: self.database_statement_timeout },
            request_timeout: self.request_timeout,
        }
    }
}
