//! End-to-end latency at a steady write rate, through the real api, relay and
//! consumers: commit-to-ack (outbox row to broker acknowledgement, from the relay's
//! receipts) and commit-to-cache-invalidated (the api's answer to the cache
//! consumer replacing the event's cache generation, watched in Redis).

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use fred::interfaces::{ClientLike, KeysInterface};
use rsvp_contract::{cache_keys, testing::Broker};
use serde_json::json;
use sqlx::{postgres::PgConnectOptions, PgPool};
use uuid::Uuid;

use crate::{
    load::{percentile, percentile_us, Progress},
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

/// Creates an rsvp to `event`: the api's response when it answered 201, its body
/// still to read.
async fn create_rsvp(client: &reqwest::Client, base: &str, event: Uuid) -> Option<reqwest::Response> {
    let body =
        json!({"name": "Bench", "email": format!("{}@latency.example", Uuid::new_v4().simple()), "status": "going"});
    let response = client.post(format!("{base}/events/{event}/rsvps")).json(&body).send().await.ok()?;
    (response.status() == reqwest::StatusCode::CREATED).then_some(response)
}

/// One probe write, measured from the api's answer to its event's cache generation
/// changing.
pub(crate) struct Probe {
    pub(crate) rsvp: Uuid,
    pub(crate) answered_at: DateTime<Utc>,
    pub(crate) invalidated_us: u64,
}

/// One probe: write to `event`, then watch its cache generation until it changes.
pub(crate) async fn probe(
    client: &reqwest::Client,
    redis: &fred::clients::Client,
    base: &str,
    event: Uuid,
) -> Option<Probe> {
    let key = cache_keys::event_generation(event);
    let before: Option<String> = redis.get(&key).await.ok()?;
    let created: serde_json::Value = create_rsvp(client, base, event).await?.json().await.ok()?;
    let rsvp = created["id"].as_str()?.parse().ok()?;
    let (answered, answered_at) = (Instant::now(), Utc::now());
    while answered.elapsed() < Duration::from_secs(10) {
        let now: Option<String> = redis.get(&key).await.ok()?;
        if now != before {
            return Some(Probe { rsvp, answered_at, invalidated_us: answered.elapsed().as_micros() as u64 });
        }
        // 1 ms steps: finer polling costs the system being measured CPU (about 3000
        // Redis reads a second at 250 µs) for a resolution the 50 ms target does not need.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    None
}

/// Where the probes' time went: from the api's answer to the broker's ack of the
/// probe's row (the relay's receipt; negative when the relay was faster than the
/// answer's way back), and from that ack to the cache generation changing (the
/// consumer), each as (p50, p99) in milliseconds.
struct ProbeStages {
    answer_to_ack_ms: (f64, f64),
    ack_to_cache_ms: (f64, f64),
}

async fn probe_stages(pool: &PgPool, probes: &[Probe], first_id: i64, last_id: i64) -> anyhow::Result<ProbeStages> {
    let ids: Vec<Uuid> = probes.iter().map(|p| p.rsvp).collect();
    let acked: Vec<(Uuid, DateTime<Utc>)> = sqlx::query_as(
        "select (o.payload->'data'->>'id')::uuid, r.published_at
           from outbox o join relay_row_receipts r on r.outbox_id = o.id
          where o.id > $1 and o.id <= $2 and (o.payload->'data'->>'id')::uuid = any($3)",
    )
    .bind(first_id)
    .bind(last_id)
    .bind(&ids)
    .fetch_all(pool)
    .await?;
    let acked: HashMap<Uuid, DateTime<Utc>> = acked.into_iter().collect();
    let (mut answer_to_ack, mut ack_to_cache) = (Vec::new(), Vec::new());
    for probe in probes {
        let Some(acked_at) = acked.get(&probe.rsvp) else { continue };
        let invalidated_at = probe.answered_at + chrono::Duration::microseconds(probe.invalidated_us as i64);
        answer_to_ack.push((*acked_at - probe.answered_at).num_microseconds().unwrap_or_default() as f64 / 1000.0);
        ack_to_cache.push((invalidated_at - *acked_at).num_microseconds().unwrap_or_default() as f64 / 1000.0);
    }
    // The same percentiles as every other column of the table.
    let p50_p99 = |mut values: Vec<f64>| {
        values.sort_unstable_by(f64::total_cmp);
        let at = |p: f64| percentile(&values, p).unwrap_or(f64::NAN);
        (at(50.0), at(99.0))
    };
    Ok(ProbeStages { answer_to_ack_ms: p50_p99(answer_to_ack), ack_to_cache_ms: p50_p99(ack_to_cache) })
}

struct RateResult {
    rate: u64,
    written: u64,
    commit_to_ack_ms: (f64, f64),
    invalidated_us: Vec<u64>,
    stages: ProbeStages,
    /// CPU time of each measured process over the rate's window.
    cpu: Vec<Duration>,
    /// CPU time of PostgreSQL's processes over the window, by [`POSTGRES_WORK`].
    postgres: [Duration; 4],
    /// The whole machine's CPU over the window.
    machine: system::MachineCpu,
    /// Produce requests of the relay and fetch requests of the consumers over the
    /// window, from their own metrics; none when a build does not count them.
    produces: Option<f64>,
    fetches: Option<f64>,
    /// See [`slow_requests`].
    slow: [Option<f64>; 4],
}

/// The relay's and the consumers' metrics at one moment.
struct Scraped {
    relay: Vec<(String, f64)>,
    consumers: Vec<(String, f64)>,
}

impl Scraped {
    async fn now(services: &system::RelayAndConsumers, http: &reqwest::Client) -> Self {
        let relay = system::scrape(http, &services.relay_metrics).await.unwrap_or_default();
        let consumers = system::scrape(http, &services.consumers_metrics).await.unwrap_or_default();
        Self { relay, consumers }
    }

    /// The relay's produce requests so far (`relay_kafka_requests_total`) and the
    /// consumers' fetch requests so far (`consumer_fetches_total`, which older builds
    /// lack).
    fn kafka_requests(&self) -> (Option<f64>, Option<f64>) {
        (
            system::sum_of(&self.relay, "relay_kafka_requests_total{op=\"produce\""),
            system::sum_of(&self.consumers, "consumer_fetches_total{"),
        )
    }
}

/// The relay's produce requests, and the cache group's fetches that brought records.
const PRODUCE_BUCKETS: &str = "relay_kafka_request_duration_seconds_bucket{op=\"produce\"";
const CACHE_FETCH_BUCKETS: &str =
    "consumer_fetch_duration_seconds_bucket{group=\"cache-invalidation-group\",result=\"records\"";
/// The bucket bounds the slow-request shares are read at.
const SLOW_BOUNDS: [&str; 2] = ["0.005", "0.01"];

/// Of the window's broker requests, the share slower than each of [`SLOW_BOUNDS`]: the
/// relay's produces, then the cache group's fetches with records (none for a build
/// without `consumer_fetch_duration_seconds`).
fn slow_requests(before: &Scraped, after: &Scraped) -> [Option<f64>; 4] {
    let produce = |le| system::share_above(&before.relay, &after.relay, PRODUCE_BUCKETS, le);
    let fetch = |le| system::share_above(&before.consumers, &after.consumers, CACHE_FETCH_BUCKETS, le);
    [produce(SLOW_BOUNDS[0]), produce(SLOW_BOUNDS[1]), fetch(SLOW_BOUNDS[0]), fetch(SLOW_BOUNDS[1])]
}

/// The processes whose CPU time each rate's window measures, in report order.
const PROCESSES: [&str; 4] = ["rsvp-api", "rsvp-relay", "rsvp-consumers", "tansu"];

/// What PostgreSQL's processes work for, in report order: the backends of each of our
/// processes (the relay and the consumers name their connections, the api does not),
/// then everything else (its own background processes, this benchmark's connections).
const POSTGRES_WORK: [&str; 4] = ["rsvp-api", "rsvp-relay", "rsvp-consumers", "the rest"];

/// The `application_name` of this benchmark's own connections.
const BENCH_APPLICATION: &str = "rsvp-bench";

/// CPU time so far of each PostgreSQL process, with the index in [`POSTGRES_WORK`]
/// of what it works for.
async fn postgres_cpu(pool: &PgPool, ticks: f64) -> anyhow::Result<HashMap<i32, (usize, Duration)>> {
    let backends: Vec<(i32, String, String)> =
        sqlx::query_as("select pid, coalesce(application_name, ''), coalesce(backend_type, '') from pg_stat_activity")
            .fetch_all(pool)
            .await?;
    let work = |application: &str, backend_type: &str| match application {
        "rsvp-relay" => 1,
        consumers if consumers.starts_with("rsvp-consumers/") => 2,
        "" if backend_type == "client backend" => 0,
        _ => 3,
    };
    Ok(backends
        .into_iter()
        .filter_map(|(pid, application, backend_type)| {
            let cpu = system::cpu_time(u32::try_from(pid).ok()?, ticks)?;
            Some((pid, (work(&application, &backend_type), cpu)))
        })
        .collect())
}

/// PostgreSQL's CPU time since `before`, by [`POSTGRES_WORK`]. A backend that
/// started meanwhile counts whole; one that exited meanwhile is not counted.
async fn postgres_cpu_since(
    pool: &PgPool,
    ticks: f64,
    before: &HashMap<i32, (usize, Duration)>,
) -> anyhow::Result<[Duration; 4]> {
    let mut spent = [Duration::ZERO; 4];
    for (pid, (work, cpu)) in postgres_cpu(pool, ticks).await? {
        let earlier = before.get(&pid).map_or(Duration::ZERO, |(_, cpu)| *cpu);
        spent[work] += cpu.saturating_sub(earlier);
    }
    Ok(spent)
}

fn cpu_times(pids: &[u32], ticks: f64) -> Vec<Duration> {
    pids.iter().map(|pid| system::cpu_time(*pid, ticks).unwrap_or_default()).collect()
}

/// The machine's load in each rate's window: how busy the cores were, and who besides
/// the four measured processes kept them busy.
fn machine_table(results: &[RateResult]) -> String {
    let mut table = format!(
        "| writes/s | cores busy | steal | PostgreSQL for {} | everything else |\n|---:|---:|---:|{}---:|\n",
        POSTGRES_WORK.join(" | "),
        "---:|".repeat(POSTGRES_WORK.len())
    );
    for result in results {
        let machine = result.machine;
        let share = |part: Duration| 100.0 * part.as_secs_f64() / machine.total.as_secs_f64().max(f64::MIN_POSITIVE);
        let per_thousand = |cpu: Duration| cpu.as_secs_f64() * 1000.0 / result.written.max(1) as f64;
        let measured: Duration = result.cpu.iter().chain(&result.postgres).sum();
        let postgres: Vec<String> = result.postgres.iter().map(|cpu| format!("{:.3}", per_thousand(*cpu))).collect();
        table.push_str(&format!(
            "| {} | {:.1}% | {:.1}% | {} | {:.3} |\n",
            result.rate,
            share(machine.busy),
            share(machine.steal),
            postgres.join(" | "),
            per_thousand(machine.busy.saturating_sub(measured)),
        ));
    }
    table
}

impl LatencyBench {
    pub(crate) async fn run(&self, report: &mut Report) -> anyhow::Result<()> {
        let broker = Broker::start().await;
        let url = system::fresh_database("bench_pipeline").await?;
        let api = system::start_api(&url, &[]).await?;
        let services = system::RelayAndConsumers::spawn(&url, &broker.address())?;
        // Named, so that its backends are not counted as the api's.
        let options: PgConnectOptions = url.parse()?;
        let pool = PgPool::connect_with(options.application_name(BENCH_APPLICATION)).await?;
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
            let postgres_before = postgres_cpu(&pool, ticks).await?;
            let machine_before = system::MachineCpu::now(ticks).unwrap_or_default();
            let scraped_before = Scraped::now(&services, &client).await;
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
                        // Read, so that the connection is reused, but not parsed.
                        let Some(created) = create_rsvp(&client, &base, event).await else { return };
                        if created.bytes().await.is_ok() {
                            written.fetch_add(1, Ordering::Relaxed);
                        }
                    });
                }
            }
            tasks.join_all().await;
            let probed: Vec<Probe> = probe_tasks.join_all().await.into_iter().flatten().collect();
            let mut invalidated_us: Vec<u64> = probed.iter().map(|p| p.invalidated_us).collect();
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
            let stages = probe_stages(&pool, &probed, first_id, last_id).await?;
            let cpu = cpu_times(&pids, ticks)
                .iter()
                .zip(&cpu_before)
                .map(|(after, before)| after.saturating_sub(*before))
                .collect();
            let postgres = postgres_cpu_since(&pool, ticks, &postgres_before).await?;
            let machine = system::MachineCpu::now(ticks).unwrap_or_default().since(machine_before);
            let scraped_after = Scraped::now(&services, &client).await;
            let (requests_before, requests_after) = (scraped_before.kafka_requests(), scraped_after.kafka_requests());
            let since = |after: Option<f64>, before: Option<f64>| Some(after? - before.unwrap_or(0.0));
            results.push(RateResult {
                produces: since(requests_after.0, requests_before.0),
                fetches: since(requests_after.1, requests_before.1),
                slow: slow_requests(&scraped_before, &scraped_after),
                rate,
                written: written.load(Ordering::Relaxed),
                commit_to_ack_ms,
                invalidated_us,
                stages,
                cpu,
                postgres,
                machine,
            });
        }

        let mut table = String::from(
            "| writes/s | writes | commit-to-ack p50 | p99 | commit-to-cache-invalidated p50 | p99 | probes | \
             probes' answer-to-ack p50 | p99 | probes' ack-to-cache p50 | p99 |\n\
             |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for result in &results {
            let stages = &result.stages;
            table.push_str(&format!(
                "| {} | {} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms |\n",
                result.rate,
                result.written,
                result.commit_to_ack_ms.0,
                result.commit_to_ack_ms.1,
                percentile_us(&result.invalidated_us, 50.0) as f64 / 1000.0,
                percentile_us(&result.invalidated_us, 99.0) as f64 / 1000.0,
                result.invalidated_us.len(),
                stages.answer_to_ack_ms.0,
                stages.answer_to_ack_ms.1,
                stages.ack_to_cache_ms.0,
                stages.ack_to_cache_ms.1,
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
        let mut slow_table = String::from(
            "| writes/s | relay produces over 5 ms | over 10 ms | cache group's fetches with records over 5 ms | over 10 ms |\n\
             |---:|---:|---:|---:|---:|\n",
        );
        for result in &results {
            let cells: Vec<String> = result
                .slow
                .iter()
                .map(|share| share.map_or("n/a".to_owned(), |s| format!("{:.1}%", s * 100.0)))
                .collect();
            slow_table.push_str(&format!("| {} | {} |\n", result.rate, cells.join(" | ")));
        }
        let machine_table = machine_table(&results);
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
                 other events. Each probe's time is also split where the broker acknowledged its row (its \
                 receipt's `published_at`, same clock): answer-to-ack is the relay's share (negative when the \
                 relay was faster than the 201's way back), ack-to-cache the cache consumer's. Real binaries: rsvp-api, rsvp-relay, rsvp-consumers (every group), Tansu in memory.\n\n\
                 CPU-seconds per 1,000 events, per process, at each rate: CPU time (user + system, from \
                 `/proc/PID/stat`) from the rate's first write until the relay acknowledged its last row, \
                 divided by the writes (each one event). Kafka requests over the same window from the \
                 processes' own metrics (`relay_kafka_requests_total{{op=\"produce\"}}`, `consumer_fetches_total`; \
                 n/a for a build without the metric):\n\n{cpu_table}\n\
                 The broker's answers over the same window, from the processes' histograms \
                 (`relay_kafka_request_duration_seconds{{op=\"produce\"}}`, \
                 `consumer_fetch_duration_seconds{{group=\"cache-invalidation-group\",result=\"records\"}}`): \
                 the share of requests slower than 5 and 10 ms (n/a for a build without the metric):\n\n{slow_table}\n\
                 The whole machine over the same window, from `/proc/stat`: the share of all cores' time that \
                 ran something and the share the hypervisor gave to other guests (steal). Then CPU-seconds per \
                 1,000 events: PostgreSQL's, by whom its processes served (the backends in `pg_stat_activity` by \
                 `application_name`: the relay's and the consumers' name themselves, unnamed client backends are \
                 the api's; the rest is PostgreSQL's own background processes and this benchmark's connections; \
                 a backend that exited within the window is not counted), and the rest of the machine's busy \
                 time (this benchmark's clients and probes, Redis, the kernel, anything else running):\n\n{machine_table}"
            ),
        );
        Ok(())
    }
}
