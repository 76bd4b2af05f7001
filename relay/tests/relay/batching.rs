//! Batch sizes: the computed size against the bytes rskafka sends, the largest row the
//! api can write, batches below the limit, and a broker that refuses a batch as too
//! large (Tansu does not enforce `message.max.bytes`, so [`LimitedBroker`] does).

use std::time::Duration;

use chrono::{TimeZone, Utc};
use rskafka::record::Record;
use rsvp_api::domain::{CreateRsvpRequest, NewRsvp};
use rsvp_contract::{
    outbox_record::{HeaderAttributes, OutboxColumns, OutboxMessage},
    CloudEvent, EventType, RsvpData, RsvpStatus,
};
use rsvp_relay::{
    batch_size,
    config::MIN_MAX_BATCH_BYTES,
    kafka::{Kafka, TopicMode},
    outbox::{self, Position},
};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{helpers::*, limited_broker::LimitedBroker};

/// Apache Kafka's default `message.max.bytes`.
const KAFKA_DEFAULT_MESSAGE_MAX_BYTES: usize = 1_048_588;

/// A W3C traceparent the api keeps (it drops malformed ones).
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// The largest rsvp change the api can write for `event_id`: a 100-character name of
/// 4-byte characters, a 254-byte email with 2-byte characters, 10 guests, the longest
/// event type and status names, a previous status, nanosecond timestamps, the largest
/// version and a traceparent. Checked against the api's own validation.
fn largest_event(event_id: Uuid) -> CloudEvent {
    let name = "😀".repeat(100);
    let email = format!("{}@{}.{}.{}.com", "ü".repeat(32), "a".repeat(63), "b".repeat(63), "c".repeat(57));
    let body = serde_json::json!({ "name": name, "email": email, "status": "declined", "guests": 10 });
    assert!(body.to_string().len() <= rsvp_api::error::MAX_BODY_BYTES, "the api takes the request body");
    let request: CreateRsvpRequest = serde_json::from_value(body).unwrap();
    let rsvp = NewRsvp::parse(request).expect("the api accepts the largest name and email");
    assert_eq!(rsvp.name.as_str().chars().count(), 100);
    assert_eq!(rsvp.email.as_str().len(), 254);
    let mut headers = axum::http::HeaderMap::new();
    headers.insert("traceparent", TRACEPARENT.parse().unwrap());
    assert_eq!(rsvp_api::routes::traceparent(&headers), Some(TRACEPARENT), "the api keeps the traceparent");
    let time = Utc.timestamp_opt(4_102_444_799, 123_456_789).unwrap(); // nine fractional digits
    let data = RsvpData {
        id: Uuid::now_v7(),
        event_id,
        name: rsvp.name.as_str().to_owned(),
        email: rsvp.email.as_str().to_owned(),
        status: RsvpStatus::Cancelled,
        guests: rsvp.guests.value(),
        version: i64::MAX,
        created_at: time,
        updated_at: time,
        previous_status: Some(RsvpStatus::Declined),
    };
    CloudEvent::new(EventType::RsvpCancelled, data, time)
}

/// Commits `per_key` largest rows for each of `keys` events through the api's own
/// outbox insert, one transaction each, keys interleaved; returns them in commit order.
async fn write_largest_rows(pool: &PgPool, keys: usize, per_key: usize) -> Vec<Written> {
    let events: Vec<Uuid> = (0..keys).map(|_| Uuid::now_v7()).collect();
    let mut written = Vec::new();
    for _ in 0..per_key {
        for event_id in &events {
            let event = largest_event(*event_id);
            let mut tx = pool.begin().await.unwrap();
            rsvp_api::store::outbox::append(&mut tx, &[(event.clone(), Some(TRACEPARENT))], &Default::default(), &[])
                .await
                .unwrap();
            let id: i64 = sqlx::query_scalar("select max(id) from outbox").fetch_one(&mut *tx).await.unwrap();
            tx.commit().await.unwrap();
            written.push(Written { id, key: event_id.to_string(), message_id: event.id, version: event.data.version });
        }
    }
    written
}

#[tokio::test]
async fn the_computed_batch_size_is_the_size_of_the_record_batch_rskafka_sends() {
    // Arrange: a broker that takes everything but measures every record batch.
    let broker = LimitedBroker::start(usize::MAX).await;
    let settings = rsvp_relay::config::Settings::defaults("postgres://unused", &broker.address());
    let kafka = Kafka::connect(&settings, TopicMode::CreateIfMissing(1)).await.unwrap();
    let producer = kafka.producer(0);
    let at = |millis: i64| Utc.timestamp_millis_opt(1_764_000_000_000 + millis).unwrap();
    let record = |value: String, millis: i64| {
        let columns = OutboxColumns {
            kafka_key: Uuid::now_v7().to_string(),
            message_id: Uuid::now_v7(),
            event_type: "RSVP_CANCELLED".into(),
            rsvp_version: 123_456,
            payload: value,
            traceparent: Some(TRACEPARENT.into()),
            created_at: at(millis),
        };
        let attributes = HeaderAttributes {
            specversion: Some("1.0".into()),
            source: Some("/rsvp-api".into()),
            time: Some(at(millis).to_rfc3339()),
            content_type: None,
        };
        let message = OutboxMessage { columns, attributes };
        message.to_record()
    };
    let largest = serde_json::to_string(&largest_event(Uuid::now_v7())).unwrap();
    let cases: Vec<Vec<Record>> = vec![
        vec![record("{}".into(), 0)],
        vec![record(largest.clone(), 0)],
        // Values around the varint steps, timestamps before and far after the first.
        (0..300).map(|i| record("é".repeat(i * 7), (i as i64 - 150) * 997)).collect(),
        (0..600).map(|_| record(largest.clone(), 0)).collect(),
        vec![record("x".repeat(70_000), 0), record("y".repeat(8_200), -1), record("z".into(), 86_400_000)],
    ];

    for (case, records) in cases.into_iter().enumerate() {
        // Act
        let computed = batch_size::encoded_len(&records);
        let count = records.len() as i32;
        producer.produce(records).await.unwrap();

        // Assert
        let sent = *broker.seen().last().unwrap();
        assert_eq!((sent.records, sent.bytes), (count, computed), "case {case}");
    }
}

#[tokio::test]
async fn the_largest_row_the_api_can_write_is_far_below_the_smallest_batch_limit() {
    // Arrange
    let db = fresh_db().await;
    write_largest_rows(&db.pool, 1, 1).await;

    // Act: the row as the relay reads it (jsonb text) and the batch it alone makes.
    let cluster = rsvp_relay::generation::current_cluster(&db.pool).await.unwrap();
    let scope = outbox::Scope { cluster, since_id: 0, earlier_cluster: false };
    let rows = eventually(Duration::from_secs(10), "the row to become eligible", || async {
        Some(outbox::read_eligible(&db.pool, "rsvp-events", scope, Position::default(), 10, None).await.unwrap())
            .filter(|rows| !rows.is_empty())
    })
    .await;
    let bytes = batch_size::encoded_len(&[rows[0].message.to_record()]);

    // Assert: so any valid RELAY_MAX_BATCH_BYTES takes at least one row.
    eprintln!(
        "the largest row the api can write: {} payload bytes, a batch of {bytes} bytes",
        rows[0].message.columns.payload.len()
    );
    assert!(bytes <= rsvp_api::error::MAX_BODY_BYTES, "{bytes} bytes");
    assert!(bytes * 2 <= MIN_MAX_BATCH_BYTES, "{bytes} bytes");
}

#[tokio::test]
async fn batches_of_the_largest_rows_stay_below_the_batch_limit() {
    // Arrange: a broker whose limit is the relay's, so any larger batch would be refused;
    // two busy events, so that most rows share a partition.
    let limit = MIN_MAX_BATCH_BYTES;
    let broker = LimitedBroker::start(limit).await;
    let db = fresh_db().await;
    let mut settings = settings(&db, &broker.address());
    settings.max_batch_bytes = limit;
    let written = write_largest_rows(&db.pool, 2, 150).await;

    // Act
    let mut worker = leader_worker(&settings).await;
    drain(&mut worker, written.len()).await;

    // Assert: every batch within the limit, none refused, and nearly full.
    let seen = broker.seen();
    assert!(seen.iter().all(|batch| batch.bytes <= limit && !batch.refused), "{seen:?}");
    let bytes: usize = seen.iter().map(|b| b.bytes).sum();
    assert!(seen.len() <= 2 * bytes.div_ceil(limit) + 2, "{} batches for {bytes} bytes", seen.len());
    eprintln!(
        "{} rows in {} batches of at most {} bytes",
        written.len(),
        seen.len(),
        seen.iter().map(|b| b.bytes).max().unwrap()
    );
    let records = read_topic(&broker.address(), "rsvp-events").await;
    assert_eq!(assert_nothing_lost(&records, &written, &receipts(&db.pool).await), 0, "no duplicates");
}

#[tokio::test]
async fn with_the_defaults_a_busy_event_of_the_largest_rows_goes_out_in_batches_kafka_takes() {
    // Arrange: Kafka's default message.max.bytes, the relay's defaults, and more of the
    // largest rows for one event (one partition) than one batch can carry.
    let broker = LimitedBroker::start(KAFKA_DEFAULT_MESSAGE_MAX_BYTES).await;
    let db = fresh_db().await;
    let settings = settings(&db, &broker.address());
    let written = write_largest_rows(&db.pool, 1, 800).await;

    // Act
    let mut worker = leader_worker(&settings).await;
    drain(&mut worker, written.len()).await;

    // Assert
    let seen = broker.seen();
    eprintln!("{} rows in batches of {:?} bytes", written.len(), seen.iter().map(|b| b.bytes).collect::<Vec<_>>());
    assert!(seen.iter().all(|batch| batch.bytes <= settings.max_batch_bytes && !batch.refused), "{seen:?}");
    let records = read_topic(&broker.address(), "rsvp-events").await;
    assert_eq!(assert_nothing_lost(&records, &written, &receipts(&db.pool).await), 0, "no duplicates");
}

#[tokio::test]
async fn a_replay_of_the_largest_rows_sends_batches_within_the_batch_limit() {
    // Arrange: a broker whose limit is the relay's, one busy event of the largest rows,
    // published once.
    let limit = MIN_MAX_BATCH_BYTES;
    let broker = LimitedBroker::start(limit).await;
    let db = fresh_db().await;
    let mut settings = settings(&db, &broker.address());
    settings.max_batch_bytes = limit;
    let written = write_largest_rows(&db.pool, 1, 150).await;
    let mut worker = leader_worker(&settings).await;
    drain(&mut worker, written.len()).await;
    let published = broker.seen().len();

    // Act: replay every row, a page of up to RELAY_BATCH_ROWS rows at a time.
    let selection = rsvp_relay::replay::Selection::Ids { from: 0, to: None };
    let report = rsvp_relay::replay::replay(&db.pool, &settings, &selection, None, false, &mut |_, _| {})
        .await
        .expect("the replay completes");

    // Assert: the replay went out in several batches, each within the limit, none refused.
    let replayed = &broker.seen()[published..];
    assert_eq!(report.replayed, written.len() as u64);
    assert!(replayed.len() > 1, "{replayed:?}");
    assert!(replayed.iter().all(|batch| batch.bytes <= limit && !batch.refused), "{replayed:?}");
}

#[tokio::test]
async fn a_batch_the_broker_refuses_as_too_large_is_split_and_publishing_goes_on_in_order() {
    // Arrange: a broker that takes 64 KiB per batch, a relay with the default 1 MB.
    let broker_limit = 64 * 1024;
    let broker = LimitedBroker::start(broker_limit).await;
    let db = fresh_db().await;
    let written = write_rows(&db.pool, 2, 200).await;

    // Act
    let relay = RunningRelay::start(settings(&db, &broker.address())).await;
    wait_until_drained(&db.pool, Duration::from_secs(30)).await;
    let splits = scrape(relay.admin_port, "relay_batch_splits_total").await;
    relay.stop().await;

    // Assert: the refused batches came again as halves, each row once, in per-key order.
    let seen = broker.seen();
    assert!(seen.iter().any(|batch| batch.refused), "the broker refused a batch: {seen:?}");
    assert!(splits >= Some(1.0), "splits counted: {splits:?}");
    let records = read_topic(&broker.address(), "rsvp-events").await;
    assert_eq!(assert_nothing_lost(&records, &written, &receipts(&db.pool).await), 0, "no duplicates");
    assert_eq!(receipts(&db.pool).await.len(), written.len());
}

#[tokio::test]
async fn a_single_record_the_broker_refuses_is_reported_and_retried_with_backoff() {
    // Arrange: a broker that takes no record at all.
    let broker = LimitedBroker::start(200).await;
    let db = fresh_db().await;
    write_rows(&db.pool, 1, 1).await;

    // Act
    let relay = RunningRelay::start(settings(&db, &broker.address())).await;
    eventually(Duration::from_secs(20), "the refusal to be counted", || async {
        errors_of_kind(relay.admin_port, "record_too_large").await.filter(|n| *n >= 1.0)
    })
    .await;
    let first = broker.seen().len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let attempts = broker.seen().len() - first;
    relay.stop().await;

    // Assert: still unpublished, tried again with backoff (1s at most in tests), not in
    // a tight loop.
    assert!(broker.seen().iter().all(|batch| batch.refused && batch.records == 1));
    assert!((1..=10).contains(&attempts), "{attempts} attempts in 3s");
    assert_eq!(cursor_id(&db.pool).await, 0);
    assert!(receipts(&db.pool).await.is_empty());
}

/// `relay_errors_total{kind="…"}` on the admin port.
async fn errors_of_kind(admin_port: u16, kind: &str) -> Option<f64> {
    let body = reqwest::get(format!("http://127.0.0.1:{admin_port}/metrics")).await.ok()?.text().await.ok()?;
    let prefix = format!("relay_errors_total{{kind=\"{kind}\"}} ");
    body.lines().find_map(|line| line.strip_prefix(&prefix)?.parse().ok())
}
