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
//! `writes`), so a neighbour's 409 never fails a batch.
//!
//! No write outlives its answer: a request waits for its write until its deadline
//! (`REQUEST_TIMEOUT`), and the worker starts a write only while its request still
//! waits (see `ticket`); a write whose request gave up or went away first is never
//! applied. A request that gives up on a started write answers `outcome_unknown`.
//!
//! A write sent with an `Idempotency-Key` carries a [`Claim`]: its transaction
//! inserts the key's record, with the write's answer, before committing (see
//! [`crate::store::idempotency`]), whether the write commits in a batch or alone. A
//! write whose key another request holds is not applied (its transaction runs again
//! without it). When that request has committed, the write is answered
//! `IdempotencyKeyInUse`, which its handler turns into that request's stored answer;
//! when it is still running, the write waits for it outside the batch and runs
//! again, so that one request's slow commit never holds up another's batch.
//!
//! Should the batch transaction fail, nothing of it was applied (a failed `COMMIT`
//! is first settled by asking the database, see `attempt`), and what happens next
//! depends on why: Postgres out of reach answers every write 503 at once (retrying
//! one by one would only keep the lane busy failing); a lock or statement timeout
//! tries the batch once more without the writes to events held elsewhere, which
//! answer `lock_timeout`; anything else (a deadlock between two batches) retries
//! each write alone, so each request gets the answer it would have had without
//! coalescing.

use std::{
    hash::{DefaultHasher, Hash, Hasher},
    time::Duration,
};

use metrics::counter;
use sqlx::PgPool;
use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};

use crate::{
    deadline,
    error::{ApiError, Unavailable},
    idempotency::{records, Applied, Claim},
    store::transactions::TxTimeouts,
    writes::{Change, WriteOp, WriteOutcome},
};

mod attempt;
mod ticket;

use crate::metric_names;
use attempt::{attempt, attempt_alone, Locking};
use ticket::{GaveUp, Ticket};

/// How writes are committed.
#[derive(Debug, Clone, Copy)]
pub struct CoalescingSettings {
    /// Off: each request commits its own transaction.
    pub enabled: bool,
    pub max_batch: usize,
    pub max_wait: Duration,
    /// Lanes, each committing one transaction at a time.
    pub workers: usize,
    /// The lock and statement timeouts of every write transaction.
    pub timeouts: TxTimeouts,
    /// A write's deadline when its request has none (outside the router).
    pub request_timeout: Duration,
}

type Answer = Result<Applied, ApiError>;

struct Pending {
    op: WriteOp,
    claim: Option<Claim>,
    traceparent: Option<String>,
    reply: oneshot::Sender<Answer>,
    ticket: Ticket,
    /// When the request stops waiting; the write must not start later.
    deadline: Instant,
}

/// Runs writes, coalesced or one transaction each.
#[derive(Clone)]
pub struct Writer {
    db: PgPool,
    settings: CoalescingSettings,
    /// One queue per lane; empty when coalescing is off.
    lanes: Vec<mpsc::Sender<Pending>>,
}

impl Writer {
    /// Starts the workers (when coalescing); they stop when the last `Writer` is dropped.
    pub fn start(db: PgPool, settings: CoalescingSettings) -> Self {
        if !settings.enabled {
            return Self { db, settings, lanes: Vec::new() };
        }
        let lanes = (0..settings.workers.max(1))
            .map(|_| {
                let (sender, receiver) = mpsc::channel(settings.max_batch * 4);
                tokio::spawn(work(db.clone(), receiver, settings));
                sender
            })
            .collect();
        Self { db, settings, lanes }
    }

    /// The lock and statement timeouts of every write transaction.
    pub fn timeouts(&self) -> TxTimeouts {
        self.settings.timeouts
    }

    /// Applies `op` and answers once its transaction has committed, or at the
    /// request's deadline with `request_timeout` (the write was not applied and never
    /// will be) or `outcome_unknown` (it had started). Dropping the future gives the
    /// write up the same way: a write whose client went away does not start.
    ///
    /// A keyed write whose key another request holds while still running was not
    /// applied: it waits here, outside any batch, until that request has finished (up
    /// to the lock timeout: then `lock_timeout`), and runs again, to be answered from
    /// that request's record, or applied if it rolled back.
    pub async fn run(
        &self,
        mut op: WriteOp,
        claim: Option<Claim>,
        traceparent: Option<&str>,
    ) -> Result<Applied, ApiError> {
        let deadline = deadline::current().unwrap_or_else(|| Instant::now() + self.settings.request_timeout);
        let answer = loop {
            // A keyed write may have to run again; only those keep a copy.
            let again = claim.as_ref().map(|_| op.clone());
            let answer = self.run_once(op, claim.clone(), traceparent, deadline).await;
            let (Err(ApiError::IdempotencyKeyInFlight), Some(claim), Some(again)) = (&answer, &claim, again) else {
                break answer;
            };
            let waited = tokio::time::timeout_at(
                deadline,
                records::wait_for_key(&self.db, self.settings.timeouts, &claim.idempotency),
            )
            .await;
            match waited {
                Ok(Ok(())) => op = again,
                Ok(Err(error)) => break Err(error),
                Err(_) => break Err(Unavailable::RequestTimeout.into()),
            }
        };
        match &answer {
            Err(ApiError::Unavailable(Unavailable::RequestTimeout)) => {
                counter!(metric_names::WRITE_DEADLINES_MISSED, "outcome" => "not_applied").increment(1);
            }
            Err(ApiError::Unavailable(Unavailable::OutcomeUnknown)) => {
                counter!(metric_names::WRITE_DEADLINES_MISSED, "outcome" => "unknown").increment(1);
            }
            _ => {}
        }
        answer
    }

    /// One pass of `op` through its lane (or its own transaction).
    async fn run_once(
        &self,
        op: WriteOp,
        claim: Option<Claim>,
        traceparent: Option<&str>,
        deadline: Instant,
    ) -> Result<Applied, ApiError> {
        let ticket = Ticket::default();
        let _give_up_when_dropped = GiveUpOnDrop(ticket.clone());
        let (reply, answer) = oneshot::channel();
        let traceparent = traceparent.map(str::to_owned);
        let pending = Pending { op, claim, traceparent, reply, ticket: ticket.clone(), deadline };
        let queued = async {
            match self.lanes.get(lane(&pending.op, self.lanes.len().max(1))) {
                // Spawned, so that the write's transaction is not dropped half-way by its request.
                None => drop(tokio::spawn(run_batch(self.db.clone(), self.settings.timeouts, vec![pending]))),
                Some(queue) => {
                    queue.send(pending).await.map_err(|_| anyhow::anyhow!("the write workers have stopped"))?
                }
            }
            answer.await.map_err(|_| anyhow::anyhow!("a write worker dropped a request"))?
        };
        match tokio::time::timeout_at(deadline, queued).await {
            Ok(answer) => answer,
            Err(_) => Err(match ticket.give_up() {
                GaveUp::BeforeStart => Unavailable::RequestTimeout.into(),
                GaveUp::WhileRunning => Unavailable::OutcomeUnknown.into(),
            }),
        }
    }
}

/// Gives the write up when its request's future is dropped: the client went away.
struct GiveUpOnDrop(Ticket);

impl Drop for GiveUpOnDrop {
    fn drop(&mut self) {
        self.0.give_up();
    }
}

/// The lane of a write: its event's for a create; for the other writes, whose event
/// is not known before their rsvp is read, any lane will do, and any lane is safe:
/// every batch locks its events in one global order.
fn lane(op: &WriteOp, lanes: usize) -> usize {
    let mut hasher = DefaultHasher::new();
    match op {
        WriteOp::Create { event_id, .. } => event_id.hash(&mut hasher),
        WriteOp::Change(Change::Update { id, .. } | Change::Delete { id }) => id.hash(&mut hasher),
        WriteOp::Change(Change::Cancel { token }) => token.hash(&mut hasher),
    }
    (hasher.finish() % lanes as u64) as usize
}

async fn work(db: PgPool, mut queue: mpsc::Receiver<Pending>, settings: CoalescingSettings) {
    while let Some(batch) = next_batch(&mut queue, settings).await {
        run_batch(db.clone(), settings.timeouts, batch).await;
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
async fn run_batch(db: PgPool, timeouts: TxTimeouts, batch: Vec<Pending>) {
    counter!(metric_names::WRITE_BATCHES).increment(1);
    counter!(metric_names::WRITE_BATCHED_REQUESTS).increment(batch.len() as u64);
    let answers = match attempt(&db, timeouts, &batch, Locking::Wait).await {
        Ok(answers) => answers,
        Err(ApiError::Unavailable(Unavailable::LockTimeout | Unavailable::StatementTimeout)) if batch.len() > 1 => {
            counter!(metric_names::WRITE_BATCH_RETRIES, "reason" => "timeout").increment(1);
            match attempt(&db, timeouts, &batch, Locking::SkipHeld).await {
                Ok(answers) => answers,
                Err(error) => retry_alone(&db, timeouts, &batch, error).await,
            }
        }
        // Postgres out of reach, or one write's own timeout: nothing to gain by retrying.
        Err(ApiError::Unavailable(reason)) => batch.iter().map(|_| Err(reason.into())).collect(),
        Err(error) => {
            counter!(metric_names::WRITE_BATCH_RETRIES, "reason" => "failure").increment(1);
            retry_alone(&db, timeouts, &batch, error).await
        }
    };
    for (pending, answer) in batch.into_iter().zip(answers) {
        if let Ok(applied) = &answer {
            count_outbox_row(&applied.outcome);
        }
        let _ = pending.reply.send(answer);
    }
}

/// Each write of a failed batch in its own transaction, until Postgres turns out to
/// be out of reach: then the rest fail at once rather than one after the other.
async fn retry_alone(db: &PgPool, timeouts: TxTimeouts, batch: &[Pending], error: ApiError) -> Vec<Answer> {
    tracing::warn!(error = ?error, "batch transaction failed; retrying each write alone");
    let mut answers = Vec::with_capacity(batch.len());
    for pending in batch {
        let answer = match answers.last() {
            Some(Err(ApiError::Unavailable(Unavailable::DatabaseDown))) => Err(Unavailable::DatabaseDown.into()),
            _ => attempt_alone(db, timeouts, pending).await,
        };
        answers.push(answer);
    }
    answers
}

fn count_outbox_row(outcome: &WriteOutcome) {
    if let Some(event_type) = outcome.written.event_type {
        counter!(metric_names::OUTBOX_ROWS_WRITTEN, "type" => event_type.as_str()).increment(1);
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
        assert_eq!(lane(&WriteOp::Change(Change::Delete { id: Uuid::now_v7() }), 1), 0);
    }
}
