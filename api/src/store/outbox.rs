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
    idempotency::{lock_key, KeyTaken, NewRecord},
    Tx,
};
use crate::metric_names;

/// What [`append`] did.
#[derive(Debug)]
pub struct Appended {
    /// The writing transaction's xid, which settles a failed `COMMIT`: asked here, it
    /// costs no round trip of its own while the transaction holds its xid, which
    /// holds back the relay's reads.
    pub xid: String,
    /// The position in the records of each that could not be inserted, with what
    /// holds its key (see [`super::idempotency`]).
    pub taken: Vec<(usize, KeyTaken)>,
}

/// What a write's transaction appends after its writes, in one statement (one round
/// trip):
/// - appends the outbox rows of `events`, in order. Their `xid` defaults to the
///   writing transaction; the insert trigger notifies the relay when it commits;
/// - adds `seats_taken` (by event id) to the events' seat counts: the seats a batch
///   of creates took, whose capacity the caller checked against the rows it locked;
/// - inserts the idempotency `records` of the writes (their keys distinct), each
///   under its key's advisory lock, taken without waiting (see
///   [`super::idempotency`]). An expired record is taken over. When a key is taken,
///   the caller rolls back: the outbox rows and seats go with the records.
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
    // `with ordinality` keeps the given order, so outbox ids follow it. `claimed` is
    // materialized: each key's lock is tried once, and only the keys this
    // transaction holds are inserted. The statement answers one row for nothing
    // claimed, else one per record.
    let rows = sqlx::query!(
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
         ), claimed as materialized (
             select id, f, s, st, r, n, pg_try_advisory_xact_lock(k) as locked
             from unnest($11::bytea[], $12::int8[], $13::bytea[], $14::float8[], $15::int2[], $16::bytea[])
                  with ordinality as x(id, k, f, s, st, r, n)
         ), recorded as (
             insert into idempotency_keys (lookup_id, fingerprint, expires_at, status, response)
             select id, f, now() + make_interval(secs => s), st, r from claimed where locked
             on conflict (lookup_id) do update
                set fingerprint = excluded.fingerprint, expires_at = excluded.expires_at,
                    status = excluded.status, response = excluded.response, created_at = now()
                where idempotency_keys.expires_at <= now()
             returning lookup_id
         )
         select pg_current_xact_id()::text as "xid!", claimed.n as "position?", claimed.locked as "locked?",
                recorded.lookup_id is not null as "recorded!"
         from (values (true)) as statement(ran)
              left join claimed on true
              left join recorded on recorded.lookup_id = claimed.id"#,
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
    .fetch_all(&mut **tx)
    .await?;
    let xid = rows.first().map(|row| row.xid.clone()).unwrap_or_default();
    let mut taken: Vec<(usize, KeyTaken)> = rows
        .into_iter()
        .filter(|row| !row.recorded)
        .filter_map(|row| {
            // `with ordinality` counts from 1.
            let position = usize::try_from(row.position? - 1).unwrap_or(usize::MAX);
            Some((position, if row.locked == Some(true) { KeyTaken::ByCommittedRequest } else { KeyTaken::InFlight }))
        })
        .collect();
    taken.sort_unstable_by_key(|(position, _)| *position);
    // A transaction that finds a key taken rolls back, its records with it.
    if taken.is_empty() && !records.is_empty() {
        counter!(metric_names::IDEMPOTENT_REQUESTS, "outcome" => "recorded").increment(records.len() as u64);
    }
    Ok(Some(Appended { xid, taken }))
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
