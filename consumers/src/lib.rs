//! The consumers of `rsvp-events`: a cache-invalidation group and an analytics group,
//! each with its offsets stored beside its effects, partitions owned through Postgres
//! advisory locks, and a dead-letter table.

pub mod analytics;
pub mod app;
pub mod cache;
pub mod config;
pub mod dlq;
pub mod fault;
pub mod group;
pub mod offsets;
pub mod ownership;
pub mod partition;
pub mod record;
pub mod runner;
pub mod status;
