//! A request's record in the writing transaction: claimed before the write and
//! filled in with its sealed answer before the commit (the SQL is in
//! [`crate::store::idempotency`], which sees only what is derived from the key).

use super::{Idempotency, StoredResponse};
use crate::store::{
    idempotency::{self as store, KeyClaim, SealedResponse},
    Tx,
};

impl Idempotency {
    fn key_claim(&self) -> KeyClaim<'_> {
        KeyClaim { lookup_id: &self.lookup_id, fingerprint: &self.fingerprint, ttl: self.ttl }
    }
}

/// Claims the keys of `requests` (`None`: a write sent without a key); for each
/// request, whether this transaction now holds its key (see [`store::claim`]).
pub async fn claim(tx: &mut Tx<'_>, requests: &[Option<&Idempotency>]) -> Result<Vec<bool>, sqlx::Error> {
    let keys: Vec<Option<KeyClaim<'_>>> = requests.iter().map(|request| request.map(Idempotency::key_claim)).collect();
    store::claim(tx, &keys).await
}

/// Fills in the records this transaction claimed with their responses, sealed.
pub async fn record(tx: &mut Tx<'_>, responses: &[(&Idempotency, StoredResponse)]) -> anyhow::Result<()> {
    let mut sealed = Vec::with_capacity(responses.len());
    for (idempotency, response) in responses {
        sealed.push(SealedResponse {
            lookup_id: &idempotency.lookup_id,
            status: response.status as i16,
            sealed: idempotency.seal(response)?,
        });
    }
    store::record(tx, &sealed).await?;
    Ok(())
}
