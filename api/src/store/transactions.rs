//! Beginning the api's write transactions with bounded waits, and finding out after a
//! failed `COMMIT` whether the transaction committed after all.

use std::time::Duration;

use sqlx::PgPool;
use tokio::time::Instant;

use super::Tx;

/// How long one write transaction may wait: set with `set local`, so that they bind
/// only the api's own transactions and never a pooled connection's later use.
#[derive(Debug, Clone, Copy)]
pub struct TxTimeouts {
    /// Longest wait for one lock (a row, or an event's advisory lock).
    pub lock: Duration,
    /// Longest run of one statement, `COMMIT` included.
    pub statement: Duration,
}

impl TxTimeouts {
    /// `BEGIN` with both timeouts, in one round trip.
    fn begin_statement(&self) -> String {
        format!(
            "begin; set local lock_timeout = '{}ms'; set local statement_timeout = '{}ms'",
            self.lock.as_millis().max(1),
            self.statement.as_millis().max(1)
        )
    }
}

/// Starts a transaction with `timeouts`.
#[tracing::instrument(skip_all, err)]
pub async fn begin(db: &PgPool, timeouts: TxTimeouts) -> Result<Tx<'static>, sqlx::Error> {
    db.begin_with(timeouts.begin_statement()).await
}

/// The transaction's id, when it has one: a transaction that wrote nothing has none,
/// and then whether it committed makes no difference.
#[tracing::instrument(skip_all, err)]
pub async fn current_xid(tx: &mut Tx<'_>) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar!("select pg_current_xact_id_if_assigned()::text").fetch_one(&mut **tx).await
}

/// What became of a transaction whose `COMMIT` failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    Committed,
    Aborted,
    /// The database could not say before the deadline.
    Unknown,
}

/// Asks `pg_xact_status` on another connection until the transaction `xid` is no
/// longer in progress or `deadline` passes. A `COMMIT` whose connection broke may
/// have committed (the server committed, its answer was lost) or may still be
/// committing (waiting on a deferred trigger): only the server knows.
#[tracing::instrument(skip(db), ret)]
pub async fn settle(db: &PgPool, xid: &str, deadline: Instant) -> Settled {
    loop {
        let status = tokio::time::timeout_at(
            deadline,
            sqlx::query_scalar!("select pg_xact_status($1::text::xid8)", xid).fetch_one(db),
        )
        .await;
        match status {
            Err(_) => return Settled::Unknown,
            Ok(Ok(Some(status))) if status == "committed" => return Settled::Committed,
            Ok(Ok(Some(status))) if status == "aborted" => return Settled::Aborted,
            // Too old for the commit log to tell (not after a commit just attempted).
            Ok(Ok(None)) => return Settled::Unknown,
            Ok(Ok(Some(_in_progress))) => {}
            Ok(Err(error)) => tracing::warn!(%error, "asking whether a transaction committed failed"),
        }
        let pause = Instant::now() + Duration::from_millis(20);
        if pause >= deadline {
            return Settled::Unknown;
        }
        tokio::time::sleep_until(pause).await;
    }
}
