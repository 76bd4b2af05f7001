//! Operator tools: replay, audit and retention.

use std::{collections::BTreeMap, time::Duration};

use chrono::Utc;
use rsvp_contract::testing::Broker;
use rsvp_relay::{
    audit::audit,
    prune::prune_all,
    replay::{replay, Selection},
};
use uuid::Uuid;

use crate::helpers::*;

#[tokio::test]
async fn replay_republishes_exactly_the_selected_rows_with_their_original_ce_id_while_the_relay_runs() {
    // Arrange: a running relay that published 20 rows.
    let broker = Broker::start().await;
    let db = fresh_db().await;
    let settings = settings(&db, &broker.address());
    let relay = RunningRelay::start(settings.clone()).await;
    let written = write_rows(&db.pool, 5, 4).await;
    wait_until_drained(&db.pool, Duration::from_secs(20)).await;
    let originals = read_topic(&broker.address(), "rsvp-events").await;

    // Act: replay ids 6..=13 through the library, with new rows committed meanwhile,
    // and one event's rows through the binary.
    let selected = &written[5..13];
    let selection = Selection::Ids { from: selected[0].id, to: Some(selected[7].id) };
    let mut progress = Vec::new();
    let report = replay(&db.pool, &settings, &selection, None, false, &mut |done, total| progress.push((done, total)))
        .await
        .unwrap();
    let later = write_rows(&db.pool, 1, 3).await;
    let event = &written[0].key;
    let (dry_ok, dry_out) = run_command(&settings, &["replay", "--event", event, "--dry-run"]).await;
    let (cli_ok, cli_out) = run_command(&settings, &["replay", "--event", event, "--rate", "100"]).await;
    wait_until_drained(&db.pool, Duration::from_secs(20)).await;
    relay.stop().await;

    // Assert: exactly the selected rows came again, identical to their first copy.
    assert_eq!((report.selected, report.replayed, report.not_yet_published), (8, 8, 0));
    assert_eq!(progress.last(), Some(&(8, 8)));
    assert!(dry_ok && dry_out.contains("would replay 4 rows"), "{dry_out}");
    assert!(cli_ok && cli_out.contains("replayed 4 of 4"), "{cli_out}");
    let records = read_topic(&broker.address(), "rsvp-events").await;
    let original: BTreeMap<&str, &TopicRecord> = originals.iter().map(|r| (r.ce_id(), r)).collect();
    let mut copies: BTreeMap<String, usize> = BTreeMap::new();
    for record in records.iter().filter(|r| !originals.contains(r)) {
        *copies.entry(record.ce_id().to_owned()).or_default() += 1;
        if let Some(first) = original.get(record.ce_id()) {
            assert_eq!(
                (&record.key, record.partition, &record.headers, &record.value),
                (&first.key, first.partition, &first.headers, &first.value)
            );
        }
    }
    let mut expected: BTreeMap<String, usize> = BTreeMap::new();
    for row in selected.iter().chain(written.iter().filter(|w| &w.key == event)) {
        *expected.entry(row.message_id.to_string()).or_default() += 1;
    }
    for row in &later {
        expected.insert(row.message_id.to_string(), 1); // published once by the live relay
    }
    assert_eq!(copies, expected);
}

#[tokio::test]
async fn audit_passes_after_a_normal_run_and_fails_when_the_broker_lost_the_records() {
    // Arrange
    let mut broker = Broker::start().await;
    let db = fresh_db().await;
    let settings = settings(&db, &broker.address());
    let mut worker = leader_worker(&settings).await;
    write_rows(&db.pool, 4, 5).await;
    drain(&mut worker, 20).await;

    // Act / Assert: clean after a normal run, through the binary and the library.
    let (ok, out) = run_command(&settings, &["audit"]).await;
    assert!(ok && out.contains("20 rows, 20 verified") && out.contains("OK"), "{out}");
    let since = run_command(&settings, &["audit", "--since", "1h"]).await;
    assert!(since.0, "{}", since.1);

    // Act / Assert: the broker restarts empty; every record is missing; exit status 1.
    broker.restart_empty().await;
    let (ok, out) = run_command(&settings, &["audit"]).await;
    assert!(!ok && out.contains("MISMATCH"), "{out}");
    let report = audit(&db.pool, &settings, None, Duration::from_secs(300)).await.unwrap();
    assert_eq!((report.verified, report.missing_records.len()), (0, 20));
}

#[tokio::test]
async fn audit_fails_when_a_receipt_points_at_another_record_or_is_missing() {
    // Arrange
    let broker = Broker::start().await;
    let db = fresh_db().await;
    let settings = settings(&db, &broker.address());
    let mut worker = leader_worker(&settings).await;
    let written = write_rows(&db.pool, 1, 3).await; // one key: one partition
                                                    // A transaction open anywhere in the cluster (a test running beside this one) holds
                                                    // rows back from the relay: wait until all three are eligible, so one step takes them.
    eventually(Duration::from_secs(30), "the three rows to be below the snapshot's xmin", || async {
        let eligible: i64 =
            sqlx::query_scalar("select count(*) from outbox where xid < pg_snapshot_xmin(pg_current_snapshot())")
                .fetch_one(&db.pool)
                .await
                .ok()?;
        (eligible == 3).then_some(())
    })
    .await;
    drain(&mut worker, 3).await;

    // Act: swap the first two rows of their receipt and drop the third from it.
    let ids: Vec<i64> = written.iter().map(|row| row.id).collect();
    let stored: Vec<i64> =
        sqlx::query_scalar("select outbox_ids from relay_receipts").fetch_one(&db.pool).await.unwrap();
    assert_eq!(stored, ids, "one receipt for the one partition's batch");
    sqlx::query("update relay_receipts set outbox_ids = array[$2::bigint, $1::bigint]")
        .bind(ids[0])
        .bind(ids[1])
        .execute(&db.pool)
        .await
        .unwrap();
    let report = audit(&db.pool, &settings, None, Duration::from_secs(300)).await.unwrap();

    // Assert
    assert!(!report.is_clean());
    assert_eq!(report.wrong_records.len(), 2);
    assert_eq!(report.missing_receipts, vec![written[2].id]);
    assert!(report.summary("rsvp-events").contains("MISMATCH"));
}

#[tokio::test]
async fn prune_deletes_only_rows_published_longer_ago_than_the_retention_window() {
    // Arrange: rows published long ago, old rows published now, recent rows, an old
    // unpublished row.
    let broker = Broker::start().await;
    let db = fresh_db().await;
    let settings = settings(&db, &broker.address());
    let mut worker = leader_worker(&settings).await;
    let eight_days_ago = Some(Utc::now() - chrono::Duration::days(8));
    let mut tx = db.pool.begin().await.unwrap();
    for version in 1..=5 {
        append_created_at(&mut tx, Uuid::now_v7(), version, eight_days_ago).await;
    }
    tx.commit().await.unwrap();
    drain(&mut worker, 5).await;
    sqlx::query("update relay_receipts set published_at = now() - interval '8 days'").execute(&db.pool).await.unwrap();
    // Old but published just now: retention counts from the receipt.
    let mut tx = db.pool.begin().await.unwrap();
    let late = append_created_at(&mut tx, Uuid::now_v7(), 1, eight_days_ago).await;
    tx.commit().await.unwrap();
    let recent = write_rows(&db.pool, 2, 1).await;
    drain(&mut worker, 3).await;
    let mut tx = db.pool.begin().await.unwrap();
    let unpublished = append_created_at(&mut tx, Uuid::now_v7(), 1, eight_days_ago).await;
    tx.commit().await.unwrap();

    // Act: small batches, then the command (nothing left for it).
    let deleted = prune_all(&db.pool, "rsvp-events", Duration::from_secs(7 * 86_400), 2).await.unwrap();
    let (ok, out) = run_command(&settings, &["prune"]).await;

    // Assert
    assert_eq!(deleted, 5);
    assert!(ok && out.contains("pruned 0"), "{out}");
    let left: Vec<i64> = sqlx::query_scalar("select id from outbox order by id").fetch_all(&db.pool).await.unwrap();
    assert_eq!(left, vec![late.id, recent[0].id, recent[1].id, unpublished.id]);
    assert_eq!(receipts(&db.pool).await.len(), 3);
    let old_receipts: i64 =
        sqlx::query_scalar("select count(*) from relay_receipts where published_at < now() - interval '7 days'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(old_receipts, 0, "receipts of pruned rows go with them");
}
