//! `rsvp-consumers status`: owners, offsets, high watermarks, lag and dead letters per
//! partition, and its exit code for scripts.

use std::time::Duration;

use rsvp_consumers::{
    group::Group,
    status::{self, GroupStatus, Thresholds},
    worker::PartitionWorker,
};
use serde_json::Value;

use crate::helpers::{all_groups, wait_until, Api, ConsumerProcess, Stepper, TestEnv, ANALYTICS, CACHE};

/// Runs `rsvp-consumers status` with `args`; returns its exit code and stdout.
async fn status_binary(env: &TestEnv, args: &[&str]) -> (i32, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_rsvp-consumers"))
        .arg("status")
        .args(args)
        .envs(env.binary_env(0))
        .output()
        .await
        .expect("run rsvp-consumers status");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    (output.status.code().expect("exited, not killed"), format!("{stdout}\n--- stderr:\n{stderr}"))
}

async fn group_status(env: &TestEnv, group: Group) -> GroupStatus {
    status::collect(&env.db, &env.kafka, group, crate::helpers::TOPIC).await.expect("status")
}

fn json_of(output: &str) -> Value {
    let document = output.split("\n--- stderr:").next().unwrap();
    serde_json::from_str(document).unwrap_or_else(|e| panic!("not JSON ({e}): {output}"))
}

#[tokio::test]
async fn status_shows_every_partition_owned_and_caught_up_then_unowned_with_exit_1_once_the_consumer_stops() {
    // Arrange: a running consumer (every group) over 3 partitions, and real events.
    let env = TestEnv::start(3).await;
    let api = Api::spawn(&env).await;
    let event = api.create_event(None).await;
    let mut consumer = ConsumerProcess::spawn(&env, &[]);
    api.mixed_workload(event, 9).await;
    env.relay_outbox().await;
    let on_topic = env.records_on_topic().await;
    for group in all_groups() {
        wait_until(Duration::from_secs(30), "every group consumed everything", || async {
            env.stored_offsets(group).await == on_topic
        })
        .await;
    }

    // Act: through the library.
    for group in all_groups() {
        let s = group_status(&env, group).await;
        // Assert
        assert_eq!(s.partitions.len(), 3, "{s:?}");
        assert_eq!(s.summary.unowned, 0, "{s:?}");
        assert_eq!(s.summary.lag, 0, "{s:?}");
        assert_eq!(s.partitions.iter().map(|p| p.high_watermark).sum::<i64>(), on_topic, "{s:?}");
        for p in &s.partitions {
            assert_eq!(p.committed_offset, Some(p.high_watermark), "{p:?}");
            assert_eq!(p.lag_seconds, Some(0.0), "{p:?}");
            let owner = p.owner.as_ref().expect("owned");
            // The same instance id in every partition's session: the one process.
            assert_eq!(owner.instance.len(), 36, "an instance uuid: {owner:?}");
            assert_eq!(owner.host, "127.0.0.1", "{owner:?}");
        }
        assert!(s.problems(Thresholds { max_lag: Some(0), max_lag_seconds: Some(0.0) }).is_empty(), "{s:?}");
    }
    let instances: std::collections::BTreeSet<String> = group_status(&env, ANALYTICS)
        .await
        .partitions
        .into_iter()
        .chain(group_status(&env, CACHE).await.partitions)
        .map(|p| p.owner.unwrap().instance)
        .collect();
    assert_eq!(instances.len(), 1, "one process owns everything: {instances:?}");

    // Act: through the binary.
    let (code, output) = status_binary(&env, &["--json", "--max-lag", "0"]).await;
    assert_eq!(code, 0, "{output}");
    let document = json_of(&output);
    assert_eq!(document["healthy"], true, "{output}");
    assert_eq!(document["groups"].as_array().unwrap().len(), all_groups().len(), "{output}");
    assert_eq!(
        document["groups"][0]["partitions"][0]["owner"]["instance"],
        instances.first().unwrap().as_str(),
        "{output}"
    );
    let (code, table) = status_binary(&env, &["--group", "analytics"]).await;
    assert_eq!(code, 0, "{table}");
    assert!(
        table.contains("PARTITION  OWNER") && table.contains("analytics-group: 3 partition(s), 0 unowned"),
        "{table}"
    );

    // Act: the consumer stops.
    consumer.kill().await;
    wait_until(Duration::from_secs(10), "Postgres released the killed consumer's locks", || async {
        group_status(&env, ANALYTICS).await.summary.unowned == 3
    })
    .await;

    // Assert
    let (code, output) = status_binary(&env, &["--json"]).await;
    assert_eq!(code, 1, "{output}");
    let document = json_of(&output);
    assert_eq!(document["healthy"], false, "{output}");
    assert_eq!(
        document["problems"].as_array().unwrap().len(),
        3 * all_groups().len(),
        "3 unowned partitions per group: {output}"
    );
    assert_eq!(document["groups"][1]["summary"]["unowned"], 3, "{output}");
    assert!(document["groups"][1]["partitions"][0]["owner"].is_null(), "{output}");
}

#[tokio::test]
async fn status_exits_1_when_owned_partitions_lag_over_the_threshold_and_counts_their_dead_letters() {
    // Arrange: records produced, the partitions owned by workers that apply nothing.
    let env = TestEnv::start(2).await;
    let api = Api::spawn(&env).await;
    let event = api.create_event(None).await;
    api.mixed_workload(event, 6).await;
    env.relay_outbox().await;
    let on_topic = env.records_on_topic().await;
    let consumers = Stepper::build(&env, &["--group", "analytics"]).await;
    let ctx = consumers.app.group_context(ANALYTICS, env.kafka.clone()).unwrap();
    let mut held = Vec::new();
    for partition in 0..env.partitions {
        held.push(PartitionWorker::acquire(ctx.clone(), partition).await.unwrap().expect("free partition"));
    }
    sqlx::query(
        "insert into consumer_dead_letters (group_name, topic, partition, kafka_offset, error, attempts)
         values ('analytics-group', 'rsvp-events', 1, 0, 'poison', 5), ('analytics-group', 'rsvp-events', 1, 1, 'poison', 5)",
    )
    .execute(&env.db)
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // Act
    let s = group_status(&env, ANALYTICS).await;

    // Assert
    assert_eq!(s.summary.unowned, 0, "{s:?}");
    assert_eq!(s.summary.lag, on_topic, "nothing applied yet: {s:?}");
    assert_eq!(s.summary.dead_letters, 2, "{s:?}");
    assert_eq!(s.partitions[1].dead_letters, 2, "{s:?}");
    for p in s.partitions.iter().filter(|p| p.lag > 0) {
        assert_eq!(p.committed_offset, Some(0), "{p:?}");
        assert_eq!(p.lag_measured_at, Some(0), "the oldest unapplied record is the committed one: {p:?}");
        assert!(p.lag_seconds.unwrap() >= 1.0, "produced over a second ago: {p:?}");
    }
    let (code, output) =
        status_binary(&env, &["--group", "analytics", "--json", "--max-lag", &on_topic.to_string()]).await;
    assert_eq!(code, 0, "lag at the threshold is fine: {output}");
    let (code, output) = status_binary(&env, &["--group", "analytics", "--json", "--max-lag", "1"]).await;
    assert_eq!(code, 1, "{output}");
    assert!(json_of(&output)["problems"][0].as_str().unwrap().contains("lag"), "{output}");
    let (code, output) = status_binary(&env, &["--group", "analytics", "--max-lag-seconds", "0.5"]).await;
    assert_eq!(code, 1, "{output}");
    assert!(output.contains("PROBLEM analytics-group partition"), "{output}");
    for worker in held {
        worker.release().await;
    }
}

#[tokio::test]
async fn status_exits_2_when_postgres_cannot_be_reached() {
    let env = TestEnv::start(1).await;
    let (code, output) = status_binary(&env, &["--database-url", "postgres://root@127.0.0.1:1/nowhere"]).await;
    assert_eq!(code, 2, "{output}");
    assert!(output.contains("DATABASE_URL"), "{output}");
}
