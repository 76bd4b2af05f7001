//! Integration tests of the consumers against real Postgres, Redis and Tansu.

mod analytics;
mod asyncapi;
mod cache;
mod dead_letters;
mod end_to_end;
mod helpers;
mod idle;
mod lost_log;
mod ordering;
mod ownership;
mod status;
mod transient;
