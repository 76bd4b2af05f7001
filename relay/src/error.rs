//! The relay's domain errors; each has a bounded `kind` for `relay_errors_total`.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Postgres refused or lost a query (including the leader's own session).
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The broker answered with an error, or the client could not reach it.
    #[error("kafka {op}: {source}")]
    Kafka {
        op: &'static str,
        #[source]
        source: rskafka::client::error::Error,
    },
    /// The broker did not answer in time (paused, partitioned, overloaded).
    #[error("kafka {op} timed out after {after:?}")]
    KafkaTimeout { op: &'static str, after: Duration },
    /// The topic does not exist and this command does not create it.
    #[error("topic {0} does not exist")]
    TopicMissing(String),
    /// The leader's session ended, failed or did not answer in time, so its lock is
    /// gone or about to be; another relay may lead now.
    #[error("lost the leader lock")]
    LostLeadership(#[from] rsvp_contract::role_lock::RoleLost),
}

impl RelayError {
    /// The `kind` label of `relay_errors_total`: a fixed, small set.
    pub fn kind(&self) -> &'static str {
        match self {
            RelayError::Database(_) => "database",
            RelayError::Kafka { .. } => "kafka",
            RelayError::KafkaTimeout { .. } => "kafka_timeout",
            RelayError::TopicMissing(_) => "topic_missing",
            RelayError::LostLeadership(_) => "leadership",
        }
    }

    /// Counts the error in `relay_errors_total{kind}`.
    pub fn record(&self) {
        metrics::counter!(crate::metrics::ERRORS, "kind" => self.kind()).increment(1);
    }
}
