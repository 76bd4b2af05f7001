//! Metric names and their descriptions; every `_seconds` metric shares the admin
//! module's buckets.

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

pub const BACKLOG_ROWS: &str = "outbox_backlog_rows";
pub const OLDEST_UNPUBLISHED_AGE: &str = "outbox_oldest_unpublished_age_seconds";
pub const PUBLISHED: &str = "relay_published_total";
pub const PUBLISH_DURATION: &str = "relay_publish_duration_seconds";
pub const COMMIT_TO_ACK: &str = "relay_commit_to_ack_seconds";
pub const ERRORS: &str = "relay_errors_total";
pub const LEADER: &str = "relay_leader";
pub const WATERMARK_STALL: &str = "relay_watermark_stall_seconds";
pub const REPLAYED: &str = "relay_replayed_total";
pub const PRUNED: &str = "relay_pruned_total";
pub const KAFKA_REQUESTS: &str = "relay_kafka_requests_total";
pub const KAFKA_REQUEST_DURATION: &str = "relay_kafka_request_duration_seconds";
pub const BATCH_SPLITS: &str = "relay_batch_splits_total";
pub const CLUSTER_MOVES: &str = "relay_cluster_moves_total";
pub const EARLIER_CLUSTER_ROWS: &str = "outbox_earlier_cluster_rows";
pub const CURSOR_IMPOSSIBLE: &str = "relay_cursor_impossible";

/// Registers help texts and sets the gauges to zero, so a scrape shows every series
/// from the start.
pub fn describe() {
    describe_gauge!(
        BACKLOG_ROWS,
        "Committed outbox rows the relay has not published yet: counted up to 10000, estimated from outbox ids above."
    );
    describe_gauge!(
        OLDEST_UNPUBLISHED_AGE,
        Unit::Seconds,
        "Age of the first committed, unpublished outbox row in commit order."
    );
    describe_counter!(PUBLISHED, "Outbox rows the broker acknowledged, by partition.");
    describe_histogram!(PUBLISH_DURATION, Unit::Seconds, "Duration of one produce request, by result.");
    describe_histogram!(COMMIT_TO_ACK, Unit::Seconds, "From an outbox row's insert to the broker's acknowledgement.");
    describe_counter!(ERRORS, "Failures the relay retried or stopped on, by kind.");
    describe_gauge!(LEADER, "1 while this process holds the leader lock and publishes, else 0.");
    describe_gauge!(
        WATERMARK_STALL,
        Unit::Seconds,
        "How long committed rows have waited behind an older transaction that is still open."
    );
    describe_counter!(REPLAYED, "Rows published again by replay.");
    describe_counter!(PRUNED, "Published outbox rows deleted by retention.");
    describe_counter!(KAFKA_REQUESTS, "Kafka client calls, by operation and result.");
    describe_histogram!(KAFKA_REQUEST_DURATION, Unit::Seconds, "Kafka client call duration, by operation and result.");
    describe_counter!(BATCH_SPLITS, "Batches the broker refused as too large and the relay split; more than a few mean RELAY_MAX_BATCH_BYTES is above the broker's message.max.bytes.");
    describe_counter!(CLUSTER_MOVES, "Times the cursor moved on from the rows written on one Postgres cluster to the next (after a restore or move).");
    describe_gauge!(
        EARLIER_CLUSTER_ROWS,
        "Unpublished outbox rows written on an earlier Postgres cluster (restored or moved here), counted up to 10000."
    );
    describe_gauge!(CURSOR_IMPOSSIBLE, "1 while the stored cursor cannot belong to this database and the relay refuses to publish (RUNBOOK: Moving the database).");
    rsvp_contract::role_lock::describe_metrics();
    metrics::counter!(rsvp_contract::role_lock::LOST, "role" => crate::leader::ROLE).absolute(0);
    metrics::gauge!(BACKLOG_ROWS).set(0.0);
    metrics::gauge!(EARLIER_CLUSTER_ROWS).set(0.0);
    metrics::gauge!(CURSOR_IMPOSSIBLE).set(0.0);
    metrics::gauge!(OLDEST_UNPUBLISHED_AGE).set(0.0);
    metrics::gauge!(LEADER).set(0.0);
    metrics::gauge!(WATERMARK_STALL).set(0.0);
    metrics::counter!(BATCH_SPLITS).increment(0);
}

/// Counts rows the broker acknowledged on `partition`.
pub fn published(partition: &str, rows: usize) {
    metrics::counter!(PUBLISHED, "partition" => partition.to_owned()).increment(rows as u64);
}

/// Counts a batch the broker refused as too large and the relay split.
pub fn batch_split() {
    metrics::counter!(BATCH_SPLITS).increment(1);
}

/// Records the time from a row's insert to its acknowledgement.
pub fn commit_to_ack(elapsed: std::time::Duration) {
    metrics::histogram!(COMMIT_TO_ACK).record(elapsed.as_secs_f64());
}
