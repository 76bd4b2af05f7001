//! Metric names of the api and their descriptions; every `_seconds` metric shares
//! the admin module's buckets.

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

pub const HTTP_REQUESTS: &str = "http_requests_total";
pub const HTTP_REQUEST_DURATION: &str = "http_request_duration_seconds";
pub const HTTP_CONNECTIONS_OPEN: &str = "http_connections_open";
pub const HTTP_CONNECTIONS_REJECTED: &str = "http_connections_rejected_total";
pub const HTTP_HEADER_READ_TIMEOUTS: &str = "http_header_read_timeouts_total";
pub const WRITE_BATCHES: &str = "api_write_batches_total";
pub const WRITE_BATCHED_REQUESTS: &str = "api_write_batched_requests_total";
pub const WRITE_BATCH_RETRIES: &str = "api_write_batch_retries_total";
pub const WRITE_DEADLINES_MISSED: &str = "api_write_deadlines_missed_total";
pub const OUTBOX_ROWS_WRITTEN: &str = "outbox_rows_written_total";
pub const CACHE_REQUESTS: &str = "cache_requests_total";
pub const IDEMPOTENT_REQUESTS: &str = "api_idempotent_requests_total";
pub const IDEMPOTENCY_KEYS_PRUNED: &str = "api_idempotency_keys_pruned_total";

/// Registers the help texts of every api metric.
pub fn describe() {
    describe_counter!(HTTP_REQUESTS, "Requests answered, by method, matched route and status.");
    describe_histogram!(HTTP_REQUEST_DURATION, Unit::Seconds, "Time to answer a request, by method and matched route.");
    describe_gauge!(HTTP_CONNECTIONS_OPEN, "Client connections open now.");
    describe_counter!(HTTP_CONNECTIONS_REJECTED, "Connections closed on accept because MAX_CONNECTIONS were open.");
    describe_counter!(
        HTTP_HEADER_READ_TIMEOUTS,
        "Connections closed because a request's headers took longer than HEADER_READ_TIMEOUT."
    );
    describe_counter!(WRITE_BATCHES, "Write transactions run by the coalescing lanes.");
    describe_counter!(WRITE_BATCHED_REQUESTS, "Writes carried by those transactions.");
    describe_counter!(
        WRITE_BATCH_RETRIES,
        "Shared write transactions run again without a write, by reason (timeout, failure)."
    );
    describe_counter!(
        WRITE_DEADLINES_MISSED,
        "Writes answered 503 at REQUEST_TIMEOUT, by outcome (not_applied, unknown)."
    );
    describe_counter!(OUTBOX_ROWS_WRITTEN, "Outbox rows committed, by event type.");
    describe_counter!(CACHE_REQUESTS, "Read-through cache lookups, by result (hit, miss, error).");
    describe_counter!(
        IDEMPOTENT_REQUESTS,
        "Writes with an Idempotency-Key, by outcome (recorded, replayed, in_use, mismatch, waited: for a request with the same key still running)."
    );
    describe_counter!(IDEMPOTENCY_KEYS_PRUNED, "Expired idempotency keys deleted.");
}
