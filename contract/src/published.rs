//! The relay's wake-up call to the consumers: after the broker acknowledged a step's
//! batches and their receipts commit, the relay notifies [`CHANNEL`] with the topic and
//! the partitions that got records. A consumer waiting between fetches of one of them
//! fetches at once instead of at its next poll. It is only a hint: a consumer that
//! misses it (no LISTEN connection, another producer on the topic) still polls.

/// The Postgres channel the relay notifies.
pub const CHANNEL: &str = "outbox_published";

/// What one notification says: records reached these partitions of `topic`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published<'a> {
    pub topic: &'a str,
    pub partitions: Vec<i32>,
}

/// Reads a notification's payload, `TOPIC P,P,...` as the relay writes it (topic
/// names hold no spaces); none for anything else.
pub fn parse(payload: &str) -> Option<Published<'_>> {
    let (topic, partitions) = payload.rsplit_once(' ')?;
    let partitions = partitions.split(',').map(str::parse).collect::<Result<Vec<i32>, _>>().ok()?;
    (!topic.is_empty()).then_some(Published { topic, partitions })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_names_its_topic_and_partitions_and_anything_else_is_ignored() {
        assert_eq!(parse("rsvp-events 0,3,5"), Some(Published { topic: "rsvp-events", partitions: vec![0, 3, 5] }));
        assert_eq!(parse("t 2"), Some(Published { topic: "t", partitions: vec![2] }));
        for garbage in ["", "rsvp-events", "rsvp-events ", " 1", "rsvp-events 1,x", "rsvp-events 1,,2"] {
            assert_eq!(parse(garbage), None, "{garbage:?}");
        }
    }
}
