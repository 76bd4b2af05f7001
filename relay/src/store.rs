//! The relay's cursor and receipts in Postgres.

use sqlx::{PgConnection, PgExecutor, Row};
use uuid::Uuid;

use crate::outbox::Position;

/// Where one row landed on the topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    pub outbox_id: i64,
    pub message_id: Uuid,
    pub partition: i32,
    pub offset: i64,
}

/// A relay's stored progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cursor {
    /// Every row up to here was acknowledged.
    pub position: Position,
    /// The last row after `position` that has a receipt, left by a step that failed on
    /// some partitions only. Rows up to it must be checked for receipts when read.
    pub receipts_ahead: Option<Position>,
}

/// The cursor of relay `name`, created at the start of the outbox when missing.
#[tracing::instrument(skip_all, fields(name), err)]
pub async fn ensure_cursor(conn: &mut PgConnection, name: &str) -> Result<Cursor, sqlx::Error> {
    sqlx::query("insert into relay_cursors (name) values ($1) on conflict (name) do nothing")
        .bind(name)
        .execute(&mut *conn)
        .await?;
    Ok(load_cursor(&mut *conn, name).await?.unwrap_or_default())
}

/// The cursor of relay `name`, if it ever ran.
pub async fn load_cursor(db: impl PgExecutor<'_>, name: &str) -> Result<Option<Cursor>, sqlx::Error> {
    let row = sqlx::query(
        "select xid::text as xid, id, receipts_ahead_xid::text as ahead_xid, receipts_ahead_id as ahead_id
           from relay_cursors where name = $1",
    )
    .bind(name)
    .fetch_optional(db)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let parse = |xid: String| xid.parse::<u64>().map_err(|e| sqlx::Error::Decode(Box::new(e)));
    let position = Position { xid: parse(row.try_get("xid")?)?, id: row.try_get("id")? };
    let receipts_ahead = match (row.try_get::<Option<String>, _>("ahead_xid")?, row.try_get::<Option<i64>, _>("ahead_id")?) {
        (Some(xid), Some(id)) => Some(Position { xid: parse(xid)?, id }),
        _ => None,
    };
    Ok(Some(Cursor { position, receipts_ahead }))
}

/// Stores `receipts` and the new `cursor` (when it changed), in one transaction on
/// the leader's session. The cursor's position only ever moves forward.
#[tracing::instrument(skip_all, fields(receipts = receipts.len(), cursor_id = cursor.map(|c| c.position.id)), err)]
pub async fn commit(
    conn: &mut PgConnection,
    topic: &str,
    receipts: &[Receipt],
    cursor: Option<Cursor>,
) -> Result<(), sqlx::Error> {
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    // Without waiting for the WAL flush: a Postgres crash can then lose only the last
    // receipts and cursor moves, whose rows are published again (at-least-once, as
    // after a relay crash). Anything that acts on the cursor (pruning) commits
    // durably later in the same WAL, which makes the moves it saw durable first.
    sqlx::query("set local synchronous_commit = off").execute(&mut *tx).await?;
    if !receipts.is_empty() {
        let ids: Vec<i64> = receipts.iter().map(|r| r.outbox_id).collect();
        let message_ids: Vec<Uuid> = receipts.iter().map(|r| r.message_id).collect();
        let partitions: Vec<i32> = receipts.iter().map(|r| r.partition).collect();
        let offsets: Vec<i64> = receipts.iter().map(|r| r.offset).collect();
        // A row republished after a crash keeps its first surviving receipt.
        sqlx::query(
            r#"insert into relay_receipts (outbox_id, topic, message_id, partition, "offset")
               select u.id, $1, u.message_id, u.partition, u.offset
                 from unnest($2::bigint[], $3::uuid[], $4::int[], $5::bigint[])
                      as u(id, message_id, partition, "offset")
               on conflict (outbox_id, topic) do nothing"#,
        )
        .bind(topic)
        .bind(ids)
        .bind(message_ids)
        .bind(partitions)
        .bind(offsets)
        .execute(&mut *tx)
        .await?;
    }
    if let Some(Cursor { position, receipts_ahead }) = cursor {
        sqlx::query(
            "update relay_cursors
                set xid = $2::xid8, id = $3, receipts_ahead_xid = $4::xid8, receipts_ahead_id = $5, updated_at = now()
              where name = $1 and (xid, id) <= ($2::xid8, $3)",
        )
        .bind(topic)
        .bind(position.xid_text())
        .bind(position.id)
        .bind(receipts_ahead.map(|p| p.xid_text()))
        .bind(receipts_ahead.map(|p| p.id))
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}
