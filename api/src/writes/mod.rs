//! The api's writes: each changes an rsvp and appends its outbox row inside the
//! caller's transaction, locking the rsvp row before the outbox row is inserted, so
//! that one rsvp's versions follow commit order. The caller commits, and first calls
//! [`lock_writers`], so that the relay publishes each key's outbox rows in commit
//! order too.
//!
//! A write refused for a client mistake (404, 403, 409) returns before writing, or
//! undoes what it wrote, and never leaves the transaction aborted: many writes can
//! share one transaction (see `coalesce`) and each keeps its own outcome.

use std::collections::HashMap;

use rsvp_contract::{CloudEvent, EventType, RsvpStatus};
use uuid::Uuid;

mod create;
mod order;

pub use create::{create_rsvps, CreateRequest};
pub use order::{lock_writers, try_lock_writers, TriedLocks};

use crate::{
    auth::TokenHash,
    domain::{NewRsvp, RsvpChanges},
    error::ApiError,
    store::{events, outbox, rsvps, rsvps::RsvpRow, Tx},
};

/// What a write did: the rsvp as it now is, and the outbox event it appended (none
/// when the request changed nothing).
#[derive(Debug)]
pub struct Written {
    pub rsvp: RsvpRow,
    pub event_type: Option<EventType>,
    /// The transaction's xid, as the statement that appended this write's outbox row
    /// returned it: none when the write appended nothing, and for a create, whose
    /// batch's statement returns it once (see [`Created`]).
    pub xid: Option<String>,
}

pub(crate) fn not_enough_seats() -> ApiError {
    ApiError::Conflict("not enough seats left at this event".into())
}

/// Appends the outbox row of a change to `rsvp`; returns what the write did.
async fn append(
    tx: &mut Tx<'_>,
    event_type: EventType,
    rsvp: RsvpRow,
    previous_status: Option<RsvpStatus>,
    traceparent: Option<&str>,
) -> Result<Written, ApiError> {
    let event = CloudEvent::new(event_type, rsvp.event_data(previous_status), rsvp.updated_at);
    // Its seats were adjusted (and checked) before the change.
    let appended = outbox::append(tx, &[(event, traceparent)], &HashMap::new(), &[]).await?;
    Ok(Written { rsvp, event_type: Some(event_type), xid: appended.and_then(outbox::Appended::xid) })
}

/// Applies `changes` for the holder of the rsvp's `token`.
pub async fn update_rsvp(
    tx: &mut Tx<'_>,
    id: Uuid,
    token: &str,
    changes: &RsvpChanges,
    traceparent: Option<&str>,
) -> Result<Written, ApiError> {
    let current = rsvps::lock_by_id(tx, id).await?.ok_or(ApiError::NotFound("rsvp"))?;
    let presented = TokenHash::of(token);
    if !current.token_hash().is_some_and(|stored| stored.matches(&presented)) {
        return Err(ApiError::Forbidden);
    }
    let status = changes.status.unwrap_or(current.status());
    let name = changes.name.as_ref().map_or(current.name.as_str(), |n| n.as_str());
    let guests = changes.guests.map_or(current.guests, |g| g.value());
    if status == current.status() && name == current.name && guests == current.guests {
        return Ok(Written { rsvp: current, event_type: None, xid: None });
    }
    let delta = status.seats(guests) - current.seats();
    if !events::adjust_seats(tx, current.event_id, delta).await? {
        return Err(not_enough_seats());
    }
    let updated = rsvps::update(tx, id, status, name, guests).await?;
    append(tx, EventType::RsvpUpdated, updated, Some(current.status()), traceparent).await
}

/// Cancels the rsvp whose token is `token`; cancelling twice is a conflict.
pub async fn cancel_rsvp(tx: &mut Tx<'_>, token: &str, traceparent: Option<&str>) -> Result<Written, ApiError> {
    let current = rsvps::lock_by_token(tx, &TokenHash::of(token)).await?.ok_or(ApiError::NotFound("rsvp"))?;
    if current.status() == RsvpStatus::Cancelled {
        return Err(ApiError::Conflict("this rsvp is already cancelled".into()));
    }
    events::adjust_seats(tx, current.event_id, -current.seats()).await?;
    let cancelled = rsvps::update(tx, current.id, RsvpStatus::Cancelled, &current.name, current.guests).await?;
    append(tx, EventType::RsvpCancelled, cancelled, Some(current.status()), traceparent).await
}

/// Deletes the rsvp; its event carries the rsvp as it was, one version on.
pub async fn delete_rsvp(tx: &mut Tx<'_>, id: Uuid, traceparent: Option<&str>) -> Result<Written, ApiError> {
    let mut deleted = rsvps::delete(tx, id).await?.ok_or(ApiError::NotFound("rsvp"))?;
    events::adjust_seats(tx, deleted.event_id, -deleted.seats()).await?;
    deleted.version += 1;
    deleted.updated_at = chrono::Utc::now();
    append(tx, EventType::RsvpDeleted, deleted, None, traceparent).await
}

/// One write, as the coalescer queues it.
#[derive(Debug, Clone)]
pub enum WriteOp {
    /// A new rsvp: creates run together, in one statement per batch (see [`create_rsvps`]).
    Create { event_id: Uuid, rsvp: NewRsvp },
    /// A change to an existing rsvp, applied one by one (see [`apply`]).
    Change(Change),
}

/// A write to an rsvp that exists: its event is known only once its row is read.
#[derive(Debug, Clone)]
pub enum Change {
    Update { id: Uuid, token: String, changes: RsvpChanges },
    Cancel { token: String },
    Delete { id: Uuid },
}

/// What a write returns to its request.
#[derive(Debug)]
pub struct WriteOutcome {
    pub written: Written,
    /// The new rsvp's token, for `Create` only.
    pub token: Option<String>,
}

/// Applies `change` inside `tx`; the caller commits.
pub async fn apply(tx: &mut Tx<'_>, change: &Change, traceparent: Option<&str>) -> Result<WriteOutcome, ApiError> {
    let written = match change {
        Change::Update { id, token, changes } => update_rsvp(tx, *id, token, changes, traceparent).await?,
        Change::Cancel { token } => cancel_rsvp(tx, token, traceparent).await?,
        Change::Delete { id } => delete_rsvp(tx, *id, traceparent).await?,
    };
    Ok(WriteOutcome { written, token: None })
}
