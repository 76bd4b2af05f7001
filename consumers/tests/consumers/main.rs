//! Integration tests of the consumers against real Postgres, Redis and Tansu.

mod analytics;
mod cache;
mod dead_letters;
mod end_to_end;
mod helpers;
mod ownership;
mod status;
