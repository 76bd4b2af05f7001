//! The api's SQL: events, rsvps, the outbox, idempotency records, and the analytics
//! consumer's statistics (read only). Functions that write take the caller's
//! transaction, so that a handler composes them and commits once.

pub mod analytics;
pub mod events;
pub mod idempotency;
pub mod key_locks;
pub mod outbox;
pub mod rsvps;
pub mod transactions;

pub type Tx<'c> = sqlx::Transaction<'c, sqlx::Postgres>;
