//! Building the relay process: settings, pool, migrations, admin port.

use std::{future::Future, sync::Arc, time::Duration};

use anyhow::Context;
use rsvp_contract::admin::{self, Readiness, ReadinessCheck};
use sqlx::{postgres::PgPoolOptions, PgPool};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{config::Settings, leader, metrics, relay};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Pool for everything but the leader session and LISTEN: the outbox reads (one
/// ahead while a batch is in flight), metrics, pruning, replay and audit.
pub async fn connect_pool(settings: &Settings) -> anyhow::Result<PgPool> {
    let options = leader::connect_options(&settings.database_url).context("parsing DATABASE_URL")?;
    PgPoolOptions::new()
        .max_connections(5)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await
        .context("connecting to DATABASE_URL")
}

pub struct Application {
    settings: Settings,
    pool: PgPool,
    admin_listener: TcpListener,
}

impl Application {
    /// Validates, connects, migrates and binds the admin port (port 0 in tests).
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        settings.validate()?;
        admin::metrics_handle();
        metrics::describe();
        let pool = connect_pool(&settings).await?;
        MIGRATOR.run(&pool).await.context("running migrations")?;
        let admin_listener = TcpListener::bind(settings.admin_addr)
            .await
            .with_context(|| format!("binding ADMIN_ADDR {}", settings.admin_addr))?;
        Ok(Self { settings, pool, admin_listener })
    }

    pub fn admin_port(&self) -> u16 {
        self.admin_listener.local_addr().map(|a| a.port()).unwrap_or_default()
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Relays and serves the admin port until `shutdown` resolves.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let token = CancellationToken::new();
        let trigger = token.clone();
        tokio::spawn(async move {
            shutdown.await;
            trigger.cancel();
        });
        let (pool, brokers, topic) = (self.pool.clone(), self.settings.kafka_brokers.clone(), self.settings.topic.clone());
        let readiness: ReadinessCheck = Arc::new(move || {
            let (pool, brokers, topic) = (pool.clone(), brokers.clone(), topic.clone());
            Box::pin(async move {
                let postgres = async {
                    let ping = sqlx::query("select 1").execute(&pool);
                    matches!(tokio::time::timeout(Duration::from_secs(2), ping).await, Ok(Ok(_)))
                };
                // A cursor that cannot belong to this database: the relay refuses to
                // publish (RUNBOOK: Moving the database).
                let cursor = async {
                    let check = crate::generation::cursor_problem(&pool, &topic);
                    matches!(tokio::time::timeout(Duration::from_secs(2), check).await, Ok(Ok(None)))
                };
                let (postgres, cursor, kafka) = tokio::join!(postgres, cursor, admin::kafka_answers(brokers));
                Readiness::default().with("postgres", postgres).with("cursor", cursor).with("kafka", kafka)
            })
        });
        let admin = admin::serve(self.admin_listener, readiness, token.clone().cancelled_owned());
        tracing::info!(topic = %self.settings.topic, "rsvp-relay running");
        // Boxed: the relay future is deep enough to overflow the layout recursion limit.
        let relaying = Box::pin(relay::run(self.settings, self.pool, token));
        let (relayed, served) = tokio::join!(relaying, admin);
        relayed.context("relaying")?;
        served.context("serving the admin port")?;
        Ok(())
    }
}
