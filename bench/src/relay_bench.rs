//! The relay draining a preloaded backlog to broker-acknowledged, next to raw rskafka
//! produce of the same records to the same broker; and the relay's peak RSS.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use rskafka::{
    client::{
        partition::{Compression, UnknownTopicHandling},
        ClientBuilder,
    },
    record::Record,
};
use rsvp_contract::testing::Broker;
use rsvp_relay::outbox::{select_rows, OutboxRow};
use sqlx::PgPool;

use crate::{load::Progress, report::Report, system};

const PARTITIONS: i32 = 6;
/// The relay's default batch: raw produce sends batches of the same size.
const BATCH_ROWS: usize = 1000;

pub(crate) struct RelayBench {
    pub(crate) backlogs: Vec<i64>,
}

/// Writes `rows` api-shaped outbox rows over 1000 event keys, 10k per statement.
pub(crate) async fn preload(pool: &PgPool, rows: i64) -> anyhow::Result<()> {
    let done = Arc::new(AtomicU64::new(0));
    let _progress = Progress::start("preloading outbox rows".into(), done.clone(), Some(rows as u64));
    let mut written = 0;
    while written < rows {
        let chunk = 10_000.min(rows - written);
        sqlx::query(
            "with g as (
                select i, gen_random_uuid() as mid, gen_random_uuid() as rid,
                       ('00000000-0000-7000-8000-' || lpad((i % 1000)::text, 12, '0'))::uuid as event_id
                  from generate_series($1::bigint, $2::bigint) i)
             insert into outbox (aggregate_type, aggregate_id, kafka_key, event_type, message_id, rsvp_version, payload)
             select 'rsvp', rid, event_id::text, 'RSVP_CREATED', mid, 1,
                    json_build_object('specversion', '1.0', 'id', mid, 'source', '/rsvp-api', 'type', 'RSVP_CREATED',
                        'subject', rid, 'time', now(), 'datacontenttype', 'application/json',
                        'data', json_build_object('id', rid, 'event_id', event_id, 'name', 'Ada Lovelace',
                            'email', 'ada' || i || '@example.com', 'status', 'going', 'guests', 1, 'version', 1,
                            'created_at', now(), 'updated_at', now()))
               from g",
        )
        .bind(written + 1)
        .bind(written + chunk)
        .execute(pool)
        .await?;
        written += chunk;
        done.store(written as u64, Ordering::Relaxed);
    }
    Ok(())
}

async fn cursor_id(pool: &PgPool, topic: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("select coalesce((select id from relay_cursors where name = $1), 0)")
        .bind(topic)
        .fetch_one(pool)
        .await?)
}

/// Peak resident set size of a process, from the kernel's high-water mark.
fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

struct Drain {
    seconds: f64,
    peak_rss_mib: f64,
}

/// Starts the real `rsvp-relay` on the preloaded database and waits until its cursor
/// passed every row.
async fn drain_with_relay(url: &str, pool: &PgPool, broker: &str, topic: &str, rows: i64) -> anyhow::Result<Drain> {
    let last_id: i64 = sqlx::query_scalar("select max(id) from outbox").fetch_one(pool).await?;
    let started = Instant::now();
    let mut relay = tokio::process::Command::new(system::sibling_binary("rsvp-relay")?)
        .env("DATABASE_URL", url)
        .env("KAFKA_BROKERS", broker)
        .env("KAFKA_TOPIC", topic)
        .env("RELAY_PARTITIONS", PARTITIONS.to_string())
        .env("ADMIN_ADDR", format!("127.0.0.1:{}", system::free_port()?))
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .context("starting rsvp-relay")?;
    let pid = relay.id().context("relay pid")?;
    let done = Arc::new(AtomicU64::new(0));
    let progress = Progress::start(format!("relay draining {rows} rows"), done.clone(), Some(rows as u64));
    loop {
        let cursor = cursor_id(pool, topic).await?;
        done.store(cursor.max(0) as u64, Ordering::Relaxed);
        if cursor >= last_id {
            break;
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(1800), "the relay did not drain within 30 min");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    drop(progress);
    let peak_rss_mib = peak_rss_mib(pid).unwrap_or(f64::NAN);
    relay.kill().await?;
    Ok(Drain { seconds, peak_rss_mib })
}

/// The same records, produced with rskafka straight to the broker: one batch of
/// `BATCH_ROWS` in flight per partition, all partitions at once. Times the produce only.
async fn raw_produce(pool: &PgPool, broker: &str, topic: &str, rows: i64) -> anyhow::Result<f64> {
    let mut by_partition: BTreeMap<i32, Vec<Record>> = BTreeMap::new();
    let mut after = 0i64;
    loop {
        let page =
            sqlx::query(&select_rows("where o.id > $1 order by o.id limit 10000")).bind(after).fetch_all(pool).await?;
        let Some(last) = page.last() else { break };
        after = sqlx::Row::try_get(last, "id")?;
        for row in &page {
            let row = OutboxRow::from_row(row)?;
            let partition = row.message.partition(PARTITIONS);
            by_partition.entry(partition).or_default().push(row.message.to_record());
        }
    }
    let client = ClientBuilder::new(vec![broker.to_owned()]).build().await?;
    client.controller_client()?.create_topic(topic, PARTITIONS, 1, 5_000).await?;
    let done = Arc::new(AtomicU64::new(0));
    let progress = Progress::start(format!("raw produce of {rows} records"), done.clone(), Some(rows as u64));
    let started = Instant::now();
    let mut producers = tokio::task::JoinSet::new();
    for (partition, records) in by_partition {
        let producer = client.partition_client(topic, partition, UnknownTopicHandling::Retry).await?;
        let done = done.clone();
        producers.spawn(async move {
            let mut records = records.into_iter().peekable();
            while records.peek().is_some() {
                let batch: Vec<Record> = records.by_ref().take(BATCH_ROWS).collect();
                let produced = batch.len() as u64;
                producer.produce(batch, Compression::NoCompression).await?;
                done.fetch_add(produced, Ordering::Relaxed);
            }
            Ok::<_, rskafka::client::error::Error>(())
        });
    }
    for result in producers.join_all().await {
        result?;
    }
    let seconds = started.elapsed().as_secs_f64();
    drop(progress);
    Ok(seconds)
}

impl RelayBench {
    pub(crate) async fn run(&self, report: &mut Report) -> anyhow::Result<()> {
        let broker = Broker::start().await;
        let mut table = String::from(
            "| backlog rows | relay drain s | relay rows/s | raw produce rows/s | relay ÷ raw | relay peak RSS |\n\
             |---:|---:|---:|---:|---:|---:|\n",
        );
        for &rows in &self.backlogs {
            let url = system::fresh_database("bench_relay").await?;
            system::migrate(&url).await?;
            let pool = PgPool::connect(&url).await?;
            preload(&pool, rows).await?;
            eprintln!("relay, backlog of {rows} rows");
            let drain = drain_with_relay(&url, &pool, &broker.address(), &format!("bench-relay-{rows}"), rows).await?;
            eprintln!("raw rskafka produce, {rows} records");
            let raw_seconds = raw_produce(&pool, &broker.address(), &format!("bench-raw-{rows}"), rows).await?;
            let (relay_rate, raw_rate) = (rows as f64 / drain.seconds, rows as f64 / raw_seconds);
            table.push_str(&format!(
                "| {rows} | {:.2} | {relay_rate:.0} | {raw_rate:.0} | {:.2}x | {:.0} MiB |\n",
                drain.seconds,
                relay_rate / raw_rate,
                drain.peak_rss_mib
            ));
            pool.close().await;
            system::drop_database("bench_relay").await?;
        }
        report.section(
            "Relay: draining a backlog to broker-acknowledged vs raw rskafka produce",
            &format!(
                "{table}\nThe relay's time runs from starting the process to its cursor passing the last row \
                 (start-up, topic creation, reads, receipts and cursor included); raw produce times only the \
                 produce calls of the same records, batches of {BATCH_ROWS}, one in flight per partition, \
                 {PARTITIONS} partitions, on a Tansu broker with in-memory storage. Where the relay's CPU per row goes, and why \
                 raw produce is out of its reach: docs/relay.md, \"Where a published row's CPU goes\".\n"
            ),
        );
        Ok(())
    }
}
