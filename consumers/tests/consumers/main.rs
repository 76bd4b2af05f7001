//! Integration tests of the consumers against real Postgres, Redis and Tansu.
// A test that unwraps fails there, with the error: what `unwrap_used` guards against in
// the services does not apply here.
#![allow(clippy::unwrap_used)]

mod analytics;
mod applied_events;
mod asyncapi;
mod cache;
mod dead_letters;
mod end_to_end;
mod helpers;
mod idle;
mod lost_log;
mod notifications;
mod ordering;
mod ownership;
mod raw_kafka;
mod shared_fetch;
mod status;
mod transient;
