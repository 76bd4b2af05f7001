//! An idle instance: its partitions back off to a few fetches a second, and a record
//! arriving after a quiet spell is still applied by every group.

use std::time::{Duration, Instant};

use rsvp_contract::testing::counting::{self, FETCH};

use crate::helpers::{all_groups, wait_until, Api, ConsumerProcess, TestEnv};

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
    let written_at = Instant::now();
    api.create_event(None).await;
    env.relay_outbox().await;
    let on_topic = env.records_on_topic().await;
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
