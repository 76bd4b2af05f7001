//! Transaction-scoped advisory locks per Kafka key (an event id): what makes the
//! relay's `(xid, id)` order the commit order of the writers of one key. The proof is
//! on `writes::lock_writers`.

use uuid::Uuid;

use super::Tx;

/// The advisory lock key of an event: its uuid folded to 64 bits (high half XOR low
/// half). Two events may share a key; that only makes their writers wait for each
/// other, never deadlock, since every transaction takes its keys in one sorted order.
/// (The only other 64-bit advisory lock in the database is the relay leader's; a
/// clash with it has a chance of 2^-64 per event.)
pub fn lock_key(event_id: Uuid) -> i64 {
    let bits = event_id.as_u128();
    // Truncations on purpose: the two halves of the uuid, then their bits as an int8.
    ((bits >> 64) as u64 ^ bits as u64) as i64
}

/// The sorted, distinct lock keys of `event_ids`.
pub fn sorted_keys(event_ids: &[Uuid]) -> Vec<i64> {
    let mut keys: Vec<i64> = event_ids.iter().copied().map(lock_key).collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// Takes the lock of every event in `event_ids`, in ascending key order, until the
/// transaction ends. Takes no row lock and writes nothing, so the transaction gets no
/// xid here. One statement: a function scan over `unnest` yields the array in order
/// and the select list is evaluated row by row as it comes, so the locks are taken
/// in array order (no `order by`, which could sort after evaluating).
#[tracing::instrument(skip_all, fields(events = event_ids.len()), err)]
pub async fn lock_events(tx: &mut Tx<'_>, event_ids: &[Uuid]) -> Result<(), sqlx::Error> {
    let keys = sorted_keys(event_ids);
    if keys.is_empty() {
        return Ok(());
    }
    sqlx::query!("select pg_advisory_xact_lock(k) from unnest($1::int8[]) as k", &keys).execute(&mut **tx).await?;
    Ok(())
}

/// Takes the lock of every event in `event_ids` that no other transaction holds,
/// without waiting, in ascending key order; returns the keys it could not take.
#[tracing::instrument(skip_all, fields(events = event_ids.len()), err)]
pub async fn try_lock_events(tx: &mut Tx<'_>, event_ids: &[Uuid]) -> Result<Vec<i64>, sqlx::Error> {
    let keys = sorted_keys(event_ids);
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    // The filter runs row by row in array order, as the select list does above.
    sqlx::query_scalar!(
        r#"select k as "k!" from unnest($1::int8[]) as k where not pg_try_advisory_xact_lock(k)"#,
        &keys
    )
    .fetch_all(&mut **tx)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_events_key_folds_both_halves_of_its_uuid() {
        let id = Uuid::from_u128(0x0000_0000_0000_0003_0000_0000_0000_0005);
        assert_eq!(lock_key(id), 6);
        let high_bit = Uuid::from_u128(1 << 127);
        assert_eq!(lock_key(high_bit), i64::MIN);
    }

    #[test]
    fn keys_come_sorted_and_once() {
        let (a, b) = (Uuid::from_u128(9), Uuid::from_u128(2));
        assert_eq!(sorted_keys(&[a, b, a]), vec![2, 9]);
        assert!(sorted_keys(&[]).is_empty());
    }
}
