//! Integration tests of the api against real PostgreSQL and Redis.
#![allow(unreachable_pub)]
// A test that unwraps fails there, with the error: what `unwrap_used` guards against in
// the services does not apply here.
#![allow(clippy::unwrap_used)]

mod cache;
mod coalescing;
mod connections;
mod deadlines;
mod events;
mod health;
mod helpers;
mod idempotency;
mod metrics;
mod ordering;
mod outbox;
mod paging;
mod privacy;
mod rsvps;
mod stats;
