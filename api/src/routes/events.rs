//! `/events`: creating events (admin), reading them with their counts and rsvps
//! through the cache, and rsvping to them.

use axum::{
    extract::State,
    http::{HeaderMap, StatusCode},
    routing::{get, post},
    Router,
};
use rsvp_contract::cache_keys;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{traceparent, ApiJson, ApiPath};
use crate::{
    domain::{
        CreateEventRequest, CreateRsvpRequest,
        NewEvent, NewRsvp,
    },
    error::{ApiError, ErrorBody},
    startup::AppState,
    store::{events, events::EventView, rsvps, rsvps::RsvpView},
    writes::WriteOp,
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
    request_body = CreateEventRequest,
    security(("admin_token" = [])),
    responses(
        (status = 201, body = EventView),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
    )
)]
pub async fn create_event(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<CreateEventRequest>,
) -> Result<(StatusCode, ApiJson<EventView>), ApiError> {
    state.admin.authorize(&headers)?;
    let event = NewEvent::parse(request, chrono::Utc::now())?;
    let created = events::insert_event(&state.db, &event).await?;
    Ok((StatusCode::CREATED, ApiJson(created)))
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
            || events::find_event(&state.db, id),
        )
        .await?;
    event.map(ApiJson).ok_or(ApiError::NotFound("event"))
}

/// The event's rsvps, oldest first; never their tokens.
#[utoipa::path(
    get, path = "/events/{id}/rsvps", tag = "rsvps",
    params(("id" = Uuid, Path, description = "Event id")),
    responses((status = 200, body = Vec<RsvpView>), (status = 404, body = ErrorBody))
)]
pub async fn list_rsvps(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<ApiJson<Vec<RsvpView>>, ApiError> {
    let db = &state.db;
    let list = state
        .cache
        .read_through(
            &cache_keys::event_generation(id),
            |generation| cache_keys::event_rsvps(id, generation),
            || async move {
                if !events::event_exists(db, id).await? {
                    return Ok::<_, sqlx::Error>(None);
                }
                rsvps::list_for_event(db, id).await.map(Some)
            },
        )
        .await?;
    list.map(ApiJson).ok_or(ApiError::NotFound("event"))
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
    params(("id" = Uuid, Path, description = "Event id")),
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
    ApiJson(request): ApiJson<CreateRsvpRequest>,
) -> Result<(StatusCode, ApiJson<CreatedRsvp>), ApiError> {
    let rsvp = NewRsvp::parse(request)?;
    let outcome = state.writer.run(WriteOp::Create { event_id, rsvp }, traceparent(&headers)).await?;
    let token = outcome.token.ok_or_else(|| anyhow::anyhow!("a created rsvp came back without its token"))?;
    Ok((StatusCode::CREATED, ApiJson(CreatedRsvp { rsvp: outcome.written.rsvp.view(), token })))
}
