//! A request's record in the writing transaction: inserted after the write with its
//! sealed answer, before the commit (the SQL is in [`crate::store::idempotency`],
//! which sees only what is derived from the key).

use metrics::counter;
use sqlx::PgPool;

use super::{Idempotency, StoredResponse};
use crate::{
    error::{ApiError, Unavailable},
    metric_names,
    store::{
        idempotency::{self as store, Inserted, NewRecord},
        transactions::TxTimeouts,
        Tx,
    },
};

/// Inserts the records of `responses` (their keys distinct), sealed; says the
/// position in `responses` of each whose key was taken, which was not recorded, with
/// what holds it (see [`store::insert`]).
pub async fn insert(tx: &mut Tx<'_>, responses: &[(&Idempotency, StoredResponse)]) -> anyhow::Result<Inserted> {
    let mut records = Vec::with_capacity(responses.len());
    for (idempotency, response) in responses {
        records.push(NewRecord {
            lookup_id: &idempotency.lookup_id,
            fingerprint: &idempotency.fingerprint,
            ttl: idempotency.ttl,
            status: response.status as i16,
            sealed: idempotency.seal(response)?,
        });
    }
    Ok(store::insert(tx, &records).await?)
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
