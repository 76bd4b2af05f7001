//! Events and their seat accounting.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

use super::Tx;
use crate::domain::NewEvent;

/// An event with its rsvp counts, as `GET /events/{id}` returns and the cache stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EventView {
    pub id: Uuid,
    pub title: String,
    pub starts_at: DateTime<Utc>,
    /// Seats; null when unlimited.
    pub capacity: Option<i32>,
    /// Seats held by going rsvps and their guests.
    pub seats_taken: i32,
    pub created_at: DateTime<Utc>,
    pub counts: RsvpCounts,
    /// Guests brought by going rsvps.
    pub guests_going: i64,
}

/// Rsvps of an event by status.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RsvpCounts {
    pub going: i64,
    pub maybe: i64,
    pub declined: i64,
    pub cancelled: i64,
}

#[tracing::instrument(skip_all, err)]
pub async fn insert_event(db: impl sqlx::PgExecutor<'_>, event: &NewEvent) -> Result<EventView, sqlx::Error> {
    let (id, created_at): (Uuid, DateTime<Utc>) = sqlx::query_as(
        "insert into events (id, title, starts_at, capacity) values ($1, $2, $3, $4)
         returning id, created_at",
    )
    .bind(Uuid::now_v7())
    .bind(event.title.as_str())
    .bind(event.starts_at.value())
    .bind(event.capacity.map(|c| c.value()))
    .fetch_one(db)
    .await?;
    Ok(EventView {
        id,
        title: event.title.as_str().to_owned(),
        starts_at: event.starts_at.value(),
        capacity: event.capacity.map(|c| c.value()),
        seats_taken: 0,
        created_at,
        counts: RsvpCounts::default(),
        guests_going: 0,
    })
}

#[derive(sqlx::FromRow)]
struct EventRow {
    id: Uuid,
    title: String,
    starts_at: DateTime<Utc>,
    capacity: Option<i32>,
    seats_taken: i32,
    created_at: DateTime<Utc>,
    going: i64,
    maybe: i64,
    declined: i64,
    cancelled: i64,
    guests_going: i64,
}

#[tracing::instrument(skip(pool), err)]
pub async fn find_event(pool: &PgPool, id: Uuid) -> Result<Option<EventView>, sqlx::Error> {
    let row: Option<EventRow> = sqlx::query_as(
        "select e.id, e.title, e.starts_at, e.capacity, e.seats_taken, e.created_at,
                count(*) filter (where r.status = 'going') as going,
                count(*) filter (where r.status = 'maybe') as maybe,
                count(*) filter (where r.status = 'declined') as declined,
                count(*) filter (where r.status = 'cancelled') as cancelled,
                coalesce(sum(r.guests) filter (where r.status = 'going'), 0)::bigint as guests_going
         from events e left join rsvps r on r.event_id = e.id
         where e.id = $1
         group by e.id",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| EventView {
        id: r.id,
        title: r.title,
        starts_at: r.starts_at,
        capacity: r.capacity,
        seats_taken: r.seats_taken,
        created_at: r.created_at,
        counts: RsvpCounts {
            going: r.going,
            maybe: r.maybe,
            declined: r.declined,
            cancelled: r.cancelled,
        },
        guests_going: r.guests_going,
    }))
}

#[tracing::instrument(skip(pool), err)]
pub async fn event_exists(pool: &PgPool, id: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("select exists (select 1 from events where id = $1)")
        .bind(id)
        .fetch_one(pool)
        .await
}

/// Seats of an event as its row says, under lock.
#[derive(Debug, Clone, Copy)]
pub struct Seats {
    pub capacity: Option<i32>,
    pub taken: i32,
}

/// Locks the events (in id order, so that concurrent writers cannot deadlock) and
/// returns their seats; unknown ids are absent.
#[tracing::instrument(skip_all, fields(events = ids.len()), err)]
pub async fn lock_seats(tx: &mut Tx<'_>, ids: &[Uuid]) -> Result<HashMap<Uuid, Seats>, sqlx::Error> {
    let rows: Vec<(Uuid, Option<i32>, i32)> = sqlx::query_as(
        "select id, capacity, seats_taken from events where id = any($1) order by id for no key update",
    )
    .bind(ids)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows.into_iter().map(|(id, capacity, taken)| (id, Seats { capacity, taken })).collect())
}

/// Locks the rows of the events that no other transaction has locked, without
/// waiting, and returns the ids of those held elsewhere (unknown ids are neither).
#[tracing::instrument(skip_all, fields(events = ids.len()), err)]
pub async fn try_lock(tx: &mut Tx<'_>, ids: &[Uuid]) -> Result<Vec<Uuid>, sqlx::Error> {
    let existing: Vec<Uuid> =
        sqlx::query_scalar("select id from events where id = any($1)").bind(ids).fetch_all(&mut **tx).await?;
    let locked: Vec<Uuid> =
        sqlx::query_scalar("select id from events where id = any($1) order by id for no key update skip locked")
            .bind(&existing)
            .fetch_all(&mut **tx)
            .await?;
    Ok(existing.into_iter().filter(|id| !locked.contains(id)).collect())
}

/// Adds seats to events whose capacity the caller already checked under lock.
#[tracing::instrument(skip_all, err)]
pub async fn add_seats(tx: &mut Tx<'_>, seats: &HashMap<Uuid, i32>) -> Result<(), sqlx::Error> {
    let (ids, deltas): (Vec<Uuid>, Vec<i32>) = seats.iter().filter(|(_, d)| **d != 0).map(|(i, d)| (*i, *d)).unzip();
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "update events set seats_taken = seats_taken + d.delta
         from unnest($1::uuid[], $2::int4[]) as d(id, delta) where events.id = d.id",
    )
    .bind(ids)
    .bind(deltas)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Takes (`delta` > 0) or frees (`delta` < 0) seats of an event. False when taking
/// them would exceed its capacity. Locks the event row until the transaction ends, so
/// that concurrent rsvps to one event check capacity one after the other.
#[tracing::instrument(skip(tx), err)]
pub async fn adjust_seats(tx: &mut Tx<'_>, event_id: Uuid, delta: i32) -> Result<bool, sqlx::Error> {
    if delta == 0 {
        return Ok(true);
    }
    let updated = sqlx::query(
        "update events set seats_taken = seats_taken + $2
         where id = $1 and ($2 < 0 or capacity is null or seats_taken + $2 <= capacity)",
    )
    .bind(event_id)
    .bind(delta)
    .execute(&mut **tx)
    .await?;
    Ok(updated.rows_affected() == 1)
}
