//! Failures that are not the record's (locks, timeouts, deadlocks) are retried for as
//! long as they last and never dead-letter the record.

use std::time::Duration;

use rsvp_consumers::worker::{PartitionWorker, StepOutcome};
use serde_json::json;
use sqlx::{Connection, PgConnection};

use crate::helpers::{metric_value, totals, truth_and_stats, Api, Stepper, TestEnv, ANALYTICS};

async fn dead_letters(env: &TestEnv) -> i64 {
    sqlx::query_scalar("select count(*) from consumer_dead_letters").fetch_one(&env.db).await.unwrap()
}

#[tokio::test]
async fn a_lock_timeout_is_retried_beyond_max_attempts_without_dead_lettering_and_applied_once_the_lock_is_gone() {
    // Arrange: an applied rsvp, then its update on the topic; the consumer's sessions
    // give up waiting for a lock after 50 ms, and another session holds the
    // statistics tables.
    let metrics = rsvp_contract::runtime::admin::metrics_handle();
    let env = TestEnv::start(1).await;
    let api = Api::spawn(&env).await;
    let consumers = Stepper::build(&env, &["--group", "analytics", "--max-attempts", "2"]).await;
    let event = api.create_event(None).await;
    let (id, token) = api.rsvp(event, "a@example.com", "going", 1).await;
    env.relay_outbox().await;
    consumers.drain(&env, ANALYTICS).await;
    api.update(id, &token, json!({ "guests": 3 })).await;
    env.relay_outbox().await;
    let database = env.db_url.rsplit('/').next().unwrap();
    sqlx::query(&format!(r#"alter database "{database}" set lock_timeout = '50ms'"#)).execute(&env.db).await.unwrap();
    let mut holder = PgConnection::connect(&env.db_url).await.unwrap();
    sqlx::raw_sql(
        "set lock_timeout = 0; begin; lock table analytics.event_stats, analytics.rsvp_state in exclusive mode",
    )
    .execute(&mut holder)
    .await
    .unwrap();
    let ctx = consumers.app.group_context(ANALYTICS, env.kafka.clone()).unwrap();
    let mut worker = PartitionWorker::acquire(ctx, 0).await.unwrap().unwrap();

    // Act: far more failed attempts than --max-attempts.
    for attempt in 1..=6 {
        let error = worker.step().await.expect_err("the statistics are locked");
        assert!(error.keeps_ownership(), "attempt {attempt}: {:#}", anyhow::Error::new(error));
        assert_eq!(dead_letters(&env).await, 0, "attempt {attempt} dead-lettered the record");
    }
    sqlx::raw_sql("rollback").execute(&mut holder).await.unwrap();
    let mut steps = 0;
    while let StepOutcome::Processed { .. } = worker.step().await.expect("the lock is gone") {
        steps += 1;
        assert!(steps < 10);
    }
    tokio::time::timeout(Duration::from_secs(5), worker.release()).await.unwrap();

    // Assert: applied once, nothing dead, and every retry counted.
    assert_eq!(dead_letters(&env).await, 0);
    let (truth, stats) = truth_and_stats(&env.db, event).await;
    assert_eq!(stats, truth);
    let (outbox, applied) = totals(&env.db, event).await;
    assert_eq!(applied, outbox);
    let retries = metric_value(&metrics.render(), r#"consumer_transient_errors_total{group="analytics-group"}"#);
    assert!(retries.is_some_and(|n| n >= 6.0), "consumer_transient_errors_total: {retries:?}");
}
