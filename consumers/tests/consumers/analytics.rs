//! Exact statistics after mixed workloads, redeliveries, replays and crashes.

use std::time::Duration;

use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{
    outbox_record, totals, truth_and_stats, wait_until, Api, ConsumerProcess, Stepper, TestEnv, ANALYTICS,
};

#[tokio::test]
async fn stats_match_the_rsvps_table_after_a_mixed_workload_and_stay_unchanged_after_redelivery_and_replay() {
    // Arrange
    let env = TestEnv::start(3).await;
    let api = Api::spawn(&env).await;
    let consumers = Stepper::build(&env, &["--group", "analytics"]).await;
    let events = [api.create_event(None).await, api.create_event(Some(500)).await];
    for event in events {
        api.mixed_workload(event, 24).await;
    }
    let published = env.relay_outbox().await;

    // Act
    let processed = consumers.drain(&env, ANALYTICS).await;

    // Assert
    assert_eq!(processed, published);
    let mut before = Vec::new();
    for event in events {
        let (truth, stats) = truth_and_stats(&env.db, event).await;
        assert_eq!(stats, truth, "going, maybe, declined, cancelled, guests going of {event}");
        let (outbox, applied) = totals(&env.db, event).await;
        assert_eq!(applied, outbox, "created, updated, cancelled, deleted, changes per hour of {event}");
        before.push((stats, applied));
    }

    // Redelivery of every stored offset (as after a lost offset table), then an
    // operator replay of every outbox row at new offsets: nothing may change.
    sqlx::query("update consumer_offsets set next_offset = 0").execute(&env.db).await.unwrap();
    assert_eq!(consumers.drain(&env, ANALYTICS).await, published);
    assert_eq!(env.replay_outbox().await, published);
    assert_eq!(consumers.drain(&env, ANALYTICS).await, published);
    for (event, before) in events.iter().zip(before) {
        let (truth, stats) = truth_and_stats(&env.db, *event).await;
        let (_, applied) = totals(&env.db, *event).await;
        assert_eq!((stats.clone(), applied), before, "stats of {event} changed on replay");
        assert_eq!(stats, truth);
    }
}

#[tokio::test]
async fn a_consumer_killed_mid_stream_and_restarted_ends_with_exact_stats_even_after_a_full_replay() {
    // Arrange: a steady stream of small batches.
    let env = TestEnv::start(3).await;
    let api = Api::spawn(&env).await;
    let events = [api.create_event(None).await, api.create_event(None).await, api.create_event(None).await];
    let mut consumer = ConsumerProcess::spawn(&env, &["--group", "analytics"]);
    let writer = {
        let api_url = api.url.clone();
        let events = events.to_vec();
        tokio::spawn(async move {
            let api = Api { url: api_url, http: reqwest::Client::new() };
            for event in events {
                api.mixed_workload(event, 18).await;
            }
        })
    };
    let relay = async {
        while !writer.is_finished() {
            env.relay_outbox().await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        env.relay_outbox().await;
    };

    // Act: SIGKILL once it has applied part of the stream, restart, let writes finish.
    let kill_and_restart = async {
        wait_until(Duration::from_secs(30), "the consumer applied some records", || async {
            env.stored_offsets(ANALYTICS).await > 20
        })
        .await;
        consumer.kill().await;
        let applied = env.stored_offsets(ANALYTICS).await;
        eprintln!("killed after {applied} records, {} on the topic so far", env.records_on_topic().await);
        ConsumerProcess::spawn(&env, &["--group", "analytics"])
    };
    let (_, restarted) = tokio::join!(relay, kill_and_restart);
    writer.await.unwrap();
    let on_topic = env.records_on_topic().await;
    wait_until(Duration::from_secs(30), "the restarted consumer caught up", || async {
        env.stored_offsets(ANALYTICS).await == on_topic
    })
    .await;

    // Assert, then replay everything: unchanged and exact.
    let mut before = Vec::new();
    for event in events {
        let (truth, stats) = truth_and_stats(&env.db, event).await;
        assert_eq!(stats, truth, "stats of {event} after the crash");
        let (outbox, applied) = totals(&env.db, event).await;
        assert_eq!(applied, outbox, "totals of {event} after the crash: nothing applied twice");
        before.push(applied);
    }
    let replayed = i64::try_from(env.replay_outbox().await).unwrap();
    wait_until(Duration::from_secs(30), "the replay was consumed", || async {
        env.stored_offsets(ANALYTICS).await == on_topic + replayed
    })
    .await;
    for (event, before) in events.iter().zip(before) {
        let (truth, stats) = truth_and_stats(&env.db, *event).await;
        assert_eq!(stats, truth, "stats of {event} after the replay");
        assert_eq!(totals(&env.db, *event).await.1, before, "totals of {event} changed on replay");
    }
    drop(restarted);
}

#[tokio::test]
async fn with_a_separate_analytics_database_the_stats_and_their_offsets_live_there() {
    // Arrange
    let env = TestEnv::start(2).await;
    let api = Api::spawn(&env).await;
    let (analytics_db, analytics_url) =
        rsvp_contract::testing::fresh_database(&rsvp_contract::runtime::database::MIGRATOR).await;
    let consumers = Stepper::build(&env, &["--group", "analytics", "--analytics-database-url", &analytics_url]).await;
    let event = api.create_event(None).await;
    api.mixed_workload(event, 12).await;
    let published = env.relay_outbox().await;

    // Act
    consumers.drain(&env, ANALYTICS).await;

    // Assert
    let (truth, in_main) = truth_and_stats(&env.db, event).await;
    assert_eq!(in_main, vec![0; 5], "nothing is written to the main database");
    let stats: (i64, i64, i64, i64, i64) = sqlx::query_as(
        "select going, maybe, declined, cancelled, guests_going from analytics.event_stats where event_id = $1",
    )
    .bind(event)
    .fetch_one(&analytics_db)
    .await
    .unwrap();
    assert_eq!(vec![stats.0, stats.1, stats.2, stats.3, stats.4], truth);
    let offsets: i64 = sqlx::query_scalar(
        "select sum(next_offset)::bigint from consumer_offsets where group_name = 'analytics-group'",
    )
    .fetch_one(&analytics_db)
    .await
    .unwrap();
    assert_eq!(offsets, i64::try_from(published).unwrap());
    assert_eq!(env.stored_offsets(ANALYTICS).await, 0);
}

#[tokio::test]
async fn a_broker_that_lost_its_records_restarts_the_group_from_the_earliest_offset() {
    // Arrange: two records consumed, then the broker restarts empty.
    let mut env = TestEnv::start(1).await;
    let api = Api::spawn(&env).await;
    let consumers = Stepper::build(&env, &["--group", "analytics"]).await;
    let metrics = rsvp_contract::runtime::admin::metrics_handle();
    let before = api.create_event(None).await;
    api.rsvp(before, "a@example.com", "going", 1).await;
    api.rsvp(before, "b@example.com", "going", 1).await;
    env.relay_outbox().await;
    consumers.drain(&env, ANALYTICS).await;
    assert_eq!(env.stored_offsets(ANALYTICS).await, 2);
    env.broker.restart_empty().await;
    env.kafka.controller_client().unwrap().create_topic(crate::helpers::TOPIC, 1, 1, 5_000).await.unwrap();

    // Act: a new record at offset 0, below the stored offset.
    let after = api.create_event(None).await;
    api.rsvp(after, "c@example.com", "maybe", 0).await;
    env.relay_outbox().await;
    consumers.drain(&env, ANALYTICS).await;

    // Assert
    assert_eq!(env.stored_offsets(ANALYTICS).await, 1);
    let (truth, stats) = truth_and_stats(&env.db, after).await;
    assert_eq!(stats, truth);
    let rendered = metrics.render();
    assert!(rendered.contains("consumer_offset_resets_total{group=\"analytics-group\"} 1"), "{rendered}");
}

#[tokio::test]
async fn the_api_serves_the_stats_zeros_before_any_change_and_404_for_an_unknown_event() {
    let env = TestEnv::start(2).await;
    let api = Api::spawn(&env).await;
    let consumers = Stepper::build(&env, &["--group", "analytics"]).await;
    let (event, empty) = (api.create_event(None).await, api.create_event(None).await);
    api.mixed_workload(event, 12).await;
    env.relay_outbox().await;
    consumers.drain(&env, ANALYTICS).await;
    let stats = api.get(&format!("/events/{event}/stats")).await;
    let (truth, _) = truth_and_stats(&env.db, event).await;
    let c = &stats["counts"];
    let served: Vec<i64> = [&c["going"], &c["maybe"], &c["declined"], &c["cancelled"], &stats["guests_going"]]
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert_eq!(served, truth);
    let (outbox, _) = totals(&env.db, event).await;
    assert_eq!(stats["totals"]["created"].as_i64().unwrap(), outbox[0]);
    assert_eq!(stats["totals"]["deleted"].as_i64().unwrap(), outbox[3]);
    assert_eq!(stats["rsvps_per_hour"][0]["changes"].as_i64().unwrap(), outbox[4]);
    let zero = api.get(&format!("/events/{empty}/stats")).await;
    assert_eq!(zero["counts"]["going"], 0);
    assert_eq!(zero["totals"]["created"], 0);
    assert!(zero["last_event_at"].is_null());
    let missing = api.http.get(format!("{}/events/{}/stats", api.url, uuid::Uuid::now_v7())).send().await.unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn an_older_change_applied_after_a_newer_one_leaves_every_counter_exact() {
    // Arrange: one rsvp created going (v1), updated (v2), cancelled (v3).
    let env = TestEnv::start(1).await;
    let api = Api::spawn(&env).await;
    let consumers = Stepper::build(&env, &["--group", "analytics"]).await;
    let event = api.create_event(None).await;
    let (rsvp, token) = api.rsvp(event, "late@example.com", "going", 1).await;
    api.update(rsvp, &token, json!({ "guests": 3 })).await;
    api.cancel(&token).await;
    let rows: Vec<(String, Value, i64, Uuid, String)> = sqlx::query_as(
        "select kafka_key, payload, rsvp_version, message_id, event_type from outbox where aggregate_id = $1 order by rsvp_version",
    )
    .bind(rsvp)
    .fetch_all(&env.db)
    .await
    .unwrap();
    assert_eq!(rows.iter().map(|r| r.2).collect::<Vec<_>>(), vec![1, 2, 3]);
    let record = |i: usize| {
        let (key, payload, version, message_id, event_type) = &rows[i];
        outbox_record(key, payload, *version, *message_id, event_type)
    };
    let partition = env.partition_for(&rows[0].0);

    // Act: v1 and v3 arrive and are applied; then v2 arrives, older than what was applied.
    env.produce(partition, vec![record(0), record(2)]).await;
    assert_eq!(consumers.drain(&env, ANALYTICS).await, 2);
    env.produce(partition, vec![record(1)]).await;
    assert_eq!(consumers.drain(&env, ANALYTICS).await, 1);

    // Assert: counts describe the newest version; totals count each change once.
    let (truth, stats) = truth_and_stats(&env.db, event).await;
    assert_eq!(stats, truth, "going, maybe, declined, cancelled, guests going");
    let (outbox, applied) = totals(&env.db, event).await;
    assert_eq!(applied, outbox, "created, updated, cancelled, deleted, changes per hour");

    // v2 once more, and everything again: nothing changes.
    env.produce(partition, vec![record(1), record(0), record(2)]).await;
    assert_eq!(consumers.drain(&env, ANALYTICS).await, 3);
    assert_eq!(truth_and_stats(&env.db, event).await.1, truth);
    assert_eq!(totals(&env.db, event).await.1, outbox);
}
