//! No write outlives its answer, and every wait is bounded: writes whose request gave
//! up are not applied, writes that may have committed say so, a failed COMMIT is
//! settled by asking Postgres, held rows and an unreachable Postgres cost a bounded
//! wait.

use std::{str::FromStr, time::Duration};

use reqwest::StatusCode;
use rsvp_api::config::Settings;
use rsvp_contract::testing::{test_server_url, TcpProxy};
use serde_json::{json, Value};
use sqlx::{postgres::PgConnectOptions, Connection, PgConnection, PgPool};
use tokio::time::Instant;
use uuid::Uuid;

use crate::helpers::{
    assert_error, block_commits_inserting, lock_waiters, spawn_app_with, unblock_commits, wait_for, TestApp,
};

fn going(email: &str) -> Value {
    json!({"name": "Ada", "email": email, "status": "going"})
}

/// One lane, and lock and statement timeouts longer than any test waits.
fn one_patient_lane(settings: &mut Settings) {
    settings.write_workers = 1;
    settings.database_lock_timeout = Duration::from_secs(60);
    settings.database_statement_timeout = Duration::from_secs(60);
}

/// A connection that holds `event_id`'s row lock until its transaction ends.
async fn hold_event_row(db: &PgPool, event_id: Uuid) -> PgConnection {
    let mut holder = PgConnection::connect_with(&db.connect_options()).await.unwrap();
    sqlx::query("begin").execute(&mut holder).await.unwrap();
    sqlx::query("select id from events where id = $1 for update").bind(event_id).execute(&mut holder).await.unwrap();
    holder
}

async fn emails(db: &PgPool) -> Vec<String> {
    sqlx::query_scalar("select email from rsvps order by email").fetch_all(db).await.unwrap()
}

async fn outbox_rows(db: &PgPool) -> i64 {
    sqlx::query_scalar("select count(*) from outbox").fetch_one(db).await.unwrap()
}

/// The api with its database behind `proxy`, so that a test can cut it.
async fn spawn_app_behind(proxy: &TcpProxy, configure: impl FnOnce(&mut Settings)) -> TestApp {
    let proxied = proxy.address().to_string();
    spawn_app_with(move |settings| {
        let options = PgConnectOptions::from_str(&test_server_url()).unwrap();
        let direct = format!("{}:{}", options.get_host(), options.get_port());
        settings.common.database_url = settings.common.database_url.expose().replacen(&direct, &proxied, 1).into();
        configure(settings);
    })
    .await
}

async fn postgres_proxy() -> TcpProxy {
    let options = PgConnectOptions::from_str(&test_server_url()).unwrap();
    let target = tokio::net::lookup_host((options.get_host(), options.get_port())).await.unwrap().next().unwrap();
    TcpProxy::start(target).await
}

#[tokio::test]
async fn a_queued_write_whose_request_timed_out_is_answered_request_timeout_and_never_applied() {
    // Arrange: the lane's transaction waits for the event row a second connection holds.
    let app = spawn_app_with(|settings| {
        one_patient_lane(settings);
        settings.request_timeout = Duration::from_secs(1);
    })
    .await;
    let event_id = app.create_event(None).await;
    let mut holder = hold_event_row(&app.db, event_id).await;

    // Act: two creates time out while the lane is stuck; then the row is released.
    let (late, later) = (going("late@example.com"), going("later@example.com"));
    let (first, second) = tokio::join!(app.create_rsvp_with(event_id, &late), app.create_rsvp_with(event_id, &later));
    let first_fields = assert_error(first, StatusCode::SERVICE_UNAVAILABLE, "request_timeout").await;
    assert!(first_fields.is_null());
    assert_error(second, StatusCode::SERVICE_UNAVAILABLE, "request_timeout").await;
    sqlx::query("commit").execute(&mut holder).await.unwrap();
    app.create_rsvp(event_id, "after@example.com", 0).await;

    // Assert: only the write answered 201 is there, with its one outbox row.
    assert_eq!(emails(&app.db).await, vec!["after@example.com"]);
    assert_eq!(outbox_rows(&app.db).await, 1);
    let seats: i32 = sqlx::query_scalar("select seats_taken from events").fetch_one(&app.db).await.unwrap();
    assert_eq!(seats, 1);
    let metrics = app.scraped_metrics().await;
    assert!(metrics.contains(r#"api_write_deadlines_missed_total{outcome="not_applied"} 2"#), "{metrics}");
}

#[tokio::test]
async fn a_queued_write_whose_client_went_away_is_never_applied() {
    // Arrange: a request timeout longer than the test, and a lane stuck on a held row.
    let app = spawn_app_with(|settings| {
        one_patient_lane(settings);
        settings.request_timeout = Duration::from_secs(60);
    })
    .await;
    let event_id = app.create_event(None).await;
    let mut holder = hold_event_row(&app.db, event_id).await;
    let (client, url) = (app.client.clone(), app.url(&format!("/events/{event_id}/rsvps")));
    let stays = tokio::spawn(async move { client.post(url).json(&going("stays@example.com")).send().await });
    wait_for("the lane waits for the held row", async || lock_waiters(&app.db).await >= 1).await;

    // Act: a client sends a create behind it and goes away; then the row is released.
    let (client, url) = (app.client.clone(), app.url(&format!("/events/{event_id}/rsvps")));
    let leaves = tokio::spawn(async move { client.post(url).json(&going("gone@example.com")).send().await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    leaves.abort();
    assert!(leaves.await.unwrap_err().is_cancelled());
    tokio::time::sleep(Duration::from_millis(200)).await;
    sqlx::query("commit").execute(&mut holder).await.unwrap();

    // Assert: the waiting client's write is applied; the one that left is not, also
    // once the lane has moved past it.
    assert_eq!(stays.await.unwrap().unwrap().status(), StatusCode::CREATED);
    app.create_rsvp(event_id, "after@example.com", 0).await;
    assert_eq!(emails(&app.db).await, vec!["after@example.com", "stays@example.com"]);
    assert_eq!(outbox_rows(&app.db).await, 2);
}

#[tokio::test]
async fn a_write_still_committing_at_the_deadline_answers_outcome_unknown_with_a_hint_to_retry_with_its_key() {
    // Arrange: COMMIT blocks until the test lets it through.
    let app = spawn_app_with(|settings| {
        one_patient_lane(settings);
        settings.request_timeout = Duration::from_secs(1);
    })
    .await;
    let event_id = app.create_event(None).await;
    let mut holder = block_commits_inserting(&app.db, "outbox", "true").await;

    // Act
    let response = app.create_rsvp_with(event_id, &going("maybe@example.com")).await;

    // Assert: the answer says it may have been applied; and it then is.
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "outcome_unknown", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("Idempotency-Key"), "{body}");
    unblock_commits(&mut holder).await;
    wait_for("the write committed", async || outbox_rows(&app.db).await == 1).await;
    assert_eq!(emails(&app.db).await, vec!["maybe@example.com"]);
    let metrics = app.scraped_metrics().await;
    assert!(metrics.contains(r#"api_write_deadlines_missed_total{outcome="unknown"} 1"#), "{metrics}");
}

#[tokio::test]
async fn a_commit_that_hangs_past_every_deadline_frees_its_lane_for_the_next_write() {
    // Arrange: one lane; COMMITs of writes to the first event block until the test
    // lets them through, those to the second do not.
    let app = spawn_app_with(|settings| {
        one_patient_lane(settings);
        settings.request_timeout = Duration::from_secs(1);
    })
    .await;
    let (stuck, other) = (app.create_event(None).await, app.create_event(None).await);
    let mut holder = block_commits_inserting(&app.db, "outbox", &format!("new.kafka_key = '{stuck}'")).await;

    // Act
    let first = app.create_rsvp_with(stuck, &going("stuck@example.com")).await;
    let second = app.create_rsvp_with(other, &going("next@example.com")).await;

    // Assert: the first may still commit and says so; the lane moved on to the second.
    assert_error(first, StatusCode::SERVICE_UNAVAILABLE, "outcome_unknown").await;
    assert_eq!(second.status(), StatusCode::CREATED);
    unblock_commits(&mut holder).await;
    wait_for("the first write committed", async || outbox_rows(&app.db).await == 2).await;
    assert_eq!(emails(&app.db).await, vec!["next@example.com", "stuck@example.com"]);
}

#[tokio::test]
async fn a_commit_whose_connection_broke_but_that_committed_is_answered_201_and_never_run_again() {
    a_commit_whose_connection_broke_but_that_committed(None).await;
}

#[tokio::test]
async fn a_keyed_commit_whose_connection_broke_but_that_committed_is_answered_201_and_replayed_to_its_retry() {
    // The keyed batch learns its xid from the statement that inserts the records, not
    // from a query of its own: the settling must find the same transaction.
    a_commit_whose_connection_broke_but_that_committed(Some("broken-commit-key")).await;
}

/// Sends `request`, whose write's `COMMIT` waits in a deferred trigger until the api's
/// connection to Postgres (through `proxy`) has broken; then lets the commit go
/// through, and returns the answer. The trigger stays until the test drops it.
async fn send_with_its_commit_broken_on_the_wire(
    app: &TestApp,
    proxy: &TcpProxy,
    request: reqwest::RequestBuilder,
) -> reqwest::Response {
    let mut holder = block_commits_inserting(&app.db, "outbox", "true").await;
    let answer = tokio::spawn(request.send());
    wait_for("the COMMIT waits", async || lock_waiters(&app.db).await >= 1).await;
    proxy.cut();
    proxy.restore();
    tokio::time::sleep(Duration::from_millis(300)).await;
    unblock_commits(&mut holder).await;
    answer.await.unwrap().unwrap()
}

/// A create whose `COMMIT` broke on the wire but committed: answered as the success it
/// was, applied once; with `key`, a retry gets the same answer from its record.
async fn a_commit_whose_connection_broke_but_that_committed(key: Option<&str>) {
    // Arrange: the api reaches Postgres through a proxy.
    let proxy = postgres_proxy().await;
    let app = spawn_app_behind(&proxy, one_patient_lane).await;
    let event_id = app.create_event(Some(10)).await;
    let post = || {
        let request = app.client.post(app.url(&format!("/events/{event_id}/rsvps"))).json(&going("once@example.com"));
        match key {
            Some(key) => request.header("idempotency-key", key),
            None => request,
        }
    };

    // Act
    let response = send_with_its_commit_broken_on_the_wire(&app, &proxy, post()).await;

    // Assert: the write is answered as the success it was, with a working token, and
    // was applied once.
    assert_eq!(response.status(), StatusCode::CREATED);
    let created: Value = response.json().await.unwrap();
    assert_eq!(emails(&app.db).await, vec!["once@example.com"]);
    assert_eq!(outbox_rows(&app.db).await, 1);
    let seats: i32 = sqlx::query_scalar("select seats_taken from events").fetch_one(&app.db).await.unwrap();
    assert_eq!(seats, 1);
    sqlx::raw_sql("drop trigger wait_at_commit on outbox").execute(&app.db).await.unwrap();
    if key.is_some() {
        let retried = post().send().await.unwrap();
        assert_eq!(retried.status(), StatusCode::CREATED);
        assert_eq!(retried.headers()["idempotent-replayed"], "true");
        assert_eq!(retried.json::<Value>().await.unwrap(), created);
        assert_eq!(outbox_rows(&app.db).await, 1);
    }
    let cancelled = app.cancel_rsvp(created["token"].as_str().unwrap()).await;
    assert_eq!(cancelled.status(), StatusCode::OK);
}

/// A cancel whose `COMMIT` broke on the wire but committed. A batch without creates
/// learns its xid from its writes' outbox statements, as a batch of creates does:
/// the settling must find the same transaction, and answer the success it was.
#[tokio::test]
async fn a_cancel_whose_commit_connection_broke_but_that_committed_is_answered_200_and_applied_once() {
    // Arrange: as above, with the rsvp created before any COMMIT is held.
    let proxy = postgres_proxy().await;
    let app = spawn_app_behind(&proxy, one_patient_lane).await;
    let event_id = app.create_event(Some(10)).await;
    let created: Value = app.create_rsvp_with(event_id, &going("cancel@example.com")).await.json().await.unwrap();
    let token = created["token"].as_str().unwrap().to_owned();
    let cancel = app.client.post(app.url("/rsvps/cancel")).json(&json!({ "token": token }));

    // Act
    let response = send_with_its_commit_broken_on_the_wire(&app, &proxy, cancel).await;

    // Assert: answered as the success it was, and applied once.
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.json::<Value>().await.unwrap()["status"], "cancelled");
    assert_eq!(outbox_rows(&app.db).await, 2);
    let seats: i32 = sqlx::query_scalar("select seats_taken from events").fetch_one(&app.db).await.unwrap();
    assert_eq!(seats, 0);
    sqlx::raw_sql("drop trigger wait_at_commit on outbox").execute(&app.db).await.unwrap();
    let again = app.cancel_rsvp(&token).await;
    assert_error(again, StatusCode::CONFLICT, "conflict").await;
}

#[tokio::test]
async fn a_held_event_row_fails_only_its_own_write_with_lock_timeout_and_the_rest_of_its_batch_commits() {
    // Arrange: one lane gathering both writes into one batch; a short lock timeout;
    // the first event's row held by another connection for the whole test.
    let app = spawn_app_with(|settings| {
        settings.write_workers = 1;
        settings.write_batch_wait = Duration::from_millis(300);
        settings.database_lock_timeout = Duration::from_millis(500);
    })
    .await;
    let (held, free) = (app.create_event(None).await, app.create_event(None).await);
    let mut holder = hold_event_row(&app.db, held).await;

    // Act
    let (to_held, to_free) = (going("held@example.com"), going("free@example.com"));
    let both = async { tokio::join!(app.create_rsvp_with(held, &to_held), app.create_rsvp_with(free, &to_free)) };
    let (on_held, on_free) = tokio::time::timeout(Duration::from_secs(8), both)
        .await
        .expect("a held row stalled the writes past the lock timeout");

    // Assert
    assert_error(on_held, StatusCode::SERVICE_UNAVAILABLE, "lock_timeout").await;
    assert_eq!(on_free.status(), StatusCode::CREATED);
    assert_eq!(emails(&app.db).await, vec!["free@example.com"]);
    assert_eq!(outbox_rows(&app.db).await, 1);
    sqlx::query("rollback").execute(&mut holder).await.unwrap();
}

#[tokio::test]
async fn a_statement_running_past_the_statement_timeout_answers_503_and_writes_nothing() {
    let app = spawn_app_with(|settings| settings.database_statement_timeout = Duration::from_millis(300)).await;
    let event_id = app.create_event(None).await;
    sqlx::raw_sql(
        "create function slow_insert() returns trigger language plpgsql as
           $$ begin perform pg_sleep(3); return new; end; $$;
         create trigger slow_insert before insert on rsvps for each row execute function slow_insert();",
    )
    .execute(&app.db)
    .await
    .unwrap();

    let response = app.create_rsvp_with(event_id, &going("slow@example.com")).await;

    assert_error(response, StatusCode::SERVICE_UNAVAILABLE, "statement_timeout").await;
    assert!(emails(&app.db).await.is_empty());
    assert_eq!(outbox_rows(&app.db).await, 0);
}

#[tokio::test]
async fn with_postgres_unreachable_writes_fail_fast_with_503_and_the_lane_recovers_when_it_returns() {
    // Arrange
    let proxy = postgres_proxy().await;
    let request_timeout = Duration::from_secs(2);
    let app = spawn_app_behind(&proxy, |settings| {
        settings.write_workers = 1;
        settings.request_timeout = request_timeout;
    })
    .await;
    let event_id = app.create_event(None).await;

    // Act: Postgres goes away under a burst of writes to one lane.
    proxy.cut();
    let started = Instant::now();
    let mut writes = tokio::task::JoinSet::new();
    for i in 0..20 {
        let (client, url) = (app.client.clone(), app.url(&format!("/events/{event_id}/rsvps")));
        writes.spawn(async move { client.post(url).json(&going(&format!("p{i}@example.com"))).send().await.unwrap() });
    }
    let responses = writes.join_all().await;
    let answered_within = started.elapsed();
    proxy.restore();

    // Assert: each is a JSON 503 that says nothing was written, within the request
    // timeout; once Postgres is back, the lane serves the next write at once.
    for response in responses {
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body: Value = response.json().await.unwrap();
        let code = body["error"]["code"].as_str().unwrap_or_default().to_owned();
        assert!(["database_unavailable", "request_timeout"].contains(&code.as_str()), "{body}");
    }
    assert!(answered_within < request_timeout + Duration::from_secs(1), "answered after {answered_within:?}");
    app.create_rsvp(event_id, "back@example.com", 0).await;
    assert_eq!(emails(&app.db).await, vec!["back@example.com"]);
    assert_eq!(outbox_rows(&app.db).await, 1);
}

#[tokio::test]
async fn the_openapi_document_gives_every_operation_a_503_that_names_its_codes() {
    let app = spawn_app_with(|_| {}).await;

    let doc: Value = app.get("/openapi.json").await.json().await.unwrap();

    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            if !["get", "post", "patch", "put", "delete"].contains(&method.as_str()) {
                continue;
            }
            operations += 1;
            let description = operation["responses"]["503"]["description"].as_str().unwrap_or_default();
            for code in
                ["request_timeout", "outcome_unknown", "lock_timeout", "statement_timeout", "database_unavailable"]
            {
                assert!(description.contains(code), "{method} {path}: {code} not in {description:?}");
            }
        }
    }
    assert!(operations >= 9, "{operations} operations");
}
