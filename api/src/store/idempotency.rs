//! Idempotency records: written inside the writing transaction, after its writes
//! and with their answers, so that a write and its record commit together or not at
//! all.
//!
//! A record is inserted once, whole: a second transaction inserting the same key
//! waits on the first one's uncommitted row, and finds it taken once the first
//! commits (or inserts it, should the first roll back). A transaction that finds a
//! key taken rolls back and runs again without that write, whose request then
//! answers from the record. So concurrent requests with one key write once, and the
//! later ones wait for the first. Records are inserted in lookup-id order, after the
//! transaction's event locks and writes: two transactions never wait for each
//! other's keys in a cycle.

use std::{collections::HashSet, time::Duration};

use metrics::counter;
use sqlx::PgPool;

use super::Tx;
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

/// Inserts `records` in `tx` (their keys distinct); returns the positions in
/// `records` of those it could not insert, because a live record of a committed
/// request holds their key. An expired record is taken over.
#[tracing::instrument(skip_all, fields(records = records.len()), err)]
pub async fn insert(tx: &mut Tx<'_>, records: &[NewRecord<'_>]) -> Result<Vec<usize>, sqlx::Error> {
    if records.is_empty() {
        return Ok(Vec::new());
    }
    let mut ordered: Vec<&NewRecord<'_>> = records.iter().collect();
    ordered.sort_unstable_by_key(|r| r.lookup_id);
    let ids: Vec<&[u8]> = ordered.iter().map(|r| &r.lookup_id[..]).collect();
    let fingerprints: Vec<&[u8]> = ordered.iter().map(|r| &r.fingerprint[..]).collect();
    let ttls: Vec<f64> = ordered.iter().map(|r| r.ttl.as_secs_f64()).collect();
    let statuses: Vec<i16> = ordered.iter().map(|r| r.status).collect();
    let sealed: Vec<&[u8]> = ordered.iter().map(|r| &r.sealed[..]).collect();
    let inserted: Vec<Vec<u8>> = sqlx::query_scalar!(
        "insert into idempotency_keys (lookup_id, fingerprint, expires_at, status, response)
         select id, f, now() + make_interval(secs => s), st, r
         from unnest($1::bytea[], $2::bytea[], $3::float8[], $4::int2[], $5::bytea[])
              with ordinality as x(id, f, s, st, r, n)
         order by n
         on conflict (lookup_id) do update
            set fingerprint = excluded.fingerprint, expires_at = excluded.expires_at,
                status = excluded.status, response = excluded.response, created_at = now()
            where idempotency_keys.expires_at <= now()
         returning lookup_id",
        &ids as &[&[u8]],
        &fingerprints as &[&[u8]],
        &ttls,
        &statuses,
        &sealed as &[&[u8]],
    )
    .fetch_all(&mut **tx)
    .await?;
    let inserted: HashSet<Vec<u8>> = inserted.into_iter().collect();
    let held: Vec<usize> = records
        .iter()
        .enumerate()
        .filter(|(_, record)| !inserted.contains(&record.lookup_id[..]))
        .map(|(position, _)| position)
        .collect();
    // A transaction that finds a key held rolls back, its records with it.
    if held.is_empty() {
        counter!(metric_names::IDEMPOTENT_REQUESTS, "outcome" => "recorded").increment(records.len() as u64);
    }
    Ok(held)
}

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
