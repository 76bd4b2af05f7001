//! Idempotent writes: a write sent with an `Idempotency-Key` header is done once; a
//! retry with the same key and the same request gets the first answer back.
//!
//! What the database keeps of a key is derived from it and useless without it (see
//! the README, "Idempotency keys"): HKDF-SHA256 of the key gives a lookup id (mixed
//! with the caller's bearer credential, so that two callers never share a key), a
//! fingerprint key and a response key. The fingerprint is an HMAC of the request; the
//! response (for a create, the rsvp's secret token) is sealed with ChaCha20-Poly1305
//! under the response key. The record is inserted, with the answer, in the write's own
//! transaction (see `coalesce` and [`crate::store::idempotency`]).

mod http;
pub mod prune;
pub mod records;

use std::time::Duration;

use anyhow::Context;
use axum::{
    http::{header, HeaderMap, HeaderValue, Method, StatusCode},
    response::{IntoResponse, Response},
};
use chacha20poly1305::{
    aead::{Aead, Payload},
    ChaCha20Poly1305, KeyInit, Nonce,
};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

pub use http::{layer, replay, replay_or_refuse, respond, IdempotencySettings};

use crate::{error::ApiError, writes::WriteOutcome};

/// The header clients send.
pub const HEADER: &str = "idempotency-key";
/// Set on a response replayed from a record.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

const SALT: &[u8] = b"rsvp-api idempotency-key v1";
const LOOKUP_INFO: &[u8] = b"rsvp-api idempotency lookup id";
const FINGERPRINT_INFO: &[u8] = b"rsvp-api idempotency request fingerprint";
const RESPONSE_INFO: &[u8] = b"rsvp-api idempotency response key";
const NONCE_LEN: usize = 12;

/// A valid `Idempotency-Key`: 1 to 255 visible ASCII characters (`!` to `~`).
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(value: &[u8]) -> Result<Self, ApiError> {
        let visible = value.iter().all(|b| (0x21..=0x7e).contains(b));
        if value.is_empty() || value.len() > 255 || !visible {
            return Err(ApiError::InvalidIdempotencyKey);
        }
        // Visible ASCII is UTF-8.
        Ok(Self(String::from_utf8_lossy(value).into_owned()))
    }

    /// The request's key, if it sent one; a header sent twice is invalid.
    pub fn from_headers(headers: &HeaderMap) -> Result<Option<Self>, ApiError> {
        let mut values = headers.get_all(HEADER).iter();
        match (values.next(), values.next()) {
            (None, _) => Ok(None),
            (Some(value), None) => Self::parse(value.as_bytes()).map(Some),
            (Some(_), Some(_)) => Err(ApiError::InvalidIdempotencyKey),
        }
    }
}

/// The request as it must be repeated: what the claim, the record and a replay need.
/// Holds a key derived from the client's key; never log it.
#[derive(Clone)]
pub struct Idempotency {
    pub lookup_id: [u8; 32],
    pub fingerprint: [u8; 32],
    response_key: [u8; 32],
    /// How long the record answers retries.
    pub ttl: Duration,
}

/// Who sends the request, as far as the key's scope goes: the bearer credential, if any.
pub struct Caller<'a>(pub Option<&'a str>);

impl Idempotency {
    /// Derives the request's lookup id, fingerprint and response key from `key`.
    /// `body` is the raw request body: a retry must send the same bytes.
    pub fn derive(
        key: &IdempotencyKey,
        caller: Caller<'_>,
        method: &Method,
        path: &str,
        body: &[u8],
        ttl: Duration,
    ) -> Self {
        let hkdf = Hkdf::<Sha256>::new(Some(SALT), key.0.as_bytes());
        let expand = |info: &[&[u8]]| {
            let mut out = [0u8; 32];
            hkdf.expand_multi_info(info, &mut out).expect("32 bytes is a valid HKDF-SHA256 length");
            out
        };
        // The caller's credential only as its digest, behind a tag that keeps "no
        // credential" apart from any credential.
        let scope: Vec<u8> = match caller.0 {
            Some(credential) => [&[1u8][..], &Sha256::digest(credential.as_bytes())[..]].concat(),
            None => vec![0],
        };
        let lookup_id = expand(&[LOOKUP_INFO, &scope[..]]);
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&expand(&[FINGERPRINT_INFO])).expect("HMAC takes any key length");
        for part in [method.as_str().as_bytes(), path.as_bytes()] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.update(&Sha256::digest(body));
        Self { lookup_id, fingerprint: mac.finalize().into_bytes().into(), response_key: expand(&[RESPONSE_INFO]), ttl }
    }

    /// `nonce || ciphertext` of the response body; the lookup id, fingerprint and status
    /// are authenticated with it, so a record cannot be pieced together from another.
    pub fn seal(&self, response: &StoredResponse) -> anyhow::Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        // Random: one key can seal twice (a record taken over after it expired). The
        // thread's CSPRNG (seeded from the OS, reseeded as it goes) rather than a
        // system call per record: records are sealed inside the batch's transaction.
        rand::thread_rng().fill_bytes(&mut nonce);
        let cipher = ChaCha20Poly1305::new((&self.response_key).into());
        let aad = self.associated_data(response.status);
        let sealed = cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: &response.body, aad: &aad })
            .map_err(|_| anyhow::anyhow!("sealing an idempotent response failed"))?;
        Ok([&nonce[..], &sealed[..]].concat())
    }

    /// The response `seal` sealed for this request's key.
    pub fn open(&self, status: u16, sealed: &[u8]) -> anyhow::Result<StoredResponse> {
        anyhow::ensure!(sealed.len() > NONCE_LEN, "a stored idempotent response is truncated");
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let cipher = ChaCha20Poly1305::new((&self.response_key).into());
        let aad = self.associated_data(status);
        let body = cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ciphertext, aad: &aad })
            .map_err(|_| anyhow::anyhow!("a stored idempotent response does not open with its key"))?;
        Ok(StoredResponse { status, body })
    }

    fn associated_data(&self, status: u16) -> Vec<u8> {
        [&self.lookup_id[..], &self.fingerprint[..], &status.to_be_bytes()[..]].concat()
    }
}

/// A response as a record keeps it: its status and JSON body (empty for 204).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResponse {
    pub status: u16,
    pub body: Vec<u8>,
}

impl StoredResponse {
    pub fn json(status: StatusCode, body: &impl serde::Serialize) -> anyhow::Result<Self> {
        Ok(Self { status: status.as_u16(), body: serde_json::to_vec(body).context("serializing a response")? })
    }

    pub fn empty(status: StatusCode) -> Self {
        Self { status: status.as_u16(), body: Vec::new() }
    }

    /// The response of a write refused for a client mistake; `None` for what is not kept:
    /// faults (a retry must run again) and a key held by another request.
    pub fn of_error(error: &ApiError) -> Option<Self> {
        match error {
            // A 503 says nothing about the write: its retry must run it.
            ApiError::Unexpected(_)
            | ApiError::IdempotencyKeyInUse
            | ApiError::IdempotencyKeyInFlight
            | ApiError::Unavailable(_) => None,
            refused => Some(Self { status: refused.status_code().as_u16(), body: refused.body_json() }),
        }
    }
}

impl IntoResponse for StoredResponse {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if self.body.is_empty() {
            return status.into_response();
        }
        (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], self.body).into_response()
    }
}

/// A write that succeeded, as the writer answers it: its outcome and, for a keyed
/// write, the answer its record keeps, so that the request answers with the very
/// bytes a retry gets, rendered once.
#[derive(Debug)]
pub struct Applied {
    pub outcome: WriteOutcome,
    pub recorded: Option<StoredResponse>,
}

/// How a route answers a write that succeeded.
pub type Render = fn(&WriteOutcome) -> anyhow::Result<StoredResponse>;

/// A keyed write as the writer queues it: its key, and how to render the answer its record keeps.
#[derive(Clone)]
pub struct Claim {
    pub idempotency: Idempotency,
    pub render: Render,
}

impl Claim {
    pub fn new(idempotency: Option<Idempotency>, render: Render) -> Option<Self> {
        idempotency.map(|idempotency| Self { idempotency, render })
    }

    /// What the record keeps of `outcome`; `None` when the write is not recorded.
    pub fn response(&self, outcome: &Result<WriteOutcome, ApiError>) -> anyhow::Result<Option<StoredResponse>> {
        match outcome {
            Ok(outcome) => (self.render)(outcome).map(Some),
            Err(error) => Ok(StoredResponse::of_error(error)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(value: &str) -> IdempotencyKey {
        IdempotencyKey::parse(value.as_bytes()).unwrap()
    }

    fn derive(key_value: &str, caller: Option<&str>, body: &[u8]) -> Idempotency {
        Idempotency::derive(
            &key(key_value),
            Caller(caller),
            &Method::POST,
            "/rsvps/cancel",
            body,
            Duration::from_secs(60),
        )
    }

    #[test]
    fn keys_are_1_to_255_visible_ascii_characters() {
        for valid in ["a", "~!", &"k".repeat(255), "550e8400-e29b-41d4-a716-446655440000"] {
            assert!(IdempotencyKey::parse(valid.as_bytes()).is_ok(), "{valid}");
        }
        let invalid: [&[u8]; 7] = [b"", b" ", b"a b", b"a\tb", &[b'k'; 256], "é".as_bytes(), b"\x7f"];
        for invalid in invalid {
            assert!(matches!(IdempotencyKey::parse(invalid), Err(ApiError::InvalidIdempotencyKey)), "{invalid:?}");
        }
    }

    #[test]
    fn the_lookup_id_depends_on_key_and_caller_and_the_fingerprint_on_the_request() {
        let first = derive("k1", None, b"{}");
        assert_eq!(first.lookup_id, derive("k1", None, b"{\"a\":1}").lookup_id);
        assert_ne!(first.fingerprint, derive("k1", None, b"{\"a\":1}").fingerprint);
        assert_ne!(first.lookup_id, derive("k2", None, b"{}").lookup_id);
        assert_ne!(first.lookup_id, derive("k1", Some("token"), b"{}").lookup_id);
        assert_ne!(derive("k1", Some("a"), b"{}").lookup_id, derive("k1", Some("b"), b"{}").lookup_id);
        let other_path = Idempotency::derive(&key("k1"), Caller(None), &Method::POST, "/events", b"{}", Duration::ZERO);
        assert_ne!(first.fingerprint, other_path.fingerprint);
        assert_ne!(first.lookup_id, first.fingerprint, "domain-separated derivations");
    }

    #[test]
    fn a_sealed_response_opens_only_with_its_own_key_and_status() {
        let request = derive("secret-key", None, b"{}");
        let response = StoredResponse { status: 201, body: b"{\"token\":\"abc\"}".to_vec() };
        let sealed = request.seal(&response).unwrap();

        assert!(!sealed.windows(3).any(|w| w == b"abc"), "the body is not in the clear");
        assert_eq!(request.open(201, &sealed).unwrap(), response);
        assert!(request.open(200, &sealed).is_err(), "the status is authenticated");
        assert!(derive("other-key", None, b"{}").open(201, &sealed).is_err());
        assert_ne!(sealed, request.seal(&response).unwrap(), "a fresh nonce each time");
    }
}
