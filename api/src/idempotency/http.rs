//! The HTTP side: reading the key and body of a write, and answering a retry from its
//! record.

use std::time::Duration;

use axum::{
    body::{to_bytes, Body},
    extract::{Request, State},
    http::HeaderValue,
    middleware::Next,
    response::{IntoResponse, Response},
};
use metrics::counter;
use sqlx::PgPool;

use super::{Applied, Caller, Idempotency, IdempotencyKey, Render, REPLAYED_HEADER};
use crate::metric_names;
use crate::{
    auth::bearer_token,
    error::{ApiError, MAX_BODY_BYTES},
    store::idempotency::{self as store, Record},
};

/// What the middleware needs to know.
#[derive(Debug, Clone, Copy)]
pub struct IdempotencySettings {
    /// How long a record answers retries of its key.
    pub ttl: Duration,
}

/// Route middleware: for a write (any method but GET, HEAD, OPTIONS) with an
/// `Idempotency-Key`, checks the key (400 when invalid), reads the body (413 over the
/// limit) and hands the handler an [`Idempotency`] in the request's extensions. The
/// body is then given back to the handler unchanged. Writes without a key pass as
/// they came.
pub async fn layer(State(settings): State<IdempotencySettings>, request: Request, next: Next) -> Response {
    if request.method().is_safe() {
        return next.run(request).await;
    }
    let key = match IdempotencyKey::from_headers(request.headers()) {
        Ok(Some(key)) => key,
        Ok(None) => return next.run(request).await,
        Err(error) => return error.into_response(),
    };
    let (parts, body) = request.into_parts();
    let Ok(body) = to_bytes(body, MAX_BODY_BYTES).await else {
        return ApiError::PayloadTooLarge { limit: MAX_BODY_BYTES }.into_response();
    };
    let caller = Caller(bearer_token(&parts.headers).ok());
    let idempotency = Idempotency::derive(&key, caller, &parts.method, parts.uri.path(), &body, settings.ttl);
    let mut request = Request::from_parts(parts, Body::from(body));
    request.extensions_mut().insert(idempotency);
    next.run(request).await
}

/// The answer to a write: the answer its record keeps (a keyed write), else `render`
/// of its outcome; or, when a committed request held its key (the writer answered
/// `IdempotencyKeyInUse`), that request's answer.
pub async fn respond(
    db: &PgPool,
    idempotency: Option<&Idempotency>,
    outcome: Result<Applied, ApiError>,
    render: Render,
) -> Result<Response, ApiError> {
    match (outcome, idempotency) {
        (Ok(Applied { recorded: Some(response), .. }), _) => Ok(response.into_response()),
        (Ok(Applied { outcome, recorded: None }), _) => Ok(render(&outcome)?.into_response()),
        (Err(ApiError::IdempotencyKeyInUse), Some(idempotency)) => replay(db, idempotency).await,
        (Err(error), _) => Err(error),
    }
}

/// The stored answer of the request that holds `idempotency`'s key: 422 when that
/// request was another one, 409 when the record is gone or not filled in (it can only
/// have expired meanwhile: records are filled in before they commit).
pub async fn replay(db: &PgPool, idempotency: &Idempotency) -> Result<Response, ApiError> {
    match replay_recorded(db, idempotency).await? {
        Some(response) => Ok(response),
        None => {
            counter!(metric_names::IDEMPOTENT_REQUESTS, "outcome" => "in_use").increment(1);
            Err(ApiError::IdempotencyKeyInUse)
        }
    }
}

/// The answer of a request refused before its write for a reason that changes with
/// time (an event's start has passed): a retry of a request accepted before gets the
/// stored answer; without a record, `refusal` stands.
pub async fn replay_or_refuse(
    db: &PgPool,
    idempotency: Option<&Idempotency>,
    refusal: ApiError,
) -> Result<Response, ApiError> {
    let Some(idempotency) = idempotency else { return Err(refusal) };
    replay_recorded(db, idempotency).await?.ok_or(refusal)
}

/// The stored answer of `idempotency`'s key, if a record has one; 422 when the record
/// is of another request.
#[tracing::instrument(skip_all, err)]
async fn replay_recorded(db: &PgPool, idempotency: &Idempotency) -> Result<Option<Response>, ApiError> {
    let record = store::find(db, &idempotency.lookup_id).await?;
    let Some(Record { fingerprint, status: Some(status), response: Some(sealed) }) = record else {
        return Ok(None);
    };
    if fingerprint != idempotency.fingerprint {
        counter!(metric_names::IDEMPOTENT_REQUESTS, "outcome" => "mismatch").increment(1);
        return Err(ApiError::IdempotencyKeyReused);
    }
    let status = u16::try_from(status).map_err(|_| anyhow::anyhow!("a stored status is out of range"))?;
    let stored = idempotency.open(status, &sealed)?;
    counter!(metric_names::IDEMPOTENT_REQUESTS, "outcome" => "replayed").increment(1);
    let mut response = stored.into_response();
    response.headers_mut().insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    Ok(Some(response))
}
