//! HTTP routes, one module per resource, merged in [`router`].

pub mod events;
pub mod health;
pub mod paging;
pub mod rsvps;
pub mod stats;
pub mod views;

use crate::{error::ApiError, state::AppState};
use axum::{
    extract::{FromRequest, FromRequestParts},
    http::HeaderMap,
    Router,
};

pub fn router() -> Router<AppState> {
    Router::new().merge(events::router()).merge(rsvps::router()).merge(stats::router()).merge(health::router())
}

/// `Json` whose rejections are [`ApiError`]s: 400, 413, 415 or 422 with a JSON body.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

impl<T: serde::Serialize> axum::response::IntoResponse for ApiJson<T> {
    fn into_response(self) -> axum::response::Response {
        axum::Json(self.0).into_response()
    }
}

/// `Path` whose rejection is a 404: a malformed id names no resource.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// The `Idempotency-Key` header of every write, for the OpenAPI document.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // read by the idempotency middleware, not by an extractor
pub struct IdempotencyKeyHeader {
    /// Makes the write safe to retry: 1 to 255 visible ASCII characters, unguessable
    /// (a random UUID). The first request with a key does the write; a retry with the
    /// same key, method, path, body and bearer credential writes nothing and gets the
    /// first answer again (header `Idempotent-Replayed: true`), also when the first one
    /// is still running (the retry waits for it). The same key with another request is
    /// 422 `idempotency_key_reused`; an invalid key is 400 `invalid_idempotency_key`;
    /// 409 `idempotency_key_in_use` when the first request has no answer to give yet.
    /// Keys are kept for `IDEMPOTENCY_KEY_TTL` (24 h by default).
    #[param(
        rename = "Idempotency-Key",
        nullable = false,
        min_length = 1,
        max_length = 255,
        pattern = "^[!-~]{1,255}$"
    )]
    idempotency_key: Option<String>,
}

/// The request's W3C `traceparent`, when it is well-formed.
pub fn traceparent(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get("traceparent")?.to_str().ok()?;
    let parts: Vec<&str> = value.split('-').collect();
    let hex =
        |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
    let valid = parts.len() == 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && hex(parts[1], 32)
        && parts[1].bytes().any(|b| b != b'0')
        && hex(parts[2], 16)
        && parts[2].bytes().any(|b| b != b'0')
        && hex(parts[3], 2);
    valid.then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn only_well_formed_traceparents_are_kept() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        for (value, kept) in [
            (good, true),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7", false),
            ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", false),
            ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", false),
            ("garbage", false),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert("traceparent", HeaderValue::from_static(value));
            assert_eq!(traceparent(&headers).is_some(), kept, "{value}");
        }
    }
}
