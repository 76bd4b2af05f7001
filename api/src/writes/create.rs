//! Creating rsvps, many in a handful of statements: one insert for all rows, then one
//! statement that takes their seats and appends their outbox rows. A single request
//! is a batch of one.

use std::collections::HashMap;

use rsvp_contract::{CloudEvent, EventType};
use uuid::Uuid;

use super::{not_enough_seats, Written};
use crate::{
    auth::new_rsvp_token,
    domain::NewRsvp,
    error::ApiError,
    store::{events::Seats, outbox, rsvps, rsvps::NewRow, Tx},
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
    pub outcomes: Vec<Result<(Written, String), ApiError>>,
    /// The transaction's xid, once it wrote an outbox row.
    pub xid: Option<String>,
}

/// Creates the requested rsvps with their outbox rows. Refused requests write nothing.
/// `seats` holds the requests' events as this transaction locked them
/// ([`crate::store::events::lock`]), kept up to date here; a request whose event is absent is
/// answered 404.
pub async fn create_rsvps(
    tx: &mut Tx<'_>,
    requests: &[CreateRequest<'_>],
    seats: &mut HashMap<Uuid, Seats>,
) -> Result<Created, sqlx::Error> {
    let mut outcomes: Vec<Option<Result<(Written, String), ApiError>>> = requests.iter().map(|_| None).collect();
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
    let (mut refused, mut taken, mut accepted) = (Vec::new(), HashMap::new(), Vec::new());
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
        accepted.push((index, written, token));
    }
    if !refused.is_empty() {
        rsvps::discard(tx, &refused).await?;
    }
    let events: Vec<(CloudEvent, Option<&str>)> = accepted
        .iter()
        .map(|(index, row, _)| {
            let event = CloudEvent::new(EventType::RsvpCreated, row.event_data(None), row.updated_at);
            (event, requests[*index].traceparent)
        })
        .collect();
    let xid = outbox::append(tx, &events, &taken).await?;

    for (index, row, token) in accepted {
        outcomes[index] = Some(Ok((Written { rsvp: row, event_type: Some(EventType::RsvpCreated), xid: None }, token)));
    }
    let outcomes = outcomes.into_iter().map(|o| o.expect("every request has an outcome")).collect();
    Ok(Created { outcomes, xid })
}
