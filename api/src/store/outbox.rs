//! Appending outbox rows inside the writing transaction.

use rsvp_contract::{event::AGGREGATE_RSVP, CloudEvent};

use super::Tx;

/// Appends the outbox row of `event`. Its `xid` defaults to the writing transaction,
/// its insert trigger notifies the relay when the transaction commits.
#[tracing::instrument(skip_all, fields(message_id = %event.id, event_type = event.event_type.as_str()), err)]
pub async fn append(tx: &mut Tx<'_>, event: &CloudEvent, traceparent: Option<&str>) -> Result<(), sqlx::Error> {
    let payload = serde_json::to_value(event).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    sqlx::query(
        "insert into outbox
            (aggregate_type, aggregate_id, kafka_key, event_type, message_id, rsvp_version, payload, traceparent)
         values ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(AGGREGATE_RSVP)
    .bind(event.data.id)
    .bind(event.kafka_key())
    .bind(event.event_type.as_str())
    .bind(event.id)
    .bind(event.data.version)
    .bind(payload)
    .bind(traceparent)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
