//! Building the process: pools, migrations, Redis, the broker client, the admin port,
//! and one runner per group.

use std::{future::Future, sync::Arc, time::Duration};

use anyhow::Context;
use rsvp_contract::runtime::{
    admin::{self, Readiness, ReadinessCheck},
    database, kafka, shutdown,
};
use sqlx::PgPool;
use tokio::net::TcpListener;
use uuid::Uuid;

use crate::{
    config::Settings,
    context::{GroupContext, WorkerSettings},
    decoded::DecodedEvents,
    dlq,
    group::{Consumer, Database, Delivery, Group},
    metric_names,
    recent::RecentRecords,
    registry,
    runner::GroupRunner,
    status::{self, GroupStatus},
    wakeup::{self, Wakeups},
};

/// The client id of the consumers' Kafka connections.
const CLIENT_ID: &str = "rsvp-consumers";

/// Connections of each pool: the offsets, dead letters and effects of the groups
/// (each owned partition holds its own session besides).
const POOL_CONNECTIONS: u32 = 4;

/// How many fetches' worth of records (`FETCH_MAX_BYTES` each) the groups of one
/// instance keep per partition for each other.
const RECENT_FETCHES_KEPT: usize = 4;

/// How many decoded events the groups of one instance keep per partition for each
/// other: at the pipeline's full rate about half a second of a partition's records,
/// a few megabytes in all.
const DECODED_EVENTS_KEPT: usize = 1024;

pub struct Application {
    settings: Settings,
    main: PgPool,
    analytics: PgPool,
    /// The configured groups' effects, in registration order.
    consumers: Vec<Arc<dyn Consumer>>,
    admin_listener: Option<TcpListener>,
    instance_id: Uuid,
    wakeups: Arc<Wakeups>,
    recent: Option<Arc<RecentRecords>>,
    decoded: Option<Arc<DecodedEvents>>,
}

impl Application {
    /// Connects and migrates; binds the admin port unless `bind_admin` is false (the
    /// `dlq` subcommands). `ADMIN_ADDR` with port 0 binds a free port (tests).
    pub async fn build(settings: &Settings, bind_admin: bool) -> anyhow::Result<Self> {
        settings.validate()?;
        let admin_listener = match bind_admin {
            true => Some(admin::bind(settings.common.admin_addr).await?),
            false => None,
        };
        metric_names::describe();
        let main =
            database::connect_and_migrate(settings.common.database_url.expose(), POOL_CONNECTIONS, "DATABASE_URL")
                .await?;
        let analytics = if settings.separate_analytics_database() {
            // Every migration, so that offsets, members and dead letters live beside the statistics.
            database::connect_and_migrate(settings.analytics_url(), POOL_CONNECTIONS, "ANALYTICS_DATABASE_URL").await?
        } else {
            main.clone()
        };
        let mut consumers = Vec::new();
        for registration in registry::selected(settings) {
            let consumer =
                (registration.build)(settings).with_context(|| format!("configuring {}", registration.group.name()))?;
            consumers.push(consumer);
        }
        let wakeups = Wakeups::new(&settings.kafka.topic);
        // The groups of one instance share what they fetch and decode: a group behind
        // another reads what that one fetched (a window of a few fetches' worth per
        // partition covers a group a fetch or two behind) and takes what it decoded.
        let several_groups = consumers.len() > 1;
        let recent = several_groups.then(|| {
            let fetch_bytes = usize::try_from(settings.fetch_max_bytes).unwrap_or(usize::MAX);
            RecentRecords::new(fetch_bytes.saturating_mul(RECENT_FETCHES_KEPT))
        });
        let decoded = several_groups.then(|| DecodedEvents::new(DECODED_EVENTS_KEPT));
        if several_groups {
            // From zero, so that a dashboard shows the sharing before the first share.
            for consumer in &consumers {
                metrics::counter!(metric_names::SHARED_FETCHES, "group" => consumer.group().name()).increment(0);
            }
        }
        Ok(Self {
            settings: settings.clone(),
            main,
            analytics,
            consumers,
            admin_listener,
            instance_id: Uuid::new_v4(),
            wakeups,
            recent,
            decoded,
        })
    }

    pub fn admin_port(&self) -> u16 {
        self.admin_listener.as_ref().and_then(|l| l.local_addr().ok()).map(|a| a.port()).unwrap_or_default()
    }

    /// The configured groups.
    pub fn groups(&self) -> Vec<Group> {
        self.consumers.iter().map(|c| c.group()).collect()
    }

    /// `group`'s effect; an error when this process does not run it.
    pub fn consumer(&self, group: Group) -> anyhow::Result<Arc<dyn Consumer>> {
        let found = self.consumers.iter().find(|c| c.group() == group);
        found.cloned().with_context(|| format!("the group {} is not enabled", group.name()))
    }

    /// The database of `consumer`'s offsets, members and dead letters.
    fn store(&self, consumer: &dyn Consumer) -> &PgPool {
        match consumer.database() {
            Database::Main => &self.main,
            Database::Analytics => &self.analytics,
        }
    }

    fn store_url(&self, consumer: &dyn Consumer) -> &str {
        match consumer.database() {
            Database::Main => self.settings.common.database_url.expose(),
            Database::Analytics => self.settings.analytics_url(),
        }
    }

    /// What `group`'s workers share; tests step workers built from it.
    pub fn group_context(
        &self,
        group: Group,
        kafka: Arc<rskafka::client::Client>,
    ) -> anyhow::Result<Arc<GroupContext>> {
        let consumer = self.consumer(group)?;
        Ok(Arc::new(GroupContext {
            group,
            topic: self.settings.kafka.topic.clone(),
            store_url: with_application_name(self.store_url(&*consumer), self.instance_id),
            store: self.store(&*consumer).clone(),
            kafka,
            brokers: self.settings.kafka.brokers.clone(),
            settings: WorkerSettings {
                fetch_max_bytes: self.settings.fetch_max_bytes,
                fetch_max_wait: self.settings.fetch_max_wait,
                poll_interval: consumer.poll_interval(),
                idle_poll_max: self.settings.idle_poll_max,
                commit_interval: match consumer.delivery() {
                    Delivery::AtLeastOnce { commit_interval } => commit_interval,
                    Delivery::ExactlyOnce => Duration::ZERO,
                },
                max_attempts: self.settings.max_attempts,
                backoff: self.settings.backoff(),
                rebalance_interval: self.settings.rebalance_interval,
                role_loss_timeout: self.settings.role_loss_timeout,
            },
            consumer,
            wakeups: self.wakeups.clone(),
            recent: self.recent.clone(),
            decoded: self.decoded.clone(),
        }))
    }

    async fn readiness(&self) -> Readiness {
        let (postgres, kafka) =
            tokio::join!(database::answers(&self.main), kafka::answers(&self.settings.kafka.brokers, CLIENT_ID));
        let mut readiness = Readiness::default().with("postgres", postgres).with("kafka", kafka);
        if self.settings.separate_analytics_database() {
            readiness = readiness.with("analytics_postgres", database::answers(&self.analytics).await);
        }
        for consumer in &self.consumers {
            if let Some((dependency, up)) = consumer.readiness().await {
                readiness = readiness.with(dependency, up);
            }
        }
        readiness
    }

    /// Consumes with every configured group until `shutdown` resolves, then stops the
    /// workers (in-flight batches roll back) and the admin port.
    pub async fn run_until(mut self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let stop = shutdown::token_cancelled_by(shutdown);
        let listener = self.admin_listener.take().context("the admin port is not bound")?;
        let this = Arc::new(self);
        let readiness_app = this.clone();
        let readiness: ReadinessCheck = Arc::new(move || {
            let app = readiness_app.clone();
            Box::pin(async move { app.readiness().await })
        });
        let admin = tokio::spawn(admin::serve(listener, readiness, stop.clone().cancelled_owned()));
        tracing::info!(instance_id = %this.instance_id, groups = ?this.groups(), "rsvp-consumers starting");
        let mut backoff = this.settings.backoff();
        let kafka = kafka::connect_until_shutdown(&this.settings.kafka.brokers, CLIENT_ID, &mut backoff, &stop).await;
        if let Some(kafka) = kafka {
            let kafka = Arc::new(kafka);
            let mut runners = Vec::new();
            // The relay notifies on the database of the outbox, the main one.
            let (wakeups, pool) = (this.wakeups.clone(), this.main.clone());
            runners.push(tokio::spawn(wakeup::listen(wakeups, pool, this.settings.backoff(), stop.clone())));
            for consumer in &this.consumers {
                let store = this.store(&**consumer).clone();
                if let Some(upkeep) = consumer.clone().maintenance(store, stop.clone()) {
                    runners.push(tokio::spawn(upkeep));
                }
                let runner = GroupRunner::new(this.group_context(consumer.group(), kafka.clone())?, this.instance_id);
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
        for consumer in &self.consumers {
            letters.extend(dlq::list(self.store(&**consumer), consumer.group(), all).await?);
        }
        Ok(letters)
    }

    /// `status`: every configured group's partitions, owners, offsets and lag.
    pub async fn status(&self) -> anyhow::Result<Vec<GroupStatus>> {
        let kafka = kafka::connect(&self.settings.kafka.brokers, status::CLIENT_ID, Duration::from_secs(10)).await?;
        let mut groups = Vec::new();
        for consumer in &self.consumers {
            groups.push(
                status::collect(self.store(&**consumer), &kafka, consumer.group(), &self.settings.kafka.topic).await?,
            );
        }
        Ok(groups)
    }

    /// `dlq redrive`: each pending dead letter (or only `id`) of the configured groups, once.
    pub async fn redrive(&self, id: Option<i64>) -> anyhow::Result<Vec<dlq::Redriven>> {
        let mut results = Vec::new();
        for consumer in &self.consumers {
            results.extend(dlq::redrive(self.store(&**consumer), &**consumer, id).await?);
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
