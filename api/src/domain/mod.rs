//! Parsed, valid request values: handlers only ever see these.

mod fields;
mod requests;

pub use fields::{Capacity, Email, EventTitle, Guests, PersonName, StartsAt};
pub use requests::{
    CancelRsvpRequest, CreateEventRequest, CreateRsvpRequest, NewEvent, NewRsvp, RsvpChanges, UpdateRsvpRequest,
};
