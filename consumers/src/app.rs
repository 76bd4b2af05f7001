//! Building the process: pools, migrations, Redis, the broker client, the admin port,
//! and one runner per group.

use std::{future::Future, sync::Arc, time::Duration};

use anyhow::Context;
use rsvp_contract::admin::{self, Readiness, ReadinessCheck};
use sqlx::{postgres::PgPoolOptions, PgPool};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    cache::Invalidator,
    config::Settings,
    dlq,
    group::{Backoff, Effect, Group, GroupContext, WorkerSettings},
    runner::GroupRunner,
    status::{self, GroupStatus},
};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

pub struct Application {
    settings: Settings,
    main: PgPool,
    analytics: PgPool,
    invalidator: Option<Invalidator>,
    admin_listener: Option<TcpListener>,
    instance_id: Uuid,
}

async fn connect(url: &str, what: &str) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .with_context(|| format!("connecting to {what}"))
}

impl Application {
    /// Connects and migrates; binds the admin port unless `bind_admin` is false (the
    /// `dlq` subcommands). `ADMIN_ADDR` with port 0 binds a free port (tests).
    pub async fn build(settings: &Settings, bind_admin: bool) -> anyhow::Result<Self> {
        settings.validate()?;
        let main = connect(&settings.database_url, "DATABASE_URL").await?;
        MIGRATOR.run(&main).await.context("migrating DATABASE_URL")?;
        let analytics = if settings.separate_analytics_database() {
            let analytics = connect(settings.analytics_url(), "ANALYTICS_DATABASE_URL").await?;
            // Every migration, so that offsets, members and dead letters live beside the statistics.
            MIGRATOR.run(&analytics).await.context("migrating ANALYTICS_DATABASE_URL")?;
            analytics
        } else {
            main.clone()
        };
        let invalidator = if settings.groups().contains(&Group::Cache) {
            Some(Invalidator::connect(&settings.redis_url, settings.redis_timeout).context("configuring redis")?)
        } else {
            None
        };
        let admin_listener = match bind_admin {
            true => Some(
                TcpListener::bind(settings.admin_addr)
                    .await
                    .with_context(|| format!("binding ADMIN_ADDR {}", settings.admin_addr))?,
            ),
            false => None,
        };
        Ok(Self { settings: settings.clone(), main, analytics, invalidator, admin_listener, instance_id: Uuid::new_v4() })
    }

    pub fn admin_port(&self) -> u16 {
        self.admin_listener.as_ref().and_then(|l| l.local_addr().ok()).map(|a| a.port()).unwrap_or_default()
    }

    /// The database of `group`'s offsets, members and dead letters.
    pub fn store(&self, group: Group) -> &PgPool {
        match group {
            Group::Cache => &self.main,
            Group::Analytics => &self.analytics,
        }
    }

    fn store_url(&self, group: Group) -> &str {
        match group {
            Group::Cache => &self.settings.database_url,
            Group::Analytics => self.settings.analytics_url(),
        }
    }

    pub fn effect(&self, group: Group) -> anyhow::Result<Effect> {
        match group {
            Group::Cache => Ok(Effect::Cache(self.invalidator.clone().context("the cache group is not enabled")?)),
            Group::Analytics => Ok(Effect::Analytics),
        }
    }

    /// What `group`'s workers share; tests step workers built from it.
    pub fn group_context(&self, group: Group, kafka: Arc<rskafka::client::Client>) -> anyhow::Result<Arc<GroupContext>> {
        Ok(Arc::new(GroupContext {
            group,
            topic: self.settings.topic.clone(),
            store_url: with_application_name(self.store_url(group), self.instance_id),
            store: self.store(group).clone(),
            kafka,
            effect: self.effect(group)?,
            settings: WorkerSettings {
                fetch_max_bytes: self.settings.fetch_max_bytes,
                fetch_max_wait: self.settings.fetch_max_wait,
                poll_interval: match group {
                    Group::Cache => self.settings.cache_poll_interval,
                    Group::Analytics => self.settings.analytics_poll_interval,
                },
                idle_poll_max: self.settings.idle_poll_max,
                commit_interval: match group {
                    Group::Cache => self.settings.cache_commit_interval,
                    Group::Analytics => Duration::ZERO,
                },
                max_attempts: self.settings.max_attempts,
                retry_max_backoff: self.settings.retry_max_backoff,
                rebalance_interval: self.settings.rebalance_interval,
                role_loss_timeout: self.settings.role_loss_timeout,
            },
        }))
    }

    async fn readiness(&self) -> Readiness {
        let ping = |pool: PgPool| async move {
            matches!(tokio::time::timeout(Duration::from_secs(2), sqlx::query("select 1").execute(&pool)).await, Ok(Ok(_)))
        };
        let (postgres, kafka) =
            tokio::join!(ping(self.main.clone()), rsvp_contract::admin::kafka_answers(self.settings.brokers()));
        let mut readiness = Readiness::default().with("postgres", postgres).with("kafka", kafka);
        if self.settings.separate_analytics_database() {
            readiness = readiness.with("analytics_postgres", ping(self.analytics.clone()).await);
        }
        if let Some(invalidator) = &self.invalidator {
            readiness = readiness.with("redis", invalidator.ping().await);
        }
        readiness
    }

    /// Consumes with every configured group until `shutdown` resolves, then stops the
    /// workers (in-flight batches roll back) and the admin port.
    pub async fn run_until(mut self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let stop = CancellationToken::new();
        let trigger = stop.clone();
        tokio::spawn(async move {
            shutdown.await;
            trigger.cancel();
        });
        let listener = self.admin_listener.take().context("the admin port is not bound")?;
        let this = Arc::new(self);
        let readiness_app = this.clone();
        let readiness: ReadinessCheck = Arc::new(move || {
            let app = readiness_app.clone();
            Box::pin(async move { app.readiness().await })
        });
        let admin = tokio::spawn(admin::serve(listener, readiness, stop.clone().cancelled_owned()));
        tracing::info!(instance_id = %this.instance_id, groups = ?this.settings.groups(), "rsvp-consumers starting");
        if let Some(kafka) = connect_kafka(&this.settings.brokers(), &stop, this.settings.retry_max_backoff).await {
            let kafka = Arc::new(kafka);
            let mut runners = Vec::new();
            for group in this.settings.groups() {
                let runner = GroupRunner::new(this.group_context(group, kafka.clone())?, this.instance_id);
                runners.push(tokio::spawn(runner.run(stop.clone())));
            }
            for runner in runners {
                runner.await.context("a group runner panicked")?;
            }
        }
        stop.cancel();
        admin.await.context("the admin server panicked")?.context("serving the admin port")?;
        Ok(())
    }

    /// `dlq list`: every pending (or, with `all`, every) dead letter of the configured groups.
    pub async fn dead_letters(&self, all: bool) -> anyhow::Result<Vec<dlq::DeadLetter>> {
        let mut letters = Vec::new();
        for group in self.settings.groups() {
            letters.extend(dlq::list(self.store(group), group, all).await?);
        }
        Ok(letters)
    }

    /// `status`: every configured group's partitions, owners, offsets and lag.
    pub async fn status(&self) -> anyhow::Result<Vec<GroupStatus>> {
        let kafka = status::connect_kafka(&self.settings.brokers(), Duration::from_secs(10)).await?;
        let mut groups = Vec::new();
        for group in self.settings.groups() {
            groups.push(status::collect(self.store(group), &kafka, group, &self.settings.topic).await?);
        }
        Ok(groups)
    }

    /// `dlq redrive`: each pending dead letter (or only `id`) of the configured groups, once.
    pub async fn redrive(&self, id: Option<i64>) -> anyhow::Result<Vec<dlq::Redriven>> {
        let mut results = Vec::new();
        for group in self.settings.groups() {
            results.extend(dlq::redrive(self.store(group), group, &self.effect(group)?, id).await?);
        }
        Ok(results)
    }
}

/// `url` with `application_name=rsvp-consumers/<instance>`, so that `status` can tell
/// which instance's session holds a partition's lock (`pg_stat_activity`).
fn with_application_name(url: &str, instance_id: Uuid) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}application_name=rsvp-consumers/{instance_id}")
}

/// The broker client, retried until the broker answers or `stop` is cancelled.
pub async fn connect_kafka(brokers: &[String], stop: &CancellationToken, max_backoff: Duration) -> Option<rskafka::client::Client> {
    let mut backoff = Backoff::new(max_backoff);
    loop {
        let build = rskafka::client::ClientBuilder::new(brokers.to_vec()).client_id("rsvp-consumers").build();
        let attempt = tokio::select! {
            _ = stop.cancelled() => return None,
            attempt = tokio::time::timeout(Duration::from_secs(10), build) => attempt,
        };
        match attempt {
            Ok(Ok(client)) => return Some(client),
            Ok(Err(error)) => tracing::warn!(%error, "cannot reach the broker yet"),
            Err(_) => tracing::warn!("connecting to the broker timed out"),
        }
        tokio::select! {
            _ = stop.cancelled() => return None,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}
