use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{assert_error, id_and_token_of, id_of, spawn_app, ADMIN_TOKEN};

#[tokio::test]
async fn an_rsvp_returns_201_with_a_token_that_no_read_ever_shows() {
    let app = spawn_app().await;
    let event_id = app.create_event(None).await;

    let created = app.create_rsvp(event_id, "Ada@Example.com", 2).await;

    let token = created["token"].as_str().unwrap();
    assert!(token.len() >= 22, "at least 128 bits");
    assert_eq!(created["email"], "ada@example.com");
    assert_eq!(created["version"], 1);
    let rsvp_id = id_of(&created);
    let reads = [
        app.get(&format!("/rsvps/{rsvp_id}")).await.text().await.unwrap(),
        app.get(&format!("/events/{event_id}/rsvps")).await.text().await.unwrap(),
        app.get(&format!("/events/{event_id}")).await.text().await.unwrap(),
    ];
    for read in reads {
        assert!(!read.contains(token) && !read.contains("token"), "token leaked: {read}");
    }
    let outbox = app.outbox_payloads().await;
    assert!(!serde_json::to_string(&outbox).unwrap().contains(token));
    let stored: Vec<u8> = sqlx::query_scalar("select token_hash from rsvps").fetch_one(&app.db).await.unwrap();
    assert_ne!(stored, token.as_bytes());
}

#[tokio::test]
async fn the_same_email_twice_for_one_event_is_409_and_writes_nothing() {
    let app = spawn_app().await;
    let event_id = app.create_event(None).await;
    app.create_rsvp(event_id, "ada@example.com", 0).await;
    let before = app.written_rows().await;

    let again =
        app.create_rsvp_with(event_id, &json!({"name": "Ada", "email": "ADA@example.com", "status": "maybe"})).await;

    assert_error(again, StatusCode::CONFLICT, "conflict").await;
    assert_eq!(app.written_rows().await, before);
}

#[tokio::test]
async fn going_with_guests_over_capacity_is_409_and_writes_nothing() {
    let app = spawn_app().await;
    let event_id = app.create_event(Some(4)).await;
    app.create_rsvp(event_id, "a@example.com", 2).await;
    let before = app.written_rows().await;

    let over = app
        .create_rsvp_with(event_id, &json!({"name": "B", "email": "b@example.com", "status": "going", "guests": 1}))
        .await;

    assert_error(over, StatusCode::CONFLICT, "conflict").await;
    assert_eq!(app.written_rows().await, before);
    // A maybe holds no seat, and exactly filling the event is allowed.
    let maybe = app
        .create_rsvp_with(event_id, &json!({"name": "C", "email": "c@example.com", "status": "maybe", "guests": 5}))
        .await;
    assert_eq!(maybe.status(), StatusCode::CREATED);
    app.create_rsvp(event_id, "d@example.com", 0).await;
    let event: Value = app.get(&format!("/events/{event_id}")).await.json().await.unwrap();
    assert_eq!(event["seats_taken"], 4);
}

#[tokio::test]
async fn concurrent_rsvps_never_overbook_an_event() {
    let app = spawn_app().await;
    let event_id = app.create_event(Some(10)).await;

    let mut attempts = tokio::task::JoinSet::new();
    for i in 0..30 {
        let (client, url) = (app.client.clone(), app.url(&format!("/events/{event_id}/rsvps")));
        let body = json!({"name": "P", "email": format!("p{i}@example.com"), "status": "going"});
        attempts.spawn(async move { client.post(url).json(&body).send().await.unwrap().status() });
    }
    let statuses = attempts.join_all().await;

    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::CREATED).count(), 10);
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::CONFLICT).count(), 20);
    assert_eq!(app.outbox_payloads().await.len(), 10);
}

#[tokio::test]
async fn an_rsvp_to_an_unknown_event_is_404_and_invalid_fields_are_422_writing_nothing() {
    let app = spawn_app().await;
    let event_id = app.create_event(None).await;

    let unknown =
        app.create_rsvp_with(Uuid::now_v7(), &json!({"name": "A", "email": "a@example.com", "status": "going"})).await;
    assert_error(unknown, StatusCode::NOT_FOUND, "not_found").await;
    let invalid =
        app.create_rsvp_with(event_id, &json!({"name": "", "email": "nope", "status": "sure", "guests": 11})).await;
    let fields = assert_error(invalid, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;

    for field in ["name", "email", "status", "guests"] {
        assert!(fields[field].is_string(), "no message for {field}: {fields}");
    }
    assert_eq!(app.written_rows().await, (0, 0, 0));
}

#[tokio::test]
async fn patching_with_the_rsvps_token_updates_it_and_writes_rsvp_updated_with_the_previous_status() {
    let app = spawn_app().await;
    let event_id = app.create_event(None).await;
    let created = app.create_rsvp(event_id, "ada@example.com", 0).await;
    let (rsvp_id, token) = id_and_token_of(&created);

    let response = app.patch_rsvp(rsvp_id, &token, &json!({"status": "maybe", "guests": 3})).await;

    assert_eq!(response.status(), StatusCode::OK);
    let updated: Value = response.json().await.unwrap();
    assert_eq!(
        (updated["status"].as_str(), updated["guests"].as_i64(), updated["version"].as_i64()),
        (Some("maybe"), Some(3), Some(2))
    );
    assert!(updated.get("token").is_none());
    let outbox = app.outbox_payloads().await;
    assert_eq!(outbox.len(), 2);
    assert_eq!(outbox[1]["type"], "RSVP_UPDATED");
    assert_eq!(outbox[1]["data"]["previous_status"], "going");
    assert_eq!(outbox[1]["data"]["version"], 2);
}

#[tokio::test]
async fn patching_without_a_token_is_401_with_another_token_403_and_writes_nothing() {
    let app = spawn_app().await;
    let event_id = app.create_event(None).await;
    let first = app.create_rsvp(event_id, "a@example.com", 0).await;
    let second = app.create_rsvp(event_id, "b@example.com", 0).await;
    let before = app.written_rows().await;

    let no_token = app
        .client
        .patch(app.url(&format!("/rsvps/{}", id_of(&first))))
        .json(&json!({"status": "maybe"}))
        .send()
        .await
        .unwrap();
    assert_error(no_token, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let other = app.patch_rsvp(id_of(&first), second["token"].as_str().unwrap(), &json!({"status": "maybe"})).await;
    assert_error(other, StatusCode::FORBIDDEN, "forbidden").await;
    let unknown = app.patch_rsvp(Uuid::now_v7(), first["token"].as_str().unwrap(), &json!({"status": "maybe"})).await;
    assert_error(unknown, StatusCode::NOT_FOUND, "not_found").await;
    let empty = app.patch_rsvp(id_of(&first), first["token"].as_str().unwrap(), &json!({})).await;
    assert_error(empty, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;

    assert_eq!(app.written_rows().await, before);
}

#[tokio::test]
async fn a_patch_that_changes_nothing_answers_200_and_writes_no_outbox_row() {
    let app = spawn_app().await;
    let event_id = app.create_event(None).await;
    let created = app.create_rsvp(event_id, "a@example.com", 1).await;

    let response = app
        .patch_rsvp(id_of(&created), created["token"].as_str().unwrap(), &json!({"status": "going", "guests": 1}))
        .await;

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.json::<Value>().await.unwrap()["version"], 1);
    assert_eq!(app.outbox_payloads().await.len(), 1);
}

#[tokio::test]
async fn cancelling_twice_returns_409_and_writes_one_outbox_row() {
    let app = spawn_app().await;
    let event_id = app.create_event(Some(5)).await;
    let created = app.create_rsvp(event_id, "a@example.com", 2).await;
    let token = created["token"].as_str().unwrap();

    let first = app.cancel_rsvp(token).await;
    assert_eq!(first.status(), StatusCode::OK);
    let cancelled: Value = first.json().await.unwrap();
    assert_eq!(cancelled["status"], "cancelled");
    let second = app.cancel_rsvp(token).await;
    assert_error(second, StatusCode::CONFLICT, "conflict").await;

    let types: Vec<Value> = app.outbox_payloads().await.iter().map(|p| p["type"].clone()).collect();
    assert_eq!(types, ["RSVP_CREATED", "RSVP_CANCELLED"]);
    let event: Value = app.get(&format!("/events/{event_id}")).await.json().await.unwrap();
    assert_eq!(event["seats_taken"], 0, "a cancelled rsvp frees its seats");
    let still_there = app.get(&format!("/rsvps/{}", id_of(&created))).await;
    assert_eq!(still_there.status(), StatusCode::OK);
    let unknown = app.cancel_rsvp("no-such-token").await;
    assert_error(unknown, StatusCode::NOT_FOUND, "not_found").await;
}

#[tokio::test]
async fn deleting_an_rsvp_needs_the_admin_token_removes_the_row_and_writes_rsvp_deleted() {
    let app = spawn_app().await;
    let event_id = app.create_event(None).await;
    let created = app.create_rsvp(event_id, "a@example.com", 0).await;
    let rsvp_id = id_of(&created);

    assert_error(app.delete_rsvp(rsvp_id, None).await, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let with_rsvp_token = app.delete_rsvp(rsvp_id, created["token"].as_str()).await;
    assert_error(with_rsvp_token, StatusCode::FORBIDDEN, "forbidden").await;
    let deleted = app.delete_rsvp(rsvp_id, Some(ADMIN_TOKEN)).await;

    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let count: i64 = sqlx::query_scalar("select count(*) from rsvps").fetch_one(&app.db).await.unwrap();
    assert_eq!(count, 0);
    let outbox = app.outbox_payloads().await;
    assert_eq!(outbox.last().unwrap()["type"], "RSVP_DELETED");
    assert_eq!(outbox.last().unwrap()["data"]["version"], 2);
    let again = app.delete_rsvp(rsvp_id, Some(ADMIN_TOKEN)).await;
    assert_error(again, StatusCode::NOT_FOUND, "not_found").await;
    assert_eq!(app.outbox_payloads().await.len(), 2);
}
