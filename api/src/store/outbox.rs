//! Appending outbox rows inside the writing transaction.

use std::collections::HashMap;

use rsvp_contract::{event::AGGREGATE_RSVP, CloudEvent};
use serde::Serialize;
use sqlx::{
    encode::IsNull,
    error::BoxDynError,
    postgres::{types::Oid, PgArgumentBuffer, PgHasArrayType, PgTypeInfo},
    Encode, Postgres,
};
use uuid::Uuid;

use super::Tx;

/// Appends the outbox rows of `events`, in order, in one statement. Their `xid`
/// defaults to the writing transaction; the insert trigger notifies the relay when
/// the transaction commits. Returns that xid (none when `events` is empty), which
/// settles a failed `COMMIT`: asked here, it costs no round trip of its own while
/// the transaction holds its xid, which holds back the relay's reads.
///
/// The same statement adds `seats_taken` (by event id) to the events' seat counts:
/// the seats a batch of creates took, whose capacity the caller checked against
/// the rows it locked. One round trip fewer per batch than a statement of its own.
#[tracing::instrument(skip_all, fields(rows = events.len()), err)]
pub async fn append(
    tx: &mut Tx<'_>,
    events: &[(CloudEvent, Option<&str>)],
    seats_taken: &HashMap<Uuid, i32>,
) -> Result<Option<String>, sqlx::Error> {
    let (seat_events, seats): (Vec<Uuid>, Vec<i32>) =
        seats_taken.iter().filter(|(_, seats)| **seats != 0).map(|(id, seats)| (*id, *seats)).unzip();
    // Each event is serialized once, straight into the statement's buffer.
    let payloads: Vec<JsonText<&CloudEvent>> = events.iter().map(|(event, _)| JsonText(event)).collect();
    let aggregate_ids: Vec<Uuid> = events.iter().map(|(e, _)| e.data.id).collect();
    let keys: Vec<String> = events.iter().map(|(e, _)| e.kafka_key()).collect();
    let types: Vec<&str> = events.iter().map(|(e, _)| e.event_type.as_str()).collect();
    let message_ids: Vec<Uuid> = events.iter().map(|(e, _)| e.id).collect();
    let versions: Vec<i64> = events.iter().map(|(e, _)| e.data.version).collect();
    let traceparents: Vec<Option<&str>> = events.iter().map(|(_, t)| *t).collect();
    // `with ordinality` keeps the given order, so outbox ids follow it.
    sqlx::query_scalar!(
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
             returning 1
         )
         select pg_current_xact_id()::text as "xid!" from appended limit 1"#,
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
    )
    .fetch_optional(&mut **tx)
    .await
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
