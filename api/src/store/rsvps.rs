//! Rsvp rows. Every change bumps `version` and returns the row as it now is.

use chrono::{DateTime, Utc};
use rsvp_contract::{RsvpData, RsvpStatus};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

use super::Tx;
use crate::{auth::TokenHash, domain::NewRsvp};

const COLUMNS: &str = "id, event_id, name, email, status, guests, token_hash, version, created_at, updated_at";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RsvpRow {
    pub id: Uuid,
    pub event_id: Uuid,
    pub name: String,
    pub email: String,
    #[sqlx(try_from = "String")]
    pub status: StoredStatus,
    pub guests: i16,
    pub token_hash: Vec<u8>,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A status column value; the table's check constraint admits only valid ones.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StoredStatus(pub RsvpStatus);

impl TryFrom<String> for StoredStatus {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        RsvpStatus::parse(&value).map(StoredStatus).ok_or(value)
    }
}

/// An rsvp as reads return it: never its token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RsvpView {
    pub id: Uuid,
    pub event_id: Uuid,
    pub name: String,
    pub email: String,
    pub status: RsvpStatus,
    pub guests: i16,
    /// Incremented by every change.
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl RsvpRow {
    pub fn status(&self) -> RsvpStatus {
        self.status.0
    }

    pub fn seats(&self) -> i32 {
        self.status().seats(self.guests)
    }

    pub fn token_hash(&self) -> Option<TokenHash> {
        TokenHash::from_stored(&self.token_hash)
    }

    pub fn view(&self) -> RsvpView {
        RsvpView {
            id: self.id,
            event_id: self.event_id,
            name: self.name.clone(),
            email: self.email.clone(),
            status: self.status(),
            guests: self.guests,
            version: self.version,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }

    /// The event payload: the rsvp after the change.
    pub fn event_data(&self, previous_status: Option<RsvpStatus>) -> RsvpData {
        RsvpData {
            id: self.id,
            event_id: self.event_id,
            name: self.name.clone(),
            email: self.email.clone(),
            status: self.status(),
            guests: self.guests,
            version: self.version,
            created_at: self.created_at,
            updated_at: self.updated_at,
            previous_status,
        }
    }
}

/// A row to insert; its token is known only to the request that made it.
pub struct NewRow<'a> {
    pub id: Uuid,
    pub event_id: Uuid,
    pub rsvp: &'a NewRsvp,
    pub token_hash: TokenHash,
}

/// Inserts every row in one statement and returns those written; a row whose email
/// already answered its event is skipped rather than failing the statement, so a
/// transaction shared by many requests survives one request's duplicate. Events must
/// exist (the caller checked them under lock; events are never deleted).
#[tracing::instrument(skip_all, fields(rows = rows.len()), err)]
pub async fn insert_many(tx: &mut Tx<'_>, rows: &[NewRow<'_>]) -> Result<Vec<RsvpRow>, sqlx::Error> {
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let event_ids: Vec<Uuid> = rows.iter().map(|r| r.event_id).collect();
    let names: Vec<&str> = rows.iter().map(|r| r.rsvp.name.as_str()).collect();
    let emails: Vec<&str> = rows.iter().map(|r| r.rsvp.email.as_str()).collect();
    let statuses: Vec<&str> = rows.iter().map(|r| r.rsvp.status.as_str()).collect();
    let guests: Vec<i16> = rows.iter().map(|r| r.rsvp.guests.value()).collect();
    let hashes: Vec<&[u8]> = rows.iter().map(|r| r.token_hash.as_bytes()).collect();
    sqlx::query_as(&format!(
        "insert into rsvps (id, event_id, name, email, status, guests, token_hash)
         select * from unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::int2[], $7::bytea[])
         on conflict do nothing
         returning {COLUMNS}"
    ))
    .bind(ids)
    .bind(event_ids)
    .bind(names)
    .bind(emails)
    .bind(statuses)
    .bind(guests)
    .bind(hashes)
    .fetch_all(&mut **tx)
    .await
}

/// Removes rows this transaction just inserted, when a later check refuses them.
pub async fn discard(tx: &mut Tx<'_>, ids: &[Uuid]) -> Result<(), sqlx::Error> {
    sqlx::query("delete from rsvps where id = any($1)").bind(ids).execute(&mut **tx).await?;
    Ok(())
}

/// The rsvps with these ids or token hashes, as `(id, token_hash, event_id)`,
/// without locking anything: a plain read assigns no xid, and an rsvp never changes
/// its event, so the answer holds for the rest of the transaction (see
/// `writes::lock_writers`).
#[tracing::instrument(skip_all, err)]
pub async fn events_of(
    tx: &mut Tx<'_>,
    ids: &[Uuid],
    token_hashes: &[Vec<u8>],
) -> Result<Vec<(Uuid, Vec<u8>, Uuid)>, sqlx::Error> {
    if ids.is_empty() && token_hashes.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_as("select id, token_hash, event_id from rsvps where id = any($1) or token_hash = any($2)")
        .bind(ids)
        .bind(token_hashes)
        .fetch_all(&mut **tx)
        .await
}

/// The rsvp, locked until the transaction ends.
#[tracing::instrument(skip(tx), err)]
pub async fn lock_by_id(tx: &mut Tx<'_>, id: Uuid) -> Result<Option<RsvpRow>, sqlx::Error> {
    sqlx::query_as(&format!("select {COLUMNS} from rsvps where id = $1 for update"))
        .bind(id)
        .fetch_optional(&mut **tx)
        .await
}

/// The rsvp whose token hashes to `hash`, locked until the transaction ends.
#[tracing::instrument(skip_all, err)]
pub async fn lock_by_token(tx: &mut Tx<'_>, hash: &TokenHash) -> Result<Option<RsvpRow>, sqlx::Error> {
    sqlx::query_as(&format!("select {COLUMNS} from rsvps where token_hash = $1 for update"))
        .bind(hash.as_bytes())
        .fetch_optional(&mut **tx)
        .await
}

/// Writes the new field values and bumps the version.
// The name is personal data: never a span field.
#[tracing::instrument(skip(tx, name), err)]
pub async fn update(
    tx: &mut Tx<'_>,
    id: Uuid,
    status: RsvpStatus,
    name: &str,
    guests: i16,
) -> Result<RsvpRow, sqlx::Error> {
    sqlx::query_as(&format!(
        "update rsvps set status = $2, name = $3, guests = $4, version = version + 1, updated_at = now()
         where id = $1 returning {COLUMNS}"
    ))
    .bind(id)
    .bind(status.as_str())
    .bind(name)
    .bind(guests)
    .fetch_one(&mut **tx)
    .await
}

/// Deletes the rsvp and returns it as it was.
#[tracing::instrument(skip(tx), err)]
pub async fn delete(tx: &mut Tx<'_>, id: Uuid) -> Result<Option<RsvpRow>, sqlx::Error> {
    sqlx::query_as(&format!("delete from rsvps where id = $1 returning {COLUMNS}"))
        .bind(id)
        .fetch_optional(&mut **tx)
        .await
}

#[tracing::instrument(skip(pool), err)]
pub async fn find(pool: &PgPool, id: Uuid) -> Result<Option<RsvpView>, sqlx::Error> {
    let row: Option<RsvpRow> = sqlx::query_as(&format!("select {COLUMNS} from rsvps where id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await?;
    Ok(row.as_ref().map(RsvpRow::view))
}

/// Up to `limit` of the event's rsvps after `after` in `(created_at, id)` order: one
/// index range scan of `rsvps_event_id_created_at_idx`, however deep the page.
#[tracing::instrument(skip(pool, after), fields(after = after.is_some()), err)]
pub async fn page_for_event(
    pool: &PgPool,
    event_id: Uuid,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<RsvpView>, sqlx::Error> {
    // Two statements rather than `$2 is null or …`, which a generic plan cannot
    // turn into an index range.
    let rows: Vec<RsvpRow> = match after {
        None => {
            sqlx::query_as(&format!(
                "select {COLUMNS} from rsvps where event_id = $1 order by created_at, id limit $2"
            ))
            .bind(event_id)
            .bind(limit)
            .fetch_all(pool)
            .await?
        }
        Some((created_at, id)) => {
            sqlx::query_as(&format!(
                "select {COLUMNS} from rsvps where event_id = $1 and (created_at, id) > ($2, $3)
                 order by created_at, id limit $4"
            ))
            .bind(event_id)
            .bind(created_at)
            .bind(id)
            .bind(limit)
            .fetch_all(pool)
            .await?
        }
    };
    Ok(rows.iter().map(RsvpRow::view).collect())
}

/// The hash of the rsvp's token, to tell its owner from other readers.
#[tracing::instrument(skip(pool), err)]
pub async fn token_hash(pool: &PgPool, id: Uuid) -> Result<Option<TokenHash>, sqlx::Error> {
    let stored: Option<Vec<u8>> =
        sqlx::query_scalar("select token_hash from rsvps where id = $1").bind(id).fetch_optional(pool).await?;
    Ok(stored.as_deref().and_then(TokenHash::from_stored))
}
