use reqwest::StatusCode;
use rsvp_contract::CloudEvent;
use serde_json::{json, Value};

use crate::helpers::{id_and_token_of, spawn_app, ADMIN_TOKEN};

#[tokio::test]
async fn a_failure_after_the_rsvp_write_leaves_neither_the_rsvp_nor_an_outbox_row() {
    let app = spawn_app().await;
    let event_id = app.create_event(Some(10)).await;
    // Make the outbox insert, which follows the rsvp insert in the same transaction, fail.
    sqlx::raw_sql(
        "create function fail_outbox() returns trigger language plpgsql as
           $$ begin raise exception 'forced failure'; end; $$;
         create trigger fail_outbox before insert on outbox for each row execute function fail_outbox();",
    )
    .execute(&app.db)
    .await
    .unwrap();

    let response = app
        .create_rsvp_with(event_id, &json!({"name": "Ada", "email": "a@example.com", "status": "going", "guests": 3}))
        .await;

    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["message"], "internal error", "no cause leaks to the client");
    assert_eq!(app.written_rows().await, (0, 0, 0), "neither row nor the seats were kept");
}

/// aggregate_type, kafka_key, aggregate_id, event_type, rsvp_version, payload, traceparent
type OutboxRow = (String, String, uuid::Uuid, String, i64, Value, Option<String>);

#[tokio::test]
async fn every_write_appends_one_valid_cloudevent_row_in_commit_order_per_rsvp() {
    let app = spawn_app().await;
    let event_id = app.create_event(None).await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    let created: Value = app
        .client
        .post(app.url(&format!("/events/{event_id}/rsvps")))
        .header("traceparent", traceparent)
        .json(&json!({"name": "Ada", "email": "a@example.com", "status": "going"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (rsvp_id, token) = id_and_token_of(&created);
    app.patch_rsvp(rsvp_id, &token, &json!({"status": "maybe"})).await;
    app.patch_rsvp(rsvp_id, &token, &json!({"name": "Ada L."})).await;
    app.cancel_rsvp(&token).await;
    app.delete_rsvp(rsvp_id, Some(ADMIN_TOKEN)).await;

    let rows: Vec<OutboxRow> = sqlx::query_as(
        "select aggregate_type, kafka_key, aggregate_id, event_type, rsvp_version, payload, traceparent
         from outbox order by id",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    let types: Vec<&str> = rows.iter().map(|r| r.3.as_str()).collect();
    assert_eq!(types, ["RSVP_CREATED", "RSVP_UPDATED", "RSVP_UPDATED", "RSVP_CANCELLED", "RSVP_DELETED"]);
    for (i, (aggregate_type, key, aggregate_id, event_type, version, payload, _)) in rows.iter().enumerate() {
        let event: CloudEvent = serde_json::from_value(payload.clone()).expect("a valid CloudEvent");
        assert_eq!(event.specversion, "1.0");
        assert_eq!(event.source, "/rsvp-api");
        assert_eq!(event.datacontenttype, "application/json");
        assert_eq!(event.event_type.as_str(), event_type);
        assert_eq!(event.subject, rsvp_id.to_string());
        assert_eq!(
            (aggregate_type.as_str(), *aggregate_id, key.as_str()),
            ("rsvp", rsvp_id, event_id.to_string().as_str())
        );
        assert_eq!(*version, i as i64 + 1, "versions follow commit order");
        assert_eq!(event.data.version, *version);
        assert_eq!(event.id.get_version_num(), 7, "message ids are UUID v7");
    }
    assert_eq!(rows[0].6.as_deref(), Some(traceparent));
    assert_eq!(rows[1].6, None);
    assert_eq!(rows[3].5["data"]["previous_status"], "maybe");
    let ids: Vec<Value> = rows.iter().map(|r| r.5["id"].clone()).collect();
    assert_eq!(ids.iter().collect::<std::collections::HashSet<_>>().len(), ids.len());
}

/// The relay publishes a row's payload text as its record's value, so consumers get the
/// CloudEvent exactly as the api serialized it: its attributes in their order, no
/// whitespace added, for creates (appended in batches) and for the other writes alike.
#[tokio::test]
async fn each_outbox_row_keeps_its_cloudevent_byte_for_byte_as_the_api_serialized_it() {
    let app = spawn_app().await;
    let event_id = app.create_event(None).await;
    let created = app.create_rsvp(event_id, "a@example.com", 1).await;
    let (rsvp_id, token) = id_and_token_of(&created);
    app.patch_rsvp(rsvp_id, &token, &json!({"status": "maybe"})).await;
    app.cancel_rsvp(&token).await;

    let payloads: Vec<String> =
        sqlx::query_scalar("select payload::text from outbox order by id").fetch_all(&app.db).await.unwrap();

    assert_eq!(payloads.len(), 3);
    for text in &payloads {
        let event: CloudEvent = serde_json::from_str(text).expect("a valid CloudEvent");
        assert_eq!(text, &serde_json::to_string(&event).unwrap(), "stored as serialized");
        assert!(text.starts_with(r#"{"specversion":"1.0","#), "attributes in the api's order: {text}");
    }
}

#[tokio::test]
async fn outbox_rows_are_append_only() {
    let app = spawn_app().await;
    let event_id = app.create_event(None).await;
    app.create_rsvp(event_id, "a@example.com", 0).await;

    let update = sqlx::query("update outbox set event_type = 'RSVP_DELETED'").execute(&app.db).await;

    assert!(update.is_err());
}
