//! Normal operation: exactly once, per key in commit order, murmur2 partitions, and
//! commit order across slow transactions.

use std::{collections::BTreeMap, time::Duration};

use rskafka::client::ClientBuilder;
use rsvp_contract::partitioner::partition_for_key;
use rsvp_contract::testing::Broker;
use rsvp_relay::{observe::Observer, StepOutcome};
use sqlx::{ConnectOptions, Connection};
use uuid::Uuid;

use crate::helpers::*;

#[tokio::test]
async fn every_committed_row_reaches_the_topic_once_per_key_in_commit_order_in_its_murmur2_partition() {
    // Arrange
    let broker = Broker::start().await;
    let db = fresh_db().await;
    let relay = RunningRelay::start(settings(&db, &broker.address())).await;

    // Act: rows committed while the relay runs, woken by notifications.
    let written = write_rows(&db.pool, 8, 5).await;
    wait_until_drained(&db.pool, Duration::from_secs(20)).await;
    relay.stop().await;

    // Assert: exactly once.
    let records = read_topic(&broker.address(), "rsvp-events").await;
    assert_eq!(records.len(), written.len(), "one record per row");
    let by_ce_id: BTreeMap<&str, &TopicRecord> = records.iter().map(|r| (r.ce_id(), r)).collect();
    assert_eq!(by_ce_id.len(), written.len(), "no duplicates");
    // Per key in commit order, in partition murmur2(key) % 6, with the full headers.
    let receipts = receipts(&db.pool).await;
    let mut last_offset: BTreeMap<&str, i64> = BTreeMap::new();
    for row in &written {
        let record = by_ce_id[row.message_id.to_string().as_str()];
        assert_eq!(record.key, row.key);
        assert_eq!(record.partition, partition_for_key(row.key.as_bytes(), 6));
        assert!(last_offset.get(row.key.as_str()).is_none_or(|o| *o < record.offset), "per-key order");
        last_offset.insert(&row.key, record.offset);
        assert_eq!(receipts[&row.id], (record.partition, record.offset), "the receipt says where it is");
        assert_eq!(record.headers["ce_specversion"], "1.0");
        assert_eq!(record.headers["ce_type"], "RSVP_CREATED");
        assert_eq!(record.headers["ce_source"], "/rsvp-api");
        assert_eq!(record.headers["content-type"], "application/json");
        assert_eq!(record.headers["rsvp_version"], row.version.to_string());
        assert!(record.headers["traceparent"].starts_with("00-"));
        assert!(!record.headers["ce_time"].is_empty());
        let value: serde_json::Value = serde_json::from_str(&record.value).unwrap();
        assert_eq!(value["id"], row.message_id.to_string());
    }

    // The third-party client sees the same records.
    let seen = confluent_kafka(&["consume", &broker.address(), "rsvp-events"]).await;
    let theirs: BTreeMap<(i64, i64), (String, serde_json::Value)> = seen
        .into_iter()
        .map(|v| {
            (
                (v["partition"].as_i64().unwrap(), v["offset"].as_i64().unwrap()),
                (v["key"].as_str().unwrap().to_owned(), v["headers"].clone()),
            )
        })
        .collect();
    let ours: BTreeMap<(i64, i64), (String, serde_json::Value)> = records
        .iter()
        .map(|r| ((i64::from(r.partition), r.offset), (r.key.clone(), serde_json::to_value(&r.headers).unwrap())))
        .collect();
    assert_eq!(theirs, ours, "confluent-kafka reads the same keys, partitions, offsets and headers");
}

#[tokio::test]
async fn our_partitions_match_librdkafkas_murmur2_partitioner_for_the_same_keys() {
    // Arrange
    let broker = Broker::start().await;
    let client = ClientBuilder::new(vec![broker.address()]).build().await.unwrap();
    client.controller_client().unwrap().create_topic("partition-probe", 6, 1, 5_000).await.unwrap();
    let mut keys: Vec<String> = (0..40).map(|_| Uuid::now_v7().to_string()).collect();
    keys.extend(
        ["kafka", "21", "foobar", "a-little-bit-long-string", "PreAmbleWillBeRemoved,ThePrePartThatIs"]
            .map(String::from),
    );
    let address = broker.address();
    let args: Vec<&str> =
        ["partition", &address, "partition-probe"].into_iter().chain(keys.iter().map(String::as_str)).collect();

    // Act
    let chosen = confluent_kafka(&args).await;

    // Assert
    assert_eq!(chosen.len(), keys.len());
    for choice in chosen {
        let key = choice["key"].as_str().unwrap();
        assert_eq!(choice["partition"].as_i64().unwrap() as i32, partition_for_key(key.as_bytes(), 6), "key {key}");
    }
}

#[tokio::test]
async fn a_row_whose_transaction_commits_after_later_rows_were_published_is_not_skipped() {
    // Arrange: B takes its transaction id first, A inserts first (lower outbox id),
    // B inserts and commits while A stays open.
    let broker = Broker::start().await;
    let db = fresh_db().await;
    let mut worker = leader_worker(&settings(&db, &broker.address())).await;
    let mut tx_b = db.pool.begin().await.unwrap();
    sqlx::query("select pg_current_xact_id()").execute(&mut *tx_b).await.unwrap();
    let mut tx_a = db.pool.begin().await.unwrap();
    let a = append(&mut tx_a, Uuid::now_v7(), 1).await;
    let b = append(&mut tx_b, Uuid::now_v7(), 1).await;
    tx_b.commit().await.unwrap();
    assert!(a.id < b.id, "A holds the lower id");

    // Act 1: B is published; the cursor passes B's id, which an `id > cursor` relay would
    // take as "everything up to here is done".
    assert_eq!(drain(&mut worker, 1).await, 1);
    let published = receipts(&db.pool).await;
    assert!(published.contains_key(&b.id) && !published.contains_key(&a.id));
    assert_eq!(cursor_id(&db.pool).await, b.id);

    // Act 2: A commits late.
    tx_a.commit().await.unwrap();
    assert_eq!(drain(&mut worker, 1).await, 1);

    // Assert: both on the topic, once each.
    let records = read_topic(&broker.address(), "rsvp-events").await;
    let mut ce_ids: Vec<String> = records.iter().map(|r| r.ce_id().to_owned()).collect();
    ce_ids.sort();
    let mut expected = vec![a.message_id.to_string(), b.message_id.to_string()];
    expected.sort();
    assert_eq!(ce_ids, expected);
}

#[tokio::test]
async fn rows_waiting_behind_an_open_transaction_report_the_stall_and_the_backend_holding_it() {
    // Arrange: a session that took a transaction id and sits idle in transaction.
    let broker = Broker::start().await;
    let db = fresh_db().await;
    let settings = settings(&db, &broker.address());
    let mut worker = leader_worker(&settings).await;
    let options: sqlx::postgres::PgConnectOptions = db.url.parse().unwrap();
    let mut slow = options.application_name("slow-writer").connect().await.unwrap();
    let slow_pid: i32 = sqlx::query_scalar("select pg_backend_pid()").fetch_one(&mut slow).await.unwrap();
    sqlx::query("begin").execute(&mut slow).await.unwrap();
    sqlx::query("select pg_current_xact_id()").execute(&mut slow).await.unwrap();
    let written = write_rows(&db.pool, 1, 1).await;

    // Act / Assert: the committed row is not eligible yet, and the stall names the session.
    assert_eq!(worker.step().await.unwrap(), StepOutcome::Idle);
    let mut observer = Observer::new(db.pool.clone(), &settings.kafka.topic, Duration::ZERO);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let seen = loop {
        // Another test's open transaction may be older for a moment: wait for ours.
        let seen = observer.tick().await.unwrap();
        if seen.blocker.as_ref().is_some_and(|b| b.pid == slow_pid) {
            break seen;
        }
        assert!(tokio::time::Instant::now() < deadline, "the stall never named the slow session: {seen:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(seen.watermark_stall > Duration::ZERO);
    assert_eq!(seen.backlog_rows, 1);
    let blocker = seen.blocker.unwrap();
    assert_eq!(blocker.application_name.as_deref(), Some("slow-writer"));
    assert_eq!(blocker.state.as_deref(), Some("idle in transaction"));
    assert!(blocker.xact_start.is_some());
    assert!(blocker.query.unwrap().contains("pg_current_xact_id"));

    // Once it ends, the row goes out and the stall clears.
    slow.close().await.unwrap();
    assert_eq!(drain(&mut worker, 1).await, 1);
    let after = observer.tick().await.unwrap();
    assert_eq!((after.backlog_rows, after.watermark_stall), (0, Duration::ZERO));
    assert_eq!(receipts(&db.pool).await.len(), written.len());
}

#[tokio::test]
async fn records_published_with_compression_read_back_unchanged() {
    // Arrange
    let broker = Broker::start().await;
    let db = fresh_db().await;
    let mut settings = settings(&db, &broker.address());
    settings.compression = rsvp_relay::config::CompressionSetting::Zstd;
    let mut worker = leader_worker(&settings).await;
    let written = write_rows(&db.pool, 3, 3).await;

    // Act
    assert_eq!(drain(&mut worker, written.len()).await, written.len());

    // Assert: our reader and confluent-kafka both decode every record.
    let records = read_topic(&broker.address(), "rsvp-events").await;
    let ours: std::collections::BTreeSet<String> = records.iter().map(|r| r.ce_id().to_owned()).collect();
    let expected: std::collections::BTreeSet<String> = written.iter().map(|w| w.message_id.to_string()).collect();
    assert_eq!(ours, expected);
    let theirs = confluent_kafka(&["consume", &broker.address(), "rsvp-events"]).await;
    assert_eq!(theirs.len(), written.len());
}

#[tokio::test]
async fn a_backlog_beyond_ten_thousand_rows_is_estimated_from_the_outbox_ids_and_a_smaller_one_counted() {
    // Arrange: 10,050 committed rows, no relay yet.
    let db = fresh_db().await;
    sqlx::query(
        "insert into outbox (aggregate_type, aggregate_id, kafka_key, event_type, message_id, rsvp_version, payload)
         select 'rsvp', gen_random_uuid(), 'k' || (i % 7), 'RSVP_CREATED', gen_random_uuid(), 1, '{}'::jsonb
           from generate_series(1, 10050) i",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let mut observer = Observer::new(db.pool.clone(), "rsvp-events", Duration::from_secs(60));

    // Act / Assert: ids are consecutive here, so the estimate is exact.
    let seen = observer.tick().await.unwrap();
    assert_eq!(seen.backlog_rows, 10_050);
    assert!(seen.oldest_unpublished_age > Duration::ZERO);
    sqlx::query("delete from outbox where id > 20").execute(&db.pool).await.unwrap();
    assert_eq!(observer.tick().await.unwrap().backlog_rows, 20);
}

#[tokio::test]
async fn each_step_notifies_the_consumers_which_partitions_got_records_when_its_receipts_commit() {
    // Arrange: a listener on the consumers' wake-up channel.
    let broker = Broker::start().await;
    let db = fresh_db().await;
    let settings = settings(&db, &broker.address());
    let mut listener = sqlx::postgres::PgListener::connect_with(&db.pool).await.unwrap();
    listener.listen(rsvp_contract::published::CHANNEL).await.unwrap();
    let mut worker = leader_worker(&settings).await;

    // Act: rows of 12 keys, published step by step.
    let written = write_rows(&db.pool, 12, 1).await;
    drain(&mut worker, written.len()).await;

    // Assert: every partition a receipt names was in a notification of this topic,
    // and no other.
    let receipted: std::collections::BTreeSet<i32> = receipts(&db.pool).await.values().map(|(p, _)| *p).collect();
    let mut notified = std::collections::BTreeSet::new();
    while let Ok(Some(notification)) =
        tokio::time::timeout(Duration::from_millis(500), listener.try_recv()).await.unwrap_or(Ok(None))
    {
        let published = rsvp_contract::published::parse(notification.payload()).expect("a payload the consumers read");
        assert_eq!(published.topic, "rsvp-events");
        notified.extend(published.partitions);
    }
    assert!(receipted.len() > 1, "the keys spread over partitions: {receipted:?}");
    assert_eq!(notified, receipted);
}
