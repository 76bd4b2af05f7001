//! SQL for events, rsvps and the outbox. Functions that write take the caller's
//! transaction, so that a handler composes them and commits once.

pub mod events;
pub mod idempotency;
pub mod key_locks;
pub mod outbox;
pub mod rsvps;
pub mod transactions;

pub type Tx<'c> = sqlx::Transaction<'c, sqlx::Postgres>;
