//! Kafka header names of a published outbox row (CloudEvents Kafka binding, binary mode
//! attributes plus our own).

pub const CE_SPECVERSION: &str = "ce_specversion";
pub const CE_ID: &str = "ce_id";
pub const CE_TYPE: &str = "ce_type";
pub const CE_SOURCE: &str = "ce_source";
pub const CE_TIME: &str = "ce_time";
pub const CONTENT_TYPE: &str = "content-type";
pub const TRACEPARENT: &str = "traceparent";
/// The rsvp's version after the change: consumers detect gaps and ignore replays with it.
pub const RSVP_VERSION: &str = "rsvp_version";
