//! Generations: the outbox rows written on one Postgres cluster. After a restore or a
//! move to another cluster the relay publishes the rows of earlier clusters first,
//! then moves its cursor on; a cursor that cannot belong to this database stops it.

use sqlx::{PgConnection, PgExecutor, PgPool};

use crate::{error::RelayError, metric_names, store::Generation};

/// The `system_identifier` of the cluster this session runs on (cached per session).
pub async fn current_cluster(db: impl PgExecutor<'_>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(r#"select outbox_cluster() as "cluster!""#).fetch_one(db).await
}

/// Why relay `topic`'s cursor cannot be used on this database, if it cannot: it has
/// no cluster, or it is on this cluster at a transaction this cluster has not
/// reached (its rows were restored here from another cluster without their cluster).
/// `pg_snapshot_xmax`, not `pg_current_xact_id()`, so that checking takes no xid.
#[tracing::instrument(skip_all, err)]
pub async fn cursor_problem(db: impl PgExecutor<'_>, topic: &str) -> Result<Option<String>, sqlx::Error> {
    let problem = sqlx::query_scalar!(
        "select case
                  when c.cluster is null then 'has no cluster (relay_cursors.cluster is null)'
                  when c.cluster = outbox_cluster() and c.xid >= pg_snapshot_xmax(pg_current_snapshot())
                  then format('is at transaction %s of this cluster, which has not reached it (next: %s)',
                              c.xid, pg_snapshot_xmax(pg_current_snapshot()))
                end
           from relay_cursors c where c.name = $1",
        topic,
    )
    .fetch_optional(db)
    .await?;
    Ok(problem.flatten())
}

/// The generation after `from`, once every row of `from` is published: the cluster
/// of the first row above it (the current cluster when there is none), starting
/// right after `from`'s last row. Identity ids continue across dump and restore, so
/// no row of a later generation, committed or not, has an id at or below that row.
#[tracing::instrument(skip_all, fields(from.cluster = from.cluster, from.since_id = from.since_id), err)]
pub async fn next(pool: &PgPool, from: Generation, current: i64) -> Result<Generation, sqlx::Error> {
    // Both walk the primary key from `from.since_id`: once per move, not per read.
    let next_row = sqlx::query!(
        "select o.id, o.written_on from outbox o
          where o.id >= $2 and o.written_on <> $1
          order by o.id limit 1",
        from.cluster,
        from.since_id,
    )
    .fetch_optional(pool)
    .await?;
    let (next_id, next_cluster) = next_row.map_or((None, None), |row| (Some(row.id), Some(row.written_on)));
    let last_id = sqlx::query_scalar!(
        "select max(id) from outbox where written_on = $1 and id >= $2 and ($3::bigint is null or id < $3)",
        from.cluster,
        from.since_id,
        next_id,
    )
    .fetch_one(pool)
    .await?;
    Ok(Generation { cluster: next_cluster.unwrap_or(current), since_id: last_id.map_or(from.since_id, |id| id + 1) })
}

/// Moves relay `topic`'s cursor from generation `from` to the start of `to`, on the
/// leader session; only from `from`, so a cursor changed meanwhile (by hand) stays and
/// the leader starts over from what is stored.
#[tracing::instrument(skip_all, fields(to.cluster = to.cluster, to.since_id = to.since_id), err)]
pub async fn enter(conn: &mut PgConnection, topic: &str, from: Generation, to: Generation) -> Result<(), RelayError> {
    let moved = sqlx::query!(
        "update relay_cursors
            set cluster = $4, since_id = $5, xid = '0'::xid8, id = 0,
                receipts_ahead_xid = null, receipts_ahead_id = null, updated_at = now()
          where name = $1 and cluster = $2 and since_id = $3",
        topic,
        from.cluster,
        from.since_id,
        to.cluster,
        to.since_id,
    )
    .execute(conn)
    .await?
    .rows_affected();
    if moved == 0 {
        return Err(RelayError::CursorChanged);
    }
    metrics::counter!(metric_names::CLUSTER_MOVES).increment(1);
    Ok(())
}
