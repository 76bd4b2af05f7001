//! The Postgres pool every process opens, its readiness ping, and the one migrator:
//! whichever process starts first brings the database to the schema all of them expect.

use std::time::Duration;

use anyhow::Context;
use sqlx::{
    postgres::{PgConnectOptions, PgPoolOptions},
    PgPool,
};

/// Every migration of the workspace, embedded at compile time (`contract/build.rs`
/// rebuilds when one is added).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// How long a caller waits for a pooled connection before the call fails.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long `/readyz` waits for Postgres to answer.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// A pool of at most `max_connections`; `what` names the setting in errors
/// (`DATABASE_URL`, `ANALYTICS_DATABASE_URL`).
pub async fn connect_pool(options: PgConnectOptions, max_connections: u32, what: &str) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(options)
        .await
        .with_context(|| format!("connecting to {what}"))
}

/// [`connect_pool`] from a connection string.
pub async fn connect_url(url: &str, max_connections: u32, what: &str) -> anyhow::Result<PgPool> {
    let options: PgConnectOptions = url.parse().with_context(|| format!("parsing {what}"))?;
    connect_pool(options, max_connections, what).await
}

/// Connects and runs every pending migration.
pub async fn connect_and_migrate(url: &str, max_connections: u32, what: &str) -> anyhow::Result<PgPool> {
    let pool = connect_url(url, max_connections, what).await?;
    migrate(&pool, what).await?;
    Ok(pool)
}

/// Runs every pending migration on `pool`.
pub async fn migrate(pool: &PgPool, what: &str) -> anyhow::Result<()> {
    MIGRATOR.run(pool).await.with_context(|| format!("migrating {what}"))
}

/// Whether Postgres answers a trivial statement within two seconds, for `/readyz`.
pub async fn answers(pool: &PgPool) -> bool {
    let ping = sqlx::query!("select 1 as one").fetch_one(pool);
    matches!(tokio::time::timeout(PING_TIMEOUT, ping).await, Ok(Ok(_)))
}
