//! Write coalescing: concurrent writes share one transaction, so that one commit
//! (one WAL flush) makes many rsvps durable.
//!
//! Handlers queue a [`WriteOp`] on one of a few lanes, each with its own worker: the
//! worker takes what is queued (up to `max_batch`, waiting at most `max_wait` for
//! more), applies the writes one after the other in one transaction, commits, and
//! only then answers each request with its own outcome. Creates take the lane of
//! their event: a batch locks the events it writes to until it commits, so lanes
//! that shared events would wait for each other's commits instead of running side
//! by side. Writes refused for a client mistake leave the transaction usable (see
//! `writes`), so a neighbour's 409 never fails a batch. Should the batch transaction
//! fail for any other reason (a deadlock between two batches, a lost connection),
//! every write of it is retried alone, so each request gets the answer it would have
//! had without coalescing.
//!
//! A write sent with an `Idempotency-Key` carries a [`Claim`]: its transaction claims
//! the key before writing and fills in the record before committing (see
//! [`crate::store::idempotency`]), whether the write commits in a batch or alone. A
//! write whose key a committed request holds is skipped and answered
//! `IdempotencyKeyInUse`, which its handler turns into that request's stored answer.

use std::{
    hash::{DefaultHasher, Hash, Hasher},
    time::Duration,
};

use metrics::counter;
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};

use crate::{
    error::ApiError,
    idempotency::Claim,
    store::{idempotency, Tx},
    writes::{apply, create_rsvps, lock_writers, CreateRequest, WriteOp, WriteOutcome},
};

/// How writes are committed.
#[derive(Debug, Clone, Copy)]
pub struct CoalescingSettings {
    /// Off: each request commits its own transaction.
    pub enabled: bool,
    pub max_batch: usize,
    pub max_wait: Duration,
    /// Lanes, each committing one transaction at a time.
    pub workers: usize,
}

struct Pending {
    op: WriteOp,
    claim: Option<Claim>,
    traceparent: Option<String>,
    reply: oneshot::Sender<Result<WriteOutcome, ApiError>>,
}

/// Runs writes, coalesced or one transaction each.
#[derive(Clone)]
pub struct Writer {
    db: PgPool,
    /// One queue per lane; empty when coalescing is off.
    lanes: Vec<mpsc::Sender<Pending>>,
}

impl Writer {
    /// Starts the workers (when coalescing); they stop when the last `Writer` is dropped.
    pub fn start(db: PgPool, settings: CoalescingSettings) -> Self {
        if !settings.enabled {
            return Self { db, lanes: Vec::new() };
        }
        let lanes = (0..settings.workers.max(1))
            .map(|_| {
                let (sender, receiver) = mpsc::channel(settings.max_batch * 4);
                tokio::spawn(work(db.clone(), receiver, settings));
                sender
            })
            .collect();
        Self { db, lanes }
    }

    /// Applies `op` and answers once its transaction has committed.
    pub async fn run(
        &self,
        op: WriteOp,
        claim: Option<Claim>,
        traceparent: Option<&str>,
    ) -> Result<WriteOutcome, ApiError> {
        if self.lanes.is_empty() {
            return run_alone(&self.db, &op, claim.as_ref(), traceparent).await;
        }
        let queue = &self.lanes[lane(&op, self.lanes.len())];
        let (reply, answer) = oneshot::channel();
        let pending = Pending { op, claim, traceparent: traceparent.map(str::to_owned), reply };
        queue
            .send(pending)
            .await
            .map_err(|_| anyhow::anyhow!("the write workers have stopped"))?;
        answer.await.map_err(|_| anyhow::anyhow!("a write worker dropped a request"))?
    }
}

/// The lane of a write: its event's for a create; for the other writes, whose event
/// is not known before their rsvp is read, any lane will do, and any lane is safe:
/// every batch locks its events in one global order.
fn lane(op: &WriteOp, lanes: usize) -> usize {
    let mut hasher = DefaultHasher::new();
    match op {
        WriteOp::Create { event_id, .. } => event_id.hash(&mut hasher),
        WriteOp::Update { id, .. } | WriteOp::Delete { id } => id.hash(&mut hasher),
        WriteOp::Cancel { token } => token.hash(&mut hasher),
    }
    (hasher.finish() % lanes as u64) as usize
}

async fn work(db: PgPool, mut queue: mpsc::Receiver<Pending>, settings: CoalescingSettings) {
    while let Some(batch) = next_batch(&mut queue, settings).await {
        run_batch(&db, batch).await;
    }
}

/// Takes the lane's next batch.
async fn next_batch(queue: &mut mpsc::Receiver<Pending>, settings: CoalescingSettings) -> Option<Vec<Pending>> {
    let first = queue.recv().await?;
    let mut batch = Vec::with_capacity(settings.max_batch);
    batch.push(first);
    let deadline = tokio::time::Instant::now() + settings.max_wait;
    while batch.len() < settings.max_batch {
        match queue.try_recv() {
            Ok(pending) => batch.push(pending),
            Err(mpsc::error::TryRecvError::Disconnected) => break,
            Err(mpsc::error::TryRecvError::Empty) => match tokio::time::timeout_at(deadline, queue.recv()).await {
                Ok(Some(pending)) => batch.push(pending),
                Ok(None) | Err(_) => break,
            },
        }
    }
    Some(batch)
}

#[tracing::instrument(skip_all, fields(size = batch.len()))]
async fn run_batch(db: &PgPool, batch: Vec<Pending>) {
    counter!("api_write_batches_total").increment(1);
    counter!("api_write_batched_requests_total").increment(batch.len() as u64);
    match run_together(db, &batch).await {
        Ok(outcomes) => {
            for (pending, outcome) in batch.into_iter().zip(outcomes) {
                if let Ok(outcome) = &outcome {
                    count_outbox_row(outcome);
                }
                let _ = pending.reply.send(outcome);
            }
        }
        Err(error) => {
            counter!("api_write_batch_retries_total").increment(1);
            tracing::warn!(error = ?error, "batch transaction failed; retrying each write alone");
            for pending in batch {
                let outcome =
                    run_alone(db, &pending.op, pending.claim.as_ref(), pending.traceparent.as_deref()).await;
                let _ = pending.reply.send(outcome);
            }
        }
    }
}

/// One transaction for the whole batch: creates go in together, the other writes one
/// after the other. Client mistakes become that write's outcome; anything else fails
/// the batch.
async fn run_together(db: &PgPool, batch: &[Pending]) -> anyhow::Result<Vec<Result<WriteOutcome, ApiError>>> {
    let mut tx = db.begin().await?;
    lock_events(&mut tx, batch).await?;
    let claims: Vec<_> = batch.iter().map(|p| p.claim.as_ref().map(|c| &c.idempotency)).collect();
    let claimed = idempotency::claim(&mut tx, &claims).await?;
    // A key held by a committed request (or by an earlier write of this batch): no write.
    let mut outcomes: Vec<Option<Result<WriteOutcome, ApiError>>> = claims
        .iter()
        .zip(&claimed)
        .map(|(claim, claimed)| (claim.is_some() && !claimed).then_some(Err(ApiError::IdempotencyKeyInUse)))
        .collect();

    let (creates, others): (Vec<_>, Vec<_>) = batch
        .iter()
        .enumerate()
        .filter(|(index, _)| outcomes[*index].is_none())
        .partition(|(_, p)| matches!(p.op, WriteOp::Create { .. }));
    let requests: Vec<CreateRequest<'_>> = creates
        .iter()
        .filter_map(|(_, p)| match &p.op {
            WriteOp::Create { event_id, rsvp } => {
                Some(CreateRequest { event_id: *event_id, rsvp, traceparent: p.traceparent.as_deref() })
            }
            _ => None,
        })
        .collect();
    let created = create_rsvps(&mut tx, &requests).await?;
    for ((index, _), outcome) in creates.iter().zip(created) {
        outcomes[*index] = Some(outcome.map(|(written, token)| WriteOutcome { written, token: Some(token) }));
    }
    for (index, pending) in others {
        match apply(&mut tx, &pending.op, pending.traceparent.as_deref()).await {
            Err(ApiError::Unexpected(error)) => return Err(error),
            outcome => outcomes[index] = Some(outcome),
        }
    }
    let outcomes: Vec<_> = outcomes.into_iter().map(|o| o.expect("every write has an outcome")).collect();
    let mut records = Vec::new();
    for ((pending, claimed), outcome) in batch.iter().zip(claimed).zip(&outcomes) {
        if let (Some(claim), true) = (&pending.claim, claimed) {
            records.extend(claim.response(outcome)?.map(|response| (&claim.idempotency, response)));
        }
    }
    idempotency::record(&mut tx, &records).await?;
    tx.commit().await?;
    Ok(outcomes)
}

/// Locks every event the batch writes to before any write: first their advisory
/// locks (see [`lock_writers`]: before the transaction has an xid, which keeps each
/// key's `(xid, id)` order its commit order), then their rows in id order, as the
/// seat counts need.
async fn lock_events(tx: &mut Tx<'_>, batch: &[Pending]) -> Result<(), sqlx::Error> {
    let event_ids = lock_writers(tx, batch.iter().map(|p| &p.op)).await?;
    sqlx::query("select id from events where id = any($1) order by id for no key update")
        .bind(&event_ids)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// One write in its own transaction. With a claim, a refused write commits its record
/// (and nothing else: refused writes undo what they wrote); a fault commits nothing.
async fn run_alone(
    db: &PgPool,
    op: &WriteOp,
    claim: Option<&Claim>,
    traceparent: Option<&str>,
) -> Result<WriteOutcome, ApiError> {
    let mut tx = db.begin().await?;
    lock_writers(&mut tx, [op]).await?;
    let claims = [claim.map(|c| &c.idempotency)];
    if claim.is_some() && !idempotency::claim(&mut tx, &claims).await?[0] {
        return Err(ApiError::IdempotencyKeyInUse);
    }
    let outcome = apply(&mut tx, op, traceparent).await;
    match (claim, &outcome) {
        (_, Err(ApiError::Unexpected(_))) | (None, Err(_)) => return outcome,
        (None, Ok(_)) => {}
        (Some(claim), outcome) => {
            let record = claim.response(outcome)?.map(|response| (&claim.idempotency, response));
            idempotency::record(&mut tx, &Vec::from_iter(record)).await?;
        }
    }
    tx.commit().await?;
    if let Ok(outcome) = &outcome {
        count_outbox_row(outcome);
    }
    outcome
}

fn count_outbox_row(outcome: &WriteOutcome) {
    if let Some(event_type) = outcome.written.event_type {
        counter!("outbox_rows_written_total", "type" => event_type.as_str()).increment(1);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use uuid::Uuid;

    use super::*;
    use crate::domain::{CreateRsvpRequest, NewRsvp};

    fn create(event_id: Uuid, email: &str) -> WriteOp {
        let request: CreateRsvpRequest =
            serde_json::from_value(serde_json::json!({"name": "Ada", "email": email, "status": "going"})).unwrap();
        WriteOp::Create { event_id, rsvp: NewRsvp::parse(request).unwrap() }
    }

    #[test]
    fn creates_for_one_event_share_its_lane_and_events_spread_over_every_lane() {
        let event = Uuid::now_v7();
        let lanes: HashSet<usize> = (0..20).map(|i| lane(&create(event, &format!("p{i}@example.com")), 3)).collect();
        assert_eq!(lanes.len(), 1);
        let lanes: HashSet<usize> = (0..60).map(|_| lane(&create(Uuid::now_v7(), "a@example.com"), 3)).collect();
        assert_eq!(lanes, HashSet::from([0, 1, 2]));
        assert_eq!(lane(&WriteOp::Delete { id: Uuid::now_v7() }, 1), 0);
    }
}
