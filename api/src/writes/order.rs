//! Per-key commit order: before a transaction does anything that gives it an xid, it
//! locks the Kafka key (the event) of every write it will make.

use std::collections::{HashMap, HashSet};

use uuid::Uuid;

use super::{Change, WriteOp};
use crate::{
    auth::TokenHash,
    store::{key_locks, rsvps, Tx},
};

/// Locks the events `ops` write to (the advisory lock of each, in one sorted order)
/// and returns them sorted. Call it first in the transaction, before any row lock,
/// insert, update or delete. Rsvps are looked up by a plain read, which assigns no
/// xid; an rsvp's event never changes, and an rsvp the lookup does not see cannot be
/// written by these ops either (its id and token reach a client only after its
/// creating transaction committed), so the locked events cover every outbox row the
/// transaction will append.
///
/// Why this makes the relay's `(xid, id)` order the commit order of any two
/// transactions T1 and T2 that append outbox rows with one key K (event E):
///
/// 1. Postgres assigns a transaction its xid at its first row lock or write, from a
///    counter that only grows. Both take E's lock before either, so each gets its
///    xid while holding E's lock.
/// 2. An `xact` advisory lock is held until commit or rollback. Say T1 got E's lock
///    first: T2 gets it only after T1 ended, so T2's xid is assigned after T1
///    committed, and xid(T1) < xid(T2).
/// 3. T2 commits after it got the lock, so after T1 committed: commit(T1) <
///    commit(T2). Hence xid order = commit order for the writers of K, whatever else
///    either waits for (another event's row lock, a held rsvp row) after its xid.
/// 4. The relay reads rows in `(xid, id)` order and publishes one key's rows to one
///    partition in that order, so K's records follow commit order, and so do one
///    rsvp's versions (an rsvp's writers all write its event's key).
///
/// Deadlock freedom: every transaction takes its advisory locks in ascending key
/// order in one statement before any row lock; once it holds them, no other api
/// transaction can touch its events or their rsvps, and events are then row-locked
/// in id order as before (those row locks still guard seat counts against writers
/// that bypass these locks). Two events sharing a key only wait for each other.
#[tracing::instrument(skip_all, err)]
pub async fn lock_writers<'o>(
    tx: &mut Tx<'_>,
    ops: impl IntoIterator<Item = &'o WriteOp>,
) -> Result<Vec<Uuid>, sqlx::Error> {
    let ops: Vec<&WriteOp> = ops.into_iter().collect();
    let event_ids = sorted(events_of(tx, &ops).await?.into_iter().flatten());
    key_locks::lock_events(tx, &event_ids).await?;
    Ok(event_ids)
}

/// The events of `ops` after [`try_lock_writers`].
pub struct TriedLocks {
    /// The event of each op, in op order; `None` for an rsvp that does not exist.
    pub events: Vec<Option<Uuid>>,
    /// The events whose lock this transaction holds, sorted.
    pub locked: Vec<Uuid>,
    /// The events whose lock another transaction holds: their ops must wait or go.
    pub held: HashSet<Uuid>,
}

/// [`lock_writers`] without waiting: takes the locks no other transaction holds and
/// says which are held. What it takes keeps the order argument above intact (each
/// key's lock is still taken before the xid); what it skips this transaction does
/// not write to.
#[tracing::instrument(skip_all, err)]
pub async fn try_lock_writers(tx: &mut Tx<'_>, ops: &[&WriteOp]) -> Result<TriedLocks, sqlx::Error> {
    let events = events_of(tx, ops).await?;
    let all = sorted(events.iter().flatten().copied());
    let held_keys = key_locks::try_lock_events(tx, &all).await?;
    let (held, locked): (Vec<Uuid>, Vec<Uuid>) =
        all.into_iter().partition(|event| held_keys.contains(&key_locks::lock_key(*event)));
    Ok(TriedLocks { events, locked, held: held.into_iter().collect() })
}

/// The event each op writes to, in op order: an rsvp's is looked up by a plain read.
async fn events_of(tx: &mut Tx<'_>, ops: &[&WriteOp]) -> Result<Vec<Option<Uuid>>, sqlx::Error> {
    let (mut rsvp_ids, mut token_hashes) = (Vec::new(), Vec::new());
    for op in ops {
        match op {
            WriteOp::Create { .. } => {}
            WriteOp::Change(Change::Update { id, .. } | Change::Delete { id }) => rsvp_ids.push(*id),
            WriteOp::Change(Change::Cancel { token }) => token_hashes.push(TokenHash::of(token).as_bytes().to_vec()),
        }
    }
    let rsvps = rsvps::events_of(tx, &rsvp_ids, &token_hashes).await?;
    let by_id: HashMap<Uuid, Uuid> = rsvps.iter().map(|(id, _, event)| (*id, *event)).collect();
    let by_token: HashMap<&[u8], Uuid> = rsvps.iter().map(|(_, hash, event)| (hash.as_slice(), *event)).collect();
    Ok(ops
        .iter()
        .map(|op| match op {
            WriteOp::Create { event_id, .. } => Some(*event_id),
            WriteOp::Change(Change::Update { id, .. } | Change::Delete { id }) => by_id.get(id).copied(),
            WriteOp::Change(Change::Cancel { token }) => by_token.get(TokenHash::of(token).as_bytes()).copied(),
        })
        .collect())
}

fn sorted(events: impl Iterator<Item = Uuid>) -> Vec<Uuid> {
    let mut events: Vec<Uuid> = events.collect();
    events.sort_unstable();
    events.dedup();
    events
}
