use reqwest::StatusCode;
use rsvp_contract::runtime::database::MIGRATOR;
use rsvp_contract::testing::fresh_database;
use serde_json::Value;

use crate::helpers::{assert_error, spawn_app, spawn_app_with};

#[tokio::test]
async fn stats_are_zero_before_the_consumer_applied_anything_and_404_for_an_unknown_event() {
    let app = spawn_app().await;
    let event_id = app.create_event(None).await;

    let stats: Value = app.get(&format!("/events/{event_id}/stats")).await.json().await.unwrap();

    assert_eq!(stats["counts"]["going"], 0);
    assert_eq!(stats["totals"]["created"], 0);
    let unknown = app.get(&format!("/events/{}/stats", uuid::Uuid::now_v7())).await;
    assert_error(unknown, StatusCode::NOT_FOUND, "not_found").await;
}

#[tokio::test]
async fn stats_are_read_from_the_analytics_database_when_it_is_separate() {
    let (analytics, analytics_url) = fresh_database(&MIGRATOR).await;
    let app = spawn_app_with(|settings| settings.analytics_database_url = Some(analytics_url.into())).await;
    let event_id = app.create_event(None).await;
    sqlx::query(
        "insert into analytics.event_stats (event_id, going, guests_going, created_total) values ($1, 3, 2, 4)",
    )
    .bind(event_id)
    .execute(&analytics)
    .await
    .unwrap();

    let stats: Value = app.get(&format!("/events/{event_id}/stats")).await.json().await.unwrap();

    assert_eq!(stats["counts"]["going"], 3);
    assert_eq!(stats["guests_going"], 2);
    assert_eq!(stats["totals"]["created"], 4);
}
