//! Redis keys of the api's read-through cache, shared with the cache consumer.
//!
//! # Why generations
//! The api never invalidates on write; the cache consumer does, after the relay
//! published the change. A plain "delete the key" invalidation loses a race: a reader
//! loads the old rows from Postgres, the consumer deletes the key, then the reader
//! stores the old rows and they live until their TTL.
//!
//! So every cached value lives under a key that embeds the current *generation* of
//! its entity, and invalidation replaces the generation with a new random one:
//! 1. a reader reads the generation `g` (creating one with `SET NX` if missing),
//! 2. reads `…:g{g}:…`; on a miss loads from Postgres and stores under `…:g{g}:…`.
//!
//! A reader that read `g` before an invalidation may still store rows it loaded
//! before the write committed, but only under the old generation, which no reader
//! looks at any more. A reader that read the generation after the invalidation also
//! loads after it, so after the commit, and sees the write. Generations are random
//! 64-bit values rather than counters so that an evicted or expired generation key
//! can never come back as a value that old entries are still stored under.

use uuid::Uuid;

/// Version of the key layout: bump it when the cached JSON changes shape, so that
/// old and new api versions never read each other's values.
const PREFIX: &str = "rsvp:v1";

/// Seconds a cached value lives; the bound on staleness if an invalidation is lost.
pub const VALUE_TTL_SECONDS: i64 = 300;
/// Seconds a generation key lives; far above the value TTL, refreshed on invalidation.
pub const GENERATION_TTL_SECONDS: i64 = 86_400;

/// The generation key of an event: covers the event with its counts and its rsvp list.
pub fn event_generation(event_id: Uuid) -> String {
    format!("{PREFIX}:event:{event_id}:gen")
}

/// The event with its rsvp counts, under generation `generation`.
pub fn event_detail(event_id: Uuid, generation: &str) -> String {
    format!("{PREFIX}:event:{event_id}:g{generation}:detail")
}

/// One page of the event's rsvp list, under generation `generation`; `page` names the
/// page (its limit and cursor). Every page of an event shares the event's generation,
/// so one invalidation retires them all.
pub fn event_rsvps_page(event_id: Uuid, generation: &str, page: &str) -> String {
    format!("{PREFIX}:event:{event_id}:g{generation}:rsvps:{page}")
}

/// The generation key of one rsvp.
pub fn rsvp_generation(rsvp_id: Uuid) -> String {
    format!("{PREFIX}:rsvp:{rsvp_id}:gen")
}

/// One rsvp, under generation `generation`.
pub fn rsvp(rsvp_id: Uuid, generation: &str) -> String {
    format!("{PREFIX}:rsvp:{rsvp_id}:g{generation}")
}

/// A fresh generation: random, so it never repeats an earlier one.
pub fn new_generation() -> String {
    format!("{:016x}", Uuid::new_v4().as_u64_pair().0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_of_different_generations_have_different_keys() {
        let id = Uuid::now_v7();
        let (a, b) = (new_generation(), new_generation());
        assert_ne!(a, b);
        assert_ne!(event_detail(id, &a), event_detail(id, &b));
        assert_ne!(event_detail(id, &a), event_rsvps_page(id, &a, "50:first"));
        assert_ne!(event_rsvps_page(id, &a, "50:first"), event_rsvps_page(id, &a, "200:first"));
        assert_ne!(event_rsvps_page(id, &a, "50:first"), event_rsvps_page(id, &b, "50:first"));
        assert!(event_detail(id, &a).starts_with("rsvp:v1:event:"));
    }
}
