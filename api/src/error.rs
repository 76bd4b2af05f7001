//! The api's one error type: each variant maps to one status and one JSON body shape.

use std::collections::BTreeMap;

use axum::{
    extract::rejection::{JsonRejection, PathRejection},
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde::Serialize;

/// Largest request body accepted: 16 KiB.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// Per-field validation messages, keyed by the request field's name.
pub type FieldErrors = BTreeMap<&'static str, String>;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not valid JSON.
    #[error("{0}")]
    MalformedJson(String),
    /// The body is not declared as `application/json`.
    #[error("expected a request with `Content-Type: application/json`")]
    UnsupportedMediaType,
    /// The body is larger than the api accepts.
    #[error("the request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// The body is JSON of the wrong shape, or a field's value is not allowed.
    #[error("the request is not valid")]
    Validation(FieldErrors),
    /// No such resource.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The route exists, but not with this method.
    #[error("this route does not accept this method")]
    MethodNotAllowed,
    /// The request carries no bearer token.
    #[error("a bearer token is required")]
    Unauthorized,
    /// The bearer token does not grant this request.
    #[error("the bearer token does not grant this request")]
    Forbidden,
    /// The request conflicts with the resource's current state.
    #[error("{0}")]
    Conflict(String),
    /// The `Idempotency-Key` header is not 1 to 255 visible ASCII characters.
    #[error("the Idempotency-Key header must be 1 to 255 visible ASCII characters, sent once")]
    InvalidIdempotencyKey,
    /// The `Idempotency-Key` was used before with another request (method, path, body).
    #[error("this Idempotency-Key was used with another request; send a new key for a new request")]
    IdempotencyKeyReused,
    /// The request holding this `Idempotency-Key` has no answer to replay yet.
    #[error("a request with this Idempotency-Key has not finished; retry with the same key")]
    IdempotencyKeyInUse,
    /// A request with this `Idempotency-Key` is still running. The writer waits for
    /// it and runs the write again (see `coalesce`); should it reach a client, it is
    /// answered as `IdempotencyKeyInUse`.
    #[error("a request with this Idempotency-Key has not finished; retry with the same key")]
    IdempotencyKeyInFlight,
    /// The request could not be served in time, or its outcome is not known: 503.
    #[error("{0}")]
    Unavailable(#[from] Unavailable),
    /// A fault of ours or of a dependency; the cause is logged, never returned.
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

/// Why a request was answered 503. Each says whether a write was applied, so that a
/// client knows whether retrying is safe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unavailable {
    /// `REQUEST_TIMEOUT` passed before the request's write started: it was not applied.
    #[error("the request was not served within REQUEST_TIMEOUT; nothing was written, it is safe to retry")]
    RequestTimeout,
    /// The write was under way when the answer had to be sent: it may have committed.
    #[error(
        "the write may or may not have been applied; retry with the same Idempotency-Key to apply it at most once and learn its outcome"
    )]
    OutcomeUnknown,
    /// A row the write needs was held by another transaction for longer than
    /// `DATABASE_LOCK_TIMEOUT`; the write was not applied.
    #[error("another transaction held a row this request needs for longer than DATABASE_LOCK_TIMEOUT; nothing was written, retry")]
    LockTimeout,
    /// A statement ran longer than `DATABASE_STATEMENT_TIMEOUT`; the write was not applied.
    #[error("the database took longer than DATABASE_STATEMENT_TIMEOUT; nothing was written, retry")]
    StatementTimeout,
    /// Postgres could not be reached; nothing was written.
    #[error("the database is unavailable; nothing was written, retry later")]
    DatabaseDown,
}

impl Unavailable {
    fn code(self) -> &'static str {
        match self {
            Unavailable::RequestTimeout => "request_timeout",
            Unavailable::OutcomeUnknown => "outcome_unknown",
            Unavailable::LockTimeout => "lock_timeout",
            Unavailable::StatementTimeout => "statement_timeout",
            Unavailable::DatabaseDown => "database_unavailable",
        }
    }

    /// What a failed query means for its request, when it is a 503 at all: a
    /// timeout set on the transaction, or Postgres out of reach.
    pub fn of(error: &sqlx::Error) -> Option<Self> {
        match error {
            sqlx::Error::Database(db) => match db.code().as_deref() {
                Some("55P03") => Some(Unavailable::LockTimeout),
                Some("57014") => Some(Unavailable::StatementTimeout),
                // Connection exceptions, and the server shutting down or starting up.
                Some(code) if code.starts_with("08") || ["57P01", "57P02", "57P03"].contains(&code) => {
                    Some(Unavailable::DatabaseDown)
                }
                _ => None,
            },
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::BeginFailed => Some(Unavailable::DatabaseDown),
            _ => None,
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `validation_failed`.
    code: &'static str,
    /// Human-readable explanation.
    message: String,
    /// Per-field messages, for `validation_failed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    fields: Option<BTreeMap<&'static str, String>>,
}

impl ApiError {
    pub fn status_code(&self) -> StatusCode {
        match self {
            ApiError::MalformedJson(_) => StatusCode::BAD_REQUEST,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden => StatusCode::FORBIDDEN,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::InvalidIdempotencyKey => StatusCode::BAD_REQUEST,
            ApiError::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::IdempotencyKeyInUse | ApiError::IdempotencyKeyInFlight => StatusCode::CONFLICT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Unexpected(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::MalformedJson(_) => "malformed_json",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::Validation(_) => "validation_failed",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::Unauthorized => "unauthorized",
            ApiError::Forbidden => "forbidden",
            ApiError::Conflict(_) => "conflict",
            ApiError::InvalidIdempotencyKey => "invalid_idempotency_key",
            ApiError::IdempotencyKeyReused => "idempotency_key_reused",
            ApiError::IdempotencyKeyInUse | ApiError::IdempotencyKeyInFlight => "idempotency_key_in_use",
            ApiError::Unavailable(reason) => reason.code(),
            ApiError::Unexpected(_) => "internal_error",
        }
    }

    /// True when the request was refused for what it asked (a 4xx): such a refusal
    /// writes nothing and leaves a shared transaction usable, where any other error
    /// means the transaction failed.
    pub fn is_client_mistake(&self) -> bool {
        self.status_code().is_client_error()
    }

    pub fn field(field: &'static str, message: impl Into<String>) -> Self {
        ApiError::Validation(FieldErrors::from([(field, message.into())]))
    }
}

impl ApiError {
    /// The JSON body every error response carries; faults keep their cause to the log.
    fn body(&self) -> ErrorBody {
        let message = match self {
            ApiError::Unexpected(_) => "internal error".to_owned(),
            other => other.to_string(),
        };
        let fields = match self {
            ApiError::Validation(fields) => Some(fields.clone()),
            _ => None,
        };
        ErrorBody { error: ErrorDetail { code: self.code(), message, fields } }
    }

    /// The body as bytes, as an idempotency record keeps a refused write's answer.
    pub fn body_json(&self) -> Vec<u8> {
        serde_json::to_vec(&self.body()).expect("an error body serializes")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status_code();
        if let ApiError::Unexpected(cause) = &self {
            tracing::error!(error = ?cause, "request failed");
        }
        let body = Json(self.body());
        if status == StatusCode::UNAUTHORIZED {
            return (status, [(header::WWW_AUTHENTICATE, "Bearer")], body).into_response();
        }
        (status, body).into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::JsonDataError(e) => ApiError::field("body", e.body_text()),
            JsonRejection::JsonSyntaxError(e) => ApiError::MalformedJson(e.body_text()),
            JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType,
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::PayloadTooLarge { limit: MAX_BODY_BYTES }
            }
            other => ApiError::MalformedJson(other.body_text()),
        }
    }
}

impl From<PathRejection> for ApiError {
    // A path segment that is not a UUID names no resource.
    fn from(_: PathRejection) -> Self {
        ApiError::NotFound("resource")
    }
}

impl From<sqlx::Error> for ApiError {
    // Timeouts and an unreachable database are 503s that say nothing was written:
    // every caller's query ran inside a transaction that then rolled back, or alone.
    fn from(error: sqlx::Error) -> Self {
        if let Some(reason) = Unavailable::of(&error) {
            tracing::warn!(error = ?error, "the database failed this request: answering 503");
            return ApiError::Unavailable(reason);
        }
        ApiError::Unexpected(anyhow::Error::new(error).context("database query failed"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_database_is_a_503_and_other_query_failures_are_500s() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        for error in [sqlx::Error::PoolTimedOut, sqlx::Error::Io(refused), sqlx::Error::PoolClosed] {
            let error = ApiError::from(error);
            assert_eq!(error.status_code(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(error.code(), "database_unavailable");
        }
        assert_eq!(ApiError::from(sqlx::Error::RowNotFound).status_code(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn only_client_mistakes_leave_a_shared_transaction_usable() {
        assert!(ApiError::Conflict("taken".into()).is_client_mistake());
        assert!(ApiError::NotFound("rsvp").is_client_mistake());
        assert!(!ApiError::from(Unavailable::LockTimeout).is_client_mistake());
        assert!(!ApiError::Unexpected(anyhow::anyhow!("deadlock")).is_client_mistake());
    }
}
