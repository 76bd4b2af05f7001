use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{spawn_app, spawn_app_with_redis};

#[tokio::test]
async fn healthz_and_readyz_answer_200_when_postgres_and_redis_are_up() {
    let app = spawn_app().await;

    for base in [&app.address, &app.admin_address] {
        let health = app.client.get(format!("{base}/healthz")).send().await.unwrap();
        assert_eq!(health.status(), StatusCode::OK);
        let ready = app.client.get(format!("{base}/readyz")).send().await.unwrap();
        assert_eq!(ready.status(), StatusCode::OK);
        let body: Value = ready.json().await.unwrap();
        assert_eq!(body["checks"]["postgres"], "up");
        assert_eq!(body["checks"]["redis"], "up");
    }
}

#[tokio::test]
async fn readyz_is_503_and_names_redis_when_redis_is_down() {
    let closed_port = rsvp_contract::testing::free_port();
    let app = spawn_app_with_redis(&format!("redis://127.0.0.1:{closed_port}")).await;

    let ready = app.get("/readyz").await;

    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "not_ready");
    assert_eq!(body["checks"]["redis"], "down");
    assert_eq!(body["checks"]["postgres"], "up");
}
