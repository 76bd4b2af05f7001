//! Idempotency records: claimed and filled in inside the writing transaction, so that
//! a write and its record commit together or not at all.
//!
//! A claim is an insert of the record's primary key before the write: a second
//! transaction claiming the same key waits on the first one's uncommitted row, and
//! finds it taken once the first commits (or claims it, should the first roll back).
//! So concurrent requests with one key write once, and the later ones wait for the
//! first. Claims are taken in lookup-id order, after the transaction's event locks:
//! two transactions never wait for each other's claims in a cycle.

use std::collections::HashSet;

use metrics::counter;
use sqlx::PgPool;

use super::Tx;
use crate::idempotency::{Idempotency, StoredResponse};
use crate::metric_names;

/// A record as a retry reads it.
#[derive(sqlx::FromRow)]
pub struct Record {
    pub fingerprint: Vec<u8>,
    pub status: Option<i16>,
    pub response: Option<Vec<u8>>,
}

/// Claims the keys of `requests` (`None`: a write sent without a key) in `tx`; for
/// each request, whether this transaction now holds its key. A key held by a live
/// record of a committed request is not claimed; an expired record is taken over. A
/// key sent twice in one call is claimed by its first request only.
#[tracing::instrument(skip_all, err)]
pub async fn claim(
    tx: &mut Tx<'_>,
    requests: &[Option<&Idempotency>],
) -> Result<Vec<bool>, sqlx::Error> {
    let mut seen = HashSet::new();
    let mut firsts: Vec<&Idempotency> = requests
        .iter()
        .flatten()
        .copied()
        .filter(|i| seen.insert(i.lookup_id))
        .collect();
    if firsts.is_empty() {
        return Ok(vec![false; requests.len()]);
    }
    firsts.sort_unstable_by_key(|i| i.lookup_id);
    let ids: Vec<&[u8]> = firsts.iter().map(|i| &i.lookup_id[..]).collect();
    let fingerprints: Vec<&[u8]> = firsts.iter().map(|i| &i.fingerprint[..]).collect();
    let ttls: Vec<f64> = firsts.iter().map(|i| i.ttl.as_secs_f64()).collect();
    // The conflict action locks the live rows it leaves alone too, in the same order.
    let claimed: Vec<Vec<u8>> = sqlx::query_scalar(
        "insert into idempotency_keys (lookup_id, fingerprint, expires_at)
         select id, f, now() + make_interval(secs => s)
         from unnest($1::bytea[], $2::bytea[], $3::float8[]) with ordinality as r(id, f, s, n)
         order by n
         on conflict (lookup_id) do update
            set fingerprint = excluded.fingerprint, expires_at = excluded.expires_at,
                status = null, response = null, created_at = now()
            where idempotency_keys.expires_at <= now()
         returning lookup_id",
    )
    .bind(ids)
    .bind(fingerprints)
    .bind(ttls)
    .fetch_all(&mut **tx)
    .await?;
    let mut claimed: HashSet<Vec<u8>> = claimed.into_iter().collect();
    Ok(requests
        .iter()
        .map(|request| request.is_some_and(|i| claimed.remove(&i.lookup_id[..])))
        .collect())
}

/// Fills in the records this transaction claimed with their responses, sealed.
#[tracing::instrument(skip_all, fields(records = responses.len()), err)]
pub async fn record(
    tx: &mut Tx<'_>,
    responses: &[(&Idempotency, StoredResponse)],
) -> Result<(), anyhow::Error> {
    if responses.is_empty() {
        return Ok(());
    }
    let mut sealed = Vec::with_capacity(responses.len());
    for (idempotency, response) in responses {
        sealed.push(idempotency.seal(response)?);
    }
    let ids: Vec<&[u8]> = responses.iter().map(|(i, _)| &i.lookup_id[..]).collect();
    let statuses: Vec<i16> = responses.iter().map(|(_, r)| r.status as i16).collect();
    sqlx::query(
        "update idempotency_keys k set status = r.status, response = r.sealed
         from unnest($1::bytea[], $2::int2[], $3::bytea[]) as r(id, status, sealed)
         where k.lookup_id = r.id",
    )
    .bind(ids)
    .bind(statuses)
    .bind(sealed)
    .execute(&mut **tx)
    .await?;
    counter!(metric_names::IDEMPOTENT_REQUESTS, "outcome" => "recorded")
        .increment(responses.len() as u64);
    Ok(())
}

/// The record of `lookup_id`, expired or not.
#[tracing::instrument(skip_all, err)]
pub async fn find(db: &PgPool, lookup_id: &[u8; 32]) -> Result<Option<Record>, sqlx::Error> {
    sqlx::query_as(
        "select fingerprint, status, response from idempotency_keys where lookup_id = $1",
    )
    .bind(&lookup_id[..])
    .fetch_optional(db)
    .await
}

/// Deletes up to `limit` expired records; returns how many. Rows a claim is taking
/// over right now are skipped rather than waited for.
#[tracing::instrument(skip(db), err)]
pub async fn prune_expired(db: &PgPool, limit: i64) -> Result<u64, sqlx::Error> {
    let deleted = sqlx::query(
        "delete from idempotency_keys where lookup_id in (
             select lookup_id from idempotency_keys where expires_at <= now()
             limit $1 for update skip locked)",
    )
    .bind(limit)
    .execute(db)
    .await?;
    Ok(deleted.rows_affected())
}
