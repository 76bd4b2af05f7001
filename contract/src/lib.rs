//! The contract between the api, the relay and the consumers.
//!
//! Everything here crosses a process boundary: the CloudEvents envelope in the
//! outbox and on the topic, the Kafka header names, the Redis cache keys that the
//! api fills and the cache consumer invalidates, how an outbox row becomes a Kafka
//! record; the role lock that the relay's leader and the consumers' partition owners
//! share; and the [`runtime`] all three processes run on.

pub mod cache_keys;
pub mod event;
pub mod headers;
pub mod outbox_record;
pub mod partitioner;
pub mod published;
pub mod role_lock;
pub mod runtime;
#[cfg(feature = "testing")]
pub mod testing;

pub use event::{CloudEvent, EventType, RsvpData, RsvpStatus};
