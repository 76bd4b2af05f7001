//! What the relay costs Postgres while nothing happens: role-session heartbeats that
//! are no transactions, and a leader that looks at the outbox less and less often
//! while no commit is notified, yet publishes a new row at once.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use rsvp_contract::{
    role_lock::{RoleSession, MIN_TIMEOUT},
    testing::{self, Broker},
};
use sqlx::{postgres::PgConnectOptions, Connection, PgConnection};
use uuid::Uuid;

use crate::helpers::{eventually, fresh_db, receipts, settings, write_rows, RelayProcess};

/// Transactions committed in the session's database so far, with the session's own
/// counts published first: two statements, so two transactions of its own.
async fn commits(session: &mut RoleSession) -> i64 {
    session
        .run(async |conn| {
            sqlx::query("select pg_stat_force_next_flush()").execute(&mut *conn).await?;
            sqlx::query_scalar::<_, i64>("select xact_commit from pg_stat_database where datname = current_database()")
                .fetch_one(&mut *conn)
                .await
        })
        .await
        .expect("the role is held")
        .expect("read the statistics")
}

#[tokio::test]
async fn a_role_session_kept_alive_for_ten_times_its_timeout_costs_postgres_no_transaction() {
    // Arrange: a database of its own, so that its transactions are the session's.
    let server = testing::test_server_url();
    let name = format!("test_{}", Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&server).await.unwrap();
    sqlx::query(&format!(r#"create database "{name}""#)).execute(&mut admin).await.unwrap();
    let (base, _) = server.rsplit_once('/').unwrap();
    let options: PgConnectOptions = format!("{base}/{name}").parse().unwrap();
    let mut session = RoleSession::connect(&options, "test", MIN_TIMEOUT).await.unwrap();
    let before = commits(&mut session).await;

    // Act: wait ten role-loss timeouts; the session is pinged every third of one.
    let waited = session.keep_alive_while(tokio::time::sleep(MIN_TIMEOUT * 10)).await;

    // Assert: Postgres kept the session (it ends one unused for the timeout), and the
    // thirty-odd pings were no transactions: only the two statements of `commits`
    // count (one more is allowed for an autovacuum worker visiting the new database).
    waited.expect("the pings kept the session");
    let after = commits(&mut session).await;
    assert!(!session.is_lost());
    session.close().await;
    let _ = sqlx::query(&format!(r#"drop database "{name}" with (force)"#)).execute(&mut admin).await;
    assert!(after - before <= 3, "{} transactions while the session was only pinged", after - before);
}

/// Samples which reads of the outbox the relay's connections start during `window`:
/// each read shows as a new `query_start` of a backend running the read's text.
async fn outbox_reads_during(admin: &mut PgConnection, database: &str, window: Duration) -> usize {
    let mut seen = BTreeSet::new();
    let started = Instant::now();
    while started.elapsed() < window {
        let starts: Vec<(i32, String)> = sqlx::query_as(
            "select pid, query_start::text from pg_stat_activity
              where datname = $1 and query like '%o.payload::text as payload%' and query_start is not null",
        )
        .bind(database)
        .fetch_all(&mut *admin)
        .await
        .unwrap();
        seen.extend(starts);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    seen.len()
}

#[tokio::test]
async fn an_idle_leader_reads_the_outbox_less_and_less_often_and_still_publishes_a_new_row_at_once() {
    // Arrange: the real relay leading, polling from every 200 ms up to every 1.6 s.
    let broker = Broker::start().await;
    let db = fresh_db().await;
    let mut settings = settings(&db, &broker.address());
    settings.poll_interval = Duration::from_millis(200);
    settings.idle_poll_max = Duration::from_millis(1600);
    let relay = RelayProcess::spawn(&settings, &[]);
    write_rows(&db.pool, 1, 1).await;
    eventually(Duration::from_secs(30), "the first row published", || async {
        (receipts(&db.pool).await.len() == 1).then_some(())
    })
    .await;
    let database: String = sqlx::query_scalar("select current_database()").fetch_one(&db.pool).await.unwrap();
    let mut admin = PgConnection::connect(&testing::test_server_url()).await.unwrap();

    // Act: 6 s without a write, after 2 s for the waits to stretch.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let reads = outbox_reads_during(&mut admin, &database, Duration::from_secs(6)).await;

    // Assert: about one read per 1.6 s (polling every 200 ms would be 30), and a row
    // written now is still published (the bound is long: another workload's open
    // transaction anywhere in the cluster holds every new row back).
    assert!(reads <= 8, "{reads} reads of the outbox in 6 idle seconds");
    let written_at = Instant::now();
    write_rows(&db.pool, 1, 1).await;
    eventually(Duration::from_secs(30), "the new row published", || async {
        (receipts(&db.pool).await.len() == 2).then_some(())
    })
    .await;
    eprintln!("idle leader: {reads} outbox reads in 6 s; a new row published after {:?}", written_at.elapsed());
    drop(relay);
}
