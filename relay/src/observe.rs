//! Backlog and watermark gauges, and the log line naming the transaction that holds
//! the watermark back; rows restored from an earlier cluster count as backlog, and a
//! cursor that cannot belong to this database shows as `relay_cursor_impossible`.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

use crate::{
    generation, metric_names,
    store::{self, Generation},
};

/// The backend whose open transaction is the oldest one still running.
#[derive(Debug, Clone, PartialEq)]
pub struct Blocker {
    pub pid: i32,
    pub application_name: Option<String>,
    pub state: Option<String>,
    pub xact_start: Option<DateTime<Utc>>,
    pub query: Option<String>,
}

/// One look at the outbox as the relay sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// Committed rows after the cursor: exact up to [`COUNTED_UP_TO`], estimated above.
    pub backlog_rows: i64,
    /// Age of the first of them in commit order.
    pub oldest_unpublished_age: Duration,
    /// Age of the first committed row in commit order that is not yet eligible because
    /// an older transaction is still open; zero when none waits.
    pub watermark_stall: Duration,
    /// Who holds the watermark, looked up once the stall passes the warning threshold.
    pub blocker: Option<Blocker>,
    /// Of the backlog, rows written on an earlier cluster (restored or moved here).
    pub earlier_cluster_rows: i64,
    /// Why the cursor cannot belong to this database, when it cannot.
    pub cursor_problem: Option<String>,
}

pub struct Observer {
    pool: PgPool,
    topic: String,
    stall_warning: Duration,
    last_warned: Option<Instant>,
}

/// A backlog up to this many rows is counted; a larger one is estimated from the
/// outbox ids after the cursor's (ids that a rolled-back write took count too).
const COUNTED_UP_TO: i64 = 10_000;

/// The backlog as one statement of [`Observer::tick`] measures it.
struct Backlog {
    /// Rows after the cursor, counted up to `COUNTED_UP_TO`.
    counted: i64,
    /// Ids after the cursor: the backlog's size once counting stops.
    ids_after: i64,
    /// Seconds since the oldest unpublished row was written.
    oldest: Option<f64>,
    /// Seconds since the oldest row waiting behind an open transaction was written.
    stall: Option<f64>,
    /// Rows of earlier clusters still to publish.
    earlier: i64,
}

/// How often a continuing stall is logged again.
const STALL_LOG_EVERY: Duration = Duration::from_secs(30);

fn seconds(value: Option<f64>) -> Duration {
    Duration::from_secs_f64(value.unwrap_or(0.0).max(0.0))
}

impl Observer {
    pub fn new(pool: PgPool, topic: &str, stall_warning: Duration) -> Self {
        Self { pool, topic: topic.to_owned(), stall_warning, last_warned: None }
    }

    /// Measures, updates the gauges and logs a stall past the threshold.
    #[tracing::instrument(skip_all, err)]
    pub async fn tick(&mut self) -> Result<Observation, sqlx::Error> {
        // Rows after the cursor: all of them are committed (we can see them); those
        // at or above xmin wait for an older transaction. Every part is an index
        // lookup or a bounded scan, never a count of the whole backlog, whose cost
        // grows with it (docs/NOTES.md, "The relay's observer").
        //
        // One transaction for all of it: each statement on its own would be a
        // transaction, and the observer runs on every relay, leader or not, every
        // RELAY_OBSERVE_INTERVAL, idle or not.
        let mut tx = self.pool.begin().await?;
        let cursor = store::load_cursor(&mut *tx, &self.topic).await?.unwrap_or_default().position;
        let cluster = generation::current_cluster(&mut *tx).await?;
        let cursor_problem = generation::cursor_problem(&mut *tx, &self.topic).await?;
        // No cursor yet, or none usable: measured as if from the start of this cluster's rows.
        let generation = store::load_generation(&mut *tx, &self.topic)
            .await?
            .flatten()
            .unwrap_or(Generation { cluster, since_id: 0 });
        let row = if generation.cluster == cluster {
            // The cursor goes in as parameters: joined in as a row, it let the planner
            // walk the whole outbox index whenever nothing was after the cursor. Rows
            // of this cluster are below its next xid; the bound keeps the scans off
            // the rows of an earlier cluster, whose xids may be anything.
            sqlx::query_as!(
                Backlog,
                r#"select (select count(*) from (select from outbox
                                                where (xid, id) > ($1::text::xid8, $2) and id >= $4
                                                  and xid < pg_snapshot_xmax(pg_current_snapshot())
                                                limit $3) b) as "counted!",
                        coalesce((select max(id) from outbox), 0) - greatest($2, $4 - 1) as "ids_after!",
                        extract(epoch from clock_timestamp() - (
                            select created_at from outbox
                             where (xid, id) > ($1::text::xid8, $2) and id >= $4
                               and xid < pg_snapshot_xmax(pg_current_snapshot())
                             order by xid, id limit 1))::float8 as oldest,
                        extract(epoch from clock_timestamp() - (
                            select created_at from outbox
                             where xid >= pg_snapshot_xmin(pg_current_snapshot())
                               and xid < pg_snapshot_xmax(pg_current_snapshot()) and written_on = $5
                             order by xid, id limit 1))::float8 as stall,
                        0::bigint as "earlier!""#,
                cursor.xid_text(),
                cursor.id,
                COUNTED_UP_TO,
                generation.since_id,
                cluster,
            )
            .fetch_one(&mut *tx)
            .await?
        } else {
            // The cursor is among an earlier cluster's rows: everything from its
            // generation's first id on that is not behind it, in id order (the xids of
            // different clusters do not compare). Scans the published rows of that
            // generation too, but only until the relay has moved past it.
            sqlx::query_as!(
                Backlog,
                r#"with pending as (
                    select written_on, created_at from outbox
                     where id >= $4 and (written_on <> $6 or (xid, id) > ($1::text::xid8, $2))
                     order by id limit $3)
                 select (select count(*) from pending) as "counted!",
                        coalesce((select max(id) from outbox), 0) - greatest($2, $4 - 1) as "ids_after!",
                        extract(epoch from clock_timestamp() - (select min(created_at) from pending))::float8 as oldest,
                        extract(epoch from clock_timestamp() - (
                            select created_at from outbox
                             where xid >= pg_snapshot_xmin(pg_current_snapshot())
                               and xid < pg_snapshot_xmax(pg_current_snapshot()) and written_on = $5
                             order by xid, id limit 1))::float8 as stall,
                        (select count(*) from pending where written_on <> $5) as "earlier!""#,
                cursor.xid_text(),
                cursor.id,
                COUNTED_UP_TO,
                generation.since_id,
                cluster,
                generation.cluster,
            )
            .fetch_one(&mut *tx)
            .await?
        };
        let counted = row.counted;
        let backlog_rows = if counted < COUNTED_UP_TO { counted } else { counted.max(row.ids_after) };
        let oldest_unpublished_age = seconds(row.oldest);
        let watermark_stall = seconds(row.stall);
        let earlier_cluster_rows = row.earlier;
        metrics::gauge!(metric_names::EARLIER_CLUSTER_ROWS).set(earlier_cluster_rows as f64);
        metrics::gauge!(metric_names::CURSOR_IMPOSSIBLE).set(if cursor_problem.is_some() { 1.0 } else { 0.0 });
        metrics::gauge!(metric_names::BACKLOG_ROWS).set(backlog_rows as f64);
        metrics::gauge!(metric_names::OLDEST_UNPUBLISHED_AGE).set(oldest_unpublished_age.as_secs_f64());
        metrics::gauge!(metric_names::WATERMARK_STALL).set(watermark_stall.as_secs_f64());
        // Replays run as their own short-lived processes and log what they did; the
        // running relay is what Prometheus scrapes, so it reports their total.
        let replayed = sqlx::query_scalar!(
            r#"select coalesce(sum(replayed), 0)::bigint as "replayed!" from relay_replays where topic = $1"#,
            self.topic,
        )
        .fetch_one(&mut *tx)
        .await?;
        metrics::counter!(metric_names::REPLAYED).absolute(replayed.max(0) as u64);

        let mut blocker = None;
        if !watermark_stall.is_zero() && watermark_stall >= self.stall_warning {
            blocker = blocker_of_watermark(&mut tx).await?;
            if self.last_warned.is_none_or(|at| at.elapsed() >= STALL_LOG_EVERY) {
                self.last_warned = Some(Instant::now());
                match &blocker {
                    Some(holder) => tracing::warn!(
                        stall_seconds = watermark_stall.as_secs_f64(),
                        pid = holder.pid,
                        application_name = holder.application_name.as_deref().unwrap_or(""),
                        state = holder.state.as_deref().unwrap_or(""),
                        xact_start = ?holder.xact_start,
                        query = holder.query.as_deref().unwrap_or(""),
                        "committed outbox rows wait behind an open transaction"
                    ),
                    None => tracing::warn!(
                        stall_seconds = watermark_stall.as_secs_f64(),
                        "committed outbox rows wait behind an open transaction (a prepared transaction?)"
                    ),
                }
            }
        } else {
            self.last_warned = None;
        }
        tx.commit().await?;
        Ok(Observation {
            backlog_rows,
            oldest_unpublished_age,
            watermark_stall,
            blocker,
            earlier_cluster_rows,
            cursor_problem,
        })
    }
}

/// The session with the oldest transaction id still running: the snapshot's xmin.
async fn blocker_of_watermark(conn: &mut PgConnection) -> Result<Option<Blocker>, sqlx::Error> {
    sqlx::query_as!(
        Blocker,
        r#"select pid as "pid!", application_name, state, xact_start, left(query, 500) as query
             from pg_stat_activity
            where backend_xid is not null
            order by age(backend_xid) desc
            limit 1"#,
    )
    .fetch_optional(conn)
    .await
}
