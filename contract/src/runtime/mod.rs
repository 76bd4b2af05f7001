//! The plumbing every process runs on: the settings all three read, the database
//! pool and migrations, the Kafka client, the admin port, shutdown, retry backoff,
//! logging and secret-hiding.
//!
//! It lives in `contract`, the one crate the api, the relay and the consumers share,
//! because it is part of what they must agree on: one environment (`DATABASE_URL`,
//! `KAFKA_BROKERS`, `KAFKA_TOPIC`, `ADMIN_ADDR`) configures all three the same way,
//! one migrator brings any of them up on the same schema, and operators probe each
//! one's admin port alike.

pub mod admin;
pub mod backoff;
pub mod database;
pub mod kafka;
pub mod logging;
pub mod secret;
pub mod settings;
pub mod shutdown;
