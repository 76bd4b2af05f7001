//! What the api shows of events and rsvps, and to whom: an attendee list shows name,
//! status, guests and created time to anyone; the email only to the admin, or to the
//! rsvp's own token.

use axum::http::{header, HeaderMap};
use chrono::{DateTime, Utc};
use rsvp_contract::{event::rfc3339, RsvpStatus};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{
    auth::{bearer_token, AdminToken, TokenHash},
    error::ApiError,
    store::{events::EventRow, rsvps::RsvpRow},
};

/// An event with its rsvp counts, as `GET /events/{id}` returns and the cache stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EventView {
    pub id: Uuid,
    pub title: String,
    #[serde(serialize_with = "rfc3339")]
    pub starts_at: DateTime<Utc>,
    /// Seats; null when unlimited.
    pub capacity: Option<i32>,
    /// Seats held by going rsvps and their guests.
    pub seats_taken: i32,
    #[serde(serialize_with = "rfc3339")]
    pub created_at: DateTime<Utc>,
    pub counts: RsvpCounts,
    /// Guests brought by going rsvps.
    pub guests_going: i64,
}

impl From<EventRow> for EventView {
    fn from(row: EventRow) -> Self {
        Self {
            id: row.id,
            title: row.title,
            starts_at: row.starts_at,
            capacity: row.capacity,
            seats_taken: row.seats_taken,
            created_at: row.created_at,
            counts: RsvpCounts { going: row.going, maybe: row.maybe, declined: row.declined, cancelled: row.cancelled },
            guests_going: row.guests_going,
        }
    }
}

/// Rsvps of an event by status.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RsvpCounts {
    pub going: i64,
    pub maybe: i64,
    pub declined: i64,
    pub cancelled: i64,
}

/// An rsvp as reads return it: never its token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RsvpView {
    pub id: Uuid,
    pub event_id: Uuid,
    pub name: String,
    pub email: String,
    pub status: RsvpStatus,
    pub guests: i16,
    /// Incremented by every change.
    pub version: i64,
    #[serde(serialize_with = "rfc3339")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "rfc3339")]
    pub updated_at: DateTime<Utc>,
}

impl From<&RsvpRow> for RsvpView {
    fn from(row: &RsvpRow) -> Self {
        Self {
            id: row.id,
            event_id: row.event_id,
            name: row.name.clone(),
            email: row.email.clone(),
            status: row.status(),
            guests: row.guests,
            version: row.version,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

/// An rsvp as anyone may see it: no email, no token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
// Unknown fields denied so that the schema says `additionalProperties: false`, and a
// full `RsvpView` matches exactly one branch of `RsvpRead`.
#[serde(deny_unknown_fields)]
pub struct PublicRsvp {
    pub id: Uuid,
    pub event_id: Uuid,
    pub name: String,
    pub status: RsvpStatus,
    pub guests: i16,
    #[serde(serialize_with = "rfc3339")]
    pub created_at: DateTime<Utc>,
}

impl From<&RsvpView> for PublicRsvp {
    fn from(view: &RsvpView) -> Self {
        Self {
            id: view.id,
            event_id: view.event_id,
            name: view.name.clone(),
            status: view.status,
            guests: view.guests,
            created_at: view.created_at,
        }
    }
}

/// An rsvp as a read returns it: with its email and version for the admin or the
/// rsvp's own token, public otherwise.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(untagged)]
pub enum RsvpRead {
    Full(RsvpView),
    Public(PublicRsvp),
}

/// One page of an event's rsvps, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct RsvpPage {
    pub items: Vec<RsvpRead>,
    /// The `cursor` of the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// Who is reading, by the `Authorization` header.
#[derive(Debug, Clone, PartialEq)]
pub enum Reader {
    /// No `Authorization` header.
    Anonymous,
    Admin,
    /// A bearer token that is not the admin's: perhaps an rsvp's own.
    Token(TokenHash),
}

impl Reader {
    /// `Unauthorized` for an `Authorization` header that carries no bearer token.
    pub fn of(headers: &HeaderMap, admin: &AdminToken) -> Result<Self, ApiError> {
        if !headers.contains_key(header::AUTHORIZATION) {
            return Ok(Reader::Anonymous);
        }
        let token = bearer_token(headers)?;
        Ok(if admin.matches(token) { Reader::Admin } else { Reader::Token(TokenHash::of(token)) })
    }

    /// How rows are shown to a reader who owns none of them: emails for the admin only;
    /// another token is `Forbidden` rather than quietly answered without emails.
    pub fn list_view(&self) -> Result<View, ApiError> {
        match self {
            Reader::Anonymous => Ok(View::Public),
            Reader::Admin => Ok(View::Full),
            Reader::Token(_) => Err(ApiError::Forbidden),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum View {
    Full,
    Public,
}

impl View {
    pub fn show(self, rsvp: RsvpView) -> RsvpRead {
        match self {
            View::Full => RsvpRead::Full(rsvp),
            View::Public => RsvpRead::Public(PublicRsvp::from(&rsvp)),
        }
    }
}
