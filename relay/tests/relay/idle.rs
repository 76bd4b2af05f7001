//! What the relay costs Postgres while nothing happens: role-session heartbeats that
//! are no transactions.

use rsvp_contract::{
    role_lock::{RoleSession, MIN_TIMEOUT},
    testing,
};
use sqlx::{postgres::PgConnectOptions, Connection, PgConnection};
use uuid::Uuid;

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
