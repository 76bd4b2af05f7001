//! Reads show emails only to the admin or the rsvp's own token; the bearer scheme in
//! any case; spans never carry names, emails or tokens.

use std::sync::{Arc, Mutex};

use reqwest::StatusCode;
use serde_json::{json, Value};
use tracing::{
    field::{Field, Visit},
    span::{Attributes, Id, Record},
    Event, Subscriber,
};
use tracing_subscriber::{layer::Context, prelude::*, Layer};

use crate::helpers::{assert_error, id_and_token_of, id_of, spawn_app, TestApp, ADMIN_TOKEN};

async fn get_as(app: &TestApp, path: &str, authorization: Option<&str>) -> reqwest::Response {
    let mut request = app.client.get(app.url(path));
    if let Some(authorization) = authorization {
        request = request.header("authorization", authorization);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn the_attendee_list_shows_emails_only_with_the_admin_token() {
    let app = spawn_app().await;
    let event_id = app.create_event(None).await;
    let other = app.create_rsvp(event_id, "ada@example.com", 1).await;
    let path = format!("/events/{event_id}/rsvps");

    let public: Value = get_as(&app, &path, None).await.json().await.unwrap();
    let admin: Value = get_as(&app, &path, Some(&format!("Bearer {ADMIN_TOKEN}"))).await.json().await.unwrap();
    let with_rsvp_token = get_as(&app, &path, Some(&format!("Bearer {}", other["token"].as_str().unwrap()))).await;

    let shown = &public["items"][0];
    assert_eq!(shown["name"], "Ada");
    assert_eq!(shown["status"], "going");
    assert_eq!(shown["guests"], 1);
    assert!(shown["created_at"].is_string());
    assert!(shown.get("email").is_none() && !public.to_string().contains("ada@example.com"), "{public}");
    assert_eq!(admin["items"][0]["email"], "ada@example.com");
    assert_error(with_rsvp_token, StatusCode::FORBIDDEN, "forbidden").await;
}

#[tokio::test]
async fn a_single_rsvp_shows_its_email_only_to_the_admin_or_its_own_token() {
    let app = spawn_app().await;
    let event_id = app.create_event(None).await;
    let mine = app.create_rsvp(event_id, "ada@example.com", 0).await;
    let theirs = app.create_rsvp(event_id, "bob@example.com", 0).await;
    let path = format!("/rsvps/{}", id_of(&mine));
    let bearer = |body: &Value| format!("Bearer {}", body["token"].as_str().unwrap());

    let public: Value = get_as(&app, &path, None).await.json().await.unwrap();
    let own: Value = get_as(&app, &path, Some(&bearer(&mine))).await.json().await.unwrap();
    let admin: Value = get_as(&app, &path, Some(&format!("Bearer {ADMIN_TOKEN}"))).await.json().await.unwrap();
    let someone_else = get_as(&app, &path, Some(&bearer(&theirs))).await;
    let not_bearer = get_as(&app, &path, Some("Basic YWRhOnNlY3JldA==")).await;

    assert_eq!(public["name"], "Ada");
    assert!(public.get("email").is_none(), "{public}");
    assert_eq!(own["email"], "ada@example.com");
    assert_eq!(admin["email"], "ada@example.com");
    assert_error(someone_else, StatusCode::FORBIDDEN, "forbidden").await;
    assert_error(not_bearer, StatusCode::UNAUTHORIZED, "unauthorized").await;
}

#[tokio::test]
async fn the_bearer_scheme_is_accepted_in_any_case() {
    let app = spawn_app().await;
    let body = json!({"title": "Rust meetup", "starts_at": crate::helpers::in_a_year()});

    let created = app
        .client
        .post(app.url("/events"))
        .header("authorization", format!("bearer {ADMIN_TOKEN}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let event_id = id_of(&created.json().await.unwrap());
    let rsvp = app.create_rsvp(event_id, "ada@example.com", 0).await;
    let patched = app
        .client
        .patch(app.url(&format!("/rsvps/{}", id_of(&rsvp))))
        .header("authorization", format!("BEARER {}", rsvp["token"].as_str().unwrap()))
        .json(&json!({"guests": 2}))
        .send()
        .await
        .unwrap();
    let deleted = app
        .client
        .delete(app.url(&format!("/rsvps/{}", id_of(&rsvp))))
        .header("authorization", format!("bEaReR {ADMIN_TOKEN}"))
        .send()
        .await
        .unwrap();

    assert_eq!(patched.status(), StatusCode::OK);
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
}

/// Every field value of every span and of every log line at info or above, as text.
#[derive(Clone, Default)]
struct Recorded(Arc<Mutex<String>>);

impl Visit for Recorded {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let mut text = self.0.lock().unwrap();
        text.push_str(&format!("{}={value:?}\n", field.name()));
    }
}

impl<S: Subscriber> Layer<S> for Recorded {
    fn on_new_span(&self, attrs: &Attributes<'_>, _: &Id, _: Context<'_, S>) {
        self.0.lock().unwrap().push_str(&format!("span {}\n", attrs.metadata().name()));
        attrs.record(&mut self.clone());
    }

    fn on_record(&self, _: &Id, values: &Record<'_>, _: Context<'_, S>) {
        values.record(&mut self.clone());
    }

    // Log lines at the levels the api runs with; dependencies' debug and trace output is
    // not what this test is about.
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        if *event.metadata().level() <= tracing::Level::INFO {
            event.record(&mut self.clone());
        }
    }
}

// One thread runs the test, the api and its writers, so the scoped subscriber sees
// every span they open.
#[tokio::test(flavor = "current_thread")]
async fn spans_never_record_names_emails_or_tokens() {
    let recorded = Recorded::default();
    let _guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(recorded.clone()));
    let app = spawn_app().await;
    let event_id = app.create_event(Some(10)).await;

    let created = app
        .create_rsvp_with(
            event_id,
            &json!({"name": "Quentin Zebedee", "email": "q.zebedee@example.org", "status": "going"}),
        )
        .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let created: Value = created.json().await.unwrap();
    let (rsvp_id, token) = id_and_token_of(&created);
    let duplicate = app
        .create_rsvp_with(
            event_id,
            &json!({"name": "Quentin Zebedee", "email": "q.zebedee@example.org", "status": "going"}),
        )
        .await;
    let renamed = app.patch_rsvp(rsvp_id, &token, &json!({"name": "Xavier Yellowhammer", "guests": 1})).await;
    get_as(&app, &format!("/rsvps/{rsvp_id}"), Some(&format!("Bearer {token}"))).await;
    get_as(&app, &format!("/events/{event_id}/rsvps"), Some(&format!("Bearer {ADMIN_TOKEN}"))).await;
    let cancelled = app.cancel_rsvp(&token).await;

    assert_eq!(duplicate.status(), StatusCode::CONFLICT);
    assert_eq!(renamed.status(), StatusCode::OK);
    assert_eq!(cancelled.status(), StatusCode::OK);
    let text = recorded.0.lock().unwrap().clone();
    assert!(text.contains("span "), "the subscriber saw the api's spans");
    for secret in ["Zebedee", "Yellowhammer", "q.zebedee", token.as_str(), ADMIN_TOKEN] {
        assert!(!text.contains(secret), "{secret:?} recorded:\n{text}");
    }
}
