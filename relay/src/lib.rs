//! The outbox relay: publishes every committed outbox row to Kafka exactly once in
//! normal operation, in commit order per key, with receipts, audit, replay and
//! retention. See `docs/relay.md` for the design.

pub mod audit;
pub mod batch_size;
pub mod batches;
pub mod config;
pub mod error;
pub mod generation;
pub mod kafka;
pub mod leader;
pub mod metric_names;
pub mod observe;
pub mod outbox;
pub mod pool;
pub mod prune;
pub mod replay;
pub mod runner;
pub mod startup;
pub mod store;
pub mod worker;

pub use error::RelayError;
pub use worker::{StepOutcome, Worker};
