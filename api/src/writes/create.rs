//! Creating rsvps, many in a handful of statements: one insert for all rows, then one
//! statement that takes their seats and appends their outbox rows and idempotency
//! records. A single request is a batch of one.

use std::collections::HashMap;

use rsvp_contract::{CloudEvent, EventType};
use uuid::Uuid;

use super::{not_enough_seats, WriteOutcome, Written};
use crate::{
    auth::new_rsvp_token,
    domain::NewRsvp,
    error::ApiError,
    store::{
        events::Seats,
        idempotency::NewRecord,
        outbox::{self, Appended},
        rsvps,
        rsvps::NewRow,
        Tx,
    },
};

pub struct CreateRequest<'a> {
    pub event_id: Uuid,
    pub rsvp: &'a NewRsvp,
    pub traceparent: Option<&'a str>,
}

/// What [`create_rsvps`] did.
pub struct Created {
    /// The outcome of each request, in request order: the rsvp with its token (the
    /// only time the token is seen), or why it was refused.
    pub outcomes: Vec<Result<WriteOutcome, ApiError>>,
    /// The transaction's xid, once it wrote an outbox row or a record.
    pub xid: Option<String>,
    /// Another request holds the key of one of the records: nothing was written, and
    /// the caller must roll back (see [`outbox::Appended::KeyTaken`]).
    pub key_taken: bool,
}

/// Creates the requested rsvps with their outbox rows. Refused requests write nothing.
/// `seats` holds the requests' events as this transaction locked them
/// ([`crate::store::events::lock`]), kept up to date here; a request whose event is absent is
/// answered 404.
///
/// `record` gives the idempotency record of a request (by its position) and its
/// outcome, if it keeps one: the records go in the statement that appends the
/// outbox rows, one round trip for both.
pub async fn create_rsvps<'r>(
    tx: &mut Tx<'_>,
    requests: &[CreateRequest<'_>],
    seats: &mut HashMap<Uuid, Seats>,
    mut record: impl FnMut(usize, &Result<WriteOutcome, ApiError>) -> Result<Option<NewRecord<'r>>, ApiError>,
) -> Result<Created, ApiError> {
    let mut outcomes: Vec<Option<Result<WriteOutcome, ApiError>>> = requests.iter().map(|_| None).collect();
    let mut rows = Vec::with_capacity(requests.len());
    let mut tokens = Vec::with_capacity(requests.len());
    for (index, request) in requests.iter().enumerate() {
        if !seats.contains_key(&request.event_id) {
            outcomes[index] = Some(Err(ApiError::NotFound("event")));
            continue;
        }
        let (token, token_hash) = new_rsvp_token();
        rows.push(NewRow { id: Uuid::now_v7(), event_id: request.event_id, rsvp: request.rsvp, token_hash });
        tokens.push((index, token));
    }
    let mut inserted: HashMap<Uuid, _> =
        rsvps::insert_many(tx, &rows).await?.into_iter().map(|row| (row.id, row)).collect();

    // Capacity in request order, against the locked seat counts.
    let (mut refused, mut taken, mut events) = (Vec::new(), HashMap::new(), Vec::new());
    for (row, (index, token)) in rows.iter().zip(tokens) {
        let Some(written) = inserted.remove(&row.id) else {
            outcomes[index] = Some(Err(ApiError::Conflict("this email has already answered this event".into())));
            continue;
        };
        let event = seats.get_mut(&row.event_id).expect("present: checked above");
        let needed = written.seats();
        if event.capacity.is_some_and(|capacity| event.taken + needed > capacity) {
            refused.push(written.id);
            outcomes[index] = Some(Err(not_enough_seats()));
            continue;
        }
        event.taken += needed;
        *taken.entry(row.event_id).or_insert(0) += needed;
        let cloud_event = CloudEvent::new(EventType::RsvpCreated, written.event_data(None), written.updated_at);
        events.push((cloud_event, requests[index].traceparent));
        let written = Written { rsvp: written, event_type: Some(EventType::RsvpCreated), xid: None };
        outcomes[index] = Some(Ok(WriteOutcome { written, token: Some(token) }));
    }
    if !refused.is_empty() {
        rsvps::discard(tx, &refused).await?;
    }
    let outcomes: Vec<_> = outcomes.into_iter().map(|o| o.expect("every request has an outcome")).collect();
    let mut records = Vec::new();
    for (index, outcome) in outcomes.iter().enumerate() {
        records.extend(record(index, outcome)?);
    }
    let appended = outbox::append(tx, &events, &taken, &records).await?;
    let key_taken = matches!(appended, Some(Appended::KeyTaken));
    Ok(Created { outcomes, xid: appended.and_then(Appended::xid), key_taken })
}
