use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{assert_error, id_of, in_a_year, spawn_app, ADMIN_TOKEN};

#[tokio::test]
async fn creating_an_event_returns_201_and_it_reads_back_with_zero_counts() {
    let app = spawn_app().await;

    let response =
        app.create_event_with(&json!({"title": "  Rust meetup ", "starts_at": in_a_year(), "capacity": 20})).await;

    assert_eq!(response.status(), StatusCode::CREATED);
    let created: Value = response.json().await.unwrap();
    assert_eq!(created["title"], "Rust meetup");
    let event: Value = app.get(&format!("/events/{}", id_of(&created))).await.json().await.unwrap();
    assert_eq!(event["capacity"], 20);
    assert_eq!(event["counts"], json!({"going": 0, "maybe": 0, "declined": 0, "cancelled": 0}));
    assert_eq!(event["guests_going"], 0);
}

#[tokio::test]
async fn creating_an_event_without_the_admin_token_is_401_and_with_another_token_403() {
    let app = spawn_app().await;
    let body = json!({"title": "Meetup", "starts_at": in_a_year()});

    let missing = app.post_json("/events", &body).await;
    assert_eq!(missing.headers()["www-authenticate"], "Bearer");
    assert_error(missing, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let wrong = app.client.post(app.url("/events")).bearer_auth("not-the-token").json(&body).send().await.unwrap();
    assert_error(wrong, StatusCode::FORBIDDEN, "forbidden").await;

    let count: i64 = sqlx::query_scalar("select count(*) from events").fetch_one(&app.db).await.unwrap();
    assert_eq!(count, 0);
}

#[tokio::test]
async fn an_invalid_event_is_422_with_a_message_per_field() {
    let app = spawn_app().await;

    let response =
        app.create_event_with(&json!({"title": "", "starts_at": "2001-01-01T00:00:00Z", "capacity": 0})).await;

    let fields = assert_error(response, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    assert_eq!(fields["starts_at"], "must be in the future");
    assert!(fields["title"].is_string());
    assert!(fields["capacity"].is_string());
}

#[tokio::test]
async fn malformed_json_is_400_wrong_content_type_415_and_a_large_body_413() {
    let app = spawn_app().await;
    let post = |body: String, content_type: &'static str| {
        app.client
            .post(app.url("/events"))
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", content_type)
            .body(body)
            .send()
    };

    let malformed = post("{\"title\": ".into(), "application/json").await.unwrap();
    assert_error(malformed, StatusCode::BAD_REQUEST, "malformed_json").await;
    let not_json = post("title=x".into(), "application/x-www-form-urlencoded").await.unwrap();
    assert_error(not_json, StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type").await;
    let huge = format!(r#"{{"title": "{}", "starts_at": "{}"}}"#, "x".repeat(17 * 1024), in_a_year());
    let too_large = post(huge, "application/json").await.unwrap();
    assert_error(too_large, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
    let wrong_shape =
        post(json!({"title": 5, "starts_at": in_a_year()}).to_string(), "application/json").await.unwrap();
    assert_error(wrong_shape, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    let unknown_field =
        post(json!({"title": "x", "starts_at": in_a_year(), "colour": "red"}).to_string(), "application/json")
            .await
            .unwrap();
    assert_error(unknown_field, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
}

#[tokio::test]
async fn unknown_or_malformed_event_ids_and_unknown_routes_are_404() {
    let app = spawn_app().await;

    for path in [
        format!("/events/{}", uuid::Uuid::now_v7()),
        format!("/events/{}/rsvps", uuid::Uuid::now_v7()),
        "/events/not-a-uuid".to_owned(),
        "/no/such/route".to_owned(),
    ] {
        assert_error(app.get(&path).await, StatusCode::NOT_FOUND, "not_found").await;
    }
}

#[tokio::test]
async fn a_known_route_with_another_method_is_a_json_405() {
    let app = spawn_app().await;

    let response = app.client.put(app.url("/events")).send().await.unwrap();

    assert_error(response, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed").await;
}

#[tokio::test]
async fn the_openapi_document_describes_every_route() {
    let app = spawn_app().await;

    let doc: Value = app.get("/openapi.json").await.json().await.unwrap();

    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    for path in ["/events", "/events/{id}", "/events/{id}/rsvps", "/rsvps/{id}", "/rsvps/cancel"] {
        assert!(doc["paths"][path].is_object(), "{path} missing");
    }
    assert!(doc["components"]["securitySchemes"]["admin_token"].is_object());
}
