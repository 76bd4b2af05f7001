//! A broker that lost its log and was refilled past a stored offset: the consumer
//! notices the log is another one and reads it from its start.

use std::time::Duration;

use rsvp_consumers::worker::PartitionWorker;

use crate::helpers::{
    lose_the_log_and_refill, metric_value, rsvps, step_until_caught_up, totals, truth_and_stats, Api, Stepper, TestEnv,
    ANALYTICS,
};

const RESETS: &str = r#"consumer_offset_resets_total{group="analytics-group"}"#;

/// Applies three records, loses the broker's log, refills it with five others in
/// batches of one, then lets the consumer poll: `reacquire` takes the partition again
/// after the loss (a restarted consumer) instead of keeping the same worker.
async fn the_new_log_is_applied_from_its_start(reacquire: bool) {
    // Arrange: three records applied; the offset is 3.
    let metrics = rsvp_contract::runtime::admin::metrics_handle();
    let mut env = TestEnv::start(1).await;
    let api = Api::spawn(&env).await;
    let consumers = Stepper::build(&env, &["--group", "analytics"]).await;
    let ctx = consumers.app.group_context(ANALYTICS, env.kafka.clone()).unwrap();
    let before = api.create_event(None).await;
    rsvps(&api, &env, before, 0..3, false).await;
    let mut worker = PartitionWorker::acquire(ctx.clone(), 0).await.unwrap().unwrap();
    step_until_caught_up(&mut worker).await;
    assert_eq!(worker.next_offset(), 3);
    let resets_before = metric_value(&metrics.render(), RESETS).unwrap_or(0.0);

    // The broker comes back empty and the relay refills the partition past 3.
    let after = lose_the_log_and_refill(&mut env, &api).await;
    if reacquire {
        tokio::time::timeout(Duration::from_secs(5), worker.release()).await.unwrap();
        worker = PartitionWorker::acquire(ctx, 0).await.unwrap().unwrap();
    }

    // Act
    step_until_caught_up(&mut worker).await;

    // Assert: every record of the new log applied, once, and the reset counted.
    let (truth, stats) = truth_and_stats(&env.db, after).await;
    assert_eq!(stats, truth, "the new log's first records were skipped");
    let (outbox, applied) = totals(&env.db, after).await;
    assert_eq!(applied, outbox);
    assert_eq!(worker.next_offset(), 5);
    let resets = metric_value(&metrics.render(), RESETS).unwrap_or(0.0);
    assert!(resets > resets_before, "consumer_offset_resets_total stayed at {resets}");
    let (truth, stats) = truth_and_stats(&env.db, before).await;
    assert_eq!(stats, truth, "what the lost log held stays applied");
    tokio::time::timeout(Duration::from_secs(5), worker.release()).await.unwrap();
}

#[tokio::test]
async fn a_running_consumer_reads_a_refilled_log_from_its_start_instead_of_its_stored_offset() {
    the_new_log_is_applied_from_its_start(false).await;
}

#[tokio::test]
async fn a_consumer_taking_the_partition_after_the_broker_lost_its_log_reads_the_new_log_from_its_start() {
    the_new_log_is_applied_from_its_start(true).await;
}

#[tokio::test]
async fn the_same_log_is_not_read_again() {
    // Arrange: records in several batches, applied; more behind them.
    let metrics = rsvp_contract::runtime::admin::metrics_handle();
    let env = TestEnv::start(1).await;
    let api = Api::spawn(&env).await;
    let consumers = Stepper::build(&env, &["--group", "analytics"]).await;
    let ctx = consumers.app.group_context(ANALYTICS, env.kafka.clone()).unwrap();
    let event = api.create_event(None).await;
    rsvps(&api, &env, event, 0..3, true).await;
    let mut worker = PartitionWorker::acquire(ctx.clone(), 0).await.unwrap().unwrap();
    step_until_caught_up(&mut worker).await;
    tokio::time::timeout(Duration::from_secs(5), worker.release()).await.unwrap();
    let resets_before = metric_value(&metrics.render(), RESETS).unwrap_or(0.0);
    rsvps(&api, &env, event, 3..5, true).await;

    // Act: a worker that keeps the partition, and one that takes it again.
    let mut worker = PartitionWorker::acquire(ctx.clone(), 0).await.unwrap().unwrap();
    step_until_caught_up(&mut worker).await;

    // Assert: no reset, every record applied once.
    assert_eq!(metric_value(&metrics.render(), RESETS).unwrap_or(0.0), resets_before);
    assert_eq!(worker.next_offset(), 5);
    let (outbox, applied) = totals(&env.db, event).await;
    assert_eq!(applied, outbox);
    let anchor: (Option<i64>, Option<Vec<u8>>) = sqlx::query_as(
        "select anchor_offset, anchor_fingerprint from consumer_offsets where group_name = 'analytics-group'",
    )
    .fetch_one(&env.db)
    .await
    .unwrap();
    let ce_id: uuid::Uuid = sqlx::query_scalar("select message_id from outbox order by id offset 3 limit 1")
        .fetch_one(&env.db)
        .await
        .unwrap();
    assert_eq!(anchor, (Some(3), Some(ce_id.to_string().into_bytes())), "the first record of the last fetch");
    tokio::time::timeout(Duration::from_secs(5), worker.release()).await.unwrap();
}
