//! Deleting expired idempotency records, a bounded batch at a time. Expired records
//! already answer no retry (a new request takes its key over); pruning only keeps the
//! table from growing.

use std::{future::Future, time::Duration};

use metrics::counter;
use sqlx::PgPool;

use crate::metric_names;
use crate::store::idempotency::{prune_expired, summarize_expiry_index};

/// Most records one step deletes: one short transaction each.
pub const BATCH: i64 = 10_000;

/// What one step did.
#[derive(Debug, PartialEq, Eq)]
pub enum ExecutionOutcome {
    /// Deleted this many; there may be more.
    Pruned(u64),
    /// Nothing expired is left.
    Empty,
}

/// Deletes one batch of expired records and counts them, after summarizing the
/// expiry index over the ranges added since the last step (see
/// [`summarize_expiry_index`]). A summary that fails (a database role that does not
/// own the table may not) is logged: the batch is deleted all the same, reading the
/// ranges left unsummarized.
pub async fn step(db: &PgPool) -> Result<ExecutionOutcome, sqlx::Error> {
    if let Err(error) = summarize_expiry_index(db).await {
        tracing::warn!(error = %error, "summarizing the idempotency keys' expiry index failed");
    }
    let mut tx = db.begin().await?;
    let deleted = prune_expired(&mut tx, BATCH).await?;
    tx.commit().await?;
    counter!(metric_names::IDEMPOTENCY_KEYS_PRUNED).increment(deleted);
    Ok(if deleted == 0 { ExecutionOutcome::Empty } else { ExecutionOutcome::Pruned(deleted) })
}

/// Prunes every `interval` (batch after batch while full ones come back) until
/// `shutdown` resolves. A failed step is logged and tried again next interval.
pub async fn run(db: PgPool, interval: Duration, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = ticker.tick() => {}
        }
        loop {
            let outcome = tokio::select! {
                () = &mut shutdown => return,
                outcome = step(&db) => outcome,
            };
            match outcome {
                Ok(ExecutionOutcome::Pruned(deleted)) if deleted >= BATCH as u64 => continue,
                Ok(_) => break,
                Err(error) => {
                    tracing::warn!(error = %error, "pruning expired idempotency keys failed");
                    break;
                }
            }
        }
    }
}
