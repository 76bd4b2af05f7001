//! Decoding a Kafka record into the CloudEvent it carries, and why a record is poison.

use rskafka::record::RecordAndOffset;
use rsvp_contract::{headers, CloudEvent};

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
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl From<RecordAndOffset> for RawRecord {
    fn from(record: RecordAndOffset) -> Self {
        RawRecord {
            offset: record.offset,
            key: record.record.key,
            value: record.record.value,
            headers: record.record.headers.into_iter().collect(),
        }
    }
}

impl RawRecord {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice())
    }

    /// The event in the value. Headers are optional (a hand-produced record may lack
    /// them) but must agree with the value when present.
    pub fn decode(&self) -> Result<CloudEvent, DecodeError> {
        let value = self.value.as_deref().ok_or(DecodeError::MissingValue)?;
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use rsvp_contract::{EventType, RsvpData, RsvpStatus};
    use uuid::Uuid;

    fn event() -> CloudEvent {
        let now = Utc::now();
        CloudEvent::new(
            EventType::RsvpCreated,
            RsvpData {
                id: Uuid::now_v7(),
                event_id: Uuid::now_v7(),
                name: "Ada".into(),
                email: "ada@example.com".into(),
                status: RsvpStatus::Going,
                guests: 1,
                version: 1,
                created_at: now,
                updated_at: now,
                previous_status: None,
            },
            now,
        )
    }

    fn raw(event: &CloudEvent, headers: Vec<(&str, String)>) -> RawRecord {
        RawRecord {
            offset: 0,
            key: Some(event.kafka_key().into_bytes()),
            value: Some(serde_json::to_vec(event).unwrap()),
            headers: headers.into_iter().map(|(n, v)| (n.to_owned(), v.into_bytes())).collect(),
        }
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
    fn garbage_and_tombstones_are_poison() {
        let garbage = RawRecord { value: Some(b"{not json".to_vec()), ..Default::default() };
        assert!(matches!(garbage.decode(), Err(DecodeError::InvalidEvent(_))));
        assert!(matches!(RawRecord::default().decode(), Err(DecodeError::MissingValue)));
    }
}
