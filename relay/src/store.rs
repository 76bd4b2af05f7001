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

/// The cursor of relay `name`, created at the start of the outbox when missing.
#[tracing::instrument(skip_all, fields(name), err)]
pub async fn ensure_cursor(conn: &mut PgConnection, name: &str) -> Result<Position, sqlx::Error> {
    sqlx::query("insert into relay_cursors (name) values ($1) on conflict (name) do nothing")
        .bind(name)
        .execute(&mut *conn)
        .await?;
    Ok(load_cursor(&mut *conn, name).await?.unwrap_or_default())
}

/// The cursor of relay `name`, if it ever ran.
pub async fn load_cursor(db: impl PgExecutor<'_>, name: &str) -> Result<Option<Position>, sqlx::Error> {
    let row = sqlx::query("select xid::text as xid, id from relay_cursors where name = $1")
        .bind(name)
        .fetch_optional(db)
        .await?;
    row.map(|row| {
        let xid: String = row.try_get("xid")?;
        Ok(Position { xid: xid.parse().map_err(|e| sqlx::Error::Decode(Box::new(e)))?, id: row.try_get("id")? })
    })
    .transpose()
}

/// Stores `receipts` and moves the cursor to `cursor`, in one transaction on the
/// leader's session. The cursor only ever moves forward.
#[tracing::instrument(skip_all, fields(receipts = receipts.len(), cursor_id = cursor.map(|c| c.id)), err)]
pub async fn commit(
    conn: &mut PgConnection,
    topic: &str,
    receipts: &[Receipt],
    cursor: Option<Position>,
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
    if let Some(cursor) = cursor {
        sqlx::query(
            "update relay_cursors set xid = $2::xid8, id = $3, updated_at = now()
              where name = $1 and (xid, id) < ($2::xid8, $3)",
        )
        .bind(topic)
        .bind(cursor.xid_text())
        .bind(cursor.id)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}
