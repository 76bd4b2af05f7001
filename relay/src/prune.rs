//! Retention: deletes published rows older than the window, a small batch at a time.

use std::time::Duration;

use chrono::Utc;
use sqlx::PgPool;

use crate::metrics;

/// Deletes up to `batch` rows that are older than `retention`, behind the cursor and
/// receipted; returns how many. Call until it returns less than `batch`.
#[tracing::instrument(skip_all, fields(topic, batch), err)]
pub async fn prune_step(pool: &PgPool, topic: &str, retention: Duration, batch: u32) -> Result<u64, sqlx::Error> {
    let cutoff = Utc::now() - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
    // Both checks, so that neither a lost receipt nor a cursor that was reset can
    // ever delete a row the broker has not acknowledged. The row's receipts go in the
    // same statement: nothing else deletes them.
    let deleted: i64 = sqlx::query_scalar(
        "with pruned as (
            delete from outbox where id in (
                select o.id
                  from outbox o
                  join relay_cursors c on c.name = $1
                 where o.created_at < $2
                   and (o.xid, o.id) <= (c.xid, c.id)
                   and exists (select 1 from relay_receipts r where r.outbox_id = o.id and r.topic = $1)
                 order by o.created_at
                 limit $3)
            returning id),
         receipts as (delete from relay_receipts r using pruned p where r.outbox_id = p.id)
         select count(*) from pruned",
    )
    .bind(topic)
    .bind(cutoff)
    .bind(i64::from(batch))
    .fetch_one(pool)
    .await?;
    let deleted = u64::try_from(deleted).unwrap_or_default();
    ::metrics::counter!(metrics::PRUNED).increment(deleted);
    Ok(deleted)
}

/// Prunes until nothing is left to prune; returns the total.
pub async fn prune_all(pool: &PgPool, topic: &str, retention: Duration, batch: u32) -> Result<u64, sqlx::Error> {
    let mut total = 0;
    loop {
        let deleted = prune_step(pool, topic, retention, batch).await?;
        total += deleted;
        if deleted < u64::from(batch) {
            return Ok(total);
        }
        // Let the relay's own statements through between batches.
        tokio::task::yield_now().await;
    }
}

/// `rsvp-relay prune`: migrates, prunes everything past retention, prints the count.
pub async fn command(settings: crate::config::Settings) -> anyhow::Result<()> {
    settings.validate()?;
    let pool = crate::startup::connect_pool(&settings).await?;
    crate::startup::MIGRATOR.run(&pool).await?;
    let deleted = prune_all(&pool, &settings.topic, settings.retention, settings.prune_batch).await?;
    println!("pruned {deleted} published outbox rows older than {}", humantime::format_duration(settings.retention));
    Ok(())
}
