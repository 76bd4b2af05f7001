//! Each group's next offset per partition, stored in the database its effects go to.

use sqlx::PgConnection;

use crate::group::Group;

/// Where a partition's offset row is.
#[derive(Debug, Clone)]
pub struct OffsetKey {
    pub group: Group,
    pub topic: String,
    pub partition: i32,
}

/// A record the stored offset was taken after: where it was and what it was. The log
/// still holds it there unless the broker lost the log (or retention removed it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    /// The first record of the last applied fetch: a record batch's start.
    pub offset: i64,
    /// [`crate::record::RawRecord::fingerprint`] of that record.
    pub fingerprint: Vec<u8>,
}

/// A partition's stored position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub next_offset: i64,
    pub anchor: Option<Anchor>,
}

#[derive(Debug, thiserror::Error)]
pub enum OffsetError {
    /// The stored offset is not the one this worker read from: another instance
    /// advanced it, so this worker no longer owns the partition.
    #[error("the offset of {group} partition {partition} moved from under us (expected {expected})")]
    Fenced { group: &'static str, partition: i32, expected: i64 },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl OffsetKey {
    #[tracing::instrument(skip_all, fields(group = self.group.name(), partition = self.partition), err)]
    pub async fn load(&self, conn: &mut PgConnection) -> Result<Option<Stored>, sqlx::Error> {
        let row = sqlx::query!(
            "select next_offset, anchor_offset, anchor_fingerprint from consumer_offsets
             where group_name = $1 and topic = $2 and partition = $3",
            self.group.name(),
            self.topic,
            self.partition,
        )
        .fetch_optional(conn)
        .await?;
        Ok(row.map(|row| Stored {
            next_offset: row.next_offset,
            anchor: row
                .anchor_offset
                .zip(row.anchor_fingerprint)
                .map(|(offset, fingerprint)| Anchor { offset, fingerprint }),
        }))
    }

    /// Sets the offset unconditionally: a new group's start, or a reset after
    /// OffsetOutOfRange.
    #[tracing::instrument(skip_all, fields(group = self.group.name(), partition = self.partition, offset), err)]
    pub async fn store(&self, conn: &mut PgConnection, offset: i64) -> Result<(), sqlx::Error> {
        sqlx::query!(
            "insert into consumer_offsets (group_name, topic, partition, next_offset) values ($1, $2, $3, $4)
             on conflict (group_name, topic, partition)
             do update set next_offset = excluded.next_offset, anchor_offset = null, anchor_fingerprint = null,
                           updated_at = now()",
            self.group.name(),
            self.topic,
            self.partition,
            offset,
        )
        .execute(conn)
        .await?;
        Ok(())
    }

    /// Moves the offset from `from` to `to` inside the caller's transaction, which
    /// also holds the batch's effects; refuses when it is no longer at `from`.
    /// Forgets the anchor: [`OffsetKey::advance_after`] keeps one.
    pub async fn advance(&self, conn: &mut PgConnection, from: i64, to: i64) -> Result<(), OffsetError> {
        self.advance_after(conn, from, to, None).await
    }

    /// [`OffsetKey::advance`], storing the record the new offset was taken after.
    #[tracing::instrument(skip_all, fields(group = self.group.name(), partition = self.partition, from, to), err)]
    pub async fn advance_after(
        &self,
        conn: &mut PgConnection,
        from: i64,
        to: i64,
        anchor: Option<&Anchor>,
    ) -> Result<(), OffsetError> {
        let moved = sqlx::query!(
            "update consumer_offsets set next_offset = $5, anchor_offset = $6, anchor_fingerprint = $7, updated_at = now()
             where group_name = $1 and topic = $2 and partition = $3 and next_offset = $4",
            self.group.name(),
            self.topic,
            self.partition,
            from,
            to,
            anchor.map(|a| a.offset),
            anchor.map(|a| a.fingerprint.as_slice()),
        )
        .execute(conn)
        .await?;
        if moved.rows_affected() != 1 {
            return Err(OffsetError::Fenced { group: self.group.name(), partition: self.partition, expected: from });
        }
        Ok(())
    }
}
