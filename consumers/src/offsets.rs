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
    pub async fn load(&self, conn: &mut PgConnection) -> Result<Option<i64>, sqlx::Error> {
        sqlx::query_scalar(
            "select next_offset from consumer_offsets where group_name = $1 and topic = $2 and partition = $3",
        )
        .bind(self.group.name())
        .bind(&self.topic)
        .bind(self.partition)
        .fetch_optional(conn)
        .await
    }

    /// Sets the offset unconditionally: a new group's start, or a reset after
    /// OffsetOutOfRange.
    #[tracing::instrument(skip_all, fields(group = self.group.name(), partition = self.partition, offset), err)]
    pub async fn store(&self, conn: &mut PgConnection, offset: i64) -> Result<(), sqlx::Error> {
        sqlx::query(
            "insert into consumer_offsets (group_name, topic, partition, next_offset) values ($1, $2, $3, $4)
             on conflict (group_name, topic, partition)
             do update set next_offset = excluded.next_offset, updated_at = now()",
        )
        .bind(self.group.name())
        .bind(&self.topic)
        .bind(self.partition)
        .bind(offset)
        .execute(conn)
        .await?;
        Ok(())
    }

    /// Moves the offset from `from` to `to` inside the caller's transaction, which
    /// also holds the batch's effects; refuses when it is no longer at `from`.
    #[tracing::instrument(skip_all, fields(group = self.group.name(), partition = self.partition, from, to), err)]
    pub async fn advance(&self, conn: &mut PgConnection, from: i64, to: i64) -> Result<(), OffsetError> {
        let moved = sqlx::query(
            "update consumer_offsets set next_offset = $5, updated_at = now()
             where group_name = $1 and topic = $2 and partition = $3 and next_offset = $4",
        )
        .bind(self.group.name())
        .bind(&self.topic)
        .bind(self.partition)
        .bind(from)
        .bind(to)
        .execute(conn)
        .await?;
        if moved.rows_affected() != 1 {
            return Err(OffsetError::Fenced { group: self.group.name(), partition: self.partition, expected: from });
        }
        Ok(())
    }
}
