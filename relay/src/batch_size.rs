//! The exact size of a record batch as rskafka 0.6 puts it into a produce request
//! (Kafka's v2 format, before compression), so that a batch can be cut below the
//! broker's `message.max.bytes` instead of being refused.
//!
//! rskafka keeps its protocol types private, so the encoding is mirrored here from
//! `build_produce_request` and `protocol/record.rs`; an integration test compares it
//! with the bytes rskafka actually sends. Compression only makes a batch of JSON
//! records smaller, so the uncompressed size is a safe bound.

use chrono::{DateTime, Utc};
use rskafka::record::Record;

/// Bytes of a v2 record batch besides its records: base offset (8), batch length (4),
/// partition leader epoch (4), magic (1), crc (4), attributes (2), last offset delta
/// (4), first and max timestamp (8 + 8), producer id (8), producer epoch (2), base
/// sequence (4) and the record count (4).
pub const BATCH_OVERHEAD: usize = 61;

/// Bytes of `value` as a zig-zag varint (Kafka's `varint` and `varlong`).
fn varint_len(value: i64) -> usize {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    let mut len = 1;
    while zigzag >= 0x80 {
        zigzag >>= 7;
        len += 1;
    }
    len
}

/// Bytes of a varint length followed by `len` bytes.
fn bytes_len(len: usize) -> usize {
    varint_len(len as i64) + len
}

/// Encoded bytes of `record` at `offset_delta` in a batch whose first record has
/// `first_timestamp`: its length varint and its body.
pub fn record_len(record: &Record, offset_delta: usize, first_timestamp: DateTime<Utc>) -> usize {
    // A missing key or value is written as length -1: one byte.
    let optional = |bytes: &Option<Vec<u8>>| bytes.as_ref().map_or(1, |b| bytes_len(b.len()));
    let headers: usize =
        record.headers.iter().map(|(name, value)| bytes_len(name.len()) + bytes_len(value.len())).sum();
    let body = 1 // attributes
        + varint_len((record.timestamp - first_timestamp).num_milliseconds())
        + varint_len(offset_delta as i64)
        + optional(&record.key)
        + optional(&record.value)
        + varint_len(record.headers.len() as i64)
        + headers;
    varint_len(body as i64) + body
}

/// The encoded size of one partition's batch while it is being filled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchSize {
    first_timestamp: Option<DateTime<Utc>>,
    records: usize,
    bytes: usize,
}

impl BatchSize {
    /// Encoded bytes of the batch so far; 0 while it is empty (nothing is sent).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn records(&self) -> usize {
        self.records
    }

    /// Encoded bytes the batch would have with `record` appended.
    pub fn with(&self, record: &Record) -> usize {
        let first_timestamp = self.first_timestamp.unwrap_or(record.timestamp);
        let overhead = if self.records == 0 { BATCH_OVERHEAD } else { 0 };
        self.bytes + overhead + record_len(record, self.records, first_timestamp)
    }

    /// Appends `record`.
    pub fn push(&mut self, record: &Record) {
        self.bytes = self.with(record);
        self.first_timestamp.get_or_insert(record.timestamp);
        self.records += 1;
    }
}

/// Encoded bytes of `records` sent as one batch; 0 for none.
pub fn encoded_len(records: &[Record]) -> usize {
    let mut size = BatchSize::default();
    records.iter().for_each(|record| size.push(record));
    size.bytes()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::TimeZone;

    use super::*;

    fn record(key: Option<usize>, value: Option<usize>, headers: &[(&str, usize)], millis: i64) -> Record {
        Record {
            key: key.map(|n| vec![b'k'; n]),
            value: value.map(|n| vec![b'v'; n]),
            headers: headers.iter().map(|(name, n)| ((*name).to_owned(), vec![b'h'; *n])).collect::<BTreeMap<_, _>>(),
            timestamp: Utc.timestamp_millis_opt(1_700_000_000_000 + millis).unwrap(),
        }
    }

    #[test]
    fn varints_grow_a_byte_every_seven_bits_of_the_zigzag_value() {
        for (value, len) in [
            (0, 1),
            (-1, 1),
            (63, 1),
            (-64, 1),
            (64, 2),
            (-65, 2),
            (8191, 2),
            (8192, 3),
            (i64::MAX, 10),
            (i64::MIN, 10),
        ] {
            assert_eq!(varint_len(value), len, "{value}");
        }
    }

    #[test]
    fn an_empty_record_is_seven_bytes_and_the_batch_adds_its_fixed_header() {
        // length 6, attributes, timestamp delta 0, offset delta 0, key -1, value -1, 0 headers
        let empty = record(None, None, &[], 0);
        assert_eq!(record_len(&empty, 0, empty.timestamp), 7);
        assert_eq!(encoded_len(std::slice::from_ref(&empty)), 61 + 7);
        assert_eq!(encoded_len(&[]), 0);
    }

    #[test]
    fn keys_values_and_headers_count_with_their_varint_lengths() {
        // body: 1 + 1 + 1 + (1 + 36) + (2 + 100) + 1 + (1 + 5 + 1 + 3) = 153, plus 2 length bytes
        let keyed = record(Some(36), Some(100), &[("ce_id", 3)], 0);
        assert_eq!(record_len(&keyed, 0, keyed.timestamp), 155);
        // A value of 63 bytes has a one-byte length, 64 bytes a two-byte one.
        let short = record(None, Some(63), &[], 0);
        let long = record(None, Some(64), &[], 0);
        assert_eq!(record_len(&long, 0, long.timestamp) - record_len(&short, 0, short.timestamp), 2);
    }

    #[test]
    fn later_records_pay_for_their_offset_and_timestamp_deltas_even_negative_ones() {
        let first = record(None, None, &[], 0);
        let late = record(None, None, &[], 100); // +100 ms: zigzag 200, two bytes
        let early = record(None, None, &[], -5); // -5 ms: one byte
        assert_eq!(record_len(&late, 1, first.timestamp), 8);
        assert_eq!(record_len(&early, 64, first.timestamp), 8); // offset delta 64: two bytes
        assert_eq!(encoded_len(&[first, late, early]), 61 + 7 + 8 + 7);
    }

    #[test]
    fn the_size_with_a_record_is_the_size_after_pushing_it() {
        let records: Vec<Record> =
            (0..200).map(|i| record(Some(36), Some(i * 7), &[("a", i), ("b", 3)], i as i64)).collect();
        let mut size = BatchSize::default();
        for r in &records {
            let expected = size.with(r);
            size.push(r);
            assert_eq!(size.bytes(), expected);
        }
        assert_eq!(size.records(), 200);
        assert_eq!(size.bytes(), encoded_len(&records));
    }
}
