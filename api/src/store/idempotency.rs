//! Idempotency records: written inside the writing transaction, after its writes
//! and with their answers, so that a write and its record commit together or not at
//! all.
//!
//! A record is inserted once, whole, by the transaction that holds its key's
//! advisory lock, taken in the same statement without waiting. That statement is
//! [`outbox::append`]: the one that appends the outbox rows of a batch of creates,
//! or, for the records of the other writes, the same with no rows. A key whose lock
//! another transaction holds is in flight: that request has not committed yet, and
//! this transaction leaves it alone instead of waiting on the other's uncommitted
//! row, which would hold up every write of its batch. A key whose lock was free but
//! whose record is there was recorded by a committed request, and the insert fails.
//! Either way the transaction rolls back, and [`probe`] then tells which keys are
//! taken and how (taking over those whose record has expired); the writes run again
//! without those, whose requests wait for the key outside any batch
//! ([`wait_until_key_free`]) or answer from the record.
use std::{collections::HashMap, time::Duration};

use sqlx::PgPool;
use tokio::time::Instant;

use super::{
    outbox::{self, Appended},
    transactions::TxTimeouts,
    Tx,
};

/// A record as a retry reads it.
pub struct Record {
    pub fingerprint: Vec<u8>,
    pub status: Option<i16>,
    pub response: Option<Vec<u8>>,
}

/// A request's record as the database keeps it: derived from the client's key, which
/// the store never sees, and its answer sealed by the caller.
pub struct NewRecord<'a> {
    pub lookup_id: &'a [u8; 32],
    pub fingerprint: &'a [u8; 32],
    /// How long the record answers retries.
    pub ttl: Duration,
    pub status: i16,
    pub sealed: Vec<u8>,
}

/// Why a record could not be inserted: its key was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyTaken {
    /// A live record of a committed request holds it.
    ByCommittedRequest,
    /// A transaction still running holds it: its request has not finished.
    InFlight,
}

/// The advisory lock of a key: the first 64 bits of its lookup id, which is already
/// a hash. (Event locks share the space; a clash costs one write a wait, 2^-64.)
pub(super) fn lock_key(lookup_id: &[u8; 32]) -> i64 {
    let mut prefix = [0u8; 8];
    prefix.copy_from_slice(&lookup_id[..8]);
    i64::from_be_bytes(prefix)
}

/// Inserts `records` in `tx` (their keys distinct), when no statement that appends
/// outbox rows carries them (see [`outbox::append`], also for what it answers).
/// Never waits for another request's key.
pub async fn insert(tx: &mut Tx<'_>, records: &[NewRecord<'_>]) -> Result<Option<Appended>, sqlx::Error> {
    outbox::append(tx, &[], &HashMap::new(), records).await
}

/// What holds each of the keys of `lookup_ids`, asked after a writing transaction
/// that found one of them taken ([`Appended::KeyTaken`]) has rolled back: `None` for
/// a key free now. In one statement, on a connection of its own, which lets each
/// key's lock go when it ends:
/// - a key whose lock another transaction holds is [`KeyTaken::InFlight`];
/// - a free key with a live record is [`KeyTaken::ByCommittedRequest`];
/// - a free key whose record has expired is taken over: the record is deleted here,
///   under the key's lock, and the key is free for the write to run again.
///
/// A key's state can change right after this answers; the run that follows finds
/// that out as the first one did.
#[tracing::instrument(skip_all, fields(keys = lookup_ids.len()), err)]
pub async fn probe(db: &PgPool, lookup_ids: &[&[u8; 32]]) -> Result<Vec<Option<KeyTaken>>, sqlx::Error> {
    let ids: Vec<&[u8]> = lookup_ids.iter().map(|id| &id[..]).collect();
    let locks: Vec<i64> = lookup_ids.iter().map(|id| lock_key(id)).collect();
    let rows = sqlx::query!(
        r#"with probed as materialized (
             select id, n, pg_try_advisory_xact_lock(k) as free
             from unnest($1::bytea[], $2::int8[]) with ordinality as x(id, k, n)
         ), taken_over as (
             delete from idempotency_keys using probed
             where probed.free and idempotency_keys.lookup_id = probed.id and idempotency_keys.expires_at <= now()
         )
         select probed.free as "free!",
                exists (select 1 from idempotency_keys
                        where lookup_id = probed.id and expires_at > now()) as "live!"
         from probed order by n"#,
        &ids as &[&[u8]],
        &locks,
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| match (row.free, row.live) {
            (false, _) => Some(KeyTaken::InFlight),
            (true, true) => Some(KeyTaken::ByCommittedRequest),
            (true, false) => None,
        })
        .collect())
}

/// Waits until no transaction holds the key of `lookup_id` (the request in flight
/// with it has committed or rolled back): `true`, or `false` once the lock timeout
/// of `timeouts` has passed. It asks every few milliseconds whether the lock is free
/// (taking it, and letting it go with the statement) rather than waiting for it on a
/// connection: a burst of such retries must not hold the pool the writes need.
#[tracing::instrument(skip_all, err)]
pub async fn wait_until_key_free(db: &PgPool, timeouts: TxTimeouts, lookup_id: &[u8; 32]) -> Result<bool, sqlx::Error> {
    let give_up = Instant::now() + timeouts.lock;
    loop {
        let free = sqlx::query_scalar!(r#"select pg_try_advisory_xact_lock($1) as "free!""#, lock_key(lookup_id))
            .fetch_one(db)
            .await?;
        if free {
            return Ok(true);
        }
        if Instant::now() >= give_up {
            return Ok(false);
        }
        tokio::time::sleep(KEY_POLL_INTERVAL.min(give_up - Instant::now())).await;
    }
}

/// How often a request waiting for a key asks whether it is free.
const KEY_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// The record of `lookup_id`, expired or not.
#[tracing::instrument(skip_all, err)]
pub async fn find(db: &PgPool, lookup_id: &[u8; 32]) -> Result<Option<Record>, sqlx::Error> {
    sqlx::query_as!(
        Record,
        "select fingerprint, status, response from idempotency_keys where lookup_id = $1",
        &lookup_id[..],
    )
    .fetch_optional(db)
    .await
}

/// Summarizes the records' expiry index over the page ranges added since it last
/// was, the last one too while it fills (inserts keep a summary up); returns how
/// many. The index's `autosummarize` leaves this to autovacuum, which a server may
/// run late or not at all (this one's is off), and [`prune_expired`] reads every
/// page of a range nobody summarized. Takes the table's share update exclusive lock,
/// which writes do not wait for.
#[tracing::instrument(skip(db), err)]
pub async fn summarize_expiry_index(db: &PgPool) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar!(r#"select brin_summarize_new_values('idempotency_keys_expires_at_brin') as "ranges!""#)
        .fetch_one(db)
        .await
}

/// Deletes up to `limit` expired records in `tx`; returns how many. Rows a write is
/// taking over right now are skipped rather than waited for.
///
/// Through the expiry index whatever the planner knows: on a table never analyzed
/// (a server without autovacuum) it estimates a third of the rows expired and scans
/// the whole table for the first `limit`, every pass, while the index reads only the
/// ranges that can hold expired records and those not summarized yet.
#[tracing::instrument(skip(tx), err)]
pub async fn prune_expired(tx: &mut Tx<'_>, limit: i64) -> Result<u64, sqlx::Error> {
    sqlx::query!("set local enable_seqscan = off").execute(&mut **tx).await?;
    let deleted = sqlx::query!(
        "delete from idempotency_keys where lookup_id in (
             select lookup_id from idempotency_keys where expires_at <= now()
             limit $1 for update skip locked)",
        limit,
    )
    .execute(&mut **tx)
    .await?;
    Ok(deleted.rows_affected())
}
