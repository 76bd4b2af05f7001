//! Keyset paging of an event's rsvps: the `limit` and opaque `cursor` query
//! parameters, and the cursor's encoding.
//!
//! A page is the rows after the cursor's `(created_at, id)` in that order. Both
//! columns are set once at insert and never change, and `id` makes the key unique, so
//! a walk shows no row twice and skips none that existed when it started, whatever is
//! inserted or deleted meanwhile. No key a writer can choose orders rows by commit
//! (`created_at` is the transaction's start, ids are made before the commit), so a
//! row committed during a walk appears in it only when its key lies after the
//! cursor: it is never shown twice, and the next walk shows it.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use chrono::{DateTime, Datelike, Utc};
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use crate::error::{ApiError, FieldErrors};

/// Rows per page when the request names no `limit`.
pub const DEFAULT_LIMIT: u32 = 50;
/// The largest `limit` accepted.
pub const MAX_LIMIT: u32 = 200;

/// The paging parameters as clients send them.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Rows per page, 1 to 200; default 50. Parsed here, not by serde, so that a bad
    /// value is a 422 with the standard error body.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 200)]
    pub limit: Option<String>,
    /// The `next` of the previous page; absent for the first page.
    pub cursor: Option<String>,
}

/// A validated page request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PageRequest {
    pub limit: u32,
    /// The key of the last row already shown; `None` on the first page.
    pub after: Option<PageKey>,
}

impl PageRequest {
    /// Every invalid parameter is reported at once, as a 422.
    pub fn parse(query: PageQuery) -> Result<Self, ApiError> {
        let mut errors = FieldErrors::new();
        let limit = match query.limit.as_deref().map(str::parse::<u32>) {
            None => Some(DEFAULT_LIMIT),
            Some(Ok(limit)) if (1..=MAX_LIMIT).contains(&limit) => Some(limit),
            Some(_) => {
                errors.insert("limit", format!("must be an integer from 1 to {MAX_LIMIT}"));
                None
            }
        };
        let after = match query.cursor.as_deref().map(PageKey::decode) {
            None => Some(None),
            Some(Some(key)) => Some(Some(key)),
            Some(None) => {
                errors.insert("cursor", "is not a cursor this api returned".to_owned());
                None
            }
        };
        match (limit, after) {
            (Some(limit), Some(after)) if errors.is_empty() => Ok(Self { limit, after }),
            _ => Err(ApiError::Validation(errors)),
        }
    }

    /// Identifies the page in cache keys: bounded and canonical, whatever the client sent.
    pub fn cache_id(&self) -> String {
        let after = self.after.map_or_else(|| "first".to_owned(), |key| key.encode());
        format!("{}:{after}", self.limit)
    }
}

/// Where a row sits in the order of a page walk: `(created_at, id)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PageKey {
    pub created_at: DateTime<Utc>,
    pub id: Uuid,
}

impl PageKey {
    /// 8 bytes of microseconds (Postgres' precision) and the 16 id bytes, base64url:
    /// opaque to clients, who must not build cursors themselves.
    pub fn encode(&self) -> String {
        let mut bytes = [0u8; 24];
        bytes[..8].copy_from_slice(&self.created_at.timestamp_micros().to_be_bytes());
        bytes[8..].copy_from_slice(self.id.as_bytes());
        URL_SAFE_NO_PAD.encode(bytes)
    }

    pub fn decode(cursor: &str) -> Option<Self> {
        let bytes: [u8; 24] = URL_SAFE_NO_PAD.decode(cursor).ok()?.try_into().ok()?;
        let micros = i64::from_be_bytes(bytes[..8].try_into().ok()?);
        // Within what Postgres can bind; rows are stamped with `now()` anyway.
        let created_at = DateTime::from_timestamp_micros(micros).filter(|t| (1..=9999).contains(&t.year()))?;
        let id = Uuid::from_slice(&bytes[8..]).ok()?;
        Some(Self { created_at, id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(limit: Option<&str>, cursor: Option<&str>) -> PageQuery {
        PageQuery { limit: limit.map(Into::into), cursor: cursor.map(Into::into) }
    }

    #[test]
    fn a_cursor_round_trips_at_microsecond_precision() {
        let key =
            PageKey { created_at: DateTime::from_timestamp_micros(1_764_600_000_123_456).unwrap(), id: Uuid::now_v7() };
        let cursor = key.encode();
        assert_eq!(PageKey::decode(&cursor), Some(key));
        assert!(cursor.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    }

    #[test]
    fn limits_default_to_50_and_stay_within_1_to_200() {
        assert_eq!(PageRequest::parse(query(None, None)).unwrap().limit, 50);
        assert_eq!(PageRequest::parse(query(Some("200"), None)).unwrap().limit, 200);
        for bad in ["0", "201", "-1", "ten", ""] {
            assert!(matches!(PageRequest::parse(query(Some(bad), None)), Err(ApiError::Validation(_))), "{bad}");
        }
    }

    #[test]
    fn cursors_that_the_api_did_not_make_are_rejected() {
        let short = URL_SAFE_NO_PAD.encode([1u8; 23]);
        let far_future = URL_SAFE_NO_PAD.encode([[0x10, 0, 0, 0, 0, 0, 0, 0].as_slice(), &[0; 16]].concat());
        for bad in ["", "not base64!", short.as_str(), far_future.as_str(), "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"]
        {
            let Err(ApiError::Validation(fields)) = PageRequest::parse(query(Some("500"), Some(bad))) else {
                panic!("accepted cursor {bad:?}");
            };
            assert_eq!(fields.keys().copied().collect::<Vec<_>>(), ["cursor", "limit"], "{bad}");
        }
    }
}
