//! One active relay: exactly one of two publishes; the other takes over quickly.

use std::time::{Duration, Instant};

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
