//! Reading outbox rows in commit order (`rsvp_contract::outbox_record` turns them
//! into Kafka records).

use chrono::{DateTime, Utc};
use rsvp_contract::outbox_record::{OutboxColumns, OutboxMessage};
use sqlx::{postgres::PgRow, PgPool, Row};
use uuid::Uuid;

/// A position in commit order: the writing transaction, then the row id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Position {
    pub xid: u64,
    pub id: i64,
}

impl Position {
    /// `xid8` travels as text: sqlx has no type for it.
    pub fn xid_text(&self) -> String {
        self.xid.to_string()
    }
}

/// One outbox row: where it is in commit order, its message, and whether it went out.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    pub position: Position,
    pub message: OutboxMessage,
    /// A receipt already exists for the relay's topic: acknowledged in an earlier step.
    pub published: bool,
}

/// An outbox row's columns as a read selects them (see [`select_rows`]).
pub struct SelectedRow {
    pub id: i64,
    /// `xid8` as text: sqlx has no type for it.
    pub xid: String,
    pub kafka_key: String,
    pub message_id: Uuid,
    pub event_type: String,
    pub rsvp_version: i64,
    pub payload: String,
    pub traceparent: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// `select <row columns> from outbox o <rest>`, for the reads whose condition is
/// composed at run time (replays); [`read_eligible`] spells the same columns out in
/// its checked statements. The header fields inside the payload are picked out by
/// [`OutboxMessage::from_columns`] rather than with `->>` here.
pub fn select_rows(rest: &str) -> String {
    format!(
        "select o.id, o.xid::text as xid, o.kafka_key, o.message_id, o.event_type, o.rsvp_version,
                o.payload::text as payload, o.traceparent, o.created_at
           from outbox o {rest}"
    )
}

impl OutboxRow {
    /// A row of a [`select_rows`] statement.
    pub fn from_row(row: &PgRow) -> Result<Self, sqlx::Error> {
        Self::from_selected(SelectedRow {
            id: row.try_get("id")?,
            xid: row.try_get("xid")?,
            kafka_key: row.try_get("kafka_key")?,
            message_id: row.try_get("message_id")?,
            event_type: row.try_get("event_type")?,
            rsvp_version: row.try_get("rsvp_version")?,
            payload: row.try_get("payload")?,
            traceparent: row.try_get("traceparent")?,
            created_at: row.try_get("created_at")?,
        })
    }

    pub fn from_selected(row: SelectedRow) -> Result<Self, sqlx::Error> {
        let xid = row.xid.parse::<u64>().map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
        let message = OutboxMessage::from_columns(OutboxColumns {
            kafka_key: row.kafka_key,
            message_id: row.message_id,
            event_type: row.event_type,
            rsvp_version: row.rsvp_version,
            payload: row.payload,
            traceparent: row.traceparent,
            created_at: row.created_at,
        });
        Ok(Self { position: Position { xid, id: row.id }, message, published: false })
    }
}

/// Which rows a read may return: one generation, the rows written on `cluster` with
/// an id from `since_id` on (see `docs/relay.md`, "Restores and moves").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scope {
    pub cluster: i64,
    pub since_id: i64,
    /// The rows were written on another cluster than the one the relay reads from:
    /// all of them are committed, and their xids are not comparable with this
    /// cluster's snapshot.
    pub earlier_cluster: bool,
}

/// Up to `limit` rows of `scope` after `after` in commit order. On the current
/// cluster, only rows from transactions older than every transaction still open:
/// such a row can no longer be joined by a row that sorts before it. Rows up to
/// `receipts_until` are checked for a receipt of `topic` (see
/// [`crate::store::Cursor::receipts_ahead`]); later rows cannot have one.
#[tracing::instrument(skip_all, fields(after_id = after.id, limit, earlier_cluster = scope.earlier_cluster), err)]
pub async fn read_eligible(
    db: &PgPool,
    topic: &str,
    scope: Scope,
    after: Position,
    limit: u32,
    receipts_until: Option<Position>,
) -> Result<Vec<OutboxRow>, sqlx::Error> {
    // Two texts rather than one with a flag: a generic plan of `$flag or xid < xmin`
    // could no longer bound the index scan by the snapshot. The generation test is
    // wrapped in a `case`, which the planner cannot estimate and so takes as
    // unselective: it then walks the (xid, id) index rather than sorting the whole
    // backlog, even on a table without statistics yet (a fresh restore, a bulk load;
    // docs/NOTES.md, "The relay's read").
    let rows = if scope.earlier_cluster {
        sqlx::query_as!(
            SelectedRow,
            r#"select o.id, o.xid::text as "xid!", o.kafka_key, o.message_id, o.event_type, o.rsvp_version,
                      o.payload::text as "payload!", o.traceparent, o.created_at
                 from outbox o
                where (o.xid, o.id) > ($1::text::xid8, $2)
                  and case when o.written_on = $4 then o.id >= $5 else false end
                order by o.xid, o.id
                limit $3"#,
            after.xid_text(),
            after.id,
            i64::from(limit),
            scope.cluster,
            scope.since_id,
        )
        .fetch_all(db)
        .await?
    } else {
        sqlx::query_as!(
            SelectedRow,
            r#"select o.id, o.xid::text as "xid!", o.kafka_key, o.message_id, o.event_type, o.rsvp_version,
                      o.payload::text as "payload!", o.traceparent, o.created_at
                 from outbox o
                where (o.xid, o.id) > ($1::text::xid8, $2)
                  and o.xid < pg_snapshot_xmin(pg_current_snapshot())
                  and case when o.written_on = $4 then o.id >= $5 else false end
                order by o.xid, o.id
                limit $3"#,
            after.xid_text(),
            after.id,
            i64::from(limit),
            scope.cluster,
            scope.since_id,
        )
        .fetch_all(db)
        .await?
    };
    let mut rows: Vec<OutboxRow> = rows.into_iter().map(OutboxRow::from_selected).collect::<Result<_, _>>()?;
    let Some(until) = receipts_until else { return Ok(rows) };
    // A separate lookup: every receipt holding a row after `after` ends after it,
    // which the receipts' (topic, last row) index finds without older receipts.
    if rows.first().is_some_and(|row| row.position <= until) {
        let published: Vec<i64> = sqlx::query_scalar!(
            r#"select unnest(outbox_ids) as "id!" from relay_receipts where topic = $1 and (last_xid, last_id) > ($2::text::xid8, $3)"#,
            topic,
            after.xid_text(),
            after.id,
        )
        .fetch_all(db)
        .await?;
        let published: std::collections::HashSet<i64> = published.into_iter().collect();
        for row in rows.iter_mut().take_while(|row| row.position <= until) {
            row.published = published.contains(&row.position.id);
        }
    }
    Ok(rows)
}
