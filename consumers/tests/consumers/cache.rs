//! The cache group: the next read after an invalidation misses, and an outage of
//! Redis leaves no stale entry once it is over.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use rsvp_consumers::{
    startup::Application,
    worker::{PartitionWorker, StepOutcome},
};
use rsvp_contract::testing::TcpProxy;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{truth_and_stats, wait_until, Api, Stepper, TestEnv, CACHE};

fn counts(detail: &Value) -> Vec<i64> {
    let c = &detail["counts"];
    ["going", "maybe", "declined", "cancelled"]
        .iter()
        .map(|s| c[s].as_i64().unwrap())
        .chain([detail["guests_going"].as_i64().unwrap()])
        .collect()
}

#[tokio::test]
async fn an_invalidation_makes_the_next_read_miss_and_show_the_write() {
    // Arrange: the event and its list are cached.
    let env = TestEnv::start(2).await;
    let api = Api::spawn(&env).await;
    let consumers = Stepper::build(&env, &["--group", "cache"]).await;
    let event = api.create_event(None).await;
    let (rsvp, token) = api.rsvp(event, "ada@example.com", "maybe", 0).await;
    env.relay_outbox().await;
    consumers.drain(&env, CACHE).await;
    assert_eq!(counts(&api.get(&format!("/events/{event}")).await), vec![0, 1, 0, 0, 0]);
    assert_eq!(api.get(&format!("/rsvps/{rsvp}")).await["status"], "maybe");
    api.get(&format!("/events/{event}/rsvps")).await;

    // Act: a write, served stale from the cache until its event is consumed.
    api.update(rsvp, &token, json!({ "status": "going", "guests": 2 })).await;
    assert_eq!(
        counts(&api.get(&format!("/events/{event}")).await),
        vec![0, 1, 0, 0, 0],
        "the api reads through its cache"
    );
    env.relay_outbox().await;
    consumers.drain(&env, CACHE).await;

    // Assert
    assert_eq!(counts(&api.get(&format!("/events/{event}")).await), vec![1, 0, 0, 0, 2]);
    assert_eq!(api.get(&format!("/rsvps/{rsvp}")).await["status"], "going");
    assert_eq!(api.attendees(event).await[0]["guests"], 2);
}

/// What the api serves for `event` equals Postgres: counts, the list and each rsvp.
async fn assert_fresh(api: &Api, env: &TestEnv, event: Uuid) {
    let (truth, _) = truth_and_stats(&env.db, event).await;
    assert_eq!(counts(&api.get(&format!("/events/{event}")).await), truth, "stale counts of {event}");
    let rows: Vec<(Uuid, String, i16, i64)> =
        sqlx::query_as("select id, status, guests, version from rsvps where event_id = $1 order by created_at, id")
            .bind(event)
            .fetch_all(&env.db)
            .await
            .unwrap();
    let listed: Vec<(Uuid, String, i16)> = api
        .attendees(event)
        .await
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().parse().unwrap(),
                r["status"].as_str().unwrap().to_owned(),
                r["guests"].as_i64().unwrap() as i16,
            )
        })
        .collect();
    let expected: Vec<(Uuid, String, i16)> = rows.iter().map(|(id, s, g, _)| (*id, s.clone(), *g)).collect();
    assert_eq!(listed, expected, "stale rsvp list of {event}");
    for (id, status, guests, _) in rows {
        let rsvp = api.get(&format!("/rsvps/{id}")).await;
        assert_eq!(
            (rsvp["status"].as_str().unwrap(), rsvp["guests"].as_i64().unwrap()),
            (status.as_str(), i64::from(guests)),
            "stale rsvp {id}"
        );
    }
}

#[tokio::test]
async fn after_redis_is_unreachable_for_10s_under_writes_no_stale_cache_entry_remains() {
    // Arrange: the consumer reaches Redis through a proxy we can cut; the api does not.
    let env = TestEnv::start(2).await;
    let api = Api::spawn(&env).await;
    let proxy = TcpProxy::start(SocketAddr::from(([127, 0, 0, 1], 6379))).await;
    let redis_url = format!("redis://{}", proxy.address());
    let settings = env.settings(&["--group", "cache", "--redis-url", &redis_url, "--redis-timeout", "200ms"]);
    let app = Application::build(&settings, true).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let consumer = tokio::spawn(app.run_until(async move { drop(stopped.await) }));
    let events = [api.create_event(None).await, api.create_event(None).await];
    let mut rsvps = Vec::new();
    for (i, event) in events.iter().enumerate() {
        for j in 0..3 {
            rsvps.push(api.rsvp(*event, &format!("p{i}{j}@example.com"), "maybe", 0).await);
        }
    }
    let relay_stop = tokio_util::sync::CancellationToken::new();
    let relay = {
        let stop = relay_stop.clone();
        let env = &env;
        async move {
            while !stop.is_cancelled() {
                env.relay_outbox().await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let workload = async {
        for event in events {
            wait_until(Duration::from_secs(20), "the consumer serves fresh reads", || async {
                let (truth, _) = truth_and_stats(&env.db, event).await;
                counts(&api.get(&format!("/events/{event}")).await) == truth
            })
            .await;
        }

        // Act: cut Redis off from the consumer for 10 s while reads fill the cache and writes change the rows.
        proxy.cut();
        let cut_at = Instant::now();
        let mut stale_reads = 0;
        let mut round = 0;
        while cut_at.elapsed() < Duration::from_secs(10) {
            for (k, (id, token)) in rsvps.iter().enumerate() {
                let event = events[k / 3];
                let before = api.get(&format!("/events/{event}")).await;
                api.get(&format!("/events/{event}/rsvps")).await;
                api.get(&format!("/rsvps/{id}")).await;
                let guests = (round + k) % 4;
                let status = ["going", "maybe", "declined"][(round + k) % 3];
                api.update(*id, token, json!({ "status": status, "guests": guests })).await;
                if api.get(&format!("/events/{event}")).await == before {
                    stale_reads += 1;
                }
            }
            round += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        proxy.restore();
        assert!(stale_reads > 0, "the cut should have left stale entries to invalidate");

        // Assert: once the consumer has caught up, every read is fresh.
        let written = sqlx::query_scalar::<_, i64>("select count(*) from outbox").fetch_one(&env.db).await.unwrap();
        wait_until(Duration::from_secs(20), "the relay published every write", || async {
            env.records_on_topic().await == written
        })
        .await;
        wait_until(Duration::from_secs(20), "the consumer caught up after the outage", || async {
            env.stored_offsets(CACHE).await == written
        })
        .await;
        for event in events {
            assert_fresh(&api, &env, event).await;
        }
        relay_stop.cancel();
    };
    tokio::join!(relay, workload);
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), consumer).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn the_cache_group_stores_its_offset_with_a_later_batch_and_at_once_when_nothing_new_comes_or_on_release() {
    // Arrange: a minute between stored offsets, one partition holding a cached event's rows.
    let env = TestEnv::start(1).await;
    let api = Api::spawn(&env).await;
    let consumers = Stepper::build(&env, &["--group", "cache", "--cache-commit-interval", "60s"]).await;
    let event = api.create_event(None).await;
    api.rsvp(event, "ada@example.com", "going", 0).await;
    let first = env.relay_outbox().await;
    let ctx = consumers.app.group_context(CACHE, env.kafka.clone()).unwrap();
    let mut worker = PartitionWorker::acquire(ctx, 0).await.unwrap().expect("the partition is free");
    assert_eq!(counts(&api.get(&format!("/events/{event}")).await), vec![1, 0, 0, 0, 0]);
    api.rsvp(event, "grace@example.com", "going", 0).await;
    let second = env.relay_outbox().await;

    // Act / Assert: the batch is applied, its offset waits.
    assert_eq!(worker.step().await.unwrap(), StepOutcome::Processed { records: first + second });
    assert_eq!(
        counts(&api.get(&format!("/events/{event}")).await),
        vec![2, 0, 0, 0, 0],
        "invalidated before the offset is stored"
    );
    assert_eq!(env.stored_offsets(CACHE).await, 0);
    // A fetch that finds nothing new stores it.
    assert_eq!(worker.step().await.unwrap(), StepOutcome::CaughtUp);
    assert_eq!(env.stored_offsets(CACHE).await, (first + second) as i64);
    // So does giving the partition up.
    api.rsvp(event, "alan@example.com", "going", 0).await;
    let third = env.relay_outbox().await;
    assert_eq!(worker.step().await.unwrap(), StepOutcome::Processed { records: third });
    assert_eq!(env.stored_offsets(CACHE).await, (first + second) as i64);
    worker.release().await;
    assert_eq!(env.stored_offsets(CACHE).await, (first + second + third) as i64);
}
