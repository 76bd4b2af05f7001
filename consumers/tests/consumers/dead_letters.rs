//! Poison records go to the dead-letter table without blocking their partition.

use std::{collections::BTreeMap, time::Duration};

use chrono::Utc;
use rskafka::record::Record;
use rsvp_consumers::{
    startup::Application,
    worker::{PartitionWorker, StepOutcome},
};
use serde_json::Value;

use crate::{
    helpers::{run_binary, totals, truth_and_stats, Api, Stepper, TestEnv, ANALYTICS, TOPIC},
    raw_kafka,
};

#[tokio::test]
async fn an_undecodable_record_is_dead_lettered_without_blocking_its_partition_and_a_fixed_one_is_redriven_once() {
    // Arrange: garbage on the event's partition, then its real changes behind it.
    let env = TestEnv::start(1).await;
    let api = Api::spawn(&env).await;
    let consumers = Stepper::build(&env, &["--group", "analytics"]).await;
    let event = api.create_event(None).await;
    api.rsvp(event, "first@example.com", "going", 2).await;
    let garbage = Record {
        key: Some(event.to_string().into_bytes()),
        value: Some(b"{\"specversion\": \"1.0\", \"oops\"".to_vec()),
        headers: Default::default(),
        timestamp: Utc::now(),
    };
    env.produce(0, vec![garbage]).await;
    env.relay_outbox().await;

    // Act
    consumers.drain(&env, ANALYTICS).await;

    // Assert: dead-lettered raw, and the rsvp behind it applied.
    let (id, offset, error, value): (i64, i64, String, Vec<u8>) = sqlx::query_as(
        "select id, kafka_offset, error, record_value from consumer_dead_letters where group_name = 'analytics-group'",
    )
    .fetch_one(&env.db)
    .await
    .unwrap();
    assert_eq!(offset, 0);
    assert!(error.contains("not a valid rsvp CloudEvent"), "{error}");
    assert_eq!(value, b"{\"specversion\": \"1.0\", \"oops\"");
    let (truth, stats) = truth_and_stats(&env.db, event).await;
    assert_eq!(stats, truth);
    let (ok, listed) = run_binary(&env, &["dlq", "list", "--group", "analytics"]).await;
    assert!(ok && listed.contains(&format!("#{id} analytics-group")), "{listed}");

    // The operator fixes the record: here, it becomes a change the relay never published.
    api.rsvp(event, "second@example.com", "going", 1).await;
    let fixed: Value =
        sqlx::query_scalar("select payload from outbox order by id desc limit 1").fetch_one(&env.db).await.unwrap();
    sqlx::query("update consumer_dead_letters set record_value = $2 where id = $1")
        .bind(id)
        .bind(serde_json::to_vec(&fixed).unwrap())
        .execute(&env.db)
        .await
        .unwrap();
    let (ok, redriven) = run_binary(&env, &["dlq", "redrive", "--group", "analytics", "--id", &id.to_string()]).await;
    assert!(ok, "{redriven}");
    assert!(redriven.contains(&format!("#{id} redriven: applied")), "{redriven}");

    // Applied exactly once, however often it is redriven.
    let (ok, again) = run_binary(&env, &["dlq", "redrive", "--group", "analytics", "--id", &id.to_string()]).await;
    assert!(!ok, "a second redrive of the same dead letter must find nothing pending: {again}");
    run_binary(&env, &["dlq", "redrive", "--group", "analytics"]).await;
    let (truth, stats) = truth_and_stats(&env.db, event).await;
    assert_eq!(stats, truth);
    let (outbox, applied) = totals(&env.db, event).await;
    assert_eq!(applied, outbox);
    let (ok, listed) = run_binary(&env, &["dlq", "list", "--group", "analytics"]).await;
    assert!(ok && listed.contains("0 dead letter(s)"), "{listed}");
}

#[tokio::test]
async fn a_record_that_keeps_failing_is_dead_lettered_after_max_attempts_and_the_partition_moves_on() {
    // Arrange: the statistics of one event reject every write.
    let env = TestEnv::start(1).await;
    let api = Api::spawn(&env).await;
    let consumers = Stepper::build(&env, &["--group", "analytics", "--max-attempts", "3"]).await;
    let (broken, healthy) = (api.create_event(None).await, api.create_event(None).await);
    api.rsvp(broken, "a@example.com", "maybe", 0).await;
    env.relay_outbox().await;
    api.rsvp(healthy, "b@example.com", "going", 3).await;
    env.relay_outbox().await;
    sqlx::raw_sql(&format!(
        "create function reject() returns trigger language plpgsql as $$
         begin if new.event_id = '{broken}' then raise exception 'rejected for the test'; end if; return new; end $$;
         create trigger reject before insert or update on analytics.event_stats for each row execute function reject();"
    ))
    .execute(&env.db)
    .await
    .unwrap();
    let ctx = consumers.app.group_context(ANALYTICS, env.kafka.clone()).unwrap();
    let mut worker = PartitionWorker::acquire(ctx, 0).await.unwrap().unwrap();

    // Act: three failed attempts, then the poison is set aside.
    for attempt in 1..=3 {
        assert!(worker.step().await.is_err(), "attempt {attempt} should fail");
    }
    let mut steps = 0;
    while let StepOutcome::Processed { .. } = worker.step().await.unwrap() {
        steps += 1;
        assert!(steps < 10);
    }

    // Assert
    let (attempts, error): (i32, String) =
        sqlx::query_as("select attempts, error from consumer_dead_letters").fetch_one(&env.db).await.unwrap();
    assert_eq!(attempts, 3);
    assert!(error.contains("rejected for the test"), "{error}");
    let (truth, stats) = truth_and_stats(&env.db, healthy).await;
    assert_eq!(stats, truth);
    assert_eq!(worker.next_offset(), 2);
    tokio::time::timeout(Duration::from_secs(5), worker.release()).await.unwrap();
}

#[tokio::test]
async fn a_record_with_nul_and_invalid_utf8_in_its_headers_is_dead_lettered_raw_and_its_partition_moves_on() {
    // Arrange: a real event whose ce_id header is not its id (NUL and a byte that is
    // not UTF-8), with a header whose name holds NUL; the real change behind it.
    let env = TestEnv::start(1).await;
    let api = Api::spawn(&env).await;
    let consumers = Stepper::build(&env, &["--group", "analytics"]).await;
    let event = api.create_event(None).await;
    api.rsvp(event, "first@example.com", "going", 2).await;
    let payload: Value = sqlx::query_scalar("select payload from outbox").fetch_one(&env.db).await.unwrap();
    let (bad_id, odd_name, odd_value) = (b"\xff\x00not-an-id".to_vec(), "x-odd\0name", b"\x00\xc3\x28".to_vec());
    let poison = Record {
        key: Some(event.to_string().into_bytes()),
        value: Some(serde_json::to_vec(&payload).unwrap()),
        headers: BTreeMap::from([("ce_id".to_owned(), bad_id.clone()), (odd_name.to_owned(), odd_value.clone())]),
        timestamp: Utc::now(),
    };
    env.produce(0, vec![poison]).await;
    env.relay_outbox().await;
    let ctx = consumers.app.group_context(ANALYTICS, env.kafka.clone()).unwrap();
    let mut worker = PartitionWorker::acquire(ctx, 0).await.unwrap().unwrap();

    // Act: step until caught up; a step that fails would be retried forever.
    let mut steps = 0;
    loop {
        match worker.step().await {
            Ok(StepOutcome::Processed { .. }) => steps += 1,
            Ok(StepOutcome::CaughtUp) => break,
            Err(error) => panic!("step {steps} failed: {:#}", anyhow::Error::new(error)),
        }
        assert!(steps < 10, "the partition does not move on");
    }
    tokio::time::timeout(Duration::from_secs(5), worker.release()).await.unwrap();

    // Assert: the raw bytes are in the table, and the change behind it is applied.
    let (id, offset, names, values, error): (i64, i64, Vec<Vec<u8>>, Vec<Vec<u8>>, String) =
        sqlx::query_as("select id, kafka_offset, header_names, header_values, error from consumer_dead_letters")
            .fetch_one(&env.db)
            .await
            .unwrap();
    assert_eq!(offset, 0);
    assert_eq!(names, vec![b"ce_id".to_vec(), odd_name.as_bytes().to_vec()]);
    assert_eq!(values, vec![bad_id, odd_value]);
    assert!(error.contains("header ce_id"), "{error}");
    let (truth, stats) = truth_and_stats(&env.db, event).await;
    assert_eq!(stats, truth);

    // `dlq list` shows every byte escaped.
    let (ok, listed) = run_binary(&env, &["dlq", "list", "--group", "analytics"]).await;
    assert!(ok, "{listed}");
    assert!(listed.contains(r"ce_id=\xff\x00not-an-id x-odd\u{0}name=\x00\xc3("), "{listed}");
    assert!(!listed.contains('\0'), "{listed}");

    // Redriven as it is, it is still poison and stays pending; without the bad header
    // it is the change already applied, so nothing changes twice.
    let (ok, redriven) = run_binary(&env, &["dlq", "redrive", "--group", "analytics"]).await;
    assert!(!ok && redriven.contains(&format!("#{id} not redriven: header ce_id")), "{redriven}");
    sqlx::query(
        "update consumer_dead_letters set header_names = header_names[2:2], header_values = header_values[2:2]",
    )
    .execute(&env.db)
    .await
    .unwrap();
    let (ok, redriven) = run_binary(&env, &["dlq", "redrive", "--group", "analytics"]).await;
    assert!(ok && redriven.contains(&format!("#{id} redriven: duplicate")), "{redriven}");
    let (truth, stats) = truth_and_stats(&env.db, event).await;
    assert_eq!(stats, truth);
}

/// A change, then a batch of two records whose header names are not UTF-8 (rskafka
/// cannot decode them, nor any fetch answer holding them), then another change;
/// steps the analytics group's partition until it is caught up and checks that both
/// changes were applied. The consumers reach the broker for raw fetches at
/// `raw_brokers` when given.
async fn step_past_an_undecodable_batch(raw_brokers: Option<&str>) -> TestEnv {
    // Arrange
    let env = TestEnv::start(1).await;
    let api = Api::spawn(&env).await;
    let mut settings = env.settings(&["--group", "analytics"]);
    if let Some(brokers) = raw_brokers {
        settings.kafka.brokers = brokers.split(',').map(str::to_owned).collect();
    }
    let app = Application::build(&settings, false).await.unwrap();
    let event = api.create_event(None).await;
    api.rsvp(event, "first@example.com", "going", 2).await;
    env.relay_outbox().await;
    let undecodable = |name: &[u8]| raw_kafka::RawRecord {
        key: event.to_string().into_bytes(),
        value: b"{}".to_vec(),
        headers: vec![(b"ce_id".to_vec(), b"x".to_vec()), (name.to_vec(), b"value".to_vec())],
    };
    raw_kafka::produce(&env.broker.address(), TOPIC, 0, &[undecodable(b"x-\xff\xfe"), undecodable(b"\xc3\x28")]).await;
    api.rsvp(event, "second@example.com", "maybe", 0).await;
    env.relay_outbox().await;
    let ctx = app.group_context(ANALYTICS, env.kafka.clone()).unwrap();
    let mut worker = PartitionWorker::acquire(ctx, 0).await.unwrap().unwrap();

    // Act: step until caught up; a step that fails would be retried forever.
    let mut steps = 0;
    loop {
        match worker.step().await {
            Ok(StepOutcome::Processed { .. }) => steps += 1,
            Ok(StepOutcome::CaughtUp) => break,
            Err(error) => panic!("step {steps} failed: {:#}", anyhow::Error::new(error)),
        }
        assert!(steps < 10, "the partition does not move on");
    }

    // Assert: past the batch, and both changes applied.
    assert_eq!(worker.next_offset(), 4);
    tokio::time::timeout(Duration::from_secs(5), worker.release()).await.unwrap();
    let (truth, stats) = truth_and_stats(&env.db, event).await;
    assert_eq!(stats, truth);
    let (outbox, applied) = totals(&env.db, event).await;
    assert_eq!(applied, outbox);
    env
}

/// A dead letter's offset, value, header names and error, as stored.
type RawDeadLetter = (i64, Option<Vec<u8>>, Vec<Vec<u8>>, String);

#[tokio::test]
async fn records_whose_header_names_are_not_utf8_are_dead_lettered_raw_and_their_partition_moves_on() {
    let env = step_past_an_undecodable_batch(None).await;

    // Both records, with their bytes.
    let letters: Vec<RawDeadLetter> = sqlx::query_as(
        "select kafka_offset, record_value, header_names, error from consumer_dead_letters order by kafka_offset",
    )
    .fetch_all(&env.db)
    .await
    .unwrap();
    let names: Vec<(i64, Vec<Vec<u8>>)> = letters.iter().map(|(o, _, n, _)| (*o, n.clone())).collect();
    let expected =
        vec![(1, vec![b"ce_id".to_vec(), b"x-\xff\xfe".to_vec()]), (2, vec![b"ce_id".to_vec(), b"\xc3\x28".to_vec()])];
    assert_eq!(names, expected);
    for (_, value, _, error) in &letters {
        assert_eq!(value.as_deref(), Some(&b"{}"[..]));
        assert!(error.contains("read raw"), "{error}");
    }
    let (ok, listed) = run_binary(&env, &["dlq", "list", "--group", "analytics"]).await;
    assert!(ok && listed.contains(r"x-\xff\xfe=value") && listed.contains("2 dead letter(s)"), "{listed}");
}

#[tokio::test]
async fn a_batch_that_cannot_be_read_even_raw_becomes_one_placeholder_dead_letter_naming_its_offsets() {
    // The raw fetch goes to a port where no broker listens.
    let env = step_past_an_undecodable_batch(Some("127.0.0.1:1")).await;

    let (offset, value, error): (i64, Option<Vec<u8>>, String) =
        sqlx::query_as("select kafka_offset, record_value, error from consumer_dead_letters")
            .fetch_one(&env.db)
            .await
            .unwrap();
    assert_eq!((offset, value), (1, None));
    assert!(error.contains("offsets 1..=2 could not be decoded"), "{error}");
}
