//! Reading the state a batch starts from, claiming the changes that arrive out of
//! order and writing what the batch ends with: a lock, a read, a claim (when some
//! change needs one) and three writes per batch, however many events it holds,
//! because statements per event are what costs Postgres most under load
//! (docs/NOTES.md, "Analytics statements per batch").

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use rsvp_contract::CloudEvent;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{plan, to_claim, Applied, Plan, StateRow};

/// Applies one event inside the caller's transaction.
pub async fn apply(conn: &mut PgConnection, event: &CloudEvent) -> Result<Applied, sqlx::Error> {
    Ok(apply_batch(conn, &[event]).await?[0])
}

/// Applies `events` in order inside the caller's transaction, which also advances
/// the offset; returns each event's outcome.
#[tracing::instrument(skip_all, fields(events = events.len()), err)]
pub async fn apply_batch(conn: &mut PgConnection, events: &[&CloudEvent]) -> Result<Vec<Applied>, sqlx::Error> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let rsvp_ids: Vec<Uuid> = events.iter().map(|e| e.data.id).collect();
    lock_rsvps(conn, &rsvp_ids).await?;
    // `for update`: the rows this batch changes stay as read until it commits, also
    // against a dead letter being redriven, which applies outside the partition's
    // ownership and its offset fence, and against the pruner moving
    // `applied_through`. Both statements are planned for their own arguments (not
    // prepared): a connection that started on a new, nearly empty table would keep a
    // generic plan that scans it whole once it has grown (docs/NOTES.md, "Analytics
    // statements per batch"). The query macros cannot turn preparing off for a
    // statement that returns rows, so these stay runtime queries.
    let states: HashMap<Uuid, StateRow> = sqlx::query_as::<_, (Uuid, Uuid, Option<String>, i16, i64, bool, i64)>(
        "select rsvp_id, event_id, status, guests, last_version, deleted, applied_through
           from analytics.rsvp_state where rsvp_id = any($1) for update",
    )
    .persistent(false)
    .bind(&rsvp_ids)
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .map(|(id, event_id, status, guests, last_version, deleted, applied_through)| {
        (id, StateRow { event_id, status, guests, last_version, deleted, applied_through })
    })
    .collect();
    // Under the rsvps' locks, with their states read: a change that is its rsvp's
    // next version needs no claim (see [`to_claim`]). For the others, the dedup
    // decision is claiming the ce_id. Sorted, so that two transactions claiming
    // overlapping sets (possible only for ce_ids of one rsvp, which its lock
    // already orders) wait on each other in one order.
    let mut claims = to_claim(events, &states);
    claims.sort_unstable();
    claims.dedup_by_key(|c| c.0);
    let claimed: Vec<Uuid> = if claims.is_empty() {
        Vec::new()
    } else {
        // Not `query_scalar!`: its statements are always prepared (see above).
        sqlx::query_scalar(
            "insert into analytics.applied_events (ce_id, rsvp_id, version)
             select * from unnest($1::uuid[], $2::uuid[], $3::bigint[]) on conflict (ce_id) do nothing
             returning ce_id",
        )
        .persistent(false)
        .bind(claims.iter().map(|c| c.0).collect::<Vec<_>>())
        .bind(claims.iter().map(|c| c.1).collect::<Vec<_>>())
        .bind(claims.iter().map(|c| c.2).collect::<Vec<_>>())
        .fetch_all(&mut *conn)
        .await?
    };
    let claimed: HashSet<Uuid> = claimed.into_iter().collect();
    let seen: HashSet<Uuid> = claims.into_iter().map(|c| c.0).filter(|id| !claimed.contains(id)).collect();
    let plan = plan(events, states, seen);
    if !plan.applied.is_empty() {
        write(conn, &plan).await?;
    }
    Ok(plan.outcomes)
}

/// Takes a transaction-scoped advisory lock per rsvp, in key order (so that two
/// transactions wait on each other in one order), before its state is read. `for
/// update` on `rsvp_state` serialises the changes of an rsvp that has a state row;
/// these locks also serialise two transactions applying different changes of one that
/// has none yet (a redrive racing the worker), which would otherwise both count it as
/// new. Each key is the rsvp id's two halves xor-ed, as the api keys its event locks;
/// the api's keys are event ids, so the two never meet but by a 64-bit collision.
async fn lock_rsvps(conn: &mut PgConnection, rsvp_ids: &[Uuid]) -> Result<(), sqlx::Error> {
    let mut keys: Vec<i64> = rsvp_ids
        .iter()
        .map(|id| {
            let (high, low) = id.as_u64_pair();
            (high ^ low) as i64
        })
        .collect();
    keys.sort_unstable();
    keys.dedup();
    // A runtime query: `query!` of a statement that returns a column (even `void`)
    // cannot be left unprepared.
    sqlx::query("select pg_advisory_xact_lock(k) from unnest($1::int8[]) as k")
        .persistent(false)
        .bind(keys)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn write(conn: &mut PgConnection, plan: &Plan) -> Result<(), sqlx::Error> {
    let column = |f: fn(&super::StatsChange) -> i64| plan.stats.values().map(f).collect::<Vec<i64>>();
    let last_event_at: Vec<DateTime<Utc>> = plan.stats.values().map(|s| s.last_event_at).collect();
    let event_ids: Vec<Uuid> = plan.stats.keys().copied().collect();
    sqlx::query!(
        "insert into analytics.event_stats as s (event_id, going, maybe, declined, cancelled, guests_going,
                created_total, updated_total, cancelled_total, deleted_total, last_event_at)
         select * from unnest($1::uuid[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[],
                              $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[], $11::timestamptz[])
         on conflict (event_id) do update set
            going = s.going + excluded.going, maybe = s.maybe + excluded.maybe,
            declined = s.declined + excluded.declined, cancelled = s.cancelled + excluded.cancelled,
            guests_going = s.guests_going + excluded.guests_going,
            created_total = s.created_total + excluded.created_total,
            updated_total = s.updated_total + excluded.updated_total,
            cancelled_total = s.cancelled_total + excluded.cancelled_total,
            deleted_total = s.deleted_total + excluded.deleted_total,
            last_event_at = greatest(s.last_event_at, excluded.last_event_at), updated_at = now()",
        &event_ids,
        &column(|s| s.counts.going),
        &column(|s| s.counts.maybe),
        &column(|s| s.counts.declined),
        &column(|s| s.counts.cancelled),
        &column(|s| s.counts.guests_going),
        &column(|s| s.created),
        &column(|s| s.updated),
        &column(|s| s.cancelled),
        &column(|s| s.deleted),
        &last_event_at,
    )
    .execute(&mut *conn)
    .await?;

    sqlx::query!(
        "insert into analytics.rsvps_per_hour as h (event_id, hour, created, changes)
         select * from unnest($1::uuid[], $2::timestamptz[], $3::bigint[], $4::bigint[])
         on conflict (event_id, hour) do update set created = h.created + excluded.created, changes = h.changes + excluded.changes",
        &plan.hours.keys().map(|(event, _)| *event).collect::<Vec<Uuid>>(),
        &plan.hours.keys().map(|(_, hour)| *hour).collect::<Vec<DateTime<Utc>>>(),
        &plan.hours.values().map(|h| h.created).collect::<Vec<i64>>(),
        &plan.hours.values().map(|h| h.changes).collect::<Vec<i64>>(),
    )
    .execute(&mut *conn)
    .await?;

    let states = plan.states.values();
    let statuses: Vec<Option<String>> = states.clone().map(|s| s.status.clone()).collect();
    sqlx::query!(
        "insert into analytics.rsvp_state (rsvp_id, event_id, status, guests, last_version, deleted, applied_through)
         select * from unnest($1::uuid[], $2::uuid[], $3::text[], $4::smallint[], $5::bigint[], $6::boolean[], $7::bigint[])
         on conflict (rsvp_id) do update set status = excluded.status, guests = excluded.guests,
            last_version = excluded.last_version, deleted = excluded.deleted,
            applied_through = excluded.applied_through, updated_at = now()",
        &plan.states.keys().copied().collect::<Vec<Uuid>>(),
        &states.clone().map(|s| s.event_id).collect::<Vec<Uuid>>(),
        &statuses as &[Option<String>],
        &states.clone().map(|s| s.guests).collect::<Vec<i16>>(),
        &states.clone().map(|s| s.last_version).collect::<Vec<i64>>(),
        &states.clone().map(|s| s.deleted).collect::<Vec<bool>>(),
        &states.map(|s| s.applied_through).collect::<Vec<i64>>(),
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}
