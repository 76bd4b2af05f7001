//! The baseline: pgbench running the api's transaction shape on the same Postgres.

use std::{process::Stdio, time::Duration};

use anyhow::Context;

/// What one rsvp write costs the database: its rsvp row, the event's seat count and
/// its outbox row (whose trigger notifies the relay), as the api writes them.
const ONE_PER_TRANSACTION: &str = r#"
\set e random(1, :events)
begin;
insert into rsvps (id, event_id, name, email, status, guests, token_hash)
  select gen_random_uuid(), id, 'Bench', gen_random_uuid()::text || '@bench.example', 'going', 0,
         sha256(gen_random_uuid()::text::bytea)
  from bench_events where n = :e;
update events set seats_taken = seats_taken + 1 where id = (select id from bench_events where n = :e);
insert into outbox (aggregate_type, aggregate_id, kafka_key, event_type, message_id, rsvp_version, payload)
  select 'rsvp', gen_random_uuid(), id::text, 'RSVP_CREATED', gen_random_uuid(), 1, '{payload}'::json
  from bench_events where n = :e;
commit;
"#;

/// The same rows, fifty rsvps to one transaction.
const FIFTY_PER_TRANSACTION: &str = r#"
\set e random(1, :events)
begin;
with inserted as (
  insert into rsvps (id, event_id, name, email, status, guests, token_hash)
    select gen_random_uuid(), b.id, 'Bench', gen_random_uuid()::text || '@bench.example', 'going', 0,
           sha256(gen_random_uuid()::text::bytea)
    from bench_events b, generate_series(1, 50) where b.n = :e
    returning id, event_id)
insert into outbox (aggregate_type, aggregate_id, kafka_key, event_type, message_id, rsvp_version, payload)
  select 'rsvp', id, event_id::text, 'RSVP_CREATED', gen_random_uuid(), 1, '{payload}'::json from inserted;
update events set seats_taken = seats_taken + 50 where id = (select id from bench_events where n = :e);
commit;
"#;

#[derive(Clone, Copy)]
pub(crate) enum Shape {
    OnePerTransaction,
    FiftyPerTransaction,
}

impl Shape {
    pub(crate) fn rsvps_per_transaction(self) -> f64 {
        match self {
            Shape::OnePerTransaction => 1.0,
            Shape::FiftyPerTransaction => 50.0,
        }
    }
}

/// Creates `events` events as the api does, numbered 1..=N in `bench_events` so that
/// pgbench can pick a random one.
pub(crate) async fn prepare(db: &sqlx::PgPool, events: usize) -> anyhow::Result<()> {
    sqlx::query(
        "insert into events (id, title, starts_at)
         select gen_random_uuid(), 'Bench ' || i, '2099-01-01T00:00:00Z' from generate_series(1, $1) i",
    )
    .bind(events as i32)
    .execute(db)
    .await?;
    sqlx::raw_sql(
        "create table bench_events (n int primary key, id uuid not null);
         insert into bench_events select row_number() over (order by id), id from events;",
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Rsvps per second pgbench commits with `clients` clients for `duration`, on the
/// database at `database_url` (libpq takes the URL as pgbench's database name, so
/// that the baseline runs on the server the api's runs use, `BENCH_DATABASE_URL`'s).
pub(crate) async fn rsvps_per_second(
    database_url: &str,
    shape: Shape,
    clients: usize,
    duration: Duration,
    events: usize,
    payload: &str,
) -> anyhow::Result<f64> {
    let script = match shape {
        Shape::OnePerTransaction => ONE_PER_TRANSACTION,
        Shape::FiftyPerTransaction => FIFTY_PER_TRANSACTION,
    };
    // pgbench has no quoted variables: the payload goes into the script as a literal.
    let script = script.replace("{payload}", &payload.replace('\'', "''"));
    let file = std::env::temp_dir().join(format!("rsvp-bench-{}.sql", uuid::Uuid::new_v4().simple()));
    std::fs::write(&file, script)?;
    let output = tokio::process::Command::new("pgbench")
        .args(["-n", "-j", "2", "-P", "1"])
        .args(["-c", &clients.to_string(), "-T", &duration.as_secs().max(1).to_string()])
        .args(["-D", &format!("events={events}")])
        .arg("-f")
        .arg(&file)
        .arg(database_url)
        .stderr(Stdio::inherit()) // pgbench -P prints progress there
        .output()
        .await
        .context("running pgbench (Debian package postgresql-client)")?;
    let _ = std::fs::remove_file(&file);
    let stdout = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(output.status.success(), "pgbench failed: {stdout}");
    let tps = stdout
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|n| n.parse::<f64>().ok())
        .with_context(|| format!("no tps in pgbench output: {stdout}"))?;
    Ok(tps * shape.rsvps_per_transaction())
}
