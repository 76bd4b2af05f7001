use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{
    block_commits_inserting, spawn_app_with, spawn_app_with_one_wide_batch, unblock_commits,
    until_advisory_lock_waiters,
};

#[tokio::test]
async fn writes_sharing_one_transaction_keep_their_own_outcomes() {
    let app = spawn_app_with_one_wide_batch().await;
    let event_id = app.create_event(Some(3)).await;
    app.create_rsvp(event_id, "first@example.com", 0).await;
    let last_id: i64 = sqlx::query_scalar("select max(id) from outbox").fetch_one(&app.db).await.unwrap();

    let requests = [
        (event_id, "a@example.com", "going"),
        (event_id, "b@example.com", "going"),
        (event_id, "c@example.com", "going"),
        (event_id, "FIRST@example.com", "maybe"),
        (Uuid::now_v7(), "d@example.com", "going"),
        (event_id, "e@example.com", "declined"),
    ];
    let mut pending = tokio::task::JoinSet::new();
    for (i, (event, email, status)) in requests.into_iter().enumerate() {
        let (client, url) = (app.client.clone(), app.url(&format!("/events/{event}/rsvps")));
        let body = json!({"name": "P", "email": email, "status": status});
        pending.spawn(async move { (i, client.post(url).json(&body).send().await.unwrap().status()) });
    }
    let mut statuses = pending.join_all().await;
    statuses.sort();
    let statuses: Vec<StatusCode> = statuses.into_iter().map(|(_, s)| s).collect();

    let going = &statuses[..3];
    assert_eq!(going.iter().filter(|s| **s == StatusCode::CREATED).count(), 2, "two seats were left: {going:?}");
    assert_eq!(going.iter().filter(|s| **s == StatusCode::CONFLICT).count(), 1);
    assert_eq!(statuses[3], StatusCode::CONFLICT, "duplicate email");
    assert_eq!(statuses[4], StatusCode::NOT_FOUND, "unknown event");
    assert_eq!(statuses[5], StatusCode::CREATED);
    let (rows, transactions): (i64, i64) =
        sqlx::query_as("select count(*), count(distinct xid) from outbox where id > $1")
            .bind(last_id)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(rows, 3, "one outbox row per accepted write");
    assert_eq!(transactions, 1, "the accepted writes committed in one transaction");
    let seats: i32 = sqlx::query_scalar("select seats_taken from events").fetch_one(&app.db).await.unwrap();
    assert_eq!(seats, 3);
}

#[tokio::test]
async fn no_request_is_answered_before_its_transaction_commits() {
    let app = spawn_app_with(|_| {}).await;
    let event_id = app.create_event(None).await;
    // A deferred trigger waits for a lock we hold: the write's commit blocks.
    let mut holder = block_commits_inserting(&app.db, "outbox", "true").await;

    let (client, url) = (app.client.clone(), app.url(&format!("/events/{event_id}/rsvps")));
    let request = tokio::spawn(async move {
        let body = json!({"name": "Ada", "email": "ada@example.com", "status": "going"});
        client.post(url).json(&body).send().await.unwrap().status()
    });
    until_advisory_lock_waiters(&app.db, 1, "the commit blocks").await;

    assert!(!request.is_finished(), "answered while its commit was still pending");
    let (committed,): (i64,) = sqlx::query_as("select count(*) from outbox").fetch_one(&app.db).await.unwrap();
    assert_eq!(committed, 0);
    unblock_commits(&mut holder).await;
    assert_eq!(request.await.unwrap(), StatusCode::CREATED);
    let (committed,): (i64,) = sqlx::query_as("select count(*) from outbox").fetch_one(&app.db).await.unwrap();
    assert_eq!(committed, 1, "visible to others by the time the client had its answer");
}

#[tokio::test]
async fn with_coalescing_off_each_write_commits_alone() {
    let app = spawn_app_with(|settings| settings.write_coalescing = false).await;
    let event_id = app.create_event(None).await;

    let mut pending = tokio::task::JoinSet::new();
    for i in 0..5 {
        let (client, url) = (app.client.clone(), app.url(&format!("/events/{event_id}/rsvps")));
        let body = json!({"name": "P", "email": format!("p{i}@example.com"), "status": "going"});
        pending.spawn(async move { client.post(url).json(&body).send().await.unwrap().status() });
    }
    let statuses = pending.join_all().await;

    assert!(statuses.iter().all(|s| *s == StatusCode::CREATED));
    let transactions: i64 =
        sqlx::query_scalar("select count(distinct xid) from outbox").fetch_one(&app.db).await.unwrap();
    assert_eq!(transactions, 5);
}

#[tokio::test]
async fn creates_updates_and_cancels_of_one_event_from_every_lane_never_overbook_it_and_keep_its_seat_count() {
    // Arrange: four lanes; 10 maybes and 5 goings hold 5 of 20 seats.
    let app = spawn_app_with(|settings| settings.write_workers = 4).await;
    let event_id = app.create_event(Some(20)).await;
    let mut maybes = Vec::new();
    for i in 0..10 {
        let body = json!({"name": "M", "email": format!("m{i}@example.com"), "status": "maybe"});
        let created: serde_json::Value = app.create_rsvp_with(event_id, &body).await.json().await.unwrap();
        maybes.push((
            created["id"].as_str().unwrap().parse::<Uuid>().unwrap(),
            created["token"].as_str().unwrap().to_owned(),
        ));
    }
    let mut goings = Vec::new();
    for i in 0..5 {
        goings.push(
            app.create_rsvp(event_id, &format!("g{i}@example.com"), 0).await["token"].as_str().unwrap().to_owned(),
        );
    }

    // Act: at once, 30 new goings (event's lane), 10 maybes turning going with a guest
    // and 5 cancels (lanes of their rsvps and tokens): 50 seats asked, 5 given back.
    let mut writes = tokio::task::JoinSet::new();
    for i in 0..30 {
        let (client, url) = (app.client.clone(), app.url(&format!("/events/{event_id}/rsvps")));
        let body = json!({"name": "P", "email": format!("p{i}@example.com"), "status": "going"});
        writes.spawn(async move { client.post(url).json(&body).send().await.unwrap().status() });
    }
    for (id, token) in maybes {
        let request = app
            .client
            .patch(app.url(&format!("/rsvps/{id}")))
            .bearer_auth(token)
            .json(&json!({"status": "going", "guests": 1}));
        writes.spawn(async move { request.send().await.unwrap().status() });
    }
    for token in goings {
        let request = app.client.post(app.url("/rsvps/cancel")).json(&json!({"token": token}));
        writes.spawn(async move { request.send().await.unwrap().status() });
    }
    let statuses = writes.join_all().await;

    // Assert: every write answered 200/201 or 409, the seats counted equal the going
    // rsvps' seats and stay within capacity, and each accepted write has its outbox row.
    assert!(
        statuses.iter().all(|s| [StatusCode::OK, StatusCode::CREATED, StatusCode::CONFLICT].contains(s)),
        "{statuses:?}"
    );
    let (taken, going_seats): (i32, i64) = sqlx::query_as(
        "select e.seats_taken, (select coalesce(sum(1 + guests), 0) from rsvps where event_id = e.id and status = 'going')::bigint
           from events e where e.id = $1",
    )
    .bind(event_id)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(i64::from(taken), going_seats);
    assert!((15..=20).contains(&taken), "the 5 cancels free 5 seats that the 40 asking writes fill: {taken}");
    let accepted = statuses.iter().filter(|s| **s != StatusCode::CONFLICT).count();
    assert_eq!(app.outbox_payloads().await.len(), 15 + accepted);
}
