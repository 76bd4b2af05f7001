//! Idempotency records: written inside the writing transaction, after its writes
//! and with their answers, so that a write and its record commit together or not at
//! all.
//!
//! A record is inserted once, whole, by the transaction that holds its key's
//! advisory lock, taken in the same statement without waiting. A key whose lock
//! another transaction holds is in flight: that request has not committed yet, and
//! this transaction leaves it alone instead of waiting on the other's uncommitted
//! row, which would hold up every write of its batch. A key whose lock was free but
//! whose live record is there is held by a committed request. Either way the
//! transaction rolls back and runs again without that write; its request waits for
//! the key outside any batch ([`wait_until_key_free`]) or answers from the record.

use std::time::Duration;

use metrics::counter;
use sqlx::PgPool;

use tokio::time::Instant;

use super::{transactions::TxTimeouts, Tx};
use crate::metric_names;

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
fn lock_key(lookup_id: &[u8; 32]) -> i64 {
    let mut prefix = [0u8; 8];
    prefix.copy_from_slice(&lookup_id[..8]);
    i64::from_be_bytes(prefix)
}

/// What [`insert`] did.
#[derive(Debug, Default)]
pub struct Inserted {
    /// The position in the records of each that could not be inserted, with what
    /// holds its key.
    pub taken: Vec<(usize, KeyTaken)>,
    /// The transaction's xid (`pg_current_xact_id`) when the statement ran, so that
    /// the caller need not ask for it before `COMMIT` in another round trip.
    pub xid: Option<String>,
}

/// Inserts `records` in `tx` (their keys distinct). An expired record is taken over.
/// Never waits for another request's key.
#[tracing::instrument(skip_all, fields(records = records.len()), err)]
pub async fn insert(tx: &mut Tx<'_>, records: &[NewRecord<'_>]) -> Result<Inserted, sqlx::Error> {
    if records.is_empty() {
        return Ok(Inserted::default());
    }
    let ids: Vec<&[u8]> = records.iter().map(|r| &r.lookup_id[..]).collect();
    let locks: Vec<i64> = records.iter().map(|r| lock_key(r.lookup_id)).collect();
    let fingerprints: Vec<&[u8]> = records.iter().map(|r| &r.fingerprint[..]).collect();
    let ttls: Vec<f64> = records.iter().map(|r| r.ttl.as_secs_f64()).collect();
    let statuses: Vec<i16> = records.iter().map(|r| r.status).collect();
    let sealed: Vec<&[u8]> = records.iter().map(|r| &r.sealed[..]).collect();
    // `claimed` is materialized: each lock is tried once, and only the keys this
    // transaction holds are inserted.
    let outcomes = sqlx::query!(
        r#"with claimed as materialized (
             select id, f, s, st, r, n, pg_try_advisory_xact_lock(k) as locked
             from unnest($1::bytea[], $2::int8[], $3::bytea[], $4::float8[], $5::int2[], $6::bytea[])
                  with ordinality as x(id, k, f, s, st, r, n)
         ), inserted as (
             insert into idempotency_keys (lookup_id, fingerprint, expires_at, status, response)
             select id, f, now() + make_interval(secs => s), st, r from claimed where locked
             on conflict (lookup_id) do update
                set fingerprint = excluded.fingerprint, expires_at = excluded.expires_at,
                    status = excluded.status, response = excluded.response, created_at = now()
                where idempotency_keys.expires_at <= now()
             returning lookup_id
         )
         select claimed.n as "position!", claimed.locked as "locked!", inserted.lookup_id is not null as "inserted!",
                pg_current_xact_id()::text as "xid!"
         from claimed left join inserted on inserted.lookup_id = claimed.id"#,
        &ids as &[&[u8]],
        &locks,
        &fingerprints as &[&[u8]],
        &ttls,
        &statuses,
        &sealed as &[&[u8]],
    )
    .fetch_all(&mut **tx)
    .await?;
    // The insert gives the transaction an xid if nothing before it did.
    let xid = outcomes.first().map(|outcome| outcome.xid.clone());
    let mut taken: Vec<(usize, KeyTaken)> = outcomes
        .into_iter()
        .filter(|outcome| !outcome.inserted)
        .map(|outcome| {
            // `with ordinality` counts from 1.
            let position = usize::try_from(outcome.position - 1).unwrap_or(usize::MAX);
            (position, if outcome.locked { KeyTaken::ByCommittedRequest } else { KeyTaken::InFlight })
        })
        .collect();
    taken.sort_unstable_by_key(|(position, _)| *position);
    // A transaction that finds a key taken rolls back, its records with it.
    if taken.is_empty() {
        counter!(metric_names::IDEMPOTENT_REQUESTS, "outcome" => "recorded").increment(records.len() as u64);
    }
    Ok(Inserted { taken, xid })
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

/// Deletes up to `limit` expired records; returns how many. Rows a write is taking
/// over right now are skipped rather than waited for.
#[tracing::instrument(skip(db), err)]
pub async fn prune_expired(db: &PgPool, limit: i64) -> Result<u64, sqlx::Error> {
    let deleted = sqlx::query!(
        "delete from idempotency_keys where lookup_id in (
             select lookup_id from idempotency_keys where expires_at <= now()
             limit $1 for update skip locked)",
        limit,
    )
    .execute(db)
    .await?;
    Ok(deleted.rows_affected())
}
