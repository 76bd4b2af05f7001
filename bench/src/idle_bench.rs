//! The cost of the whole system doing nothing: rsvp-api, rsvp-relay and
//! rsvp-consumers (every group) running against Tansu with no writes at all. Over a
//! fixed window it reads each process's CPU time from `/proc/PID/stat`, the
//! PostgreSQL transactions of the benchmark database from `pg_stat_database`, and
//! the Kafka requests every process sends, counted by a proxy the broker advertises
//! (so an older build is measured the same way, without metrics of its own). Then
//! it measures how soon a write reaches an idle partition: commit to the cache
//! consumer replacing the event's cache generation.

use std::time::{Duration, Instant};

use anyhow::Context;
use rsvp_contract::testing::counting::{self, FETCH};
use sqlx::{Connection, PgConnection};

use crate::{
    latency_bench::probe,
    load::percentile_us,
    report::Report,
    system::{self, cpu_time, ticks_per_second},
};

const DATABASE: &str = "bench_idle";

pub(crate) struct IdleBench {
    /// How long the system runs idle before the window starts: long enough for every
    /// backoff to reach its maximum and for Postgres to publish the start-up's statistics.
    pub(crate) settle: Duration,
    pub(crate) window: Duration,
    /// Writes to an idle system, each after `settle` of nothing.
    pub(crate) probes: usize,
}

/// Committed and rolled-back transactions of `database` so far, as Postgres has
/// published them (each backend publishes its counts at least every 10 s when idle).
async fn transactions(admin: &mut PgConnection, database: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("select (xact_commit + xact_rollback)::bigint from pg_stat_database where datname = $1")
        .bind(database)
        .fetch_one(admin)
        .await?)
}

struct Measured {
    name: String,
    pids: Vec<u32>,
    before: Duration,
}

impl IdleBench {
    pub(crate) async fn run(&self, report: &mut Report) -> anyhow::Result<()> {
        let (broker, counter) = counting::start_broker().await;
        let url = system::fresh_database(DATABASE).await?;
        let api = system::start_api(&url, &[]).await?;
        let services = system::RelayAndConsumers::spawn(&url, &counter.address())?;
        let redis = fred::clients::Client::new(
            fred::types::config::Config::from_url("redis://127.0.0.1:6379")?,
            None,
            None,
            None,
        );
        fred::interfaces::ClientLike::init(&redis).await?;
        let client = reqwest::Client::new();
        // One write first: the relay creates the topic, the consumers take its partitions.
        let events = system::create_events(&api.base, 1, "Idle").await?;
        client.get(format!("{}/events/{}", api.base, events[0])).send().await?;
        let mut warm = false;
        for _ in 0..50 {
            if probe(&client, &redis, &api.base, events[0]).await.is_some() {
                warm = true;
                break;
            }
        }
        anyhow::ensure!(warm, "the pipeline did not invalidate the cache after the first writes");
        eprintln!("idle: settling for {:?}, then measuring for {:?}", self.settle, self.window);
        tokio::time::sleep(self.settle).await;

        let mut admin = PgConnection::connect(&system::server_url()).await.context("connecting to postgres")?;
        let backends: Vec<i32> = sqlx::query_scalar("select pid from pg_stat_activity where datname = $1")
            .bind(DATABASE)
            .fetch_all(&mut admin)
            .await?;
        let ticks = ticks_per_second();
        let [relay_pid, consumers_pid] = services.pids()?;
        let mut measured = vec![
            ("rsvp-api".to_owned(), vec![api.pid()?]),
            ("rsvp-relay".to_owned(), vec![relay_pid]),
            ("rsvp-consumers".to_owned(), vec![consumers_pid]),
            ("tansu (broker)".to_owned(), vec![broker.pid().context("the broker exited")?]),
            (
                format!("postgres: the {} backends of the database", backends.len()),
                backends.iter().filter_map(|p| u32::try_from(*p).ok()).collect(),
            ),
        ]
        .into_iter()
        .map(|(name, pids)| {
            let before = pids.iter().filter_map(|p| cpu_time(*p, ticks)).sum();
            Measured { name, pids, before }
        })
        .collect::<Vec<_>>();
        let requests = counter.requests();
        let (requests_before, fetches_before) = (requests.total(), requests.of(FETCH));
        let transactions_before = transactions(&mut admin, DATABASE).await?;
        let started = Instant::now();
        tokio::time::sleep(self.window).await;
        let elapsed = started.elapsed().as_secs_f64();
        let transactions_after = transactions(&mut admin, DATABASE).await?;
        let (requests_after, fetches_after) = (requests.total(), requests.of(FETCH));

        let mut table = String::from("| process | CPU in the window | % of one core |\n|---|---:|---:|\n");
        let mut ours_and_broker = 0.0;
        for (index, m) in measured.iter_mut().enumerate() {
            let after: Duration = m.pids.iter().filter_map(|p| cpu_time(*p, ticks)).sum();
            let used = after.saturating_sub(m.before).as_secs_f64();
            if index < 4 {
                ours_and_broker += used;
            }
            table.push_str(&format!("| {} | {:.2} s | {:.2}% |\n", m.name, used, 100.0 * used / elapsed));
            if index == 3 {
                table.push_str(&format!(
                    "| **our three processes + the broker** | **{:.2} s** | **{:.2}%** |\n",
                    ours_and_broker,
                    100.0 * ours_and_broker / elapsed
                ));
            }
        }
        let tx_per_second = (transactions_after - transactions_before) as f64 / elapsed;
        let requests_per_second = (requests_after - requests_before) as f64 / elapsed;
        let fetches_per_second = (fetches_after - fetches_before) as f64 / elapsed;

        // A write reaching an idle system: each after `settle` of nothing, so that every
        // partition has backed off as far as it goes.
        let mut arrivals = Vec::new();
        for n in 0..self.probes {
            eprintln!("idle: write {} of {} to the idle system", n + 1, self.probes);
            // 53 ms more each time: gaps that are all a multiple of the consumers'
            // 500 ms idle poll would find the poll at the same phase every time.
            tokio::time::sleep(self.settle.min(Duration::from_secs(5)) + Duration::from_millis(53) * n as u32).await;
            if let Some(latency) = probe(&client, &redis, &api.base, events[0]).await.map(|p| p.invalidated_us) {
                arrivals.push(latency);
            }
        }
        arrivals.sort_unstable();
        let ms = |us: u64| us as f64 / 1000.0;
        let arrivals_text: Vec<String> = arrivals.iter().map(|us| format!("{:.0}", ms(*us))).collect();

        drop((services, api));
        admin.close().await?;
        system::drop_database(DATABASE).await?;
        report.section(
            "Idle: what the whole system costs doing nothing",
            &format!(
                "{table}\n| PostgreSQL transactions/s | Kafka requests/s (of which fetches) |\n|---:|---:|\n\
                 | {tx_per_second:.2} | {requests_per_second:.1} ({fetches_per_second:.1}) |\n\n\
                 A write to the idle system, commit to cache invalidated (the api's 201 to the cache \
                 consumer replacing the event's cache generation), {} writes each after {:?} of nothing \
                 (and 53 ms more for each write, to meet the idle polls at different phases): \
                 median {:.0} ms, max {:.0} ms ({} ms).\n\n\
                 rsvp-api, rsvp-relay and rsvp-consumers (every group) with their defaults and Tansu in \
                 memory, after one write and {:?} of nothing, measured over {elapsed:.0} s: CPU time from \
                 `/proc/PID/stat` (user + system), transactions from `pg_stat_database` \
                 (`xact_commit + xact_rollback` of the benchmark's database; each backend publishes its \
                 counts at least every 10 s, so a short window is off by up to that much), Kafka requests \
                 counted by a proxy the broker advertises as its address. Targets (issue 17): our \
                 processes and the broker together under 3% of one core, under 2 transactions/s.\n",
                arrivals.len(),
                self.settle.min(Duration::from_secs(5)),
                ms(percentile_us(&arrivals, 50.0)),
                ms(percentile_us(&arrivals, 100.0)),
                arrivals_text.join(", "),
                self.settle,
            ),
        );
        Ok(())
    }
}
