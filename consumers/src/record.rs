//! Decoding a Kafka record into the CloudEvent it carries, and why a record is poison.

use std::sync::Arc;

use rskafka::record::{Record, RecordAndOffset};
use rsvp_contract::{headers, CloudEvent};
use sha2::{Digest, Sha256};

/// Why a record cannot be applied however often it is retried.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The record has no value (a tombstone): there is no event to apply.
    #[error("the record has no value")]
    MissingValue,
    /// The value is not a CloudEvent of ours.
    #[error("the value is not a valid rsvp CloudEvent: {0}")]
    InvalidEvent(#[from] serde_json::Error),
    /// A header disagrees with the value it describes: one of them is corrupt.
    #[error("header {header} is {found:?} but the event says {expected:?}")]
    HeaderMismatch { header: &'static str, found: String, expected: String },
}

/// A record as it came from the broker, kept raw for the dead-letter table.
#[derive(Debug, Clone, Default)]
pub struct RawRecord {
    pub offset: i64,
    body: Body,
}

#[derive(Debug, Clone)]
enum Body {
    /// As the client decoded it, shared with the other groups of the instance
    /// (`crate::recent`) rather than copied.
    Fetched(Arc<RecordAndOffset>),
    /// As bytes: read by a fetch of the consumers' own (`crate::raw_fetch`) or from the
    /// dead-letter table. Header names are bytes too: Kafka does not promise UTF-8 or
    /// the absence of NUL in them, and a name Postgres cannot store as text must
    /// still reach the table.
    Bytes { key: Option<Vec<u8>>, value: Option<Vec<u8>>, headers: Vec<(Vec<u8>, Vec<u8>)> },
}

impl Default for Body {
    fn default() -> Self {
        Body::Bytes { key: None, value: None, headers: Vec::new() }
    }
}

impl From<Arc<RecordAndOffset>> for RawRecord {
    fn from(record: Arc<RecordAndOffset>) -> Self {
        RawRecord { offset: record.offset, body: Body::Fetched(record) }
    }
}

impl RawRecord {
    pub fn from_bytes(
        offset: i64,
        key: Option<Vec<u8>>,
        value: Option<Vec<u8>>,
        headers: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Self {
        RawRecord { offset, body: Body::Bytes { key, value, headers } }
    }

    pub fn key(&self) -> Option<&[u8]> {
        match &self.body {
            Body::Fetched(record) => record.record.key.as_deref(),
            Body::Bytes { key, .. } => key.as_deref(),
        }
    }

    pub fn value(&self) -> Option<&[u8]> {
        match &self.body {
            Body::Fetched(record) => record.record.value.as_deref(),
            Body::Bytes { value, .. } => value.as_deref(),
        }
    }

    /// Every header's name and value, in the record's order.
    pub fn headers(&self) -> Vec<(&[u8], &[u8])> {
        match &self.body {
            Body::Fetched(record) => {
                record.record.headers.iter().map(|(name, value)| (name.as_bytes(), value.as_slice())).collect()
            }
            Body::Bytes { headers, .. } => {
                headers.iter().map(|(name, value)| (name.as_slice(), value.as_slice())).collect()
            }
        }
    }

    fn header(&self, name: &str) -> Option<&[u8]> {
        match &self.body {
            Body::Fetched(record) => record.record.headers.get(name).map(Vec::as_slice),
            Body::Bytes { headers, .. } => {
                headers.iter().find(|(n, _)| n == name.as_bytes()).map(|(_, v)| v.as_slice())
            }
        }
    }

    /// The event in the value. Headers are optional (a hand-produced record may lack
    /// them) but must agree with the value when present.
    pub fn decode(&self) -> Result<CloudEvent, DecodeError> {
        let value = self.value().ok_or(DecodeError::MissingValue)?;
        let event: CloudEvent = serde_json::from_slice(value)?;
        let expect = |header: &'static str, expected: String| match self.header(header) {
            Some(found) if found != expected.as_bytes() => Err(DecodeError::HeaderMismatch {
                header,
                found: String::from_utf8_lossy(found).into_owned(),
                expected,
            }),
            _ => Ok(()),
        };
        expect(headers::CE_ID, event.id.to_string())?;
        expect(headers::CE_TYPE, event.event_type.as_str().to_owned())?;
        expect(headers::RSVP_VERSION, event.data.version.to_string())?;
        Ok(event)
    }

    /// What identifies this record at its offset, to tell later whether the broker
    /// still holds the same log: see [`fingerprint`].
    pub fn fingerprint(&self) -> Vec<u8> {
        fingerprint(self.header(headers::CE_ID), self.key(), self.value())
    }
}

/// [`RawRecord::fingerprint`] of a record as the client decoded it.
pub fn fingerprint_of(record: &Record) -> Vec<u8> {
    let id = record.headers.get(headers::CE_ID).map(Vec::as_slice);
    fingerprint(id, record.key.as_deref(), record.value.as_deref())
}

/// A record's `ce_id` header, else a digest of its key and value.
fn fingerprint(ce_id: Option<&[u8]>, key: Option<&[u8]>, value: Option<&[u8]>) -> Vec<u8> {
    match ce_id {
        Some(id) if !id.is_empty() => id.to_vec(),
        _ => {
            let mut digest = Sha256::new();
            for part in [key, value] {
                let part = part.unwrap_or_default();
                digest.update((part.len() as u64).to_be_bytes());
                digest.update(part);
            }
            digest.finalize().to_vec()
        }
    }
}

/// Bytes as a terminal can show them: text as it is with control characters (NUL
/// among them) escaped, and anything that is not UTF-8 as `\xNN` escapes.
pub fn printable(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => text
            .chars()
            .flat_map(|c| match c.is_control() {
                true => c.escape_default().collect::<Vec<_>>(),
                false => vec![c],
            })
            .collect(),
        Err(_) => bytes.escape_ascii().to_string(),
    }
}

/// A new rsvp's creation, for the crate's unit tests.
#[cfg(test)]
pub(crate) fn created_event() -> CloudEvent {
    let now = chrono::Utc::now();
    let data = rsvp_contract::RsvpData {
        id: uuid::Uuid::now_v7(),
        event_id: uuid::Uuid::now_v7(),
        name: "Ada".into(),
        email: "ada@example.com".into(),
        status: rsvp_contract::RsvpStatus::Going,
        guests: 1,
        version: 1,
        created_at: now,
        updated_at: now,
        previous_status: None,
    };
    CloudEvent::new(rsvp_contract::EventType::RsvpCreated, data, now)
}

#[cfg(test)]
mod tests {
    use super::{created_event as event, *};

    fn raw(event: &CloudEvent, headers: Vec<(&str, String)>) -> RawRecord {
        RawRecord::from_bytes(
            0,
            Some(event.kafka_key().into_bytes()),
            Some(serde_json::to_vec(event).unwrap()),
            headers.into_iter().map(|(n, v)| (n.as_bytes().to_vec(), v.into_bytes())).collect(),
        )
    }

    #[test]
    fn a_record_with_matching_headers_decodes() {
        let event = event();
        let record = raw(&event, vec![(headers::CE_ID, event.id.to_string()), (headers::RSVP_VERSION, "1".into())]);
        assert_eq!(record.decode().unwrap(), event);
    }

    #[test]
    fn a_record_without_headers_decodes() {
        let event = event();
        assert_eq!(raw(&event, vec![]).decode().unwrap(), event);
    }

    #[test]
    fn a_header_that_disagrees_with_the_value_is_poison() {
        let event = event();
        let record = raw(&event, vec![(headers::RSVP_VERSION, "2".into())]);
        assert!(matches!(record.decode(), Err(DecodeError::HeaderMismatch { header: "rsvp_version", .. })));
    }

    #[test]
    fn the_fingerprint_is_the_ce_id_else_a_digest_of_key_and_value() {
        let event = event();
        assert_eq!(
            raw(&event, vec![(headers::CE_ID, event.id.to_string())]).fingerprint(),
            event.id.to_string().into_bytes()
        );
        let (a, b) = (
            RawRecord::from_bytes(0, None, Some(b"ab".to_vec()), Vec::new()),
            RawRecord::from_bytes(0, Some(b"a".to_vec()), Some(b"b".to_vec()), Vec::new()),
        );
        assert_eq!(a.fingerprint().len(), 32);
        assert_ne!(a.fingerprint(), b.fingerprint());
    }

    #[test]
    fn a_fetched_record_reads_as_its_bytes_do() {
        let event = event();
        let bytes = raw(&event, vec![(headers::CE_ID, event.id.to_string()), (headers::RSVP_VERSION, "1".into())]);
        let pairs = bytes.headers();
        let headers = pairs.iter().map(|(n, v)| (String::from_utf8(n.to_vec()).unwrap(), v.to_vec()));
        let record = Record {
            key: bytes.key().map(<[u8]>::to_vec),
            value: bytes.value().map(<[u8]>::to_vec),
            headers: headers.collect(),
            timestamp: chrono::Utc::now(),
        };
        let fetched = RawRecord::from(Arc::new(RecordAndOffset { record, offset: 7 }));
        assert_eq!(fetched.offset, 7);
        assert_eq!((fetched.key(), fetched.value()), (bytes.key(), bytes.value()));
        assert_eq!(fetched.headers(), bytes.headers());
        assert_eq!(fetched.fingerprint(), bytes.fingerprint());
        assert_eq!(fetched.decode().unwrap(), bytes.decode().unwrap());
    }

    #[test]
    fn printable_escapes_control_characters_and_bytes_that_are_not_utf8() {
        assert_eq!(printable("Zoë \"x\"".as_bytes()), "Zoë \"x\"");
        assert_eq!(printable(b"a\0b\n"), "a\\u{0}b\\n");
        assert_eq!(printable(b"\xff\0a"), "\\xff\\x00a");
    }

    #[test]
    fn garbage_and_tombstones_are_poison() {
        let garbage = RawRecord::from_bytes(0, None, Some(b"{not json".to_vec()), Vec::new());
        assert!(matches!(garbage.decode(), Err(DecodeError::InvalidEvent(_))));
        assert!(matches!(RawRecord::default().decode(), Err(DecodeError::MissingValue)));
    }
}
