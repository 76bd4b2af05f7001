//! Two instances share the partitions; the survivor of a SIGKILL or of a SIGSTOP
//! takes them all, a resumed instance gives up what it lost, and a member whose
//! backend pid was reused does not count.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use rsvp_consumers::group::Group;
use sqlx::PgPool;

use crate::helpers::{
    all_groups, metric_value, totals, truth_and_stats, wait_until, Api, ConsumerProcess, TestEnv, ANALYTICS, CACHE,
};

fn owned(group: Group) -> String {
    format!("consumer_owned_partitions{{group=\"{}\"}}", group.name())
}

#[tokio::test]
async fn two_instances_split_the_partitions_and_the_survivor_owns_all_within_5s_applying_nothing_twice() {
    // Arrange: two instances running every group over 4 partitions.
    let env = TestEnv::start(4).await;
    let api = Api::spawn(&env).await;
    let events: Vec<_> = [api.create_event(None).await, api.create_event(None).await].into();
    let mut first = ConsumerProcess::spawn(&env, &[]);
    let second = ConsumerProcess::spawn(&env, &[]);
    for group in all_groups() {
        wait_until(Duration::from_secs(20), "each instance owns half the partitions", || async {
            first.metric(&owned(group)).await == Some(2.0) && second.metric(&owned(group)).await == Some(2.0)
        })
        .await;
    }
    api.mixed_workload(events[0], 12).await;
    env.relay_outbox().await;
    let on_topic = env.records_on_topic().await;
    wait_until(Duration::from_secs(20), "both instances consumed the first writes", || async {
        env.stored_offsets(ANALYTICS).await == on_topic && env.stored_offsets(CACHE).await == on_topic
    })
    .await;

    // Act: SIGKILL one instance while writes keep coming.
    first.kill().await;
    let killed_at = Instant::now();
    let survivor_owns_all = async {
        for group in all_groups() {
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
        env.stored_offsets(ANALYTICS).await == on_topic && env.stored_offsets(CACHE).await == on_topic
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
    // The groups of an instance share their fetches: which group asked the broker
    // for a batch and which was served it depends on which stepped first. So each
    // group got records from its own fetches or from shared ones, and some group of
    // the instance fetched records itself (a shared batch is one of those).
    let count = |series: String| metric_value(&metrics, &series).unwrap_or(0.0);
    let own =
        |group: &str| count(format!("consumer_fetch_duration_seconds_count{{group=\"{group}\",result=\"records\"}}"));
    let shared = |group: &str| count(format!("consumer_shared_fetches_total{{group=\"{group}\"}}"));
    let groups = [ANALYTICS.name(), CACHE.name()];
    for group in groups {
        assert!(own(group) + shared(group) >= 1.0, "no fetch of {group} brought records:\n{metrics}");
    }
    assert!(groups.iter().any(|group| own(group) >= 1.0), "no group fetched records itself:\n{metrics}");
    eprintln!("takeover after SIGKILL: {takeover:?}");
}

/// Sends `signal` (`STOP`, `CONT`) to the process, as an operator's `kill` would.
fn signal(child: &tokio::process::Child, signal: &str) {
    let pid = child.id().expect("the process runs").to_string();
    let status = std::process::Command::new("kill").args([&format!("-{signal}"), &pid]).status().expect("run kill");
    assert!(status.success(), "kill -{signal} {pid}");
}

/// Samples every stored offset until `stop`; the (group, partition, from, to) of any
/// that moved backwards.
fn watch_offsets(db: PgPool, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<(String, i32, i64, i64)>> {
    tokio::spawn(async move {
        let mut last: BTreeMap<(String, i32), i64> = BTreeMap::new();
        let mut backwards = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            let rows: Vec<(String, i32, i64)> =
                sqlx::query_as("select group_name, partition, next_offset from consumer_offsets")
                    .fetch_all(&db)
                    .await
                    .unwrap();
            for (group, partition, offset) in rows {
                if let Some(before) = last.insert((group.clone(), partition), offset).filter(|before| *before > offset)
                {
                    backwards.push((group, partition, before, offset));
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        backwards
    })
}

#[tokio::test]
async fn a_frozen_instance_loses_its_partitions_within_15s_and_commits_nothing_for_them_when_it_resumes() {
    // Arrange: two instances with the default role-loss timeout, every group, 4 partitions.
    let env = TestEnv::start(4).await;
    let api = Api::spawn(&env).await;
    let events: Vec<_> =
        [api.create_event(None).await, api.create_event(None).await, api.create_event(None).await].into();
    let first = ConsumerProcess::spawn(&env, &[]);
    let second = ConsumerProcess::spawn(&env, &[]);
    for group in all_groups() {
        wait_until(Duration::from_secs(20), "each instance owns half the partitions", || async {
            first.metric(&owned(group)).await == Some(2.0) && second.metric(&owned(group)).await == Some(2.0)
        })
        .await;
    }
    api.mixed_workload(events[0], 12).await;
    env.relay_outbox().await;
    let on_topic = env.records_on_topic().await;
    wait_until(Duration::from_secs(20), "both instances consumed the first writes", || async {
        env.stored_offsets(ANALYTICS).await == on_topic && env.stored_offsets(CACHE).await == on_topic
    })
    .await;
    let stop_watching = Arc::new(AtomicBool::new(false));
    let backwards = watch_offsets(env.db.clone(), stop_watching.clone());

    // Act 1: freeze one instance (its sockets, so its sessions and locks, stay open)
    // while writes keep coming.
    signal(&first.child, "STOP");
    let frozen_at = Instant::now();
    let survivor_owns_all = async {
        for group in all_groups() {
            wait_until(Duration::from_secs(30), "the survivor owns every partition", || async {
                second.metric(&owned(group)).await == Some(4.0)
            })
            .await;
        }
        frozen_at.elapsed()
    };
    let writes = async {
        api.mixed_workload(events[1], 12).await;
        env.relay_outbox().await;
    };
    let (takeover, ()) = tokio::join!(survivor_owns_all, writes);
    let on_topic = env.records_on_topic().await;
    wait_until(Duration::from_secs(20), "the survivor consumed everything", || async {
        env.stored_offsets(ANALYTICS).await == on_topic && env.stored_offsets(CACHE).await == on_topic
    })
    .await;

    // Act 2: resume it; it finds its sessions gone, gives its partitions up, joins
    // again, and the two share the partitions once more.
    signal(&first.child, "CONT");
    wait_until(Duration::from_secs(10), "the resumed instance noticed it lost its partitions", || async {
        first.metric("role_lost_total{role=\"partition_owner\"}").await.is_some_and(|lost| lost >= 1.0)
    })
    .await;
    for group in all_groups() {
        wait_until(Duration::from_secs(30), "the instances share the partitions again", || async {
            first.metric(&owned(group)).await == Some(2.0) && second.metric(&owned(group)).await == Some(2.0)
        })
        .await;
    }
    api.mixed_workload(events[2], 12).await;
    env.relay_outbox().await;
    let on_topic = env.records_on_topic().await;
    wait_until(Duration::from_secs(20), "both instances consumed the last writes", || async {
        env.stored_offsets(ANALYTICS).await == on_topic && env.stored_offsets(CACHE).await == on_topic
    })
    .await;
    stop_watching.store(true, Ordering::SeqCst);
    let backwards = backwards.await.unwrap();

    // Assert: failover within 15 s; no offset ever moved backwards; every partition
    // of every group locked by exactly one session; every change applied once.
    eprintln!("takeover after SIGSTOP of a partition owner: {takeover:?}");
    assert!(takeover < Duration::from_secs(15), "takeover took {takeover:?}");
    assert!(backwards.is_empty(), "offsets moved backwards: {backwards:?}");
    let locks: i64 = sqlx::query_scalar(
        "select count(*) from pg_locks
          where locktype = 'advisory' and granted and database = (select oid from pg_database where datname = current_database())",
    )
    .fetch_one(&env.db)
    .await
    .unwrap();
    assert_eq!(locks, 4 * all_groups().len() as i64, "4 partitions of every group, each locked once");
    for &event in &events {
        let (truth, stats) = truth_and_stats(&env.db, event).await;
        assert_eq!(stats, truth, "stats of {event}");
        let (outbox, applied) = totals(&env.db, event).await;
        assert_eq!(applied, outbox, "every change of {event} applied exactly once");
    }
}

#[tokio::test]
async fn a_phantom_member_whose_pid_a_later_backend_reuses_leaves_no_partition_unowned() {
    // Arrange: a member row naming a live backend's pid, but another backend (an
    // earlier start time): what a dead member's row looks like once its pid is reused.
    let env = TestEnv::start(4).await;
    let mut holder = env.db.acquire().await.unwrap();
    let pid: i32 = sqlx::query_scalar("select pg_backend_pid()").fetch_one(&mut *holder).await.unwrap();
    for group in all_groups() {
        sqlx::query(
            "insert into consumer_members (group_name, instance_id, backend_pid, backend_start)
             values ($1, $2, $3, now() - interval '1 day')",
        )
        .bind(group.name())
        .bind(uuid::Uuid::new_v4())
        .bind(pid)
        .execute(&env.db)
        .await
        .unwrap();
    }

    // Act: one instance starts.
    let only = ConsumerProcess::spawn(&env, &[]);

    // Assert: it counts itself alone and owns every partition of every group.
    for group in all_groups() {
        wait_until(Duration::from_secs(20), "the only instance owns every partition", || async {
            only.metric(&owned(group)).await == Some(4.0)
        })
        .await;
    }
    let members: i64 = sqlx::query_scalar("select count(*) from consumer_members").fetch_one(&env.db).await.unwrap();
    assert_eq!(members, all_groups().len() as i64, "one member per group: the phantoms are gone");
    drop(holder);
}
