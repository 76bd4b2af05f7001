//! Request bodies as clients send them, and their parsing into valid values with
//! every failing field reported at once.

use chrono::{DateTime, Utc};
use rsvp_contract::RsvpStatus;
use serde::Deserialize;
use utoipa::ToSchema;

use super::{Capacity, Email, EventTitle, Guests, PersonName, StartsAt};
use crate::error::{ApiError, FieldErrors};

/// Collects per-field failures while parsing a request.
#[derive(Default)]
struct Checker(FieldErrors);

impl Checker {
    fn check<T>(&mut self, field: &'static str, result: Result<T, String>) -> Option<T> {
        result.map_err(|message| self.0.insert(field, message)).ok()
    }

    fn finish<T>(self, value: impl FnOnce() -> Option<T>) -> Result<T, ApiError> {
        match value() {
            Some(parsed) if self.0.is_empty() => Ok(parsed),
            _ => Err(ApiError::Validation(self.0)),
        }
    }
}

/// A status a person may choose; `cancelled` is reached only through `POST /rsvps/cancel`.
fn chosen_status(value: &str) -> Result<RsvpStatus, String> {
    match RsvpStatus::parse(value) {
        Some(status) if status != RsvpStatus::Cancelled => Ok(status),
        _ => Err("must be one of going, maybe, declined".into()),
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEventRequest {
    /// 1 to 200 characters.
    #[schema(example = "Rust meetup", min_length = 1, max_length = 200)]
    pub title: String,
    /// RFC 3339, in the future.
    #[schema(example = "2030-01-31T18:00:00Z", format = DateTime)]
    pub starts_at: String,
    /// Seats: each going rsvp takes one plus its guests. Absent means unlimited.
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub capacity: Option<i64>,
}

#[derive(Debug)]
pub struct NewEvent {
    pub title: EventTitle,
    pub starts_at: StartsAt,
    pub capacity: Option<Capacity>,
}

impl NewEvent {
    pub fn parse(request: CreateEventRequest, now: DateTime<Utc>) -> Result<Self, ApiError> {
        let mut checker = Checker::default();
        let title = checker.check("title", EventTitle::parse(&request.title));
        let starts_at = checker.check("starts_at", StartsAt::parse(&request.starts_at, now));
        let capacity = match request.capacity {
            Some(value) => checker.check("capacity", Capacity::parse(value)).map(Some),
            None => Some(None),
        };
        checker.finish(|| Some(NewEvent { title: title?, starts_at: starts_at?, capacity: capacity? }))
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRsvpRequest {
    /// 1 to 100 characters.
    #[schema(example = "Ada Lovelace", min_length = 1, max_length = 100)]
    pub name: String,
    /// One rsvp per address and event; compared without case.
    #[schema(example = "ada@example.com", format = Email, max_length = 254)]
    pub email: String,
    /// `going`, `maybe` or `declined`.
    #[schema(example = "going", pattern = "^(going|maybe|declined)$")]
    pub status: String,
    /// 0 to 10 guests; default 0.
    #[schema(minimum = 0, maximum = 10)]
    pub guests: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct NewRsvp {
    pub name: PersonName,
    pub email: Email,
    pub status: RsvpStatus,
    pub guests: Guests,
}

impl NewRsvp {
    pub fn parse(request: CreateRsvpRequest) -> Result<Self, ApiError> {
        let mut checker = Checker::default();
        let name = checker.check("name", PersonName::parse(&request.name));
        let email = checker.check("email", Email::parse(&request.email));
        let status = checker.check("status", chosen_status(&request.status));
        let guests = checker.check("guests", Guests::parse(request.guests.unwrap_or(0)));
        checker.finish(|| Some(NewRsvp { name: name?, email: email?, status: status?, guests: guests? }))
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateRsvpRequest {
    /// `going`, `maybe` or `declined`.
    #[schema(pattern = "^(going|maybe|declined)$")]
    pub status: Option<String>,
    /// 1 to 100 characters.
    #[schema(min_length = 1, max_length = 100)]
    pub name: Option<String>,
    /// 0 to 10.
    #[schema(minimum = 0, maximum = 10)]
    pub guests: Option<i64>,
}

/// The fields a `PATCH` sets; at least one.
#[derive(Debug, Clone)]
pub struct RsvpChanges {
    pub status: Option<RsvpStatus>,
    pub name: Option<PersonName>,
    pub guests: Option<Guests>,
}

impl RsvpChanges {
    pub fn parse(request: UpdateRsvpRequest) -> Result<Self, ApiError> {
        if request.status.is_none() && request.name.is_none() && request.guests.is_none() {
            return Err(ApiError::field("body", "set at least one of status, name, guests"));
        }
        let mut checker = Checker::default();
        let status = request.status.map(|s| checker.check("status", chosen_status(&s)));
        let name = request.name.map(|n| checker.check("name", PersonName::parse(&n)));
        let guests = request.guests.map(|g| checker.check("guests", Guests::parse(g)));
        checker.finish(|| {
            Some(RsvpChanges {
                status: status.map(|s| s.ok_or(())).transpose().ok()?,
                name: name.map(|n| n.ok_or(())).transpose().ok()?,
                guests: guests.map(|g| g.ok_or(())).transpose().ok()?,
            })
        })
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelRsvpRequest {
    /// The token returned when the rsvp was created.
    #[schema(min_length = 1, max_length = 200)]
    pub token: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_invalid_field_is_reported_at_once() {
        let request =
            CreateRsvpRequest { name: "".into(), email: "nope".into(), status: "cancelled".into(), guests: Some(11) };
        let Err(ApiError::Validation(fields)) = NewRsvp::parse(request) else {
            panic!("accepted an invalid rsvp");
        };
        assert_eq!(fields.keys().copied().collect::<Vec<_>>(), ["email", "guests", "name", "status"]);
    }

    #[test]
    fn an_empty_patch_is_rejected_and_a_partial_one_parsed() {
        let empty = UpdateRsvpRequest { status: None, name: None, guests: None };
        assert!(matches!(RsvpChanges::parse(empty), Err(ApiError::Validation(_))));
        let partial = UpdateRsvpRequest { status: Some("maybe".into()), name: None, guests: Some(2) };
        let changes = RsvpChanges::parse(partial).unwrap();
        assert_eq!(changes.status, Some(RsvpStatus::Maybe));
        assert_eq!(changes.guests.map(Guests::value), Some(2));
        assert!(changes.name.is_none());
    }

    #[test]
    fn an_event_without_capacity_is_unlimited() {
        let request =
            CreateEventRequest { title: "Meetup".into(), starts_at: "2999-01-01T00:00:00Z".into(), capacity: None };
        assert!(NewEvent::parse(request, Utc::now()).unwrap().capacity.is_none());
    }
}
