//! The relay's domain errors; each has a bounded `kind` for `relay_errors_total`.

use std::time::Duration;

/// The runbook section that says what to do when the relay refuses its cursor.
pub const RUNBOOK: &str = "docs/RUNBOOK.md#moving-the-database";

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
    /// The broker refuses the record of outbox row `id` alone as too large: publishing
    /// cannot pass it until the broker's `message.max.bytes` grows.
    #[error("the broker refuses outbox row {id} ({bytes} bytes as a batch) as too large")]
    RecordTooLarge { id: i64, bytes: usize },
    /// The stored cursor cannot belong to this database (its rows came from another
    /// cluster without saying so): publishing from it could skip rows, so the relay
    /// does not publish until an operator fixes it.
    #[error("the relay cursor {problem}: refusing to publish, see {}", RUNBOOK)]
    CursorImpossible { problem: String },
    /// The cursor changed under the leader (by hand): it leads again from what is stored.
    #[error("the relay cursor was changed by someone else; leading again from what is stored")]
    CursorChanged,
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
            RelayError::RecordTooLarge { .. } => "record_too_large",
            RelayError::CursorImpossible { .. } => "cursor",
            RelayError::CursorChanged => "cursor_changed",
        }
    }

    /// The broker refused a produce request as too large (`MESSAGE_TOO_LARGE`,
    /// `RECORD_LIST_TOO_LARGE`): sending it again can never succeed, a smaller one may.
    pub fn is_too_large(&self) -> bool {
        use rskafka::client::error::{Error, ProtocolError};
        matches!(
            self,
            RelayError::Kafka {
                source: Error::ServerError {
                    protocol_error: ProtocolError::MessageTooLarge | ProtocolError::RecordListTooLarge,
                    ..
                },
                ..
            }
        )
    }

    /// Counts the error in `relay_errors_total{kind}`.
    pub fn record(&self) {
        metrics::counter!(crate::metric_names::ERRORS, "kind" => self.kind()).increment(1);
    }
}
