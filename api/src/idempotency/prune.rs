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

/// Deletes one batch of expired records and counts them.
pub async fn step(db: &PgPool) -> Result<ExecutionOutcome, sqlx::Error> {
    let mut tx = db.begin().await?;
    let deleted = prune_expired(&mut tx, BATCH).await?;
    tx.commit().await?;
    counter!(metric_names::IDEMPOTENCY_KEYS_PRUNED).increment(deleted);
    Ok(if deleted == 0 { ExecutionOutcome::Empty } else { ExecutionOutcome::Pruned(deleted) })
}

/// Prunes every `interval` (batch after batch while full ones come back) until
/// `shutdown` resolves. Each pass first summarizes the expiry index over the ranges
/// added since the last (see [`summarize_expiry_index`]), once, not per batch. A
/// summary that fails (a database role that does not own the table may not) is
/// logged and the pass prunes all the same, reading the ranges left unsummarized. A
/// failed step is logged and tried again next interval.
pub async fn run(db: PgPool, interval: Duration, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = ticker.tick() => {}
        }
        let summarized = tokio::select! {
            () = &mut shutdown => return,
            summarized = summarize_expiry_index(&db) => summarized,
        };
        if let Err(error) = summarized {
            tracing::warn!(error = %error, "summarizing the idempotency keys' expiry index failed");
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
