//! An idle instance: its partitions back off to a few fetches a second, a record
//! arriving after a quiet spell is still applied by every group, and the relay's
//! wake-up brings it at once.

use std::time::{Duration, Instant};

use rsvp_consumers::cache;
use rsvp_contract::{
    published,
    testing::{
        counting::{self, FETCH},
        Broker,
    },
};

use crate::helpers::{all_groups, wait_until, Api, ConsumerProcess, TestEnv, TOPIC};

#[tokio::test]
async fn an_idle_instance_fetches_each_partition_about_twice_a_second_and_still_applies_a_new_record() {
    // Arrange: the real binary, every group over 2 partitions (2 workers a group),
    // every Kafka request counted; nothing to read.
    let (broker, counter) = counting::start_broker().await;
    let env = TestEnv::start_with(broker, 2).await;
    let api = Api::spawn(&env).await;
    let brokers = counter.address();
    let consumers = ConsumerProcess::spawn(&env, &["--kafka-brokers", &brokers]);
    let groups = all_groups();
    let workers = 2 * groups.len() as u64;
    for &group in &groups {
        let owned = format!("consumer_owned_partitions{{group=\"{}\"}}", group.name());
        wait_until(Duration::from_secs(20), "the instance owns both partitions", || async {
            consumers.metric(&owned).await == Some(2.0)
        })
        .await;
    }
    // Every worker's pause doubles from its poll interval to IDLE_POLL_MAX within a second.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Act: 4 s of nothing.
    let requests = counter.requests();
    let before = requests.of(FETCH);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let fetches = requests.of(FETCH) - before;

    // Assert: about 2 fetches a second per worker at the default 500 ms (3 allowed);
    // polling every 10 ms or so would be hundreds.
    assert!(fetches <= workers * 4 * 3, "{fetches} fetches by {workers} workers in 4 idle seconds");
    let event = api.create_event(None).await;
    let written_at = Instant::now();
    api.rsvp(event, "ada@example.com", "going", 0).await;
    assert_eq!(env.relay_outbox().await, 1, "the rsvp's outbox row");
    let on_topic = env.records_on_topic().await;
    assert_eq!(on_topic, 1);
    wait_until(Duration::from_secs(10), "every group applied the new record", || async {
        for &group in &groups {
            if env.stored_offsets(group).await != on_topic {
                return false;
            }
        }
        true
    })
    .await;
    eprintln!("idle instance: {fetches} fetches in 4 s; a new record applied after {:?}", written_at.elapsed());
}

#[tokio::test]
async fn the_relays_wake_up_brings_a_record_to_an_idle_partition_long_before_its_next_poll() {
    // Arrange: the cache group alone, polling every 100 ms and doubling the pause after
    // each fetch that finds nothing, up to 60 s. After 13 idle seconds each worker has
    // fetched at about 0.1, 0.3, 0.7, 1.5, 3.1, 6.3 and 12.7 s and waits until about
    // 25.5 s, so that nothing but the wake-up can bring a record sooner.
    let env = TestEnv::start_with(Broker::start().await, 2).await;
    let api = Api::spawn(&env).await;
    let consumers =
        ConsumerProcess::spawn(&env, &["--group", "cache", "--cache-poll-interval", "100ms", "--idle-poll-max", "60s"]);
    let owned = format!("consumer_owned_partitions{{group=\"{}\"}}", cache::GROUP.name());
    wait_until(Duration::from_secs(20), "the instance owns both partitions", || async {
        consumers.metric(&owned).await == Some(2.0)
    })
    .await;
    let event = api.create_event(None).await;
    tokio::time::sleep(Duration::from_secs(13)).await;

    // Act: a record reaches the topic, and the relay's notification says where.
    api.rsvp(event, "ada@example.com", "going", 0).await;
    assert_eq!(env.relay_outbox().await, 1);
    let published_at = Instant::now();
    sqlx::query("select pg_notify($1, $2)")
        .bind(published::CHANNEL)
        .bind(format!("{TOPIC} 0,1"))
        .execute(&env.db)
        .await
        .unwrap();

    // Assert: applied within seconds, not at the next poll about 12 s away.
    let applied = format!("consumer_processed_total{{group=\"{}\",result=\"applied\"}}", cache::GROUP.name());
    wait_until(Duration::from_secs(5), "the cache group applied the record", || async {
        consumers.metric(&applied).await == Some(1.0)
    })
    .await;
    eprintln!("woken idle partition: the record applied {:?} after the notification", published_at.elapsed());
}
