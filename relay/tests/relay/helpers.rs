//! Test support: outbox rows shaped like the api's, a relay in-process or as the real
//! binary, reading the topic back, scraping metrics, and bounded waits.

use std::{collections::BTreeMap, future::Future, process::Stdio, time::Duration};

use chrono::Utc;
use rskafka::client::{partition::UnknownTopicHandling, ClientBuilder};
use rsvp_contract::{runtime::database::MIGRATOR, testing, CloudEvent, EventType, RsvpData, RsvpStatus};
use rsvp_relay::{
    config::Settings,
    leader::{self, Candidate},
    startup::Application,
    StepOutcome, Worker,
};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

pub(crate) struct TestDb {
    pub(crate) pool: PgPool,
    pub(crate) url: String,
}

pub(crate) async fn fresh_db() -> TestDb {
    let (pool, url) = testing::fresh_database(&MIGRATOR).await;
    TestDb { pool, url }
}

/// Settings for tests: short intervals and timeouts, a free admin port.
pub(crate) fn settings(db: &TestDb, broker: &str) -> Settings {
    let mut settings = Settings::defaults(&db.url, broker);
    settings.common.admin_addr = "127.0.0.1:0".parse().unwrap();
    settings.poll_interval = Duration::from_millis(500);
    // As often as the observer looked before it had a setting of its own.
    settings.observe_interval = Duration::from_millis(500);
    settings.leader_poll_interval = Duration::from_millis(500);
    settings.kafka_timeout = Duration::from_secs(2);
    settings.max_backoff = Duration::from_secs(1);
    settings
}

/// One outbox row as the test wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Written {
    pub(crate) id: i64,
    pub(crate) key: String,
    pub(crate) message_id: Uuid,
    pub(crate) version: i64,
}

/// Appends an outbox row for event `event_id` exactly as the api does.
pub(crate) async fn append(tx: &mut Transaction<'_, Postgres>, event_id: Uuid, version: i64) -> Written {
    append_created_at(tx, event_id, version, None).await
}

/// [`append`], with `created_at` set in the past (retention tests).
pub(crate) async fn append_created_at(
    tx: &mut Transaction<'_, Postgres>,
    event_id: Uuid,
    version: i64,
    created_at: Option<chrono::DateTime<Utc>>,
) -> Written {
    let now = Utc::now();
    let data = RsvpData {
        id: Uuid::now_v7(),
        event_id,
        name: "Ada".into(),
        email: "ada@example.com".into(),
        status: RsvpStatus::Going,
        guests: 1,
        version,
        created_at: now,
        updated_at: now,
        previous_status: None,
    };
    let event = CloudEvent::new(EventType::RsvpCreated, data, now);
    let id: i64 = sqlx::query_scalar(
        "insert into outbox
            (aggregate_type, aggregate_id, kafka_key, event_type, message_id, rsvp_version, payload, traceparent, created_at)
         values ('rsvp', $1, $2, $3, $4, $5, $6, $7, coalesce($8, clock_timestamp()))
         returning id",
    )
    .bind(event.data.id)
    .bind(event.kafka_key())
    .bind(event.event_type.as_str())
    .bind(event.id)
    .bind(version)
    .bind(serde_json::to_value(&event).unwrap())
    .bind("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    .bind(created_at)
    .fetch_one(&mut **tx)
    .await
    .expect("insert an outbox row");
    Written { id, key: event_id.to_string(), message_id: event.id, version }
}

/// Commits `per_key` rows for each of `keys` new events, one transaction per row,
/// keys interleaved; returns them in commit order.
pub(crate) async fn write_rows(pool: &PgPool, keys: usize, per_key: usize) -> Vec<Written> {
    let events: Vec<Uuid> = (0..keys).map(|_| Uuid::now_v7()).collect();
    let mut written = Vec::new();
    for version in 1..=per_key as i64 {
        for event in &events {
            let mut tx = pool.begin().await.unwrap();
            written.push(append(&mut tx, *event, version).await);
            tx.commit().await.unwrap();
        }
    }
    written
}

/// A worker holding the leader lock, for step-by-step tests.
pub(crate) async fn leader_worker(settings: &Settings) -> Worker {
    let options = leader::connect_options(settings.common.database_url.expose()).unwrap();
    let candidate = Candidate::connect(&options, &settings.kafka.topic, settings.role_loss_timeout).await.unwrap();
    let leader = candidate.try_lead().await.unwrap().ok().expect("no other relay leads");
    let pool = rsvp_relay::pool::connect(settings).await.unwrap();
    Worker::start(leader, settings.clone(), pool).await.unwrap()
}

/// Steps until `expected` rows were published. Bounded retries, because a short
/// transaction of a test running in parallel holds the cluster-wide xmin back for a
/// moment, and the relay rightly waits for it.
pub(crate) async fn drain(worker: &mut Worker, expected: usize) -> usize {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut total = 0;
    while total < expected {
        match worker.step().await.expect("step") {
            StepOutcome::Published { rows } => total += rows,
            StepOutcome::Idle => {
                assert!(tokio::time::Instant::now() < deadline, "published {total} of {expected} rows");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    assert_eq!(worker.step().await.expect("step"), StepOutcome::Idle, "nothing beyond the expected rows");
    total
}

/// The in-process relay (`run` with its admin port), stopped on drop.
pub(crate) struct RunningRelay {
    pub(crate) admin_port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningRelay {
    pub(crate) async fn start(settings: Settings) -> Self {
        let app = Application::build(settings).await.expect("build the relay");
        let admin_port = app.admin_port();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until(async move {
            let _ = stopped.await;
        }));
        Self { admin_port, stop: Some(stop), task }
    }

    pub(crate) async fn stop(mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
        let task = &mut self.task;
        tokio::time::timeout(Duration::from_secs(15), task).await.expect("the relay stops").unwrap().unwrap();
    }
}

impl Drop for RunningRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The real `rsvp-relay` binary; killed with SIGKILL on drop.
pub(crate) struct RelayProcess {
    pub(crate) child: tokio::process::Child,
    pub(crate) admin_port: u16,
}

impl RelayProcess {
    pub(crate) fn spawn(settings: &Settings, extra_env: &[(&str, &str)]) -> Self {
        let admin_port = testing::free_port();
        // `RSVP_RELAY_BIN` runs another build (say, an older commit's) under the same tests.
        let binary = std::env::var("RSVP_RELAY_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_rsvp-relay").to_owned());
        let mut command = tokio::process::Command::new(binary);
        command
            .arg("run")
            .env("DATABASE_URL", settings.common.database_url.expose())
            .env("KAFKA_BROKERS", settings.kafka.brokers.join(","))
            .env("KAFKA_TOPIC", &settings.kafka.topic)
            .env("RELAY_POLL_INTERVAL", humantime::format_duration(settings.poll_interval).to_string())
            .env("RELAY_LEADER_POLL_INTERVAL", humantime::format_duration(settings.leader_poll_interval).to_string())
            .env("RELAY_IDLE_POLL_MAX", humantime::format_duration(settings.idle_poll_max).to_string())
            .env("RELAY_OBSERVE_INTERVAL", humantime::format_duration(settings.observe_interval).to_string())
            .env("RELAY_KAFKA_TIMEOUT", humantime::format_duration(settings.kafka_timeout).to_string())
            .env("RELAY_MAX_BACKOFF", humantime::format_duration(settings.max_backoff).to_string())
            .env("RELAY_BATCH_ROWS", settings.batch_rows.to_string())
            .env("ROLE_LOSS_TIMEOUT", humantime::format_duration(settings.role_loss_timeout).to_string())
            .env("ADMIN_ADDR", format!("127.0.0.1:{admin_port}"))
            .env("RUST_LOG", "warn,rsvp_relay=info")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for (key, value) in extra_env {
            command.env(key, value);
        }
        let child = command.spawn().expect("start rsvp-relay");
        Self { child, admin_port }
    }

    /// SIGKILL: no shutdown code runs.
    pub(crate) async fn kill9(&mut self) {
        self.child.start_kill().expect("kill -9 rsvp-relay");
        self.child.wait().await.expect("reap rsvp-relay");
    }
}

/// Commits rows one transaction each, round-robin over `keys` events, until `stop`
/// is set; returns them in commit order.
pub(crate) fn steady_writer(
    pool: PgPool,
    keys: usize,
    pause: Duration,
) -> (std::sync::Arc<std::sync::atomic::AtomicBool>, tokio::task::JoinHandle<Vec<Written>>) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = stop.clone();
    let task = tokio::spawn(async move {
        let events: Vec<Uuid> = (0..keys).map(|_| Uuid::now_v7()).collect();
        let mut written = Vec::new();
        let mut version = 0;
        while !stopped.load(std::sync::atomic::Ordering::SeqCst) {
            version += 1;
            for event in &events {
                let mut tx = pool.begin().await.unwrap();
                written.push(append(&mut tx, *event, version).await);
                tx.commit().await.unwrap();
            }
            tokio::time::sleep(pause).await;
        }
        written
    });
    (stop, task)
}

/// Stops a [`steady_writer`] and returns what it wrote.
pub(crate) async fn stop_writer(
    writer: (std::sync::Arc<std::sync::atomic::AtomicBool>, tokio::task::JoinHandle<Vec<Written>>),
) -> Vec<Written> {
    writer.0.store(true, std::sync::atomic::Ordering::SeqCst);
    writer.1.await.unwrap()
}

/// Checks the topic against what was written: every row present, duplicates only
/// of rows without a receipt in `acknowledged`, each row's first copy in per-key
/// commit order. Returns the number of duplicate records.
pub(crate) fn assert_nothing_lost(
    records: &[TopicRecord],
    written: &[Written],
    acknowledged: &BTreeMap<i64, (i32, i64)>,
) -> usize {
    let mut copies: BTreeMap<&str, Vec<&TopicRecord>> = BTreeMap::new();
    for record in records {
        copies.entry(record.ce_id()).or_default().push(record);
    }
    let mut duplicates = 0;
    let mut last_first_offset: BTreeMap<&str, i64> = BTreeMap::new();
    for row in written {
        let found =
            copies.get(row.message_id.to_string().as_str()).unwrap_or_else(|| panic!("row {} was lost", row.id));
        if found.len() > 1 {
            assert!(
                !acknowledged.contains_key(&row.id),
                "row {} was acknowledged yet published {} times",
                row.id,
                found.len()
            );
            duplicates += found.len() - 1;
        }
        let first = found.iter().map(|r| r.offset).min().unwrap();
        assert!(
            last_first_offset.get(row.key.as_str()).is_none_or(|o| *o < first),
            "row {} out of per-key order",
            row.id
        );
        last_first_offset.insert(&row.key, first);
    }
    assert_eq!(copies.len(), written.len(), "nothing on the topic that was not written");
    duplicates
}

/// Runs the binary with a subcommand and returns (exit success, stdout).
pub(crate) async fn run_command(settings: &Settings, args: &[&str]) -> (bool, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_rsvp-relay"))
        .args(args)
        .env("DATABASE_URL", settings.common.database_url.expose())
        .env("KAFKA_BROKERS", settings.kafka.brokers.join(","))
        .env("KAFKA_TOPIC", &settings.kafka.topic)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .expect("run rsvp-relay");
    (output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Polls `check` every 50ms until it returns `Some`, or panics after `within`.
pub(crate) async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out after {within:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of an unlabelled metric (or the sum over its labels) on the admin port.
pub(crate) async fn scrape(admin_port: u16, name: &str) -> Option<f64> {
    let body = reqwest::get(format!("http://127.0.0.1:{admin_port}/metrics")).await.ok()?.text().await.ok()?;
    let values: Vec<f64> = body
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| line.split([' ', '{']).next() == Some(name))
        .filter_map(|line| line.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// Receipts as (outbox id, partition, offset).
pub(crate) async fn receipts(pool: &PgPool) -> BTreeMap<i64, (i32, i64)> {
    sqlx::query_as::<_, (i64, i32, i64)>(
        r#"select distinct on (outbox_id) outbox_id, partition, "offset" from relay_row_receipts order by outbox_id, receipt_id"#,
    )
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .map(|(id, p, o)| (id, (p, o)))
        .collect()
}

/// The outbox id the cursor reached.
pub(crate) async fn cursor_id(pool: &PgPool) -> i64 {
    sqlx::query_scalar("select coalesce((select id from relay_cursors where name = 'rsvp-events'), 0)")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Waits until every committed row is behind the cursor.
pub(crate) async fn wait_until_drained(pool: &PgPool, within: Duration) {
    eventually(within, "the relay to publish every row", || async {
        let (max_id, cursor): (Option<i64>, i64) = sqlx::query_as(
            "select (select max(id) from outbox), coalesce((select id from relay_cursors where name = 'rsvp-events'), 0)",
        )
        .fetch_one(pool)
        .await
        .ok()?;
        (max_id.unwrap_or(0) == cursor || max_id.is_none()).then_some(())
    })
    .await;
}

/// A record read back from the topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TopicRecord {
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) key: String,
    pub(crate) headers: BTreeMap<String, String>,
    pub(crate) value: String,
}

impl TopicRecord {
    pub(crate) fn ce_id(&self) -> &str {
        &self.headers["ce_id"]
    }
}

/// Every record of every partition, read with rskafka from the earliest offset
/// (a batch start, so Tansu's mid-batch fetch quirk cannot hide records).
pub(crate) async fn read_topic(broker: &str, topic: &str) -> Vec<TopicRecord> {
    let client = ClientBuilder::new(vec![broker.to_owned()]).build().await.expect("connect to the broker");
    let partitions = client
        .list_topics()
        .await
        .unwrap()
        .into_iter()
        .find(|t| t.name == topic)
        .map(|t| t.partitions.len() as i32)
        .unwrap_or(0);
    let mut out = Vec::new();
    for partition in 0..partitions {
        let pc = client.partition_client(topic, partition, UnknownTopicHandling::Retry).await.unwrap();
        let mut offset = 0;
        loop {
            let (records, high_watermark) = pc.fetch_records(offset, 1..8 * 1024 * 1024, 100).await.unwrap();
            let Some(last) = records.last().map(|r| r.offset) else { break };
            for r in records {
                out.push(TopicRecord {
                    partition,
                    offset: r.offset,
                    key: String::from_utf8(r.record.key.unwrap_or_default()).unwrap(),
                    headers: r.record.headers.into_iter().map(|(k, v)| (k, String::from_utf8(v).unwrap())).collect(),
                    value: String::from_utf8(r.record.value.unwrap_or_default()).unwrap(),
                });
            }
            offset = last + 1;
            if offset >= high_watermark {
                break;
            }
        }
    }
    out
}

/// The third-party client: `$RSVP_PYTHON` (default the project venv) running
/// confluent-kafka. Returns what it printed, one JSON value per line.
pub(crate) async fn confluent_kafka(args: &[&str]) -> Vec<serde_json::Value> {
    let python = std::env::var("RSVP_PYTHON").unwrap_or_else(|_| {
        format!("{}/.cache/rsvp-outbox/venv/bin/python", std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
    });
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/relay/confluent_check.py");
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(&python).arg(script).args(args).kill_on_drop(true).output(),
    )
    .await
    .expect("confluent-kafka finishes within 60s")
    .unwrap_or_else(|e| panic!("cannot run {python} (set RSVP_PYTHON to a python with confluent-kafka): {e}"));
    assert!(output.status.success(), "confluent-kafka failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}
