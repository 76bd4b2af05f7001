//! The groups of one instance read each other's fetches: a group behind another is
//! served what that one just fetched instead of asking the broker again, and is
//! never served another log than its own.

use std::time::Duration;

use rsvp_consumers::worker::{PartitionWorker, StepOutcome};
use rsvp_contract::testing::counting::{self, FETCH};
use uuid::Uuid;

use crate::helpers::{
    lose_the_log_and_refill, metric_value, rsvps, step_until_caught_up, totals, truth_and_stats, Api, Stepper, TestEnv,
    ANALYTICS, CACHE,
};

/// Every group in one instance, whose cache and analytics workers own partition 0 and
/// have applied three rsvps to the event returned.
async fn cache_and_analytics_caught_up(env: &TestEnv, api: &Api) -> (Stepper, PartitionWorker, PartitionWorker, Uuid) {
    let consumers = Stepper::build(env, &[]).await;
    let context = |group| consumers.app.group_context(group, env.kafka.clone()).unwrap();
    let mut cache = PartitionWorker::acquire(context(CACHE), 0).await.unwrap().unwrap();
    let mut analytics = PartitionWorker::acquire(context(ANALYTICS), 0).await.unwrap().unwrap();
    let event = api.create_event(None).await;
    rsvps(api, env, event, 0..3, false).await;
    step_until_caught_up(&mut cache).await;
    step_until_caught_up(&mut analytics).await;
    (consumers, cache, analytics, event)
}

const SHARED: &str = r#"consumer_shared_fetches_total{group="analytics-group"}"#;

#[tokio::test]
async fn a_group_behind_another_applies_what_that_one_fetched_without_fetching_it_again() {
    // Arrange: every group in one instance, every Kafka request counted; the cache
    // and analytics groups have applied three records.
    let metrics = rsvp_contract::runtime::admin::metrics_handle();
    let (broker, counter) = counting::start_broker().await;
    let env = TestEnv::start_with(broker, 1).await;
    let api = Api::spawn(&env).await;
    let (_consumers, mut cache, mut analytics, event) = cache_and_analytics_caught_up(&env, &api).await;
    // Three more, which the cache group fetches first.
    rsvps(&api, &env, event, 3..6, false).await;
    step_until_caught_up(&mut cache).await;

    // Act
    let requests = counter.requests();
    let fetches_before = requests.of(FETCH);
    let outcome = analytics.step().await.unwrap();
    let fetches = requests.of(FETCH) - fetches_before;

    // Assert: the three new records applied, once, without a fetch request.
    assert_eq!(outcome, StepOutcome::Processed { records: 3 });
    assert_eq!(fetches, 0, "the analytics group fetched what the cache group had fetched");
    assert_eq!(analytics.next_offset(), 6);
    let (truth, stats) = truth_and_stats(&env.db, event).await;
    assert_eq!(stats, truth);
    let (outbox, applied) = totals(&env.db, event).await;
    assert_eq!(applied, outbox);
    assert_eq!(metric_value(&metrics.render(), SHARED), Some(1.0));
    // Caught up with what was shared, it asks the broker again.
    assert_eq!(analytics.step().await.unwrap(), StepOutcome::CaughtUp);
    assert!(requests.of(FETCH) > fetches_before);
    for worker in [cache, analytics] {
        tokio::time::timeout(Duration::from_secs(5), worker.release()).await.unwrap();
    }
}

#[tokio::test]
async fn a_group_whose_log_the_broker_lost_is_not_served_the_new_log_another_group_fetched() {
    // Arrange: both groups applied three records; the broker loses its log and is
    // refilled past their offset; the cache group reads the new log first, which
    // then fills what the instance keeps.
    let metrics = rsvp_contract::runtime::admin::metrics_handle();
    let mut env = TestEnv::start(1).await;
    let api = Api::spawn(&env).await;
    let (_consumers, mut cache, mut analytics, _) = cache_and_analytics_caught_up(&env, &api).await;
    let after = lose_the_log_and_refill(&mut env, &api).await;
    step_until_caught_up(&mut cache).await;
    assert_eq!(cache.next_offset(), 5);

    // Act
    step_until_caught_up(&mut analytics).await;

    // Assert: the analytics group read the new log from its start, as alone.
    let (truth, stats) = truth_and_stats(&env.db, after).await;
    assert_eq!(stats, truth, "the new log's first records were skipped");
    let (outbox, applied) = totals(&env.db, after).await;
    assert_eq!(applied, outbox);
    assert_eq!(analytics.next_offset(), 5);
    let resets = r#"consumer_offset_resets_total{group="analytics-group"}"#;
    assert_eq!(metric_value(&metrics.render(), resets), Some(1.0));
    for worker in [cache, analytics] {
        tokio::time::timeout(Duration::from_secs(5), worker.release()).await.unwrap();
    }
}
