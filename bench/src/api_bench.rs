//! Durable rsvp creates per second through HTTP, next to pgbench running the same
//! transaction shape on the same Postgres.

use std::{sync::Arc, time::Duration};

use rsvp_contract::{CloudEvent, EventType, RsvpData, RsvpStatus};
use uuid::Uuid;

use crate::{load, pgbench, report::Report, system};

/// Events the load spreads over: the api locks an event's row per write, like any
/// capacity check must.
const EVENTS: usize = 1000;

pub(crate) struct ApiBench {
    pub(crate) duration: Duration,
    pub(crate) concurrency: Vec<usize>,
}

/// An outbox payload as the api writes it, for pgbench.
fn api_payload() -> anyhow::Result<String> {
    let now = chrono::Utc::now();
    let data = RsvpData {
        id: Uuid::now_v7(),
        event_id: Uuid::now_v7(),
        name: "Bench".into(),
        email: format!("{}@bench.example", Uuid::new_v4().simple()),
        status: RsvpStatus::Going,
        guests: 0,
        version: 1,
        created_at: now,
        updated_at: now,
        previous_status: None,
    };
    Ok(serde_json::to_string(&CloudEvent::new(EventType::RsvpCreated, data, now))?)
}

/// A fresh database for one measurement, migrated, with `EVENTS` events: every
/// measurement starts from the same size, whatever ran before it.
async fn fresh_database() -> anyhow::Result<String> {
    let url = system::fresh_database("bench_api").await?;
    system::migrate(&url).await?;
    Ok(url)
}

impl ApiBench {
    pub(crate) async fn run(&self, report: &mut Report) -> anyhow::Result<()> {
        let mut rows = Vec::new();
        // Coalescing on at every client count, without and with an Idempotency-Key on
        // every request; then coalescing off.
        let runs = self.concurrency.iter().flat_map(|c| [("on", *c, false), ("on", *c, true)]).chain([(
            "off",
            self.concurrency[0],
            false,
        )]);
        for (coalescing, concurrency, keys) in runs {
            let url = fresh_database().await?;
            let api = system::start_api(&url, &[("WRITE_COALESCING", (coalescing == "on").to_string())]).await?;
            let events = Arc::new(system::create_events(&api.base, EVENTS, "Bench").await?);
            let label = format!("coalescing {coalescing}{}", if keys { ", Idempotency-Key" } else { "" });
            eprintln!("api, {label}, {concurrency} clients, {:?}", self.duration);
            system::checkpoint().await?;
            let result = load::create_rsvps(&api.base, events, concurrency, self.duration, keys).await;
            rows.push((label, concurrency, result));
            drop(api);
            system::drop_database("bench_api").await?;
        }
        let payload = api_payload()?;
        let mut baselines = Vec::new();
        for (label, shape) in [
            ("1 rsvp + outbox row per transaction", pgbench::Shape::OnePerTransaction),
            ("50 rsvps + outbox rows per transaction", pgbench::Shape::FiftyPerTransaction),
        ] {
            let db = sqlx::PgPool::connect(&fresh_database().await?).await?;
            pgbench::prepare(&db, EVENTS).await?;
            db.close().await;
            eprintln!("pgbench, {label}, 32 clients, {:?}", self.duration);
            system::checkpoint().await?;
            let rate = pgbench::rsvps_per_second("bench_api", shape, 32, self.duration, EVENTS, &payload).await?;
            baselines.push((label, rate));
            system::drop_database("bench_api").await?;
        }
        let single = baselines[0].1;
        let mut table = String::from(
            "| writes | clients | durable creates/s | p50 ms | p99 ms | errors | ÷ pgbench 1/tx |\n|---|---:|---:|---:|---:|---:|---:|\n",
        );
        for (label, concurrency, result) in &rows {
            table.push_str(&format!(
                "| api, {label} | {concurrency} | {:.0} | {:.1} | {:.1} | {} | {:.2}x |\n",
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
        let mut keyed = String::new();
        for pair in rows.windows(2) {
            let [(plain, concurrency, without), (label, _, with)] = pair else { continue };
            if label.ends_with("Idempotency-Key") && !plain.ends_with("Idempotency-Key") {
                keyed.push_str(&format!(
                    "- {concurrency} clients: {:.0}/s with a key on every request, {:.0}/s without: {:.2}x\n",
                    with.rate(),
                    without.rate(),
                    with.rate() / without.rate()
                ));
            }
        }
        report.section(
            "API: durable rsvp creates through HTTP vs pgbench",
            &format!(
                "{table}\nEach row starts from a fresh database holding {EVENTS} events (so later rows do not \
                 pay for the tables earlier rows grew), right after a checkpoint (so that none pays for the \
                 WAL of the rows before it); the load spreads rsvps over them. Going rsvps with \
                 unique emails, synchronous_commit on. pgbench runs the same rows: the rsvp insert, the \
                 event's seat update and the outbox insert (whose trigger notifies), in one transaction.\n\n\
                 With an `Idempotency-Key` on every request (a new key each, as a client sends before \
                 its first try; each write then also inserts its sealed record in its transaction), \
                 against the same load without keys:\n\n{keyed}"
            ),
        );
        Ok(())
    }
}
