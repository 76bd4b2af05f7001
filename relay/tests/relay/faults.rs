//! Faults: the relay killed mid-stream, the broker frozen under steady writes, steps
//! that failed whole or on some partitions only.

use std::time::Duration;

use rsvp_contract::testing::Broker;
use rsvp_relay::{
    outbox::Position,
    store::{self, Cursor, Receipt},
    StepOutcome,
};
use sqlx::{Connection, PgConnection};

use crate::helpers::*;

/// How long the broker stays frozen, as in the acceptance criteria.
const BROKER_PAUSE: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_relay_killed_mid_stream_loses_nothing_and_republishes_only_unacknowledged_rows() {
    // Arrange: the real binary, small batches, rows committed steadily.
    let broker = Broker::start().await;
    let db = fresh_db().await;
    let mut settings = settings(&db, &broker.address());
    settings.batch_rows = 20;
    let writer = steady_writer(db.pool.clone(), 10, Duration::from_millis(5));
    let mut first = RelayProcess::spawn(&settings, &[]);
    eventually(Duration::from_secs(30), "the first relay to publish 200 rows", || async {
        (receipts(&db.pool).await.len() >= 200).then_some(())
    })
    .await;

    // Act: SIGKILL while publishing, then a new relay.
    first.kill9().await;
    let acknowledged = receipts(&db.pool).await;
    let _second = RelayProcess::spawn(&settings, &[]);
    eventually(Duration::from_secs(30), "the second relay to publish", || async {
        (receipts(&db.pool).await.len() >= acknowledged.len() + 200).then_some(())
    })
    .await;
    let written = stop_writer(writer).await;
    wait_until_drained(&db.pool, Duration::from_secs(30)).await;

    // Assert: every row is there; copies only of rows not yet recorded as acknowledged,
    // at most the one step that was in flight.
    let records = read_topic(&broker.address(), "rsvp-events").await;
    let duplicates = assert_nothing_lost(&records, &written, &acknowledged);
    eprintln!("kill -9 mid-stream: {} rows, {duplicates} duplicate records", written.len());
    assert!(duplicates <= 20, "{duplicates} duplicates: more than one batch was republished");
    assert_eq!(receipts(&db.pool).await.len(), written.len());
}

#[tokio::test]
async fn a_broker_paused_under_steady_writes_loses_nothing_and_the_backlog_returns_to_zero() {
    // Arrange
    let broker = Broker::start().await;
    let db = fresh_db().await;
    let relay = RunningRelay::start(settings(&db, &broker.address())).await;
    let writer = steady_writer(db.pool.clone(), 5, Duration::from_millis(100));
    eventually(Duration::from_secs(20), "the relay to publish", || async {
        (receipts(&db.pool).await.len() >= 20).then_some(())
    })
    .await;

    // Act: freeze the broker while rows keep coming.
    broker.pause();
    let paused_at = tokio::time::Instant::now();
    let backlog = eventually(Duration::from_secs(10), "the backlog metric to rise", || async {
        scrape(relay.admin_port, "outbox_backlog_rows").await.filter(|b| *b >= 10.0)
    })
    .await;
    let readyz = reqwest::get(format!("http://127.0.0.1:{}/readyz", relay.admin_port)).await.unwrap();
    assert_eq!(readyz.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
    let readiness: serde_json::Value = readyz.json().await.unwrap();
    assert_eq!(readiness["checks"]["kafka"], "down", "{readiness}");
    assert_eq!(readiness["checks"]["postgres"], "up", "{readiness}");
    tokio::time::sleep(BROKER_PAUSE.saturating_sub(paused_at.elapsed())).await;
    let peak = scrape(relay.admin_port, "outbox_backlog_rows").await.unwrap();
    let acknowledged = receipts(&db.pool).await;
    broker.resume();
    tokio::time::sleep(Duration::from_secs(1)).await; // steady writes go on across the recovery
    let written = stop_writer(writer).await;

    // Assert: it heals by itself, the backlog drains, nothing is lost.
    wait_until_drained(&db.pool, Duration::from_secs(30)).await;
    let readyz = reqwest::get(format!("http://127.0.0.1:{}/readyz", relay.admin_port)).await.unwrap();
    assert_eq!(readyz.status(), reqwest::StatusCode::OK, "kafka answers again");
    eventually(Duration::from_secs(10), "the backlog metric to return to 0", || async {
        (scrape(relay.admin_port, "outbox_backlog_rows").await == Some(0.0)).then_some(())
    })
    .await;
    assert!(peak > backlog, "the backlog kept rising while paused: {backlog} then {peak}");
    let errors = scrape(relay.admin_port, "relay_errors_total").await.unwrap_or(0.0);
    assert!(errors >= 1.0, "the outage was counted in relay_errors_total");
    relay.stop().await;
    let records = read_topic(&broker.address(), "rsvp-events").await;
    let duplicates = assert_nothing_lost(&records, &written, &acknowledged);
    eprintln!(
        "broker paused {BROKER_PAUSE:?}: {} rows, backlog peak {peak}, {duplicates} duplicate records",
        written.len()
    );
}

#[tokio::test]
async fn a_failed_step_drops_the_rows_read_ahead_and_the_retry_starts_at_the_cursor() {
    // Arrange: 5-row steps over 20 rows; the first step publishes and reads the next 5 ahead.
    let broker = Broker::start().await;
    let db = fresh_db().await;
    let mut settings = settings(&db, &broker.address());
    settings.batch_rows = 5;
    let written = write_rows(&db.pool, 4, 5).await;
    let mut worker = leader_worker(&settings).await;
    // Idle only while a parallel test's transaction holds the xmin back.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while worker.step().await.expect("step") == StepOutcome::Idle {
        assert!(tokio::time::Instant::now() < deadline, "the first step did not publish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cursor = worker.cursor();
    let acknowledged = receipts(&db.pool).await;
    assert_eq!(acknowledged.len(), 5);

    // Act: the next step takes the rows read ahead, its produce times out, and the
    // step after it runs against the broker again.
    broker.pause();
    // A parallel test's open transaction can hold the next rows back (the step is then
    // idle and never reaches the broker); step until one tries to produce.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match worker.step().await {
            Err(_) => break,
            Ok(StepOutcome::Idle) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(outcome) => panic!("a step against a frozen broker fails, got {outcome:?}"),
        }
    }
    broker.resume();
    assert_eq!(worker.cursor(), cursor, "a failed step leaves the cursor");

    // Assert: the retry starts at the cursor, so all 15 remaining rows are published,
    // not only those after the batch that failed.
    assert_eq!(drain(&mut worker, 15).await, 15);
    let records = read_topic(&broker.address(), "rsvp-events").await;
    assert_nothing_lost(&records, &written, &acknowledged);
    assert_eq!(receipts(&db.pool).await.len(), written.len());
}

#[tokio::test]
async fn a_new_leader_skips_the_rows_a_partly_failed_step_left_acknowledged_ahead_of_the_cursor() {
    // Arrange: what a step over rows 4-10 leaves when the partition of rows 4 and 5
    // failed and rows 6-8 were acknowledged: the cursor after row 3, receipts for 6-8
    // and, with the cursor, row 8 as the last receipt ahead of it.
    let broker = Broker::start().await;
    let db = fresh_db().await;
    let settings = settings(&db, &broker.address());
    let written = write_rows(&db.pool, 10, 1).await;
    let mut positions = Vec::new();
    for row in &written {
        let xid: String = sqlx::query_scalar("select xid::text from outbox where id = $1")
            .bind(row.id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        positions.push(Position { xid: xid.parse().unwrap(), id: row.id });
    }
    let receipted = Receipt::of_batch(0, positions[5..8].iter().copied().zip(0..));
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    store::ensure_cursor(&mut conn, &settings.kafka.topic).await.unwrap();
    let left = Cursor { position: positions[2], receipts_ahead: Some(positions[7]) };
    store::commit(&mut conn, &settings.kafka.topic, &receipted, Some(left)).await.unwrap();

    // Act: a new leader takes over and publishes the rest.
    let mut worker = leader_worker(&settings).await;
    assert_eq!(drain(&mut worker, 7).await, 7);

    // Assert: only rows 4, 5, 9 and 10 reach the topic, once each, and once the cursor
    // passed row 8 no receipt is ahead of it any more.
    let records = read_topic(&broker.address(), &settings.kafka.topic).await;
    let mut published: Vec<String> = records.iter().map(|r| r.ce_id().to_owned()).collect();
    published.sort();
    let mut expected: Vec<String> = [3, 4, 8, 9].iter().map(|&i| written[i].message_id.to_string()).collect();
    expected.sort();
    assert_eq!(published, expected);
    let stored = store::load_cursor(&mut conn, &settings.kafka.topic).await.unwrap().unwrap();
    assert_eq!(stored, Cursor { position: positions[9], receipts_ahead: None });
}
