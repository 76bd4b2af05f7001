//! The consumers of `rsvp-events`: cache-invalidation, analytics and notifications
//! groups, each with its offsets stored beside its effects, partitions owned through
//! Postgres advisory locks, and a dead-letter table. A group is a [`group::Consumer`]
//! listed in [`registry`].

pub mod analytics;
mod batch;
pub mod cache;
pub mod config;
pub mod context;
pub mod decoded;
pub mod dlq;
pub mod error;
pub mod fault;
pub mod group;
pub mod metric_names;
pub mod notifications;
pub mod offsets;
pub mod ownership;
pub mod pacing;
pub mod raw_fetch;
pub mod recent;
pub mod record;
pub mod registry;
pub mod runner;
pub mod startup;
pub mod status;
pub mod wakeup;
pub mod worker;
