//! The relay keeping up with the api at the api's full rate: both run together on the
//! same cores while the load generator writes as fast as the api answers, and the
//! backlog (committed rows the relay has not yet published) is sampled throughout.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use rsvp_contract::testing::Broker;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::{
    load::{self, percentile_us},
    report::Report,
    system,
};

const EVENTS: usize = 1000;
const TOPIC: &str = "bench-keepup";
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

pub(crate) struct KeepUpBench {
    pub(crate) clients: usize,
    pub(crate) duration: Duration,
}

/// Committed outbox rows after the relay's cursor.
async fn backlog(pool: &PgPool) -> anyhow::Result<u64> {
    let rows: i64 = sqlx::query_scalar(
        "select count(*) from outbox o join relay_cursors c on c.name = $1 where (o.xid, o.id) > (c.xid, c.id)",
    )
    .bind(TOPIC)
    .fetch_one(pool)
    .await?;
    Ok(rows.max(0) as u64)
}

async fn receipts(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "select coalesce(sum(cardinality(outbox_ids)), 0)::bigint from relay_receipts where topic = $1",
    )
    .bind(TOPIC)
    .fetch_one(pool)
    .await?)
}

/// Samples the backlog until `stop`; returns the samples in order.
async fn sample_backlog(pool: PgPool, stop: CancellationToken) -> anyhow::Result<Vec<u64>> {
    let mut samples = Vec::new();
    let mut ticker = tokio::time::interval(SAMPLE_EVERY);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(samples),
            _ = ticker.tick() => samples.push(backlog(&pool).await?),
        }
    }
}

impl KeepUpBench {
    pub(crate) async fn run(&self, report: &mut Report) -> anyhow::Result<()> {
        let broker = Broker::start().await;
        let url = system::fresh_database("bench_keepup").await?;
        system::migrate(&url).await?;
        let api = system::start_api(&url, &[]).await?;
        let _relay = system::spawn_service(
            "rsvp-relay",
            &[
                ("DATABASE_URL", url.clone()),
                ("KAFKA_BROKERS", broker.address()),
                ("KAFKA_TOPIC", TOPIC.into()),
                ("ADMIN_ADDR", format!("127.0.0.1:{}", system::free_port()?)),
            ],
        )?;
        let pool = PgPool::connect(&url).await?;
        let events = Arc::new(system::create_events(&api.base, EVENTS, "Keep-up").await?);
        // The relay leads once its cursor exists.
        let ready = Instant::now();
        while sqlx::query_scalar::<_, i64>("select count(*) from relay_cursors where name = $1")
            .bind(TOPIC)
            .fetch_one(&pool)
            .await?
            == 0
        {
            anyhow::ensure!(ready.elapsed() < Duration::from_secs(60), "the relay did not start leading within 60 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        eprintln!("api at full rate ({} clients) with the relay running, {:?}", self.clients, self.duration);
        let receipts_before = receipts(&pool).await?;
        let stop_sampling = CancellationToken::new();
        let sampler = tokio::spawn(sample_backlog(pool.clone(), stop_sampling.clone()));
        let load = load::create_rsvps(&api.base, events, self.clients, self.duration, false).await;
        let published_during_load = receipts(&pool).await? - receipts_before;
        stop_sampling.cancel();
        let mut samples = sampler.await??;
        let at_stop = backlog(&pool).await?;
        let stopped = Instant::now();
        while backlog(&pool).await? > 0 {
            anyhow::ensure!(
                stopped.elapsed() < Duration::from_secs(120),
                "the relay did not drain within 120 s after the load"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let drained_after = stopped.elapsed();
        samples.sort_unstable();

        let relay_rate = published_during_load as f64 / load.elapsed.as_secs_f64();
        let table = format!(
            "| clients | api creates/s | api p99 ms | relay rows/s during the load | relay ÷ api | backlog p50 | p99 | max | backlog when the load stopped | drained after |\n\
             |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n\
             | {} | {:.0} | {:.1} | {relay_rate:.0} | {:.2}x | {} | {} | {} | {at_stop} | {:.0} ms |\n",
            self.clients,
            load.rate(),
            load.percentile_ms(99.0),
            relay_rate / load.rate(),
            percentile_us(&samples, 50.0),
            percentile_us(&samples, 99.0),
            samples.last().copied().unwrap_or(0),
            drained_after.as_secs_f64() * 1000.0,
        );
        pool.close().await;
        drop((_relay, api));
        system::drop_database("bench_keepup").await?;
        report.section(
            "Relay keeping up with the api at full rate",
            &format!(
                "{table}\nThe api (coalescing on) takes as many creates as {} clients send for {:?}, while the \
                 real rsvp-relay publishes to Tansu on the same two cores. The backlog (committed rows after the \
                 relay's cursor) is sampled every {} ms during the load; it stays bounded when the relay keeps up. \
                 The relay's default settings; no consumers run.\n",
                self.clients,
                self.duration,
                SAMPLE_EVERY.as_millis()
            ),
        );
        Ok(())
    }
}
