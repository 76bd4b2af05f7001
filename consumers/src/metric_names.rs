//! Metric names of the consumers and their descriptions; every `_seconds` metric
//! shares the admin module's buckets. Every metric carries the `group` label.

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

pub const PROCESSED: &str = "consumer_processed_total";
pub const DEAD_LETTERS: &str = "consumer_dead_letters_total";
pub const RETRIES: &str = "consumer_retries_total";
pub const TRANSIENT_ERRORS: &str = "consumer_transient_errors_total";
pub const OFFSET_RESETS: &str = "consumer_offset_resets_total";
pub const VERSION_GAPS: &str = "consumer_version_gaps_total";
pub const APPLIED_EVENTS_PRUNED: &str = "consumer_applied_events_pruned_total";
pub const EVENT_AGE: &str = "consumer_event_age_seconds";
pub const BATCH_DURATION: &str = "consumer_batch_duration_seconds";
pub const LAG: &str = "consumer_lag_records";
pub const OWNED_PARTITIONS: &str = "consumer_owned_partitions";
pub const FETCHES: &str = "consumer_fetches_total";
pub const FETCH_DURATION: &str = "consumer_fetch_duration_seconds";
pub const SHARED_FETCHES: &str = "consumer_shared_fetches_total";

/// Registers the help texts of every consumer metric and of the role metrics.
pub fn describe() {
    describe_counter!(PROCESSED, "Records handled, by group and result (applied, duplicate, dead_letter).");
    describe_counter!(DEAD_LETTERS, "Records written to consumer_dead_letters, by group.");
    describe_counter!(
        RETRIES,
        "Batches applied again because a dependency failed, by group and dependency (redis, postgres)."
    );
    describe_counter!(
        TRANSIENT_ERRORS,
        "Batch commits that failed on contention, a lost connection or a dependency and were retried, by group."
    );
    describe_counter!(
        OFFSET_RESETS,
        "Times a partition restarted from the broker's earliest offset because its stored offset was gone, by group."
    );
    describe_counter!(
        VERSION_GAPS,
        "Rsvp changes applied with earlier versions missing or a previous status that did not match, by group."
    );
    describe_counter!(
        APPLIED_EVENTS_PRUNED,
        "analytics.applied_events rows deleted because their rsvp's applied_through covers them."
    );
    describe_histogram!(EVENT_AGE, Unit::Seconds, "From an event's time to its being applied, by group.");
    describe_histogram!(BATCH_DURATION, Unit::Seconds, "Duration of one fetched batch's processing, by group.");
    describe_gauge!(LAG, "Records on the broker after a partition's next offset, by group and partition.");
    describe_gauge!(OWNED_PARTITIONS, "Partitions this instance owns, by group.");
    describe_counter!(
        FETCHES,
        "Fetch requests sent to the broker by partition workers, by group and result (records, empty, error)."
    );
    describe_counter!(
        SHARED_FETCHES,
        "Fetches answered from records another group of this instance had just fetched, instead of by the broker, by group."
    );
    describe_histogram!(
        FETCH_DURATION,
        Unit::Seconds,
        "From sending a partition worker's fetch request to its answer, by group and result (records, empty, error)."
    );
    rsvp_contract::role_lock::describe_metrics();
}

/// Shows the role-loss counters from the start, so that an alert on their increase
/// sees the first loss.
pub fn start_role_counters_at_zero() {
    for role in [crate::ownership::PARTITION_ROLE, crate::ownership::MEMBER_ROLE] {
        metrics::counter!(rsvp_contract::role_lock::LOST, "role" => role).absolute(0);
    }
}
