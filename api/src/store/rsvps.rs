//! Rsvp rows. Every change bumps `version` and returns the row as it now is.

use chrono::{DateTime, Utc};
use rsvp_contract::{RsvpData, RsvpStatus};
use sqlx::{
    error::BoxDynError,
    postgres::{PgTypeInfo, PgValueRef},
    PgPool, Postgres,
};
use uuid::Uuid;

use super::Tx;
use crate::{auth::TokenHash, domain::NewRsvp};

// Every query below selects or returns the columns of `RsvpRow`, spelled out: the
// query macros check only a literal statement.

#[derive(Debug, Clone)]
pub struct RsvpRow {
    pub id: Uuid,
    pub event_id: Uuid,
    pub name: String,
    pub email: String,
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

impl sqlx::Type<Postgres> for StoredStatus {
    fn type_info() -> PgTypeInfo {
        <&str as sqlx::Type<Postgres>>::type_info()
    }

    fn compatible(ty: &PgTypeInfo) -> bool {
        <&str as sqlx::Type<Postgres>>::compatible(ty)
    }
}

impl<'r> sqlx::Decode<'r, Postgres> for StoredStatus {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        let text = <&str as sqlx::Decode<Postgres>>::decode(value)?;
        RsvpStatus::parse(text).map(StoredStatus).ok_or_else(|| text.into())
    }
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
    sqlx::query_as!(
        RsvpRow,
        r#"insert into rsvps (id, event_id, name, email, status, guests, token_hash)
         select * from unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::int2[], $7::bytea[])
         on conflict do nothing
         returning id, event_id, name, email, status as "status: StoredStatus", guests, token_hash, version, created_at, updated_at"#,
        &ids,
        &event_ids,
        &names as &[&str],
        &emails as &[&str],
        &statuses as &[&str],
        &guests,
        &hashes as &[&[u8]],
    )
    .fetch_all(&mut **tx)
    .await
}

/// Removes rows this transaction just inserted, when a later check refuses them.
pub async fn discard(tx: &mut Tx<'_>, ids: &[Uuid]) -> Result<(), sqlx::Error> {
    sqlx::query!("delete from rsvps where id = any($1)", ids).execute(&mut **tx).await?;
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
    let rows = sqlx::query!(
        "select id, token_hash, event_id from rsvps where id = any($1) or token_hash = any($2)",
        ids,
        token_hashes,
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows.into_iter().map(|row| (row.id, row.token_hash, row.event_id)).collect())
}

/// The rsvp, locked until the transaction ends.
#[tracing::instrument(skip(tx), err)]
pub async fn lock_by_id(tx: &mut Tx<'_>, id: Uuid) -> Result<Option<RsvpRow>, sqlx::Error> {
    sqlx::query_as!(RsvpRow, r#"select id, event_id, name, email, status as "status: StoredStatus", guests, token_hash, version, created_at, updated_at from rsvps where id = $1 for update"#, id)
        .fetch_optional(&mut **tx)
        .await
}

/// The rsvp whose token hashes to `hash`, locked until the transaction ends.
#[tracing::instrument(skip_all, err)]
pub async fn lock_by_token(tx: &mut Tx<'_>, hash: &TokenHash) -> Result<Option<RsvpRow>, sqlx::Error> {
    sqlx::query_as!(RsvpRow, r#"select id, event_id, name, email, status as "status: StoredStatus", guests, token_hash, version, created_at, updated_at from rsvps where token_hash = $1 for update"#, hash.as_bytes())
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
    sqlx::query_as!(
        RsvpRow,
        r#"update rsvps set status = $2, name = $3, guests = $4, version = version + 1, updated_at = now()
         where id = $1 returning id, event_id, name, email, status as "status: StoredStatus", guests, token_hash, version, created_at, updated_at"#,
        id,
        status.as_str(),
        name,
        guests,
    )
    .fetch_one(&mut **tx)
    .await
}

/// Deletes the rsvp and returns it as it was.
#[tracing::instrument(skip(tx), err)]
pub async fn delete(tx: &mut Tx<'_>, id: Uuid) -> Result<Option<RsvpRow>, sqlx::Error> {
    sqlx::query_as!(RsvpRow, r#"delete from rsvps where id = $1 returning id, event_id, name, email, status as "status: StoredStatus", guests, token_hash, version, created_at, updated_at"#, id)
        .fetch_optional(&mut **tx)
        .await
}

#[tracing::instrument(skip(pool), err)]
pub async fn find(pool: &PgPool, id: Uuid) -> Result<Option<RsvpRow>, sqlx::Error> {
    sqlx::query_as!(RsvpRow, r#"select id, event_id, name, email, status as "status: StoredStatus", guests, token_hash, version, created_at, updated_at from rsvps where id = $1"#, id).fetch_optional(pool).await
}

/// Up to `limit` of the event's rsvps after `after` in `(created_at, id)` order: one
/// index range scan of `rsvps_event_id_created_at_idx`, however deep the page.
#[tracing::instrument(skip(pool, after), fields(after = after.is_some()), err)]
pub async fn page_for_event(
    pool: &PgPool,
    event_id: Uuid,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<RsvpRow>, sqlx::Error> {
    // Two statements rather than `$2 is null or …`, which a generic plan cannot
    // turn into an index range.
    match after {
        None => {
            sqlx::query_as!(
                RsvpRow,
                r#"select id, event_id, name, email, status as "status: StoredStatus", guests, token_hash, version, created_at, updated_at from rsvps where event_id = $1 order by created_at, id limit $2"#,
                event_id,
                limit,
            )
            .fetch_all(pool)
            .await
        }
        Some((created_at, id)) => {
            sqlx::query_as!(
                RsvpRow,
                r#"select id, event_id, name, email, status as "status: StoredStatus", guests, token_hash, version, created_at, updated_at from rsvps where event_id = $1 and (created_at, id) > ($2, $3)
                 order by created_at, id limit $4"#,
                event_id,
                created_at,
                id,
                limit,
            )
            .fetch_all(pool)
            .await
        }
    }
}

/// The hash of the rsvp's token, to tell its owner from other readers.
#[tracing::instrument(skip(pool), err)]
pub async fn token_hash(pool: &PgPool, id: Uuid) -> Result<Option<TokenHash>, sqlx::Error> {
    let stored = sqlx::query_scalar!("select token_hash from rsvps where id = $1", id).fetch_optional(pool).await?;
    Ok(stored.as_deref().and_then(TokenHash::from_stored))
}
