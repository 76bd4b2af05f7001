//! `/events`: creating events (admin), reading them with their counts and rsvps
//! through the cache, and rsvping to them.

use axum::{
    extract::{rejection::QueryRejection, Query, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Extension, Router,
};
use rsvp_contract::cache_keys;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{
    paging::{PageKey, PageQuery, PageRequest},
    traceparent,
    views::{EventView, Reader, RsvpPage, RsvpView},
    ApiJson, ApiPath, IdempotencyKeyHeader,
};
use crate::{
    domain::{CreateEventRequest, CreateRsvpRequest, NewEvent, NewRsvp},
    error::{ApiError, ErrorBody},
    idempotency::{self, records, Claim, Idempotency, StoredResponse},
    state::AppState,
    store::{self, events, idempotency::KeyTaken, outbox::Appended, rsvps, transactions},
    writes::{WriteOp, WriteOutcome},
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/events", post(create_event))
        .route("/events/{id}", get(get_event))
        .route("/events/{id}/rsvps", get(list_rsvps).post(create_rsvp))
}

/// Creates an event.
#[utoipa::path(
    post, path = "/events", tag = "events",
    params(IdempotencyKeyHeader),
    request_body = CreateEventRequest,
    security(("admin_token" = [])),
    responses(
        (status = 201, body = EventView),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody),
    )
)]
pub async fn create_event(
    State(state): State<AppState>,
    headers: HeaderMap,
    idempotency: Option<Extension<Idempotency>>,
    ApiJson(request): ApiJson<CreateEventRequest>,
) -> Result<Response, ApiError> {
    state.admin.authorize(&headers)?;
    let idempotency = idempotency.map(|Extension(idempotency)| idempotency);
    let event = match NewEvent::parse(request, chrono::Utc::now()) {
        Ok(event) => event,
        // A retry of a create accepted before its start passed gets that answer.
        Err(refusal) => return idempotency::replay_or_refuse(&state.db, idempotency.as_ref(), refusal).await,
    };
    // The event and its idempotency record commit together, as every write does,
    // with the lock and statement timeouts of every write.
    loop {
        let mut tx = transactions::begin(&state.db, state.writer.timeouts()).await?;
        let created = EventView::from(events::insert_event(&mut *tx, &event).await?);
        let response = StoredResponse::json(StatusCode::CREATED, &created)?;
        let Some(idempotency) = &idempotency else {
            tx.commit().await?;
            return Ok(response.into_response());
        };
        let record = records::seal(idempotency, &response)?;
        if !matches!(store::idempotency::insert(&mut tx, &[record]).await?, Some(Appended::KeyTaken)) {
            tx.commit().await?;
            return Ok(response.into_response());
        }
        // Another request holds the key: this one's event is not kept.
        tx.rollback().await?;
        match store::idempotency::probe(&state.db, &[&idempotency.lookup_id]).await?.first() {
            Some(Some(KeyTaken::ByCommittedRequest)) => return idempotency::replay(&state.db, idempotency).await,
            // Still running: once it has finished, its record answers (or, should it
            // have rolled back, this request runs again).
            Some(Some(KeyTaken::InFlight)) => {
                records::wait_for_key(&state.db, state.writer.timeouts(), idempotency).await?;
            }
            // Free now (an expired record, taken over): this request runs again.
            _ => {}
        }
    }
}

/// An event with its rsvp counts by status and the guests going.
#[utoipa::path(
    get, path = "/events/{id}", tag = "events",
    params(("id" = Uuid, Path, description = "Event id")),
    responses((status = 200, body = EventView), (status = 404, body = ErrorBody))
)]
pub async fn get_event(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<ApiJson<EventView>, ApiError> {
    let event = state
        .cache
        .read_through(
            &cache_keys::event_generation(id),
            |generation| cache_keys::event_detail(id, generation),
            || load_event(&state.db, id),
        )
        .await?;
    event.map(ApiJson).ok_or(ApiError::NotFound("event"))
}

async fn load_event(db: &PgPool, id: Uuid) -> Result<Option<EventView>, sqlx::Error> {
    Ok(events::find_event(db, id).await?.map(EventView::from))
}

/// One page of the event's rsvps, oldest first; emails only with the admin token,
/// never tokens. Pass a page's `next` as `cursor` for the next page.
#[utoipa::path(
    get, path = "/events/{id}/rsvps", tag = "rsvps",
    params(("id" = Uuid, Path, description = "Event id"), PageQuery),
    security((), ("admin_token" = [])),
    responses(
        (status = 200, body = RsvpPage, description = "Public rsvps, or with emails for the admin token"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody),
    )
)]
pub async fn list_rsvps(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
    headers: HeaderMap,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<ApiJson<RsvpPage>, ApiError> {
    let view = Reader::of(&headers, &state.admin)?.list_view()?;
    let query = query.map_err(|rejection| ApiError::field("query", rejection.body_text()))?;
    let page = PageRequest::parse(query.0)?;
    let db = &state.db;
    // Pages are cached with emails, whoever asked first, and projected per reader.
    let stored = state
        .cache
        .read_through(
            &cache_keys::event_generation(id),
            |generation| cache_keys::event_rsvps_page(id, generation, &page.cache_id()),
            || load_page(db, id, page),
        )
        .await?;
    let stored = stored.ok_or(ApiError::NotFound("event"))?;
    Ok(ApiJson(RsvpPage { items: stored.items.into_iter().map(|rsvp| view.show(rsvp)).collect(), next: stored.next }))
}

/// A page as the cache keeps it: every field, for whichever reader comes next.
#[derive(Serialize, Deserialize)]
struct StoredPage {
    items: Vec<RsvpView>,
    next: Option<String>,
}

/// `None` when the event does not exist.
async fn load_page(db: &PgPool, event_id: Uuid, page: PageRequest) -> Result<Option<StoredPage>, sqlx::Error> {
    if !events::event_exists(db, event_id).await? {
        return Ok(None);
    }
    let after = page.after.map(|key| (key.created_at, key.id));
    // One row more than the page tells whether another page follows.
    let rows = rsvps::page_for_event(db, event_id, after, i64::from(page.limit) + 1).await?;
    let mut items: Vec<RsvpView> = rows.iter().map(RsvpView::from).collect();
    let more = items.len() > page.limit as usize;
    items.truncate(page.limit as usize);
    let next =
        more.then(|| items.last().map(|last| PageKey { created_at: last.created_at, id: last.id }.encode())).flatten();
    Ok(Some(StoredPage { items, next }))
}

/// A new rsvp with its secret token: keep it, it is the only way to change or
/// cancel the rsvp, and it is never shown again.
#[derive(Serialize, ToSchema)]
pub struct CreatedRsvp {
    #[serde(flatten)]
    pub rsvp: RsvpView,
    pub token: String,
}

/// Rsvps to an event. One rsvp per email and event; going rsvps with their guests
/// must fit the event's capacity.
#[utoipa::path(
    post, path = "/events/{id}/rsvps", tag = "rsvps",
    params(("id" = Uuid, Path, description = "Event id"), IdempotencyKeyHeader),
    request_body = CreateRsvpRequest,
    responses(
        (status = 201, body = CreatedRsvp),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
    )
)]
pub async fn create_rsvp(
    State(state): State<AppState>,
    ApiPath(event_id): ApiPath<Uuid>,
    headers: HeaderMap,
    idempotency: Option<Extension<Idempotency>>,
    ApiJson(request): ApiJson<CreateRsvpRequest>,
) -> Result<Response, ApiError> {
    let rsvp = NewRsvp::parse(request)?;
    let idempotency = idempotency.map(|Extension(i)| i);
    let claim = Claim::new(idempotency.clone(), created_rsvp);
    let outcome = state.writer.run(WriteOp::Create { event_id, rsvp }, claim, traceparent(&headers)).await;
    idempotency::respond(&state.db, idempotency.as_ref(), outcome, created_rsvp).await
}

/// 201 with the new rsvp and its token.
fn created_rsvp(outcome: &WriteOutcome) -> anyhow::Result<StoredResponse> {
    let token = outcome.token.clone().ok_or_else(|| anyhow::anyhow!("a created rsvp came back without its token"))?;
    StoredResponse::json(StatusCode::CREATED, &CreatedRsvp { rsvp: RsvpView::from(&outcome.written.rsvp), token })
}
