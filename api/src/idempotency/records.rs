//! A request's record in the writing transaction: inserted after the write with its
//! sealed answer, before the commit (the SQL is in [`crate::store::idempotency`],
//! which sees only what is derived from the key).

use super::{Idempotency, StoredResponse};
use crate::store::{
    idempotency::{self as store, KeyTaken, NewRecord},
    Tx,
};

/// Inserts the records of `responses` (their keys distinct), sealed; returns the
/// position in `responses` of each whose key was taken, which was not recorded, with
/// what holds it (see [`store::insert`]).
pub async fn insert(
    tx: &mut Tx<'_>,
    responses: &[(&Idempotency, StoredResponse)],
) -> anyhow::Result<Vec<(usize, KeyTaken)>> {
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
