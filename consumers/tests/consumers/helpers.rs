//! Test support: a private broker and database per test, the real api, a stand-in
//! relay that publishes outbox rows the way `rsvp-relay` does, and the consumers as
//! a library or as the real binary.

use std::{
    collections::{BTreeMap, HashMap},
    future::Future,
    sync::Arc,
    time::Duration,
};

use chrono::{DateTime, Utc};
use clap::Parser;
use rskafka::{
    client::{
        partition::{Compression, PartitionClient, UnknownTopicHandling},
        Client, ClientBuilder,
    },
    record::Record,
};
pub(crate) use rsvp_consumers::{
    analytics::GROUP as ANALYTICS, cache::GROUP as CACHE, notifications::GROUP as NOTIFICATIONS,
};
use rsvp_consumers::{
    config::Cli,
    group::Group,
    registry,
    startup::Application,
    worker::{PartitionWorker, StepOutcome},
};
use rsvp_contract::{
    outbox_record::{OutboxColumns, OutboxMessage},
    partitioner::partition_for_key,
    runtime::database::MIGRATOR,
    testing::{free_port, fresh_database, Broker},
};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

pub(crate) const TOPIC: &str = "rsvp-events";
pub(crate) const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// Polls `condition` until it holds; panics with `what` after `within`.
pub(crate) async fn wait_until<F, Fut>(within: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if condition().await {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out after {within:?} waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every registered group, as a process without `--group` runs them.
pub(crate) fn all_groups() -> Vec<Group> {
    registry::GROUPS.iter().map(|r| r.group).collect()
}

/// A broker with the topic, and a migrated database, private to one test.
pub(crate) struct TestEnv {
    pub(crate) broker: Broker,
    pub(crate) db: PgPool,
    pub(crate) db_url: String,
    pub(crate) kafka: Arc<Client>,
    pub(crate) partitions: i32,
    producers: tokio::sync::Mutex<HashMap<i32, PartitionClient>>,
    outbox_cursor: tokio::sync::Mutex<i64>,
}

impl TestEnv {
    pub(crate) async fn start(partitions: i32) -> Self {
        Self::start_with(Broker::start().await, partitions).await
    }

    /// With a broker the test started itself (say, one behind a counting proxy).
    pub(crate) async fn start_with(broker: Broker, partitions: i32) -> Self {
        let (db, db_url) = fresh_database(&MIGRATOR).await;
        let kafka = ClientBuilder::new(vec![broker.address()]).build().await.expect("connect to the broker");
        kafka.controller_client().unwrap().create_topic(TOPIC, partitions, 1, 5_000).await.expect("create the topic");
        Self {
            broker,
            db,
            db_url,
            kafka: Arc::new(kafka),
            partitions,
            producers: Default::default(),
            outbox_cursor: tokio::sync::Mutex::new(0),
        }
    }

    /// The consumers' settings for this environment; `extra` are more flags.
    pub(crate) fn settings(&self, extra: &[&str]) -> rsvp_consumers::config::Settings {
        let brokers = self.broker.address();
        let mut args = vec![
            "rsvp-consumers",
            "--database-url",
            &self.db_url,
            "--kafka-brokers",
            &brokers,
            "--topic",
            TOPIC,
            "--admin-addr",
            "127.0.0.1:0",
        ];
        if !extra.contains(&"--redis-url") {
            args.extend(["--redis-url", "redis://127.0.0.1:6379"]);
        }
        args.extend_from_slice(extra);
        Cli::try_parse_from(args).expect("valid test settings").settings
    }

    /// Environment for the real binary.
    pub(crate) fn binary_env(&self, admin_port: u16) -> Vec<(&'static str, String)> {
        vec![
            ("DATABASE_URL", self.db_url.clone()),
            ("KAFKA_BROKERS", self.broker.address()),
            ("KAFKA_TOPIC", TOPIC.to_owned()),
            ("ADMIN_ADDR", format!("127.0.0.1:{admin_port}")),
            ("REDIS_URL", "redis://127.0.0.1:6379".to_owned()),
            ("RUST_LOG", "warn,rsvp_consumers=info".to_owned()),
            // The takeover bounds the ownership tests assert were set with 1s, the
            // default before idle cost mattered; the default is 2s now.
            ("REBALANCE_INTERVAL", "1s".to_owned()),
        ]
    }

    /// The partition the relay gives `key`.
    pub(crate) fn partition_for(&self, key: &str) -> i32 {
        partition_for_key(key.as_bytes(), self.partitions)
    }

    pub(crate) async fn produce(&self, partition: i32, records: Vec<Record>) -> Vec<i64> {
        let mut producers = self.producers.lock().await;
        if let std::collections::hash_map::Entry::Vacant(entry) = producers.entry(partition) {
            let client = self.kafka.partition_client(TOPIC, partition, UnknownTopicHandling::Retry).await.unwrap();
            entry.insert(client);
        }
        producers[&partition].produce(records, Compression::NoCompression).await.expect("produce")
    }

    /// What the relay does: publishes every outbox row after the cursor through the
    /// relay's own row-to-record mapping, one batch per partition, in id order (not
    /// in commit order: the tests' writes do not overlap). Returns how many rows it
    /// published.
    pub(crate) async fn relay_outbox(&self) -> usize {
        let mut cursor = self.outbox_cursor.lock().await;
        type OutboxRow = (i64, String, String, i64, Uuid, String, Option<String>, DateTime<Utc>);
        let rows: Vec<OutboxRow> = sqlx::query_as(
            "select id, kafka_key, payload::text, rsvp_version, message_id, event_type, traceparent, created_at
               from outbox where id > $1 order by id",
        )
        .bind(*cursor)
        .fetch_all(&self.db)
        .await
        .unwrap();
        let Some(last) = rows.last() else { return 0 };
        *cursor = last.0;
        drop(cursor);
        let count = rows.len();
        let mut batches: BTreeMap<i32, Vec<Record>> = BTreeMap::new();
        for (_, kafka_key, payload, rsvp_version, message_id, event_type, traceparent, created_at) in rows {
            let columns =
                OutboxColumns { kafka_key, message_id, event_type, rsvp_version, payload, traceparent, created_at };
            let message = OutboxMessage::from_columns(columns);
            batches.entry(message.partition(self.partitions)).or_default().push(message.to_record());
        }
        for (partition, records) in batches {
            self.produce(partition, records).await;
        }
        count
    }

    /// Publishes every outbox row again, as `rsvp-relay replay` does: same ce_ids, new offsets.
    pub(crate) async fn replay_outbox(&self) -> usize {
        let saved = *self.outbox_cursor.lock().await;
        *self.outbox_cursor.lock().await = 0;
        let count = self.relay_outbox().await;
        let mut cursor = self.outbox_cursor.lock().await;
        *cursor = (*cursor).max(saved);
        count
    }

    /// Sum of the high watermarks (records on the topic).
    pub(crate) async fn stored_offsets(&self, group: Group) -> i64 {
        sqlx::query_scalar::<_, Option<i64>>(
            "select sum(next_offset)::bigint from consumer_offsets where group_name = $1",
        )
        .bind(group.name())
        .fetch_one(&self.db)
        .await
        .unwrap()
        .unwrap_or(0)
    }

    pub(crate) async fn records_on_topic(&self) -> i64 {
        let mut total = 0;
        for partition in 0..self.partitions {
            let client = self.kafka.partition_client(TOPIC, partition, UnknownTopicHandling::Retry).await.unwrap();
            let (_, high_watermark) = client.fetch_records(0, 1..1_000_000, 10).await.unwrap();
            total += high_watermark;
        }
        total
    }
}

/// The record the relay makes of an outbox row with these columns, at the current time.
pub(crate) fn outbox_record(key: &str, payload: &Value, version: i64, message_id: Uuid, event_type: &str) -> Record {
    let columns = OutboxColumns {
        kafka_key: key.to_owned(),
        message_id,
        event_type: event_type.to_owned(),
        rsvp_version: version,
        payload: payload.to_string(),
        traceparent: None,
        created_at: Utc::now(),
    };
    OutboxMessage::from_columns(columns).to_record()
}

/// The consumers as a library, for stepping partitions by hand.
pub(crate) struct Stepper {
    pub(crate) app: Application,
}

impl Stepper {
    pub(crate) async fn build(env: &TestEnv, extra: &[&str]) -> Self {
        Self { app: Application::build(&env.settings(extra), false).await.expect("build the consumers") }
    }

    /// Takes every partition of `group` and steps each until it is caught up.
    pub(crate) async fn drain(&self, env: &TestEnv, group: Group) -> usize {
        let ctx = self.app.group_context(group, env.kafka.clone()).unwrap();
        let mut processed = 0;
        for partition in 0..env.partitions {
            let mut worker = PartitionWorker::acquire(ctx.clone(), partition)
                .await
                .expect("acquire")
                .expect("no other instance owns the partition");
            while let StepOutcome::Processed { records } = worker.step().await.expect("step") {
                processed += records;
            }
            worker.release().await;
        }
        processed
    }
}

/// The real api on free ports, on the test's database.
pub(crate) struct Api {
    pub(crate) url: String,
    pub(crate) http: reqwest::Client,
}

impl Api {
    pub(crate) async fn spawn(env: &TestEnv) -> Self {
        Self::spawn_with(env, &[]).await
    }

    /// The real api on the test's database, with `extra` flags (coalescing settings).
    pub(crate) async fn spawn_with(env: &TestEnv, extra: &[&str]) -> Self {
        let mut args = vec![
            "rsvp-api",
            "--database-url",
            &env.db_url,
            "--admin-token",
            ADMIN_TOKEN,
            "--api-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
            "--redis-url",
            "redis://127.0.0.1:6379",
        ];
        args.extend_from_slice(extra);
        let settings = rsvp_api::config::Settings::try_parse_from(args).unwrap();
        let app = rsvp_api::startup::Application::build(&settings).await.expect("build the api");
        let url = format!("http://127.0.0.1:{}", app.api_port());
        tokio::spawn(app.run_until(std::future::pending()));
        Self { url, http: reqwest::Client::new() }
    }

    pub(crate) async fn create_event(&self, capacity: Option<i64>) -> Uuid {
        let body = json!({ "title": "Rust meetup", "starts_at": "2031-01-31T18:00:00Z", "capacity": capacity });
        let response =
            self.http.post(format!("{}/events", self.url)).bearer_auth(ADMIN_TOKEN).json(&body).send().await.unwrap();
        assert_eq!(response.status(), 201, "create event: {}", response.text().await.unwrap());
        response.json::<Value>().await.unwrap()["id"].as_str().unwrap().parse().unwrap()
    }

    /// Creates an rsvp; returns its id and token.
    pub(crate) async fn rsvp(&self, event: Uuid, email: &str, status: &str, guests: i64) -> (Uuid, String) {
        let body = json!({ "name": "Guest", "email": email, "status": status, "guests": guests });
        let response = self.http.post(format!("{}/events/{event}/rsvps", self.url)).json(&body).send().await.unwrap();
        assert_eq!(response.status(), 201, "create rsvp: {}", response.text().await.unwrap());
        let created: Value = response.json().await.unwrap();
        (created["id"].as_str().unwrap().parse().unwrap(), created["token"].as_str().unwrap().to_owned())
    }

    pub(crate) async fn update(&self, id: Uuid, token: &str, changes: Value) {
        let response =
            self.http.patch(format!("{}/rsvps/{id}", self.url)).bearer_auth(token).json(&changes).send().await.unwrap();
        assert_eq!(response.status(), 200, "update rsvp: {}", response.text().await.unwrap());
    }

    pub(crate) async fn cancel(&self, token: &str) {
        let response =
            self.http.post(format!("{}/rsvps/cancel", self.url)).json(&json!({ "token": token })).send().await.unwrap();
        assert_eq!(response.status(), 200, "cancel rsvp: {}", response.text().await.unwrap());
    }

    pub(crate) async fn delete(&self, id: Uuid) {
        let response =
            self.http.delete(format!("{}/rsvps/{id}", self.url)).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
        assert_eq!(response.status(), 204, "delete rsvp: {}", response.text().await.unwrap());
    }

    pub(crate) async fn get(&self, path: &str) -> Value {
        let response = self.http.get(format!("{}{path}", self.url)).send().await.unwrap();
        assert_eq!(response.status(), 200, "GET {path}");
        response.json().await.unwrap()
    }

    /// Every rsvp of `event` as the public attendee list shows it, page after page.
    pub(crate) async fn attendees(&self, event: Uuid) -> Vec<Value> {
        let (mut rsvps, mut cursor) = (Vec::new(), None::<String>);
        loop {
            let after = cursor.map(|c| format!("&cursor={c}")).unwrap_or_default();
            let page = self.get(&format!("/events/{event}/rsvps?limit=200{after}")).await;
            rsvps.extend(page["items"].as_array().expect("a page has items").iter().cloned());
            match page["next"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return rsvps,
            }
        }
    }

    /// A mixed workload of all four event types on `event`: `n` rsvps, then updates
    /// of status and guests, cancels and deletes (of going rsvps with guests too).
    pub(crate) async fn mixed_workload(&self, event: Uuid, n: usize) {
        let statuses = ["going", "maybe", "declined"];
        let mut rsvps = Vec::new();
        for i in 0..n {
            let guests = i64::try_from(i % 4).unwrap();
            rsvps.push(self.rsvp(event, &format!("guest{i}-{event}@example.com"), statuses[i % 3], guests).await);
        }
        for (i, (id, token)) in rsvps.iter().enumerate() {
            match i % 6 {
                0 => self.update(*id, token, json!({ "status": statuses[(i + 1) % 3] })).await,
                1 => self.update(*id, token, json!({ "guests": 3 })).await,
                2 => self.cancel(token).await,
                3 => self.delete(*id).await,
                4 => {
                    self.update(*id, token, json!({ "status": "going", "guests": 2 })).await;
                    self.delete(*id).await;
                }
                _ => {
                    self.update(*id, token, json!({ "status": "going", "guests": 1 })).await;
                    self.cancel(token).await;
                }
            }
        }
    }
}

/// Counts and guests from the rsvps table, and from the statistics.
pub(crate) async fn truth_and_stats(db: &PgPool, event: Uuid) -> (Vec<i64>, Vec<i64>) {
    let truth: (i64, i64, i64, i64, i64) = sqlx::query_as(
        "select count(*) filter (where status = 'going'), count(*) filter (where status = 'maybe'),
                count(*) filter (where status = 'declined'), count(*) filter (where status = 'cancelled'),
                coalesce(sum(guests) filter (where status = 'going'), 0)::bigint
         from rsvps where event_id = $1",
    )
    .bind(event)
    .fetch_one(db)
    .await
    .unwrap();
    let stats: Option<(i64, i64, i64, i64, i64)> = sqlx::query_as(
        "select going, maybe, declined, cancelled, guests_going from analytics.event_stats where event_id = $1",
    )
    .bind(event)
    .fetch_optional(db)
    .await
    .unwrap();
    let stats = stats.unwrap_or_default();
    (vec![truth.0, truth.1, truth.2, truth.3, truth.4], vec![stats.0, stats.1, stats.2, stats.3, stats.4])
}

/// The totals per type, from the outbox and from the statistics, plus the changes per hour.
pub(crate) async fn totals(db: &PgPool, event: Uuid) -> (Vec<i64>, Vec<i64>) {
    let outbox: (i64, i64, i64, i64, i64) = sqlx::query_as(
        "select count(*) filter (where event_type = 'RSVP_CREATED'), count(*) filter (where event_type = 'RSVP_UPDATED'),
                count(*) filter (where event_type = 'RSVP_CANCELLED'), count(*) filter (where event_type = 'RSVP_DELETED'),
                count(*)
         from outbox where kafka_key = $1",
    )
    .bind(event.to_string())
    .fetch_one(db)
    .await
    .unwrap();
    let stats: (i64, i64, i64, i64, i64) = sqlx::query_as(
        "select s.created_total, s.updated_total, s.cancelled_total, s.deleted_total,
                (select coalesce(sum(changes), 0)::bigint from analytics.rsvps_per_hour h where h.event_id = s.event_id)
         from analytics.event_stats s where event_id = $1",
    )
    .bind(event)
    .fetch_one(db)
    .await
    .unwrap();
    (vec![outbox.0, outbox.1, outbox.2, outbox.3, outbox.4], vec![stats.0, stats.1, stats.2, stats.3, stats.4])
}

/// The real `rsvp-consumers` binary.
pub(crate) struct ConsumerProcess {
    pub(crate) child: tokio::process::Child,
    pub(crate) admin_port: u16,
}

impl ConsumerProcess {
    pub(crate) fn spawn(env: &TestEnv, args: &[&str]) -> Self {
        let admin_port = free_port();
        // `RSVP_CONSUMERS_BIN` runs another build (say, an older commit's) under the same tests.
        let binary =
            std::env::var("RSVP_CONSUMERS_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_rsvp-consumers").to_owned());
        let child = tokio::process::Command::new(binary)
            .args(args)
            .envs(env.binary_env(admin_port))
            .kill_on_drop(true)
            .spawn()
            .expect("start rsvp-consumers");
        Self { child, admin_port }
    }

    /// SIGKILL: no shutdown, no cleanup.
    pub(crate) async fn kill(&mut self) {
        self.child.start_kill().expect("SIGKILL");
        let _ = self.child.wait().await;
    }

    pub(crate) async fn metrics(&self) -> Option<String> {
        let response = reqwest::get(format!("http://127.0.0.1:{}/metrics", self.admin_port)).await.ok()?;
        response.text().await.ok()
    }

    /// `/readyz`: its status code and body.
    pub(crate) async fn readiness(&self) -> (u16, serde_json::Value) {
        let response = reqwest::get(format!("http://127.0.0.1:{}/readyz", self.admin_port)).await.expect("readyz");
        (response.status().as_u16(), response.json().await.expect("readyz json"))
    }

    /// The value of the metric line starting with `series` (name and labels).
    pub(crate) async fn metric(&self, series: &str) -> Option<f64> {
        let text = self.metrics().await?;
        metric_value(&text, series)
    }
}

pub(crate) fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

/// Runs the consumer binary to completion with `args` (a `dlq` subcommand); returns its stdout.
pub(crate) async fn run_binary(env: &TestEnv, args: &[&str]) -> (bool, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_rsvp-consumers"))
        .args(args)
        .envs(env.binary_env(0))
        .output()
        .await
        .expect("run rsvp-consumers");
    (output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Steps `worker` until it finds nothing new (at most 20 batches).
pub(crate) async fn step_until_caught_up(worker: &mut PartitionWorker) {
    let mut steps = 0;
    while let StepOutcome::Processed { .. } = worker.step().await.expect("step") {
        steps += 1;
        assert!(steps < 20, "never caught up");
    }
}

/// `range` numbers the guests, whose emails must differ per event.
pub(crate) async fn rsvps(api: &Api, env: &TestEnv, event: Uuid, range: std::ops::Range<usize>, one_batch_each: bool) {
    for i in range {
        api.rsvp(event, &format!("guest{i}-{event}@example.com"), ["going", "maybe"][i % 2], (i % 3) as i64).await;
        if one_batch_each {
            env.relay_outbox().await;
        }
    }
    env.relay_outbox().await;
}

/// The broker loses its log (restarted empty, its one-partition topic created again)
/// and the relay refills it with five rsvps to a new event, one batch each, past any
/// offset the tests' first three records left: returns that event.
pub(crate) async fn lose_the_log_and_refill(env: &mut TestEnv, api: &Api) -> Uuid {
    env.broker.restart_empty().await;
    env.kafka.controller_client().unwrap().create_topic(TOPIC, 1, 1, 5_000).await.expect("create the topic again");
    let after = api.create_event(None).await;
    rsvps(api, env, after, 0..5, true).await;
    assert_eq!(env.records_on_topic().await, 5);
    after
}
