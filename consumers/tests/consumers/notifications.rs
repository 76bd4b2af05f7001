//! The notifications group, the example of a consumer added in one file: one row per
//! seat freed, exactly once whatever is redelivered or replayed.

use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{outbox_record, run_binary, Api, Stepper, TestEnv, NOTIFICATIONS};

/// `(rsvp_id, cause, seats)` of every notification of `event`, in rsvp order.
async fn notifications(env: &TestEnv, event: Uuid) -> Vec<(Uuid, String, i32)> {
    sqlx::query_as("select rsvp_id, cause, seats from notifications where event_id = $1 order by rsvp_id")
        .bind(event)
        .fetch_all(&env.db)
        .await
        .unwrap()
}

#[tokio::test]
async fn cancelling_or_deleting_a_going_rsvp_notifies_once_and_a_redelivery_or_a_replay_adds_nothing() {
    // Arrange: going rsvps cancelled and deleted, and changes that free no seat.
    let env = TestEnv::start(2).await;
    let api = Api::spawn(&env).await;
    let consumers = Stepper::build(&env, &["--group", "notifications"]).await;
    let event = api.create_event(Some(50)).await;
    let (cancelled, cancelled_token) = api.rsvp(event, "a@example.com", "going", 2).await;
    let (maybe, maybe_token) = api.rsvp(event, "b@example.com", "maybe", 0).await;
    let (deleted, _) = api.rsvp(event, "c@example.com", "going", 0).await;
    let (updated, updated_token) = api.rsvp(event, "d@example.com", "going", 1).await;
    api.cancel(&cancelled_token).await;
    api.cancel(&maybe_token).await;
    api.delete(deleted).await;
    api.update(updated, &updated_token, json!({ "guests": 3 })).await;
    api.delete(maybe).await;
    let published = env.relay_outbox().await;

    // Act
    assert_eq!(consumers.drain(&env, NOTIFICATIONS).await, published);

    // Assert: the going rsvp cancelled with its two guests, and the one deleted.
    let mut expected = vec![(cancelled, "RSVP_CANCELLED".to_owned(), 3), (deleted, "RSVP_DELETED".to_owned(), 1)];
    expected.sort();
    assert_eq!(notifications(&env, event).await, expected);

    // Redelivered from offset 0, then replayed at new offsets: nothing more.
    sqlx::query("update consumer_offsets set next_offset = 0, anchor_offset = null, anchor_fingerprint = null where group_name = $1")
        .bind(NOTIFICATIONS.name())
        .execute(&env.db)
        .await
        .unwrap();
    assert_eq!(consumers.drain(&env, NOTIFICATIONS).await, published);
    assert_eq!(env.replay_outbox().await, published);
    assert_eq!(consumers.drain(&env, NOTIFICATIONS).await, published);
    assert_eq!(notifications(&env, event).await, expected);
    let total: i64 = sqlx::query_scalar("select count(*) from notifications").fetch_one(&env.db).await.unwrap();
    assert_eq!(total, 2);
}

#[tokio::test]
async fn the_notifications_group_shows_in_status_and_its_dead_letters_redrive_once() {
    // Arrange: a going rsvp cancelled, whose record reaches the group garbled; the
    // operator puts the original back from the outbox.
    let env = TestEnv::start(1).await;
    let api = Api::spawn(&env).await;
    let consumers = Stepper::build(&env, &["--group", "notifications"]).await;
    let event = api.create_event(None).await;
    let (_, token) = api.rsvp(event, "a@example.com", "going", 1).await;
    api.cancel(&token).await;
    let (key, original, version, message_id, event_type): (String, Value, i64, Uuid, String) = sqlx::query_as(
        "select kafka_key, payload, rsvp_version, message_id, event_type from outbox order by id desc limit 1",
    )
    .fetch_one(&env.db)
    .await
    .unwrap();
    let mut garbled = original.clone();
    garbled["data"]["version"] = json!("garbled");
    env.produce(0, vec![outbox_record(&key, &garbled, version, message_id, &event_type)]).await;
    consumers.drain(&env, NOTIFICATIONS).await;
    assert!(notifications(&env, event).await.is_empty());

    // Act: the generic commands, for the new group.
    let (ok, listed) = run_binary(&env, &["dlq", "list", "--group", "notifications"]).await;
    assert!(ok && listed.contains("notifications-group") && listed.contains("1 dead letter(s)"), "{listed}");
    sqlx::query("update consumer_dead_letters set record_value = $1")
        .bind(serde_json::to_vec(&original).unwrap())
        .execute(&env.db)
        .await
        .unwrap();
    let (ok, redriven) = run_binary(&env, &["dlq", "redrive", "--group", "notifications"]).await;
    assert!(ok && redriven.contains("redriven: applied"), "{redriven}");
    let (again, _) = run_binary(&env, &["dlq", "redrive", "--group", "notifications"]).await;
    let (_, status) = run_binary(&env, &["status", "--group", "notifications"]).await;

    // Assert: notified once, and `status` knows the group (unowned: nothing runs).
    assert!(again, "nothing pending is not a failure");
    assert_eq!(notifications(&env, event).await.len(), 1);
    assert!(status.contains("notifications-group: 1 partition(s), 1 unowned"), "{status}");
}
