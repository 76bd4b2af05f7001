//! Bearer tokens: the admin token, and the per-rsvp secret that lets its owner change it.

use axum::http::{header, HeaderMap};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// The bearer token of the `Authorization` header; `Unauthorized` when there is none.
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, ApiError> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(strip_bearer_scheme)
        .filter(|token| !token.is_empty())
        .ok_or(ApiError::Unauthorized)
}

/// The credentials after a `Bearer` scheme: RFC 9110 (11.1) makes the scheme name
/// case-insensitive and lets one or more spaces follow it.
fn strip_bearer_scheme(value: &str) -> Option<&str> {
    let (scheme, credentials) = value.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| credentials.trim())
}

/// The admin token, compared without leaking its content through timing.
#[derive(Clone)]
pub struct AdminToken(TokenHash);

impl AdminToken {
    pub fn new(token: &str) -> Self {
        Self(TokenHash::of(token))
    }

    /// `Unauthorized` without a bearer token, `Forbidden` with another one.
    pub fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        if self.matches(bearer_token(headers)?) {
            Ok(())
        } else {
            Err(ApiError::Forbidden)
        }
    }

    /// Whether `token` is the admin token.
    pub fn matches(&self, token: &str) -> bool {
        TokenHash::of(token).matches(&self.0)
    }
}

/// SHA-256 of a token: what the database stores instead of the token.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    pub fn of(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }

    pub fn from_stored(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Constant-time comparison.
    pub fn matches(&self, other: &TokenHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

/// A new rsvp token: 256 random bits, URL-safe base64. Returned once, stored only hashed.
pub fn new_rsvp_token() -> (String, TokenHash) {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let token = URL_SAFE_NO_PAD.encode(bytes);
    let hash = TokenHash::of(&token);
    (token, hash)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(authorization: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(authorization).unwrap());
        headers
    }

    #[test]
    fn admin_token_distinguishes_missing_from_wrong() {
        let admin = AdminToken::new("s3cret-admin-token");
        assert!(admin.authorize(&headers("Bearer s3cret-admin-token")).is_ok());
        assert!(matches!(admin.authorize(&HeaderMap::new()), Err(ApiError::Unauthorized)));
        assert!(matches!(admin.authorize(&headers("Basic abc")), Err(ApiError::Unauthorized)));
        assert!(matches!(admin.authorize(&headers("Bearer nope")), Err(ApiError::Forbidden)));
    }

    #[test]
    fn the_bearer_scheme_is_matched_in_any_case() {
        for value in ["Bearer abc", "bearer abc", "BEARER abc", "bEaReR   abc "] {
            assert_eq!(bearer_token(&headers(value)).ok(), Some("abc"), "{value}");
        }
        for value in ["Bearerabc", "Bearer ", "Bearer", "Basic abc", "Bear abc"] {
            assert!(matches!(bearer_token(&headers(value)), Err(ApiError::Unauthorized)), "{value}");
        }
    }

    #[test]
    fn tokens_are_long_random_and_stored_hashed() {
        let (a, hash_a) = new_rsvp_token();
        let (b, _) = new_rsvp_token();
        assert_ne!(a, b);
        assert_eq!(a.len(), 43, "256 bits in unpadded base64");
        assert!(hash_a.matches(&TokenHash::of(&a)));
        assert!(!hash_a.matches(&TokenHash::of(&b)));
        assert_ne!(hash_a.as_bytes(), a.as_bytes());
    }
}
