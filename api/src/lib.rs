//! The rsvp api: events and rsvps over REST, each write committing its row and an
//! outbox row in one PostgreSQL transaction.

pub mod auth;
pub mod cache;
pub mod coalesce;
pub mod config;
pub mod deadline;
pub mod domain;
pub mod error;
pub mod http_metrics;
pub mod idempotency;
pub mod metric_names;
pub mod openapi;
pub mod routes;
pub mod serve;
pub mod startup;
pub mod state;
pub mod store;
pub mod writes;
