//! Appending outbox rows inside the writing transaction, in the statement that also
//! takes a batch's seats and inserts its idempotency records.

use std::collections::HashMap;

use metrics::counter;
use rsvp_contract::{event::AGGREGATE_RSVP, CloudEvent};
use serde::Serialize;
use sqlx::{
    encode::IsNull,
    error::BoxDynError,
    postgres::{types::Oid, PgArgumentBuffer, PgHasArrayType, PgTypeInfo},
    Encode, Postgres,
};
use uuid::Uuid;

use super::{
    idempotency::{lock_key, NewRecord},
    Tx,
};
use crate::metric_names;

/// What [`append`] did.
#[derive(Debug)]
pub enum Appended {
    /// Everything was written, in the transaction with this xid, which settles a
    /// failed `COMMIT`: asked here, it costs no round trip of its own while the
    /// transaction holds its xid, which holds back the relay's reads.
    Written { xid: String },
    /// Another request holds the key of one of the records: nothing of the statement
    /// was written and the caller must roll back. Which keys, and held how, the
    /// caller learns after that from [`super::idempotency::probe`].
    KeyTaken,
}

impl Appended {
    /// The writing transaction's xid, when everything was written.
    pub fn xid(self) -> Option<String> {
        match self {
            Self::Written { xid } => Some(xid),
            Self::KeyTaken => None,
        }
    }
}

/// What keeps the records' lookup ids unique (an exclusion constraint on a hash
/// index): a record's insert that violates it found its key's record there,
/// committed.
const RECORD_KEY_CONSTRAINT: &str = "idempotency_keys_lookup_id_unique";

/// What a write's transaction appends after its writes, in one statement (one round
/// trip):
/// - appends the outbox rows of `events`, in order. Their `xid` defaults to the
///   writing transaction; the insert trigger notifies the relay when it commits;
/// - adds `seats_taken` (by event id) to the events' seat counts: the seats a batch
///   of creates took, whose capacity the caller checked against the rows it locked;
/// - inserts the idempotency `records` of the writes (their keys distinct), each
///   under its key's advisory lock, taken without waiting (see
///   [`super::idempotency`]). A record whose key's lock another transaction holds
///   is not inserted; one whose key has a record already fails the insert, and with
///   it the statement. Either way the answer is [`Appended::KeyTaken`], and the
///   caller rolls back: the outbox rows and seats go with the records.
///
/// The insert is a plain one, with neither `on conflict` nor a row per record in the
/// answer: a key is taken so seldom (a retry, a key reused) that the rare case pays
/// for finding out which, with a rollback and [`super::idempotency::probe`], and
/// every keyed write pays less (see docs/BENCHMARKS.md).
///
/// `None` when there is nothing to write (the transaction may then have no xid).
#[tracing::instrument(skip_all, fields(rows = events.len(), records = records.len()), err)]
pub async fn append(
    tx: &mut Tx<'_>,
    events: &[(CloudEvent, Option<&str>)],
    seats_taken: &HashMap<Uuid, i32>,
    records: &[NewRecord<'_>],
) -> Result<Option<Appended>, sqlx::Error> {
    let (seat_events, seats): (Vec<Uuid>, Vec<i32>) =
        seats_taken.iter().filter(|(_, seats)| **seats != 0).map(|(id, seats)| (*id, *seats)).unzip();
    if events.is_empty() && seat_events.is_empty() && records.is_empty() {
        return Ok(None);
    }
    // Each event is serialized once, straight into the statement's buffer.
    let payloads: Vec<JsonText<&CloudEvent>> = events.iter().map(|(event, _)| JsonText(event)).collect();
    let aggregate_ids: Vec<Uuid> = events.iter().map(|(e, _)| e.data.id).collect();
    let keys: Vec<String> = events.iter().map(|(e, _)| e.kafka_key()).collect();
    let types: Vec<&str> = events.iter().map(|(e, _)| e.event_type.as_str()).collect();
    let message_ids: Vec<Uuid> = events.iter().map(|(e, _)| e.id).collect();
    let versions: Vec<i64> = events.iter().map(|(e, _)| e.data.version).collect();
    let traceparents: Vec<Option<&str>> = events.iter().map(|(_, t)| *t).collect();
    let record_ids: Vec<&[u8]> = records.iter().map(|r| &r.lookup_id[..]).collect();
    let record_locks: Vec<i64> = records.iter().map(|r| lock_key(r.lookup_id)).collect();
    let fingerprints: Vec<&[u8]> = records.iter().map(|r| &r.fingerprint[..]).collect();
    let ttls: Vec<f64> = records.iter().map(|r| r.ttl.as_secs_f64()).collect();
    let statuses: Vec<i16> = records.iter().map(|r| r.status).collect();
    let sealed: Vec<&[u8]> = records.iter().map(|r| &r.sealed[..]).collect();
    // `with ordinality` keeps the given order, so outbox ids follow it. Each record's
    // lock is tried once, in the filter of the rows its insert reads.
    let appended = sqlx::query!(
        r#"with seats as (
             update events set seats_taken = seats_taken + d.seats
             from unnest($9::uuid[], $10::int4[]) as d(id, seats) where events.id = d.id
         ), appended as (
             insert into outbox
                 (aggregate_type, aggregate_id, kafka_key, event_type, message_id, rsvp_version, payload, traceparent)
             select $1, a, k, t, m, v, p, tp
             from unnest($2::uuid[], $3::text[], $4::text[], $5::uuid[], $6::int8[], $7::json[], $8::text[])
                  with ordinality as rows(a, k, t, m, v, p, tp, n)
             order by n
         ), recorded as (
             insert into idempotency_keys (lookup_id, fingerprint, expires_at, status, response)
             select id, f, now() + make_interval(secs => s), st, r
             from unnest($11::bytea[], $12::int8[], $13::bytea[], $14::float8[], $15::int2[], $16::bytea[])
                  as x(id, k, f, s, st, r)
             where pg_try_advisory_xact_lock(k)
             returning 1
         )
         select pg_current_xact_id()::text as "xid!", (select count(*) from recorded) as "recorded!""#,
        AGGREGATE_RSVP,
        &aggregate_ids,
        &keys,
        &types as &[&str],
        &message_ids,
        &versions,
        &payloads as &[JsonText<&CloudEvent>],
        &traceparents as &[Option<&str>],
        &seat_events,
        &seats,
        &record_ids as &[&[u8]],
        &record_locks,
        &fingerprints as &[&[u8]],
        &ttls,
        &statuses,
        &sealed as &[&[u8]],
    )
    .fetch_one(&mut **tx)
    .await;
    let appended = match appended {
        Ok(appended) => appended,
        Err(sqlx::Error::Database(error)) if error.constraint() == Some(RECORD_KEY_CONSTRAINT) => {
            return Ok(Some(Appended::KeyTaken))
        }
        Err(error) => return Err(error),
    };
    // A record not inserted: another transaction holds its key's lock.
    if appended.recorded < records.len() as i64 {
        return Ok(Some(Appended::KeyTaken));
    }
    if !records.is_empty() {
        counter!(metric_names::IDEMPOTENT_REQUESTS, "outcome" => "recorded").increment(records.len() as u64);
    }
    Ok(Some(Appended::Written { xid: appended.xid }))
}

/// A value bound as `json`: its serialization, as is. (sqlx's `Json` writes jsonb's
/// binary format, or for a `json` parameter the same with a leading space, which
/// `json` would keep.)
struct JsonText<T>(T);

/// The `json` type and its array, fixed OIDs in every PostgreSQL.
const JSON_OID: Oid = Oid(114);
const JSON_ARRAY_OID: Oid = Oid(199);

impl<T> sqlx::Type<Postgres> for JsonText<T> {
    fn type_info() -> PgTypeInfo {
        PgTypeInfo::with_oid(JSON_OID)
    }
}

impl<T> PgHasArrayType for JsonText<T> {
    fn array_type_info() -> PgTypeInfo {
        PgTypeInfo::with_oid(JSON_ARRAY_OID)
    }
}

impl<T: Serialize> Encode<'_, Postgres> for JsonText<T> {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        serde_json::to_writer(&mut **buf, &self.0)?;
        Ok(IsNull::No)
    }
}
