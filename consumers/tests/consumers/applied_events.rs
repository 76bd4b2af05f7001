//! `analytics.applied_events`: a change that follows its rsvp's unbroken run of
//! versions is named by its version, any other is claimed by its ce_id; either way
//! the dedup decision holds under any interleaving of transactions, and pruning
//! keeps the table small without letting a redelivered change count twice.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rsvp_consumers::analytics::{
    self,
    prune::{PruneOutcome, Pruner},
    Applied,
};
use rsvp_contract::{
    runtime::database::MIGRATOR, testing::fresh_database, CloudEvent, EventType, RsvpData, RsvpStatus,
};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::helpers::{metric_value, wait_until};

fn change(event_type: EventType, rsvp: Uuid, event: Uuid, version: i64, status: RsvpStatus) -> CloudEvent {
    let time: DateTime<Utc> = "2030-01-01T10:30:00Z".parse().unwrap();
    let data = RsvpData {
        id: rsvp,
        event_id: event,
        name: "Ada".into(),
        email: "ada@example.com".into(),
        status,
        guests: 1,
        version,
        created_at: time,
        updated_at: time,
        previous_status: None,
    };
    CloudEvent::new(event_type, data, time)
}

/// going, guests going, created, updated, cancelled and all changes of `event`.
async fn stats(db: &PgPool, event: Uuid) -> (i64, i64, i64, i64, i64, i64) {
    sqlx::query_as(
        "select going, guests_going, created_total, updated_total, cancelled_total,
                (select coalesce(sum(changes), 0)::bigint from analytics.rsvps_per_hour h where h.event_id = s.event_id)
         from analytics.event_stats s where event_id = $1",
    )
    .bind(event)
    .fetch_one(db)
    .await
    .unwrap()
}

async fn apply_committed(db: &PgPool, events: &[&CloudEvent]) -> Vec<Applied> {
    let mut tx = db.begin().await.unwrap();
    let outcomes = analytics::apply_batch(&mut tx, events).await.unwrap();
    tx.commit().await.unwrap();
    outcomes
}

async fn prune_pass(pruner: &mut Pruner) -> u64 {
    let mut rows = 0;
    while let PruneOutcome::Pruned { rows: pruned, .. } = pruner.step().await.unwrap() {
        rows += pruned;
    }
    rows
}

async fn applied_rows(db: &PgPool, rsvp: Uuid) -> Vec<Option<i64>> {
    sqlx::query_scalar("select version from analytics.applied_events where rsvp_id = $1 order by version nulls first")
        .bind(rsvp)
        .fetch_all(db)
        .await
        .unwrap()
}

/// Applies `first` in a transaction left open, then `second` in another, waits until the
/// second is blocked on a lock the first holds, commits the first, and returns both
/// outcomes once the second has committed too.
async fn apply_while_the_first_is_open(db: &PgPool, first: &CloudEvent, second: &CloudEvent) -> (Applied, Applied) {
    let mut first_tx = db.begin().await.unwrap();
    let first_outcome = analytics::apply(&mut first_tx, first).await.unwrap();
    let second = {
        let (db, second) = (db.clone(), second.clone());
        tokio::spawn(async move {
            let mut tx = db.begin().await.unwrap();
            let outcome = analytics::apply(&mut tx, &second).await.unwrap();
            tx.commit().await.unwrap();
            outcome
        })
    };
    wait_until(Duration::from_secs(10), "the second apply waits for the first", || async {
        sqlx::query_scalar::<_, bool>(
            "select exists (select 1 from pg_stat_activity
                            where datname = current_database() and wait_event_type = 'Lock')",
        )
        .fetch_one(db)
        .await
        .unwrap()
    })
    .await;
    first_tx.commit().await.unwrap();
    let second_outcome = tokio::time::timeout(Duration::from_secs(10), second).await.unwrap().unwrap();
    (first_outcome, second_outcome)
}

#[tokio::test]
async fn two_transactions_applying_the_first_change_of_an_rsvp_count_it_once() {
    // Arrange: the rsvp has no state row yet, so `for update` has nothing to lock.
    let (db, _) = fresh_database(&MIGRATOR).await;
    let (event, rsvp) = (Uuid::now_v7(), Uuid::now_v7());
    let created = change(EventType::RsvpCreated, rsvp, event, 1, RsvpStatus::Going);

    // Act: a worker applies the creation and has not committed when a second
    // transaction (a redrive of the same change) applies it too.
    let outcomes = apply_while_the_first_is_open(&db, &created, &created).await;

    // Assert
    assert_eq!(outcomes, (Applied::Changed, Applied::Duplicate));
    assert_eq!(stats(&db, event).await, (1, 1, 1, 0, 0, 1));
}

#[tokio::test]
async fn two_transactions_applying_different_first_changes_of_an_rsvp_count_it_once() {
    // Arrange: the rsvp has no state row yet.
    let (db, _) = fresh_database(&MIGRATOR).await;
    let (event, rsvp) = (Uuid::now_v7(), Uuid::now_v7());
    let created = change(EventType::RsvpCreated, rsvp, event, 1, RsvpStatus::Going);
    let updated = change(EventType::RsvpUpdated, rsvp, event, 2, RsvpStatus::Maybe);

    // Act: a worker applies the creation (going) and has not committed when a second
    // transaction (a redrive racing it) applies the next version.
    let outcomes = apply_while_the_first_is_open(&db, &created, &updated).await;

    // Assert: one rsvp, now maybe: nobody going, created once, updated once.
    assert_eq!(outcomes, (Applied::Changed, Applied::Changed));
    assert_eq!(stats(&db, event).await, (0, 0, 1, 1, 0, 2));
    let last_version: i64 = sqlx::query_scalar("select last_version from analytics.rsvp_state where rsvp_id = $1")
        .bind(rsvp)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(last_version, 2);
}

#[tokio::test]
async fn changes_applied_in_version_order_leave_no_claim_rows_and_their_redelivery_counts_once() {
    // Arrange
    let (db, _) = fresh_database(&MIGRATOR).await;
    let (event, a) = (Uuid::now_v7(), Uuid::now_v7());
    let a1 = change(EventType::RsvpCreated, a, event, 1, RsvpStatus::Going);
    let a2 = change(EventType::RsvpUpdated, a, event, 2, RsvpStatus::Maybe);
    let a3 = change(EventType::RsvpUpdated, a, event, 3, RsvpStatus::Going);

    // Act
    let first = apply_committed(&db, &[&a1, &a2]).await;
    let second = apply_committed(&db, &[&a3]).await;
    let after = stats(&db, event).await;
    let redelivered = apply_committed(&db, &[&a1, &a2, &a3]).await;

    // Assert: the versions name the changes; nothing was claimed.
    assert_eq!((first, second), (vec![Applied::Changed; 2], vec![Applied::Changed]));
    assert_eq!(after, (1, 1, 1, 2, 0, 3));
    assert_eq!(applied_rows(&db, a).await, Vec::<Option<i64>>::new());
    assert_eq!(applied_through(&db, &[a]).await, vec![3]);
    assert_eq!(redelivered, vec![Applied::Duplicate; 3]);
    assert_eq!(stats(&db, event).await, after);
}

async fn applied_through(db: &PgPool, rsvps: &[Uuid]) -> Vec<i64> {
    sqlx::query_scalar("select applied_through from analytics.rsvp_state where rsvp_id = any($1) order by rsvp_id")
        .bind(rsvps)
        .fetch_all(db)
        .await
        .unwrap()
}

#[tokio::test]
async fn pruning_removes_exactly_the_rows_that_applied_versions_cover_and_a_pruned_change_redelivered_counts_once() {
    // Arrange: rsvp a applied through v3 in order (no rows); rsvp b has v1 in order
    // and v3 claimed, v2 not yet seen; rsvp c's v2 arrived before its v1 (both
    // claimed); a row from before versions were recorded.
    let metrics = rsvp_contract::runtime::admin::metrics_handle();
    let (db, _) = fresh_database(&MIGRATOR).await;
    let (event, a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let a1 = change(EventType::RsvpCreated, a, event, 1, RsvpStatus::Going);
    let a2 = change(EventType::RsvpUpdated, a, event, 2, RsvpStatus::Maybe);
    let a3 = change(EventType::RsvpCancelled, a, event, 3, RsvpStatus::Cancelled);
    let b1 = change(EventType::RsvpCreated, b, event, 1, RsvpStatus::Going);
    let b2 = change(EventType::RsvpUpdated, b, event, 2, RsvpStatus::Maybe);
    let b3 = change(EventType::RsvpUpdated, b, event, 3, RsvpStatus::Going);
    let c1 = change(EventType::RsvpCreated, c, event, 1, RsvpStatus::Going);
    let c2 = change(EventType::RsvpUpdated, c, event, 2, RsvpStatus::Maybe);
    apply_committed(&db, &[&a1, &a2, &b1, &c2]).await;
    apply_committed(&db, &[&a3, &b3, &c1]).await;
    sqlx::query("insert into analytics.applied_events (ce_id, rsvp_id) values ($1, $2)")
        .bind(Uuid::now_v7())
        .bind(a)
        .execute(&db)
        .await
        .unwrap();
    let before = stats(&db, event).await;

    // Act
    let mut pruner = Pruner::new(db.clone());
    let pruned = prune_pass(&mut pruner).await;

    // Assert: c's two rows are gone; b's v3 waits for v2; the row without a version
    // stays.
    assert_eq!(pruned, 2);
    assert_eq!(applied_rows(&db, a).await, vec![None]);
    assert_eq!(applied_rows(&db, b).await, vec![Some(3)]);
    assert_eq!(applied_rows(&db, c).await, Vec::<Option<i64>>::new());
    assert_eq!(applied_through(&db, &[a, b, c]).await, vec![3, 1, 2]);
    let scraped = metric_value(&metrics.render(), r#"consumer_applied_events_pruned_total{group="analytics-group"}"#);
    assert_eq!(scraped, Some(2.0));

    // Redelivering the applied changes, pruned or never claimed, changes nothing.
    let outcomes = apply_committed(&db, &[&a1, &a2, &a3, &b1, &c1, &c2]).await;
    assert_eq!(outcomes, vec![Applied::Duplicate; 6]);
    assert_eq!(stats(&db, event).await, before);
    // b's missing v2 arrives late: it counts once in the totals, and then b is prunable.
    assert_eq!(apply_committed(&db, &[&b2, &b2]).await, vec![Applied::Stale, Applied::Duplicate]);
    let (going, guests, created, updated, cancelled, changes) = before;
    assert_eq!(stats(&db, event).await, (going, guests, created, updated + 1, cancelled, changes + 1));
    assert_eq!(prune_pass(&mut pruner).await, 2);
    assert_eq!(applied_rows(&db, b).await, Vec::<Option<i64>>::new());
    assert_eq!(applied_through(&db, &[b]).await, vec![3]);
    assert_eq!(apply_committed(&db, &[&b2, &b3]).await, vec![Applied::Duplicate; 2]);
    assert_eq!(stats(&db, event).await, (going, guests, created, updated + 1, cancelled, changes + 1));
}

#[tokio::test]
async fn the_pruning_loop_prunes_every_interval_and_stops_on_shutdown() {
    // Arrange: changes arriving out of version order are the ones claimed.
    let (db, _) = fresh_database(&MIGRATOR).await;
    let (event, a) = (Uuid::now_v7(), Uuid::now_v7());
    let [a1, a2, a3, a4] =
        [1, 2, 3, 4].map(|version| change(EventType::RsvpUpdated, a, event, version, RsvpStatus::Going));
    apply_committed(&db, &[&a2]).await;
    apply_committed(&db, &[&a1]).await;
    assert_eq!(applied_rows(&db, a).await.len(), 2);
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(Pruner::new(db.clone()).run(Duration::from_millis(50), shutdown.clone()));

    // Act: changes claimed while the loop runs are pruned by a later pass.
    wait_until(Duration::from_secs(10), "the first changes are pruned", || async {
        applied_rows(&db, a).await.is_empty()
    })
    .await;
    apply_committed(&db, &[&a4]).await;
    apply_committed(&db, &[&a3]).await;
    wait_until(Duration::from_secs(10), "the later changes are pruned", || async {
        applied_rows(&db, a).await.is_empty()
    })
    .await;
    shutdown.cancel();

    // Assert
    tokio::time::timeout(Duration::from_secs(5), running).await.expect("the loop stops on shutdown").unwrap();
    assert_eq!(applied_through(&db, &[a]).await, vec![4]);
}
