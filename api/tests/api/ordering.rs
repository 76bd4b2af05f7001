//! The outbox in the relay's `(xid, id)` order carries each rsvp's versions in commit
//! order, also when a shared transaction got its xid and then waited for a lock.

use std::time::Duration;

use reqwest::StatusCode;
use rsvp_api::{
    coalesce::{CoalescingSettings, Writer},
    domain::{RsvpChanges, UpdateRsvpRequest},
    store::transactions::TxTimeouts,
    writes::{Change, WriteOp},
};
use serde_json::json;
use sqlx::Connection;

use crate::helpers::{id_and_token_of, lock_waiters, spawn_app_with, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_transaction_waiting_for_a_locked_event_does_not_put_its_change_of_an_rsvp_before_a_later_commit() {
    // Arrange: events E1 < E2 < E3, rsvp r in E3, one lane that gathers every write
    // of the test into one transaction, and a writer without coalescing.
    let app = spawn_app_with(|settings| {
        settings.write_workers = 1;
        settings.write_batch_wait = Duration::from_millis(400);
        // The shared transaction waits for E2 for as long as the test holds it.
        settings.database_lock_timeout = Duration::from_secs(60);
        settings.database_statement_timeout = Duration::from_secs(60);
    })
    .await;
    let timeouts = TxTimeouts { lock: Duration::from_secs(60), statement: Duration::from_secs(60) };
    let alone = Writer::start(
        app.db.clone(),
        CoalescingSettings {
            enabled: false,
            max_batch: 1,
            max_wait: Duration::ZERO,
            workers: 1,
            timeouts,
            request_timeout: Duration::from_secs(10),
        },
    );
    let mut events = Vec::new();
    for _ in 0..3 {
        events.push(app.create_event(None).await);
    }
    events.sort();
    let (e1, e2, e3) = (events[0], events[1], events[2]);
    let created = app.create_rsvp(e3, "r@example.com", 1).await;
    let (r, token) = id_and_token_of(&created);
    let mut holder = sqlx::PgConnection::connect_with(&app.db.connect_options()).await.unwrap();
    let mut held = holder.begin().await.unwrap();
    sqlx::query("select id from events where id = $1 for update").bind(e2).execute(&mut *held).await.unwrap();

    // Act: creates in E1 and E2 and a cancel of r share one transaction, which waits
    // for E2; meanwhile r is changed alone; then E2 is released.
    let mut shared = tokio::task::JoinSet::new();
    for (path, body) in [
        (format!("/events/{e1}/rsvps"), json!({"name": "One", "email": "one@example.com", "status": "going"})),
        (format!("/events/{e2}/rsvps"), json!({"name": "Two", "email": "two@example.com", "status": "going"})),
        ("/rsvps/cancel".to_owned(), json!({"token": token})),
    ] {
        let request = app.client.post(app.url(&path)).json(&body);
        shared.spawn(async move { request.send().await.unwrap().status() });
    }
    wait_for("the shared transaction waits for E2", async || lock_waiters(&app.db).await >= 1).await;
    let changes: UpdateRsvpRequest = serde_json::from_value(json!({"name": "Renamed"})).unwrap();
    let op =
        WriteOp::Change(Change::Update { id: r, token: token.clone(), changes: RsvpChanges::parse(changes).unwrap() });
    let update = tokio::spawn(async move { alone.run(op, None, None).await.map(|o| o.outcome.written.rsvp.version) });
    // The update either commits now (nothing orders it after the waiting transaction)
    // or waits for r's event behind that transaction.
    wait_for("the update committed or waits", async || update.is_finished() || lock_waiters(&app.db).await >= 2).await;
    held.rollback().await.unwrap();

    // Assert: all succeeded; in (xid, id) order r's versions increase.
    let statuses = shared.join_all().await;
    assert!(statuses.iter().all(|s| *s == StatusCode::CREATED || *s == StatusCode::OK), "{statuses:?}");
    assert!(update.await.unwrap().is_ok());
    let rows: Vec<(i64, String)> =
        sqlx::query_as("select rsvp_version, event_type from outbox where aggregate_id = $1 order by xid, id")
            .bind(r)
            .fetch_all(&app.db)
            .await
            .unwrap();
    let versions: Vec<i64> = rows.iter().map(|row| row.0).collect();
    assert_eq!(versions, vec![1, 2, 3], "r's outbox rows in the relay's order: {rows:?}");
    let shared_xids: i64 = sqlx::query_scalar(
        "select count(distinct xid) from outbox where event_type = 'RSVP_CANCELLED' or kafka_key in ($1, $2)",
    )
    .bind(e1.to_string())
    .bind(e2.to_string())
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(shared_xids, 1, "the creates in E1 and E2 and the cancel shared one transaction");
}
