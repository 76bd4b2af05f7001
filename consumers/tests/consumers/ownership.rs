//! Two instances share the partitions; the survivor of a SIGKILL takes them all.

use std::time::{Duration, Instant};

use rsvp_consumers::group::Group;

use crate::helpers::{totals, truth_and_stats, wait_until, Api, ConsumerProcess, TestEnv};

fn owned(group: Group) -> String {
    format!("consumer_owned_partitions{{group=\"{}\"}}", group.name())
}

#[tokio::test]
async fn two_instances_split_the_partitions_and_the_survivor_owns_all_within_5s_applying_nothing_twice() {
    // Arrange: two instances running both groups over 4 partitions.
    let env = TestEnv::start(4).await;
    let api = Api::spawn(&env).await;
    let events: Vec<_> = [api.create_event(None).await, api.create_event(None).await].into();
    let mut first = ConsumerProcess::spawn(&env, &[]);
    let second = ConsumerProcess::spawn(&env, &[]);
    for group in Group::ALL {
        wait_until(Duration::from_secs(20), "each instance owns half the partitions", || async {
            first.metric(&owned(group)).await == Some(2.0) && second.metric(&owned(group)).await == Some(2.0)
        })
        .await;
    }
    api.mixed_workload(events[0], 12).await;
    env.relay_outbox().await;
    let on_topic = env.records_on_topic().await;
    wait_until(Duration::from_secs(20), "both instances consumed the first writes", || async {
        env.stored_offsets(Group::Analytics).await == on_topic && env.stored_offsets(Group::Cache).await == on_topic
    })
    .await;

    // Act: SIGKILL one instance while writes keep coming.
    first.kill().await;
    let killed_at = Instant::now();
    let survivor_owns_all = async {
        for group in Group::ALL {
            wait_until(Duration::from_secs(10), "the survivor owns every partition", || async {
                second.metric(&owned(group)).await == Some(4.0)
            })
            .await;
        }
        killed_at.elapsed()
    };
    let writes = async {
        api.mixed_workload(events[1], 12).await;
        env.relay_outbox().await;
    };
    let (takeover, ()) = tokio::join!(survivor_owns_all, writes);

    // Assert
    assert!(takeover <= Duration::from_secs(5), "takeover took {takeover:?}");
    let on_topic = env.records_on_topic().await;
    wait_until(Duration::from_secs(20), "the survivor consumed everything", || async {
        env.stored_offsets(Group::Analytics).await == on_topic && env.stored_offsets(Group::Cache).await == on_topic
    })
    .await;
    for &event in &events {
        let (truth, stats) = truth_and_stats(&env.db, event).await;
        assert_eq!(stats, truth, "stats of {event}");
        let (outbox, applied) = totals(&env.db, event).await;
        assert_eq!(applied, outbox, "every change of {event} applied exactly once");
    }
    let metrics = second.metrics().await.expect("scrape /metrics");
    let (status, readiness) = second.readiness().await;
    assert_eq!(status, 200, "{readiness}");
    for dependency in ["postgres", "kafka", "redis"] {
        assert_eq!(readiness["checks"][dependency], "up", "{readiness}");
    }
    for series in [
        "consumer_processed_total{group=\"analytics-group\",result=\"applied\"}",
        "consumer_processed_total{group=\"cache-invalidation-group\",result=\"applied\"}",
        "consumer_lag_records{group=\"analytics-group\",partition=\"0\"}",
        "consumer_batch_duration_seconds_count{group=\"analytics-group\"}",
        "consumer_event_age_seconds_count{group=\"cache-invalidation-group\"}",
    ] {
        assert!(metrics.contains(series), "/metrics lacks {series}:\n{metrics}");
    }
    eprintln!("takeover after SIGKILL: {takeover:?}");
}
