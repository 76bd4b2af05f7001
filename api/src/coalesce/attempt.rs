//! One try at a batch: one transaction that starts the writes whose requests still
//! wait, applies them, commits, and, should `COMMIT` fail, asks the database whether
//! it committed before anyone retries anything.

use std::{
    collections::{HashMap, HashSet},
    slice,
};

use tokio::time::Instant;
use uuid::Uuid;

use super::{Answer, Pending};
use crate::{
    error::{ApiError, Unavailable},
    idempotency::{records, Applied, StoredResponse},
    store::{
        self,
        events::{self, Seats},
        idempotency::{KeyTaken, NewRecord},
        outbox::Appended,
        transactions::{self, Settled, TxTimeouts},
        Tx,
    },
    writes::{apply, create_rsvps, lock_writers, try_lock_writers, CreateRequest, WriteOp, WriteOutcome},
};

/// A write's outcome before its answer is rendered for its record.
type Outcome = Result<WriteOutcome, ApiError>;

/// How a try takes its events' locks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Locking {
    /// Waits for each, up to the lock timeout.
    Wait,
    /// Takes those free now; the writes to events held elsewhere are answered
    /// `lock_timeout` (they already waited that long in the try before).
    SkipHeld,
}

/// Runs `batch` in one transaction. `Ok`: each write's final answer (a write whose
/// request gave up before it started answers `request_timeout` and was not applied;
/// when the commit's fate could not be learned, the writes it would have applied
/// answer `outcome_unknown`). `Err`: the transaction rolled back, nothing of it was
/// applied, and its writes may be tried again.
pub(super) async fn attempt(
    db: &sqlx::PgPool,
    timeouts: TxTimeouts,
    batch: &[Pending],
    locking: Locking,
) -> Result<Vec<Answer>, ApiError> {
    let deadline = batch.iter().map(|p| p.deadline).max().unwrap_or_else(Instant::now);
    if Instant::now() >= deadline {
        return Ok(batch.iter().map(|_| Err(Unavailable::RequestTimeout.into())).collect());
    }
    let mut started = vec![false; batch.len()];
    // The writes whose keys turned out to be taken by other requests: each run that
    // finds more rolls back and runs again without them, at most once per write.
    let mut taken_keys: Vec<Option<KeyTaken>> = vec![None; batch.len()];
    loop {
        let result = run(db, timeouts, batch, locking, deadline, &mut started, &taken_keys).await;
        if !matches!(result, Ok(Ran::Answered(_))) {
            for (pending, started) in batch.iter().zip(&mut started).filter(|(_, started)| **started) {
                pending.ticket.requeue();
                *started = false;
            }
        }
        match result? {
            Ran::Answered(answers) => return Ok(answers),
            Ran::KeysTaken(taken) => taken.into_iter().for_each(|(index, taken)| taken_keys[index] = Some(taken)),
        }
    }
}

/// How a run ended, when it did not fail.
enum Ran {
    /// Committed (or its fate settled): each write's answer.
    Answered(Vec<Answer>),
    /// Rolled back: other requests hold the keys of these writes.
    KeysTaken(Vec<(usize, KeyTaken)>),
}

/// Runs one write in its own transaction.
pub(super) async fn attempt_alone(db: &sqlx::PgPool, timeouts: TxTimeouts, pending: &Pending) -> Answer {
    match attempt(db, timeouts, slice::from_ref(pending), Locking::Wait).await {
        Ok(mut answers) => answers.pop().unwrap_or_else(|| Err(anyhow::anyhow!("a write had no answer").into())),
        Err(error) => Err(error),
    }
}

async fn run(
    db: &sqlx::PgPool,
    timeouts: TxTimeouts,
    batch: &[Pending],
    locking: Locking,
    deadline: Instant,
    started: &mut [bool],
    taken_keys: &[Option<KeyTaken>],
) -> Result<Ran, ApiError> {
    // Past the deadline every request has had its answer: a transaction still not
    // ready to commit by then (a server that stopped answering, which no server-side
    // timeout catches) is dropped, uncommitted, and frees the lane.
    let prepared = tokio::time::timeout_at(deadline, prepare(db, timeouts, batch, locking, started, taken_keys)).await;
    let (tx, mut answers, xid) = match prepared.unwrap_or(Err(Unavailable::RequestTimeout.into()))? {
        Prepared::Ready { tx, answers, xid } => (tx, answers, xid),
        Prepared::KeysTaken(taken) => return Ok(Ran::KeysTaken(taken)),
    };

    let error = match tokio::time::timeout_at(deadline, tx.commit()).await {
        Ok(Ok(())) => return Ok(Ran::Answered(answers)),
        // The server refused the COMMIT (a deferred constraint, its statement
        // timeout): it rolled back, and said so.
        Ok(Err(error @ sqlx::Error::Database(_))) => return Err(error.into()),
        Ok(Err(error)) => anyhow::Error::new(error),
        Err(_) => anyhow::anyhow!("COMMIT did not finish by the deadline"),
    };
    // No xid: the transaction wrote nothing, and every answer holds either way.
    let Some(xid) = xid else { return Ok(Ran::Answered(answers)) };
    match transactions::settle(db, &xid, deadline).await {
        Settled::Committed => tracing::warn!(error = ?error, "COMMIT failed, but the transaction committed"),
        Settled::Aborted => {
            tracing::warn!(error = ?error, "COMMIT failed and the transaction rolled back");
            return Err(Unavailable::DatabaseDown.into());
        }
        Settled::Unknown => {
            tracing::warn!(error = ?error, "COMMIT failed and whether it committed is unknown");
            for answer in answers.iter_mut().filter(|a| a.is_ok()) {
                *answer = Err(Unavailable::OutcomeUnknown.into());
            }
        }
    }
    Ok(Ran::Answered(answers))
}

/// What a transaction holds once it is ready to commit.
enum Prepared {
    /// The transaction, each write's answer, and its xid (to settle a failed `COMMIT` by).
    Ready { tx: Tx<'static>, answers: Vec<Answer>, xid: Option<String> },
    /// Other requests hold the keys of these writes: the transaction rolled back.
    KeysTaken(Vec<(usize, KeyTaken)>),
}

/// Everything up to `COMMIT`. The writes in `taken_keys` are not applied: their
/// requests answer from the record of the request that holds their key, once it has
/// committed.
async fn prepare(
    db: &sqlx::PgPool,
    timeouts: TxTimeouts,
    batch: &[Pending],
    locking: Locking,
    started: &mut [bool],
    taken_keys: &[Option<KeyTaken>],
) -> Result<Prepared, ApiError> {
    let mut tx = transactions::begin(db, timeouts).await?;
    let mut answers: Vec<Option<Outcome>> = batch.iter().map(|_| None).collect();
    let mut seats = lock_events(&mut tx, batch, locking, &mut answers).await?;

    // The writes start here, after their locks were taken, if their requests still wait.
    for (index, pending) in batch.iter().enumerate() {
        if answers[index].is_none() {
            started[index] = pending.ticket.start(pending.deadline);
            if !started[index] {
                answers[index] = Some(Err(Unavailable::RequestTimeout.into()));
            }
        }
    }
    // A started write with a key is applied unless another request holds its key
    // (learnt by an earlier run) or an earlier write of this batch has the same key:
    // its request then answers from that request's record, waiting for it first if
    // it is still in flight.
    let mut keys_in_batch = HashSet::new();
    for (index, pending) in batch.iter().enumerate() {
        if let Some(claim) = pending.claim.as_ref().filter(|_| started[index] && answers[index].is_none()) {
            answers[index] = match taken_keys[index] {
                Some(KeyTaken::InFlight) => Some(Err(ApiError::IdempotencyKeyInFlight)),
                Some(KeyTaken::ByCommittedRequest) => Some(Err(ApiError::IdempotencyKeyInUse)),
                None if !keys_in_batch.insert(claim.idempotency.lookup_id) => Some(Err(ApiError::IdempotencyKeyInUse)),
                None => None,
            };
        }
    }
    // The writes to run: the creates, in one statement, and the changes, one by one.
    let (mut creates, mut requests, mut changes) = (Vec::new(), Vec::new(), Vec::new());
    for (index, pending) in batch.iter().enumerate().filter(|(index, _)| started[*index] && answers[*index].is_none()) {
        let traceparent = pending.traceparent.as_deref();
        match &pending.op {
            WriteOp::Create { event_id, rsvp } => {
                creates.push(index);
                requests.push(CreateRequest { event_id: *event_id, rsvp, traceparent });
            }
            WriteOp::Change(change) => changes.push((index, change, traceparent)),
        }
    }
    // A recorded answer is rendered once: its request answers with it.
    let mut rendered: Vec<Option<StoredResponse>> = batch.iter().map(|_| None).collect();
    let mut xid = None;
    if !requests.is_empty() {
        // The creates' records go in the statement that appends their outbox rows.
        let created = create_rsvps(&mut tx, &requests, &mut seats, |position, outcome| {
            let index = creates[position];
            record(&batch[index], outcome, &mut rendered[index])
        })
        .await?;
        if created.key_taken {
            return keys_taken(db, tx, batch, &rendered).await;
        }
        xid = created.xid;
        for (index, outcome) in creates.into_iter().zip(created.outcomes) {
            answers[index] = Some(outcome);
        }
    }
    for (index, change, traceparent) in &changes {
        match apply(&mut tx, change, *traceparent).await {
            Err(error) if !error.is_client_mistake() => return Err(error),
            answer => {
                if let Ok(outcome) = &answer {
                    xid = xid.or_else(|| outcome.written.xid.clone());
                }
                answers[*index] = Some(answer)
            }
        }
    }
    let outcomes: Vec<Outcome> = answers.into_iter().map(|a| a.expect("every write has an answer")).collect();
    // The changes' records, in a statement of their own.
    let mut records = Vec::new();
    for (index, _, _) in &changes {
        records.extend(record(&batch[*index], &outcomes[*index], &mut rendered[*index])?);
    }
    match store::idempotency::insert(&mut tx, &records).await? {
        Some(Appended::KeyTaken) => return keys_taken(db, tx, batch, &rendered).await,
        Some(Appended::Written { xid: written }) => xid = xid.or(Some(written)),
        None => {}
    }
    // The statements that appended outbox rows or records returned the xid when they
    // ran: one round trip fewer, while the transaction holds back the relay's reads.
    // Only a batch that wrote neither asks for it (and may learn it has none).
    let xid = match xid {
        Some(xid) => Some(xid),
        None => transactions::current_xid(&mut tx).await?,
    };
    let answers = outcomes
        .into_iter()
        .zip(rendered)
        .map(|(outcome, recorded)| outcome.map(|outcome| Applied { outcome, recorded }))
        .collect();
    Ok(Prepared::Ready { tx, answers, xid })
}

/// What a run whose statement found a record's key taken ([`Appended::KeyTaken`])
/// learns: rolls `tx` back, which lets its keys' locks go, then asks what holds the
/// keys of the writes whose records it tried to insert (those with a `rendered`
/// answer).
async fn keys_taken(
    db: &sqlx::PgPool,
    tx: Tx<'static>,
    batch: &[Pending],
    rendered: &[Option<StoredResponse>],
) -> Result<Prepared, ApiError> {
    tx.rollback().await?;
    let recorded: Vec<(usize, &[u8; 32])> = batch
        .iter()
        .zip(rendered)
        .enumerate()
        .filter(|(_, (_, rendered))| rendered.is_some())
        .filter_map(|(index, (pending, _))| Some((index, &pending.claim.as_ref()?.idempotency.lookup_id)))
        .collect();
    let lookup_ids: Vec<&[u8; 32]> = recorded.iter().map(|(_, lookup_id)| *lookup_id).collect();
    let held = store::idempotency::probe(db, &lookup_ids).await?;
    Ok(Prepared::KeysTaken(
        recorded.into_iter().zip(held).filter_map(|((index, _), taken)| Some((index, taken?))).collect(),
    ))
}

/// The idempotency record of a started write with an `Idempotency-Key`, sealed with
/// the answer its `outcome` renders, which goes into `rendered`; `None` for a write
/// without a key, or whose answer is not kept (see [`StoredResponse::of_error`]).
fn record<'b>(
    pending: &'b Pending,
    outcome: &Outcome,
    rendered: &mut Option<StoredResponse>,
) -> Result<Option<NewRecord<'b>>, ApiError> {
    let Some(claim) = &pending.claim else { return Ok(None) };
    let Some(response) = claim.response(outcome)? else { return Ok(None) };
    let new = records::seal(&claim.idempotency, &response)?;
    *rendered = Some(response);
    Ok(Some(new))
}

/// Locks every event the batch writes to before any write: first their advisory
/// locks (see [`lock_writers`]: before the transaction has an xid, which keeps each
/// key's `(xid, id)` order its commit order), then their rows in id order, as the
/// seat counts need; returns the seats of the events it locked, which the creates
/// check capacity against. With [`Locking::SkipHeld`], the writes to events another
/// transaction holds get their answer here and are not run.
async fn lock_events(
    tx: &mut Tx<'_>,
    batch: &[Pending],
    locking: Locking,
    answers: &mut [Option<Outcome>],
) -> Result<HashMap<Uuid, Seats>, sqlx::Error> {
    let ops: Vec<&WriteOp> = batch.iter().map(|p| &p.op).collect();
    match locking {
        Locking::Wait => {
            let event_ids = lock_writers(tx, ops).await?;
            events::lock(tx, &event_ids).await
        }
        Locking::SkipHeld => {
            let mut tried = try_lock_writers(tx, &ops).await?;
            let rows = events::try_lock(tx, &tried.locked).await?;
            tried.held.extend(rows.held);
            for (answer, event) in answers.iter_mut().zip(&tried.events) {
                if event.is_some_and(|event| tried.held.contains(&event)) {
                    *answer = Some(Err(Unavailable::LockTimeout.into()));
                }
            }
            Ok(rows.locked)
        }
    }
}
