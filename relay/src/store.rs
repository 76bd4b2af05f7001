//! The relay's cursor and receipts in Postgres.

use crate::outbox::{Position, Scope};
use sqlx::{PgConnection, PgExecutor};

/// Where one produced batch landed: its rows, in offset order from `base_offset`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub partition: i32,
    pub base_offset: i64,
    pub outbox_ids: Vec<i64>,
    /// The batch's last row in commit order.
    pub last: Position,
}

impl Receipt {
    /// The receipts of one partition's acknowledged batch: `rows` (outbox id and
    /// position, in commit order) at `offsets`. One receipt per run of consecutive
    /// offsets, which a batch always is on Kafka; anything else still gets receipts
    /// that say where each row is.
    pub fn of_batch(partition: i32, rows: impl IntoIterator<Item = (Position, i64)>) -> Vec<Receipt> {
        let mut receipts: Vec<Receipt> = Vec::new();
        for (position, offset) in rows {
            match receipts.last_mut() {
                Some(receipt) if receipt.base_offset + receipt.outbox_ids.len() as i64 == offset => {
                    receipt.outbox_ids.push(position.id);
                    receipt.last = position;
                }
                _ => receipts.push(Receipt {
                    partition,
                    base_offset: offset,
                    outbox_ids: vec![position.id],
                    last: position,
                }),
            }
        }
        receipts
    }
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

/// The generation a cursor's position is in: the rows written on `cluster` with an
/// id from `since_id` on. Every row of an earlier generation has a smaller id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Generation {
    pub cluster: i64,
    pub since_id: i64,
}

impl Generation {
    /// The rows to read in this generation while the relay runs on cluster `current`.
    pub fn scope(self, current: i64) -> Scope {
        Scope { cluster: self.cluster, since_id: self.since_id, earlier_cluster: self.cluster != current }
    }
}

/// The generation of relay `name`'s cursor: `Some(None)` when the cursor has no
/// cluster (written by hand), which the relay refuses to publish from.
pub async fn load_generation(db: impl PgExecutor<'_>, name: &str) -> Result<Option<Option<Generation>>, sqlx::Error> {
    let row =
        sqlx::query!("select cluster, since_id from relay_cursors where name = $1", name).fetch_optional(db).await?;
    Ok(row.map(|row| row.cluster.map(|cluster| Generation { cluster, since_id: row.since_id })))
}

/// The cursor of relay `name`, created at the start of the outbox when missing: in
/// the generation of the first row (restored rows of another cluster come first).
#[tracing::instrument(skip_all, fields(name), err)]
pub async fn ensure_cursor(conn: &mut PgConnection, name: &str) -> Result<Cursor, sqlx::Error> {
    sqlx::query!(
        "insert into relay_cursors (name, cluster)
         values ($1, coalesce((select written_on from outbox order by id limit 1), outbox_cluster()))
         on conflict (name) do nothing",
        name,
    )
    .execute(&mut *conn)
    .await?;
    Ok(load_cursor(&mut *conn, name).await?.unwrap_or_default())
}

/// The cursor of relay `name`, if it ever ran.
pub async fn load_cursor(db: impl PgExecutor<'_>, name: &str) -> Result<Option<Cursor>, sqlx::Error> {
    let row = sqlx::query!(
        r#"select xid::text as "xid!", id, receipts_ahead_xid::text as ahead_xid, receipts_ahead_id as ahead_id
             from relay_cursors where name = $1"#,
        name,
    )
    .fetch_optional(db)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let parse = |xid: String| xid.parse::<u64>().map_err(|e| sqlx::Error::Decode(Box::new(e)));
    let position = Position { xid: parse(row.xid)?, id: row.id };
    let receipts_ahead = match (row.ahead_xid, row.ahead_id) {
        (Some(xid), Some(id)) => Some(Position { xid: parse(xid)?, id }),
        _ => None,
    };
    Ok(Some(Cursor { position, receipts_ahead }))
}

/// Stores `receipts` and the new `cursor` (when it changed) in one statement, so in
/// one transaction and one round trip, on the leader's session. The cursor's position
/// only ever moves forward. The guard compares positions inside the stored
/// generation: only the leader session moves the cursor, and it leaves a generation
/// only through [`crate::generation::enter`].
///
/// The leader's session commits without waiting for the WAL flush
/// ([`relax_durability`]): a Postgres crash can then lose only the last receipts and
/// cursor moves, whose rows are published again (at-least-once, as after a relay
/// crash). Anything that acts on the cursor (pruning) commits durably later in the
/// same WAL, which makes the moves it saw durable first.
#[tracing::instrument(skip_all, fields(receipts = receipts.len(), cursor_id = cursor.map(|c| c.position.id)), err)]
pub async fn commit(
    conn: &mut PgConnection,
    topic: &str,
    receipts: &[Receipt],
    cursor: Option<Cursor>,
) -> Result<(), sqlx::Error> {
    // Runs even with nothing to store: the leader session's lease counts from a
    // round trip that succeeded, so a commit that returned without one would vouch
    // for a session nobody checked (`rsvp_contract::role_lock`).
    // All receipts' ids in one array; each receipt takes its slice [first, last].
    let mut ids = Vec::new();
    let (mut first, mut last) = (Vec::new(), Vec::new());
    for receipt in receipts {
        first.push(ids.len() as i32 + 1);
        ids.extend_from_slice(&receipt.outbox_ids);
        last.push(ids.len() as i32);
    }
    let partitions: Vec<i32> = receipts.iter().map(|r| r.partition).collect();
    let base_offsets: Vec<i64> = receipts.iter().map(|r| r.base_offset).collect();
    let last_xids: Vec<String> = receipts.iter().map(|r| r.last.xid_text()).collect();
    let last_ids: Vec<i64> = receipts.iter().map(|r| r.last.id).collect();
    let position = cursor.map(|c| c.position);
    let receipts_ahead = cursor.and_then(|c| c.receipts_ahead);
    // The same statement notifies the consumers which partitions got records
    // (`rsvp_contract::published`), delivered when it commits; `notified` is
    // evaluated because the last select reads it.
    sqlx::query!(
        r#"with receipted as (
             insert into relay_receipts (topic, partition, base_offset, outbox_ids, last_xid, last_id)
             select $1, u.partition, u.base_offset, ($2::bigint[])[u.first:u.last], u.last_xid::xid8, u.last_id
               from unnest($3::int[], $4::bigint[], $5::int[], $6::int[], $7::text[], $8::bigint[])
                    as u(partition, base_offset, first, last, last_xid, last_id)
             returning partition),
           notified as (
             select pg_notify($9, $1 || ' ' || string_agg(distinct partition::text, ','))
               from receipted having count(*) > 0),
           moved as (
             update relay_cursors
                set xid = $10::text::xid8, id = $11, receipts_ahead_xid = $12::text::xid8, receipts_ahead_id = $13,
                    updated_at = now()
              where name = $1 and $11::bigint is not null and (xid, id) <= ($10::text::xid8, $11)
             returning 1)
         select (select count(*) from notified) as "notifications!", (select count(*) from moved) as "moved!""#,
        topic,
        &ids,
        &partitions,
        &base_offsets,
        &first,
        &last,
        &last_xids,
        &last_ids,
        rsvp_contract::published::CHANNEL,
        position.map(|p| p.xid_text()),
        position.map(|p| p.id),
        receipts_ahead.map(|p| p.xid_text()),
        receipts_ahead.map(|p| p.id),
    )
    .fetch_one(conn)
    .await?;
    Ok(())
}

/// Makes the leader's session commit without waiting for the WAL flush; see [`commit`].
/// The session's other writes (creating the cursor, entering a generation) are redone
/// by the next leader when a crash loses them.
pub async fn relax_durability(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    // A runtime query: Postgres cannot prepare a utility statement, which the query
    // macros need to check it.
    sqlx::query("set synchronous_commit = off").execute(conn).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(id: i64) -> Position {
        Position { xid: 7, id }
    }

    #[test]
    fn a_batch_at_consecutive_offsets_gets_one_receipt_ending_at_its_last_row() {
        let receipts = Receipt::of_batch(2, [(at(3), 40), (at(5), 41), (at(9), 42)]);
        assert_eq!(receipts, vec![Receipt { partition: 2, base_offset: 40, outbox_ids: vec![3, 5, 9], last: at(9) }]);
    }

    #[test]
    fn a_gap_in_the_offsets_starts_another_receipt() {
        let receipts = Receipt::of_batch(0, [(at(1), 10), (at(2), 11), (at(4), 15), (at(6), 16)]);
        assert_eq!(
            receipts,
            vec![
                Receipt { partition: 0, base_offset: 10, outbox_ids: vec![1, 2], last: at(2) },
                Receipt { partition: 0, base_offset: 15, outbox_ids: vec![4, 6], last: at(6) },
            ]
        );
        assert!(Receipt::of_batch(0, []).is_empty());
    }
}
