//! Durable rsvp creates per second through HTTP, next to pgbench running the same
//! transaction shape on the same Postgres.

use std::{sync::Arc, time::Duration};

use crate::{
    load, pgbench,
    report::Report,
    system,
};

/// Events the load spreads over: the api locks an event's row per write, like any
/// capacity check must.
const EVENTS: usize = 1000;

pub(crate) struct ApiBench {
    pub(crate) duration: Duration,
    pub(crate) concurrency: Vec<usize>,
}

/// An outbox payload of the api's size, for pgbench.
async fn sample_payload(db: &sqlx::PgPool) -> anyhow::Result<String> {
    let payload: Option<serde_json::Value> =
        sqlx::query_scalar("select payload from outbox order by id limit 1").fetch_optional(db).await?;
    Ok(payload.map_or_else(|| "{}".to_owned(), |p| p.to_string()))
}

impl ApiBench {
    pub(crate) async fn run(&self, report: &mut Report) -> anyhow::Result<()> {
        let url = system::fresh_database("bench_api").await?;
        let db = sqlx::PgPool::connect(&url).await?;
        let mut rows = Vec::new();
        for (label, coalescing) in [("on", "true"), ("off", "false")] {
            let api = system::start_api(&url, &[("WRITE_COALESCING", coalescing.to_owned())]).await?;
            let events = Arc::new(system::create_events(&api.base, EVENTS, "Bench").await?);
            let levels: Vec<usize> =
                if coalescing == "true" { self.concurrency.clone() } else { vec![self.concurrency[0]] };
            for concurrency in levels {
                eprintln!("api, coalescing {label}, {concurrency} clients, {:?}", self.duration);
                let result = load::create_rsvps(&api.base, events.clone(), concurrency, self.duration).await;
                rows.push((label, concurrency, result));
            }
        }
        let payload = sample_payload(&db).await?;
        pgbench::prepare(&db).await?;
        let mut baselines = Vec::new();
        for (label, shape) in [
            ("1 rsvp + outbox row per transaction", pgbench::Shape::OnePerTransaction),
            ("50 rsvps + outbox rows per transaction", pgbench::Shape::FiftyPerTransaction),
        ] {
            eprintln!("pgbench, {label}, 32 clients, {:?}", self.duration);
            let rate = pgbench::rsvps_per_second("bench_api", shape, 32, self.duration, EVENTS, &payload).await?;
            baselines.push((label, rate));
        }
        let single = baselines[0].1;
        let mut table = String::from(
            "| writes | clients | durable creates/s | p50 ms | p99 ms | errors | ÷ pgbench 1/tx |\n|---|---:|---:|---:|---:|---:|---:|\n",
        );
        for (label, concurrency, result) in &rows {
            table.push_str(&format!(
                "| api, coalescing {label} | {concurrency} | {:.0} | {:.1} | {:.1} | {} | {:.2}x |\n",
                result.rate(),
                result.percentile_ms(50.0),
                result.percentile_ms(99.0),
                result.errors,
                result.rate() / single
            ));
        }
        for (label, rate) in &baselines {
            table.push_str(&format!("| pgbench, {label} | 32 | {rate:.0} | | | | {:.2}x |\n", rate / single));
        }
        report.section("API: durable rsvp creates through HTTP vs pgbench", &table);
        Ok(())
    }
}
