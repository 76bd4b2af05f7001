//! Building the relay process: settings, pool, migrations, admin port.

use std::{future::Future, sync::Arc, time::Duration};

use anyhow::Context;
use rsvp_contract::runtime::{
    admin::{self, Readiness, ReadinessCheck},
    database, kafka, shutdown,
};
use sqlx::PgPool;
use tokio::net::TcpListener;

use crate::{config::Settings, leader, metric_names, pool, runner};

pub struct Application {
    settings: Settings,
    pool: PgPool,
    admin_listener: TcpListener,
}

impl Application {
    /// Validates, connects, migrates and binds the admin port (port 0 in tests).
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        settings.validate()?;
        let admin_listener = admin::bind(settings.common.admin_addr).await?;
        metric_names::describe();
        let pool = pool::connect(&settings).await?;
        database::migrate(&pool, "DATABASE_URL").await?;
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
        let token = shutdown::token_cancelled_by(shutdown);
        let (pool, brokers, topic) =
            (self.pool.clone(), self.settings.kafka.brokers.clone(), self.settings.kafka.topic.clone());
        let readiness: ReadinessCheck = Arc::new(move || {
            let (pool, brokers, topic) = (pool.clone(), brokers.clone(), topic.clone());
            Box::pin(async move {
                // A cursor that cannot belong to this database: the relay refuses to
                // publish (RUNBOOK: Moving the database).
                let cursor = async {
                    let check = crate::generation::cursor_problem(&pool, &topic);
                    matches!(tokio::time::timeout(Duration::from_secs(2), check).await, Ok(Ok(None)))
                };
                let (postgres, cursor, kafka) =
                    tokio::join!(database::answers(&pool), cursor, kafka::answers(&brokers, leader::APPLICATION_NAME));
                Readiness::default().with("postgres", postgres).with("cursor", cursor).with("kafka", kafka)
            })
        });
        let admin = admin::serve(self.admin_listener, readiness, token.clone().cancelled_owned());
        tracing::info!(topic = %self.settings.kafka.topic, "rsvp-relay running");
        // Boxed: the relay future is deep enough to overflow the layout recursion limit.
        let relaying = Box::pin(runner::run(self.settings, self.pool, token));
        let (relayed, served) = tokio::join!(relaying, admin);
        relayed.context("relaying")?;
        served.context("serving the admin port")?;
        Ok(())
    }
}
