//! Durable rsvp creates per second through HTTP, next to pgbench running the same
//! transaction shape on the same Postgres.

use std::{sync::Arc, time::Duration};

use rsvp_contract::{CloudEvent, EventType, RsvpData, RsvpStatus};
use uuid::Uuid;

use crate::{
    load::{self, LoadResult},
    pgbench,
    report::Report,
    system,
};

/// Events the load spreads over: the api locks an event's row per write, like any
/// capacity check must.
const EVENTS: usize = 1000;

pub(crate) struct ApiBench {
    pub(crate) duration: Duration,
    pub(crate) concurrency: Vec<usize>,
    /// Cycles of the interleaved keyed comparison at the largest client count, and
    /// how long each contender's turn lasts (see [`ApiBench::keyed_interleaved`]).
    pub(crate) keyed_cycles: usize,
    pub(crate) keyed_slice: Duration,
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

/// The database of the measurements that run one after the other.
const DATABASE: &str = "bench_api";

/// A fresh database `name` for one measurement, migrated: every measurement starts
/// from the same size, whatever ran before it.
async fn fresh_database(name: &str) -> anyhow::Result<String> {
    let url = system::fresh_database(name).await?;
    system::migrate(&url).await?;
    Ok(url)
}

/// The api on the database at `url`, with `EVENTS` events created through it.
async fn api_with_events(url: &str, coalescing: bool) -> anyhow::Result<(system::Api, Arc<Vec<Uuid>>)> {
    let api = system::start_api(url, &[("WRITE_COALESCING", coalescing.to_string())]).await?;
    let events = Arc::new(system::create_events(&api.base, EVENTS, "Bench").await?);
    Ok((api, events))
}

/// A fresh database `name` for pgbench: migrated, with `EVENTS` events it can pick from.
async fn pgbench_database(name: &str) -> anyhow::Result<String> {
    let url = fresh_database(name).await?;
    let db = sqlx::PgPool::connect(&url).await?;
    pgbench::prepare(&db, EVENTS).await?;
    db.close().await;
    Ok(url)
}

/// One run of the api under load.
pub(crate) struct ApiRun {
    pub(crate) load: LoadResult,
    /// The machine's busy CPU time per create while the load ran: every process on
    /// both cores (the api, PostgreSQL, the load generator). Unlike the rate, it does
    /// not move with how long the lanes wait, so it shows a change in what a create
    /// costs where rates on these machines cannot.
    pub(crate) busy_per_create: Option<Duration>,
}

impl ApiRun {
    /// `clients` clients creating rsvps through the api at `base` for `duration`.
    async fn measure(base: &str, events: Arc<Vec<Uuid>>, clients: usize, duration: Duration, keys: bool) -> Self {
        let ticks = system::ticks_per_second();
        let before = system::MachineCpu::now(ticks);
        let load = load::create_rsvps(base, events, clients, duration, keys).await;
        let busy = system::MachineCpu::now(ticks).zip(before).map(|(after, before)| after.since(before).busy);
        let busy_per_create = busy.filter(|_| load.ok > 0).map(|busy| busy / load.ok as u32);
        Self { load, busy_per_create }
    }

    fn rate(&self) -> f64 {
        self.load.rate()
    }
}

impl ApiBench {
    /// Durable creates through the api on a fresh database, right after a checkpoint.
    async fn api_rate(&self, coalescing: bool, concurrency: usize, keys: bool) -> anyhow::Result<ApiRun> {
        let (api, events) = api_with_events(&fresh_database(DATABASE).await?, coalescing).await?;
        eprintln!("api, {}, {concurrency} clients, {:?}", run_label(coalescing, keys), self.duration);
        system::checkpoint().await?;
        let run = ApiRun::measure(&api.base, events, concurrency, self.duration, keys).await;
        drop(api);
        system::drop_database(DATABASE).await?;
        Ok(run)
    }

    /// pgbench's rsvps per second for `shape` on a fresh database, right after a checkpoint.
    async fn pgbench_rate(&self, label: &str, shape: pgbench::Shape, payload: &str) -> anyhow::Result<f64> {
        let url = pgbench_database(DATABASE).await?;
        eprintln!("pgbench, {label}, 32 clients, {:?}", self.duration);
        system::checkpoint().await?;
        let rate = pgbench::rsvps_per_second(&url, shape, 32, self.duration, EVENTS, payload).await?;
        system::drop_database(DATABASE).await?;
        Ok(rate)
    }

    pub(crate) async fn run(&self, report: &mut Report) -> anyhow::Result<()> {
        let mut rows = Vec::new();
        // Coalescing on at every client count, without and with an Idempotency-Key on
        // every request; then coalescing off.
        let runs = self.concurrency.iter().flat_map(|c| [(true, *c, false), (true, *c, true)]).chain([(
            false,
            self.concurrency[0],
            false,
        )]);
        for (coalescing, concurrency, keys) in runs {
            let result = self.api_rate(coalescing, concurrency, keys).await?;
            rows.push((run_label(coalescing, keys), concurrency, result));
        }
        let payload = api_payload()?;
        let mut baselines = Vec::new();
        for (label, shape) in [
            ("1 rsvp + outbox row per transaction", pgbench::Shape::OnePerTransaction),
            ("50 rsvps + outbox rows per transaction", pgbench::Shape::FiftyPerTransaction),
        ] {
            baselines.push((label, self.pgbench_rate(label, shape, &payload).await?));
        }
        let single = baselines[0].1;
        let mut table = String::from(
            "| writes | clients | durable creates/s | p50 ms | p99 ms | errors | ÷ pgbench 1/tx |\n|---|---:|---:|---:|---:|---:|---:|\n",
        );
        for (label, concurrency, ApiRun { load: result, .. }) in &rows {
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
        let largest = self.concurrency.iter().copied().max().unwrap_or(0);
        let interleaved = match self.keyed_cycles {
            0 => String::new(),
            _ => self.keyed_interleaved(largest, &payload).await?,
        };
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
                 against the same load without keys, one run after the other:\n\n{keyed}\n{interleaved}"
            ),
        );
        Ok(())
    }

    /// The keyed comparison at the largest client count, interleaved: the api
    /// without keys, the api with a key on every request (each its own process and
    /// fresh database) and pgbench's one rsvp per transaction (a database of its own)
    /// take turns, `self.keyed_cycles` times, each for `self.keyed_slice`, the first
    /// of a cycle in rotation. These machines' speed drifts by a third within the
    /// hour, so a pair of 10-second runs taken one after the other compares two
    /// machines; with turns of a few seconds, a slow stretch weighs on all three. One
    /// turn still catches bursts (a checkpoint's writes, the kernel's writeback), so
    /// the report's figures are each contender's totals over every cycle.
    async fn keyed_interleaved(&self, clients: usize, payload: &str) -> anyhow::Result<String> {
        let mut apis = Vec::new();
        for (database, keys) in [(UNKEYED_DATABASE, false), (KEYED_DATABASE, true)] {
            let (api, events) = api_with_events(&fresh_database(database).await?, true).await?;
            apis.push((api, events, keys));
        }
        let pgbench_url = pgbench_database(PGBENCH_DATABASE).await?;
        system::checkpoint().await?;

        let mut cycles = Vec::with_capacity(self.keyed_cycles);
        for cycle in 0..self.keyed_cycles {
            eprintln!("keyed comparison, cycle {} of {}, {:?} turns", cycle + 1, self.keyed_cycles, self.keyed_slice);
            // Unkeyed, keyed, pgbench: each turn's rate and busy CPU per create.
            let mut turns = [(0.0, None); 3];
            for turn in 0..3 {
                let contender = (cycle + turn) % 3;
                turns[contender] = match apis.get(contender) {
                    Some((api, events, keys)) => {
                        let run = ApiRun::measure(&api.base, events.clone(), clients, self.keyed_slice, *keys).await;
                        (run.rate(), run.busy_per_create)
                    }
                    None => {
                        let shape = pgbench::Shape::OnePerTransaction;
                        let rate =
                            pgbench::rsvps_per_second(&pgbench_url, shape, 32, self.keyed_slice, EVENTS, payload)
                                .await?;
                        (rate, None)
                    }
                };
            }
            let [(without, cpu_without), (with, cpu_with), (single, _)] = turns;
            cycles.push(Compared { without, with, single, cpu_without, cpu_with });
        }
        drop(apis);
        for database in [UNKEYED_DATABASE, KEYED_DATABASE, PGBENCH_DATABASE] {
            system::drop_database(database).await?;
        }
        Ok(interleaved_report(clients, self.keyed_slice, &cycles))
    }
}

/// The databases of the interleaved keyed comparison, one per contender.
const UNKEYED_DATABASE: &str = "bench_api_unkeyed";
const KEYED_DATABASE: &str = "bench_api_keyed";
const PGBENCH_DATABASE: &str = "bench_api_pgbench";

/// The interleaved keyed comparison's cycles, and what they come to.
fn interleaved_report(clients: usize, slice: Duration, cycles: &[Compared]) -> String {
    let mut table = format!(
        "The keyed comparison at {clients} clients, interleaved: the api without keys, the api with a key on \
         every request (each its own process and fresh database) and pgbench's one rsvp per transaction (on a \
         database of its own) take turns of {slice:?} each, {} cycles, the first of a cycle in rotation, after \
         one checkpoint. The machine's speed drifts by a third within the hour; with turns this short a slow \
         stretch weighs on all three, while a burst (a checkpoint's writes) lands in one turn, so read the \
         totals under the table. CPU is the machine's busy time per create during the turn, every process on \
         both cores:\n\n\
         | cycle | creates/s, no key | with an Idempotency-Key | keyed ÷ unkeyed | pgbench 1/tx | keyed ÷ pgbench \
         | CPU µs per create, no key | keyed | keyed ÷ unkeyed CPU |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        cycles.len()
    );
    let micros = |cpu: Option<Duration>| cpu.map_or("n/a".to_owned(), |cpu| format!("{:.1}", cpu.as_secs_f64() * 1e6));
    for (cycle, compared) in cycles.iter().enumerate() {
        table.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:.2}x | {:.0} | {:.2}x | {} | {} | {} |\n",
            cycle + 1,
            compared.without,
            compared.with,
            compared.with / compared.without,
            compared.single,
            compared.with / compared.single,
            micros(compared.cpu_without),
            micros(compared.cpu_with),
            compared.cpu_ratio().map_or("n/a".to_owned(), |ratio| format!("{ratio:.2}x")),
        ));
    }
    let median = |ratios: Vec<f64>| {
        let mut ratios = ratios;
        ratios.sort_by(f64::total_cmp);
        load::percentile(&ratios, 50.0).unwrap_or(0.0)
    };
    // Every turn lasts as long: the mean rate is each contender's creates over its time.
    let mean = |rate: fn(&Compared) -> f64| cycles.iter().map(rate).sum::<f64>() / cycles.len().max(1) as f64;
    let (without, with, single) = (mean(|c| c.without), mean(|c| c.with), mean(|c| c.single));
    table.push_str(&format!(
        "\nOver all {} cycles: {with:.0} keyed creates/s, {without:.0} unkeyed, pgbench {single:.0}/s: keyed ÷ \
         unkeyed {:.2}x, keyed ÷ pgbench {:.2}x (issue 14 asks at least 0.85x and 7x). Medians of the cycles: \
         {:.2}x and {:.2}x; a keyed create's CPU ÷ an unkeyed one's {:.2}x.\n",
        cycles.len(),
        with / without,
        with / single,
        median(cycles.iter().map(|c| c.with / c.without).collect()),
        median(cycles.iter().map(|c| c.with / c.single).collect()),
        median(cycles.iter().filter_map(Compared::cpu_ratio).collect()),
    ));
    table
}

/// One cycle of the keyed comparison: the rates without and with keys, pgbench's,
/// and the CPU per create of the api's two turns.
struct Compared {
    without: f64,
    with: f64,
    single: f64,
    cpu_without: Option<Duration>,
    cpu_with: Option<Duration>,
}

impl Compared {
    /// How much more CPU a keyed create took than an unkeyed one.
    fn cpu_ratio(&self) -> Option<f64> {
        Some(self.cpu_with?.as_secs_f64() / self.cpu_without?.as_secs_f64())
    }
}

/// How the report names an api run.
fn run_label(coalescing: bool, keys: bool) -> String {
    format!("coalescing {}{}", if coalescing { "on" } else { "off" }, if keys { ", Idempotency-Key" } else { "" })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cycle(without: f64, with: f64, single: f64, cpu: Option<(u64, u64)>) -> Compared {
        let micros = |m: u64| Duration::from_micros(m);
        Compared {
            without,
            with,
            single,
            cpu_without: cpu.map(|(without, _)| micros(without)),
            cpu_with: cpu.map(|(_, with)| micros(with)),
        }
    }

    #[test]
    fn the_interleaved_report_gives_each_contenders_totals_and_the_medians_of_the_cycles() {
        let cycles = [
            cycle(10_000.0, 9_000.0, 1_000.0, Some((100, 110))),
            cycle(12_000.0, 9_000.0, 1_500.0, Some((100, 130))),
            cycle(8_000.0, 9_000.0, 1_100.0, None),
        ];
        let report = interleaved_report(256, Duration::from_secs(2), &cycles);

        assert!(report.contains("| 2 | 12000 | 9000 | 0.75x | 1500 | 6.00x | 100.0 | 130.0 | 1.30x |"), "{report}");
        assert!(report.contains("| 3 | 8000 | 9000 | 1.12x | 1100 | 8.18x | n/a | n/a | n/a |"), "{report}");
        // Totals: 9000 keyed against 10000 unkeyed and 1200 pgbench.
        assert!(report.contains("Over all 3 cycles: 9000 keyed creates/s, 10000 unkeyed, pgbench 1200/s"), "{report}");
        assert!(report.contains("keyed ÷ unkeyed 0.90x, keyed ÷ pgbench 7.50x"), "{report}");
        // Medians: of 0.90, 0.75, 1.125 and of 9.0, 6.0, 8.18; CPU of 1.10 and 1.30 (the upper).
        assert!(report.contains("Medians of the cycles: 0.90x and 8.18x"), "{report}");
        assert!(report.contains("an unkeyed one's 1.30x"), "{report}");
    }
}
