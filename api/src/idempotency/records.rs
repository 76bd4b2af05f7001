//! A request's record in the writing transaction: sealed with its answer after the
//! write, and inserted before the commit (the SQL is in [`crate::store::idempotency`]
//! and [`crate::store::outbox`], which see only what is derived from the key).

use metrics::counter;
use sqlx::PgPool;

use super::{Idempotency, StoredResponse};
use crate::{
    error::{ApiError, Unavailable},
    metric_names,
    store::{
        idempotency::{self as store, NewRecord},
        transactions::TxTimeouts,
    },
};

/// The record of a keyed write whose answer is `response`, sealed for its key.
pub fn seal<'a>(idempotency: &'a Idempotency, response: &StoredResponse) -> anyhow::Result<NewRecord<'a>> {
    Ok(NewRecord {
        lookup_id: &idempotency.lookup_id,
        fingerprint: &idempotency.fingerprint,
        ttl: idempotency.ttl,
        status: response.status as i16,
        sealed: idempotency.seal(response)?,
    })
}

/// Waits until the request in flight with `idempotency`'s key has finished, up to the
/// lock timeout of `timeouts` (then `lock_timeout`: this request wrote nothing).
pub async fn wait_for_key(db: &PgPool, timeouts: TxTimeouts, idempotency: &Idempotency) -> Result<(), ApiError> {
    counter!(metric_names::IDEMPOTENT_REQUESTS, "outcome" => "waited").increment(1);
    match store::wait_until_key_free(db, timeouts, &idempotency.lookup_id).await? {
        true => Ok(()),
        false => Err(Unavailable::LockTimeout.into()),
    }
}
