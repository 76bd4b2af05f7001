//! `/rsvps`: reading one rsvp, and changing, cancelling or deleting it.

use axum::{
    extract::State,
    http::{HeaderMap, StatusCode},
    response::Response,
    routing::{get, post},
    Extension, Router,
};
use rsvp_contract::cache_keys;
use sqlx::PgPool;
use uuid::Uuid;

use super::{
    traceparent,
    views::{Reader, RsvpRead, RsvpView, View},
    ApiJson, ApiPath, IdempotencyKeyHeader,
};
use crate::{
    auth::bearer_token,
    domain::{CancelRsvpRequest, RsvpChanges, UpdateRsvpRequest},
    error::{ApiError, ErrorBody},
    idempotency::{self, Claim, Idempotency, Render, StoredResponse},
    state::AppState,
    store::rsvps,
    writes::{Change, WriteOp, WriteOutcome},
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/rsvps/cancel", post(cancel_rsvp))
        .route("/rsvps/{id}", get(get_rsvp).patch(update_rsvp).delete(delete_rsvp))
}

/// One rsvp; its email only with the admin token or the rsvp's own token; never its token.
#[utoipa::path(
    get, path = "/rsvps/{id}", tag = "rsvps",
    params(("id" = Uuid, Path, description = "Rsvp id")),
    security((), ("admin_token" = []), ("rsvp_token" = [])),
    responses(
        (status = 200, body = RsvpRead, description = "Public, or with the email for the admin or the rsvp's token"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
    )
)]
pub async fn get_rsvp(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
    headers: HeaderMap,
) -> Result<ApiJson<RsvpRead>, ApiError> {
    let reader = Reader::of(&headers, &state.admin)?;
    let rsvp = state
        .cache
        .read_through(
            &cache_keys::rsvp_generation(id),
            |generation| cache_keys::rsvp(id, generation),
            || load_rsvp(&state.db, id),
        )
        .await?
        .ok_or(ApiError::NotFound("rsvp"))?;
    let view = match reader {
        Reader::Token(presented) => {
            // Tokens are not cached: the owner check reads the stored hash.
            let owner = rsvps::token_hash(&state.db, id).await?.is_some_and(|stored| stored.matches(&presented));
            if !owner {
                return Err(ApiError::Forbidden);
            }
            View::Full
        }
        other => other.list_view()?,
    };
    Ok(ApiJson(view.show(rsvp)))
}

/// Changes an rsvp; authorized by the rsvp's own token. A request that changes
/// nothing answers the rsvp as it is and writes nothing.
#[utoipa::path(
    patch, path = "/rsvps/{id}", tag = "rsvps",
    params(("id" = Uuid, Path, description = "Rsvp id"), IdempotencyKeyHeader),
    request_body = UpdateRsvpRequest,
    security(("rsvp_token" = [])),
    responses(
        (status = 200, body = RsvpView),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
    )
)]
pub async fn update_rsvp(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
    headers: HeaderMap,
    idempotency: Option<Extension<Idempotency>>,
    ApiJson(request): ApiJson<UpdateRsvpRequest>,
) -> Result<Response, ApiError> {
    let token = bearer_token(&headers)?;
    let changes = RsvpChanges::parse(request)?;
    let op = WriteOp::Change(Change::Update { id, token: token.to_owned(), changes });
    write(&state, &headers, op, idempotency, rsvp_as_it_is).await
}

/// Cancels the rsvp that `token` belongs to; the row is kept with status `cancelled`.
#[utoipa::path(
    post, path = "/rsvps/cancel", tag = "rsvps",
    params(IdempotencyKeyHeader),
    request_body = CancelRsvpRequest,
    responses(
        (status = 200, body = RsvpView),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
    )
)]
pub async fn cancel_rsvp(
    State(state): State<AppState>,
    headers: HeaderMap,
    idempotency: Option<Extension<Idempotency>>,
    ApiJson(request): ApiJson<CancelRsvpRequest>,
) -> Result<Response, ApiError> {
    if request.token.trim().is_empty() {
        return Err(ApiError::field("token", "must not be empty"));
    }
    let op = WriteOp::Change(Change::Cancel { token: request.token.trim().to_owned() });
    write(&state, &headers, op, idempotency, rsvp_as_it_is).await
}

/// Deletes an rsvp.
#[utoipa::path(
    delete, path = "/rsvps/{id}", tag = "rsvps",
    params(("id" = Uuid, Path, description = "Rsvp id"), IdempotencyKeyHeader),
    security(("admin_token" = [])),
    responses(
        (status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 422, body = ErrorBody),
    )
)]
pub async fn delete_rsvp(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
    headers: HeaderMap,
    idempotency: Option<Extension<Idempotency>>,
) -> Result<Response, ApiError> {
    state.admin.authorize(&headers)?;
    write(&state, &headers, WriteOp::Change(Change::Delete { id }), idempotency, deleted).await
}

/// Runs `op` (once per `Idempotency-Key`) and answers with `render` of its outcome.
async fn write(
    state: &AppState,
    headers: &HeaderMap,
    op: WriteOp,
    idempotency: Option<Extension<Idempotency>>,
    render: Render,
) -> Result<Response, ApiError> {
    let idempotency = idempotency.map(|Extension(i)| i);
    let claim = Claim::new(idempotency.clone(), render);
    let outcome = state.writer.run(op, claim, traceparent(headers)).await;
    idempotency::respond(&state.db, idempotency.as_ref(), outcome, render).await
}

/// 200 with the rsvp as the write left it.
fn rsvp_as_it_is(outcome: &WriteOutcome) -> anyhow::Result<StoredResponse> {
    StoredResponse::json(StatusCode::OK, &RsvpView::from(&outcome.written.rsvp))
}

fn deleted(_: &WriteOutcome) -> anyhow::Result<StoredResponse> {
    Ok(StoredResponse::empty(StatusCode::NO_CONTENT))
}

async fn load_rsvp(db: &PgPool, id: Uuid) -> Result<Option<RsvpView>, sqlx::Error> {
    Ok(rsvps::find(db, id).await?.as_ref().map(RsvpView::from))
}
