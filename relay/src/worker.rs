//! One publishing step of the leader: take eligible rows after the cursor, produce
//! them (one batch per partition, all partitions at once), then store receipts and
//! move the cursor over what the broker acknowledged. While a batch is in flight the
//! next one is read ahead on a pool connection; it is used only when the step that
//! started it moved the cursor over its whole batch, and read again otherwise.

use std::collections::{BTreeMap, HashSet};

use chrono::Utc;
use rsvp_contract::role_lock::RoleSession;
use sqlx::PgPool;
use tokio::task::{JoinHandle, JoinSet};

use crate::{
    batches::{self, Batch, Plan},
    config::Settings,
    error::{RelayError, RUNBOOK},
    generation,
    kafka::{Kafka, TopicMode},
    leader::Leader,
    metric_names,
    outbox::{self, OutboxRow, Position, Scope},
    store::{self, Cursor, Generation, Receipt},
};

/// What a step did; tests step until [`StepOutcome::Idle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepOutcome {
    /// Rows were published (or skipped as already published) and the cursor moved.
    Published { rows: usize },
    /// No row is eligible: nothing new, or new rows wait behind an open transaction.
    Idle,
}

/// The leader's publishing state: its session, the Kafka client and the cursor.
pub struct Worker {
    leader: Leader,
    settings: Settings,
    pool: PgPool,
    kafka: Option<Kafka>,
    cursor: Cursor,
    /// The rows the cursor is among; see [`crate::generation`].
    generation: Generation,
    /// The cluster the leader session runs on.
    cluster: i64,
    read_ahead: Option<ReadAhead>,
    /// `RELAY_MAX_BATCH_BYTES`, or less once the broker refused a batch below it.
    batch_limit: usize,
}

/// One partition's batch as the broker answered it.
struct Produced {
    partition: i32,
    /// Indexes of the batch's rows in the step's rows.
    indexes: Vec<usize>,
    bytes: usize,
    result: Result<Vec<i64>, RelayError>,
}

/// What the broker acknowledged of a step's batches, and what it did not.
#[derive(Default)]
struct Acknowledged {
    receipts: Vec<Receipt>,
    /// Partitions whose batch was not acknowledged.
    failed: HashSet<i32>,
    first_error: Option<RelayError>,
    /// Rows of batches the broker refused as too large: sent again, split, next step.
    refused_rows: usize,
}

/// Rows after `after`, being read while the batch that ends at `after` is in flight.
struct ReadAhead {
    after: Position,
    rows: JoinHandle<Result<Vec<OutboxRow>, sqlx::Error>>,
}

impl ReadAhead {
    fn start(
        pool: &PgPool,
        settings: &Settings,
        scope: Scope,
        after: Position,
        receipts_until: Option<Position>,
    ) -> Self {
        let (pool, topic, limit) = (pool.clone(), settings.kafka.topic.clone(), settings.batch_rows);
        let rows =
            tokio::spawn(
                async move { outbox::read_eligible(&pool, &topic, scope, after, limit, receipts_until).await },
            );
        Self { after, rows }
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.rows.abort();
    }
}

impl Worker {
    /// Starts publishing after the stored cursor (creating it at the outbox start).
    /// Reads go through `pool`; receipts and the cursor through the leader session.
    /// Refuses a cursor that cannot belong to this database ([`RelayError::CursorImpossible`]).
    pub async fn start(mut leader: Leader, settings: Settings, pool: PgPool) -> Result<Self, RelayError> {
        let topic = &settings.kafka.topic;
        let (cursor, problem, stored, cluster) = leader
            .session
            .run(async |conn| -> Result<_, sqlx::Error> {
                store::relax_durability(&mut *conn).await?;
                let cursor = store::ensure_cursor(&mut *conn, topic).await?;
                let problem = generation::cursor_problem(&mut *conn, topic).await?;
                let stored = store::load_generation(&mut *conn, topic).await?.flatten();
                let cluster = generation::current_cluster(&mut *conn).await?;
                Ok((cursor, problem, stored, cluster))
            })
            .await??;
        let (Some(generation), None) = (stored, &problem) else {
            let problem = problem.unwrap_or_else(|| "has no cluster".into());
            tracing::error!(%problem, runbook = RUNBOOK, "the relay cursor cannot belong to this database; not publishing");
            leader.resign().await;
            return Err(RelayError::CursorImpossible { problem });
        };
        tracing::info!(
            cursor_xid = cursor.position.xid, cursor_id = cursor.position.id, receipts_ahead = ?cursor.receipts_ahead,
            cursor_cluster = generation.cluster, since_id = generation.since_id, cluster,
            "leading: publishing after the cursor"
        );
        if generation.cluster != cluster {
            tracing::warn!(
                cursor_cluster = generation.cluster,
                cluster,
                "the cursor is among rows written on another Postgres cluster (a restore or a move): \
                 publishing the rest of them first, then the rows written here"
            );
        }
        let batch_limit = settings.max_batch_bytes;
        Ok(Self { leader, settings, pool, kafka: None, cursor, generation, cluster, read_ahead: None, batch_limit })
    }

    pub fn cursor(&self) -> Position {
        self.cursor.position
    }

    /// The leader session, to keep it alive while the run loop waits.
    pub fn role(&mut self) -> &mut RoleSession {
        &mut self.leader.session
    }

    /// Ends the leader session, releasing the lock.
    pub async fn resign(self) {
        self.leader.resign().await;
    }

    /// Publishes at most one batch (bounded by rows and bytes) and records the result.
    #[tracing::instrument(skip_all, fields(cursor_id = self.cursor.position.id), err)]
    pub async fn step(&mut self) -> Result<StepOutcome, RelayError> {
        let mut rows = self.next_rows().await?;
        if rows.is_empty() {
            return self.after_last_row().await;
        }
        let read = rows.len();
        let partitions = self.connect_kafka().await?;
        // Rows of one partition keep their commit order inside its single batch.
        let Plan { partition_of, batches } =
            batches::plan(&mut rows, partitions, self.batch_limit, self.settings.batch_bytes);
        self.read_ahead_unless_caught_up(read, &rows);
        // After a pause longer than the role-loss timeout, another relay leads: find
        // out before producing.
        self.leader.session.ensure_held().await?;
        let acknowledged = self.produce(&rows, batches).await?;
        self.commit(&rows, &partition_of, acknowledged).await
    }

    /// Connects to the broker unless connected; returns the topic's partition count.
    async fn connect_kafka(&mut self) -> Result<i32, RelayError> {
        if self.kafka.is_none() {
            let mode = TopicMode::CreateIfMissing(self.settings.partitions);
            self.kafka = Some(Kafka::connect(&self.settings, mode).await?);
        }
        Ok(self.kafka.as_ref().expect("connected above").partitions())
    }

    /// Starts reading the rows after this step's while it is in flight, unless the
    /// read came back short (`read` rows, fewer than a batch, all kept): then the relay
    /// has caught up and reading ahead would only cost a query that finds nothing.
    fn read_ahead_unless_caught_up(&mut self, read: usize, rows: &[OutboxRow]) {
        if read >= self.settings.batch_rows as usize || rows.len() < read {
            let last = rows.last().expect("not empty").position;
            let scope = self.generation.scope(self.cluster);
            self.read_ahead =
                Some(ReadAhead::start(&self.pool, &self.settings, scope, last, self.cursor.receipts_ahead));
        }
    }

    /// Produces every partition's batch at once and waits for all of them, keeping
    /// the leader session busy while the broker takes its time.
    async fn produce(&mut self, rows: &[OutboxRow], batches: BTreeMap<i32, Batch>) -> Result<Acknowledged, RelayError> {
        let kafka = self.kafka.as_ref().expect("connected before producing");
        let mut in_flight = JoinSet::new();
        for (partition, batch) in batches {
            let producer = kafka.producer(partition);
            let (indexes, bytes) = (batch.indexes, batch.size.bytes());
            in_flight.spawn(async move {
                let result = producer.produce(batch.records).await;
                Produced { partition, indexes, bytes, result }
            });
        }
        let mut acknowledged = Acknowledged::default();
        while let Some(joined) = self.leader.session.keep_alive_while(in_flight.join_next()).await? {
            let produced = joined.expect("a produce task never panics");
            self.record_produced(rows, produced, &mut acknowledged);
        }
        Ok(acknowledged)
    }

    /// Notes one partition's answer: its receipts, or why it failed.
    fn record_produced(&mut self, rows: &[OutboxRow], produced: Produced, acknowledged: &mut Acknowledged) {
        let Produced { partition, indexes, bytes, result } = produced;
        match result {
            Ok(offsets) => {
                let acked_at = Utc::now();
                metric_names::published(&partition.to_string(), indexes.len());
                for &index in &indexes {
                    let age = acked_at - rows[index].message.columns.created_at;
                    metric_names::commit_to_ack(age.to_std().unwrap_or_default());
                }
                let receipted = indexes.iter().zip(offsets).map(|(&index, offset)| (rows[index].position, offset));
                acknowledged.receipts.extend(Receipt::of_batch(partition, receipted));
            }
            Err(error) if error.is_too_large() && indexes.len() > 1 => {
                // Split: from now on batches are at most half as large, so the next
                // step sends about the first half of this one, and the second half
                // only after the first was acknowledged; per-key order holds.
                self.batch_limit = self.batch_limit.min(bytes / 2);
                metric_names::batch_split();
                tracing::warn!(
                    %error, partition, rows = indexes.len(), bytes, batch_limit = self.batch_limit,
                    "the broker refused a batch as too large; splitting it (set RELAY_MAX_BATCH_BYTES below the broker's message.max.bytes)"
                );
                acknowledged.failed.insert(partition);
                acknowledged.refused_rows += indexes.len();
            }
            Err(error) => {
                let error = if error.is_too_large() {
                    let id = rows[indexes[0]].position.id;
                    tracing::error!(%error, partition, outbox_id = id, bytes, "the broker refuses a single record as too large; publishing cannot pass it");
                    RelayError::RecordTooLarge { id, bytes }
                } else {
                    tracing::warn!(%error, partition, rows = indexes.len(), "publishing a batch failed; it will be retried");
                    error
                };
                acknowledged.failed.insert(partition);
                acknowledged.first_error.get_or_insert(error);
            }
        }
    }

    /// Stores the receipts and moves the cursor over what was acknowledged, through
    /// the leader session; then reports the first failure, if any.
    async fn commit(
        &mut self,
        rows: &[OutboxRow],
        partition_of: &[i32],
        acknowledged: Acknowledged,
    ) -> Result<StepOutcome, RelayError> {
        let cursor = advance(self.cursor, rows, partition_of, &acknowledged.failed);
        let moved = (cursor != self.cursor).then_some(cursor);
        let (topic, receipts) = (&self.settings.kafka.topic, &acknowledged.receipts);
        self.leader.session.run(async |conn| store::commit(conn, topic, receipts, moved).await).await??;
        self.cursor = cursor;
        if let Some(error) = acknowledged.first_error {
            // Start over with fresh connections: a stuck one may hold a stale request.
            self.kafka = None;
            self.read_ahead = None;
            return Err(error);
        }
        Ok(StepOutcome::Published { rows: rows.len() - acknowledged.refused_rows })
    }

    /// The rows read ahead when they start right after the cursor and are not empty
    /// (rows may have become eligible since), else a fresh read after the cursor.
    async fn next_rows(&mut self) -> Result<Vec<OutboxRow>, RelayError> {
        if let Some(mut read_ahead) = self.read_ahead.take().filter(|r| r.after == self.cursor.position) {
            let rows = (&mut read_ahead.rows).await.expect("a read never panics")?;
            if !rows.is_empty() {
                return Ok(rows);
            }
        }
        let (topic, limit, scope) =
            (&self.settings.kafka.topic, self.settings.batch_rows, self.generation.scope(self.cluster));
        Ok(outbox::read_eligible(&self.pool, topic, scope, self.cursor.position, limit, self.cursor.receipts_ahead)
            .await?)
    }

    /// Nothing is left after the cursor in its generation. On this cluster that means
    /// idle; rows of an earlier cluster are all committed, so none can come any more
    /// and the cursor moves on to the next generation.
    async fn after_last_row(&mut self) -> Result<StepOutcome, RelayError> {
        if self.generation.cluster == self.cluster {
            return Ok(StepOutcome::Idle);
        }
        let next = generation::next(&self.pool, self.generation, self.cluster).await?;
        let (topic, from) = (&self.settings.kafka.topic, self.generation);
        self.leader.session.run(async |conn| generation::enter(conn, topic, from, next).await).await??;
        tracing::warn!(
            from_cluster = self.generation.cluster,
            to_cluster = next.cluster,
            since_id = next.since_id,
            "published every row written on an earlier cluster; moving on to the next cluster's rows"
        );
        (self.generation, self.cursor, self.read_ahead) = (next, Cursor::default(), None);
        Ok(StepOutcome::Published { rows: 0 })
    }
}

/// The cursor after a step over `rows` in which the partitions in `failed` were not
/// acknowledged. Its position passes only the rows before the first unacknowledged
/// one; rows after it that were acknowledged keep their receipts, so they are
/// remembered as receipts ahead and skipped when read again.
fn advance(old: Cursor, rows: &[OutboxRow], partition_of: &[i32], failed: &HashSet<i32>) -> Cursor {
    let unacknowledged = |(row, partition): &(&OutboxRow, &i32)| !row.published && failed.contains(*partition);
    let mut steps = rows.iter().zip(partition_of);
    let position =
        steps.clone().take_while(|step| !unacknowledged(step)).last().map_or(old.position, |(row, _)| row.position);
    let last_receipted = steps.rfind(|step| !unacknowledged(step)).map(|(row, _)| row.position);
    let receipts_ahead = old.receipts_ahead.max(last_receipted).filter(|last| *last > position);
    Cursor { position, receipts_ahead }
}

#[cfg(test)]
mod tests {
    use rsvp_contract::outbox_record::{OutboxColumns, OutboxMessage};

    use super::*;

    fn row(id: i64, payload_len: usize) -> OutboxRow {
        let message = OutboxMessage::from_columns(OutboxColumns {
            kafka_key: String::new(),
            message_id: uuid::Uuid::nil(),
            event_type: "RSVP_CREATED".into(),
            rsvp_version: 1,
            payload: "x".repeat(payload_len),
            traceparent: None,
            created_at: Utc::now(),
        });
        OutboxRow { position: Position { xid: 1, id }, message, published: false }
    }

    fn at(id: i64) -> Position {
        Position { xid: 1, id }
    }

    #[test]
    fn a_step_acknowledged_everywhere_moves_the_cursor_to_its_last_row_and_leaves_no_receipt_ahead() {
        let rows: Vec<OutboxRow> = (1..=4).map(|id| row(id, 10)).collect();
        let old = Cursor { position: at(0), receipts_ahead: None };
        let cursor = advance(old, &rows, &[0, 1, 0, 1], &HashSet::new());
        assert_eq!(cursor, Cursor { position: at(4), receipts_ahead: None });
    }

    #[test]
    fn a_partly_failed_step_stops_the_cursor_before_the_first_failed_row_and_remembers_the_last_receipt() {
        let rows: Vec<OutboxRow> = (1..=6).map(|id| row(id, 10)).collect();
        let old = Cursor { position: at(0), receipts_ahead: None };
        let cursor = advance(old, &rows, &[0, 1, 0, 0, 1, 0], &HashSet::from([1]));
        assert_eq!(cursor, Cursor { position: at(1), receipts_ahead: Some(at(6)) });
        // The last acknowledged row before a failed one is remembered too.
        let cursor = advance(old, &rows, &[0, 1, 0, 0, 1, 1], &HashSet::from([1]));
        assert_eq!(cursor, Cursor { position: at(1), receipts_ahead: Some(at(4)) });
        // A failure on the first row leaves the position where it was.
        let cursor = advance(old, &rows, &[1, 0, 0, 0, 0, 0], &HashSet::from([1]));
        assert_eq!(cursor, Cursor { position: at(0), receipts_ahead: Some(at(6)) });
    }

    #[test]
    fn receipts_ahead_are_remembered_until_the_cursor_passes_them() {
        let mut rows: Vec<OutboxRow> = (2..=5).map(|id| row(id, 10)).collect();
        rows[1].published = true; // skipped: its receipt came from the earlier step
        let old = Cursor { position: at(1), receipts_ahead: Some(at(8)) };
        let cursor = advance(old, &rows, &[0, 1, 0, 1], &HashSet::new());
        assert_eq!(cursor, Cursor { position: at(5), receipts_ahead: Some(at(8)) });
        // A published row counts as acknowledged even on a partition that failed now.
        let cursor = advance(old, &rows, &[0, 1, 0, 0], &HashSet::from([1]));
        assert_eq!(cursor, Cursor { position: at(5), receipts_ahead: Some(at(8)) });
        let old = Cursor { position: at(1), receipts_ahead: Some(at(4)) };
        let cursor = advance(old, &rows, &[0, 1, 0, 1], &HashSet::new());
        assert_eq!(cursor, Cursor { position: at(5), receipts_ahead: None });
    }
}
