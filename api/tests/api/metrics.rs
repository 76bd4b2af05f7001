use reqwest::StatusCode;

use rsvp_contract::testing::undescribed_metrics;

use crate::helpers::spawn_app;

#[tokio::test]
async fn the_admin_port_exposes_request_and_outbox_metrics_by_route_and_type() {
    let app = spawn_app().await;
    let event_id = app.create_event(None).await;
    app.create_rsvp(event_id, "metrics@example.com", 0).await;
    app.get(&format!("/events/{event_id}")).await;
    app.get("/no/such/route").await;

    let response = app.client.get(format!("{}/metrics", app.admin_address)).send().await.unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.unwrap();
    for expected in [
        r#"http_requests_total{method="POST",route="/events/{id}/rsvps",status="201"}"#,
        r#"http_requests_total{method="GET",route="/events/{id}",status="200"}"#,
        r#"http_requests_total{method="GET",route="unmatched",status="404"}"#,
        r#"http_request_duration_seconds_bucket{method="GET",route="/events/{id}",le="0.005"}"#,
        r#"outbox_rows_written_total{type="RSVP_CREATED"}"#,
    ] {
        assert!(text.contains(expected), "{expected} not in\n{text}");
    }
    assert!(!text.contains(&event_id.to_string()), "an id leaked into a label");
}

#[tokio::test]
async fn every_metric_on_the_admin_port_has_help_text() {
    let app = spawn_app().await;
    let event_id = app.create_event(None).await;
    app.create_rsvp(event_id, "help@example.com", 0).await;
    app.get(&format!("/events/{event_id}")).await;

    let text = app.scraped_metrics().await;
    assert!(text.contains("# HELP http_requests_total "), "{text}");
    assert_eq!(undescribed_metrics(&text), Vec::<String>::new(), "in\n{text}");
}
