//! Events and their seat accounting.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::Tx;
use crate::domain::NewEvent;

/// An event with its rsvp counts by status.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    pub id: Uuid,
    pub title: String,
    pub starts_at: DateTime<Utc>,
    /// Seats; `None` when unlimited.
    pub capacity: Option<i32>,
    /// Seats held by going rsvps and their guests.
    pub seats_taken: i32,
    pub created_at: DateTime<Utc>,
    pub going: i64,
    pub maybe: i64,
    pub declined: i64,
    pub cancelled: i64,
    /// Guests brought by going rsvps.
    pub guests_going: i64,
}

/// Inserts the event; it has no rsvps yet.
#[tracing::instrument(skip_all, err)]
pub async fn insert_event(db: impl sqlx::PgExecutor<'_>, event: &NewEvent) -> Result<EventRow, sqlx::Error> {
    let capacity = event.capacity.map(|c| c.value());
    let inserted = sqlx::query!(
        "insert into events (id, title, starts_at, capacity) values ($1, $2, $3, $4)
         returning id, created_at",
        Uuid::now_v7(),
        event.title.as_str(),
        event.starts_at.value(),
        capacity,
    )
    .fetch_one(db)
    .await?;
    Ok(EventRow {
        id: inserted.id,
        title: event.title.as_str().to_owned(),
        starts_at: event.starts_at.value(),
        capacity,
        seats_taken: 0,
        created_at: inserted.created_at,
        going: 0,
        maybe: 0,
        declined: 0,
        cancelled: 0,
        guests_going: 0,
    })
}

#[tracing::instrument(skip(pool), err)]
pub async fn find_event(pool: &PgPool, id: Uuid) -> Result<Option<EventRow>, sqlx::Error> {
    sqlx::query_as!(
        EventRow,
        r#"select e.id, e.title, e.starts_at, e.capacity, e.seats_taken, e.created_at,
                count(*) filter (where r.status = 'going') as "going!",
                count(*) filter (where r.status = 'maybe') as "maybe!",
                count(*) filter (where r.status = 'declined') as "declined!",
                count(*) filter (where r.status = 'cancelled') as "cancelled!",
                coalesce(sum(r.guests) filter (where r.status = 'going'), 0)::bigint as "guests_going!"
         from events e left join rsvps r on r.event_id = e.id
         where e.id = $1
         group by e.id"#,
        id,
    )
    .fetch_optional(pool)
    .await
}

#[tracing::instrument(skip(pool), err)]
pub async fn event_exists(pool: &PgPool, id: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(r#"select exists (select 1 from events where id = $1) as "exists!""#, id).fetch_one(pool).await
}

/// Seats of an event as its row says, under lock.
#[derive(Debug, Clone, Copy)]
pub struct Seats {
    pub capacity: Option<i32>,
    pub taken: i32,
}

/// Locks the rows of the events (in id order, so that concurrent writers cannot
/// deadlock) until the transaction ends, and returns their seats as of now; unknown
/// ids lock nothing and are absent.
///
/// One lookup by primary key per id, whatever the table's size or statistics: as
/// `id = any($1)`, a table of a few pages (a bench's thousand events, never analyzed)
/// got a plan that read every row and compared it with every id, while a batch
/// locks a few dozen. The function scan yields the sorted ids in order and the
/// nested loop locks each row as it comes, so the locks are taken in id order.
#[tracing::instrument(skip_all, fields(events = ids.len()), err)]
pub async fn lock(tx: &mut Tx<'_>, ids: &[Uuid]) -> Result<HashMap<Uuid, Seats>, sqlx::Error> {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    let rows = sqlx::query!(
        r#"select e.id as "id!", e.capacity, e.seats_taken as "seats_taken!"
           from unnest($1::uuid[]) as k(id),
                lateral (select id, capacity, seats_taken from events where events.id = k.id
                         for no key update) as e"#,
        &ids,
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows.into_iter().map(|row| (row.id, Seats { capacity: row.capacity, taken: row.seats_taken })).collect())
}

/// The events [`try_lock`] locked, with their seats, and those it left to others.
pub struct TriedEvents {
    pub locked: HashMap<Uuid, Seats>,
    /// Held by another transaction: not locked here.
    pub held: Vec<Uuid>,
}

/// Locks the rows of the events that no other transaction has locked, without
/// waiting, and returns their seats and the ids of those held elsewhere (unknown ids
/// are neither).
#[tracing::instrument(skip_all, fields(events = ids.len()), err)]
pub async fn try_lock(tx: &mut Tx<'_>, ids: &[Uuid]) -> Result<TriedEvents, sqlx::Error> {
    let existing: Vec<Uuid> =
        sqlx::query_scalar!("select id from events where id = any($1)", ids).fetch_all(&mut **tx).await?;
    let rows = sqlx::query!(
        "select id, capacity, seats_taken from events where id = any($1) order by id for no key update skip locked",
        &existing
    )
    .fetch_all(&mut **tx)
    .await?;
    let locked: HashMap<Uuid, Seats> =
        rows.into_iter().map(|row| (row.id, Seats { capacity: row.capacity, taken: row.seats_taken })).collect();
    let held = existing.into_iter().filter(|id| !locked.contains_key(id)).collect();
    Ok(TriedEvents { locked, held })
}

/// Takes (`delta` > 0) or frees (`delta` < 0) seats of an event. False when taking
/// them would exceed its capacity. Locks the event row until the transaction ends, so
/// that concurrent rsvps to one event check capacity one after the other.
#[tracing::instrument(skip(tx), err)]
pub async fn adjust_seats(tx: &mut Tx<'_>, event_id: Uuid, delta: i32) -> Result<bool, sqlx::Error> {
    if delta == 0 {
        return Ok(true);
    }
    let updated = sqlx::query!(
        "update events set seats_taken = seats_taken + $2
         where id = $1 and ($2 < 0 or capacity is null or seats_taken + $2 <= capacity)",
        event_id,
        delta,
    )
    .execute(&mut **tx)
    .await?;
    Ok(updated.rows_affected() == 1)
}
