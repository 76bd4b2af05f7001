//! The relay's pool, for everything but the leader session and LISTEN: the outbox
//! reads (one ahead while a batch is in flight), metrics, pruning, replay and audit.

use anyhow::Context;
use rsvp_contract::runtime::database;
use sqlx::PgPool;

use crate::{config::Settings, leader};

/// The most connections the pool opens.
const CONNECTIONS: u32 = 5;

/// Connects to `DATABASE_URL` with the relay's application name.
pub async fn connect(settings: &Settings) -> anyhow::Result<PgPool> {
    let options = leader::connect_options(settings.common.database_url.expose()).context("parsing DATABASE_URL")?;
    database::connect_pool(options, CONNECTIONS, "DATABASE_URL").await
}
