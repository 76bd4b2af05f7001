//! The CloudEvents 1.0 envelope of every outbox row and Kafka record.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize, Serializer};
use uuid::Uuid;

/// CloudEvents `source` of everything the api writes.
pub const SOURCE: &str = "/rsvp-api";
pub const SPEC_VERSION: &str = "1.0";
pub const DATA_CONTENT_TYPE: &str = "application/json";
/// The outbox `aggregate_type` of rsvp changes.
pub const AGGREGATE_RSVP: &str = "rsvp";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EventType {
    RsvpCreated,
    RsvpUpdated,
    RsvpDeleted,
    RsvpCancelled,
}

impl EventType {
    pub const ALL: [EventType; 4] =
        [EventType::RsvpCreated, EventType::RsvpUpdated, EventType::RsvpDeleted, EventType::RsvpCancelled];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::RsvpCreated => "RSVP_CREATED",
            EventType::RsvpUpdated => "RSVP_UPDATED",
            EventType::RsvpDeleted => "RSVP_DELETED",
            EventType::RsvpCancelled => "RSVP_CANCELLED",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == value)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RsvpStatus {
    Going,
    Maybe,
    Declined,
    Cancelled,
}

impl RsvpStatus {
    pub const ALL: [RsvpStatus; 4] =
        [RsvpStatus::Going, RsvpStatus::Maybe, RsvpStatus::Declined, RsvpStatus::Cancelled];

    pub fn as_str(self) -> &'static str {
        match self {
            RsvpStatus::Going => "going",
            RsvpStatus::Maybe => "maybe",
            RsvpStatus::Declined => "declined",
            RsvpStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == value)
    }

    /// Seats an rsvp in this status holds: itself plus its guests, when going.
    pub fn seats(self, guests: i16) -> i32 {
        match self {
            RsvpStatus::Going => 1 + i32::from(guests),
            _ => 0,
        }
    }
}

/// The rsvp as it is after the change; never carries the token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RsvpData {
    pub id: Uuid,
    pub event_id: Uuid,
    pub name: String,
    pub email: String,
    pub status: RsvpStatus,
    pub guests: i16,
    pub version: i64,
    #[serde(serialize_with = "rfc3339")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "rfc3339")]
    pub updated_at: DateTime<Utc>,
    /// Set on `RSVP_UPDATED` and `RSVP_CANCELLED`: the status before the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_status: Option<RsvpStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CloudEvent {
    pub specversion: String,
    pub id: Uuid,
    pub source: String,
    #[serde(rename = "type")]
    pub event_type: EventType,
    pub subject: String,
    #[serde(serialize_with = "rfc3339")]
    pub time: DateTime<Utc>,
    pub datacontenttype: String,
    pub data: RsvpData,
}

impl CloudEvent {
    /// A new event about `data`, with a time-ordered (v7) id that stays the
    /// message id through every publish and replay.
    pub fn new(event_type: EventType, data: RsvpData, time: DateTime<Utc>) -> Self {
        CloudEvent {
            specversion: SPEC_VERSION.to_owned(),
            id: Uuid::now_v7(),
            source: SOURCE.to_owned(),
            event_type,
            subject: data.id.to_string(),
            time,
            datacontenttype: DATA_CONTENT_TYPE.to_owned(),
            data,
        }
    }

    /// The Kafka key: all changes of one event's rsvps share a partition, in order.
    pub fn kafka_key(&self) -> String {
        self.data.event_id.to_string()
    }
}

/// Serializes a timestamp as chrono's own `Serialize` does (RFC 3339 in UTC with `Z`,
/// as many fraction digits as it needs), for `#[serde(serialize_with)]`. Chrono hands
/// its text to serde one character at a time, and serde_json escapes each as a
/// string of its own; this formats it first and escapes it once.
pub fn rfc3339<S: Serializer>(time: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&time.to_rfc3339_opts(SecondsFormat::AutoSi, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_serialize_as_chronos_own_serialize_does() {
        #[derive(Serialize)]
        struct Ours(#[serde(serialize_with = "rfc3339")] DateTime<Utc>);
        for text in [
            "2026-12-06T07:00:00Z",
            "2026-12-06T07:00:00.120Z",
            "2026-12-06T07:00:00.123456Z",
            "2026-12-06T07:00:00.123456789Z",
            "2099-01-01T00:00:00.000001Z",
        ] {
            let time: DateTime<Utc> = text.parse().unwrap();
            assert_eq!(serde_json::to_string(&Ours(time)).unwrap(), serde_json::to_string(&time).unwrap(), "{text}");
        }
    }

    fn sample() -> CloudEvent {
        let now = Utc::now();
        CloudEvent::new(
            EventType::RsvpUpdated,
            RsvpData {
                id: Uuid::now_v7(),
                event_id: Uuid::now_v7(),
                name: "Ada".into(),
                email: "ada@example.com".into(),
                status: RsvpStatus::Going,
                guests: 2,
                version: 3,
                created_at: now,
                updated_at: now,
                previous_status: Some(RsvpStatus::Maybe),
            },
            now,
        )
    }

    #[test]
    fn serializes_with_cloudevents_attribute_names() {
        let json = serde_json::to_value(sample()).unwrap();
        assert_eq!(json["specversion"], "1.0");
        assert_eq!(json["type"], "RSVP_UPDATED");
        assert_eq!(json["source"], "/rsvp-api");
        assert_eq!(json["datacontenttype"], "application/json");
        assert_eq!(json["data"]["previous_status"], "maybe");
        assert_eq!(json["subject"], json["data"]["id"]);
        assert!(json["data"].get("token").is_none());
    }

    #[test]
    fn round_trips_through_json() {
        let event = sample();
        let back: CloudEvent = serde_json::from_slice(&serde_json::to_vec(&event).unwrap()).unwrap();
        assert_eq!(back, event);
    }

    #[test]
    fn event_type_and_status_parse_their_own_names() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
        }
        for s in RsvpStatus::ALL {
            assert_eq!(RsvpStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(RsvpStatus::parse("GOING"), None);
    }

    #[test]
    fn only_going_rsvps_hold_seats() {
        assert_eq!(RsvpStatus::Going.seats(3), 4);
        assert_eq!(RsvpStatus::Maybe.seats(3), 0);
        assert_eq!(RsvpStatus::Cancelled.seats(0), 0);
    }
}
