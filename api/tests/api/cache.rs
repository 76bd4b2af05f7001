use reqwest::StatusCode;
use rsvp_contract::{cache_keys, testing::TcpProxy};
use serde_json::{json, Value};

use crate::helpers::{id_of, spawn_app, spawn_app_with_redis};

async fn title_of(app: &crate::helpers::TestApp, event_id: uuid::Uuid) -> Value {
    let event: Value = app.get(&format!("/events/{event_id}")).await.json().await.unwrap();
    event["title"].clone()
}

/// The first page of the event's rsvps.
async fn rsvp_list(app: &crate::helpers::TestApp, event_id: uuid::Uuid) -> Vec<Value> {
    let page: Value = app.get(&format!("/events/{event_id}/rsvps")).await.json().await.unwrap();
    page["items"].as_array().expect("a page of rsvps").clone()
}

#[tokio::test]
async fn reads_are_served_from_the_cache_until_the_consumer_invalidates_them() {
    let app = spawn_app().await;
    let event_id = app.create_event(None).await;
    assert_eq!(title_of(&app, event_id).await, "Rust meetup");
    // Change the row behind the api's back: only a cache hit can still show the old title.
    sqlx::query("update events set title = 'Renamed' where id = $1").bind(event_id).execute(&app.db).await.unwrap();

    assert_eq!(title_of(&app, event_id).await, "Rust meetup", "served from the cache");
    app.invalidate(event_id, None).await;
    assert_eq!(title_of(&app, event_id).await, "Renamed", "reloaded after invalidation");
}

#[tokio::test]
async fn the_rsvp_list_and_a_single_rsvp_are_cached_and_invalidated_too() {
    let app = spawn_app().await;
    let event_id = app.create_event(None).await;
    let created = app.create_rsvp(event_id, "a@example.com", 0).await;
    let rsvp_id = id_of(&created);
    let list = rsvp_list(&app, event_id).await;
    assert_eq!(list.len(), 1);
    app.get(&format!("/rsvps/{rsvp_id}")).await;

    app.patch_rsvp(rsvp_id, created["token"].as_str().unwrap(), &json!({"name": "Changed"})).await;
    app.create_rsvp(event_id, "b@example.com", 0).await;
    let stale = rsvp_list(&app, event_id).await;
    assert_eq!(stale.len(), 1, "the api does not invalidate on write");

    app.invalidate(event_id, Some(rsvp_id)).await;
    let fresh = rsvp_list(&app, event_id).await;
    assert_eq!(fresh.len(), 2);
    let rsvp: Value = app.get(&format!("/rsvps/{rsvp_id}")).await.json().await.unwrap();
    assert_eq!(rsvp["name"], "Changed");
}

#[tokio::test]
async fn a_reader_that_loaded_before_an_invalidation_cannot_store_stale_rows_after_it() {
    let app = spawn_app().await;
    let event_id = app.create_event(None).await;
    let generation_key = cache_keys::event_generation(event_id);

    // A slow reader reads the generation and loads the event, which is then changed
    // and invalidated before the reader stores what it loaded.
    let generation = app.cache.generation(&generation_key).await.unwrap();
    let stale: Value = app.get(&format!("/events/{event_id}")).await.json().await.unwrap();
    sqlx::query("update events set title = 'Renamed' where id = $1").bind(event_id).execute(&app.db).await.unwrap();
    app.invalidate(event_id, None).await;
    app.cache.store(&cache_keys::event_detail(event_id, &generation), &stale).await.unwrap();

    assert_eq!(title_of(&app, event_id).await, "Renamed", "the late store went to a dead generation");
}

#[tokio::test]
async fn with_redis_down_reads_fall_back_to_postgres_and_writes_succeed() {
    let redis = TcpProxy::start("127.0.0.1:6379".parse().unwrap()).await;
    let app = spawn_app_with_redis(&format!("redis://{}", redis.address())).await;
    let event_id = app.create_event(None).await;
    assert_eq!(title_of(&app, event_id).await, "Rust meetup");

    redis.cut();
    sqlx::query("update events set title = 'Renamed' where id = $1").bind(event_id).execute(&app.db).await.unwrap();
    let created = app.create_rsvp(event_id, "a@example.com", 1).await;
    let event: Value = app.get(&format!("/events/{event_id}")).await.json().await.unwrap();
    let rsvp = app.get(&format!("/rsvps/{}", id_of(&created))).await;
    let ready = app.get("/readyz").await;

    assert_eq!(event["title"], "Renamed", "read from postgres, not the unreachable cache");
    assert_eq!(event["counts"]["going"], 1);
    assert_eq!(rsvp.status(), StatusCode::OK);
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    redis.restore();
}
