//! One active relay: exactly one of two publishes; the other takes over quickly, from
//! a killed leader and from a frozen one, which steps down when it resumes.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use rsvp_contract::testing::Broker;

use crate::helpers::*;

#[tokio::test]
async fn of_two_relays_exactly_one_publishes_and_the_other_takes_over_within_five_seconds_of_a_kill() {
    // Arrange: two real relays with the default leader poll interval.
    let broker = Broker::start().await;
    let db = fresh_db().await;
    let mut settings = settings(&db, &broker.address());
    settings.leader_poll_interval = Duration::from_secs(1);
    let mut relays = [RelayProcess::spawn(&settings, &[]), RelayProcess::spawn(&settings, &[])];
    let leader = eventually(Duration::from_secs(20), "one relay to lead", || async {
        let a = scrape(relays[0].admin_port, "relay_leader").await?;
        let b = scrape(relays[1].admin_port, "relay_leader").await?;
        match (a, b) {
            (1.0, 0.0) => Some(0),
            (0.0, 1.0) => Some(1),
            _ => None,
        }
    })
    .await;
    let standby = 1 - leader;

    // Act 1: rows while both run.
    let mut written = write_rows(&db.pool, 4, 5).await;
    wait_until_drained(&db.pool, Duration::from_secs(20)).await;

    // Assert 1: only the leader published.
    assert_eq!(scrape(relays[leader].admin_port, "relay_published_total").await, Some(20.0));
    assert_eq!(scrape(relays[standby].admin_port, "relay_published_total").await.unwrap_or(0.0), 0.0);
    assert_eq!(scrape(relays[standby].admin_port, "relay_leader").await, Some(0.0));

    // Act 2: kill -9 the leader.
    relays[leader].kill9().await;
    let killed_at = Instant::now();
    eventually(Duration::from_secs(10), "the standby to take over", || async {
        (scrape(relays[standby].admin_port, "relay_leader").await == Some(1.0)).then_some(())
    })
    .await;
    let takeover = killed_at.elapsed();
    written.extend(write_rows(&db.pool, 4, 5).await);
    wait_until_drained(&db.pool, Duration::from_secs(20)).await;

    // Assert 2: within 5 s, and every row once.
    eprintln!("takeover after kill -9 of the leader: {takeover:?}");
    assert!(takeover < Duration::from_secs(5), "takeover took {takeover:?}");
    assert_eq!(scrape(relays[standby].admin_port, "relay_published_total").await, Some(20.0));
    let records = read_topic(&broker.address(), "rsvp-events").await;
    let duplicates = assert_nothing_lost(&records, &written, &receipts(&db.pool).await);
    assert_eq!(duplicates, 0);
}

/// Sends `signal` (`STOP`, `CONT`) to the process, as an operator's `kill` would.
fn signal(child: &tokio::process::Child, signal: &str) {
    let pid = child.id().expect("the process runs").to_string();
    let status = std::process::Command::new("kill").args([&format!("-{signal}"), &pid]).status().expect("run kill");
    assert!(status.success(), "kill -{signal} {pid}");
}

/// Advisory locks granted in the test's database: the leader lock, and nothing else here.
async fn advisory_locks(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar(
        "select count(*) from pg_locks
          where locktype = 'advisory' and granted and database = (select oid from pg_database where datname = current_database())",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Samples the cursor until `stop`; the ids it saw, in order.
fn sample_cursor(pool: sqlx::PgPool, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<i64>> {
    tokio::spawn(async move {
        let mut seen = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            seen.push(cursor_id(&pool).await);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        seen
    })
}

#[tokio::test]
async fn a_frozen_leader_loses_the_lead_within_15s_and_steps_down_when_it_resumes_with_nothing_lost() {
    // Arrange: two real relays with the default role-loss timeout, rows written all along.
    let broker = Broker::start().await;
    let db = fresh_db().await;
    let mut settings = settings(&db, &broker.address());
    settings.leader_poll_interval = Duration::from_secs(1);
    let relays = [RelayProcess::spawn(&settings, &[]), RelayProcess::spawn(&settings, &[])];
    let leader = eventually(Duration::from_secs(20), "one relay to lead", || async {
        let a = scrape(relays[0].admin_port, "relay_leader").await?;
        let b = scrape(relays[1].admin_port, "relay_leader").await?;
        match (a, b) {
            (1.0, 0.0) => Some(0),
            (0.0, 1.0) => Some(1),
            _ => None,
        }
    })
    .await;
    let standby = 1 - leader;
    let writer = steady_writer(db.pool.clone(), 4, Duration::from_millis(20));
    let stop_sampling = Arc::new(AtomicBool::new(false));
    let cursor_samples = sample_cursor(db.pool.clone(), stop_sampling.clone());
    eventually(Duration::from_secs(20), "the leader to publish", || async {
        (scrape(relays[leader].admin_port, "relay_published_total").await? > 0.0).then_some(())
    })
    .await;

    // Act 1: freeze the leader (its process keeps its sockets, so its session stays open).
    signal(&relays[leader].child, "STOP");
    let frozen_at = Instant::now();
    eventually(Duration::from_secs(30), "the standby to publish", || async {
        (scrape(relays[standby].admin_port, "relay_published_total").await? > 0.0).then_some(())
    })
    .await;
    let takeover = frozen_at.elapsed();

    // Act 2: resume it while the standby leads and rows keep coming.
    signal(&relays[leader].child, "CONT");
    eventually(Duration::from_secs(10), "the resumed relay to step down", || async {
        let leading = scrape(relays[leader].admin_port, "relay_leader").await?;
        let lost = scrape(relays[leader].admin_port, "role_lost_total").await?;
        (leading == 0.0 && lost >= 1.0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let written = stop_writer(writer).await;
    wait_until_drained(&db.pool, Duration::from_secs(30)).await;
    stop_sampling.store(true, Ordering::SeqCst);
    let cursor_samples = cursor_samples.await.unwrap();

    // Assert: failover within 15 s; one leader, the standby; the cursor only went
    // forward; every row on the topic (duplicates allowed: the frozen leader may have
    // produced a batch before it found out).
    eprintln!("takeover after SIGSTOP of the leader: {takeover:?}");
    assert!(takeover < Duration::from_secs(15), "takeover took {takeover:?}");
    assert_eq!(scrape(relays[leader].admin_port, "relay_leader").await, Some(0.0));
    assert_eq!(scrape(relays[standby].admin_port, "relay_leader").await, Some(1.0));
    assert_eq!(advisory_locks(&db.pool).await, 1, "exactly one session holds the leader lock");
    assert!(cursor_samples.windows(2).all(|w| w[0] <= w[1]), "the cursor moved backwards: {cursor_samples:?}");
    let records = read_topic(&broker.address(), "rsvp-events").await;
    let mut first_offsets: BTreeMap<&str, (i32, i64)> = BTreeMap::new();
    for record in &records {
        let first = first_offsets.entry(record.ce_id()).or_insert((record.partition, record.offset));
        first.1 = first.1.min(record.offset);
    }
    let mut last_per_key: BTreeMap<&str, i64> = BTreeMap::new();
    for row in &written {
        let (_, first) = *first_offsets
            .get(row.message_id.to_string().as_str())
            .unwrap_or_else(|| panic!("row {} was lost", row.id));
        assert!(last_per_key.get(row.key.as_str()).is_none_or(|o| *o < first), "row {} out of per-key order", row.id);
        last_per_key.insert(&row.key, first);
    }
    eprintln!("rows written: {}, records on the topic: {}", written.len(), records.len());
}
