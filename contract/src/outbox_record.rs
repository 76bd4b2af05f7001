//! How an outbox row becomes a Kafka record: key = the event id, value = the
//! CloudEvent JSON as stored, CloudEvents binary-mode headers plus `rsvp_version`,
//! and Kafka's default partitioner on the key ([`crate::partitioner`]). The relay
//! publishes and replays through it, and the consumers' tests produce through it,
//! so that both sides of the topic see the same records.

use std::{borrow::Cow, collections::BTreeMap};

use chrono::{DateTime, Utc};
use rskafka::record::Record;
use serde::Deserialize;
use uuid::Uuid;

use crate::{
    event::{DATA_CONTENT_TYPE, SPEC_VERSION},
    headers,
};

/// The outbox columns a record is made of, and the CloudEvent attributes of its
/// payload that also travel as headers.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxMessage {
    pub columns: OutboxColumns,
    pub attributes: HeaderAttributes,
}

/// The outbox columns of one row, as read.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxColumns {
    pub kafka_key: String,
    pub message_id: Uuid,
    pub event_type: String,
    pub rsvp_version: i64,
    /// The CloudEvent JSON exactly as the api stored it.
    pub payload: String,
    pub traceparent: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// The payload's CloudEvent attributes that travel as headers too; absent ones get
/// the defaults (`specversion` 1.0, `content-type` application/json) or no header.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeaderAttributes {
    pub specversion: Option<String>,
    pub source: Option<String>,
    pub time: Option<String>,
    pub content_type: Option<String>,
}

/// The CloudEvent attributes that also travel as headers; every other field is skipped.
#[derive(Debug, Default, Deserialize)]
struct HeaderFields<'a> {
    #[serde(borrow)]
    specversion: Option<Cow<'a, str>>,
    #[serde(borrow)]
    source: Option<Cow<'a, str>>,
    #[serde(borrow)]
    time: Option<Cow<'a, str>>,
    #[serde(borrow)]
    datacontenttype: Option<Cow<'a, str>>,
}

impl<'a> HeaderFields<'a> {
    /// A payload that is not an object with string attributes gets the defaults.
    fn of(payload: &'a str) -> Self {
        serde_json::from_str(payload).unwrap_or_default()
    }
}

impl OutboxMessage {
    /// Picks the header attributes out of the payload here rather than with `->>` in
    /// SQL, where they cost Postgres more than the rest of the relay's read
    /// (docs/NOTES.md, "The relay's read").
    pub fn from_columns(columns: OutboxColumns) -> Self {
        let fields = HeaderFields::of(&columns.payload);
        let attributes = HeaderAttributes {
            specversion: fields.specversion.map(Cow::into_owned),
            source: fields.source.map(Cow::into_owned),
            time: fields.time.map(Cow::into_owned),
            content_type: fields.datacontenttype.map(Cow::into_owned),
        };
        Self { columns, attributes }
    }

    /// The Kafka record; identical on every publish and replay.
    pub fn to_record(&self) -> Record {
        let columns = &self.columns;
        self.record_with(columns.kafka_key.as_bytes().to_vec(), columns.payload.as_bytes().to_vec())
    }

    /// [`Self::to_record`] without copying the key and payload: they move into the
    /// record and the message keeps only its other fields.
    pub fn take_record(&mut self) -> Record {
        let columns = &mut self.columns;
        let (key, value) = (std::mem::take(&mut columns.kafka_key), std::mem::take(&mut columns.payload));
        self.record_with(key.into_bytes(), value.into_bytes())
    }

    /// The partition of this message's record on a topic with `partitions` partitions.
    pub fn partition(&self, partitions: i32) -> i32 {
        crate::partitioner::partition_for_key(self.columns.kafka_key.as_bytes(), partitions)
    }

    fn record_with(&self, key: Vec<u8>, value: Vec<u8>) -> Record {
        let mut record_headers: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut put = |name: &str, value: &str| {
            record_headers.insert(name.to_owned(), value.as_bytes().to_vec());
        };
        let (columns, attributes) = (&self.columns, &self.attributes);
        put(headers::CE_SPECVERSION, attributes.specversion.as_deref().unwrap_or(SPEC_VERSION));
        put(headers::CE_ID, &columns.message_id.to_string());
        put(headers::CE_TYPE, &columns.event_type);
        if let Some(source) = &attributes.source {
            put(headers::CE_SOURCE, source);
        }
        if let Some(time) = &attributes.time {
            put(headers::CE_TIME, time);
        }
        put(headers::CONTENT_TYPE, attributes.content_type.as_deref().unwrap_or(DATA_CONTENT_TYPE));
        if let Some(traceparent) = &columns.traceparent {
            put(headers::TRACEPARENT, traceparent);
        }
        put(headers::RSVP_VERSION, &columns.rsvp_version.to_string());
        Record { key: Some(key), value: Some(value), headers: record_headers, timestamp: columns.created_at }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(traceparent: Option<&str>) -> OutboxMessage {
        OutboxMessage::from_columns(OutboxColumns {
            kafka_key: "e1".into(),
            message_id: Uuid::nil(),
            event_type: "RSVP_CREATED".into(),
            rsvp_version: 4,
            payload: r#"{"id": "x", "specversion": "1.0", "source": "/rsvp-api", "time": "2026-11-28T10:00:00Z"}"#
                .into(),
            traceparent: traceparent.map(str::to_owned),
            created_at: Utc::now(),
        })
    }

    #[test]
    fn records_carry_the_cloudevents_headers_and_the_rsvp_version() {
        let record = message(Some("00-abc-def-01")).to_record();
        let header = |name: &str| String::from_utf8(record.headers[name].clone()).unwrap();
        assert_eq!(record.key.as_deref(), Some(&b"e1"[..]));
        assert_eq!(header("ce_id"), Uuid::nil().to_string());
        assert_eq!(header("ce_type"), "RSVP_CREATED");
        assert_eq!(header("ce_specversion"), "1.0");
        assert_eq!(header("ce_source"), "/rsvp-api");
        assert_eq!(header("ce_time"), "2026-11-28T10:00:00Z");
        assert_eq!(header("content-type"), "application/json");
        assert_eq!(header("traceparent"), "00-abc-def-01");
        assert_eq!(header("rsvp_version"), "4");
    }

    #[test]
    fn header_fields_come_from_the_payload_and_default_when_it_is_not_an_object() {
        let fields =
            HeaderFields::of(r#"{"specversion":"1.0","data":{"source":"no"},"source":"/rsvp-api","time":"t"}"#);
        assert_eq!(fields.specversion.as_deref(), Some("1.0"));
        assert_eq!(fields.source.as_deref(), Some("/rsvp-api"));
        assert_eq!(fields.time.as_deref(), Some("t"));
        assert_eq!(fields.datacontenttype, None);
        assert_eq!(HeaderFields::of("[1, 2]").source, None);
        assert_eq!(HeaderFields::of(r#"{"source": 7}"#).source, None);
    }

    #[test]
    fn a_taken_record_equals_the_copied_one() {
        let mut message = message(Some("00-abc-def-01"));
        let copied = message.to_record();
        assert_eq!(message.take_record(), copied);
        assert!(message.columns.payload.is_empty() && message.columns.kafka_key.is_empty());
    }

    #[test]
    fn records_without_a_traceparent_have_no_traceparent_header() {
        assert!(!message(None).to_record().headers.contains_key("traceparent"));
    }
}
