//! The events the groups of one instance decoded lately, per partition. Each group
//! fetches the same records and decodes their JSON itself, which at the pipeline's
//! full rate was a fifth of the consumers' CPU (docs/NOTES.md). A group takes the
//! event another one decoded instead.
//!
//! Decoding is a function of a record's value and headers alone
//! ([`crate::record::RawRecord::decode`]), so an event is taken only for a record with
//! the same value and headers at the same offset: what a group gets is what decoding
//! would have given it. Which log the record is in is not this module's concern: the
//! worker checked its batch against its anchor before it decodes, and a record of
//! another log at the same offset differs (its `ce_id` at least) and is decoded anew.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
};

use rskafka::record::RecordAndOffset;
use rsvp_contract::CloudEvent;

/// Every partition's recently decoded events, shared by the groups of one instance.
pub struct DecodedEvents {
    /// The most events kept per partition; the lowest offsets go first.
    per_partition: usize,
    partitions: Mutex<HashMap<i32, VecDeque<Kept>>>,
}

struct Kept {
    record: Arc<RecordAndOffset>,
    event: Arc<CloudEvent>,
}

impl DecodedEvents {
    pub fn new(per_partition: usize) -> Arc<Self> {
        Arc::new(Self { per_partition, partitions: Mutex::default() })
    }

    /// For each of `records` (one partition's, in offset order), the event decoded
    /// from a record with the same value and headers at its offset, if one is kept.
    pub fn find(&self, partition: i32, records: &[Arc<RecordAndOffset>]) -> Vec<Option<Arc<CloudEvent>>> {
        let partitions = self.partitions.lock().expect("decoded events");
        let Some(kept) = partitions.get(&partition) else { return vec![None; records.len()] };
        records
            .iter()
            .map(|record| {
                let at = kept.binary_search_by_key(&record.offset, |k| k.record.offset).ok()?;
                same_content(&kept[at].record, record).then(|| kept[at].event.clone())
            })
            .collect()
    }

    /// Keeps `decoded`, one partition's records in offset order with the events
    /// decoded from them, in place of whatever was kept at their offsets.
    pub fn keep(&self, partition: i32, decoded: impl IntoIterator<Item = (Arc<RecordAndOffset>, Arc<CloudEvent>)>) {
        let mut partitions = self.partitions.lock().expect("decoded events");
        let kept = partitions.entry(partition).or_default();
        for (record, event) in decoded {
            let fresh = Kept { record, event };
            match kept.binary_search_by_key(&fresh.record.offset, |k| k.record.offset) {
                Ok(at) => kept[at] = fresh,
                Err(at) => kept.insert(at, fresh),
            }
        }
        while kept.len() > self.per_partition {
            kept.pop_front();
        }
    }
}

/// Whether decoding the two records gives the same result: the same value and headers
/// (the same record, shared, needs no comparing).
fn same_content(a: &Arc<RecordAndOffset>, b: &Arc<RecordAndOffset>) -> bool {
    Arc::ptr_eq(a, b) || (a.record.value == b.record.value && a.record.headers == b.record.headers)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::Utc;
    use rskafka::record::Record;

    use super::*;

    fn record(offset: i64, value: &str) -> Arc<RecordAndOffset> {
        let record = Record {
            key: Some(b"key".to_vec()),
            value: Some(value.as_bytes().to_vec()),
            headers: BTreeMap::from([("ce_id".to_owned(), value.as_bytes().to_vec())]),
            timestamp: Utc::now(),
        };
        Arc::new(RecordAndOffset { record, offset })
    }

    fn event() -> Arc<CloudEvent> {
        Arc::new(crate::record::created_event())
    }

    #[test]
    fn a_record_with_the_same_value_and_headers_at_the_offset_gets_the_kept_event() {
        let decoded = DecodedEvents::new(10);
        let (first, second) = (event(), event());
        decoded.keep(3, [(record(7, "a"), first.clone()), (record(8, "b"), second.clone())]);

        // Another group's copies of the same records, one of another log at 8, and
        // one the instance never decoded.
        let found = decoded.find(3, &[record(7, "a"), record(8, "other log"), record(9, "c")]);

        assert!(Arc::ptr_eq(found[0].as_ref().unwrap(), &first));
        assert!(found[1].is_none() && found[2].is_none());
        assert!(decoded.find(4, &[record(7, "a")])[0].is_none(), "another partition");
        // A record differing only in a header is another input to decoding.
        let mut changed = (*record(7, "a")).clone();
        changed.record.headers.insert("ce_type".into(), b"x".to_vec());
        assert!(decoded.find(3, &[Arc::new(changed)])[0].is_none());
    }

    #[test]
    fn a_record_kept_at_an_offset_replaces_the_one_there_and_the_lowest_offsets_go_first() {
        let decoded = DecodedEvents::new(3);
        decoded.keep(0, [(record(5, "a"), event()), (record(6, "b"), event())]);
        let newer_log = event();
        decoded.keep(0, [(record(5, "new"), newer_log.clone()), (record(4, "older"), event())]);
        decoded.keep(0, [(record(7, "c"), event())]);

        let found =
            decoded.find(0, &[record(4, "older"), record(5, "a"), record(5, "new"), record(6, "b"), record(7, "c")]);

        // Four kept, three fit: offset 4 went.
        assert_eq!(found.iter().map(Option::is_some).collect::<Vec<_>>(), [false, false, true, true, true]);
        assert!(Arc::ptr_eq(found[2].as_ref().unwrap(), &newer_log));
    }
}
