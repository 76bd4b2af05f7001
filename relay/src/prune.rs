//! Retention: deletes rows published longer ago than the window, a small batch at a time.

use std::time::Duration;

use chrono::Utc;
use sqlx::PgPool;

use crate::metric_names;

/// Deletes the receipts published more than `retention` ago whose rows are all
/// behind the cursor, oldest first, about `batch` rows' worth (at least one
/// receipt), with their rows; returns how many rows. Call until it returns `None`.
#[tracing::instrument(skip_all, fields(topic, batch), err)]
pub async fn prune_step(
    pool: &PgPool,
    topic: &str,
    retention: Duration,
    batch: u32,
) -> Result<Option<u64>, sqlx::Error> {
    let cutoff = Utc::now() - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
    // Rows go only with a receipt and only behind the cursor, so that neither a lost
    // receipt nor a cursor that was reset can ever delete a row the broker has not
    // acknowledged. A receipt's rows are of one generation; one below the cursor's
    // since_id is of an earlier generation, all of which is behind the cursor (its
    // xids are another cluster's and do not compare with the cursor's).
    let pruned = sqlx::query!(
        r#"with oldest as (
            select r.id,
                   sum(cardinality(r.outbox_ids)) over (order by r.published_at, r.id)
                     - cardinality(r.outbox_ids) as rows_before
              from relay_receipts r
              join relay_cursors c on c.name = r.topic
             where r.topic = $1 and r.published_at < $2
               and (r.last_id < c.since_id or (r.last_xid, r.last_id) <= (c.xid, c.id))
             order by r.published_at, r.id
             limit $3),
         receipts as (
            delete from relay_receipts r using oldest k where r.id = k.id and k.rows_before < $3
            returning r.outbox_ids),
         pruned as (
            delete from outbox o using (select unnest(outbox_ids) as id from receipts) p where o.id = p.id
            returning o.id)
         select (select count(*) from receipts) as "receipts!", (select count(*) from pruned) as "rows!""#,
        topic,
        cutoff,
        i64::from(batch.max(1)),
    )
    .fetch_one(pool)
    .await?;
    let rows = u64::try_from(pruned.rows).unwrap_or_default();
    metrics::counter!(metric_names::PRUNED).increment(rows);
    Ok((pruned.receipts > 0).then_some(rows))
}

/// Prunes until nothing is left to prune; returns the total.
pub async fn prune_all(pool: &PgPool, topic: &str, retention: Duration, batch: u32) -> Result<u64, sqlx::Error> {
    let mut total = 0;
    loop {
        let Some(deleted) = prune_step(pool, topic, retention, batch).await? else { return Ok(total) };
        total += deleted;
        // Let the relay's own statements through between batches.
        tokio::task::yield_now().await;
    }
}

/// `rsvp-relay prune`: migrates, prunes everything past retention, prints the count.
pub async fn command(settings: crate::config::Settings) -> anyhow::Result<()> {
    settings.validate()?;
    let pool = crate::pool::connect(&settings).await?;
    rsvp_contract::runtime::database::migrate(&pool, "DATABASE_URL").await?;
    let deleted = prune_all(&pool, &settings.kafka.topic, settings.retention, settings.prune_batch).await?;
    println!("pruned {deleted} outbox rows published more than {} ago", humantime::format_duration(settings.retention));
    Ok(())
}
