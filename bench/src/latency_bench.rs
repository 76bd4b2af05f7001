//! End-to-end latency at a steady write rate, through the real api, relay and
//! consumers: commit-to-ack (outbox row to broker acknowledgement, from the relay's
//! receipts) and commit-to-cache-invalidated (the api's answer to the cache
//! consumer replacing the event's cache generation, watched in Redis).

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use fred::interfaces::{ClientLike, KeysInterface};
use rsvp_contract::{cache_keys, testing::Broker};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    load::{percentile_us, Progress},
    report::Report,
    system,
};

/// Events that take only probe writes, one at a time each, so that a generation change
/// of a probe event can only come from the probe write being measured.
const PROBE_EVENTS: usize = 20;
const LOAD_EVENTS: usize = 500;
/// Probe writes per second, part of the rate.
const PROBES_PER_SECOND: u64 = 20;

pub(crate) struct LatencyBench {
    pub(crate) rates: Vec<u64>,
    pub(crate) duration: Duration,
}

async fn create_rsvp(client: &reqwest::Client, base: &str, event: Uuid) -> bool {
    let body =
        json!({"name": "Bench", "email": format!("{}@latency.example", Uuid::new_v4().simple()), "status": "going"});
    let response = client.post(format!("{base}/events/{event}/rsvps")).json(&body).send().await;
    response.is_ok_and(|r| r.status() == reqwest::StatusCode::CREATED)
}

/// One probe: write to `event`, then watch its cache generation until it changes.
pub(crate) async fn probe(
    client: &reqwest::Client,
    redis: &fred::clients::Client,
    base: &str,
    event: Uuid,
) -> Option<u64> {
    let key = cache_keys::event_generation(event);
    let before: Option<String> = redis.get(&key).await.ok()?;
    if !create_rsvp(client, base, event).await {
        return None;
    }
    let answered = Instant::now();
    while answered.elapsed() < Duration::from_secs(10) {
        let now: Option<String> = redis.get(&key).await.ok()?;
        if now != before {
            return Some(answered.elapsed().as_micros() as u64);
        }
        // 1 ms steps: finer polling costs the system being measured CPU (about 3000
        // Redis reads a second at 250 µs) for a resolution the 50 ms target does not need.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    None
}

struct RateResult {
    rate: u64,
    written: u64,
    commit_to_ack_ms: (f64, f64),
    invalidated_us: Vec<u64>,
    /// CPU time of each measured process over the rate's window.
    cpu: Vec<Duration>,
    /// Produce requests of the relay and fetch requests of the consumers over the
    /// window, from their own metrics; none when a build does not count them.
    produces: Option<f64>,
    fetches: Option<f64>,
}

/// The relay's produce requests so far (`relay_kafka_requests_total`) and the
/// consumers' fetch requests so far (`consumer_fetches_total`, which older builds lack),
/// from their own metrics.
async fn kafka_requests(services: &system::RelayAndConsumers, http: &reqwest::Client) -> (Option<f64>, Option<f64>) {
    let relay = system::scrape(http, &services.relay_metrics).await.unwrap_or_default();
    let consumers = system::scrape(http, &services.consumers_metrics).await.unwrap_or_default();
    (
        system::sum_of(&relay, "relay_kafka_requests_total{op=\"produce\""),
        system::sum_of(&consumers, "consumer_fetches_total{"),
    )
}

/// The processes whose CPU time each rate's window measures, in report order.
const PROCESSES: [&str; 4] = ["rsvp-api", "rsvp-relay", "rsvp-consumers", "tansu"];

fn cpu_times(pids: &[u32], ticks: f64) -> Vec<Duration> {
    pids.iter().map(|pid| system::cpu_time(*pid, ticks).unwrap_or_default()).collect()
}

impl LatencyBench {
    pub(crate) async fn run(&self, report: &mut Report) -> anyhow::Result<()> {
        let broker = Broker::start().await;
        let url = system::fresh_database("bench_pipeline").await?;
        let api = system::start_api(&url, &[]).await?;
        let services = system::RelayAndConsumers::spawn(&url, &broker.address())?;
        let pool = PgPool::connect(&url).await?;
        let redis = fred::clients::Client::new(
            fred::types::config::Config::from_url("redis://127.0.0.1:6379")?,
            None,
            None,
            None,
        );
        redis.init().await?;
        let client = reqwest::Client::new();
        let probes = system::create_events(&api.base, PROBE_EVENTS, "Probe").await?;
        let load = Arc::new(system::create_events(&api.base, LOAD_EVENTS, "Load").await?);
        for event in &probes {
            // A read creates the generation that invalidations replace.
            client.get(format!("{}/events/{event}", api.base)).send().await?;
        }
        // Warm up: the consumers take their partitions, the relay creates the topic.
        for _ in 0..50 {
            if probe(&client, &redis, &api.base, probes[0]).await.is_some() {
                break;
            }
        }

        let [relay_pid, consumers_pid] = services.pids()?;
        let pids =
            [api.pid()?, relay_pid, consumers_pid, broker.pid().ok_or_else(|| anyhow::anyhow!("the broker exited"))?];
        let ticks = system::ticks_per_second();
        let mut results = Vec::new();
        for &rate in &self.rates {
            let cpu_before = cpu_times(&pids, ticks);
            let requests_before = kafka_requests(&services, &client).await;
            eprintln!("pipeline at {rate} writes/s for {:?}", self.duration);
            let first_id: i64 = sqlx::query_scalar("select coalesce(max(id), 0) from outbox").fetch_one(&pool).await?;
            let written = Arc::new(AtomicU64::new(0));
            let progress = Progress::start(format!("{rate}/s"), written.clone(), None);
            let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let total = rate * self.duration.as_secs();
            let probe_every = (rate / PROBES_PER_SECOND).max(1);
            let mut tasks = tokio::task::JoinSet::new();
            let mut probe_tasks = tokio::task::JoinSet::new();
            for n in 0..total {
                ticker.tick().await;
                let (client, base, written) = (client.clone(), api.base.clone(), written.clone());
                if n % probe_every == 0 {
                    let event = probes[(n / probe_every) as usize % PROBE_EVENTS];
                    let redis = redis.clone();
                    probe_tasks.spawn(async move {
                        let latency = probe(&client, &redis, &base, event).await;
                        written.fetch_add(1, Ordering::Relaxed);
                        latency
                    });
                } else {
                    let event = load[n as usize % LOAD_EVENTS];
                    tasks.spawn(async move {
                        if create_rsvp(&client, &base, event).await {
                            written.fetch_add(1, Ordering::Relaxed);
                        }
                    });
                }
            }
            tasks.join_all().await;
            let mut invalidated_us: Vec<u64> = probe_tasks.join_all().await.into_iter().flatten().collect();
            invalidated_us.sort_unstable();
            drop(progress);
            // Every row of the window acknowledged, then the receipts give commit-to-ack.
            let last_id: i64 = sqlx::query_scalar("select coalesce(max(id), 0) from outbox").fetch_one(&pool).await?;
            let deadline = Instant::now() + Duration::from_secs(60);
            while sqlx::query_scalar::<_, i64>(
                "select count(*) from relay_row_receipts where outbox_id > $1 and outbox_id <= $2",
            )
            .bind(first_id)
            .bind(last_id)
            .fetch_one(&pool)
            .await?
                < last_id - first_id
            {
                anyhow::ensure!(Instant::now() < deadline, "the relay did not catch up within 60 s");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let commit_to_ack_ms: (f64, f64) = sqlx::query_as(
                "select percentile_cont(0.5) within group (order by ms), percentile_cont(0.99) within group (order by ms)
                   from (select extract(epoch from r.published_at - o.created_at)::float8 * 1000 as ms
                           from outbox o join relay_row_receipts r on r.outbox_id = o.id
                          where o.id > $1 and o.id <= $2) t",
            )
            .bind(first_id)
            .bind(last_id)
            .fetch_one(&pool)
            .await?;
            let cpu = cpu_times(&pids, ticks)
                .iter()
                .zip(&cpu_before)
                .map(|(after, before)| after.saturating_sub(*before))
                .collect();
            let requests_after = kafka_requests(&services, &client).await;
            let since = |after: Option<f64>, before: Option<f64>| Some(after? - before.unwrap_or(0.0));
            results.push(RateResult {
                produces: since(requests_after.0, requests_before.0),
                fetches: since(requests_after.1, requests_before.1),
                rate,
                written: written.load(Ordering::Relaxed),
                commit_to_ack_ms,
                invalidated_us,
                cpu,
            });
        }

        let mut table = String::from(
            "| writes/s | writes | commit-to-ack p50 | p99 | commit-to-cache-invalidated p50 | p99 | probes |\n\
             |---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for result in &results {
            table.push_str(&format!(
                "| {} | {} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {} |\n",
                result.rate,
                result.written,
                result.commit_to_ack_ms.0,
                result.commit_to_ack_ms.1,
                percentile_us(&result.invalidated_us, 50.0) as f64 / 1000.0,
                percentile_us(&result.invalidated_us, 99.0) as f64 / 1000.0,
                result.invalidated_us.len()
            ));
        }
        let mut cpu_table = format!(
            "| writes/s | {} | all four | Kafka requests per 1,000 events: relay produce | consumers fetch |\n|---:|{}---:|---:|---:|\n",
            PROCESSES.join(" | "),
            "---:|".repeat(PROCESSES.len())
        );
        for result in &results {
            let per_thousand = |cpu: Duration| cpu.as_secs_f64() * 1000.0 / result.written.max(1) as f64;
            let cells: Vec<String> = result.cpu.iter().map(|c| format!("{:.3}", per_thousand(*c))).collect();
            let total: Duration = result.cpu.iter().sum();
            let per_thousand_events = |count: Option<f64>| {
                count.map_or("n/a".to_owned(), |count| format!("{:.0}", count * 1000.0 / result.written.max(1) as f64))
            };
            cpu_table.push_str(&format!(
                "| {} | {} | {:.3} | {} | {} |\n",
                result.rate,
                cells.join(" | "),
                per_thousand(total),
                per_thousand_events(result.produces),
                per_thousand_events(result.fetches)
            ));
        }
        pool.close().await;
        drop((services, api));
        system::drop_database("bench_pipeline").await?;
        report.section(
            "Latency at a steady write rate: commit to broker ack, commit to cache invalidated",
            &format!(
                "{table}\nCommit-to-ack: from the outbox row's `created_at` (inside the writing transaction) to \
                 its receipt's `published_at`, which the relay writes right after the broker acknowledged: an \
                 upper bound. Commit-to-cache-invalidated: from the api's 201 (sent after the commit) to the \
                 event's cache generation changing in Redis, measured on {PROBES_PER_SECOND} probe writes a second \
                 (polling Redis every millisecond, so up to 1 ms high) to {PROBE_EVENTS} events that take no other writes; the rest of the rate goes to {LOAD_EVENTS} \
                 other events. Real binaries: rsvp-api, rsvp-relay, rsvp-consumers (every group), Tansu in memory.\n\n\
                 CPU-seconds per 1,000 events, per process, at each rate: CPU time (user + system, from \
                 `/proc/PID/stat`) from the rate's first write until the relay acknowledged its last row, \
                 divided by the writes (each one event). Kafka requests over the same window from the \
                 processes' own metrics (`relay_kafka_requests_total{{op=\"produce\"}}`, `consumer_fetches_total`; \
                 n/a for a build without the metric):\n\n{cpu_table}"
            ),
        );
        Ok(())
    }
}
