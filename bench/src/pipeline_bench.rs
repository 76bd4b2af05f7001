//! The whole pipeline at the highest rate it sustains: rsvp-api, rsvp-relay and
//! rsvp-consumers (every group) on one machine, against the api alone in the same run.
//!
//! "Sustains" means the consumers keep up: the pipeline's lag (outbox rows committed
//! minus the records the slowest consumer group has handled) is sampled through the
//! run, and a rate is sustained when, as the load stops, the lag is under one second
//! of that rate and it drains within [`DRAIN_BOUND`]. The first try is as fast as the
//! api takes writes (the same closed loop of clients as the api alone); if the
//! consumers fall behind that, open-loop rates step down until one is sustained.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use rsvp_contract::testing::Broker;
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::{
    load::{self, Progress},
    report::Report,
    system::{self, cpu_time, ticks_per_second},
};

const DATABASE: &str = "bench_pipeline_rate";
/// Events the load spreads over, as in the api measurement.
const EVENTS: usize = 1000;
/// How soon the lag must drain after the load stops for the rate to count as sustained.
const DRAIN_BOUND: Duration = Duration::from_secs(5);
/// Each open-loop try runs at this share of the last rate that was not sustained.
const STEP_DOWN: f64 = 0.85;
const MAX_TRIES: usize = 8;
/// Writes in flight at most in an open-loop try: past this the api is not keeping up.
const MAX_IN_FLIGHT: usize = 512;

pub(crate) struct PipelineBench {
    pub(crate) clients: usize,
    pub(crate) duration: Duration,
}

/// What one try at a rate measured.
struct Try {
    /// `None` for the closed loop (as fast as the api takes writes).
    offered: Option<f64>,
    written: u64,
    rate: f64,
    lag_max: i64,
    lag_at_stop: i64,
    drained_after: Option<Duration>,
    cpu: Vec<Duration>,
    /// The consumers' fetches over the try: sent to the broker, and served from what
    /// another group of the instance fetched (none for a build without the metric).
    fetches: FetchCounts,
}

#[derive(Clone, Copy, Default)]
struct FetchCounts {
    from_broker: Option<f64>,
    shared: Option<f64>,
}

impl FetchCounts {
    fn since(self, before: Self) -> Self {
        let minus = |after: Option<f64>, before: Option<f64>| Some(after? - before.unwrap_or(0.0));
        Self { from_broker: minus(self.from_broker, before.from_broker), shared: minus(self.shared, before.shared) }
    }
}

impl Try {
    fn sustained(&self) -> bool {
        self.lag_at_stop as f64 <= self.rate && self.drained_after.is_some_and(|after| after <= DRAIN_BOUND)
    }
}

/// The running pipeline a try writes to.
struct Pipeline {
    api: system::Api,
    pool: PgPool,
    events: Arc<Vec<Uuid>>,
    pids: Vec<u32>,
    services: system::RelayAndConsumers,
    /// Stopped on drop.
    _broker: Broker,
}

impl Pipeline {
    /// Outbox rows committed so far.
    async fn committed(&self) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar("select coalesce(max(id), 0) from outbox").fetch_one(&self.pool).await?)
    }

    /// Records the slowest consumer group has handled so far, from the consumers'
    /// `consumer_processed_total` on their admin port.
    /// A group that has handled nothing yet has no such series but owns partitions
    /// (`consumer_owned_partitions`): it counts as having handled none.
    async fn slowest_group_processed(&self, http: &reqwest::Client) -> anyhow::Result<i64> {
        let samples = system::scrape(http, &self.services.consumers_metrics).await?;
        let group_of = |series: &str| {
            series.split("group=\"").nth(1).and_then(|rest| rest.split('"').next()).unwrap_or_default().to_owned()
        };
        let mut by_group = std::collections::BTreeMap::<String, f64>::new();
        for (series, _) in samples.iter().filter(|(series, _)| series.starts_with("consumer_owned_partitions{")) {
            by_group.insert(group_of(series), 0.0);
        }
        for (series, value) in samples.iter().filter(|(series, _)| series.starts_with("consumer_processed_total{")) {
            *by_group.entry(group_of(series)).or_default() += value;
        }
        Ok(by_group.values().copied().reduce(f64::min).unwrap_or(0.0) as i64)
    }

    async fn lag(&self, http: &reqwest::Client, first_id: i64, processed_before: i64) -> anyhow::Result<i64> {
        let committed = self.committed().await? - first_id;
        let processed = self.slowest_group_processed(http).await? - processed_before;
        Ok(committed - processed)
    }

    /// The consumers' fetches so far (`consumer_fetches_total`, `consumer_shared_fetches_total`).
    async fn fetch_counts(&self, http: &reqwest::Client) -> anyhow::Result<FetchCounts> {
        let samples = system::scrape(http, &self.services.consumers_metrics).await?;
        Ok(FetchCounts {
            from_broker: system::sum_of(&samples, "consumer_fetches_total{"),
            shared: system::sum_of(&samples, "consumer_shared_fetches_total{"),
        })
    }

    fn cpu(&self, ticks: f64) -> Vec<Duration> {
        self.pids.iter().map(|pid| cpu_time(*pid, ticks).unwrap_or_default()).collect()
    }

    /// Writes for `duration`: closed loop with `clients` when `offered` is none, else
    /// open loop at `offered` writes/s. Samples the lag all along, then waits for it
    /// to drain.
    async fn run_try(&self, offered: Option<f64>, clients: usize, duration: Duration) -> anyhow::Result<Try> {
        let http = reqwest::Client::new();
        let ticks = ticks_per_second();
        let first_id = self.committed().await?;
        let processed_before = self.slowest_group_processed(&http).await?;
        let cpu_before = self.cpu(ticks);
        let fetches_before = self.fetch_counts(&http).await?;
        let load = async {
            match offered {
                None => {
                    let result =
                        load::create_rsvps(&self.api.base, self.events.clone(), clients, duration, false).await;
                    (result.ok, result.elapsed)
                }
                Some(rate) => open_loop(&self.api.base, &self.events, rate, duration).await,
            }
        };
        let mut load = std::pin::pin!(load);
        let mut lag_max = 0i64;
        let (written, elapsed) = loop {
            tokio::select! {
                done = &mut load => break done,
                () = tokio::time::sleep(Duration::from_millis(250)) => {
                    match self.lag(&http, first_id, processed_before).await {
                        Ok(lag) => lag_max = lag_max.max(lag),
                        Err(error) => eprintln!("pipeline: sampling the lag failed: {error}"),
                    }
                }
            }
        };
        let stopped = Instant::now();
        let lag_at_stop = self.lag(&http, first_id, processed_before).await?;
        lag_max = lag_max.max(lag_at_stop);
        let mut drained_after = None;
        // Drain fully before the next try, however long that takes (up to a minute).
        while stopped.elapsed() < Duration::from_secs(60) {
            let lag = self.lag(&http, first_id, processed_before).await?;
            lag_max = lag_max.max(lag);
            if lag <= 0 {
                drained_after = Some(stopped.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let cpu =
            self.cpu(ticks).iter().zip(&cpu_before).map(|(after, before)| after.saturating_sub(*before)).collect();
        let fetches = self.fetch_counts(&http).await?.since(fetches_before);
        Ok(Try {
            offered,
            written,
            rate: written as f64 / elapsed.as_secs_f64(),
            lag_max,
            lag_at_stop,
            drained_after,
            cpu,
            fetches,
        })
    }
}

/// Creates at `rate` writes/s for `duration`, at most [`MAX_IN_FLIGHT`] at once;
/// returns the writes answered 201 and the time until the last answer.
async fn open_loop(base: &str, events: &[Uuid], rate: f64, duration: Duration) -> (u64, Duration) {
    let client = reqwest::Client::builder().pool_max_idle_per_host(MAX_IN_FLIGHT).build().expect("http client");
    let written = Arc::new(AtomicU64::new(0));
    let _progress = Progress::start(format!("{rate:.0}/s"), written.clone(), None);
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let total = (rate * duration.as_secs_f64()) as usize;
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..total {
        ticker.tick().await;
        let Ok(permit) = in_flight.clone().acquire_owned().await else { break };
        let (client, written, url) =
            (client.clone(), written.clone(), format!("{base}/events/{}/rsvps", events[n % events.len()]));
        tasks.spawn(async move {
            let body = json!({"name": "Bench", "email": format!("{}@pipeline.example", Uuid::new_v4().simple()), "status": "going"});
            if client.post(url).json(&body).send().await.is_ok_and(|r| r.status() == reqwest::StatusCode::CREATED) {
                written.fetch_add(1, Ordering::Relaxed);
            }
            drop(permit);
        });
    }
    tasks.join_all().await;
    (written.load(Ordering::Relaxed), started.elapsed())
}

impl PipelineBench {
    pub(crate) async fn run(&self, report: &mut Report) -> anyhow::Result<()> {
        // The api alone, the same clients and events, on a fresh database.
        let url = system::fresh_database(DATABASE).await?;
        let api = system::start_api(&url, &[]).await?;
        let events = Arc::new(system::create_events(&api.base, EVENTS, "Alone").await?);
        eprintln!("pipeline: the api alone, {} clients, {:?}", self.clients, self.duration);
        let alone = load::create_rsvps(&api.base, events, self.clients, self.duration, false).await;
        drop(api);

        let pipeline = self.start().await?;
        let mut tries = Vec::new();
        eprintln!("pipeline: as fast as the api takes writes, {} clients", self.clients);
        let mut last = pipeline.run_try(None, self.clients, self.duration).await?;
        while !last.sustained() && tries.len() < MAX_TRIES {
            let rate = (last.offered.unwrap_or(last.rate) * STEP_DOWN).min(last.rate);
            tries.push(last);
            eprintln!("pipeline: the consumers fell behind; trying {rate:.0} writes/s");
            last = pipeline.run_try(Some(rate), self.clients, self.duration).await?;
        }
        tries.push(last);
        pipeline.pool.close().await;
        drop(pipeline);
        system::drop_database(DATABASE).await?;

        let mut table = String::from(
            "| try | offered writes/s | written | api creates/s | lag max | lag as the load stopped | drained after | sustained | \
             CPU s per 1,000 events: api | relay | consumers | Tansu | \
             consumer fetches per 1,000 events: from the broker | shared |\n\
             |---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|\n",
        );
        for (index, t) in tries.iter().enumerate() {
            let per_thousand = |value: f64| value * 1000.0 / t.written.max(1) as f64;
            let cpu: Vec<String> = t.cpu.iter().map(|c| format!("{:.3}", per_thousand(c.as_secs_f64()))).collect();
            let fetches = |count: Option<f64>| count.map_or("n/a".to_owned(), |c| format!("{:.0}", per_thousand(c)));
            table.push_str(&format!(
                "| {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} |\n",
                index + 1,
                t.offered.map_or(format!("as fast as {} clients go", self.clients), |r| format!("{r:.0}")),
                t.written,
                t.rate,
                t.lag_max,
                t.lag_at_stop,
                t.drained_after.map_or("not within 60 s".to_owned(), |d| format!("{:.2} s", d.as_secs_f64())),
                if t.sustained() { "yes" } else { "no" },
                cpu.join(" | "),
                fetches(t.fetches.from_broker),
                fetches(t.fetches.shared),
            ));
        }
        let summary = match tries.iter().find(|t| t.sustained()) {
            Some(best) => format!(
                "**The whole pipeline sustains {:.0} writes/s, {:.2}x the api alone ({:.0} creates/s, {} clients, p99 {:.1} ms).**",
                best.rate,
                best.rate / alone.rate(),
                alone.rate(),
                self.clients,
                alone.percentile_ms(99.0)
            ),
            None => format!(
                "**No try was sustained** (the api alone: {:.0} creates/s, {} clients).",
                alone.rate(),
                self.clients
            ),
        };
        report.section(
            "Whole pipeline at its highest sustained rate, against the api alone",
            &format!(
                "{summary}\n\n{table}\n\
                 rsvp-api, rsvp-relay and rsvp-consumers (every group) with their defaults and Tansu in memory, \
                 {EVENTS} events. The api alone ran first on its own fresh database with the same clients. A try \
                 is sustained when the pipeline's lag (outbox rows committed minus the records the slowest \
                 consumer group handled, from `consumer_processed_total`, sampled every 250 ms) is under one \
                 second of the try's rate as the load stops and drains within {} s. The first try writes as \
                 fast as the api takes them; each next one offers {STEP_DOWN}x the last (open loop, at most \
                 {MAX_IN_FLIGHT} in flight). CPU from `/proc/PID/stat`, and the consumers' fetches from their \
                 metrics (`consumer_fetches_total`: requests to the broker; `consumer_shared_fetches_total`: \
                 served from what another group of the instance had fetched), from the try's start until its \
                 lag drained.\n",
                DRAIN_BOUND.as_secs()
            ),
        );
        Ok(())
    }

    async fn start(&self) -> anyhow::Result<Pipeline> {
        let broker = Broker::start().await;
        let url = system::fresh_database(DATABASE).await?;
        let api = system::start_api(&url, &[]).await?;
        let services = system::RelayAndConsumers::spawn(&url, &broker.address())?;
        system::wait_healthy(&services.consumers_metrics.replace("/metrics", "/healthz")).await?;
        let pool = PgPool::connect(&url).await?;
        let events = Arc::new(system::create_events(&api.base, EVENTS, "Pipeline").await?);
        let [relay_pid, consumers_pid] = services.pids()?;
        let pids = vec![api.pid()?, relay_pid, consumers_pid, broker.pid().context("the broker exited")?];
        let pipeline = Pipeline { api, pool, events, pids, services, _broker: broker };
        // Warm up until every group has handled every record: the relay created the
        // topic and the consumers own its partitions.
        let (written, _) = open_loop(&pipeline.api.base, &pipeline.events, 50.0, Duration::from_secs(1)).await;
        anyhow::ensure!(written > 0, "the api took no warm-up write");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while pipeline.lag(&http, 0, 0).await? > 0 {
            anyhow::ensure!(Instant::now() < deadline, "the pipeline did not handle the warm-up writes within 60 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(pipeline)
    }
}
