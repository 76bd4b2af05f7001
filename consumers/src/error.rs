//! Why a partition worker's step failed, and whether it keeps the partition.

use rskafka::client::error::Error as KafkaError;
use rsvp_contract::role_lock::RoleLost;

use crate::offsets::OffsetError;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The connection holding the partition's lock failed: ownership is lost with it.
    #[error("the partition's database connection failed")]
    Connection(#[source] sqlx::Error),
    /// The partition's session ended or did not answer in time (a pause longer than
    /// the role-loss timeout, a cut network): another instance may own it now.
    #[error(transparent)]
    Lost(#[from] RoleLost),
    /// Another instance advanced the offset: this one no longer owns the partition.
    #[error(transparent)]
    Fenced(OffsetError),
    /// The broker failed; retried in place.
    #[error("kafka")]
    Kafka(#[from] KafkaError),
    /// Postgres rejected applying the record at `offset`; counts towards its dead-lettering.
    #[error("applying the record at offset {offset} failed")]
    Record { offset: i64, source: sqlx::Error },
    /// Postgres failed for a reason that is not the record's (a lock or statement
    /// timeout, a deadlock, a serialization failure): retried without limit.
    #[error("applying the batch failed for now")]
    Transient(#[source] sqlx::Error),
    /// A dependency of an exactly-once group's effect besides Postgres failed:
    /// retried without limit.
    #[error("{0} failed")]
    Dependency(&'static str),
}

impl WorkerError {
    /// Whether the worker may retry while keeping the partition.
    pub fn keeps_ownership(&self) -> bool {
        matches!(
            self,
            WorkerError::Kafka(_) | WorkerError::Record { .. } | WorkerError::Transient(_) | WorkerError::Dependency(_)
        )
    }
}

pub(crate) fn db(error: sqlx::Error) -> WorkerError {
    WorkerError::Connection(error)
}

impl From<OffsetError> for WorkerError {
    fn from(error: OffsetError) -> Self {
        match error {
            OffsetError::Database(e) => WorkerError::Connection(e),
            fenced => WorkerError::Fenced(fenced),
        }
    }
}
