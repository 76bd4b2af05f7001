//! `Idempotency-Key`: a write is done once per key; retries get its first answer, in
//! a batch or alone, and the database keeps neither the key nor a token readable.

use std::time::Duration;

use reqwest::{Method, Response, StatusCode};
use rsvp_api::{config::Settings, store::idempotency as idempotency_store};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{
    assert_error, block_commits_inserting, id_of, in_a_year, spawn_app, spawn_app_with, spawn_app_with_one_wide_batch,
    unblock_commits, until_advisory_lock_waiters, wait_for, TestApp, ADMIN_TOKEN,
};

/// One request with an `Idempotency-Key` (and a bearer token, a JSON body if given).
async fn send(
    app: &TestApp,
    method: Method,
    path: &str,
    key: &str,
    bearer: Option<&str>,
    body: Option<&Value>,
) -> Response {
    let mut request = app.client.request(method, app.url(path)).header("idempotency-key", key);
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    request.send().await.expect("request")
}

fn replayed(response: &Response) -> bool {
    response.headers().get("idempotent-replayed").is_some_and(|v| v == "true")
}

async fn records(app: &TestApp) -> i64 {
    sqlx::query_scalar("select count(*) from idempotency_keys").fetch_one(&app.db).await.unwrap()
}

fn rsvp_body(email: &str) -> Value {
    json!({"name": "Ada", "email": email, "status": "going", "guests": 1})
}

/// Sends the same create twice with one key and checks the retry is the first answer.
async fn assert_a_retried_create_writes_once(app: &TestApp) {
    let event_id = app.create_event(None).await;
    let path = format!("/events/{event_id}/rsvps");
    let key = Uuid::new_v4().to_string();

    let first = send(app, Method::POST, &path, &key, None, Some(&rsvp_body("ada@example.com"))).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    assert!(!replayed(&first));
    let first: Value = first.json().await.unwrap();
    let retry = send(app, Method::POST, &path, &key, None, Some(&rsvp_body("ada@example.com"))).await;

    assert_eq!(retry.status(), StatusCode::CREATED);
    assert!(replayed(&retry));
    let retry: Value = retry.json().await.unwrap();
    assert_eq!(retry, first, "same rsvp, same token");
    assert!(first["token"].as_str().is_some_and(|t| t.len() == 43));
    assert_eq!(app.written_rows().await, (1, 1, 2), "one outbox row, one rsvp, its two seats");
    assert_eq!(records(app).await, 1);
    // The replayed token is the rsvp's own.
    let cancelled = app.cancel_rsvp(retry["token"].as_str().unwrap()).await;
    assert_eq!(cancelled.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_retried_create_returns_the_same_rsvp_and_token_and_writes_one_row_and_one_outbox_row() {
    let app = spawn_app().await;
    assert_a_retried_create_writes_once(&app).await;
}

#[tokio::test]
async fn with_coalescing_off_a_retried_create_is_answered_from_its_record_and_writes_once() {
    let app = spawn_app_with(|settings| settings.write_coalescing = false).await;
    assert_a_retried_create_writes_once(&app).await;
}

#[tokio::test]
async fn a_retried_event_create_returns_the_same_event_and_creates_one() {
    let app = spawn_app().await;
    let body = json!({"title": "Rust meetup", "starts_at": in_a_year(), "capacity": 10});

    let first = send(&app, Method::POST, "/events", "event-key-1", Some(ADMIN_TOKEN), Some(&body)).await;
    let retry = send(&app, Method::POST, "/events", "event-key-1", Some(ADMIN_TOKEN), Some(&body)).await;

    assert_eq!(first.status(), StatusCode::CREATED);
    assert_eq!(retry.status(), StatusCode::CREATED);
    assert!(replayed(&retry));
    let first: Value = first.json().await.unwrap();
    assert_eq!(retry.json::<Value>().await.unwrap(), first);
    let events: i64 = sqlx::query_scalar("select count(*) from events").fetch_one(&app.db).await.unwrap();
    assert_eq!(events, 1);
    assert_eq!(id_of(&first).to_string().len(), 36);
}

#[tokio::test]
async fn a_retried_event_create_whose_start_has_passed_since_gets_the_first_answer_and_a_new_request_422() {
    let app = spawn_app().await;
    let starts_at = (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
    let body = json!({"title": "Starting soon", "starts_at": starts_at, "capacity": 10});
    let first = send(&app, Method::POST, "/events", "soon-key", Some(ADMIN_TOKEN), Some(&body)).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.unwrap();

    tokio::time::sleep(Duration::from_millis(2500)).await;
    let retry = send(&app, Method::POST, "/events", "soon-key", Some(ADMIN_TOKEN), Some(&body)).await;
    let new_request = send(&app, Method::POST, "/events", "other-key", Some(ADMIN_TOKEN), Some(&body)).await;

    assert_eq!(retry.status(), StatusCode::CREATED);
    assert!(replayed(&retry));
    assert_eq!(retry.json::<Value>().await.unwrap(), first);
    let fields = assert_error(new_request, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    assert!(fields["starts_at"].is_string(), "{fields}");
    let events: i64 = sqlx::query_scalar("select count(*) from events").fetch_one(&app.db).await.unwrap();
    assert_eq!(events, 1);
}

#[tokio::test]
async fn retried_changes_cancels_and_deletes_answer_as_the_first_time_and_write_once() {
    let app = spawn_app().await;
    let event_id = app.create_event(None).await;
    let changed = app.create_rsvp(event_id, "changed@example.com", 0).await;
    let cancelled = app.create_rsvp(event_id, "cancelled@example.com", 0).await;
    let deleted = app.create_rsvp(event_id, "deleted@example.com", 0).await;
    let (changed_id, changed_token) = (id_of(&changed), changed["token"].as_str().unwrap());
    let rows_before = app.outbox_payloads().await.len();

    let mut answers = Vec::new();
    for _attempt in 0..2 {
        let patch = json!({"guests": 2});
        let path = format!("/rsvps/{changed_id}");
        let patched = send(&app, Method::PATCH, &path, "patch-key", Some(changed_token), Some(&patch)).await;
        let cancel = json!({"token": cancelled["token"]});
        let cancel = send(&app, Method::POST, "/rsvps/cancel", "cancel-key", None, Some(&cancel)).await;
        let path = format!("/rsvps/{}", id_of(&deleted));
        let delete = send(&app, Method::DELETE, &path, "delete-key", Some(ADMIN_TOKEN), None).await;
        answers.push((
            (patched.status(), replayed(&patched), patched.text().await.unwrap()),
            (cancel.status(), replayed(&cancel), cancel.text().await.unwrap()),
            (delete.status(), replayed(&delete), delete.text().await.unwrap()),
        ));
    }

    let (first, retry) = (&answers[0], &answers[1]);
    assert_eq!((first.0 .0, first.1 .0, first.2 .0), (StatusCode::OK, StatusCode::OK, StatusCode::NO_CONTENT));
    assert_eq!((retry.0 .0, retry.1 .0, retry.2 .0), (StatusCode::OK, StatusCode::OK, StatusCode::NO_CONTENT));
    assert!(!first.0 .1 && !first.1 .1 && !first.2 .1);
    assert!(retry.0 .1 && retry.1 .1 && retry.2 .1, "every retry is a replay");
    assert_eq!((&first.0 .2, &first.1 .2, &first.2 .2), (&retry.0 .2, &retry.1 .2, &retry.2 .2));
    let types: Vec<Value> = app.outbox_payloads().await[rows_before..].iter().map(|p| p["type"].clone()).collect();
    assert_eq!(types.len(), 3, "one outbox row per write: {types:?}");
    assert_eq!(records(&app).await, 3);
}

#[tokio::test]
async fn the_same_key_with_another_body_or_path_is_422_and_writes_nothing() {
    let app = spawn_app().await;
    let event_id = app.create_event(None).await;
    let path = format!("/events/{event_id}/rsvps");
    let first = send(&app, Method::POST, &path, "reused-key", None, Some(&rsvp_body("ada@example.com"))).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let written = app.written_rows().await;

    let other_body = send(&app, Method::POST, &path, "reused-key", None, Some(&rsvp_body("bob@example.com"))).await;
    let other_path =
        send(&app, Method::POST, "/rsvps/cancel", "reused-key", None, Some(&json!({"token": "whatever"}))).await;

    assert_error(other_body, StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused").await;
    assert_error(other_path, StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused").await;
    assert_eq!(app.written_rows().await, written);
    assert_eq!(records(&app).await, 1);
}

#[tokio::test]
async fn requests_at_once_with_one_key_in_one_batch_write_once_and_all_get_the_first_answer() {
    let app = spawn_app_with_one_wide_batch().await;
    let event_id = app.create_event(None).await;

    let mut pending = tokio::task::JoinSet::new();
    for _ in 0..5 {
        let request = app
            .client
            .post(app.url(&format!("/events/{event_id}/rsvps")))
            .header("idempotency-key", "one-key-at-once")
            .json(&rsvp_body("ada@example.com"));
        pending.spawn(async move {
            let response = request.send().await.unwrap();
            (response.status(), response.json::<Value>().await.unwrap())
        });
    }
    let answers = pending.join_all().await;

    assert!(answers.iter().all(|(status, _)| *status == StatusCode::CREATED), "{answers:?}");
    assert!(answers.iter().all(|(_, body)| *body == answers[0].1), "one rsvp and token for all: {answers:?}");
    assert_eq!(app.written_rows().await, (1, 1, 2));
    assert_eq!(records(&app).await, 1);
}

#[tokio::test]
async fn a_retry_sent_while_the_first_request_is_still_committing_waits_for_it_and_gets_its_answer() {
    // Each request alone, so that the two hold two transactions side by side.
    let app = spawn_app_with(|settings| settings.write_coalescing = false).await;
    let event_id = app.create_event(None).await;
    let mut holder = block_commits_inserting(&app.db, "outbox", "true").await;
    let spawn_request = || {
        let request = app
            .client
            .post(app.url(&format!("/events/{event_id}/rsvps")))
            .header("idempotency-key", "slow-key")
            .json(&rsvp_body("ada@example.com"));
        tokio::spawn(async move {
            let response = request.send().await.unwrap();
            (response.status(), response.json::<Value>().await.unwrap())
        })
    };

    let first = spawn_request();
    until_advisory_lock_waiters(&app.db, 1, "the first commit blocks").await;
    let retry = spawn_request();
    until_advisory_lock_waiters(&app.db, 2, "the retry waits").await;
    assert!(!retry.is_finished(), "the retry answered while the first was still committing");
    unblock_commits(&mut holder).await;
    let (first, retry) = (first.await.unwrap(), retry.await.unwrap());

    assert_eq!(first.0, StatusCode::CREATED);
    assert_eq!(retry, first, "the retry gets the first answer");
    assert_eq!(app.written_rows().await, (1, 1, 2));
}

#[tokio::test]
async fn a_batch_with_a_retry_and_the_reuse_of_an_expired_key_answers_each_and_writes_each_once() {
    let app = spawn_app_with_one_wide_batch().await;
    let event_id = app.create_event(None).await;
    let path = format!("/events/{event_id}/rsvps");
    let old = send(&app, Method::POST, &path, "old-key", None, Some(&rsvp_body("ada@example.com"))).await;
    assert_eq!(old.status(), StatusCode::CREATED);
    expire(&app, 201).await;
    let done = send(&app, Method::POST, &path, "done-key", None, Some(&rsvp_body("bob@example.com"))).await;
    assert_eq!(done.status(), StatusCode::CREATED);
    let done: Value = done.json().await.unwrap();

    let post = |key: Option<&str>, email: &str| {
        let mut request = app.client.post(app.url(&path)).json(&rsvp_body(email));
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        tokio::spawn(async move {
            let response = request.send().await.unwrap();
            (response.status(), replayed(&response), response.json::<Value>().await.unwrap())
        })
    };
    let (retry, reuse, neighbour) = (
        post(Some("done-key"), "bob@example.com"),
        post(Some("old-key"), "carol@example.com"),
        post(None, "dan@example.com"),
    );
    let (retry, reuse, neighbour) = (retry.await.unwrap(), reuse.await.unwrap(), neighbour.await.unwrap());

    assert_eq!((retry.0, retry.1), (StatusCode::CREATED, true), "{retry:?}");
    assert_eq!(retry.2, done, "the retry gets the first answer");
    assert_eq!((reuse.0, reuse.1), (StatusCode::CREATED, false), "{reuse:?}");
    assert_eq!(reuse.2["email"], "carol@example.com", "the expired key's reuse is a new request");
    assert_eq!(neighbour.0, StatusCode::CREATED, "{neighbour:?}");
    assert_eq!(app.written_rows().await, (4, 4, 8), "ada, bob, carol and dan, once each");
    let live: Vec<i16> = sqlx::query_scalar("select status from idempotency_keys where expires_at > now()")
        .fetch_all(&app.db)
        .await
        .unwrap();
    assert_eq!(live, vec![201, 201], "bob's record, and carol's in place of ada's");
    assert_eq!(records(&app).await, 2);
}

#[tokio::test]
async fn after_its_key_expired_an_event_create_is_a_new_request() {
    let app = spawn_app().await;
    let body = |title: &str| json!({"title": title, "starts_at": in_a_year()});
    let first = send(&app, Method::POST, "/events", "event-key", Some(ADMIN_TOKEN), Some(&body("First"))).await;
    assert_eq!(first.status(), StatusCode::CREATED);

    expire(&app, 201).await;
    let again = send(&app, Method::POST, "/events", "event-key", Some(ADMIN_TOKEN), Some(&body("Second"))).await;

    assert_eq!(again.status(), StatusCode::CREATED);
    assert!(!replayed(&again));
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["title"], "Second");
    let events: i64 = sqlx::query_scalar("select count(*) from events").fetch_one(&app.db).await.unwrap();
    assert_eq!(events, 2);
    let live: i64 = sqlx::query_scalar("select count(*) from idempotency_keys where expires_at > now()")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!((live, records(&app).await), (1, 1), "the expired record was taken over");
}

#[tokio::test]
async fn a_key_still_committing_on_another_instance_holds_up_neither_the_batch_nor_the_neighbours_of_its_reuse() {
    // Lock waits far longer than the test gives the neighbour: a batch waiting on the
    // key shows, and the first request's blocked commit outlasts it.
    let patient = |settings: &mut Settings| {
        settings.database_lock_timeout = Duration::from_secs(30);
        settings.database_statement_timeout = Duration::from_secs(40);
        settings.request_timeout = Duration::from_secs(50);
    };
    let first_instance = spawn_app_with(|settings| {
        patient(settings);
        settings.write_coalescing = false;
    })
    .await;
    // One lane that gathers both requests below into one batch.
    let second_instance = first_instance
        .another_instance(|settings| {
            patient(settings);
            settings.write_workers = 1;
            settings.write_batch_wait = Duration::from_millis(400);
        })
        .await;
    // A third that waits for a lock at most a second.
    let impatient_instance = first_instance
        .another_instance(|settings| {
            patient(settings);
            settings.database_lock_timeout = Duration::from_secs(1);
        })
        .await;
    let (slow_event, other_event) = (first_instance.create_event(None).await, first_instance.create_event(None).await);
    let mut holder =
        block_commits_inserting(&first_instance.db, "outbox", &format!("new.kafka_key = '{slow_event}'")).await;
    let post = |app: &TestApp, event_id: Uuid, key: Option<&str>, email: &str| {
        let mut request = app.client.post(app.url(&format!("/events/{event_id}/rsvps"))).json(&rsvp_body(email));
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        tokio::spawn(async move {
            let response = request.send().await.unwrap();
            (response.status(), response.json::<Value>().await.unwrap())
        })
    };

    let first = post(&first_instance, slow_event, Some("busy-key"), "ada@example.com");
    until_advisory_lock_waiters(&first_instance.db, 1, "the first commit blocks").await;
    // The same key for another write, and a neighbour without a key, in one batch.
    let reuse = post(&second_instance, other_event, Some("busy-key"), "bob@example.com");
    let neighbour = post(&second_instance, other_event, None, "carol@example.com");
    let neighbour = tokio::time::timeout(Duration::from_secs(10), neighbour)
        .await
        .expect("the neighbour waited for another request's key")
        .unwrap();

    assert_eq!(neighbour.0, StatusCode::CREATED, "{neighbour:?}");
    assert!(!first.is_finished(), "the first committed while blocked");
    assert!(!reuse.is_finished(), "the reuse answered {:?}", reuse.await);
    // Its wait for the key is bounded by the lock timeout; its write was not applied.
    let impatient = post(&impatient_instance, other_event, Some("busy-key"), "dan@example.com");
    let impatient = tokio::time::timeout(Duration::from_secs(10), impatient).await.expect("an unbounded wait").unwrap();
    assert_eq!(impatient.0, StatusCode::SERVICE_UNAVAILABLE, "{impatient:?}");
    assert_eq!(impatient.1["error"]["code"], "lock_timeout", "{impatient:?}");
    assert!(!first.is_finished(), "the first committed while blocked");
    unblock_commits(&mut holder).await;
    let (first, reuse) = (first.await.unwrap(), reuse.await.unwrap());
    assert_eq!(first.0, StatusCode::CREATED);
    assert_eq!(reuse.0, StatusCode::UNPROCESSABLE_ENTITY, "{reuse:?}");
    assert_eq!(reuse.1["error"]["code"], "idempotency_key_reused", "{reuse:?}");
    assert_eq!(records(&first_instance).await, 1);
    assert_eq!(first_instance.written_rows().await, (2, 2, 4), "the first and the neighbour");
}

#[tokio::test]
async fn a_retried_event_create_sent_while_the_first_is_still_committing_waits_and_gets_the_same_event() {
    let app = spawn_app_with(|settings| settings.database_lock_timeout = Duration::from_secs(20)).await;
    let mut holder = block_commits_inserting(&app.db, "events", "new.title = 'Slow meetup'").await;
    let body = json!({"title": "Slow meetup", "starts_at": in_a_year(), "capacity": 10});
    let post = || {
        let request = app
            .client
            .post(app.url("/events"))
            .bearer_auth(ADMIN_TOKEN)
            .header("idempotency-key", "slow-event-key")
            .json(&body);
        tokio::spawn(async move {
            let response = request.send().await.unwrap();
            let replayed = replayed(&response);
            (response.status(), replayed, response.json::<Value>().await.unwrap())
        })
    };

    let first = post();
    until_advisory_lock_waiters(&app.db, 1, "the first commit blocks").await;
    let retry = post();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!retry.is_finished(), "the retry answered while the first was still committing: {:?}", retry.await);
    unblock_commits(&mut holder).await;
    let (first, retry) = (first.await.unwrap(), retry.await.unwrap());

    assert_eq!((first.0, first.1), (StatusCode::CREATED, false));
    assert_eq!((retry.0, retry.1), (StatusCode::CREATED, true), "{retry:?}");
    assert_eq!(retry.2, first.2, "the same event");
    let events: i64 = sqlx::query_scalar("select count(*) from events").fetch_one(&app.db).await.unwrap();
    assert_eq!(events, 1);
    let metrics = app.scraped_metrics().await;
    assert!(metrics.contains(r#"api_idempotent_requests_total{outcome="waited"} 1"#), "{metrics}");
}

#[tokio::test]
async fn a_refused_write_is_recorded_and_its_retry_gets_the_same_refusal() {
    let app = spawn_app().await;
    let event_id = app.create_event(Some(1)).await;
    let holder = app.create_rsvp(event_id, "holder@example.com", 0).await;
    let path = format!("/events/{event_id}/rsvps");
    let body = json!({"name": "Bob", "email": "bob@example.com", "status": "going"});

    let refused = send(&app, Method::POST, &path, "full-key", None, Some(&body)).await;
    assert_eq!(refused.status(), StatusCode::CONFLICT);
    let refused = refused.text().await.unwrap();
    // The seat comes free; the retry is still the first request, refused.
    assert_eq!(app.cancel_rsvp(holder["token"].as_str().unwrap()).await.status(), StatusCode::OK);
    let retry = send(&app, Method::POST, &path, "full-key", None, Some(&body)).await;

    assert_eq!(retry.status(), StatusCode::CONFLICT);
    assert!(replayed(&retry));
    assert_eq!(retry.text().await.unwrap(), refused);
    let rsvps: i64 = sqlx::query_scalar("select count(*) from rsvps").fetch_one(&app.db).await.unwrap();
    assert_eq!(rsvps, 1);
    // A new key is a new request.
    assert_eq!(send(&app, Method::POST, &path, "new-key", None, Some(&body)).await.status(), StatusCode::CREATED);
}

async fn expire(app: &TestApp, status: i16) {
    sqlx::query("update idempotency_keys set expires_at = now() - interval '1 second' where status = $1")
        .bind(status)
        .execute(&app.db)
        .await
        .unwrap();
}

#[tokio::test]
async fn after_its_key_expired_a_retry_is_a_new_request() {
    let app = spawn_app().await;
    let event_id = app.create_event(None).await;
    let rsvp = app.create_rsvp(event_id, "ada@example.com", 0).await;
    let cancel = json!({"token": rsvp["token"]});
    let first = send(&app, Method::POST, "/rsvps/cancel", "old-key", None, Some(&cancel)).await;
    assert_eq!(first.status(), StatusCode::OK);
    let replay = send(&app, Method::POST, "/rsvps/cancel", "old-key", None, Some(&cancel)).await;
    assert!(replayed(&replay));

    expire(&app, 200).await;
    let again = send(&app, Method::POST, "/rsvps/cancel", "old-key", None, Some(&cancel)).await;

    assert!(!replayed(&again));
    assert_error(again, StatusCode::CONFLICT, "conflict").await;
    let statuses: Vec<i16> =
        sqlx::query_scalar("select status from idempotency_keys").fetch_all(&app.db).await.unwrap();
    assert_eq!(statuses, vec![409], "the expired record was taken over by the new request");
}

#[tokio::test]
async fn the_api_prunes_expired_keys_keeps_live_ones_and_counts_them() {
    let app = spawn_app_with(|settings| settings.idempotency_prune_interval = Duration::from_millis(100)).await;
    let event_id = app.create_event(None).await;
    let path = format!("/events/{event_id}/rsvps");
    for (key, email) in [("expiring-key", "a@example.com"), ("live-key", "b@example.com")] {
        let created = send(&app, Method::POST, &path, key, None, Some(&rsvp_body(email))).await;
        assert_eq!(created.status(), StatusCode::CREATED);
    }
    sqlx::query(
        "update idempotency_keys set expires_at = now() - interval '1 second'
          where lookup_id = (select lookup_id from idempotency_keys order by created_at, lookup_id limit 1)",
    )
    .execute(&app.db)
    .await
    .unwrap();
    let expired_left: i64 = sqlx::query_scalar("select count(*) from idempotency_keys where expires_at <= now()")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(expired_left, 1);

    let pruned = async {
        while records(&app).await > 1 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), pruned).await.expect("the expired key was never pruned");

    let live: i64 = sqlx::query_scalar("select count(*) from idempotency_keys where expires_at > now()")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(live, 1, "the live key is kept");
    let metrics = app.scraped_metrics().await;
    assert!(metrics.contains("api_idempotency_keys_pruned_total 1\n"), "{metrics}");
    assert!(metrics.contains(r#"api_idempotent_requests_total{outcome="recorded"} 2"#), "{metrics}");
    let step = rsvp_api::idempotency::prune::step(&app.db).await.unwrap();
    assert_eq!(step, rsvp_api::idempotency::prune::ExecutionOutcome::Empty);
}

#[tokio::test]
async fn pruning_reads_only_the_ranges_that_can_hold_expired_records_on_a_table_never_analyzed() {
    // This machine's PostgreSQL runs with autovacuum off, as a server may: the table
    // is never analyzed and its expiry index never summarized but by the api. The
    // api's own pruning makes its first pass at start, on the empty table, and the
    // next in an hour: this test runs the pass's parts itself.
    let app = spawn_app_with(|settings| settings.idempotency_prune_interval = Duration::from_secs(3600)).await;
    wait_for("the api's first pruning pass is done", async || {
        app.scraped_metrics().await.contains("api_idempotency_keys_pruned_total 0\n")
    })
    .await;
    // About 310 pages of records: a few expired ones first, as the oldest are, then
    // live ones. The first range of 128 pages was summarized when the index was built
    // on the empty table, and inserts keep a summary up; nobody summarized the second
    // range or the third, partly filled one.
    sqlx::query(
        "insert into idempotency_keys (lookup_id, fingerprint, status, response, expires_at)
         select sha256(('lookup' || n)::bytea), sha256(('fingerprint' || n)::bytea), 201,
                decode(repeat('ab', 380), 'hex'),
                case when n <= 10 then now() - interval '1 minute' else now() + interval '1 day' end
         from generate_series(1, 5000) as n",
    )
    .execute(&app.db)
    .await
    .unwrap();
    let pages: i64 =
        sqlx::query_scalar("select pg_relation_size('idempotency_keys') / 8192").fetch_one(&app.db).await.unwrap();
    assert!(pages > 256, "the records fill {pages} pages, not more than two ranges");

    // As the pass does (here it summarizes the second range and the partly filled
    // third; where autovacuum runs, it may have summarized the second already).
    idempotency_store::summarize_expiry_index(&app.db).await.unwrap();
    let mut tx = app.db.begin().await.unwrap();
    let deleted = idempotency_store::prune_expired(&mut tx, 10_000).await.unwrap();
    // What this transaction read of the table, from its own statistics.
    let (seq_scans, pages_read): (i64, i64) = sqlx::query_as(
        "select seq_scan, pg_stat_get_xact_blocks_fetched(relid)
         from pg_stat_xact_user_tables where relname = 'idempotency_keys'",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(deleted, 10);
    assert_eq!(seq_scans, 0, "pruning scanned the whole table");
    // The range that holds expired records (the first, 128 pages) and a few fetches
    // per deleted row (to lock it, to delete it): not half of another range.
    assert!(
        pages_read < 128 + 64,
        "pruning read {pages_read} of {pages} pages: it read ranges that hold only live records"
    );
}

#[tokio::test]
async fn the_database_holds_neither_the_tokens_nor_the_keys_in_the_clear() {
    let app = spawn_app().await;
    let event_id = app.create_event(None).await;
    let keys = ["create-key-8c1f2e", "patch-key-77d0a4", "cancel-key-3b9e51"];
    let created = send(
        &app,
        Method::POST,
        &format!("/events/{event_id}/rsvps"),
        keys[0],
        None,
        Some(&rsvp_body("ada@example.com")),
    )
    .await;
    let created: Value = created.json().await.unwrap();
    let token = created["token"].as_str().unwrap().to_owned();
    let patch = json!({"name": "Ada L."});
    let patched =
        send(&app, Method::PATCH, &format!("/rsvps/{}", id_of(&created)), keys[1], Some(&token), Some(&patch)).await;
    assert_eq!(patched.status(), StatusCode::OK);
    let cancelled = send(&app, Method::POST, "/rsvps/cancel", keys[2], None, Some(&json!({"token": token}))).await;
    assert_eq!(cancelled.status(), StatusCode::OK);
    assert_eq!(records(&app).await, 3);

    // Every row of every table, as text: bytea shows as hex, so look for that too.
    let tables: Vec<String> = sqlx::query_scalar(
        "select quote_ident(table_name) from information_schema.tables
          where table_schema = 'public' and table_type = 'BASE TABLE'",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert!(tables.iter().any(|t| t == "idempotency_keys"));
    let mut dump = String::new();
    for table in tables {
        let rows: Option<String> = sqlx::query_scalar(&format!("select string_agg(t::text, E'\\n') from {table} t"))
            .fetch_one(&app.db)
            .await
            .unwrap();
        dump.push_str(&rows.unwrap_or_default());
    }
    let hex = |s: &str| s.bytes().map(|b| format!("{b:02x}")).collect::<String>();
    for secret in [token.as_str(), keys[0], keys[1], keys[2]] {
        assert!(!dump.contains(secret), "{secret} is stored in the clear");
        assert!(!dump.contains(&hex(secret)), "{secret} is stored in the clear, as bytes");
    }
}

#[tokio::test]
async fn an_invalid_idempotency_key_is_a_400_json_error_and_writes_nothing() {
    let app = spawn_app().await;
    let event_id = app.create_event(None).await;
    let url = app.url(&format!("/events/{event_id}/rsvps"));
    let too_long = "k".repeat(256);
    let invalid: [&[u8]; 5] = [b"", b"with space", too_long.as_bytes(), "caf\u{e9}".as_bytes(), b"tab\there"];

    for key in invalid {
        let response = app
            .client
            .post(&url)
            .header("idempotency-key", reqwest::header::HeaderValue::from_bytes(key).unwrap())
            .json(&rsvp_body("ada@example.com"))
            .send()
            .await
            .unwrap();
        assert_error(response, StatusCode::BAD_REQUEST, "invalid_idempotency_key").await;
    }
    let twice = app
        .client
        .post(&url)
        .header("idempotency-key", "a")
        .header("idempotency-key", "b")
        .json(&rsvp_body("ada@example.com"))
        .send()
        .await
        .unwrap();
    assert_error(twice, StatusCode::BAD_REQUEST, "invalid_idempotency_key").await;
    assert_eq!(app.written_rows().await, (0, 0, 0));

    let longest = send(
        &app,
        Method::POST,
        &format!("/events/{event_id}/rsvps"),
        &"k".repeat(255),
        None,
        Some(&rsvp_body("ada@example.com")),
    )
    .await;
    assert_eq!(longest.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn one_key_sent_by_two_callers_names_two_requests() {
    let app = spawn_app().await;
    let event_id = app.create_event(None).await;
    let (a, b) =
        (app.create_rsvp(event_id, "a@example.com", 0).await, app.create_rsvp(event_id, "b@example.com", 0).await);
    let patch = json!({"status": "maybe"});

    for rsvp in [&a, &b] {
        let path = format!("/rsvps/{}", id_of(rsvp));
        let response = send(&app, Method::PATCH, &path, "counter-1", rsvp["token"].as_str(), Some(&patch)).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert!(!replayed(&response));
        assert_eq!(response.json::<Value>().await.unwrap()["status"], "maybe");
    }
    assert_eq!(records(&app).await, 2);
}

#[tokio::test]
async fn the_openapi_document_describes_the_header_on_every_write() {
    let app = spawn_app().await;
    let document: Value = app.get("/openapi.json").await.json().await.unwrap();

    for (path, method) in [
        ("/events", "post"),
        ("/events/{id}/rsvps", "post"),
        ("/rsvps/{id}", "patch"),
        ("/rsvps/{id}", "delete"),
        ("/rsvps/cancel", "post"),
    ] {
        let operation = &document["paths"][path][method];
        let parameters = operation["parameters"].as_array().expect("parameters");
        let header = parameters.iter().find(|p| p["name"] == "Idempotency-Key").expect("Idempotency-Key");
        assert_eq!(header["in"], "header", "{path} {method}");
        assert_eq!(header["schema"]["maxLength"], 255);
        for status in ["400", "409", "422"] {
            assert!(operation["responses"][status].is_object(), "{path} {method} documents {status}");
        }
    }
}
