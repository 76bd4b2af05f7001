//! Integration tests of the api against real PostgreSQL and Redis.
#![allow(unreachable_pub)]

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
